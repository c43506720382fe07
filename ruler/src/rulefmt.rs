//! Rule files in Prometheus' format (`groups:` of recording and alerting rules), as Prometheus, Loki's ruler,
//! vmalert and Grafana write them: the YAML model, its validation (expressions parsed in the rule's
//! language, templates parsed, names checked) with errors that name the file, line, group and rule, and
//! the YAML the config API answers with (unset optional fields left out, so Grafana's strict decoder
//! accepts it).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use query::template::Template;

/// The language of a rule set's expressions: the Prometheus-side sources hold PromQL, Loki's LogQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lang {
    PromQL,
    LogQL,
}

impl Lang {
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::PromQL => "promql",
            Lang::LogQL => "logql",
        }
    }
}

/// A whole rule file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(default)]
    pub groups: Vec<GroupDesc>,
}

/// A group as written. Optional fields are left out of the YAML when unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDesc {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_offset: Option<String>,
    /// Mimir's and Grafana's older name of `query_offset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_delay: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub limit: usize,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "scalar_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub rules: Vec<RuleDesc>,
    /// Grafana sends it; a tenant's rules only ever read that tenant here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_tenants: Vec<String>,
    /// Grafana sends it; evaluations are always aligned to the interval here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub align_evaluation_time_on_interval: Option<bool>,
    /// vmalert's datasource type: `prometheus` (PromQL) is accepted; `vlogs` and `graphite` are refused.
    #[serde(default, rename = "type", skip_serializing)]
    pub kind: Option<String>,
    // vmalert's other group fields: accepted and ignored (with a warning), never written back.
    #[serde(default, skip_serializing)]
    pub concurrency: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    pub eval_offset: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    pub eval_delay: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    pub eval_alignment: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    pub params: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    pub headers: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    pub notifier_headers: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    pub debug: Option<serde_yaml_ng::Value>,
}

/// A rule as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDesc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    #[serde(default, deserialize_with = "scalar_string")]
    pub expr: String,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "scalar_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", deserialize_with = "scalar_map")]
    pub annotations: BTreeMap<String, String>,
    // vmalert's rule fields: accepted and ignored.
    #[serde(default, skip_serializing)]
    pub debug: Option<serde_yaml_ng::Value>,
    #[serde(default, skip_serializing)]
    pub update_entries_limit: Option<serde_yaml_ng::Value>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn scalar(v: serde_yaml_ng::Value) -> Result<String, String> {
    match v {
        serde_yaml_ng::Value::String(s) => Ok(s),
        serde_yaml_ng::Value::Number(n) => Ok(n.to_string()),
        serde_yaml_ng::Value::Bool(b) => Ok(b.to_string()),
        serde_yaml_ng::Value::Null => Ok(String::new()),
        _ => Err("expected a string".to_string()),
    }
}

fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    scalar(serde_yaml_ng::Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let m = Option::<BTreeMap<String, serde_yaml_ng::Value>>::deserialize(d)?.unwrap_or_default();
    m.into_iter().map(|(k, v)| Ok((k, scalar(v).map_err(serde::de::Error::custom)?))).collect()
}

/// A parsed expression in its language.
#[derive(Debug, Clone)]
pub enum Query {
    PromQL(query::promql::Expr),
    LogQL(query::logql::Expr),
}

/// A checked group, ready to evaluate.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub lang: Lang,
    /// The rule file's path, or the namespace of rules kept by the config API.
    pub file: String,
    pub name: String,
    pub interval: Duration,
    pub query_offset: Duration,
    pub limit: usize,
    pub rules: Vec<RuleSpec>,
    /// The group as written (for the config API and for comparing on reload).
    pub desc: GroupDesc,
}

/// What kind of rule, and what only that kind has.
#[derive(Debug, Clone)]
pub enum RuleKind {
    Recording,
    Alerting {
        hold: Duration,
        keep_firing_for: Duration,
        /// Annotation name and template, sorted by name.
        annotations: Vec<(String, String, Template)>,
    },
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// `record` or `alert`.
    pub name: String,
    /// The expression as written.
    pub expr: String,
    pub query: Query,
    /// The rule's labels (group labels merged in, rule labels winning), sorted; templates for alerting
    /// rules (kept with their parsed form).
    pub labels: Vec<(String, String, Option<Template>)>,
    pub kind: RuleKind,
}

impl RuleSpec {
    pub fn is_alerting(&self) -> bool {
        matches!(self.kind, RuleKind::Alerting { .. })
    }
}

/// One problem found in a rule file.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub file: String,
    pub line: Option<usize>,
    pub group: Option<String>,
    /// 1-based rule index in its group and its name.
    pub rule: Option<(usize, String)>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        f.write_str(": ")?;
        if let Some(g) = &self.group {
            write!(f, "group {g:?}, ")?;
        }
        if let Some((i, n)) = &self.rule {
            write!(f, "rule {i}, {n:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Most rules in one group and groups in one file (or one namespace of the config API).
pub const MAX_RULES_PER_GROUP: usize = 2_000;
pub const MAX_GROUPS_PER_FILE: usize = 1_000;
/// Largest rule file or config API body read.
pub const MAX_FILE_BYTES: usize = 8 << 20;

/// Parses and checks a whole rule file. Every problem is returned, each naming where it is.
pub fn parse_file(file: &str, text: &str, lang: Lang, defaults: &Defaults) -> Result<Vec<GroupSpec>, Vec<RuleError>> {
    let err =
        |line, msg: String| vec![RuleError { file: file.to_string(), line, group: None, rule: None, message: msg }];
    if text.len() > MAX_FILE_BYTES {
        return Err(err(None, format!("the file is {} bytes, over the limit of {MAX_FILE_BYTES}", text.len())));
    }
    let rf: RuleFile = match serde_yaml_ng::from_str::<Option<RuleFile>>(text) {
        Ok(r) => r.unwrap_or_default(),
        Err(e) => return Err(err(e.location().map(|l| l.line()), yaml_message(&e))),
    };
    if rf.groups.len() > MAX_GROUPS_PER_FILE {
        return Err(err(None, format!("{} groups, over the limit of {MAX_GROUPS_PER_FILE}", rf.groups.len())));
    }
    let lines = rule_lines(text);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut global_rule = 0usize;
    for g in rf.groups {
        let n_rules = g.rules.len();
        if !g.name.is_empty() && !seen.insert(g.name.clone()) {
            errors.push(RuleError {
                file: file.to_string(),
                line: None,
                group: None,
                rule: None,
                message: format!("groupname: {:?} is repeated in the same file", g.name),
            });
        }
        let first_line = if lines.len() >= global_rule + n_rules { Some(&lines[global_rule..]) } else { None };
        match check_group(file, g, lang, defaults, first_line) {
            Ok(spec) => out.push(spec),
            Err(mut e) => errors.append(&mut e),
        }
        global_rule += n_rules;
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// serde's message without the location, which the error carries separately.
fn yaml_message(e: &serde_yaml_ng::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The line (1-based) of each rule in the file, in file order: lines whose first key is `record:` or
/// `alert:`. Used only when their number matches the rules found (block-style YAML, as every tool writes).
fn rule_lines(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let t = l.trim_start().trim_start_matches('-').trim_start();
            (t.starts_with("record:") || t.starts_with("alert:")).then_some(i + 1)
        })
        .collect()
}

/// Settings that apply where a group does not say.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub interval: Duration,
    pub query_offset: Duration,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults { interval: Duration::from_secs(60), query_offset: Duration::ZERO }
    }
}

/// Checks one group (also what the config API does with a posted group).
pub fn check_group(
    file: &str,
    g: GroupDesc,
    lang: Lang,
    defaults: &Defaults,
    lines: Option<&[usize]>,
) -> Result<GroupSpec, Vec<RuleError>> {
    let mut errors = Vec::new();
    let gname = g.name.clone();
    let gerr = |msg: String| RuleError {
        file: file.to_string(),
        line: None,
        group: (!gname.is_empty()).then(|| gname.clone()),
        rule: None,
        message: msg,
    };
    if g.name.is_empty() {
        errors.push(gerr("groupname must not be empty".to_string()));
    }
    if g.rules.len() > MAX_RULES_PER_GROUP {
        errors.push(gerr(format!("{} rules, over the limit of {MAX_RULES_PER_GROUP} per group", g.rules.len())));
        return Err(errors);
    }
    match g.kind.as_deref() {
        None | Some("prometheus") | Some("") => {}
        Some("vlogs") => errors.push(gerr(
            "type: vlogs (vmalert's LogsQL rules) is not supported: Lumen's log rules are LogQL; put them in the \
             Loki rule layout (ruler.loki_rules_dir) and write the expression in LogQL"
                .to_string(),
        )),
        Some(other) => errors.push(gerr(format!("type: {other} is not supported (only prometheus)"))),
    }
    let interval = match g.interval.as_deref() {
        None => defaults.interval,
        Some(s) => match parse_duration(s) {
            Ok(d) if d.is_zero() => defaults.interval,
            Ok(d) => d,
            Err(e) => {
                errors.push(gerr(format!("interval: {e}")));
                defaults.interval
            }
        },
    };
    let mut query_offset = defaults.query_offset;
    for (key, v) in [("query_offset", &g.query_offset), ("evaluation_delay", &g.evaluation_delay)] {
        if let Some(s) = v {
            match parse_duration(s) {
                Ok(d) => query_offset = d,
                Err(e) => errors.push(gerr(format!("{key}: {e}"))),
            }
        }
    }
    for k in g.labels.keys() {
        if !valid_label_name(k) {
            errors.push(gerr(format!("invalid label name: {k}")));
        }
    }
    let mut rules = Vec::with_capacity(g.rules.len());
    for (i, r) in g.rules.iter().enumerate() {
        let name = r.record.clone().or_else(|| r.alert.clone()).unwrap_or_default();
        let line = lines.and_then(|l| l.get(i).copied());
        let rerr = |msg: String| RuleError {
            file: file.to_string(),
            line,
            group: Some(g.name.clone()),
            rule: Some((i + 1, name.clone())),
            message: msg,
        };
        match check_rule(r, &g.labels, lang) {
            Ok(spec) => rules.push(spec),
            Err(msgs) => errors.extend(msgs.into_iter().map(rerr)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(GroupSpec {
        lang,
        file: file.to_string(),
        name: g.name.clone(),
        interval,
        query_offset,
        limit: g.limit,
        rules,
        desc: g,
    })
}

fn check_rule(r: &RuleDesc, group_labels: &BTreeMap<String, String>, lang: Lang) -> Result<RuleSpec, Vec<String>> {
    let mut errs = Vec::new();
    let name = match (&r.record, &r.alert) {
        (Some(_), Some(_)) => {
            errs.push("only one of 'record' and 'alert' must be set".to_string());
            String::new()
        }
        (None, None) => {
            errs.push("one of 'record' or 'alert' must be set".to_string());
            String::new()
        }
        (Some(rec), None) => {
            if rec.is_empty() {
                errs.push("one of 'record' or 'alert' must be set".to_string());
            } else if !valid_metric_name(rec) {
                errs.push(format!("invalid recording rule name: {rec}"));
            }
            rec.clone()
        }
        (None, Some(a)) => {
            if a.is_empty() {
                errs.push("one of 'record' or 'alert' must be set".to_string());
            }
            a.clone()
        }
    };
    let alerting = r.alert.is_some();
    let query = if r.expr.trim().is_empty() {
        errs.push("field 'expr' must be set in rule".to_string());
        None
    } else {
        match parse_query(&r.expr, lang) {
            Ok(q) => Some(q),
            Err(e) => {
                errs.push(format!("could not parse expression: {e}"));
                None
            }
        }
    };
    if !alerting {
        if !r.annotations.is_empty() {
            errs.push("invalid field 'annotations' in recording rule".to_string());
        }
        if r.for_.is_some() {
            errs.push("invalid field 'for' in recording rule".to_string());
        }
        if r.keep_firing_for.is_some() {
            errs.push("invalid field 'keep_firing_for' in recording rule".to_string());
        }
    }
    let mut labels: BTreeMap<&str, &str> = group_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    labels.extend(r.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut out_labels = Vec::with_capacity(labels.len());
    for (k, v) in labels {
        if !valid_label_name(k) {
            errs.push(format!("invalid label name: {k}"));
            continue;
        }
        if k == "__name__" {
            errs.push("label name __name__ is not allowed in rule labels".to_string());
            continue;
        }
        let tmpl = if alerting {
            match Template::parse_prometheus(v) {
                Ok(t) => Some(t),
                Err(e) => {
                    errs.push(format!("label {k:?}: {e}"));
                    None
                }
            }
        } else {
            None
        };
        out_labels.push((k.to_string(), v.to_string(), tmpl));
    }
    let mut annotations = Vec::new();
    for (k, v) in &r.annotations {
        if !valid_label_name(k) {
            errs.push(format!("invalid annotation name: {k}"));
            continue;
        }
        match Template::parse_prometheus(v) {
            Ok(t) => annotations.push((k.clone(), v.clone(), t)),
            Err(e) => errs.push(format!("annotation {k:?}: {e}")),
        }
    }
    let dur = |key: &str, v: &Option<String>, errs: &mut Vec<String>| match v {
        None => Duration::ZERO,
        Some(s) => parse_duration(s).unwrap_or_else(|e| {
            errs.push(format!("{key}: {e}"));
            Duration::ZERO
        }),
    };
    let kind = if alerting {
        let hold = dur("for", &r.for_, &mut errs);
        let keep_firing_for = dur("keep_firing_for", &r.keep_firing_for, &mut errs);
        RuleKind::Alerting { hold, keep_firing_for, annotations }
    } else {
        RuleKind::Recording
    };
    match query {
        Some(query) if errs.is_empty() => Ok(RuleSpec { name, expr: r.expr.clone(), query, labels: out_labels, kind }),
        _ => Err(errs),
    }
}

/// Parses an expression in `lang`. A LogQL rule must be a metric query (a log query returns lines, not
/// a vector).
pub fn parse_query(expr: &str, lang: Lang) -> Result<Query, String> {
    match lang {
        Lang::PromQL => query::promql::parse(expr).map(Query::PromQL).map_err(|e| e.to_string()),
        Lang::LogQL => match query::logql::parse(expr).map_err(|e| e.to_string())? {
            query::logql::Expr::Log(_) => {
                Err("a log query selects lines; a rule needs a metric query such as sum(count_over_time({...}[5m]))"
                    .to_string())
            }
            e => Ok(Query::LogQL(e)),
        },
    }
}

/// A valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn valid_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// A valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Prometheus' duration syntax: `1y2w3d4h5m6s7ms` (each unit at most once, in this order), `0`; not negative.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("empty duration string".to_string());
    }
    if s.starts_with('-') {
        return Err(format!("not a valid duration string: {s:?}"));
    }
    let ns = query::template::parse_prometheus_duration(s)?;
    Ok(Duration::from_nanos(ns as u64))
}

/// Prometheus' way of printing a duration (`1m`, `1h30m`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (u, n) in [
        ("y", 365 * 86_400_000u64),
        ("w", 7 * 86_400_000),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= n {
            out.push_str(&format!("{}{u}", ms / n));
            ms %= n;
        }
    }
    out
}

/// The YAML of one group, as the config API answers (unset optional fields left out).
pub fn group_yaml(g: &GroupDesc) -> String {
    serde_yaml_ng::to_string(g).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<GroupSpec>, Vec<RuleError>> {
        parse_file("rules.yaml", text, Lang::PromQL, &Defaults::default())
    }

    #[test]
    fn durations_follow_prometheus() {
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("1m1h").is_err());
        assert!(parse_duration("1.5m").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999y").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn a_valid_file_loads_with_defaults_and_group_labels_merged() {
        let g = parse(
            "groups:\n- name: g\n  labels: {team: a, severity: low}\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n  - alert: Down\n    expr: up == 0\n    for: 5m\n    labels:\n      severity: page\n    annotations:\n      summary: \"{{ $labels.instance }} down\"\n",
        )
        .unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].interval, Duration::from_secs(60));
        let r = &g[0].rules[1];
        assert!(r.is_alerting());
        let labels: Vec<_> = r.labels.iter().map(|(k, v, _)| (k.as_str(), v.as_str())).collect();
        assert_eq!(labels, [("severity", "page"), ("team", "a")]);
        assert!(matches!(r.kind, RuleKind::Alerting { hold, .. } if hold == Duration::from_secs(300)));
    }

    #[test]
    fn errors_name_the_file_line_group_and_rule() {
        let e = parse("groups:\n- name: g\n  rules:\n  - record: ok\n    expr: up\n  - alert: Bad\n    expr: sum(up\n")
            .unwrap_err();
        assert_eq!(e.len(), 1);
        let s = e[0].to_string();
        assert!(s.starts_with("rules.yaml:6: group \"g\", rule 2, \"Bad\": could not parse expression"), "{s}");
    }

    #[test]
    fn prometheus_validation_rules_hold() {
        let cases = [
            ("- record: a\n    alert: b\n    expr: up\n", "only one of 'record' and 'alert' must be set"),
            ("- expr: up\n", "one of 'record' or 'alert' must be set"),
            ("- record: 'a{b}'\n    expr: up\n", "invalid recording rule name"),
            ("- record: a\n    expr: up\n    for: 1m\n", "invalid field 'for' in recording rule"),
            ("- record: a\n    expr: up\n    annotations: {x: y}\n", "invalid field 'annotations'"),
            ("- alert: a\n    expr: ''\n", "field 'expr' must be set"),
            ("- alert: a\n    expr: up\n    labels: {'1x': y}\n", "invalid label name"),
            ("- alert: a\n    expr: up\n    annotations: {x: '{{ .Foo'}\n", "annotation \"x\""),
            ("- alert: a\n    expr: up\n    for: 5x\n", "for: unknown unit \"x\""),
        ];
        for (rules, want) in cases {
            let text = format!("groups:\n- name: g\n  rules:\n  {rules}");
            let e = parse(&text).unwrap_err();
            assert!(e.iter().any(|e| e.message.contains(want)), "{rules}: {e:?}");
        }
        let e = parse("groups:\n- name: g\n  rules: []\n- name: g\n  rules: []\n").unwrap_err();
        assert!(e[0].message.contains("repeated"));
        let e = parse("groups:\n- name: g\n  bogus: 1\n  rules: []\n").unwrap_err();
        assert!(e[0].message.contains("unknown field `bogus`"), "{e:?}");
        assert_eq!(e[0].line, Some(3));
        let e = parse("groups:\n- name: g\n  type: vlogs\n  rules: []\n").unwrap_err();
        assert!(e[0].message.contains("vlogs"));
    }

    #[test]
    fn logql_rules_must_be_metric_queries() {
        let d = Defaults::default();
        let ok = "groups:\n- name: g\n  rules:\n  - alert: Errors\n    expr: sum by (app) (rate({app=~\".+\"} |= \"error\" [5m])) > 0\n";
        assert!(parse_file("f", ok, Lang::LogQL, &d).is_ok());
        let bad = "groups:\n- name: g\n  rules:\n  - alert: Errors\n    expr: '{app=\"a\"} |= \"error\"'\n";
        let e = parse_file("f", bad, Lang::LogQL, &d).unwrap_err();
        assert!(e[0].message.contains("metric query"), "{e:?}");
    }

    #[test]
    fn yaml_output_leaves_out_unset_fields_and_vmalert_extras() {
        let g: GroupDesc =
            serde_yaml_ng::from_str("name: g\nconcurrency: 2\nrules:\n- alert: A\n  expr: up == 0\n  debug: true\n")
                .unwrap();
        let y = group_yaml(&g);
        assert_eq!(y, "name: g\nrules:\n- alert: A\n  expr: up == 0\n");
    }
}
