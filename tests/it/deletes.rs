//! Deleting data through the APIs clients call (issue 18 §2), on a real server process: Loki's
//! `/loki/api/v1/delete` and Prometheus' `delete_series`. What a request covers disappears from LogQL,
//! SQL, the stats and PromQL at once, is removed from disk after the cancel period (then even without the
//! request hiding it), and a `kill -9` while the parts are rewritten loses neither the request nor any
//! other data.

use std::time::{Duration, Instant};

use serde_json::Value;
use wire::prom::{OwnedSeries, Sample, encode_write_request};

use crate::harness::{ServerProcess, client, free_addr, sql_rows};

fn config(dir: &std::path::Path, cancel: &str) -> std::path::PathBuf {
    let path = dir.join("lumen.toml");
    std::fs::write(
        &path,
        format!("[store]\ndelete_cancel_period = \"{cancel}\"\nmaintenance_interval = \"1s\"\nrow_group_rows = 1024\n"),
    )
    .unwrap();
    path
}

async fn sql_count(base: &str, where_: &str) -> i64 {
    let rows = sql_rows(&client(), base, "default", &format!("SELECT count(*) AS n FROM logs WHERE {where_}")).await;
    rows[0]["n"].as_i64().unwrap()
}

async fn logql_lines(base: &str, query: &str) -> Vec<String> {
    let r: Value = client()
        .get(format!("{base}/loki/api/v1/query_range"))
        .query(&[
            ("query", query),
            ("limit", "5000"),
            ("start", &(store::time::now_ns() - 3_600_000_000_000).to_string()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().iter().map(|v| v[1].as_str().unwrap().to_string()))
        .collect()
}

async fn promql_series(base: &str, query: &str) -> Vec<Value> {
    let r: Value = client()
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["data"]["result"].as_array().unwrap_or_else(|| panic!("{r}")).clone()
}

async fn requests(base: &str) -> Vec<Value> {
    client().get(format!("{base}/loki/api/v1/delete")).send().await.unwrap().json::<Vec<Value>>().await.unwrap()
}

async fn push_logs(base: &str, app: &str, lines: &[String]) {
    let now = store::time::now_ns() - 60_000_000_000;
    let values: Vec<Value> =
        lines.iter().enumerate().map(|(i, l)| serde_json::json!([(now + i as i64).to_string(), l])).collect();
    let body = serde_json::json!({"streams": [{"stream": {"app": app}, "values": values}]});
    let r = client().post(format!("{base}/loki/api/v1/push")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
}

/// The lines a live tail of `query` (from two hours back, limit 5000) sends until it has sent `want` and
/// then for another second, or for 15 s.
async fn tail_lines(base: &str, query: &str, want: usize) -> Vec<String> {
    use futures::StreamExt;
    let start = (store::time::now_ns() - 7_200_000_000_000).to_string();
    let url = reqwest::Url::parse_with_params(
        &format!("{}/loki/api/v1/tail", base.replacen("http://", "ws://", 1)),
        &[("query", query), ("limit", "5000"), ("start", &start)],
    )
    .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let mut lines = Vec::new();
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await {
        let Ok(text) = msg.to_text() else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(text) else { continue };
        for s in frame["streams"].as_array().into_iter().flatten() {
            for e in s["values"].as_array().into_iter().flatten() {
                lines.push(e[1].as_str().unwrap_or_default().to_string());
            }
        }
        if lines.len() >= want {
            deadline = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
        }
    }
    lines
}

async fn push_samples(base: &str) {
    let t0 = store::time::now_ns() / 1_000_000 - 120_000;
    let series: Vec<OwnedSeries> = ["x", "y"]
        .iter()
        .map(|job| {
            (
                vec![("__name__".into(), "del_metric".into()), ("job".into(), job.to_string())],
                (0..100).map(|i| Sample { t: t0 + i * 1000, v: i as f64 }).collect(),
            )
        })
        .collect();
    let r = client()
        .post(format!("{base}/api/v1/write"))
        .header("Content-Encoding", "snappy")
        .body(encode_write_request(&series))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

async fn wait_processed(base: &str, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let list = requests(base).await;
        if list.iter().filter(|r| r["status"] == "processed").count() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "delete requests not processed in time: {list:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_hide_at_once_purge_from_disk_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = free_addr();
    let conf = config(dir.path(), "3s");
    let conf_arg = conf.to_str().unwrap().to_string();
    let mut server = ServerProcess::spawn(&data, addr, &["--config", &conf_arg]);
    server.wait_ready().await;
    let base = server.base.clone();

    let a: Vec<String> = (0..3000)
        .map(|i| if i % 3 == 0 { format!("login user={i} secret token={i}") } else { format!("request {i} ok") })
        .collect();
    let b: Vec<String> = (0..1000).map(|i| format!("other {i} secret kept")).collect();
    push_logs(&base, "a", &a[..1500]).await;
    let r = client().post(format!("{base}/api/v1/admin/flush")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    push_logs(&base, "a", &a[1500..]).await; // the rest stays in the head
    push_logs(&base, "b", &b).await;
    push_samples(&base).await;
    assert_eq!(sql_count(&base, "message LIKE '%secret token%'").await, 1000);

    // Bad requests say what is wrong.
    for (q, want) in [
        ("", "query parameter is required"),
        (r#"count_over_time({app="a"}[1m])"#, "not a metric query"),
        (r#"{app="a"} | json"#, "only have line filters"),
        (r#"{app="a""#, "invalid delete query"),
    ] {
        let r = client().post(format!("{base}/loki/api/v1/delete")).query(&[("query", q)]).send().await.unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let body = r.text().await.unwrap();
        assert!(body.contains(want), "{q}: {body}");
    }

    // Delete app=a's secret lines; hidden from every read at once.
    let r = client()
        .post(format!("{base}/loki/api/v1/delete"))
        .query(&[("query", r#"{app="a"} |= "secret""#), ("start", "0")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let lines = logql_lines(&base, r#"{app="a"}"#).await;
    assert_eq!(lines.len(), 2000, "LogQL still returns deleted lines");
    assert!(lines.iter().all(|l| !l.contains("secret")));
    assert_eq!(logql_lines(&base, r#"{app="b"} |= "secret""#).await.len(), 1000, "another stream's lines stay");
    assert_eq!(sql_count(&base, "message LIKE '%secret token%'").await, 0, "SQL still sees deleted lines");
    assert_eq!(sql_count(&base, "message LIKE '%secret kept%'").await, 1000);
    let start = (store::time::now_ns() - 3_600_000_000_000).to_string();
    let r = client()
        .get(format!("{base}/loki/api/v1/index/stats"))
        .query(&[("query", r#"{app="a"}"#), ("start", &start)])
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let stats: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(stats["entries"], 2000, "stats count deleted entries: {stats}");
    let r: Value = client()
        .get(format!("{base}/loki/api/v1/query"))
        .query(&[("query", r#"sum(count_over_time({app="a"}[2h]))"#)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"]["result"][0]["value"][1], "2000", "{r}");
    // A count over covered and uncovered streams at once (the uncovered ones from the indexes).
    let r: Value = client()
        .get(format!("{base}/loki/api/v1/query"))
        .query(&[("query", r#"sum(count_over_time({app=~"a|b"}[2h]))"#)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"]["result"][0]["value"][1], "3000", "{r}");
    // A live tail replays history without the covered lines.
    let tailed = tail_lines(&base, r#"{app="a"}"#, 2000).await;
    assert_eq!(tailed.len(), 2000, "the tail's replay");
    assert!(tailed.iter().all(|l| !l.contains("secret")), "the tail sends deleted lines");

    // A second request, cancelled before it is processed.
    let r =
        client().post(format!("{base}/loki/api/v1/delete")).query(&[("query", r#"{app="b"}"#)]).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(logql_lines(&base, r#"{app="b"}"#).await.is_empty());
    let list = requests(&base).await;
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|r| r["status"] == "received"));
    let id = list.iter().find(|r| r["query"] == r#"{app="b"}"#).unwrap()["request_id"].as_str().unwrap().to_string();
    let r = client().delete(format!("{base}/loki/api/v1/delete")).query(&[("request_id", &id)]).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(logql_lines(&base, r#"{app="b"}"#).await.len(), 1000, "a cancelled delete hides nothing");

    // Metrics: Prometheus' delete_series.
    let r = client()
        .post(format!("{base}/api/v1/admin/tsdb/delete_series"))
        .query(&[("match[]", r#"del_metric{job="x"}"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let left = promql_series(&base, "count_over_time(del_metric[10m])").await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["metric"]["job"], "y");
    let r = client().post(format!("{base}/api/v1/admin/tsdb/delete_series")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // Hostile selectors and filters are 400s saying what is wrong, and the server answers on.
    let r = client()
        .post(format!("{base}/api/v1/admin/tsdb/delete_series"))
        .query(&[("match[]", "{job=")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("match[]"));
    let huge = format!(r#"{{app="a"}} |~ "{}""#, "(a{1000}){1000}");
    let r =
        client().post(format!("{base}/loki/api/v1/delete")).query(&[("query", huge.as_str())]).send().await.unwrap();
    assert_eq!(r.status(), 400, "a regex past the compiler's size limit");
    // A delete meant for a retired tree of a bucket (what a query node sends an ingest node) is refused by a
    // server that writes none, naming the header, and nothing is recorded.
    let before = requests(&base).await.len();
    let r = client()
        .post(format!("{base}/loki/api/v1/delete"))
        .header("X-Lumen-Retired-Tree", "ingest-gone")
        .query(&[("query", r#"{app="a"}"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("X-Lumen-Retired-Tree"));
    let r = client()
        .post(format!("{base}/api/v1/admin/tsdb/delete_series"))
        .header("X-Lumen-Retired-Tree", "ingest-gone")
        .query(&[("match[]", "del_metric")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("X-Lumen-Retired-Tree"), "{v}");
    assert_eq!(requests(&base).await.len(), before);
    assert_eq!(client().get(format!("{base}/ready")).send().await.unwrap().status(), 200);

    // kill -9 before the cancel period is over: the requests survive, still hiding.
    server.kill9();
    let mut server = ServerProcess::spawn(&data, addr, &["--config", &conf_arg]);
    server.wait_ready().await;
    assert_eq!(sql_count(&base, "message LIKE '%secret token%'").await, 0, "a delete lost by kill -9");
    assert_eq!(promql_series(&base, "count_over_time(del_metric[10m])").await.len(), 1);
    // Processed within the period plus a maintenance round: gone from disk, so visible no more even though
    // the requests no longer hide anything.
    wait_processed(&base, 1, Duration::from_secs(20)).await;
    assert_eq!(sql_count(&base, "message LIKE '%secret token%'").await, 0);
    assert_eq!(sql_count(&base, "message LIKE 'request % ok'").await, 2000, "other lines lost by the rewrite");
    assert_eq!(sql_count(&base, "message LIKE '%secret kept%'").await, 1000);
    let deadline = Instant::now() + Duration::from_secs(20);
    while promql_series(&base, "count_over_time(del_metric[10m])").await.len() != 1 || !metric_processed(&data) {
        assert!(Instant::now() < deadline, "the series delete was not processed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.terminate();

    // kill -9 during a rewrite: many parts to rewrite, killed at once after the period.
    let conf0 = config(dir.path(), "0s");
    let conf0_arg = conf0.to_str().unwrap().to_string();
    let mut server = ServerProcess::spawn(&data, addr, &["--config", &conf0_arg, "--mqtt-listen", "off"]);
    server.wait_ready().await;
    for k in 0..20 {
        let lines: Vec<String> = (0..500).map(|i| format!("batch {k} line {i} wipe={}", i % 2)).collect();
        push_logs(&base, "c", &lines).await;
        client().post(format!("{base}/api/v1/admin/flush")).send().await.unwrap();
    }
    let before = parts(&data);
    let r = client()
        .post(format!("{base}/loki/api/v1/delete"))
        .query(&[("query", r#"{app="c"} |= "wipe=1""#)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Kill as soon as the rewrite has written its first new part.
    let deadline = Instant::now() + Duration::from_secs(15);
    while parts(&data).is_subset(&before) {
        assert!(Instant::now() < deadline, "the rewrite never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill9();
    let rewritten = parts(&data).difference(&before).count();
    eprintln!("killed with {rewritten} rewritten part file(s) of 20 on disk");
    let mut server = ServerProcess::spawn(&data, addr, &["--config", &conf0_arg]);
    server.wait_ready().await;
    assert_eq!(sql_count(&base, "message LIKE '%wipe=1'").await, 0, "deleted lines back after kill -9");
    wait_processed(&base, 2, Duration::from_secs(30)).await;
    assert_eq!(sql_count(&base, "message LIKE '%wipe=1'").await, 0);
    assert_eq!(sql_count(&base, "message LIKE '%wipe=0'").await, 5000, "kept lines lost by a killed rewrite");
    assert_eq!(sql_count(&base, "message LIKE 'request % ok'").await, 2000);
    server.terminate();
}

/// Whether the metric store's one delete request is processed (read from its file: the Prometheus API has
/// no listing).
fn metric_processed(data: &std::path::Path) -> bool {
    let text = std::fs::read_to_string(data.join("metrics/deletes.json")).unwrap_or_default();
    text.contains("\"processed\"")
}

/// The log part files under `data`.
fn parts(data: &std::path::Path) -> std::collections::HashSet<std::path::PathBuf> {
    let mut out = std::collections::HashSet::new();
    let mut stack = vec![data.join("logs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.insert(p);
            }
        }
    }
    out
}
