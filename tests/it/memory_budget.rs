//! Issue 23, "A memory budget": a server process with `server.memory_limit = "128MiB"`, under ingest (Loki
//! push JSON and Prometheus text import) and heavy queries at the same time (LogQL over everything, a SQL
//! `GROUP BY` with `DISTINCT`, a PromQL range query over 1,000 series), keeps its resident memory under the
//! budget plus [`OVERHEAD`], stays up, loses no acknowledged write, and answers every query or refuses it
//! naming a limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{ServerProcess, client, free_addr, loghub};

const MIB: u64 = 1024 * 1024;
const BUDGET: u64 = 128 * MIB;
/// What the process may hold above the budget. The budget governs what the server allocates, not the
/// binary: the idle debug build this test runs is ~43 MiB resident (release ~20 MiB), a third of this
/// budget. Measured with this load (2026-12, debug build, 2 cores): peak (VmHWM) 160-183 MiB over six
/// runs; with the derived keys disabled 434 MiB, with the pressure rule disabled 407 MiB. The response is
/// not instant (a sample a second, then a flush), so peaks pass the 90% mark briefly. The allowance is
/// 96 MiB (the debug baseline plus about 50 MiB of reaction time), so that a busier machine does not fail
/// a server that keeps its budget; without either half of the budget the peak is over 400 MiB.
const OVERHEAD: u64 = 96 * MIB;
const LOAD: Duration = Duration::from_secs(20);
const SERIES: usize = 1000;

/// `VmRSS` and `VmHWM` (the kernel's own peak) of a process, in bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// How a query ended. Anything else (another status, a reset connection) fails the test.
#[derive(Debug, Default)]
struct Outcomes {
    ok: AtomicU64,
    /// 503 naming `server.memory_limit`.
    refused_memory: AtomicU64,
    /// Refused by the query's own limit, derived from the budget (SQL's pool, PromQL's and LogQL's
    /// samples).
    refused_own_limit: AtomicU64,
}

impl Outcomes {
    fn record(&self, what: &str, status: u16, body: &str) {
        let counter = match status {
            200 => &self.ok,
            503 if body.contains("over 90% of its memory budget (server.memory_limit = 128.0 MiB, resident")
                && body.contains("retry later") =>
            {
                &self.refused_memory
            }
            503 if body.contains("query.sql_max_memory") => &self.refused_own_limit,
            422 | 400 if body.contains("query.max_samples") => &self.refused_own_limit,
            _ => panic!("{what}: neither answered nor refused naming a limit: {status} {body}"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs a query and records how it ended; a refused one waits a little before the next, as a client that
/// reads `Retry-After` does (shortened for the test).
async fn query(what: &str, req: reqwest::RequestBuilder, outcomes: &Outcomes) {
    let resp = req.send().await.unwrap_or_else(|e| panic!("{what}: the request failed (crash or reset?): {e}"));
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_else(|e| panic!("{what}: the answer was cut: {e}"));
    outcomes.record(what, status, &body);
    if status != 200 {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_128_mib_budget_holds_under_ingest_and_heavy_queries() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("lumen.toml");
    std::fs::write(&conf, "[server]\nmemory_limit = \"128MiB\"\n[store]\nmin_free_disk = \"0 B\"\n").unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let mut server = ServerProcess::spawn(&dir.path().join("data"), free_addr(), &["--config", &conf]);
    server.wait_ready().await;
    let pid = server.child.id();
    let base = server.base.clone();
    let c = client();
    let (baseline, _) = rss(pid);

    let metrics = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for want in [
        "lumen_memory_budget_bytes 134217728",
        "lumen_memory_share_bytes{consumer=\"log_head\"} 13421772", // 3 x head_max_size
        "lumen_memory_share_bytes{consumer=\"inflight_requests\"} 20132659",
        "lumen_memory_share_bytes{consumer=\"sql\"} 26843545",
        "lumen_memory_share_bytes{consumer=\"promql\"} 26843536",
        "lumen_memory_used_bytes{consumer=\"metric_head\"} 0",
    ] {
        assert!(metrics.contains(want), "{want} missing from /metrics:\n{metrics}");
    }

    // Resident memory, sampled every 20 ms on a thread of its own; the kernel's VmHWM catches the rest.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss(pid).0);
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };

    let logs = Arc::new(loghub());
    let now_ns = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let start_ns = now_ns();
    // One line per writer first, so that the SQL table has its label columns before the queries start.
    for w in 0..2 {
        let body = json!({"streams": [{"stream": {"app": "seed", "writer": format!("w{w}")},
            "values": [[start_ns.to_string(), "seed line"]]}]});
        let r = c.post(format!("{base}/loki/api/v1/push")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    }
    let deadline = Instant::now() + LOAD;
    let mut writers = Vec::new();
    for w in 0..2 {
        let (c, base, logs) = (c.clone(), base.clone(), logs.clone());
        writers.push(tokio::spawn(async move {
            let (mut acked, mut batch_no, mut refused) = (1u64, 0usize, 0u64);
            while Instant::now() < deadline {
                let (app, lines) = &logs[(batch_no * 2 + w) % logs.len()];
                let t = now_ns();
                let values: Vec<Value> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| json!([(t + i as i64).to_string(), format!("{l} w{w}b{batch_no}")]))
                    .collect();
                let n = values.len() as u64;
                let body = json!({"streams": [{"stream": {"app": app, "writer": format!("w{w}")}, "values": values}]});
                let r = c.post(format!("{base}/loki/api/v1/push")).json(&body).send().await.expect("push: connection");
                match r.status().as_u16() {
                    204 => acked += n,
                    // The in-flight budget (derived from the memory budget) is full: a shipper retries.
                    503 => refused += 1,
                    s => panic!("push: {s} {}", r.text().await.unwrap()),
                }
                batch_no += 1;
            }
            (format!("w{w}"), acked, refused)
        }));
    }
    let metric_writer = {
        let (c, base) = (c.clone(), base.clone());
        tokio::spawn(async move {
            let t0_ms = start_ns / 1_000_000 - 3_600_000;
            let (mut acked, mut k) = (0u64, 0i64);
            while Instant::now() < deadline {
                let ts = t0_ms + k * 1000;
                let mut text = String::with_capacity(SERIES * 48);
                for s in 0..SERIES {
                    text.push_str(&format!("mb_load{{instance=\"i{s:04}\",job=\"mb\"}} {} {ts}\n", k * (s as i64 + 1)));
                }
                let r = c
                    .post(format!("{base}/api/v1/import/prometheus"))
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(text)
                    .send()
                    .await
                    .expect("import: connection");
                match r.status().as_u16() {
                    200 | 204 => acked += SERIES as u64,
                    503 => {}
                    s => panic!("import: {s} {}", r.text().await.unwrap()),
                }
                k += 1;
            }
            (acked, t0_ms, k)
        })
    };

    let outcomes = Arc::new(Outcomes::default());
    let mut queriers = Vec::new();
    for kind in 0..3 {
        let (c, base, outcomes) = (c.clone(), base.clone(), outcomes.clone());
        queriers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                let (what, req) = match kind {
                    0 => (
                        "logql",
                        c.get(format!("{base}/loki/api/v1/query_range")).query(&[
                            ("query", "sum by (app) (count_over_time({writer=~\"w.+\"} |~ \"(?i)err|warn|a\" [1m]))".to_string()),
                            ("start", (end - 3600).to_string()),
                            ("end", end.to_string()),
                            ("step", "15".to_string()),
                        ]),
                    ),
                    1 => (
                        "sql",
                        c.post(format!("{base}/api/v1/sql")).body(
                            "SELECT app, count(*) AS n, count(DISTINCT message) AS d FROM logs GROUP BY app ORDER BY d DESC",
                        ),
                    ),
                    _ => (
                        "promql",
                        c.get(format!("{base}/api/v1/query_range")).query(&[
                            ("query", "rate(mb_load[1m])".to_string()),
                            ("start", (end - 3600).to_string()),
                            ("end", end.to_string()),
                            ("step", "5".to_string()),
                        ]),
                    ),
                };
                query(what, req, &outcomes).await;
                // The log query of an Explore view, over everything, between the heavy ones.
                if kind == 0 {
                    let req = c.get(format!("{base}/loki/api/v1/query_range")).query(&[
                        ("query", "{writer=~\"w.+\"} |= \"e\""),
                        ("limit", "5000"),
                    ]);
                    query("logql lines", req, &outcomes).await;
                }
            }
        }));
    }

    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut push_refusals = 0;
    for w in writers {
        let (name, n, refused) = w.await.unwrap();
        acked.insert(name, n);
        push_refusals += refused;
    }
    let (samples_acked, t0_ms, steps) = metric_writer.await.unwrap();
    for q in queriers {
        q.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let sampled_peak = sampler.join().unwrap();
    let (after, hwm) = rss(pid);
    assert!(server.child.try_wait().unwrap().is_none(), "the server exited under load");

    let o = &outcomes;
    let metrics = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let metric_lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with("lumen_memory_")).collect();
    eprintln!(
        "memory_budget: budget {} MiB, baseline {:.1} MiB, sampled peak {:.1} MiB, VmHWM {:.1} MiB, after {:.1} MiB; \
         log lines acked {acked:?} (push 503s {push_refusals}), samples acked {samples_acked}; queries ok {}, \
         refused for memory {}, refused by their own limit {}\n{}",
        BUDGET / MIB,
        baseline as f64 / MIB as f64,
        sampled_peak as f64 / MIB as f64,
        hwm as f64 / MIB as f64,
        after as f64 / MIB as f64,
        o.ok.load(Ordering::Relaxed),
        o.refused_memory.load(Ordering::Relaxed),
        o.refused_own_limit.load(Ordering::Relaxed),
        metric_lines.join("\n"),
    );
    assert!(hwm <= BUDGET + OVERHEAD, "peak resident {hwm} bytes is over the budget {BUDGET} + overhead {OVERHEAD}");
    assert!(acked.values().all(|n| *n > 0) && samples_acked > 0, "the load did not run: {acked:?} {samples_acked}");
    assert!(o.ok.load(Ordering::Relaxed) > 0, "no query was answered");

    // Still up, ready, and once memory is back under the low-water mark the queries are taken again and
    // find every acknowledged write.
    let r = c.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let until = Instant::now() + Duration::from_secs(60);
    // A query, retried while (and only while) it is refused for memory.
    let admitted = |path: &'static str, params: Vec<(&'static str, String)>| {
        let (c, base) = (c.clone(), base.clone());
        async move {
            loop {
                let r = c.post(format!("{base}{path}")).form(&params).send().await.unwrap();
                let status = r.status().as_u16();
                let text = r.text().await.unwrap();
                if status == 200 {
                    return serde_json::from_str::<Value>(&text).unwrap();
                }
                assert!(status == 503 && text.contains("server.memory_limit"), "{params:?}: {status} {text}");
                assert!(Instant::now() < until, "queries still refused 60 s after the load: {text}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let sql = "SELECT writer, count(*) AS n FROM logs GROUP BY writer".to_string();
    let rows = admitted("/api/v1/sql", vec![("query", sql)]).await["rows"].as_array().unwrap().clone();
    let stored: HashMap<String, u64> =
        rows.iter().map(|r| (r["writer"].as_str().unwrap().to_string(), r["n"].as_u64().unwrap())).collect();
    assert_eq!(stored, acked, "every acknowledged line is stored (and none twice)");
    // 100 series at a time, within what one PromQL selection may load on this budget.
    let mut stored = 0;
    let at = format!("{:.3}", (t0_ms + steps * 1000) as f64 / 1000.0);
    for hundreds in 0..SERIES / 100 {
        let q = format!("sum(count_over_time(mb_load{{instance=~\"i0{hundreds}..\"}}[2h]))");
        let body = admitted("/api/v1/query", vec![("query", q), ("time", at.clone())]).await;
        stored += body["data"]["result"][0]["value"][1].as_str().unwrap().parse::<u64>().unwrap();
    }
    assert_eq!(stored, samples_acked, "every acknowledged sample is stored ({steps} requests from {t0_ms} ms)");
    server.terminate();
}
