//! The evaluator: step grid, selectors, subqueries, final name cleanup.

use std::collections::HashMap;

use arrow_buffer::ScalarBuffer;

use super::ast::{At, Expr, Selector, ValType};
use super::{
    EngineOptions, EvalError, Labels, METRIC_NAME, QueryResult, SeriesSource, Value, is_stale_nan, labels_to_string,
};

/// The evaluation grid: `n` steps from `start`, `step` ms apart.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grid {
    pub start: i64,
    pub step: i64,
    pub n: usize,
}

impl Grid {
    /// Timestamp of step `i`.
    #[inline]
    pub fn t(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }
    /// Last timestamp.
    pub fn end(&self) -> i64 {
        self.t(self.n.saturating_sub(1))
    }
}

/// An instant-vector series over the grid: one optional value per step.
#[derive(Debug, Clone)]
pub(super) struct VSeries {
    pub labels: Labels,
    pub drop_name: bool,
    pub vals: Vec<Option<f64>>,
}

/// A series of raw points (range vector input).
#[derive(Debug, Clone)]
pub(super) struct RSeries {
    pub labels: Labels,
    pub drop_name: bool,
    pub t: ScalarBuffer<i64>,
    pub v: ScalarBuffer<f64>,
}

/// A node's value over the grid.
#[derive(Debug)]
pub(super) enum Val {
    Scalar(Vec<f64>),
    Str(String),
    Vector(Vec<VSeries>),
    /// Raw range-vector points (only for a top-level range vector of an instant query).
    Matrix(Vec<RSeries>),
}

/// A range-vector argument of a function: raw series plus the window definition.
pub(super) struct RangeArg {
    pub series: Vec<RSeries>,
    /// `anchored` modifier.
    pub anchored: bool,
    /// `smoothed` modifier.
    pub smoothed: bool,
    pub range_ms: i64,
    pub offset_ms: i64,
    pub at: Option<i64>,
}

impl RangeArg {
    /// Window bounds for step time `t`: (range start exclusive, range end inclusive).
    #[inline]
    pub fn bounds(&self, t: i64) -> (i64, i64) {
        let end = self.at.unwrap_or(t) - self.offset_ms;
        (end - self.range_ms, end)
    }
}

/// Below this many windows (series × steps) a range function's series are computed on the calling
/// thread: starting threads costs more than it saves.
pub(super) const PARALLEL_MIN_WINDOWS: usize = 1 << 16;

/// `f` of each series, in order. Over many series and steps, the series are cut into
/// `EngineOptions::threads` runs computed at once (each series alone, so results are the same bits as
/// one after the other), each thread reading the clock against the deadline every 65,536 steps.
pub(super) fn map_series<R: Send>(
    ev: &mut Evaluator,
    series: Vec<RSeries>,
    steps: usize,
    f: impl Fn(RSeries) -> R + Sync,
) -> Result<Vec<R>, EvalError> {
    let threads = ev.opts.threads.clamp(1, series.len().max(1));
    if threads == 1 || series.len().saturating_mul(steps) < PARALLEL_MIN_WINDOWS {
        let mut out = Vec::with_capacity(series.len());
        for r in series {
            ev.check_deadline_work(steps)?;
            out.push(f(r));
        }
        return Ok(out);
    }
    let per = series.len().div_ceil(threads);
    let mut chunks: Vec<Vec<RSeries>> = Vec::with_capacity(threads);
    let mut rest = series.into_iter();
    loop {
        let chunk: Vec<RSeries> = rest.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let deadline = ev.opts.deadline;
    let results = in_threads(chunks, |chunk: Vec<RSeries>| {
        let mut out = Vec::with_capacity(chunk.len());
        let mut check = deadline_check(deadline);
        for r in chunk {
            check(steps)?;
            out.push(f(r));
        }
        Ok(out)
    });
    let mut out = Vec::new();
    for r in results {
        out.extend(r?);
    }
    ev.check_deadline_work(0)?;
    Ok(out)
}

/// `f` of each item, each on a thread of its own, all at once; the results in the items' order. A panic
/// in one goes on in the caller.
pub(super) fn in_threads<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.into_iter().map(|item| scope.spawn(move || f(item))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    })
}

/// A deadline check for a thread of its own: told the work done (steps), it reads the clock once every
/// 65,536 steps and fails past `deadline`.
pub(super) fn deadline_check(deadline: Option<std::time::Instant>) -> impl FnMut(usize) -> Result<(), EvalError> {
    let mut work = 0usize;
    move |steps| {
        work += steps;
        if work >= 1 << 16 {
            work = 0;
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(EvalError::Timeout);
            }
        }
        Ok(())
    }
}

/// Moving-window cursor over one series' timestamps.
pub(super) struct Cursor {
    lo: usize,
    hi: usize,
}

impl Cursor {
    pub fn new() -> Self {
        Cursor { lo: 0, hi: 0 }
    }
    /// Indices `[lo, hi)` of samples in `(start, end]`. Bounds must be non-decreasing between calls for speed; falls
    /// back to binary search otherwise.
    #[inline]
    pub fn window(&mut self, ts: &[i64], start: i64, end: i64) -> (usize, usize) {
        if self.lo > 0 && ts[self.lo - 1] > start || self.hi > 0 && ts[self.hi - 1] > end {
            self.lo = ts.partition_point(|&x| x <= start);
            self.hi = ts.partition_point(|&x| x <= end);
            return (self.lo, self.hi.max(self.lo));
        }
        while self.lo < ts.len() && ts[self.lo] <= start {
            self.lo += 1;
        }
        if self.hi < self.lo {
            self.hi = self.lo;
        }
        while self.hi < ts.len() && ts[self.hi] <= end {
            self.hi += 1;
        }
        (self.lo, self.hi)
    }
}

/// Evaluation state shared by all nodes of one query.
pub(super) struct Evaluator<'a> {
    pub opts: &'a EngineOptions,
    pub src: &'a dyn SeriesSource,
    pub query_start: i64,
    pub query_end: i64,
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
    pub samples: u64,
    pub range_query: bool,
    pub query_step: i64,
    deadline_counter: u32,
    /// Steps evaluated since the clock was last read (see [`Evaluator::check_deadline_work`]).
    work: usize,
}

impl<'a> Evaluator<'a> {
    /// Adds a warning (`text` without the `PromQL warning: ` prefix).
    pub fn warn(&mut self, text: String) {
        let s = format!("PromQL warning: {text}");
        if !self.warnings.contains(&s) {
            self.warnings.push(s);
        }
    }

    /// Adds an info annotation (`text` without the `PromQL info: ` prefix).
    pub fn info(&mut self, text: String) {
        let s = format!("PromQL info: {text}");
        if !self.infos.contains(&s) {
            self.infos.push(s);
        }
    }

    /// Checks the deadline (cheaply: only every few calls).
    pub fn check_deadline(&mut self) -> Result<(), EvalError> {
        self.deadline_counter = self.deadline_counter.wrapping_add(1);
        if self.deadline_counter.is_multiple_of(64)
            && let Some(d) = self.opts.deadline
            && std::time::Instant::now() >= d
        {
            return Err(EvalError::Timeout);
        }
        Ok(())
    }

    /// Checks the deadline once `work` steps have accumulated since the last look at the clock: a loop over
    /// few series with many steps each (a fine subquery) is as slow as one over many.
    pub fn check_deadline_work(&mut self, work: usize) -> Result<(), EvalError> {
        self.work += work;
        if self.work >= 1 << 16 {
            self.work = 0;
            if let Some(d) = self.opts.deadline
                && std::time::Instant::now() >= d
            {
                return Err(EvalError::Timeout);
            }
        }
        self.check_deadline()
    }

    /// Accounts `n` samples held at once by a node.
    pub fn account(&mut self, held: usize, scanned: u64) -> Result<(), EvalError> {
        self.samples += scanned;
        if held > self.opts.max_samples {
            return Err(too_many_samples());
        }
        Ok(())
    }

    pub fn resolve_at(&self, at: Option<At>) -> Option<i64> {
        at.map(|a| match a {
            At::Start => self.query_start,
            At::End => self.query_end,
            At::Ms(t) => t,
        })
    }

    fn fetch(&mut self, sel: &Selector, g: &Grid, window: i64) -> Result<Vec<super::Series>, EvalError> {
        self.check_deadline()?;
        let (lo, hi) = match self.resolve_at(sel.at) {
            Some(a) => (a - sel.offset_ms, a - sel.offset_ms),
            None => (g.start - sel.offset_ms, g.end() - sel.offset_ms),
        };
        // Extended selectors also need the sample before the window (anchored, smoothed) and after it (smoothed).
        let (before, after) = if sel.anchored || sel.smoothed {
            (self.opts.lookback_ms, if sel.smoothed { self.opts.lookback_ms } else { 0 })
        } else {
            (0, 0)
        };
        let mut out = self.src.select(&sel.matchers, lo - window - before + 1, hi + after)?;
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok(out)
    }

    /// Evaluates an instant vector selector over the grid; `want_ts` yields sample timestamps (s) instead of values.
    pub fn eval_selector(&mut self, sel: &Selector, g: &Grid, want_ts: bool) -> Result<Vec<VSeries>, EvalError> {
        let lookback = self.opts.lookback_ms;
        let series = self.fetch(sel, g, lookback)?;
        let at = self.resolve_at(sel.at);
        let mut out = Vec::with_capacity(series.len());
        let mut per_step = vec![0usize; g.n];
        let mut scanned = 0u64;
        for s in series {
            self.check_deadline_work(g.n)?;
            let ts: &[i64] = &s.t;
            let vs: &[f64] = &s.v;
            let mut vals = vec![None; g.n];
            let mut j = 0usize;
            let mut any = false;
            for (i, slot) in vals.iter_mut().enumerate() {
                let r = at.unwrap_or_else(|| g.t(i)) - sel.offset_ms;
                if j > 0 && ts[j - 1] > r {
                    j = ts.partition_point(|&x| x <= r);
                }
                while j < ts.len() && ts[j] <= r {
                    j += 1;
                }
                if j == 0 {
                    continue;
                }
                let k = j - 1;
                if ts[k] <= r - lookback || is_stale_nan(vs[k]) {
                    continue;
                }
                let mut v = vs[k];
                if sel.smoothed && ts[k] < r && j < ts.len() && ts[j] < r + lookback && !is_stale_nan(vs[j]) {
                    v += (vs[j] - vs[k]) * (r - ts[k]) as f64 / (ts[j] - ts[k]) as f64;
                }
                *slot = Some(if want_ts { ts[k] as f64 / 1000.0 } else { v });
                per_step[i] += 1;
                scanned += 1;
                any = true;
            }
            if any {
                out.push(VSeries { labels: s.labels, drop_name: false, vals });
            }
        }
        let held = per_step.iter().copied().max().unwrap_or(0);
        self.account(held, scanned)?;
        Ok(out)
    }

    /// Evaluates a range-vector expression (matrix selector or subquery) into raw series plus window definition.
    pub fn range_arg(&mut self, e: &Expr, g: &Grid) -> Result<RangeArg, EvalError> {
        match e {
            Expr::Matrix { sel, range_ms, .. } => {
                let series = self.fetch(sel, g, *range_ms)?;
                let mut out = Vec::with_capacity(series.len());
                let mut total = 0usize;
                for s in series {
                    let (t, v) = if s.v.iter().any(|&x| is_stale_nan(x)) {
                        let mut t = Vec::with_capacity(s.t.len());
                        let mut v = Vec::with_capacity(s.v.len());
                        for (&ts, &vs) in s.t.iter().zip(s.v.iter()) {
                            if !is_stale_nan(vs) {
                                t.push(ts);
                                v.push(vs);
                            }
                        }
                        (t.into(), v.into())
                    } else {
                        (s.t, s.v)
                    };
                    total += t.len();
                    out.push(RSeries { labels: s.labels, drop_name: false, t, v });
                }
                let arg = RangeArg {
                    series: out,
                    anchored: sel.anchored,
                    smoothed: sel.smoothed,
                    range_ms: *range_ms,
                    offset_ms: sel.offset_ms,
                    at: self.resolve_at(sel.at),
                };
                // Peak samples held in one step's windows (bounded by the total fetched).
                let held = if total > self.opts.max_samples { self.peak_window(&arg, g) } else { total };
                self.account(held, total as u64)?;
                Ok(arg)
            }
            Expr::Subquery(sq) => {
                let at = self.resolve_at(sq.at);
                let step = sq.step_ms.unwrap_or(self.opts.default_subquery_step_ms).max(1);
                let (lo, hi) = match at {
                    Some(a) => (a - sq.offset_ms, a - sq.offset_ms),
                    None => (g.start - sq.offset_ms, g.end() - sq.offset_ms),
                };
                let first = lo - sq.range_ms;
                let mut istart = step * first.div_euclid(step);
                if istart < first {
                    istart += step;
                }
                let mut series = Vec::new();
                if istart <= hi {
                    // Every series of the inner query holds a value per step: more steps than the sample
                    // budget is refused before anything is allocated (a 1ms step over a year would ask for
                    // tens of GB).
                    let steps = (hi - istart) / step + 1;
                    if steps > self.opts.max_samples as i64 {
                        return Err(too_many_samples());
                    }
                    let ig = Grid { start: istart, step, n: steps as usize };
                    let v = self.eval(&sq.expr, &ig)?;
                    let vs = match v {
                        Val::Vector(vs) => vs,
                        Val::Scalar(s) => {
                            vec![VSeries {
                                labels: Vec::new(),
                                drop_name: false,
                                vals: s.into_iter().map(Some).collect(),
                            }]
                        }
                        _ => return Err(EvalError::BadData("subquery is only allowed on instant vector".into())),
                    };
                    for s in vs {
                        let mut t = Vec::new();
                        let mut v = Vec::new();
                        for (i, x) in s.vals.iter().enumerate() {
                            if let Some(x) = x {
                                t.push(ig.t(i));
                                v.push(*x);
                            }
                        }
                        if !t.is_empty() {
                            series.push(RSeries { labels: s.labels, drop_name: s.drop_name, t: t.into(), v: v.into() });
                        }
                    }
                }
                Ok(RangeArg {
                    series,
                    anchored: false,
                    smoothed: false,
                    range_ms: sq.range_ms,
                    offset_ms: sq.offset_ms,
                    at,
                })
            }
            _ => Err(EvalError::BadData("expected type range vector".into())),
        }
    }

    fn peak_window(&self, arg: &RangeArg, g: &Grid) -> usize {
        let mut peak = 0;
        for i in 0..g.n {
            let (s, e) = arg.bounds(g.t(i));
            let mut n = 0;
            for r in &arg.series {
                n += r.t.partition_point(|&x| x <= e) - r.t.partition_point(|&x| x <= s);
            }
            peak = peak.max(n);
        }
        peak
    }

    /// Evaluates an expression over the grid.
    pub fn eval(&mut self, e: &Expr, g: &Grid) -> Result<Val, EvalError> {
        self.check_deadline()?;
        match e {
            Expr::Number(v) => Ok(Val::Scalar(vec![*v; g.n])),
            Expr::Str(s) => Ok(Val::Str(s.clone())),
            Expr::Neg(inner) => match self.eval(inner, g)? {
                Val::Scalar(mut v) => {
                    v.iter_mut().for_each(|x| *x = -*x);
                    Ok(Val::Scalar(v))
                }
                Val::Vector(mut vs) => {
                    for s in &mut vs {
                        s.drop_name = true;
                        s.vals.iter_mut().flatten().for_each(|x| *x = -*x);
                    }
                    Ok(Val::Vector(vs))
                }
                _ => Err(EvalError::BadData("unary minus on non-numeric value".into())),
            },
            Expr::Vector(sel) => Ok(Val::Vector(self.eval_selector(sel, g, false)?)),
            Expr::Matrix { .. } | Expr::Subquery(_) => {
                let arg = self.range_arg(e, g)?;
                let t = g.start;
                let (s, en) = arg.bounds(t);
                let mut out = Vec::new();
                for r in arg.series {
                    let lo = r.t.partition_point(|&x| x <= s);
                    let hi = r.t.partition_point(|&x| x <= en);
                    if hi > lo {
                        out.push(RSeries {
                            labels: r.labels,
                            drop_name: r.drop_name,
                            t: r.t.slice(lo, hi - lo),
                            v: r.v.slice(lo, hi - lo),
                        });
                    }
                }
                Ok(Val::Matrix(out))
            }
            Expr::Call { func, args } => super::functions::call(self, func, args, g),
            Expr::Aggregate(a) => super::aggr::eval(self, a, g),
            Expr::Binary(b) => super::binop::eval(self, b, g),
        }
    }

    /// Evaluates an expression expected to be an instant vector.
    pub fn eval_vector(&mut self, e: &Expr, g: &Grid) -> Result<Vec<VSeries>, EvalError> {
        match self.eval(e, g)? {
            Val::Vector(v) => Ok(v),
            _ => Err(EvalError::BadData("expected instant vector".into())),
        }
    }

    /// Evaluates an expression expected to be a scalar.
    pub fn eval_scalar(&mut self, e: &Expr, g: &Grid) -> Result<Vec<f64>, EvalError> {
        match self.eval(e, g)? {
            Val::Scalar(v) => Ok(v),
            _ => Err(EvalError::BadData("expected scalar".into())),
        }
    }
}

/// Merges series with identical labels; two values at the same step are an error.
pub(super) fn merge_same_labels(series: Vec<VSeries>) -> Result<Vec<VSeries>, EvalError> {
    let mut idx: HashMap<Labels, usize> = HashMap::with_capacity(series.len());
    let mut out: Vec<VSeries> = Vec::with_capacity(series.len());
    for s in series {
        if let Some(&i) = idx.get(&s.labels) {
            let o = &mut out[i];
            for (a, b) in o.vals.iter_mut().zip(s.vals) {
                if b.is_some() {
                    if a.is_some() {
                        return Err(dup_labelset());
                    }
                    *a = b;
                }
            }
            o.drop_name |= s.drop_name;
        } else {
            idx.insert(s.labels.clone(), out.len());
            out.push(s);
        }
    }
    Ok(out)
}

/// The error for exceeding `max_samples`: Prometheus' words, then the key that sets the limit.
pub fn too_many_samples() -> EvalError {
    EvalError::Execution(
        "query processing would load too many samples into memory in query execution (past query.max_samples: \
         narrow the time range or the selector, raise the step, or raise query.max_samples)"
            .into(),
    )
}

/// The error for duplicate output label sets.
pub(super) fn dup_labelset() -> EvalError {
    EvalError::Execution("vector cannot contain metrics with the same labelset".into())
}

/// Removes `__name__` (and the metric metadata labels `__type__`/`__unit__`) from a label set.
pub(super) fn drop_metric_name(labels: &mut Labels) {
    labels.retain(|(n, _)| n != METRIC_NAME && n != "__type__" && n != "__unit__");
}

fn finalize_vector(mut vs: Vec<VSeries>) -> Result<Vec<VSeries>, EvalError> {
    let mut any_drop = false;
    for s in &mut vs {
        if s.drop_name {
            drop_metric_name(&mut s.labels);
            any_drop = true;
        }
        s.vals.iter().any(Option::is_some);
    }
    vs.retain(|s| s.vals.iter().any(Option::is_some));
    if any_drop { merge_same_labels(vs) } else { Ok(vs) }
}

/// Runs a query over the grid `[start, end]` with `step`, converting the outcome to the public result.
pub(super) fn run(
    opts: &EngineOptions,
    src: &dyn SeriesSource,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
    instant: bool,
) -> Result<QueryResult, EvalError> {
    let vt = expr.value_type();
    if !instant && (vt == ValType::Matrix || vt == ValType::String) {
        let name = if vt == ValType::Matrix { "range vector" } else { "string" };
        return Err(EvalError::BadData(format!(
            "invalid expression type \"{name}\" for range query, must be Scalar or instant Vector"
        )));
    }
    let resolved;
    let expr = if expr.has_dynamic_durations() {
        let mut e = expr.clone();
        e.resolve_durations(if instant { 0 } else { step }, end - start)?;
        resolved = e;
        &resolved
    } else {
        expr
    };
    let n = (end - start) / step + 1;
    if n as u64 > opts.max_samples.max(11_000) as u64 {
        return Err(too_many_samples());
    }
    let g = Grid { start, step, n: n as usize };
    let mut ev = Evaluator {
        opts,
        src,
        query_start: start,
        query_end: end,
        warnings: Vec::new(),
        infos: Vec::new(),
        samples: 0,
        range_query: !instant,
        query_step: if instant { 0 } else { step },
        deadline_counter: 63,
        work: 0,
    };
    let v = ev.eval(expr, &g)?;
    let value = match v {
        Val::Scalar(s) => {
            if instant {
                Value::Scalar { t: start, v: s[0] }
            } else {
                Value::Matrix(vec![(Vec::new(), s.iter().enumerate().map(|(i, &x)| (g.t(i), x)).collect())])
            }
        }
        Val::Str(s) => Value::String { t: start, s },
        Val::Vector(vs) => {
            let vs = finalize_vector(vs)?;
            if instant {
                Value::Vector(vs.into_iter().filter_map(|s| s.vals[0].map(|x| (s.labels, start, x))).collect())
            } else {
                let mut m: Vec<(Labels, Vec<(i64, f64)>)> = vs
                    .into_iter()
                    .map(|s| {
                        let pts = s.vals.iter().enumerate().filter_map(|(i, x)| x.map(|x| (g.t(i), x))).collect();
                        (s.labels, pts)
                    })
                    .collect();
                m.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Matrix(m)
            }
        }
        Val::Matrix(rs) => {
            let mut m: Vec<(Labels, Vec<(i64, f64)>)> = Vec::with_capacity(rs.len());
            for mut r in rs {
                if r.drop_name {
                    drop_metric_name(&mut r.labels);
                }
                m.push((r.labels, r.t.iter().copied().zip(r.v.iter().copied()).collect()));
            }
            m.sort_by(|a, b| a.0.cmp(&b.0));
            if m.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(dup_labelset());
            }
            Value::Matrix(m)
        }
    };
    Ok(QueryResult { value, warnings: ev.warnings, infos: ev.infos, samples_scanned: ev.samples })
}

/// Label set as text, for error messages.
pub(super) fn lstr(l: &Labels) -> String {
    labels_to_string(l)
}
