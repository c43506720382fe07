// Tests of the embedded MQTT endpoint against real clients (rumqttc v4/v5, mosquitto_pub) and a raw socket
// speaking through rumqttc's codec, with a fake store playing the pipeline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::endpoint::{EndpointMetrics, EndpointOptions, RejectReason, serve};
use crate::{Job, Message, Pipeline};
use bytes::BytesMut;
use rumqttc::mqttbytes::v4 as m4;
use rumqttc::v5::mqttbytes::v5 as m5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Answer every job Ok at once.
    Auto,
    /// Hand jobs to the test, which answers them.
    Hold,
    /// Answer every job Err.
    Fail,
    /// Answer every job Ok at once without recording the messages (throughput).
    Count,
}

struct Harness {
    port: u16,
    metrics: Arc<EndpointMetrics>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    messages: Arc<Mutex<Vec<Message>>>,
    jobs: Arc<AtomicUsize>,
    held: mpsc::UnboundedReceiver<Job>,
}

impl Harness {
    async fn start(opts: EndpointOptions, mode: Mode) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut rx) = mpsc::channel::<Job>(64);
        let (held_tx, held) = mpsc::unbounded_channel();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let jobs = Arc::new(AtomicUsize::new(0));
        let (m, j) = (messages.clone(), jobs.clone());
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                if mode != Mode::Count {
                    m.lock().unwrap().extend(job.messages.iter().cloned());
                }
                j.fetch_add(1, Ordering::SeqCst);
                match mode {
                    Mode::Auto | Mode::Count => {
                        let _ = job.done.send(Ok(()));
                    }
                    Mode::Fail => {
                        let _ = job.done.send(Err("disk full".into()));
                    }
                    Mode::Hold => {
                        let _ = held_tx.send(job);
                    }
                }
            }
        });
        let metrics = Arc::new(EndpointMetrics::default());
        let shutdown = CancellationToken::new();
        let server =
            tokio::spawn(serve(listener, None, opts, Pipeline::from_sender(tx), metrics.clone(), shutdown.clone()));
        Harness { port, metrics, shutdown, server, messages, jobs, held }
    }

    async fn next_job(&mut self) -> Job {
        timeout(WAIT, self.held.recv()).await.expect("no job in time").unwrap()
    }

    fn messages(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    async fn wait_messages(&self, n: usize) -> Vec<Message> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = self.messages();
            if m.len() >= n || tokio::time::Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ---------- a raw client speaking through rumqttc's codec ----------

enum Recv<P> {
    Packet(P),
    Timeout,
    Closed,
}

struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(port: u16) -> Raw {
        Raw { s: TcpStream::connect(("127.0.0.1", port)).await.unwrap(), buf: BytesMut::with_capacity(4096) }
    }

    async fn v4(port: u16, id: &str) -> Raw {
        let mut raw = Raw::open(port).await;
        raw.send4(m4::Packet::Connect(m4::Connect::new(id))).await;
        match raw.recv4(WAIT).await {
            Recv::Packet(m4::Packet::ConnAck(c)) => assert_eq!(c.code, m4::ConnectReturnCode::Success),
            _ => panic!("no CONNACK"),
        }
        raw
    }

    async fn v5(port: u16, id: &str) -> Raw {
        let mut raw = Raw::open(port).await;
        let connect = m5::Connect { keep_alive: 30, client_id: id.into(), clean_start: true, properties: None };
        raw.send5(m5::Packet::Connect(connect, None, None)).await;
        match raw.recv5(WAIT).await {
            Recv::Packet(m5::Packet::ConnAck(c)) => assert_eq!(c.code, m5::ConnectReturnCode::Success),
            _ => panic!("no CONNACK"),
        }
        raw
    }

    async fn send4(&mut self, p: m4::Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        self.s.write_all(&b).await.unwrap();
    }

    async fn send5(&mut self, p: m5::Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, None).unwrap();
        self.s.write_all(&b).await.unwrap();
    }

    async fn fill(&mut self, wait: Duration) -> Option<bool> {
        match timeout(wait, self.s.read_buf(&mut self.buf)).await {
            Err(_) => None,
            Ok(Ok(0)) | Ok(Err(_)) => Some(false),
            Ok(Ok(_)) => Some(true),
        }
    }

    async fn recv4(&mut self, wait: Duration) -> Recv<m4::Packet> {
        loop {
            match m4::Packet::read(&mut self.buf, usize::MAX) {
                Ok(p) => return Recv::Packet(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("undecodable packet from server: {e}"),
            }
            match self.fill(wait).await {
                None => return Recv::Timeout,
                Some(false) => return Recv::Closed,
                Some(true) => {}
            }
        }
    }

    async fn recv5(&mut self, wait: Duration) -> Recv<m5::Packet> {
        loop {
            match m5::Packet::read(&mut self.buf, None) {
                Ok(p) => return Recv::Packet(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("undecodable packet from server: {e}"),
            }
            match self.fill(wait).await {
                None => return Recv::Timeout,
                Some(false) => return Recv::Closed,
                Some(true) => {}
            }
        }
    }

    async fn expect4(&mut self) -> m4::Packet {
        match self.recv4(WAIT).await {
            Recv::Packet(p) => p,
            Recv::Timeout => panic!("no packet in time"),
            Recv::Closed => panic!("connection closed"),
        }
    }

    async fn expect_closed4(&mut self) {
        match self.recv4(WAIT).await {
            Recv::Closed => {}
            Recv::Packet(p) => panic!("expected close, got {p:?}"),
            Recv::Timeout => panic!("connection not closed"),
        }
    }

    async fn expect_quiet4(&mut self) {
        match self.recv4(QUIET).await {
            Recv::Timeout => {}
            Recv::Packet(p) => panic!("expected nothing, got {p:?}"),
            Recv::Closed => panic!("connection closed"),
        }
    }
}

fn publish4(topic: &str, qos: rumqttc::QoS, pkid: u16, payload: &str) -> m4::Packet {
    let mut p = m4::Publish::new(topic, qos, payload.as_bytes().to_vec());
    p.pkid = pkid;
    m4::Packet::Publish(p)
}

// ---------- rumqttc clients ----------

fn v4_client(
    port: u16,
    id: &str,
    creds: Option<(&str, &str)>,
) -> (rumqttc::AsyncClient, mpsc::UnboundedReceiver<rumqttc::Event>) {
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = creds {
        opts.set_credentials(u, p);
    }
    let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(ev) => {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Report the failure as a synthetic event and stop.
                    let _ = tx.send(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(rumqttc::ConnAck::new(
                        match e {
                            rumqttc::ConnectionError::ConnectionRefused(code) => code,
                            _ => rumqttc::ConnectReturnCode::ServiceUnavailable,
                        },
                        false,
                    ))));
                    return;
                }
            }
        }
    });
    (client, rx)
}

async fn next_incoming4(rx: &mut mpsc::UnboundedReceiver<rumqttc::Event>, wait: Duration) -> Option<rumqttc::Packet> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) | Ok(None) => return None,
            Ok(Some(rumqttc::Event::Incoming(p))) => return Some(p),
            Ok(Some(_)) => {}
        }
    }
}

async fn expect_connack4(rx: &mut mpsc::UnboundedReceiver<rumqttc::Event>) -> rumqttc::ConnectReturnCode {
    match next_incoming4(rx, WAIT).await {
        Some(rumqttc::Packet::ConnAck(c)) => c.code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn v5_client(
    port: u16,
    id: &str,
) -> (rumqttc::v5::AsyncClient, mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>) {
    let mut opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let ev = eventloop.poll().await.map_err(|e| e.to_string());
            let stop = ev.is_err();
            if tx.send(ev).is_err() || stop {
                return;
            }
        }
    });
    (client, rx)
}

async fn next_incoming5(
    rx: &mut mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>,
) -> Result<m5::Packet, String> {
    loop {
        match timeout(WAIT, rx.recv()).await {
            Err(_) => return Err("timeout".into()),
            Ok(None) => return Err("event loop ended".into()),
            Ok(Some(Err(e))) => return Err(e),
            Ok(Some(Ok(rumqttc::v5::Event::Incoming(p)))) => return Ok(p),
            Ok(Some(Ok(_))) => {}
        }
    }
}

async fn mosquitto_pub(args: Vec<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("mosquitto_pub")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
    .await
    .unwrap()
}

fn args(port: u16, extra: &[&str]) -> Vec<String> {
    let mut v = vec!["-h".to_string(), "127.0.0.1".into(), "-p".into(), port.to_string()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

// ---------- tests ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_puback_only_after_durable() {
    let mut h = Harness::start(EndpointOptions::default(), Mode::Hold).await;
    let (client, mut events) = v4_client(h.port, "dev-1", None);
    assert_eq!(expect_connack4(&mut events).await, rumqttc::ConnectReturnCode::Success);
    client.publish("sensors/temp", rumqttc::QoS::AtLeastOnce, false, "21.5").await.unwrap();
    let job = h.next_job().await;
    assert_eq!(job.messages.len(), 1);
    let m = &job.messages[0];
    assert_eq!(m.topic, "sensors/temp");
    assert_eq!(&m.payload[..], b"21.5");
    let dedup = m.dedup.as_ref().expect("QoS 1 has a dedup key");
    assert_eq!(&*dedup.session, "endpoint:dev-1");
    assert!(dedup.pkid != 0);
    assert!(!dedup.dup);
    assert!(m.received_ns > 1_600_000_000_000_000_000);
    let pkid = dedup.pkid;

    // Not durable yet: no PUBACK.
    assert!(next_incoming4(&mut events, QUIET).await.is_none());
    job.done.send(Ok(())).unwrap();
    match next_incoming4(&mut events, WAIT).await {
        Some(rumqttc::Packet::PubAck(a)) => assert_eq!(a.pkid, pkid),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(h.metrics.messages_total(1), 1);
    assert_eq!(h.metrics.connections(), 1);

    // QoS 0: submitted without dedup key, never acknowledged.
    client.publish("sensors/q0", rumqttc::QoS::AtMostOnce, false, "x").await.unwrap();
    let job = h.next_job().await;
    assert!(job.messages[0].dedup.is_none());
    job.done.send(Ok(())).unwrap();
    assert!(next_incoming4(&mut events, QUIET).await.is_none());
    assert_eq!(h.metrics.messages_total(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_in_order_across_jobs_answered_out_of_order() {
    let mut h = Harness::start(EndpointOptions::default(), Mode::Hold).await;
    let mut raw = Raw::v4(h.port, "dev-order").await;
    let mut jobs = Vec::new();
    for pkid in 1..=3 {
        raw.send4(publish4("t", rumqttc::QoS::AtLeastOnce, pkid, &format!("m{pkid}"))).await;
        jobs.push(h.next_job().await);
    }
    let mut jobs = jobs.into_iter();
    let (j1, j2, j3) = (jobs.next().unwrap(), jobs.next().unwrap(), jobs.next().unwrap());
    j3.done.send(Ok(())).unwrap();
    j2.done.send(Ok(())).unwrap();
    raw.expect_quiet4().await;
    j1.done.send(Ok(())).unwrap();
    for pkid in 1..=3 {
        assert_eq!(raw.expect4().await, m4::Packet::PubAck(m4::PubAck::new(pkid)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_flow_without_double_submission() {
    let mut h = Harness::start(EndpointOptions::default(), Mode::Hold).await;
    let mut raw = Raw::v4(h.port, "dev-q2").await;
    raw.send4(publish4("t2", rumqttc::QoS::ExactlyOnce, 7, "once")).await;
    let job = h.next_job().await;
    assert_eq!(job.messages[0].dedup.as_ref().unwrap().pkid, 7);
    // Repeated before it is even durable: answered after the first, not submitted again.
    let mut again = m4::Publish::new("t2", rumqttc::QoS::ExactlyOnce, b"once".to_vec());
    again.pkid = 7;
    again.dup = true;
    raw.send4(m4::Packet::Publish(again.clone())).await;
    raw.expect_quiet4().await;
    job.done.send(Ok(())).unwrap();
    assert_eq!(raw.expect4().await, m4::Packet::PubRec(m4::PubRec::new(7)));
    assert_eq!(raw.expect4().await, m4::Packet::PubRec(m4::PubRec::new(7)));
    // Repeated after PUBREC: answered, not submitted.
    raw.send4(m4::Packet::Publish(again)).await;
    assert_eq!(raw.expect4().await, m4::Packet::PubRec(m4::PubRec::new(7)));
    assert_eq!(h.jobs.load(Ordering::SeqCst), 1);
    raw.send4(m4::Packet::PubRel(m4::PubRel::new(7))).await;
    assert_eq!(raw.expect4().await, m4::Packet::PubComp(m4::PubComp::new(7)));
    // After PUBCOMP the packet id is free: a new PUBLISH with it is a new message.
    raw.send4(publish4("t2", rumqttc::QoS::ExactlyOnce, 7, "second")).await;
    let job = h.next_job().await;
    assert_eq!(&job.messages[0].payload[..], b"second");
    job.done.send(Ok(())).unwrap();
    assert_eq!(raw.expect4().await, m4::Packet::PubRec(m4::PubRec::new(7)));
    assert_eq!(h.messages().len(), 2);
    assert_eq!(h.metrics.messages_total(2), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_with_rumqttc_client_completes() {
    let h = Harness::start(EndpointOptions::default(), Mode::Auto).await;
    let (client, mut events) = v4_client(h.port, "dev-q2c", None);
    assert_eq!(expect_connack4(&mut events).await, rumqttc::ConnectReturnCode::Success);
    client.publish("q2", rumqttc::QoS::ExactlyOnce, false, "exactly").await.unwrap();
    let mut got = Vec::new();
    while let Some(p) = next_incoming4(&mut events, WAIT).await {
        let done = matches!(p, rumqttc::Packet::PubComp(_));
        got.push(p);
        if done {
            break;
        }
    }
    assert!(matches!(got[0], rumqttc::Packet::PubRec(_)), "{got:?}");
    assert!(matches!(got[1], rumqttc::Packet::PubComp(_)), "{got:?}");
    assert_eq!(h.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_client_with_topic_aliases() {
    let h = Harness::start(EndpointOptions { receive_maximum: 100, ..Default::default() }, Mode::Auto).await;
    let (client, mut events) = v5_client(h.port, "dev-v5");
    match next_incoming5(&mut events).await.unwrap() {
        m5::Packet::ConnAck(c) => {
            assert_eq!(c.code, m5::ConnectReturnCode::Success);
            let p = c.properties.unwrap();
            assert_eq!(p.receive_max, Some(100));
            assert_eq!(p.max_packet_size, Some(1024 * 1024));
            assert!(p.topic_alias_max.unwrap() > 0);
            assert_eq!(p.wildcard_subscription_available, Some(0));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let props = |alias| m5::PublishProperties { topic_alias: Some(alias), ..Default::default() };
    client
        .publish_with_properties("sensors/a", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "1", props(1))
        .await
        .unwrap();
    client.publish_with_properties("", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "2", props(1)).await.unwrap();
    client.publish("plain", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "3").await.unwrap();
    let mut acks = 0;
    while acks < 3 {
        if let m5::Packet::PubAck(_) = next_incoming5(&mut events).await.unwrap() {
            acks += 1;
        }
    }
    let m = h.messages();
    let topics: Vec<_> = m.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, ["sensors/a", "sensors/a", "plain"]);
    assert_eq!(&*m[0].dedup.as_ref().unwrap().session, "endpoint:dev-v5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unknown_topic_alias_closes_with_protocol_error() {
    let h = Harness::start(EndpointOptions::default(), Mode::Auto).await;
    let mut raw = Raw::v5(h.port, "dev-alias").await;
    let mut p = m5::Publish::new("", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, "x", None);
    p.pkid = 1;
    p.properties = Some(m5::PublishProperties { topic_alias: Some(3), ..Default::default() });
    raw.send5(m5::Packet::Publish(p)).await;
    match raw.recv5(WAIT).await {
        Recv::Packet(m5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, m5::DisconnectReasonCode::ProtocolError)
        }
        _ => panic!("expected DISCONNECT"),
    }
    assert!(matches!(raw.recv5(WAIT).await, Recv::Closed));
    assert_eq!(h.metrics.protocol_errors_total(), 1);
    assert!(h.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked() {
    let opts = EndpointOptions { username: Some("dev".into()), password: Some("s3cret".into()), ..Default::default() };
    let h = Harness::start(opts, Mode::Auto).await;

    let (_c, mut ev) = v4_client(h.port, "wrong", Some(("dev", "nope")));
    assert_eq!(expect_connack4(&mut ev).await, rumqttc::ConnectReturnCode::BadUserNamePassword);
    let (_c, mut ev) = v4_client(h.port, "none", None);
    assert_eq!(expect_connack4(&mut ev).await, rumqttc::ConnectReturnCode::BadUserNamePassword);
    let (_c, mut ev) = v4_client(h.port, "good", Some(("dev", "s3cret")));
    assert_eq!(expect_connack4(&mut ev).await, rumqttc::ConnectReturnCode::Success);

    let p = h.port;
    assert!(
        !mosquitto_pub(args(p, &["-V", "mqttv5", "-q", "1", "-t", "t", "-m", "x", "-u", "dev", "-P", "bad"])).await
    );
    assert!(!mosquitto_pub(args(p, &["-V", "mqttv5", "-q", "1", "-t", "t", "-m", "x"])).await);
    assert!(!mosquitto_pub(args(p, &["-q", "1", "-t", "t", "-m", "x", "-u", "dev"])).await);
    assert!(
        mosquitto_pub(args(p, &["-V", "mqttv5", "-q", "1", "-t", "t", "-m", "ok5", "-u", "dev", "-P", "s3cret"])).await
    );
    assert!(mosquitto_pub(args(p, &["-q", "1", "-t", "t", "-m", "ok4", "-u", "dev", "-P", "s3cret"])).await);
    let payloads: Vec<_> = h.messages().iter().map(|m| m.payload.clone()).collect();
    assert_eq!(payloads, ["ok5", "ok4"]);
    assert_eq!(h.metrics.rejected_connections_total(RejectReason::BadCredentials), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_all_qos_and_versions() {
    let h = Harness::start(EndpointOptions::default(), Mode::Auto).await;
    let p = h.port;
    for (v, q) in
        [("mqttv311", "0"), ("mqttv311", "1"), ("mqttv311", "2"), ("mqttv5", "0"), ("mqttv5", "1"), ("mqttv5", "2")]
    {
        let msg = format!("{v}-{q}");
        assert!(mosquitto_pub(args(p, &["-V", v, "-q", q, "-t", "m/p", "-m", &msg])).await, "{msg}");
    }
    let m = h.wait_messages(6).await;
    let payloads: Vec<_> = m.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).collect();
    assert_eq!(payloads, ["mqttv311-0", "mqttv311-1", "mqttv311-2", "mqttv5-0", "mqttv5-1", "mqttv5-2"]);
    // MQTT 3.1 is refused with "unacceptable protocol version".
    assert!(!mosquitto_pub(args(p, &["-V", "mqttv31", "-q", "1", "-t", "t", "-m", "x"])).await);
    assert_eq!(h.metrics.rejected_connections_total(RejectReason::UnsupportedProtocol), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packet_closes_only_that_connection() {
    let h = Harness::start(EndpointOptions { max_packet_size: 1024, ..Default::default() }, Mode::Auto).await;
    let big = "x".repeat(2000);

    let mut raw = Raw::v4(h.port, "big4").await;
    raw.send4(publish4("t", rumqttc::QoS::AtLeastOnce, 1, "small")).await;
    assert_eq!(raw.expect4().await, m4::Packet::PubAck(m4::PubAck::new(1)));
    raw.send4(publish4("t", rumqttc::QoS::AtLeastOnce, 2, &big)).await;
    raw.expect_closed4().await;

    let mut raw = Raw::v5(h.port, "big5").await;
    let mut p = m5::Publish::new("t", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, big.clone(), None);
    p.pkid = 1;
    raw.send5(m5::Packet::Publish(p)).await;
    match raw.recv5(WAIT).await {
        Recv::Packet(m5::Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, m5::DisconnectReasonCode::PacketTooLarge)
        }
        _ => panic!("expected DISCONNECT"),
    }
    assert!(matches!(raw.recv5(WAIT).await, Recv::Closed));
    assert_eq!(h.metrics.oversized_total(), 2);

    // Others are still served.
    assert!(mosquitto_pub(args(h.port, &["-q", "1", "-t", "t", "-m", "after"])).await);
    let payloads: Vec<_> = h.messages().iter().map(|m| m.payload.clone()).collect();
    assert_eq!(payloads, ["small", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_is_refused() {
    let h = Harness::start(EndpointOptions::default(), Mode::Auto).await;
    let (client, mut events) = v4_client(h.port, "sub4", None);
    assert_eq!(expect_connack4(&mut events).await, rumqttc::ConnectReturnCode::Success);
    client.subscribe("a/#", rumqttc::QoS::AtLeastOnce).await.unwrap();
    match next_incoming4(&mut events, WAIT).await {
        Some(rumqttc::Packet::SubAck(s)) => assert_eq!(s.return_codes, [rumqttc::SubscribeReasonCode::Failure]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    client.unsubscribe("a/#").await.unwrap();
    assert!(matches!(next_incoming4(&mut events, WAIT).await, Some(rumqttc::Packet::UnsubAck(_))));

    let (client, mut events) = v5_client(h.port, "sub5");
    assert!(matches!(next_incoming5(&mut events).await.unwrap(), m5::Packet::ConnAck(_)));
    client.subscribe("a/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await.unwrap();
    match next_incoming5(&mut events).await.unwrap() {
        m5::Packet::SubAck(s) => assert_eq!(s.return_codes, [m5::SubscribeReasonCode::NotAuthorized]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_error_closes_without_ack() {
    let h = Harness::start(EndpointOptions::default(), Mode::Fail).await;
    let mut raw = Raw::v4(h.port, "fail").await;
    raw.send4(publish4("t", rumqttc::QoS::AtLeastOnce, 1, "lost")).await;
    raw.expect_closed4().await;
    assert_eq!(h.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_qos1_messages_in_order() {
    const N: usize = 20_000;
    let h = Harness::start(EndpointOptions::default(), Mode::Auto).await;
    let (client, mut events) = v4_client(h.port, "bulk", None);
    assert_eq!(expect_connack4(&mut events).await, rumqttc::ConnectReturnCode::Success);
    let sender = tokio::spawn(async move {
        for i in 0..N {
            client.publish("bulk/t", rumqttc::QoS::AtLeastOnce, false, i.to_string()).await.unwrap();
        }
        client
    });
    let mut acks = 0;
    while acks < N {
        match next_incoming4(&mut events, WAIT).await {
            Some(rumqttc::Packet::PubAck(_)) => acks += 1,
            Some(_) => {}
            None => panic!("only {acks} PUBACKs"),
        }
    }
    let _client = sender.await.unwrap();
    let m = h.messages();
    assert_eq!(m.len(), N);
    for (i, m) in m.iter().enumerate() {
        assert_eq!(m.payload, i.to_string().as_bytes());
        let d = m.dedup.as_ref().unwrap();
        assert_eq!(&*d.session, "endpoint:bulk");
        assert!(d.pkid != 0 && !d.dup);
    }
    assert!(h.jobs.load(Ordering::SeqCst) <= N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rules_ping_and_second_connect() {
    let h = Harness::start(EndpointOptions::default(), Mode::Auto).await;
    // Empty client id without clean session (3.1.1): refused.
    let mut raw = Raw::open(h.port).await;
    let mut c = m4::Connect::new("");
    c.clean_session = false;
    raw.send4(m4::Packet::Connect(c)).await;
    assert_eq!(raw.expect4().await, m4::Packet::ConnAck(m4::ConnAck::new(m4::ConnectReturnCode::BadClientId, false)));
    raw.expect_closed4().await;
    assert_eq!(h.metrics.rejected_connections_total(RejectReason::BadClientId), 1);

    // Empty client id with clean session: accepted, an id is generated.
    let mut raw = Raw::v4(h.port, "").await;
    raw.send4(publish4("t", rumqttc::QoS::AtLeastOnce, 1, "anon")).await;
    assert_eq!(raw.expect4().await, m4::Packet::PubAck(m4::PubAck::new(1)));
    let session = h.messages()[0].dedup.as_ref().unwrap().session.clone();
    assert!(session.starts_with("endpoint:lumen-") && session.len() > "endpoint:lumen-".len(), "{session}");

    raw.send4(m4::Packet::PingReq).await;
    assert_eq!(raw.expect4().await, m4::Packet::PingResp);
    raw.send4(m4::Packet::Connect(m4::Connect::new("again"))).await;
    raw.expect_closed4().await;
    assert_eq!(h.metrics.protocol_errors_total(), 1);

    // First packet not CONNECT: closed.
    let mut raw = Raw::open(h.port).await;
    raw.send4(m4::Packet::PingReq).await;
    raw.expect_closed4().await;

    // DISCONNECT closes cleanly.
    let mut raw = Raw::v4(h.port, "bye").await;
    raw.send4(m4::Packet::Disconnect).await;
    raw.expect_closed4().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout_closes() {
    let h = Harness::start(EndpointOptions::default(), Mode::Auto).await;
    let mut raw = Raw::open(h.port).await;
    let mut c = m4::Connect::new("sleepy");
    c.keep_alive = 1;
    raw.send4(m4::Packet::Connect(c)).await;
    assert!(matches!(raw.expect4().await, m4::Packet::ConnAck(_)));
    let started = std::time::Instant::now();
    raw.expect_closed4().await;
    assert!(started.elapsed() >= Duration::from_millis(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_stops_reading() {
    let mut h = Harness::start(EndpointOptions { receive_maximum: 5, ..Default::default() }, Mode::Hold).await;
    let mut raw = Raw::v4(h.port, "flood").await;
    let mut b = BytesMut::new();
    for pkid in 1..=10 {
        publish4("t", rumqttc::QoS::AtLeastOnce, pkid, "m").write(&mut b, usize::MAX).unwrap();
    }
    raw.s.write_all(&b).await.unwrap();
    // Usually one job of 5 (one read), but a split read may make it several.
    let mut first = Vec::new();
    while first.iter().map(|j: &Job| j.messages.len()).sum::<usize>() < 5 {
        first.push(h.next_job().await);
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(h.messages().len(), 5, "more than receive_maximum submitted before acknowledgements");
    for job in first {
        job.done.send(Ok(())).unwrap();
    }
    for pkid in 1..=5 {
        assert_eq!(raw.expect4().await, m4::Packet::PubAck(m4::PubAck::new(pkid)));
    }
    let mut pkid = 6;
    while pkid <= 10 {
        let job = h.next_job().await;
        let n = job.messages.len() as u16;
        job.done.send(Ok(())).unwrap();
        for _ in 0..n {
            assert_eq!(raw.expect4().await, m4::Packet::PubAck(m4::PubAck::new(pkid)));
            pkid += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_writes_pending_acks_then_closes() {
    let mut h = Harness::start(EndpointOptions::default(), Mode::Hold).await;
    let mut raw = Raw::v4(h.port, "late").await;
    raw.send4(publish4("t", rumqttc::QoS::AtLeastOnce, 9, "m")).await;
    let job = h.next_job().await;
    h.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Not accepting any more.
    assert!(TcpStream::connect(("127.0.0.1", h.port)).await.is_err());
    job.done.send(Ok(())).unwrap();
    assert_eq!(raw.expect4().await, m4::Packet::PubAck(m4::PubAck::new(9)));
    raw.expect_closed4().await;
    timeout(WAIT, h.server).await.unwrap().unwrap().unwrap();
    assert_eq!(h.metrics.connections(), 0);
}

/// Throughput with a pipeline that answers at once: `cargo test --release --test endpoint -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_qos1() {
    const N: usize = 300_000;
    let h = Harness::start(EndpointOptions { receive_maximum: 1024, ..Default::default() }, Mode::Count).await;

    // A raw pipelined client: keeps up to 1000 unacknowledged PUBLISHes in flight, written in chunks.
    let mut raw = Raw::v4(h.port, "perf-raw").await;
    let (mut rd, mut wr) = raw.s.into_split();
    let started = std::time::Instant::now();
    let window = Arc::new(tokio::sync::Semaphore::new(1000));
    let w = window.clone();
    let writer = tokio::spawn(async move {
        let mut b = BytesMut::with_capacity(64 * 1024);
        let mut sent = 0;
        while sent < N {
            let chunk = 100.min(N - sent);
            w.acquire_many(chunk as u32).await.unwrap().forget();
            for i in 0..chunk {
                let pkid = ((sent + i) % 65_535 + 1) as u16;
                publish4("perf/t", rumqttc::QoS::AtLeastOnce, pkid, "{\"v\":1.0}").write(&mut b, usize::MAX).unwrap();
            }
            sent += chunk;
            wr.write_all(&b).await.unwrap();
            b.clear();
        }
        wr
    });
    let mut acks = 0;
    while acks < N {
        raw.buf.reserve(64 * 1024);
        rd.read_buf(&mut raw.buf).await.unwrap();
        let mut n = 0;
        while let Ok(m4::Packet::PubAck(_)) = m4::Packet::read(&mut raw.buf, usize::MAX) {
            n += 1;
        }
        window.add_permits(n);
        acks += n;
    }
    let _wr = writer.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!("raw pipelined client: {N} QoS 1 messages in {secs:.2} s = {:.0} msg/s", N as f64 / secs);

    // The rumqttc client (its own event loop is usually the bottleneck).
    const M: usize = 100_000;
    let (client, mut events) = v4_client(h.port, "perf-rumqttc", None);
    assert_eq!(expect_connack4(&mut events).await, rumqttc::ConnectReturnCode::Success);
    let started = std::time::Instant::now();
    tokio::spawn(async move {
        for _ in 0..M {
            client.publish("perf/r", rumqttc::QoS::AtLeastOnce, false, "{\"v\":1.0}").await.unwrap();
        }
        client
    });
    let mut acks = 0;
    while acks < M {
        if let Some(rumqttc::Packet::PubAck(_)) = next_incoming4(&mut events, WAIT).await {
            acks += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("rumqttc client: {M} QoS 1 messages in {secs:.2} s = {:.0} msg/s", M as f64 / secs);
    eprintln!("jobs: {} for {} messages", h.jobs.load(Ordering::SeqCst), N + M);
}
