//! The Loki HTTP query API, with Loki's JSON shapes, as Grafana's Loki data source calls it. Every
//! endpoint takes GET parameters or a POST form. Errors are 400 with a plain-text message, as Loki's.

// Helpers fail with the finished error response; it is built once per failed request.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use store::model::Tenant;

use crate::http::{QueryState, tenant};
use crate::logql::eval::LabelPairs;
use crate::logql::{self, Direction, Engine, Expr, QueryError, QueryParams, QueryValue, Stats};

const ENCODING_FLAGS: &str = "X-Loki-Response-Encoding-Flags";
const CATEGORIZE: &str = "categorize-labels";
/// The Loki version whose API this one follows; Grafana enables features by it.
const LOKI_VERSION: &str = "3.5.0";

pub(crate) fn routes() -> Router<QueryState> {
    Router::new()
        .route("/loki/api/v1/query", get(query).post(query))
        .route("/loki/api/v1/query_range", get(query_range).post(query_range))
        .route("/loki/api/v1/labels", get(labels).post(labels))
        .route("/loki/api/v1/label", get(labels).post(labels))
        .route("/loki/api/v1/label/{name}/values", get(label_values).post(label_values))
        .route("/loki/api/v1/series", get(series).post(series))
        .route("/loki/api/v1/index/stats", get(index_stats).post(index_stats))
        .route("/loki/api/v1/index/volume", get(volume).post(volume))
        .route("/loki/api/v1/index/volume_range", get(volume_range).post(volume_range))
        .route("/loki/api/v1/detected_fields", get(detected_fields).post(detected_fields))
        .route("/loki/api/v1/detected_field/{name}/values", get(detected_field_values).post(detected_field_values))
        .route("/loki/api/v1/detected_labels", get(detected_labels).post(detected_labels))
        .route("/loki/api/v1/patterns", get(patterns).post(patterns))
        .route("/loki/api/v1/status/buildinfo", get(buildinfo))
        .route("/loki/api/v1/format_query", get(format_query).post(format_query))
        .route("/loki/api/v1/tail", get(tail))
}

// ----- parameters -----

/// The request's parameters: the query string and, for a form POST, the body.
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
    headers: HeaderMap,
    now_ns: i64,
}

impl Params {
    pub(crate) fn from(headers: HeaderMap, raw: Option<&str>, body: &[u8]) -> Params {
        let mut pairs: Vec<(String, String)> =
            raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        if !body.is_empty() {
            pairs.extend(form_urlencoded::parse(body).into_owned());
        }
        Params { pairs, headers, now_ns: store::time::now_ns() }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    pub(crate) fn all(&self, key: &str) -> Vec<&str> {
        self.pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    fn time(&self, key: &str, default: i64) -> Result<i64, Response> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_time(v).ok_or_else(|| {
                bad(format!("invalid {key} {v:?}: expected Unix nanoseconds, float seconds or an RFC3339 time"))
            }),
        }
    }

    /// `start` and `end` (with `since`), defaulting to the last `default_span`.
    fn range(&self, default_span: Duration) -> Result<(i64, i64), Response> {
        let end = self.time("end", self.now_ns)?;
        let span = match self.get("since") {
            Some(s) => {
                logql::parse_duration_ns(s).ok_or_else(|| bad(format!("invalid since {s:?}: expected a duration")))?
            }
            None => default_span.as_nanos() as i64,
        };
        let start = self.time("start", end.saturating_sub(span))?;
        Ok((start, end))
    }

    fn usize(&self, key: &str, default: usize) -> Result<usize, Response> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| bad(format!("invalid {key} {v:?}: expected a non-negative integer"))),
        }
    }

    fn direction(&self) -> Result<Direction, Response> {
        match self.get("direction").map(str::to_ascii_lowercase).as_deref() {
            None | Some("backward") => Ok(Direction::Backward),
            Some("forward") => Ok(Direction::Forward),
            Some(other) => Err(bad(format!("invalid direction {other:?}: expected forward or backward"))),
        }
    }

    fn categorize(&self) -> bool {
        self.headers
            .get_all(ENCODING_FLAGS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|f| f.trim() == CATEGORIZE))
    }
}

/// Loki's timestamp parameters: float seconds if there is a dot, an integer of at most 10 digits as
/// seconds, a longer one as nanoseconds, otherwise RFC3339.
pub(crate) fn parse_time(v: &str) -> Option<i64> {
    let v = v.trim();
    if v.contains('.')
        && let Ok(f) = v.parse::<f64>()
    {
        return Some((f * 1e9).round() as i64);
    }
    if let Ok(n) = v.parse::<i64>() {
        return Some(if v.trim_start_matches('-').len() <= 10 { n.saturating_mul(1_000_000_000) } else { n });
    }
    store::time::parse_rfc3339_ns(v)
}

/// Loki's default step: a 250th of the range, in whole seconds, at least one.
fn default_step(start: i64, end: i64) -> i64 {
    ((end.saturating_sub(start) / 250) / 1_000_000_000).max(1) * 1_000_000_000
}

/// A duration parameter: a Prometheus duration or float seconds.
fn parse_step(v: &str) -> Option<i64> {
    if let Ok(f) = v.parse::<f64>() {
        return Some((f * 1e9).round() as i64);
    }
    logql::parse_duration_ns(v)
}

fn bad(msg: impl Into<String>) -> Response {
    let mut msg = msg.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg).into_response()
}

fn success(data: Value) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

fn query_error(e: QueryError) -> Response {
    match e {
        QueryError::BadRequest(m) => bad(m),
        QueryError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, format!("{e}\n")).into_response(),
        QueryError::Store(e) => {
            tracing::error!(error = %e, "query failed reading the store");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("reading the store failed: {e}\n")).into_response()
        }
    }
}

fn engine(state: &QueryState) -> Engine {
    Engine {
        store: state.store.clone(),
        limits: state.config.limits(),
        peers: state.peer_call(),
        trees: state.tree_set(),
    }
}

fn parse_query(q: Option<&str>) -> Result<Expr, Response> {
    let q = q.ok_or_else(|| bad("missing the query parameter: pass the LogQL query as query=..."))?;
    logql::parse(q).map_err(|e| bad(e.to_string()))
}

/// A selector-only query (`{a="b"}`) for the metadata endpoints.
fn parse_selector(q: &str) -> Result<Vec<store::LabelMatcher>, Response> {
    match logql::parse(q).map_err(|e| bad(e.to_string()))? {
        Expr::Log(l) => Ok(l.matchers),
        Expr::Metric(_) => Err(bad(format!("only label matchers are supported, got {q:?}"))),
    }
}

/// What every Loki handler starts from: the state, the tenant (`X-Scope-OrgID`), and the parameters of
/// the query string and of a form body.
pub(crate) struct LokiRequest {
    state: QueryState,
    tenant: Tenant,
    p: Params,
}

/// Largest form body a query endpoint reads.
const MAX_FORM_BYTES: usize = 8 << 20;

impl FromRequest<QueryState> for LokiRequest {
    type Rejection = Response;

    async fn from_request(req: Request, state: &QueryState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let tenant = tenant(&parts.headers)?;
        let body = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|e| bad(format!("cannot read the form body (at most {MAX_FORM_BYTES} bytes): {e}")))?;
        let state = state.for_caller(&parts.headers);
        let p = Params::from(parts.headers, parts.uri.query(), &body);
        Ok(LokiRequest { state, tenant, p })
    }
}

// ----- query and query_range -----

async fn query(req: LokiRequest) -> Result<Response, Response> {
    let LokiRequest { state, tenant, p } = req;
    let expr = parse_query(p.get("query"))?;
    let t = p.time("time", p.now_ns)?;
    let params = QueryParams {
        start_ns: t,
        end_ns: t,
        step_ns: 0,
        limit: p.usize("limit", 100)?,
        direction: p.direction()?,
        instant: true,
        categorize: p.categorize(),
    };
    run_query(&state, &tenant, &expr, &params).await
}

async fn query_range(req: LokiRequest) -> Result<Response, Response> {
    let LokiRequest { state, tenant, p } = req;
    let expr = parse_query(p.get("query"))?;
    let (start, end) = p.range(Duration::from_secs(3600))?;
    let step = match p.get("step") {
        Some(s) => {
            parse_step(s).ok_or_else(|| bad(format!("invalid step {s:?}: expected a duration or float seconds")))?
        }
        // Loki's default: a 250th of the range, at least a second.
        None => default_step(start, end),
    };
    if let Some(i) = p.get("interval") {
        parse_step(i).ok_or_else(|| bad(format!("invalid interval {i:?}: expected a duration or float seconds")))?;
    }
    let params = QueryParams {
        start_ns: start,
        end_ns: end,
        step_ns: step,
        limit: p.usize("limit", 100)?,
        direction: p.direction()?,
        instant: false,
        categorize: p.categorize(),
    };
    run_query(&state, &tenant, &expr, &params).await
}

/// Counts every Loki API answer in `lumen_query_queries_total` and `lumen_query_duration_seconds`, with
/// the route as `api` (`loki_query_range`, `loki_label_values`, ...) and the status as the outcome.
pub(crate) async fn observe(State(state): State<QueryState>, req: Request, next: Next) -> Response {
    let api = req.extensions().get::<MatchedPath>().map_or_else(
        || "loki_other".to_string(),
        |m| format!("loki_{}", m.as_str().trim_start_matches("/loki/api/v1/").replace("/{name}", "").replace('/', "_")),
    );
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status();
    let outcome = if status == StatusCode::GATEWAY_TIMEOUT {
        "timeout"
    } else if status.is_client_error() {
        "bad_request"
    } else if status.is_server_error() {
        "error"
    } else {
        "ok"
    };
    state.metrics.observe(&api, outcome, started.elapsed().as_secs_f64());
    response
}

async fn run_query(
    state: &QueryState,
    tenant: &Tenant,
    expr: &Expr,
    params: &QueryParams,
) -> Result<Response, Response> {
    let engine = engine(state);
    let (value, stats) = engine.query(tenant, expr, params).await.map_err(query_error)?;
    let mut data = encode_value(value, params.categorize);
    data["stats"] = stats_json(&stats);
    if params.categorize {
        data["encodingFlags"] = json!([CATEGORIZE]);
    }
    // Parts that could not be read were left out; a day before the start covers the ranges of metric
    // queries (a part further back would only make the warning too cautious).
    const DAY_NS: i64 = 86_400 * 1_000_000_000;
    let from = params.start_ns.saturating_sub(DAY_NS);
    let trees = state.tree_set();
    let mut warnings: Vec<String> = Vec::new();
    for (_, store) in trees.log_stores(&state.store) {
        let skipped = store.skipped_parts(tenant, from, params.end_ns.saturating_add(1));
        warnings.extend(skipped.iter().map(ToString::to_string));
    }
    warnings.extend(engine.peers.iter().flat_map(|p| p.warnings()));
    if warnings.is_empty() {
        return Ok(success(data));
    }
    Ok(axum::Json(json!({"status": "success", "data": data, "warnings": warnings})).into_response())
}

fn labels_json(labels: &LabelPairs) -> Value {
    Value::Object(labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>())
}

fn seconds(ns: i64) -> Value {
    json!(ns as f64 / 1e9)
}

fn encode_value(value: QueryValue, categorize: bool) -> Value {
    match value {
        QueryValue::Streams(streams) => {
            let result: Vec<Value> = streams
                .into_iter()
                .map(|s| {
                    let values: Vec<Value> = s
                        .entries
                        .into_iter()
                        .map(|e| {
                            if categorize && (!e.metadata.is_empty() || !e.parsed.is_empty()) {
                                let mut cat = Map::new();
                                if !e.metadata.is_empty() {
                                    cat.insert("structuredMetadata".into(), labels_json(&e.metadata));
                                }
                                if !e.parsed.is_empty() {
                                    cat.insert("parsed".into(), labels_json(&e.parsed));
                                }
                                json!([e.ts.to_string(), e.line, cat])
                            } else {
                                json!([e.ts.to_string(), e.line])
                            }
                        })
                        .collect();
                    json!({"stream": labels_json(&s.labels), "values": values})
                })
                .collect();
            json!({"resultType": "streams", "result": result})
        }
        QueryValue::Vector(samples) => {
            let result: Vec<Value> = samples
                .into_iter()
                .map(|(l, t, v)| json!({"metric": labels_json(&l), "value": [seconds(t), crate::logql::ast::format_number(v)]}))
                .collect();
            json!({"resultType": "vector", "result": result})
        }
        QueryValue::Matrix(series) => {
            let result: Vec<Value> = series
                .into_iter()
                .map(|(l, pts)| {
                    let values: Vec<Value> = pts
                        .into_iter()
                        .map(|(t, v)| json!([seconds(t), crate::logql::ast::format_number(v)]))
                        .collect();
                    json!({"metric": labels_json(&l), "values": values})
                })
                .collect();
            json!({"resultType": "matrix", "result": result})
        }
        QueryValue::Scalar(t, v) => {
            json!({"resultType": "scalar", "result": [seconds(t), crate::logql::ast::format_number(v)]})
        }
    }
}

fn stats_json(s: &Stats) -> Value {
    let secs = s.exec_time.as_secs_f64().max(1e-9);
    let zero_store = json!({
        "totalChunksRef": 0, "totalChunksDownloaded": 0, "chunksDownloadTime": 0, "queryReferencedStructuredMetadata": false,
        "chunk": {"headChunkBytes": 0, "headChunkLines": 0, "decompressedBytes": s.bytes, "decompressedLines": s.lines,
                   "compressedBytes": 0, "totalDuplicates": 0, "postFilterLines": s.entries_returned,
                   "headChunkStructuredMetadataBytes": 0, "decompressedStructuredMetadataBytes": 0}
    });
    json!({
        "summary": {
            "bytesProcessedPerSecond": (s.bytes as f64 / secs) as u64,
            "linesProcessedPerSecond": (s.lines as f64 / secs) as u64,
            "totalBytesProcessed": s.bytes,
            "totalLinesProcessed": s.lines,
            "execTime": s.exec_time.as_secs_f64(),
            "queueTime": 0,
            "subqueries": 0,
            "totalEntriesReturned": s.entries_returned,
            "splits": 1,
            "shards": 1,
            "totalPostFilterLines": s.entries_returned,
            "totalStructuredMetadataBytesProcessed": 0
        },
        "querier": {"store": zero_store.clone()},
        "ingester": {"totalReached": 0, "totalChunksMatched": 0, "totalBatches": 0, "totalLinesSent": 0, "store": zero_store},
        "cache": {}
    })
}

// ----- labels, series, stats -----

async fn matching_series(
    state: &QueryState,
    tenant: &Tenant,
    p: &Params,
    selectors: &[&str],
) -> Result<Vec<std::sync::Arc<store::model::Labels>>, Response> {
    let (start, end) = p.range(Duration::from_secs(6 * 3600))?;
    let mut out: BTreeMap<u64, std::sync::Arc<store::model::Labels>> = BTreeMap::new();
    let trees = state.tree_set();
    let stores = trees.log_stores(&state.store);
    let mut all = Vec::with_capacity(selectors.len().max(1));
    if selectors.is_empty() {
        all.push(Vec::new());
    }
    for sel in selectors {
        all.push(parse_selector(sel)?);
    }
    for matchers in &all {
        for (_, store) in &stores {
            for (id, l) in store.series(tenant, matchers, start, end.saturating_add(1)) {
                out.insert(id, l);
            }
        }
    }
    Ok(out.into_values().collect())
}

const HIDDEN_LABELS: [&str; 3] = ["__aggregated_metric__", "__tenant_id__", "__stream_shard__"];

async fn labels(req: LokiRequest) -> Result<Response, Response> {
    let LokiRequest { state, tenant, p } = req;
    let sels: Vec<&str> = p.get("query").into_iter().collect();
    let series = matching_series(&state, &tenant, &p, &sels).await?;
    let names: BTreeSet<&str> =
        series.iter().flat_map(|l| l.iter().map(|(k, _)| k)).filter(|k| !HIDDEN_LABELS.contains(k)).collect();
    Ok(success(json!(names)))
}

async fn label_values(Path(name): Path<String>, req: LokiRequest) -> Result<Response, Response> {
    let LokiRequest { state, tenant, p } = req;
    let sels: Vec<&str> = p.get("query").into_iter().collect();
    let series = matching_series(&state, &tenant, &p, &sels).await?;
    let values: BTreeSet<&str> = series.iter().filter_map(|l| l.get(&name)).collect();
    Ok(success(json!(values)))
}

async fn series(req: LokiRequest) -> Result<Response, Response> {
    let LokiRequest { state, tenant, p } = req;
    let mut sels = p.all("match[]");
    sels.extend(p.all("match"));
    sels.retain(|s| !s.is_empty());
    let series = matching_series(&state, &tenant, &p, &sels).await?;
    if series.len() > state.config.max_query_series * 20 {
        tracing::debug!(series = series.len(), "large series answer");
    }
    let data: Vec<Value> = series
        .iter()
        .map(|l| Value::Object(l.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect()))
        .collect();
    Ok(success(json!(data)))
}

/// Entries and streams from the index; bytes estimated from a sample of lines (Loki's answer is an
/// estimate too).
async fn index_stats(req: LokiRequest) -> Result<Response, Response> {
    let LokiRequest { state, tenant, p } = req;
    let q = p.get("query").ok_or_else(|| bad("missing the query parameter: a stream selector such as {app=\"x\"}"))?;
    let matchers = parse_selector(q)?;
    let (start, end) = p.range(Duration::from_secs(3600))?;
    let (entries, streams) = if state.peers.is_some() {
        // A query node: the trees' indexes plus what each node has not synced, as an instant count of the
        // whole range [start, end] does.
        let range = end.saturating_sub(start).saturating_add(1);
        let expr = parse_query(Some(&format!("count_over_time({q}[{range}ns])")))?;
        let (value, _) = engine(&state).query(&tenant, &expr, &QueryParams::instant(end)).await.map_err(query_error)?;
        match value {
            QueryValue::Vector(v) => (v.iter().map(|(_, _, c)| *c as u64).sum(), v.len()),
            _ => (0, 0),
        }
    } else {
        let mut counts: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        for (_, store) in state.tree_set().log_stores(&state.store) {
            let found = store
                .count_by_stream(&tenant, &matchers, start, end.saturating_add(1))
                .map_err(|e| query_error(e.into()))?;
            for (id, c) in found {
                *counts.entry(id).or_default() += c;
            }
        }
        (counts.values().sum::<u64>(), counts.values().filter(|c| **c > 0).count())
    };
    let bytes = if entries == 0 { 0 } else { estimate_bytes(&state, &tenant, q, start, end, entries).await? };
    Ok(axum::Json(json!({"streams": streams, "chunks": streams, "entries": entries, "bytes": bytes})).into_response())
}

async fn estimate_bytes(
    state: &QueryState,
    tenant: &Tenant,
    selector: &str,
    start: i64,
    end: i64,
    entries: u64,
) -> Result<u64, Response> {
    let expr = parse_query(Some(selector))?;
    let params = QueryParams { limit: 1000, ..QueryParams::range(start, end.saturating_add(1), 1) };
    let (value, _) = engine(state).query(tenant, &expr, &params).await.map_err(query_error)?;
    let QueryValue::Streams(streams) = value else { return Ok(0) };
    let (n, total) =
        streams.iter().flat_map(|s| &s.entries).fold((0u64, 0u64), |(n, b), e| (n + 1, b + e.line.len() as u64));
    Ok((total * entries).checked_div(n).unwrap_or(0))
}

// ----- volume -----

fn volume_query(p: &Params, range_ns: i64) -> Result<(String, usize), Response> {
    let q = p.get("query").ok_or_else(|| bad("missing the query parameter: a stream selector such as {app=\"x\"}"))?;
    let matchers = parse_selector(q)?;
    let mut target: Vec<String> = p
        .get("targetLabels")
        .map(|t| t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    if target.is_empty() {
        target = matchers.iter().map(|m| m.name.clone()).collect();
        target.dedup();
    }
    let limit = p.usize("limit", 100)?;
    let range = crate::logql::ast::format_duration(range_ns.max(1_000_000));
    let sel = match logql::parse(q) {
        Ok(Expr::Log(l)) => crate::logql::ast::LogExpr { matchers: l.matchers, stages: Vec::new() }.to_string(),
        _ => q.to_string(),
    };
    Ok((format!("sum by ({}) (bytes_over_time({sel} [{range}]))", target.join(", ")), limit))
}

async fn volume(req: LokiRequest) -> Result<Response, Response> {
    let LokiRequest { state, tenant, p } = req;
    let (start, end) = p.range(Duration::from_secs(3600))?;
    let (q, limit) = volume_query(&p, end.saturating_sub(start))?;
    let expr = parse_query(Some(&q))?;
    let params = QueryParams::instant(end);
    let (value, _) = engine(&state).query(&tenant, &expr, &params).await.map_err(query_error)?;
    let QueryValue::Vector(mut samples) = value else {
        return Ok(success(json!({"resultType": "vector", "result": []})));
    };
    samples.sort_by(|a, b| b.2.total_cmp(&a.2));
    samples.truncate(limit);
    Ok(success(encode_value(QueryValue::Vector(samples), false)))
}

async fn volume_range(req: LokiRequest) -> Result<Response, Response> {
    let LokiRequest { state, tenant, p } = req;
    let (start, end) = p.range(Duration::from_secs(3600))?;
    let step = match p.get("step") {
        Some(s) => parse_step(s).ok_or_else(|| bad(format!("invalid step {s:?}")))?,
        None => default_step(start, end),
    };
    let (q, limit) = volume_query(&p, step)?;
    let expr = parse_query(Some(&q))?;
    let params = QueryParams::range(start, end, step);
    let (value, _) = engine(&state).query(&tenant, &expr, &params).await.map_err(query_error)?;
    let QueryValue::Matrix(mut series) = value else {
        return Ok(success(json!({"resultType": "matrix", "result": []})));
    };
    series.sort_by(|a, b| {
        let total = |s: &Vec<(i64, f64)>| s.iter().map(|x| x.1).sum::<f64>();
        total(&b.1).total_cmp(&total(&a.1))
    });
    series.truncate(limit);
    Ok(success(encode_value(QueryValue::Matrix(series), false)))
}

// ----- detected fields and labels, patterns -----

/// Lines of a query's selection (with its pipeline), newest first, for the exploration endpoints.
async fn sample_lines(
    state: &QueryState,
    tenant: &Tenant,
    p: &Params,
    limit: usize,
) -> Result<Vec<(i64, String, LabelPairs)>, Response> {
    let expr = parse_query(p.get("query"))?;
    let Expr::Log(_) = &expr else {
        return Err(bad("expected a log query such as {app=\"x\"} |= \"y\""));
    };
    let (start, end) = p.range(Duration::from_secs(3600))?;
    let params = QueryParams { limit, categorize: true, ..QueryParams::range(start, end.saturating_add(1), 1) };
    let (value, _) = engine(state).query(tenant, &expr, &params).await.map_err(query_error)?;
    let QueryValue::Streams(streams) = value else { return Ok(Vec::new()) };
    Ok(streams.into_iter().flat_map(|s| s.entries.into_iter().map(|e| (e.ts, e.line, e.metadata))).collect())
}

#[derive(Default)]
struct FieldInfo {
    kind: Option<&'static str>,
    values: BTreeSet<String>,
    parsers: BTreeSet<&'static str>,
}

fn value_kind(v: &str) -> &'static str {
    if v.parse::<i64>().is_ok() {
        "int"
    } else if v.parse::<f64>().is_ok() {
        "float"
    } else if v == "true" || v == "false" {
        "boolean"
    } else if logql::extract::parse_duration_secs(v).is_some() {
        "duration"
    } else if v.chars().next().is_some_and(|c| c.is_ascii_digit()) && logql::extract::parse_bytes(v).is_some() {
        "bytes"
    } else {
        "string"
    }
}

fn detect_fields(lines: &[(i64, String, LabelPairs)]) -> BTreeMap<String, FieldInfo> {
    let mut fields: BTreeMap<String, FieldInfo> = BTreeMap::new();
    let mut note = |name: &str, value: &str, parser: Option<&'static str>| {
        let f = fields.entry(name.to_string()).or_default();
        let kind = value_kind(value);
        f.kind = Some(match f.kind {
            None => kind,
            Some(k) if k == kind => k,
            Some("int") if kind == "float" => "float",
            Some("float") if kind == "int" => "float",
            Some(_) => "string",
        });
        if f.values.len() < 10_000 {
            f.values.insert(value.to_string());
        }
        if let Some(p) = parser {
            f.parsers.insert(p);
        }
    };
    let mut out = Vec::new();
    for (_, line, metadata) in lines {
        for (k, v) in metadata {
            note(k, v, None);
        }
        out.clear();
        let trimmed = line.trim_start();
        let parser = if trimmed.starts_with('{') && logql::extract::json(line, &mut out).is_ok() {
            "json"
        } else {
            out.clear();
            if logql::extract::logfmt(line, false, false, &mut out).is_err() {
                continue;
            }
            "logfmt"
        };
        for (k, v) in &out {
            note(k, v, Some(parser));
        }
    }
    fields
}

async fn detected_fields(req: LokiRequest) -> Result<Response, Response> {
    let LokiRequest { state, tenant, p } = req;
    let line_limit = p.usize("line_limit", 1000)?.min(state.config.max_entries_limit_per_query);
    let limit = p.get("field_limit").map_or(p.usize("limit", 1000), |_| p.usize("field_limit", 1000))?;
    let lines = sample_lines(&state, &tenant, &p, line_limit).await?;
    let fields: Vec<Value> = detect_fields(&lines)
        .into_iter()
        .take(limit)
        .map(|(name, f)| {
            let parsers: Option<Vec<&str>> = if f.parsers.is_empty() { None } else { Some(f.parsers.into_iter().collect()) };
            json!({"label": name, "type": f.kind.unwrap_or("string"), "cardinality": f.values.len(), "parsers": parsers})
        })
        .collect();
    Ok(axum::Json(json!({"fields": fields, "limit": limit})).into_response())
}

async fn detected_field_values(Path(name): Path<String>, req: LokiRequest) -> Result<Response, Response> {
    let LokiRequest { state, tenant, p } = req;
    let line_limit = p.usize("line_limit", 1000)?.min(state.config.max_entries_limit_per_query);
    let limit = p.usize("limit", 1000)?;
    let lines = sample_lines(&state, &tenant, &p, line_limit).await?;
    let values: Vec<String> =
        detect_fields(&lines).remove(&name).map(|f| f.values.into_iter().take(limit).collect()).unwrap_or_default();
    Ok(axum::Json(json!({"values": values, "limit": limit})).into_response())
}

async fn detected_labels(req: LokiRequest) -> Result<Response, Response> {
    let LokiRequest { state, tenant, p } = req;
    let sels: Vec<&str> = p.get("query").into_iter().collect();
    let series = matching_series(&state, &tenant, &p, &sels).await?;
    let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for l in &series {
        for (k, v) in l.iter() {
            if !HIDDEN_LABELS.contains(&k) {
                values.entry(k).or_default().insert(v);
            }
        }
    }
    let labels: Vec<Value> = values.into_iter().map(|(k, v)| json!({"label": k, "cardinality": v.len()})).collect();
    Ok(axum::Json(json!({"detectedLabels": labels})).into_response())
}

/// A line's pattern: its whitespace-separated tokens, with any token holding a digit replaced by `<_>`.
fn line_pattern(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for (i, tok) in line.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if tok.chars().any(|c| c.is_ascii_digit()) {
            if !out.ends_with("<_>") {
                out.push_str("<_>");
            } else {
                out.pop();
            }
        } else {
            out.push_str(tok);
        }
    }
    out
}

async fn patterns(req: LokiRequest) -> Result<Response, Response> {
    let LokiRequest { state, tenant, p } = req;
    let (start, end) = p.range(Duration::from_secs(3600))?;
    let step = match p.get("step") {
        Some(s) => parse_step(s).ok_or_else(|| bad(format!("invalid step {s:?}")))?,
        None => (end.saturating_sub(start) / 100).max(1_000_000_000),
    };
    let lines = sample_lines(&state, &tenant, &p, state.config.max_entries_limit_per_query).await?;
    let mut by_pattern: HashMap<String, BTreeMap<i64, u64>> = HashMap::new();
    for (ts, line, _) in &lines {
        let bucket = start.saturating_add(ts.saturating_sub(start) / step * step);
        *by_pattern.entry(line_pattern(line)).or_default().entry(bucket).or_default() += 1;
    }
    let mut data: Vec<(u64, Value)> = by_pattern
        .into_iter()
        .map(|(pattern, samples)| {
            let total = samples.values().sum();
            let samples: Vec<Value> = samples.into_iter().map(|(t, c)| json!([t / 1_000_000_000, c])).collect();
            (total, json!({"pattern": pattern, "samples": samples}))
        })
        .collect();
    data.sort_by_key(|d| std::cmp::Reverse(d.0));
    Ok(success(Value::Array(data.into_iter().take(100).map(|x| x.1).collect())))
}

// ----- misc -----

async fn buildinfo() -> Response {
    axum::Json(json!({
        "version": LOKI_VERSION,
        "revision": concat!("lumen-", env!("CARGO_PKG_VERSION")),
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": ""
    }))
    .into_response()
}

async fn format_query(req: LokiRequest) -> Result<Response, Response> {
    let expr = parse_query(req.p.get("query"))?;
    Ok(success(json!(expr.to_string())))
}

// ----- tail -----

async fn tail(
    State(state): State<QueryState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let state = state.for_caller(&headers);
    let p = Params::from(headers, raw.as_deref(), &[]);
    let setup = (|| {
        let expr = parse_query(p.get("query"))?;
        let Expr::Log(_) = &expr else {
            return Err(bad("tail takes a log query such as {app=\"x\"} |= \"y\", not a metric query"));
        };
        let delay = p.usize("delay_for", 0)?;
        if delay > 5 {
            return Err(bad(format!("delay_for can't be greater than 5 seconds, got {delay}")));
        }
        let limit = p.usize("limit", 100)?;
        if limit > state.config.max_entries_limit_per_query {
            return Err(bad(format!(
                "max entries limit per query exceeded, limit > max_entries_limit_per_query ({limit} > {})",
                state.config.max_entries_limit_per_query
            )));
        }
        let start = p.time("start", p.now_ns - 3_600_000_000_000)?;
        Ok((expr, delay as i64 * 1_000_000_000, limit, start))
    })();
    let (expr, delay, limit, start) = match setup {
        Ok(s) => s,
        Err(r) => return r,
    };
    let categorize = p.categorize();
    // Each tail holds a connection and polls the store for as long as the client stays: bounded.
    let Ok(slot) = state.tails.clone().try_acquire_owned() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} live tails run already, the most query.max_concurrent_tails allows\n",
                state.config.max_concurrent_tails
            ),
        )
            .into_response();
    };
    ws.on_upgrade(move |socket| async move {
        run_tail(socket, state, tenant, expr, delay, limit, start, categorize).await;
        drop(slot);
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_tail(
    mut socket: WebSocket,
    state: QueryState,
    tenant: Tenant,
    expr: Expr,
    delay: i64,
    limit: usize,
    start: i64,
    categorize: bool,
) {
    let engine = engine(&state);
    // Entries with times in [from, now - delay) not yet sent; the first round sends the newest `limit`.
    let mut from = start;
    let mut first = true;
    let mut sent_at_edge: Vec<(i64, String)> = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let ping_every = state.config.tail_ping_interval.max(Duration::from_millis(100));
    let mut last_sent = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
            () = state.shutdown.cancelled() => {
                // 1001 "going away": the client (Grafana) reconnects to whichever server answers next.
                let frame = axum::extract::ws::CloseFrame { code: 1001, reason: "the server is stopping".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
        }
        if last_sent.elapsed() >= ping_every {
            if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                return;
            }
            last_sent = std::time::Instant::now();
        }
        let until = store::time::now_ns() - delay;
        if until <= from {
            continue;
        }
        let params = QueryParams {
            start_ns: from,
            end_ns: until,
            step_ns: 1,
            limit,
            direction: if first { Direction::Backward } else { Direction::Forward },
            instant: false,
            categorize,
        };
        let streams = match engine.query(&tenant, &expr, &params).await {
            Ok((QueryValue::Streams(s), _)) => s,
            Ok(_) => Vec::new(),
            Err(e) => {
                let _ = socket.send(Message::Close(None)).await;
                tracing::warn!(error = %e, "tail query failed");
                return;
            }
        };
        first = false;
        // Never resend an entry: skip those at the previous edge time already sent.
        let mut newest = from;
        let mut out = Vec::new();
        let mut edge = Vec::new();
        for mut s in streams {
            s.entries.retain(|e| !sent_at_edge.iter().any(|(t, l)| *t == e.ts && *l == e.line));
            s.entries.sort_by_key(|e| e.ts);
            for e in &s.entries {
                newest = newest.max(e.ts);
            }
            if !s.entries.is_empty() {
                out.push(s);
            }
        }
        for s in &out {
            edge.extend(s.entries.iter().filter(|e| e.ts == newest).map(|e| (e.ts, e.line.clone())));
        }
        if out.is_empty() {
            continue;
        }
        // Later rounds start at the newest time sent, so entries arriving for that same instant are kept.
        from = newest;
        sent_at_edge = edge;
        let data = encode_value(QueryValue::Streams(out), categorize);
        let frame = json!({"streams": data["result"], "dropped_entries": null});
        if socket.send(Message::Text(frame.to_string().into())).await.is_err() {
            return;
        }
        last_sent = std::time::Instant::now();
    }
}
