use std::net::Ipv6Addr;

use super::*;

const S: i64 = store::time::NANOS_PER_SEC;
/// 2024-06-15T12:00:00Z.
const NOW: i64 = 1_718_452_800 * S;

fn mapping() -> Mapping {
    Mapping { limits: Limits::default(), retention_ns: 30 * store::time::NANOS_PER_DAY, bsd_offset_secs: 0 }
}

fn peer() -> IpAddr {
    "192.0.2.7".parse().unwrap()
}

/// (labels, time, line, fields) of every entry.
type Row = (Vec<(String, String)>, i64, String, Vec<(String, String)>);

fn rows(p: &mut Pending) -> Vec<Row> {
    let batch = p.take();
    batch
        .entries
        .iter()
        .map(|e| {
            let labels = batch.streams[e.stream as usize].labels.iter().map(|(k, v)| (k.into(), v.into())).collect();
            (labels, e.time_ns, e.line.clone(), e.fields.clone())
        })
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn an_rfc5424_message_becomes_labels_fields_and_its_line() {
    let mut p = Pending::default();
    let frame = b"<165>1 2024-06-15T11:59:00.5Z web-1 nginx 8710 ID47 [req@1 path=\"/x\" code=\"200\"] GET /x";
    assert_eq!(p.add(frame, peer(), NOW, &mapping()), None);
    assert_eq!(
        rows(&mut p),
        vec![(
            pairs(&[("app_name", "nginx"), ("facility", "local4"), ("hostname", "web-1"), ("level", "info")]),
            NOW - 60 * S + S / 2,
            "GET /x".to_string(),
            pairs(&[
                ("procid", "8710"),
                ("msgid", "ID47"),
                ("severity", "notice"),
                ("sd.req@1.path", "/x"),
                ("sd.req@1.code", "200")
            ]),
        )]
    );
    assert_eq!(p.tally.messages, 1);
    assert_eq!(p.tally.reasons, [0; Reason::ALL.len()]);
}

#[test]
fn missing_values_fall_back_to_the_sender_and_the_receipt() {
    let mut p = Pending::default();
    p.add(b"<11>1 - - - - - - disk failing\n", peer(), NOW, &mapping());
    // An IPv4 sender seen through an IPv6 socket is named by its IPv4 address.
    let mapped = IpAddr::V6(Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0207]));
    p.add(b"<12>Jun 15 11:00:00 kernel: link down", mapped, NOW, &mapping());
    let got = rows(&mut p);
    assert_eq!(
        got[0],
        (
            pairs(&[("app_name", "unknown"), ("facility", "user"), ("hostname", "192.0.2.7"), ("level", "error")]),
            NOW,
            "disk failing".to_string(),
            pairs(&[("severity", "err")]),
        )
    );
    assert_eq!(
        got[1].0,
        pairs(&[("app_name", "kernel"), ("facility", "user"), ("hostname", "192.0.2.7"), ("level", "warn")])
    );
    assert_eq!(got[1].1, NOW - 3600 * S);
}

#[test]
fn a_frame_that_does_not_parse_is_kept_raw_with_the_reason() {
    let mut p = Pending::default();
    let problem = p.add(b"garbage \xff here\r\n", peer(), NOW, &mapping()).unwrap();
    assert_eq!(problem, Problem { reason: Reason::ParseError, detail: "not syslog: no <PRI> and no timestamp".into() });
    p.add(b"<13>1 2024-06-15 h a - - - x", peer(), NOW, &mapping());
    p.add_truncated(b"<13>1 - h", 30, peer(), NOW, &mapping());
    let got = rows(&mut p);
    let labels = pairs(&[("app_name", "unknown"), ("hostname", "192.0.2.7")]);
    assert_eq!(
        got,
        vec![
            (
                labels.clone(),
                NOW,
                "garbage \u{fffd} here".to_string(),
                pairs(&[("syslog_parse_error", "not syslog: no <PRI> and no timestamp")])
            ),
            (
                labels.clone(),
                NOW,
                "<13>1 2024-06-15 h a - - - x".to_string(),
                pairs(&[("syslog_parse_error", "invalid timestamp \"2024-06-15\"")])
            ),
            (
                labels,
                NOW,
                "<13>1 - h".to_string(),
                pairs(&[(
                    "syslog_parse_error",
                    "octet-counted frame cut short: the connection closed after 9 of 30 bytes"
                )])
            ),
        ]
    );
    assert_eq!(p.tally.get(Reason::ParseError), 3);
    assert_eq!(p.tally.messages, 3);
}

#[test]
fn invalid_utf8_is_kept_and_counted() {
    let mut p = Pending::default();
    let problem = p.add(b"<14>1 - h a - - - caf\xe9", peer(), NOW, &mapping()).unwrap();
    assert_eq!(problem.reason, Reason::NotUtf8);
    assert_eq!(rows(&mut p)[0].2, "caf\u{fffd}");
    assert_eq!(p.tally.get(Reason::NotUtf8), 1);
}

#[test]
fn times_outside_the_window_and_long_lines_are_dropped_and_counted() {
    let mut p = Pending::default();
    let m = Mapping { limits: Limits { max_line_bytes: 10, ..Limits::default() }, ..mapping() };
    let old = p.add(b"<14>1 2024-01-01T00:00:00Z h a - - - old", peer(), NOW, &m).unwrap();
    assert_eq!(old.reason, Reason::TooOld);
    assert_eq!(old.detail, "timestamp 2024-01-01T00:00:00.000000000Z is older than the retention period");
    let new = p.add(b"<14>1 2024-06-18T00:00:00Z h a - - - new", peer(), NOW, &m).unwrap();
    assert_eq!(new.reason, Reason::TooNew);
    let long = p.add(b"<14>1 - h a - - - 0123456789x", peer(), NOW, &m).unwrap();
    assert_eq!(long.reason, Reason::LineTooLong);
    assert_eq!(p.add(b"<14>1 2024-06-16T00:00:00Z h a - - - ok", peer(), NOW, &m), None);
    assert_eq!(p.len(), 1);
    assert_eq!((p.tally.get(Reason::TooOld), p.tally.get(Reason::TooNew), p.tally.get(Reason::LineTooLong)), (1, 1, 1));
    assert_eq!(p.tally.messages, 4);
    let fields = Mapping { limits: Limits { max_fields: 2, ..Limits::default() }, ..mapping() };
    let many = p.add(b"<14>1 - h a - - [x a=\"1\" b=\"2\"] m", peer(), NOW, &fields).unwrap();
    assert_eq!(many.reason, Reason::TooManyFields);
}

#[test]
fn oversized_frames_are_counted() {
    let mut p = Pending::default();
    let problem = p.add_oversized(70_000, 65_536);
    assert_eq!(problem.detail, "frame of 70000 bytes is longer than syslog.max_message_bytes (65536 bytes)");
    assert!(p.is_empty());
    assert_eq!((p.tally.messages, p.tally.get(Reason::Oversized)), (1, 1));
}

#[test]
fn one_stream_per_label_set_and_the_label_limit() {
    let mut p = Pending::default();
    for _ in 0..3 {
        p.add(b"<14>1 - h a - - - x", peer(), NOW, &mapping());
    }
    p.add(b"<14>1 - other a - - - x", peer(), NOW, &mapping());
    assert_eq!(p.len(), 4);
    let batch = p.take();
    assert_eq!(batch.streams.len(), 2);
    assert_eq!(batch.entries.iter().map(|e| e.stream).collect::<Vec<_>>(), [0, 0, 0, 1]);
    // Over the server's label limit, the last labels are left out.
    let two = Mapping { limits: Limits { max_labels: 2, ..Limits::default() }, ..mapping() };
    p.add(b"<14>1 - h a - - - x", peer(), NOW, &two);
    assert_eq!(rows(&mut p)[0].0, pairs(&[("app_name", "a"), ("hostname", "h")]));
}

#[test]
fn empty_frames_are_nothing() {
    let mut p = Pending::default();
    assert_eq!(p.add(b"\r\n", peer(), NOW, &mapping()), None);
    assert_eq!(p.add(b"", peer(), NOW, &mapping()), None);
    assert!(p.is_empty());
    assert_eq!(p.tally.messages, 0);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_counts_from_the_first_entry() {
    let mut p = Pending::default();
    assert_eq!(p.deadline(Duration::from_millis(200)), None);
    let start = Instant::now();
    p.add(b"<14>1 - h a - - - x", peer(), NOW, &mapping());
    tokio::time::advance(Duration::from_millis(50)).await;
    p.add(b"<14>1 - h a - - - y", peer(), NOW, &mapping());
    assert_eq!(p.deadline(Duration::from_millis(200)), Some(start + Duration::from_millis(200)));
    p.take();
    assert_eq!(p.deadline(Duration::from_millis(200)), None);
}
