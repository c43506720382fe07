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

/// Two `lumen server --role ingest` processes, "ingest-a" and "ingest-b" at `addrs`, on `prefix` of the
/// bucket (a 4 s lease ttl, so that a restarted node takes its tree's lease over soon after a kill), with
/// `store` as their `[store]` and `ingest_urls` as their `query.ingest_urls`; once ready (an ingest node
/// refuses writes until its first sync made its tree). Their config file and `[storage]` come back too.
async fn ingest_processes(
    weed: &SeaweedFs,
    dir: &std::path::Path,
    prefix: &str,
    addrs: (std::net::SocketAddr, std::net::SocketAddr),
    store: Value,
    ingest_urls: &[String],
) -> (std::path::PathBuf, bucket::StorageConfig, ServerProcess, ServerProcess) {
    let creds = credential_files(dir, KEY_ID, SECRET);
    let mut storage = storage(&weed.endpoint, &creds);
    storage.prefix = prefix.into();
    storage.lease_ttl = Duration::from_secs(4);
    let config = dir.join("lumen.toml");
    let file = json!({"storage": storage, "store": store, "query": {"ingest_urls": ingest_urls}});
    std::fs::write(&config, toml::to_string(&file).unwrap()).unwrap();
    let a = spawn_ingest(&config, &dir.join("a"), "ingest-a", addrs.0);
    let b = spawn_ingest(&config, &dir.join("b"), "ingest-b", addrs.1);
    crate::harness::ready_becomes(&a.base, 200, Duration::from_secs(30)).await;
    crate::harness::ready_becomes(&b.base, 200, Duration::from_secs(30)).await;
    (config, storage, a, b)
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
    let (a_addr, b_addr, c_addr) = (free_addr(), free_addr(), free_addr());
    let (config, storage, mut a, mut b) =
        ingest_processes(&weed, dir.path(), "nodes-test", (a_addr, b_addr), json!({"compaction_min_parts": 2}), &[])
            .await;
    let (a_node, b_node) = (remote(&a.base), remote(&b.base));

    let mut query_config = test_config(&dir.path().join("query"));
    query_config.storage = storage.clone();
    query_config.server.role = lumen::config::Role::Query;
    // c joins later.
    query_config.query.ingest_urls = vec![a.base.clone(), b.base.clone(), format!("http://{c_addr}")];
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
    // Loki's index stats too (Grafana's query size estimate): both nodes' heads.
    let (from, to) = ((now - 3_600_000_000_000).to_string(), (now + 3_600_000_000_000).to_string());
    let stats: Value = query
        .client
        .get(query.url("/loki/api/v1/index/stats"))
        .query(&[("query", r#"{app=~".+"}"#), ("start", &from), ("end", &to)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((stats["entries"].as_u64(), stats["streams"].as_u64()), (Some(600), Some(2)), "{stats}");
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

    // SQL reads every tree and asks every node too: each line and sample once, the series by labels.
    assert_eq!(query.sql("default", "SELECT count(*) AS n FROM logs").await[0]["n"], 650);
    let rows = query.sql("default", "SELECT app, count(*) AS n FROM logs GROUP BY app ORDER BY app").await;
    assert_eq!(
        Value::from(rows),
        json!([{"app": "alpha", "n": 400}, {"app": "beta", "n": 200}, {"app": "gamma", "n": 50}])
    );
    let rows = query.sql("default", "SELECT app, count(*) AS n FROM samples GROUP BY app ORDER BY app").await;
    assert_eq!(
        Value::from(rows),
        json!([{"app": "alpha", "n": 400}, {"app": "beta", "n": 200}, {"app": "gamma", "n": 50}])
    );
    // `series` lists the trees' catalogs (what the nodes synced): alpha is in both, and listed once.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = query.sql("default", "SELECT count(*) AS n FROM series WHERE metric = 'bucket_metric'").await;
        assert!(rows[0]["n"].as_i64().unwrap() <= 3, "a series listed twice: {rows:?}");
        if rows[0]["n"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

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

    // A node that joins takes writes only once the query node knows its new tree: what it acknowledges is
    // answered at once.
    let mut c = spawn_ingest(&config, &dir.path().join("c"), "ingest-c", c_addr);
    crate::harness::ready_becomes(&c.base, 200, Duration::from_secs(30)).await;
    push(&remote(&c.base), "zeta", 25, now).await;
    let (lines, samples, warnings) = answers(&query).await;
    assert_eq!((lines, samples), (745, 745), "{warnings:?}");
    assert_eq!(metric(&metrics_text(&query.base).await, "lumen_bucket_follow_trees"), 3.0);

    // A node stopped gracefully synced everything and released its lease: its tree is answered from the
    // bucket, without a warning that something may be missing.
    c.terminate();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // Until its last commit is followed, the query node warns that something may be missing.
        let (lines, samples, warnings) = answers(&query).await;
        if warnings.is_empty() {
            assert_eq!((lines, samples), (745, 745), "no warning, so every line");
            break;
        }
        assert!(Instant::now() < deadline, "still warned about a node that stopped gracefully: {warnings:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Back on its disk, it takes writes once query nodes ask it again: what it acknowledges is answered.
    let mut c = spawn_ingest(&config, &dir.path().join("c"), "ingest-c", c_addr);
    crate::harness::ready_becomes(&c.base, 200, Duration::from_secs(30)).await;
    push(&remote(&c.base), "eta", 5, now).await;
    let (lines, samples, warnings) = answers(&query).await;
    assert_eq!((lines, samples, warnings), (750, 750, Vec::<String>::new()));
    query.stop().await;
    c.terminate();
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

/// Two in-process ingest nodes and a query node asking both, on one prefix of `weed`; `query_config`
/// adds to the query node's config.
/// Prometheus' `delete_series` of `selector`, sent to `server`: 204 expected.
async fn delete_series(server: &TestServer, selector: &str) {
    let r = server
        .client
        .post(server.url("/api/v1/admin/tsdb/delete_series"))
        .query(&[("match[]", selector)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
}

async fn cluster(
    weed: &SeaweedFs,
    dir: &std::path::Path,
    prefix: &str,
    query_config: impl FnOnce(&mut lumen::config::Config),
) -> (TestServer, TestServer, TestServer) {
    let creds = credential_files(dir, KEY_ID, SECRET);
    let mut nodes = Vec::new();
    for name in ["ingest-a", "ingest-b"] {
        let mut c = test_config(&dir.join(name));
        c.storage = storage(&weed.endpoint, &creds);
        c.storage.prefix = prefix.into();
        c.server.role = lumen::config::Role::Ingest;
        c.server.node_name = name.into();
        let node = TestServer::start(c).await;
        crate::harness::ready_becomes(&node.base, 200, Duration::from_secs(20)).await;
        nodes.push(node);
    }
    let mut q = test_config(&dir.join("query"));
    q.storage = storage(&weed.endpoint, &creds);
    q.storage.prefix = prefix.into();
    q.server.role = lumen::config::Role::Query;
    q.query.ingest_urls = nodes.iter().map(|n| n.base.clone()).collect();
    query_config(&mut q);
    let query = TestServer::start(q).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&metrics_text(&query.base).await, "lumen_bucket_follow_trees") < 2.0 {
        assert!(Instant::now() < deadline, "the query node did not find both trees");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    (a, b, query)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_sent_to_the_query_node_reaches_every_ingest_node() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, query) = cluster(&weed, dir.path(), "deletes", |_| {}).await;
    let now = store::time::now_ns();
    push(&a, "alpha", 100, now).await;
    push(&b, "alpha", 50, now + 200_000_000_000).await;
    push(&b, "beta", 70, now).await;
    a.flush().await;
    always_answers(&query, 220, Duration::from_millis(200)).await;

    // Lines of alpha through both nodes, and the series alpha: gone from every answer at once.
    let r = query
        .client
        .post(query.url("/loki/api/v1/delete"))
        .query(&[("query", r#"{app="alpha"}"#), ("start", "0")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    delete_series(&query, r#"bucket_metric{app="alpha"}"#).await;
    always_answers(&query, 70, Duration::from_secs(2)).await;
    // Each node recorded it: each answers without alpha on its own.
    assert_eq!((count_lines(&a).await, count_samples(&a).await), (0, 0));
    assert_eq!((count_lines(&b).await, count_samples(&b).await), (70, 70));

    // The list shows one request whose id names both nodes' requests; a bad query is the nodes' 400.
    let list: Value = query.client.get(query.url("/loki/api/v1/delete")).send().await.unwrap().json().await.unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["request_id"].as_str().unwrap().split(',').count(), 2, "{list:?}");
    let r = query.client.post(query.url("/loki/api/v1/delete")).query(&[("query", "{app=")]).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // Cancelled through the query node: on both nodes, before it was processed.
    let id = list[0]["request_id"].as_str().unwrap();
    let r = query.client.delete(query.url("/loki/api/v1/delete")).query(&[("request_id", id)]).send().await.unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    assert_eq!((count_lines(&a).await, count_lines(&b).await), (100, 120), "the nodes answer at once");
    // The query node's copy of a's part stops hiding once a's next commit, without the request, is followed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while count_lines(&query).await != 220 {
        assert!(Instant::now() < deadline, "the cancel did not reach the query node: {}", count_lines(&query).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // With an ingest node away, a delete is not taken as done.
    b.stop().await;
    let r = query
        .client
        .post(query.url("/loki/api/v1/delete"))
        .query(&[("query", r#"{app="beta"}"#), ("start", "0")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("did not reach every ingest node"));
    query.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_run_on_the_query_node_over_every_ingest_node_and_write_through_one() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "groups:\n- name: cluster\n  interval: 1s\n  rules:\n  - record: cluster:samples\n    expr: sum(count_over_time(bucket_metric[1h]))\n  - alert: ManySamples\n    expr: cluster:samples > 150\n",
    )
    .unwrap();
    let file = rules.display().to_string();
    let (a, b, query) = cluster(&weed, dir.path(), "rules", |q| {
        q.ruler.rule_files = vec![file];
        q.ruler.on_query_nodes = true;
    })
    .await;
    // Samples through both nodes: only a reader of both sees 170.
    let now = store::time::now_ns();
    push(&a, "alpha", 100, now).await;
    push(&b, "beta", 70, now).await;
    let last = |v: &Value| v["data"]["result"][0]["value"][1].as_str().map(str::to_string);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let recorded = last(&query.promql("default", "cluster:samples", None).await);
        let alert =
            last(&query.promql("default", r#"ALERTS{alertname="ManySamples", alertstate="firing"}"#, None).await);
        if recorded.as_deref() == Some("170") && alert.as_deref() == Some("1") {
            break;
        }
        assert!(Instant::now() < deadline, "recorded {recorded:?}, alert {alert:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Written through an ingest node (the first that took it), not into the query node's read-only stores.
    let on_a = last(&a.promql("default", "cluster:samples", None).await);
    let on_b = last(&b.promql("default", "cluster:samples", None).await);
    assert_eq!((on_a.as_deref(), on_b), (Some("170"), None));
    // The rules API of the query node shows the group and the firing alert.
    let v: Value = query.client.get(query.url("/api/v1/rules")).send().await.unwrap().json().await.unwrap();
    let group = &v["data"]["groups"][0];
    assert_eq!(group["name"], "cluster", "{v}");
    assert_eq!(group["rules"][1]["state"], "firing", "{v}");
    query.stop().await;
    a.stop().await;
    b.stop().await;
}

/// The keys (under the prefix of `b`) of the objects the newest commit of `b` names for `day`'s parts.
async fn part_keys_of_day(b: &bucket::Bucket, day: &str) -> Vec<String> {
    let commit = b.latest_commit().await.unwrap().expect("a commit");
    commit
        .files
        .iter()
        .filter(|f| f.path.contains(day) && f.path.ends_with(".parquet"))
        .map(|f| f.key.clone())
        .collect()
}

/// The keys of `day`'s log part and metric part once the newest commit of `b` names both.
async fn synced_parts_of_day(b: &bucket::Bucket, day: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let keys = part_keys_of_day(b, day).await;
        if keys.len() >= 2 {
            return keys;
        }
        assert!(Instant::now() < deadline, "{} did not sync {day}", b.describe());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An ingest node that stopped for good leaves its tree to nobody (issue 22): another ingest node applies
/// the retention to it, as the stopped node would have: the expired day leaves the newest commit, then
/// the older commits and the expired parts' objects leave the bucket; the fresh day stays, the lease is
/// released again (the tree stays retired), and the node, started again on its old disk, takes its tree
/// back and answers only its fresh lines. The prefix's own tree, left by a single server (role "all")
/// before the move to ingest nodes, is aged out the same way, and a query node stops asking that server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_ingest_node_ages_out_a_stopped_nodes_tree() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let mut storage = storage(&weed.endpoint, &creds);
    storage.prefix = "retired-test".into();
    storage.lease_ttl = Duration::from_secs(4);
    storage.retired_trees_interval = Duration::from_secs(1);
    // The stopped node keeps 30 days (the default); the one tending its tree, 2.
    let config = dir.path().join("lumen.toml");
    std::fs::write(&config, toml::to_string(&json!({"storage": storage})).unwrap()).unwrap();
    let short = dir.path().join("short.toml");
    // A query reads one commit for at most query.timeout: the older commits go 2 s (2 x sync_interval)
    // plus that after the newest.
    // A delete request is rewritten into the parts one second after it was made.
    let short_file = json!({
        "storage": storage,
        "server": {"retention": "2d"},
        "query": {"timeout": "2s"},
        "store": {"delete_cancel_period": "1s"},
    });
    std::fs::write(&short, toml::to_string(&short_file).unwrap()).unwrap();
    let now = store::time::now_ns();
    let old = now - 4 * 86_400_000_000_000;
    let old_day = format!("date={}", store::time::format_day(store::time::day_of_ns(old - 600_000_000_000)));
    let prefix = bucket::Bucket::open(&storage).unwrap().unwrap();
    // First a single server (role "all") on the prefix, stopped for the move to ingest nodes: the
    // prefix's own tree holds an old and a fresh day too.
    let mut single =
        ServerProcess::spawn(&dir.path().join("single"), free_addr(), &["--config", config.to_str().unwrap()]);
    crate::harness::ready_becomes(&single.base, 200, Duration::from_secs(30)).await;
    let single_node = remote(&single.base);
    push(&single_node, "old-single", 30, old).await;
    push(&single_node, "fresh-single", 20, now).await;
    single_node.flush().await;
    let single_old_keys = synced_parts_of_day(&prefix, &old_day).await;
    let single_writer = prefix.latest_commit().await.unwrap().unwrap().node;
    single.terminate();

    let a_data = dir.path().join("a");
    let a_addr = free_addr();
    let mut a = spawn_ingest(&config, &a_data, "ingest-a", a_addr);
    crate::harness::ready_becomes(&a.base, 200, Duration::from_secs(30)).await;
    let a_node = remote(&a.base);
    push(&a_node, "old", 100, old).await;
    push(&a_node, "fresh", 40, now).await;
    a_node.flush().await;
    let tree = prefix.node_tree("ingest-a");
    let old_keys = synced_parts_of_day(&tree, &old_day).await;
    // A query node answers both days, from the bucket once ingest-a is gone.
    let b_addr = free_addr();
    let mut query_config = test_config(&dir.path().join("query"));
    query_config.storage = storage.clone();
    query_config.server.role = lumen::config::Role::Query;
    query_config.query.ingest_urls = vec![a.base.clone(), format!("http://{b_addr}")];
    let query = TestServer::start(query_config).await;
    // The count of `app`'s lines in the hour before `at`, and whether the answer came with a warning.
    let answer_at = |app: &'static str, at: i64| {
        let query = &query;
        async move {
            let q = [("query", format!("sum(count_over_time({{app=\"{app}\"}}[1h]))")), ("time", at.to_string())];
            let v: Value =
                query.client.get(query.url("/loki/api/v1/query")).query(&q).send().await.unwrap().json().await.unwrap();
            (
                v["data"]["result"][0]["value"][1].as_str().map_or(0, |s| s.parse::<u64>().unwrap()),
                v["warnings"].clone(),
            )
        }
    };
    let count_at = |app: &'static str, at: i64| {
        let answer = answer_at(app, at);
        async move {
            let (n, warnings) = answer.await;
            assert!(warnings.is_null(), "{app}: {warnings}");
            n
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    // Without a warning once it counts the single server's released tree as retired (at its second
    // follow).
    while answer_at("old", old).await != (100, Value::Null) {
        assert!(
            Instant::now() < deadline,
            "the query node did not answer the old day: {:?}",
            answer_at("old", old).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.terminate();
    // Until the query node reads the released lease (every sync_interval), it asks ingest-a and warns.
    let deadline = Instant::now() + Duration::from_secs(10);
    while answer_at("fresh", now).await != (40, Value::Null) {
        assert!(Instant::now() < deadline, "{:?}", answer_at("fresh", now).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lease = bucket::lease::Lease::new(tree.clone(), "writer", "probe", Duration::from_secs(4));
    assert!(lease.read().await.unwrap().unwrap().released, "a graceful stop releases the lease");

    // ingest-b tends ingest-a's tree.
    let mut b = ServerProcess::spawn(
        &dir.path().join("b"),
        b_addr,
        &["--role", "ingest", "--node-name", "ingest-b", "--config", short.to_str().unwrap()],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let fresh_day = format!("date={}", store::time::format_day(store::time::day_of_ns(now - 600_000_000_000)));
    loop {
        let commit = tree.latest_commit().await.unwrap().unwrap();
        if !commit.files.iter().any(|f| f.path.contains(&old_day)) {
            assert_eq!(commit.node, "ingest-a", "the retention's commit is named for the tree's node");
            assert!(
                commit.files.iter().filter(|f| f.path.contains(&fresh_day) && f.path.ends_with(".parquet")).count()
                    >= 2,
                "the fresh day stays: {commit:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "ingest-b did not apply the retention to ingest-a's tree");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Once no reader can be on an older commit: one commit, and the expired parts' objects are gone. The
    // query node answers the fresh day all along, without a warning (the tree is retired while another
    // node holds its lease too), and the old day no more once it follows the new commit.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert_eq!(count_at("fresh", now).await, 40);
        let objects: Vec<String> =
            tree.objects_under("data").await.unwrap().iter().map(|m| m.location.to_string()).collect();
        let left: Vec<&String> = old_keys.iter().filter(|k| objects.iter().any(|o| o.ends_with(k.as_str()))).collect();
        if left.is_empty() && tree.commit_numbers().await.unwrap().len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the expired objects stayed: {left:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let record = lease.read().await.unwrap().unwrap();
    assert!(record.released && record.node == "ingest-b", "the tending node released the lease: {record:?}");
    assert_eq!(count_at("old", old).await, 0, "the query node follows the retention's commit");
    // The prefix's own tree the same way, its commit named for the single server.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let commit = prefix.latest_commit().await.unwrap().unwrap();
        let objects: Vec<String> =
            prefix.objects_under("data").await.unwrap().iter().map(|m| m.location.to_string()).collect();
        let left = single_old_keys.iter().filter(|k| objects.iter().any(|o| o.ends_with(k.as_str()))).count();
        if !commit.files.iter().any(|f| f.path.contains(&old_day))
            && left == 0
            && prefix.commit_numbers().await.unwrap().len() == 1
        {
            assert_eq!(commit.node, single_writer);
            assert!(commit.files.iter().any(|f| f.path.contains(&fresh_day)), "{commit:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the prefix's own tree kept its old day: {commit:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(count_at("fresh-single", now).await, 20);
    assert_eq!(count_at("old-single", old).await, 0);
    // What the tending node counted (once the round that deleted the objects has returned): both trees'
    // old log and metric parts, and at least their objects.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = metrics_text(&b.base).await;
        let deleted = metric(&text, "lumen_bucket_retired_trees_objects_deleted_total");
        if deleted >= (old_keys.len() + single_old_keys.len()) as f64 {
            break text;
        }
        assert!(Instant::now() < deadline, "objects deleted: {deleted}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metric(&text, "lumen_bucket_retired_trees_parts_expired_total") >= 4.0, "{text}");
    assert!(metric(&text, "lumen_bucket_retired_trees_tended_total") >= 4.0, "two rounds per tree");
    assert_eq!(metric(&text, "lumen_bucket_retired_trees_failures_total"), 0.0);
    // While another node holds the tree's lease (for its retention), the query node does not ask ingest-a:
    // it has no head there.
    let mut holder = bucket::lease::Lease::new(tree.clone(), "writer", "retention-probe", Duration::from_secs(30));
    assert_eq!(holder.acquire().await.unwrap(), bucket::lease::Observed::Held);
    // Two of the query node's follows (sync_interval).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count_at("fresh", now).await, 40);
    holder.release().await.unwrap();
    // A delete reaches a retired tree through an ingest node: committed into the tree, tended, it hides the
    // rows on every query node once it follows that commit, and ingest-b's next round rewrites the parts
    // without them. (Sent to a query node that lists the live ingest nodes only, as the chart's list
    // follows server.replicas: a listed node that does not answer fails a delete, as it may hold data.)
    let mut live_config = test_config(&dir.path().join("query-live"));
    live_config.storage = storage.clone();
    live_config.server.role = lumen::config::Role::Query;
    live_config.query.ingest_urls = vec![b.base.clone()];
    let live = TestServer::start(live_config).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::bucket::logql_instant(&live, r#"sum(count_over_time({app="fresh"}[1h]))"#).await["data"]["result"][0]["value"]
        [1]
        != "40"
    {
        assert!(Instant::now() < deadline, "the second query node did not answer ingest-a's tree");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = query
        .client
        .post(live.url("/loki/api/v1/delete"))
        .query(&[("query", r#"{app="fresh"} |= "line 1""#), ("start", "0")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let r = query
        .client
        .post(live.url("/api/v1/admin/tsdb/delete_series"))
        .query(&[("match[]", r#"bucket_metric{app="fresh"}"#), ("start", "0")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let fresh_samples = |server: &TestServer| {
        let (client, url) = (server.client.clone(), server.url("/api/v1/query"));
        async move {
            let q = [
                ("query", r#"sum(count_over_time(bucket_metric{app="fresh"}[1h]))"#.to_string()),
                ("time", format!("{:.3}", now as f64 / 1e9)),
            ];
            let v: Value = client.get(url).query(&q).send().await.unwrap().json().await.unwrap();
            v["data"]["result"][0]["value"][1].as_str().map_or(0, |s| s.parse::<u64>().unwrap())
        }
    };
    // "fresh line 1" and "fresh line 10" to "fresh line 19": 11 of the 40 lines.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (count_at("fresh", now).await, fresh_samples(&live).await) != (29, 0) {
        assert!(Instant::now() < deadline, "the delete did not reach the query node's answers");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = metrics_text(&b.base).await;
    // ingest-a's tree, and the prefix's own when the query node counted it as retired already.
    assert!(metric(&text, "lumen_bucket_retired_trees_deletes_recorded_total") >= 2.0, "{text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics_text(&b.base).await;
        if metric(&text, "lumen_bucket_retired_trees_parts_rewritten_total") >= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "ingest-b did not rewrite the retired tree's parts: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let commit = tree.latest_commit().await.unwrap().unwrap();
    assert!(commit.tended_by.as_deref().is_some_and(|h| h.starts_with("ingest-b/")), "{commit:?}");
    assert_eq!((count_at("fresh", now).await, fresh_samples(&live).await), (29, 0));
    live.stop().await;

    // ingest-a comes back on its old disk, with the short retention too: it adopts the tended commit and
    // takes its tree back, and answers its fresh lines only, without the deleted ones.
    let mut a = spawn_ingest(&short, &a_data, "ingest-a", a_addr);
    crate::harness::ready_becomes(&a.base, 200, Duration::from_secs(60)).await;
    let a_node = remote(&a.base);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let record = lease.read().await.unwrap().unwrap();
        if !record.released && record.node == "ingest-a" {
            break;
        }
        assert!(Instant::now() < deadline, "ingest-a did not take its tree back: {record:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fresh = crate::bucket::logql_instant(&a_node, r#"sum(count_over_time({app="fresh"}[1h]))"#).await;
    assert_eq!(fresh["data"]["result"][0]["value"][1], "29", "{fresh}");
    assert_eq!(fresh_samples(&a_node).await, 0, "the deleted samples stay deleted");

    // A node killed without a graceful stop may hold acknowledged lines only its disk has: its tree is
    // never tended, not even once its lease ran out.
    let mut c = spawn_ingest(&config, &dir.path().join("c"), "ingest-c", free_addr());
    crate::harness::ready_becomes(&c.base, 200, Duration::from_secs(30)).await;
    let c_node = remote(&c.base);
    push(&c_node, "old-c", 10, old).await;
    c_node.flush().await;
    let c_tree = prefix.node_tree("ingest-c");
    synced_parts_of_day(&c_tree, &old_day).await;
    c.kill9();
    let c_commit = c_tree.latest_commit().await.unwrap().unwrap();
    // Two of ingest-b's rounds after the lease's ttl (4 s) ran out.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rounds = || async { metric(&metrics_text(&b.base).await, "lumen_bucket_retired_trees_rounds_total") };
    let from = rounds().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while rounds().await < from + 2.0 {
        assert!(Instant::now() < deadline, "ingest-b ran no rounds");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c_tree.latest_commit().await.unwrap().unwrap(), c_commit, "a crashed node's tree is left alone");
    let record = bucket::lease::Lease::new(c_tree.clone(), "writer", "probe", Duration::from_secs(4))
        .read()
        .await
        .unwrap()
        .unwrap();
    assert!(!record.released && record.node == "ingest-c", "{record:?}");
    a.terminate();
    b.terminate();
    query.stop().await;
}

/// Every line's tag and number (the first 40 characters, unique per line) a node holds.
async fn line_keys(base: &str) -> Vec<String> {
    let client = crate::harness::client();
    let rows = crate::harness::sql_rows(&client, base, "default", "SELECT substr(message, 1, 40) AS m FROM logs").await;
    rows.iter().map(|r| r["m"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_retry_that_lands_on_another_ingest_node_is_not_stored_twice() {
    use std::sync::atomic::Ordering;

    use crate::agent::{AgentProcess, ContainerLog, Fmt, ack_losing_proxy, agent_config};
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let urls = vec![format!("http://{a_addr}"), format!("http://{b_addr}")];
    // Each ingest node knows both (its own answer is passed over).
    let (config, _, mut a, mut b) =
        ingest_processes(&weed, dir.path(), "resend-test", (a_addr, b_addr), json!({}), &urls).await;

    // A load balancer that sends each push to the next node and loses every other answer: the agent's
    // retry of a batch one node stored goes to the other.
    let proxy = ack_losing_proxy(urls.clone()).await;
    let pods = dir.path().join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let agent_conf = agent_config(&agent_dir, &format!("http://{}", proxy.addr), &pods, "");
    let mut agent = AgentProcess::spawn(&agent_conf, free_addr());
    agent.wait_ready().await;
    let mut app = ContainerLog::create(&pods, "default", "api-1", "uid-api", "api", Fmt::Cri);
    for _ in 0..8 {
        app.write(40);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (a_base, b_base) = (a.base.clone(), b.base.clone());
    let all_stored = |want: usize| {
        let (a, b) = (a_base.clone(), b_base.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let keys = [line_keys(&a).await, line_keys(&b).await].concat();
                let distinct: std::collections::HashSet<&String> = keys.iter().collect();
                if distinct.len() >= want || Instant::now() > deadline {
                    return keys;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let keys = all_stored(app.lines.len()).await;
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), app.lines.len(), "every line stored");
    assert_eq!(keys.len(), app.lines.len(), "{} lines stored twice across the two nodes", keys.len() - distinct.len());
    assert!(proxy.lost.load(Ordering::SeqCst) >= 2, "the proxy lost no answers");
    let checked =
        |body: &str, outcome: &str| metric(body, &format!("lumen_ingest_resend_checks_total{{outcome=\"{outcome}\"}}"));
    let (ma, mb) = (metrics_text(&a.base).await, metrics_text(&b.base).await);
    assert!(
        checked(&ma, "stored_elsewhere") + checked(&mb, "stored_elsewhere") >= 2.0,
        "retries were recognised on the other node:\n{ma}\n{mb}"
    );

    // A node stores a batch, its answer is lost, and it is killed before the retry reaches the other
    // node: that node cannot tell whether the dead one stored it, so it refuses the retry until the node
    // answers again; then everything is there once.
    proxy.mode.store(crate::agent::LOSE_AND_HOLD_FIRST, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proxy.holding.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "no batch reached the first node");
        app.write(30);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    a.kill9();
    proxy.release.notify_one();
    app.write(30);
    let deadline = Instant::now() + Duration::from_secs(20);
    while checked(&metrics_text(&b.base).await, "unknown") < 1.0 {
        assert!(Instant::now() < deadline, "no retry was refused while a node was down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut a = spawn_ingest(&config, &dir.path().join("a"), "ingest-a", a_addr);
    crate::harness::ready_becomes(&a.base, 200, Duration::from_secs(30)).await;
    let keys = all_stored(app.lines.len()).await;
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), app.lines.len(), "every line stored after the restart");
    assert_eq!(keys.len(), app.lines.len(), "{} lines stored twice", keys.len() - distinct.len());
    agent.terminate();
    a.terminate();
    b.terminate();
}

/// A range query's `data.result` from `server`, over `[start, end]` seconds at 15 s steps.
async fn range_result(server: &TestServer, q: &str, start: i64, end: i64) -> Value {
    let v: Value = server
        .client
        .get(server.url("/api/v1/query_range"))
        .query(&[("query", q), ("start", &start.to_string()), ("end", &end.to_string()), ("step", "15")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "success", "{q}: {v}");
    assert!(v.get("warnings").is_none(), "{q}: {v}");
    v["data"]["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_nodes_results_cache_stays_exact_as_its_ingest_nodes_take_late_samples_and_deletes() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, query) = cluster(&weed, dir.path(), "results-cache", |_| {}).await;
    let now = store::time::now_ns();
    push(&a, "alpha", 100, now).await;
    push(&b, "beta", 100, now).await;
    // The samples start 600 s ago, one a second (see `push`).
    let t0_ms = now / 1_000_000 - 600_000;
    let (start, end) = (t0_ms / 1000 - 60, now / 1_000_000_000);
    let hits = || async { metric(&metrics_text(&query.base).await, "lumen_query_results_cache_hits_total") };
    // The same query twice: the second from the cache, the same answer.
    let cached = "sum(bucket_metric)";
    let first = range_result(&query, cached, start, end).await;
    let before = hits().await;
    assert_eq!(range_result(&query, cached, start, end).await, first);
    assert_eq!(hits().await, before + 1.0, "the second answer came from the cache");
    // Another spelling of the same query, never run before, is evaluated afresh.
    let spellings = std::sync::atomic::AtomicUsize::new(1);
    let fresh = || {
        let q =
            format!("sum{}(bucket_metric)", " ".repeat(spellings.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
        let query = &query;
        async move { range_result(query, &q, start, end).await }
    };
    assert_eq!(fresh().await, first);

    // A late sample on one ingest node, at a time the cached steps cover: the cached query sees it.
    let late = format!("bucket_metric{{app=\"gamma\"}} 1000 {}\n", t0_ms + 10_000);
    let r = b.client.post(b.url("/api/v1/import/prometheus")).body(late).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let after_late = range_result(&query, cached, start, end).await;
    assert_ne!(after_late, first, "the late sample is in the answer");
    assert_eq!(after_late, fresh().await);
    // A delete through the query node reaches both nodes: the cached query sees that too.
    delete_series(&query, r#"bucket_metric{app="alpha"}"#).await;
    let after_delete = range_result(&query, cached, start, end).await;
    assert_ne!(after_delete, after_late);
    assert_eq!(after_delete, fresh().await);
    // Flushed and synced into the bucket and followed: the same answer, still from the cache.
    a.flush().await;
    b.flush().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = hits().await;
    assert_eq!(range_result(&query, cached, start, end).await, after_delete);
    assert_eq!(hits().await, before + 1.0);
    query.stop().await;
    a.stop().await;
    b.stop().await;
}

/// The lines of the apps matching `re` and their `bucket_metric` samples in the hour before `at` (ns), as
/// `server` answers them, and whether either answer warned.
async fn counts_at(server: &TestServer, re: &str, at: i64) -> (u64, u64, bool) {
    let q = [("query", format!("sum(count_over_time({{app=~\"{re}\"}}[1h]))")), ("time", at.to_string())];
    let logs: Value =
        server.client.get(server.url("/loki/api/v1/query")).query(&q).send().await.unwrap().json().await.unwrap();
    let q = [
        ("query", format!("sum(count_over_time(bucket_metric{{app=~\"{re}\"}}[1h]))")),
        ("time", format!("{:.3}", at as f64 / 1e9)),
    ];
    let samples: Value =
        server.client.get(server.url("/api/v1/query")).query(&q).send().await.unwrap().json().await.unwrap();
    let n = |v: &Value| v["data"]["result"][0]["value"][1].as_str().map_or(0, |s| s.parse::<f64>().unwrap() as u64);
    (n(&logs), n(&samples), !logs["warnings"].is_null() || !samples["warnings"].is_null())
}

/// Waits until `server` answers `want` lines and samples of `re` at `at`, without a warning.
async fn counts_become(server: &TestServer, re: &str, at: i64, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = counts_at(server, re, at).await;
        if got == (want, want, false) {
            return;
        }
        assert!(Instant::now() < deadline, "{re}: {got:?}, want {want} lines and samples without a warning");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The newest commit of `tree` once it is tended and names one log part and one metric part of `day`.
async fn merged_commit(tree: &bucket::Bucket, day: &str) -> bucket::commit::Commit {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let commit = tree.latest_commit().await.unwrap().unwrap();
        if commit.tended_by.is_some() && part_keys_of_day(tree, day).await.len() == 2 {
            return commit;
        }
        assert!(Instant::now() < deadline, "{} was not merged: {commit:?}", tree.describe());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 22's compactor: two `--role compactor` processes started at once, one holds the lease `compactor`
/// and applies a retention rule with a selector to a stopped ingest node's tree and merges its parts (its
/// commit tended on the node's behalf), the other
/// waits, and so do the ingest nodes' own rounds. The holder is `kill -9`ed while it tends a second tree
/// (that tree's writer lease in its hands): the other takes the lease over and finishes the merge. The
/// query node answers every line and sample exactly once throughout, and the first node, started again on
/// its old disk, adopts the merged commit and writes on after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_compactor_of_two_merges_stopped_nodes_trees_and_a_returning_node_adopts_its_work() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let mut storage = storage(&weed.endpoint, &creds);
    storage.prefix = "compactor-test".into();
    storage.lease_ttl = Duration::from_secs(4);
    storage.retired_trees_interval = Duration::from_secs(1);
    // The nodes' own compaction and retention wait an hour: their finished day keeps the parts of three
    // flushes, and the lines and samples of app a1, which a retention rule removes after a day.
    let config = dir.path().join("lumen.toml");
    let rule = json!({"tenant": "default", "selector": "{app=\"a1\"}", "period": "1d"});
    let file = json!({"storage": storage, "store": {"maintenance_interval": "1h"}, "retention": {"rule": [rule]}});
    std::fs::write(&config, toml::to_string(&file).unwrap()).unwrap();
    let prefix = bucket::Bucket::open(&storage).unwrap().unwrap();
    let at = store::time::now_ns() - 2 * 86_400_000_000_000;
    let day = format!("date={}", store::time::format_day(store::time::day_of_ns(at - 600_000_000_000)));
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a_data = dir.path().join("a");
    let mut a = spawn_ingest(&config, &a_data, "ingest-a", a_addr);
    crate::harness::ready_becomes(&a.base, 200, Duration::from_secs(30)).await;
    let a_node = remote(&a.base);
    for k in 0..3 {
        push(&a_node, &format!("a{k}"), 50, at).await;
        a_node.flush().await;
    }
    let mut query_config = test_config(&dir.path().join("query"));
    query_config.storage = storage.clone();
    query_config.server.role = lumen::config::Role::Query;
    query_config.query.ingest_urls = vec![a.base.clone(), format!("http://{b_addr}")];
    let query = TestServer::start(query_config).await;
    counts_become(&query, "a.*", at, 150).await;
    a.terminate();
    let a_tree = prefix.node_tree("ingest-a");
    assert_eq!(part_keys_of_day(&a_tree, &day).await.len(), 6, "three flushes' log and metric parts");

    // Two compactors at once: one holds the lease and merges ingest-a's day, the other waits.
    let config_arg = config.to_str().unwrap();
    let compactor = |name: &str| {
        let args = ["--role", "compactor", "--node-name", name, "--config", config_arg];
        ServerProcess::spawn(&dir.path().join(name), free_addr(), &args)
    };
    let (c1, c2) = (compactor("c1"), compactor("c2"));
    crate::harness::ready_becomes(&c1.base, 200, Duration::from_secs(30)).await;
    crate::harness::ready_becomes(&c2.base, 200, Duration::from_secs(30)).await;
    let merged = merged_commit(&a_tree, &day).await;
    assert_eq!(merged.node, "ingest-a", "a tended commit is named for the tree's writer");
    let held =
        |base: String| async move { metric(&metrics_text(&base).await, "lumen_bucket_retired_trees_lease_held") };
    let (h1, h2) = (held(c1.base.clone()).await, held(c2.base.clone()).await);
    assert_eq!(h1 + h2, 1.0, "exactly one compactor holds the lease");
    let (mut holder, waiter, holder_name, waiter_name) =
        if h1 == 1.0 { (c1, c2, "c1", "c2") } else { (c2, c1, "c2", "c1") };
    assert!(merged.tended_by.as_deref().unwrap().starts_with(&format!("{holder_name}/")), "{merged:?}");
    let text = metrics_text(&waiter.base).await;
    assert!(metric(&text, "lumen_bucket_retired_trees_lease_waits_total") > 0.0, "{text}");
    assert_eq!(metric(&text, "lumen_bucket_retired_trees_tended_total"), 0.0, "the waiter tends nothing");
    let text = metrics_text(&holder.base).await;
    // The rule emptied a1's log and metric parts (gone), the other two flushes' merged.
    assert_eq!(metric(&text, "lumen_bucket_retired_trees_parts_expired_total"), 2.0, "{text}");
    assert_eq!(metric(&text, "lumen_bucket_retired_trees_parts_compacted_total"), 4.0, "{text}");
    counts_become(&query, "a.*", at, 100).await;
    // A compactor serves its probes and metrics, nothing else.
    let r = crate::harness::client().get(format!("{}/loki/api/v1/labels", holder.base)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("this is a compactor"));
    let r = crate::harness::client()
        .post(format!("{}/api/v1/import/prometheus", holder.base))
        .body("m 1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // ingest-b writes three flushes of the same day; while a compactor holds the lease, its rounds wait.
    let mut b = spawn_ingest(&config, &dir.path().join("b"), "ingest-b", b_addr);
    crate::harness::ready_becomes(&b.base, 200, Duration::from_secs(30)).await;
    let b_node = remote(&b.base);
    for k in 0..3 {
        push(&b_node, &format!("b{k}"), 40, at).await;
        b_node.flush().await;
    }
    counts_become(&query, "b.*", at, 120).await;
    let text = metrics_text(&b.base).await;
    assert!(metric(&text, "lumen_bucket_retired_trees_lease_waits_total") > 0.0, "{text}");
    assert_eq!(metric(&text, "lumen_bucket_retired_trees_tended_total"), 0.0);
    b.terminate();
    // The holder is killed while ingest-b's writer lease is in its hands (its round on that tree).
    let b_tree = prefix.node_tree("ingest-b");
    let probe = bucket::lease::Lease::new(b_tree.clone(), "writer", "probe", Duration::from_secs(4));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(r)) = probe.read().await
            && !r.released
            && r.node == holder_name
        {
            break;
        }
        assert!(Instant::now() < deadline, "the compactor never took ingest-b's tree");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    holder.kill9();
    // The other takes the lease over once it ran out, and merges ingest-b's day (or finds it merged, when
    // the kill came after the commit).
    let deadline = Instant::now() + Duration::from_secs(30);
    while held(waiter.base.clone()).await != 1.0 {
        assert!(Instant::now() < deadline, "{waiter_name} did not take the lease over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let merged_b = merged_commit(&b_tree, &day).await;
    assert!(merged_b.tended_by.is_some());
    counts_become(&query, "b.*", at, 120).await;
    counts_become(&query, "a.*", at, 100).await;

    // ingest-a comes back on its old disk: it adopts the merged commit (its day holds the merged parts and
    // no more the three flushed ones), and a new flush of that day takes an id after the merged parts'.
    let before: Vec<String> = merged
        .files
        .iter()
        .filter(|f| f.path.contains(&day) && f.path.ends_with(".parquet"))
        .map(|f| f.path.clone())
        .collect();
    let mut a = spawn_ingest(&config, &a_data, "ingest-a", a_addr);
    crate::harness::ready_becomes(&a.base, 200, Duration::from_secs(60)).await;
    let newest = a_tree.latest_commit().await.unwrap().unwrap();
    let local: Vec<String> = newest
        .files
        .iter()
        .filter(|f| f.path.contains(&day) && f.path.ends_with(".parquet"))
        .map(|f| f.path.clone())
        .collect();
    assert_eq!(local.len(), 2);
    for path in &local {
        assert!(a_data.join(path).exists(), "{path} adopted");
    }
    let day_dir = a_data.join(std::path::Path::new(&before[0]).parent().unwrap());
    let parts = std::fs::read_dir(&day_dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "parquet"))
        .count();
    assert_eq!(parts, 1, "only the merged part in {}", day_dir.display());
    assert_eq!(bucket::adopt::recorded_commit(&a_data), Some(newest.seq));
    let a_node = remote(&a.base);
    counts_become(&a_node, "a.*", at, 100).await;
    push(&a_node, "a3", 50, at).await;
    a_node.flush().await;
    counts_become(&a_node, "a.*", at, 150).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let commit = a_tree.latest_commit().await.unwrap().unwrap();
        if commit.tended_by.is_none() && part_keys_of_day(&a_tree, &day).await.len() == 4 {
            assert!(commit.seq > newest.seq);
            break;
        }
        assert!(Instant::now() < deadline, "ingest-a did not sync its new part: {commit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    counts_become(&query, "a.*", at, 150).await;
    counts_become(&query, "b.*", at, 120).await;
    a.terminate();
    drop(waiter);
    query.stop().await;
}
