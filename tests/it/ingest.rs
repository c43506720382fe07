//! Every Loghub sample through every ingest protocol, counted back with SQL; the content types and
//! encodings that real shippers send.

use std::io::Write;

use serde_json::{Value, json};
use wire::loki::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp, encode_protobuf};

use crate::harness::{TestServer, loghub, test_config};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Per-app counts as SQL sees them, compared with what was sent.
async fn assert_counts(server: &TestServer, tenant: &str, sent: &[(String, Vec<String>)]) {
    let total: usize = sent.iter().map(|(_, l)| l.len()).sum();
    assert_eq!(server.count(tenant).await as usize, total, "tenant {tenant}");
    let rows = server.sql(tenant, "SELECT app, count(*) AS n FROM logs GROUP BY app ORDER BY app").await;
    let got: Vec<(String, i64)> =
        rows.iter().map(|r| (r["app"].as_str().unwrap().to_string(), r["n"].as_i64().unwrap())).collect();
    let mut want: Vec<(String, i64)> = sent.iter().map(|(a, l)| (a.clone(), l.len() as i64)).collect();
    want.sort();
    assert_eq!(got, want, "tenant {tenant}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loghub_through_every_protocol_is_counted_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let data = loghub();
    // An hour ago, well inside the retention period, so that the restart below keeps everything.
    let t0 = store::time::now_ns() - 3600 * 1_000_000_000;
    let es_time = store::time::format_rfc3339_ns(t0);

    // Loki push, JSON, gzip, with structured metadata on every tenth line.
    for (app, lines) in &data {
        let values: Vec<Value> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let ts = (t0 + i as i64).to_string();
                if i % 10 == 0 { json!([ts, l, {"line_no": i.to_string()}]) } else { json!([ts, l]) }
            })
            .collect();
        let body = json!({"streams": [{"stream": {"app": app, "job": "loghub"}, "values": values}]}).to_string();
        let r = server
            .client
            .post(server.url("/loki/api/v1/push"))
            .header("X-Scope-OrgID", "loki-json")
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .body(gzip(body.as_bytes()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    }

    // Loki push, protobuf with snappy, as Promtail and Alloy send it.
    for (app, lines) in &data {
        let entries = lines
            .iter()
            .enumerate()
            .map(|(i, l)| EntryAdapter {
                timestamp: Some(Timestamp { seconds: t0 / 1_000_000_000 + i as i64, nanos: 0 }),
                line: l.clone().into_bytes(),
                structured_metadata: vec![LabelPairAdapter {
                    name: b"trace_id".to_vec(),
                    value: format!("t{i}").into_bytes(),
                }],
                parsed: vec![],
            })
            .collect();
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: format!("{{app=\"{app}\", job=\"loghub\"}}").into_bytes(),
                entries,
                hash: 0,
            }],
        };
        let r = server
            .client
            .post(server.url("/loki/api/v1/push"))
            .header("X-Scope-OrgID", "loki-proto")
            .header("Content-Type", "application/x-protobuf")
            .body(encode_protobuf(&req))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    }

    // JSON lines, each system with a different content type and encoding that real shippers use.
    let content_types = [Some("application/json"), Some("application/x-ndjson"), Some("application/stream+json"), None];
    for (k, (app, lines)) in data.iter().enumerate() {
        let mut body = String::new();
        for (i, l) in lines.iter().enumerate() {
            body.push_str(
                &json!({"_time": (t0 + i as i64).to_string(), "_msg": l, "app": app, "host": {"name": "h1"}})
                    .to_string(),
            );
            body.push('\n');
        }
        let mut req =
            server.client.post(server.url("/insert/jsonline?_stream_fields=app")).header("X-Scope-OrgID", "jsonline");
        if let Some(ct) = content_types[k % 4] {
            req = req.header("Content-Type", ct);
        }
        let req = match k % 3 {
            0 => req.body(body),
            1 => req.header("Content-Encoding", "gzip").body(gzip(body.as_bytes())),
            _ => req.header("Content-Encoding", "zstd").body(zstd::encode_all(body.as_bytes(), 1).unwrap()),
        };
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["accepted"], lines.len());
    }

    // Elasticsearch bulk, create and index actions.
    for (k, (app, lines)) in data.iter().enumerate() {
        let mut body = String::new();
        for (i, l) in lines.iter().enumerate() {
            let action = if i % 2 == 0 { "create" } else { "index" };
            body.push_str(&json!({action: {"_index": "logs"}}).to_string());
            body.push('\n');
            body.push_str(&json!({"@timestamp": es_time, "message": l, "app": app, "level": "info"}).to_string());
            body.push('\n');
        }
        let req = server
            .client
            .post(server.url("/insert/elasticsearch/_bulk?_stream_fields=app"))
            .header("X-Scope-OrgID", "esbulk");
        let req =
            if k % 2 == 0 { req.header("Content-Type", "application/x-ndjson").body(body) } else { req.body(body) };
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-elastic-product"], "Elasticsearch");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["errors"], false, "{answer}");
        assert_eq!(answer["items"].as_array().unwrap().len(), lines.len());
        assert_eq!(answer["items"][0]["create"]["status"], 201);
        assert_eq!(answer["items"][1]["index"]["status"], 201);
    }

    for tenant in ["loki-json", "loki-proto", "jsonline", "esbulk"] {
        assert_counts(&server, tenant, &data).await;
    }
    // Structured metadata and nested fields became columns.
    let rows = server.sql("loki-proto", "SELECT count(*) AS n FROM logs WHERE trace_id = 't7'").await;
    assert_eq!(rows[0]["n"], 16);
    let rows = server.sql("jsonline", "SELECT count(*) AS n FROM logs WHERE \"host.name\" = 'h1'").await;
    assert_eq!(rows[0]["n"].as_i64().unwrap() as usize, data.iter().map(|(_, l)| l.len()).sum::<usize>());

    // The same counts after the head is flushed to Parquet, and after a restart.
    server.flush().await;
    for tenant in ["loki-json", "loki-proto", "jsonline", "esbulk"] {
        assert_counts(&server, tenant, &data).await;
    }
    let (first_app, first_lines) = &data[0];
    let needle = first_lines[0].split_whitespace().last().unwrap().to_string();
    let rows = server
        .sql(
            "loki-json",
            &format!(
                "SELECT count(*) AS n FROM logs WHERE message LIKE '%{}%' AND app = '{first_app}'",
                needle.replace('\'', "''")
            ),
        )
        .await;
    assert!(rows[0]["n"].as_i64().unwrap() >= 1);
    server.stop().await;

    let server = TestServer::start(test_config(dir.path())).await;
    for tenant in ["loki-json", "loki-proto", "jsonline", "esbulk"] {
        assert_counts(&server, tenant, &data).await;
    }
    // Tenants never see each other's data.
    assert_eq!(server.count("nobody").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_handshake_endpoints_answer_like_elasticsearch() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let c = &server.client;
    let root: Value = c.get(server.url("/insert/elasticsearch/")).send().await.unwrap().json().await.unwrap();
    assert!(root["version"]["number"].as_str().unwrap().starts_with("8."));
    let r = c.get(server.url("/insert/elasticsearch/_license")).send().await.unwrap();
    assert_eq!(r.headers()["x-elastic-product"], "Elasticsearch");
    let lic: Value = r.json().await.unwrap();
    assert_eq!(lic["license"]["status"], "active");
    let r = c.get(server.url("/insert/elasticsearch/_cluster/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.put(server.url("/insert/elasticsearch/_index_template/logs")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // An index in the path, and PUT, as elasticsearch-py sends.
    let body = "{\"create\":{}}\n{\"message\":\"hi\"}\n";
    let r = c.put(server.url("/insert/elasticsearch/myindex/_bulk")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.count("default").await, 1);
    server.stop().await;
}

/// Issue 17: entries with many distinct field names made one flush write a part of 150,000 columns (8 s and
/// 4.7 GB in a release build). Parts now stay within `store.max_field_columns`: the flush writes several,
/// compaction does not merge them past it, and every field stays queryable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_distinct_field_names_are_split_across_parts_within_the_column_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.store.max_field_columns = 1000;
    let server = TestServer::start(config).await;
    let now = store::time::now_ns();
    let values: Vec<Value> = (0..5)
        .map(|i| {
            let fields: serde_json::Map<String, Value> = (0..600).map(|k| (format!("f{i}_{k}"), json!("v"))).collect();
            json!([(now + i).to_string(), format!("entry {i}"), fields])
        })
        .collect();
    let body = json!({"streams": [{"stream": {"app": "wide"}, "values": values}]});
    let r = server
        .client
        .post(server.url("/loki/api/v1/push"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let flushed: Value =
        server.client.post(server.url("/api/v1/admin/flush")).send().await.unwrap().json().await.unwrap();
    assert_eq!(flushed["parts"], 5, "600 + 600 fields would pass 1000 columns: one part per entry: {flushed}");
    let compacted: Value =
        server.client.post(server.url("/api/v1/admin/compact")).send().await.unwrap().json().await.unwrap();
    assert_eq!(compacted["parts"], 5, "compaction keeps them apart: {compacted}");
    for i in 0..5 {
        let rows = server.sql("default", &format!("SELECT message FROM logs WHERE \"f{i}_599\" = 'v'")).await;
        assert_eq!(rows.len(), 1, "entry {i}: {rows:?}");
        assert_eq!(rows[0]["message"], format!("entry {i}"));
    }
    assert_eq!(server.count("default").await, 5);
    server.stop().await;
}
