//! Aggregation operators.

use std::collections::HashMap;

use super::ast::{AggOp, Aggregate};
use super::eval::{Evaluator, Grid, VSeries, Val};
use super::{EvalError, Labels, METRIC_NAME, format_float};

/// Neumaier-compensated increment: returns the new sum and compensation.
#[inline]
pub(super) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Grouping labels of one series.
pub(super) fn group_labels(labels: &Labels, grouping: &Option<(bool, Vec<String>)>) -> Labels {
    match grouping {
        None => Vec::new(),
        Some((true, by)) => labels.iter().filter(|(n, _)| by.iter().any(|b| b == n)).cloned().collect(),
        Some((false, without)) => {
            labels.iter().filter(|(n, _)| n != METRIC_NAME && !without.iter().any(|b| b == n)).cloned().collect()
        }
    }
}

/// Prometheus' quantile over unsorted values (sorted in place; NaN first).
pub(super) fn quantile(q: f64, vals: &mut [f64]) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    vals.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = vals.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let w = rank - rank.floor();
    vals[lower as usize] * (1.0 - w) + vals[upper as usize] * w
}

/// Formats a float like Go's `%g` for annotation texts (close enough for the usual values).
pub(super) fn fmt_g(v: f64) -> String {
    format_float(v).trim_start_matches('+').to_string()
}

/// Evaluates an aggregation.
pub(super) fn eval(ev: &mut Evaluator, a: &Aggregate, g: &Grid) -> Result<Val, EvalError> {
    let mut param_scalar: Option<Vec<f64>> = None;
    let mut param_str: Option<String> = None;
    if let Some(p) = &a.param {
        match ev.eval(p, g)? {
            Val::Scalar(s) => param_scalar = Some(s),
            Val::Str(s) => param_str = Some(s),
            _ => return Err(EvalError::BadData("invalid aggregation parameter".into())),
        }
    }
    let mut input = ev.eval_vector(&a.expr, g)?;
    let mut grouping = a.grouping.clone();
    if a.op == AggOp::CountValues {
        let lname = param_str.clone().unwrap_or_default();
        if !super::valid_label_name(&lname) {
            return Err(EvalError::Execution(format!("invalid label name {}", super::go_quote(&lname))));
        }
        match &mut grouping {
            Some((true, by)) => by.push(lname.clone()),
            None => grouping = Some((true, vec![lname.clone()])),
            _ => {}
        }
        return count_values(input, &lname, &grouping, g);
    }
    // Group membership, computed once per series.
    let mut groups: Vec<(Labels, bool)> = Vec::new();
    let mut gidx: HashMap<Labels, usize> = HashMap::new();
    let mut member: Vec<usize> = Vec::with_capacity(input.len());
    for s in &input {
        let gl = group_labels(&s.labels, &grouping);
        let k = match gidx.get(&gl) {
            Some(&k) => k,
            None => {
                gidx.insert(gl.clone(), groups.len());
                groups.push((gl, false));
                groups.len() - 1
            }
        };
        groups[k].1 |= s.drop_name;
        member.push(k);
    }
    let ng = groups.len();
    match a.op {
        AggOp::Topk | AggOp::Bottomk | AggOp::Limitk | AggOp::LimitRatio => {
            let params = param_scalar.unwrap_or_else(|| vec![f64::NAN; g.n]);
            return select_k(ev, a.op, input, &member, ng, &params, g);
        }
        _ => {}
    }
    if a.op == AggOp::Quantile
        && let Some(ps) = &param_scalar
    {
        for &q in ps {
            if !(0.0..=1.0).contains(&q) {
                ev.warn(format!("quantile value should be between 0 and 1, got {}", fmt_g(q)));
            }
        }
    }
    let mut out: Vec<VSeries> =
        groups.iter().map(|(l, d)| VSeries { labels: l.clone(), drop_name: *d, vals: vec![None; g.n] }).collect();
    if a.op == AggOp::Sum {
        sum_series_major(ev, &input, &member, &mut out, g)?;
        out.retain(|s| s.vals.iter().any(Option::is_some));
        return Ok(Val::Vector(out));
    }
    // Per-group accumulators, reset each step.
    let mut count = vec![0f64; ng];
    let mut val = vec![0f64; ng];
    let mut comp = vec![0f64; ng];
    let mut mean = vec![0f64; ng];
    let mut incr = vec![false; ng];
    let mut qvals: Vec<Vec<f64>> = if a.op == AggOp::Quantile { vec![Vec::new(); ng] } else { Vec::new() };
    for i in 0..g.n {
        ev.check_deadline()?;
        count.iter_mut().for_each(|x| *x = 0.0);
        for q in qvals.iter_mut() {
            q.clear();
        }
        for (s, &k) in input.iter_mut().zip(&member) {
            let Some(f) = s.vals[i] else { continue };
            count[k] += 1.0;
            let first = count[k] == 1.0;
            match a.op {
                AggOp::Sum => {
                    if first {
                        val[k] = f;
                        comp[k] = 0.0;
                    } else {
                        (val[k], comp[k]) = kahan_inc(f, val[k], comp[k]);
                    }
                }
                AggOp::Avg => {
                    if first {
                        val[k] = f;
                        mean[k] = f;
                        comp[k] = 0.0;
                        incr[k] = false;
                        continue;
                    }
                    let n = count[k];
                    if val[k].is_infinite() {
                        if f.is_infinite() && (val[k] > 0.0) == (f > 0.0) {
                            continue;
                        }
                        if !f.is_infinite() && !f.is_nan() {
                            continue;
                        }
                    }
                    if !incr[k] {
                        let (nv, nc) = kahan_inc(f, val[k], comp[k]);
                        if !nv.is_infinite() {
                            val[k] = nv;
                            comp[k] = nc;
                            continue;
                        }
                        incr[k] = true;
                        mean[k] = val[k] / (n - 1.0);
                        comp[k] /= n - 1.0;
                    }
                    let q = (n - 1.0) / n;
                    (mean[k], comp[k]) = kahan_inc(f / n, q * mean[k], q * comp[k]);
                }
                AggOp::Min if first || val[k] > f || val[k].is_nan() => val[k] = f,
                AggOp::Max if first || val[k] < f || val[k].is_nan() => val[k] = f,
                AggOp::Count | AggOp::Group => {}
                AggOp::Stddev | AggOp::Stdvar => {
                    if first {
                        mean[k] = f;
                        val[k] = if f.is_nan() || f.is_infinite() { f64::NAN } else { 0.0 };
                        comp[k] = 0.0;
                    } else {
                        let delta = f - mean[k];
                        mean[k] += delta / count[k];
                        val[k] += delta * (f - mean[k]);
                    }
                }
                AggOp::Quantile => qvals[k].push(f),
                _ => {}
            }
        }
        for k in 0..ng {
            if count[k] == 0.0 {
                continue;
            }
            let v = match a.op {
                AggOp::Sum => val[k] + comp[k],
                AggOp::Avg => {
                    if incr[k] {
                        mean[k] + comp[k]
                    } else {
                        val[k] / count[k] + comp[k] / count[k]
                    }
                }
                AggOp::Min | AggOp::Max => val[k],
                AggOp::Count => count[k],
                AggOp::Group => 1.0,
                AggOp::Stdvar => val[k] / count[k],
                AggOp::Stddev => (val[k] / count[k]).sqrt(),
                AggOp::Quantile => {
                    let q = param_scalar.as_ref().map(|p| p[i]).unwrap_or(f64::NAN);
                    quantile(q, &mut qvals[k])
                }
                _ => f64::NAN,
            };
            out[k].vals[i] = Some(v);
        }
    }
    out.retain(|s| s.vals.iter().any(Option::is_some));
    Ok(Val::Vector(out))
}

/// `sum` series by series: each series' values go into its group's accumulators for a block of steps at
/// a time (contiguous reads, no per-value dispatch on the operator). Per group and step the values are
/// added in input order, as the step-by-step loop adds them, so the Neumaier sums are the same bits.
fn sum_series_major(
    ev: &mut Evaluator,
    input: &[VSeries],
    member: &[usize],
    out: &mut [VSeries],
    g: &Grid,
) -> Result<(), EvalError> {
    let ng = out.len();
    if ng == 0 {
        return Ok(());
    }
    // Steps are summed independently: over many series and steps, runs of steps go to threads at once.
    let threads = ev.opts.threads.clamp(1, g.n.max(1));
    if threads == 1 || input.len().saturating_mul(g.n) < super::eval::PARALLEL_MIN_WINDOWS {
        let sums = sum_steps(input, member, ng, 0..g.n, &mut |w| ev.check_deadline_work(w))?;
        put(out, 0, sums);
        return Ok(());
    }
    let per = g.n.div_ceil(threads);
    let deadline = ev.opts.deadline;
    let runs: Vec<std::ops::Range<usize>> =
        (0..threads).map(|t| (t * per).min(g.n)..((t + 1) * per).min(g.n)).filter(|r| !r.is_empty()).collect();
    let results = super::eval::in_threads(runs, |steps| {
        let mut check = super::eval::deadline_check(deadline);
        (steps.start, sum_steps(input, member, ng, steps, &mut check))
    });
    for (first, sums) in results {
        put(out, first, sums?);
    }
    ev.check_deadline_work(0)
}

/// Each group's sums over a run of steps.
type GroupSums = Vec<Vec<Option<f64>>>;

/// Writes each group's sums of a run of steps starting at step `first`.
fn put(out: &mut [VSeries], first: usize, sums: GroupSums) {
    for (o, v) in out.iter_mut().zip(sums) {
        o.vals[first..first + v.len()].copy_from_slice(&v);
    }
}

/// The sums of each of `ng` groups over the steps `steps`, series by series, a block of steps at a time;
/// `check` is told the work done (steps) as it goes, for the deadline.
fn sum_steps(
    input: &[VSeries],
    member: &[usize],
    ng: usize,
    steps: std::ops::Range<usize>,
    check: &mut dyn FnMut(usize) -> Result<(), EvalError>,
) -> Result<GroupSums, EvalError> {
    let mut out = vec![vec![None; steps.len()]; ng];
    // Steps per block: the accumulators of every group for one block stay around 64 Ki values.
    let block = ((1usize << 16) / ng).clamp(1, steps.len().max(1));
    let mut val = vec![0f64; ng * block];
    let mut comp = vec![0f64; ng * block];
    let mut seen = vec![false; ng * block];
    let mut from = steps.start;
    while from < steps.end {
        let to = (from + block).min(steps.end);
        let width = to - from;
        seen.iter_mut().for_each(|x| *x = false);
        for (s, &k) in input.iter().zip(member) {
            check(width)?;
            let base = k * block;
            let (val, comp, seen) =
                (&mut val[base..base + width], &mut comp[base..base + width], &mut seen[base..base + width]);
            for (j, x) in s.vals[from..to].iter().enumerate() {
                let Some(f) = *x else { continue };
                if seen[j] {
                    (val[j], comp[j]) = kahan_inc(f, val[j], comp[j]);
                } else {
                    seen[j] = true;
                    val[j] = f;
                    comp[j] = 0.0;
                }
            }
        }
        for (k, o) in out.iter_mut().enumerate() {
            let base = k * block;
            for j in 0..width {
                if seen[base + j] {
                    o[from - steps.start + j] = Some(val[base + j] + comp[base + j]);
                }
            }
        }
        from = to;
    }
    Ok(out)
}

fn count_values(
    input: Vec<VSeries>,
    lname: &str,
    grouping: &Option<(bool, Vec<String>)>,
    g: &Grid,
) -> Result<Val, EvalError> {
    let mut out: Vec<VSeries> = Vec::new();
    let mut idx: HashMap<Labels, usize> = HashMap::new();
    for s in &input {
        for i in 0..g.n {
            let Some(f) = s.vals[i] else { continue };
            let mut l = s.labels.clone();
            l.retain(|(n, _)| n != lname);
            let pos = l.partition_point(|(n, _)| n.as_str() < lname);
            l.insert(pos, (lname.to_string(), format_float(f)));
            let gl = group_labels(&l, grouping);
            let k = match idx.get(&gl) {
                Some(&k) => k,
                None => {
                    idx.insert(gl.clone(), out.len());
                    out.push(VSeries { labels: gl, drop_name: false, vals: vec![None; g.n] });
                    out.len() - 1
                }
            };
            let slot = &mut out[k].vals[i];
            *slot = Some(slot.unwrap_or(0.0) + 1.0);
        }
    }
    Ok(Val::Vector(out))
}

fn labels_hash(l: &Labels) -> u64 {
    let mut buf = Vec::new();
    for (n, v) in l {
        buf.extend_from_slice(n.as_bytes());
        buf.push(0xff);
        buf.extend_from_slice(v.as_bytes());
        buf.push(0xff);
    }
    xxhash_rust::xxh64::xxh64(&buf, 0)
}

fn select_k(
    ev: &mut Evaluator,
    op: AggOp,
    input: Vec<VSeries>,
    member: &[usize],
    ng: usize,
    params: &[f64],
    g: &Grid,
) -> Result<Val, EvalError> {
    let mut keep = vec![vec![false; g.n]; input.len()];
    let mut per_group: Vec<Vec<usize>> = vec![Vec::new(); ng];
    let mut order: Vec<usize> = Vec::new();
    let mut ratio_warned = false;
    let hashes: Vec<f64> = if op == AggOp::LimitRatio {
        input.iter().map(|s| labels_hash(&s.labels) as f64 / u64::MAX as f64).collect()
    } else {
        Vec::new()
    };
    for i in 0..g.n {
        ev.check_deadline()?;
        let p = params[i];
        if op == AggOp::LimitRatio {
            if p.is_nan() {
                return Err(EvalError::Execution("Ratio value is NaN".into()));
            }
            let mut r = p;
            if !(-1.0..=1.0).contains(&r) {
                r = r.clamp(-1.0, 1.0);
                if !ratio_warned {
                    ratio_warned = true;
                    ev.warn(format!(
                        "ratio value should be between -1 and 1, got {}, capping to {}",
                        fmt_g(p),
                        fmt_g(r)
                    ));
                }
            }
            for (j, s) in input.iter().enumerate() {
                if s.vals[i].is_none() {
                    continue;
                }
                let h = hashes[j];
                if (r >= 0.0 && h < r) || (r < 0.0 && h >= 1.0 + r) {
                    keep[j][i] = true;
                    if g.n == 1 {
                        order.push(j);
                    }
                }
            }
            continue;
        }
        if p.is_nan() {
            return Err(EvalError::Execution("Parameter value is NaN".into()));
        }
        if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&p) {
            return Err(EvalError::Execution(format!("Scalar value {} overflows int64", fmt_g(p))));
        }
        let k = p as i64;
        if k < 1 {
            continue;
        }
        let k = k as usize;
        per_group.iter_mut().for_each(Vec::clear);
        let mut group_order = Vec::new();
        for (j, s) in input.iter().enumerate() {
            if s.vals[i].is_some() {
                if per_group[member[j]].is_empty() {
                    group_order.push(member[j]);
                }
                per_group[member[j]].push(j);
            }
        }
        for gk in group_order {
            let list = &mut per_group[gk];
            match op {
                AggOp::Topk => list.sort_by(|&x, &y| {
                    let (a, b) = (input[x].vals[i].unwrap_or(0.0), input[y].vals[i].unwrap_or(0.0));
                    cmp_nan_worst(a, b, true)
                }),
                AggOp::Bottomk => list.sort_by(|&x, &y| {
                    let (a, b) = (input[x].vals[i].unwrap_or(0.0), input[y].vals[i].unwrap_or(0.0));
                    cmp_nan_worst(a, b, false)
                }),
                _ => {}
            }
            for &j in list.iter().take(k) {
                keep[j][i] = true;
                if g.n == 1 {
                    order.push(j);
                }
            }
        }
    }
    let mut input: Vec<Option<VSeries>> = input.into_iter().map(Some).collect();
    let mut out = Vec::new();
    if g.n == 1 {
        for j in order {
            if let Some(s) = input[j].take() {
                out.push(s);
            }
        }
    } else {
        for (j, s) in input.iter_mut().enumerate() {
            let mut s = s.take().unwrap_or_else(|| VSeries { labels: Vec::new(), drop_name: false, vals: Vec::new() });
            for (i, x) in s.vals.iter_mut().enumerate() {
                if !keep[j][i] {
                    *x = None;
                }
            }
            if s.vals.iter().any(Option::is_some) {
                out.push(s);
            }
        }
    }
    Ok(Val::Vector(out))
}

/// Orders `a` before `b` when `a` is "better"; NaN is always worst. `desc` = larger is better.
fn cmp_nan_worst(a: f64, b: f64, desc: bool) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        _ if desc => b.partial_cmp(&a).unwrap_or(Equal),
        _ => a.partial_cmp(&b).unwrap_or(Equal),
    }
}
