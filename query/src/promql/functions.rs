//! Function calls: range functions, instant math, labels, sorting, time/date and classic histograms.

use std::collections::HashMap;

use super::aggr::{fmt_g, kahan_inc, quantile};
use super::ast::{Expr, Selector};
use super::eval::{Cursor, Evaluator, Grid, RangeArg, VSeries, Val, merge_same_labels};
use super::{EvalError, Labels, METRIC_NAME, anchored_regex, label_value};

/// Go's `math.Max` (NaN wins).
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) }
}

/// Go's `math.Min` (NaN wins).
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.min(b) }
}

/// Dispatches a function call.
pub(super) fn call(ev: &mut Evaluator, func: &str, args: &[Expr], g: &Grid) -> Result<Val, EvalError> {
    check_extended(func, args)?;
    match func {
        // Range-vector functions.
        "rate"
        | "increase"
        | "delta"
        | "irate"
        | "idelta"
        | "changes"
        | "resets"
        | "deriv"
        | "avg_over_time"
        | "sum_over_time"
        | "min_over_time"
        | "max_over_time"
        | "count_over_time"
        | "stddev_over_time"
        | "stdvar_over_time"
        | "last_over_time"
        | "first_over_time"
        | "present_over_time"
        | "mad_over_time"
        | "ts_of_min_over_time"
        | "ts_of_max_over_time"
        | "ts_of_last_over_time"
        | "ts_of_first_over_time" => {
            let arg = ev.range_arg(&args[0], g)?;
            range_func(ev, func, arg, g, &[])
        }
        "predict_linear" => {
            let arg = ev.range_arg(&args[0], g)?;
            let d = ev.eval_scalar(&args[1], g)?;
            range_func(ev, func, arg, g, &[d])
        }
        "quantile_over_time" => {
            let q = ev.eval_scalar(&args[0], g)?;
            for &x in &q {
                if !(0.0..=1.0).contains(&x) {
                    ev.warn(format!("quantile value should be between 0 and 1, got {}", fmt_g(x)));
                }
            }
            let arg = ev.range_arg(&args[1], g)?;
            range_func(ev, func, arg, g, &[q])
        }
        "double_exponential_smoothing" => {
            let arg = ev.range_arg(&args[0], g)?;
            let sf = ev.eval_scalar(&args[1], g)?;
            let tf = ev.eval_scalar(&args[2], g)?;
            for i in 0..g.n {
                if sf[i] <= 0.0 || sf[i] >= 1.0 {
                    return Err(EvalError::Execution(format!(
                        "invalid smoothing factor. Expected: 0 < sf < 1, got: {:.6}",
                        sf[i]
                    )));
                }
                if tf[i] <= 0.0 || tf[i] >= 1.0 {
                    return Err(EvalError::Execution(format!(
                        "invalid trend factor. Expected: 0 < tf < 1, got: {:.6}",
                        tf[i]
                    )));
                }
            }
            range_func(ev, func, arg, g, &[sf, tf])
        }
        "absent_over_time" => {
            let arg = ev.range_arg(&args[0], g)?;
            let labels = absent_labels(&args[0]);
            let mut vals = vec![None; g.n];
            let mut cursors: Vec<Cursor> = arg.series.iter().map(|_| Cursor::new()).collect();
            for (i, slot) in vals.iter_mut().enumerate() {
                let (s, e) = arg.bounds(g.t(i));
                let any = arg.series.iter().zip(cursors.iter_mut()).any(|(r, c)| {
                    let (lo, hi) = c.window(&r.t, s, e);
                    hi > lo
                });
                if !any {
                    *slot = Some(1.0);
                }
            }
            Ok(Val::Vector(vec![VSeries { labels, drop_name: false, vals }]))
        }
        "absent" => {
            let v = ev.eval_vector(&args[0], g)?;
            let labels = absent_labels(&args[0]);
            let vals = (0..g.n).map(|i| if v.iter().any(|s| s.vals[i].is_some()) { None } else { Some(1.0) }).collect();
            Ok(Val::Vector(vec![VSeries { labels, drop_name: false, vals }]))
        }
        "time" => Ok(Val::Scalar((0..g.n).map(|i| g.t(i) as f64 / 1000.0).collect())),
        "pi" => Ok(Val::Scalar(vec![std::f64::consts::PI; g.n])),
        "start" => Ok(Val::Scalar(vec![ev.query_start as f64 / 1000.0; g.n])),
        "end" => Ok(Val::Scalar(vec![ev.query_end as f64 / 1000.0; g.n])),
        "range" => Ok(Val::Scalar(vec![(ev.query_end - ev.query_start) as f64 / 1000.0; g.n])),
        "step" => Ok(Val::Scalar(vec![ev.query_step as f64 / 1000.0; g.n])),
        "min_of" | "max_of" => {
            let a = ev.eval_scalar(&args[0], g)?;
            let b = ev.eval_scalar(&args[1], g)?;
            let f = if func == "min_of" { go_min } else { go_max };
            Ok(Val::Scalar(a.iter().zip(&b).map(|(&x, &y)| f(x, y)).collect()))
        }
        "vector" => {
            let s = ev.eval_scalar(&args[0], g)?;
            Ok(Val::Vector(vec![VSeries {
                labels: Vec::new(),
                drop_name: false,
                vals: s.into_iter().map(Some).collect(),
            }]))
        }
        "scalar" => {
            let v = ev.eval_vector(&args[0], g)?;
            let out = (0..g.n)
                .map(|i| {
                    let mut it = v.iter().filter_map(|s| s.vals[i]);
                    match (it.next(), it.next()) {
                        (Some(x), None) => x,
                        _ => f64::NAN,
                    }
                })
                .collect();
            Ok(Val::Scalar(out))
        }
        "timestamp" => {
            let mut v = match &args[0] {
                Expr::Vector(sel) => ev.eval_selector(sel, g, true)?,
                e => {
                    let mut v = ev.eval_vector(e, g)?;
                    for s in &mut v {
                        for (i, x) in s.vals.iter_mut().enumerate() {
                            if x.is_some() {
                                *x = Some(g.t(i) as f64 / 1000.0);
                            }
                        }
                    }
                    v
                }
            };
            v.iter_mut().for_each(|s| s.drop_name = true);
            Ok(Val::Vector(v))
        }
        "abs" | "ceil" | "floor" | "exp" | "sqrt" | "ln" | "log2" | "log10" | "sgn" | "rad" | "deg" | "sin" | "cos"
        | "tan" | "asin" | "acos" | "atan" | "sinh" | "cosh" | "tanh" | "asinh" | "acosh" | "atanh" => {
            let f: fn(f64) -> f64 = match func {
                "abs" => f64::abs,
                "ceil" => f64::ceil,
                "floor" => f64::floor,
                "exp" => f64::exp,
                "sqrt" => f64::sqrt,
                "ln" => f64::ln,
                "log2" => f64::log2,
                "log10" => f64::log10,
                "sgn" => |x: f64| {
                    if x < 0.0 {
                        -1.0
                    } else if x > 0.0 {
                        1.0
                    } else {
                        x
                    }
                },
                "rad" => |x: f64| x * std::f64::consts::PI / 180.0,
                "deg" => |x: f64| x * 180.0 / std::f64::consts::PI,
                "sin" => f64::sin,
                "cos" => f64::cos,
                "tan" => f64::tan,
                "asin" => f64::asin,
                "acos" => f64::acos,
                "atan" => f64::atan,
                "sinh" => f64::sinh,
                "cosh" => f64::cosh,
                "tanh" => f64::tanh,
                "asinh" => f64::asinh,
                "acosh" => f64::acosh,
                _ => f64::atanh,
            };
            let v = ev.eval_vector(&args[0], g)?;
            Ok(Val::Vector(map_values(v, |x, _| Some(f(x)))))
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let v = ev.eval_vector(&args[0], g)?;
            let a = ev.eval_scalar(&args[1], g)?;
            let b = if func == "clamp" { ev.eval_scalar(&args[2], g)? } else { Vec::new() };
            Ok(Val::Vector(map_values(v, |x, i| match func {
                "clamp" => {
                    if b[i] < a[i] {
                        None
                    } else {
                        Some(go_max(a[i], go_min(b[i], x)))
                    }
                }
                "clamp_min" => Some(go_max(a[i], x)),
                _ => Some(go_min(a[i], x)),
            })))
        }
        "round" => {
            let v = ev.eval_vector(&args[0], g)?;
            let to = if args.len() > 1 { ev.eval_scalar(&args[1], g)? } else { vec![1.0; g.n] };
            Ok(Val::Vector(map_values(v, |x, i| {
                let inv = 1.0 / to[i];
                Some((x * inv + 0.5).floor() / inv)
            })))
        }
        "minute" | "hour" | "day_of_week" | "day_of_month" | "day_of_year" | "days_in_month" | "month" | "year" => {
            let v = if args.is_empty() {
                vec![VSeries {
                    labels: Vec::new(),
                    drop_name: false,
                    vals: (0..g.n).map(|i| Some(g.t(i) as f64 / 1000.0)).collect(),
                }]
            } else {
                ev.eval_vector(&args[0], g)?
            };
            Ok(Val::Vector(map_values(v, |x, _| Some(date_part(func, x)))))
        }
        "label_replace" => label_replace(ev, args, g),
        "label_join" => label_join(ev, args, g),
        "sort" | "sort_desc" => {
            let mut v = ev.eval_vector(&args[0], g)?;
            if ev.range_query {
                ev.warn("sort is ineffective for range queries since results are always ordered by labels".into());
                return Ok(Val::Vector(v));
            }
            let desc = func == "sort_desc";
            v.sort_by(|a, b| {
                let (x, y) = (a.vals[0].unwrap_or(f64::NAN), b.vals[0].unwrap_or(f64::NAN));
                match (x.is_nan(), y.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if desc => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
                    _ => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
                }
            });
            Ok(Val::Vector(v))
        }
        "sort_by_label" | "sort_by_label_desc" => {
            let mut v = ev.eval_vector(&args[0], g)?;
            let mut names = Vec::new();
            for a in &args[1..] {
                match ev.eval(a, g)? {
                    Val::Str(s) => names.push(s),
                    _ => return Err(EvalError::BadData("expected string".into())),
                }
            }
            if ev.range_query {
                ev.warn("sort is ineffective for range queries since results are always ordered by labels".into());
                return Ok(Val::Vector(v));
            }
            let desc = func == "sort_by_label_desc";
            v.sort_by(|a, b| {
                let mut ord = std::cmp::Ordering::Equal;
                for n in &names {
                    let (x, y) = (label_value(&a.labels, n).unwrap_or(""), label_value(&b.labels, n).unwrap_or(""));
                    if x != y {
                        ord = natural_cmp(x, y);
                        break;
                    }
                }
                if ord == std::cmp::Ordering::Equal {
                    ord = a.labels.cmp(&b.labels);
                }
                if desc { ord.reverse() } else { ord }
            });
            Ok(Val::Vector(v))
        }
        "info" => info(ev, args, g),
        "histogram_quantile" => {
            let q = ev.eval_scalar(&args[0], g)?;
            let v = ev.eval_vector(&args[1], g)?;
            Ok(Val::Vector(histogram_quantile(ev, &q, &v, g)))
        }
        "histogram_quantiles" => {
            let v = ev.eval_vector(&args[0], g)?;
            let lname = eval_str(ev, &args[1], g)?;
            let mut out = Vec::new();
            for a in &args[2..] {
                let q = ev.eval_scalar(a, g)?;
                let mut res = histogram_quantile(ev, &q, &v, g);
                let qs = q.first().copied().unwrap_or(f64::NAN);
                let mut qtext = super::format_float(qs);
                if qs.is_finite() && !qtext.contains('.') {
                    qtext.push_str(".0");
                }
                for s in &mut res {
                    set_label(&mut s.labels, &lname, qtext.clone());
                }
                out.extend(res);
            }
            Ok(Val::Vector(merge_same_labels(out)?))
        }
        "histogram_fraction" => histogram_fraction(ev, args, g),
        "histogram_count" | "histogram_sum" | "histogram_avg" | "histogram_stddev" | "histogram_stdvar" => {
            // Native histograms are not supported: float samples are ignored.
            ev.eval_vector(&args[0], g)?;
            Ok(Val::Vector(Vec::new()))
        }
        _ => Err(EvalError::BadData(format!("function {func}() is not supported"))),
    }
}

/// Rejects `anchored`/`smoothed` range selectors in functions that do not support them.
fn check_extended(func: &str, args: &[Expr]) -> Result<(), EvalError> {
    for a in args {
        if let Expr::Matrix { sel, .. } = a {
            if sel.anchored && !matches!(func, "changes" | "delta" | "increase" | "rate" | "resets") {
                return Err(EvalError::BadData(format!(
                    "anchored modifier can only be used with: changes, delta, increase, rate, resets - not with {func}"
                )));
            }
            if sel.smoothed && !matches!(func, "delta" | "increase" | "rate") {
                return Err(EvalError::BadData(format!(
                    "smoothed modifier can only be used with: delta, increase, rate - not with {func}"
                )));
            }
        }
    }
    Ok(())
}

/// Increase of a counter over consecutive points, with reset correction.
fn counter_increase(vs: &[f64]) -> f64 {
    let mut inc = 0.0;
    for w in vs.windows(2) {
        inc += if w[1] < w[0] { w[1] } else { w[1] - w[0] };
    }
    inc
}

/// Value at `t` between two samples; for counters a drop is a reset, interpolated from zero.
fn interpolate(t0: i64, v0: f64, t1: i64, v1: f64, t: i64, counter: bool) -> f64 {
    let frac = (t - t0) as f64 / (t1 - t0) as f64;
    if counter && v1 < v0 { v1 * frac } else { v0 + (v1 - v0) * frac }
}

/// `rate`/`increase`/`delta`/`changes`/`resets` over an `anchored` or `smoothed` window `(s, e]` whose samples are
/// `lo..hi` of `ts`/`vs` (the series also holds samples before and after the window).
#[allow(clippy::too_many_arguments)]
fn extended_value(
    func: &str,
    arg: &RangeArg,
    ts: &[i64],
    vs: &[f64],
    lo: usize,
    hi: usize,
    s: i64,
    e: i64,
    lookback: i64,
) -> Option<f64> {
    let counter = func != "delta";
    let secs = arg.range_ms as f64 / 1000.0;
    if arg.anchored {
        if hi <= lo {
            return None;
        }
        let first = if lo > 0 && ts[lo - 1] > s - lookback { lo - 1 } else { lo };
        let w = &vs[first..hi];
        return Some(match func {
            "increase" => counter_increase(w),
            "rate" => counter_increase(w) / secs,
            "delta" => w[w.len() - 1] - w[0],
            "changes" => w.windows(2).filter(|p| p[0] != p[1] && !(p[0].is_nan() && p[1].is_nan())).count() as f64,
            _ => w.windows(2).filter(|p| p[1] < p[0]).count() as f64,
        });
    }
    // smoothed: needs a sample at or before the end and one after the start.
    if hi == 0 || lo >= ts.len() {
        return None;
    }
    let start_v = if lo > 0 && ts[lo - 1] > s - lookback {
        interpolate(ts[lo - 1], vs[lo - 1], ts[lo], vs[lo], s, counter)
    } else {
        vs[lo]
    };
    let end_v = if hi < ts.len() && ts[hi] < e + lookback {
        interpolate(ts[hi - 1], vs[hi - 1], ts[hi], vs[hi], e, counter)
    } else {
        vs[hi - 1]
    };
    if !counter {
        return Some(end_v - start_v);
    }
    let mut pts = Vec::with_capacity(hi.saturating_sub(lo) + 2);
    pts.push(start_v);
    pts.extend_from_slice(&vs[lo..hi]);
    pts.push(end_v);
    let inc = counter_increase(&pts);
    Some(if func == "rate" { inc / secs } else { inc })
}

fn map_values(mut v: Vec<VSeries>, f: impl Fn(f64, usize) -> Option<f64>) -> Vec<VSeries> {
    for s in &mut v {
        s.drop_name = true;
        for (i, x) in s.vals.iter_mut().enumerate() {
            if let Some(y) = *x {
                *x = f(y, i);
            }
        }
    }
    v.retain(|s| s.vals.iter().any(Option::is_some));
    v
}

fn absent_labels(e: &Expr) -> Labels {
    let sel: Option<&Selector> = match e {
        Expr::Vector(s) | Expr::Matrix { sel: s, .. } => Some(s),
        _ => None,
    };
    let mut out: Labels = Vec::new();
    let Some(sel) = sel else { return out };
    let mut deleted: Vec<&str> = Vec::new();
    for m in &sel.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        let has = out.iter().any(|(n, _)| n == &m.name);
        if matches!(m.op, super::MatchOp::Equal) && !has && !deleted.contains(&m.name.as_str()) {
            out.push((m.name.clone(), m.value.clone()));
        } else {
            out.retain(|(n, _)| n != &m.name);
            deleted.push(&m.name);
        }
    }
    out.retain(|(_, v)| !v.is_empty());
    out.sort();
    out
}

/// Prometheus' non-counter check for rate/increase.
fn check_counter_name(ev: &mut Evaluator, labels: &Labels) {
    let name = label_value(labels, METRIC_NAME).unwrap_or("");
    if !(name.ends_with("_total") || name.ends_with("_sum") || name.ends_with("_count") || name.ends_with("_bucket")) {
        ev.info(format!(
            "metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {}",
            super::go_quote(name)
        ));
    }
}

fn range_func(ev: &mut Evaluator, func: &str, arg: RangeArg, g: &Grid, params: &[Vec<f64>]) -> Result<Val, EvalError> {
    let keep_name = matches!(func, "last_over_time" | "first_over_time");
    let extended = arg.anchored || arg.smoothed;
    if !extended && matches!(func, "rate" | "increase" | "delta") {
        return rate_family(ev, func, arg, g);
    }
    let lookback = ev.opts.lookback_ms;
    let mut out = Vec::with_capacity(arg.series.len());
    for r in &arg.series {
        ev.check_deadline_work(g.n)?;
        let mut cur = Cursor::new();
        let mut vals = vec![None; g.n];
        let mut any = false;
        let mut warned_counter = false;
        for (i, slot) in vals.iter_mut().enumerate() {
            let t = g.t(i);
            let (s, e) = arg.bounds(t);
            let (lo, hi) = cur.window(&r.t, s, e);
            if extended {
                let v = extended_value(func, &arg, &r.t, &r.v, lo, hi, s, e, lookback);
                any |= v.is_some();
                *slot = v;
                continue;
            }
            if hi <= lo {
                continue;
            }
            let ts = &r.t[lo..hi];
            let vs = &r.v[lo..hi];
            let v = match func {
                "rate" | "increase" | "delta" => {
                    let res = extrapolated_rate(ts, vs, s, e, func != "delta", func == "rate", arg.range_ms);
                    if res.is_some() && func != "delta" && !warned_counter {
                        warned_counter = true;
                        check_counter_name(ev, &r.labels);
                    }
                    res
                }
                "irate" | "idelta" => instant_value(ts, vs, func == "irate"),
                "changes" => {
                    Some(vs.windows(2).filter(|w| w[0] != w[1] && !(w[0].is_nan() && w[1].is_nan())).count() as f64)
                }
                "resets" => Some(vs.windows(2).filter(|w| w[1] < w[0]).count() as f64),
                "deriv" => {
                    if vs.len() < 2 {
                        None
                    } else {
                        Some(linear_regression(ts, vs, ts[0]).0)
                    }
                }
                "predict_linear" => {
                    if vs.len() < 2 {
                        None
                    } else {
                        let (slope, icpt) = linear_regression(ts, vs, t);
                        Some(slope * params[0][i] + icpt)
                    }
                }
                "avg_over_time" => Some(avg(vs)),
                "sum_over_time" => {
                    let (mut sum, mut c) = (0.0, 0.0);
                    for &x in vs {
                        (sum, c) = kahan_inc(x, sum, c);
                    }
                    Some(sum + c)
                }
                "min_over_time" => Some(vs[1..].iter().fold(vs[0], |m, &x| if x < m || m.is_nan() { x } else { m })),
                "max_over_time" => Some(vs[1..].iter().fold(vs[0], |m, &x| if x > m || m.is_nan() { x } else { m })),
                "count_over_time" => Some(vs.len() as f64),
                "stddev_over_time" => Some(variance(vs).sqrt()),
                "stdvar_over_time" => Some(variance(vs)),
                "last_over_time" => Some(vs[vs.len() - 1]),
                "first_over_time" => Some(vs[0]),
                "present_over_time" => Some(1.0),
                "quantile_over_time" => {
                    let mut buf = vs.to_vec();
                    Some(quantile(params[0][i], &mut buf))
                }
                "mad_over_time" => {
                    if vs.iter().any(|x| x.is_nan()) {
                        Some(f64::NAN)
                    } else {
                        let mut buf = vs.to_vec();
                        let med = quantile(0.5, &mut buf);
                        let mut dev: Vec<f64> = vs.iter().map(|x| (x - med).abs()).collect();
                        Some(quantile(0.5, &mut dev))
                    }
                }
                "ts_of_last_over_time" => Some(ts[ts.len() - 1] as f64 / 1000.0),
                "ts_of_first_over_time" => Some(ts[0] as f64 / 1000.0),
                "ts_of_max_over_time" | "ts_of_min_over_time" => {
                    let max = func == "ts_of_max_over_time";
                    let mut best = vs[0];
                    let mut bt = ts[0];
                    for (&x, &tt) in vs.iter().zip(ts).skip(1) {
                        let better = if max { x >= best } else { x <= best };
                        if better || best.is_nan() {
                            best = x;
                            bt = tt;
                        }
                    }
                    Some(bt as f64 / 1000.0)
                }
                "double_exponential_smoothing" => double_exp(vs, params[0][i], params[1][i]),
                _ => return Err(EvalError::BadData(format!("function {func}() is not supported"))),
            };
            if v.is_some() {
                any = true;
            }
            *slot = v;
        }
        if any {
            out.push(VSeries { labels: r.labels.clone(), drop_name: r.drop_name || !keep_name, vals });
        }
    }
    Ok(Val::Vector(out))
}

/// `rate`, `increase` and `delta` over plain windows, the hot path of dashboards. The same arithmetic as
/// [`extrapolated_rate`] in the same order, with two things done once per series instead of once per step:
/// the function name is matched once, and a counter's resets (the indices `j` with `v[j] < v[j - 1]`) are
/// found once, so that a window adds the value before each reset inside it, in ascending order, exactly
/// as the per-window scan adds them, without looking at the samples between.
fn rate_family(ev: &mut Evaluator, func: &str, arg: RangeArg, g: &Grid) -> Result<Val, EvalError> {
    let is_counter = func != "delta";
    let is_rate = func == "rate";
    let range_ms = arg.range_ms;
    let window = RangeArg { series: Vec::new(), ..arg };
    // Without `@`, the windows of successive steps start and end later and later.
    let forward = window.at.is_none();
    let one = |r: super::eval::RSeries| -> Option<VSeries> {
        let (ts, vs): (&[i64], &[f64]) = (&r.t, &r.v);
        let resets: Vec<usize> =
            if is_counter { (1..vs.len()).filter(|&j| vs[j] < vs[j - 1]).collect() } else { Vec::new() };
        let mut cur = Cursor::new();
        let (mut lo, mut hi) = (0usize, 0usize);
        let mut vals = vec![None; g.n];
        let mut any = false;
        // First reset index above the window's first sample; windows usually only move forward.
        let mut rp = 0usize;
        let mut last_lo = 0usize;
        for (i, slot) in vals.iter_mut().enumerate() {
            let (s, e) = window.bounds(g.t(i));
            if forward {
                // Both window ends only move forward: no look back at the previous window.
                while lo < ts.len() && ts[lo] <= s {
                    lo += 1;
                }
                hi = hi.max(lo);
                while hi < ts.len() && ts[hi] <= e {
                    hi += 1;
                }
            } else {
                (lo, hi) = cur.window(ts, s, e);
            }
            if hi < lo + 2 {
                continue;
            }
            let mut result = vs[hi - 1] - vs[lo];
            if !resets.is_empty() {
                if lo < last_lo {
                    rp = 0;
                }
                last_lo = lo;
                while rp < resets.len() && resets[rp] <= lo {
                    rp += 1;
                }
                for &j in &resets[rp..] {
                    if j >= hi {
                        break;
                    }
                    result += vs[j - 1];
                }
            }
            *slot = Some(extrapolate(result, ts[lo], ts[hi - 1], hi - lo, vs[lo], s, e, is_counter, is_rate, range_ms));
            any = true;
        }
        any.then_some(VSeries { labels: r.labels, drop_name: true, vals })
    };
    let mut out = Vec::new();
    for v in super::eval::map_series(ev, arg.series, g.n, one)?.into_iter().flatten() {
        if is_counter {
            check_counter_name(ev, &v.labels);
        }
        out.push(v);
    }
    Ok(Val::Vector(out))
}

/// Prometheus' extrapolated rate for one window `(range_start, range_end]`.
pub(super) fn extrapolated_rate(
    ts: &[i64],
    vs: &[f64],
    range_start: i64,
    range_end: i64,
    is_counter: bool,
    is_rate: bool,
    range_ms: i64,
) -> Option<f64> {
    let n = vs.len();
    if n < 2 {
        return None;
    }
    let mut result = vs[n - 1] - vs[0];
    if is_counter {
        let mut prev = vs[0];
        for &x in &vs[1..] {
            if x < prev {
                result += prev;
            }
            prev = x;
        }
    }
    Some(extrapolate(result, ts[0], ts[n - 1], n, vs[0], range_start, range_end, is_counter, is_rate, range_ms))
}

/// The extrapolation of [`extrapolated_rate`]: `result` is the window's reset-corrected difference, the
/// window holds `n >= 2` samples from `(first_t, first_v)` to `last_t`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn extrapolate(
    result: f64,
    first_t: i64,
    last_t: i64,
    n: usize,
    first_v: f64,
    range_start: i64,
    range_end: i64,
    is_counter: bool,
    is_rate: bool,
    range_ms: i64,
) -> f64 {
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let mut to_end = (range_end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg_dur = sampled / (n - 1) as f64;
    let threshold = avg_dur * 1.1;
    if to_start >= threshold {
        to_start = avg_dur / 2.0;
    }
    if is_counter && result > 0.0 && first_v >= 0.0 {
        // `to_zero = sampled * (first_v / result)` counts only below `to_start`. Where `first_v * sampled`
        // exceeds `to_start * result` by far more than rounding can (both finite, the second normal), it
        // cannot be, and the division (a sixth of a window's cost) is skipped: a counter's first value
        // is usually far above what it grows by in one window.
        let (a, b) = (first_v * sampled, to_start * result);
        if !(a.is_finite() && b.is_normal() && a > b * (1.0 + 1e-9)) {
            let to_zero = sampled * (first_v / result);
            if to_zero < to_start {
                to_start = to_zero;
            }
        }
    }
    if to_end >= threshold {
        to_end = avg_dur / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if is_rate {
        factor /= range_ms as f64 / 1000.0;
    }
    result * factor
}

fn instant_value(ts: &[i64], vs: &[f64], is_rate: bool) -> Option<f64> {
    let n = vs.len();
    if n < 2 {
        return None;
    }
    let (pt, pv) = (ts[n - 2], vs[n - 2]);
    let (lt, lv) = (ts[n - 1], vs[n - 1]);
    let dt = lt - pt;
    if dt == 0 {
        return None;
    }
    let mut r = if is_rate && lv < pv { lv } else { lv - pv };
    if is_rate {
        r /= dt as f64 / 1000.0;
    }
    Some(r)
}

fn linear_regression(ts: &[i64], vs: &[f64], icpt_t: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy, mut sxy, mut cxy, mut sx2, mut cx2) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let init = vs[0];
    let mut const_y = true;
    for (i, (&t, &y)) in ts.iter().zip(vs).enumerate() {
        if const_y && i > 0 && y != init {
            const_y = false;
        }
        n += 1.0;
        let x = (t - icpt_t) as f64 / 1e3;
        (sx, cx) = kahan_inc(x, sx, cx);
        (sy, cy) = kahan_inc(y, sy, cy);
        (sxy, cxy) = kahan_inc(x * y, sxy, cxy);
        (sx2, cx2) = kahan_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init);
    }
    sx += cx;
    sy += cy;
    sxy += cxy;
    sx2 += cx2;
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

fn avg(vs: &[f64]) -> f64 {
    let (mut sum, mut mean, mut c) = (0.0f64, 0.0f64, 0.0f64);
    let mut incremental = false;
    for (i, &f) in vs.iter().enumerate() {
        let count = (i + 1) as f64;
        if i == 0 {
            sum = f;
            mean = f;
            continue;
        }
        if !incremental && sum.is_infinite() {
            if f.is_infinite() && (sum > 0.0) == (f > 0.0) {
                continue;
            }
            if !f.is_infinite() && !f.is_nan() {
                continue;
            }
        }
        if !incremental {
            let (ns, nc) = kahan_inc(f, sum, c);
            if !ns.is_infinite() {
                sum = ns;
                c = nc;
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            c /= count - 1.0;
        }
        let q = (count - 1.0) / count;
        (mean, c) = kahan_inc(f / count, q * mean, q * c);
    }
    if incremental {
        mean + c
    } else {
        let n = vs.len() as f64;
        sum / n + c / n
    }
}

fn variance(vs: &[f64]) -> f64 {
    let (mut count, mut mean, mut cm, mut aux, mut ca) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &f in vs {
        count += 1.0;
        let delta = f - (mean + cm);
        (mean, cm) = kahan_inc(delta / count, mean, cm);
        (aux, ca) = kahan_inc(delta * (f - (mean + cm)), aux, ca);
    }
    (aux + ca) / count
}

fn double_exp(vs: &[f64], sf: f64, tf: f64) -> Option<f64> {
    if vs.len() < 2 {
        return None;
    }
    let (mut s0, mut s1) = (0.0, vs[0]);
    let mut b = vs[1] - vs[0];
    for (i, &v) in vs.iter().enumerate().skip(1) {
        let x = sf * v;
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn date_part(func: &str, v: f64) -> f64 {
    if v.is_nan() || v.is_infinite() {
        return f64::NAN;
    }
    let secs = v.trunc() as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mdays = [31, if is_leap(y) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    (match func {
        "minute" => (sod / 60) % 60,
        "hour" => sod / 3600,
        "day_of_week" => (days + 4).rem_euclid(7),
        "day_of_month" => d as i64,
        "day_of_year" => mdays[..(m as usize - 1)].iter().sum::<i64>() + d as i64,
        "days_in_month" => mdays[m as usize - 1],
        "month" => m as i64,
        _ => y,
    }) as f64
}

/// Go-style natural string comparison (digit runs compare numerically).
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < ab.len() && j < bb.len() {
        let (ca, cb) = (ab[i], bb[j]);
        if ca.is_ascii_digit() && cb.is_ascii_digit() {
            let si = i;
            while i < ab.len() && ab[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < bb.len() && bb[j].is_ascii_digit() {
                j += 1;
            }
            let na = a[si..i].trim_start_matches('0');
            let nb = b[sj..j].trim_start_matches('0');
            let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if o != Ordering::Equal {
                return o;
            }
        } else {
            if ca != cb {
                return ca.cmp(&cb);
            }
            i += 1;
            j += 1;
        }
    }
    (ab.len() - i).cmp(&(bb.len() - j))
}

fn eval_str(ev: &mut Evaluator, e: &Expr, g: &Grid) -> Result<String, EvalError> {
    match ev.eval(e, g)? {
        Val::Str(s) => Ok(s),
        _ => Err(EvalError::BadData("expected string argument".into())),
    }
}

fn set_label(labels: &mut Labels, name: &str, value: String) {
    labels.retain(|(n, _)| n != name);
    if !value.is_empty() {
        let pos = labels.partition_point(|(n, _)| n.as_str() < name);
        labels.insert(pos, (name.to_string(), value));
    }
}

fn label_replace(ev: &mut Evaluator, args: &[Expr], g: &Grid) -> Result<Val, EvalError> {
    let v = ev.eval_vector(&args[0], g)?;
    let dst = eval_str(ev, &args[1], g)?;
    let repl = eval_str(ev, &args[2], g)?;
    let src = eval_str(ev, &args[3], g)?;
    let re_s = eval_str(ev, &args[4], g)?;
    let re = anchored_regex(&re_s)
        .map_err(|_| EvalError::Execution(format!("invalid regular expression in label_replace(): {re_s}")))?;
    if !super::valid_label_name(&dst) {
        return Err(EvalError::Execution(format!(
            "invalid destination label name in label_replace(): {}",
            super::display_raw(&dst)
        )));
    }
    let mut out = Vec::with_capacity(v.len());
    for mut s in v {
        let sv = label_value(&s.labels, &src).unwrap_or("").to_string();
        if let Some(caps) = re.captures(&sv) {
            let mut res = String::new();
            caps.expand(&repl, &mut res);
            set_label(&mut s.labels, &dst, res);
            if dst == METRIC_NAME {
                s.drop_name = false;
            }
        }
        out.push(s);
    }
    Ok(Val::Vector(merge_same_labels(out)?))
}

fn label_join(ev: &mut Evaluator, args: &[Expr], g: &Grid) -> Result<Val, EvalError> {
    let v = ev.eval_vector(&args[0], g)?;
    let dst = eval_str(ev, &args[1], g)?;
    let sep = eval_str(ev, &args[2], g)?;
    let mut srcs = Vec::new();
    for a in &args[3..] {
        srcs.push(eval_str(ev, a, g)?);
    }
    if !super::valid_label_name(&dst) {
        return Err(EvalError::Execution(format!(
            "invalid destination label name in label_join(): {}",
            super::display_raw(&dst)
        )));
    }
    let mut out = Vec::with_capacity(v.len());
    for mut s in v {
        let joined = srcs.iter().map(|n| label_value(&s.labels, n).unwrap_or("")).collect::<Vec<_>>().join(&sep);
        set_label(&mut s.labels, &dst, joined);
        if dst == METRIC_NAME {
            s.drop_name = false;
        }
        out.push(s);
    }
    Ok(Val::Vector(merge_same_labels(out)?))
}

/// Classic-bucket groups of a histogram function's input: (group labels, members (upper bound, series index)).
type BucketGroups = Vec<(Labels, Vec<(f64, usize)>)>;

fn bucket_groups(ev: &mut Evaluator, v: &[VSeries]) -> BucketGroups {
    let mut groups: BucketGroups = Vec::new();
    let mut idx: HashMap<Labels, usize> = HashMap::new();
    for (j, s) in v.iter().enumerate() {
        let le = label_value(&s.labels, "le");
        let ub = le.and_then(parse_go_float);
        let Some(ub) = ub else {
            let name = label_value(&s.labels, METRIC_NAME).unwrap_or("");
            ev.warn(format!(
                "bucket label \"le\" is missing or has a malformed value of {} for metric name {}",
                super::go_quote(le.unwrap_or("")),
                super::go_quote(name)
            ));
            continue;
        };
        let gl: Labels = s.labels.iter().filter(|(n, _)| n != "le").cloned().collect();
        let k = match idx.get(&gl) {
            Some(&k) => k,
            None => {
                idx.insert(gl.clone(), groups.len());
                groups.push((gl, Vec::new()));
                groups.len() - 1
            }
        };
        groups[k].1.push((ub, j));
    }
    groups
}

/// Parses a float like Go's `strconv.ParseFloat` for the common forms.
pub(super) fn parse_go_float(s: &str) -> Option<f64> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "+inf" | "inf" | "+infinity" | "infinity" => return Some(f64::INFINITY),
        "-inf" | "-infinity" => return Some(f64::NEG_INFINITY),
        "nan" => return Some(f64::NAN),
        _ => {}
    }
    if t != s {
        return None;
    }
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        let v = i64::from_str_radix(hex, 16).ok()? as f64;
        return Some(if neg { -v } else { v });
    }
    let body = body.replace('_', "");
    body.parse::<f64>().ok().map(|v| if neg { -v } else { v })
}

fn almost_equal(a: f64, b: f64, eps: f64) -> bool {
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || diff < f64::MIN_POSITIVE {
        return diff < eps * f64::MIN_POSITIVE;
    }
    diff / (a.abs() + b.abs()).min(f64::MAX) < eps
}

/// Sorts, coalesces and fixes buckets; returns (forced monotonic).
fn prepare_buckets(b: &mut Vec<(f64, f64)>) -> bool {
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(b.len());
    for &(ub, c) in b.iter() {
        match merged.last_mut() {
            Some(last) if last.0 == ub => last.1 += c,
            _ => merged.push((ub, c)),
        }
    }
    *b = merged;
    let mut forced = false;
    if b.is_empty() {
        return false;
    }
    let mut prev = b[0].1;
    for x in b.iter_mut().skip(1) {
        let cur = x.1;
        if cur == prev {
            continue;
        }
        if almost_equal(prev, cur, 1e-12) {
            x.1 = prev;
            continue;
        }
        if cur < prev {
            x.1 = prev;
            forced = true;
            continue;
        }
        prev = cur;
    }
    forced
}

fn bucket_quantile(q: f64, b: &mut Vec<(f64, f64)>) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    if b.last().is_none_or(|x| x.0 != f64::INFINITY) {
        return (f64::NAN, false);
    }
    let forced = prepare_buckets(b);
    if b.len() < 2 {
        return (f64::NAN, forced);
    }
    let total = b[b.len() - 1].1;
    if total == 0.0 || total.is_nan() {
        return (f64::NAN, forced);
    }
    let mut rank = q * total;
    let n = b.len() - 1;
    let idx = b[..n].partition_point(|x| x.1 < rank);
    if idx == n {
        return (b[n - 1].0, forced);
    }
    if idx == 0 && b[0].0 <= 0.0 {
        return (b[0].0, forced);
    }
    let mut start = 0.0;
    let end = b[idx].0;
    let mut count = b[idx].1;
    if idx > 0 {
        start = b[idx - 1].0;
        count -= b[idx - 1].1;
        rank -= b[idx - 1].1;
    }
    (start + (end - start) * (rank / count), forced)
}

fn bucket_fraction(lower: f64, upper: f64, b: &mut Vec<(f64, f64)>) -> f64 {
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    if b.last().is_none_or(|x| x.0 != f64::INFINITY) {
        return f64::NAN;
    }
    prepare_buckets(b);
    let count = b[b.len() - 1].1;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    for i in 0..b.len() {
        let lb = if i > 0 {
            b[i - 1].0
        } else if b[0].0 > 0.0 {
            0.0
        } else {
            f64::NEG_INFINITY
        };
        let ub = b[i].0;
        let bc = b[i].1;
        let interp = |v: f64| {
            if lb.is_infinite() {
                // No interpolation within a bucket of infinite width.
                bc
            } else {
                rank + (bc - rank) * (v - lb) / (ub - lb)
            }
        };
        if !lower_set && lb >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && lb >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && lb < lower && ub > lower {
            lower_rank = interp(lower);
            lower_set = true;
        }
        if !upper_set && lb < upper && ub > upper {
            upper_rank = interp(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank = bc;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    (upper_rank - lower_rank) / count
}

fn histogram_quantile(ev: &mut Evaluator, q: &[f64], v: &[VSeries], g: &Grid) -> Vec<VSeries> {
    for &x in q {
        if !(0.0..=1.0).contains(&x) {
            ev.warn(format!("quantile value should be between 0 and 1, got {}", fmt_g(x)));
        }
    }
    let groups = bucket_groups(ev, v);
    let mut out = Vec::with_capacity(groups.len());
    let mut buf: Vec<(f64, f64)> = Vec::new();
    for (labels, members) in groups {
        let mut vals = vec![None; g.n];
        for (i, slot) in vals.iter_mut().enumerate() {
            buf.clear();
            buf.extend(members.iter().filter_map(|&(ub, j)| v[j].vals[i].map(|c| (ub, c))));
            if buf.is_empty() {
                continue;
            }
            let (r, forced) = bucket_quantile(q[i], &mut buf);
            if forced {
                let name = label_value(&labels, METRIC_NAME).unwrap_or("");
                ev.info(format!(
                    "input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name {}",
                    super::go_quote(name)
                ));
            }
            *slot = Some(r);
        }
        if vals.iter().any(Option::is_some) {
            out.push(VSeries { labels, drop_name: true, vals });
        }
    }
    out
}

fn histogram_fraction(ev: &mut Evaluator, args: &[Expr], g: &Grid) -> Result<Val, EvalError> {
    let lo = ev.eval_scalar(&args[0], g)?;
    let hi = ev.eval_scalar(&args[1], g)?;
    let v = ev.eval_vector(&args[2], g)?;
    let groups = bucket_groups(ev, &v);
    let mut out = Vec::with_capacity(groups.len());
    let mut buf: Vec<(f64, f64)> = Vec::new();
    for (labels, members) in groups {
        let mut vals = vec![None; g.n];
        for (i, slot) in vals.iter_mut().enumerate() {
            buf.clear();
            buf.extend(members.iter().filter_map(|&(ub, j)| v[j].vals[i].map(|c| (ub, c))));
            if buf.is_empty() {
                continue;
            }
            *slot = Some(bucket_fraction(lo[i], hi[i], &mut buf));
        }
        if vals.iter().any(Option::is_some) {
            out.push(VSeries { labels, drop_name: true, vals });
        }
    }
    Ok(Val::Vector(out))
}

/// Reference time of `info()`'s first argument at step time `t`: `@`/offset of the first selector, composed with
/// those of enclosing subqueries.
fn info_ref(ev: &Evaluator, e: &Expr, t: i64) -> Option<i64> {
    match e {
        Expr::Vector(sel) | Expr::Matrix { sel, .. } => Some(ev.resolve_at(sel.at).unwrap_or(t) - sel.offset_ms),
        Expr::Subquery(sq) => info_ref(ev, &sq.expr, ev.resolve_at(sq.at).unwrap_or(t) - sq.offset_ms),
        Expr::Neg(x) => info_ref(ev, x, t),
        Expr::Call { args, .. } => args.iter().find_map(|a| info_ref(ev, a, t)),
        Expr::Aggregate(a) => info_ref(ev, &a.expr, t).or_else(|| a.param.as_ref().and_then(|p| info_ref(ev, p, t))),
        Expr::Binary(b) => info_ref(ev, &b.lhs, t).or_else(|| info_ref(ev, &b.rhs, t)),
        Expr::Number(_) | Expr::Str(_) => None,
    }
}

/// The identifying labels joining info metrics (`instance`, `job`).
const INFO_ID_LABELS: [&str; 2] = ["instance", "job"];

/// Signature of an info join: metric name plus the identifying labels present.
fn info_sig(name: &str, labels: &Labels) -> String {
    let mut s = String::from(name);
    for l in INFO_ID_LABELS {
        if let Some(v) = label_value(labels, l) {
            s.push('\u{ff}');
            s.push_str(l);
            s.push('=');
            s.push_str(v);
        }
    }
    s
}

/// `info(v, {selector})`: enriches `v` with data labels of info metrics (default `target_info`) sharing the
/// identifying labels, looked up at the time the samples of `v` come from.
fn info(ev: &mut Evaluator, args: &[Expr], g: &Grid) -> Result<Val, EvalError> {
    let base = ev.eval_vector(&args[0], g)?;
    let selector_matchers: Vec<super::Matcher> = match args.get(1) {
        Some(Expr::Vector(sel)) => sel.matchers.clone(),
        Some(_) => {
            return Err(EvalError::BadData("info() expects a label selector as second argument".into()));
        }
        None => Vec::new(),
    };
    // Which metrics are info metrics: the selector's `__name__` matchers; only negative ones are narrowed to
    // `*_info`; none at all means `target_info`.
    let mut name_matchers: Vec<super::Matcher> =
        selector_matchers.iter().filter(|m| m.name == METRIC_NAME).cloned().collect();
    if name_matchers.is_empty() {
        name_matchers.push(super::Matcher::new(METRIC_NAME, "=", "target_info")?);
    } else if !name_matchers.iter().any(|m| matches!(m.op, super::MatchOp::Equal | super::MatchOp::Re(_))) {
        name_matchers.insert(0, super::Matcher::new(METRIC_NAME, "=~", ".+_info")?);
    }
    let data_matchers: Vec<&super::Matcher> = selector_matchers.iter().filter(|m| m.name != METRIC_NAME).collect();
    // Info series themselves are not enriched.
    let ignore: Vec<bool> = base
        .iter()
        .map(|s| {
            let name = label_value(&s.labels, METRIC_NAME).unwrap_or("");
            name_matchers.iter().all(|m| m.matches(name))
        })
        .collect();
    // Per-step reference times.
    let refs: Vec<i64> = (0..g.n).map(|i| info_ref(ev, &args[0], g.t(i)).unwrap_or(g.t(i))).collect();
    // Fetch candidate info series.
    let mut id_values: Vec<(&str, Vec<String>)> = Vec::new();
    for l in INFO_ID_LABELS {
        let mut vals: Vec<String> = base
            .iter()
            .zip(&ignore)
            .filter(|(_, ig)| !**ig)
            .filter_map(|(s, _)| label_value(&s.labels, l).map(regex::escape))
            .collect();
        vals.sort();
        vals.dedup();
        if !vals.is_empty() {
            id_values.push((l, vals));
        }
    }
    let mut infos: Vec<super::Series> = Vec::new();
    if !id_values.is_empty() && !base.is_empty() {
        let mut matchers = Vec::new();
        for (l, vals) in &id_values {
            matchers.push(super::Matcher::new(l, "=~", &vals.join("|"))?);
        }
        matchers.extend(data_matchers.iter().map(|m| (*m).clone()));
        matchers.extend(name_matchers.iter().cloned());
        let lookback = ev.opts.lookback_ms;
        let lo = refs.iter().copied().min().unwrap_or(0);
        let hi = refs.iter().copied().max().unwrap_or(0);
        infos = ev.src.select(&matchers, lo - lookback + 1, hi)?;
        infos.sort_by(|a, b| a.labels.cmp(&b.labels));
    }
    let info_names: Vec<String> = {
        let mut n: Vec<String> =
            infos.iter().map(|s| label_value(&s.labels, METRIC_NAME).unwrap_or("").to_string()).collect();
        n.sort();
        n.dedup();
        n
    };
    let info_sigs: Vec<String> =
        infos.iter().map(|s| info_sig(label_value(&s.labels, METRIC_NAME).unwrap_or(""), &s.labels)).collect();
    let base_sigs: Vec<Vec<String>> =
        base.iter().map(|s| info_names.iter().map(|n| info_sig(n, &s.labels)).collect()).collect();
    let all_match_empty = data_matchers.iter().all(|m| m.matches(""));
    let lookback = ev.opts.lookback_ms;
    let mut out: Vec<VSeries> = Vec::new();
    let mut out_idx: HashMap<Labels, usize> = HashMap::new();
    let mut current: HashMap<&str, (usize, i64)> = HashMap::new();
    for (i, &r) in refs.iter().enumerate() {
        ev.check_deadline()?;
        current.clear();
        for (k, s) in infos.iter().enumerate() {
            let j = s.t.partition_point(|&x| x <= r);
            if j == 0 || s.t[j - 1] <= r - lookback || super::is_stale_nan(s.v[j - 1]) {
                continue;
            }
            let ts = s.t[j - 1];
            match current.get(info_sigs[k].as_str()) {
                Some(&(_, prev_t)) if prev_t > ts => {}
                Some(&(prev, prev_t)) if prev_t == ts => {
                    return Err(EvalError::Execution(format!(
                        "found duplicate series for info metric: existing {} @ {}, new {} @ {}",
                        super::labels_to_string(&infos[prev].labels),
                        prev_t,
                        super::labels_to_string(&s.labels),
                        ts
                    )));
                }
                _ => {
                    current.insert(info_sigs[k].as_str(), (k, ts));
                }
            }
        }
        for (bi, bs) in base.iter().enumerate() {
            let Some(v) = bs.vals[i] else { continue };
            let mut labels = bs.labels.clone();
            if !ignore[bi] {
                let mut added: Labels = Vec::new();
                let mut matched = false;
                for sig in &base_sigs[bi] {
                    let Some(&(k, _)) = current.get(sig.as_str()) else {
                        continue;
                    };
                    matched = true;
                    for (n, val) in &infos[k].labels {
                        if n == METRIC_NAME
                            || (!data_matchers.is_empty() && !data_matchers.iter().any(|m| &m.name == n))
                        {
                            continue;
                        }
                        if let Some((_, existing)) = added.iter().find(|(an, _)| an == n) {
                            if existing != val {
                                return Err(EvalError::Execution(format!("conflicting label: {n}")));
                            }
                            continue;
                        }
                        if label_value(&bs.labels, n).is_some() {
                            continue;
                        }
                        added.push((n.clone(), val.clone()));
                    }
                }
                if !matched && !all_match_empty {
                    continue;
                }
                for (n, val) in added {
                    set_label(&mut labels, &n, val);
                }
            }
            let k = match out_idx.get(&labels) {
                Some(&k) => k,
                None => {
                    out_idx.insert(labels.clone(), out.len());
                    out.push(VSeries { labels, drop_name: bs.drop_name, vals: vec![None; g.n] });
                    out.len() - 1
                }
            };
            if out[k].vals[i].is_some() {
                return Err(super::eval::dup_labelset());
            }
            out[k].vals[i] = Some(v);
        }
    }
    Ok(Val::Vector(out))
}
