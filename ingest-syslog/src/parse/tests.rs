use super::*;

const S: i64 = NANOS_PER_SEC;

/// Received at 2024-06-15T12:00:00Z, BSD times in UTC.
fn cx() -> Context {
    Context { received_ns: 1_718_452_800 * S, bsd_offset_secs: 0 }
}

fn ok(frame: &str) -> Message {
    parse(frame.as_bytes(), cx()).unwrap_or_else(|e| panic!("{frame:?}: {e}"))
}

fn err(frame: &[u8]) -> ParseError {
    match parse(frame, cx()) {
        Ok(m) => panic!("{:?} parsed: {m:?}", String::from_utf8_lossy(frame)),
        Err(e) => e,
    }
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

// --- RFC 5424: the examples of its section 6.5 -----------------------------------------------------

#[test]
fn rfc5424_example_1_no_structured_data_and_a_bom() {
    let m = ok(
        "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \u{feff}'su root' failed for lonvick on /dev/pts/8",
    );
    assert_eq!(
        m,
        Message {
            format: Format::Rfc5424,
            facility: 4,
            severity: 2,
            time_ns: Some(1_065_910_455 * S + 3_000_000),
            hostname: s("mymachine.example.com"),
            app_name: s("su"),
            procid: None,
            msgid: s("ID47"),
            structured: vec![],
            msg: "'su root' failed for lonvick on /dev/pts/8".into(),
            invalid_utf8: false,
        }
    );
    assert_eq!((facility_name(m.facility), severity_name(m.severity), level(m.severity)), ("auth", "crit", "critical"));
}

#[test]
fn rfc5424_example_2_offset_and_microseconds() {
    let m = ok("<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts.");
    assert_eq!(m.time_ns, Some(1_061_727_255 * S + 3_000));
    assert_eq!((m.hostname, m.app_name, m.procid, m.msgid), (s("192.0.2.1"), s("myproc"), s("8710"), None));
    assert_eq!(m.msg, "%% It's time to make the do-nuts.");
    assert_eq!((facility_name(m.facility), severity_name(m.severity), level(m.severity)), ("local4", "notice", "info"));
}

#[test]
fn rfc5424_example_3_structured_data() {
    let m = ok(
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"] \u{feff}An application event log entry...",
    );
    assert_eq!(
        m.structured,
        vec![
            ("sd.exampleSDID@32473.iut".to_string(), "3".to_string()),
            ("sd.exampleSDID@32473.eventSource".to_string(), "Application".to_string()),
            ("sd.exampleSDID@32473.eventID".to_string(), "1011".to_string()),
        ]
    );
    assert_eq!(m.msg, "An application event log entry...");
}

#[test]
fn rfc5424_example_4_two_elements_and_no_message() {
    let m = ok(
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"][examplePriority@32473 class=\"high\"]",
    );
    assert_eq!(m.structured.len(), 4);
    assert_eq!(m.structured[3], ("sd.examplePriority@32473.class".to_string(), "high".to_string()));
    assert_eq!(m.msg, "");
}

#[test]
fn rfc5424_one_extra_space_before_the_message_is_dropped() {
    // As rsyslog forwards a message it received as RFC 3164 (its msg property keeps the tag's space).
    assert_eq!(ok("<13>1 - h a - - -  relayed").msg, "relayed");
    assert_eq!(ok("<13>1 - h a - - -   indented").msg, " indented");
}

#[test]
fn rfc5424_nil_values_everywhere() {
    let m = ok("<13>1 - - - - - -");
    assert_eq!((m.time_ns, m.hostname, m.app_name, m.procid, m.msgid), (None, None, None, None, None));
    assert_eq!(m.msg, "");
    assert_eq!((facility_name(m.facility), severity_name(m.severity)), ("user", "notice"));
}

#[test]
fn rfc5424_structured_data_escapes() {
    let m = ok(r#"<14>1 - h a - - [x@1 q="say \"hi\"" b="C:\\dir" c="a\]b" d="keep \n and \x" e=""] msg"#);
    let want = [
        ("sd.x@1.q", "say \"hi\""),
        ("sd.x@1.b", "C:\\dir"),
        ("sd.x@1.c", "a]b"),
        ("sd.x@1.d", "keep \\n and \\x"),
        ("sd.x@1.e", ""),
    ];
    let got: Vec<(&str, &str)> = m.structured.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(got, want);
    assert_eq!(m.msg, "msg");
}

#[test]
fn rfc5424_a_repeated_parameter_keeps_every_value() {
    let m = ok(r#"<14>1 - h a - - [x a="1" a="2"][x a="3"] m"#);
    assert_eq!(m.structured, vec![("sd.x.a".to_string(), "1, 2, 3".to_string())]);
}

#[test]
fn rfc5424_an_element_without_parameters() {
    let m = ok("<14>1 - h a - - [timeQuality] m");
    assert_eq!(m.structured, vec![]);
    assert_eq!(m.msg, "m");
}

#[test]
fn rfc5424_invalid_utf8_is_replaced_and_noted() {
    let m = parse(b"<14>1 - h a - - [x v=\"\xff\"] caf\xc3\xa9 \xfe!", cx()).unwrap();
    assert!(m.invalid_utf8);
    assert_eq!(m.msg, "caf\u{e9} \u{fffd}!");
    assert_eq!(m.structured[0].1, "\u{fffd}");
    assert!(!ok("<14>1 - h a - - - caf\u{e9}").invalid_utf8);
}

#[test]
fn rfc5424_errors_name_what_is_wrong() {
    assert_eq!(err(b"<13>1 2003-10-11T22:14:15Z host"), ParseError::Truncated { field: "hostname" });
    assert_eq!(err(b"<13>1 2003-10-11T22:14:15Z host "), ParseError::Truncated { field: "app-name" });
    assert_eq!(err(b"<13>1 - h a p i"), ParseError::Truncated { field: "msgid" });
    assert_eq!(err(b"<13>1 - h a p i "), ParseError::Truncated { field: "structured data" });
    assert_eq!(err(b"<13>1 -  a p i - m"), ParseError::Empty { field: "hostname" });
    assert_eq!(err(b"<13>1 yesterday h a - - - m"), ParseError::InvalidTimestamp { text: "yesterday".into() });
    assert_eq!(err(b"<13>1 2003-10-11 h a - - - m"), ParseError::InvalidTimestamp { text: "2003-10-11".into() });
    let long = format!("<13>1 - {} a - - - m", "h".repeat(300));
    assert_eq!(err(long.as_bytes()), ParseError::TooLong { field: "hostname", bytes: 300, limit: 255 });
    for (frame, reason) in [
        (&b"<13>1 - h a - - [x a=\"1 m"[..], "parameter value not closed with \""),
        (b"<13>1 - h a - - [x a=\"1\" m", "expected = after a parameter name"),
        (b"<13>1 - h a - - [x a=1] m", "expected \" to open a parameter value"),
        (b"<13>1 - h a - - [x a] m", "expected = after a parameter name"),
        (b"<13>1 - h a - - [x a=\"1\"]m", "expected a space between the structured data and the message"),
        (b"<13>1 - h a - - [x a=\"1\"", "element not closed with ]"),
        (b"<13>1 - h a - - [] m", "expected a name"),
        (b"<13>1 - h a - - x m", "expected - or ["),
    ] {
        match err(frame) {
            ParseError::StructuredData { reason: r, .. } => assert_eq!(r, reason, "{}", String::from_utf8_lossy(frame)),
            e => panic!("{}: {e}", String::from_utf8_lossy(frame)),
        }
    }
    // The position is the byte in the frame.
    assert_eq!(err(b"<13>1 - h a - - x m"), ParseError::StructuredData { at: 16, reason: "expected - or [" });
}

// --- RFC 3164 ------------------------------------------------------------------------------------

#[test]
fn rfc3164_example_of_the_rfc() {
    let c = Context { received_ns: 1_065_910_455 * S, bsd_offset_secs: 0 };
    let m = parse(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8", c).unwrap();
    assert_eq!(
        m,
        Message {
            format: Format::Rfc3164,
            facility: 4,
            severity: 2,
            time_ns: Some(1_065_910_455 * S),
            hostname: s("mymachine"),
            app_name: s("su"),
            procid: None,
            msgid: None,
            structured: vec![],
            msg: "'su root' failed for lonvick on /dev/pts/8".into(),
            invalid_utf8: false,
        }
    );
    // Another example of RFC 3164: no tag, an IP address as the hostname.
    let m = parse(b"<13>Feb  5 17:32:18 10.0.0.99 Use the BFG!", c).unwrap();
    assert_eq!((m.hostname, m.app_name, m.msg.as_str()), (s("10.0.0.99"), None, "Use the BFG!"));
}

#[test]
fn rfc3164_tag_with_pid_and_the_common_variants() {
    let m = ok("<30>Jun 15 11:00:00 nas CRON[1234]: (root) CMD (run-parts /etc/cron.hourly)");
    assert_eq!((m.hostname, m.app_name, m.procid), (s("nas"), s("CRON"), s("1234")));
    assert_eq!(m.msg, "(root) CMD (run-parts /etc/cron.hourly)");
    assert_eq!((facility_name(m.facility), severity_name(m.severity)), ("daemon", "info"));
    // A tag with a slash, a single-digit day without padding, fractions of a second.
    let m = ok("<22>Jun 5 11:00:00.250 mail postfix/smtpd[99]: connect from x");
    assert_eq!((m.app_name, m.procid), (s("postfix/smtpd"), s("99")));
    assert_eq!(m.time_ns, Some((1_718_452_800 - 10 * 86_400 - 3600) * S + 250_000_000));
    // No hostname: a local sender's message.
    let m = ok("<13>Jun 15 11:00:00 su: hello");
    assert_eq!((m.hostname, m.app_name, m.msg.as_str()), (None, s("su"), "hello"));
    // No PRI: facility user, severity notice, as RFC 3164 says a relay assumes.
    let m = ok("Jun 15 11:00:00 host app: text");
    assert_eq!((m.facility, m.severity, m.hostname, m.app_name), (1, 5, s("host"), s("app")));
    // A year before the time.
    let m = ok("<13>Mar  1 2024 10:00:00 host app: x");
    assert_eq!(m.time_ns, Some(1_709_287_200 * S));
    // A tag with a PID and no colon; the kernel's tag followed by a bracket in the message.
    let m = ok("<6>Jun 15 11:00:00 host sshd[7] accepted");
    assert_eq!((m.app_name, m.procid, m.msg.as_str()), (s("sshd"), s("7"), "accepted"));
    let m = ok("<6>Jun 15 11:00:00 host kernel: [ 12.5] eth0 up");
    assert_eq!((m.app_name, m.msg.as_str()), (s("kernel"), "[ 12.5] eth0 up"));
    // PRI and no timestamp: the tag still counts, there is no hostname.
    let m = ok("<13>myapp: hello");
    assert_eq!((m.time_ns, m.hostname, m.app_name, m.msg.as_str()), (None, None, s("myapp"), "hello"));
    let m = ok("<13>just text: with a colon later");
    assert_eq!((m.app_name, m.msg.as_str()), (None, "just text: with a colon later"));
    // A URL is not a tag.
    assert_eq!(ok("<13>Jun 15 11:00:00 h http://x y").app_name, None);
}

#[test]
fn rfc3164_iso_timestamps_as_rsyslog_forwards_them() {
    let m = ok("<30>2024-05-01T10:00:00.123456+02:00 web nginx[42]: GET /");
    assert_eq!(m.format, Format::Rfc3164);
    assert_eq!(m.time_ns, Some(1_714_550_400 * S + 123_456_000));
    assert_eq!((m.hostname, m.app_name, m.procid, m.msg.as_str()), (s("web"), s("nginx"), s("42"), "GET /"));
    // Without a zone: the configured offset.
    let c = Context { bsd_offset_secs: 2 * 3600, ..cx() };
    let m = parse(b"<30>2024-05-01T10:00:00 web app: x", c).unwrap();
    assert_eq!(m.time_ns, Some(1_714_550_400 * S));
    assert_eq!(
        err(b"<30>2024-13-01T10:00:00Z web app: x"),
        ParseError::InvalidTimestamp { text: "2024-13-01T10:00:00Z".into() }
    );
}

#[test]
fn rfc3164_timestamps_are_read_at_the_configured_offset() {
    let c = Context { received_ns: 1_065_900_000 * S, bsd_offset_secs: 2 * 3600 };
    let m = parse(b"<13>Oct 11 22:14:15 h a: x", c).unwrap();
    assert_eq!(m.time_ns, Some(1_065_903_255 * S));
}

#[test]
fn rfc3164_year_is_inferred_from_the_receipt() {
    let at = |received: i64, frame: &str| {
        parse(frame.as_bytes(), Context { received_ns: received * S, bsd_offset_secs: 0 }).unwrap().time_ns
    };
    // Sent on Dec 31, received on Jan 1: last year.
    assert_eq!(at(1_704_067_800, "<13>Dec 31 23:59:00 h a: x"), Some(1_704_067_140 * S));
    // Sent on Jan 1 by a clock a little ahead, received on Dec 31: next year.
    assert_eq!(at(1_704_066_600, "<13>Jan  1 00:05:00 h a: x"), Some(1_704_067_500 * S));
    // Earlier this year.
    assert_eq!(at(1_718_452_800, "<13>Mar  1 10:00:00 h a: x"), Some(1_709_287_200 * S));
    // A day ahead is this year (a clock a bit fast); five days ahead is last year.
    assert_eq!(at(1_718_452_800, "<13>Jun 16 10:00:00 h a: x"), Some(1_718_532_000 * S));
    assert_eq!(at(1_718_452_800, "<13>Jun 20 10:00:00 h a: x"), Some(1_687_255_200 * S));
    // Feb 29 of a leap year; of a year without one there is no such day: the receipt time is used.
    assert_eq!(at(1_709_287_200, "<13>Feb 29 12:00:00 h a: x"), Some(1_709_208_000 * S));
    assert_eq!(at(1_740_787_200, "<13>Feb 29 12:00:00 h a: x"), None);
}

#[test]
fn not_syslog_and_bad_pri() {
    assert_eq!(err(b"hello world"), ParseError::NotSyslog);
    assert_eq!(err(b"\x00\xff\xfe garbage"), ParseError::NotSyslog);
    assert_eq!(err(b"<999>Oct 11 22:14:15 h a: x"), ParseError::InvalidPri { text: "<999>O".into() });
    assert_eq!(err(b"<192>x"), ParseError::InvalidPri { text: "<192>x".into() });
    assert_eq!(err(b"<abc>x"), ParseError::InvalidPri { text: "<abc>x".into() });
    assert_eq!(err(b"<13"), ParseError::InvalidPri { text: "<13".into() });
    assert_eq!(err(b"<>"), ParseError::InvalidPri { text: "<>".into() });
    assert_eq!(err(b"<1234>x"), ParseError::InvalidPri { text: "<1234>".into() });
    assert_eq!(ok("<0>Jun 15 11:00:00 h a: x").facility, 0);
    assert_eq!(ok("<191>Jun 15 11:00:00 h a: x").facility, 23);
}

#[test]
fn trailing_newlines_and_nuls_are_not_part_of_the_message() {
    assert_eq!(ok("<13>1 - h a - - - hello\r\n").msg, "hello");
    assert_eq!(ok("<13>Jun 15 11:00:00 h a: hello\n\0").msg, "hello");
}

#[test]
fn facility_severity_and_level_tables() {
    let facilities: Vec<&str> = (0..24).map(facility_name).collect();
    assert_eq!(
        facilities.join(","),
        "kern,user,mail,daemon,auth,syslog,lpr,news,uucp,cron,authpriv,ftp,ntp,audit,alert,clock,\
         local0,local1,local2,local3,local4,local5,local6,local7"
    );
    let severities: Vec<(&str, &str)> = (0..8).map(|s| (severity_name(s), level(s))).collect();
    assert_eq!(
        severities,
        [
            ("emerg", "critical"),
            ("alert", "critical"),
            ("crit", "critical"),
            ("err", "error"),
            ("warning", "warn"),
            ("notice", "info"),
            ("info", "info"),
            ("debug", "debug"),
        ]
    );
    for pri in 0..=191u16 {
        let m = parse(format!("<{pri}>1 - - - - - -").as_bytes(), cx()).unwrap();
        assert_eq!(u16::from(m.facility) * 8 + u16::from(m.severity), pri);
    }
}

/// A seeded generator (xorshift), so the garbage below is the same on every run.
fn bytes(seed: &mut u64, n: usize, alphabet: &[u8]) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            alphabet[(*seed % alphabet.len() as u64) as usize]
        })
        .collect()
}

#[test]
fn no_input_panics() {
    let examples: [&[u8]; 6] = [
        b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"App\\\"lication\"][p class=\"high\"] \xEF\xBB\xBFentry",
        b"<34>Oct 11 22:14:15 mymachine su[12]: 'su root' failed",
        b"<30>2024-05-01T10:00:00.123456+02:00 web nginx[42]: GET /",
        b"Mar  1 2024 10:00:00.5 host app: x",
        b"<13>myapp[: x",
        b"<13>a[1]",
    ];
    // Every prefix of every example.
    for e in examples {
        for n in 0..=e.len() {
            let _ = parse(&e[..n], cx());
        }
    }
    // Random bytes, and random text made of syslog's own punctuation.
    let mut seed = 0x5eed_u64;
    let all: Vec<u8> = (0..=255).collect();
    for i in 0..20_000 {
        let n = i % 80;
        let _ = parse(&bytes(&mut seed, n, &all), cx());
        let mut frame = b"<13>1 ".to_vec();
        frame.extend(bytes(&mut seed, n, b"<>1 -[]=\"\\:Jan 0123456789T.Z+"));
        let _ = parse(&frame, cx());
        let mut frame = b"<13>Jun 15 ".to_vec();
        frame.extend(bytes(&mut seed, n, b" :[]0123456789ab"));
        let _ = parse(&frame, cx());
    }
}
