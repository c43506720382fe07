//! Metrics in and out: remote write, text import and Influx line protocol in; the Prometheus HTTP API as
//! Grafana's Prometheus data source calls it out; bad bodies; and `kill -9` during remote write.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use wire::prom::{OwnedSeries, Sample, compress_snappy, encode_write_request};

use crate::harness::{ServerProcess, TestServer, free_addr, test_config};

const STEP_MS: i64 = 15_000;
const POINTS: i64 = 41; // ten minutes at 15 s

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// A start time on a whole minute, ten minutes and a bit ago.
fn start_ms() -> i64 {
    let now = store::time::now_ns() / 1_000_000;
    (now - 11 * 60_000).div_euclid(60_000) * 60_000
}

/// Counters of two instances, a decimal gauge, and a classic histogram with three buckets.
fn workload(t0: i64) -> Vec<OwnedSeries> {
    let series = |pairs: &[(&str, &str)], f: &dyn Fn(i64) -> f64| -> OwnedSeries {
        (labels(pairs), (0..POINTS).map(|i| Sample { t: t0 + i * STEP_MS, v: f(i) }).collect())
    };
    vec![
        series(&[("__name__", "http_requests_total"), ("job", "api"), ("instance", "a"), ("code", "200")], &|i| {
            (i * 10) as f64
        }),
        series(&[("__name__", "http_requests_total"), ("job", "api"), ("instance", "b"), ("code", "200")], &|i| {
            (i * 20) as f64
        }),
        series(&[("__name__", "node_memory_free_bytes"), ("job", "node"), ("instance", "a")], &|i| {
            1.5e9 + (i as f64) * 0.25
        }),
        series(&[("__name__", "req_seconds_bucket"), ("job", "api"), ("le", "0.1")], &|i| (i * 2) as f64),
        series(&[("__name__", "req_seconds_bucket"), ("job", "api"), ("le", "0.5")], &|i| (i * 8) as f64),
        series(&[("__name__", "req_seconds_bucket"), ("job", "api"), ("le", "+Inf")], &|i| (i * 10) as f64),
    ]
}

async fn remote_write(server: &TestServer, tenant: &str, body: Vec<u8>) -> (u16, String) {
    let r = server
        .client
        .post(server.url("/api/v1/write"))
        .header("X-Scope-OrgID", tenant)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

struct Api<'a> {
    server: &'a TestServer,
    tenant: &'a str,
}

impl Api<'_> {
    async fn get(&self, path: &str, params: &[(&str, String)]) -> (u16, Value) {
        let r = self
            .server
            .client
            .get(self.server.url(path))
            .header("X-Scope-OrgID", self.tenant)
            .query(params)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}")))
    }

    /// Grafana POSTs form bodies by default.
    async fn post(&self, path: &str, params: &[(&str, String)]) -> (u16, Value) {
        let r = self
            .server
            .client
            .post(self.server.url(path))
            .header("X-Scope-OrgID", self.tenant)
            .form(params)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn ok(&self, path: &str, params: &[(&str, String)]) -> Value {
        let (status, body) = self.get(path, params).await;
        assert_eq!(status, 200, "{path} {params:?}: {body}");
        assert_eq!(body["status"], "success", "{body}");
        body["data"].clone()
    }

    async fn error(&self, path: &str, params: &[(&str, String)]) -> (u16, String, String) {
        let (status, body) = self.get(path, params).await;
        assert_eq!(body["status"], "error", "{path} {params:?}: {body}");
        (status, body["errorType"].as_str().unwrap().to_string(), body["error"].as_str().unwrap().to_string())
    }
}

fn secs(ms: i64) -> String {
    format!("{}", ms as f64 / 1000.0)
}

/// `{label value of `by`} -> [values]` of a matrix answer.
fn matrix_by(data: &Value, by: &str) -> BTreeMap<String, Vec<f64>> {
    assert_eq!(data["resultType"], "matrix", "{data}");
    data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let key = s["metric"][by].as_str().unwrap_or("").to_string();
            let vals =
                s["values"].as_array().unwrap().iter().map(|p| p[1].as_str().unwrap().parse().unwrap()).collect();
            (key, vals)
        })
        .collect()
}

async fn check_queries(api: &Api<'_>, t0: i64) {
    let end = t0 + (POINTS - 1) * STEP_MS;
    let range = |q: &str| {
        vec![("query", q.to_string()), ("start", secs(t0 + 5 * 60_000)), ("end", secs(end)), ("step", "15".to_string())]
    };
    // rate over a steady counter is its slope, whatever the extrapolation does at the edges.
    let data = api.ok("/api/v1/query_range", &range("rate(http_requests_total[2m])")).await;
    let by = matrix_by(&data, "instance");
    assert_eq!(by.len(), 2, "{data}");
    for (inst, slope) in [("a", 10.0 / 15.0), ("b", 20.0 / 15.0)] {
        let vals = &by[inst];
        assert_eq!(vals.len(), 21, "{inst}: {vals:?}");
        assert!(vals.iter().all(|v| (v - slope).abs() < 1e-9), "{inst}: {vals:?}");
    }
    // rate drops the metric name; sum by keeps only the grouping label.
    let data = api.ok("/api/v1/query_range", &range("sum by (job) (rate(http_requests_total[2m]))")).await;
    let series = data["result"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["metric"], serde_json::json!({"job": "api"}));
    // Buckets 0.1: 20%, 0.5: 80%, +Inf: 100% of the rate: the median interpolates within (0.1, 0.5].
    let q = "histogram_quantile(0.5, sum by (le) (rate(req_seconds_bucket[2m])))";
    let data = api.ok("/api/v1/query", &[("query", q.to_string()), ("time", secs(end))]).await;
    assert_eq!(data["resultType"], "vector");
    let v: f64 = data["result"][0]["value"][1].as_str().unwrap().parse().unwrap();
    let want = 0.1 + 0.4 * (0.5 - 0.2) / (0.8 - 0.2);
    assert!((v - want).abs() < 1e-9, "{v} != {want}: {data}");
    // An instant selector answers the latest sample within the lookback, stamped with the query time.
    let data = api.ok("/api/v1/query", &[("query", "node_memory_free_bytes".into()), ("time", secs(end + 1000))]).await;
    assert_eq!(data["result"][0]["value"][0].as_f64(), Some((end + 1000) as f64 / 1000.0));
    assert_eq!(data["result"][0]["value"][1], "1500000010");
    assert_eq!(data["result"][0]["metric"]["__name__"], "node_memory_free_bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_prometheus_data_source_flow_over_remote_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let t0 = start_ms();
    let (status, body) = remote_write(&server, "default", encode_write_request(&workload(t0))).await;
    assert_eq!(status, 204, "{body}");
    let api = Api { server: &server, tenant: "default" };

    // What Grafana calls when the data source is saved.
    let info = api.ok("/api/v1/status/buildinfo", &[]).await;
    let version: Vec<u32> = info["version"].as_str().unwrap().split('.').map(|p| p.parse().unwrap()).collect();
    assert!(version >= vec![2, 24, 0], "{info}");
    assert!(info.get("features").is_none(), "a features key makes Grafana take us for Mimir: {info}");
    let health = api.ok("/api/v1/query", &[("query", "1+1".into()), ("time", "4".into())]).await;
    assert_eq!(health, serde_json::json!({"resultType": "scalar", "result": [4, "2"]}));
    let (status, body) = api.post("/api/v1/query", &[("query", "1+1".into()), ("time", "4".into())]).await;
    assert_eq!((status, &body["data"]["result"]), (200, &serde_json::json!([4, "2"])));
    // The exemplar probe sends milliseconds where seconds belong.
    let ms = (t0 + 600_000).to_string();
    let ex = api.ok("/api/v1/query_exemplars", &[("query", "test".into()), ("start", ms.clone()), ("end", ms)]).await;
    assert_eq!(ex, serde_json::json!([]));
    assert_eq!(api.ok("/api/v1/rules", &[]).await, serde_json::json!({"groups": []}));
    assert_eq!(api.ok("/api/v1/alerts", &[]).await, serde_json::json!({"alerts": []}));
    assert!(api.ok("/api/v1/metadata", &[]).await.is_object());

    // The metric browser: names, labels, values, series, bounded by time and match[].
    let window = [("start", secs(t0)), ("end", secs(t0 + 600_000))];
    let names = api.ok("/api/v1/label/__name__/values", &window).await;
    assert_eq!(
        names,
        serde_json::json!(["http_requests_total", "node_memory_free_bytes", "req_seconds_bucket"]),
        "{names}"
    );
    let mut p = window.to_vec();
    p.push(("match[]", "http_requests_total".into()));
    let labels = api.ok("/api/v1/labels", &p).await;
    assert_eq!(labels, serde_json::json!(["__name__", "code", "instance", "job"]));
    let inst = api.ok("/api/v1/label/instance/values", &p).await;
    assert_eq!(inst, serde_json::json!(["a", "b"]));
    let series = api.ok("/api/v1/series", &p).await;
    assert_eq!(series.as_array().unwrap().len(), 2, "{series}");
    let mut limited = p.clone();
    limited.push(("limit", "1".into()));
    let (_, body) = api.get("/api/v1/series", &limited).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert!(body["warnings"][0].as_str().unwrap().contains("truncated"), "{body}");
    // Nothing before the data.
    let early = [("start", secs(t0 - 3_600_000)), ("end", secs(t0 - 1_800_000))];
    assert_eq!(api.ok("/api/v1/label/__name__/values", &early).await, serde_json::json!([]));
    // Another tenant sees nothing.
    let other = Api { server: &server, tenant: "other" };
    assert_eq!(other.ok("/api/v1/label/__name__/values", &[]).await, serde_json::json!([]));

    check_queries(&api, t0).await;
    let formatted = api.ok("/api/v1/format_query", &[("query", "sum(rate(x[5m]))by(job)".into())]).await;
    assert_eq!(formatted, "sum by (job) (rate(x[5m]))");

    // Errors with Prometheus' envelope and status codes.
    let (status, kind, msg) = api.error("/api/v1/query", &[("query", "sum(rate(x[5m])".into())]).await;
    assert_eq!((status, kind.as_str()), (400, "bad_data"), "{msg}");
    let too_many = [("query", "up".into()), ("start", "0".into()), ("end", "100000".into()), ("step", "1".into())];
    let (status, kind, msg) = api.error("/api/v1/query_range", &too_many).await;
    assert_eq!((status, kind.as_str()), (400, "bad_data"));
    assert!(msg.contains("11,000 points"), "{msg}");
    let backwards = [("query", "up".into()), ("start", "100".into()), ("end", "10".into()), ("step", "1".into())];
    assert_eq!(api.error("/api/v1/query_range", &backwards).await.0, 400);
    let zero = [("query", "up".into()), ("start", "0".into()), ("end", "10".into()), ("step", "0".into())];
    assert_eq!(api.error("/api/v1/query_range", &zero).await.0, 400);
    let (status, _, msg) = api.error("/api/v1/series", &[]).await;
    assert_eq!(status, 400);
    assert!(msg.contains("match[]"), "{msg}");
    let (status, _, _) = api.error("/api/v1/query", &[("query", "up".into()), ("time", "tomorrow".into())]).await;
    assert_eq!(status, 400);
    // A query past its timeout is Prometheus' 503 `timeout`; the server answers the next one.
    let heavy = [
        ("query", "count_over_time(http_requests_total[10m:1ms])".to_string()),
        ("time", secs(t0 + 600_000)),
        ("timeout", "1ms".to_string()),
    ];
    let (status, kind, _) = api.error("/api/v1/query", &heavy).await;
    assert_eq!((status, kind.as_str()), (503, "timeout"));
    // Every endpoint takes a form POST too.
    for path in ["/api/v1/label/job/values", "/api/v1/metadata", "/api/v1/rules", "/api/v1/status/buildinfo"] {
        let (status, body) = api.post(path, &[]).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("success")), "{path}: {body}");
    }
    let dup = "label_replace(http_requests_total, \"instance\", \"x\", \"\", \"\")";
    let (status, kind, msg) = api.error("/api/v1/query", &[("query", dup.into()), ("time", secs(t0 + 600_000))]).await;
    assert_eq!((status, kind.as_str()), (422, "execution"), "{msg}");

    // Remote read: a Prometheus using Lumen as long-term storage gets the raw samples.
    let read = remote_read(&server, t0, t0 + 60_000, "http_requests_total", "b").await;
    assert_eq!(read.len(), 1);
    let (labels, samples) = &read[0];
    assert!(labels.contains(&("instance".to_string(), "b".to_string())), "{labels:?}");
    assert_eq!(
        samples,
        &vec![(t0, 0.0), (t0 + 15_000, 20.0), (t0 + 30_000, 40.0), (t0 + 45_000, 60.0), (t0 + 60_000, 80.0)]
    );

    // The same answers once the samples are in Parquet, and after a restart.
    server.flush().await;
    check_queries(&api, t0).await;
    server.stop().await;
    let server = TestServer::start(test_config(dir.path())).await;
    check_queries(&Api { server: &server, tenant: "default" }, t0).await;
    server.stop().await;
}

/// Sends a remote-read request for one series and decodes the SAMPLES answer.
async fn remote_read(
    server: &TestServer,
    start: i64,
    end: i64,
    name: &str,
    instance: &str,
) -> Vec<(Vec<(String, String)>, Vec<(i64, f64)>)> {
    use prost::Message;
    use wire::prom::remote::pb;
    let matcher =
        |n: &str, v: &str| pb::LabelMatcher { r#type: pb::MatchType::Eq as i32, name: n.into(), value: v.into() };
    let req = pb::ReadRequest {
        queries: vec![pb::Query {
            start_timestamp_ms: start,
            end_timestamp_ms: end,
            matchers: vec![matcher("__name__", name), matcher("instance", instance)],
            hints: None,
        }],
        accepted_response_types: vec![pb::ResponseType::StreamedXorChunks as i32, pb::ResponseType::Samples as i32],
    };
    let r = server
        .client
        .post(server.url("/api/v1/read"))
        .header("Content-Encoding", "snappy")
        .body(compress_snappy(&req.encode_to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let raw = snap::raw::Decoder::new().decompress_vec(&r.bytes().await.unwrap()).unwrap();
    let resp = pb::ReadResponse::decode(raw.as_slice()).unwrap();
    resp.results[0]
        .timeseries
        .iter()
        .map(|ts| {
            (
                ts.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect(),
                ts.samples.iter().map(|s| (s.timestamp, s.value)).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_remote_write_bodies_get_400_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_labels_per_series = 5;
    let server = TestServer::start(config).await;
    let t = store::time::now_ns() / 1_000_000;
    let one =
        |pairs: &[(&str, &str)], v: f64, t: i64| -> Vec<OwnedSeries> { vec![(labels(pairs), vec![Sample { t, v }])] };
    let api = Api { server: &server, tenant: "bad" };
    let names = || async { api.ok("/api/v1/label/__name__/values", &[]).await };

    // A truncated protobuf (valid snappy around it).
    let good = encode_write_request(&one(&[("__name__", "ok_metric")], 1.0, t));
    let raw = snap::raw::Decoder::new().decompress_vec(&good).unwrap();
    let (status, msg) = remote_write(&server, "bad", compress_snappy(&raw[..raw.len() - 3])).await;
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("protobuf"), "{msg}");
    // Not snappy at all.
    let (status, msg) = remote_write(&server, "bad", b"definitely not snappy".to_vec()).await;
    assert_eq!(status, 400);
    assert!(msg.contains("snappy"), "{msg}");
    // An invalid label name, in the second series: the first is not stored either.
    let mut body = one(&[("__name__", "first_metric")], 1.0, t);
    body.extend(one(&[("__name__", "second_metric"), ("1bad", "x")], 1.0, t));
    let (status, msg) = remote_write(&server, "bad", encode_write_request(&body)).await;
    assert_eq!(status, 400);
    assert!(msg.contains("label name \"1bad\" is invalid"), "{msg}");
    // No metric name; too many labels.
    let (status, msg) = remote_write(&server, "bad", encode_write_request(&one(&[("job", "x")], 1.0, t))).await;
    assert!(status == 400 && msg.contains("metric name"), "{msg}");
    let many = [("__name__", "m"), ("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")];
    let (status, msg) = remote_write(&server, "bad", encode_write_request(&one(&many, 1.0, t))).await;
    assert!(status == 400 && msg.contains("more than the limit of 5"), "{msg}");
    // A sample far older than retention makes the whole request a 400.
    let mut body = one(&[("__name__", "fresh_metric")], 1.0, t);
    body.extend(one(&[("__name__", "ancient_metric")], 1.0, t - 400 * 86_400_000));
    let (status, msg) = remote_write(&server, "bad", encode_write_request(&body)).await;
    assert!(status == 400 && msg.contains("outside the accepted window"), "{msg}");
    assert_eq!(names().await, serde_json::json!([]), "nothing of the refused requests is visible");

    // What is valid is stored: NaN values, a stale marker, and out-of-order samples (read back sorted).
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let series = vec![(
        labels(&[("__name__", "odd_values"), ("job", "x")]),
        vec![
            Sample { t: t - 30_000, v: 3.0 },
            Sample { t: t - 60_000, v: f64::NAN },
            Sample { t: t - 45_000, v: 2.0 },
            Sample { t: t - 15_000, v: stale },
        ],
    )];
    let (status, msg) = remote_write(&server, "bad", encode_write_request(&series)).await;
    assert_eq!(status, 204, "{msg}");
    let q = [("query", "odd_values[2m]".to_string()), ("time", secs(t))];
    let data = api.ok("/api/v1/query", &q).await;
    let values: Vec<(f64, String)> = data["result"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(f64, String)> = [(t - 60_000, "NaN"), (t - 45_000, "2"), (t - 30_000, "3")]
        .iter()
        .map(|(t, v)| (*t as f64 / 1000.0, v.to_string()))
        .collect();
    assert_eq!(values, want, "the stale marker ends the series and is not a value");
    // The stale marker hides the series from an instant query right after it.
    let data = api.ok("/api/v1/query", &[("query", "odd_values".into()), ("time", secs(t))]).await;
    assert_eq!(data["result"], serde_json::json!([]), "{data}");
    assert_eq!(names().await, serde_json::json!(["odd_values"]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_import_and_influx_line_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let t = store::time::now_ns() / 1_000_000 - 60_000;
    let api = Api { server: &server, tenant: "default" };
    let post = |path: &'static str, ctype: &'static str, body: String| {
        let req = server.client.post(server.url(path)).header("Content-Type", ctype).body(body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let text = format!(
        "# HELP jobs_done_total Jobs done.\n# TYPE jobs_done_total counter\njobs_done_total{{queue=\"a\\\"b\"}} 7 {t}\n\
         jobs_done_total{{queue=\"c\"}} NaN {t}\nthis is not a sample\ntemperature_celsius 21.5 {t}\n"
    );
    let (status, msg) = post("/api/v1/import/prometheus", "text/plain; version=0.0.4", text).await;
    assert_eq!(status, 400, "one bad line: the others are stored and the answer names it");
    assert!(msg.contains("3 samples stored") && msg.contains("line 5"), "{msg}");
    let data = api.ok("/api/v1/query", &[("query", "jobs_done_total".into()), ("time", secs(t))]).await;
    let queues: Vec<&str> =
        data["result"].as_array().unwrap().iter().map(|s| s["metric"]["queue"].as_str().unwrap()).collect();
    assert_eq!(queues.len(), 2);
    assert!(queues.contains(&"a\"b"), "{data}");
    let meta = api.ok("/api/v1/metadata", &[]).await;
    assert_eq!(meta["jobs_done_total"][0]["type"], "counter", "{meta}");
    assert_eq!(meta["jobs_done_total"][0]["help"], "Jobs done.");

    let lp = format!(
        "cpu,host=web\\ 1 usage_idle=93.5,usage_user=4i {}\nweather,city=Oslo temp=-3.25 {}\n",
        t * 1_000_000,
        t * 1_000_000
    );
    let (status, msg) = post("/api/v2/write", "text/plain", lp).await;
    assert_eq!(status, 204, "{msg}");
    let data = api.ok("/api/v1/query", &[("query", "cpu_usage_user".into()), ("time", secs(t))]).await;
    assert_eq!(data["result"][0]["metric"]["host"], "web 1");
    assert_eq!(data["result"][0]["value"][1], "4");
    let (status, msg) =
        post("/write?precision=ms", "text/plain", format!("weather,city=Bergen temp=7 {t}\nbroken line\n")).await;
    assert!(status == 400 && msg.contains("line 2"), "{msg}");
    let data = api.ok("/api/v1/query", &[("query", "weather_temp".into()), ("time", secs(t))]).await;
    assert_eq!(data["result"].as_array().unwrap().len(), 2, "{data}");

    // The label limits of remote write hold here too (issue 17): a series with more than
    // max_labels_per_series (40) labels, or a label value over 64 KiB, is left out and named; the rest is stored.
    let many: String = (0..45).map(|i| format!("l{i}=\"v\"")).collect::<Vec<_>>().join(",");
    let huge = "x".repeat(70 * 1024);
    let text = format!("wide_metric{{{many}}} 1 {t}\nhuge_metric{{v=\"{huge}\"}} 1 {t}\nnarrow_metric 1 {t}\n");
    let (status, msg) = post("/api/v1/import/prometheus", "text/plain; version=0.0.4", text).await;
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("1 samples stored") && msg.contains("2 samples rejected for their labels"), "{msg}");
    assert!(
        msg.contains("series wide_metric: 46 labels (with __name__), over server.max_labels_per_series (40)"),
        "{msg}"
    );
    assert!(msg.contains("series huge_metric: label v of 71680 bytes"), "{msg}");
    let tags: String = (0..45).map(|i| format!(",t{i}=v")).collect();
    let (status, msg) = post("/write?precision=ms", "text/plain", format!("wide{tags} f=1 {t}\nok_m f=2 {t}\n")).await;
    assert!(status == 400 && msg.contains("series wide_f: 46 labels (with __name__)"), "{msg}");
    for (query, n) in [("wide_metric", 0), ("huge_metric", 0), ("narrow_metric", 1), ("wide_f", 0), ("ok_m_f", 1)] {
        let data = api.ok("/api/v1/query", &[("query", query.into()), ("time", secs(t))]).await;
        assert_eq!(data["result"].as_array().unwrap().len(), n, "{query}: {data}");
    }
    server.stop().await;
}

/// Every acknowledged remote-write request survives `kill -9` of a real process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_remote_write_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut server = ServerProcess::spawn(dir.path(), addr, &[]);
    server.wait_ready().await;
    let client = crate::harness::client();
    let t0 = store::time::now_ns() / 1_000_000 - 3_600_000;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let writer = {
        let (client, base, acked) = (client.clone(), server.base.clone(), acked.clone());
        tokio::spawn(async move {
            for i in 0..100_000i64 {
                let series: Vec<OwnedSeries> = (0..50)
                    .map(|s| {
                        (
                            labels(&[("__name__", "kill_test"), ("s", &s.to_string())]),
                            vec![Sample { t: t0 + i, v: i as f64 }],
                        )
                    })
                    .collect();
                let r = client
                    .post(format!("{base}/api/v1/write"))
                    .header("Content-Encoding", "snappy")
                    .body(encode_write_request(&series))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 204 => acked.store(i + 1, std::sync::atomic::Ordering::SeqCst),
                    _ => break,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill9();
    writer.await.unwrap();
    let acked = acked.load(std::sync::atomic::Ordering::SeqCst);
    assert!(acked > 10, "only {acked} requests before the kill");
    let mut server = ServerProcess::spawn(dir.path(), addr, &[]);
    server.wait_ready().await;
    let r: Value = client
        .get(format!("{}/api/v1/query", server.base))
        .query(&[("query", "count_over_time(kill_test[2h])".to_string()), ("time", secs(t0 + 200_000))])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let counts: Vec<i64> = r["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 50, "{r}");
    for c in counts {
        assert!(c >= acked && c <= acked + 1, "{c} samples of a series stored, {acked} acknowledged");
    }
    server.terminate();
}

/// Issue 17: a PromQL query over more samples than `query.max_samples` is refused while the store loads
/// them (from parts and from the head), not after it held them all; the server answers the next query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_more_samples_than_max_samples_is_refused_while_loading() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.query.max_samples = 1_000;
    let server = TestServer::start(config).await;
    let t0 = store::time::now_ns() / 1_000_000 - 3_000_000;
    let text: String = (0..1_500).map(|i| format!("heavy_metric {i} {}\n", t0 + i * 1_000)).collect();
    let r = server.client.post(server.url("/api/v1/import/prometheus")).body(text).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let ask = |q: &'static str| {
        let req = server.client.get(server.url("/api/v1/query")).query(&[("query", q)]);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for phase in ["head", "parts"] {
        let (status, body) = ask("count_over_time(heavy_metric[1h])").await;
        assert_eq!(status, 422, "{phase}: {body}");
        assert!(body.contains("too many samples") && body.contains("query.max_samples"), "{phase}: {body}");
        let (status, body) = ask("count_over_time(heavy_metric[10m])").await;
        assert_eq!(status, 200, "{phase}: a query within the limit answers: {body}");
        server.flush().await;
    }
    server.stop().await;
}

/// A range query's `data.result` on `server` (the default tenant).
async fn range_result(server: &TestServer, query: &str, start_ms: i64, end_ms: i64) -> Value {
    let params =
        [("query", query.to_string()), ("start", secs(start_ms)), ("end", secs(end_ms)), ("step", "60".into())];
    let v: Value =
        server.client.get(server.url("/api/v1/query_range")).query(&params).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], "success", "{v}");
    v["data"]["result"].clone()
}

async fn import(server: &TestServer, text: String) {
    let r = server.client.post(server.url("/api/v1/import/prometheus")).body(text).send().await.unwrap();
    assert_eq!(r.status(), 204);
}

/// Issue 23: a dashboard's moved window takes the steps it shares from the results cache, and every answer
/// equals a fresh evaluation, after a late sample and a delete too. The fresh evaluation is the same
/// query with a leading space: another cache key, evaluated whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_range_results_equal_fresh_ones_across_late_samples_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let t0 = (store::time::now_ns() / 1_000_000 - 3_600_000) / 60_000 * 60_000;
    let text: String = (0..240)
        .flat_map(|i| {
            let t = t0 + i * 15_000;
            [format!("cache_metric{{a=\"1\"}} {} {t}\n", i * 2), format!("cache_metric{{a=\"2\"}} {} {t}\n", i * 3)]
        })
        .collect();
    import(&server, text).await;
    let q = "sum by (a) (rate(cache_metric[5m]))";
    let fresh = format!(" {q}");
    let hits = |m: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix("lumen_query_results_cache_hits_total "))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    let metrics = || async { server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap() };

    let first = range_result(&server, q, t0 + 600_000, t0 + 3_000_000).await;
    assert_eq!(first, range_result(&server, &fresh, t0 + 600_000, t0 + 3_000_000).await);
    assert_eq!(first.as_array().unwrap().len(), 2);
    let before = hits(&metrics().await);
    // The window moved by two steps: the shared steps come from the cache.
    let moved = range_result(&server, q, t0 + 720_000, t0 + 3_120_000).await;
    assert_eq!(hits(&metrics().await), before + 1.0, "the moved window hit the cache");
    assert_eq!(moved, range_result(&server, &fresh, t0 + 720_000, t0 + 3_120_000).await);

    // A late sample inside the cached window: the steps from it on are evaluated again.
    import(&server, format!("cache_metric{{a=\"1\"}} 100000 {}\n", t0 + 1_800_000 + 7_000)).await;
    let late = range_result(&server, q, t0 + 720_000, t0 + 3_120_000).await;
    assert_ne!(late, moved, "the late sample changed the answer");
    assert_eq!(late, range_result(&server, &fresh, t0 + 720_000, t0 + 3_120_000).await);

    // A delete voids the cache.
    let r = server
        .client
        .post(server.url("/api/v1/admin/tsdb/delete_series"))
        .query(&[("match[]", "cache_metric{a=\"2\"}")])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let deleted = range_result(&server, q, t0 + 720_000, t0 + 3_120_000).await;
    assert_eq!(deleted.as_array().unwrap().len(), 1, "{deleted}");
    assert_eq!(deleted, range_result(&server, &fresh, t0 + 720_000, t0 + 3_120_000).await);
    server.stop().await;
}
