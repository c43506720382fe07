//! The ingest node's side of [`crate::peers`]: a query node's request for the rows it does not hold.
//! Guarded like every query route (the `read` scope, the caller's tenant); answered only by the writer.

#![allow(clippy::result_large_err)] // handlers answer their errors as responses, as the other query modules do

use std::collections::HashSet;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::QueryState;
use crate::peers::{self, DeltaHead, LogDeltaRequest, MetricDeltaRequest};

pub fn routes() -> Router<QueryState> {
    Router::new()
        .route(peers::LOGS_PATH, post(logs))
        .route(peers::METRICS_PATH, post(metrics))
        .route(peers::METRIC_CHANGES_PATH, post(metric_changes))
}

/// What changed in this writer's samples since a query node's mark (its results cache).
async fn metric_changes(State(state): State<QueryState>, headers: HeaderMap, body: Bytes) -> Response {
    let res = async {
        let tenant = super::tenant(&headers)?;
        let req: peers::ChangesRequest =
            serde_json::from_slice(&body).map_err(|e| bad(format!("invalid changes request: {e}")))?;
        refuse_unless_writer(&state, &req.node)?;
        // The mark first: an append from here on is in the next answer.
        let mark = state.metric_store.change_mark();
        let changed_since = req.since.map_or(i64::MIN, |m| state.metric_store.changed_since(&tenant, m));
        Ok::<_, Response>(axum::Json(peers::ChangesAnswer { mark, changed_since }).into_response())
    }
    .await;
    res.unwrap_or_else(|r| r)
}

fn bad(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

fn refuse_unless_writer(state: &QueryState, node: &str) -> Result<(), Response> {
    if node != state.node {
        let this = if state.node.is_empty() {
            "the prefix's own writer".to_string()
        } else {
            format!("node {:?}", state.node)
        };
        return Err((
            StatusCode::CONFLICT,
            format!("this is {this}, not the ingest node {node:?} the request is for\n"),
        )
            .into_response());
    }
    if (state.serves_delta)() {
        return Ok(());
    }
    Err((
        StatusCode::CONFLICT,
        "this node does not hold the bucket's writer lease: the lease holder answers for the rows not in the bucket yet\n",
    )
        .into_response())
}

fn answer(body: Result<Vec<u8>, String>) -> Response {
    match body {
        Ok(b) => ([(header::CONTENT_TYPE, "application/vnd.lumen.delta")], b).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}\n")).into_response(),
    }
}

fn matchers(wire: &[peers::WireMatcher]) -> Result<Vec<store::LabelMatcher>, Response> {
    wire.iter().map(|m| m.to_store().map_err(|e| bad(format!("invalid matcher {}: {e}", m.name)))).collect()
}

async fn logs(State(state): State<QueryState>, headers: HeaderMap, body: Bytes) -> Response {
    let res = async {
        let tenant = super::tenant(&headers)?;
        let req: LogDeltaRequest =
            serde_json::from_slice(&body).map_err(|e| bad(format!("invalid log delta request: {e}")))?;
        refuse_unless_writer(&state, &req.node)?;
        let scan = store::ScanRequest {
            tenant: tenant.clone(),
            start_ns: req.start_ns,
            end_ns: req.end_ns,
            matchers: matchers(&req.matchers)?,
            line_contains: req.line_contains,
            columns: req.columns,
            stream_limit: req.stream_limit.map(|(rows, newest)| store::StreamLimit { rows, newest }),
            parts: store::PartFilter::All,
            fields_present: Vec::new(),
        };
        let have: HashSet<u64> = req.have.into_iter().collect();
        let want_schema = req.schema;
        // The rows held for the answer count against `query.max_samples` (16 bytes each), as a LogQL
        // query's do.
        let budget = state.config.max_samples.saturating_mul(16);
        let store = state.store.clone();
        let collected = tokio::task::spawn_blocking(move || {
            // Before the snapshot: a request processed meanwhile rewrote parts the query node may keep.
            let deletes = store.pending_deletes(&tenant);
            let (keep, schema, tasks) = store.plan_delta(scan, have);
            let (mut batches, mut held, mut over) = (Vec::new(), 0usize, false);
            let mut ids: HashSet<u64> = HashSet::new();
            for task in tasks {
                task.run(|b| {
                    held = held.saturating_add(b.get_array_memory_size());
                    if held > budget {
                        over = true;
                        return false;
                    }
                    if let Some(c) = b.column_by_name(store::STREAM_ID) {
                        use arrow::array::AsArray;
                        ids.extend(c.as_primitive::<arrow::datatypes::UInt64Type>().values().iter().copied());
                    }
                    batches.push(b);
                    true
                })
                .map_err(|e| e.to_string())?;
                if over {
                    return Err(format!(
                        "the rows not in the bucket yet that this selection reads exceed query.max_samples \
                         ({} samples of 16 bytes): narrow the selector or the time range",
                        budget / 16
                    ));
                }
            }
            let streams: Vec<(u64, Vec<(String, String)>)> = store
                .stream_labels(&tenant, ids)
                .into_iter()
                .map(|(id, l)| (id, l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
                .collect();
            let (labels, fields) = if want_schema {
                (store.label_names(&tenant).into_iter().collect(), store.field_names(&tenant).into_iter().collect())
            } else {
                (Vec::new(), Vec::new())
            };
            let head = DeltaHead { keep, streams, deletes, labels, fields, ..DeltaHead::default() };
            Ok(peers::encode(&head, &schema, &batches))
        })
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("delta task failed: {e}\n")).into_response())?
        .map_err(bad)?;
        Ok::<_, Response>(answer(collected))
    }
    .await;
    res.unwrap_or_else(|e| e)
}

async fn metrics(State(state): State<QueryState>, headers: HeaderMap, body: Bytes) -> Response {
    let res = async {
        let tenant = super::tenant(&headers)?;
        let req: MetricDeltaRequest =
            serde_json::from_slice(&body).map_err(|e| bad(format!("invalid metric delta request: {e}")))?;
        refuse_unless_writer(&state, &req.node)?;
        let matchers = matchers(&req.matchers)?;
        let max = req.max_samples.min(state.config.max_samples);
        let store = state.metric_store.clone();
        let have: HashSet<u64> = req.have.into_iter().collect();
        let body = tokio::task::spawn_blocking(move || {
            // Before the snapshot, as for logs.
            let deletes = store.pending_deletes(&tenant);
            let (keep, series) =
                store.select_delta(&tenant, &matchers, req.mint, req.maxt, max, have).map_err(|e| match e {
                    store::Error::TooManySamples { limit } => format!(
                        "the samples not in the bucket yet that this selection reads exceed query.max_samples ({limit})"
                    ),
                    e => format!("reading the metric store failed: {e}"),
                })?;
            Ok::<_, String>(peers::encode_metrics(keep, &series, deletes))
        })
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("delta task failed: {e}\n")).into_response())?
        .map_err(bad)?;
        Ok::<_, Response>(answer(body))
    }
    .await;
    res.unwrap_or_else(|e| e)
}
