//! The Loki query API as Grafana's Loki data source calls it, over a server loaded with the Loghub
//! samples: health check, log and metric queries before and after a flush, metadata endpoints, the
//! categorize-labels encoding, live tail over WebSocket, and every error path.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::harness::{TestServer, loghub, test_config};

const NS: i64 = 1_000_000_000;

struct Loaded {
    server: TestServer,
    client: reqwest::Client,
    data: Vec<(String, Vec<String>)>,
    /// First entry's time; entry i of an app is at t0 + i ms.
    t0: i64,
}

async fn push(client: &reqwest::Client, server: &TestServer, tenant: &str, body: Value) {
    let r =
        client.post(server.url("/loki/api/v1/push")).header("X-Scope-OrgID", tenant).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
}

async fn load() -> (Loaded, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let client = crate::harness::client();
    let data = loghub();
    let t0 = store::time::now_ns() - 600 * NS;
    for (app, lines) in &data {
        let values: Vec<Value> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let ts = (t0 + i as i64 * 1_000_000).to_string();
                if i % 100 == 0 { json!([ts, l, {"trace_id": format!("t{i}")}]) } else { json!([ts, l]) }
            })
            .collect();
        let body = json!({"streams": [{"stream": {"app": app, "pod": format!("{app}-0")}, "values": values}]});
        push(&client, &server, "default", body).await;
    }
    // JSON lines for the field detection endpoints.
    let values: Vec<Value> = (0..50)
        .map(|i| {
            let line = json!({"level": if i % 5 == 0 { "error" } else { "info" }, "status": 200 + i % 3, "took": format!("{}ms", i + 1), "msg": "served"});
            json!([(t0 + i * 1_000_000).to_string(), line.to_string()])
        })
        .collect();
    push(&client, &server, "default", json!({"streams": [{"stream": {"app": "jsonapp"}, "values": values}]})).await;
    (Loaded { server, client, data, t0 }, dir)
}

impl Loaded {
    async fn get(&self, path: &str, params: &[(&str, String)]) -> reqwest::Response {
        self.client.get(self.server.url(path)).query(params).send().await.unwrap()
    }

    /// A GET with one extra header, answered with JSON.
    async fn json_with(&self, path: &str, params: &[(&str, String)], header: (&str, &str)) -> Value {
        let r = self.client.get(self.server.url(path)).query(params).header(header.0, header.1).send().await.unwrap();
        r.json().await.unwrap()
    }

    async fn ok(&self, path: &str, params: &[(&str, String)]) -> Value {
        let r = self.get(path, params).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 200, "{path} {params:?}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    async fn error(&self, path: &str, params: &[(&str, String)]) -> String {
        let r = self.get(path, params).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{path} {params:?}: {text}");
        text
    }

    fn count(&self, app: &str, needle: &str) -> usize {
        self.data.iter().find(|(a, _)| a == app).map_or(0, |(_, l)| l.iter().filter(|l| l.contains(needle)).count())
    }

    fn range(&self) -> Vec<(&'static str, String)> {
        vec![("start", (self.t0 - 60 * NS).to_string()), ("end", (self.t0 + 60 * NS).to_string())]
    }

    async fn instant(&self, query: &str) -> Value {
        let end = (store::time::now_ns()).to_string();
        self.ok("/loki/api/v1/query", &[("query", query.to_string()), ("time", end)]).await
    }
}

fn vector_by(v: &Value, label: &str) -> BTreeMap<String, f64> {
    assert_eq!(v["data"]["resultType"], "vector", "{v}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let key = s["metric"][label].as_str().unwrap_or("").to_string();
            (key, s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
        })
        .collect()
}

fn entries(v: &Value) -> Vec<(i64, String)> {
    assert_eq!(v["data"]["resultType"], "streams", "{v}");
    let mut out = Vec::new();
    for s in v["data"]["result"].as_array().unwrap() {
        for e in s["values"].as_array().unwrap() {
            out.push((e[0].as_str().unwrap().parse().unwrap(), e[1].as_str().unwrap().to_string()));
        }
    }
    out
}

async fn check_queries(l: &Loaded) {
    // Grafana's "Save & test".
    let v = l
        .ok(
            "/loki/api/v1/query",
            &[("query", "vector(1)+vector(1)".into()), ("time", "4".into()), ("limit", "1".into())],
        )
        .await;
    assert_eq!(v["data"]["resultType"], "vector", "{v}");
    assert_eq!(v["data"]["result"][0]["value"][1], "2", "{v}");
    assert!(v["data"]["stats"]["summary"]["execTime"].is_number(), "{v}");

    // Counting by stream label equals what was sent, per app.
    let v = l.instant(r#"sum by (app) (count_over_time({app=~".+"} [1h]))"#).await;
    let counts = vector_by(&v, "app");
    for (app, lines) in &l.data {
        assert_eq!(counts.get(app), Some(&(lines.len() as f64)), "{app}");
    }
    // A word over everything, and a stream plus a word.
    let v = l.instant(r#"sum(count_over_time({app=~".+"} |= "error" [1h]))"#).await;
    // Loghub's lines plus the ten JSON lines at level error.
    let want: usize = l.data.iter().map(|(a, _)| l.count(a, "error")).sum::<usize>() + 10;
    assert_eq!(vector_by(&v, "")[""], want as f64);
    let v = l.instant(r#"sum(count_over_time({app="hdfs"} |= "Receiving" [1h]))"#).await;
    assert_eq!(vector_by(&v, "")[""], l.count("hdfs", "Receiving") as f64);
    let v = l.instant(r#"sum(count_over_time({app="hdfs"} |~ "(?i)receiving block" [1h]))"#).await;
    assert!(vector_by(&v, "")[""] > 0.0);

    // The last lines of one stream, newest first, and a line filter in a range query.
    let mut params = l.range();
    params.push(("query", r#"{pod="apache-0"}"#.into()));
    params.push(("limit", "100".into()));
    let got = entries(&l.ok("/loki/api/v1/query_range", &params).await);
    let apache = &l.data.iter().find(|(a, _)| a == "apache").unwrap().1;
    let want: Vec<(i64, String)> =
        (0..apache.len()).rev().take(100).map(|i| (l.t0 + i as i64 * 1_000_000, apache[i].clone())).collect();
    assert_eq!(got, want);
    let mut params = l.range();
    params.push(("query", r#"{app="hdfs"} |= "Receiving""#.into()));
    params.push(("limit", "5000".into()));
    params.push(("direction", "forward".into()));
    let v = l.ok("/loki/api/v1/query_range", &params).await;
    for s in v["data"]["result"].as_array().unwrap() {
        let ts: Vec<i64> =
            s["values"].as_array().unwrap().iter().map(|e| e[0].as_str().unwrap().parse().unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "forward is oldest first");
    }
    let got = entries(&v);
    assert_eq!(got.len(), l.count("hdfs", "Receiving"));
    assert!(got.iter().all(|(_, line)| line.contains("Receiving")));

    // The log-volume histogram Grafana draws, with levels detected from the lines.
    let mut params = l.range();
    params.push(("query", r#"sum by (level, detected_level) (count_over_time({app="hdfs"} [1m]))"#.into()));
    params.push(("step", "60000ms".into()));
    let v = l.ok("/loki/api/v1/query_range", &params).await;
    assert_eq!(v["data"]["resultType"], "matrix", "{v}");
    let mut total = 0.0;
    let mut levels = Vec::new();
    for s in v["data"]["result"].as_array().unwrap() {
        levels.push(s["metric"]["detected_level"].as_str().unwrap().to_string());
        // Windows of one minute at one-minute steps: every line counted once.
        total +=
            s["values"].as_array().unwrap().iter().map(|p| p[1].as_str().unwrap().parse::<f64>().unwrap()).sum::<f64>();
    }
    assert_eq!(total, l.count("hdfs", "") as f64);
    assert!(levels.contains(&"info".to_string()) && levels.contains(&"warn".to_string()), "{levels:?}");

    // A JSON parser and a numeric label filter.
    let mut params = l.range();
    params.push(("query", r#"{app="jsonapp"} | json | status >= 201 | line_format "{{.status}} {{.took}}""#.into()));
    params.push(("limit", "1000".into()));
    let got = entries(&l.ok("/loki/api/v1/query_range", &params).await);
    assert_eq!(got.len(), (0..50).filter(|i| i % 3 != 0).count());
    assert!(got.iter().all(|(_, line)| line.starts_with("201 ") || line.starts_with("202 ")), "{got:?}");
    let v = l.instant(r#"sum(sum_over_time({app="jsonapp"} | json | unwrap duration(took) [1h]))"#).await;
    let want: f64 = (1..=50).map(|i| f64::from(i) / 1000.0).sum();
    assert!((vector_by(&v, "")[""] - want).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_loki_data_source_against_loghub() {
    let (l, _dir) = load().await;
    check_queries(&l).await;
    // The same answers once everything is in Parquet parts.
    l.server.flush().await;
    check_queries(&l).await;

    // Structured metadata, categorized on request.
    let mut params = l.range();
    params.push(("query", r#"{app="apache"} | trace_id="t100""#.into()));
    let v =
        l.json_with("/loki/api/v1/query_range", &params, ("X-Loki-Response-Encoding-Flags", "categorize-labels")).await;
    assert_eq!(v["data"]["encodingFlags"], json!(["categorize-labels"]), "{v}");
    let stream = &v["data"]["result"][0];
    assert_eq!(stream["stream"], json!({"app": "apache", "pod": "apache-0"}), "{v}");
    assert_eq!(stream["values"][0][2]["structuredMetadata"]["trace_id"], "t100", "{v}");
    // Without the flag, metadata is folded into the stream labels.
    let got = l.ok("/loki/api/v1/query_range", &params).await;
    assert_eq!(got["data"]["result"][0]["stream"]["trace_id"], "t100", "{got}");

    // Metadata endpoints.
    let r = l.range();
    let names = l.ok("/loki/api/v1/labels", &r).await;
    assert_eq!(names["data"], json!(["app", "pod"]), "{names}");
    let values = l.ok("/loki/api/v1/label/app/values", &r).await;
    assert_eq!(values["data"].as_array().unwrap().len(), l.data.len() + 1, "{values}");
    let mut p = r.clone();
    p.push(("query", r#"{app=~"h.*"}"#.into()));
    let values = l.ok("/loki/api/v1/label/app/values", &p).await;
    assert_eq!(values["data"], json!(["hadoop", "hdfs", "healthapp", "hpc"]), "{values}");
    let mut p = r.clone();
    p.push(("match[]", r#"{app="hdfs"}"#.into()));
    p.push(("match[]", r#"{app="hpc"}"#.into()));
    let series = l.ok("/loki/api/v1/series", &p).await;
    assert_eq!(series["data"], json!([{"app": "hdfs", "pod": "hdfs-0"}, {"app": "hpc", "pod": "hpc-0"}]), "{series}");
    let mut p = r.clone();
    p.push(("query", r#"{app="hdfs"}"#.into()));
    let stats = l.ok("/loki/api/v1/index/stats", &p).await;
    assert_eq!(stats["entries"], l.count("hdfs", ""), "{stats}");
    assert_eq!(stats["streams"], 1, "{stats}");
    assert!(stats["bytes"].as_u64().unwrap() > 100_000, "{stats}");
    let mut p = r.clone();
    p.push(("query", r#"{app=~"hdfs|hpc"}"#.into()));
    let volume = l.ok("/loki/api/v1/index/volume", &p).await;
    let by_app = vector_by(&volume, "app");
    let hdfs_bytes: usize = l.data.iter().find(|(a, _)| a == "hdfs").unwrap().1.iter().map(String::len).sum();
    assert_eq!(by_app["hdfs"], hdfs_bytes as f64, "{volume}");
    let mut p = r.clone();
    p.push(("query", r#"{app="hdfs"}"#.into()));
    p.push(("step", "60s".into()));
    let vr = l.ok("/loki/api/v1/index/volume_range", &p).await;
    assert_eq!(vr["data"]["resultType"], "matrix", "{vr}");
    let mut p = r.clone();
    p.push(("query", r#"{app="jsonapp"}"#.into()));
    let fields = l.ok("/loki/api/v1/detected_fields", &p).await;
    let kinds: BTreeMap<String, String> = fields["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["label"].as_str().unwrap().to_string(), f["type"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(kinds.get("status").map(String::as_str), Some("int"), "{fields}");
    assert_eq!(kinds.get("took").map(String::as_str), Some("duration"), "{fields}");
    let vals = l.ok("/loki/api/v1/detected_field/level/values", &p).await;
    assert_eq!(vals["values"], json!(["error", "info"]), "{vals}");
    let mut p = r.clone();
    p.push(("query", r#"{app=~".+"}"#.into()));
    let dl = l.ok("/loki/api/v1/detected_labels", &p).await;
    assert!(dl["detectedLabels"].as_array().unwrap().iter().any(|d| d["label"] == "app"), "{dl}");
    let mut p = r.clone();
    p.push(("query", r#"{app="hdfs"}"#.into()));
    let pats = l.ok("/loki/api/v1/patterns", &p).await;
    assert!(!pats["data"].as_array().unwrap().is_empty(), "{pats}");
    let bi = l.ok("/loki/api/v1/status/buildinfo", &[]).await;
    assert!(bi["version"].as_str().unwrap().starts_with('3'), "{bi}");
    let fq = l.ok("/loki/api/v1/format_query", &[("query", r#"sum(rate({app="a"}|="x"[5m]))by(app)"#.into())]).await;
    assert_eq!(fq["data"], r#"sum by (app) (rate({app="a"} |= "x" [5m]))"#, "{fq}");

    // POST form works like GET.
    let form = [("query", "vector(1)+vector(1)".to_string()), ("time", "4".to_string())];
    let v: Value =
        l.client.post(l.server.url("/loki/api/v1/query")).form(&form).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["data"]["result"][0]["value"][1], "2", "{v}");

    // Tenants do not see each other.
    let q = [("query", r#"count_over_time({app="hdfs"}[1h])"#.to_string())];
    let v = l.json_with("/loki/api/v1/query", &q, ("X-Scope-OrgID", "other")).await;
    assert_eq!(v["data"]["result"], json!([]), "{v}");

    check_errors(&l).await;

    // Every Loki route is counted by route and outcome.
    let metrics = l.client.get(l.server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"lumen_query_queries_total{api="loki_query",outcome="ok"}"#,
        r#"lumen_query_queries_total{api="loki_query",outcome="bad_request"}"#,
        r#"lumen_query_queries_total{api="loki_query_range",outcome="ok"}"#,
        r#"lumen_query_queries_total{api="loki_label_values",outcome="ok"}"#,
        r#"lumen_query_queries_total{api="loki_detected_field_values",outcome="ok"}"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    l.server.stop().await;
}

async fn check_errors(l: &Loaded) {
    let q = |s: &str| vec![("query", s.to_string())];
    let e = l.error("/loki/api/v1/query", &q(r#"sum(count_over_time({app="hdfs"} |= [5m]))"#)).await;
    assert!(e.starts_with("parse error at line 1, col 37:"), "{e}");
    let e = l.error("/loki/api/v1/query", &q(r#"{app="hdfs"}"#)).await;
    assert!(e.contains("log queries are not supported as an instant query type"), "{e}");
    let e = l.error("/loki/api/v1/query", &q(r#"{app=~".*"}"#)).await;
    assert!(e.contains("at least one regexp or equality matcher"), "{e}");
    let e = l.error("/loki/api/v1/query", &q(r#"rate({app="hdfs"} |~ "(" [5m])"#)).await;
    assert!(e.contains("invalid regular expression"), "{e}");
    let e = l.error("/loki/api/v1/query", &[]).await;
    assert!(e.contains("missing the query parameter"), "{e}");
    let mut p = q(r#"{app="hdfs"}"#);
    p.push(("limit", "5001".into()));
    let e = l.error("/loki/api/v1/query_range", &p).await;
    assert!(e.contains("max entries limit per query exceeded") && e.contains("5001 > 5000"), "{e}");
    let mut p = q(r#"{app="hdfs"}"#);
    p.push(("start", "yesterday".into()));
    let e = l.error("/loki/api/v1/query_range", &p).await;
    assert!(e.contains("invalid start"), "{e}");
    let mut p = q(r#"{app="hdfs"}"#);
    p.push(("start", "0".into()));
    p.push(("end", (800 * 3600).to_string()));
    let e = l.error("/loki/api/v1/query_range", &p).await;
    assert!(e.contains("the query time range exceeds the limit"), "{e}");
    // Extreme times are a limit error, not an overflow.
    let mut p = q(r#"rate({app="hdfs"}[1m])"#);
    p.push(("start", "-1.5e300".into()));
    p.push(("end", "1.5e300".into()));
    let e = l.error("/loki/api/v1/query_range", &p).await;
    assert!(e.contains("the query time range exceeds the limit"), "{e}");
    let e = l.error("/loki/api/v1/query", &q(r#"rate({app="hdfs"}[20y])"#)).await;
    assert!(e.contains("at most 10y"), "{e}");
    let mut p = q(r#"rate({app="hdfs"}[1m])"#);
    p.push(("step", "0.001".into()));
    p.extend(l.range());
    let e = l.error("/loki/api/v1/query_range", &p).await;
    assert!(e.contains("maximum resolution"), "{e}");
    let mut p = q(r#"{app="hdfs"}"#);
    p.push(("direction", "sideways".into()));
    let e = l.error("/loki/api/v1/query_range", &p).await;
    assert!(e.contains("invalid direction"), "{e}");
    let e = l.error("/loki/api/v1/query", &q(r#"sum(sum_over_time({app="jsonapp"} | json | unwrap msg [1h]))"#)).await;
    assert!(e.contains("pipeline error"), "{e}");
    let e = l.error("/loki/api/v1/series", &[("match[]", "sum(rate({a=\"b\"}[1m]))".into())]).await;
    assert!(e.contains("only label matchers"), "{e}");
    let r = l.client.get(l.server.url("/loki/api/v1/labels")).header("X-Scope-OrgID", "a b").send().await.unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_limit_is_a_clear_400() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.query.max_query_series = 2;
    let server = TestServer::start(config).await;
    let client = crate::harness::client();
    let t = (store::time::now_ns() - 10 * NS).to_string();
    let streams: Vec<Value> =
        (0..3).map(|i| json!({"stream": {"app": format!("a{i}")}, "values": [[t.clone(), "x"]]})).collect();
    push(&client, &server, "default", json!({"streams": streams})).await;
    let r = client
        .get(server.url("/loki/api/v1/query"))
        .query(&[("query", r#"count_over_time({app=~"a.+"}[1m])"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("maximum number of series (2) reached"));
    let r = client
        .get(server.url("/loki/api/v1/query"))
        .query(&[("query", r#"sum(count_over_time({app=~"a.+"}[1m]))"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_over_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let client = crate::harness::client();
    let now = store::time::now_ns();
    push(
        &client,
        &server,
        "default",
        json!({"streams": [{"stream": {"app": "tail"}, "values": [[(now - NS).to_string(), "before"]]}]}),
    )
    .await;
    let url = server.url("/loki/api/v1/tail").replacen("http://", "ws://", 1);
    let url = format!("{url}?query=%7Bapp%3D%22tail%22%7D%20%21%3D%20%22skip%22&limit=10");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut pushed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.expect("tail frames arrive").unwrap().unwrap();
        let frame: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        for s in frame["streams"].as_array().unwrap() {
            assert_eq!(s["stream"], json!({"app": "tail"}));
            for e in s["values"].as_array().unwrap() {
                seen.push(e[1].as_str().unwrap().to_string());
            }
        }
        if !pushed {
            let t = store::time::now_ns();
            let values =
                json!([[t.to_string(), "live 1"], [(t + 1).to_string(), "skip me"], [(t + 2).to_string(), "live 2"]]);
            push(&client, &server, "default", json!({"streams": [{"stream": {"app": "tail"}, "values": values}]}))
                .await;
            pushed = true;
        }
    }
    assert_eq!(seen, vec!["before", "live 1", "live 2"]);
    // A bad parameter is refused before the upgrade, with Loki's message.
    let bad = format!(
        "{}?query=%7Bapp%3D%22tail%22%7D&delay_for=9",
        server.url("/loki/api/v1/tail").replacen("http://", "ws://", 1)
    );
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 400),
        other => panic!("expected a 400, got {other:?}"),
    }
    server.stop().await;
}

/// A quiet live tail sends WebSocket pings every `query.tail_ping_interval`, so proxies with an idle
/// timeout (nginx: 60 s) keep it open; a tail with lines to send needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_live_tail_sends_pings() {
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.query.tail_ping_interval = Duration::from_secs(1);
    let server = TestServer::start(config).await;
    let url = server.url("/loki/api/v1/tail").replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?query=%7Bapp%3D%22quiet%22%7D")).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    while pings < 3 {
        let msg =
            tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a ping within 5 s").unwrap().unwrap();
        match msg {
            Message::Ping(_) => pings += 1,
            other => panic!("a quiet tail sent {other:?}"),
        }
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2500), "three pings one second apart came in {took:?}");
    server.stop().await;
}

/// A live tail open while the server stops is closed with 1001 "going away" (Grafana reconnects), the
/// stop does not wait for it, and the data directory is free for the next server at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_closes_its_live_tails() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let url = server.url("/loki/api/v1/tail").replacen("http://", "ws://", 1);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?query=%7Bapp%3D%22quiet%22%7D")).await.unwrap();
    let started = tokio::time::Instant::now();
    let (stopped, close) = tokio::join!(server.stop(), async {
        loop {
            match tokio::time::timeout(Duration::from_secs(8), ws.next()).await.expect("a close frame within 8 s") {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("the tail ended without a close frame: {other:?}"),
            }
        }
    });
    let () = stopped;
    let took = started.elapsed();
    let frame = close.expect("a close frame with a code");
    assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
    assert!(took < Duration::from_secs(5), "the stop waited {took:?} for the tail");
    // The directory is free: a new server opens it at once.
    let server = TestServer::start(test_config(dir.path())).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_the_timeout_is_a_504_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.query.timeout = Duration::ZERO;
    let server = TestServer::start(config).await;
    let client = crate::harness::client();
    let t = (store::time::now_ns() - 10 * NS).to_string();
    push(&client, &server, "default", json!({"streams": [{"stream": {"app": "a"}, "values": [[t, "x"]]}]})).await;
    let r = client
        .get(server.url("/loki/api/v1/query"))
        .query(&[("query", r#"count_over_time({app="a"} |~ "x" [1m])"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(r.text().await.unwrap().contains("timed out"));
    let r = client.get(server.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

/// Issue 17: live tails are bounded (`query.max_concurrent_tails`): past it a tail is a 429 naming the key,
/// and a slot is free again once a tail ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tails_past_the_limit_are_refused_until_one_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.query.max_concurrent_tails = 1;
    let server = TestServer::start(config).await;
    let url =
        format!("{}?query={}", server.url("/loki/api/v1/tail").replacen("http://", "ws://", 1), "%7Bapp%3D%22x%22%7D");
    let (mut first, _) = tokio_tungstenite::connect_async(url.clone()).await.expect("the first tail");
    match tokio_tungstenite::connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 429);
            let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("query.max_concurrent_tails"), "{body}");
        }
        other => panic!("a second tail must be refused, got {:?}", other.map(|_| ())),
    }
    first.close(None).await.unwrap();
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match tokio_tungstenite::connect_async(url.clone()).await {
            Ok(_) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "no slot freed within 10 s: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.stop().await;
}

/// Issue 17: a LogQL metric query that would hold more than `query.max_samples` (one series per request
/// id, many steps) is refused with a 400 naming the key before it takes the memory, the same query summed
/// answers, and the server keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logql_query_that_would_hold_too_much_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.query.max_samples = 200_000;
    let server = TestServer::start(config).await;
    let now = store::time::now_ns();
    let values: Vec<Value> = (0..500)
        .map(|i| json!([(now - 3_000_000_000_000 + i * 1_000_000_000).to_string(), format!("id=r{i} ok")]))
        .collect();
    let body = json!({"streams": [{"stream": {"app": "wide"}, "values": values}]});
    let r = server.client.post(server.url("/loki/api/v1/push")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let ask = |q: &'static str| {
        let end = (now / 1_000_000_000).to_string();
        let start = (now / 1_000_000_000 - 3_600).to_string();
        let req = server.client.get(server.url("/loki/api/v1/query_range")).query(&[
            ("query", q),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("step", "10"),
        ]);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for phase in ["head", "parts"] {
        // 500 series × 361 steps × 2: about 360,000 samples.
        let (status, body) = ask(r#"count_over_time({app="wide"} | logfmt [1m])"#).await;
        assert_eq!(status, 400, "{phase}: {body}");
        assert!(body.contains("query.max_samples (200000)"), "{phase}: {body}");
        let (status, body) = ask(r#"sum(count_over_time({app="wide"} | logfmt [1m]))"#).await;
        assert_eq!(status, 200, "{phase}: the sum keeps one series: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let total: f64 = v["data"]["result"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_str().unwrap().parse::<f64>().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(total, 60.0, "{phase}: one line a second, 60 in each 1m window");
        server.flush().await;
    }
    server.stop().await;
}
