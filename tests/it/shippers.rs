//! The exact Loki push requests that real shippers send, replayed: headers as each client sets them
//! (Vector's `loki` sink in its three compressions, Promtail, Grafana Alloy, the Loki Go client that the
//! Docker logging driver uses, Fluent Bit's `loki` output plain and gzipped), bodies built the way each
//! encodes them. Every line must come back with its labels, structured metadata and timestamp.

use std::io::Write;

use serde_json::{Value, json};
use wire::loki::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp, encode_protobuf};

use crate::harness::{TestServer, test_config};

/// One shipper's request: its headers and body, and the entries it carries.
struct Replay {
    client: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
}

/// One entry as sent: (ns, line, structured metadata).
type Entry = (i64, String, Vec<(String, String)>);

/// The entries every replay carries.
fn entries(t0: i64, client: &str) -> Vec<Entry> {
    (0..5)
        .map(|i| {
            let meta = if i % 2 == 0 { vec![("trace_id".to_string(), format!("{client}-t{i}"))] } else { vec![] };
            // Lines with quotes, a backslash, a tab and non-ASCII text, as logs have.
            (t0 + i * 1_000_001, format!("{client} line {i}: \"quoted\" \\ tab\there ünïcode"), meta)
        })
        .collect()
}

/// A protobuf push as Vector's `loki_logproto`, Promtail and Alloy build it: labels in Prometheus form,
/// entries with their structured metadata, wrapped in a snappy block.
fn protobuf(labels: &str, entries: &[Entry]) -> Vec<u8> {
    let entries = entries
        .iter()
        .map(|(ns, line, meta)| EntryAdapter {
            timestamp: Some(Timestamp { seconds: ns / 1_000_000_000, nanos: (ns % 1_000_000_000) as i32 }),
            line: line.clone().into_bytes(),
            structured_metadata: meta
                .iter()
                .map(|(k, v)| LabelPairAdapter { name: k.clone().into_bytes(), value: v.clone().into_bytes() })
                .collect(),
            parsed: vec![],
        })
        .collect();
    encode_protobuf(&PushRequest {
        streams: vec![StreamAdapter { labels: labels.as_bytes().to_vec(), entries, hash: 0 }],
    })
}

/// A JSON push. Vector always sends the third element (`{}` when empty); Fluent Bit only when it has
/// structured metadata.
fn json_body(labels: Value, entries: &[Entry], always_meta: bool) -> Vec<u8> {
    let values: Vec<Value> = entries
        .iter()
        .map(|(ns, line, meta)| {
            let meta: serde_json::Map<String, Value> = meta.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            if meta.is_empty() && !always_meta {
                json!([ns.to_string(), line])
            } else {
                json!([ns.to_string(), line, meta])
            }
        })
        .collect();
    serde_json::to_vec(&json!({"streams": [{"stream": labels, "values": values}]})).unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b).unwrap();
    gz.finish().unwrap()
}

fn replays(t0: i64) -> Vec<Replay> {
    let vector_labels = |c: &str| format!("{{client=\"{c}\", source_type=\"file\"}}");
    let mut out = Vec::new();
    // Vector's loki sink with its defaults: compression snappy means protobuf, and it says so in
    // Content-Encoding (src/sinks/loki/service.rs).
    let c = "vector-snappy";
    out.push(Replay {
        client: c,
        headers: vec![
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("User-Agent", "Vector/0.58.0 (x86_64-unknown-linux-gnu c3445d4 2026-08-21 22:45:56.000000000)"),
        ],
        body: protobuf(&vector_labels(c), &entries(t0, c)),
    });
    // compression: gzip means JSON, gzipped.
    let c = "vector-gzip";
    out.push(Replay {
        client: c,
        headers: vec![
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
            ("User-Agent", "Vector/0.58.0 (x86_64-unknown-linux-gnu c3445d4 2026-08-21 22:45:56.000000000)"),
        ],
        body: gzip(&json_body(json!({"client": c, "source_type": "file"}), &entries(t0, c), true)),
    });
    // compression: none means JSON as it is.
    let c = "vector-none";
    out.push(Replay {
        client: c,
        headers: vec![
            ("Content-Type", "application/json"),
            ("User-Agent", "Vector/0.58.0 (x86_64-unknown-linux-gnu c3445d4 2026-08-21 22:45:56.000000000)"),
        ],
        body: json_body(json!({"client": c, "source_type": "file"}), &entries(t0, c), true),
    });
    // Promtail, Alloy's loki.write and the Loki Go client (Docker's loki logging driver): protobuf in a
    // snappy block, no Content-Encoding.
    for (c, agent) in [
        ("promtail", "promtail/2.9.2"),
        ("alloy", "Alloy/v1.5.0 (linux; binary)"),
        ("loki-go-client", "loki-docker-driver/3.3.2"),
    ] {
        let labels = format!("{{client=\"{c}\", filename=\"/var/log/{c}.log\", job=\"varlogs\"}}");
        out.push(Replay {
            client: c,
            headers: vec![("Content-Type", "application/x-protobuf"), ("User-Agent", agent)],
            body: protobuf(&labels, &entries(t0, c)),
        });
    }
    // Fluent Bit's loki output: JSON, gzipped with `compress gzip`.
    let c = "fluent-bit";
    out.push(Replay {
        client: c,
        headers: vec![("Content-Type", "application/json"), ("User-Agent", "Fluent-Bit")],
        body: json_body(json!({"client": c, "job": "fluent-bit"}), &entries(t0, c), false),
    });
    let c = "fluent-bit-gzip";
    out.push(Replay {
        client: c,
        headers: vec![("Content-Type", "application/json"), ("Content-Encoding", "gzip"), ("User-Agent", "Fluent-Bit")],
        body: gzip(&json_body(json!({"client": c, "job": "fluent-bit"}), &entries(t0, c), false)),
    });
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shippers_loki_request_is_stored_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let t0 = store::time::now_ns() - 60_000_000_000;
    let replays = replays(t0);
    for r in &replays {
        let mut req = server.client.post(server.url("/loki/api/v1/push")).header("X-Scope-OrgID", "shippers");
        for (k, v) in &r.headers {
            req = req.header(*k, *v);
        }
        let resp = req.body(r.body.clone()).send().await.unwrap();
        let status = resp.status();
        assert_eq!(status, 204, "{}: {}", r.client, resp.text().await.unwrap());
    }
    for flushed in [false, true] {
        for r in &replays {
            let sql = format!(
                "SELECT CAST(time AS BIGINT) AS ns, message, trace_id FROM logs WHERE client = '{}' ORDER BY time",
                r.client
            );
            let rows = server.sql("shippers", &sql).await;
            let want = entries(t0, r.client);
            assert_eq!(rows.len(), want.len(), "{} (flushed: {flushed}): {rows:?}", r.client);
            for (row, (ns, line, meta)) in rows.iter().zip(&want) {
                assert_eq!(row["ns"].as_i64(), Some(*ns), "{}: {row}", r.client);
                assert_eq!(row["message"].as_str(), Some(line.as_str()), "{}", r.client);
                let trace = meta.first().map(|(_, v)| v.as_str());
                assert_eq!(row["trace_id"].as_str(), trace, "{}: {row}", r.client);
            }
        }
        // The stream labels each client sent, and no others.
        let rows = server
            .sql(
                "shippers",
                "SELECT client, job, filename, source_type, count(*) AS n FROM logs GROUP BY 1, 2, 3, 4 ORDER BY 1",
            )
            .await;
        assert_eq!(rows.len(), replays.len(), "{rows:?}");
        for row in &rows {
            let client = row["client"].as_str().unwrap();
            let (job, file, source) = match client {
                c if c.starts_with("vector") => (None, None, Some("file".to_string())),
                c if c.starts_with("fluent-bit") => (Some("fluent-bit".to_string()), None, None),
                c => (Some("varlogs".to_string()), Some(format!("/var/log/{c}.log")), None),
            };
            assert_eq!(row["job"].as_str().map(String::from), job, "{row}");
            assert_eq!(row["filename"].as_str().map(String::from), file, "{row}");
            assert_eq!(row["source_type"].as_str().map(String::from), source, "{row}");
        }
        if !flushed {
            server.flush().await;
        }
    }
    server.stop().await;
}

/// Remote write as Vector's `prometheus_remote_write` sink sends it with `compression: gzip` or `zstd`
/// (and vmagent with zstd): the protobuf under an HTTP content coding instead of snappy. The sink's
/// start-up health check is a GET of the endpoint that must answer 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_in_every_compression_a_sender_uses() {
    use prost::Message as _;
    use wire::prom::remote::pb;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let r = server.client.get(server.url("/api/v1/write")).send().await.unwrap();
    assert_eq!(r.status(), 200, "Vector's health check of the remote write endpoint");
    let t = store::time::now_ns() / 1_000_000;
    let request = |enc: &str| {
        pb::WriteRequest {
            timeseries: vec![pb::TimeSeries {
                labels: vec![
                    pb::Label { name: "__name__".into(), value: "sent_with".into() },
                    pb::Label { name: "encoding".into(), value: enc.into() },
                ],
                samples: vec![pb::Sample { value: 42.5, timestamp: t }],
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
    };
    let bodies: [(&str, Vec<u8>); 4] = [
        ("snappy", snap::raw::Encoder::new().compress_vec(&request("snappy")).unwrap()),
        ("gzip", gzip(&request("gzip"))),
        ("zstd", zstd::encode_all(&request("zstd")[..], 3).unwrap()),
        ("deflate", {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(&request("deflate")).unwrap();
            z.finish().unwrap()
        }),
    ];
    for (enc, body) in bodies {
        let r = server
            .client
            .post(server.url("/api/v1/write"))
            .header("Content-Type", "application/x-protobuf")
            .header("Content-Encoding", enc)
            .header("User-Agent", "Vector/0.58.0 (x86_64-unknown-linux-gnu c3445d4 2026-08-21 22:45:56.000000000)")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(status, 204, "{enc}: {}", r.text().await.unwrap());
    }
    // Brotli is nobody's remote write encoding: 415 naming what is accepted.
    let r = server
        .client
        .post(server.url("/api/v1/write"))
        .header("Content-Encoding", "br")
        .body(request("br"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert!(r.text().await.unwrap().contains("snappy (the protocol's default), gzip, deflate or zstd"));
    let v = server.promql("default", "sent_with", Some(t as f64 / 1000.0)).await;
    let mut got: Vec<(String, String)> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["metric"]["encoding"].as_str().unwrap().to_string(), s["value"][1].as_str().unwrap().to_string()))
        .collect();
    got.sort();
    let want: Vec<(String, String)> =
        ["deflate", "gzip", "snappy", "zstd"].iter().map(|e| (e.to_string(), "42.5".to_string())).collect();
    assert_eq!(got, want, "{v}");
    server.stop().await;
}
