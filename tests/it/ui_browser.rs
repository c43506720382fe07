//! The web UI in a real browser (issue 19): a server loaded with the Loghub logs, metrics and MQTT
//! telemetry, and `ui/e2e/run.mjs` driving Debian's chromium through playwright-core against it (views,
//! answers compared with the API, no request to another host, screenshots under
//! `target/ui-e2e/`). A second server with tokens on checks that the UI's live tail signs in over the
//! WebSocket itself (the token as subprotocols) rather than polling. `scripts/test` installs chromium and the UI's npm packages; without them the test
//! says so and skips.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use crate::harness::{TestServer, loghub, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_answers_like_the_api_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("ui/e2e/run.mjs");
    let chromium = Path::new("/usr/bin/chromium");
    if !root.join("ui/node_modules/playwright-core").exists() || !chromium.exists() || !script.exists() {
        eprintln!(
            "SKIPPED: the browser tests need ui/node_modules (cd ui && npm ci), /usr/bin/chromium (apt-get install \
             chromium) and ui/e2e/run.mjs; scripts/test installs them"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.mqtt_listen = "127.0.0.1:0".into();
    config.mqtt.topics = vec!["devices/{site}/{device}/telemetry".into()];
    // Rules: a firing, a pending and an inactive PromQL alert, a recording rule, and a LogQL alert over the
    // Loghub lines below (the Rules view lists both languages).
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "groups:\n- name: ui-rules\n  interval: 1s\n  rules:\n  - record: ui:answer\n    expr: vector(42)\n  - alert: UiAlwaysFiring\n    expr: vector(1)\n    labels: {severity: page}\n    annotations: {summary: always firing}\n  - alert: UiPending\n    expr: vector(2)\n    for: 1h\n  - alert: UiNever\n    expr: vector(1) > 5\n",
    )
    .unwrap();
    config.ruler.rule_files = vec![rules.display().to_string()];
    let loki_rules = dir.path().join("loki-rules");
    std::fs::create_dir_all(loki_rules.join("fake")).unwrap();
    std::fs::write(
        loki_rules.join("fake/loghub.yaml"),
        "groups:\n- name: ui-logs\n  interval: 1s\n  rules:\n  - alert: UiLoghubErrors\n    expr: sum by (app) (count_over_time({namespace=\"loghub\"} |= \"error\" [1h])) > 0\n    annotations: {summary: '{{ $labels.app }} logged errors'}\n",
    )
    .unwrap();
    config.ruler.loki_rules_dir = loki_rules;
    let server = TestServer::start(config).await;
    let mqtt_port = server.running.as_ref().unwrap().mqtt_addr.unwrap().port();

    // Logs: the Loghub samples, one app each, over the last hour.
    let now = store::time::now_ns();
    for (app, lines) in loghub() {
        let values: Vec<serde_json::Value> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| json!([(now - 3_000_000_000_000 + i as i64 * 1_000_000_000).to_string(), l]))
            .collect();
        let body = json!({"streams": [{"stream": {"app": app, "namespace": "loghub"}, "values": values}]});
        let r = server.client.post(server.url("/loki/api/v1/push")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    }
    // Metrics: a counter of two instances over the last 30 minutes.
    let t0 = now / 1_000_000 - 1_800_000;
    let text: String = (0..120)
        .flat_map(|i| {
            ["a", "b"]
                .into_iter()
                .map(move |inst| format!("ui_requests_total{{instance=\"{inst}\"}} {} {}\n", i * 10, t0 + i * 15_000))
        })
        .collect();
    let r = server.client.post(server.url("/api/v1/import/prometheus")).body(text).send().await.unwrap();
    assert_eq!(r.status(), 204);
    // MQTT: two devices publish telemetry to the embedded endpoint.
    let mut opts = MqttOptions::new("ui-e2e", "127.0.0.1", mqtt_port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 10);
    for (site, device, temp) in [("north", "pump1", 21.5), ("south", "pump2", 19.0)] {
        let payload = format!("{{\"temperature\": {temp}, \"humidity\": 40}}");
        client.publish(format!("devices/{site}/{device}/telemetry"), QoS::AtLeastOnce, false, payload).await.unwrap();
    }
    let mut acked = 0;
    while acked < 2 {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await.expect("MQTT acks") {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("MQTT: {e}"),
        }
    }

    // A server with tokens on: a reader of team-a signs in to the UI and tails; a writer pushes the line.
    let auth_dir = tempfile::tempdir().unwrap();
    let tokens = auth_dir.path().join("tokens.toml");
    let reader = crate::auth::make_token(&tokens, "team-a", "read");
    let writer = crate::auth::make_token(&tokens, "team-a", "write");
    let mut auth_config = test_config(&auth_dir.path().join("data"));
    auth_config.server.auth_file = tokens;
    let auth_server = TestServer::start(auth_config).await;

    let out = root.join("target/ui-e2e");
    std::fs::create_dir_all(&out).unwrap();
    let (base, script, out2, auth_base) = (server.base.clone(), script.clone(), out.clone(), auth_server.base.clone());
    let result = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .env("LUMEN_URL", &base)
            .env("LUMEN_E2E_OUT", &out2)
            .env("LUMEN_AUTH_URL", &auth_base)
            .env("LUMEN_AUTH_TENANT", "team-a")
            .env("LUMEN_AUTH_READ_TOKEN", &reader)
            .env("LUMEN_AUTH_WRITE_TOKEN", &writer)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        result.status.success(),
        "the browser tests failed (screenshots in {}):\n{stdout}\n{stderr}",
        out.display()
    );
    drop(client);
    server.stop().await;
    auth_server.stop().await;
}
