//! The ruler's HTTP APIs, so that Grafana, lokitool, mimirtool and scripts work unchanged:
//! - `GET /api/v1/rules`, `/api/v1/alerts`: the PromQL rules in Prometheus' exact JSON (where Grafana's
//!   Prometheus data source looks); `/prometheus/api/v1/rules`, `/prometheus/api/v1/alerts`: the LogQL
//!   rules (where its Loki data source looks).
//! - The Cortex-style config API: `/loki/api/v1/rules…` and `/api/prom/rules…` for LogQL rules (Grafana's
//!   Loki data source edits through the latter), `/config/v1/rules…` for PromQL rules. YAML in and out,
//!   202 `{"status":"success"}` on writes, 404 `no rule groups found` / `group does not exist`.
//! - `POST /-/reload`.
//!
//! The server mounts [`read_router`] under the `read` scope and [`admin_router`] under `admin`.

// Helpers fail with the finished error response; it is built once per failed request.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use store::model::Tenant;

use crate::Ruler;
use crate::group::GroupState;
use crate::rule::{Alert, Labels, RuleState};
use crate::rulefmt::{GroupDesc, Lang, MAX_FILE_BYTES, RuleKind};

/// Rules and alerts listings and reading the config API.
pub fn read_router(r: Ruler) -> Router {
    Router::new()
        .route("/api/v1/rules", get(prom_rules).post(prom_rules))
        .route("/api/v1/alerts", get(prom_alerts).post(prom_alerts))
        .route("/prometheus/api/v1/rules", get(loki_rules).post(loki_rules))
        .route("/prometheus/api/v1/alerts", get(loki_alerts).post(loki_alerts))
        .route("/loki/api/v1/rules", get(cfg_list_logql))
        .route("/api/prom/rules", get(cfg_list_logql))
        .route("/config/v1/rules", get(cfg_list_promql))
        .route("/loki/api/v1/rules/{ns}", get(cfg_ns_logql))
        .route("/api/prom/rules/{ns}", get(cfg_ns_logql))
        .route("/config/v1/rules/{ns}", get(cfg_ns_promql))
        .route("/loki/api/v1/rules/{ns}/{group}", get(cfg_group_logql))
        .route("/api/prom/rules/{ns}/{group}", get(cfg_group_logql))
        .route("/config/v1/rules/{ns}/{group}", get(cfg_group_promql))
        .with_state(r)
}

/// Writes through the config API, and reloads.
pub fn admin_router(r: Ruler) -> Router {
    Router::new()
        .route("/-/reload", post(reload).put(reload))
        .route("/loki/api/v1/rules/{ns}", post(cfg_post_logql).delete(cfg_del_ns_logql))
        .route("/api/prom/rules/{ns}", post(cfg_post_logql).delete(cfg_del_ns_logql))
        .route("/config/v1/rules/{ns}", post(cfg_post_promql).delete(cfg_del_ns_promql))
        .route("/loki/api/v1/rules/{ns}/{group}", axum::routing::delete(cfg_del_group_logql))
        .route("/api/prom/rules/{ns}/{group}", axum::routing::delete(cfg_del_group_logql))
        .route("/config/v1/rules/{ns}/{group}", axum::routing::delete(cfg_del_group_promql))
        .with_state(r)
}

fn tenant(h: &HeaderMap) -> Result<Tenant, Response> {
    query::http::tenant(h)
}

fn bad(msg: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"status": "error", "errorType": "bad_data", "error": msg.into()}).to_string(),
    )
        .into_response()
}

fn success(data: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json!({"status": "success", "data": data}).to_string())
        .into_response()
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`: `1e+00`, `1.5e+01`, `NaN`, `+Inf`.
pub fn go_e(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let s = format!("{v:e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

/// Go's RFC 3339 with nanoseconds (trailing zeros trimmed), UTC; the zero time when never.
fn rfc3339nano(ms: Option<i64>) -> String {
    match ms {
        None => "0001-01-01T00:00:00Z".to_string(),
        Some(ms) => {
            let s = crate::notify::rfc3339(ms);
            // "…:43.120Z" → "…:43.12Z", "…:43.000Z" → "…:43Z"
            match s.split_once('.') {
                Some((head, frac)) => {
                    let digits = frac.trim_end_matches('Z').trim_end_matches('0');
                    if digits.is_empty() { format!("{head}Z") } else { format!("{head}.{digits}Z") }
                }
                None => s,
            }
        }
    }
}

/// A float as Go's encoding/json writes it: whole numbers without a fraction (`0`, `60`).
fn go_num(v: f64) -> Value {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 { json!(v as i64) } else { json!(v) }
}

fn labels_json(l: &Labels) -> Value {
    Value::Object(l.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>())
}

fn alert_json(a: &Alert) -> Value {
    let mut m = Map::new();
    m.insert("labels".into(), labels_json(&a.labels));
    m.insert("annotations".into(), labels_json(&a.annotations));
    m.insert("state".into(), a.state.as_str().into());
    m.insert("activeAt".into(), rfc3339nano(Some(a.active_at)).into());
    if let Some(k) = a.keep_firing_since {
        m.insert("keepFiringSince".into(), rfc3339nano(Some(k)).into());
    }
    m.insert("value".into(), go_e(a.value).into());
    Value::Object(m)
}

/// The expression as the parser prints it back (Prometheus' `expr.String()`).
fn canonical(expr: &str, lang: Lang) -> String {
    match lang {
        Lang::PromQL => promql_parser::parser::parse(expr).map_or_else(|_| expr.to_string(), |e| e.to_string()),
        Lang::LogQL => query::logql::parse(expr).map_or_else(|_| expr.to_string(), |e| e.to_string()),
    }
}

fn rule_json(r: &RuleState, lang: Lang, with_alerts: bool) -> Value {
    let labels: Labels = r.spec.labels.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect();
    let mut m = Map::new();
    m.insert("name".into(), r.spec.name.clone().into());
    m.insert("query".into(), canonical(&r.spec.expr, lang).into());
    m.insert("labels".into(), labels_json(&labels));
    m.insert("health".into(), r.health.as_str().into());
    if !r.last_error.is_empty() {
        m.insert("lastError".into(), r.last_error.clone().into());
    }
    m.insert("evaluationTime".into(), go_num(r.eval_duration.as_secs_f64()));
    m.insert("lastEvaluation".into(), rfc3339nano(r.last_eval_ms).into());
    match &r.spec.kind {
        RuleKind::Recording => {
            m.insert("type".into(), "recording".into());
        }
        RuleKind::Alerting { hold, keep_firing_for, annotations } => {
            m.insert("state".into(), r.state().as_str().into());
            m.insert("duration".into(), go_num(hold.as_secs_f64()));
            m.insert("keepFiringFor".into(), go_num(keep_firing_for.as_secs_f64()));
            let ann: Labels = annotations.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect();
            m.insert("annotations".into(), labels_json(&ann));
            let alerts = if with_alerts {
                Value::Array(r.active_alerts().into_iter().map(alert_json).collect())
            } else {
                Value::Null
            };
            m.insert("alerts".into(), alerts);
            m.insert("type".into(), "alerting".into());
        }
    }
    Value::Object(m)
}

/// Request parameters from the query string and, for POST, a form body.
fn params(q: Option<&str>, body: &[u8]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> =
        form_urlencoded::parse(q.unwrap_or("").as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    v.extend(form_urlencoded::parse(body).map(|(k, v)| (k.into_owned(), v.into_owned())));
    v
}

/// Every value of `name` and of `name[]` (Grafana sends both forms; Prometheus reads one, Loki the other).
fn values(p: &[(String, String)], name: &str) -> Vec<String> {
    let bracket = format!("{name}[]");
    p.iter().filter(|(k, _)| k == name || *k == bracket).map(|(_, v)| v.clone()).collect()
}

fn group_token(g: &GroupState) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(format!("{};{}", g.spec.file, g.spec.name).as_bytes()))
}

fn rules_answer(ruler: &Ruler, h: &HeaderMap, q: Option<&str>, body: &[u8], lang: Lang) -> Result<Response, Response> {
    let t = tenant(h)?;
    let p = params(q, body);
    let (want_alert, want_record) = match p.iter().find(|(k, _)| k == "type").map(|(_, v)| v.as_str()) {
        None | Some("") => (true, true),
        Some("alert") => (true, false),
        Some("record") => (false, true),
        Some(other) => return Err(bad(format!("invalid parameter \"type\": not supported value {other:?}"))),
    };
    let names = values(&p, "rule_name");
    let groups_f = values(&p, "rule_group");
    let files = values(&p, "file");
    let exclude_alerts = match p.iter().find(|(k, _)| k == "exclude_alerts").map(|(_, v)| v.as_str()) {
        None | Some("") => false,
        Some("true" | "1" | "t" | "T" | "TRUE" | "True") => true,
        Some("false" | "0" | "f" | "F" | "FALSE" | "False") => false,
        Some(other) => {
            return Err(bad(format!("invalid parameter \"exclude_alerts\": cannot parse {other:?} as a bool")));
        }
    };
    let mut matcher_sets = Vec::new();
    for m in values(&p, "match") {
        let ms = query::promql::parse_selector(&m).map_err(|e| bad(format!("invalid parameter \"match[]\": {e}")))?;
        matcher_sets.push(ms);
    }
    let limit = match p.iter().find(|(k, _)| k == "group_limit").map(|(_, v)| v.as_str()) {
        None | Some("") => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(bad(format!("invalid parameter \"group_limit\": {v:?} is not a positive number"))),
        },
    };
    let token = p.iter().find(|(k, _)| k == "group_next_token").map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    if token.is_some() && limit.is_none() {
        return Err(bad(
            "invalid parameter \"group_next_token\": group_limit needs to be present in order to paginate over the groups",
        ));
    }
    let rule_filter = !(want_alert && want_record && names.is_empty() && matcher_sets.is_empty());
    let mut groups = ruler.groups(&t, lang);
    groups.sort_by(|a, b| (&a.spec.file, &a.spec.name).cmp(&(&b.spec.file, &b.spec.name)));
    let mut out = Vec::new();
    let mut started = token.is_none();
    let mut next_token = None;
    for g in &groups {
        if !started {
            if token.as_deref() == Some(group_token(g).as_str()) {
                started = true;
            } else {
                continue;
            }
        }
        if (!groups_f.is_empty() && !groups_f.contains(&g.spec.name))
            || (!files.is_empty() && !files.contains(&g.spec.file))
        {
            continue;
        }
        let rules: Vec<Value> = g
            .rules
            .iter()
            .filter(|r| if r.spec.is_alerting() { want_alert } else { want_record })
            .filter(|r| names.is_empty() || names.contains(&r.spec.name))
            .filter(|r| {
                matcher_sets.is_empty()
                    || matcher_sets.iter().any(|ms| {
                        let labels: Labels = r.spec.labels.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect();
                        ms.iter().all(|m| m.matches_labels(&labels))
                    })
            })
            .map(|r| rule_json(r, lang, !exclude_alerts))
            .collect();
        if rules.is_empty() && rule_filter {
            continue;
        }
        if let Some(l) = limit
            && out.len() == l
        {
            next_token = Some(group_token(g));
            break;
        }
        out.push(json!({
            "name": g.spec.name,
            "file": g.spec.file,
            "rules": rules,
            "interval": go_num(g.spec.interval.as_secs_f64()),
            "limit": g.spec.limit,
            "evaluationTime": go_num(g.eval_duration.as_secs_f64()),
            "lastEvaluation": rfc3339nano(g.last_eval_ms),
        }));
    }
    if !started {
        return Err(bad("invalid parameter \"group_next_token\": no group matches the token"));
    }
    let mut data = json!({ "groups": out });
    if let Some(t) = next_token {
        data["groupNextToken"] = t.into();
    }
    Ok(success(data))
}

fn alerts_answer(ruler: &Ruler, h: &HeaderMap, lang: Lang) -> Result<Response, Response> {
    let t = tenant(h)?;
    let mut alerts = Vec::new();
    for g in ruler.groups(&t, lang) {
        for r in &g.rules {
            alerts.extend(r.active_alerts().into_iter().map(alert_json));
        }
    }
    Ok(success(json!({ "alerts": alerts })))
}

async fn prom_rules(State(r): State<Ruler>, h: HeaderMap, RawQuery(q): RawQuery, body: Bytes) -> Response {
    rules_answer(&r, &h, q.as_deref(), &body, Lang::PromQL).unwrap_or_else(|e| e)
}
async fn loki_rules(State(r): State<Ruler>, h: HeaderMap, RawQuery(q): RawQuery, body: Bytes) -> Response {
    rules_answer(&r, &h, q.as_deref(), &body, Lang::LogQL).unwrap_or_else(|e| e)
}
async fn prom_alerts(State(r): State<Ruler>, h: HeaderMap) -> Response {
    alerts_answer(&r, &h, Lang::PromQL).unwrap_or_else(|e| e)
}
async fn loki_alerts(State(r): State<Ruler>, h: HeaderMap) -> Response {
    alerts_answer(&r, &h, Lang::LogQL).unwrap_or_else(|e| e)
}

async fn reload(State(r): State<Ruler>, _m: Method) -> Response {
    match r.reload().await {
        Ok(n) => (StatusCode::OK, format!("rules reloaded: {n} rules\n")).into_response(),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("reloading the rules failed; the rules in force stay:\n{e}\n"))
                .into_response()
        }
    }
}

// ----- config API -----

fn yaml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], body).into_response()
}

fn not_found(msg: &str) -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{msg}\n")).into_response()
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"status":"success","data":null,"errorType":"","error":""}"#,
    )
        .into_response()
}

/// Every group of the tenant in `lang`, by namespace (its file or config-API namespace).
fn namespaces(r: &Ruler, t: &Tenant, lang: Lang) -> BTreeMap<String, Vec<GroupDesc>> {
    let mut out: BTreeMap<String, Vec<GroupDesc>> = BTreeMap::new();
    for g in r.groups(t, lang) {
        out.entry(g.spec.file.clone()).or_default().push(g.spec.desc.clone());
    }
    out
}

fn check_name(s: &str) -> Result<(), Response> {
    if s.is_empty() || s == "." || s == ".." || s.contains('\0') || s.len() > 1024 {
        return Err(bad(format!("invalid namespace or group name {s:?}")));
    }
    Ok(())
}

fn list(r: &Ruler, h: &HeaderMap, lang: Lang, ns: Option<&str>) -> Result<Response, Response> {
    let t = tenant(h)?;
    let mut all = namespaces(r, &t, lang);
    if let Some(ns) = ns {
        all.retain(|k, _| k == ns);
    }
    if all.is_empty() {
        return Ok(not_found("no rule groups found"));
    }
    Ok(yaml(serde_yaml_ng::to_string(&all).unwrap_or_default()))
}

fn one_group(r: &Ruler, h: &HeaderMap, lang: Lang, ns: &str, group: &str) -> Result<Response, Response> {
    let t = tenant(h)?;
    let all = namespaces(r, &t, lang);
    match all.get(ns).and_then(|gs| gs.iter().find(|g| g.name == group)) {
        Some(g) => Ok(yaml(crate::rulefmt::group_yaml(g))),
        None => Ok(not_found("group does not exist")),
    }
}

async fn post_group(r: &Ruler, h: &HeaderMap, lang: Lang, ns: &str, body: &[u8]) -> Result<Response, Response> {
    let t = tenant(h)?;
    check_name(ns)?;
    if body.len() > MAX_FILE_BYTES {
        return Err(bad(format!("the rule group is {} bytes, over the limit of {MAX_FILE_BYTES}", body.len())));
    }
    let g: GroupDesc = serde_yaml_ng::from_slice(body).map_err(|e| bad(format!("unable to decode rule group: {e}")))?;
    check_name(&g.name)?;
    match r.put_group(&t, lang, ns, g).await {
        Ok(()) => Ok(accepted()),
        Err((400, e)) => Err(bad(e)),
        Err((_, e)) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()),
    }
}

async fn delete(r: &Ruler, h: &HeaderMap, lang: Lang, ns: &str, group: Option<&str>) -> Result<Response, Response> {
    let t = tenant(h)?;
    match r.delete_group(&t, lang, ns, group).await {
        Ok(true) => Ok(accepted()),
        Ok(false) if group.is_some() => Ok(not_found("group does not exist")),
        Ok(false) => Ok(not_found("no rule groups found")),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()),
    }
}

async fn cfg_list_logql(State(r): State<Ruler>, h: HeaderMap) -> Response {
    list(&r, &h, Lang::LogQL, None).unwrap_or_else(|e| e)
}
async fn cfg_list_promql(State(r): State<Ruler>, h: HeaderMap) -> Response {
    list(&r, &h, Lang::PromQL, None).unwrap_or_else(|e| e)
}
async fn cfg_ns_logql(State(r): State<Ruler>, h: HeaderMap, Path(ns): Path<String>) -> Response {
    list(&r, &h, Lang::LogQL, Some(&ns)).unwrap_or_else(|e| e)
}
async fn cfg_ns_promql(State(r): State<Ruler>, h: HeaderMap, Path(ns): Path<String>) -> Response {
    list(&r, &h, Lang::PromQL, Some(&ns)).unwrap_or_else(|e| e)
}
async fn cfg_group_logql(State(r): State<Ruler>, h: HeaderMap, Path((ns, g)): Path<(String, String)>) -> Response {
    one_group(&r, &h, Lang::LogQL, &ns, &g).unwrap_or_else(|e| e)
}
async fn cfg_group_promql(State(r): State<Ruler>, h: HeaderMap, Path((ns, g)): Path<(String, String)>) -> Response {
    one_group(&r, &h, Lang::PromQL, &ns, &g).unwrap_or_else(|e| e)
}
async fn cfg_post_logql(State(r): State<Ruler>, h: HeaderMap, Path(ns): Path<String>, body: Bytes) -> Response {
    post_group(&r, &h, Lang::LogQL, &ns, &body).await.unwrap_or_else(|e| e)
}
async fn cfg_post_promql(State(r): State<Ruler>, h: HeaderMap, Path(ns): Path<String>, body: Bytes) -> Response {
    post_group(&r, &h, Lang::PromQL, &ns, &body).await.unwrap_or_else(|e| e)
}
async fn cfg_del_ns_logql(State(r): State<Ruler>, h: HeaderMap, Path(ns): Path<String>) -> Response {
    delete(&r, &h, Lang::LogQL, &ns, None).await.unwrap_or_else(|e| e)
}
async fn cfg_del_ns_promql(State(r): State<Ruler>, h: HeaderMap, Path(ns): Path<String>) -> Response {
    delete(&r, &h, Lang::PromQL, &ns, None).await.unwrap_or_else(|e| e)
}
async fn cfg_del_group_logql(State(r): State<Ruler>, h: HeaderMap, Path((ns, g)): Path<(String, String)>) -> Response {
    delete(&r, &h, Lang::LogQL, &ns, Some(&g)).await.unwrap_or_else(|e| e)
}
async fn cfg_del_group_promql(State(r): State<Ruler>, h: HeaderMap, Path((ns, g)): Path<(String, String)>) -> Response {
    delete(&r, &h, Lang::PromQL, &ns, Some(&g)).await.unwrap_or_else(|e| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_go_does() {
        assert_eq!(go_e(1.0), "1e+00");
        assert_eq!(go_e(15.0), "1.5e+01");
        assert_eq!(go_e(0.25), "2.5e-01");
        assert_eq!(go_e(0.0), "0e+00");
        assert_eq!(go_e(1e100), "1e+100");
        assert_eq!(go_e(f64::NAN), "NaN");
        assert_eq!(go_e(f64::NEG_INFINITY), "-Inf");
        assert_eq!(rfc3339nano(None), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339nano(Some(1_643_114_203_120)), "2022-01-25T12:36:43.12Z");
        assert_eq!(rfc3339nano(Some(1_643_114_203_000)), "2022-01-25T12:36:43Z");
    }
}
