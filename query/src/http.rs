//! The query HTTP handlers and what they share: the tenant header, error envelopes, and timing.
//! **API Boundary:** only this module knows the JSON shapes of the query APIs.

pub mod delete;
pub mod delta;
pub mod loki;
pub mod prom;
pub mod prom_cache;
pub mod sql;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use store::model::Tenant;
use store::{LogStore, MetricStore};

use crate::config::QueryConfig;
use crate::metrics::QueryMetrics;

/// The header that names the tenant, as in Loki.
pub const TENANT_HEADER: &str = "X-Scope-OrgID";

/// What every query handler needs.
#[derive(Clone)]
pub struct QueryState {
    pub store: LogStore,
    pub metric_store: MetricStore,
    pub config: QueryConfig,
    pub metrics: Arc<QueryMetrics>,
    /// The runtime all SQL queries share (its memory pool is `config.sql_max_memory`).
    pub sql_runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    /// Live tails running now, at most `config.max_concurrent_tails`.
    pub tails: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the server stops: live tails close their WebSockets (they outlive the HTTP
    /// server's graceful shutdown otherwise, and hold the stores).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// On a query node: the ingest nodes it asks for what the bucket does not hold yet.
    pub peers: Option<Arc<crate::peers::Peers>>,
    /// Whether this node answers a query node's delta requests (it holds the bucket's writer lease, or
    /// has no bucket); see [`crate::peers`].
    pub serves_delta: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The bucket tree this node answers delta requests for: its `server.node_name` when it is an ingest
    /// node (`server.role = "ingest"`), empty otherwise (see [`crate::peers`]).
    pub node: String,
    /// On a query node, the trees it reads (see [`crate::peers::TreeSet`]).
    pub trees: crate::peers::Trees,
    /// Results of PromQL range queries (see [`prom_cache`]).
    pub results_cache: Arc<prom_cache::ResultsCache>,
    /// The `Authorization` of the request this clone serves, passed on to the ingest nodes.
    caller_auth: Option<axum::http::HeaderValue>,
    /// On an ingest node: records a delete request in a retired tree, for a query node (see
    /// [`delete`]).
    pub retired_deletes: Option<RetiredDeletes>,
}

/// Records a delete request (tree's node, tenant, logs rather than samples, the request) in a retired tree:
/// Ok, or the status and message to answer.
pub type RetiredDeletes = Arc<
    dyn Fn(
            String,
            store::model::Tenant,
            bool,
            store::delete::DeleteSpec,
        ) -> futures::future::BoxFuture<'static, Result<(), (axum::http::StatusCode, String)>>
        + Send
        + Sync,
>;

impl QueryState {
    /// # Errors
    /// DataFusion's error building the SQL runtime.
    pub fn new(
        store: LogStore,
        metric_store: MetricStore,
        config: QueryConfig,
        metrics: Arc<QueryMetrics>,
    ) -> datafusion::error::Result<QueryState> {
        let max = usize::try_from(config.sql_max_memory.as_u64()).unwrap_or(usize::MAX);
        let sql_runtime = crate::sql::runtime(max)?;
        let tails = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_tails.max(1)));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let cache_bytes = usize::try_from(config.results_cache_max_bytes.as_u64()).unwrap_or(usize::MAX);
        let results_cache = Arc::new(prom_cache::ResultsCache::new(cache_bytes, metrics.results_cache.clone()));
        Ok(QueryState {
            store,
            metric_store,
            config,
            metrics,
            sql_runtime,
            tails,
            shutdown,
            peers: None,
            serves_delta: Arc::new(|| true),
            node: String::new(),
            trees: crate::peers::Trees::default(),
            results_cache,
            caller_auth: None,
            retired_deletes: None,
        })
    }

    /// An ingest node on a bucket: a query node's delete may name a retired tree (see [`delete`]).
    pub fn with_retired_deletes(mut self, f: RetiredDeletes) -> QueryState {
        self.retired_deletes = Some(f);
        self
    }

    /// A query node: selections also ask `peers` (see [`crate::peers`]), and this node answers no delta.
    pub fn with_peers(mut self, peers: Arc<crate::peers::Peers>) -> QueryState {
        self.peers = Some(peers);
        self.serves_delta = Arc::new(|| false);
        self
    }

    /// Whether this node answers delta requests, asked at each one (the writer lease comes and goes).
    pub fn with_serves_delta(mut self, serves: Arc<dyn Fn() -> bool + Send + Sync>) -> QueryState {
        self.serves_delta = serves;
        self
    }

    /// An ingest node: it answers delta requests for its own tree only.
    pub fn with_node(mut self, node: String) -> QueryState {
        self.node = node;
        self
    }

    /// A query node: it reads these trees (shared with the loop that discovers and follows them).
    pub fn with_trees(mut self, trees: crate::peers::Trees) -> QueryState {
        self.trees = trees;
        self
    }

    /// The trees a query reads now.
    pub fn tree_set(&self) -> crate::peers::TreeSet {
        self.trees.read().clone()
    }

    /// This state for one request: a query node passes the caller's credential on to its ingest nodes.
    pub fn for_caller(&self, headers: &HeaderMap) -> QueryState {
        let mut s = self.clone();
        if s.peers.is_some() {
            s.caller_auth = headers.get(axum::http::header::AUTHORIZATION).cloned();
        }
        s
    }

    /// One query's calls to the ingest nodes, with the caller's credential (see [`QueryState::for_caller`]);
    /// None when this is no query node.
    pub fn peer_call(&self) -> Option<crate::peers::PeerCall> {
        let peers = self.peers.clone()?;
        Some(crate::peers::PeerCall::new(peers, self.caller_auth.clone()).with_trees(&self.tree_set()))
    }

    /// Live tails end when `shutdown` is cancelled.
    pub fn with_shutdown(mut self, shutdown: tokio_util::sync::CancellationToken) -> QueryState {
        self.shutdown = shutdown;
        self
    }
}

/// The routes of the query APIs.
pub fn router(state: QueryState) -> Router {
    Router::new()
        .route("/api/v1/sql", axum::routing::get(sql::handle).post(sql::handle))
        .merge(delta::routes())
        .merge(loki::routes().route_layer(axum::middleware::from_fn_with_state(state.clone(), loki::observe)))
        .merge(prom::routes().route_layer(axum::middleware::from_fn_with_state(state.clone(), prom::observe)))
        // A query node completes label and series answers with its ingest nodes' (see `crate::peers`).
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::peers::union_metadata))
        .with_state(state)
}

/// The delete routes (Loki's `/loki/api/v1/delete`, Prometheus' `delete_series`): destructive, so the
/// server guards them with the `admin` scope rather than `read`.
pub fn delete_router(state: QueryState) -> Router {
    delete::routes().with_state(state)
}

/// The tenant named by `X-Scope-OrgID`, or `default`.
///
/// # Errors
/// A 400 response naming the invalid tenant id.
#[allow(clippy::result_large_err)]
pub fn tenant(headers: &HeaderMap) -> Result<Tenant, Response> {
    match headers.get(TENANT_HEADER) {
        None => Ok(Tenant::default_tenant()),
        Some(v) => {
            let v = v.to_str().map_err(|_| {
                (StatusCode::BAD_REQUEST, format!("{TENANT_HEADER} is not valid ASCII\n")).into_response()
            })?;
            Tenant::new(v.trim()).map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response())
        }
    }
}
