//! The ruler against real peers (issue 20), all from Debian and installed by `scripts/test`: the same rules
//! and data in Prometheus 2.42 and in Lumen give the same rules API, alerts, `ALERTS` and recorded series;
//! a real Alertmanager 0.25 receives the firing and then the resolved alert and tells its webhook receiver;
//! `promtool check rules` and `lumen rules check` agree on valid and broken files, and `promtool test
//! rules` and `lumen rules test` on unit-test files.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wire::prom::{OwnedSeries, Sample, encode_write_request};

use crate::harness::{TestServer, client, free_addr, test_config};
use crate::prometheus_compare::Prometheus;
use crate::ruler::{Receiver, get_json, import, now_ms, poll, urlenc};

const RULES: &str = r#"groups:
- name: compare
  interval: 1s
  rules:
  - record: job:http_requests:rate5m
    expr: sum by (job, code) (rate(http_requests_total[5m]))
  - record: job:http_errors:ratio
    expr: sum by (job) (job:http_requests:rate5m{code="500"}) / sum by (job) (job:http_requests:rate5m)
  - alert: HighErrorRatio
    expr: job:http_errors:ratio > 0.1
    labels:
      severity: '{{ if gt $value 0.5 }}critical{{ else }}warning{{ end }}'
    annotations:
      summary: 'Error ratio of {{ $labels.job }} is {{ $value | humanizePercentage }}'
  - alert: InstanceDown
    expr: up == 0
    for: 1h
    labels:
      severity: page
    annotations:
      description: '{{ $labels.instance }} of {{ $labels.job }} is down ({{ printf "%.1f" $value }})'
  - alert: Hot
    expr: temperature > 30
    keep_firing_for: 5m
    annotations:
      summary: '{{ $labels.room }} at {{ humanize $value }} degrees; {{ with query "count(temperature)" }}{{ . | first | value }}{{ end }} rooms'
  - alert: Never
    expr: up > 5
- name: second
  interval: 1s
  rules:
  - alert: FiringSeen
    expr: count(ALERTS{alertstate="firing"}) > 0
"#;

/// Linear counters and constant gauges from ten minutes ago to three minutes ahead, so every rate over
/// 5m is the same at any evaluation time during the test, in both systems.
fn workload() -> Vec<OwnedSeries> {
    let now = now_ms() / 15_000 * 15_000;
    let times: Vec<i64> = (-40..=12).map(|i| now + i * 15_000).collect();
    let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    let series = |labels: Vec<(String, String)>, f: &dyn Fn(usize) -> f64| -> OwnedSeries {
        (labels, times.iter().enumerate().map(|(i, &t)| Sample { t, v: f(i) }).collect())
    };
    vec![
        series(l(&[("__name__", "http_requests_total"), ("job", "api"), ("code", "200"), ("instance", "x")]), &|i| {
            1e4 + 120.0 * i as f64
        }),
        series(l(&[("__name__", "http_requests_total"), ("job", "api"), ("code", "500"), ("instance", "x")]), &|i| {
            1e4 + 30.0 * i as f64
        }),
        series(l(&[("__name__", "http_requests_total"), ("job", "web"), ("code", "200"), ("instance", "y")]), &|i| {
            5e3 + 15.0 * i as f64
        }),
        series(l(&[("__name__", "up"), ("job", "node"), ("instance", "a")]), &|_| 1.0),
        series(l(&[("__name__", "up"), ("job", "node"), ("instance", "b")]), &|_| 0.0),
        series(l(&[("__name__", "temperature"), ("room", "attic")]), &|_| 31.25),
        series(l(&[("__name__", "temperature"), ("room", "cellar")]), &|_| 14.5),
    ]
}

async fn write(base: &str, body: &[u8]) {
    let r = client()
        .post(format!("{base}/api/v1/write"))
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(status.is_success(), "{base}: {status} {}", r.text().await.unwrap());
}

/// An RFC 3339 time as Unix ms: Prometheus' `activeAt` carries its evaluation instant to the nanosecond
/// (its group phase is a hash modulo the interval in ns), Lumen's to the millisecond it evaluates at;
/// both evaluate their queries at the same millisecond.
fn unix_ms(rfc3339: &Value) -> i64 {
    let t = humantime::parse_rfc3339(rfc3339.as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// What must agree of a rule: everything but the timing fields of the rule itself (how long and when
/// on the wall clock it ran); alerts' `activeAt` to the ms; values as numbers.
fn rule_view(r: &Value) -> Value {
    let mut m = r.as_object().unwrap().clone();
    for k in ["evaluationTime", "lastEvaluation", "keepFiringFor"] {
        m.remove(k);
    }
    if let Some(Value::Array(alerts)) = m.get_mut("alerts") {
        for a in alerts.iter_mut() {
            let o = a.as_object_mut().unwrap();
            let at = unix_ms(&o["activeAt"]);
            o.insert("activeAt".into(), json!(at));
            let v: f64 = o["value"].as_str().unwrap().parse().unwrap();
            o.insert("value".into(), json!(format!("{v:.9}")));
        }
        alerts.sort_by_key(|a| a["labels"].to_string());
    }
    Value::Object(m)
}

fn rules_view(v: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for g in v["data"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            out.insert(format!("{}/{}", g["name"].as_str().unwrap(), r["name"].as_str().unwrap()), rule_view(r));
        }
    }
    out
}

async fn series_set(base: &str, q: &str) -> BTreeMap<String, String> {
    let v = get_json(&format!("{base}/api/v1/query?query={}", urlenc(q)), "default").await;
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
            (s["metric"].to_string(), format!("{v:.9}"))
        })
        .collect()
}

fn settled(v: &Value) -> bool {
    let view = rules_view(v);
    let state = |k: &str| view.get(k).map(|r| r["state"].as_str().unwrap_or("").to_string());
    state("compare/HighErrorRatio").as_deref() == Some("firing")
        && state("compare/InstanceDown").as_deref() == Some("pending")
        && state("compare/Hot").as_deref() == Some("firing")
        && state("second/FiringSeen").as_deref() == Some("firing")
        // Steady: FiringSeen counts the ALERTS of HighErrorRatio, Hot and itself (each written once its
        // rule was restored, after two cycles).
        && view["second/FiringSeen"]["alerts"][0]["value"] == "3.000000000"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_alerts_and_recorded_series_agree_with_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    // Both systems run each group at the same phase of its 1 s interval (Prometheus' hash of file and
    // name). A file path whose two groups are at least 300 ms apart, so "second" always runs after
    // "compare" has written, in both.
    let phase = |file: &str, group: &str| ruler::group::prometheus_group_offset_ms(file, group, 1000);
    let circular = |a: i64, b: i64| (a - b).rem_euclid(1000).min((b - a).rem_euclid(1000));
    let rules = (0..)
        .map(|i| dir.path().join(format!("r{i}.yaml")))
        .find(|f| {
            let f = f.display().to_string();
            circular(phase(&f, "compare"), phase(&f, "second")) >= 300
        })
        .unwrap();
    let phases = [phase(&rules.display().to_string(), "compare"), phase(&rules.display().to_string(), "second")];
    std::fs::write(&rules, RULES).unwrap();
    let prom = Prometheus::start_with(
        &dir.path().join("prom"),
        &format!("rule_files:\n- {}\nscrape_configs: []\n", rules.display()),
    )
    .await;
    let mut config = test_config(&dir.path().join("lumen"));
    config.ruler.rule_files = vec![rules.display().to_string()];
    let lumen = TestServer::start(config).await;
    let body = encode_write_request(&workload());
    // Write at the phase furthest from both groups' ticks, so the data lands between the same two
    // evaluations in both systems and every alert becomes active at the same instant.
    let target = (0..1000).step_by(10).max_by_key(|&p| phases.iter().map(|&o| circular(p, o)).min().unwrap()).unwrap();
    let wait = (target - now_ms().rem_euclid(1000)).rem_euclid(1000);
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    for base in [&prom.base, &lumen.base] {
        write(base, &body).await;
    }
    // Both settle: the same states, ALERTS written (after the restore of the second cycle).
    let mut views = Vec::new();
    for base in [&prom.base, &lumen.base] {
        let v = poll(&format!("{base}/api/v1/rules"), "default", "settled rules", Duration::from_secs(30), |v| {
            settled(v).then(|| v.clone())
        })
        .await;
        views.push(v);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = series_set(&prom.base, "ALERTS").await;
        let l = series_set(&lumen.base, "ALERTS").await;
        if !p.is_empty() && p == l {
            break;
        }
        assert!(Instant::now() < deadline, "ALERTS differ:\nprometheus {p:#?}\nlumen {l:#?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (p, l) = (rules_view(&views[0]), rules_view(&views[1]));
    assert_eq!(p.keys().collect::<Vec<_>>(), l.keys().collect::<Vec<_>>());
    for (k, pv) in &p {
        let lv = &l[k];
        // Every field Prometheus has, Lumen has with the same value; except that FiringSeen, which reads
        // the ALERTS another group writes, may become active one interval apart: the two groups tick at
        // fixed phases of the same 1 s interval, and on a loaded machine the writing group's evaluation can
        // slip past the reading group's tick in either system (Prometheus' groups race the same way).
        for (field, want) in pv.as_object().unwrap() {
            let (mut got, mut want) = (lv.get(field).cloned(), Some(want.clone()));
            if k == "second/FiringSeen" && field == "alerts" {
                let active = |v: &Option<Value>| v.as_ref().and_then(|a| a[0]["activeAt"].as_i64());
                let (g, w) = (active(&got), active(&want));
                assert!(
                    matches!((g, w), (Some(g), Some(w)) if (g - w).abs() <= 1000),
                    "{k}.activeAt more than one interval apart:\nprometheus {pv:#}\nlumen {lv:#}"
                );
                for v in [&mut got, &mut want] {
                    if let Some(a) = v.as_mut().and_then(|a| a.get_mut(0)) {
                        a["activeAt"] = json!(0);
                    }
                }
            }
            assert_eq!(got, want, "{k}.{field}:\nprometheus {pv:#}\nlumen {lv:#}");
        }
    }
    // The groups' own fields.
    for (pg, lg) in
        views[0]["data"]["groups"].as_array().unwrap().iter().zip(views[1]["data"]["groups"].as_array().unwrap())
    {
        for f in ["name", "file", "interval", "limit"] {
            if let Some(want) = pg.get(f) {
                assert_eq!(lg.get(f), Some(want), "group field {f}");
            }
        }
    }
    // The alerts API, activeAt included: both evaluated at the same instants.
    let alerts = |v: Value| {
        let mut a: Vec<Value> = v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                json!({"labels": a["labels"], "annotations": a["annotations"], "state": a["state"],
                    "activeAt": unix_ms(&a["activeAt"])})
            })
            .collect();
        a.sort_by_key(|a| a.to_string());
        a
    };
    // FiringSeen's activeAt may be one interval apart, as in the rules view above (the same race).
    let firing_seen = |list: &mut Vec<Value>| -> Option<i64> {
        let a = list.iter_mut().find(|a| a["labels"]["alertname"] == "FiringSeen")?;
        let at = a["activeAt"].as_i64();
        a["activeAt"] = json!(0);
        at
    };
    let mut p_alerts = alerts(get_json(&format!("{}/api/v1/alerts", prom.base), "default").await);
    let mut l_alerts = alerts(get_json(&format!("{}/api/v1/alerts", lumen.base), "default").await);
    let (pa, la) = (firing_seen(&mut p_alerts), firing_seen(&mut l_alerts));
    assert!(
        matches!((pa, la), (Some(p), Some(l)) if (p - l).abs() <= 1000),
        "FiringSeen activeAt more than one interval apart: prometheus {pa:?}, lumen {la:?}"
    );
    assert_eq!(p_alerts, l_alerts);
    // ALERTS_FOR_STATE's value is activeAt in seconds; `timestamp(...)` is the instant of the last
    // evaluation that wrote the series, the same grid in both.
    for q in [
        "ALERTS_FOR_STATE",
        "job:http_requests:rate5m",
        "job:http_errors:ratio",
        "timestamp(ALERTS) % 1",
        "timestamp(job:http_errors:ratio) % 1",
    ] {
        let mut p = series_set(&prom.base, q).await;
        let mut l = series_set(&lumen.base, q).await;
        assert!(!p.is_empty(), "{q}: Prometheus has none");
        if q == "ALERTS_FOR_STATE" {
            // FiringSeen's value is its activeAt in seconds: one interval apart at most (see above).
            let key = |m: &BTreeMap<String, String>| m.keys().find(|k| k.contains("\"FiringSeen\"")).cloned();
            let (pk, lk) = (key(&p), key(&l));
            assert_eq!(pk, lk, "{q}: FiringSeen's series");
            if let Some(k) = pk {
                let (pv, lv): (f64, f64) = (p[&k].parse().unwrap(), l[&k].parse().unwrap());
                assert!((pv - lv).abs() <= 1.0, "{q}: FiringSeen {pv} against {lv}");
                p.remove(&k);
                l.remove(&k);
            }
        }
        assert_eq!(p, l, "{q}");
    }
    lumen.stop().await;
}

struct Alertmanager {
    child: Child,
    base: String,
}

impl Alertmanager {
    async fn start(dir: &Path, webhook: &str) -> Alertmanager {
        let bin = std::env::var("ALERTMANAGER_BIN").unwrap_or_else(|_| "/usr/bin/prometheus-alertmanager".into());
        assert!(Path::new(&bin).exists(), "{bin} not found: scripts/test installs Debian's prometheus-alertmanager");
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n- name: hook\n  webhook_configs:\n  - url: {webhook}\n    send_resolved: true\n"
            ),
        )
        .unwrap();
        let addr = free_addr();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            // No gossip port on 0.0.0.0.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let base = format!("http://{addr}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client().get(format!("{base}/-/ready")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "alertmanager did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Alertmanager { child, base }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_receives_the_alert_then_its_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Receiver::start().await;
    let am = Alertmanager::start(&dir.path().join("am"), &hook.url).await;
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "groups:\n- name: g\n  interval: 1s\n  rules:\n  - alert: DiskAlmostFull\n    expr: disk_free_ratio < 0.1\n    labels:\n      severity: warn\n    annotations:\n      summary: '{{ $labels.mount }} has {{ $value | humanizePercentage }} free'\n",
    )
    .unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.ruler.rule_files = vec![rules.display().to_string()];
    config.ruler.alertmanager_url = vec![am.base.clone()];
    config.ruler.external_labels = [("cluster".to_string(), "home".to_string())].into();
    config.ruler.resend_delay = Duration::from_secs(1);
    let lumen = TestServer::start(config).await;
    import(&lumen.base, "default", &[("disk_free_ratio{mount=\"/data\"}", 0.05)]).await;
    let firing =
        hook.wait_for("Alertmanager's firing notification", Duration::from_secs(20), |v| v["status"] == "firing").await;
    let a = &firing["alerts"][0];
    assert_eq!(
        a["labels"],
        json!({"alertname": "DiskAlmostFull", "cluster": "home", "mount": "/data", "severity": "warn"})
    );
    assert_eq!(a["annotations"]["summary"], "/data has 5% free");
    assert!(a["generatorURL"].as_str().unwrap().starts_with(&lumen.base));
    // Alertmanager's own API shows it as active.
    let v: Value = client().get(format!("{}/api/v2/alerts", am.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(v[0]["labels"]["alertname"], "DiskAlmostFull");
    assert_eq!(v[0]["status"]["state"], "active");
    // Space freed: Lumen sends the resolution, Alertmanager passes it on.
    import(&lumen.base, "default", &[("disk_free_ratio{mount=\"/data\"}", 0.5)]).await;
    let resolved = hook
        .wait_for("Alertmanager's resolved notification", Duration::from_secs(20), |v| v["status"] == "resolved")
        .await;
    assert_eq!(resolved["alerts"][0]["labels"]["mount"], "/data");
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    lumen.stop().await;
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn promtool_and_lumen_agree_on_valid_and_broken_rule_files() {
    let dir = tempfile::tempdir().unwrap();
    let group = |rules: &str| format!("groups:\n- name: g\n  rules:\n{rules}");
    let cases: Vec<(&str, String)> = vec![
        ("valid", RULES.to_string()),
        ("empty", "groups: []\n".to_string()),
        ("bad expression", group("  - record: a\n    expr: sum(up\n")),
        ("bad record name", group("  - record: 'a b'\n    expr: up\n")),
        ("no expression", group("  - alert: A\n")),
        ("record and alert", group("  - record: a\n    alert: b\n    expr: up\n")),
        ("neither", group("  - expr: up\n")),
        ("for on a recording rule", group("  - record: a\n    expr: up\n    for: 5m\n")),
        ("annotations on a recording rule", group("  - record: a\n    expr: up\n    annotations: {a: b}\n")),
        ("bad label name", group("  - alert: A\n    expr: up\n    labels: {'0a': b}\n")),
        ("bad annotation template", group("  - alert: A\n    expr: up\n    annotations: {a: '{{ .Foo '}\n")),
        ("bad duration", group("  - alert: A\n    expr: up\n    for: 5 minutes\n")),
        ("unknown field", group("  - alert: A\n    expr: up\n    severity: high\n")),
        ("repeated group", "groups:\n- name: g\n  rules: []\n- name: g\n  rules: []\n".to_string()),
        ("not YAML", "groups: [\n".to_string()),
    ];
    for (name, text) in cases {
        let f = dir.path().join(format!("{}.yaml", name.replace(' ', "_")));
        std::fs::write(&f, &text).unwrap();
        let (p_ok, p_out) = run(Command::new("promtool").args(["check", "rules"]).arg(&f));
        let (l_ok, l_out) = run(Command::new(env!("CARGO_BIN_EXE_lumen")).args(["rules", "check"]).arg(&f));
        assert_eq!(l_ok, p_ok, "{name}: promtool says {p_ok} ({p_out}), lumen says {l_ok} ({l_out})");
        if p_ok {
            // The same count of rules.
            let count = |s: &str| s.lines().find(|l| l.contains("SUCCESS")).map(str::trim).map(str::to_string);
            assert_eq!(count(&l_out), count(&p_out), "{name}");
        }
    }
}

const UNIT_RULES: &str = r#"groups:
- name: example
  rules:
  - record: job:up:sum
    expr: sum by (job) (up)
  - alert: InstanceDown
    expr: up == 0
    for: 5m
    labels:
      severity: page
    annotations:
      summary: "Instance {{ $labels.instance }} down"
      description: "{{ $labels.instance }} of job {{ $labels.job }} has been down for more than 5 minutes."
  - alert: ManyGoroutines
    expr: go_goroutines > 100
    for: 2m
    annotations:
      value: "{{ $value }} goroutines"
"#;

const UNIT_TESTS: &str = r#"rule_files:
  - rules.yml
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{job="prometheus", instance="localhost:9090"}'
        values: '0 0 0 0 0 0 0 0 0 0 0 0 0 0 0'
      - series: 'up{job="node_exporter", instance="localhost:9100"}'
        values: '1+0x6 0 0 0 0 0 0 0 0'
      - series: 'go_goroutines{job="prometheus", instance="localhost:9090"}'
        values: '10+10x2 30+20x5'
      - series: 'go_goroutines{job="node_exporter", instance="localhost:9100"}'
        values: '10+10x7 10+30x4'
    alert_rule_test:
      - eval_time: 10m
        alertname: InstanceDown
        exp_alerts:
          - exp_labels:
              severity: page
              instance: localhost:9090
              job: prometheus
            exp_annotations:
              summary: "Instance localhost:9090 down"
              description: "localhost:9090 of job prometheus has been down for more than 5 minutes."
      - eval_time: 12m
        alertname: ManyGoroutines
        exp_alerts:
          - exp_labels:
              instance: localhost:9090
              job: prometheus
            exp_annotations:
              value: "130 goroutines"
      - eval_time: 3m
        alertname: InstanceDown
    promql_expr_test:
      - expr: go_goroutines > 5
        eval_time: 4m
        exp_samples:
          - labels: 'go_goroutines{job="prometheus",instance="localhost:9090"}'
            value: 50
          - labels: 'go_goroutines{job="node_exporter",instance="localhost:9100"}'
            value: 50
      - expr: job:up:sum
        eval_time: 8m
        exp_samples:
          - labels: 'job:up:sum{job="prometheus"}'
            value: 0
          - labels: 'job:up:sum{job="node_exporter"}'
            value: 0
"#;

#[test]
fn lumen_rules_test_agrees_with_promtool_test_rules() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yml"), UNIT_RULES).unwrap();
    let cases = [
        ("passing", UNIT_TESTS.to_string()),
        ("wrong annotation", UNIT_TESTS.replace("130 goroutines", "120 goroutines")),
        (
            "wrong value",
            UNIT_TESTS.replace(
                "value: 50\n          - labels: 'go_goroutines{job=\"node",
                "value: 51\n          - labels: 'go_goroutines{job=\"node",
            ),
        ),
        ("alert still pending", UNIT_TESTS.replace("eval_time: 12m", "eval_time: 8m")),
        (
            "wrong recorded series",
            UNIT_TESTS.replace(
                "job:up:sum{job=\"prometheus\"}'\n            value: 0",
                "job:up:sum{job=\"prometheus\"}'\n            value: 1",
            ),
        ),
    ];
    for (name, text) in cases {
        let f = dir.path().join(format!("{}_test.yml", name.replace(' ', "_")));
        std::fs::write(&f, &text).unwrap();
        let (p_ok, p_out) = run(Command::new("promtool").args(["test", "rules"]).arg(&f));
        let (l_ok, l_out) = run(Command::new(env!("CARGO_BIN_EXE_lumen")).args(["rules", "test"]).arg(&f));
        assert_eq!(l_ok, p_ok, "{name}: promtool says {p_ok}:\n{p_out}\nlumen says {l_ok}:\n{l_out}");
        if name == "passing" {
            assert!(p_ok, "the passing case fails in promtool: {p_out}");
        }
    }
}
