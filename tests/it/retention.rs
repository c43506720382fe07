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
