//! The ruler (issue 20): recording and alerting rules over PromQL and LogQL evaluated by a real server,
//! their output queried back, alerts in Prometheus' JSON, notifications to a local webhook receiver, the
//! config API Grafana and lokitool use, reload, and `for` state across kill -9. The comparisons with real
//! Prometheus, promtool and Alertmanager are in `ruler_peers.rs` (external tests).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::harness::{ServerProcess, TestServer, client, free_addr, test_config};

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A local HTTP receiver that keeps every JSON body POSTed to it.
pub struct Receiver {
    pub url: String,
    pub bodies: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let b = bodies.clone();
        let app = axum::Router::new().fallback(axum::routing::post(move |body: axum::body::Bytes| {
            let b = b.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                b.lock().push(v);
                "ok"
            }
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, bodies, task }
    }

    /// Waits until a body satisfies `f`; returns it.
    pub async fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.bodies.lock().iter().find(|v| f(v)) {
                return v.clone();
            }
            assert!(Instant::now() < deadline, "no {what} within {timeout:?}; got {:?}", self.bodies.lock());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Imports text-exposition samples stamped now.
pub async fn import(base: &str, tenant: &str, lines: &[(&str, f64)]) {
    let t = now_ms();
    let text: String = lines.iter().map(|(s, v)| format!("{s} {v} {t}\n")).collect();
    let r = client()
        .post(format!("{base}/api/v1/import/prometheus"))
        .header("X-Scope-OrgID", tenant)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(text)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "import: {}", r.text().await.unwrap());
}

pub async fn get_json(url: &str, tenant: &str) -> Value {
    let r = client().get(url).header("X-Scope-OrgID", tenant).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{url}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Polls `url` until `f` finds what it wants in the JSON answer.
pub async fn poll<T>(url: &str, tenant: &str, what: &str, timeout: Duration, f: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let v = get_json(url, tenant).await;
        if let Some(t) = f(&v) {
            return t;
        }
        assert!(Instant::now() < deadline, "{what} not seen within {timeout:?}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rule<'a>(rules: &'a Value, name: &str) -> Option<&'a Value> {
    rules["data"]["groups"]
        .as_array()?
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .find(|r| r["name"] == name)
}

const PROM_RULES: &str = r#"groups:
- name: lumen-test
  interval: 1s
  rules:
  - record: job:up:sum
    expr: sum by (job) (up)
  - alert: InstanceDown
    expr: up == 0
    for: 2s
    labels:
      severity: page
    annotations:
      summary: "{{ $labels.instance }} of {{ $labels.job }} is down ({{ $value }})"
  - alert: OnRecorded
    expr: job:up:sum < 2
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_record_alert_and_notify_a_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, PROM_RULES).unwrap();
    let hook = Receiver::start().await;
    let mut config = test_config(&dir.path().join("data"));
    config.ruler.rule_files = vec![dir.path().join("*.yaml").display().to_string()];
    config.ruler.notifier = vec![ruler::NotifierConfig {
        kind: ruler::NotifierKind::Webhook,
        url: hook.url.clone(),
        url_file: Default::default(),
        url_env: String::new(),
        bearer_token_file: Default::default(),
        send_resolved: true,
        group_wait: Duration::from_secs(1),
        group_interval: Duration::from_secs(1),
        repeat_interval: Duration::from_secs(3600),
    }];
    // And Slack-style messages (Slack, Mattermost, Discord's /slack) to the same receiver.
    let mut slack = config.ruler.notifier[0].clone();
    slack.kind = ruler::NotifierKind::Slack;
    config.ruler.notifier.push(slack);
    config.ruler.tenant_label = "tenant".into();
    let server = TestServer::start(config).await;
    let base = server.base.clone();
    import(&base, "default", &[("up{job=\"node\",instance=\"a\"}", 1.0), ("up{job=\"node\",instance=\"b\"}", 0.0)])
        .await;

    // Pending first (for: 2s), then firing.
    let rules_url = format!("{base}/api/v1/rules");
    poll(&rules_url, "default", "InstanceDown pending", Duration::from_secs(15), |v| {
        (rule(v, "InstanceDown")?["state"] == "pending").then_some(())
    })
    .await;
    let v = poll(&rules_url, "default", "InstanceDown firing", Duration::from_secs(15), |v| {
        (rule(v, "InstanceDown")?["state"] == "firing").then(|| v.clone())
    })
    .await;
    // Prometheus' JSON, field by field.
    let g = &v["data"]["groups"][0];
    assert_eq!(g["name"], "lumen-test");
    assert_eq!(g["file"], rules.display().to_string());
    assert_eq!(g["interval"], 1);
    assert_eq!(g["limit"], 0);
    assert!(g["evaluationTime"].is_number() && g["lastEvaluation"].as_str().unwrap().ends_with('Z'));
    let r = rule(&v, "InstanceDown").unwrap();
    assert_eq!(r["type"], "alerting");
    assert_eq!(r["health"], "ok");
    assert_eq!(r["query"], "up == 0");
    assert_eq!(r["duration"], 2);
    assert_eq!(r["keepFiringFor"], 0);
    assert_eq!(r["labels"], json!({"severity": "page"}));
    assert!(r.get("lastError").is_none(), "lastError is left out when healthy");
    let alerts = r["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0]["labels"],
        json!({"alertname": "InstanceDown", "instance": "b", "job": "node", "severity": "page"})
    );
    assert_eq!(alerts[0]["annotations"], json!({"summary": "b of node is down (0)"}));
    assert_eq!(alerts[0]["value"], "0e+00");
    assert_eq!(alerts[0]["state"], "firing");
    let rec = rule(&v, "job:up:sum").unwrap();
    assert_eq!(rec["type"], "recording");
    assert_eq!(rec["query"], "sum by (job) (up)");
    assert!(rec.get("alerts").is_none() && rec.get("state").is_none());
    // A later rule saw the recorded series of the same cycle.
    assert_eq!(rule(&v, "OnRecorded").unwrap()["state"], "firing");

    // The recorded series and ALERTS are in the metric store, queryable by PromQL.
    let q = server.promql("default", "job:up:sum", None).await;
    assert_eq!(q["data"]["result"][0]["metric"], json!({"__name__": "job:up:sum", "job": "node"}));
    assert_eq!(q["data"]["result"][0]["value"][1], "1");
    let q = server.promql("default", "ALERTS{alertname=\"InstanceDown\"}", None).await;
    assert_eq!(
        q["data"]["result"][0]["metric"],
        json!({"__name__": "ALERTS", "alertname": "InstanceDown", "alertstate": "firing", "instance": "b", "job": "node", "severity": "page"})
    );
    let q = server.promql("default", "ALERTS_FOR_STATE{alertname=\"InstanceDown\"}", None).await;
    assert_eq!(q["data"]["result"].as_array().unwrap().len(), 1, "{q}");
    // The alerts API.
    let a = get_json(&format!("{base}/api/v1/alerts"), "default").await;
    let names: Vec<&str> =
        a["data"]["alerts"].as_array().unwrap().iter().map(|a| a["labels"]["alertname"].as_str().unwrap()).collect();
    assert!(names.contains(&"InstanceDown") && names.contains(&"OnRecorded"), "{a}");
    // Another tenant sees none of it.
    let other = get_json(&format!("{base}/api/v1/rules"), "other").await;
    assert_eq!(other["data"]["groups"], json!([]));

    // The webhook got Alertmanager's payload.
    let firing = hook
        .wait_for("a firing InstanceDown notification", Duration::from_secs(10), |v| {
            v["groupLabels"]["alertname"] == "InstanceDown" && v["status"] == "firing"
        })
        .await;
    assert_eq!(firing["version"], "4");
    assert_eq!(firing["alerts"][0]["labels"]["instance"], "b");
    assert_eq!(firing["alerts"][0]["labels"]["tenant"], "default", "ruler.tenant_label on what is sent");
    assert_eq!(firing["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert!(firing["alerts"][0]["generatorURL"].as_str().unwrap().contains("/graph?g0.expr=up+%3D%3D+0"));

    // Back up: resolved in the API and notified as resolved.
    import(&base, "default", &[("up{job=\"node\",instance=\"b\"}", 1.0)]).await;
    poll(&format!("{base}/api/v1/alerts"), "default", "InstanceDown gone", Duration::from_secs(10), |v| {
        (!v["data"]["alerts"].as_array()?.iter().any(|a| a["labels"]["alertname"] == "InstanceDown")).then_some(())
    })
    .await;
    let resolved = hook
        .wait_for("a resolved InstanceDown notification", Duration::from_secs(10), |v| {
            v["groupLabels"]["alertname"] == "InstanceDown" && v["status"] == "resolved"
        })
        .await;
    assert_eq!(resolved["alerts"][0]["status"], "resolved");
    let slack = hook
        .wait_for("a Slack-style firing message", Duration::from_secs(10), |v| {
            v["text"].as_str().is_some_and(|t| t.contains("[FIRING:1] InstanceDown"))
        })
        .await;
    let text = slack["text"].as_str().unwrap();
    assert!(text.contains("instance=b job=node severity=page tenant=default: b of node is down (0)"), "{text}");
    hook.wait_for("a Slack-style resolved message", Duration::from_secs(10), |v| {
        v["text"].as_str().is_some_and(|t| t.contains("[RESOLVED] InstanceDown"))
    })
    .await;
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    // The ALERTS series went stale: no longer returned.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let q = server.promql("default", "ALERTS{alertname=\"InstanceDown\"}", None).await;
        if q["data"]["result"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "ALERTS still there: {q}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The ruler's own metrics.
    let m = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("lumen_ruler_evaluations_total{tenant=\"default\""), "{m}");
    assert!(m.contains("lumen_ruler_notifications_sent_total"), "{m}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_api_filters_and_pages_as_prometheus_and_grafana_ask() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    std::fs::write(&a, "groups:\n- name: g1\n  interval: 1s\n  rules:\n  - record: r1\n    expr: vector(1)\n  - alert: Page\n    expr: vector(1)\n    labels: {severity: page}\n").unwrap();
    std::fs::write(&b, "groups:\n- name: g2\n  interval: 1s\n  rules:\n  - alert: Ticket\n    expr: vector(1)\n    labels: {severity: ticket}\n").unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.ruler.rule_files = vec![dir.path().join("*.yaml").display().to_string()];
    let server = TestServer::start(config).await;
    let base = server.base.clone();
    poll(&format!("{base}/api/v1/alerts"), "default", "both alerts", Duration::from_secs(10), |v| {
        (v["data"]["alerts"].as_array()?.len() == 2).then_some(())
    })
    .await;
    let names = |v: &Value| -> Vec<String> {
        v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()))
            .collect()
    };
    let q = |params: &'static str| {
        let base = base.clone();
        async move { get_json(&format!("{base}/api/v1/rules?{params}"), "default").await }
    };
    assert_eq!(names(&q("").await), ["r1", "Page", "Ticket"]);
    assert_eq!(names(&q("type=alert").await), ["Page", "Ticket"]);
    assert_eq!(names(&q("type=record").await), ["r1"]);
    assert_eq!(names(&q("rule_name[]=Ticket&rule_name[]=r1").await), ["r1", "Ticket"]);
    assert_eq!(names(&q("rule_name=Ticket").await), ["Ticket"], "Grafana's bracket-less form");
    assert_eq!(names(&q("rule_group[]=g2").await), ["Ticket"]);
    let file = format!("file[]={}", urlenc(&a.display().to_string()));
    let v = get_json(&format!("{base}/api/v1/rules?{file}"), "default").await;
    assert_eq!(names(&v), ["r1", "Page"]);
    assert_eq!(names(&q("match[]=%7Bseverity%3D%22page%22%7D").await), ["Page"]);
    let v = q("exclude_alerts=true").await;
    assert!(v["data"]["groups"][0]["rules"][1]["alerts"].is_null(), "{v}");
    // Pages of one group.
    let p1 = q("group_limit=1").await;
    assert_eq!(names(&p1), ["r1", "Page"]);
    let token = p1["data"]["groupNextToken"].as_str().unwrap().to_string();
    let p2 = get_json(&format!("{base}/api/v1/rules?group_limit=1&group_next_token={token}"), "default").await;
    assert_eq!(names(&p2), ["Ticket"]);
    assert!(p2["data"].get("groupNextToken").is_none());
    for bad in [
        "type=bogus",
        "group_next_token=abc",
        "group_limit=1&group_next_token=abc",
        "exclude_alerts=maybe",
        "match[]=%7B",
    ] {
        let r = client().get(format!("{base}/api/v1/rules?{bad}")).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errorType"], "bad_data", "{bad}: {v}");
    }
    server.stop().await;
}

pub fn urlenc(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_series_are_also_remote_written_under_the_rules_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = TestServer::start(test_config(&dir.path().join("receiver"))).await;
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, "groups:\n- name: g\n  interval: 1s\n  rules:\n  - record: team:answer\n    expr: vector(42)\n    labels: {source: rule}\n").unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.ruler.tenant_rule_files = [("team-a".to_string(), vec![rules.display().to_string()])].into();
    config.ruler.remote_write_url = vec![format!("{}/api/v1/write", receiver.base)];
    let server = TestServer::start(config).await;
    // Stored locally, and at the receiver under the same tenant.
    for s in [&server, &receiver] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let q = s.promql("team-a", "team:answer", None).await;
            if q["data"]["result"].as_array().is_some_and(|r| !r.is_empty()) {
                assert_eq!(q["data"]["result"][0]["metric"], json!({"__name__": "team:answer", "source": "rule"}));
                assert_eq!(q["data"]["result"][0]["value"][1], "42");
                break;
            }
            assert!(Instant::now() < deadline, "{}: no team:answer: {q}", s.base);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let q = receiver.promql("default", "team:answer", None).await;
    assert_eq!(q["data"]["result"], json!([]), "not under another tenant");
    let m = client().get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("lumen_ruler_remote_write_samples_sent_total{target=\"http://127.0.0.1:"), "{m}");
    server.stop().await;
    receiver.stop().await;
}

const LOKI_RULES: &str = r#"groups:
- name: logs
  interval: 1s
  rules:
  - record: app:error_lines:1m
    expr: sum by (app) (count_over_time({app=~".+"} |= "error" [1m]))
  - alert: ErrorsHigh
    expr: sum by (app) (count_over_time({app=~".+"} |= "error" [1m])) > 2
    annotations:
      summary: "{{ $labels.app }} logged {{ $value }} errors in a minute"
"#;

async fn push_lines(base: &str, tenant: &str, app: &str, lines: &[&str]) {
    let ns = now_ms() as i128 * 1_000_000;
    let values: Vec<Value> = lines.iter().enumerate().map(|(i, l)| json!([(ns + i as i128).to_string(), l])).collect();
    let body = json!({"streams": [{"stream": {"app": app}, "values": values}]});
    let r = client()
        .post(format!("{base}/loki/api/v1/push"))
        .header("X-Scope-OrgID", tenant)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logql_rules_alert_on_errors_and_record_series_promql_reads() {
    let dir = tempfile::tempdir().unwrap();
    let loki = dir.path().join("loki-rules");
    std::fs::create_dir_all(loki.join("fake")).unwrap();
    std::fs::create_dir_all(loki.join("team-a")).unwrap();
    std::fs::write(loki.join("fake/errors.yaml"), LOKI_RULES).unwrap();
    std::fs::write(loki.join("team-a/errors.yaml"), LOKI_RULES).unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.ruler.loki_rules_dir = loki.clone();
    let server = TestServer::start(config).await;
    let base = server.base.clone();
    push_lines(&base, "default", "api", &["error: db down", "error: db down", "ok", "error: timeout", "error: x"])
        .await;
    push_lines(&base, "default", "web", &["error: once", "fine"]).await;
    push_lines(&base, "team-a", "web", &["error: once"]).await;

    let alerts =
        poll(&format!("{base}/prometheus/api/v1/alerts"), "default", "ErrorsHigh", Duration::from_secs(15), |v| {
            let a = v["data"]["alerts"].as_array()?;
            (!a.is_empty()).then(|| a.clone())
        })
        .await;
    assert_eq!(alerts.len(), 1, "only api crossed the threshold: {alerts:?}");
    assert_eq!(alerts[0]["labels"], json!({"alertname": "ErrorsHigh", "app": "api"}));
    assert_eq!(alerts[0]["annotations"]["summary"], "api logged 4 errors in a minute");
    // LogQL rules are listed where Grafana's Loki data source looks, not with the PromQL rules.
    let prom = get_json(&format!("{base}/api/v1/alerts"), "default").await;
    assert_eq!(prom["data"]["alerts"], json!([]));
    let rules = get_json(&format!("{base}/prometheus/api/v1/rules"), "default").await;
    assert_eq!(rules["data"]["groups"][0]["file"], "errors.yaml");
    assert_eq!(
        rule(&rules, "ErrorsHigh").unwrap()["query"],
        "sum by (app) (count_over_time({app=~\".+\"} |= \"error\" [1m])) > 2"
    );
    // The recording rule's series is a metric.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = server.promql("default", "app:error_lines:1m", None).await;
        let mut got: Vec<(String, String)> = q["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["metric"]["app"].as_str().unwrap().to_string(), s["value"][1].as_str().unwrap().to_string()))
            .collect();
        got.sort();
        if got == [("api".to_string(), "4".to_string()), ("web".to_string(), "1".to_string())] {
            break;
        }
        assert!(Instant::now() < deadline, "recorded series: {q}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // team-a's rules ran over team-a's logs only (its groups run on their own schedule: wait for them).
    let deadline = Instant::now() + Duration::from_secs(10);
    let q = loop {
        let q = server.promql("team-a", "app:error_lines:1m", None).await;
        if !q["data"]["result"].as_array().unwrap().is_empty() {
            break q;
        }
        assert!(Instant::now() < deadline, "team-a's recorded series: {q}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(q["data"]["result"].as_array().unwrap().len(), 1, "{q}");
    assert_eq!(q["data"]["result"][0]["metric"]["app"], "web");
    server.stop().await;
}

async fn req(method: reqwest::Method, url: &str, auth: Option<&str>, body: Option<&str>) -> (u16, String) {
    let mut r = client().request(method, url);
    if let Some(a) = auth {
        r = r.header("Authorization", format!("Bearer {a}"));
    }
    if let Some(b) = body {
        r = r.header("Content-Type", "application/yaml").body(b.to_string());
    }
    let resp = r.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_api_edits_rule_groups_as_grafana_and_lokitool_do() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let reader = crate::auth::make_token(&tokens, "team-a", "read");
    let admin = crate::auth::make_token(&tokens, "team-a", "admin,read");
    let mut config = test_config(&dir.path().join("data"));
    config.server.auth_file = tokens.clone();
    let server = TestServer::start(config.clone()).await;
    let base = server.base.clone();
    let group = "name: api-errors\ninterval: 1s\nrules:\n- alert: ApiErrors\n  expr: sum(count_over_time({app=\"api\"} |= \"error\" [1m])) > 0\n  for: 1m\n  labels:\n    severity: warn\n";
    use reqwest::Method;
    // Grafana's probe of an editable ruler: a 404 that says "group does not exist".
    let (s, t) = req(Method::GET, &format!("{base}/api/prom/rules/test/test"), Some(&reader), None).await;
    assert_eq!((s, t.trim()), (404, "group does not exist"));
    let (s, t) = req(Method::GET, &format!("{base}/api/prom/rules"), Some(&reader), None).await;
    assert_eq!((s, t.trim()), (404, "no rule groups found"));
    // Writes need the admin scope.
    assert_eq!(req(Method::POST, &format!("{base}/api/prom/rules/ns1"), None, Some(group)).await.0, 401);
    assert_eq!(req(Method::POST, &format!("{base}/api/prom/rules/ns1"), Some(&reader), Some(group)).await.0, 403);
    let (s, t) = req(Method::POST, &format!("{base}/api/prom/rules/ns1"), Some(&admin), Some(group)).await;
    assert_eq!(s, 202, "{t}");
    assert_eq!(serde_json::from_str::<Value>(&t).unwrap()["status"], "success");
    // Read back exactly, unset fields left out (Grafana decodes strictly).
    let (s, t) = req(Method::GET, &format!("{base}/loki/api/v1/rules/ns1/api-errors"), Some(&reader), None).await;
    assert_eq!(s, 200);
    assert_eq!(yaml(&t), yaml(group));
    let keys: Vec<String> = yaml(&t).as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["interval", "name", "rules"], "unset fields are left out: {t}");
    let (s, t) = req(Method::GET, &format!("{base}/api/prom/rules"), Some(&reader), None).await;
    assert_eq!(s, 200);
    assert_eq!(yaml(&t), json!({"ns1": [yaml(group)]}));
    // It runs, and Grafana's Loki data source lists it.
    let rules = get_authed(&format!("{base}/prometheus/api/v1/rules"), &reader).await;
    assert_eq!(rules["data"]["groups"][0]["file"], "ns1");
    assert_eq!(rules["data"]["groups"][0]["rules"][0]["name"], "ApiErrors");
    // A group that does not check is a 400 naming the problem; nothing changes.
    let bad = "name: broken\nrules:\n- alert: X\n  expr: 'sum(rate({app=\"a\"}[1m])'\n";
    let (s, t) = req(Method::POST, &format!("{base}/api/prom/rules/ns1"), Some(&admin), Some(bad)).await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("could not parse expression"), "{t}");
    let (s, t) = req(Method::POST, &format!("{base}/api/prom/rules/ns1"), Some(&admin), Some("name: [")).await;
    assert_eq!(s, 400);
    assert!(t.contains("unable to decode rule group"), "{t}");
    // Hostile YAML: 10,000 levels of nesting, and a billion-laughs of aliases: 400s, the server stays up.
    let deep = format!("name: g\nrules: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    let mut laughs = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (i, c) in ('b'..='i').enumerate() {
        let prev = (b'a' + i as u8) as char;
        laughs.push_str(&format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    laughs.push_str("name: g\nrules: []\n");
    for body in [deep, laughs] {
        let (s, t) = req(Method::POST, &format!("{base}/api/prom/rules/ns1"), Some(&admin), Some(&body)).await;
        assert_eq!(s, 400, "{t}");
    }
    assert_eq!(client().get(format!("{base}/ready")).send().await.unwrap().status(), 200);
    // PromQL groups through Mimir's path, apart from the LogQL ones.
    let pgroup = "name: up\nrules:\n- record: job:up:count\n  expr: count by (job) (up)\n";
    assert_eq!(req(Method::POST, &format!("{base}/config/v1/rules/infra"), Some(&admin), Some(pgroup)).await.0, 202);
    let prom = get_authed(&format!("{base}/api/v1/rules"), &reader).await;
    assert_eq!(prom["data"]["groups"][0]["name"], "up");
    assert_eq!(prom["data"]["groups"].as_array().unwrap().len(), 1);
    server.stop().await;

    // A group of a rule file is not the config API's to change.
    let loki = dir.path().join("loki-rules");
    std::fs::create_dir_all(loki.join("team-a")).unwrap();
    std::fs::write(
        loki.join("team-a/files.yaml"),
        "groups:\n- name: from-file\n  rules:\n  - record: x\n    expr: sum(count_over_time({a=\"b\"}[1m]))\n",
    )
    .unwrap();
    config.ruler.loki_rules_dir = loki;
    let server = TestServer::start(config.clone()).await;
    let base = server.base.clone();
    let (s, t) = req(
        Method::POST,
        &format!("{base}/api/prom/rules/files.yaml"),
        Some(&admin),
        Some("name: from-file\nrules: []\n"),
    )
    .await;
    assert_eq!(s, 400, "{t}");
    assert!(t.contains("comes from a rule file"), "{t}");
    server.stop().await;

    // Kept in the data directory across a restart.
    let server = TestServer::start(config).await;
    let base = server.base.clone();
    let (s, t) = req(Method::GET, &format!("{base}/api/prom/rules/ns1/api-errors"), Some(&reader), None).await;
    assert_eq!((s, yaml(&t)), (200, yaml(group)));
    let (s, _) = req(Method::DELETE, &format!("{base}/api/prom/rules/ns1/api-errors"), Some(&admin), None).await;
    assert_eq!(s, 202);
    let (s, t) = req(Method::GET, &format!("{base}/api/prom/rules/ns1/api-errors"), Some(&reader), None).await;
    assert_eq!((s, t.trim()), (404, "group does not exist"));
    let rules = get_authed(&format!("{base}/prometheus/api/v1/rules"), &reader).await;
    let files: Vec<&str> =
        rules["data"]["groups"].as_array().unwrap().iter().map(|g| g["file"].as_str().unwrap()).collect();
    assert_eq!(files, ["files.yaml"], "only the rule file's group is left");
    server.stop().await;
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}): {text}"))
}

async fn get_authed(url: &str, token: &str) -> Value {
    let r = client().get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_alert_state_and_a_broken_file_keeps_the_rules_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    let one = "groups:\n- name: g\n  interval: 1s\n  rules:\n  - alert: Long\n    expr: vector(1)\n    for: 1h\n";
    std::fs::write(&rules, one).unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.ruler.rule_files = vec![rules.display().to_string()];
    let server = TestServer::start(config).await;
    let base = server.base.clone();
    let active_at = poll(&format!("{base}/api/v1/alerts"), "default", "Long pending", Duration::from_secs(10), |v| {
        v["data"]["alerts"].as_array()?.first().map(|a| a["activeAt"].as_str().unwrap().to_string())
    })
    .await;
    // A second rule; the first keeps its alert, with the same activeAt.
    std::fs::write(&rules, format!("{one}  - record: one\n    expr: vector(1)\n")).unwrap();
    let (s, t) = req(reqwest::Method::POST, &format!("{base}/-/reload"), None, None).await;
    assert_eq!(s, 200, "{t}");
    let v = get_json(&format!("{base}/api/v1/rules"), "default").await;
    assert!(rule(&v, "one").is_some(), "{v}");
    let a = get_json(&format!("{base}/api/v1/alerts"), "default").await;
    assert_eq!(a["data"]["alerts"][0]["activeAt"].as_str().unwrap(), active_at);
    // A broken file: the reload fails, says where, and the rules in force stay.
    std::fs::write(&rules, "groups:\n- name: g\n  rules:\n  - alert: Bad\n    expr: sum(\n").unwrap();
    let (s, t) = req(reqwest::Method::POST, &format!("{base}/-/reload"), None, None).await;
    assert_eq!(s, 500);
    assert!(t.contains(":4: group \"g\", rule 1, \"Bad\": could not parse expression"), "{t}");
    let v = get_json(&format!("{base}/api/v1/rules"), "default").await;
    assert!(rule(&v, "Long").is_some() && rule(&v, "one").is_some());
    let m = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("lumen_ruler_config_last_reload_successful 0"), "{m}");
    server.stop().await;
}

#[test]
fn a_server_with_a_broken_rule_file_refuses_to_start_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, "groups:\n- name: g\n  rules:\n  - record: 'bad name'\n    expr: up\n").unwrap();
    let cfg = dir.path().join("lumen.toml");
    std::fs::write(&cfg, format!("[ruler]\nrule_files = [{:?}]\n", rules.display().to_string())).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["server", "--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rules.yaml:4: group \"g\", rule 1, \"bad name\": invalid recording rule name"), "{err}");
    // `lumen rules check` says the same, promtool-style.
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_lumen")).args(["rules", "check"]).arg(&rules).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAILED") && text.contains("invalid recording rule name"), "{text}");
}

/// kill -9 while an alert is pending with a long `for`: after the restart its `for` resumes where it was
/// (the downtime does not count, as in Prometheus), instead of starting again from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_state_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "groups:\n- name: g\n  interval: 1s\n  rules:\n  - alert: Slow\n    expr: vector(1)\n    for: 20s\n",
    )
    .unwrap();
    let cfg = dir.path().join("lumen.toml");
    std::fs::write(
        &cfg,
        format!("[ruler]\nrule_files = [{:?}]\nfor_grace_period = \"1s\"\n", rules.display().to_string()),
    )
    .unwrap();
    let addr = free_addr();
    let args = ["--config", cfg.to_str().unwrap()];
    let mut p = ServerProcess::spawn(&data, addr, &args);
    p.wait_ready().await;
    let base = p.base.clone();
    let parse = |s: &str| humantime::parse_rfc3339(s).unwrap().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let active_at = poll(&format!("{base}/api/v1/alerts"), "default", "Slow pending", Duration::from_secs(15), |v| {
        v["data"]["alerts"].as_array()?.first().map(|a| parse(a["activeAt"].as_str().unwrap()))
    })
    .await;
    // ALERTS_FOR_STATE is written once the rule is restored (after two cycles); let ten seconds of `for` pass.
    while now_ms() < active_at + 10_000 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let q = get_json(&format!("{base}/api/v1/query?query=ALERTS_FOR_STATE"), "default").await;
    assert_eq!(q["data"]["result"][0]["value"][1], (active_at / 1000).to_string(), "{q}");
    p.kill9();
    let killed = now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut p = ServerProcess::spawn(&data, addr, &args);
    p.wait_ready().await;
    let restarted = now_ms();
    // After the restore the alert is active since the old time plus the downtime.
    let restored = poll(&format!("{base}/api/v1/alerts"), "default", "Slow restored", Duration::from_secs(15), |v| {
        let a = v["data"]["alerts"].as_array()?.first()?;
        let t = parse(a["activeAt"].as_str().unwrap());
        (t < restarted - 1_000).then_some(t)
    })
    .await;
    let downtime = restarted - killed;
    assert!(
        // The restore runs after two cycles, and the last sample before the kill may be a cycle old.
        (restored - (active_at + downtime)).abs() <= 4_500,
        "activeAt {restored} should be the old {active_at} plus about the downtime {downtime}"
    );
    let fired = poll(&format!("{base}/api/v1/alerts"), "default", "Slow firing", Duration::from_secs(20), |v| {
        (v["data"]["alerts"].as_array()?.first()?["state"] == "firing").then(now_ms)
    })
    .await;
    // Kept state: about 10 s of `for` were left. Lost state would take 20 s and more.
    assert!(fired < restarted + 16_000, "fired {} ms after the restart: the for state was lost", fired - restarted);
    assert!(fired >= restored + 20_000 - 1_500, "fired before its for had passed");
    p.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_group_still_waiting_is_sent_once_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, "groups:\n- name: g\n  interval: 1s\n  rules:\n  - alert: Now\n    expr: vector(1)\n")
        .unwrap();
    let hook = Receiver::start().await;
    let cfg = dir.path().join("lumen.toml");
    // A group wait of an hour: only the shutdown can send this group.
    std::fs::write(
        &cfg,
        format!(
            "[ruler]\nrule_files = [{:?}]\n[[ruler.notifier]]\ntype = \"webhook\"\nurl = {:?}\ngroup_wait = \"1h\"\n",
            rules.display().to_string(),
            hook.url
        ),
    )
    .unwrap();
    let mut p = ServerProcess::spawn(&dir.path().join("data"), free_addr(), &["--config", cfg.to_str().unwrap()]);
    p.wait_ready().await;
    let base = p.base.clone();
    poll(&format!("{base}/api/v1/alerts"), "default", "Now firing", Duration::from_secs(15), |v| {
        (v["data"]["alerts"].as_array()?.first()?["state"] == "firing").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(hook.bodies.lock().is_empty(), "sent before its group wait: {:?}", hook.bodies.lock());
    tokio::task::block_in_place(|| p.terminate());
    let bodies = hook.bodies.lock().clone();
    assert_eq!(bodies.len(), 1, "one notification at shutdown: {bodies:?}");
    assert_eq!(bodies[0]["status"], "firing");
    assert_eq!(bodies[0]["alerts"][0]["labels"]["alertname"], "Now");
}
