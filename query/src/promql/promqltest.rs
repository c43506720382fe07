//! Runner for Prometheus' promqltest scripts (`shared/data/promqltest/*.test`) with a ratchet of passing evals.
//!
//! Documented relaxation: annotation positions `(line:col)` are not produced by the engine, so expected `msg:`
//! texts are compared with their trailing position removed, and `regex:` expectations are also tried against the
//! actual text with a ` (1:1)` suffix.

#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;

use super::ast::Expr;
use super::functions::parse_go_float;
use super::series::{MemSource, SeqVal, parse_series_labels, parse_values, read_quoted};
use super::{
    EngineOptions, EvalError, Labels, QueryResult, Value, eval_instant, eval_range, format_float, labels_to_string,
    parse,
};

/// Parses a Prometheus duration (`1h5m`, `0`, `-10s`, `100ms`) into ms.
fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let ms = if s == "0" { 0 } else { super::durexpr::duration_ms(s)? };
    Some(if neg { -ms } else { ms })
}

#[derive(Debug, Default, Clone)]
struct Expect {
    fail: Option<Option<AnnoMatch>>,
    warn: Vec<Option<AnnoMatch>>,
    info: Vec<Option<AnnoMatch>>,
    no_warn: bool,
    no_info: bool,
    ordered: bool,
    range_vector: Option<(i64, i64, i64)>,
    string: Option<String>,
}

#[derive(Debug, Clone)]
enum AnnoMatch {
    Msg(String),
    Re(Regex),
    /// A regex whose literal `(L:C)` position was removed.
    RePos(Regex),
}

fn anno_regex(src: &str) -> Result<AnnoMatch, String> {
    let pos = Regex::new(r" ?\\\(\d+:\d+\\\)\$?$").map_err(|e| e.to_string())?;
    if pos.is_match(src) {
        let stripped = pos.replace(src, "").to_string();
        return Ok(AnnoMatch::RePos(Regex::new(&format!("{stripped}$")).map_err(|e| e.to_string())?));
    }
    Ok(AnnoMatch::Re(Regex::new(src).map_err(|e| e.to_string())?))
}

fn strip_pos(s: &str) -> &str {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r" \(\d+:\d+\)$").unwrap_or_else(|_| unreachable!()));
    match re.find(s) {
        Some(m) => &s[..m.start()],
        None => s,
    }
}

impl AnnoMatch {
    fn matches(&self, actual: &str) -> bool {
        match self {
            AnnoMatch::Msg(m) => strip_pos(m) == strip_pos(actual),
            AnnoMatch::Re(re) => re.is_match(actual) || re.is_match(&format!("{actual} (1:1)")),
            AnnoMatch::RePos(re) => re.is_match(actual),
        }
    }
}

#[derive(Debug, Clone)]
struct EvalCmd {
    line: usize,
    expr: String,
    instant: bool,
    start: i64,
    end: i64,
    step: i64,
    expect: Expect,
    /// Expected series: labels and values per position.
    series: Vec<(Labels, Vec<SeqVal>)>,
    scalar: Option<f64>,
    has_hist_expect: bool,
}

enum Cmd {
    Clear,
    Load { interval: i64, lines: Vec<String>, nhcb: bool },
    Eval(Box<EvalCmd>),
}

fn parse_script(text: &str) -> Result<Vec<Cmd>, String> {
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim();
            if t.starts_with('#') { String::new() } else { t.to_string() }
        })
        .collect();
    let pat_instant = Regex::new(r"^eval(?:_(fail|warn|ordered|info))?\s+instant\s+(?:at\s+(.+?))?\s+(.+)$")
        .map_err(|e| e.to_string())?;
    let pat_range = Regex::new(r"^eval(?:_(fail|warn|info))?\s+range\s+from\s+(.+)\s+to\s+(.+)\s+step\s+(.+?)\s+(.+)$")
        .map_err(|e| e.to_string())?;
    let mut cmds = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = &lines[i];
        if l.is_empty() {
            i += 1;
            continue;
        }
        let first = l.split_whitespace().next().unwrap_or("").to_lowercase();
        if first == "clear" {
            cmds.push(Cmd::Clear);
            i += 1;
        } else if first.starts_with("load") {
            let parts: Vec<&str> = l.split_whitespace().collect();
            let interval = parts.get(1).and_then(|d| parse_duration(d)).ok_or_else(|| format!("bad load line {l}"))?;
            let mut block = Vec::new();
            i += 1;
            while i < lines.len() && !lines[i].is_empty() {
                block.push(lines[i].clone());
                i += 1;
            }
            cmds.push(Cmd::Load { interval, lines: block, nhcb: first == "load_with_nhcb" });
        } else if first.starts_with("eval") {
            let line_no = i + 1;
            let mut expect = Expect::default();
            let (instant, start, end, step, expr) = if let Some(c) = pat_instant.captures(l) {
                let at = c.get(2).map(|m| m.as_str()).unwrap_or("0");
                let t = parse_duration(at).ok_or_else(|| format!("bad time {at}"))?;
                match c.get(1).map(|m| m.as_str()) {
                    Some("fail") => expect.fail = Some(None),
                    Some("warn") => expect.warn.push(None),
                    Some("info") => expect.info.push(None),
                    Some("ordered") => expect.ordered = true,
                    _ => {}
                }
                (true, t, t, 0, c[3].to_string())
            } else if let Some(c) = pat_range.captures(l) {
                let f = parse_duration(&c[2]).ok_or("bad from")?;
                let t = parse_duration(&c[3]).ok_or("bad to")?;
                let s = parse_duration(&c[4]).ok_or("bad step")?;
                match c.get(1).map(|m| m.as_str()) {
                    Some("fail") => expect.fail = Some(None),
                    Some("warn") => expect.warn.push(None),
                    Some("info") => expect.info.push(None),
                    _ => {}
                }
                (false, f, t, s, c[5].to_string())
            } else {
                return Err(format!("line {line_no}: bad eval {l}"));
            };
            let mut cmd = EvalCmd {
                line: line_no,
                expr,
                instant,
                start,
                end,
                step,
                expect,
                series: Vec::new(),
                scalar: None,
                has_hist_expect: false,
            };
            i += 1;
            while i < lines.len() && !lines[i].is_empty() {
                let l = lines[i].as_str();
                i += 1;
                if let Some(rest) = l.strip_prefix("expected_fail_message") {
                    cmd.expect.fail = Some(Some(AnnoMatch::Msg(rest.trim().to_string())));
                    continue;
                }
                if let Some(rest) = l.strip_prefix("expected_fail_regexp") {
                    cmd.expect.fail = Some(Some(AnnoMatch::Re(Regex::new(rest.trim()).map_err(|e| e.to_string())?)));
                    continue;
                }
                if l.split_whitespace().next() == Some("expect") {
                    parse_expect(&mut cmd.expect, l["expect".len()..].trim())?;
                    continue;
                }
                if l.contains("{{") {
                    cmd.has_hist_expect = true;
                }
                if let Some(v) = parse_go_float(l.split_whitespace().next().unwrap_or("")).filter(|_| {
                    !l.contains('{') && l.split_whitespace().count() == 1 && l.starts_with(|c: char| !c.is_alphabetic())
                        || l == "NaN"
                        || l == "Inf"
                        || l == "-Inf"
                }) {
                    cmd.scalar = Some(v);
                    continue;
                }
                let (labels, rest) = parse_series_labels(l)?;
                let vals = parse_values(rest).map_err(|e| format!("line {}: {e}", i))?;
                cmd.series.push((labels, vals));
            }
            cmds.push(Cmd::Eval(Box::new(cmd)));
        } else {
            return Err(format!("line {}: unknown command {l}", i + 1));
        }
    }
    Ok(cmds)
}

fn parse_expect(e: &mut Expect, rest: &str) -> Result<(), String> {
    let (kind, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let tail = tail.trim();
    let matcher = if let Some(m) = tail.strip_prefix("msg:") {
        Some(AnnoMatch::Msg(m.trim().to_string()))
    } else if let Some(r) = tail.strip_prefix("regex:") {
        Some(anno_regex(r.trim())?)
    } else {
        None
    };
    match kind {
        "fail" => e.fail = Some(matcher),
        "warn" => e.warn.push(matcher),
        "info" => e.info.push(matcher),
        "no_warn" => e.no_warn = true,
        "no_info" => e.no_info = true,
        "ordered" => e.ordered = true,
        "range" => {
            let re = Regex::new(r"^vector\s+from\s+(\S+)\s+to\s+(\S+)\s+step\s+(\S+)$").map_err(|e| e.to_string())?;
            let c = re.captures(tail).ok_or_else(|| format!("bad expect range {tail}"))?;
            e.range_vector = Some((
                parse_duration(&c[1]).ok_or("bad from")?,
                parse_duration(&c[2]).ok_or("bad to")?,
                parse_duration(&c[3]).ok_or("bad step")?,
            ));
        }
        "string" => {
            let (s, _) = read_quoted(tail, 0)?;
            e.string = Some(s);
        }
        _ => return Err(format!("unknown expect {rest}")),
    }
    Ok(())
}

fn almost_equal(a: f64, b: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || a.abs() + b.abs() < f64::MIN_POSITIVE {
        return diff < 1e-6 * f64::MIN_POSITIVE;
    }
    diff / (a.abs() + b.abs()).min(f64::MAX) < 1e-6
}

fn check_annos(exp: &Expect, r: &QueryResult) -> Result<(), String> {
    for (list, actual, no, kind) in
        [(&exp.warn, &r.warnings, exp.no_warn, "warning"), (&exp.info, &r.infos, exp.no_info, "info")]
    {
        if no && !actual.is_empty() {
            return Err(format!("unexpected {kind} annotations: {actual:?}"));
        }
        if list.is_empty() {
            continue;
        }
        if actual.is_empty() {
            return Err(format!("expected {kind} annotations but got none"));
        }
        let matchers: Vec<&AnnoMatch> = list.iter().flatten().collect();
        for m in &matchers {
            if !actual.iter().any(|a| m.matches(a)) {
                return Err(format!("expected {kind} annotation {m:?} not found in {actual:?}"));
            }
        }
        if !matchers.is_empty() {
            for a in actual {
                if !matchers.iter().any(|m| m.matches(a)) {
                    return Err(format!("unexpected {kind} annotation {a:?}"));
                }
            }
        }
    }
    Ok(())
}

fn compare(cmd: &EvalCmd, v: &Value, eval_t: i64) -> Result<(), String> {
    if let Some(s) = &cmd.expect.string {
        return match v {
            Value::String { s: got, .. } if got == s => Ok(()),
            other => Err(format!("expected string {s:?}, got {other:?}")),
        };
    }
    match v {
        Value::Scalar { v, .. } => {
            let Some(exp) = cmd.scalar else {
                return Err(format!("unexpected scalar {v}"));
            };
            if !almost_equal(exp, *v) {
                return Err(format!("expected scalar {} got {}", format_float(exp), format_float(*v)));
            }
            Ok(())
        }
        Value::String { s, .. } => Err(format!("unexpected string {s:?}")),
        Value::Vector(vec) => {
            if cmd.scalar.is_some() {
                return Err("expected scalar, got vector".into());
            }
            if vec.len() != cmd.series.len() {
                return Err(format!(
                    "expected {} samples, got {}: {}",
                    cmd.series.len(),
                    vec.len(),
                    vec.iter()
                        .map(|(l, _, v)| format!("{} {}", labels_to_string(l), format_float(*v)))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            for (pos, (l, _, v)) in vec.iter().enumerate() {
                let Some(ei) = cmd.series.iter().position(|(el, _)| el == l) else {
                    return Err(format!("unexpected series {}", labels_to_string(l)));
                };
                if cmd.expect.ordered && ei != pos {
                    return Err(format!("series {} at position {pos}, expected {ei}", labels_to_string(l)));
                }
                let exp = match cmd.series[ei].1.first() {
                    Some(SeqVal::Float(f)) => *f,
                    _ => return Err("expected value missing".into()),
                };
                if !almost_equal(exp, *v) {
                    return Err(format!(
                        "{}: expected {} got {}",
                        labels_to_string(l),
                        format_float(exp),
                        format_float(*v)
                    ));
                }
            }
            Ok(())
        }
        Value::Matrix(m) => {
            for w in m.windows(2) {
                if w[0].0 > w[1].0 {
                    return Err("matrix not sorted by labels".into());
                }
            }
            let (start, step) = match cmd.expect.range_vector {
                Some((s, _, st)) => (s, st),
                None if cmd.instant => (eval_t, 0),
                None => (cmd.start, cmd.step),
            };
            let mut expected: Vec<(Labels, Vec<(i64, f64)>)> = Vec::new();
            for (l, vals) in &cmd.series {
                let pts = vals
                    .iter()
                    .enumerate()
                    .filter_map(|(i, x)| match x {
                        SeqVal::Float(f) => Some((start + i as i64 * step, *f)),
                        _ => None,
                    })
                    .collect();
                expected.push((l.clone(), pts));
            }
            if let Some(sc) = cmd.scalar {
                expected.push((Vec::new(), vec![(start, sc)]));
            }
            if expected.len() != m.len() {
                return Err(format!(
                    "expected {} series, got {}: {}",
                    expected.len(),
                    m.len(),
                    m.iter().map(|(l, _)| labels_to_string(l)).collect::<Vec<_>>().join(", ")
                ));
            }
            for (l, pts) in m {
                let Some((_, exp)) = expected.iter().find(|(el, _)| el == l) else {
                    return Err(format!("unexpected series {}", labels_to_string(l)));
                };
                let ok =
                    exp.len() == pts.len() && exp.iter().zip(pts).all(|(a, b)| a.0 == b.0 && almost_equal(a.1, b.1));
                if !ok {
                    return Err(format!(
                        "{}: expected {:?} got {:?}",
                        labels_to_string(l),
                        exp.iter().map(|(t, v)| format!("{}@{}", format_float(*v), t)).collect::<Vec<_>>(),
                        pts.iter().map(|(t, v)| format!("{}@{}", format_float(*v), t)).collect::<Vec<_>>()
                    ));
                }
            }
            Ok(())
        }
    }
}

const AT_UNSAFE: &[&str] = &[
    "days_in_month",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "hour",
    "minute",
    "month",
    "year",
    "predict_linear",
    "time",
    "timestamp",
    "start",
    "end",
    "step",
    "range",
];

fn check_result(
    cmd: &EvalCmd,
    res: Result<QueryResult, EvalError>,
    eval_t: i64,
) -> Result<Option<QueryResult>, String> {
    match (&cmd.expect.fail, res) {
        (Some(m), Err(e)) => {
            if let Some(m) = m
                && !m.matches(&e.to_string())
            {
                return Err(format!("expected error {m:?}, got {e}"));
            }
            if std::env::var("PROMQLTEST_SHOW_FAILS").is_ok() {
                println!("  expected failure of {}: {e}", cmd.expr);
            }
            Ok(None)
        }
        (Some(_), Ok(_)) => Err("expected error but got none".into()),
        (None, Err(e)) => Err(format!("error: {e}")),
        (None, Ok(r)) => {
            check_annos(&cmd.expect, &r)?;
            compare(cmd, &r.value, eval_t)?;
            Ok(Some(r))
        }
    }
}

fn run_eval(opts: &EngineOptions, src: &MemSource, cmd: &EvalCmd, expr: &Expr) -> Result<(), String> {
    if !cmd.instant {
        let res = eval_range(opts, src, expr, cmd.start, cmd.end, cmd.step);
        check_result(cmd, res, cmd.start)?;
        return Ok(());
    }
    let mut runs = vec![(expr.clone(), cmd.start)];
    let mut unsafe_fn = false;
    expr.walk(&mut |e| {
        if let Expr::Call { func, .. } = e
            && AT_UNSAFE.contains(func)
        {
            unsafe_fn = true;
        }
    });
    if !unsafe_fn {
        let mut e2 = expr.clone();
        e2.set_at_everywhere(cmd.start);
        let ts = cmd.start;
        let times = if ts == 0 { vec![-1000, 0, 1000] } else { vec![-10 * ts, 0, ts / 5, ts, 10 * ts] };
        for t in times {
            runs.push((e2.clone(), t));
        }
    }
    // range()/step() inside duration expressions are not IR calls: look at the text too.
    let lower = cmd.expr.to_ascii_lowercase();
    let mut contains_range_fn = lower.contains("range()");
    expr.walk(&mut |e| {
        if let Expr::Call { func: "range" | "start" | "end" | "step", .. } = e {
            contains_range_fn = true;
        }
    });
    for (e, t) in runs {
        let res = eval_instant(opts, src, &e, t);
        let r = check_result(cmd, res, t).map_err(|m| format!("at {t}: {m}"))?;
        let Some(r) = r else { continue };
        if cmd.expect.ordered
            || cmd.expect.string.is_some()
            || cmd.expect.range_vector.is_some()
            || contains_range_fn
            || matches!(r.value, Value::Matrix(_))
        {
            continue;
        }
        let rr = eval_range(opts, src, &e, t - 60_000, t + 60_000, 60_000)
            .map_err(|err| format!("at {t}: range mode error: {err}"))?;
        let Value::Matrix(m) = rr.value else {
            return Err("range mode did not return a matrix".into());
        };
        for w in m.windows(2) {
            if w[0].0 > w[1].0 {
                return Err("range-mode matrix not sorted".into());
            }
        }
        let mut vec = Vec::new();
        for (l, pts) in m {
            if let Some(p) = pts.iter().find(|p| p.0 == t) {
                vec.push((l, t, p.1));
            }
        }
        let v = if let Value::Scalar { .. } = r.value {
            Value::Scalar { t, v: vec.first().map(|x| x.2).unwrap_or(f64::NAN) }
        } else {
            Value::Vector(vec)
        };
        let mut c2 = cmd.clone();
        c2.expect.ordered = false;
        compare(&c2, &v, t).map_err(|m| format!("at {t} in range mode: {m}"))?;
    }
    Ok(())
}

/// Skip reason for expressions using features we do not support.
fn experimental_reason(expr: &str) -> Option<&'static str> {
    let checks: &[(&str, &str)] = &[
        (r"\b(anchored|smoothed)\b", "experimental:anchored_smoothed"),
        (r"\bfill(_left|_right)?\s*\(", "experimental:fill"),
        (r"\binfo\s*\(", "experimental:info"),
        (r"(?i)\b(step|range)\s*\(\s*\)", "experimental:duration_expr"),
        (r"[<>]/", "native_histogram"),
        (r"\[[^\]]*[-+*/^%()][^\]]*\]", "experimental:duration_expr"),
        (r"offset\s*\(|offset\s+-?\s*\d+[a-z]*\s*[-+*/]", "experimental:duration_expr"),
        (r"\b(min_of|max_of)\b", "experimental:duration_expr"),
        (r"__type__|__unit__", "experimental:type_unit"),
        (r"start_timestamp", "experimental:start_timestamp"),
    ];
    for (re, reason) in checks {
        if Regex::new(re).map(|r| r.is_match(expr)).unwrap_or(false) {
            return Some(reason);
        }
    }
    None
}

#[derive(Default)]
struct FileStats {
    passed: Vec<usize>,
    failed: Vec<(usize, String, String)>,
    skipped: BTreeMap<&'static str, usize>,
}

fn run_file(text: &str, nh_labels_out: &mut BTreeSet<String>) -> Result<FileStats, String> {
    let cmds = parse_script(text)?;
    let opts = EngineOptions {
        lookback_ms: 300_000,
        max_samples: 10_000,
        default_subquery_step_ms: 60_000,
        deadline: None,
        threads: 1,
    };
    let mut src = MemSource::default();
    let mut hist: Vec<Labels> = Vec::new();
    let mut st: Vec<Labels> = Vec::new();
    let mut stats = FileStats::default();
    for cmd in cmds {
        match cmd {
            Cmd::Clear => {
                src = MemSource::default();
                hist.clear();
                st.clear();
            }
            Cmd::Load { interval, lines, nhcb } => {
                for l in lines {
                    let (labels, rest) = parse_series_labels(&l)?;
                    if rest.starts_with("@st") {
                        st.push(labels);
                        continue;
                    }
                    let vals = parse_values(rest)?;
                    let mut is_hist = false;
                    for (i, v) in vals.iter().enumerate() {
                        match v {
                            SeqVal::Float(f) => src.add(labels.clone(), i as i64 * interval, *f),
                            SeqVal::Hist => is_hist = true,
                            SeqVal::Omit => {}
                        }
                    }
                    if is_hist {
                        hist.push(labels.clone());
                    }
                    if nhcb && let Some(name) = super::label_value(&labels, "__name__") {
                        for suffix in ["_bucket", "_count", "_sum"] {
                            if let Some(base) = name.strip_suffix(suffix) {
                                let mut l2: Labels =
                                    labels.iter().filter(|(n, _)| n != "le" && n != "__name__").cloned().collect();
                                l2.push(("__name__".into(), base.into()));
                                l2.sort();
                                hist.push(l2);
                            }
                        }
                    }
                }
            }
            Cmd::Eval(cmd) => {
                if cmd.has_hist_expect {
                    *stats.skipped.entry("native_histogram").or_default() += 1;
                    continue;
                }
                let expr = match parse(&cmd.expr) {
                    Ok(e) => e,
                    Err(e) => {
                        if let Some(reason) = experimental_reason(&cmd.expr) {
                            *stats.skipped.entry(reason).or_default() += 1;
                            nh_labels_out.insert(format!("{}: [{reason}] {} => parse error: {e}", cmd.line, cmd.expr));
                        } else if cmd.expect.fail.is_some() {
                            if std::env::var("PROMQLTEST_SHOW_FAILS").is_ok() {
                                println!("  expected failure of {} (parse): {e}", cmd.expr);
                            }
                            stats.passed.push(cmd.line);
                        } else {
                            stats.failed.push((cmd.line, cmd.expr.clone(), format!("parse error: {e}")));
                        }
                        continue;
                    }
                };
                let (mut uses_hist, mut uses_st) = (false, false);
                expr.walk(&mut |e| {
                    let sel = match e {
                        Expr::Vector(s) | Expr::Matrix { sel: s, .. } => s,
                        _ => return,
                    };
                    if hist.iter().any(|l| sel.matchers.iter().all(|m| m.matches_labels(l))) {
                        uses_hist = true;
                    }
                    if st.iter().any(|l| sel.matchers.iter().all(|m| m.matches_labels(l))) {
                        uses_st = true;
                    }
                });
                match run_eval(&opts, &src, &cmd, &expr) {
                    Ok(()) => stats.passed.push(cmd.line),
                    Err(msg) => {
                        if uses_hist {
                            *stats.skipped.entry("native_histogram").or_default() += 1;
                            nh_labels_out.insert(format!("{}: {} => {}", cmd.line, cmd.expr, msg));
                        } else if uses_st {
                            *stats.skipped.entry("experimental:start_timestamps").or_default() += 1;
                        } else if let Some(reason) = experimental_reason(&cmd.expr) {
                            *stats.skipped.entry(reason).or_default() += 1;
                            nh_labels_out.insert(format!("{}: [{reason}] {} => {}", cmd.line, cmd.expr, msg));
                        } else {
                            stats.failed.push((cmd.line, cmd.expr.clone(), msg));
                        }
                    }
                }
            }
        }
    }
    Ok(stats)
}

#[test]
fn promqltest_corpus() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/promqltest");
    let ratchet_path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/promql/ratchet.txt");
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => {
            rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "test")).collect()
        }
        Err(e) => {
            println!("promqltest: corpus not found at {dir}: {e}");
            return;
        }
    };
    files.sort();
    let ratchet: BTreeMap<String, BTreeSet<usize>> = std::fs::read_to_string(ratchet_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (f, rest) = l.split_once(':')?;
            let set = rest.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            Some((f.trim().to_string(), set))
        })
        .collect();
    let filter = std::env::var("PROMQLTEST_FILE").ok();
    let verbose = std::env::var("PROMQLTEST_VERBOSE").is_ok();
    let mut total = (0, 0, 0);
    let mut new_ratchet = String::new();
    let mut regressions = Vec::new();
    for path in files {
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut nh = BTreeSet::new();
        let stats = match run_file(&text, &mut nh) {
            Ok(s) => s,
            Err(e) => {
                println!("promqltest {name}: script error: {e}");
                FileStats::default()
            }
        };
        let skipped: usize = stats.skipped.values().sum();
        println!(
            "promqltest {name}: passed {}, failed {}, skipped {} {:?}",
            stats.passed.len(),
            stats.failed.len(),
            skipped,
            stats.skipped
        );
        if verbose {
            for n in &nh {
                println!("  SKIP line {n}");
            }
            for (line, expr, msg) in &stats.failed {
                println!("  FAIL line {line}: {expr}\n      {msg}");
            }
        }
        total.0 += stats.passed.len();
        total.1 += stats.failed.len();
        total.2 += skipped;
        let passed: BTreeSet<usize> = stats.passed.iter().copied().collect();
        if let Some(want) = ratchet.get(&name) {
            for l in want {
                if !passed.contains(l) {
                    let detail = stats
                        .failed
                        .iter()
                        .find(|f| f.0 == *l)
                        .map(|f| format!("{} => {}", f.1, f.2))
                        .unwrap_or_else(|| "skipped".into());
                    regressions.push(format!("{name}:{l}: {detail}"));
                }
            }
        }
        new_ratchet
            .push_str(&format!("{name}: {}\n", passed.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",")));
    }
    println!("promqltest total: passed {}, failed {}, skipped {}", total.0, total.1, total.2);
    if std::env::var("PROMQL_RATCHET_UPDATE").is_ok_and(|v| v == "1") && filter.is_none() {
        if let Some(parent) = std::path::Path::new(ratchet_path).parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(ratchet_path, new_ratchet).unwrap_or_else(|e| panic!("cannot write ratchet: {e}"));
        println!("promqltest: ratchet rewritten");
        return;
    }
    for r in &regressions {
        println!("REGRESSION {r}");
    }
    assert!(regressions.is_empty(), "{} ratcheted evals no longer pass", regressions.len());
}
