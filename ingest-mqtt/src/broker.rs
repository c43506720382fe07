//! The subscription to an external broker (Mosquitto, EMQX, ...), with rumqttc speaking MQTT 3.1.1 or 5.
//!
//! The session is persistent (clean session off, a stable client id), the subscription QoS 1, and
//! acknowledgements manual: a PUBACK goes out only once the pipeline says the message is durable, in the
//! order the messages came. What was not acknowledged when Lumen stopped or the connection broke, the
//! broker delivers again; a redelivery of a message that was stored is recognised by its delivery mark.
//!
//! One task drives rumqttc's event loop and forwards what it reads; another gathers the PUBLISHes into
//! jobs; a third awaits the jobs in order and sends the acknowledgements. A connection that breaks makes
//! the acknowledgements of its messages moot: they are not sent on the next one, whose redeliveries are
//! acknowledged instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{self, BrokerConfig, Protocol};
use crate::metrics::MqttMetrics;
use crate::{DedupKey, Message, Pipeline};

/// Events read from the broker: more than this and the event loop waits for the pipeline.
const EVENTS: usize = 16 * 1024;
/// Most messages in one job.
const JOB_MESSAGES: usize = 4096;

/// The broker connection, resolved from the config.
#[derive(Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub protocol: Protocol,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    /// Topic filters as subscribed (with the `$share/<group>/` prefix when shared).
    pub filters: Vec<String>,
    pub keep_alive: Duration,
    pub session_expiry: Duration,
    pub receive_maximum: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub max_packet_size: usize,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("client_id", &self.client_id)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Resolves the `[mqtt.broker]` section; `filters` come from the topic templates.
    ///
    /// # Errors
    /// A message naming the bad key: an unparsable URL, an unreadable password or certificate file.
    pub fn from_config(cfg: &BrokerConfig, filters: Vec<String>) -> Result<Settings, String> {
        let (tls, host, port) = parse_url(&cfg.url)?;
        let tls = if tls {
            Some(crate::tls::client_config(&cfg.ca_file, &cfg.client_cert_file, &cfg.client_key_file)?)
        } else {
            None
        };
        let password = config::password(&cfg.password, &cfg.password_file)?;
        let credentials = match (cfg.username.is_empty(), password) {
            (true, None) => None,
            (false, p) => Some((cfg.username.clone(), p.unwrap_or_default())),
            (true, Some(_)) => return Err("mqtt.broker.password is set but mqtt.broker.username is empty".into()),
        };
        if !cfg.shared_group.is_empty() && (cfg.shared_group.contains(['/', '+', '#'])) {
            return Err(format!("mqtt.broker.shared_group {:?} may not contain '/', '+' or '#'", cfg.shared_group));
        }
        let filters = filters
            .into_iter()
            .map(|f| if cfg.shared_group.is_empty() { f } else { format!("$share/{}/{f}", cfg.shared_group) })
            .collect();
        // The server fills in "lumen-<node name>" when the config leaves it empty.
        let client_id = if cfg.client_id.is_empty() { "lumen".to_string() } else { cfg.client_id.clone() };
        Ok(Settings {
            host,
            port,
            tls,
            protocol: cfg.protocol,
            client_id,
            credentials,
            filters,
            keep_alive: cfg.keep_alive.max(Duration::from_secs(5)),
            session_expiry: cfg.session_expiry,
            receive_maximum: cfg.receive_maximum.max(1),
            reconnect_min: cfg.reconnect_min.max(Duration::from_millis(10)),
            reconnect_max: cfg.reconnect_max.max(cfg.reconnect_min),
            max_packet_size: cfg.max_packet_size.as_u64().clamp(1024, 256 << 20) as usize,
        })
    }

    fn session(&self) -> Arc<str> {
        Arc::from(format!("broker:{}@{}:{}", self.client_id, self.host, self.port))
    }
}

/// Parses mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (tcp:// and ssl:// too) into (tls, host, port).
pub(crate) fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
    let bad = |why: &str| format!("mqtt.broker.url / --mqtt-broker {url:?}: {why}; write e.g. mqtt://127.0.0.1:1883");
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" | "tls" => true,
        _ => return Err(bad("the scheme is neither mqtt nor mqtts")),
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') || authority.contains('@') {
        return Err(bad("only a host and a port are allowed (credentials go in the config)"));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None if after.is_empty() => default_port,
            None => return Err(bad("junk after the address")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((tls, host, port))
}

/// What the event loop saw, the same for both protocol versions.
enum Event {
    Connected { session_present: bool },
    Publish { topic: String, payload: Bytes, pkid: u16, qos: u8, dup: bool },
    SubAck { refused: usize },
    Disconnected(String),
}

/// Sends acknowledgements and subscriptions through the client of either version.
#[derive(Clone)]
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    async fn ack(&self, pkid: u16, qos: u8) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", qos4(qos), Vec::new());
                p.pkid = pkid;
                c.ack(&p).await.map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let mut p = rumqttc::v5::mqttbytes::v5::Publish::new("", qos5(qos), Vec::new(), None);
                p.pkid = pkid;
                c.ack(&p).await.map_err(|e| e.to_string())
            }
        }
    }

    async fn subscribe(&self, filters: &[String]) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .subscribe_many(
                    filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), rumqttc::QoS::AtLeastOnce)),
                )
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe_many(filters.iter().map(|f| {
                    let mut filter =
                        rumqttc::v5::mqttbytes::v5::Filter::new(f.clone(), rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
                    // Retained messages only for a subscription the session did not hold yet, so a restart
                    // of Lumen does not store them again.
                    filter.retain_forward_rule = rumqttc::v5::mqttbytes::v5::RetainForwardRule::OnNewSubscribe;
                    filter
                }))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// Connects, subscribes and forwards messages until `shutdown`; reconnects with backoff on any error.
pub async fn run(settings: Settings, pipeline: Pipeline, metrics: Arc<MqttMetrics>, shutdown: CancellationToken) {
    let (events_tx, mut events) = mpsc::channel::<Event>(EVENTS);
    let (client, driver) = match settings.protocol {
        Protocol::V311 => spawn_v4(&settings, events_tx, metrics.clone(), shutdown.clone()),
        Protocol::V5 => spawn_v5(&settings, events_tx, metrics.clone(), shutdown.clone()),
    };
    let session = settings.session();
    // Bumped on every new connection; acknowledgements of an older one are not sent.
    let generation = Arc::new(AtomicU64::new(0));
    let (acks_tx, acks_rx) = mpsc::channel::<Pending>(1024);
    let acker = tokio::spawn(acknowledge(acks_rx, client.clone(), generation.clone()));
    tracing::info!(
        host = %settings.host, port = settings.port, tls = settings.tls.is_some(), client_id = %settings.client_id,
        filters = ?settings.filters, "subscribing to the MQTT broker"
    );

    let mut carry: Option<Event> = None;
    // Subscribed on this run's first connection (the templates may have changed since the session began);
    // later only when the broker lost the session, since subscribing again makes a 3.1.1 broker send every
    // retained message again.
    let mut subscribed = false;
    'outer: loop {
        let ev = match carry.take() {
            Some(ev) => ev,
            None => tokio::select! {
                () = shutdown.cancelled() => break,
                ev = events.recv() => match ev { Some(ev) => ev, None => break },
            },
        };
        match ev {
            Event::Connected { session_present } => {
                generation.fetch_add(1, Ordering::AcqRel);
                metrics.broker_connected.set(1);
                metrics.broker_connections.inc();
                tracing::info!(session_present, client_id = %settings.client_id, "connected to the MQTT broker");
                if (!subscribed || !session_present)
                    && let Err(e) = client.subscribe(&settings.filters).await
                {
                    tracing::warn!(error = %e, "could not send the subscription to the MQTT broker");
                }
            }
            Event::SubAck { refused } => {
                // Only an answered SUBSCRIBE counts: one lost with its connection is sent again.
                subscribed = true;
                if refused > 0 {
                    metrics.broker_subscribe_failures.inc_by(refused as u64);
                    tracing::error!(
                        refused, filters = ?settings.filters,
                        "the MQTT broker refused topic filters: check its ACLs and the templates"
                    );
                }
            }
            Event::Disconnected(reason) => {
                metrics.broker_connected.set(0);
                tracing::debug!(reason = %reason, "MQTT broker connection lost");
            }
            Event::Publish { topic, payload, pkid, qos, dup } => {
                let gen_now = generation.load(Ordering::Acquire);
                let mut messages = Vec::with_capacity(64);
                let mut acks = Vec::with_capacity(64);
                let push = |messages: &mut Vec<Message>, acks: &mut Vec<(u16, u8)>, topic, payload, pkid, qos, dup| {
                    let dedup = (qos > 0).then(|| DedupKey { session: session.clone(), pkid, dup });
                    messages.push(Message { topic, payload, received_ns: store::time::now_ns(), dedup });
                    if qos > 0 {
                        acks.push((pkid, qos));
                    }
                };
                push(&mut messages, &mut acks, topic, payload, pkid, qos, dup);
                // Take what is already read, so that one job carries many messages.
                while messages.len() < JOB_MESSAGES {
                    match events.try_recv() {
                        Ok(Event::Publish { topic, payload, pkid, qos, dup }) => {
                            push(&mut messages, &mut acks, topic, payload, pkid, qos, dup);
                        }
                        Ok(other) => {
                            carry = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let done = match pipeline.submit(messages).await {
                    Ok(rx) => rx,
                    Err(e) => {
                        tracing::error!(error = %e, "MQTT broker messages cannot be stored");
                        break 'outer;
                    }
                };
                if acks_tx.send(Pending { generation: gen_now, done, acks }).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(acks_tx);
    // Let the acknowledgements of what was stored go out before disconnecting.
    let _ = tokio::time::timeout(Duration::from_secs(5), acker).await;
    client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
    metrics.broker_connected.set(0);
}

/// A job on its way to the store, and the acknowledgements it will allow.
struct Pending {
    generation: u64,
    done: oneshot::Receiver<Result<(), String>>,
    acks: Vec<(u16, u8)>,
}

async fn acknowledge(mut rx: mpsc::Receiver<Pending>, client: Client, generation: Arc<AtomicU64>) {
    while let Some(p) = rx.recv().await {
        let result = p.done.await.unwrap_or_else(|_| Err("the MQTT ingest pipeline stopped".to_string()));
        if let Err(reason) = result {
            // The broker only delivers unacknowledged messages again on a new connection: make one.
            tracing::warn!(error = %reason, "MQTT messages not stored; reconnecting so the broker delivers them again");
            client.disconnect().await;
            continue;
        }
        if generation.load(Ordering::Acquire) != p.generation {
            continue;
        }
        for (pkid, qos) in p.acks {
            if let Err(e) = client.ack(pkid, qos).await {
                tracing::debug!(error = %e, "could not queue an MQTT acknowledgement");
                break;
            }
        }
    }
}

/// Sleeps the backoff after a failure; false when shut down meanwhile.
async fn backoff(delay: &mut Duration, settings: &Settings, shutdown: &CancellationToken) -> bool {
    let wait = *delay;
    *delay = (*delay * 2).min(settings.reconnect_max);
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

fn transport(settings: &Settings) -> rumqttc::Transport {
    match &settings.tls {
        Some(cfg) => rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(cfg.clone())),
        None => rumqttc::Transport::tcp(),
    }
}

/// rumqttc's event loop of either version, seen as a source of [`Event`]s.
trait EventSource: Send + 'static {
    /// The next event worth forwarding (None for packets the run loop does not need), or the error that
    /// ended the connection; the next call reconnects.
    fn next(&mut self) -> impl std::future::Future<Output = Result<Option<Event>, String>> + Send;
}

impl EventSource for rumqttc::EventLoop {
    async fn next(&mut self) -> Result<Option<Event>, String> {
        use rumqttc::{Event as E, Packet};
        Ok(match self.poll().await.map_err(|e| e.to_string())? {
            E::Incoming(Packet::ConnAck(ack)) => Some(Event::Connected { session_present: ack.session_present }),
            E::Incoming(Packet::Publish(p)) => {
                Some(Event::Publish { topic: p.topic, payload: p.payload, pkid: p.pkid, qos: p.qos as u8, dup: p.dup })
            }
            E::Incoming(Packet::SubAck(s)) => Some(Event::SubAck {
                refused: s.return_codes.iter().filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)).count(),
            }),
            _ => None,
        })
    }
}

impl EventSource for rumqttc::v5::EventLoop {
    async fn next(&mut self) -> Result<Option<Event>, String> {
        use rumqttc::v5::Event as E;
        use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
        Ok(match self.poll().await.map_err(|e| e.to_string())? {
            E::Incoming(Packet::ConnAck(ack)) => Some(Event::Connected { session_present: ack.session_present }),
            E::Incoming(Packet::Publish(p)) => Some(Event::Publish {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload,
                pkid: p.pkid,
                qos: p.qos as u8,
                dup: p.dup,
            }),
            E::Incoming(Packet::SubAck(s)) => Some(Event::SubAck {
                refused: s.return_codes.iter().filter(|c| !matches!(c, SubscribeReasonCode::Success(_))).count(),
            }),
            _ => None,
        })
    }
}

/// Drives the event loop until shut down, forwarding events; after a failure it waits the backoff (reset
/// by every successful connection) and polls again, which reconnects.
fn drive(
    mut source: impl EventSource,
    tx: mpsc::Sender<Event>,
    metrics: Arc<MqttMetrics>,
    settings: Settings,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut delay = settings.reconnect_min;
        loop {
            let polled = tokio::select! {
                () = shutdown.cancelled() => break,
                r = source.next() => r,
            };
            let ev = match polled {
                Ok(Some(ev)) => ev,
                Ok(None) => continue,
                Err(e) => {
                    metrics.broker_errors.inc();
                    tracing::warn!(error = %e, retry_in = ?delay, "MQTT broker connection failed");
                    let _ = tx.send(Event::Disconnected(e)).await;
                    if !backoff(&mut delay, &settings, &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            if matches!(ev, Event::Connected { .. }) {
                delay = settings.reconnect_min;
            }
            if tx.send(ev).await.is_err() {
                break;
            }
        }
    })
}

fn spawn_v4(
    settings: &Settings,
    tx: mpsc::Sender<Event>,
    metrics: Arc<MqttMetrics>,
    shutdown: CancellationToken,
) -> (Client, tokio::task::JoinHandle<()>) {
    let mut opts = rumqttc::MqttOptions::new(settings.client_id.clone(), settings.host.clone(), settings.port);
    opts.set_keep_alive(settings.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(settings.max_packet_size, settings.max_packet_size)
        .set_request_channel_capacity(64 * 1024)
        .set_transport(transport(settings));
    if let Some((u, p)) = &settings.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    let (client, eventloop) = rumqttc::AsyncClient::new(opts, 64 * 1024);
    (Client::V4(client), drive(eventloop, tx, metrics, settings.clone(), shutdown))
}

fn spawn_v5(
    settings: &Settings,
    tx: mpsc::Sender<Event>,
    metrics: Arc<MqttMetrics>,
    shutdown: CancellationToken,
) -> (Client, tokio::task::JoinHandle<()>) {
    let mut opts = rumqttc::v5::MqttOptions::new(settings.client_id.clone(), settings.host.clone(), settings.port);
    opts.set_keep_alive(settings.keep_alive)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(settings.session_expiry.as_secs().min(u64::from(u32::MAX)) as u32))
        .set_receive_maximum(Some(settings.receive_maximum))
        .set_max_packet_size(Some(settings.max_packet_size as u32))
        .set_manual_acks(true)
        .set_request_channel_capacity(64 * 1024)
        .set_transport(transport(settings));
    if let Some((u, p)) = &settings.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, 64 * 1024);
    (Client::V5(client), drive(eventloop, tx, metrics, settings.clone(), shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(parse_url("mqtt://127.0.0.1:1884").unwrap(), (false, "127.0.0.1".into(), 1884));
        assert_eq!(parse_url("mqtt://broker").unwrap(), (false, "broker".into(), 1883));
        assert_eq!(parse_url("mqtts://broker.example.com").unwrap(), (true, "broker.example.com".into(), 8883));
        assert_eq!(parse_url("mqtt://[::1]:1999/").unwrap(), (false, "::1".into(), 1999));
        for bad in ["broker:1883", "http://x:1", "mqtt://:1883", "mqtt://u:p@host:1", "mqtt://h:port", "mqtt://h/t"] {
            let err = parse_url(bad).unwrap_err();
            assert!(err.contains("mqtt://127.0.0.1:1883"), "{bad}: {err}");
        }
    }

    #[test]
    fn shared_group_prefixes_every_filter() {
        let cfg = BrokerConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            shared_group: "lumen".into(),
            client_id: "a".into(),
            ..BrokerConfig::default()
        };
        let s = Settings::from_config(&cfg, vec!["devices/+/+/telemetry".into(), "spBv1.0/#".into()]).unwrap();
        assert_eq!(s.filters, vec!["$share/lumen/devices/+/+/telemetry", "$share/lumen/spBv1.0/#"]);
        let bad = BrokerConfig { shared_group: "a/b".into(), ..cfg };
        assert!(Settings::from_config(&bad, vec![]).unwrap_err().contains("shared_group"));
    }
}
