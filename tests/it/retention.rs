//! Retention deletes whole days past the configured age.

use std::time::Duration;

use serde_json::json;

use crate::harness::{TestServer, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_an_old_day() {
    let dir = tempfile::tempdir().unwrap();
    let now = store::time::now_ns();
    let old = now - 5 * store::time::NANOS_PER_DAY;
    let old_day = store::time::format_day(store::time::day_of_ns(old));
    let server = TestServer::start(test_config(dir.path())).await;
    let body: String = [(old, "old"), (now, "new")]
        .iter()
        .flat_map(|&(t, tag)| {
            (0..10).map(move |i| format!("{}\n", json!({"_time": t + i, "_msg": format!("{tag} {i}")})))
        })
        .collect();
    let r = server.client.post(server.url("/insert/jsonline")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.flush().await;
    let old_dir = dir.path().join(format!("logs/tenant=default/date={old_day}"));
    assert!(old_dir.exists());
    server.stop().await;

    // Restart with a 2-day retention: the five-day-old day goes, today stays.
    let mut config = test_config(dir.path());
    config.server.retention = Duration::from_secs(2 * 86_400);
    let server = TestServer::start(config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The day leaves the manifest first; its files go when the last scan holding them ends.
    while server.count("default").await != 10 || old_dir.exists() {
        assert!(std::time::Instant::now() < deadline, "retention did not run, or left {}", old_dir.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = server.sql("default", "SELECT count(*) AS n FROM logs WHERE message LIKE 'new%'").await;
    assert_eq!(rows[0]["n"], 10);
    server.stop().await;
}

/// Issue 18: `[[retention.rule]]` per tenant (longer or shorter than the global period) and per stream or
/// series selector, for logs and metrics alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_rules_per_tenant_and_per_selector() {
    use lumen::config::RetentionRuleConfig;
    let dir = tempfile::tempdir().unwrap();
    let now = store::time::now_ns();
    let old = now - 5 * store::time::NANOS_PER_DAY;
    let server = TestServer::start(test_config(dir.path())).await;
    // Logs: tenant t1 (one app), tenant default (apps dev and prod), five days old and today.
    for (tenant, app) in [("t1", "x"), ("default", "dev"), ("default", "prod")] {
        let body: String = [(old, "old"), (now, "new")]
            .iter()
            .flat_map(|&(t, tag)| {
                (0..10).map(move |i| format!("{}\n", json!({"_time": t + i, "_msg": format!("{tag} {i}"), "app": app})))
            })
            .collect();
        let r = server
            .client
            .post(server.url("/insert/jsonline?_stream_fields=app"))
            .header("X-Scope-OrgID", tenant)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    // Metrics: debug_x and keep_x in tenant default, five days old and now.
    let (old_ms, now_ms) = (old / 1_000_000, now / 1_000_000);
    let text = format!("debug_x 1 {old_ms}\ndebug_x 2 {now_ms}\nkeep_x 1 {old_ms}\nkeep_x 2 {now_ms}\n");
    let r = server.client.post(server.url("/api/v1/import/prometheus")).body(text).send().await.unwrap();
    assert_eq!(r.status(), 204);
    server.flush().await;
    server.stop().await;

    let mut config = test_config(dir.path());
    let rule = |tenant: &str, selector: &str, days: u64| RetentionRuleConfig {
        tenant: tenant.into(),
        selector: selector.into(),
        period: Duration::from_secs(days * 86_400),
    };
    config.retention.rule =
        vec![rule("t1", "", 2), rule("default", r#"{app="dev"}"#, 2), rule("default", r#"{__name__=~"debug_.*"}"#, 2)];
    let server = TestServer::start(config).await;
    let count = |tenant: &'static str, app: &'static str, tag: &'static str| {
        let sql = format!("SELECT count(*) AS n FROM logs WHERE app = '{app}' AND message LIKE '{tag}%'");
        let server = &server;
        async move { server.sql(tenant, &sql).await[0]["n"].as_i64().unwrap() }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count("t1", "x", "old").await != 0 || count("default", "dev", "old").await != 0 {
        assert!(std::time::Instant::now() < deadline, "the retention rules did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count("t1", "x", "new").await, 10, "today stays");
    assert_eq!(count("default", "dev", "new").await, 10, "today stays");
    assert_eq!(count("default", "prod", "old").await, 10, "what no rule matches keeps the global period");
    // Metrics: the old debug sample is gone, the old keep sample stays.
    let t = (now_ms as f64) / 1000.0;
    let v = server.promql("default", "count_over_time(debug_x[6d])", Some(t)).await;
    assert_eq!(v["data"]["result"][0]["value"][1], "1", "{v}");
    let v = server.promql("default", "count_over_time(keep_x[6d])", Some(t)).await;
    assert_eq!(v["data"]["result"][0]["value"][1], "2", "{v}");
    server.stop().await;

    // A selector kept longer than its tenant is refused, saying why.
    let mut config = test_config(dir.path());
    config.retention.rule = vec![rule("default", r#"{app="dev"}"#, 400)];
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("may only shorten"), "{err}");
}
