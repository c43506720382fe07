//! One disk budget over everything (issue 18 §1), on a real server process: under a long ingest of logs
//! and metrics spread over past days, the store stays within `store.retention_max_disk`, and what goes is
//! the oldest data, logs and metrics alike.

use std::time::{Duration, Instant};

use serde_json::Value;
use wire::prom::{OwnedSeries, Sample, encode_write_request};

use crate::harness::{ServerProcess, client, free_addr, sql_rows};

/// Bytes under the parts, catalogs and write-ahead logs (what the budget counts).
fn used(data: &std::path::Path) -> u64 {
    store::disk::usage(data).total()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_keeps_the_store_within_it_deleting_the_oldest_days_first() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let conf = dir.path().join("lumen.toml");
    const BUDGET: u64 = 3 << 20;
    std::fs::write(
        &conf,
        format!(
            "[store]\nretention_max_disk = \"{BUDGET} B\"\nmaintenance_interval = \"1s\"\nhead_max_size = \"1 MiB\"\n\
             head_max_age = \"1s\"\nwal_segment_size = \"1 MiB\"\nmin_free_disk = \"0 B\"\n"
        ),
    )
    .unwrap();
    let conf_arg = conf.to_str().unwrap().to_string();
    let mut server = ServerProcess::spawn(&data, free_addr(), &["--config", &conf_arg]);
    server.wait_ready().await;
    let base = server.base.clone();
    let client = client();
    let now = store::time::now_ns();
    let day = store::time::NANOS_PER_DAY;
    // Eight days, oldest first, each ~1 MB of logs on disk and some samples: far over the budget in all.
    let mut peak_over = 0u64;
    for age in (0..8i64).rev() {
        let t0 = now - age * day - 3_600_000_000_000;
        for chunk in 0..4 {
            // Lines of random-looking words, so that they do not compress to nothing.
            let body: String = (0..4000)
                .map(|i| {
                    let n = (age * 1_000_003 + chunk * 10_007 + i) as u64;
                    let words: Vec<String> = (0..12).map(|k| format!("{:x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15 + k))).collect();
                    format!(
                        "{}\n",
                        serde_json::json!({"_time": t0 + chunk * 1_000_000_000 + i, "_msg": words.join(" "), "app": format!("day{age}")})
                    )
                })
                .collect();
            let r = client.post(format!("{base}/insert/jsonline?_stream_fields=app")).body(body).send().await.unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
        let t0_ms = (now - age * day) / 1_000_000 - 3_600_000;
        let series: Vec<OwnedSeries> = (0..20)
            .map(|s| {
                (
                    vec![
                        ("__name__".into(), "budget_metric".into()),
                        ("age".into(), age.to_string()),
                        ("s".into(), s.to_string()),
                    ],
                    (0..500).map(|i| Sample { t: t0_ms + i * 1000, v: (i * s) as f64 }).collect(),
                )
            })
            .collect();
        let r = client
            .post(format!("{base}/api/v1/write"))
            .header("Content-Encoding", "snappy")
            .body(encode_write_request(&series))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let r = client.post(format!("{base}/api/v1/admin/flush")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        // The budget runs every second; give it one round per day written.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        peak_over = peak_over.max(used(&data).saturating_sub(BUDGET));
    }
    // Settled: within the budget.
    let deadline = Instant::now() + Duration::from_secs(15);
    while used(&data) > BUDGET {
        assert!(Instant::now() < deadline, "still over budget: {} > {BUDGET}", used(&data));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What is left is the newest days: for logs and metrics alike, every remaining day is newer than
    // every deleted one, and today is there.
    let rows = sql_rows(&client, &base, "default", "SELECT app, count(*) AS n FROM logs GROUP BY app").await;
    let log_days: Vec<i64> =
        rows.iter().map(|r| r["app"].as_str().unwrap().trim_start_matches("day").parse().unwrap()).collect();
    assert!(log_days.contains(&0), "today's logs were deleted: {rows:?}");
    let newest_gone = (0..8).filter(|d| !log_days.contains(d)).min();
    if let Some(g) = newest_gone {
        assert!(log_days.iter().all(|d| *d < g), "a newer day went before an older one: kept {log_days:?}");
    }
    assert!(log_days.len() < 8, "nothing was deleted: {log_days:?}");
    let t = store::time::now_ns() as f64 / 1e9;
    let r: Value = client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", "count by (age) (count_over_time(budget_metric[9d]))".to_string()), ("time", t.to_string())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let metric_days: Vec<i64> = r["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metric"]["age"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(metric_days.contains(&0), "today's samples were deleted: {r}");
    if let Some(g) = (0..8).filter(|d| !metric_days.contains(d)).min() {
        assert!(metric_days.iter().all(|d| *d < g), "a newer day of samples went first: kept {metric_days:?}");
    }
    assert!(metric_days.len() < 8, "no sample was deleted: {metric_days:?}");
    let m = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("lumen_disk_budget_deleted_parts_total{kind=\"logs\"}"), "{m}");
    eprintln!(
        "kept log days {log_days:?}, metric days {metric_days:?}; at most {peak_over} bytes over the {BUDGET}-byte budget between rounds"
    );
    server.terminate();
}
