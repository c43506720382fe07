//! Evaluating LogQL over the store.
//!
//! A log selection runs as one scan per core ([`store::LogStore::plan_scan`]): each task runs the
//! pipeline over its rows on a blocking thread into its own sink (a top-N heap for log queries, per-step
//! accumulators for range aggregations), and the sinks are merged. Leading `|= "literal"` filters go to
//! the store, which skips row groups by their token filters and searches the rest with memchr. Metric
//! queries read the message column only when something needs the line.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::{TimestampNanosecondType, UInt64Type};
use arrow::record_batch::RecordBatch;
use store::model::Labels;
use store::model::Tenant;
use store::{LabelMatcher, LogStore, MESSAGE, MatchOp, STREAM_ID, ScanRequest, StreamLimit, TIME};

use super::ast::*;
use super::extract;
use super::pipeline::{Category, DETECTED_LEVEL, ERROR, ERROR_DETAILS, LabelSet, Pipeline};

/// Query limits, with Loki's defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_entries: usize,
    pub max_series: usize,
    pub max_query_length: Duration,
    pub max_points: usize,
    /// What a metric query may hold in memory while it runs, in 16-byte samples (`query.max_samples`,
    /// shared with PromQL): each series' points and labels, and the values `quantile_over_time` and its
    /// kind keep.
    pub max_held_samples: usize,
    pub timeout: Duration,
    pub partitions: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_entries: 5000,
            max_series: 500,
            max_query_length: Duration::from_secs(721 * 3600),
            max_points: 11_000,
            max_held_samples: 15_000_000,
            timeout: Duration::from_secs(60),
            partitions: cores(),
        }
    }
}

/// The cores this process may use, read once: `available_parallelism` opens and reads the cgroup's files
/// on every call (3 % of a 1 ms PromQL query when every query asked).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// Order of log entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// What to evaluate over.
#[derive(Debug, Clone)]
pub struct QueryParams {
    pub start_ns: i64,
    pub end_ns: i64,
    /// 0 for an instant query.
    pub step_ns: i64,
    pub limit: usize,
    pub direction: Direction,
    pub instant: bool,
    /// Keep structured metadata and parsed labels apart from stream labels (`categorize-labels`).
    pub categorize: bool,
}

impl QueryParams {
    /// An instant query at `t` (limit 100, backward).
    pub fn instant(t: i64) -> QueryParams {
        QueryParams {
            start_ns: t,
            end_ns: t,
            step_ns: 0,
            limit: 100,
            direction: Direction::Backward,
            instant: true,
            categorize: false,
        }
    }

    /// A range query over `[start, end]` at `step` (limit 100, backward).
    pub fn range(start: i64, end: i64, step: i64) -> QueryParams {
        QueryParams { start_ns: start, end_ns: end, step_ns: step, instant: false, ..QueryParams::instant(end) }
    }
}

pub type LabelPairs = Vec<(String, String)>;

/// An answer.
#[derive(Debug, Clone)]
pub enum QueryValue {
    Streams(Vec<StreamOut>),
    Vector(Vec<(LabelPairs, i64, f64)>),
    Matrix(Vec<(LabelPairs, Vec<(i64, f64)>)>),
    Scalar(i64, f64),
}

#[derive(Debug, Clone)]
pub struct StreamOut {
    pub labels: LabelPairs,
    pub entries: Vec<EntryOut>,
}

#[derive(Debug, Clone)]
pub struct EntryOut {
    pub ts: i64,
    pub line: String,
    pub metadata: LabelPairs,
    pub parsed: LabelPairs,
}

/// What a query read, for the `stats` object.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub lines: u64,
    pub bytes: u64,
    pub entries_returned: u64,
    pub exec_time: Duration,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query or its parameters are wrong, or it hit a limit: 400.
    #[error("{0}")]
    BadRequest(String),
    #[error("query timed out after {0:?}; narrow the time range or the selector")]
    Timeout(Duration),
    #[error("{0}")]
    Store(#[from] store::Error),
}

type QResult<T> = Result<T, QueryError>;

/// The evaluator.
#[derive(Clone)]
pub struct Engine {
    pub store: LogStore,
    pub limits: Limits,
    /// On a query node, the ingest nodes asked for what the bucket does not hold yet (see
    /// [`crate::peers`]); None elsewhere.
    pub peers: Option<crate::peers::PeerCall>,
    /// On a query node, the trees read: its own stores (`store`, when `trees.root`) and the ingest nodes'
    /// (see [`crate::peers::TreeSet`]); the default elsewhere (`store` alone).
    pub trees: crate::peers::TreeSet,
}

/// Shared state of one query's scans.
struct Ctx {
    tenant: Tenant,
    cancelled: Arc<AtomicBool>,
    lines: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    detect_level: bool,
}

impl Engine {
    /// Evaluates a parsed query.
    ///
    /// # Errors
    /// [`QueryError::BadRequest`] for limits and invalid combinations, [`QueryError::Timeout`], store
    /// errors.
    pub async fn query(&self, tenant: &Tenant, expr: &Expr, params: &QueryParams) -> QResult<(QueryValue, Stats)> {
        let started = Instant::now();
        self.check_params(expr, params)?;
        let ctx = Arc::new(Ctx {
            tenant: tenant.clone(),
            cancelled: Arc::new(AtomicBool::new(false)),
            lines: Arc::default(),
            bytes: Arc::default(),
            detect_level: expr.to_string().contains(DETECTED_LEVEL),
        });
        let run = async {
            match expr {
                Expr::Log(log) => self.log_query(&ctx, log, params).await.map(QueryValue::Streams),
                Expr::Metric(m) => self.metric_query(&ctx, m, params).await,
            }
        };
        let value = match tokio::time::timeout(self.limits.timeout, run).await {
            // One that finished, but late, is late all the same.
            Ok(_) if started.elapsed() > self.limits.timeout => return Err(QueryError::Timeout(self.limits.timeout)),
            Ok(v) => v?,
            Err(_) => {
                ctx.cancelled.store(true, Ordering::Relaxed);
                return Err(QueryError::Timeout(self.limits.timeout));
            }
        };
        let entries_returned = match &value {
            QueryValue::Streams(s) => s.iter().map(|s| s.entries.len() as u64).sum(),
            QueryValue::Vector(v) => v.len() as u64,
            QueryValue::Matrix(m) => m.iter().map(|s| s.1.len() as u64).sum(),
            QueryValue::Scalar(..) => 1,
        };
        let stats = Stats {
            lines: ctx.lines.load(Ordering::Relaxed),
            bytes: ctx.bytes.load(Ordering::Relaxed),
            entries_returned,
            exec_time: started.elapsed(),
        };
        Ok((value, stats))
    }

    fn check_params(&self, expr: &Expr, p: &QueryParams) -> QResult<()> {
        if p.end_ns < p.start_ns {
            return Err(QueryError::BadRequest(format!(
                "invalid query, through < from ({} < {}); the end must not be before the start",
                p.end_ns, p.start_ns
            )));
        }
        let length = Duration::from_nanos(p.end_ns.saturating_sub(p.start_ns).unsigned_abs());
        if length > self.limits.max_query_length {
            return Err(QueryError::BadRequest(format!(
                "the query time range exceeds the limit (query length: {}, limit: {}); narrow the time range",
                humantime::format_duration(Duration::from_secs(length.as_secs())),
                humantime::format_duration(self.limits.max_query_length)
            )));
        }
        if matches!(expr, Expr::Log(_)) {
            if p.instant {
                return Err(QueryError::BadRequest(
                    "log queries are not supported as an instant query type, please change your query to a range query type".into(),
                ));
            }
            if p.limit > self.limits.max_entries {
                return Err(QueryError::BadRequest(format!(
                    "max entries limit per query exceeded, limit > max_entries_limit_per_query ({} > {})",
                    p.limit, self.limits.max_entries
                )));
            }
        } else if !p.instant {
            if p.step_ns <= 0 {
                return Err(QueryError::BadRequest(
                    "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
                ));
            }
            let points = (p.end_ns - p.start_ns) / p.step_ns + 1;
            if points as usize > self.limits.max_points {
                return Err(QueryError::BadRequest(format!(
                    "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
                    self.limits.max_points
                )));
            }
        }
        Ok(())
    }

    // ----- log queries -----

    async fn log_query(&self, ctx: &Arc<Ctx>, log: &LogExpr, p: &QueryParams) -> QResult<Vec<StreamOut>> {
        let limit = p.limit;
        let backward = p.direction == Direction::Backward;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let categorize = p.categorize;
        let held = Arc::new(Held::new(self.limits.max_held_samples));
        let sinks = self
            .select(
                ctx,
                log,
                p.start_ns,
                p.end_ns,
                MetaNeed::All,
                Some(StreamLimit { rows: limit as u64, newest: backward }),
                true,
                move || LogSink {
                    limit,
                    backward,
                    heap: BinaryHeap::new(),
                    seq: 0,
                    categorize,
                    held: held.clone(),
                    over: false,
                },
            )
            .await?;
        let mut all: Vec<HeapItem> = sinks.into_iter().flat_map(|s| s.heap.into_vec()).collect();
        all.sort_by_key(|h| (h.badness, h.seq));
        all.truncate(limit);
        let mut streams: HashMap<LabelPairs, Vec<EntryOut>> = HashMap::new();
        for item in all {
            streams.entry(item.stream).or_default().push(item.entry);
        }
        let mut out: Vec<StreamOut> = streams
            .into_iter()
            .map(|(labels, mut entries)| {
                if backward {
                    entries.sort_by_key(|e| std::cmp::Reverse(e.ts));
                } else {
                    entries.sort_by_key(|e| e.ts);
                }
                StreamOut { labels, entries }
            })
            .collect();
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    /// Runs a log selection over `[start, end)` on every core, each task feeding its own sink.
    #[allow(clippy::too_many_arguments)] // one call per query kind; a struct would only rename them
    async fn select<S: Sink>(
        &self,
        ctx: &Arc<Ctx>,
        log: &LogExpr,
        start: i64,
        end: i64,
        meta: MetaNeed,
        stream_limit: Option<StreamLimit>,
        needs_line: bool,
        make_sink: impl Fn() -> S,
    ) -> QResult<Vec<S>> {
        // On a query node, what the ingest nodes hold that this node's parts do not, asked for below once
        // the scan is known. Elsewhere the streams are found first, so that a selection of none reads
        // nothing.
        let stores = self.trees.log_stores(&self.store);
        let mut labels: HashMap<u64, Arc<Labels>> = HashMap::new();
        if self.peers.is_none() {
            for (_, store) in &stores {
                labels.extend(store.series(&ctx.tenant, &log.matchers, start, end));
            }
            if labels.is_empty() {
                return Ok(Vec::new());
            }
        }
        // Leading `|= "literal"` filters are done by the store.
        let mut stages = log.stages.as_slice();
        let mut line_contains = Vec::new();
        while let Some(Stage::LineFilter(f)) = stages.first() {
            if f.op != FilterOp::Contains || f.values.len() != 1 || f.values[0].text.is_empty() {
                break;
            }
            line_contains.push(f.values[0].text.clone());
            stages = &stages[1..];
        }
        // A leading `|~` keeps its stage, but the store may drop lines without its required literal.
        if let Some(Stage::LineFilter(f)) = stages.first()
            && f.op == FilterOp::Regex
            && f.values.len() == 1
            && let Some(lit) = super::pipeline::required_literal(&f.values[0].text)
        {
            line_contains.push(lit);
        }
        let pipeline = Arc::new(Pipeline::new(stages, ctx.detect_level));
        let needs_line = !pipeline.is_empty() || needs_line;
        let mut columns = vec![TIME.to_string(), STREAM_ID.to_string()];
        if needs_line {
            columns.push(MESSAGE.to_string());
        }
        let all_meta = pipeline.touches_labels || matches!(meta, MetaNeed::All);
        // Fields, and label columns: a part stores a field named like another stream's label in that
        // label's column (`feed` tells them apart by the row's stream).
        let mut candidates: Vec<String> = self.field_names(&ctx.tenant).into_iter().collect();
        let label_names = self.label_names(&ctx.tenant);
        if all_meta {
            candidates.extend(label_names.iter().map(|n| store::label_column(n)));
        } else if let MetaNeed::Only(set) = &meta {
            candidates.extend(label_names.iter().filter(|n| set.contains(*n)).cloned());
        }
        candidates.sort();
        candidates.dedup();
        for name in candidates {
            if matches!(name.as_str(), TIME | STREAM_ID | MESSAGE) {
                continue;
            }
            if all_meta || matches!(&meta, MetaNeed::Only(set) if set.contains(&name)) {
                columns.push(name);
            }
        }
        let stream_limit = stream_limit.filter(|_| line_contains.is_empty() && pipeline.is_empty());
        let req = ScanRequest {
            tenant: ctx.tenant.clone(),
            start_ns: start,
            end_ns: end,
            matchers: log.matchers.clone(),
            line_contains,
            columns: Some(columns),
            stream_limit,
            parts: store::PartFilter::All,
            fields_present: Vec::new(),
        };
        // Each tree's parts, less those its ingest node no longer holds, plus that node's other rows.
        let mut extra = Vec::new();
        let mut tasks = Vec::new();
        let deltas = self.deltas(&stores, &req).await?;
        for ((_, store), delta) in stores.iter().zip(deltas) {
            let mut req = req.clone();
            if let Some(d) = delta {
                req.parts = store::PartFilter::Only(Arc::new(d.keep));
                labels.extend(d.streams);
                extra.extend(d.batches);
            }
            if self.peers.is_some() {
                // After the delta: the parts this node said it holds may have been applied by a follow
                // just before, and their streams must be known (found before the delta, a part applied
                // in between was read by neither side's labels, and its rows dropped).
                labels.extend(store.series(&ctx.tenant, &log.matchers, start, end));
            }
            tasks.extend(store.plan_scan(req, self.limits.partitions).1);
        }
        if labels.is_empty() {
            return Ok(Vec::new());
        }
        let labels = Arc::new(labels);
        let mut handles = Vec::with_capacity(tasks.len() + 1);
        if !extra.is_empty() {
            // The ingest node's rows are filtered already: they go through the pipeline like the others.
            let mut sink = make_sink();
            let pipeline = pipeline.clone();
            let labels = labels.clone();
            let (lines, bytes) = (ctx.lines.clone(), ctx.bytes.clone());
            handles.push(tokio::task::spawn_blocking(move || {
                for batch in &extra {
                    feed(batch, &pipeline, &labels, &mut sink, &lines, &bytes)?;
                }
                Ok(sink)
            }));
        }
        for task in tasks {
            let mut sink = make_sink();
            let pipeline = pipeline.clone();
            let labels = labels.clone();
            let cancelled = ctx.cancelled.clone();
            let (lines, bytes) = (ctx.lines.clone(), ctx.bytes.clone());
            handles.push(tokio::task::spawn_blocking(move || {
                let mut result = Ok(());
                let run = task.run(|batch| {
                    if cancelled.load(Ordering::Relaxed) {
                        return false;
                    }
                    if let Err(e) = feed(&batch, &pipeline, &labels, &mut sink, &lines, &bytes) {
                        result = Err(e);
                        return false;
                    }
                    true
                });
                run.map_err(QueryError::Store).and(result).map(|()| sink)
            }));
        }
        let mut sinks = Vec::with_capacity(handles.len());
        for h in handles {
            sinks.push(h.await.map_err(|e| QueryError::BadRequest(format!("query task failed: {e}")))??);
        }
        Ok(sinks)
    }

    /// Asks every tree's ingest node at once for what `req` reads beyond the tree's parts (None each where
    /// this is no query node, or where no node answered).
    async fn deltas(
        &self,
        stores: &[(&str, &LogStore)],
        req: &ScanRequest,
    ) -> QResult<Vec<Option<crate::peers::LogDelta>>> {
        match &self.peers {
            Some(peers) => peers.log_deltas(stores, req).await.map_err(QueryError::BadRequest),
            None => Ok(stores.iter().map(|_| None).collect()),
        }
    }

    /// The tenant's field names in every tree read.
    fn field_names(&self, tenant: &Tenant) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        for (_, store) in self.trees.log_stores(&self.store) {
            names.extend(store.field_names(tenant));
        }
        names
    }

    /// The tenant's label names in every tree read, sorted.
    fn label_names(&self, tenant: &Tenant) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (_, store) in self.trees.log_stores(&self.store) {
            names.extend(store.label_names(tenant));
        }
        names.sort();
        names.dedup();
        names
    }

    // ----- metric queries -----

    async fn metric_query(&self, ctx: &Arc<Ctx>, m: &MetricExpr, p: &QueryParams) -> QResult<QueryValue> {
        let steps = Steps::new(p);
        let value = self.eval(ctx, m, &steps, MetaNeed::All).await?;
        let ordered =
            matches!(strip_parens(m), MetricExpr::Vector(v) if matches!(v.op, VectorOp::Sort | VectorOp::SortDesc));
        Ok(match value {
            Value::Scalar(v) => {
                if p.instant {
                    QueryValue::Scalar(steps.at(0), v)
                } else {
                    QueryValue::Matrix(vec![(Vec::new(), (0..steps.n).map(|k| (steps.at(k), v)).collect())])
                }
            }
            Value::Vector(mut series) => {
                series.retain(|s| s.points.iter().any(Option::is_some));
                if series.len() > self.limits.max_series {
                    return Err(too_many_series(self.limits.max_series));
                }
                if !ordered {
                    series.sort_by(|a, b| a.labels.cmp(&b.labels));
                }
                if p.instant {
                    QueryValue::Vector(
                        series.into_iter().filter_map(|s| s.points[0].map(|v| (s.labels, steps.at(0), v))).collect(),
                    )
                } else {
                    QueryValue::Matrix(
                        series
                            .into_iter()
                            .map(|s| {
                                let pts = s.points.iter().enumerate().filter_map(|(k, v)| v.map(|v| (steps.at(k), v)));
                                (s.labels, pts.collect())
                            })
                            .collect(),
                    )
                }
            }
        })
    }

    fn eval<'a>(
        &'a self,
        ctx: &'a Arc<Ctx>,
        m: &'a MetricExpr,
        steps: &'a Steps,
        meta: MetaNeed,
    ) -> futures::future::BoxFuture<'a, QResult<Value>> {
        Box::pin(async move {
            match m {
                MetricExpr::Literal(v) => Ok(Value::Scalar(*v)),
                MetricExpr::VectorLit(v) => {
                    Ok(Value::Vector(vec![Series { labels: Vec::new(), points: vec![Some(*v); steps.n] }]))
                }
                MetricExpr::Paren(e) => self.eval(ctx, e, steps, meta).await,
                MetricExpr::Range(r) => self.range_agg(ctx, r, steps, meta).await.map(Value::Vector),
                MetricExpr::Vector(v) => {
                    let inner_meta = match (&v.op, &v.grouping) {
                        (VectorOp::Sum, None) => MetaNeed::Only(HashSet::new()),
                        (VectorOp::Sum, Some(g)) if !g.without => MetaNeed::Only(g.labels.iter().cloned().collect()),
                        _ => MetaNeed::All,
                    };
                    let input = match self.eval(ctx, &v.expr, steps, inner_meta).await? {
                        Value::Vector(s) => s,
                        Value::Scalar(_) => {
                            return Err(QueryError::BadRequest(format!(
                                "{} expects a vector, got a scalar; wrap the number in vector()",
                                v.op.name()
                            )));
                        }
                    };
                    Ok(Value::Vector(vector_agg(v, input, steps.n)))
                }
                MetricExpr::Binary(b) => {
                    let lhs = self.eval(ctx, &b.lhs, steps, MetaNeed::All).await?;
                    let rhs = self.eval(ctx, &b.rhs, steps, MetaNeed::All).await?;
                    binary(b, lhs, rhs, steps.n)
                }
                MetricExpr::LabelReplace(l) => {
                    let Value::Vector(mut series) = self.eval(ctx, &l.expr, steps, MetaNeed::All).await? else {
                        return Err(QueryError::BadRequest("label_replace expects a vector".into()));
                    };
                    for s in &mut series {
                        label_replace(l, &mut s.labels);
                    }
                    Ok(Value::Vector(series))
                }
            }
        })
    }

    async fn range_agg(&self, ctx: &Arc<Ctx>, r: &RangeAgg, steps: &Steps, meta: MetaNeed) -> QResult<Vec<Series>> {
        // Rows that can fall in some window: (first - offset - range, last - offset].
        let lo = steps.at(0).saturating_sub(r.offset_ns).saturating_sub(r.range_ns).saturating_add(1);
        let hi = steps.at(steps.n - 1).saturating_sub(r.offset_ns).saturating_add(1);
        let meta = if r.op.is_linear() { meta } else { MetaNeed::All };
        let linear_count = matches!(r.op, RangeOp::Count | RangeOp::Rate) && r.unwrap.is_none();
        let mut series = if steps.n == 1
            && linear_count
            && r.log.stages.is_empty()
            && r.grouping.is_none()
            && !ctx.detect_level
            && self.no_metadata_needed(&ctx.tenant, &meta)
        {
            // Counting whole streams: the index knows. On a query node, for the parts the ingest node
            // kept; the rows it holds beyond them are counted as they come.
            let mut counts: HashMap<u64, u64> = HashMap::new();
            let mut labels: HashMap<u64, Arc<Labels>> = HashMap::new();
            let stores = self.trees.log_stores(&self.store);
            let mut req = ScanRequest::all(ctx.tenant.clone());
            (req.start_ns, req.end_ns, req.matchers) = (lo, hi, r.log.matchers.clone());
            req.columns = Some(vec![TIME.to_string(), STREAM_ID.to_string()]);
            let deltas = self.deltas(&stores, &req).await?;
            for ((_, store), delta) in stores.into_iter().zip(deltas) {
                // Counting whole streams: the index knows, for the parts the tree's node kept; the rows it
                // holds beyond them are counted as they come.
                let parts = delta
                    .as_ref()
                    .map_or(store::PartFilter::All, |d| store::PartFilter::Only(Arc::new(d.keep.clone())));
                let mut found = store.count_by_stream_in(&ctx.tenant, &r.log.matchers, lo, hi, &parts)?;
                if let Some(d) = delta {
                    for batch in &d.batches {
                        if let Some(ids) = batch.column_by_name(STREAM_ID) {
                            for id in ids.as_primitive::<arrow::datatypes::UInt64Type>().values() {
                                *found.entry(*id).or_default() += 1;
                            }
                        }
                    }
                    labels.extend(d.streams);
                }
                labels.extend(store.stream_labels(&ctx.tenant, found.keys().copied()));
                for (id, c) in found {
                    *counts.entry(id).or_default() += c;
                }
            }
            let secs = r.range_ns as f64 / 1e9;
            counts
                .into_iter()
                .filter(|(_, c)| *c > 0)
                .filter_map(|(id, c)| {
                    let l = labels.get(&id)?;
                    let v = if r.op == RangeOp::Rate { c as f64 / secs } else { c as f64 };
                    Some(Series {
                        labels: l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                        points: vec![Some(v)],
                    })
                })
                .collect()
        } else {
            // Under `sum` or `sum by (...)`, a linear aggregation keeps only the sum's labels (and the
            // error labels, so a pipeline error is still reported): the same sums, with one series per
            // group instead of one per label set.
            let grouping = match (&r.grouping, &meta) {
                (None, MetaNeed::Only(keep)) if r.op.is_linear() => {
                    let mut labels: Vec<String> = keep.iter().cloned().collect();
                    labels.extend([ERROR.to_string(), ERROR_DETAILS.to_string()]);
                    labels.sort();
                    Some(Grouping { without: false, labels })
                }
                (g, _) => g.clone(),
            };
            let spec = Arc::new(RangeSpec {
                op: r.op,
                steps: steps.clone(),
                range_ns: r.range_ns,
                offset_ns: r.offset_ns,
                unwrap: r.unwrap.clone(),
                grouping,
                held: Held::new(self.limits.max_held_samples),
            });
            let sinks = self
                .select(ctx, &r.log, lo, hi, meta, None, matches!(r.op, RangeOp::Bytes | RangeOp::BytesRate), || {
                    MetricSink::new(spec.clone())
                })
                .await?;
            let mut merged = MetricSink::merged(spec.clone());
            for s in sinks {
                merged.merge(s);
            }
            merged.finish(r.param)
        };
        if let Some(bad) = series.iter().find(|s| s.labels.iter().any(|(k, v)| k == ERROR && !v.is_empty())) {
            let err = bad.labels.iter().find(|(k, _)| k == ERROR).map(|(_, v)| v.clone()).unwrap_or_default();
            return Err(QueryError::BadRequest(format!(
                "pipeline error: '{err}' for series: '{}'. Use a label filter to intentionally skip this error (e.g. | __error__!=\"{err}\"), or skip all errors with | __error__=\"\"; the label filter can also follow unwrap (e.g. | unwrap latency | __error__=\"\")",
                format_labels(&bad.labels)
            )));
        }
        if r.op == RangeOp::Absent {
            series = absent(&r.log.matchers, &series, steps.n);
        }
        Ok(series)
    }

    fn no_metadata_needed(&self, tenant: &Tenant, meta: &MetaNeed) -> bool {
        let fields = self.field_names(tenant);
        match meta {
            MetaNeed::All => fields.is_empty(),
            MetaNeed::Only(set) => fields.iter().all(|f| !set.contains(f)),
        }
    }
}

fn too_many_series(max: usize) -> QueryError {
    QueryError::BadRequest(format!(
        "maximum number of series ({max}) reached for a single query; consider reducing query cardinality by adding more specific stream selectors, reducing the time range, or aggregating results with functions like sum(), count() or topk()"
    ))
}

fn strip_parens(m: &MetricExpr) -> &MetricExpr {
    match m {
        MetricExpr::Paren(e) => strip_parens(e),
        other => other,
    }
}

/// Which structured-metadata columns a range aggregation must read: all of them, or only some because
/// the enclosing `sum by (...)` discards the rest (splitting a linear count by more labels and summing it
/// back changes nothing).
#[derive(Debug, Clone)]
enum MetaNeed {
    All,
    Only(HashSet<String>),
}

impl RangeOp {
    fn is_linear(self) -> bool {
        matches!(self, RangeOp::Count | RangeOp::Rate | RangeOp::Bytes | RangeOp::BytesRate | RangeOp::Sum)
    }

    /// Whether its accumulator keeps every value of the window rather than a running figure.
    fn keeps_samples(self) -> bool {
        matches!(self, RangeOp::Stdvar | RangeOp::Stddev | RangeOp::Quantile | RangeOp::RateCounter)
    }
}

// ----- rows into sinks -----

trait Sink: Send + 'static {
    /// Whether a row at `ts` can still matter.
    fn wants(&self, _ts: i64) -> bool {
        true
    }
    /// Set once the sink went over a limit: the scan stops with this error.
    fn over(&self) -> Option<QueryError> {
        None
    }
    /// An entry that passed the pipeline. `labels` is `None` when the entry's labels are exactly its
    /// stream's.
    fn accept(&mut self, ts: i64, sid: u64, line: &str, labels: Option<&mut LabelSet>, stream: &Arc<Labels>);

    /// An entry whose labels are its stream's plus `detected_level`.
    fn accept_with_level(&mut self, ts: i64, sid: u64, line: &str, level: &'static str, stream: &Arc<Labels>) {
        let mut set = LabelSet::from_stream(stream);
        set.set(DETECTED_LEVEL, level, Category::Metadata);
        self.accept(ts, sid, line, Some(&mut set), stream);
    }
}

fn feed<S: Sink>(
    batch: &RecordBatch,
    pipeline: &Pipeline,
    labels: &HashMap<u64, Arc<Labels>>,
    sink: &mut S,
    lines: &AtomicU64,
    bytes: &AtomicU64,
) -> QResult<()> {
    let n = batch.num_rows();
    let times = batch.column_by_name(TIME).map(|c| c.as_primitive::<TimestampNanosecondType>().values().clone());
    let ids = batch.column_by_name(STREAM_ID).map(|c| c.as_primitive::<UInt64Type>().values().clone());
    let (Some(times), Some(ids)) = (times, ids) else {
        return Ok(());
    };
    let msgs: Option<&StringArray> = batch.column_by_name(MESSAGE).map(|c| c.as_string::<i32>());
    let meta: Vec<(&str, &StringArray)> = batch
        .schema_ref()
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| !matches!(f.name().as_str(), TIME | STREAM_ID | MESSAGE))
        .map(|(f, c)| (f.name().as_str(), c.as_string::<i32>()))
        .collect();
    let meta_nonnull: Vec<&(&str, &StringArray)> = meta.iter().filter(|(_, c)| c.null_count() < c.len()).collect();
    let line_only = pipeline.line_only();
    let only_level = pipeline.only_detects_level();
    let (mut n_lines, mut n_bytes) = (0u64, 0u64);
    let mut last: Option<(u64, Arc<Labels>)> = None;
    // The level the stream's labels decide, for the stream of `last`.
    let mut stream_level: Option<&'static str> = None;
    for i in 0..n {
        if let Some(e) = sink.over() {
            return Err(e);
        }
        let ts = times[i];
        if !sink.wants(ts) {
            continue;
        }
        let sid = ids[i];
        let stream = match &last {
            Some((id, l)) if *id == sid => l.clone(),
            _ => {
                let Some(l) = labels.get(&sid) else { continue };
                last = Some((sid, l.clone()));
                if only_level {
                    stream_level = extract::level_from_labels(&|n| l.get(n).map(str::to_string));
                }
                l.clone()
            }
        };
        let line = msgs.map_or("", |m| m.value(i));
        n_lines += 1;
        n_bytes += line.len() as u64;
        // A column named like a label holds that label for streams that have it (parts store labels as
        // columns), and structured metadata for the others.
        let is_meta = |name: &str, col: &StringArray| col.is_valid(i) && stream.get(name).is_none();
        let has_meta = meta_nonnull.iter().any(|(name, c)| is_meta(name, c));
        if line_only && !has_meta {
            if pipeline.filter_line(line) {
                sink.accept(ts, sid, line, None, &stream);
            }
            continue;
        }
        if only_level && !has_meta && stream.get(DETECTED_LEVEL).is_none() {
            let level = stream_level.unwrap_or_else(|| extract::level_from_line(line));
            sink.accept_with_level(ts, sid, line, level, &stream);
            continue;
        }
        let mut set = LabelSet::from_stream(&stream);
        for (name, col) in &meta_nonnull {
            if is_meta(name, col) {
                set.set(name, col.value(i), Category::Metadata);
            }
        }
        if let Some(out) = pipeline.process(ts, line, &mut set) {
            sink.accept(ts, sid, &out, Some(&mut set), &stream);
        }
    }
    lines.fetch_add(n_lines, Ordering::Relaxed);
    bytes.fetch_add(n_bytes, Ordering::Relaxed);
    sink.over().map_or(Ok(()), Err)
}

fn pairs(labels: &Labels) -> LabelPairs {
    labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

// ----- log sink -----

struct HeapItem {
    /// Lower is better: `-ts` going backward, `ts` going forward.
    badness: i64,
    seq: u64,
    stream: LabelPairs,
    entry: EntryOut,
}

impl PartialEq for HeapItem {
    fn eq(&self, other: &Self) -> bool {
        (self.badness, self.seq) == (other.badness, other.seq)
    }
}
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.badness, self.seq).cmp(&(other.badness, other.seq))
    }
}

struct LogSink {
    limit: usize,
    backward: bool,
    heap: BinaryHeap<HeapItem>,
    seq: u64,
    categorize: bool,
    held: Arc<Held>,
    over: bool,
}

impl LogSink {
    fn badness(&self, ts: i64) -> i64 {
        if self.backward { -ts } else { ts }
    }
}

impl Sink for LogSink {
    fn wants(&self, ts: i64) -> bool {
        self.heap.len() < self.limit || self.heap.peek().is_some_and(|w| self.badness(ts) < w.badness)
    }

    fn over(&self) -> Option<QueryError> {
        self.over.then(|| self.held.lines_error())
    }

    fn accept(&mut self, ts: i64, _sid: u64, line: &str, labels: Option<&mut LabelSet>, stream: &Arc<Labels>) {
        let (stream_key, metadata, parsed) = match labels {
            None => (pairs(stream), Vec::new(), Vec::new()),
            Some(set) if self.categorize => {
                (set.sorted_of(Category::Stream), set.sorted_of(Category::Metadata), set.sorted_of(Category::Parsed))
            }
            Some(set) => (set.sorted(), Vec::new(), Vec::new()),
        };
        self.seq += 1;
        let entry = EntryOut { ts, line: line.to_string(), metadata, parsed };
        if !self.held.charge(entry_cost(&stream_key, &entry)) {
            self.over = true;
            return;
        }
        let item = HeapItem { badness: self.badness(ts), seq: self.seq, stream: stream_key, entry };
        self.heap.push(item);
        if self.heap.len() > self.limit
            && let Some(worst) = self.heap.pop()
        {
            self.held.release(entry_cost(&worst.stream, &worst.entry));
        }
    }
}

// ----- metric sink -----

/// Evaluation timestamps: `start + k * step` for `k < n`.
#[derive(Debug, Clone)]
struct Steps {
    start: i64,
    step: i64,
    n: usize,
}

impl Steps {
    fn new(p: &QueryParams) -> Steps {
        if p.instant || p.step_ns <= 0 {
            let t = if p.instant { p.end_ns } else { p.start_ns };
            Steps { start: t, step: 0, n: 1 }
        } else {
            Steps { start: p.start_ns, step: p.step_ns, n: ((p.end_ns - p.start_ns) / p.step_ns + 1) as usize }
        }
    }

    fn at(&self, k: usize) -> i64 {
        self.start + self.step * k as i64
    }

    /// Steps whose window `(t - offset - range, t - offset]` holds `ts`.
    fn covering(&self, ts: i64, range: i64, offset: i64) -> std::ops::Range<usize> {
        let lo_t = ts.saturating_add(offset); // t >= lo_t
        let hi_t = lo_t.saturating_add(range - 1); // t <= hi_t
        if self.step == 0 {
            return if self.start >= lo_t && self.start <= hi_t { 0..1 } else { 0..0 };
        }
        let first = if lo_t <= self.start { 0 } else { (lo_t - self.start + self.step - 1) / self.step };
        if hi_t < self.start {
            return 0..0;
        }
        let last = ((hi_t - self.start) / self.step).min(self.n as i64 - 1);
        if first > last { 0..0 } else { first as usize..last as usize + 1 }
    }
}

struct RangeSpec {
    op: RangeOp,
    steps: Steps,
    range_ns: i64,
    offset_ns: i64,
    unwrap: Option<Unwrap>,
    grouping: Option<Grouping>,
    held: Held,
}

/// Memory a query holds, counted before it is allocated, in 16-byte samples over all of the query's
/// scan tasks (`query.max_samples`, as PromQL counts). A metric query's series cost their labels' bytes
/// and two samples per step (an accumulator takes 32 bytes), and every value kept for
/// `quantile_over_time`, `stddev_over_time` and the like one more; a log query's lines kept as
/// candidates cost their bytes, labels and metadata included.
struct Held {
    used: AtomicUsize,
    max: usize,
}

impl Held {
    fn new(max: usize) -> Held {
        Held { used: AtomicUsize::new(0), max }
    }

    /// Counts `n` more; false once the query is over its limit.
    fn charge(&self, n: usize) -> bool {
        self.used.fetch_add(n, Ordering::Relaxed).saturating_add(n) <= self.max
    }

    /// Gives back `n` (a candidate line dropped).
    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    fn metric_error(&self) -> QueryError {
        QueryError::BadRequest(format!(
            "the query would hold more than query.max_samples ({}) samples in memory (a LogQL metric query holds two \
             per series and step, its labels, and the values quantile_over_time and its kind keep); narrow the \
             selector or the time range, raise the step, or group by fewer labels",
            self.max
        ))
    }

    fn lines_error(&self) -> QueryError {
        QueryError::BadRequest(format!(
            "the lines this query returns would take more than {} MiB in memory (query.max_samples ({}) × 16 bytes); \
             lower the limit, or narrow the selector or the time range",
            self.max.saturating_mul(16) >> 20,
            self.max
        ))
    }
}

/// A candidate line's cost, in samples: its text, its stream's labels, metadata and parsed labels.
fn entry_cost(stream: &LabelPairs, entry: &EntryOut) -> usize {
    let pairs = |l: &LabelPairs| l.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>();
    (entry.line.len() + pairs(stream) + pairs(&entry.metadata) + pairs(&entry.parsed) + 96) / 16
}

/// The cost of a series slot, in samples: its points and its labels' bytes.
fn slot_cost(labels: &LabelPairs, steps: usize) -> usize {
    let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
    steps.saturating_mul(2).saturating_add(bytes / 16 + 4)
}

#[derive(Debug, Clone)]
enum Acc {
    Sum(f64),
    Avg(f64, f64),
    Min(f64),
    Max(f64),
    First(i64, f64),
    Last(i64, f64),
    Samples(Vec<(i64, f64)>),
}

impl Acc {
    fn new(op: RangeOp, ts: i64, v: f64) -> Acc {
        match op {
            RangeOp::Count | RangeOp::Rate | RangeOp::Bytes | RangeOp::BytesRate | RangeOp::Sum | RangeOp::Absent => {
                Acc::Sum(v)
            }
            RangeOp::Avg => Acc::Avg(v, 1.0),
            RangeOp::Min => Acc::Min(v),
            RangeOp::Max => Acc::Max(v),
            RangeOp::First => Acc::First(ts, v),
            RangeOp::Last => Acc::Last(ts, v),
            RangeOp::Stdvar | RangeOp::Stddev | RangeOp::Quantile | RangeOp::RateCounter => Acc::Samples(vec![(ts, v)]),
        }
    }

    fn add(&mut self, ts: i64, v: f64) {
        match self {
            Acc::Sum(s) => *s += v,
            Acc::Avg(s, c) => {
                *s += v;
                *c += 1.0;
            }
            Acc::Min(m) => {
                if v < *m || m.is_nan() {
                    *m = v;
                }
            }
            Acc::Max(m) => {
                if v > *m || m.is_nan() {
                    *m = v;
                }
            }
            Acc::First(t, x) => {
                if ts < *t {
                    (*t, *x) = (ts, v);
                }
            }
            Acc::Last(t, x) => {
                if ts >= *t {
                    (*t, *x) = (ts, v);
                }
            }
            Acc::Samples(s) => s.push((ts, v)),
        }
    }

    fn merge(&mut self, other: Acc) {
        match (self, other) {
            (Acc::Sum(a), Acc::Sum(b)) => *a += b,
            (Acc::Avg(s, c), Acc::Avg(s2, c2)) => {
                *s += s2;
                *c += c2;
            }
            (me @ (Acc::Min(_) | Acc::Max(_)), Acc::Min(v) | Acc::Max(v)) => me.add(0, v),
            (me @ (Acc::First(..) | Acc::Last(..)), Acc::First(t, v) | Acc::Last(t, v)) => me.add(t, v),
            (Acc::Samples(a), Acc::Samples(b)) => a.extend(b),
            _ => {}
        }
    }

    fn finish(self, op: RangeOp, param: Option<f64>, range_ns: i64) -> f64 {
        let secs = range_ns as f64 / 1e9;
        match self {
            Acc::Sum(s) => match op {
                RangeOp::Rate | RangeOp::BytesRate => s / secs,
                _ => s,
            },
            Acc::Avg(s, c) => s / c,
            Acc::Min(v) | Acc::Max(v) | Acc::First(_, v) | Acc::Last(_, v) => v,
            Acc::Samples(mut s) => match op {
                RangeOp::Stdvar | RangeOp::Stddev => {
                    let n = s.len() as f64;
                    let mean = s.iter().map(|x| x.1).sum::<f64>() / n;
                    let var = s.iter().map(|x| (x.1 - mean).powi(2)).sum::<f64>() / n;
                    if op == RangeOp::Stddev { var.sqrt() } else { var }
                }
                RangeOp::Quantile => {
                    let mut values: Vec<f64> = s.iter().map(|x| x.1).collect();
                    quantile(param.unwrap_or(0.5), &mut values)
                }
                _ => {
                    s.sort_by_key(|x| x.0);
                    loki_rate_counter(&s, range_ns)
                }
            },
        }
    }
}

/// Prometheus' quantile: linear interpolation between the closest ranks.
fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0) as usize;
    let upper = (lower + 1).min(values.len() - 1);
    let weight = rank - rank.floor();
    values[lower] * (1.0 - weight) + values[upper] * weight
}

/// `rate_counter` as Loki computes it: Prometheus' extrapolated counter rate, but with Loki's mixed
/// time units (nanosecond sample times, a window start in milliseconds divided by 1000), which in
/// effect extrapolates the first sample by the range in seconds over an interval measured in
/// microseconds and never extrapolates the last. Matches values captured from Loki 3.7.
fn loki_rate_counter(samples: &[(i64, f64)], range_ns: i64) -> f64 {
    if samples.len() < 2 {
        return 0.0;
    }
    let (first_t, first_v) = samples[0];
    let (last_t, _) = samples[samples.len() - 1];
    let mut increase = samples[samples.len() - 1].1 - first_v;
    let mut prev = first_v;
    for &(_, v) in &samples[1..] {
        if v < prev {
            increase += prev;
        }
        prev = v;
    }
    let sampled_us = (last_t - first_t) as f64 / 1e3;
    if sampled_us == 0.0 {
        return 0.0;
    }
    let range_s = range_ns as f64 / 1e9;
    increase * (sampled_us + range_s) / sampled_us / range_s
}

struct MetricSink {
    spec: Arc<RangeSpec>,
    by_stream: HashMap<u64, usize>,
    by_stream_level: HashMap<(u64, &'static str), usize>,
    by_labels: HashMap<LabelPairs, usize>,
    series: Vec<(LabelPairs, Vec<Option<Acc>>)>,
    /// Whether what this sink allocates is counted in `spec.held` (not for the sink the scan tasks'
    /// sinks merge into: what it takes over was counted once).
    counted: bool,
    /// Over `spec.held`'s limit: nothing more is added, and the scan stops.
    over: bool,
}

impl MetricSink {
    fn new(spec: Arc<RangeSpec>) -> MetricSink {
        MetricSink {
            spec,
            by_stream: HashMap::new(),
            by_stream_level: HashMap::new(),
            by_labels: HashMap::new(),
            series: Vec::new(),
            counted: true,
            over: false,
        }
    }

    fn merged(spec: Arc<RangeSpec>) -> MetricSink {
        MetricSink { counted: false, ..MetricSink::new(spec) }
    }

    fn charge(&mut self, n: usize) -> bool {
        if self.counted && !self.spec.held.charge(n) {
            self.over = true;
        }
        !self.over
    }

    fn slot_for_labels(&mut self, labels: LabelPairs) -> usize {
        if let Some(&i) = self.by_labels.get(&labels) {
            return i;
        }
        if !self.charge(slot_cost(&labels, self.spec.steps.n)) {
            // `add` adds nothing once over, and the scan stops at the next row.
            return 0;
        }
        let i = self.series.len();
        self.series.push((labels.clone(), vec![None; self.spec.steps.n]));
        self.by_labels.insert(labels, i);
        i
    }

    fn add(&mut self, slot: usize, ts: i64, v: f64) {
        if self.over {
            return;
        }
        let op = self.spec.op;
        let range = self.spec.steps.covering(ts, self.spec.range_ns, self.spec.offset_ns);
        if op.keeps_samples() && !self.charge(range.len()) {
            return;
        }
        let points = &mut self.series[slot].1;
        for k in range {
            match &mut points[k] {
                Some(acc) => acc.add(ts, v),
                p @ None => *p = Some(Acc::new(op, ts, v)),
            }
        }
    }

    fn merge(&mut self, other: MetricSink) {
        for (labels, points) in other.series {
            let slot = self.slot_for_labels(labels);
            for (k, p) in points.into_iter().enumerate() {
                let Some(p) = p else { continue };
                match &mut self.series[slot].1[k] {
                    Some(acc) => acc.merge(p),
                    slot @ None => *slot = Some(p),
                }
            }
        }
    }

    fn finish(self, param: Option<f64>) -> Vec<Series> {
        let spec = self.spec;
        self.series
            .into_iter()
            .map(|(labels, points)| Series {
                labels,
                points: points.into_iter().map(|acc| acc.map(|a| a.finish(spec.op, param, spec.range_ns))).collect(),
            })
            .collect()
    }
}

impl Sink for MetricSink {
    fn over(&self) -> Option<QueryError> {
        self.over.then(|| self.spec.held.metric_error())
    }

    fn accept_with_level(&mut self, ts: i64, sid: u64, line: &str, level: &'static str, stream: &Arc<Labels>) {
        if self.spec.unwrap.is_some() || self.spec.grouping.is_some() {
            let mut set = LabelSet::from_stream(stream);
            set.set(DETECTED_LEVEL, level, Category::Metadata);
            return self.accept(ts, sid, line, Some(&mut set), stream);
        }
        let slot = match self.by_stream_level.get(&(sid, level)) {
            Some(&slot) => slot,
            None => {
                let mut key = pairs(stream);
                key.retain(|(k, _)| k != DETECTED_LEVEL);
                key.push((DETECTED_LEVEL.to_string(), level.to_string()));
                key.sort();
                let slot = self.slot_for_labels(key);
                self.by_stream_level.insert((sid, level), slot);
                slot
            }
        };
        let value = match self.spec.op {
            RangeOp::Bytes | RangeOp::BytesRate => line.len() as f64,
            _ => 1.0,
        };
        self.add(slot, ts, value);
    }

    fn accept(&mut self, ts: i64, sid: u64, line: &str, labels: Option<&mut LabelSet>, stream: &Arc<Labels>) {
        let spec = self.spec.clone();
        let mut value = match spec.op {
            RangeOp::Bytes | RangeOp::BytesRate => line.len() as f64,
            _ => 1.0,
        };
        if let Some(unwrap) = &spec.unwrap {
            let mut owned;
            let set = match labels {
                Some(s) => s,
                None => {
                    owned = LabelSet::from_stream(stream);
                    &mut owned
                }
            };
            let raw = set.get(&unwrap.label).unwrap_or("").to_string();
            if raw.is_empty() {
                // Loki skips entries without the label rather than failing.
                return;
            }
            let parsed = match unwrap.conv {
                UnwrapConv::Number => raw.trim().parse::<f64>().ok(),
                UnwrapConv::Duration | UnwrapConv::DurationSeconds => extract::parse_duration_secs(raw.trim()),
                UnwrapConv::Bytes => extract::parse_bytes(raw.trim()),
            };
            match parsed {
                Some(v) => value = v,
                None => {
                    if !set.has_error() {
                        set.set(ERROR, "SampleExtractionErr", Category::Parsed);
                        let details = format!("cannot convert label {:?} value {raw:?} to a number", unwrap.label);
                        set.set(ERROR_DETAILS, &details, Category::Parsed);
                    }
                    value = 0.0;
                }
            }
            for f in &unwrap.filters {
                if !super::pipeline::eval_label_filter(f, set) {
                    return;
                }
            }
            set.delete(&unwrap.label);
            let mut key = set.sorted();
            if let Some(g) = &spec.grouping {
                key = group_labels(&key, g);
            }
            let slot = self.slot_for_labels(key);
            self.add(slot, ts, value);
            return;
        }
        let slot = match labels {
            // The stream's labels alone: its slot is the same for every row.
            None => match self.by_stream.get(&sid) {
                Some(&slot) => slot,
                None => {
                    let key = match &spec.grouping {
                        Some(g) => group_labels(&pairs(stream), g),
                        None => pairs(stream),
                    };
                    let slot = self.slot_for_labels(key);
                    self.by_stream.insert(sid, slot);
                    slot
                }
            },
            Some(set) => {
                let mut key = set.sorted();
                if let Some(g) = &spec.grouping {
                    key = group_labels(&key, g);
                }
                self.slot_for_labels(key)
            }
        };
        self.add(slot, ts, value);
    }
}

// ----- vectors -----

#[derive(Debug, Clone)]
struct Series {
    labels: LabelPairs,
    points: Vec<Option<f64>>,
}

enum Value {
    Scalar(f64),
    Vector(Vec<Series>),
}

fn group_labels(labels: &LabelPairs, g: &Grouping) -> LabelPairs {
    labels.iter().filter(|(k, _)| g.labels.iter().any(|l| l == k) != g.without).cloned().collect()
}

fn absent(matchers: &[LabelMatcher], series: &[Series], n: usize) -> Vec<Series> {
    let mut labels: LabelPairs = Vec::new();
    for m in matchers {
        if m.op == MatchOp::Eq && !labels.iter().any(|(k, _)| *k == m.name) {
            labels.push((m.name.clone(), m.value.clone()));
        }
    }
    labels.sort();
    let points: Vec<Option<f64>> =
        (0..n).map(|k| if series.iter().any(|s| s.points[k].is_some()) { None } else { Some(1.0) }).collect();
    if points.iter().all(Option::is_none) {
        return Vec::new();
    }
    vec![Series { labels, points }]
}

fn vector_agg(v: &VectorAgg, input: Vec<Series>, n: usize) -> Vec<Series> {
    match v.op {
        VectorOp::Sort | VectorOp::SortDesc => {
            let mut input = input;
            let last = n - 1;
            input.sort_by(|a, b| {
                let (x, y) = (a.points[last].unwrap_or(f64::NAN), b.points[last].unwrap_or(f64::NAN));
                let ord = x.total_cmp(&y);
                if v.op == VectorOp::SortDesc { ord.reverse() } else { ord }
            });
            input
        }
        VectorOp::Topk | VectorOp::Bottomk => {
            let k = v.param.unwrap_or(1.0) as usize;
            let mut out: Vec<Series> =
                input.iter().map(|s| Series { labels: s.labels.clone(), points: vec![None; n] }).collect();
            for step in 0..n {
                let mut groups: HashMap<LabelPairs, Vec<usize>> = HashMap::new();
                for (i, s) in input.iter().enumerate() {
                    if s.points[step].is_some() {
                        let key = v.grouping.as_ref().map(|g| group_labels(&s.labels, g)).unwrap_or_default();
                        groups.entry(key).or_default().push(i);
                    }
                }
                for (_, mut members) in groups {
                    members.sort_by(|&a, &b| {
                        let (x, y) = (input[a].points[step].unwrap_or(0.0), input[b].points[step].unwrap_or(0.0));
                        let ord = y.total_cmp(&x);
                        if v.op == VectorOp::Bottomk { ord.reverse() } else { ord }
                    });
                    for &i in members.iter().take(k) {
                        out[i].points[step] = input[i].points[step];
                    }
                }
            }
            if n == 1 {
                out.sort_by(|a, b| {
                    let ord = b.points[0].unwrap_or(f64::NAN).total_cmp(&a.points[0].unwrap_or(f64::NAN));
                    if v.op == VectorOp::Bottomk { ord.reverse() } else { ord }
                });
            }
            out.retain(|s| s.points.iter().any(Option::is_some));
            out
        }
        _ => {
            let mut groups: HashMap<LabelPairs, Vec<Vec<f64>>> = HashMap::new();
            for s in &input {
                let key = v.grouping.as_ref().map(|g| group_labels(&s.labels, g)).unwrap_or_default();
                let slot = groups.entry(key).or_insert_with(|| vec![Vec::new(); n]);
                for (k, p) in s.points.iter().enumerate() {
                    if let Some(p) = p {
                        slot[k].push(*p);
                    }
                }
            }
            groups
                .into_iter()
                .map(|(labels, per_step)| Series {
                    labels,
                    points: per_step.into_iter().map(|vals| aggregate(v.op, &vals)).collect(),
                })
                .filter(|s| s.points.iter().any(Option::is_some))
                .collect()
        }
    }
}

fn aggregate(op: VectorOp, vals: &[f64]) -> Option<f64> {
    if vals.is_empty() {
        return None;
    }
    let n = vals.len() as f64;
    let sum: f64 = vals.iter().sum();
    Some(match op {
        VectorOp::Sum => sum,
        VectorOp::Avg => sum / n,
        VectorOp::Count => n,
        VectorOp::Min => vals.iter().copied().fold(f64::NAN, |a, b| if a.is_nan() || b < a { b } else { a }),
        VectorOp::Max => vals.iter().copied().fold(f64::NAN, |a, b| if a.is_nan() || b > a { b } else { a }),
        VectorOp::Stdvar | VectorOp::Stddev => {
            let mean = sum / n;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            if op == VectorOp::Stddev { var.sqrt() } else { var }
        }
        VectorOp::Topk | VectorOp::Bottomk | VectorOp::Sort | VectorOp::SortDesc => return None,
    })
}

fn label_replace(l: &LabelReplace, labels: &mut LabelPairs) {
    let src = labels.iter().find(|(k, _)| *k == l.src).map(|(_, v)| v.clone()).unwrap_or_default();
    let Some(caps) = l.regex.captures(&src) else { return };
    let mut value = String::new();
    caps.expand(&l.replacement, &mut value);
    labels.retain(|(k, _)| *k != l.dst);
    if !value.is_empty() {
        labels.push((l.dst.clone(), value));
        labels.sort();
    }
}

fn apply(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        // Loki answers NaN for a zero divisor, not an infinity.
        BinOp::Div if b == 0.0 => f64::NAN,
        BinOp::Mod if b == 0.0 => f64::NAN,
        BinOp::Div => a / b,
        BinOp::Mod => a % b,
        BinOp::Pow => a.powf(b),
        BinOp::Eq => f64::from(u8::from(a == b)),
        BinOp::Neq => f64::from(u8::from(a != b)),
        BinOp::Gt => f64::from(u8::from(a > b)),
        BinOp::Ge => f64::from(u8::from(a >= b)),
        BinOp::Lt => f64::from(u8::from(a < b)),
        BinOp::Le => f64::from(u8::from(a <= b)),
        BinOp::And | BinOp::Or | BinOp::Unless => f64::NAN,
    }
}

fn signature(labels: &LabelPairs, m: &Matching) -> LabelPairs {
    match &m.on {
        None => labels.clone(),
        Some((true, on)) => labels.iter().filter(|(k, _)| on.contains(k)).cloned().collect(),
        Some((false, ignoring)) => labels.iter().filter(|(k, _)| !ignoring.contains(k)).cloned().collect(),
    }
}

fn binary(b: &Binary, lhs: Value, rhs: Value, n: usize) -> QResult<Value> {
    let op = b.op;
    match (lhs, rhs) {
        (Value::Scalar(x), Value::Scalar(y)) => {
            if op.is_comparison() && !b.return_bool {
                return Err(QueryError::BadRequest(format!(
                    "comparisons between scalars must use the bool modifier: write {x} {} bool {y}",
                    op.symbol()
                )));
            }
            Ok(Value::Scalar(apply(op, x, y)))
        }
        (Value::Vector(v), Value::Scalar(s)) => Ok(Value::Vector(vector_scalar(b, v, s, false))),
        (Value::Scalar(s), Value::Vector(v)) => Ok(Value::Vector(vector_scalar(b, v, s, true))),
        (Value::Vector(l), Value::Vector(r)) => {
            if op.is_set() {
                Ok(Value::Vector(set_op(b, l, r, n)))
            } else {
                vector_vector(b, l, r, n).map(Value::Vector)
            }
        }
    }
}

fn vector_scalar(b: &Binary, v: Vec<Series>, s: f64, scalar_left: bool) -> Vec<Series> {
    v.into_iter()
        .map(|mut series| {
            for p in series.points.iter_mut() {
                let Some(x) = *p else { continue };
                let (a, c) = if scalar_left { (s, x) } else { (x, s) };
                let r = apply(b.op, a, c);
                *p = if b.op.is_comparison() {
                    if b.return_bool {
                        Some(r)
                    } else if r == 1.0 {
                        Some(x)
                    } else {
                        None
                    }
                } else {
                    Some(r)
                };
            }
            series
        })
        .filter(|s| s.points.iter().any(Option::is_some))
        .collect()
}

fn set_op(b: &Binary, l: Vec<Series>, r: Vec<Series>, n: usize) -> Vec<Series> {
    let sig_r: Vec<LabelPairs> = r.iter().map(|s| signature(&s.labels, &b.matching)).collect();
    let sig_l: Vec<LabelPairs> = l.iter().map(|s| signature(&s.labels, &b.matching)).collect();
    let present = |sigs: &[LabelPairs], series: &[Series], sig: &LabelPairs, k: usize| {
        sigs.iter().zip(series).any(|(s, ser)| s == sig && ser.points[k].is_some())
    };
    let mut out: Vec<Series> = Vec::new();
    match b.op {
        BinOp::And | BinOp::Unless => {
            let keep_if_present = b.op == BinOp::And;
            for (i, s) in l.iter().enumerate() {
                let points = (0..n)
                    .map(|k| s.points[k].filter(|_| present(&sig_r, &r, &sig_l[i], k) == keep_if_present))
                    .collect();
                out.push(Series { labels: s.labels.clone(), points });
            }
        }
        _ => {
            out.extend(l.iter().cloned());
            for (i, s) in r.iter().enumerate() {
                let points = (0..n).map(|k| s.points[k].filter(|_| !present(&sig_l, &l, &sig_r[i], k))).collect();
                out.push(Series { labels: s.labels.clone(), points });
            }
        }
    }
    merge_same_labels(out)
}

/// Joins series with equal labels (from both sides of `or`) into one.
fn merge_same_labels(series: Vec<Series>) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    let mut index: HashMap<LabelPairs, usize> = HashMap::new();
    for s in series {
        if !s.points.iter().any(Option::is_some) {
            continue;
        }
        match index.get(&s.labels) {
            Some(&i) => {
                for (k, p) in s.points.into_iter().enumerate() {
                    if out[i].points[k].is_none() {
                        out[i].points[k] = p;
                    }
                }
            }
            None => {
                index.insert(s.labels.clone(), out.len());
                out.push(s);
            }
        }
    }
    out
}

fn vector_vector(b: &Binary, l: Vec<Series>, r: Vec<Series>, n: usize) -> QResult<Vec<Series>> {
    let m = &b.matching;
    // group_right swaps the roles: the "many" side is always `many`.
    let (many, one, swapped) = match &m.group {
        Some((false, _)) => (&r, &l, true),
        _ => (&l, &r, false),
    };
    let one_sigs: Vec<LabelPairs> = one.iter().map(|s| signature(&s.labels, m)).collect();
    let many_sigs: Vec<LabelPairs> = many.iter().map(|s| signature(&s.labels, m)).collect();
    let mut out: HashMap<LabelPairs, Vec<Option<f64>>> = HashMap::new();
    let mut order: Vec<LabelPairs> = Vec::new();
    for k in 0..n {
        let mut index: HashMap<&LabelPairs, usize> = HashMap::new();
        for (i, s) in one.iter().enumerate() {
            if s.points[k].is_some() && index.insert(&one_sigs[i], i).is_some() {
                return Err(QueryError::BadRequest(format!(
                    "found duplicate series for the match group {} on the {} hand-side of the operation; many-to-many matching not allowed: matching labels must be unique on one side",
                    format_labels(&one_sigs[i]),
                    if swapped { "left" } else { "right" }
                )));
            }
        }
        let mut seen: HashSet<&LabelPairs> = HashSet::new();
        for (i, s) in many.iter().enumerate() {
            let Some(x) = s.points[k] else { continue };
            let Some(&j) = index.get(&many_sigs[i]) else { continue };
            if m.group.is_none() && !seen.insert(&many_sigs[i]) {
                return Err(QueryError::BadRequest(format!(
                    "found duplicate series for the match group {} on the left hand-side of the operation; many-to-one matching must be explicit (group_left/group_right)",
                    format_labels(&many_sigs[i])
                )));
            }
            let y = one[j].points[k].unwrap_or(f64::NAN);
            let (a, c) = if swapped { (y, x) } else { (x, y) };
            let r = apply(b.op, a, c);
            let value = if b.op.is_comparison() {
                if b.return_bool {
                    Some(r)
                } else if r == 1.0 {
                    Some(if swapped { y } else { x })
                } else {
                    None
                }
            } else {
                Some(r)
            };
            let Some(value) = value else { continue };
            let labels = result_labels(&s.labels, &one[j].labels, m);
            let slot = out.entry(labels.clone()).or_insert_with(|| {
                order.push(labels);
                vec![None; n]
            });
            slot[k] = Some(value);
        }
    }
    Ok(order
        .into_iter()
        .map(|labels| {
            let points = out.remove(&labels).unwrap_or_default();
            Series { labels, points }
        })
        .collect())
}

fn result_labels(many: &LabelPairs, one: &LabelPairs, m: &Matching) -> LabelPairs {
    let mut labels = match (&m.group, &m.on) {
        (None, Some((true, on))) => many.iter().filter(|(k, _)| on.contains(k)).cloned().collect(),
        (None, Some((false, ign))) => many.iter().filter(|(k, _)| !ign.contains(k)).cloned().collect(),
        _ => many.clone(),
    };
    if let Some((_, include)) = &m.group {
        for name in include {
            labels.retain(|(k, _)| k != name);
            if let Some((_, v)) = one.iter().find(|(k, _)| k == name) {
                labels.push((name.clone(), v.clone()));
            }
        }
        labels.sort();
    }
    labels
}

/// `{a="b", c="d"}`.
pub fn format_labels(labels: &LabelPairs) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
    format!("{{{}}}", inner.join(", "))
}
