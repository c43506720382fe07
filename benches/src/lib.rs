//! Inputs shared by the criterion benches: request bodies built from the Loghub samples, seeded, so that
//! every run measures the same bytes.

use std::path::Path;

use serde_json::json;
use wire::loki::{EntryAdapter, PushRequest, StreamAdapter, Timestamp, encode_protobuf};

/// Loghub lines of all 16 systems, interleaved.
pub fn loghub_lines() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/loghub");
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with("_2k.log")).collect())
        .unwrap_or_default();
    names.sort();
    for path in names {
        let app = path
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches("_2k.log").to_lowercase())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push((app.clone(), line.to_string()));
        }
    }
    out
}

/// `n` lines as a JSON-lines body with five stream fields, as `gen_logs.py` writes them.
pub fn jsonline_body(lines: &[(String, String)], n: usize, t0: i64) -> Vec<u8> {
    let mut body = String::new();
    for (i, (app, line)) in lines.iter().cycle().take(n).enumerate() {
        let pod = i % 200;
        let v = json!({"_time": store::time::format_rfc3339_ns(t0 + i as i64 * 100_000), "_msg": line,
            "namespace": format!("ns-{}", pod % 10), "pod": format!("{app}-{pod:05}"), "container": app, "app": app,
            "node": format!("node-{}", pod % 8)});
        body.push_str(&v.to_string());
        body.push('\n');
    }
    body.into_bytes()
}

/// `n` lines as a Loki push JSON body, one stream per app.
pub fn loki_json_body(lines: &[(String, String)], n: usize, t0: i64) -> Vec<u8> {
    let mut streams: std::collections::BTreeMap<&str, Vec<serde_json::Value>> = Default::default();
    for (i, (app, line)) in lines.iter().cycle().take(n).enumerate() {
        streams.entry(app).or_default().push(json!([(t0 + i as i64).to_string(), line]));
    }
    let streams: Vec<_> =
        streams.into_iter().map(|(app, values)| json!({"stream": {"app": app}, "values": values})).collect();
    json!({ "streams": streams }).to_string().into_bytes()
}

/// `n` lines as a Loki push protobuf body (snappy), one stream per app.
pub fn loki_proto_body(lines: &[(String, String)], n: usize, t0: i64) -> Vec<u8> {
    let mut streams: std::collections::BTreeMap<&str, Vec<EntryAdapter>> = Default::default();
    for (i, (app, line)) in lines.iter().cycle().take(n).enumerate() {
        let ns = t0 + i as i64;
        streams.entry(app).or_default().push(EntryAdapter {
            timestamp: Some(Timestamp { seconds: ns / 1_000_000_000, nanos: (ns % 1_000_000_000) as i32 }),
            line: line.clone().into_bytes(),
            structured_metadata: vec![],
            parsed: vec![],
        });
    }
    let streams = streams
        .into_iter()
        .map(|(app, entries)| StreamAdapter { labels: format!("{{app=\"{app}\"}}").into_bytes(), entries, hash: 0 })
        .collect();
    encode_protobuf(&PushRequest { streams })
}

/// OTLP logs: one `ResourceLogs` per stream, its labels as resource attributes under OpenTelemetry's
/// names (`app` → `service.name`, `namespace` → `k8s.namespace.name`, `pod` → `k8s.pod.name`, `container`
/// → `k8s.container.name`, `node` → `k8s.node.name`, any other name as it is), each entry a record with
/// its time and a string body.
pub fn otlp_logs_request<'a>(
    streams: impl IntoIterator<Item = (Vec<(String, String)>, Vec<(i64, &'a str)>)>,
) -> ingest_otlp::proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
    use ingest_otlp::proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use ingest_otlp::proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use ingest_otlp::proto::tonic::resource::v1::Resource;
    let string = |s: &str| Some(AnyValue { value: Some(Value::StringValue(s.to_string())) });
    let resource_logs = streams
        .into_iter()
        .map(|(labels, entries)| {
            let attributes = labels
                .iter()
                .map(|(k, v)| {
                    let key = match k.as_str() {
                        "app" => "service.name",
                        "namespace" => "k8s.namespace.name",
                        "pod" => "k8s.pod.name",
                        "container" => "k8s.container.name",
                        "node" => "k8s.node.name",
                        other => other,
                    };
                    KeyValue { key: key.to_string(), value: string(v), ..Default::default() }
                })
                .collect();
            let log_records = entries
                .into_iter()
                .map(|(ns, line)| LogRecord { time_unix_nano: ns as u64, body: string(line), ..Default::default() })
                .collect();
            ResourceLogs {
                resource: Some(Resource { attributes, ..Default::default() }),
                scope_logs: vec![ScopeLogs { log_records, ..Default::default() }],
                schema_url: String::new(),
            }
        })
        .collect();
    ingest_otlp::proto::tonic::collector::logs::v1::ExportLogsServiceRequest { resource_logs }
}

/// `n` lines as an OTLP logs protobuf body (uncompressed), one resource per app, as
/// [`loki_proto_body`] has one stream per app.
pub fn otlp_logs_body(lines: &[(String, String)], n: usize, t0: i64) -> Vec<u8> {
    use prost::Message;
    let mut streams: std::collections::BTreeMap<&str, Vec<(i64, &str)>> = Default::default();
    for (i, (app, line)) in lines.iter().cycle().take(n).enumerate() {
        streams.entry(app).or_default().push((t0 + i as i64, line));
    }
    otlp_logs_request(streams.into_iter().map(|(app, e)| (vec![("app".to_string(), app.to_string())], e)))
        .encode_to_vec()
}
