//! A query node (`server.role = "query"`, issue 22) on real SeaweedFS: it follows the bucket a writer
//! (role "all") syncs into, answers every line and sample the writer synced, exactly once across the
//! writer's compactions, refuses writes with a message that says where they go, never writes to the bucket,
//! and starts again on its own directory.

use std::time::{Duration, Instant};

use crate::bucket::{
    KEY_ID, SECRET, SeaweedFs, count_lines, count_lines_answer, count_samples, credential_files, logql_instant, push,
    storage,
};
use crate::harness::{TestServer, test_config};

async fn metrics(server: &TestServer) -> String {
    server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Waits until the node answers `want` lines and samples.
async fn until_answers(node: &TestServer, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = (count_lines(node).await, count_samples(node).await);
        if got == (want, want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the query node answers {got:?}, not {want} after 30s:\n{}",
            metrics(node).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_node_answers_what_the_writer_synced_exactly_once_and_takes_no_writes() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let mut writer_config = test_config(&dir.path().join("writer"));
    writer_config.storage = storage(&weed.endpoint, &creds);
    writer_config.storage.prefix = "followed".into();
    writer_config.store.compaction_min_parts = 2;
    let mut query_config = test_config(&dir.path().join("query"));
    query_config.storage = writer_config.storage.clone();
    query_config.storage.cache_max_bytes = bytesize::ByteSize::b(1);
    query_config.server.role = lumen::config::Role::Query;
    let now = store::time::now_ns();

    let writer = TestServer::start(writer_config.clone()).await;
    push(&writer, "first", 300, now).await;
    writer.flush().await;
    let query = TestServer::start(query_config.clone()).await;
    until_answers(&query, 300).await;

    // More data, then a compaction that merges the parts the query node opened.
    push(&writer, "second", 200, now).await;
    writer.flush().await;
    until_answers(&query, 500).await;
    let before = metric(&metrics(&query).await, "lumen_bucket_follow_applied_commit");
    let r = writer.client.post(writer.url("/api/v1/admin/compact")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let merged: serde_json::Value = r.json().await.unwrap();
    assert!(
        merged["merged_parts"].as_u64() >= Some(2) && merged["metrics"]["merged_parts"].as_u64() >= Some(2),
        "{merged}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&metrics(&query).await, "lumen_bucket_follow_applied_commit") <= before {
        assert!(Instant::now() < deadline, "the compaction's commit did not reach the query node");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!((count_lines(&query).await, count_samples(&query).await), (500, 500), "exactly once after a compaction");

    // Writes are refused, saying where they go; deletes too.
    let body =
        serde_json::json!({"streams": [{"stream": {"app": "x"}, "values": [[now.to_string(), "to the wrong node"]]}]});
    let r = query.client.post(query.url("/loki/api/v1/push")).json(&body).send().await.unwrap();
    let (status, text) = (r.status(), r.text().await.unwrap());
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("query node") && text.contains("server.role"), "{text}");
    let r = query.client.post(query.url("/api/v1/import/prometheus")).body("x 1\n").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = query
        .client
        .post(query.url("/loki/api/v1/delete"))
        .query(&[("query", r#"{app="first"}"#), ("start", "0")])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // It never writes to the bucket: no sync, no lease.
    let m = metrics(&query).await;
    assert!(!m.contains("lumen_bucket_syncs_total") && !m.contains("lumen_bucket_lease_held"), "{m}");
    let b = bucket::Bucket::open(&writer_config.storage).unwrap().unwrap();
    let commits = b.commit_numbers().await.unwrap();

    // Restarted on its own directory, it answers at once.
    query.stop().await;
    let query = TestServer::start(query_config).await;
    assert_eq!((count_lines(&query).await, count_samples(&query).await), (500, 500));
    query.stop().await;
    assert_eq!(b.commit_numbers().await.unwrap(), commits, "the query node wrote no commit");
    writer.stop().await;
}

/// The warnings of a LogQL count on the node.
async fn line_count_warnings(node: &TestServer) -> Vec<String> {
    let v = count_lines_answer(node).await;
    v["warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// The `data` array of a metadata answer.
async fn data(node: &TestServer, path: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = node.client.get(node.url(path)).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], "success", "{path}: {v}");
    v["data"].as_array().cloned().unwrap_or_default()
}

/// Asserts, over `for_`, that every answer is `want`: whatever the writer's flushes, syncs and the query
/// node's follows do meanwhile, no line or sample is missing or counted twice.
async fn always_answers(node: &TestServer, want: u64, for_: Duration) {
    let until = Instant::now() + for_;
    let mut answers = 0;
    while Instant::now() < until || answers == 0 {
        let got = (count_lines(node).await, count_samples(node).await);
        assert_eq!(got, (want, want), "answer {answers} of the query node");
        // The same count through a line filter: read row by row, not from the part indexes.
        let v = logql_instant(node, r#"sum(count_over_time({app=~".+"} |= "line" [1h]))"#).await;
        assert_eq!(v["data"]["result"][0]["value"][1].as_str(), Some(want.to_string().as_str()), "{v}");
        answers += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_node_answers_what_the_writer_acknowledged_and_has_not_synced_exactly_once() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let mut writer_config = test_config(&dir.path().join("writer"));
    writer_config.storage = storage(&weed.endpoint, &creds);
    writer_config.storage.prefix = "fresh".into();
    writer_config.store.compaction_min_parts = 2;
    let now = store::time::now_ns();
    let writer = TestServer::start(writer_config.clone()).await;

    let mut query_config = test_config(&dir.path().join("query"));
    query_config.storage = writer_config.storage.clone();
    query_config.server.role = lumen::config::Role::Query;
    query_config.query.ingest_urls = vec![writer.url("")];
    let query = TestServer::start(query_config.clone()).await;
    // The writer takes its lease at start: until then it answers 409 and the query node warns.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !line_count_warnings(&query).await.is_empty() {
        assert!(Instant::now() < deadline, "{:?}", line_count_warnings(&query).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Acknowledged is answered at once, from the writer's head, before any flush or sync.
    push(&writer, "first", 300, now).await;
    assert_eq!((count_lines(&query).await, count_samples(&query).await), (300, 300), "read after the acknowledgement");
    // SQL's `logs` too, with a label filter and a field-free projection.
    assert_eq!(query.sql("default", "SELECT count(*) AS n FROM logs").await[0]["n"], 300);
    let rows = query.sql("default", "SELECT app, count(*) AS n FROM logs WHERE app = 'first' GROUP BY app").await;
    assert_eq!(rows, [serde_json::json!({"app": "first", "n": 300})]);
    // And the samples table, as PromQL there reads: the writer's head too.
    assert_eq!(query.sql("default", "SELECT count(*) AS n FROM samples").await[0]["n"], 300);
    // And the series table: the series is in no catalog the query node reads, only in the writer's head.
    let rows = query.sql("default", "SELECT metric, count(*) AS n FROM series GROUP BY metric").await;
    assert_eq!(rows, [serde_json::json!({"metric": "bucket_metric", "n": 1})]);
    // Label names, values and series too: the stream and the series are only in the writer's head.
    assert_eq!(data(&query, "/loki/api/v1/label/app/values").await, ["first"]);
    assert!(data(&query, "/loki/api/v1/labels").await.contains(&serde_json::json!("app")));
    assert_eq!(data(&query, "/api/v1/label/app/values").await, ["first"]);
    let series = data(&query, "/api/v1/series?match[]=bucket_metric").await;
    assert_eq!(series, [serde_json::json!({"__name__": "bucket_metric", "app": "first"})]);
    // Flushed into parts the bucket does not hold yet, then synced and followed: always exactly once.
    writer.flush().await;
    always_answers(&query, 300, Duration::from_secs(3)).await;
    push(&writer, "second", 200, now).await;
    always_answers(&query, 500, Duration::from_millis(500)).await;
    assert_eq!(query.sql("default", "SELECT count(*) AS n FROM logs").await[0]["n"], 500, "SQL over parts and head");
    writer.flush().await;
    let r = writer.client.post(writer.url("/api/v1/admin/compact")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    always_answers(&query, 500, Duration::from_secs(3)).await;
    assert!(line_count_warnings(&query).await.is_empty());
    let m = metrics(&query).await;
    assert!(metric(&m, "lumen_query_ingest_requests_total") > 0.0, "{m}");

    // A node that holds no writer lease (another query node) answers 409, and is passed over.
    let r = query
        .client
        .post(query.url(query::peers::LOGS_PATH))
        .json(&serde_json::json!({"start_ns": 0, "end_ns": now, "matchers": [], "columns": null, "have": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);

    // Without the writer, the query node answers what the bucket holds, and says what may be missing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics(&writer).await;
        let applied = metric(&metrics(&query).await, "lumen_bucket_follow_applied_commit");
        if metric(&m, "lumen_bucket_last_commit") > 0.0 && applied >= metric(&m, "lumen_bucket_last_commit") {
            break;
        }
        assert!(Instant::now() < deadline, "the writer's data did not reach the query node through the bucket");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    writer.stop().await;
    until_answers(&query, 500).await;
    let warnings = line_count_warnings(&query).await;
    assert!(warnings.iter().any(|w| w.contains("no ingest node answered")), "{warnings:?}");
    let v: serde_json::Value =
        query.client.get(query.url("/loki/api/v1/label/app/values")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["data"], serde_json::json!(["first", "second"]), "{v}");
    assert!(v["warnings"][0].as_str().is_some_and(|w| w.contains("no ingest node answered")), "{v}");
    let v = crate::harness::sql_answer(&query.client, &query.base, "default", "SELECT count(*) AS n FROM logs").await;
    assert_eq!(v["rows"][0]["n"], 500, "{v}");
    assert!(v["warnings"][0].as_str().is_some_and(|w| w.contains("no ingest node answered")), "SQL: {v}");
    query.stop().await;
}

/// LogQL `sum(count_over_time(...))` over every app on `node`, as `token` for `tenant`: (status, count).
async fn count_as(node: &TestServer, token: Option<&str>, tenant: &str) -> (u16, u64) {
    let mut req = node
        .client
        .get(node.url("/loki/api/v1/query"))
        .query(&[("query", r#"sum(count_over_time({app=~".+"}[1h]))"#)])
        .header("X-Scope-OrgID", tenant);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    (status, v["data"]["result"][0]["value"][1].as_str().map_or(0, |s| s.parse().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_node_passes_the_callers_token_on_and_the_writer_checks_it() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let tokens = dir.path().join("tokens.toml");
    let write = crate::auth::make_token(&tokens, "team-a", "write");
    let read = crate::auth::make_token(&tokens, "team-a", "read");
    let other = crate::auth::make_token(&tokens, "team-b", "read");
    let mut writer_config = test_config(&dir.path().join("writer"));
    writer_config.storage = storage(&weed.endpoint, &creds);
    writer_config.storage.prefix = "auth".into();
    writer_config.server.auth_file = tokens.clone();
    let writer = TestServer::start(writer_config.clone()).await;
    let mut query_config = test_config(&dir.path().join("query"));
    query_config.storage = writer_config.storage.clone();
    query_config.server.role = lumen::config::Role::Query;
    query_config.server.auth_file = tokens;
    query_config.query.ingest_urls = vec![writer.url("")];
    let query = TestServer::start(query_config).await;

    let now = store::time::now_ns();
    let values: Vec<serde_json::Value> =
        (0..20).map(|i| serde_json::json!([(now - 1_000_000_000 + i).to_string(), format!("line {i}")])).collect();
    let body = serde_json::json!({"streams": [{"stream": {"app": "a"}, "values": values}]});
    let r = writer
        .client
        .post(writer.url("/loki/api/v1/push"))
        .bearer_auth(&write)
        .header("X-Scope-OrgID", "team-a")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // The reader's token reaches the writer through the query node: its head answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_as(&query, Some(&read), "team-a").await != (200, 20) {
        assert!(Instant::now() < deadline, "{:?}", count_as(&query, Some(&read), "team-a").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without a token, or for another tenant's token, neither node answers; nor does the delta route.
    assert_eq!(count_as(&query, None, "team-a").await.0, 401);
    assert_eq!(count_as(&query, Some(&other), "team-a").await.0, 403);
    assert_eq!(count_as(&query, Some(&other), "team-b").await, (200, 0));
    let delta = serde_json::json!({"start_ns": 0, "end_ns": now, "matchers": [], "columns": null, "have": []});
    let url = writer.url(query::peers::LOGS_PATH);
    let r = writer.client.post(&url).header("X-Scope-OrgID", "team-a").json(&delta).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = writer.client.post(&url).bearer_auth(&other).header("X-Scope-OrgID", "team-a").json(&delta);
    assert_eq!(r.send().await.unwrap().status(), 403);
    let r = writer.client.post(&url).bearer_auth(&read).header("X-Scope-OrgID", "team-a").json(&delta);
    assert_eq!(r.send().await.unwrap().status(), 200);
    // A request that is not one gets a 400 saying what was wrong; the writer stays up.
    for (body, says) in [
        ("{\"start_ns\": 0".to_string(), "invalid log delta request"),
        (
            serde_json::json!({"start_ns": 0, "end_ns": now, "columns": null, "have": [],
                "matchers": [{"name": "app", "op": "<>", "value": "a"}]})
            .to_string(),
            "unknown matcher operator",
        ),
        (
            serde_json::json!({"start_ns": 0, "end_ns": now, "columns": null, "have": [],
                "matchers": [{"name": "app", "op": "=~", "value": "(unclosed"}]})
            .to_string(),
            "invalid matcher app",
        ),
    ] {
        let r = writer.client.post(&url).bearer_auth(&read).header("X-Scope-OrgID", "team-a").body(body);
        let r = r.header("Content-Type", "application/json").send().await.unwrap();
        let (status, text) = (r.status(), r.text().await.unwrap());
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(says), "{text}");
    }
    let r = writer.client.post(writer.url(query::peers::METRICS_PATH)).bearer_auth(&read).body("[]");
    let r = r.header("X-Scope-OrgID", "team-a").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(count_as(&query, Some(&read), "team-a").await, (200, 20), "the writer still answers");
    query.stop().await;
    writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selection_the_writer_refuses_for_a_limit_fails_on_the_query_node_with_its_words() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let mut writer_config = test_config(&dir.path().join("writer"));
    writer_config.storage = storage(&weed.endpoint, &creds);
    writer_config.storage.prefix = "limits".into();
    writer_config.query.max_samples = 100;
    let writer = TestServer::start(writer_config.clone()).await;
    let mut query_config = test_config(&dir.path().join("query"));
    query_config.storage = writer_config.storage.clone();
    query_config.server.role = lumen::config::Role::Query;
    query_config.query.ingest_urls = vec![writer.url("")];
    let query = TestServer::start(query_config).await;
    push(&writer, "big", 300, store::time::now_ns()).await;

    // Not an answer with a warning that lines may be missing: the query fails, naming the limit.
    let r = query
        .client
        .get(query.url("/loki/api/v1/query"))
        .query(&[("query", r#"sum(count_over_time({app=~".+"}[1h]))"#)])
        .send()
        .await
        .unwrap();
    let (status, text) = (r.status(), r.text().await.unwrap());
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("query.max_samples") && text.contains("ingest node refused"), "{text}");
    let v = query.promql("default", "sum(count_over_time(bucket_metric[1h]))", None).await;
    assert_eq!(v["status"], "error", "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("query.max_samples")), "{v}");
    query.stop().await;
    writer.stop().await;
}

/// Issue 22: a delete the writer acknowledged hides the rows at once on a query node too, in the parts
/// the query node reads from its own copy of the bucket, although no commit has brought the request there
/// yet (the query node follows the bucket only every 30 s here). The writer sends its pending requests
/// with each answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_the_writer_hides_rows_of_the_query_nodes_own_parts_at_once() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let mut writer_config = test_config(&dir.path().join("writer"));
    writer_config.storage = storage(&weed.endpoint, &creds);
    writer_config.storage.prefix = "deletes".into();
    let now = store::time::now_ns();
    let writer = TestServer::start(writer_config.clone()).await;
    push(&writer, "first", 300, now).await;
    push(&writer, "second", 200, now).await;
    writer.flush().await;
    // Wait for a commit after the flush, and then for one more sync interval: the sync that committed may
    // have begun before the flush, and the next one then commits the parts.
    let committed = metric(&metrics(&writer).await, "lumen_bucket_last_commit");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&metrics(&writer).await, "lumen_bucket_last_commit") < committed + 1.0 {
        assert!(Instant::now() < deadline, "no commit after the flush");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // The query node starts from that commit and follows the bucket only every 30 s from then on.
    let mut query_config = test_config(&dir.path().join("query"));
    query_config.storage = writer_config.storage.clone();
    query_config.storage.sync_interval = Duration::from_secs(30);
    query_config.server.role = lumen::config::Role::Query;
    query_config.query.ingest_urls = vec![writer.url("")];
    let query = TestServer::start(query_config).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while (count_lines(&query).await, count_samples(&query).await) != (500, 500) {
        assert!(Instant::now() < deadline, "{:?}", count_lines_answer(&query).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let follows = metric(&metrics(&query).await, "lumen_bucket_follow_follows_total");
    // The log parts come from the bucket (the samples' parts too), so the query node reads them itself.
    assert!(metric(&metrics(&query).await, "lumen_store_parts") > 0.0, "{}", metrics(&query).await);

    let r = writer
        .client
        .post(writer.url("/loki/api/v1/delete"))
        .query(&[("query", r#"{app="first"}"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let r = writer
        .client
        .post(writer.url("/api/v1/admin/tsdb/delete_series"))
        .query(&[("match[]", r#"bucket_metric{app="first"}"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    assert_eq!((count_lines(&writer).await, count_samples(&writer).await), (200, 200));
    assert_eq!((count_lines(&query).await, count_samples(&query).await), (200, 200), "the query node's own parts");
    assert_eq!(query.sql("default", "SELECT count(*) AS n FROM logs").await[0]["n"], 200, "SQL");
    // Not through a commit: the query node has followed none since it answered the first count.
    assert_eq!(metric(&metrics(&query).await, "lumen_bucket_follow_follows_total"), follows);
    let lines = logql_instant(&query, r#"count_over_time({app="first"}[1h])"#).await;
    assert_eq!(lines["data"]["result"], serde_json::json!([]), "{lines}");
    query.stop().await;
    writer.stop().await;
}
