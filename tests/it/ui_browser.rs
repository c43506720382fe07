//! The web UI in a real browser (issue 19): a server loaded with the Loghub logs, metrics and MQTT
//! telemetry (JSON devices and Sparkplug B, at sample times chosen here), and `ui/e2e/run.mjs` driving
//! Debian's chromium through playwright-core against it (views, answers compared with the API, devices
//! with their latest values and exact last-seen times, no request to another host, screenshots under
//! `target/ui-e2e/`). A second server with tokens on checks that the UI's live tail signs in over the
//! WebSocket itself (the token as subprotocols) rather than polling. A real nginx puts the first server
//! under the path prefix `/lumen/`, where the UI must load, query and tail over the WebSocket through
//! the proxy. `scripts/test` installs chromium, nginx and the UI's npm packages; without chromium or the
//! npm packages the test says so and skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ingest_mqtt::sparkplug_b::Payload;
use ingest_mqtt::sparkplug_b::payload::{Metric, metric};
use prost::Message as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use crate::harness::{TestServer, free_addr, loghub, test_config};

/// Debian's nginx as a reverse proxy serving `upstream` under `/lumen/`, with the WebSocket upgrade
/// forwarded (the snippet README's web UI section gives users), on a free loopback port; stopped by pid.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstream: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        // Its workers run as nobody when the test runs as root: they must reach the temp files here.
        Command::new("chmod").arg("777").arg(dir.path()).status().unwrap();
        let port = free_addr().port();
        let d = dir.path().display();
        let upstream = upstream.trim_end_matches('/');
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n  \
                 server {{\n    listen 127.0.0.1:{port};\n    location /lumen/ {{\n      proxy_pass {upstream}/;\n      \
                 proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      \
                 proxy_set_header Connection $connection_upgrade;\n      proxy_read_timeout 1h;\n    }}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let bin = if Path::new("/usr/sbin/nginx").exists() { PathBuf::from("/usr/sbin/nginx") } else { "nginx".into() };
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx is installed (scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "nginx did not listen on {port}: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, port, _dir: dir }
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers; then reap it.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn sp_metric(name: &str, alias: u64, datatype: u32, value: metric::Value) -> Metric {
    Metric {
        name: Some(name.to_string()),
        alias: Some(alias),
        datatype: Some(datatype),
        value: Some(value),
        ..Metric::default()
    }
}

/// A Sparkplug B payload at `ts_ms` (its metrics carry no time of their own, so they take this one).
fn sp_payload(ts_ms: i64, seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
    Payload { timestamp: Some(ts_ms as u64), seq: Some(seq), metrics, ..Payload::default() }.encode_to_vec()
}

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
    // MQTT: two JSON devices and a Sparkplug B edge node with one device publish to the embedded endpoint,
    // each at a sample time of its own (with milliseconds, in the last two minutes), which the Devices view
    // must show as its last seen.
    let mut opts = MqttOptions::new("ui-e2e", "127.0.0.1", mqtt_port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(opts, 10);
    let now_ms = now / 1_000_000;
    let mut messages = Vec::new();
    let mut devices = Vec::new();
    for (site, device, temp, ts) in
        [("north", "pump1", 21.5, now_ms - 95_123), ("south", "pump2", 19.0, now_ms - 40_321)]
    {
        let payload = format!("{{\"temperature\": {temp}, \"humidity\": 40, \"ts\": {ts}}}");
        messages.push((format!("devices/{site}/{device}/telemetry"), payload.into_bytes()));
        devices.push(json!({"labels": {"site": site, "device": device}, "values": {"temperature": temp, "humidity": 40}, "seen": ts}));
    }
    const DOUBLE: u32 = 10;
    const INT32: u32 = 3;
    const STRING: u32 = 12;
    let (nbirth, dbirth, ddata) = (now_ms - 80_456, now_ms - 70_789, now_ms - 30_111);
    messages.push((
        "spBv1.0/plant/NBIRTH/edge1".into(),
        sp_payload(nbirth, 0, vec![sp_metric("Node/Uptime", 1, INT32, metric::Value::IntValue(5))]),
    ));
    messages.push((
        "spBv1.0/plant/DBIRTH/edge1/pump7".into(),
        sp_payload(
            dbirth,
            1,
            vec![
                sp_metric("Inputs/Pressure", 10, DOUBLE, metric::Value::DoubleValue(1.5)),
                sp_metric("Mode", 11, STRING, metric::Value::StringValue("auto".into())),
            ],
        ),
    ));
    // Data by alias only: the Pressure the view must show is this one, at this time.
    let mut data = sp_metric("", 10, DOUBLE, metric::Value::DoubleValue(2.75));
    data.name = None;
    messages.push(("spBv1.0/plant/DDATA/edge1/pump7".into(), sp_payload(ddata, 2, vec![data])));
    // A second device is born, then dies: its death ends its series with stale markers, so its last seen
    // is its birth's sample time (which the view reads through SQL), and its latest value still shows.
    let (dbirth8, ddeath8) = (now_ms - 60_222, now_ms - 20_333);
    messages.push((
        "spBv1.0/plant/DBIRTH/edge1/pump8".into(),
        sp_payload(dbirth8, 3, vec![sp_metric("Inputs/Pressure", 20, DOUBLE, metric::Value::DoubleValue(3.5))]),
    ));
    messages.push(("spBv1.0/plant/DDEATH/edge1/pump8".into(), sp_payload(ddeath8, 4, vec![])));
    devices.push(
        json!({"labels": {"group": "plant", "edge_node": "edge1"}, "values": {"Node_Uptime": 5}, "seen": nbirth}),
    );
    devices.push(json!({
        "labels": {"group": "plant", "edge_node": "edge1", "device": "pump7"},
        "values": {"Inputs_Pressure": 2.75},
        "seen": ddata,
    }));
    devices.push(json!({
        "labels": {"group": "plant", "edge_node": "edge1", "device": "pump8"},
        "values": {"Inputs_Pressure": 3.5},
        "seen": dbirth8,
    }));
    let n_messages = messages.len();
    for (topic, payload) in messages {
        client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    }
    let mut acked = 0;
    while acked < n_messages {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await.expect("MQTT acks") {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("MQTT: {e}"),
        }
    }
    // The same server behind nginx under /lumen/.
    let nginx = Nginx::start(&server.base);

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
    let proxy = format!("http://127.0.0.1:{}/lumen/", nginx.port);
    let devices = serde_json::to_string(&devices).unwrap();
    let result = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(&script)
            .env("LUMEN_URL", &base)
            .env("LUMEN_E2E_OUT", &out2)
            .env("LUMEN_AUTH_URL", &auth_base)
            .env("LUMEN_AUTH_TENANT", "team-a")
            .env("LUMEN_AUTH_READ_TOKEN", &reader)
            .env("LUMEN_AUTH_WRITE_TOKEN", &writer)
            .env("LUMEN_PROXY_URL", &proxy)
            .env("LUMEN_E2E_DEVICES", &devices)
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
    drop(nginx);
    server.stop().await;
    auth_server.stop().await;
}
