use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use bytesize::ByteSize;
use tower::ServiceExt;

use super::{TenantLimits, limit_queries, limit_writes};
use crate::config::LimitsConfig;

fn app(limits: &TenantLimits) -> Router {
    let writes = Router::new()
        .route("/write", post(|| async { "stored" }))
        .route_layer(axum::middleware::from_fn_with_state(limits.clone(), limit_writes));
    let queries = Router::new()
        .route(
            "/query",
            post(|body: String| async move {
                // "slow" holds its slot for a while, as a heavy query does.
                if body == "slow" {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                }
                "answered"
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(limits.clone(), limit_queries));
    writes.merge(queries)
}

fn req(path: &str, tenant: &str, body: &'static str) -> Request<Body> {
    Request::post(path).header("X-Scope-OrgID", tenant).body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn a_tenant_over_its_ingest_rate_gets_429_with_retry_after_and_others_do_not() {
    let config = LimitsConfig {
        tenant_ingest_rate: ByteSize::b(10),
        tenant_ingest_burst: ByteSize::b(40),
        ..LimitsConfig::default()
    };
    let limits = TenantLimits::new(config, []);
    let app = app(&limits);
    let body = "0123456789012345678901234567890"; // 31 bytes: one fits the burst, two do not
    assert_eq!(app.clone().oneshot(req("/write", "a", body)).await.unwrap().status(), StatusCode::OK);
    let resp = app.clone().oneshot(req("/write", "a", body)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((2..=3).contains(&wait), "22 bytes missing at 10 bytes/s: {wait}");
    let text = axum::body::to_bytes(resp.into_body(), 1000).await.unwrap();
    assert!(String::from_utf8_lossy(&text).contains("limits.tenant_ingest_rate"));
    assert_eq!(app.oneshot(req("/write", "b", body)).await.unwrap().status(), StatusCode::OK, "b has its own bucket");
}

#[tokio::test]
async fn a_new_tenant_past_max_tenants_is_refused_and_existing_ones_keep_writing() {
    let config = LimitsConfig { max_tenants: 2, ..LimitsConfig::default() };
    let limits = TenantLimits::new(config, ["old".to_string()]);
    let app = app(&limits);
    assert_eq!(app.clone().oneshot(req("/write", "new", "x")).await.unwrap().status(), StatusCode::OK);
    let resp = app.clone().oneshot(req("/write", "third", "x")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let text = axum::body::to_bytes(resp.into_body(), 1000).await.unwrap();
    assert!(String::from_utf8_lossy(&text).contains("limits.max_tenants (2)"));
    for t in ["old", "new"] {
        assert_eq!(app.clone().oneshot(req("/write", t, "x")).await.unwrap().status(), StatusCode::OK, "{t}");
    }
}

#[tokio::test]
async fn queries_past_a_tenants_concurrency_wait_then_get_503_while_other_tenants_run() {
    let config = LimitsConfig {
        tenant_max_concurrent_queries: 1,
        tenant_query_queue_timeout: Duration::from_millis(200),
        ..LimitsConfig::default()
    };
    let limits = TenantLimits::new(config, []);
    let app = app(&limits);
    let slow = tokio::spawn(app.clone().oneshot(req("/query", "a", "slow")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = app.clone().oneshot(req("/query", "a", "fast")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    let text = axum::body::to_bytes(resp.into_body(), 1000).await.unwrap();
    assert!(String::from_utf8_lossy(&text).contains("limits.tenant_max_concurrent_queries (1)"));
    assert_eq!(app.clone().oneshot(req("/query", "b", "fast")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(app.oneshot(req("/query", "a", "fast")).await.unwrap().status(), StatusCode::OK, "the slot is back");
}

#[test]
fn invalid_tenant_names_take_no_place_and_idle_query_slots_are_forgotten() {
    let limits = TenantLimits::new(LimitsConfig { max_tenants: 1, ..LimitsConfig::default() }, []);
    for bad in ["../etc", "", "a b"] {
        assert!(limits.check_write(bad, 1).is_ok(), "left to the handler's 400");
    }
    assert!(limits.check_write("real", 1).is_ok(), "the place is still free");
    let slots = limits.query_slots("q");
    limits.release_idle("q", &slots);
    assert!(limits.0.queries.lock().is_empty());
}

#[test]
fn mqtt_waits_for_the_rate_and_is_refused_past_max_tenants() {
    let config = LimitsConfig {
        max_tenants: 2,
        tenant_ingest_rate: ByteSize::b(100),
        tenant_ingest_burst: ByteSize::b(1000),
        ..LimitsConfig::default()
    };
    let limits = TenantLimits::new(config, ["default".to_string()]);
    let admit = limits.stream_admit();
    // A batch larger than the burst passes once the bucket is full...
    assert!(admit("default", 5000).is_ok());
    // ...and leaves it 4000 bytes in debt: the next one waits for the rate to pay for both, 41 s at 100 B/s.
    let r = admit("default", 100).unwrap_err();
    assert_eq!(r.retry_after, Some(Duration::from_secs(41)), "{r:?}");
    assert!(r.message.contains("limits.tenant_ingest_rate"), "{}", r.message);
    // A second tenant is fine; a third is refused for good.
    assert!(admit("b", 10).is_ok());
    let r = admit("c", 10).unwrap_err();
    assert_eq!(r.retry_after, None);
    assert!(r.message.contains("limits.max_tenants (2)"), "{}", r.message);
}

#[tokio::test]
async fn rule_evaluations_take_a_query_slot_and_wait_behind_the_tenants_queries() {
    use ruler::backend::QueryGate;
    let config = LimitsConfig {
        tenant_max_concurrent_queries: 1,
        tenant_query_queue_timeout: Duration::from_millis(200),
        ..LimitsConfig::default()
    };
    let limits = TenantLimits::new(config, []);
    let metrics = crate::memory::MemoryMetrics::default();
    let gate = super::RuleGate { limits: limits.clone(), pressure: crate::memory::Pressure::new(None, metrics) };
    let (a, b) = (store::model::Tenant::new("a").unwrap(), store::model::Tenant::new("b").unwrap());
    // A query of tenant a holds its only slot: a's rule waits, then fails naming the limit; b's runs.
    let held = limits.query_slot("a").await.unwrap();
    let err = gate.enter(&a).await.err().expect("the slot is taken");
    assert!(err.contains("limits.tenant_max_concurrent_queries (1)"), "{err}");
    let b_slot = gate.enter(&b).await.expect("another tenant's slot");
    drop(held);
    let rule = gate.enter(&a).await.expect("the slot is back");
    // While the rule runs, a's HTTP queries wait for it.
    let app = app(&limits);
    let resp = app.clone().oneshot(req("/query", "a", "fast")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(rule);
    drop(b_slot);
    assert_eq!(app.oneshot(req("/query", "a", "fast")).await.unwrap().status(), StatusCode::OK);
    assert!(limits.0.queries.lock().is_empty(), "idle tenants are forgotten");
}
