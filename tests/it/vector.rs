//! The real Vector shipping into Lumen: its `loki` sink (protobuf+snappy, gzip+JSON, `out_of_order_action`,
//! structured metadata), its `elasticsearch` sink (bulk, API v8 and auto-detected) with VictoriaLogs'
//! query parameters, its `prometheus_remote_write` sink fed by its own `prometheus_scrape` of a real
//! exposition, its `opentelemetry` sink (OTLP/HTTP logs), and end-to-end acknowledgements across a
//! `kill -9` of Lumen. Every line and sample must arrive exactly as sent.
//!
//! Vector is found through `VECTOR_BIN` (a Vector 0.58 built with those sources and sinks); without it
//! each test says so and passes without running.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{ServerProcess, TestServer, free_addr, sql_rows, test_config};

fn vector_bin(test: &str) -> Option<PathBuf> {
    match std::env::var_os("VECTOR_BIN") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!(
                "skipping {test}: VECTOR_BIN is not set (the path of a Vector 0.58 binary with the http_server, \
                 prometheus_scrape and remap components and the loki, elasticsearch, prometheus_remote_write and \
                 opentelemetry sinks)"
            );
            None
        }
    }
}

/// A running Vector, killed when dropped.
struct Vector {
    child: Child,
    log: PathBuf,
}

impl Vector {
    /// Starts Vector on `config` (YAML) with its data directory in `dir`.
    fn start(bin: &Path, dir: &Path, config: &str) -> Vector {
        let data = dir.join("vector-data");
        std::fs::create_dir_all(&data).unwrap();
        let path = dir.join("vector.yaml");
        std::fs::write(&path, format!("data_dir: {}\n{config}", data.display())).unwrap();
        let log = dir.join("vector.log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(&path)
            .env("VECTOR_LOG", "warn")
            .env("VECTOR_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start Vector");
        Vector { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until Vector accepts connections on `addr` (its http_server source).
    async fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("Vector exited with {status} before it listened: {}", self.log());
            }
            assert!(Instant::now() < deadline, "Vector did not listen on {addr} in 60 s: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Vector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One event as the tests send it to Vector: a time in ns, a line, a stream label and a field.
#[derive(Clone, Debug, PartialEq)]
struct Line {
    ns: i64,
    message: String,
    app: String,
    trace_id: String,
}

fn lines(app: &str, n: usize, t0: i64, descending: bool) -> Vec<Line> {
    let loghub = crate::harness::loghub();
    (0..n)
        .map(|i| {
            let (system, text) = (&loghub[i % loghub.len()].0, &loghub[i % loghub.len()].1[i / loghub.len()]);
            let step = if descending { (n - i) as i64 } else { i as i64 };
            Line {
                ns: t0 + step * 1_000_003,
                message: format!("{system}: {text}"),
                app: app.to_string(),
                trace_id: format!("{app}-{i}"),
            }
        })
        .collect()
}

/// The http_server source (newline-delimited JSON, acknowledged only once the sink has delivered) and the
/// remap that makes `ns` the event's timestamp, under the names `in` and `events`.
fn http_source(addr: SocketAddr) -> String {
    format!(
        r#"sources:
  in:
    type: http_server
    address: "{addr}"
    decoding:
      codec: json
    framing:
      method: newline_delimited
transforms:
  events:
    type: remap
    inputs: [in]
    source: |
      .timestamp = from_unix_timestamp!(to_int!(.ns), unit: "nanoseconds")
      del(.ns)
      del(.path)
"#
    )
}

/// Posts lines to Vector's http_server source; with acknowledgements on, the 200 comes only once the sink
/// has delivered them.
async fn post_lines(client: &reqwest::Client, addr: SocketAddr, lines: &[Line]) -> Result<(), String> {
    let mut body = String::new();
    for l in lines {
        body.push_str(&json!({"ns": l.ns, "message": l.message, "app": l.app, "trace_id": l.trace_id}).to_string());
        body.push('\n');
    }
    let r = client
        .post(format!("http://{addr}/"))
        .body(body)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() == 200 { Ok(()) } else { Err(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())) }
}

/// What a tenant holds, in time order.
async fn stored(base: &str, tenant: &str) -> Vec<Line> {
    let sql = "SELECT CAST(time AS BIGINT) AS ns, message, app, trace_id FROM logs ORDER BY time, trace_id";
    sql_rows(&crate::harness::client(), base, tenant, sql)
        .await
        .iter()
        .map(|r| Line {
            ns: r["ns"].as_i64().unwrap(),
            message: r["message"].as_str().unwrap_or_default().to_string(),
            app: r["app"].as_str().unwrap_or_default().to_string(),
            trace_id: r["trace_id"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

fn sorted(mut v: Vec<Line>) -> Vec<Line> {
    v.sort_by(|a, b| (a.ns, &a.trace_id).cmp(&(b.ns, &b.trace_id)));
    v
}

/// The stream labels of a tenant's streams, from the Loki series API.
async fn stream_labels(server: &TestServer, tenant: &str) -> Vec<BTreeMap<String, String>> {
    let v: Value = server
        .client
        .get(server.url("/loki/api/v1/series"))
        .header("X-Scope-OrgID", tenant)
        .query(&[("match[]", "{app=~\".+\"}"), ("start", "0")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|s| s.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect())
        .collect()
}

/// Sends `sent` through a Vector running `sink` (YAML of one sink named `out`, fed by `events`), and
/// returns once Vector has acknowledged every batch.
async fn ship(bin: &Path, sink: &str, sent: &[Line]) -> tempfile::TempDir {
    ship_through(bin, &format!("sinks:\n  out:\n{sink}"), sent).await
}

/// As [`ship`], with `tail` (more transforms and the sinks) following the http source and its remap.
async fn ship_through(bin: &Path, tail: &str, sent: &[Line]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut vector = Vector::start(bin, dir.path(), &format!("{}{tail}", http_source(addr)));
    vector.wait_listening(addr).await;
    let client = crate::harness::client();
    for chunk in sent.chunks(250) {
        if let Err(e) = post_lines(&client, addr, chunk).await {
            panic!("Vector did not deliver a batch: {e}\nVector's log:\n{}", vector.log());
        }
    }
    let log = vector.log();
    assert!(!log.contains("ERROR"), "Vector logged errors:\n{log}");
    dir
}

/// Indents a YAML block under `sinks.out`.
fn sink_yaml(body: &str) -> String {
    body.lines().map(|l| format!("    {l}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_loki_sink_in_every_encoding() {
    let Some(bin) = vector_bin("vector_loki_sink_in_every_encoding") else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let t0 = store::time::now_ns() - 600_000_000_000;
    let endpoint = &server.base;
    // (tenant, sink settings beyond the common ones, timestamps descending)
    // (tenant, line codec, sink settings beyond the common ones, timestamps descending)
    let cases = [
        ("vec-snappy", "text", "", false),
        ("vec-gzip", "text", "compression: gzip\n", false),
        ("vec-gzip-json", "json", "compression: gzip\n", false),
        ("vec-zstd", "text", "compression: zstd\n", false),
        ("vec-none", "text", "compression: none\n", false),
        ("vec-ooo", "text", "out_of_order_action: accept\n", true),
    ];
    // With `codec: json` the line is the event left after labels, metadata and timestamp are taken out:
    // `{"message": ..., "source_type": "http_server"}`.
    let message_of = |codec: &str, line: Line| {
        if codec == "json" {
            let v: Value = serde_json::from_str(&line.message).unwrap_or_else(|e| panic!("{e}: {}", line.message));
            assert_eq!(v["source_type"], "http_server", "{v}");
            Line { message: v["message"].as_str().unwrap().to_string(), ..line }
        } else {
            line
        }
    };
    for (tenant, codec, extra, descending) in cases {
        let sent = lines(tenant, 1000, t0, descending);
        // Vector 0.58 refuses `{{ field }}` templates without a literal prefix (its "template
        // confinement") unless the sink opts out; a label taken from a field needs the opt-out.
        let sink = sink_yaml(&format!(
            "type: loki\ninputs: [events]\nendpoint: \"{endpoint}\"\ntenant_id: {tenant}\n\
             encoding:\n  codec: {codec}\nlabels:\n  app: \"{{{{ app }}}}\"\nremove_label_fields: true\n\
             structured_metadata:\n  trace_id: \"{{{{ trace_id }}}}\"\nremove_structured_metadata_fields: true\n\
             dangerously_allow_unconfined_template_resolution: true\n\
             acknowledgements:\n  enabled: true\nbatch:\n  timeout_secs: 0.2\n{extra}"
        ));
        ship(&bin, &sink, &sent).await;
        let got: Vec<Line> = stored(&server.base, tenant).await.into_iter().map(|l| message_of(codec, l)).collect();
        assert_eq!(got, sorted(sent.clone()), "{tenant}");
        assert_eq!(stream_labels(&server, tenant).await, vec![BTreeMap::from([("app".into(), tenant.into())])]);
    }
    // The same after the head is written to Parquet.
    server.flush().await;
    for (tenant, codec, _, descending) in cases {
        let got: Vec<Line> = stored(&server.base, tenant).await.into_iter().map(|l| message_of(codec, l)).collect();
        assert_eq!(got, sorted(lines(tenant, 1000, t0, descending)), "{tenant}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_elasticsearch_sink_with_victorialogs_parameters() {
    let Some(bin) = vector_bin("vector_elasticsearch_sink_with_victorialogs_parameters") else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let t0 = store::time::now_ns() - 600_000_000_000;
    // api_version v8, and the default (auto: Vector asks `GET /` for the version).
    for (tenant, version) in [("es-v8", "api_version: v8\n"), ("es-auto", "")] {
        let sent = lines(tenant, 1000, t0, false);
        let sink = sink_yaml(&format!(
            "type: elasticsearch\ninputs: [events]\nendpoints: [\"{}/insert/elasticsearch/\"]\nmode: bulk\n\
             {version}request:\n  headers:\n    X-Scope-OrgID: {tenant}\n\
             query:\n  _msg_field: message\n  _time_field: timestamp\n  _stream_fields: app\n\
             acknowledgements:\n  enabled: true\nbatch:\n  timeout_secs: 0.2\n",
            server.base
        ));
        ship(&bin, &sink, &sent).await;
        assert_eq!(stored(&server.base, tenant).await, sorted(sent), "{tenant}");
        assert_eq!(stream_labels(&server, tenant).await, vec![BTreeMap::from([("app".into(), tenant.into())])]);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_opentelemetry_sink_otlp_http_logs() {
    let Some(bin) = vector_bin("vector_opentelemetry_sink_otlp_http_logs") else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let t0 = store::time::now_ns() - 600_000_000_000;
    let tenant = "vec-otlp";
    let sent = lines(tenant, 500, t0, false);
    // The otlp codec sends events that are OTLP already (as Vector's opentelemetry source makes them);
    // this remap builds that shape from the plain event, as a user's pipeline does.
    let sink = format!(
        r#"sinks:
  out:
    type: opentelemetry
    inputs: [otlp]
    protocol:
      type: http
      # Under `protocol`: a sink-level `acknowledgements` is silently ignored by this sink.
      acknowledgements:
        enabled: true
      uri: "{}/v1/logs"
      method: post
      request:
        headers:
          X-Scope-OrgID: {tenant}
      encoding:
        codec: otlp
      batch:
        timeout_secs: 0.2
"#,
        server.base
    );
    let remap = r#"  otlp:
    type: remap
    inputs: [events]
    source: |
      ns = to_unix_timestamp!(.timestamp, unit: "nanoseconds")
      . = {"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": .app}}]},
        "scopeLogs": [{"logRecords": [{
          "timeUnixNano": ns,
          "body": {"stringValue": .message},
          "attributes": [{"key": "trace_id_attr", "value": {"stringValue": .trace_id}}]
        }]}]
      }]}
"#;
    ship_through(&bin, &format!("{remap}{sink}"), &sent).await;
    let sql = "SELECT CAST(time AS BIGINT) AS ns, message, service_name, trace_id_attr FROM logs ORDER BY time";
    let rows = sql_rows(&server.client, &server.base, tenant, sql).await;
    let got: Vec<Line> = rows
        .iter()
        .map(|r| Line {
            ns: r["ns"].as_i64().unwrap(),
            message: r["message"].as_str().unwrap().to_string(),
            app: r["service_name"].as_str().unwrap().to_string(),
            trace_id: r["trace_id_attr"].as_str().unwrap().to_string(),
        })
        .collect();
    assert_eq!(got, sorted(sent));
    server.stop().await;
}

/// Serves one exposition file at `/metrics` on a free port, as an exporter would.
async fn serve_exposition(text: String) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = text.clone();
            async move { ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], text) }
        }),
    );
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}

/// A series key with `le` and `quantile` written as numbers, since Vector re-formats them.
fn series_key(labels: impl IntoIterator<Item = (String, String)>) -> String {
    let mut labels: Vec<(String, String)> = labels
        .into_iter()
        .map(|(k, v)| {
            let v = if k == "le" || k == "quantile" { format!("{}", v.parse::<f64>().unwrap()) } else { v };
            (k, v)
        })
        .collect();
    labels.sort();
    labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_prometheus_remote_write_of_a_real_exposition() {
    let Some(bin) = vector_bin("vector_prometheus_remote_write_of_a_real_exposition") else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/exposition/alltypes.237mfs.prom.txt");
    let text = std::fs::read_to_string(&fixture).unwrap();
    // What the exposition holds, read by Lumen's own parser.
    let mut want: HashMap<String, f64> = HashMap::new();
    wire::prom::parse_text(&text, wire::prom::TextFormat::Prometheus, 0, |labels, _, v| {
        want.insert(series_key(labels.iter().map(|(k, v)| (k.to_string(), v.to_string()))), v);
    });
    assert!(want.len() > 1800, "{}", want.len());
    let (exporter, _task) = serve_exposition(text).await;
    let tenant = "vec-rw";
    let config = format!(
        r#"sources:
  scrape:
    type: prometheus_scrape
    endpoints: ["http://{exporter}/metrics"]
    scrape_interval_secs: 1
sinks:
  out:
    type: prometheus_remote_write
    inputs: [scrape]
    endpoint: "{}/api/v1/write"
    tenant_id: {tenant}
    batch:
      timeout_secs: 0.5
"#,
        server.base
    );
    let vdir = tempfile::tempdir().unwrap();
    let vector = Vector::start(&bin, vdir.path(), &config);
    let t_start = store::time::now_ns() / 1_000_000;
    // Every series of the exposition arrives, with its value.
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let v = server.promql(tenant, "{__name__=~\".+\"}", None).await;
        let got: HashMap<String, f64> = v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        let labels = s["metric"]
                            .as_object()
                            .unwrap()
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()));
                        (series_key(labels), s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
                    })
                    .collect()
            })
            .unwrap_or_default();
        if got.len() >= want.len() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} of {} series missing, e.g. {missing:?}\n{}",
        want.len() - got.len(),
        want.len(),
        vector.log()
    );
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).take(10).collect();
    assert!(extra.is_empty(), "series Vector did not scrape: {extra:?}");
    for (k, v) in &want {
        let g = got[k];
        assert!(g == *v || (g.is_nan() && v.is_nan()), "{k}: sent {v}, stored {g}");
    }
    // Timestamps are the scrape's, within the test.
    let now = store::time::now_ns() / 1_000_000;
    let v = server.promql(tenant, "timestamp(prometheus_build_info)", None).await;
    let ts = (v["data"]["result"][0]["value"][1].as_str().unwrap().parse::<f64>().unwrap() * 1000.0) as i64;
    assert!(ts >= t_start - 1000 && ts <= now, "{ts} not within {t_start}..{now}");
    server.stop().await;
}

/// Vector's end-to-end acknowledgements: its http_server source answers 200 only when the loki sink has
/// Lumen's 204, which comes after the WAL fsync. Lumen is killed with SIGKILL in the middle of the stream
/// and restarted; every line Vector acknowledged must be there (Vector resends what it was not
/// acknowledged, so some lines may be stored twice; none may be missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_acknowledged_lines_survive_kill_9_of_lumen() {
    let Some(bin) = vector_bin("vector_acknowledged_lines_survive_kill_9_of_lumen") else { return };
    let data = tempfile::tempdir().unwrap();
    let lumen_addr = free_addr();
    let mut lumen = ServerProcess::spawn(data.path(), lumen_addr, &[]);
    lumen.wait_ready().await;
    let vdir = tempfile::tempdir().unwrap();
    let vaddr = free_addr();
    let sink = sink_yaml(&format!(
        "type: loki\ninputs: [events]\nendpoint: \"http://{lumen_addr}\"\nencoding:\n  codec: text\n\
         labels:\n  app: \"{{{{ app }}}}\"\nremove_label_fields: true\n\
         structured_metadata:\n  trace_id: \"{{{{ trace_id }}}}\"\nremove_structured_metadata_fields: true\n\
             dangerously_allow_unconfined_template_resolution: true\n\
         acknowledgements:\n  enabled: true\nbatch:\n  timeout_secs: 0.1\n\
         request:\n  retry_initial_backoff_secs: 1\n  retry_max_duration_secs: 2\n"
    ));
    let mut vector = Vector::start(&bin, vdir.path(), &format!("{}sinks:\n  out:\n{sink}", http_source(vaddr)));
    vector.wait_listening(vaddr).await;
    let t0 = store::time::now_ns() - 600_000_000_000;
    let all = lines("ack", 6000, t0, false);
    let batches: Vec<Vec<Line>> = all.chunks(100).map(<[Line]>::to_vec).collect();
    // Four senders post batches while Lumen is killed and restarted.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut senders = Vec::new();
    for k in 0..4 {
        let mine: Vec<Vec<Line>> = batches.iter().skip(k).step_by(4).cloned().collect();
        let tx = tx.clone();
        senders.push(tokio::spawn(async move {
            let client = crate::harness::client();
            for b in mine {
                let started = Instant::now();
                if post_lines(&client, vaddr, &b).await.is_ok() {
                    tx.send((b, started, Instant::now())).unwrap();
                }
            }
        }));
    }
    drop(tx);
    // Kill Lumen once some batches are acknowledged, keep it down a moment, restart it on the same port.
    let mut acked: Vec<Line> = Vec::new();
    let mut spans = Vec::new();
    while acked.len() < 1500 {
        let (b, started, ended) = rx.recv().await.expect("senders stopped before 1500 lines were acknowledged");
        acked.extend(b);
        spans.push((started, ended));
    }
    lumen.kill9();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut lumen = ServerProcess::spawn(data.path(), lumen_addr, &[]);
    lumen.wait_ready().await;
    let restarted = Instant::now();
    for s in senders {
        s.await.unwrap();
    }
    while let Some((b, started, ended)) = rx.recv().await {
        acked.extend(b);
        spans.push((started, ended));
    }
    // Some batches were posted before the kill and acknowledged only after the restart: Vector held them
    // and delivered them to the new process.
    let across = spans.iter().filter(|(s, e)| *s < killed && *e > restarted).count();
    assert!(across > 0, "no batch was in flight across the kill; the test did not test it");
    assert!(acked.len() > 3000, "only {} of 6000 lines were acknowledged:\n{}", acked.len(), vector.log());
    let got = stored(&lumen.base, "default").await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for l in &got {
        *count.entry(l.trace_id.as_str()).or_default() += 1;
    }
    let by_id: HashMap<&str, &Line> = got.iter().map(|l| (l.trace_id.as_str(), l)).collect();
    for l in &acked {
        assert_eq!(by_id.get(l.trace_id.as_str()), Some(&l), "acknowledged line {} is missing or changed", l.trace_id);
    }
    let doubled = count.values().filter(|&&n| n > 1).count();
    eprintln!(
        "{} lines acknowledged by Vector ({across} batches in flight across the kill), {} stored, {doubled} \
         stored twice (resent by Vector after the kill)",
        acked.len(),
        got.len()
    );
    drop(vector);
    lumen.terminate();
}

/// Every Vector config in the README's "From Vector" section is one Vector accepts: `vector validate`
/// builds each sink (a demo or scrape source stands in for its input).
#[test]
fn readme_vector_configs_validate() {
    let Some(bin) = vector_bin("readme_vector_configs_validate") else { return };
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("## From Vector and other shippers").expect("the README's From Vector section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let blocks: Vec<&str> = section.split("```yaml\n").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert!(blocks.len() >= 4, "{} YAML blocks", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    for (i, block) in blocks.iter().enumerate() {
        let input = block.split("inputs: [").nth(1).and_then(|s| s.split(']').next()).expect("inputs").trim();
        let id = input.split('.').next().unwrap();
        let source = if id == "scrape" {
            "    type: prometheus_scrape\n    endpoints: [\"http://127.0.0.1:9/metrics\"]\n"
        } else {
            "    type: demo_logs\n    format: json\n"
        };
        let block = block.replace(&format!("inputs: [{input}]"), &format!("inputs: [{id}]"));
        let path = dir.path().join(format!("readme-{i}.yaml"));
        std::fs::write(&path, format!("data_dir: {}\nsources:\n  {id}:\n{source}{block}", dir.path().display()))
            .unwrap();
        let out = Command::new(&bin).args(["validate", "--skip-healthchecks"]).arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "README block {i} does not validate:\n{block}\n{text}");
    }
}
