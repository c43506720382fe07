//! The HTTP router: ingest, query, and operations (`/health`, `/ready`, `/metrics`,
//! `POST /api/v1/admin/flush`), all on one port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use auth::Scope;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use serde_json::json;
use store::{LogStore, MetricStore};

use crate::metrics::IngestMetrics;

pub use query::http::tenant;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: LogStore,
    pub metric_store: MetricStore,
    pub limits: wire::Limits,
    /// Most labels a metric series may have.
    pub max_labels_per_series: usize,
    /// The retention period: older entries are rejected at ingest.
    pub retention: std::time::Duration,
    pub ingest: Arc<IngestMetrics>,
    pub registry: Arc<Registry>,
    /// False once shutdown has begun, so that load balancers stop sending.
    pub ready: Arc<AtomicBool>,
    /// The free-space reserve: `/ready` answers 503 while it refuses writes.
    pub disk: store::DiskGuard,
    /// The configuration in effect, secrets masked, for `/api/v1/status/lumen`.
    pub config: Arc<serde_json::Value>,
    /// `server.node_name` on an ingest node, empty otherwise: how it names itself to the other nodes.
    pub node: String,
    /// On an ingest node with `query.ingest_urls`: the nodes an agent's resent batch is checked against.
    pub resend: Option<Arc<crate::ingest::resend::ResendCheck>>,
}

/// `otlp` is OTLP/HTTP's router (`ingest_otlp::router`), merged here so that the body limit and the
/// `write` scope cover it.
///
/// Every route but `/health` and `/ready` (probes) needs a token when `auth` is enabled: ingest the `write`
/// scope, queries and `/metrics` the `read` scope, `/api/v1/admin/*` the `admin` scope. The check runs
/// after routing and before the handler reads the body.
///
/// Bodies are read by [`crate::inflight::limit_body`] (time limit, in-flight budget) after the credential
/// was checked, so an unauthenticated client cannot make the server hold its body; then the tenant's limits
/// apply ([`crate::tenant_limits`]).
#[allow(clippy::too_many_arguments)]
pub fn router(
    app: AppState,
    query: query::http::QueryState,
    ruler: ruler::Ruler,
    otlp: Router,
    auth: auth::Auth,
    bodies: crate::inflight::BodyLimits,
    tenants: crate::tenant_limits::TenantLimits,
    memory: crate::memory::Pressure,
) -> Router {
    let limit = app.limits.max_body_bytes;
    let body = axum::middleware::from_fn_with_state(bodies, crate::inflight::limit_body);
    let writes = axum::middleware::from_fn_with_state(tenants.clone(), crate::tenant_limits::limit_writes);
    let queries = axum::middleware::from_fn_with_state(tenants, crate::tenant_limits::limit_queries);
    // route_layer wraps what was added before, so the guard (added last) runs first.
    let guard =
        |scope| axum::middleware::from_fn_with_state(auth::RequireScope { auth: auth.clone(), scope }, auth::require);
    let probes = Router::new().route("/health", get(|| async { "ok\n" })).route("/ready", get(ready));
    let read = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/status/lumen", get(status))
        .route_layer(guard(Scope::Read));
    let admin = Router::new()
        .route("/api/v1/admin/flush", post(flush))
        .route("/api/v1/admin/compact", post(compact))
        .route("/api/v1/admin/snapshot", post(snapshot).get(list_snapshots))
        // Prometheus' path, for tools that call it.
        .route("/api/v1/admin/tsdb/snapshot", post(snapshot))
        .route("/api/v1/admin/snapshot/{name}", axum::routing::delete(delete_snapshot))
        .route_layer(guard(Scope::Admin));
    // Another ingest node's question about an agent's resent batch: the agent's own credential, passed on.
    let resend = Router::new()
        .route(crate::ingest::resend::PRODUCER_PATH, get(crate::ingest::resend::producer_sequence))
        .route_layer(guard(Scope::Write));
    probes
        .merge(crate::ui::router())
        .merge(read)
        .merge(admin)
        .merge(resend)
        .merge(
            crate::ingest::router()
                .route_layer(writes.clone())
                .route_layer(body.clone())
                .route_layer(guard(Scope::Write)),
        )
        .with_state(app)
        .merge(
            query::http::router(query.clone())
                .route_layer(queries)
                .route_layer(body.clone())
                // Before the body is read: a query refused for memory costs nothing.
                .route_layer(axum::middleware::from_fn_with_state(memory, crate::memory::refuse_queries))
                .route_layer(guard(Scope::Read)),
        )
        .merge(query::http::delete_router(query).route_layer(body.clone()).route_layer(guard(Scope::Admin)))
        // Rules: listings and reading rule groups need `read`; writing them and reloading `admin`.
        .merge(ruler::api::read_router(ruler.clone()).route_layer(body.clone()).route_layer(guard(Scope::Read)))
        .merge(ruler::api::admin_router(ruler).route_layer(body.clone()).route_layer(guard(Scope::Admin)))
        .merge(otlp.route_layer(writes).route_layer(body).route_layer(guard(Scope::Write)))
        .layer(DefaultBodyLimit::max(limit))
}

/// 200 while the server takes writes; 503 with the reason while it shuts down or while the disk refuses
/// them (a readiness probe, not a liveness one: the server recovers by itself, see `/health`).
async fn ready(State(app): State<AppState>) -> Response {
    if !app.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match app.disk.problem() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &app.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}\n")).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

/// The metric store's figures, as the admin endpoints report them.
fn metric_stats(app: &AppState) -> serde_json::Value {
    let m = app.metric_store.stats();
    json!({"series": m.series, "parts": m.parts, "samples": m.part_rows, "disk_bytes": m.disk_bytes, "head_samples": m.head_samples})
}

/// Flushes both heads (logs and metrics) to Parquet and answers with the stores' figures.
async fn flush(State(app): State<AppState>, _headers: HeaderMap) -> Response {
    let res = async {
        app.store.flush().await?;
        app.metric_store.flush().await
    }
    .await;
    match res {
        Ok(()) => {
            let s = app.store.stats();
            let body = json!({"parts": s.parts, "part_rows": s.part_rows, "disk_bytes": s.disk_bytes, "head_rows": s.head_rows, "metrics": metric_stats(&app)});
            ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("flush failed: {e}\n")).into_response(),
    }
}

/// Enough rounds for 16^4 parts of one day, each round reading each part once.
const ADMIN_COMPACTION_ROUNDS: usize = 4;

/// Flushes, then compacts now whatever compaction would merge at its next rounds: the log store's rounds
/// run until one merges nothing (a round merges at most 16 parts per job), at most
/// [`ADMIN_COMPACTION_ROUNDS`] of them.
async fn compact(State(app): State<AppState>) -> Response {
    let res = async {
        app.store.flush().await?;
        app.metric_store.flush().await?;
        let mut merged = 0;
        for _ in 0..ADMIN_COMPACTION_ROUNDS {
            match app.store.compact().await? {
                0 => break,
                n => merged += n,
            }
        }
        Ok::<_, store::Error>((merged, app.metric_store.compact().await?))
    }
    .await;
    match res {
        Ok((merged, metric_merged)) => {
            let s = app.store.stats();
            let mut metrics = metric_stats(&app);
            metrics["merged_parts"] = json!(metric_merged);
            let body = json!({"merged_parts": merged, "parts": s.parts, "part_rows": s.part_rows, "disk_bytes": s.disk_bytes, "metrics": metrics});
            ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("compaction failed: {e}\n")).into_response(),
    }
}

/// Makes a point-in-time snapshot of the whole data directory while ingest goes on (`store::snapshot`);
/// answers as Prometheus' snapshot endpoint does, plus the path and what was linked and copied.
async fn snapshot(State(app): State<AppState>) -> Response {
    match store::snapshot::create(&app.store, &app.metric_store).await {
        Ok(s) => {
            let body = json!({"status": "success", "data": {
                "name": s.name, "path": s.path, "files": s.files,
                "linked_bytes": s.linked_bytes, "copied_bytes": s.copied_bytes,
            }});
            ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "snapshot failed");
            let body = json!({"status": "error", "errorType": "internal", "error": format!("snapshot failed: {e}")});
            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "application/json")], body.to_string())
                .into_response()
        }
    }
}

async fn list_snapshots(State(app): State<AppState>) -> Response {
    let data = app.store.data_dir_path();
    let body = json!({"status": "success", "data": store::snapshot::list(&data)});
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn delete_snapshot(
    State(app): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let data = app.store.data_dir_path();
    match tokio::task::spawn_blocking(move || store::snapshot::delete(&data, &name)).await {
        Ok(Ok(true)) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(false)) => (StatusCode::NOT_FOUND, "no snapshot by that name\n").into_response(),
        Ok(Err(e @ store::Error::Config(_))) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `GET /api/v1/status/lumen`: what the web UI's status page shows: version, uptime, storage, the disk,
/// ingest totals per protocol, and the configuration in effect (secrets masked).
async fn status(State(app): State<AppState>) -> Response {
    let process = crate::process_metrics::read();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let logs = app.store.stats();
    let mut text = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut text, &app.registry);
    // Ingest totals by protocol, read back from the metrics (the counters are the source of truth).
    let mut ingest = serde_json::Map::new();
    for (family, key) in [("lumen_ingest_lines_total{", "lines"), ("lumen_ingest_samples_total{", "samples")] {
        let mut by = serde_json::Map::new();
        for line in text.lines().filter(|l| l.starts_with(family)) {
            let proto = line.split("protocol=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("");
            let v: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            by.insert(proto.to_string(), json!(v));
        }
        ingest.insert(key.to_string(), serde_json::Value::Object(by));
    }
    let mqtt_open = text
        .lines()
        .find(|l| l.starts_with("lumen_mqtt_endpoint_connections_open "))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    let body = json!({
        "version": crate::process_metrics::VERSION,
        "revision": crate::process_metrics::REVISION,
        "uptime_seconds": (now - process.start_time_seconds).max(0.0),
        "process": {"resident_bytes": process.resident_bytes, "cpu_seconds": process.cpu_seconds, "open_fds": process.open_fds},
        "storage": {
            "logs": {"parts": logs.parts, "rows": logs.part_rows, "disk_bytes": logs.disk_bytes, "head_rows": logs.head_rows},
            "metrics": metric_stats(&app),
            "retention_seconds": app.retention.as_secs(),
            "disk": {
                "free_bytes": app.disk.free(),
                "reserve_bytes": app.disk.reserve(),
                "budget_bytes": app.disk.budget().unwrap_or(0),
                "problem": app.disk.problem(),
            },
        },
        "ingest": ingest,
        "mqtt": {"endpoint_connections": mqtt_open},
        "config": app.config.as_ref(),
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The configuration as JSON with every secret masked: values of keys that name a password, token or
/// secret (not the `*_file` keys, which are paths) become "***" when set.
pub fn masked_config(config: &crate::config::Config) -> serde_json::Value {
    fn mask(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    let secret = ["password", "token", "secret"].iter().any(|s| k.contains(s)) && !k.ends_with("_file");
                    if secret && v.as_str().is_some_and(|s| !s.is_empty()) {
                        *v = json!("***");
                    } else {
                        mask(v);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(mask),
            _ => {}
        }
    }
    let mut config = config.clone();
    config.ruler = config.ruler.masked();
    let mut v = serde_json::to_value(&config).unwrap_or_default();
    mask(&mut v);
    v
}
