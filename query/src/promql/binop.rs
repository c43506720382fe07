//! Binary operators: scalar/vector arithmetic, comparisons, vector matching and set operators.

use std::collections::{HashMap, HashSet};

use xxhash_rust::xxh3::Xxh3;

use super::ast::{BinOp, Binary, Card};
use super::eval::{Evaluator, Grid, VSeries, Val, lstr, merge_same_labels};
use super::{EvalError, Labels, METRIC_NAME};

/// Arithmetic on two floats.
#[inline]
pub(super) fn arith(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::Mod => a % b,
        BinOp::Pow => a.powf(b),
        BinOp::Atan2 => a.atan2(b),
        _ => f64::NAN,
    }
}

/// Comparison of two floats.
#[inline]
pub(super) fn compare(op: BinOp, a: f64, b: f64) -> bool {
    match op {
        BinOp::Eq => a == b,
        BinOp::Ne => a != b,
        BinOp::Gt => a > b,
        BinOp::Lt => a < b,
        BinOp::Ge => a >= b,
        BinOp::Le => a <= b,
        _ => false,
    }
}

/// Hash of the labels that take part in matching.
pub(super) fn signature(labels: &Labels, matching: &Option<(bool, Vec<String>)>) -> u64 {
    let mut h = Xxh3::new();
    let mut add = |n: &str, v: &str| {
        h.update(n.as_bytes());
        h.update(&[0xff]);
        h.update(v.as_bytes());
        h.update(&[0xff]);
    };
    match matching {
        Some((true, on)) => {
            for (n, v) in labels {
                if on.iter().any(|o| o == n) {
                    add(n, v);
                }
            }
        }
        Some((false, ign)) => {
            for (n, v) in labels {
                if n != METRIC_NAME && !ign.iter().any(|o| o == n) {
                    add(n, v);
                }
            }
        }
        None => {
            for (n, v) in labels {
                if n != METRIC_NAME {
                    add(n, v);
                }
            }
        }
    }
    h.digest()
}

fn matched_labels(labels: &Labels, matching: &Option<(bool, Vec<String>)>) -> Labels {
    match matching {
        Some((true, on)) => labels.iter().filter(|(n, _)| on.iter().any(|o| o == n)).cloned().collect(),
        Some((false, ign)) => {
            labels.iter().filter(|(n, _)| n != METRIC_NAME && !ign.iter().any(|o| o == n)).cloned().collect()
        }
        None => labels.iter().filter(|(n, _)| n != METRIC_NAME).cloned().collect(),
    }
}

/// Evaluates a binary expression.
pub(super) fn eval(ev: &mut Evaluator, b: &Binary, g: &Grid) -> Result<Val, EvalError> {
    let lv = ev.eval(&b.lhs, g)?;
    let rv = ev.eval(&b.rhs, g)?;
    match (lv, rv) {
        (Val::Scalar(l), Val::Scalar(r)) => {
            Ok(Val::Scalar(
                l.iter()
                    .zip(&r)
                    .map(|(&a, &c)| {
                        if b.op.is_comparison() {
                            if compare(b.op, a, c) { 1.0 } else { 0.0 }
                        } else {
                            arith(b.op, a, c)
                        }
                    })
                    .collect(),
            ))
        }
        (Val::Vector(l), Val::Scalar(r)) => Ok(Val::Vector(vec_scalar(l, &r, b, false))),
        (Val::Scalar(l), Val::Vector(r)) => Ok(Val::Vector(vec_scalar(r, &l, b, true))),
        (Val::Vector(l), Val::Vector(r)) => {
            if b.op.is_set() {
                Ok(Val::Vector(set_op(l, r, b, g)?))
            } else {
                Ok(Val::Vector(vec_vec(ev, l, r, b, g)?))
            }
        }
        _ => Err(EvalError::BadData("binary operation on unsupported operand types".into())),
    }
}

fn vec_scalar(mut vs: Vec<VSeries>, sc: &[f64], b: &Binary, scalar_left: bool) -> Vec<VSeries> {
    let cmp = b.op.is_comparison();
    for s in &mut vs {
        for (x, &c) in s.vals.iter_mut().zip(sc) {
            let Some(v) = *x else { continue };
            let (l, r) = if scalar_left { (c, v) } else { (v, c) };
            *x = if cmp {
                let keep = compare(b.op, l, r);
                if b.return_bool {
                    Some(if keep { 1.0 } else { 0.0 })
                } else if keep {
                    Some(v)
                } else {
                    None
                }
            } else {
                Some(arith(b.op, l, r))
            };
        }
        if !cmp || b.return_bool {
            s.drop_name = true;
        }
    }
    vs.retain(|s| s.vals.iter().any(Option::is_some));
    vs
}

fn set_op(l: Vec<VSeries>, r: Vec<VSeries>, b: &Binary, g: &Grid) -> Result<Vec<VSeries>, EvalError> {
    let lsig: Vec<u64> = l.iter().map(|s| signature(&s.labels, &b.matching)).collect();
    let rsig: Vec<u64> = r.iter().map(|s| signature(&s.labels, &b.matching)).collect();
    let mut set = HashSet::new();
    match b.op {
        BinOp::And | BinOp::Unless => {
            let want = b.op == BinOp::And;
            let mut l = l;
            for i in 0..g.n {
                set.clear();
                for (s, sig) in r.iter().zip(&rsig) {
                    if s.vals[i].is_some() {
                        set.insert(*sig);
                    }
                }
                for (s, sig) in l.iter_mut().zip(&lsig) {
                    if s.vals[i].is_some() && set.contains(sig) != want {
                        s.vals[i] = None;
                    }
                }
            }
            l.retain(|s| s.vals.iter().any(Option::is_some));
            Ok(l)
        }
        _ => {
            let mut r = r;
            for i in 0..g.n {
                set.clear();
                for (s, sig) in l.iter().zip(&lsig) {
                    if s.vals[i].is_some() {
                        set.insert(*sig);
                    }
                }
                for (s, sig) in r.iter_mut().zip(&rsig) {
                    if s.vals[i].is_some() && set.contains(sig) {
                        s.vals[i] = None;
                    }
                }
            }
            r.retain(|s| s.vals.iter().any(Option::is_some));
            let mut out = l;
            out.extend(r);
            merge_same_labels(out)
        }
    }
}

fn result_labels(many: &Labels, one: &Labels, b: &Binary) -> Labels {
    let mut l = many.clone();
    if !b.op.is_comparison() {
        super::eval::drop_metric_name(&mut l);
    }
    match &b.card {
        Card::OneToOne => match &b.matching {
            Some((true, on)) => l.retain(|(n, _)| on.iter().any(|o| o == n)),
            Some((false, ign)) => l.retain(|(n, _)| !ign.iter().any(|o| o == n)),
            None => {}
        },
        Card::ManyToOne(inc) | Card::OneToMany(inc) => {
            for name in inc {
                let v = one.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default();
                l.retain(|(n, _)| n != name);
                if !v.is_empty() {
                    let pos = l.partition_point(|(n, _)| n < name);
                    l.insert(pos, (name.clone(), v));
                }
            }
        }
        Card::ManyToMany => {}
    }
    l
}

/// Applies a non-set operator to one pair of values; `None` when a filtering comparison drops the sample.
fn apply(b: &Binary, fl: f64, fr: f64) -> Option<f64> {
    if b.op.is_comparison() {
        let keep = compare(b.op, fl, fr);
        if b.return_bool {
            Some(if keep { 1.0 } else { 0.0 })
        } else if keep {
            Some(fl)
        } else {
            None
        }
    } else {
        Some(arith(b.op, fl, fr))
    }
}

fn vec_vec(
    ev: &mut Evaluator,
    l: Vec<VSeries>,
    r: Vec<VSeries>,
    b: &Binary,
    g: &Grid,
) -> Result<Vec<VSeries>, EvalError> {
    let swapped = matches!(b.card, Card::OneToMany(_));
    let (many, one) = if swapped { (r, l) } else { (l, r) };
    let msig: Vec<u64> = many.iter().map(|s| signature(&s.labels, &b.matching)).collect();
    let osig: Vec<u64> = one.iter().map(|s| signature(&s.labels, &b.matching)).collect();
    let mut out: Vec<VSeries> = Vec::new();
    let mut out_idx: HashMap<(usize, usize), usize> = HashMap::new();
    let mut label_hash: Vec<u64> = Vec::new();
    let mut one_map: HashMap<u64, usize> = HashMap::new();
    let mut matched: HashMap<u64, HashSet<u64>> = HashMap::new();
    let mut hit: HashSet<u64> = HashSet::new();
    for i in 0..g.n {
        ev.check_deadline()?;
        one_map.clear();
        matched.clear();
        for (j, (s, sig)) in one.iter().zip(&osig).enumerate() {
            if s.vals[i].is_none() {
                continue;
            }
            if let Some(&prev) = one_map.get(sig) {
                let side = if swapped { "left" } else { "right" };
                let mut pair = [lstr(&one[prev].labels), lstr(&s.labels)];
                pair.sort();
                return Err(EvalError::Execution(format!(
                    "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                    lstr(&matched_labels(&s.labels, &b.matching)),
                    pair[0],
                    pair[1]
                )));
            }
            one_map.insert(*sig, j);
        }
        if one_map.is_empty() && b.fill_rhs.is_none() {
            continue;
        }
        hit.clear();
        for (mi, (s, sig)) in many.iter().zip(&msig).enumerate() {
            let Some(mv) = s.vals[i] else { continue };
            let (oi, ov) = match one_map.get(sig) {
                Some(&oi) => (oi, one[oi].vals[i].unwrap_or(f64::NAN)),
                None => match b.fill_rhs {
                    Some(f) => (usize::MAX, f),
                    None => continue,
                },
            };
            if oi != usize::MAX {
                hit.insert(*sig);
                if b.card == Card::OneToOne && matched.insert(*sig, HashSet::new()).is_some() {
                    return Err(EvalError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                            .into(),
                    ));
                }
            }
            let (fl, fr) = if swapped { (ov, mv) } else { (mv, ov) };
            let Some(value) = apply(b, fl, fr) else { continue };
            let k = match out_idx.get(&(mi, oi)) {
                Some(&k) => k,
                None => {
                    let labels = if oi == usize::MAX {
                        result_labels(&s.labels, &Vec::new(), b)
                    } else {
                        result_labels(&s.labels, &one[oi].labels, b)
                    };
                    let k = out.len();
                    label_hash.push(xxhash_rust::xxh3::xxh3_64(lstr(&labels).as_bytes()));
                    out.push(VSeries { labels, drop_name: b.return_bool || s.drop_name, vals: vec![None; g.n] });
                    out_idx.insert((mi, oi), k);
                    k
                }
            };
            if b.card != Card::OneToOne && oi != usize::MAX {
                let set = matched.entry(*sig).or_default();
                if !set.insert(label_hash[k]) {
                    return Err(EvalError::Execution(
                        "multiple matches for labels: grouping labels must ensure unique matches".into(),
                    ));
                }
            }
            out[k].vals[i] = Some(value);
        }
        if let Some(fill) = b.fill_lhs {
            // One-side series without a match on the many side.
            for (oi, (s, sig)) in one.iter().zip(&osig).enumerate() {
                let Some(ov) = s.vals[i] else { continue };
                if hit.contains(sig) {
                    continue;
                }
                let (fl, fr) = if swapped { (ov, fill) } else { (fill, ov) };
                let Some(value) = apply(b, fl, fr) else { continue };
                let k = match out_idx.get(&(usize::MAX, oi)) {
                    Some(&k) => k,
                    None => {
                        let k = out.len();
                        label_hash.push(0);
                        let labels = matched_labels(&s.labels, &b.matching);
                        out.push(VSeries { labels, drop_name: b.return_bool, vals: vec![None; g.n] });
                        out_idx.insert((usize::MAX, oi), k);
                        k
                    }
                };
                out[k].vals[i] = Some(value);
            }
        }
    }
    out.retain(|s| s.vals.iter().any(Option::is_some));
    merge_same_labels(out)
}
