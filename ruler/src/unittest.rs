//! `lumen rules test`: rule unit tests in promtool's format (`rule_files`, `evaluation_interval`,
//! `group_eval_order`, `tests` with `input_series`, `alert_rule_test` and `promql_expr_test`), run with
//! Lumen's own PromQL engine and rule evaluation over in-memory series, as `promtool test rules` does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use query::promql::series::{MemSource, SeqVal, parse_series_labels, parse_values};
use query::promql::{self, EngineOptions, Value as PValue};
use serde::Deserialize;
use store::model::Tenant;

use crate::group::{Backend, GroupState, Settings};
use crate::rule::{AlertState, Labels};
use crate::rulefmt::{self, Defaults, Lang, Query};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    #[serde(default)]
    evaluation_interval: Option<String>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    #[serde(default)]
    tests: Vec<TestGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    #[serde(default)]
    name: String,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
    #[serde(default)]
    promql_expr_test: Vec<ExprTest>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
    #[serde(default)]
    external_url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    #[serde(default)]
    values: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    eval_time: String,
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpAlert {
    #[serde(default)]
    exp_labels: BTreeMap<String, String>,
    #[serde(default)]
    exp_annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExprTest {
    expr: String,
    eval_time: String,
    #[serde(default)]
    exp_samples: Vec<ExpSample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpSample {
    #[serde(default)]
    labels: String,
    value: f64,
}

/// The rules' storage in a unit test: the input series plus what the rules record.
struct Mem {
    src: Mutex<MemSource>,
}

fn opts() -> EngineOptions {
    EngineOptions { deadline: Some(std::time::Instant::now() + Duration::from_secs(60)), ..EngineOptions::default() }
}

impl Backend for Mem {
    fn query(&self, _t: &Tenant, q: &Query, t_ms: i64) -> Result<Vec<(Labels, f64)>, String> {
        let Query::PromQL(e) = q else { return Err("unit tests run PromQL rules only".to_string()) };
        let src = self.src.lock().map_err(|_| "poisoned".to_string())?;
        match promql::eval_instant(&opts(), &*src, e, t_ms).map_err(|e| e.to_string())?.value {
            PValue::Vector(v) => Ok(v.into_iter().map(|(l, _, v)| (l, v)).collect()),
            PValue::Scalar { v, .. } => Ok(vec![(Vec::new(), v)]),
            _ => Err("rule result is not a vector or scalar".to_string()),
        }
    }

    fn write(&self, _t: &Tenant, t_ms: i64, samples: Vec<(Labels, f64)>) -> Result<(), String> {
        let mut src = self.src.lock().map_err(|_| "poisoned".to_string())?;
        for (l, v) in samples {
            src.add(l, t_ms, v);
        }
        Ok(())
    }

    fn last_samples(
        &self,
        _: &Tenant,
        _: &[(String, String)],
        _: i64,
        _: i64,
    ) -> Result<Vec<(Labels, i64, f64)>, String> {
        Ok(Vec::new())
    }
}

fn dur_ms(s: &str) -> Result<i64, String> {
    rulefmt::parse_duration(s).map(|d| d.as_millis() as i64)
}

/// Runs the tests of one file; the report is what promtool prints. `Ok(true)` when every test passed.
///
/// # Errors
/// A test file or rule file that cannot be read or parsed.
pub fn run_file(path: &Path, out: &mut String) -> Result<bool, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let tf: TestFile = serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let eval_interval = match &tf.evaluation_interval {
        Some(s) => dur_ms(s)?,
        None => 60_000,
    };
    let defaults = Defaults { interval: Duration::from_millis(eval_interval as u64), query_offset: Duration::ZERO };
    let mut specs = Vec::new();
    for f in &tf.rule_files {
        let mut matched: Vec<_> = glob::glob(&base.join(f).to_string_lossy())
            .map_err(|e| format!("rule_files {f:?}: {e}"))?
            .flatten()
            .collect();
        if matched.is_empty() {
            return Err(format!("{}: rule file {f:?} not found", path.display()));
        }
        matched.sort();
        for p in matched {
            let t = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let gs = rulefmt::parse_file(&p.display().to_string(), &t, Lang::PromQL, &defaults)
                .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
            specs.extend(gs);
        }
    }
    if !tf.group_eval_order.is_empty() {
        let pos = |n: &str| tf.group_eval_order.iter().position(|g| g == n).unwrap_or(usize::MAX);
        specs.sort_by_key(|g| pos(&g.name));
    }
    let _ = writeln!(out, "Unit Testing: {}", path.display());
    let mut all_ok = true;
    for (i, tg) in tf.tests.iter().enumerate() {
        let errs = run_group(tg, &specs, eval_interval)?;
        if !errs.is_empty() {
            all_ok = false;
            let name = if tg.name.is_empty() { format!("test {}", i + 1) } else { tg.name.clone() };
            let _ = writeln!(out, "  FAILED ({name}):");
            for e in errs {
                let _ = writeln!(out, "    {}", e.replace('\n', "\n    "));
            }
        }
    }
    if all_ok {
        let _ = writeln!(out, "  SUCCESS");
    }
    Ok(all_ok)
}

fn fmt_labels(l: &Labels) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn run_group(tg: &TestGroup, specs: &[rulefmt::GroupSpec], eval_interval: i64) -> Result<Vec<String>, String> {
    let interval = match &tg.interval {
        Some(s) => dur_ms(s)?,
        None => eval_interval,
    };
    let mut src = MemSource::default();
    for s in &tg.input_series {
        let (labels, rest) = parse_series_labels(&s.series).map_err(|e| format!("series {:?}: {e}", s.series))?;
        if !rest.trim().is_empty() {
            return Err(format!("series {:?}: unexpected {:?}", s.series, rest.trim()));
        }
        let values = parse_values(&s.values).map_err(|e| format!("values of {}: {e}", s.series))?;
        for (i, v) in values.iter().enumerate() {
            if let SeqVal::Float(f) = v {
                src.add(labels.clone(), i as i64 * interval, *f);
            }
        }
    }
    let mem = Mem { src: Mutex::new(src) };
    let settings = Settings {
        external_labels: tg.external_labels.clone(),
        external_url: if tg.external_url.is_empty() { "http://localhost:9700".into() } else { tg.external_url.clone() },
        ..Settings::default()
    };
    let tenant = Tenant::default_tenant();
    let mut groups: Vec<GroupState> = specs
        .iter()
        .map(|s| {
            let mut g = GroupState::new(tenant.clone(), s.clone());
            g.should_restore = false;
            for r in &mut g.rules {
                r.restored = true;
            }
            g
        })
        .collect();
    let mut alert_tests: Vec<(i64, &AlertTest)> =
        tg.alert_rule_test.iter().map(|t| Ok((dur_ms(&t.eval_time)?, t))).collect::<Result<_, String>>()?;
    alert_tests.sort_by_key(|(t, _)| *t);
    let max_t = alert_tests
        .iter()
        .map(|(t, _)| *t)
        .chain(tg.promql_expr_test.iter().filter_map(|t| dur_ms(&t.eval_time).ok()))
        .max()
        .unwrap_or(0);
    let mut errors = Vec::new();
    let mut next_alert = 0;
    let mut ts = 0i64;
    while ts <= max_t {
        // Every group at every step of evaluation_interval, as promtool runs them; a rule that fails fails
        // the test.
        for g in &mut groups {
            g.eval(ts, &mem, &settings, ts);
            for r in g.rules.iter().filter(|r| r.health == crate::rule::Health::Err) {
                errors.push(format!(
                    "rule: {}, time: {}, err: {}",
                    r.spec.name,
                    rulefmt::format_duration(Duration::from_millis(ts as u64)),
                    r.last_error
                ));
            }
        }
        while next_alert < alert_tests.len() && alert_tests[next_alert].0 < ts + eval_interval {
            let (t, at) = alert_tests[next_alert];
            next_alert += 1;
            if t < ts {
                continue;
            }
            let mut got: Vec<(Labels, Labels)> = Vec::new();
            for g in &groups {
                for r in g.rules.iter().filter(|r| r.spec.name == at.alertname && r.spec.is_alerting()) {
                    for a in r.active_alerts() {
                        if a.state == AlertState::Firing {
                            got.push((a.labels.clone(), a.annotations.clone()));
                        }
                    }
                }
            }
            let mut exp: Vec<(Labels, Labels)> = at
                .exp_alerts
                .iter()
                .map(|e| {
                    let mut l: Labels = e.exp_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    l.push(("alertname".to_string(), at.alertname.clone()));
                    l.sort();
                    (l, e.exp_annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                })
                .collect();
            got.sort();
            exp.sort();
            if got != exp {
                let show = |v: &[(Labels, Labels)]| {
                    v.iter()
                        .enumerate()
                        .map(|(i, (l, a))| format!("{i}:\n  Labels:{}\n  Annotations:{}", fmt_labels(l), fmt_labels(a)))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                errors.push(format!(
                    "alertname: {}, time: {}, \n    exp:{}, \n    got:{}",
                    at.alertname,
                    rulefmt::format_duration(Duration::from_millis(t as u64)),
                    show(&exp),
                    show(&got)
                ));
            }
        }
        ts += eval_interval;
    }
    for et in &tg.promql_expr_test {
        let t = dur_ms(&et.eval_time)?;
        let q = Query::PromQL(promql::parse(&et.expr).map_err(|e| format!("expr {:?}: {e}", et.expr))?);
        let got = match mem.query(&tenant, &q, t) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("    expr: {:?}, time: {}, err: {e}", et.expr, et.eval_time));
                continue;
            }
        };
        let mut got: Vec<(Labels, f64)> = got;
        let mut exp = Vec::new();
        for s in &et.exp_samples {
            let (l, _) = if s.labels.trim().is_empty() {
                (Vec::new(), "")
            } else {
                parse_series_labels(&s.labels).map_err(|e| format!("labels {:?}: {e}", s.labels))?
            };
            exp.push((l, s.value));
        }
        got.sort_by(|a, b| a.0.cmp(&b.0));
        exp.sort_by(|a, b| a.0.cmp(&b.0));
        let same = got.len() == exp.len()
            && got.iter().zip(&exp).all(|((gl, gv), (el, ev))| {
                gl == el && (gv == ev || (gv.is_nan() && ev.is_nan()) || ((gv - ev).abs() <= 1e-12 * ev.abs().max(1.0)))
            });
        if !same {
            let show = |v: &[(Labels, f64)]| {
                v.iter().map(|(l, v)| format!("{} {v}", fmt_labels(l))).collect::<Vec<_>>().join(",\n        ")
            };
            errors.push(format!(
                "expr: {:?}, time: {},\n        exp: {}\n        got: {}",
                et.expr,
                et.eval_time,
                show(&exp),
                show(&got)
            ));
        }
    }
    Ok(errors)
}
