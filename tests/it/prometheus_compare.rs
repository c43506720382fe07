//! The same data written to a real Prometheus (Debian's `prometheus`, installed by `scripts/test`) and to
//! Lumen over remote write; the same PromQL asked of both; the same answers expected.
//!
//! Debian ships Prometheus 2.x, whose range selectors are closed on the left while Prometheus 3 (and
//! Lumen) leave them open: every sample sits 1.234 s off the query grid so no sample lies on a window
//! boundary and both semantics agree. Queries whose answers differ between 2.x and 3.x by design (delayed
//! name removal) are left out, and answers are compared from 30 minutes after the first sample: where a
//! window reaches back before a counter's first sample, Prometheus 3 applies the extrapolate-to-zero
//! limit after the average-interval rule and 2.x before it, so `rate` there differs by design.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wire::prom::{OwnedSeries, Sample, encode_write_request};

use crate::harness::{TestServer, free_addr, test_config};

const STEP_MS: i64 = 15_000;
const POINTS: i64 = 240; // one hour
const OFFSET_MS: i64 = 1_234;

pub(crate) struct Prometheus {
    child: Child,
    pub(crate) base: String,
}

impl Prometheus {
    async fn start(dir: &Path) -> Prometheus {
        Prometheus::start_with(dir, "scrape_configs: []\n").await
    }

    /// Starts Prometheus with these `scrape_configs` (YAML, with the key; anything else of its config may
    /// come before them, e.g. `rule_files`).
    pub(crate) async fn start_with(dir: &Path, scrape_configs: &str) -> Prometheus {
        let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "/usr/bin/prometheus".to_string());
        assert!(Path::new(&bin).exists(), "{bin} not found: scripts/test installs Debian's prometheus package");
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, format!("global:\n  scrape_interval: 15s\n{scrape_configs}")).unwrap();
        let addr = free_addr();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let base = format!("http://{addr}");
        let client = crate::harness::client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(format!("{base}/-/ready")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "prometheus did not become ready in 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Prometheus { child, base }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// A small deterministic generator, so both systems get the same odd values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 1_000_000) as f64 / 1_000_000.0
    }
}

/// Counters with resets, gauges with decimals and negatives, a gap longer than the lookback, a stale
/// marker, and a classic histogram per instance.
fn workload(t0: i64) -> Vec<OwnedSeries> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    for inst in ["a", "b", "c"] {
        for (mode, speed) in [("user", 3.0), ("system", 1.0), ("idle", 12.0)] {
            let mut v = 0.0;
            let samples = (0..POINTS)
                .map(|i| {
                    v += speed * (0.5 + rng.next());
                    if inst == "b" && i == 100 {
                        v = 2.0; // a counter reset
                    }
                    Sample { t: t0 + i * STEP_MS, v: (v * 100.0f64).round() / 100.0 }
                })
                .collect();
            out.push((labels(&[("__name__", "cpu_seconds_total"), ("instance", inst), ("mode", mode)]), samples));
        }
        let samples = (0..POINTS)
            .filter(|i| inst != "c" || !(60..100).contains(i)) // ten minutes missing: past the lookback
            .map(|i| Sample { t: t0 + i * STEP_MS, v: ((rng.next() - 0.3) * 1e4).round() / 8.0 })
            .collect();
        out.push((labels(&[("__name__", "temperature"), ("instance", inst)]), samples));
        let mut counts = [0.0f64; 4];
        let buckets: Vec<Vec<Sample>> = (0..4).map(|_| Vec::new()).collect();
        let mut buckets = buckets;
        for i in 0..POINTS {
            let obs = 5.0 + 20.0 * rng.next();
            let lo = (obs * rng.next()).round();
            let mid = (obs * 0.8 - lo).max(0.0).round();
            counts[0] += lo;
            counts[1] += lo + mid;
            counts[2] += obs.round().max(lo + mid);
            counts[3] += obs.round().max(lo + mid) + 1.0;
            for (b, c) in buckets.iter_mut().zip(counts) {
                b.push(Sample { t: t0 + i * STEP_MS, v: c });
            }
        }
        for (le, samples) in ["0.05", "0.25", "1", "+Inf"].iter().zip(buckets) {
            out.push((labels(&[("__name__", "rpc_seconds_bucket"), ("instance", inst), ("le", le)]), samples));
        }
    }
    // A series that goes stale half way (a target that disappeared), then comes back.
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let samples = (0..POINTS)
        .map(|i| Sample { t: t0 + i * STEP_MS, v: if i == 120 { stale } else { i as f64 } })
        .filter(|s| s.t < t0 + 120 * STEP_MS + 1 || s.t > t0 + 150 * STEP_MS)
        .collect();
    out.push((labels(&[("__name__", "up"), ("instance", "flaky")]), samples));
    out
}

const QUERIES: &[&str] = &[
    "cpu_seconds_total",
    "rate(cpu_seconds_total[5m])",
    "irate(cpu_seconds_total[1m])",
    "increase(cpu_seconds_total[10m])",
    "resets(cpu_seconds_total[30m])",
    "sum by (mode) (rate(cpu_seconds_total[5m]))",
    "sum without (instance) (rate(cpu_seconds_total[5m]))",
    "avg by (instance) (rate(cpu_seconds_total{mode!=\"idle\"}[5m]))",
    "topk(2, rate(cpu_seconds_total[5m]))",
    "bottomk(1, temperature)",
    "quantile(0.9, rate(cpu_seconds_total[5m]))",
    "count_values(\"reading\", round(temperature / 100))",
    "max_over_time(temperature[10m])",
    "avg_over_time(temperature[10m])",
    "stddev_over_time(temperature[10m])",
    "quantile_over_time(0.25, temperature[15m])",
    "deriv(temperature[10m])",
    "predict_linear(temperature[10m], 600)",
    "delta(temperature[5m])",
    "changes(temperature[10m])",
    "abs(temperature) > 100",
    "temperature > bool 0",
    "clamp(temperature, -10, 50)",
    "temperature * on (instance) group_left sum by (instance) (rate(cpu_seconds_total[5m]))",
    "rate(cpu_seconds_total{mode=\"user\"}[5m]) / ignoring (mode) rate(cpu_seconds_total{mode=\"idle\"}[5m])",
    "temperature and on (instance) rate(cpu_seconds_total{mode=\"user\"}[5m]) > 3",
    "temperature unless on (instance) temperature{instance=\"a\"}",
    "histogram_quantile(0.9, sum by (le) (rate(rpc_seconds_bucket[5m])))",
    "histogram_quantile(0.5, rate(rpc_seconds_bucket[10m]))",
    // The offset keeps the subquery window edge off its 1m step grid (2.x closes it on the left).
    "max_over_time(rate(cpu_seconds_total{mode=\"system\"}[5m])[20m:1m] offset 1s)",
    "up",
    "count_over_time(up[10m])",
    "absent(nonexistent_metric)",
    "label_replace(temperature, \"host\", \"$1-x\", \"instance\", \"(.*)\")",
    "time() - timestamp(temperature)",
    "sum(temperature offset 10m)",
    "sort_desc(sum by (instance) (temperature))",
];

/// `labels -> [(t, v)]` of an answer, values as floats.
fn series_map(body: &Value) -> BTreeMap<String, Vec<(f64, f64)>> {
    let data = &body["data"];
    let rows: Vec<Value> = match data["resultType"].as_str() {
        Some("matrix") => data["result"].as_array().unwrap().clone(),
        Some("vector") => data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| serde_json::json!({"metric": s["metric"], "values": [s["value"]]}))
            .collect(),
        Some("scalar") => vec![serde_json::json!({"metric": {}, "values": [data["result"]]})],
        other => panic!("unexpected result type {other:?}: {body}"),
    };
    rows.iter()
        .map(|s| {
            let key = s["metric"].to_string();
            let points = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().parse::<f64>().unwrap()))
                .collect();
            (key, points)
        })
        .collect()
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

async fn ask(client: &reqwest::Client, base: &str, params: &[(&str, String)], path: &str) -> Value {
    let r = client.get(format!("{base}{path}")).query(params).send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{base}{path} {params:?}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_data_same_queries_same_answers_as_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(&dir.path().join("prometheus")).await;
    let lumen = TestServer::start(test_config(&dir.path().join("lumen"))).await;
    let client = crate::harness::client();
    let now = store::time::now_ns() / 1_000_000;
    let t0 = (now - 70 * 60_000).div_euclid(60_000) * 60_000 + OFFSET_MS;
    let body = encode_write_request(&workload(t0));
    for base in [&prom.base, &lumen.base] {
        let r = client
            .post(format!("{base}/api/v1/write"))
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(status.is_success(), "{base}: {status} {}", r.text().await.unwrap());
    }
    let start = (t0 - OFFSET_MS) / 1000;
    let end = start + (POINTS * STEP_MS) / 1000;
    let mut mismatches = Vec::new();
    for q in QUERIES {
        let range = [
            ("query", q.to_string()),
            ("start", (start + 1800).to_string()),
            ("end", end.to_string()),
            ("step", "60".to_string()),
        ];
        let instant = [("query", q.to_string()), ("time", (start + 1830).to_string())];
        for (path, params) in [("/api/v1/query_range", &range[..]), ("/api/v1/query", &instant[..])] {
            let want = series_map(&ask(&client, &prom.base, params, path).await);
            let got = series_map(&ask(&client, &lumen.base, params, path).await);
            if want.keys().ne(got.keys()) {
                mismatches.push(format!(
                    "{path} {q}: series differ\n  prometheus: {:?}\n  lumen:      {:?}",
                    want.keys(),
                    got.keys()
                ));
                continue;
            }
            for (k, w) in &want {
                let g = &got[k];
                let equal = w.len() == g.len() && w.iter().zip(g).all(|(a, b)| a.0 == b.0 && same(a.1, b.1));
                if !equal {
                    let first = w.iter().zip(g).find(|(a, b)| !(a.0 == b.0 && same(a.1, b.1)));
                    mismatches.push(format!(
                        "{path} {q} {k}: {} vs {} points, first difference (prometheus, lumen): {first:?}",
                        w.len(),
                        g.len()
                    ));
                }
            }
        }
    }
    assert!(mismatches.is_empty(), "{} differences:\n{}", mismatches.len(), mismatches.join("\n"));
    // Label browsing agrees too.
    let window = [("start", start.to_string()), ("end", end.to_string())];
    for path in ["/api/v1/labels", "/api/v1/label/__name__/values", "/api/v1/label/instance/values"] {
        let want = ask(&client, &prom.base, &window, path).await["data"].clone();
        let got = ask(&client, &lumen.base, &window, path).await["data"].clone();
        assert_eq!(got, want, "{path}");
    }
    lumen.stop().await;
}

/// Series of a job as sorted label sets, without `job` and `node` (which the agent adds to static targets).
async fn job_series(client: &reqwest::Client, base: &str, job: &str) -> std::collections::BTreeSet<String> {
    let v = ask(client, base, &[("match[]", format!("{{job=\"{job}\"}}"))], "/api/v1/series").await;
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut pairs: Vec<String> = s
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k != "job" && *k != "node")
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
                .collect();
            pairs.sort();
            pairs.join(",")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_scrapes_like_prometheus_and_ships_to_its_remote_write_receiver() {
    let tmp = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/exposition");
    let a = crate::agent::serve_exposition(data.join("prometheus-common-expfmt-text.prom.txt")).await;
    let b = crate::agent::serve_exposition(data.join("1histogram.om.txt")).await;
    // Prometheus scrapes both targets itself, as job "prom".
    let scrape = format!(
        "scrape_configs:\n  - job_name: prom\n    scrape_interval: 1s\n    static_configs:\n      - targets: [\"{a}\", \"{b}\"]\n"
    );
    let prom = Prometheus::start_with(&tmp.path().join("prom"), &scrape).await;
    // The agent scrapes the same targets as job "agent" and ships to Prometheus' remote-write receiver.
    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndata_dir = \"{}\"\nnode_name = \"node-1\"\nlogs = false\nnode_metrics = false\n\
             kubernetes_api = \"off\"\nmetrics_url = \"{}/api/v1/write\"\nscrape_job = \"agent\"\n\
             scrape_interval = \"1s\"\nbatch_wait = \"100ms\"\nscrape_targets = [\"http://{a}/metrics\", \"http://{b}/metrics\"]\n",
            tmp.path().join("agent-data").display(),
            prom.base
        ),
    )
    .unwrap();
    let mut agent = crate::agent::AgentProcess::spawn(&config, free_addr());
    agent.wait_ready().await;
    let client = crate::harness::client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let theirs = job_series(&client, &prom.base, "prom").await;
        let ours = job_series(&client, &prom.base, "agent").await;
        if !theirs.is_empty() && theirs == ours {
            break;
        }
        if Instant::now() > deadline {
            let only_prom: Vec<_> = theirs.difference(&ours).take(5).collect();
            let only_agent: Vec<_> = ours.difference(&theirs).take(5).collect();
            panic!(
                "{} series from Prometheus' scrape, {} from the agent's; only Prometheus: {only_prom:?}; only the agent: {only_agent:?}",
                theirs.len(),
                ours.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let up = ask(&client, &prom.base, &[("query", "up{job=\"agent\"}".to_string())], "/api/v1/query").await;
    assert_eq!(up["data"]["result"].as_array().unwrap().len(), 2, "{up}");
    agent.terminate();
}
