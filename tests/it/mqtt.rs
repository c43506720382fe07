//! MQTT ingest against a real Mosquitto (installed by scripts/test, started here on a free loopback port)
//! and real clients (rumqttc, mosquitto_pub): JSON and templates, Sparkplug B, garbage, the embedded
//! endpoint, durability across `kill -9` and a broker restart, and a shared subscription.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ingest_mqtt::sparkplug_b::Payload;
use ingest_mqtt::sparkplug_b::payload::{Metric, metric};
use prost::Message as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::harness::{ServerProcess, TestServer, free_addr, sql_rows, test_config};

/// A Mosquitto broker of our own, with a persistent store so that a restart keeps sessions.
struct Mosquitto {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto started as root drops to its own user, which must be able to write its store here.
        Command::new("chmod").arg("777").arg(dir.path()).status().unwrap();
        let port = free_addr().port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n\
                 # The default (1000) silently drops QoS 1 messages for a subscriber that falls behind.\n\
                 max_queued_messages 1000000\nmax_inflight_messages 1000\n\
                 persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto { child: None, port, conf, _dir: dir };
        m.start_again();
        m
    }

    fn start_again(&mut self) {
        // Debian puts it in /usr/sbin, which is not on every user's PATH.
        let bin =
            if std::path::Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM: Mosquitto saves its sessions and queued messages and exits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
            child.wait().unwrap();
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Publishes every message with QoS 1 and returns once the broker (or endpoint) acknowledged them all.
async fn publish_all(port: u16, client_id: &str, credentials: Option<(&str, &str)>, messages: Vec<(String, Vec<u8>)>) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20).set_inflight(100).set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = credentials {
        opts.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let n = messages.len();
    let publisher = tokio::spawn(async move {
        for (topic, payload) in messages {
            client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
        }
        client
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publishing to port {port}: {e} after {acked} of {n} acknowledgements"),
            Err(_) => panic!("only {acked} of {n} messages acknowledged in 60 s"),
        }
    }
    let client = publisher.await.unwrap();
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}

async fn get_json(url: &str) -> Value {
    crate::harness::get(url).await.unwrap().json().await.unwrap()
}

/// The PromQL instant query's result vector.
async fn promql(base: &str, query: &str) -> Vec<Value> {
    let url = format!("{base}/api/v1/query?query={}", urlencode(query));
    let body = get_json(&url).await;
    assert_eq!(body["status"], "success", "{query}: {body}");
    body["data"]["result"].as_array().unwrap().clone()
}

/// The streams a LogQL range query returns over the last hour.
async fn logql(base: &str, query: &str) -> Vec<Value> {
    let url = format!("{base}/loki/api/v1/query_range?limit=5000&since=1h&query={}", urlencode(query));
    let body = get_json(&url).await;
    assert_eq!(body["status"], "success", "{query}: {body}");
    body["data"]["result"].as_array().unwrap().clone()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The sum of a counter family in the server's /metrics (0 when absent).
async fn metric_sum(base: &str, name: &str) -> f64 {
    let text = crate::harness::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Log entries stored for the default tenant.
async fn stored(base: &str) -> i64 {
    let client = crate::harness::client();
    sql_rows(&client, base, "default", "SELECT count(*) AS n FROM logs").await[0]["n"].as_i64().unwrap()
}

/// Waits until `stored` reaches `n` (and fails if it passes it).
async fn wait_stored(base: &str, n: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let have = stored(base).await;
        assert!(have <= n, "{have} log entries stored, more than the {n} messages sent");
        if have == n {
            return;
        }
        assert!(Instant::now() < deadline, "only {have} of {n} messages stored in {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the broker subscription is live: a probe message comes through.
async fn wait_subscribed(base: &str, port: u16, probe_topic: &str, stored_before: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric_sum(base, "lumen_mqtt_broker_connected").await < 1.0 {
        assert!(Instant::now() < deadline, "lumen did not connect to the broker");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The SUBACK may still be on its way; a retained-free probe repeated until one arrives.
    loop {
        publish_all(port, "probe", None, vec![(probe_topic.to_string(), b"{\"probe\":1}".to_vec())]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if stored(base).await > stored_before {
            return;
        }
        assert!(Instant::now() < deadline, "the subscription never delivered a probe");
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_messages_through_mosquitto_become_series_and_searchable_entries() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.mqtt.broker.url = broker.url();
    config.mqtt.broker.client_id = "lumen-json".into();
    config.mqtt.topics = vec!["devices/{site}/{device}/telemetry".into()];
    let server = TestServer::start(config).await;
    wait_subscribed(&server.base, broker.port, "devices/probe/probe/telemetry", 0).await;

    let t0 = now_ms() - 60_000;
    let messages = vec![
        ("devices/berlin/d1/telemetry".to_string(), br#"{"temperature":21.5,"door_open":true,"status":"ok"}"#.to_vec()),
        (
            "devices/berlin/d2/telemetry".to_string(),
            format!(r#"{{"ts":{t0},"env":{{"temp":19.25,"air":{{"co2":410}}}},"rssi":-67}}"#).into_bytes(),
        ),
        (
            "devices/paris/d3/telemetry".to_string(),
            format!(r#"[{{"ts":{},"temperature":10}},{{"ts":{},"temperature":11}}]"#, t0 / 1000, (t0 + 30_000) / 1000)
                .into_bytes(),
        ),
    ];
    publish_all(broker.port, "devices", None, messages).await;
    wait_stored(&server.base, 4, Duration::from_secs(20)).await;

    // Flat fields, booleans as 0/1, with the template's labels.
    let r = promql(&server.base, r#"temperature{site="berlin",device="d1"}"#).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["value"][1], "21.5");
    assert_eq!(promql(&server.base, "door_open").await[0]["value"][1], "1");
    assert!(promql(&server.base, "status").await.is_empty(), "strings are not samples");
    // Nested objects flattened with `_`; the payload's ts (ms) is the sample time: the sample is there a
    // second after it, a minute before it was received, and not a second before it.
    let r = promql(&server.base, &format!("env_air_co2 @ {}", (t0 + 1000) as f64 / 1000.0)).await;
    assert_eq!(r[0]["value"][1], "410", "{r:?}");
    assert_eq!(r[0]["metric"]["device"], "d2");
    assert!(promql(&server.base, &format!("env_air_co2 @ {}", (t0 - 1000) as f64 / 1000.0)).await.is_empty());
    // An array of objects gives one reading each, at their own times (seconds here).
    let r = promql(&server.base, r#"count_over_time(temperature{device="d3"}[10m])"#).await;
    assert_eq!(r[0]["value"][1], "2", "{r:?}");
    // The whole message is a log entry in the device's stream, searchable with LogQL.
    let streams = logql(&server.base, r#"{source="mqtt", site="berlin"} |= "door_open""#).await;
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0]["stream"]["device"], "d1");
    assert_eq!(streams[0]["values"][0][1], r#"{"temperature":21.5,"door_open":true,"status":"ok"}"#);
    let parsed =
        logql(&server.base, r#"sum(count_over_time({source="mqtt", device="d2"} | json | rssi < -60 [1h]))"#).await;
    assert_eq!(parsed.len(), 1, "LogQL parses the stored JSON: {parsed:?}");
    server.stop().await;
}

fn sp_metric(name: Option<&str>, alias: u64, datatype: u32, value: metric::Value) -> Metric {
    Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        datatype: Some(datatype),
        value: Some(value),
        ..Metric::default()
    }
}

fn sp_payload(seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
    Payload { timestamp: Some(now_ms() as u64), seq: Some(seq), metrics, ..Payload::default() }.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_births_data_by_alias_and_deaths_through_the_embedded_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.mqtt_listen = "127.0.0.1:0".into();
    let server = TestServer::start(config).await;
    let port = server.running.as_ref().unwrap().mqtt_addr.unwrap().port();

    const DOUBLE: u32 = 10;
    const BOOLEAN: u32 = 11;
    const STRING: u32 = 12;
    const INT32: u32 = 3;
    let messages = vec![
        (
            "spBv1.0/plant/NBIRTH/edge1".to_string(),
            sp_payload(
                0,
                vec![
                    sp_metric(Some("bdSeq"), 0, 8, metric::Value::LongValue(0)),
                    sp_metric(Some("Node/Uptime"), 1, INT32, metric::Value::IntValue(5)),
                    sp_metric(Some("Node/Healthy"), 2, BOOLEAN, metric::Value::BooleanValue(true)),
                ],
            ),
        ),
        (
            "spBv1.0/plant/DBIRTH/edge1/pump7".to_string(),
            sp_payload(
                1,
                vec![
                    sp_metric(Some("Inputs/Pressure"), 10, DOUBLE, metric::Value::DoubleValue(1.5)),
                    sp_metric(Some("Mode"), 11, STRING, metric::Value::StringValue("auto".into())),
                ],
            ),
        ),
        // Data by alias only.
        (
            "spBv1.0/plant/NDATA/edge1".to_string(),
            sp_payload(2, vec![sp_metric(None, 1, INT32, metric::Value::IntValue(65))]),
        ),
        (
            "spBv1.0/plant/DDATA/edge1/pump7".to_string(),
            sp_payload(3, vec![sp_metric(None, 10, DOUBLE, metric::Value::DoubleValue(2.75))]),
        ),
        // seq 4 is missing: one gap.
        (
            "spBv1.0/plant/DDATA/edge1/pump7".to_string(),
            sp_payload(5, vec![sp_metric(None, 11, STRING, metric::Value::StringValue("manual".into()))]),
        ),
    ];
    publish_all(port, "edge1", None, messages).await;
    wait_stored(&server.base, 5, Duration::from_secs(20)).await;

    let r = promql(&server.base, r#"Node_Uptime{group="plant",edge_node="edge1"}"#).await;
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["value"][1], "65", "NDATA resolved alias 1 through the NBIRTH");
    let r = promql(&server.base, "Inputs_Pressure").await;
    assert_eq!(r[0]["value"][1], "2.75", "{r:?}");
    assert_eq!(r[0]["metric"]["device"], "pump7");
    assert_eq!(promql(&server.base, "Node_Healthy").await[0]["value"][1], "1");
    assert!(promql(&server.base, "Mode").await.is_empty(), "strings are log fields, not samples");
    let streams = logql(&server.base, r#"{source="mqtt", device="pump7"} |= "manual""#).await;
    assert_eq!(streams.len(), 1, "the string metric is in the device's log entry: {streams:?}");
    assert_eq!(metric_sum(&server.base, "lumen_mqtt_sparkplug_seq_gaps_total").await, 1.0);
    assert_eq!(metric_sum(&server.base, "lumen_mqtt_sparkplug_births_total").await, 2.0);

    // The device dies, then the node: their series go stale at once.
    tokio::time::sleep(Duration::from_millis(5)).await;
    publish_all(port, "edge1", None, vec![("spBv1.0/plant/DDEATH/edge1/pump7".into(), sp_payload(6, vec![]))]).await;
    wait_stored(&server.base, 6, Duration::from_secs(20)).await;
    assert!(promql(&server.base, "Inputs_Pressure").await.is_empty(), "DDEATH marks the device's series stale");
    assert_eq!(promql(&server.base, "Node_Uptime").await.len(), 1, "the node lives on");
    let death = sp_payload(0, vec![sp_metric(Some("bdSeq"), 0, 8, metric::Value::LongValue(0))]);
    publish_all(port, "edge1", None, vec![("spBv1.0/plant/NDEATH/edge1".into(), death)]).await;
    wait_stored(&server.base, 7, Duration::from_secs(20)).await;
    assert!(promql(&server.base, "Node_Uptime").await.is_empty(), "NDEATH marks the node's series stale");
    assert_eq!(metric_sum(&server.base, "lumen_mqtt_sparkplug_deaths_total").await, 2.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_acknowledged_counted_and_kept_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.mqtt_listen = "127.0.0.1:0".into();
    config.mqtt = toml::from_str(
        r#"
        topics = ["json/{device}"]
        [[templates]]
        topic = "plain/{device}/{metric}"
        format = "plain"
        "#,
    )
    .unwrap();
    let server = TestServer::start(config).await;
    let port = server.running.as_ref().unwrap().mqtt_addr.unwrap().port();
    let messages = vec![
        ("json/d1".to_string(), b"{\"temperature\": 21.5,".to_vec()),
        ("spBv1.0/g/NDATA/n1".to_string(), vec![0x0a, 0xff, 0xff, 0x12]),
        ("plain/d1/voltage".to_string(), b"twelve volts".to_vec()),
        ("json/d1".to_string(), vec![0xff, 0xfe, b'{']),
        // Good messages after the bad ones are stored as usual.
        ("plain/d1/voltage".to_string(), b"12.5".to_vec()),
        ("json/d2".to_string(), b"{\"temperature\": 20}".to_vec()),
    ];
    publish_all(port, "garbage", None, messages).await;
    wait_stored(&server.base, 6, Duration::from_secs(20)).await;

    for reason in ["invalid_json", "invalid_protobuf", "invalid_number", "invalid_utf8"] {
        let n = metric_sum(&server.base, &format!("lumen_mqtt_garbage_messages_total{{reason=\"{reason}\"}}")).await;
        assert_eq!(n, 1.0, "{reason}");
    }
    let errors = logql(&server.base, r#"{source="mqtt"} | error != """#).await;
    let lines: Vec<&str> =
        errors.iter().flat_map(|s| s["values"].as_array().unwrap()).map(|v| v[1].as_str().unwrap()).collect();
    assert_eq!(lines.len(), 4, "{errors:?}");
    assert!(lines.contains(&"twelve volts"), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("base64:")), "binary garbage is kept in base64: {lines:?}");
    assert_eq!(promql(&server.base, "voltage").await[0]["value"][1], "12.5");
    assert_eq!(promql(&server.base, r#"temperature{device="d2"}"#).await[0]["value"][1], "20");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_endpoint_takes_real_clients_and_refuses_wrong_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.mqtt_listen = "127.0.0.1:0".into();
    config.mqtt.topics = vec!["sensors/{room}".into()];
    config.mqtt.listener.username = "device".into();
    config.mqtt.listener.password = "s3cret".into();
    let server = TestServer::start(config).await;
    let port = server.running.as_ref().unwrap().mqtt_addr.unwrap().port().to_string();

    let pub_cmd = |user: &str, pass: &str, qos: &str, version: &str, msg: &str| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-u", user, "-P", pass, "-q", qos, "-V", version])
            .args(["-t", "sensors/kitchen", "-m", msg])
            .output()
            .expect("mosquitto_pub is installed (scripts/test installs mosquitto-clients)")
    };
    let refused = pub_cmd("device", "wrong", "1", "mqttv311", "21");
    assert!(!refused.status.success(), "a wrong password is refused");
    assert!(
        String::from_utf8_lossy(&refused.stderr).to_lowercase().contains("not authorised")
            || String::from_utf8_lossy(&refused.stderr).to_lowercase().contains("bad user"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    for (qos, version, msg) in
        [("0", "mqttv311", "20.5"), ("1", "mqttv311", "21"), ("1", "mqttv5", "21.5"), ("2", "mqttv5", "22")]
    {
        let out = pub_cmd("device", "s3cret", qos, version, msg);
        assert!(out.status.success(), "qos {qos} {version}: {}", String::from_utf8_lossy(&out.stderr));
    }
    wait_stored(&server.base, 4, Duration::from_secs(20)).await;
    let r = promql(&server.base, r#"count_over_time(kitchen{room="kitchen"}[1h])"#).await;
    assert_eq!(r[0]["value"][1], "4", "plain numbers are named after the topic's last level: {r:?}");

    // Many messages from one client, all stored once.
    let many: Vec<_> = (0..2000).map(|i| ("sensors/hall".to_string(), format!("{{\"n\":{i}}}").into_bytes())).collect();
    publish_all(port.parse().unwrap(), "hall", Some(("device", "s3cret")), many).await;
    wait_stored(&server.base, 2004, Duration::from_secs(30)).await;
    assert_eq!(promql(&server.base, r#"count(count_over_time(n{room="hall"}[1h]))"#).await[0]["value"][1], "1");
    server.stop().await;
}

/// Publishes `n` distinct QoS 1 messages to the broker from a background task, each with its own
/// timestamp (so no sample overwrites another).
fn publish_in_background(port: u16, prefix: &'static str, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let t0 = now_ms() - 10 * 60_000;
        let messages = (0..n)
            .map(|i| {
                (format!("load/dev{}", i % 10), format!("{{\"ts\":{},\"{prefix}\":{i}}}", t0 + i as i64).into_bytes())
            })
            .collect();
        publish_all(port, prefix, None, messages).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_after_durability_kill_9_loses_nothing_and_stores_nothing_twice() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let url = broker.url();
    let args = ["--mqtt-broker", url.as_str(), "--mqtt-topic", "load/{device}"];
    let mut lumen = ServerProcess::spawn(dir.path(), addr, &args);
    lumen.wait_ready().await;
    wait_subscribed(&lumen.base, broker.port, "load/probe", 0).await;

    const N: usize = 30_000;
    let publisher = publish_in_background(broker.port, "seq", N);
    // Kill Lumen while messages are in flight between the broker, the pipeline and the WAL.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric_sum(&lumen.base, "lumen_mqtt_messages_total").await < (N / 3) as f64 {
        assert!(Instant::now() < deadline, "lumen did not take a quarter of the messages in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_kill = metric_sum(&lumen.base, "lumen_mqtt_messages_total").await;
    lumen.kill9();
    let before_restart = Instant::now();
    // The broker keeps queueing for the persistent session meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut lumen = ServerProcess::spawn(dir.path(), addr, &args);
    lumen.wait_ready().await;
    tokio::time::timeout(Duration::from_secs(90), publisher).await.expect("publisher finished").unwrap();
    wait_stored(&lumen.base, N as i64 + 1, Duration::from_secs(90)).await;
    let client = crate::harness::client();
    let distinct = sql_rows(&client, &lumen.base, "default", "SELECT count(DISTINCT message) AS n FROM logs").await[0]
        ["n"]
        .as_i64();
    assert_eq!(distinct, Some(N as i64 + 1), "every message present once");
    let r = promql(&lumen.base, "count_over_time(seq[1h])").await;
    let samples: f64 = r.iter().map(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap()).sum();
    assert_eq!(samples, N as f64, "every sample present once");
    assert!(at_kill < N as f64, "the kill came while messages were in flight");
    eprintln!(
        "kill -9 with {at_kill} of {N} stored; after the restart {} redeliveries were recognised",
        metric_sum(&lumen.base, "lumen_mqtt_duplicate_messages_total").await
    );
    assert!(before_restart.elapsed() < Duration::from_secs(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_is_survived_and_a_retained_message_is_not_stored_twice() {
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.mqtt.broker.url = broker.url();
    config.mqtt.broker.client_id = "lumen-restart".into();
    config.mqtt.broker.reconnect_max = Duration::from_secs(1);
    config.mqtt.topics = vec!["load/{device}".into()];
    let server = TestServer::start(config).await;
    wait_subscribed(&server.base, broker.port, "load/probe", 0).await;

    publish_in_background(broker.port, "before", 500).await.unwrap();
    // A retained message, as devices publish their last state.
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-r",
            "-t",
            "load/state",
            "-m",
            "{\"on\":1}",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_stored(&server.base, 502, Duration::from_secs(30)).await;
    broker.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric_sum(&server.base, "lumen_mqtt_broker_connections_total").await < 2.0
        || metric_sum(&server.base, "lumen_mqtt_broker_connected").await < 1.0
    {
        assert!(Instant::now() < deadline, "lumen did not reconnect to the restarted broker");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The session (and its subscription) survived in Mosquitto's store, so Lumen did not subscribe again,
    // and the retained message was not delivered (and stored) a second time.
    publish_in_background(broker.port, "after", 500).await.unwrap();
    wait_stored(&server.base, 1002, Duration::from_secs(30)).await;
    assert_eq!(promql(&server.base, "count(count_over_time(after[1h]))").await[0]["value"][1], "10");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_splits_messages_between_two_servers_each_stored_once() {
    let broker = Mosquitto::start();
    let mut servers = Vec::new();
    let mut dirs = Vec::new();
    for name in ["a", "b"] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.mqtt.broker.url = broker.url();
        config.mqtt.broker.protocol = ingest_mqtt::config::Protocol::V5;
        config.mqtt.broker.client_id = format!("lumen-{name}");
        config.mqtt.broker.shared_group = "lumen".into();
        config.mqtt.topics = vec!["load/{device}".into()];
        servers.push(TestServer::start(config).await);
        dirs.push(dir);
    }
    for s in &servers {
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric_sum(&s.base, "lumen_mqtt_broker_connected").await < 1.0 {
            assert!(Instant::now() < deadline, "lumen did not connect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Let both SUBACKs arrive before publishing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    const N: i64 = 2000;
    publish_in_background(broker.port, "shared", N as usize).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (a, b) = loop {
        let (a, b) = (stored(&servers[0].base).await, stored(&servers[1].base).await);
        assert!(a + b <= N, "{a} + {b} stored, more than the {N} sent");
        if a + b == N {
            break (a, b);
        }
        assert!(Instant::now() < deadline, "only {a} + {b} of {N} stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(a > 0 && b > 0, "both servers take a share: {a} and {b}");
    for s in servers {
        s.stop().await;
    }
}

/// Two servers share a subscription; one is killed with `kill -9` while messages are in flight, and
/// started again. Mosquitto keeps what it had sent the killed member (unacknowledged) and what it queued
/// for it in that member's session, and delivers them to it when it comes back, not to the other member:
/// so each node's own delivery marks see every redelivery, and every message is stored once across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_member_killed_mid_stream_loses_nothing_and_doubles_nothing() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[mqtt]\ntopics = [\"load/{{device}}\"]\n\n[mqtt.broker]\nurl = \"{}\"\nprotocol = \"5\"\n\
                 client_id = \"lumen-{name}\"\nshared_group = \"lumen\"\n",
                broker.url()
            ),
        )
        .unwrap();
        path
    };
    let (a_conf, b_conf) = (config("a"), config("b"));
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a_args = ["--config", a_conf.to_str().unwrap()];
    let mut a = ServerProcess::spawn(&dir.path().join("a"), a_addr, &a_args);
    let mut b = ServerProcess::spawn(&dir.path().join("b"), b_addr, &["--config", b_conf.to_str().unwrap()]);
    a.wait_ready().await;
    b.wait_ready().await;
    for base in [&a.base, &b.base] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric_sum(base, "lumen_mqtt_broker_connected").await < 1.0 {
            assert!(Instant::now() < deadline, "lumen did not connect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    const N: usize = 20_000;
    let publisher = publish_in_background(broker.port, "split", N);
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric_sum(&a.base, "lumen_mqtt_messages_total").await < (N / 8) as f64 {
        assert!(Instant::now() < deadline, "the first member took too little in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_at_kill = metric_sum(&b.base, "lumen_mqtt_messages_total").await;
    a.kill9();
    assert!(!publisher.is_finished(), "the kill came while messages were being published");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut a = ServerProcess::spawn(&dir.path().join("a"), a_addr, &a_args);
    a.wait_ready().await;
    tokio::time::timeout(Duration::from_secs(90), publisher).await.expect("publisher finished").unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let client = crate::harness::client();
    loop {
        let (na, nb) = (stored(&a.base).await, stored(&b.base).await);
        assert!(na + nb <= N as i64, "{na} + {nb} stored, more than the {N} sent");
        if na + nb == N as i64 {
            assert!(na > 0 && nb as f64 > b_at_kill, "both members took a share, b after the kill too: {na} and {nb}");
            eprintln!(
                "shared subscription: {na} + {nb} stored; the restarted member recognised {} redeliveries",
                metric_sum(&a.base, "lumen_mqtt_duplicate_messages_total").await
            );
            break;
        }
        assert!(Instant::now() < deadline, "only {na} + {nb} of {N} stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let distinct = |base: String| {
        let client = client.clone();
        async move {
            sql_rows(&client, &base, "default", "SELECT count(DISTINCT message) AS n FROM logs").await[0]["n"]
                .as_i64()
                .unwrap()
        }
    };
    assert_eq!(distinct(a.base.clone()).await + distinct(b.base.clone()).await, N as i64, "each message once");
    a.terminate();
    b.terminate();
}

/// Runs openssl with these arguments in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in PEM files under `dir`.
fn make_certificates(dir: &std::path::Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=lumen-test-ca"],
        ]
        .concat(),
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "lumen")] {
        let subj = format!("/CN={cn}");
        openssl(
            dir,
            &[&["req"], &ec[..], &["-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &subj]]
                .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
    // Mosquitto started as root reads them as its own user.
    Command::new("chmod").args(["-R", "a+rX"]).arg(dir).status().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_client_certificate_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    Command::new("chmod").arg("777").arg(dir.path()).status().unwrap();
    let d = dir.path();
    make_certificates(d);
    let passwd = d.join("passwd");
    let out =
        Command::new("mosquitto_passwd").arg("-b").arg("-c").arg(&passwd).args(["lumen", "pa55"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Command::new("chmod").arg("644").arg(&passwd).status().unwrap();
    let (tls_port, plain_port) = (free_addr().port(), free_addr().port());
    let conf = d.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings true\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n\
             listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\nallow_anonymous false\npassword_file {d}/passwd\n\
             listener {plain_port} 127.0.0.1\nallow_anonymous true\n",
            d = d.display()
        ),
    )
    .unwrap();
    let bin = if std::path::Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" };
    let mut broker = Mosquitto {
        child: Some(
            Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
        ),
        port: plain_port,
        conf,
        _dir: tempfile::tempdir().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", plain_port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path());
    config.mqtt.broker.url = format!("mqtts://127.0.0.1:{tls_port}");
    config.mqtt.broker.client_id = "lumen-tls".into();
    config.mqtt.broker.username = "lumen".into();
    config.mqtt.broker.password = "pa55".into();
    config.mqtt.broker.ca_file = d.join("ca.pem");
    config.mqtt.broker.client_cert_file = d.join("client.pem");
    config.mqtt.broker.client_key_file = d.join("client.key");
    config.mqtt.topics = vec!["secure/{device}".into()];
    let server = TestServer::start(config).await;
    // Published in the clear on the other listener, read by Lumen over TLS.
    wait_subscribed(&server.base, plain_port, "secure/probe", 0).await;
    publish_all(plain_port, "tls-devices", None, vec![("secure/d1".into(), b"{\"watts\":230}".to_vec())]).await;
    wait_stored(&server.base, 2, Duration::from_secs(20)).await;
    assert_eq!(promql(&server.base, r#"watts{device="d1"}"#).await[0]["value"][1], "230");
    server.stop().await;
    broker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_refuses_to_listen_beyond_loopback_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.mqtt_listen = "0.0.0.0:0".into();
    let err = format!("{:#}", lumen::start(config).await.err().expect("refused"));
    assert!(err.contains("mqtt.listener.username") && err.contains("beyond loopback"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_endpoint_acknowledges_only_what_survives_kill_9() {
    use rumqttc::Outgoing;
    let dir = tempfile::tempdir().unwrap();
    let (addr, mqtt) = (free_addr(), free_addr());
    let mqtt_arg = mqtt.to_string();
    let mut lumen =
        ServerProcess::spawn(dir.path(), addr, &["--mqtt-listen", &mqtt_arg, "--mqtt-topic", "dev/{device}"]);
    lumen.wait_ready().await;

    const N: usize = 50_000;
    let mut opts = MqttOptions::new("kill-me", "127.0.0.1", mqtt.port());
    opts.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            if client.publish("dev/d1", QoS::AtLeastOnce, false, format!("{{\"seq\":{i}}}")).await.is_err() {
                break;
            }
        }
    });
    // The k-th PUBLISH that leaves carries seq k; a packet id is not reused before its PUBACK.
    let (mut sent, mut by_pkid, mut acked) = (0usize, std::collections::HashMap::new(), Vec::new());
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the publisher never got a third of its acknowledgements");
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.expect("the client hangs") {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                by_pkid.insert(pkid, sent);
                sent += 1;
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => acked.push(by_pkid[&ack.pkid]),
            Ok(_) => {}
            Err(_) => break,
        }
        if !killed && acked.len() >= N / 3 {
            lumen.kill9();
            killed = true;
        }
    }
    assert!(
        killed && acked.len() < sent,
        "the kill came with messages in flight ({} acked of {sent} sent)",
        acked.len()
    );
    publisher.abort();

    let mut lumen =
        ServerProcess::spawn(dir.path(), addr, &["--mqtt-listen", &mqtt_arg, "--mqtt-topic", "dev/{device}"]);
    lumen.wait_ready().await;
    let client = crate::harness::client();
    let rows = sql_rows(&client, &lumen.base, "default", "SELECT message FROM logs").await;
    let stored: std::collections::HashSet<usize> = rows
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(r["message"].as_str().unwrap()).unwrap()["seq"].as_u64().unwrap() as usize
        })
        .collect();
    assert_eq!(stored.len(), rows.len(), "nothing stored twice");
    let lost: Vec<usize> = acked.iter().copied().filter(|s| !stored.contains(s)).take(10).collect();
    assert!(lost.is_empty(), "acknowledged but lost after kill -9: {lost:?} (of {} acknowledged)", acked.len());
    eprintln!(
        "kill -9 after {} acknowledgements of {sent} sent; {} stored after the restart",
        acked.len(),
        stored.len()
    );
}

/// `[limits]` on MQTT (issue 17): a tenant over `limits.tenant_ingest_rate` is slowed down, not refused or
/// dropped (MQTT has no 429: the endpoint stops reading its connection until the rate allows), and every
/// message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_rate_slows_an_mqtt_publisher_down_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.mqtt_listen = "127.0.0.1:0".into();
    config.limits.tenant_ingest_rate = bytesize::ByteSize::kib(20);
    config.limits.tenant_ingest_burst = bytesize::ByteSize::kib(4);
    // The burst must hold the largest HTTP request.
    config.server.max_request_size = bytesize::ByteSize::kib(4);
    config.server.max_line_size = bytesize::ByteSize::kib(4);
    let server = TestServer::start(config).await;
    let port = server.running.as_ref().unwrap().mqtt_addr.unwrap().port();
    // 100 messages of about 1 KiB: 100 KiB at 20 KiB/s after a 4 KiB burst, so at least 4 s.
    let messages: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| {
            (format!("limits/dev{}", i % 4), format!("{{\"seq\":{i},\"pad\":\"{}\"}}", "x".repeat(1000)).into_bytes())
        })
        .collect();
    let started = Instant::now();
    publish_all(port, "limited", None, messages).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(3), "100 KiB at 20 KiB/s were all acknowledged in {took:?}");
    wait_stored(&server.base, 100, Duration::from_secs(30)).await;
    let waits = metric_sum(&server.base, "lumen_mqtt_rate_limited_waits_total").await;
    assert!(waits > 0.0, "no batch waited for the rate");
    assert_eq!(crate::harness::get(server.url("/ready")).await.unwrap().status(), 200);
    server.stop().await;
}
