//! OTLP ingest: logs and metrics over HTTP (protobuf, JSON, gzip) and gRPC, read back with LogQL and
//! PromQL; bad payloads refused whole. The `external-tests` half drives the OpenTelemetry Python SDK's
//! own exporters (tests/it/otlp_client.py) against a server.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ingest_otlp::proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use ingest_otlp::proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use ingest_otlp::proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value as Any};
use ingest_otlp::proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use ingest_otlp::proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data,
    number_data_point,
};
use ingest_otlp::proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;

use crate::harness::{ServerProcess, TestServer, assert_requests_stored_once, free_addr, test_config};

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(Any::StringValue(v.into())) }), ..Default::default() }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn logs_request(service: &str, bodies: &[&str]) -> ExportLogsServiceRequest {
    let t = now_ns();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service), kv("host.name", "node-1")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: bodies
                    .iter()
                    .enumerate()
                    .map(|(i, b)| LogRecord {
                        time_unix_nano: t + i as u64,
                        severity_number: 17,
                        body: Some(AnyValue { value: Some(Any::StringValue(b.to_string())) }),
                        attributes: vec![kv("order.id", &i.to_string())],
                        trace_id: vec![0xab; 16],
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

fn metrics_request(service: &str) -> ExportMetricsServiceRequest {
    let point = |v: f64| NumberDataPoint {
        time_unix_nano: now_ns(),
        value: Some(number_data_point::Value::AsDouble(v)),
        attributes: vec![kv("room", "kitchen")],
        ..Default::default()
    };
    let metric = |name: &str, unit: &str, data: Data| Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(data),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![kv("service.name", service)], ..Default::default() }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    metric("room.temperature", "Cel", Data::Gauge(Gauge { data_points: vec![point(21.5)] })),
                    metric(
                        "heater.starts",
                        "",
                        Data::Sum(Sum {
                            data_points: vec![point(4.0)],
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            is_monotonic: true,
                        }),
                    ),
                ],
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The `data.result` of a Loki or Prometheus API GET, for a tenant.
async fn api_result(server: &TestServer, tenant: &str, path: &str, params: &[(&str, &str)]) -> Vec<Value> {
    let r = server.client.get(server.url(path)).header("X-Scope-OrgID", tenant).query(params).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "success", "{path} {params:?}: {body}");
    body["data"]["result"].as_array().unwrap().clone()
}

/// The streams a LogQL range query returns over the last hour, for a tenant.
async fn logql(server: &TestServer, tenant: &str, query: &str) -> Vec<Value> {
    api_result(server, tenant, "/loki/api/v1/query_range", &[("query", query), ("limit", "5000"), ("since", "1h")])
        .await
}

/// The result vector of a PromQL instant query, for a tenant.
async fn promql(server: &TestServer, tenant: &str, query: &str) -> Vec<Value> {
    api_result(server, tenant, "/api/v1/query", &[("query", query)]).await
}

/// The single value of a PromQL instant query.
async fn promql_value(server: &TestServer, tenant: &str, query: &str) -> f64 {
    let result = promql(server, tenant, query).await;
    assert_eq!(result.len(), 1, "{query}: {result:?}");
    result[0]["value"][1].as_str().unwrap().parse().unwrap()
}

fn lines(streams: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = streams
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().iter().map(|v| v[1].as_str().unwrap().to_string()))
        .collect();
    out.sort();
    out
}

async fn post(
    server: &TestServer,
    path: &str,
    content_type: &str,
    tenant: &str,
    body: Vec<u8>,
    gz: bool,
) -> reqwest::Response {
    let mut req =
        server.client.post(server.url(path)).header("Content-Type", content_type).header("X-Scope-OrgID", tenant);
    let body = if gz {
        req = req.header("Content-Encoding", "gzip");
        gzip(&body)
    } else {
        body
    };
    req.body(body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_protobuf_json_and_gzip_are_stored_and_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;

    // Protobuf logs, gzip, to the base-URL path an exporter derives.
    let req = logs_request("checkout", &["card declined", "retrying"]);
    let r = post(&server, "/v1/logs", "application/x-protobuf", "acme", req.encode_to_vec(), true).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    let resp = ExportLogsServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(resp.partial_success, None);

    // OTLP/JSON: hex ids, 64-bit integers as strings, enums as numbers, a map body.
    let t = now_ns();
    let json = serde_json::json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeLogs": [{"scope": {"name": "json-client"}, "logRecords": [{
            "timeUnixNano": t.to_string(),
            "severityNumber": 9,
            "severityText": "Information",
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "body": {"kvlistValue": {"values": [
                {"key": "event", "value": {"stringValue": "login"}},
                {"key": "attempts", "value": {"intValue": "3"}}]}},
            "attributes": [{"key": "user.id", "value": {"intValue": "42"}}]
        }]}]
    }]});
    let r = post(&server, "/v1/logs", "application/json", "acme", json.to_string().into_bytes(), false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    assert!(body.get("partialSuccess").is_none_or(Value::is_null), "{body}");

    let streams = logql(&server, "acme", r#"{service_name="checkout"}"#).await;
    assert_eq!(lines(&streams), vec!["card declined", "retrying", r#"{"event":"login","attempts":3}"#]);
    // Fields are queryable as structured metadata, and labels name the stream.
    let traced =
        logql(&server, "acme", r#"{service_name="checkout"} | trace_id="5b8efff798038103d269b633813fc60c""#).await;
    assert_eq!(lines(&traced).len(), 1);
    assert_eq!(traced[0]["stream"]["level"], "info");
    assert_eq!(traced[0]["stream"]["user_id"], "42");
    assert_eq!(traced[0]["stream"]["scope_name"], "json-client");
    let errors = logql(&server, "acme", r#"{service_name="checkout"} | level="error" | order_id="1""#).await;
    assert_eq!(lines(&errors), vec!["retrying"]);
    assert!(logql(&server, "default", r#"{service_name="checkout"}"#).await.is_empty(), "tenants are apart");

    // Bodies up to server.max_request_size (64 MiB) are taken, not only axum's default 2 MiB.
    let big_line = "y".repeat(10_000);
    let big = logs_request("bulk", &vec![big_line.as_str(); 400]).encode_to_vec();
    assert!(big.len() > 3 << 20);
    let r = post(&server, "/v1/logs", "application/x-protobuf", "acme", big, false).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(lines(&logql(&server, "acme", r#"{service_name="bulk"}"#).await).len(), 400);

    // Metrics, protobuf and gzip, to Prometheus' OTLP path; and JSON to /v1/metrics.
    let req = metrics_request("heating");
    let r = post(&server, "/api/v1/otlp/v1/metrics", "application/x-protobuf", "acme", req.encode_to_vec(), true).await;
    assert_eq!(r.status(), 200);
    assert_eq!(ExportMetricsServiceResponse::decode(r.bytes().await.unwrap()).unwrap().partial_success, None);
    assert_eq!(promql_value(&server, "acme", r#"room_temperature_celsius{job="heating",room="kitchen"}"#).await, 21.5);
    assert_eq!(promql_value(&server, "acme", r#"heater_starts_total{job="heating"}"#).await, 4.0);
    let json = serde_json::json!({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "heating"}}]},
        "scopeMetrics": [{"metrics": [{"name": "valve.position", "unit": "%", "gauge": {"dataPoints": [
            {"timeUnixNano": now_ns().to_string(), "asInt": "70"}]}}]}]
    }]});
    let r = post(&server, "/v1/metrics", "application/json", "acme", json.to_string().into_bytes(), false).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(promql_value(&server, "acme", r#"valve_position_percent{job="heating"}"#).await, 70.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_partial_success_names_what_was_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_line_size = bytesize::ByteSize::b(64);
    let server = TestServer::start(config).await;
    let long = "x".repeat(100);
    let req = logs_request("svc", &["short one", &long, "short two"]);
    let r = post(&server, "/otlp/v1/logs", "application/x-protobuf", "default", req.encode_to_vec(), false).await;
    assert_eq!(r.status(), 200);
    let partial = ExportLogsServiceResponse::decode(r.bytes().await.unwrap()).unwrap().partial_success.unwrap();
    assert_eq!(partial.rejected_log_records, 1);
    assert!(
        partial.error_message.contains("1 of 3 log records rejected")
            && partial.error_message.contains("log record 1: body of 100 bytes"),
        "{}",
        partial.error_message
    );
    assert_eq!(lines(&logql(&server, "default", r#"{service_name="svc"}"#).await), vec!["short one", "short two"]);

    // A sum without temporality is left out; the gauge beside it is stored. JSON in, JSON out.
    let json = serde_json::json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": "ok.gauge", "gauge": {"dataPoints": [{"timeUnixNano": now_ns().to_string(), "asDouble": 1.5}]}},
        {"name": "bad.sum", "sum": {"isMonotonic": true, "dataPoints": [{"timeUnixNano": now_ns().to_string(), "asDouble": 1}]}}
    ]}]}]});
    let r = post(&server, "/v1/metrics", "application/json", "default", json.to_string().into_bytes(), false).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let partial = &body["partialSuccess"];
    assert_eq!(partial["rejectedDataPoints"].to_string().trim_matches('"'), "1", "{body}");
    assert!(partial["errorMessage"].as_str().unwrap().contains("temporality is unspecified"), "{body}");
    assert_eq!(promql_value(&server, "default", "ok_gauge").await, 1.5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_bad_payloads_are_refused_whole_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let good = logs_request("svc", &["kept"]).encode_to_vec();
    // A valid prefix followed by garbage: nothing of it may be stored.
    let mut truncated = good.clone();
    truncated.extend_from_slice(&[0x0a, 0xff, 0xff, 0x01]);

    // path, content type, body, gzip header, status, what the message must say
    type Case = (&'static str, &'static str, Vec<u8>, bool, u16, &'static str);
    let cases: Vec<Case> = vec![
        ("/v1/logs", "application/x-protobuf", truncated, false, 400, "invalid OTLP logs protobuf"),
        ("/v1/logs", "application/json", b"{\"resourceLogs\": [".to_vec(), false, 400, "invalid OTLP logs JSON"),
        (
            "/v1/logs",
            "application/json",
            br#"{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]}"#.to_vec(),
            false,
            400,
            "invalid OTLP logs JSON",
        ),
        (
            "/v1/metrics",
            "application/x-protobuf",
            b"\xff\xff\xff".to_vec(),
            false,
            400,
            "invalid OTLP metrics protobuf",
        ),
        // snake_case field names would decode as an empty request: refused rather than silently dropped
        (
            "/v1/metrics",
            "application/json",
            br#"{"resource_metrics": [{"scope_metrics": []}]}"#.to_vec(),
            false,
            400,
            "lowerCamelCase (resourceMetrics)",
        ),
        ("/v1/logs", "text/plain", good.clone(), false, 415, "unsupported content type"),
        ("/v1/logs", "application/x-protobuf", b"not gzip at all".to_vec(), true, 400, ""),
    ];
    for (path, ct, body, gz, status, message) in cases {
        let mut req = server.client.post(server.url(path)).header("Content-Type", ct);
        if gz {
            req = req.header("Content-Encoding", "gzip");
        }
        let r = req.body(body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path} {ct}");
        let is_json = ct == "application/json";
        let bytes = r.bytes().await.unwrap();
        // The body is a google.rpc.Status in the request's encoding.
        let (code, text) = if is_json {
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            (v["code"].as_i64().unwrap(), v["message"].as_str().unwrap().to_string())
        } else {
            let s = RpcStatus::decode(&bytes[..]).unwrap();
            (i64::from(s.code), s.message)
        };
        assert_eq!(code, 3, "INVALID_ARGUMENT: {text}");
        assert!(text.contains(message), "{path} {ct}: {text}");
        if status == 400 {
            assert!(text.contains("nothing of this request was stored"), "{text}");
        }
    }
    // An invalid tenant is named.
    let r = server
        .client
        .post(server.url("/v1/logs"))
        .header("Content-Type", "application/x-protobuf")
        .header("X-Scope-OrgID", "bad tenant/../x")
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(server.count("default").await, 0, "nothing of a refused request is stored");
    assert!(logql(&server, "default", r#"{service_name="svc"}"#).await.is_empty());
    let health = server.client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"lumen_otlp_rejected_requests_total{signal="logs",transport="http",status="400"}"#),
        "{metrics}"
    );
    server.stop().await;
}

/// An OTLP 200 means fsynced: writers send numbered records over OTLP/HTTP until a real server process is
/// killed with SIGKILL; after the restart every acknowledged request is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_acknowledged_records_survive_kill_9() {
    const RECORDS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lumen.toml");
    std::fs::write(&config, "[store]\nhead_max_size = \"1 MiB\"\n[query]\nsql_max_rows = 1000000\n").unwrap();
    let cfg = config.to_str().unwrap().to_string();
    let data = dir.path().join("data");
    let mut server = ServerProcess::spawn(&data, free_addr(), &["--config", &cfg]);
    server.wait_ready().await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (base, acked, stop) = (server.base.clone(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = crate::harness::client();
            let mut q = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("w{w}-q{q}");
                let bodies: Vec<String> = (0..RECORDS).map(|i| format!("{id}-r{i}")).collect();
                let mut req =
                    logs_request(&format!("writer-{w}"), &bodies.iter().map(String::as_str).collect::<Vec<_>>());
                for r in &mut req.resource_logs[0].scope_logs[0].log_records {
                    r.attributes = vec![kv("req", &id)];
                }
                let res = client
                    .post(format!("{base}/v1/logs"))
                    .header("Content-Type", "application/x-protobuf")
                    .body(req.encode_to_vec())
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 200 => acked.lock().unwrap().push(id),
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => break, // killed mid-request: not acknowledged
                }
                q += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 10, "only {} requests were acknowledged", acked.len());

    let mut server = ServerProcess::spawn(&data, free_addr(), &["--config", &cfg]);
    server.wait_ready().await;
    let extra = assert_requests_stored_once(&server.base, &acked, RECORDS).await;
    assert!(extra <= 4, "{extra} unacknowledged requests stored; at most one per writer can be");
    server.terminate();
}

/// `google.rpc.Status`, as OTLP/HTTP error bodies carry it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[cfg(feature = "external-tests")]
mod python_sdk {
    use std::process::Command;

    use super::*;

    const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/otlp_client.py");

    async fn python(args: Vec<String>, env: Vec<(&'static str, String)>) -> Value {
        let out = tokio::task::spawn_blocking(move || {
            Command::new("python3").arg(CLIENT).args(&args).envs(env).output().unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "otlp_client.py failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    /// Checks what one run of the client stored under `service` for `tenant`.
    async fn check_run(server: &TestServer, tenant: &str, service: &str, sent: &Value) {
        let all = logql(server, tenant, &format!(r#"{{service_name="{service}"}}"#)).await;
        assert_eq!(lines(&all).len() as u64, sent["logs"].as_u64().unwrap(), "{all:?}");
        assert_eq!(all[0]["stream"]["k8s_namespace_name"], "shop");
        let declined =
            logql(server, tenant, &format!(r#"{{service_name="{service}"}} |= "declined" | level="error""#)).await;
        assert_eq!(lines(&declined), vec!["payment declined for order 7"]);
        let e = &declined[0]["stream"];
        assert_eq!(e["trace_id"], sent["trace_id"], "the record carries its span's trace id");
        assert_eq!(e["order_id"], "7");
        assert_eq!(e["host_name"], "node-7");
        let warn = logql(server, tenant, &format!(r#"{{service_name="{service}"}} | level="warn""#)).await;
        assert_eq!(lines(&warn), vec!["stock low"]);
        let query = format!(r#"sum(count_over_time({{service_name="{service}"}} | order_id=~"1." [1h]))"#);
        let counted = api_result(server, tenant, "/loki/api/v1/query", &[("query", &query)]).await;
        assert_eq!(counted[0]["value"][1], "10", "{counted:?}");

        let job = format!(r#"job="{service}""#);
        assert_eq!(promql_value(server, tenant, &format!("orders_total{{{job}}}")).await, 8.0);
        assert_eq!(promql_value(server, tenant, &format!("queue_size{{{job}}}")).await, 6.0);
        assert_eq!(promql_value(server, tenant, &format!("cpu_utilization_ratio{{{job},cpu=\"0\"}}")).await, 0.25);
        assert_eq!(
            promql_value(
                server,
                tenant,
                &format!("http_server_duration_milliseconds_count{{{job},http_route=\"/pay\"}}")
            )
            .await,
            7.0
        );
        let p50 = promql_value(
            server,
            tenant,
            &format!("histogram_quantile(0.5, http_server_duration_milliseconds_bucket{{{job}}})"),
        )
        .await;
        assert!((25.0..=75.0).contains(&p50), "median of the explicit buckets: {p50}");
        // The exponential histogram, stored as classic buckets: the median of 1..=100 ms is near 50.
        assert_eq!(promql_value(server, tenant, &format!("rpc_latency_milliseconds_count{{{job}}}")).await, 100.0);
        let p50 =
            promql_value(server, tenant, &format!("histogram_quantile(0.5, rpc_latency_milliseconds_bucket{{{job}}})"))
                .await;
        assert!((40.0..=60.0).contains(&p50), "median of the exponential buckets: {p50}");
        // What the SDK said of its instruments feeds /api/v1/metadata.
        let r = server
            .client
            .get(server.url("/api/v1/metadata"))
            .header("X-Scope-OrgID", tenant)
            .query(&[("metric", "http_server_duration_milliseconds")])
            .send()
            .await
            .unwrap();
        let meta: Value = r.json().await.unwrap();
        let m = &meta["data"]["http_server_duration_milliseconds"][0];
        assert_eq!(
            (m["type"].as_str(), m["help"].as_str(), m["unit"].as_str()),
            (Some("histogram"), Some("request time"), Some("milliseconds")),
            "{meta}"
        );
        let info = promql(server, tenant, &format!("target_info{{{job}}}")).await;
        assert_eq!(info.len(), 1, "{info:?}");
        assert_eq!(info[0]["metric"]["telemetry_sdk_language"], "python");
        assert_eq!(info[0]["metric"]["instance"], format!("{service}-1"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opentelemetry_python_sdk_exports_over_grpc_and_http() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(test_config(dir.path())).await;
        let grpc = format!("http://{}", server.running.as_ref().unwrap().otlp_grpc_addr);

        let sent_grpc = python(vec!["grpc".into(), grpc, "py-grpc".into(), "team-a".into()], vec![]).await;
        check_run(&server, "team-a", "py-grpc", &sent_grpc).await;

        // Over HTTP the exporters get only the base URL, as users configure them; the counter is delta.
        let env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", server.base.clone())];
        let sent = python(vec!["http".into(), "-".into(), "py-http".into(), "default".into()], env).await;
        check_run(&server, "default", "py-http", &sent).await;
        assert!(promql(&server, "default", r#"orders_total{job="py-grpc"}"#).await.is_empty(), "tenants are apart");

        // The same after a flush to Parquet.
        server.flush().await;
        check_run(&server, "team-a", "py-grpc", &sent_grpc).await;
        check_run(&server, "default", "py-http", &sent).await;
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_payload_that_does_not_decode_is_invalid_argument() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(test_config(dir.path())).await;
        let target = server.running.as_ref().unwrap().otlp_grpc_addr.to_string();
        let got = python(vec!["bad-grpc".into(), target], vec![]).await;
        assert_eq!(got["garbage"]["code"], "INVALID_ARGUMENT", "{got}");
        assert!(got["garbage"]["message"].as_str().unwrap().contains("nothing of this request was stored"), "{got}");
        assert_eq!(got["bad_tenant"]["code"], "INVALID_ARGUMENT", "{got}");
        assert!(got["bad_tenant"]["message"].as_str().unwrap().contains("tenant"), "{got}");
        assert_eq!(got["empty"]["code"], "OK", "an empty export is fine: {got}");
        assert_eq!(server.count("default").await, 0);
        server.stop().await;
    }

    /// With tokens on, the gRPC services check the `authorization` metadata like HTTP does, and the SDK's
    /// exporters get through with a bearer token in their headers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn otlp_grpc_needs_a_token_for_its_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.toml");
        let writer = crate::auth::make_token(&file, "team-a", "write");
        let reader = crate::auth::make_token(&file, "team-a", "read");
        let data = dir.path().join("data");
        let mut config = test_config(&data);
        config.server.auth_file = file;
        let server = TestServer::start(config).await;
        let target = server.running.as_ref().unwrap().otlp_grpc_addr.to_string();
        let got = python(vec!["grpc-auth".into(), target.clone(), writer.clone(), reader], vec![]).await;
        assert_eq!(got["none"]["code"], "UNAUTHENTICATED", "{got}");
        assert!(got["none"]["message"].as_str().unwrap().contains("requires a token"), "{got}");
        assert_eq!(got["reader"]["code"], "PERMISSION_DENIED", "{got}");
        assert_eq!(got["other_tenant"]["code"], "PERMISSION_DENIED", "{got}");
        assert_eq!(got["writer"]["code"], "OK", "{got}");

        // The SDK with the token and no tenant header of its own ("default" is not the token's tenant, so
        // the script's x-scope-orgid must be the token's).
        let env = vec![("LUMEN_TOKEN", writer)];
        let sent =
            python(vec!["grpc".into(), format!("http://{target}"), "py-auth".into(), "team-a".into()], env).await;
        server.stop().await;
        // Read back without authentication: it was stored under the token's tenant. (Instrument metadata
        // lives in memory, so check_run's metadata check does not apply after the restart.)
        let server = TestServer::start(test_config(&data)).await;
        let all = logql(&server, "team-a", r#"{service_name="py-auth"}"#).await;
        assert_eq!(lines(&all).len() as u64, sent["logs"].as_u64().unwrap(), "{all:?}");
        assert_eq!(promql_value(&server, "team-a", r#"orders_total{job="py-auth"}"#).await, 8.0);
        server.stop().await;
    }

    /// The tenant limits hold on OTLP gRPC too: a call for a new tenant past `limits.max_tenants` is
    /// PERMISSION_DENIED naming the key; a known tenant's call goes through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn otlp_grpc_keeps_the_tenant_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.limits.max_tenants = 1;
        let server = TestServer::start(config).await;
        let target = server.running.as_ref().unwrap().otlp_grpc_addr.to_string();
        let first = python(vec!["grpc-tenant".into(), target.clone(), "team-a".into()], vec![]).await;
        assert_eq!(first["code"], "OK", "{first}");
        let second = python(vec!["grpc-tenant".into(), target.clone(), "team-b".into()], vec![]).await;
        assert_eq!(second["code"], "PERMISSION_DENIED", "{second}");
        assert!(second["message"].as_str().unwrap().contains("limits.max_tenants (1)"), "{second}");
        let again = python(vec!["grpc-tenant".into(), target, "team-a".into()], vec![]).await;
        assert_eq!(again["code"], "OK", "{again}");
        server.stop().await;
    }
}
