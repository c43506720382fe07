//! Per-tenant limits on a real server (issue 17): the tenant count survives a restart (existing tenants are
//! counted from the stores, logs and metrics alike), the ingest rate answers 429 with Retry-After, and
//! streams and series per tenant are bounded.

use bytesize::ByteSize;

use crate::harness::{TestServer, test_config};

async fn push(server: &TestServer, tenant: &str, line: &str) -> (u16, String) {
    let ns = store::time::now_ns();
    let body = serde_json::json!({"streams": [{"stream": {"job": "t"}, "values": [[ns.to_string(), line]]}]});
    let r = server
        .client
        .post(server.url("/loki/api/v1/push"))
        .header("X-Scope-OrgID", tenant)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn push_job(server: &TestServer, tenant: &str, job: &str) -> (u16, String) {
    let body = serde_json::json!({"streams": [{"stream": {"job": job}, "values": [[store::time::now_ns().to_string(), "x"]]}]});
    let r = server
        .client
        .post(server.url("/loki/api/v1/push"))
        .header("X-Scope-OrgID", tenant)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn import(server: &TestServer, tenant: &str) -> u16 {
    let r = server
        .client
        .post(server.url("/api/v1/import/prometheus"))
        .header("X-Scope-OrgID", tenant)
        .body("up 1\n")
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tenants_counts_what_the_stores_hold_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.max_tenants = 2;
    let server = TestServer::start(config.clone()).await;
    assert_eq!(push(&server, "logs-only", "a").await.0, 204);
    assert_eq!(import(&server, "metrics-only").await, 204);
    let (status, msg) = push(&server, "third", "c").await;
    assert_eq!(status, 403, "{msg}");
    assert!(msg.contains("limits.max_tenants (2)"), "{msg}");
    server.stop().await;

    let server = TestServer::start(config).await;
    assert_eq!(import(&server, "metrics-only").await, 204, "a tenant with metrics only is known after a restart");
    assert_eq!(push(&server, "logs-only", "b").await.0, 204);
    assert_eq!(push(&server, "third", "c").await.0, 403);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_ingest_rate_gets_429_and_the_others_keep_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_request_size = ByteSize::kib(64);
    config.server.max_line_size = ByteSize::kib(32);
    config.server.max_inflight_request_bytes = ByteSize::kib(64);
    config.limits.tenant_ingest_rate = ByteSize::kib(1);
    config.limits.tenant_ingest_burst = ByteSize::kib(64);
    let server = TestServer::start(config).await;
    let line = "x".repeat(30 * 1024);
    assert_eq!(push(&server, "busy", &line).await.0, 204);
    assert_eq!(push(&server, "busy", &line).await.0, 204);
    let r = server
        .client
        .post(server.url("/loki/api/v1/push"))
        .header("X-Scope-OrgID", "busy")
        .header("Content-Type", "application/json")
        .body(serde_json::json!({"streams": [{"stream": {"job": "t"}, "values": [[store::time::now_ns().to_string(), line]]}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait >= 20, "about 30 KiB missing at 1 KiB/s: {wait}");
    assert!(r.text().await.unwrap().contains("limits.tenant_ingest_rate"));
    assert_eq!(push(&server, "calm", &line).await.0, 204, "another tenant has its own bucket");
    server.stop().await;
}

/// `store.max_streams_per_tenant`: a push that would add streams past it is a 429 naming the key, nothing of
/// it stored; the tenant's existing streams keep taking entries, other tenants are not affected, and the count
/// holds across a restart. `store.max_series_per_tenant`: samples of series past it are left out and named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_series_per_tenant_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.store.max_streams_per_tenant = 3;
    config.store.max_series_per_tenant = 2;
    let server = TestServer::start(config.clone()).await;
    for job in ["a", "b", "c"] {
        assert_eq!(push_job(&server, "t1", job).await.0, 204, "{job}");
    }
    let (status, msg) = push_job(&server, "t1", "d").await;
    assert_eq!(status, 429, "{msg}");
    assert!(msg.contains("store.max_streams_per_tenant (3)"), "{msg}");
    assert_eq!(push_job(&server, "t1", "a").await.0, 204, "an existing stream still takes entries");
    assert_eq!(push_job(&server, "t2", "d").await.0, 204, "another tenant has its own count");
    assert_eq!(server.count("t1").await, 4, "nothing of the refused push was stored");

    let r = server
        .client
        .post(server.url("/api/v1/import/prometheus"))
        .header("X-Scope-OrgID", "t1")
        .body("s_one 1\ns_two 2\ns_three 3\n")
        .send()
        .await
        .unwrap();
    let (status, msg) = (r.status().as_u16(), r.text().await.unwrap());
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("2 samples stored") && msg.contains("store.max_series_per_tenant (2)"), "{msg}");
    server.stop().await;

    let server = TestServer::start(config).await;
    assert_eq!(push_job(&server, "t1", "d").await.0, 429, "the count holds across a restart");
    server.stop().await;
}
