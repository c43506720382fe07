//! Deleting data, with the APIs clients already call (issue 18 §2):
//!
//! - logs, as Loki's compactor: `POST /loki/api/v1/delete?query=<selector with line filters>&start=&end=`
//!   (204), `GET /loki/api/v1/delete` (the tenant's requests), `DELETE /loki/api/v1/delete?request_id=`
//!   (cancel before it is processed);
//! - metrics, as Prometheus: `POST`/`PUT /api/v1/admin/tsdb/delete_series?match[]=&start=&end=` (204).
//!
//! The store keeps each request durably and hides what it covers from every read at once; see
//! `store::delete` for when it leaves the disk. These routes need the `admin` scope.
//!
//! A query node (issue 22) records nothing itself: it sends each delete request to every ingest node in
//! `query.ingest_urls` (each holds its own share of the data) and answers 204 only when all took it. Its
//! list merges the nodes' requests of one query and range into one entry whose `request_id` joins their
//! ids with commas; a cancel with such an id goes to every node. A tree whose node stopped for good
//! (retired: nothing writes it any more) that holds data of the tenant gets the request first, through
//! one ingest node: the query node sends it the same request with [`RETIRED_TREE_HEADER`] naming the
//! tree, and that node records it in the tree under the tree's writer lease (`src/retired.rs`), committed
//! as the tree's next commit; query nodes hide what it covers once they follow that commit (within
//! `storage.sync_interval`), a later round rewrites the parts, and the node, if it comes back, adopts it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use store::delete::{Cancel, DeleteSpec, LineOp};

use super::QueryState;
use super::loki::{Params, parse_time};
use crate::logql::ast::{Expr, FilterOp, Stage};

const LOKI_PATH: &str = "/loki/api/v1/delete";
const PROM_PATH: &str = "/api/v1/admin/tsdb/delete_series";

/// On a delete request to an ingest node: record it in the retired tree of this node name ("" for the
/// prefix's own tree) rather than in this node's stores. Query nodes set it; it needs the admin scope as
/// any delete.
pub const RETIRED_TREE_HEADER: &str = "X-Lumen-Retired-Tree";

/// The delete routes.
pub fn routes() -> Router<QueryState> {
    Router::new()
        .route(LOKI_PATH, post(loki_delete).get(loki_list).delete(loki_cancel))
        .route(PROM_PATH, post(delete_series).put(delete_series))
}

/// What a query node does with a delete route's answers from its ingest nodes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fan {
    /// A new request: every node must take it.
    Record,
    /// The list: merged.
    List,
    /// A cancel: whichever node holds the id.
    Cancel,
}

/// On a query node, sends the request to every ingest node and answers from theirs (see the module
/// documentation); None elsewhere.
async fn fan_out(
    state: &QueryState,
    method: axum::http::Method,
    path: &str,
    raw: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
    fan: Fan,
) -> Option<Response> {
    let peers = state.peers.as_ref()?;
    if fan == Fan::Cancel {
        // A merged entry's id names one request on each node.
        let p = Params::from(headers.clone(), raw, &body);
        let ids: Vec<String> = p.get("request_id").unwrap_or("").split(',').map(str::to_string).collect();
        let mut cancelled = 0;
        let mut refusal = None;
        let mut errors = Vec::new();
        for id in ids.iter().filter(|id| !id.is_empty()) {
            let q = form_urlencoded::Serializer::new(String::new()).append_pair("request_id", id).finish();
            for (url, answer) in peers.broadcast(&method, &format!("{path}?{q}"), headers, Bytes::new(), 1 << 20).await
            {
                match answer {
                    Ok((s, _)) if s.is_success() => cancelled += 1,
                    Ok((s, _)) if s == reqwest::StatusCode::NOT_FOUND => {}
                    Ok((s, b)) if s.is_client_error() => refusal = Some(String::from_utf8_lossy(&b).trim().to_string()),
                    Ok((s, b)) => errors.push(format!("{url}: {s}: {}", String::from_utf8_lossy(&b).trim())),
                    Err(e) => errors.push(e),
                }
            }
        }
        return Some(if !errors.is_empty() {
            unavailable(&errors, "the cancel")
        } else if let Some(r) = refusal {
            bad(r)
        } else if cancelled > 0 {
            StatusCode::NO_CONTENT.into_response()
        } else {
            (StatusCode::NOT_FOUND, "no delete request by that id on any ingest node\n").into_response()
        });
    }
    let query = if fan == Fan::Record { with_end(path, raw, headers, &body) } else { raw.unwrap_or("").to_string() };
    let path_and_query = if query.is_empty() { path.to_string() } else { format!("{path}?{query}") };
    if fan == Fan::Record {
        let tenant = match super::tenant(headers) {
            Ok(t) => t,
            Err(r) => return Some(r),
        };
        // The retired trees first, each through one ingest node: a request they cannot take is refused
        // before any live node recorded it.
        for (node, name) in retired_with_data(state, &tenant, path == LOKI_PATH) {
            let extra = [(RETIRED_TREE_HEADER, node)];
            match peers.first_answer(&method, &path_and_query, headers, &extra, body.clone(), 1 << 20).await {
                Ok((_, s, _)) if s.is_success() => {}
                Ok((url, s, b)) => {
                    let status = StatusCode::from_u16(s.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                    let why = format!(
                        "the delete request for the retired tree of {name} (through {url}): {}",
                        String::from_utf8_lossy(&b).trim()
                    );
                    return Some(refusal(path, status, why));
                }
                Err(errors) => {
                    return Some(unavailable(&errors, &format!("the delete request for the retired tree of {name}")));
                }
            }
        }
    }
    let answers = peers.broadcast(&method, &path_and_query, headers, body, 64 << 20).await;
    let mut errors = Vec::new();
    let mut lists = Vec::new();
    for (url, answer) in answers {
        match answer {
            Ok((s, b)) if s.is_success() => {
                if fan == Fan::List {
                    match serde_json::from_slice::<Vec<serde_json::Value>>(&b) {
                        Ok(l) => lists.push(l),
                        Err(e) => errors.push(format!("{url}: {e}")),
                    }
                }
            }
            // The request itself is wrong (or a limit): every node says the same.
            Ok((s, b)) if s == reqwest::StatusCode::BAD_REQUEST => {
                let mut r = (StatusCode::BAD_REQUEST, b).into_response();
                if let Some(ct) = headers_content_type(&path_and_query) {
                    r.headers_mut().insert(axum::http::header::CONTENT_TYPE, ct);
                }
                return Some(r);
            }
            Ok((s, b)) => errors.push(format!("{url}: {s}: {}", String::from_utf8_lossy(&b).trim())),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Some(unavailable(&errors, if fan == Fan::List { "the list" } else { "the delete request" }));
    }
    Some(match fan {
        Fan::List => axum::Json(merge_lists(lists)).into_response(),
        _ => StatusCode::NO_CONTENT.into_response(),
    })
}

/// A new request's query string as the nodes get it: Loki's default end is "now", made one instant for
/// every node (and retired tree), so that their requests are the same.
fn with_end(path: &str, raw: Option<&str>, headers: &HeaderMap, body: &Bytes) -> String {
    let query = raw.unwrap_or("").to_string();
    if path != LOKI_PATH || Params::from(headers.clone(), raw, body).get("end").is_some() {
        return query;
    }
    let now = format!("{:.9}", store::time::now_ns() as f64 / 1e9);
    let end = form_urlencoded::Serializer::new(String::new()).append_pair("end", &now).finish();
    if query.is_empty() { end } else { format!("{query}&{end}") }
}

/// An error answer in the API's own form: Prometheus' JSON, Loki's text.
fn refusal(path: &str, status: StatusCode, why: String) -> Response {
    if path == LOKI_PATH {
        (status, format!("{why}\n")).into_response()
    } else {
        (status, axum::Json(json!({"status": "error", "errorType": "execution", "error": why}))).into_response()
    }
}

/// On a query node, the retired trees (see `TreeSet::retired`) holding data of `tenant` (logs, else
/// samples): their node's name ("" for the prefix's own tree) and how a message names them.
fn retired_with_data(state: &QueryState, tenant: &store::model::Tenant, logs: bool) -> Vec<(String, String)> {
    let set = state.tree_set();
    let name = |node: &str| {
        if node.is_empty() {
            "the server of the prefix's own commits".to_string()
        } else {
            format!("ingest node {node}")
        }
    };
    let mut out = Vec::new();
    if logs {
        for (node, store) in set.log_stores(&state.store) {
            if set.retired.contains(node) && !store.series(tenant, &[], 0, i64::MAX).is_empty() {
                out.push((node.to_string(), name(node)));
            }
        }
    } else {
        for (node, store) in set.metric_stores(&state.metric_store) {
            if set.retired.contains(node) && store.series(tenant, &[], 0, i64::MAX).is_ok_and(|s| !s.is_empty()) {
                out.push((node.to_string(), name(node)));
            }
        }
    }
    out
}

/// Prometheus' delete answers its errors as JSON; Loki's as text.
fn headers_content_type(path_and_query: &str) -> Option<axum::http::HeaderValue> {
    path_and_query.starts_with("/api/v1/").then(|| axum::http::HeaderValue::from_static("application/json"))
}

fn unavailable(errors: &[String], what: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{what} did not reach every ingest node ({}); send it again: a node that has a request already records \
             it a second time, which deletes nothing more\n",
            errors.join("; ")
        ),
    )
        .into_response()
}

/// The ingest nodes' lists as one: the requests of one query and range become one entry.
fn merge_lists(lists: Vec<Vec<serde_json::Value>>) -> Vec<serde_json::Value> {
    let mut merged: Vec<serde_json::Value> = Vec::new();
    for entry in lists.into_iter().flatten() {
        let same =
            merged.iter_mut().find(|m| ["query", "start_time", "end_time"].iter().all(|k| m.get(*k) == entry.get(*k)));
        match same {
            None => merged.push(entry),
            Some(m) => {
                let id = format!(
                    "{},{}",
                    m["request_id"].as_str().unwrap_or(""),
                    entry["request_id"].as_str().unwrap_or("")
                );
                m["request_id"] = json!(id);
                if entry["status"] == "received" {
                    m["status"] = json!("received");
                }
                if entry["created_at"].as_f64() < m["created_at"].as_f64() {
                    m["created_at"] = entry["created_at"].clone();
                }
            }
        }
    }
    merged
}

fn bad(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response()
}

/// A Loki delete query as a store request: a stream selector and line filters only, as Loki allows.
fn loki_spec(query: &str, start_ns: i64, end_ns: i64) -> Result<DeleteSpec, String> {
    let expr = crate::logql::parser::parse(query).map_err(|e| e.to_string())?;
    let Expr::Log(log) = expr else {
        return Err("a delete query is a log selector with optional line filters, not a metric query".into());
    };
    let mut line_filters = Vec::new();
    for stage in &log.stages {
        let Stage::LineFilter(f) = stage else {
            return Err("a delete query may only have line filters (|=, !=, |~, !~) after its selector".into());
        };
        let op = match f.op {
            FilterOp::Contains => LineOp::Contains,
            FilterOp::NotContains => LineOp::NotContains,
            FilterOp::Regex => LineOp::Matches,
            FilterOp::NotRegex => LineOp::NotMatches,
            FilterOp::Pattern | FilterOp::NotPattern => {
                return Err("pattern line filters (|>, !>) are not supported in a delete query".into());
            }
        };
        if f.values.len() != 1 {
            return Err("`or` between line filter values is not supported in a delete query".into());
        }
        line_filters.push((op, f.values[0].text.clone()));
    }
    Ok(DeleteSpec {
        query: query.to_string(),
        matchers: vec![log.matchers.iter().map(store::delete::matcher_spec).collect()],
        line_filters,
        start_ns,
        end_ns,
    })
}

/// The tenant and the parameters (query string or form body) of a delete route.
#[allow(clippy::result_large_err)]
fn request(headers: HeaderMap, raw: Option<&str>, body: &[u8]) -> Result<(store::model::Tenant, Params), Response> {
    let tenant = super::tenant(&headers)?;
    Ok((tenant, Params::from(headers, raw, body)))
}

fn store_failure(e: &store::Error) -> Response {
    match e {
        store::Error::Config(msg) => bad(msg),
        store::Error::InvalidTenant { .. } | store::Error::ReadOnly { .. } => bad(e),
        _ => {
            tracing::error!(error = %e, "could not record a delete request");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("could not record the delete request: {e}\n")).into_response()
        }
    }
}

async fn loki_delete(
    State(state): State<QueryState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let post = axum::http::Method::POST;
    if let Some(r) = fan_out(&state, post, LOKI_PATH, raw.as_deref(), &headers, body.clone(), Fan::Record).await {
        return r;
    }
    let retired = retired_tree(&headers);
    let (tenant, p) = match request(headers, raw.as_deref(), &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(query) = p.get("query").filter(|q| !q.trim().is_empty()) else {
        return bad("query parameter is required: the stream selector (and line filters) of what to delete");
    };
    let time = |key: &str, default: i64| match p.get(key) {
        None => Ok(default),
        Some(v) => parse_time(v).ok_or_else(|| format!("invalid {key} {v:?}: Unix seconds or RFC3339")),
    };
    let (start, end) = match (time("start", 0), time("end", store::time::now_ns())) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(r), _) | (_, Err(r)) => return bad(r),
    };
    let spec = match loki_spec(query, start, end) {
        Ok(s) => s,
        Err(e) => return bad(format!("invalid delete query {query:?}: {e}")),
    };
    if let Some(node) = retired {
        return in_retired_tree(&state, node, tenant, true, spec).await;
    }
    match state.store.request_delete(&tenant, spec) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => store_failure(&e),
    }
}

async fn loki_list(State(state): State<QueryState>, headers: HeaderMap) -> Response {
    let get = axum::http::Method::GET;
    if let Some(r) = fan_out(&state, get, LOKI_PATH, None, &headers, Bytes::new(), Fan::List).await {
        return r;
    }
    let tenant = match super::tenant(&headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let list: Vec<serde_json::Value> = state
        .store
        .delete_requests(&tenant)
        .into_iter()
        .map(|r| {
            json!({
                "request_id": r.id,
                "start_time": r.spec.start_ns as f64 / 1e9,
                "end_time": r.spec.end_ns as f64 / 1e9,
                "query": r.spec.query,
                "status": match r.status { store::delete::DeleteStatus::Received => "received", store::delete::DeleteStatus::Processed => "processed" },
                "created_at": r.created_ns as f64 / 1e9,
            })
        })
        .collect();
    axum::Json(list).into_response()
}

async fn loki_cancel(
    State(state): State<QueryState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let delete = axum::http::Method::DELETE;
    if let Some(r) = fan_out(&state, delete, LOKI_PATH, raw.as_deref(), &headers, body.clone(), Fan::Cancel).await {
        return r;
    }
    let (tenant, p) = match request(headers, raw.as_deref(), &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(id) = p.get("request_id") else {
        return bad("request_id parameter is required");
    };
    match state.store.cancel_delete(&tenant, id) {
        Ok(Cancel::Cancelled) => StatusCode::NO_CONTENT.into_response(),
        Ok(Cancel::NotFound) => (StatusCode::NOT_FOUND, "no delete request by that id\n").into_response(),
        Ok(Cancel::AlreadyProcessed) => {
            bad("deletion of a request that is already processed is not allowed: its data is gone")
        }
        Err(e) => store_failure(&e),
    }
}

async fn delete_series(
    State(state): State<QueryState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let post = axum::http::Method::POST;
    if let Some(r) = fan_out(&state, post, PROM_PATH, raw.as_deref(), &headers, body.clone(), Fan::Record).await {
        return r;
    }
    let retired = retired_tree(&headers);
    let (tenant, p) = match request(headers, raw.as_deref(), &body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let selectors = p.all("match[]");
    if selectors.is_empty() {
        return prom_bad("no match[] parameter provided");
    }
    let mut matchers = Vec::new();
    for s in &selectors {
        match crate::promql::parse_selector(s) {
            Ok(ms) => matchers
                .push(ms.iter().map(|m| store::delete::matcher_spec(&super::prom::to_store_matcher(m))).collect()),
            Err(e) => return prom_bad(format!("invalid parameter \"match[]\": {e}")),
        }
    }
    let time = |key: &str, default: i64| match p.get(key) {
        None => Ok(default),
        Some(v) => super::prom::parse_time_ms(v)
            .map(|ms| ms.saturating_mul(1_000_000))
            .ok_or_else(|| format!("invalid parameter \"{key}\": cannot parse \"{v}\" to a valid timestamp")),
    };
    let (start, end) = match (time("start", i64::MIN), time("end", i64::MAX)) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(r), _) | (_, Err(r)) => return prom_bad(r),
    };
    let spec =
        DeleteSpec { query: selectors.join(", "), matchers, line_filters: Vec::new(), start_ns: start, end_ns: end };
    if let Some(node) = retired {
        return in_retired_tree(&state, node, tenant, false, spec).await;
    }
    match state.metric_store.request_delete(&tenant, spec) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(store::Error::Config(msg)) => prom_bad(msg),
        Err(e) => store_failure(&e),
    }
}

/// The retired tree a query node names in [`RETIRED_TREE_HEADER`].
fn retired_tree(headers: &HeaderMap) -> Option<String> {
    headers.get(RETIRED_TREE_HEADER).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Records a delete request in a retired tree, on an ingest node (see the module documentation).
async fn in_retired_tree(
    state: &QueryState,
    node: String,
    tenant: store::model::Tenant,
    logs: bool,
    spec: DeleteSpec,
) -> Response {
    let path = if logs { LOKI_PATH } else { PROM_PATH };
    let Some(record) = state.retired_deletes.clone() else {
        let why = format!(
            "{RETIRED_TREE_HEADER}: this server does not write retired trees; an ingest node on a bucket \
             (server.role = \"ingest\") does"
        );
        return refusal(path, StatusCode::BAD_REQUEST, why);
    };
    match record(node, tenant, logs, spec).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err((status, why)) => refusal(path, status, why),
    }
}

fn prom_bad(msg: impl std::fmt::Display) -> Response {
    let body = json!({"status": "error", "errorType": "bad_data", "error": msg.to_string()});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}
