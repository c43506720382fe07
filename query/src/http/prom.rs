//! The Prometheus HTTP API under `/api/v1/`, with Prometheus' JSON envelope and error types, as Grafana's
//! Prometheus data source calls it: `query`, `query_range`, `series`, `labels`, `label/<name>/values`,
//! `metadata`, `query_exemplars`, `status/buildinfo` and `format_query` (`rules` and `alerts` are the
//! ruler's, in the `ruler` crate). Every endpoint
//! takes GET parameters or a POST form.

// Helpers fail with the finished error response; it is built once per failed request.
#![allow(clippy::result_large_err)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{FromRequest, MatchedPath, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use store::model::Tenant;
use store::{LabelMatcher, MatchOp as StoreOp};
use store::{MetricStore, SelectedSeries};

use super::loki::Params;
use crate::http::{QueryState, prom_cache, tenant};
use crate::promql::{
    self, EngineOptions, EvalError, MatchOp, Matcher, QueryResult, Series, SeriesSource, Value as PValue,
};

/// The Prometheus version whose API this one follows. Grafana needs at least 2.24 to send `match[]` with
/// label requests; buildinfo carries no `features`, so Grafana takes this for Prometheus, not Mimir.
pub const PROMETHEUS_VERSION: &str = "3.5.0";
/// Prometheus' limit of points per series in a range query.
const MAX_POINTS: i64 = 11_000;
const MAX_FORM_BYTES: usize = 8 << 20;

pub(crate) fn routes() -> Router<QueryState> {
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series).delete(not_allowed))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values).post(label_values))
        .route("/api/v1/metadata", get(metadata).post(metadata))
        .route("/api/v1/query_exemplars", get(exemplars).post(exemplars))
        .route("/api/v1/status/buildinfo", get(buildinfo).post(buildinfo))
        .route("/api/v1/format_query", get(format_query).post(format_query))
}

// ----- envelope -----

/// Prometheus' error types and the status each is answered with.
#[derive(Debug, Clone, Copy)]
enum ErrorType {
    BadData,
    Execution,
    Timeout,
    Canceled,
    Internal,
}

impl ErrorType {
    fn name(self) -> &'static str {
        match self {
            ErrorType::BadData => "bad_data",
            ErrorType::Execution => "execution",
            ErrorType::Timeout => "timeout",
            ErrorType::Canceled => "canceled",
            ErrorType::Internal => "internal",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            ErrorType::BadData => StatusCode::BAD_REQUEST,
            ErrorType::Execution => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            ErrorType::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn error(kind: ErrorType, msg: impl Into<String>) -> Response {
    let body = json!({"status": "error", "errorType": kind.name(), "error": msg.into()});
    (kind.status(), axum::Json(body)).into_response()
}

fn bad(msg: impl Into<String>) -> Response {
    error(ErrorType::BadData, msg)
}

fn success(data: Value) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

fn success_with(data: Value, warnings: &[String], infos: &[String]) -> Response {
    let mut body = json!({"status": "success", "data": data});
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    if !infos.is_empty() {
        body["infos"] = json!(infos);
    }
    axum::Json(body).into_response()
}

fn eval_error(e: EvalError) -> Response {
    match e {
        EvalError::BadData(m) => error(ErrorType::BadData, m),
        EvalError::Execution(m) => error(ErrorType::Execution, m),
        EvalError::Timeout => error(ErrorType::Timeout, "query timed out in query execution"),
        EvalError::Canceled => error(ErrorType::Canceled, "query was canceled in query execution"),
    }
}

// ----- parameters -----

/// A request's tenant and parameters (query string and form body).
pub(crate) struct PromRequest {
    state: QueryState,
    tenant: Tenant,
    p: Params,
}

impl FromRequest<QueryState> for PromRequest {
    type Rejection = Response;

    async fn from_request(req: Request, state: &QueryState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let tenant = tenant(&parts.headers).map_err(|_| bad("invalid X-Scope-OrgID tenant id"))?;
        let body = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|e| bad(format!("cannot read the form body (at most {MAX_FORM_BYTES} bytes): {e}")))?;
        let state = state.for_caller(&parts.headers);
        let p = Params::from(parts.headers, parts.uri.query(), &body);
        Ok(PromRequest { state, tenant, p })
    }
}

/// A Prometheus time parameter: float Unix seconds or RFC3339, to milliseconds.
pub(crate) fn parse_time_ms(v: &str) -> Option<i64> {
    let v = v.trim();
    if let Ok(f) = v.parse::<f64>() {
        let ms = (f * 1000.0).round();
        return (ms.is_finite() && ms.abs() < 9.2e18).then_some(ms as i64);
    }
    store::time::parse_rfc3339_ns(v).map(|ns| ns.div_euclid(1_000_000))
}

/// A Prometheus duration parameter: float seconds or a duration such as `15s`, to milliseconds.
fn parse_duration_ms(v: &str) -> Option<i64> {
    if let Ok(f) = v.trim().parse::<f64>() {
        let ms = (f * 1000.0).round();
        return (ms.is_finite() && ms.abs() < 9.2e18).then_some(ms as i64);
    }
    crate::logql::parse_duration_ns(v).map(|ns| ns / 1_000_000)
}

impl PromRequest {
    fn time(&self, key: &str, default: i64) -> Result<i64, Response> {
        match self.p.get(key) {
            None => Ok(default),
            Some(v) => parse_time_ms(v)
                .ok_or_else(|| bad(format!("invalid parameter \"{key}\": cannot parse \"{v}\" to a valid timestamp"))),
        }
    }

    fn now_ms(&self) -> i64 {
        store::time::now_ns() / 1_000_000
    }

    /// `start` and `end`, each defaulting to all of time (label and series endpoints).
    fn bounds(&self) -> Result<(i64, i64), Response> {
        let start = self.time("start", i64::MIN)?;
        let end = self.time("end", i64::MAX)?;
        if end < start {
            return Err(bad("invalid parameter \"end\": end timestamp must not be before start time"));
        }
        Ok((start, end))
    }

    fn limit(&self) -> Result<usize, Response> {
        match self.p.get("limit") {
            None => Ok(0),
            Some(v) => v
                .parse::<i64>()
                .map(|n| n.max(0) as usize)
                .map_err(|_| bad(format!("invalid parameter \"limit\": cannot parse \"{v}\" to a valid limit"))),
        }
    }

    /// The `match[]` selectors as store matchers.
    fn selectors(&self) -> Result<Vec<Vec<LabelMatcher>>, Response> {
        self.p
            .all("match[]")
            .into_iter()
            .map(|s| {
                let ms = promql::parse_selector(s).map_err(|e| bad(format!("invalid parameter \"match[]\": {e}")))?;
                Ok(ms.iter().map(to_store_matcher).collect())
            })
            .collect()
    }

    fn options(&self) -> Result<EngineOptions, Response> {
        let c = &self.state.config;
        let mut timeout = c.timeout;
        if let Some(v) = self.p.get("timeout") {
            let ms = parse_duration_ms(v).filter(|&ms| ms > 0).ok_or_else(|| {
                bad(format!("invalid parameter \"timeout\": cannot parse \"{v}\" to a valid duration"))
            })?;
            timeout = timeout.min(Duration::from_millis(ms as u64));
        }
        let lookback_ms = match self.p.get("lookback_delta") {
            Some(v) => parse_duration_ms(v).filter(|&ms| ms > 0).ok_or_else(|| {
                bad(format!("invalid parameter \"lookback_delta\": cannot parse \"{v}\" to a valid duration"))
            })?,
            None => c.lookback_delta.as_millis() as i64,
        };
        Ok(EngineOptions {
            lookback_ms,
            max_samples: c.max_samples,
            default_subquery_step_ms: c.default_subquery_step.as_millis() as i64,
            deadline: Some(Instant::now() + timeout),
            threads: c.limits().partitions,
        })
    }
}

/// PromQL matchers as store matchers.
pub fn store_matchers(ms: &[Matcher]) -> Vec<LabelMatcher> {
    ms.iter().map(to_store_matcher).collect()
}

pub(crate) fn to_store_matcher(m: &Matcher) -> LabelMatcher {
    let op = match m.op {
        MatchOp::Equal => StoreOp::Eq,
        MatchOp::NotEqual => StoreOp::Neq,
        MatchOp::Re(_) => StoreOp::Re,
        MatchOp::NotRe(_) => StoreOp::Nre,
    };
    // The parser compiled the same pattern already, so this cannot fail; fall back to a matcher that
    // selects nothing rather than panic.
    LabelMatcher::new(m.name.clone(), op, m.value.clone())
        .unwrap_or_else(|_| LabelMatcher::new("__name__", StoreOp::Eq, "\u{0}").expect("literal matcher"))
}

/// The metric store as the PromQL engine's source of series.
pub struct StoreSource<'a> {
    pub store: &'a MetricStore,
    pub tenant: &'a Tenant,
    /// Most samples one selection may load (`query.max_samples`).
    pub max_samples: usize,
    /// On a query node, the ingest nodes asked for what the bucket does not hold yet, and the runtime
    /// to ask them on (selections run on a blocking thread).
    pub peers: Option<(crate::peers::PeerCall, tokio::runtime::Handle)>,
    /// On a query node, the trees read (see [`crate::peers::TreeSet`]); the default elsewhere.
    pub trees: crate::peers::TreeSet,
}

impl StoreSource<'_> {
    /// The series of one tree: its parts, less those its ingest node no longer holds, plus that node's
    /// other samples (`delta`: None where this is no query node or no node answered); at most
    /// `max_samples`.
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    fn select_tree(
        &self,
        store: &MetricStore,
        delta: Option<crate::peers::MetricDelta>,
        ms: &[LabelMatcher],
        mint_ms: i64,
        maxt_ms: i64,
        max_samples: usize,
    ) -> Result<Vec<SelectedSeries>, EvalError> {
        let read_error = |e| match e {
            store::Error::TooManySamples { .. } => crate::promql::too_many_samples(),
            e => EvalError::Execution(format!("reading the metric store failed: {e}")),
        };
        let Some(delta) = delta else {
            return store.select_within(self.tenant, ms, mint_ms, maxt_ms, max_samples).map_err(read_error);
        };
        let added: usize = delta.series.iter().map(|s| s.t.len()).sum();
        let left = max_samples.checked_sub(added).ok_or_else(crate::promql::too_many_samples)?;
        store.adopt_peer_deletes(self.tenant, &delta.deletes);
        let only = store::PartFilter::Only(std::sync::Arc::new(delta.keep));
        let local = store.select_filtered(self.tenant, ms, mint_ms, maxt_ms, left, &only, None).map_err(read_error)?;
        Ok(crate::peers::merge_series(local, delta.series))
    }

    /// Asks every tree's ingest node at once for the samples beyond the tree's parts.
    fn deltas(
        &self,
        stores: &[(&str, &MetricStore)],
        ms: &[LabelMatcher],
        mint_ms: i64,
        maxt_ms: i64,
    ) -> Result<Vec<Option<crate::peers::MetricDelta>>, EvalError> {
        let Some((peers, runtime)) = &self.peers else {
            return Ok(stores.iter().map(|_| None).collect());
        };
        let reqs: Vec<crate::peers::MetricDeltaRequest> = stores
            .iter()
            .map(|(node, store)| crate::peers::MetricDeltaRequest {
                mint: mint_ms,
                maxt: maxt_ms,
                matchers: ms.iter().map(crate::peers::WireMatcher::from_store).collect(),
                max_samples: self.max_samples,
                have: store.part_ids(self.tenant, mint_ms, maxt_ms),
                node: node.to_string(),
            })
            .collect();
        let asks = reqs.iter().map(|req| peers.metrics(self.tenant, req));
        runtime
            .block_on(futures::future::join_all(asks))
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(EvalError::Execution)
    }
}

impl SeriesSource for StoreSource<'_> {
    fn select(&self, matchers: &[Matcher], mint_ms: i64, maxt_ms: i64) -> Result<Vec<Series>, EvalError> {
        let ms: Vec<LabelMatcher> = matchers.iter().map(to_store_matcher).collect();
        let found = self.select_series(&ms, mint_ms, maxt_ms)?;
        Ok(found
            .into_iter()
            .map(|SelectedSeries { labels, t, v }| Series {
                labels: labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
                t,
                v,
            })
            .collect())
    }
}

impl StoreSource<'_> {
    /// The series `ms` selects in `[mint_ms, maxt_ms]`: every tree read, each with what its node has not
    /// synced; at most `max_samples` samples.
    ///
    /// # Errors
    /// Too many samples, or a store or ingest node that failed.
    pub fn select_series(
        &self,
        ms: &[LabelMatcher],
        mint_ms: i64,
        maxt_ms: i64,
    ) -> Result<Vec<SelectedSeries>, EvalError> {
        // A series written through several ingest nodes has samples in each tree: merged by labels.
        let mut found = Vec::new();
        let mut left = self.max_samples;
        let stores = self.trees.metric_stores(self.store);
        let deltas = self.deltas(&stores, ms, mint_ms, maxt_ms)?;
        for ((_, store), delta) in stores.into_iter().zip(deltas) {
            let got = self.select_tree(store, delta, ms, mint_ms, maxt_ms, left)?;
            let n: usize = got.iter().map(|s| s.t.len()).sum();
            left = left.checked_sub(n).ok_or_else(crate::promql::too_many_samples)?;
            found = if found.is_empty() { got } else { crate::peers::merge_series(found, got) };
        }
        Ok(found)
    }
}

// ----- handlers -----

/// The change marks a result evaluated now is computed from, taken before the evaluation; the marks of
/// `key`'s cached entry (empty for none) and the earliest sample time appended since them (`i64::MIN`:
/// unknown, or no entry). One mark for a node with its data at hand; on a query node, each ingest node's
/// own (asked for) and each retired tree's local one. None: not cacheable now (an ingest node did not
/// answer).
async fn source_marks(
    cache: &prom_cache::ResultsCache,
    key: &prom_cache::Key,
    peers: Option<&crate::peers::PeerCall>,
    trees: &crate::peers::TreeSet,
    store: &store::MetricStore,
    tenant: &store::model::Tenant,
) -> Option<(prom_cache::Marks, prom_cache::Marks, i64)> {
    let old = cache.marks_of(key);
    let old_of = |name: &str| old.as_ref()?.iter().find(|(n, _)| n == name).map(|(_, m)| *m);
    let local = |name: String, s: &store::MetricStore| {
        let mark = s.change_mark();
        let changed = old_of(&name).map_or(i64::MIN, |m| s.changed_since(tenant, m));
        (name, mark, changed)
    };
    let found: Vec<(String, store::ChangeMark, i64)> = match peers {
        None => vec![local(String::new(), store)],
        Some(p) => {
            let asks = trees.metric_stores(store).into_iter().map(|(node, s)| async move {
                if trees.retired.contains(node) {
                    return Some(local(format!("tree:{node}"), s));
                }
                let name = format!("node:{node}");
                let answer = p.metric_changes(node, tenant, old_of(&name)).await?;
                Some((name, answer.mark, answer.changed_since))
            });
            futures::future::join_all(asks).await.into_iter().collect::<Option<Vec<_>>>()?
        }
    };
    let same_sources =
        old.as_ref().is_some_and(|o| o.len() == found.len() && o.iter().zip(&found).all(|((a, _), (b, _, _))| a == b));
    let changed = if same_sources { found.iter().map(|(_, _, c)| *c).min().unwrap_or(i64::MAX) } else { i64::MIN };
    Some((found.into_iter().map(|(n, m, _)| (n, m)).collect(), old.unwrap_or_default(), changed))
}

async fn run(r: &PromRequest, q: &str, range: Option<(i64, i64, i64)>, time: i64) -> Result<QueryResult, Response> {
    let expr = promql::parse(q).map_err(eval_error)?;
    let opts = r.options()?;
    let store = r.state.metric_store.clone();
    let tenant = r.tenant.clone();
    let peers = r.state.peer_call();
    let call = peers.clone().map(|p| (p, tokio::runtime::Handle::current()));
    let trees = r.state.tree_set();
    // Range queries go through the results cache.
    let cache = r.state.results_cache.clone();
    let key = match range {
        Some((start, _, step)) if cache.enabled() => {
            prom_cache::Key::of(&tenant, q, start, step, opts.lookback_ms, opts.default_subquery_step_ms)
        }
        _ => None,
    };
    let sources = match &key {
        Some(key) => source_marks(&cache, key, peers.as_ref(), &trees, &store, &tenant).await,
        None => None,
    };
    let answered_whole = peers.clone();
    let mut out = tokio::task::spawn_blocking(move || {
        let src = StoreSource { store: &store, tenant: &tenant, max_samples: opts.max_samples, peers: call, trees };
        match (range, key, sources) {
            (Some((start, end, step)), Some(key), Some((marks, since, changed))) => {
                let result = match cache.lookup_since(&key, start, end, &since, changed) {
                    Some(reuse) if reuse.upto + step > end => {
                        prom_cache::merge(&reuse, start, QueryResult::empty_matrix())
                    }
                    Some(reuse) => {
                        let fresh = promql::eval_range(&opts, &src, &expr, reuse.upto + step, end, step)?;
                        prom_cache::merge(&reuse, start, fresh)
                    }
                    None => promql::eval_range(&opts, &src, &expr, start, end, step)?,
                };
                // An answer without some ingest node's rows is not kept.
                if answered_whole.is_none_or(|p| p.warnings().is_empty()) {
                    cache.insert(key, start, end, marks, &result);
                }
                Ok(result)
            }
            (Some((start, end, step)), _, _) => promql::eval_range(&opts, &src, &expr, start, end, step),
            (None, _, _) => promql::eval_instant(&opts, &src, &expr, time),
        }
    })
    .await
    .map_err(|e| error(ErrorType::Internal, format!("query task failed: {e}")))?
    .map_err(eval_error)?;
    // Parts that could not be read were left out (the reads just now are what find them); a day before
    // the start covers the lookback, ranges and offsets of ordinary queries.
    let (start, end) = range.map_or((time, time), |(s, e, _)| (s, e));
    let trees = r.state.tree_set();
    for (_, store) in trees.metric_stores(&r.state.metric_store) {
        let skipped = store.skipped_parts(&r.tenant, start.saturating_sub(86_400_000), end);
        out.warnings.extend(skipped.iter().map(ToString::to_string));
    }
    out.warnings.extend(peers.iter().flat_map(|p| p.warnings()));
    Ok(out)
}

async fn query(r: PromRequest) -> Response {
    let res = async {
        let q = r.p.get("query").ok_or_else(|| bad("invalid parameter \"query\": query must not be empty"))?;
        let t = r.time("time", r.now_ms())?;
        let out = run(&r, q, None, t).await?;
        Ok::<_, Response>(query_answer(&out))
    }
    .await;
    res.unwrap_or_else(|e| e)
}

async fn query_range(r: PromRequest) -> Response {
    let res = async {
        let q = r.p.get("query").ok_or_else(|| bad("invalid parameter \"query\": query must not be empty"))?;
        let start = r.time("start", i64::MIN).and_then(|s| {
            if s == i64::MIN { Err(bad("invalid parameter \"start\": missing start")) } else { Ok(s) }
        })?;
        let end = r.time("end", i64::MIN).and_then(|e| {
            if e == i64::MIN { Err(bad("invalid parameter \"end\": missing end")) } else { Ok(e) }
        })?;
        if end < start {
            return Err(bad("invalid parameter \"end\": end timestamp must not be before start time"));
        }
        let step_s = r.p.get("step").ok_or_else(|| bad("invalid parameter \"step\": missing step"))?;
        let step = parse_duration_ms(step_s)
            .ok_or_else(|| bad(format!("invalid parameter \"step\": cannot parse \"{step_s}\" to a valid duration")))?;
        if step <= 0 {
            return Err(bad(
                "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if (end - start) / step >= MAX_POINTS {
            return Err(bad(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)",
            ));
        }
        let out = run(&r, q, Some((start, end, step)), end).await?;
        Ok::<_, Response>(query_answer(&out))
    }
    .await;
    res.unwrap_or_else(|e| e)
}

fn labels_obj<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Value {
    Value::Object(pairs.map(|(n, v)| (n.to_string(), Value::String(v.to_string()))).collect::<Map<_, _>>())
}

/// A timestamp as Prometheus writes it: a number of seconds with up to three decimals.
fn write_ts(out: &mut String, ms: i64) {
    let mut ints = itoa::Buffer::new();
    if ms < 0 && ms % 1000 != 0 && ms / 1000 == 0 {
        out.push('-');
    }
    out.push_str(ints.format(ms / 1000));
    let frac = (ms % 1000).unsigned_abs();
    if frac != 0 {
        let digits = [b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8];
        let len = if digits[2] != b'0' {
            3
        } else if digits[1] != b'0' {
            2
        } else {
            1
        };
        out.push('.');
        out.push_str(std::str::from_utf8(&digits[..len]).unwrap_or("0"));
    }
}

/// A sample value as Prometheus writes it (Go's `FormatFloat(v, 'f', -1, 64)`), the common cases
/// without allocating: integers through `itoa`, other finite values through `ryu` (the same shortest
/// digits) unless it would use an exponent.
fn write_float(out: &mut String, v: f64) {
    if v.is_finite() {
        if v == 0.0 {
            out.push_str(if v.is_sign_negative() { "-0" } else { "0" });
            return;
        }
        if v == v.trunc() && v.abs() < 1e15 {
            out.push_str(itoa::Buffer::new().format(v as i64));
            return;
        }
        let mut buf = ryu::Buffer::new();
        let s = buf.format_finite(v);
        if !s.contains('e') {
            out.push_str(s.strip_suffix(".0").unwrap_or(s));
            return;
        }
    }
    out.push_str(&promql::format_float(v));
}

fn write_point(out: &mut String, t: i64, v: f64) {
    out.push('[');
    write_ts(out, t);
    out.push_str(",\"");
    write_float(out, v);
    out.push_str("\"]");
}

fn write_labels(out: &mut String, labels: &promql::Labels) {
    out.push('{');
    for (i, (n, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(n.clone()).to_string());
        out.push(':');
        out.push_str(&Value::String(v.clone()).to_string());
    }
    out.push('}');
}

/// The `data` of a query answer as JSON text, written directly: a range query over hundreds of series
/// answers hundreds of thousands of points, which a `serde_json::Value` tree would allocate one by one.
pub(crate) fn encode_value(v: &PValue) -> String {
    let mut out = String::with_capacity(256);
    match v {
        PValue::Scalar { t, v } => {
            out.push_str("{\"resultType\":\"scalar\",\"result\":");
            write_point(&mut out, *t, *v);
        }
        PValue::String { t, s } => {
            out.push_str("{\"resultType\":\"string\",\"result\":[");
            write_ts(&mut out, *t);
            out.push(',');
            out.push_str(&Value::String(s.clone()).to_string());
            out.push(']');
        }
        PValue::Vector(samples) => {
            out.push_str("{\"resultType\":\"vector\",\"result\":[");
            for (i, (l, t, v)) in samples.iter().enumerate() {
                out.push_str(if i > 0 { ",{\"metric\":" } else { "{\"metric\":" });
                write_labels(&mut out, l);
                out.push_str(",\"value\":");
                write_point(&mut out, *t, *v);
                out.push('}');
            }
            out.push(']');
        }
        PValue::Matrix(series) => {
            out.reserve(series.iter().map(|(_, p)| 64 + p.len() * 40).sum());
            out.push_str("{\"resultType\":\"matrix\",\"result\":[");
            for (i, (l, pts)) in series.iter().enumerate() {
                out.push_str(if i > 0 { ",{\"metric\":" } else { "{\"metric\":" });
                write_labels(&mut out, l);
                out.push_str(",\"values\":[");
                for (j, (t, v)) in pts.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    write_point(&mut out, *t, *v);
                }
                out.push_str("]}");
            }
            out.push(']');
        }
    }
    out.push('}');
    out
}

/// A successful query answer, with Prometheus' `warnings` and `infos` when there are any.
fn query_answer(out: &QueryResult) -> Response {
    let mut body = String::from("{\"status\":\"success\",\"data\":");
    body.push_str(&encode_value(&out.value));
    for (key, list) in [("warnings", &out.warnings), ("infos", &out.infos)] {
        if !list.is_empty() {
            body.push_str(&format!(",\"{key}\":{}", json!(list)));
        }
    }
    body.push('}');
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Cuts a list to `limit` (0 = no limit), with Prometheus' warning when it did.
fn truncate<T>(mut items: Vec<T>, limit: usize) -> (Vec<T>, Vec<String>) {
    if limit > 0 && items.len() > limit {
        items.truncate(limit);
        return (items, vec!["results truncated due to limit".to_string()]);
    }
    (items, Vec::new())
}

fn store_error(e: store::Error) -> Response {
    tracing::error!(error = %e, "reading the metric store failed");
    error(ErrorType::Internal, format!("reading the metric store failed: {e}"))
}

async fn series(r: PromRequest) -> Response {
    let res = (|| {
        let selectors = r.selectors()?;
        if selectors.is_empty() {
            return Err(bad("no match[] parameter provided"));
        }
        let (start, end) = r.bounds()?;
        let limit = r.limit()?;
        let trees = r.state.tree_set();
        let stores = trees.metric_stores(&r.state.metric_store);
        let mut found: Vec<std::sync::Arc<store::model::Labels>> = Vec::new();
        for (_, store) in &stores {
            found.extend(store.series(&r.tenant, &selectors, start, end).map_err(store_error)?);
        }
        if stores.len() > 1 {
            // A series written through several ingest nodes is in each of their trees.
            found.sort();
            found.dedup();
        }
        let (found, warnings) = truncate(found, limit);
        let data: Vec<Value> = found.iter().map(|l| labels_obj(l.iter())).collect();
        Ok(success_with(json!(data), &warnings, &[]))
    })();
    res.unwrap_or_else(|e| e)
}

async fn labels(r: PromRequest) -> Response {
    let res = (|| {
        let selectors = r.selectors()?;
        let (start, end) = r.bounds()?;
        let limit = r.limit()?;
        let mut names = std::collections::BTreeSet::new();
        for (_, store) in r.state.tree_set().metric_stores(&r.state.metric_store) {
            names.extend(store.label_names(&r.tenant, &selectors, start, end).map_err(store_error)?);
        }
        let (names, warnings) = truncate(names.into_iter().collect(), limit);
        Ok(success_with(json!(names), &warnings, &[]))
    })();
    res.unwrap_or_else(|e| e)
}

/// A label name from the path; names that are not plain identifiers arrive escaped as `U__...`
/// (`_2e_` is `.`, `__` is `_`).
fn unescape_label_name(name: &str) -> String {
    let Some(rest) = name.strip_prefix("U__") else {
        return name.to_string();
    };
    let mut out = String::new();
    let chunks: Vec<&str> = rest.split('_').collect();
    // Chunks alternate between literal text and hex code points, split at single underscores; an
    // empty chunk between two underscores stands for `_` itself.
    let mut i = 0;
    let mut literal = true;
    while i < chunks.len() {
        let c = chunks[i];
        if literal {
            out.push_str(c);
            literal = false;
        } else if c.is_empty() {
            out.push('_');
            literal = true;
        } else {
            match u32::from_str_radix(c, 16).ok().and_then(char::from_u32) {
                Some(ch) => out.push(ch),
                None => return name.to_string(),
            }
            literal = true;
        }
        i += 1;
    }
    out
}

async fn label_values(Path(name): Path<String>, r: PromRequest) -> Response {
    let res = (|| {
        let name = unescape_label_name(&name);
        let selectors = r.selectors()?;
        let (start, end) = r.bounds()?;
        let limit = r.limit()?;
        let mut values = std::collections::BTreeSet::new();
        for (_, store) in r.state.tree_set().metric_stores(&r.state.metric_store) {
            values.extend(store.label_values(&r.tenant, &name, &selectors, start, end).map_err(store_error)?);
        }
        let (values, warnings) = truncate(values.into_iter().collect(), limit);
        Ok(success_with(json!(values), &warnings, &[]))
    })();
    res.unwrap_or_else(|e| e)
}

async fn metadata(r: PromRequest) -> Response {
    let res = (|| {
        let limit = r.limit()?;
        let metric = r.p.get("metric");
        let mut all = std::collections::BTreeMap::new();
        for (_, store) in r.state.tree_set().metric_stores(&r.state.metric_store) {
            all.extend(store.metadata(&r.tenant));
        }
        let mut out = Map::new();
        for (name, m) in all {
            if metric.is_some_and(|want| want != name) {
                continue;
            }
            if limit > 0 && out.len() >= limit {
                break;
            }
            out.insert(name, json!([{"type": m.kind, "help": m.help, "unit": m.unit}]));
        }
        Ok(success(Value::Object(out)))
    })();
    res.unwrap_or_else(|e| e)
}

/// Exemplars are not stored yet: a valid, empty answer. Grafana's start-up probe sends milliseconds
/// where seconds belong, so the times are not checked.
async fn exemplars(r: PromRequest) -> Response {
    if r.p.get("query").is_none() {
        return bad("invalid parameter \"query\": query must not be empty");
    }
    success(json!([]))
}

async fn not_allowed() -> Response {
    error(ErrorType::BadData, "deleting series is not supported")
}

async fn buildinfo() -> Response {
    success(json!({
        "version": PROMETHEUS_VERSION,
        "revision": env!("CARGO_PKG_VERSION"),
        "branch": "lumen",
        "buildUser": "lumen",
        "buildDate": "",
        "goVersion": "",
    }))
}

async fn format_query(r: PromRequest) -> Response {
    let Some(q) = r.p.get("query") else {
        return bad("invalid parameter \"query\": query must not be empty");
    };
    match promql::format_query(q) {
        Ok(s) => success(json!(s)),
        Err(e) => eval_error(e),
    }
}

/// Counts every Prometheus API answer in `lumen_query_queries_total` and `lumen_query_duration_seconds`,
/// with the route as `api` (`prom_query_range`, `prom_label_values`, ...) and the error type as outcome.
pub(crate) async fn observe(State(state): State<QueryState>, req: Request, next: Next) -> Response {
    let api = req.extensions().get::<MatchedPath>().map_or_else(
        || "prom_other".to_string(),
        |m| format!("prom_{}", m.as_str().trim_start_matches("/api/v1/").replace("/{name}", "").replace('/', "_")),
    );
    let started = Instant::now();
    let response = next.run(req).await;
    let outcome = match response.status().as_u16() {
        200..=299 => "ok",
        400 => "bad_request",
        422 => "execution",
        499 => "canceled",
        503 => "timeout",
        _ => "error",
    };
    state.metrics.observe(&api, outcome, started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_parse_as_prometheus_does() {
        assert_eq!(parse_time_ms("4"), Some(4000));
        assert_eq!(parse_time_ms("1435781451.781"), Some(1_435_781_451_781));
        assert_eq!(parse_time_ms("2015-07-01T20:10:51.781Z"), Some(1_435_781_451_781));
        assert_eq!(parse_time_ms("yesterday"), None);
        assert_eq!(parse_duration_ms("15"), Some(15_000));
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        let ts = |ms| {
            let mut s = String::new();
            write_ts(&mut s, ms);
            s
        };
        assert_eq!((ts(4000), ts(1_435_781_451_781), ts(-1500)), ("4".into(), "1435781451.781".into(), "-1.5".into()));
        assert_eq!((ts(-500), ts(1_010), ts(-2_000)), ("-0.5".into(), "1.01".into(), "-2".into()));
        for v in [
            0.0,
            -0.0,
            1.0,
            -3.0,
            0.1,
            2.0 / 3.0,
            1e15,
            1e16,
            1.5e300,
            1e-7,
            -2.5e-9,
            123456.789,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
        ] {
            let mut s = String::new();
            write_float(&mut s, v);
            assert_eq!(s, promql::format_float(v), "{v:e}");
        }
        let v = PValue::Vector(vec![(vec![("a\"b".into(), "ü".into())], 1500, f64::NAN)]);
        let parsed: Value = serde_json::from_str(&encode_value(&v)).unwrap();
        assert_eq!(
            parsed,
            json!({"resultType": "vector", "result": [{"metric": {"a\"b": "ü"}, "value": [1.5, "NaN"]}]})
        );
    }

    #[test]
    fn escaped_label_names_are_restored() {
        assert_eq!(unescape_label_name("job"), "job");
        assert_eq!(unescape_label_name("U__a_2e_b"), "a.b");
        assert_eq!(unescape_label_name("U__a__b"), "a_b");
    }
}
