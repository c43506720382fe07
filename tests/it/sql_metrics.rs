//! SQL over metrics (issue 21 §5): the `samples` and `series` tables answer what PromQL answers over the
//! same data (raw samples, sums by label, time buckets), join with `logs`, keep tenants apart, and stay
//! within the SQL memory budget.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{TestServer, test_config};

const MIN: i64 = 60_000;

/// Samples every 15 s (1.234 s off the minute grid, so no sample sits on a window boundary) over 30
/// minutes ending at `end_ms`.
fn exposition(end_ms: i64) -> (String, i64) {
    let t0 = (end_ms - 30 * MIN) / MIN * MIN + 1_234;
    let mut text = String::new();
    for i in 0..120 {
        let t = t0 + i * 15_000;
        for (room, base) in [("attic", 20.0), ("cellar", 11.0)] {
            text.push_str(&format!("temp{{room=\"{room}\"}} {} {t}\n", base + (i % 7) as f64 * 0.5));
        }
        for (code, inst, rate) in [("200", "a", 10), ("200", "b", 7), ("500", "a", 1)] {
            text.push_str(&format!("reqs_total{{code=\"{code}\",instance=\"{inst}\"}} {} {t}\n", i * rate));
        }
    }
    (text, t0)
}

async fn import(s: &TestServer, tenant: &str, text: String) {
    let r = s
        .client
        .post(s.url("/api/v1/import/prometheus"))
        .header("X-Scope-OrgID", tenant)
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
}

fn f(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => s.parse().unwrap(),
        _ => panic!("not a number: {v}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_samples_agrees_with_promql_and_joins_logs() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(test_config(dir.path())).await;
    let now = store::time::now_ns() / 1_000_000;
    let (text, t0) = exposition(now);
    import(&s, "default", text).await;
    let last = t0 + 119 * 15_000;

    // Raw samples: the same as PromQL's range selector.
    let rows = s
        .sql("default", "SELECT time, value FROM samples WHERE metric = 'temp' AND room = 'attic' ORDER BY time")
        .await;
    let p = s.promql("default", "temp{room=\"attic\"}[31m]", Some(last as f64 / 1000.0)).await;
    let prom: Vec<f64> = p["data"]["result"][0]["values"].as_array().unwrap().iter().map(|v| f(&v[1])).collect();
    assert_eq!(rows.len(), 120);
    assert_eq!(rows.iter().map(|r| f(&r["value"])).collect::<Vec<_>>(), prom);

    // Sums by label at one instant.
    let sql = format!(
        "SELECT code, sum(value) AS v FROM samples WHERE metric = 'reqs_total' AND time = to_timestamp_millis({last}) GROUP BY code ORDER BY code"
    );
    let rows = s.sql("default", &sql).await;
    let p = s.promql("default", "sum by (code) (reqs_total)", Some(last as f64 / 1000.0)).await;
    let prom: BTreeMap<String, f64> = p["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["metric"]["code"].as_str().unwrap().to_string(), f(&r["value"][1])))
        .collect();
    let got: BTreeMap<String, f64> =
        rows.iter().map(|r| (r["code"].as_str().unwrap().to_string(), f(&r["v"]))).collect();
    assert_eq!(got, prom);
    assert_eq!(got["200"], (119 * 17) as f64);

    // Time buckets: samples per minute = count_over_time over the minute that ends there.
    let rows = s
        .sql(
            "default",
            "SELECT to_unixtime(date_bin(INTERVAL '1 minute', time)) AS m, count(*) AS n FROM samples \
             WHERE metric = 'temp' GROUP BY m ORDER BY m",
        )
        .await;
    let buckets: Vec<(i64, f64)> = rows.iter().map(|r| (r["m"].as_i64().unwrap(), f(&r["n"]))).collect();
    assert!(buckets.len() >= 30, "{rows:?}");
    let (first, last_m) = (buckets[0].0, buckets[buckets.len() - 1].0);
    let p: Value = s
        .client
        .get(s.url("/api/v1/query_range"))
        .query(&[
            ("query", "sum(count_over_time(temp[1m]))".to_string()),
            ("start", (first + 60).to_string()),
            ("end", (last_m + 60).to_string()),
            ("step", "60".to_string()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let prom: Vec<(i64, f64)> = p["data"]["result"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v[0].as_f64().unwrap() as i64 - 60, f(&v[1])))
        .collect();
    assert_eq!(buckets, prom);

    // The series catalog, and the labels map.
    let rows = s.sql("default", "SELECT metric, count(*) AS n FROM series GROUP BY metric ORDER BY metric").await;
    assert_eq!(rows, vec![json!({"metric": "reqs_total", "n": 3}), json!({"metric": "temp", "n": 2})]);
    let rows = s
        .sql("default", "SELECT DISTINCT labels['room'] AS room FROM series WHERE metric = 'temp' ORDER BY room")
        .await;
    assert_eq!(rows, vec![json!({"room": "attic"}), json!({"room": "cellar"})]);

    // Logs joined with samples of the same minute: error lines next to the attic's temperature.
    let minute = (last / MIN - 3) * MIN;
    let lines: Vec<Value> = (0..4)
        .map(|i| {
            json!([
                ((minute + 5_000 + i * 10_000) * 1_000_000).to_string(),
                if i < 3 { "error: too hot" } else { "ok" }
            ])
        })
        .collect();
    let body = json!({"streams": [{"stream": {"app": "fan"}, "values": lines}]});
    let r = s.client.post(s.url("/loki/api/v1/push")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let sql = format!(
        "SELECT e.n AS errors, t.v AS temp FROM \
           (SELECT date_trunc('minute', time) AS m, count(*) AS n FROM logs WHERE app = 'fan' AND message LIKE '%error%' GROUP BY m) e \
         JOIN (SELECT date_trunc('minute', time) AS m, avg(value) AS v FROM samples WHERE metric = 'temp' AND room = 'attic' GROUP BY m) t \
         ON e.m = t.m WHERE e.m = to_timestamp_millis({minute})"
    );
    let rows = s.sql("default", &sql).await;
    let want: f64 = {
        let q = format!(
            "SELECT avg(value) AS v FROM samples WHERE metric = 'temp' AND room = 'attic' AND time >= to_timestamp_millis({minute}) AND time < to_timestamp_millis({})",
            minute + MIN
        );
        f(&s.sql("default", &q).await[0]["v"])
    };
    let p = s.promql("default", "avg_over_time(temp{room=\"attic\"}[1m])", Some((minute + MIN) as f64 / 1000.0)).await;
    assert_eq!(want, f(&p["data"]["result"][0]["value"][1]), "the minute's average agrees with PromQL");
    assert_eq!(rows, vec![json!({"errors": 3, "temp": want})]);

    // Another tenant sees only its own samples.
    import(&s, "team-b", "temp{room=\"garage\"} 5 ".to_string() + &format!("{last}\n")).await;
    let rows = s.sql("team-b", "SELECT room, count(*) AS n FROM samples GROUP BY room").await;
    assert_eq!(rows, vec![json!({"room": "garage", "n": 1})]);
    let rows = s.sql("default", "SELECT count(*) AS n FROM samples WHERE metric = 'temp'").await;
    assert_eq!(rows, vec![json!({"n": 240})]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_scan_past_the_sql_memory_budget_is_refused_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // 1 MiB: half of it holds 32,768 samples.
    config.query.sql_max_memory = bytesize::ByteSize::mib(1);
    let s = TestServer::start(config).await;
    let now = store::time::now_ns() / 1_000_000;
    let mut text = String::new();
    for i in 0..20_000 {
        text.push_str(&format!(
            "big{{k=\"a\"}} {i} {}\nbig{{k=\"b\"}} {i} {}\n",
            now - 20_000 * 100 + i * 100,
            now - 20_000 * 100 + i * 100
        ));
    }
    import(&s, "default", text).await;
    let r = s.client.post(s.url("/api/v1/sql")).body("SELECT count(*) FROM samples").send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errorType"], "resources_exhausted");
    assert!(v["error"].as_str().unwrap().contains("query.sql_max_memory"), "{v}");
    // Narrowed to one series, it answers.
    let rows = s.sql("default", "SELECT count(*) AS n FROM samples WHERE k = 'a'").await;
    assert_eq!(rows, vec![json!({"n": 20_000})]);
    let r = s.client.get(s.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(10)).await;
    s.stop().await;
}
