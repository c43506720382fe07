//! deploy/grafana: the provisioned data sources (sending Lumen's token), and dashboards whose every query
//! parses with Lumen's own LogQL and PromQL parsers once Grafana's variables are substituted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::yaml::yaml_file;

const LOGS_UID: &str = "lumen-logs";
const METRICS_UID: &str = "lumen-metrics";
const DASHBOARDS: [&str; 4] = ["kubernetes-logs.json", "lumen-health.json", "mqtt-devices.json", "nodes-and-pods.json"];
/// Grafana's interval variables, all substituted by one duration.
const INTERVALS: [&str; 4] = ["__auto", "__rate_interval", "__interval", "__range"];

fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana")
}

/// The query language of a data source: `loki` or `prometheus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    LogQL,
    PromQL,
}

/// One query found in a dashboard, with the outcome of parsing it.
#[derive(Debug)]
pub struct Checked {
    pub dashboard: String,
    pub place: String,
    pub lang: Lang,
    pub expr: String,
    pub substituted: String,
    pub result: Result<(), String>,
}

/// Replaces Grafana's variables: interval variables by `5m`, every other `$name`, `${name}` or `${name:fmt}` by
/// `.+`. Returns the text, the names of the other variables, and an error if one of them stands outside a quoted
/// string (it must only be used inside regex matchers and line filters).
fn substitute(expr: &str) -> (String, BTreeSet<String>, Result<(), String>) {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len());
    let mut vars = BTreeSet::new();
    let mut outcome = Ok(());
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == '\\' && q != '`' && i + 1 < chars.len() {
                out.push(c);
                out.push(chars[i + 1]);
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            quote = Some(c);
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        // `$name`, `${name}` or `${name:format}`.
        let (name, end) = if chars.get(i + 1) == Some(&'{') {
            match chars[i + 2..].iter().position(|&c| c == '}') {
                Some(len) => {
                    let inner: String = chars[i + 2..i + 2 + len].iter().collect();
                    let name = inner.split(':').next().unwrap_or_default().to_string();
                    (name, i + 3 + len)
                }
                None => (String::new(), i + 1),
            }
        } else {
            let len = chars[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').count();
            (chars[i + 1..i + 1 + len].iter().collect(), i + 1 + len)
        };
        if name.is_empty() {
            // A regex end anchor and the like.
            out.push(c);
            i += 1;
            continue;
        }
        if INTERVALS.contains(&name.as_str()) {
            out.push_str("5m");
        } else {
            if quote.is_none() && outcome.is_ok() {
                outcome = Err(format!("variable ${name} outside a quoted string"));
            }
            out.push_str(".+");
            vars.insert(name);
        }
        i = end;
    }
    (out, vars, outcome)
}

fn parse(lang: Lang, text: &str) -> Result<(), String> {
    match lang {
        Lang::LogQL => query::logql::parse(text).map(drop).map_err(|e| e.to_string()),
        Lang::PromQL => query::promql::parse(text).map(drop).map_err(|e| e.to_string()),
    }
}

/// The language of a data source reference `{"type": .., "uid": ..}`, given the dashboard's data source
/// variables. Err for anything that is not one of Lumen's two data sources.
fn datasource_lang(ds: &Value, ds_vars: &BTreeMap<String, Lang>) -> Result<Lang, String> {
    let uid = ds.get("uid").and_then(Value::as_str).ok_or_else(|| format!("data source without a uid: {ds}"))?;
    let by_uid = match uid {
        LOGS_UID => Lang::LogQL,
        METRICS_UID => Lang::PromQL,
        _ => {
            let name = uid.trim_start_matches('$').trim_start_matches('{').trim_end_matches('}');
            let name = name.split(':').next().unwrap_or_default();
            return match ds_vars.get(name) {
                Some(lang) if uid.starts_with('$') => Ok(*lang),
                _ => Err(format!("data source uid {uid:?} is neither {LOGS_UID} nor {METRICS_UID}")),
            };
        }
    };
    let want = if by_uid == Lang::LogQL { "loki" } else { "prometheus" };
    match ds.get("type").and_then(Value::as_str) {
        None => Ok(by_uid),
        Some(t) if t == want => Ok(by_uid),
        Some(t) => Err(format!("data source {uid} has type {t}, expected {want}")),
    }
}

/// `label_values(label)` or `label_values(selector, label)`: the selector, if any.
fn label_values_selector(q: &str) -> Result<Option<&str>, String> {
    let inner = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("variable query {q:?} is not label_values(...)"))?;
    let (selector, label) = match inner.rfind(',') {
        Some(at) => (Some(inner[..at].trim()), inner[at + 1..].trim()),
        None => (None, inner.trim()),
    };
    let ident = !label.is_empty()
        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !label.starts_with(|c: char| c.is_ascii_digit());
    if !ident {
        return Err(format!("variable query {q:?}: {label:?} is not a label name"));
    }
    Ok(selector)
}

fn panels_of(panels: &[Value], out: &mut Vec<Value>) {
    for p in panels {
        out.push(p.clone());
        if let Some(nested) = p.get("panels").and_then(Value::as_array) {
            panels_of(nested, out);
        }
    }
}

fn dashboard_files() -> Vec<PathBuf> {
    let dir = grafana_dir().join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// Checks the structure of every dashboard (panics on the first problem) and returns every query with the
/// outcome of parsing it.
pub fn checked_queries() -> Vec<Checked> {
    let files = dashboard_files();
    let names: BTreeSet<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in DASHBOARDS {
        assert!(names.contains(want), "dashboards/{want} is missing (found {names:?})");
    }
    let mut uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let mut checked = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        let d: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{name}: no uid"));
        let title = d["title"].as_str().unwrap_or_else(|| panic!("{name}: no title"));
        assert!(!uid.is_empty() && uid.len() <= 40, "{name}: uid {uid:?} must be 1 to 40 characters");
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} used twice");
        assert!(titles.insert(title.to_string()), "{name}: title {title} used twice");
        assert!(d["id"].is_null(), "{name}: a provisioned dashboard has no id");
        assert_eq!(d["schemaVersion"], 39, "{name}");
        assert!(d["tags"].as_array().unwrap().contains(&Value::from("lumen")), "{name}: tag lumen");
        assert_eq!(d["time"]["from"], "now-6h", "{name}");
        assert_eq!(d["refresh"], "30s", "{name}");

        // Template variables: data source variables, and the queries of query variables.
        let vars = d["templating"]["list"].as_array().cloned().unwrap_or_default();
        let mut ds_vars = BTreeMap::new();
        for v in &vars {
            if v["type"] == "datasource" {
                let lang = match v["query"].as_str() {
                    Some("loki") => Lang::LogQL,
                    Some("prometheus") => Lang::PromQL,
                    other => panic!("{name}: data source variable of type {other:?}"),
                };
                ds_vars.insert(v["name"].as_str().unwrap().to_string(), lang);
            }
        }
        let defined: BTreeSet<String> = vars.iter().filter_map(|v| v["name"].as_str().map(str::to_string)).collect();
        let check_vars = |used: &BTreeSet<String>, place: &str| {
            for var in used {
                assert!(defined.contains(var), "{name}: {place} uses ${var}, which the dashboard does not define");
            }
        };
        for v in &vars {
            if v["type"] != "query" {
                continue;
            }
            let var = v["name"].as_str().unwrap();
            let lang = datasource_lang(&v["datasource"], &ds_vars).unwrap_or_else(|e| panic!("{name}: ${var}: {e}"));
            let q = match &v["query"] {
                Value::String(s) => s.clone(),
                Value::Object(o) => o.get("query").and_then(Value::as_str).unwrap_or_default().to_string(),
                _ => panic!("{name}: ${var}: no query"),
            };
            let place = format!("variable ${var}");
            let selector = label_values_selector(&q).unwrap_or_else(|e| panic!("{name}: {place}: {e}"));
            if let Some(selector) = selector {
                let (substituted, used, quoted) = substitute(selector);
                check_vars(&used, &place);
                let result = quoted.and_then(|()| match lang {
                    Lang::LogQL => parse(lang, &substituted),
                    Lang::PromQL => query::promql::parse_selector(&substituted).map(drop).map_err(|e| e.to_string()),
                });
                checked.push(Checked {
                    dashboard: name.clone(),
                    place,
                    lang,
                    expr: selector.to_string(),
                    substituted,
                    result,
                });
            }
        }

        // Panels, rows' nested panels included.
        let mut panels = Vec::new();
        panels_of(d["panels"].as_array().unwrap_or_else(|| panic!("{name}: no panels")), &mut panels);
        let mut ids = BTreeSet::new();
        for p in &panels {
            let title = p["title"].as_str().unwrap_or_default();
            let id = p["id"].as_u64().unwrap_or_else(|| panic!("{name}: panel {title:?} has no id"));
            assert!(ids.insert(id), "{name}: panel id {id} used twice");
            assert!(p["gridPos"].is_object(), "{name}: panel {title:?} has no gridPos");
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if p["type"] == "row" || targets.is_empty() {
                continue;
            }
            let panel_ds = &p["datasource"];
            assert!(panel_ds.is_object(), "{name}: panel {title:?} has queries but no data source");
            // The dashboard's own data source reuses another panel's results: there is no query to check.
            if panel_ds["uid"] == "-- Dashboard --" {
                continue;
            }
            let panel_lang =
                datasource_lang(panel_ds, &ds_vars).unwrap_or_else(|e| panic!("{name}: panel {title:?}: {e}"));
            for t in &targets {
                let lang = match t.get("datasource") {
                    Some(ds) if ds.is_object() => {
                        datasource_lang(ds, &ds_vars).unwrap_or_else(|e| panic!("{name}: panel {title:?}: {e}"))
                    }
                    _ => panel_lang,
                };
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: panel {title:?}: target without expr"))
                    .to_string();
                let place = format!("panel {title:?} {}", t["refId"].as_str().unwrap_or("?"));
                let (substituted, used, quoted) = substitute(&expr);
                check_vars(&used, &place);
                let result = quoted.and_then(|()| parse(lang, &substituted));
                checked.push(Checked { dashboard: name.clone(), place, lang, expr, substituted, result });
            }
        }
    }
    checked
}

#[test]
fn dashboard_queries_parse() {
    let checked = checked_queries();
    let failures: Vec<String> = checked
        .iter()
        .filter_map(|c| {
            let e = c.result.as_ref().err()?;
            Some(format!(
                "{} {} ({:?}): {}\n    {}\n    as parsed: {}",
                c.dashboard, c.place, c.lang, e, c.expr, c.substituted
            ))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} queries do not parse:\n{}",
        failures.len(),
        checked.len(),
        failures.join("\n")
    );
    for dashboard in DASHBOARDS {
        assert!(checked.iter().any(|c| c.dashboard == dashboard), "{dashboard} has no queries");
    }
    assert!(checked.iter().any(|c| c.lang == Lang::LogQL) && checked.iter().any(|c| c.lang == Lang::PromQL));
}

#[test]
fn the_mqtt_dashboard_lists_only_mqtt_devices() {
    // node_exporter's disk and network series carry a `device` label too: the MQTT dashboard's device list and
    // every query that selects by device keep to what came over MQTT, which carries source="mqtt".
    let text = std::fs::read_to_string(grafana_dir().join("dashboards/mqtt-devices.json")).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    let vars = d["templating"]["list"].as_array().unwrap();
    let device = vars.iter().find(|v| v["name"] == "device").expect("a device variable");
    assert_eq!(device["query"], r#"label_values({source="mqtt"}, device)"#);
    let checked = checked_queries();
    let by_device: Vec<&Checked> =
        checked.iter().filter(|c| c.dashboard == "mqtt-devices.json" && c.expr.contains("$device")).collect();
    assert!(by_device.len() >= 3, "the dashboard's queries by device: {by_device:?}");
    for c in by_device {
        assert!(c.expr.contains(r#"source="mqtt""#), "{} selects devices beyond MQTT: {}", c.place, c.expr);
    }
}

#[test]
fn variable_substitution() {
    let (s, vars, ok) =
        substitute(r#"sum by (x) (count_over_time({ns=~"$namespace", pod=~"${pod:regex}"} [$__auto]))"#);
    assert_eq!(s, r#"sum by (x) (count_over_time({ns=~".+", pod=~".+"} [5m]))"#);
    assert_eq!(vars.into_iter().collect::<Vec<_>>(), ["namespace", "pod"]);
    assert!(ok.is_ok());
    let (s, _, ok) = substitute(r#"rate(m{a="x$"}[$__rate_interval]) > $threshold"#);
    assert_eq!(s, r#"rate(m{a="x$"}[5m]) > .+"#);
    assert!(ok.is_err());
}

#[test]
fn parsers_reject_broken_queries() {
    // The check above is only worth something if the parsers say no.
    assert!(parse(Lang::LogQL, r#"sum by (level) (count_over_time({namespace=~".+"} [5m])"#).is_err());
    assert!(parse(Lang::LogQL, r#"{namespace=~".+"} |~ "(" "#).is_err());
    assert!(parse(Lang::PromQL, "rate(up[5m]").is_err());
    assert!(parse(Lang::PromQL, "histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) by").is_err());
    // An empty line filter (the Logs panel's search box left empty) is fine.
    assert!(parse(Lang::LogQL, r#"{namespace=~".+"} |~ """#).is_ok());
}

#[test]
fn provisioning_names_both_data_sources_and_the_dashboards() {
    let ds = yaml_file(&grafana_dir().join("provisioning/datasources/lumen.yaml"));
    assert_eq!(ds["apiVersion"], 1);
    let list = ds["datasources"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let find = |t: &str| list.iter().find(|d| d["type"] == t).unwrap_or_else(|| panic!("no {t} data source"));
    let (logs, metrics) = (find("loki"), find("prometheus"));
    assert_eq!((&logs["uid"], &logs["name"]), (&Value::from(LOGS_UID), &Value::from("Lumen Logs")));
    assert_eq!((&metrics["uid"], &metrics["name"]), (&Value::from(METRICS_UID), &Value::from("Lumen Metrics")));
    for d in [logs, metrics] {
        assert_eq!(d["url"], "http://lumen:9700");
        // Lumen requires a token: basic auth with the tenant as user and the token, which Grafana expands
        // from its environment (Compose gives it LUMEN_AUTH_TOKEN from .env), so it is in no file.
        assert_eq!(d["basicAuth"], true, "{}: basic auth", d["name"]);
        assert_eq!(d["basicAuthUser"], "default", "{}: the tenant", d["name"]);
        assert_eq!(d["secureJsonData"]["basicAuthPassword"], "$LUMEN_AUTH_TOKEN", "{}: the token", d["name"]);
    }
    let compose = yaml_file(&grafana_dir().join("../compose/docker-compose.yml"));
    let env = &compose["services"]["grafana"]["environment"]["LUMEN_AUTH_TOKEN"];
    assert!(env.as_str().is_some_and(|v| v.starts_with("${LUMEN_AUTH_TOKEN")), "Compose's Grafana lacks the token");
    assert_eq!(metrics["isDefault"], true);
    assert_ne!(logs["isDefault"], true);
    assert_eq!(logs["jsonData"]["maxLines"], 1000);
    assert_eq!(metrics["jsonData"]["httpMethod"], "POST");
    assert_eq!(metrics["jsonData"]["prometheusType"], "Prometheus");
    assert_eq!(metrics["jsonData"]["timeInterval"], "15s");

    let providers = yaml_file(&grafana_dir().join("provisioning/dashboards/lumen.yaml"));
    assert_eq!(providers["apiVersion"], 1);
    let p = &providers["providers"][0];
    assert_eq!(p["type"], "file");
    assert_eq!(p["folder"], "Lumen");
    assert_eq!(p["options"]["path"], "/var/lib/grafana/dashboards");
}
