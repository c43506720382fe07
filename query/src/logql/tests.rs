//! Runs the file-driven cases of `query/testdata/logql` (format in its README) against a real store,
//! once with the entries in the head and once after a flush to Parquet parts.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use prometheus_client::registry::Registry;
use store::model::{Labels, LogBatch, LogEntry, Tenant};
use store::{LogStore, StoreConfig, StoreOptions};

use super::eval::LabelPairs;
use super::*;

#[derive(Debug)]
struct Load {
    labels: LabelPairs,
    metadata: LabelPairs,
    time_ns: i64,
    line: String,
}

#[derive(Debug)]
enum Expected {
    Scalar(f64),
    Sample(LabelPairs, f64),
    Row(LabelPairs, Vec<Option<f64>>),
    Stream(LabelPairs, Vec<(i64, String)>),
    Error(String),
}

#[derive(Debug)]
struct Eval {
    line: usize,
    fail: bool,
    ordered: bool,
    params: QueryParams,
    query: String,
    expected: Vec<Expected>,
}

#[derive(Debug)]
enum Command {
    Load(Vec<Load>),
    Eval(Eval),
}

fn parse_labels(s: &str) -> Result<(LabelPairs, &str), String> {
    let s = s.trim_start();
    let Some(mut rest) = s.strip_prefix('{') else { return Err(format!("expected '{{' in {s:?}")) };
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            out.sort();
            return Ok((out, r));
        }
        let eq = rest.find('=').ok_or_else(|| format!("expected '=' in {rest:?}"))?;
        let name = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].trim_start();
        let body = rest.strip_prefix('"').ok_or_else(|| format!("expected a quoted value in {rest:?}"))?;
        let mut value = String::new();
        let mut chars = body.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, e)) => value.push(e),
                    None => break,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or("unterminated label value")?;
        out.push((name, value));
        rest = body[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn duration(s: &str) -> Result<i64, String> {
    parse_duration_ns(s).ok_or_else(|| format!("invalid duration {s:?}"))
}

fn value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s.parse().map_err(|_| format!("invalid value {s:?}")),
    }
}

fn parse_eval(line_no: usize, head: &str) -> Result<Eval, String> {
    let (kind, rest) = head.split_once(' ').ok_or("eval without arguments")?;
    let (fail, ordered) = match kind {
        "eval" => (false, false),
        "eval_ordered" => (false, true),
        "eval_fail" => (true, false),
        other => return Err(format!("unknown command {other:?}")),
    };
    let mut words = rest.split(' ').filter(|w| !w.is_empty()).peekable();
    let mut params = QueryParams {
        start_ns: 0,
        end_ns: 0,
        step_ns: 0,
        limit: 100,
        direction: Direction::Backward,
        instant: true,
        categorize: false,
    };
    let take = |words: &mut std::iter::Peekable<_>| -> Result<String, String> {
        let w: &str = words.next().ok_or("incomplete eval line")?;
        Ok(w.to_string())
    };
    match take(&mut words)?.as_str() {
        "instant" => {
            if take(&mut words)? != "at" {
                return Err("expected 'at'".into());
            }
            let t = duration(&take(&mut words)?)?;
            params.start_ns = t;
            params.end_ns = t;
        }
        "range" => {
            params.instant = false;
            let expect = |w: &str, words: &mut std::iter::Peekable<_>| -> Result<String, String> {
                let got = take(words)?;
                if got != w {
                    return Err(format!("expected {w:?}, got {got:?}"));
                }
                take(words)
            };
            params.start_ns = duration(&expect("from", &mut words)?)?;
            params.end_ns = duration(&expect("to", &mut words)?)?;
            params.step_ns = duration(&expect("step", &mut words)?)?;
        }
        other => return Err(format!("expected instant or range, got {other:?}")),
    }
    while let Some(w) = words.peek() {
        if let Some(v) = w.strip_prefix("limit=") {
            params.limit = v.parse().map_err(|_| format!("bad limit {v:?}"))?;
        } else if let Some(v) = w.strip_prefix("direction=") {
            params.direction = if v == "forward" { Direction::Forward } else { Direction::Backward };
        } else {
            break;
        }
        words.next();
    }
    let query: Vec<&str> = words.collect();
    Ok(Eval { line: line_no, fail, ordered, params, query: query.join(" "), expected: Vec::new() })
}

fn parse_file(text: &str) -> Result<Vec<Command>, String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with(' ') {
            return Err(format!("line {i}: indented line outside a block"));
        }
        let body: Vec<(usize, &str)> = {
            let mut b = Vec::new();
            while i < lines.len() && (lines[i].starts_with(' ') || lines[i].trim().is_empty()) {
                if !lines[i].trim().is_empty() && !lines[i].trim_start().starts_with('#') {
                    b.push((i + 1, lines[i]));
                }
                i += 1;
            }
            b
        };
        if line.trim() == "load" {
            let mut loads = Vec::new();
            for (no, l) in body {
                let (labels, rest) = parse_labels(l).map_err(|e| format!("line {no}: {e}"))?;
                let (metadata, rest) = if rest.trim_start().starts_with('{') {
                    parse_labels(rest).map_err(|e| format!("line {no}: {e}"))?
                } else {
                    (Vec::new(), rest)
                };
                let rest = rest.trim_start();
                let (time, line) = rest.split_once(' ').unwrap_or((rest, ""));
                let time_ns = duration(time).map_err(|e| format!("line {no}: {e}"))?;
                loads.push(Load { labels, metadata, time_ns, line: line.to_string() });
            }
            out.push(Command::Load(loads));
            continue;
        }
        let mut eval = parse_eval(i, line).map_err(|e| format!("line {i}: {e}"))?;
        let mut current_stream: Option<(LabelPairs, Vec<(i64, String)>)> = None;
        for (no, l) in body {
            let err = |e: String| format!("line {no}: {e}");
            let t = l.trim();
            if l.starts_with("    ") && current_stream.is_some() {
                let (time, text) = t.split_once(' ').unwrap_or((t, ""));
                let ts = duration(time).map_err(err)?;
                if let Some((_, entries)) = current_stream.as_mut() {
                    entries.push((ts, l[4..].trim_start().split_once(' ').map_or("", |x| x.1).to_string()));
                }
                let _ = text;
                continue;
            }
            if let Some((labels, entries)) = current_stream.take() {
                eval.expected.push(Expected::Stream(labels, entries));
            }
            if let Some(msg) = t.strip_prefix("error ") {
                eval.expected.push(Expected::Error(msg.to_string()));
            } else if t.starts_with('{') {
                let (labels, rest) = parse_labels(t).map_err(err)?;
                let rest = rest.trim();
                if rest.is_empty() {
                    current_stream = Some((labels, Vec::new()));
                } else if eval.params.instant {
                    eval.expected.push(Expected::Sample(labels, value(rest).map_err(err)?));
                } else {
                    let vals: Result<Vec<Option<f64>>, String> =
                        rest.split_whitespace().map(|v| if v == "_" { Ok(None) } else { value(v).map(Some) }).collect();
                    eval.expected.push(Expected::Row(labels, vals.map_err(err)?));
                }
            } else {
                eval.expected.push(Expected::Scalar(value(t).map_err(err)?));
            }
        }
        if let Some((labels, entries)) = current_stream.take() {
            eval.expected.push(Expected::Stream(labels, entries));
        }
        out.push(Command::Eval(eval));
    }
    Ok(out)
}

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    ((a - b) / b.abs().max(1e-300)).abs() < 1e-9 || (a - b).abs() < 1e-12
}

fn open_store(dir: &Path) -> LogStore {
    LogStore::open(
        StoreOptions {
            data_dir: dir.to_path_buf(),
            retention: Duration::from_secs(86_400 * 365 * 100),
            disk: None,
            retention_rules: Vec::new(),
            tuning: StoreConfig::default(),
        },
        &mut Registry::default(),
    )
    .expect("store opens")
}

async fn append(store: &LogStore, loads: &[Load]) {
    let mut batch = LogBatch::default();
    for l in loads {
        let stream = batch.stream_index(Labels::from_pairs(l.labels.clone()));
        batch.entries.push(LogEntry { stream, time_ns: l.time_ns, line: l.line.clone(), fields: l.metadata.clone() });
    }
    store.append(&Tenant::default_tenant(), batch).await.expect("append");
}

fn check(eval: &Eval, result: Result<QueryValue, String>) -> Result<(), String> {
    let result = match (eval.fail, result) {
        (true, Ok(v)) => return Err(format!("expected an error, got {v:?}")),
        (true, Err(e)) => {
            for exp in &eval.expected {
                if let Expected::Error(msg) = exp
                    && !e.contains(msg.as_str())
                {
                    return Err(format!("error {e:?} does not contain {msg:?}"));
                }
            }
            return Ok(());
        }
        (false, Err(e)) => return Err(format!("unexpected error: {e}")),
        (false, Ok(v)) => v,
    };
    match result {
        QueryValue::Scalar(_, v) => match eval.expected.as_slice() {
            [Expected::Scalar(x)] if close(v, *x) => Ok(()),
            other => Err(format!("got scalar {v}, expected {other:?}")),
        },
        QueryValue::Vector(samples) => {
            let mut got: Vec<(LabelPairs, f64)> = samples.into_iter().map(|(l, _, v)| (l, v)).collect();
            let mut want: Vec<(LabelPairs, f64)> = eval
                .expected
                .iter()
                .filter_map(|e| match e {
                    Expected::Sample(l, v) => Some((l.clone(), *v)),
                    _ => None,
                })
                .collect();
            if want.len() != eval.expected.len() {
                return Err(format!("got a vector {got:?}, expected {:?}", eval.expected));
            }
            if !eval.ordered {
                got.sort_by(|a, b| a.0.cmp(&b.0));
                want.sort_by(|a, b| a.0.cmp(&b.0));
            }
            let same = got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| g.0 == w.0 && close(g.1, w.1));
            if same { Ok(()) } else { Err(format!("got vector {got:?}\n  expected {want:?}")) }
        }
        QueryValue::Matrix(series) => {
            let n = ((eval.params.end_ns - eval.params.start_ns) / eval.params.step_ns.max(1) + 1) as usize;
            let mut got: Vec<(LabelPairs, Vec<Option<f64>>)> = series
                .into_iter()
                .map(|(l, pts)| {
                    let mut row = vec![None; n];
                    for (t, v) in pts {
                        row[((t - eval.params.start_ns) / eval.params.step_ns.max(1)) as usize] = Some(v);
                    }
                    (l, row)
                })
                .collect();
            let mut want: Vec<(LabelPairs, Vec<Option<f64>>)> = eval
                .expected
                .iter()
                .filter_map(|e| match e {
                    Expected::Row(l, v) => Some((l.clone(), v.clone())),
                    _ => None,
                })
                .collect();
            if want.len() != eval.expected.len() {
                return Err(format!("got a matrix {got:?}, expected {:?}", eval.expected));
            }
            got.sort_by(|a, b| a.0.cmp(&b.0));
            want.sort_by(|a, b| a.0.cmp(&b.0));
            let same = got.len() == want.len()
                && got.iter().zip(&want).all(|(g, w)| {
                    g.0 == w.0
                        && g.1.len() == w.1.len()
                        && g.1.iter().zip(&w.1).all(|(a, b)| match (a, b) {
                            (Some(a), Some(b)) => close(*a, *b),
                            (None, None) => true,
                            _ => false,
                        })
                });
            if same { Ok(()) } else { Err(format!("got matrix {got:?}\n  expected {want:?}")) }
        }
        QueryValue::Streams(streams) => {
            let mut got: Vec<(LabelPairs, Vec<(i64, String)>)> = streams
                .into_iter()
                .map(|s| (s.labels, s.entries.into_iter().map(|e| (e.ts, e.line)).collect()))
                .collect();
            let mut want: Vec<(LabelPairs, Vec<(i64, String)>)> = eval
                .expected
                .iter()
                .filter_map(|e| match e {
                    Expected::Stream(l, v) => Some((l.clone(), v.clone())),
                    _ => None,
                })
                .collect();
            if want.len() != eval.expected.len() {
                return Err(format!("got streams {got:?}, expected {:?}", eval.expected));
            }
            got.sort();
            want.sort();
            if got == want { Ok(()) } else { Err(format!("got streams {got:?}\n  expected {want:?}")) }
        }
    }
}

async fn run_file(path: &Path, flushed: bool) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("read case file");
    let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
    let commands = match parse_file(&text) {
        Ok(c) => c,
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let engine = Engine {
        store: store.clone(),
        limits: Limits { partitions: 2, ..Limits::default() },
        peers: None,
        trees: Default::default(),
    };
    let mut failures = Vec::new();
    for cmd in commands {
        match cmd {
            Command::Load(loads) => {
                append(&store, &loads).await;
                if flushed {
                    store.flush().await.expect("flush");
                }
            }
            Command::Eval(eval) => {
                let result = match parse(&eval.query) {
                    Err(e) => Err(e.to_string()),
                    Ok(expr) => engine
                        .query(&Tenant::default_tenant(), &expr, &eval.params)
                        .await
                        .map(|(v, _)| v)
                        .map_err(|e| e.to_string()),
                };
                if let Err(e) = check(&eval, result) {
                    let mode = if flushed { "parts" } else { "head" };
                    failures.push(format!("{name}:{} [{mode}] {}\n  {e}", eval.line, eval.query));
                }
            }
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logql_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/logql");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata/logql exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no case files in {}", dir.display());
    let mut failures = Vec::new();
    let mut evals = 0;
    for file in &files {
        evals += std::fs::read_to_string(file).unwrap_or_default().lines().filter(|l| l.starts_with("eval")).count();
        for flushed in [false, true] {
            failures.extend(run_file(file, flushed).await);
        }
    }
    let mut report = String::new();
    for f in &failures {
        let _ = writeln!(report, "{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} evals failed (head and parts counted apart):\n{report}",
        failures.len(),
        evals * 2
    );
}

#[test]
fn format_query_round_trips() {
    for q in [
        r#"{app="a", pod=~"p.+"} |= "x" or "y" != "z" | json | level="error" | line_format "{{.msg}}""#,
        r#"sum by (app) (count_over_time({app=~".+"} |= "error" [1d]))"#,
        r#"topk(3, sum without (pod) (rate({app="a"} | logfmt | unwrap bytes(size) | __error__="" [5m] offset 1h)))"#,
        r#"label_replace(vector(1), "dst", "$1", "src", "(.*)") > bool 0"#,
    ] {
        let printed = parse(q).unwrap().to_string();
        let again = parse(&printed).unwrap().to_string();
        assert_eq!(printed, again, "{q}");
    }
}

#[test]
fn parse_errors_point_at_the_problem() {
    let e = parse(r#"{app="a"} |= "#).unwrap_err();
    assert_eq!((e.line, e.col), (1, 14), "{e}");
    let e = parse(r#"sum(rate({app="a"}))"#).unwrap_err();
    assert!(e.msg.contains("range"), "{e}");
    let e = parse(r#"{app=~".*"}"#).unwrap_err();
    assert!(e.msg.contains("at least one"), "{e}");
    let e = parse(r#"nosuch({app="a"}[1m])"#).unwrap_err();
    assert!(e.msg.contains("unknown function"), "{e}");
}

/// Every prefix of a set of valid queries, and each with one byte replaced, parses or fails cleanly;
/// whatever parses prints back to text that parses again.
#[test]
fn mangled_queries_never_panic() {
    let queries = [
        r#"sum by (app) (rate({app=~"a|b", pod!="x"} |= "err" or "warn" |~ "(?i)fail" | json a="b.c[0]" | logfmt --strict | level="error" and dur > 1.5s or size <= 10KiB | line_format "{{ .a | ToUpper }}" | label_format x=y, z="{{.a}}" | drop a, b="c" | keep z | decolorize | unwrap bytes(size) | __error__="" [5m] offset 1h))"#,
        r#"topk(2, sum without (pod) (count_over_time({app="x"} | pattern "<ip> - <_>" | regexp "(?P<n>\\d+)" | unpack [1m]))) / on (app) group_left (team) label_replace(vector(1), "d", "$1", "s", "(.*)") > bool 0.5"#,
        r#"quantile_over_time(0.99, {a="b"} | logfmt | unwrap duration(latency) [10m]) by (a) ^ 2 % 3 unless absent_over_time({a="b"}[1m])"#,
    ];
    let replacements =
        [b'{', b'}', b'(', b')', b'"', b'[', b']', b'|', b'=', b'~', b'!', b' ', b'0', b'x', b'\\', b'`'];
    let mut checked = 0;
    for q in queries {
        let bytes = q.as_bytes();
        for end in 0..=bytes.len() {
            if let Ok(prefix) = std::str::from_utf8(&bytes[..end]) {
                check_round_trip(prefix);
                checked += 1;
            }
        }
        for i in 0..bytes.len() {
            let mut mangled = bytes.to_vec();
            mangled[i] = replacements[i % replacements.len()];
            if let Ok(text) = std::str::from_utf8(&mangled) {
                check_round_trip(text);
                checked += 1;
            }
        }
    }
    assert!(checked > 1000);
}

fn check_round_trip(text: &str) {
    if let Ok(expr) = parse(text) {
        let printed = expr.to_string();
        assert!(parse(&printed).is_ok(), "{text:?} printed as {printed:?}, which does not parse");
    }
}

/// Memory a query would hold is counted as it grows (`query.max_samples`), so a query that would take
/// too much is refused with the limit's name before it takes it, and the same query fits a larger limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_that_would_hold_too_much_are_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let s = 1_000_000_000i64;
    // 200 lines, each with its own request id: `| logfmt` makes 200 series; lines of 2 KB.
    let loads: Vec<Load> = (0..200)
        .map(|i| Load {
            labels: vec![("app".into(), "api".into())],
            metadata: Vec::new(),
            time_ns: 1_000 * s + i * s,
            line: format!("id=r{i} latency={} pad={}", i % 17, "x".repeat(2000)),
        })
        .collect();
    append(&store, &loads).await;
    let run = |max: usize, q: &'static str, params: QueryParams| {
        let engine = Engine {
            store: store.clone(),
            limits: Limits { partitions: 2, max_held_samples: max, ..Limits::default() },
            peers: None,
            trees: Default::default(),
        };
        async move { engine.query(&Tenant::default_tenant(), &parse(q).unwrap(), &params).await.map(|_| ()) }
    };
    let range = || QueryParams::range(1_000 * s, 1_400 * s, s);
    // 200 series × 401 steps × 2 samples each, plus labels: about 165,000.
    let q = r#"count_over_time({app="api"} | logfmt | drop pad [10s])"#;
    let err = run(100_000, q, range()).await.unwrap_err().to_string();
    assert!(err.contains("query.max_samples (100000)"), "{err}");
    run(200_000, q, range()).await.expect("fits a larger limit");
    // Grouped to one series it fits the small limit.
    run(100_000, r#"sum(count_over_time({app="api"} | logfmt [10s]))"#, range()).await.expect("one series");
    // quantile_over_time keeps each value once per step its window covers: 200 × 50 = 10,000.
    let q = r#"quantile_over_time(0.9, {app="api"} | logfmt | unwrap latency [50s]) by (app)"#;
    assert!(run(9_000, q, range()).await.unwrap_err().to_string().contains("query.max_samples (9000)"));
    run(20_000, q, range()).await.expect("fits");
    // 100 lines of 2 KB returned: about 13,000 samples of 16 bytes.
    let mut p = QueryParams::range(1_000 * s, 1_400 * s, s);
    p.limit = 100;
    let q = r#"{app="api"}"#;
    let err = run(10_000, q, p.clone()).await.unwrap_err().to_string();
    assert!(err.contains("query.max_samples (10000)") && err.contains("lines"), "{err}");
    run(20_000, q, p).await.expect("fits");
}
