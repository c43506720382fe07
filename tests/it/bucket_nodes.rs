//! Several ingest nodes (`server.role = "ingest"`, issue 22) and a query node on real SeaweedFS: each
//! ingest node writes its own tree of the bucket (`prefix/nodes/<name>/`); the query node follows every
//! tree and asks each node for what it has not synced, and answers every acknowledged line and sample
//! exactly once, through flushes, syncs, a compaction, a kill -9 of an ingest node and its restart.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bucket::{KEY_ID, SECRET, SeaweedFs, count_lines, count_samples, credential_files, push, storage};
use crate::harness::{ServerProcess, TestServer, free_addr, test_config};

/// A `lumen server --role ingest` process named `node` on the bucket of `config`.
fn spawn_ingest(
    config: &std::path::Path,
    data: &std::path::Path,
    node: &str,
    addr: std::net::SocketAddr,
) -> ServerProcess {
    let config = config.to_str().unwrap();
    ServerProcess::spawn(data, addr, &["--role", "ingest", "--node-name", node, "--config", config])
}

/// A client of a process, as the shared helpers take it.
fn remote(base: &str) -> TestServer {
    TestServer { running: None, base: base.to_string(), client: crate::harness::client() }
}

async fn metrics_text(base: &str) -> String {
    crate::harness::client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap()
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The query node's line and sample counts, and the warnings of its line count.
async fn answers(query: &TestServer) -> (u64, u64, Vec<String>) {
    let v = crate::bucket::count_lines_answer(query).await;
    let warnings = v["warnings"]
        .as_array()
        .map(|w| w.iter().map(|s| s.as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default();
    (count_lines(query).await, count_samples(query).await, warnings)
}

/// Asserts that the query node answers `want` lines and samples, without warnings, at every look for
/// `for_` (flushes, syncs and follows run meanwhile).
async fn always_answers(query: &TestServer, want: u64, for_: Duration) {
    let end = Instant::now() + for_;
    while Instant::now() < end {
        let (lines, samples, warnings) = answers(query).await;
        assert_eq!((lines, samples), (want, want), "warnings: {warnings:?}");
        assert!(warnings.is_empty(), "{warnings:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn data(node: &TestServer, path: &str) -> Value {
    let v: Value = node.client.get(node.url(path)).send().await.unwrap().json().await.unwrap();
    v["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_nodes_and_a_query_node_answer_every_acknowledged_line_and_sample_once() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let mut storage = storage(&weed.endpoint, &creds);
    storage.prefix = "nodes-test".into();
    // A restarted node takes its own tree's lease over once the killed process' lease ran out.
    storage.lease_ttl = Duration::from_secs(4);
    let config = dir.path().join("lumen.toml");
    let file = json!({"storage": storage, "store": {"compaction_min_parts": 2}});
    std::fs::write(&config, toml::to_string(&file).unwrap()).unwrap();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut a = spawn_ingest(&config, &dir.path().join("a"), "ingest-a", a_addr);
    let mut b = spawn_ingest(&config, &dir.path().join("b"), "ingest-b", b_addr);
    // Ready once its first sync made its tree: until then an ingest node refuses writes.
    crate::harness::ready_becomes(&a.base, 200, Duration::from_secs(30)).await;
    crate::harness::ready_becomes(&b.base, 200, Duration::from_secs(30)).await;
    let (a_node, b_node) = (remote(&a.base), remote(&b.base));

    let mut query_config = test_config(&dir.path().join("query"));
    query_config.storage = storage.clone();
    query_config.server.role = lumen::config::Role::Query;
    query_config.query.ingest_urls = vec![a.base.clone(), b.base.clone()];
    let query = TestServer::start(query_config).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&metrics_text(&query.base).await, "lumen_bucket_follow_trees") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the query node did not find both trees:\n{}",
            metrics_text(&query.base).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Acknowledged by either node: answered at once, from the nodes' heads. The series `alpha` is written
    // through both (other timestamps on b): one series on the query node.
    let now = store::time::now_ns();
    push(&a_node, "alpha", 300, now).await;
    push(&b_node, "beta", 200, now).await;
    push(&b_node, "alpha", 100, now + 400_000_000_000).await;
    always_answers(&query, 600, Duration::from_millis(300)).await;
    let v = query.promql("default", r#"count_over_time(bucket_metric{app="alpha"}[1h])"#, None).await;
    let result = v["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "one series written through two nodes: {v}");
    assert_eq!(result[0]["value"][1], "400", "{v}");
    let v = crate::bucket::logql_instant(&query, r#"sum by (app) (count_over_time({app="alpha"}[1h]))"#).await;
    assert_eq!(v["data"]["result"][0]["value"][1], "400", "{v}");
    // Label values and series of both nodes.
    assert_eq!(data(&query, "/loki/api/v1/label/app/values").await, json!(["alpha", "beta"]));
    assert_eq!(data(&query, "/api/v1/label/app/values").await, json!(["alpha", "beta"]));
    let series = data(&query, "/api/v1/series?match[]=bucket_metric").await;
    assert_eq!(series.as_array().unwrap().len(), 2, "{series}");

    // Flushed, synced into each node's tree and followed: always exactly once.
    a_node.flush().await;
    b_node.flush().await;
    always_answers(&query, 600, Duration::from_secs(3)).await;
    push(&a_node, "gamma", 50, now).await;
    a_node.flush().await;
    let r = a_node.client.post(a_node.url("/api/v1/admin/compact")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    always_answers(&query, 650, Duration::from_secs(3)).await;
    let m = metrics_text(&query.base).await;
    assert_eq!(metric(&m, "lumen_bucket_follow_trees"), 2.0, "{m}");

    // Each node answers only for its own tree.
    let ask = |node: &'static str| json!({"start_ns": 0, "end_ns": now, "matchers": [], "columns": null, "have": [], "node": node});
    let r = a_node.client.post(a_node.url(query::peers::LOGS_PATH)).json(&ask("ingest-b")).send().await.unwrap();
    assert_eq!(r.status(), 409);
    let r = a_node.client.post(a_node.url(query::peers::LOGS_PATH)).json(&ask("ingest-a")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // SQL over several trees is not built: it says so instead of answering a share.
    let r = query.client.post(query.url("/api/v1/sql")).body("SELECT count(*) FROM logs").send().await.unwrap();
    assert_eq!(r.status(), 501);
    assert!(r.text().await.unwrap().contains("several ingest nodes"));

    // kill -9 of b with lines in its head and in a part it has not synced: the query node answers what
    // b's tree holds and warns; b restarts on its disk and everything acknowledged is answered once.
    let synced_b = metric(&metrics_text(&b.base).await, "lumen_bucket_last_commit");
    push(&b_node, "delta", 40, now).await;
    b_node.flush().await;
    push(&b_node, "epsilon", 30, now).await;
    always_answers(&query, 720, Duration::from_millis(200)).await;
    b.kill9();
    let (lines, samples, warnings) = answers(&query).await;
    assert!((650..=720).contains(&lines) && (650..=720).contains(&samples), "{lines} {samples}");
    assert!(warnings.iter().any(|w| w.contains("no ingest node answered")), "{warnings:?}");
    assert!(synced_b > 0.0);
    let mut b = spawn_ingest(&config, &dir.path().join("b"), "ingest-b", b_addr);
    crate::harness::ready_becomes(&b.base, 200, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (lines, samples, warnings) = answers(&query).await;
        if (lines, samples) == (720, 720) && warnings.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "after b's restart: {lines} lines, {samples} samples, {warnings:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    always_answers(&query, 720, Duration::from_secs(2)).await;
    query.stop().await;
    b.terminate();
    a.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_synced_into_one_tree_is_refused_for_another() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let mut config = test_config(&dir.path().join("data"));
    config.storage = storage(&weed.endpoint, &creds);
    config.storage.prefix = "claimed".into();
    config.server.role = lumen::config::Role::Ingest;
    config.server.node_name = "node-1".into();
    let node = TestServer::start(config.clone()).await;
    // An ingest node takes writes once its first sync made its tree.
    crate::harness::ready_becomes(&node.base, 200, Duration::from_secs(20)).await;
    push(&node, "alpha", 10, store::time::now_ns()).await;
    node.stop().await;

    // Another node name, the prefix's own writer, another prefix: each would sync the same data into a
    // second place of the bucket.
    let mut renamed = config.clone();
    renamed.server.node_name = "node-2".into();
    let mut all = config.clone();
    all.server.role = lumen::config::Role::All;
    let mut moved = config.clone();
    moved.storage.prefix = "elsewhere".into();
    for (what, c) in [("another node name", renamed), ("role all", all), ("another prefix", moved)] {
        let err = match lumen::start(c).await {
            Ok(_) => panic!("{what}: a directory synced into nodes/node-1 started"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("lumen/claimed/nodes/node-1") && err.contains("twice"), "{what}: {err}");
    }
    // As it was, it starts and answers what it had.
    let node = TestServer::start(config).await;
    assert_eq!(count_lines(&node).await, 10);
    node.stop().await;
}
