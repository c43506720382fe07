//! Focused unit tests of the engine.

use super::series::MemSource;
use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    let mut l: Labels = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    l.sort();
    l
}

/// Test series: label pairs and samples.
type TestSeries<'a> = (&'a [(&'a str, &'a str)], &'a [(i64, f64)]);

fn src_with(series: &[TestSeries]) -> MemSource {
    let mut s = MemSource::default();
    for (l, pts) in series {
        for &(t, v) in pts.iter() {
            s.add(labels(l), t, v);
        }
    }
    s
}

fn opts() -> EngineOptions {
    EngineOptions { max_samples: 10_000, ..EngineOptions::default() }
}

fn instant(src: &MemSource, q: &str, t: i64) -> Result<QueryResult, EvalError> {
    eval_instant(&opts(), src, &parse(q)?, t)
}

fn one_value(r: &QueryResult) -> f64 {
    match &r.value {
        Value::Vector(v) if v.len() == 1 => v[0].2,
        Value::Scalar { v, .. } => *v,
        other => panic!("unexpected value {other:?}"),
    }
}

#[test]
fn rate_extrapolation() {
    // Counter 0, 10, 20, ... every 15 s; rate over 1m at 60 s sees samples at 15, 30, 45, 60 (left-open window).
    let pts: Vec<(i64, f64)> = (0..=8).map(|i| (i * 15_000, i as f64 * 10.0)).collect();
    let src = src_with(&[(&[("__name__", "c_total")], &pts)]);
    let r = instant(&src, "rate(c_total[1m])", 60_000).unwrap_or_else(|e| panic!("{e}"));
    // Samples 15..60 s: increase 30 over 45 s, extrapolated to the start by 7.5 s (avg/2 threshold not hit: 15 s
    // gap < 16.5 s, so the full 15 s), end gap 0: 30 * 60 / 45 = 40 over 60 s.
    assert!((one_value(&r) - 40.0 / 60.0).abs() < 1e-9, "{}", one_value(&r));
    // increase with a counter reset: 5, 10, 2 => 10 - 5 + 2 = 7 raw.
    let src = src_with(&[(&[("__name__", "r_total")], &[(10_000, 5.0), (20_000, 10.0), (30_000, 2.0)])]);
    let r = instant(&src, "increase(r_total[30s])", 30_000).unwrap_or_else(|e| panic!("{e}"));
    // sampled 20 s, durationToStart 0 (window start is exclusive 0 s, first at 10 s: 10 s < 11 s threshold),
    // zero point at 20*5/7 = 14.3 s > 10 s; end 0 => 7 * 30 / 20 = 10.5.
    assert!((one_value(&r) - 10.5).abs() < 1e-9, "{}", one_value(&r));
    // A single sample gives no result.
    let r = instant(&src, "rate(r_total[5s])", 30_000).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.value, Value::Vector(Vec::new()));
}

#[test]
fn staleness_and_lookback() {
    let stale = f64::from_bits(STALE_NAN_BITS);
    let src = src_with(&[(&[("__name__", "m")], &[(0, 1.0), (10_000, 2.0), (20_000, stale)])]);
    assert_eq!(one_value(&instant(&src, "m", 15_000).unwrap_or_else(|e| panic!("{e}"))), 2.0);
    // Stale marker hides the series.
    let r = instant(&src, "m", 25_000).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.value, Value::Vector(Vec::new()));
    // A sample exactly lookback old is out.
    let src = src_with(&[(&[("__name__", "n")], &[(0, 1.0)])]);
    assert!(matches!(instant(&src, "n", 300_000).map(|r| r.value), Ok(Value::Vector(v)) if v.is_empty()));
    assert_eq!(one_value(&instant(&src, "n", 299_999).unwrap_or_else(|e| panic!("{e}"))), 1.0);
    // Stale markers are dropped from range vectors.
    let src = src_with(&[(&[("__name__", "m")], &[(0, 1.0), (10_000, 2.0), (20_000, stale)])]);
    let r = instant(&src, "count_over_time(m[10s])", 20_000).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.value, Value::Vector(Vec::new()));
}

#[test]
fn subquery_alignment() {
    let pts: Vec<(i64, f64)> = (0..100).map(|i| (i * 10_000, i as f64)).collect();
    let src = src_with(&[(&[("__name__", "m")], &pts)]);
    // Steps are absolute multiples of 20 s: (35 s - 60 s, 35 s] -> 0? no: (-25 s, 35 s] -> 0, 20 s.
    let r = instant(&src, "count_over_time(m[60s:20s])", 35_000).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(one_value(&r), 2.0);
    // Negative times use floor division: (-45 s, 15 s] -> -40 s, -20 s, 0 s; only 0 s has data.
    let r = instant(&src, "count_over_time(m[60s:20s])", 15_000).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(one_value(&r), 1.0);
    let r = instant(&src, "m[30s:10s]", 100_000).unwrap_or_else(|e| panic!("{e}"));
    match r.value {
        Value::Matrix(m) => assert_eq!(m[0].1.iter().map(|p| p.0).collect::<Vec<_>>(), vec![80_000, 90_000, 100_000]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn delayed_name_dropping() {
    let src = src_with(&[
        (&[("__name__", "a_total"), ("env", "1")], &[(0, 1.0)]),
        (&[("__name__", "b_total"), ("env", "1")], &[(0, 2.0)]),
    ]);
    // The name survives until the end: grouping by it keeps two groups that collide afterwards.
    let err = instant(&src, "sum by (__name__) (abs({env=\"1\"}))", 0);
    assert!(matches!(err, Err(EvalError::Execution(m)) if m == "vector cannot contain metrics with the same labelset"));
    // label_replace onto __name__ rescues the name.
    let r = instant(&src, "label_replace(abs(a_total), \"__name__\", \"x\", \"\", \"\")", 0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.value, Value::Vector(vec![(labels(&[("__name__", "x"), ("env", "1")]), 0, 1.0)]));
    // Filtering comparisons keep the name; last_over_time keeps it.
    let r = instant(&src, "a_total > 0", 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.value, Value::Vector(vec![(labels(&[("__name__", "a_total"), ("env", "1")]), 0, 1.0)]));
    let r = instant(&src, "-a_total", 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.value, Value::Vector(vec![(labels(&[("env", "1")]), 0, -1.0)]));
}

#[test]
fn matching_errors() {
    let src = src_with(&[
        (&[("__name__", "l"), ("a", "1"), ("b", "x")], &[(0, 1.0)]),
        (&[("__name__", "l"), ("a", "1"), ("b", "y")], &[(0, 1.0)]),
        (&[("__name__", "r"), ("a", "1")], &[(0, 1.0)]),
    ]);
    let e = instant(&src, "l + on(a) r", 0);
    assert!(
        matches!(&e, Err(EvalError::Execution(m)) if m.starts_with("multiple matches for labels: many-to-one")),
        "{e:?}"
    );
    let e = instant(&src, "r + on(a) l", 0);
    assert!(matches!(&e, Err(EvalError::Execution(m)) if m.starts_with("found duplicate series")), "{e:?}");
    let r = instant(&src, "l + on(a) group_left r", 0).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(r.value, Value::Vector(v) if v.len() == 2));
}

#[test]
fn api_helpers() {
    assert_eq!(format_float(1.0), "1");
    assert_eq!(format_float(0.1), "0.1");
    assert_eq!(format_float(f64::INFINITY), "+Inf");
    assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
    assert_eq!(format_float(f64::NAN), "NaN");
    assert_eq!(format_float(1e21), "1000000000000000000000");
    let m = parse_selector("up{job=~\"a|b\"}").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.len(), 2);
    assert!(m.iter().any(|m| m.name == "job" && m.matches("a") && !m.matches("ab")));
    assert!(parse_selector("rate(up[5m])").is_err());
    assert!(matches!(parse("sum("), Err(EvalError::BadData(_))));
    assert!(format_query("sum(up)").is_ok());
    let src = MemSource::default();
    let e = eval_range(&opts(), &src, &parse("up[5m]").unwrap_or_else(|e| panic!("{e}")), 0, 60_000, 15_000);
    assert!(matches!(e, Err(EvalError::BadData(_))));
    let r = eval_range(&opts(), &src, &parse("1+1").unwrap_or_else(|e| panic!("{e}")), 0, 30_000, 15_000)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.value, Value::Matrix(vec![(Vec::new(), vec![(0, 2.0), (15_000, 2.0), (30_000, 2.0)])]));
}

#[test]
fn deadline_is_enforced() {
    let pts: Vec<(i64, f64)> = (0..1000).map(|i| (i * 1000, i as f64)).collect();
    let mut src = MemSource::default();
    for s in 0..200 {
        for &(t, v) in &pts {
            src.add(labels(&[("__name__", "m"), ("i", &s.to_string())]), t, v);
        }
    }
    let o = EngineOptions { deadline: Some(std::time::Instant::now()), ..EngineOptions::default() };
    let e = eval_range(&o, &src, &parse("rate(m[1m])").unwrap_or_else(|e| panic!("{e}")), 0, 1_000_000, 1000);
    assert!(matches!(e, Err(EvalError::Timeout)), "{e:?}");
}
/// Issue 23: `rate`, `increase` and `delta` over many series run on several threads give the same series,
/// in the same order, with the same bits, the same info annotations, and honour the deadline.
#[test]
fn range_functions_on_several_threads_answer_as_on_one() {
    let mut src = MemSource::default();
    let mut x = 7u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for s in 0..300 {
        let name = if s % 3 == 0 { "g" } else { "m_total" };
        let mut v = 0.0;
        for i in 0..400i64 {
            // Counters with resets, gaps and uneven spacing.
            v = if next() % 50 == 0 { (next() % 10) as f64 } else { v + (next() % 1000) as f64 / 7.0 };
            if next() % 9 != 0 {
                src.add(labels(&[("__name__", name), ("i", &s.to_string())]), i * 15_000 + (next() % 3000) as i64, v);
            }
        }
    }
    for q in [
        "rate(m_total[5m])",
        "increase({i=~\"1.*\"}[2m])",
        "delta(g[3m])",
        "sum(rate({__name__=~\".+\"}[5m]))",
        "sum by (i) (increase(m_total[5m]))",
    ] {
        let expr = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        let one = EngineOptions { max_samples: 10_000_000, ..EngineOptions::default() };
        let many = EngineOptions { threads: 3, ..one.clone() };
        let a = eval_range(&one, &src, &expr, 0, 6_000_000, 5_000).unwrap_or_else(|e| panic!("{q}: {e}"));
        let b = eval_range(&many, &src, &expr, 0, 6_000_000, 5_000).unwrap_or_else(|e| panic!("{q}: {e}"));
        let bits = |r: &QueryResult| match &r.value {
            Value::Matrix(m) => m
                .iter()
                .map(|(l, pts)| (l.clone(), pts.iter().map(|(t, v)| (*t, v.to_bits())).collect::<Vec<_>>()))
                .collect::<Vec<_>>(),
            other => panic!("{q}: {other:?}"),
        };
        assert!(!bits(&a).is_empty(), "{q}");
        assert_eq!(bits(&a), bits(&b), "{q}");
        assert_eq!((&a.warnings, &a.infos), (&b.warnings, &b.infos), "{q}");
    }
    let past = EngineOptions { threads: 3, deadline: Some(std::time::Instant::now()), ..EngineOptions::default() };
    let e = eval_range(&past, &src, &parse("rate(m_total[5m])").unwrap(), 0, 6_000_000, 1000);
    assert!(matches!(e, Err(EvalError::Timeout)), "{e:?}");
}

#[test]
fn invalid_utf8_escapes() {
    let src = src_with(&[(&[("__name__", "v")], &[(0, 1.0)])]);
    let e = instant(&src, r#"count_values("a\xc5z", v)"#, 0);
    assert!(matches!(&e, Err(EvalError::Execution(m)) if m == r#"invalid label name "a\xc5z""#), "{e:?}");
    // A valid UTF-8 byte sequence decodes to its character.
    let r = instant(&src, r#"label_replace(v, "x", "\xc3\xa9", "", "")"#, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.value, Value::Vector(vec![(labels(&[("__name__", "v"), ("x", "é")]), 0, 1.0)]));
}

#[test]
fn duration_expression_prepass() {
    let r = super::durexpr::rewrite("rate(x[26m+4m]) + y offset (1h/2)").unwrap_or_else(|e| panic!("{e}"));
    let r = r.unwrap_or_else(|| panic!("expected a rewrite"));
    assert_eq!(r.query, "rate(x[1800s]) + y offset 1800s");
    assert!(r.dynamic.is_empty());
    // Plain literals are left alone.
    assert!(super::durexpr::rewrite("rate(x[5m:1m] offset -1h)").unwrap_or_else(|e| panic!("{e}")).is_none());
    // step() is resolved per query.
    let pts: Vec<(i64, f64)> = (0..=100).map(|i| (i * 1000, i as f64)).collect();
    let src = src_with(&[(&[("__name__", "m")], &pts)]);
    let e = parse("count_over_time(m[step()])").unwrap_or_else(|e| panic!("{e}"));
    let r = eval_range(&opts(), &src, &e, 50_000, 60_000, 10_000).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.value, Value::Matrix(vec![(Vec::new(), vec![(50_000, 10.0), (60_000, 10.0)])]));
}

#[test]
fn anchored_and_smoothed() {
    let src = src_with(&[(&[("__name__", "m")], &[(0, 1.0), (60_000, 2.0), (180_000, 4.0), (240_000, 5.0)])]);
    // Window (60 s, 120 s] is empty: anchored gives nothing, smoothed interpolates 2 -> 3.
    let r = instant(&src, "increase(m[1m] anchored)", 120_000).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.value, Value::Vector(Vec::new()));
    let r = instant(&src, "increase(m[1m] smoothed)", 120_000).unwrap_or_else(|e| panic!("{e}"));
    assert!((one_value(&r) - 1.0).abs() < 1e-9);
    let e = instant(&src, "deriv(m[1m] smoothed)", 120_000);
    assert!(matches!(e, Err(EvalError::BadData(m)) if m.contains("smoothed modifier can only be used with")));
}

#[test]
fn fill_modifiers() {
    let src =
        src_with(&[(&[("__name__", "l"), ("k", "a")], &[(0, 1.0)]), (&[("__name__", "r"), ("k", "b")], &[(0, 10.0)])]);
    let r = instant(&src, "l + fill(0) r", 0).unwrap_or_else(|e| panic!("{e}"));
    let Value::Vector(mut v) = r.value else { panic!("vector expected") };
    v.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(v, vec![(labels(&[("k", "a")]), 0, 1.0), (labels(&[("k", "b")]), 0, 10.0)]);
}

#[test]
fn durations_too_long_for_the_parser_crate_are_refused_before_it() {
    for q in [
        "rate(metric[18888888888888888888888888888888888] smoothed)",
        "rate(metric[99999999999999999999y])",
        "metric offset 18888888888888888888888888888888888",
        "metric offset -99999999999999999999w",
        "max_over_time(metric[1h:99999999999999999999999999s])",
    ] {
        let err = crate::promql::parse(q).err().unwrap_or_else(|| panic!("{q} parsed"));
        assert!(err.to_string().contains("out of range"), "{q}: {err}");
    }
    for q in ["rate(metric[5m])", "metric offset 1h", "rate(metric[1h30m])", "max_over_time(metric[1h:1m])"] {
        assert!(crate::promql::parse(q).is_ok(), "{q}");
    }
}

/// A small seeded generator (splitmix64), so the random tests below are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Random series for the fast-path tests: counters with resets, gauges, NaN, ±Inf and stale markers,
/// irregular intervals and gaps, or (half of them) scraped at a steady 15 s with rare gaps and starting
/// near zero, where successive windows share their shape and the extrapolation to zero decides; labels
/// `g` (2 values) and `i`.
fn random_source(rng: &mut Rng) -> MemSource {
    let mut src = MemSource::default();
    for i in 0..1 + rng.below(7) {
        let l = labels(&[("__name__", "m_total"), ("g", ["a", "b"][rng.below(2) as usize]), ("i", &i.to_string())]);
        let steady = rng.chance(50);
        let mut t = if steady { 15_000 * rng.below(4) as i64 } else { rng.below(60_000) as i64 };
        let mut v = rng.below(if steady { 4 } else { 1000 }) as f64 * if rng.chance(50) { 1.0 } else { 0.25 };
        for _ in 0..rng.below(300) {
            t += match steady {
                true if rng.chance(3) => 30_000,
                true => 15_000,
                false => 1 + rng.below(30_000) as i64 + if rng.chance(3) { rng.below(600_000) as i64 } else { 0 },
            };
            v = match rng.below(100) {
                0..=7 => (v * (rng.below(100) as f64 / 100.0)).floor(), // a reset (or a repeat)
                8..=9 => f64::NAN,
                10 => f64::from_bits(STALE_NAN_BITS),
                11 => f64::INFINITY,
                12..=14 => -(rng.below(50) as f64),
                _ if v.is_finite() => v + rng.below(500) as f64 * 0.5,
                _ => rng.below(100) as f64,
            };
            src.add(l.clone(), t, v);
        }
    }
    src
}

/// `rate`, `increase` and `delta` over a range query (one pass per series with the resets found once,
/// see `functions::rate_family`) give the same bits as the per-window reference, `extrapolated_rate`, at
/// every step, on random data; and `sum by` over them (summed series by series) the same bits as
/// Neumaier sums taken step by step.
#[test]
fn rate_fast_path_matches_per_window_reference() {
    let mut rng = Rng(23);
    for case in 0..400 {
        let src = random_source(&mut rng);
        let func = ["rate", "increase", "delta"][rng.below(3) as usize];
        let range = 1_000 + rng.below(900_000) as i64;
        let start = rng.below(3_000_000) as i64;
        let step = if rng.chance(40) { 15_000 * (1 + rng.below(4) as i64) } else { 1 + rng.below(90_000) as i64 };
        let n = 1 + rng.below(250) as i64;
        let end = start + (n - 1) * step;
        let offset = if rng.chance(20) { rng.below(600_000) as i64 } else { 0 };
        let at = rng.chance(10).then(|| rng.below(4_000_000) as i64);
        let mut q = format!("{func}(m_total[{range}ms]");
        if let Some(a) = at {
            q += &format!(" @ {}.{:03}", a / 1000, a % 1000);
        }
        if offset > 0 {
            q += &format!(" offset {offset}ms");
        }
        q += ")";
        let o = EngineOptions { max_samples: 10_000_000, ..EngineOptions::default() };
        let expr = parse(&q).unwrap_or_else(|e| panic!("{q}: {e}"));
        let got = eval_range(&o, &src, &expr, start, end, step).unwrap_or_else(|e| panic!("{q}: {e}"));
        let Value::Matrix(got) = got.value else { panic!("{q}: not a matrix") };
        // The reference, window by window.
        let mut want: Vec<(Labels, Vec<(i64, f64)>)> = Vec::new();
        for (l, (ts, vs)) in &src.series {
            let (ts, vs): (Vec<i64>, Vec<f64>) =
                ts.iter().zip(vs).filter(|(_, v)| !is_stale_nan(**v)).map(|(t, v)| (*t, *v)).unzip();
            let mut pts = Vec::new();
            for k in 0..n {
                let t = start + k * step;
                let e = at.unwrap_or(t) - offset;
                let s = e - range;
                let (lo, hi) = (ts.partition_point(|&x| x <= s), ts.partition_point(|&x| x <= e));
                let r = super::functions::extrapolated_rate(
                    &ts[lo..hi],
                    &vs[lo..hi],
                    s,
                    e,
                    func != "delta",
                    func == "rate",
                    range,
                );
                if let Some(r) = r {
                    pts.push((t, r));
                }
            }
            if !pts.is_empty() {
                let mut l = l.clone();
                l.retain(|(n, _)| n != METRIC_NAME);
                want.push((l, pts));
            }
        }
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let bits = |m: &[(Labels, Vec<(i64, f64)>)]| -> Vec<(Labels, Vec<(i64, u64)>)> {
            m.iter().map(|(l, p)| (l.clone(), p.iter().map(|(t, v)| (*t, v.to_bits())).collect())).collect()
        };
        assert_eq!(bits(&got), bits(&want), "case {case}: {q} over {start}..{end} step {step}");

        // `sum by (g)` of the same, against step-by-step Neumaier sums in input (label) order.
        let expr = parse(&format!("sum by (g) ({q})")).unwrap_or_else(|e| panic!("{q}: {e}"));
        let got = eval_range(&o, &src, &expr, start, end, step).unwrap_or_else(|e| panic!("{q}: {e}"));
        let Value::Matrix(got) = got.value else { panic!("{q}: not a matrix") };
        let mut sums: Vec<(Labels, Vec<(i64, f64)>)> = Vec::new();
        for gv in ["a", "b"] {
            let members: Vec<_> = want.iter().filter(|(l, _)| label_value(l, "g") == Some(gv)).collect();
            let mut pts = Vec::new();
            for k in 0..n {
                let t = start + k * step;
                let mut acc: Option<(f64, f64)> = None;
                for (_, p) in &members {
                    if let Some(&(_, f)) = p.iter().find(|(pt, _)| *pt == t) {
                        acc = Some(match acc {
                            None => (f, 0.0),
                            Some((sum, c)) => super::aggr::kahan_inc(f, sum, c),
                        });
                    }
                }
                if let Some((sum, c)) = acc {
                    pts.push((t, sum + c));
                }
            }
            if !pts.is_empty() {
                sums.push((labels(&[("g", gv)]), pts));
            }
        }
        assert_eq!(bits(&got), bits(&sums), "case {case}: sum by (g) ({q})");
    }
}
