//! The embedded MQTT endpoint: an ingest-only MQTT 3.1.1 / 5 server that devices publish to directly.
//!
//! Every PUBLISH is handed to the [`Pipeline`]; QoS 1 messages are answered with PUBACK and QoS 2 messages with
//! PUBREC only once the pipeline reports them durable (in the fsynced write-ahead log). The endpoint holds no
//! subscriptions and delivers nothing: SUBSCRIBE is refused.
//!
//! Each connection runs as a reader (decodes every complete packet in its buffer, submits all PUBLISHes of one read
//! as one job) and a writer (awaits the jobs in order and writes every due acknowledgement with one write). The
//! packet codec is rumqttc's (`mqttbytes::v4` for 3.1.1, `v5::mqttbytes::v5` for 5).

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::v4 as m4;
use rumqttc::v5::mqttbytes::v5 as m5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{DedupKey, Message, Pipeline};

/// The reading half of a connection, plain or TLS.
type Rd = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// The writing half.
type Wr = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// The TLS of an `mqtts` listener: called for each new connection, so that a reloaded certificate applies
/// to the connections made after it.
pub type ServerTls = Arc<dyn Fn() -> Arc<tls::rustls::ServerConfig> + Send + Sync>;

/// How long a new connection may take to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `serve` waits, after shutdown was asked for, for connections to write their pending acknowledgements.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Read buffer size: one read can bring this many bytes (many PUBLISHes) at once.
const READ_BUF: usize = 64 * 1024;
/// Below this much free space the read buffer is grown (or reclaimed) before reading.
const MIN_SPARE: usize = 8 * 1024;
/// Topic aliases an MQTT 5 client may use per connection (advertised in CONNACK).
const TOPIC_ALIAS_MAX: u16 = 64;
/// Batches queued between a connection's reader and writer.
const ITEM_QUEUE: usize = 256;

/// Settings of the embedded endpoint.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// When set, CONNECT must carry this user name (else CONNACK "bad user name or password").
    pub username: Option<String>,
    /// When set, CONNECT must carry this password (else CONNACK "bad user name or password").
    pub password: Option<String>,
    /// The server's tokens. When enabled, a CONNECT may also log in with a tenant as user name and a token
    /// with the `write` scope for it as password; that connection's messages are stored under that tenant.
    pub auth: auth::Auth,
    /// The tenant of every other connection's messages (`mqtt.tenant`).
    pub tenant: store::model::Tenant,
    /// Largest packet accepted (remaining length); a larger one closes the connection (MQTT 5: DISCONNECT 0x95
    /// first). Advertised to MQTT 5 clients.
    pub max_packet_size: usize,
    /// QoS 1/2 messages a client may have unacknowledged. Advertised to MQTT 5 clients; past it the endpoint stops
    /// reading from the connection until acknowledgements went out (this is how it is enforced for 3.1.1).
    pub receive_maximum: u16,
    /// Connections served at once; further ones are closed at once.
    pub max_connections: usize,
    /// A connection is closed after keep_alive × this without a packet (MQTT says 1.5).
    pub keep_alive_grace: f32,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            username: None,
            password: None,
            auth: auth::Auth::disabled(),
            tenant: store::model::Tenant::default_tenant(),
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            max_connections: 10_000,
            keep_alive_grace: 1.5,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Wrong or missing user name or password.
    BadCredentials,
    /// Empty client id without clean session (3.1.1), or otherwise unacceptable client id.
    BadClientId,
    /// Protocol level other than 4 (3.1.1) or 5, e.g. MQTT 3.1.
    UnsupportedProtocol,
    /// MQTT 5 enhanced authentication (an authentication method) was asked for.
    BadAuthMethod,
    /// No CONNECT within 10 s.
    ConnectTimeout,
    /// The first packet was not a valid CONNECT.
    BadConnect,
    /// `max_connections` connections were already open.
    TooManyConnections,
    /// The TLS handshake of an `mqtts` connection failed or took longer than the CONNECT timeout.
    TlsHandshake,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        RejectReason::BadCredentials,
        RejectReason::BadClientId,
        RejectReason::UnsupportedProtocol,
        RejectReason::BadAuthMethod,
        RejectReason::ConnectTimeout,
        RejectReason::BadConnect,
        RejectReason::TooManyConnections,
        RejectReason::TlsHandshake,
    ];

    /// A label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadCredentials => "bad_credentials",
            RejectReason::BadClientId => "bad_client_id",
            RejectReason::UnsupportedProtocol => "unsupported_protocol",
            RejectReason::BadAuthMethod => "bad_auth_method",
            RejectReason::ConnectTimeout => "connect_timeout",
            RejectReason::BadConnect => "bad_connect",
            RejectReason::TooManyConnections => "too_many_connections",
            RejectReason::TlsHandshake => "tls_handshake",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of the endpoint (atomics; read them with the getters).
#[derive(Debug, Default)]
pub struct EndpointMetrics {
    connections: AtomicI64,
    connections_total: AtomicU64,
    messages_total: [AtomicU64; 3],
    bytes_total: AtomicU64,
    rejected_connections_total: [AtomicU64; RejectReason::ALL.len()],
    protocol_errors_total: AtomicU64,
    oversized_total: AtomicU64,
}

impl EndpointMetrics {
    /// Connections open now (gauge).
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// Connections accepted (TCP) since start.
    pub fn connections_total(&self) -> u64 {
        self.connections_total.load(Ordering::Relaxed)
    }
    /// PUBLISH messages received with this QoS (0, 1 or 2; others give 0). Repeated QoS 2 PUBLISHes answered
    /// without submitting are not counted.
    pub fn messages_total(&self, qos: u8) -> u64 {
        self.messages_total.get(usize::from(qos)).map_or(0, |c| c.load(Ordering::Relaxed))
    }
    /// Bytes read from clients (all packets).
    pub fn bytes_total(&self) -> u64 {
        self.bytes_total.load(Ordering::Relaxed)
    }
    /// Connections refused, by reason.
    pub fn rejected_connections_total(&self, reason: RejectReason) -> u64 {
        self.rejected_connections_total[reason.index()].load(Ordering::Relaxed)
    }
    /// Connections closed because of a malformed or unexpected packet.
    pub fn protocol_errors_total(&self) -> u64 {
        self.protocol_errors_total.load(Ordering::Relaxed)
    }
    /// Connections closed because a packet exceeded `max_packet_size`.
    pub fn oversized_total(&self) -> u64 {
        self.oversized_total.load(Ordering::Relaxed)
    }

    fn reject(&self, reason: RejectReason) {
        self.rejected_connections_total[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Lets through a few warnings per second and counts the ones it held back.
struct WarnLimiter {
    state: Mutex<(Instant, u32, u64)>,
}

impl WarnLimiter {
    const PER_SECOND: u32 = 5;

    fn new() -> Self {
        WarnLimiter { state: Mutex::new((Instant::now(), 0, 0)) }
    }

    /// Some(number of warnings suppressed before this one) when this warning may be logged.
    fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(s.0) >= Duration::from_secs(1) {
            s.0 = now;
            s.1 = 0;
        }
        if s.1 < Self::PER_SECOND {
            s.1 += 1;
            Some(std::mem::take(&mut s.2))
        } else {
            s.2 += 1;
            None
        }
    }
}

macro_rules! limited_warn {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.allow() {
            warn!(suppressed, $($arg)+);
        }
    };
}

struct Shared {
    opts: EndpointOptions,
    pipeline: Pipeline,
    metrics: Arc<EndpointMetrics>,
    shutdown: CancellationToken,
    warn_limit: WarnLimiter,
}

/// Serves MQTT on `listener` until `shutdown` is cancelled; then stops accepting, lets connections write their
/// pending acknowledgements (bounded wait) and closes them.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    opts: EndpointOptions,
    pipeline: Pipeline,
    metrics: Arc<EndpointMetrics>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let shared = Arc::new(Shared { opts, pipeline, metrics, shutdown, warn_limit: WarnLimiter::new() });
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "MQTT endpoint listening");
    }
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            Some(joined) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    warn!(error = %e, "MQTT connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if conns.len() >= shared.opts.max_connections {
                        shared.metrics.reject(RejectReason::TooManyConnections);
                        limited_warn!(shared.warn_limit, %peer, reason = "too many connections", "MQTT connection refused");
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    conns.spawn(connection(stream, peer, shared.clone(), tls.clone()));
                }
                Err(e) => {
                    // Usually transient (a connection reset before accept, out of file descriptors): back off a bit.
                    limited_warn!(shared.warn_limit, error = %e, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    info!(connections = conns.len(), "MQTT endpoint shutting down");
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(connections = conns.len(), "MQTT connections did not finish in time; closing them");
        conns.shutdown().await;
    }
    Ok(())
}

/// Counts the connection in the gauge while it lives (also when its task is aborted).
struct ConnGuard(Arc<EndpointMetrics>);

impl ConnGuard {
    fn new(metrics: Arc<EndpointMetrics>) -> Self {
        metrics.connections.fetch_add(1, Ordering::Relaxed);
        metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        ConnGuard(metrics)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Aborts a spawned task when dropped (so aborting a connection task also ends its writer).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V4,
    V5,
}

struct Session {
    version: Version,
    client_id: String,
    keep_alive: Option<Duration>,
    /// The tenant a token login named; None for `mqtt.tenant`.
    tenant: Option<store::model::Tenant>,
}

async fn connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, tls: Option<ServerTls>) {
    let _guard = ConnGuard::new(shared.metrics.clone());
    let (mut rd, mut wr): (Rd, Wr) = match tls {
        None => {
            let (rd, wr) = stream.into_split();
            (Box::new(rd), Box::new(wr))
        }
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls());
            match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let (rd, wr) = tokio::io::split(stream);
                    (Box::new(rd), Box::new(wr))
                }
                Ok(Err(e)) => {
                    shared.metrics.reject(RejectReason::TlsHandshake);
                    debug!(%peer, error = %e, "MQTT TLS handshake failed");
                    return;
                }
                Err(_) => {
                    shared.metrics.reject(RejectReason::TlsHandshake);
                    debug!(%peer, "MQTT TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let Some(session) = handshake(&mut rd, &mut wr, &mut buf, peer, &shared).await else {
        return;
    };
    let Session { version, client_id, keep_alive, tenant } = session;
    debug!(client_id, %peer, ?version, "MQTT client connected");

    let permits = Arc::new(Semaphore::new(usize::from(shared.opts.receive_maximum.max(1))));
    let conn_cancel = CancellationToken::new();
    let (items_tx, items_rx) = mpsc::channel(ITEM_QUEUE);
    let writer = Writer {
        wr,
        items: items_rx,
        version,
        permits: permits.clone(),
        conn_cancel: conn_cancel.clone(),
        out: BytesMut::with_capacity(4096),
    };
    let writer = AbortOnDrop(tokio::spawn(writer.run()));

    let mut reader = Reader {
        rd,
        buf,
        version,
        session_key: Arc::from(format!("endpoint:{client_id}")),
        tenant,
        aliases: vec![None; usize::from(TOPIC_ALIAS_MAX) + 1],
        awaiting_rel: HashSet::new(),
        permits,
        items: items_tx,
        conn_cancel: conn_cancel.clone(),
        keep_alive,
        shared: shared.clone(),
        batch: Vec::new(),
        outs: Vec::new(),
    };
    let close = reader.run().await;
    let Reader { items, .. } = reader;
    // Counted before the connection is closed (tests and scrapes see them once the client sees the close).
    match &close {
        Close::Oversized(_) => shared.metrics.oversized_total.fetch_add(1, Ordering::Relaxed),
        Close::Protocol { .. } => shared.metrics.protocol_errors_total.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
    let disconnect = match &close {
        Close::Oversized(_) => Some(m5::DisconnectReasonCode::PacketTooLarge),
        Close::Protocol { code, .. } => Some(*code),
        Close::KeepAlive => Some(m5::DisconnectReasonCode::KeepAliveTimeout),
        Close::Shutdown => Some(m5::DisconnectReasonCode::ServerShuttingDown),
        Close::PipelineStopped => Some(m5::DisconnectReasonCode::ServerShuttingDown),
        _ => None,
    };
    if let Some(code) = disconnect
        && version == Version::V5
    {
        let _ = items.send(Item::Disconnect(code)).await;
    }
    drop(items);
    let mut writer = writer;
    let written = (&mut writer.0).await;
    let writer_end = match written {
        Ok(end) => end,
        Err(_) => WriterEnd::Io("writer task failed".into()),
    };

    match &close {
        Close::ClientDisconnect | Close::Eof => debug!(client_id, %peer, reason = close.describe(), "MQTT client left"),
        Close::Oversized(size) => {
            limited_warn!(shared.warn_limit, client_id, %peer, size, max = shared.opts.max_packet_size,
                reason = "packet too large", "MQTT connection closed");
        }
        Close::Protocol { error, .. } => {
            limited_warn!(shared.warn_limit, client_id, %peer, error = %error, reason = "protocol error",
                "MQTT connection closed");
        }
        Close::KeepAlive => info!(client_id, %peer, reason = close.describe(), "MQTT connection closed"),
        Close::Io(e) => debug!(client_id, %peer, error = %e, reason = "read error", "MQTT connection closed"),
        Close::PipelineStopped | Close::Shutdown | Close::WriterEnded => {}
    }
    match &writer_end {
        WriterEnd::Done => {}
        WriterEnd::PipelineFailed(e) => {
            limited_warn!(shared.warn_limit, client_id, %peer, error = %e, reason = "not stored",
                "MQTT messages could not be stored; connection closed without acknowledging them");
        }
        WriterEnd::Io(e) => debug!(client_id, %peer, error = %e, reason = "write error", "MQTT connection closed"),
    }
    debug!(client_id, %peer, reason = close.describe(), "MQTT client disconnected");
}

/// Waits for a complete CONNECT, checks it and answers CONNACK. None when the connection is to be closed.
async fn handshake(rd: &mut Rd, wr: &mut Wr, buf: &mut BytesMut, peer: SocketAddr, shared: &Shared) -> Option<Session> {
    let opts = &shared.opts;
    let metrics = &shared.metrics;
    let peeked = tokio::select! {
        _ = shared.shutdown.cancelled() => return None,
        r = tokio::time::timeout(CONNECT_TIMEOUT, read_connect(rd, buf, opts.max_packet_size, metrics)) => r,
    };
    let (name_ok, level) = match peeked {
        Err(_) => {
            metrics.reject(RejectReason::ConnectTimeout);
            debug!(%peer, reason = "no CONNECT in time", "MQTT connection refused");
            return None;
        }
        Ok(Err(reason)) => {
            metrics.reject(RejectReason::BadConnect);
            limited_warn!(shared.warn_limit, %peer, reason, "MQTT connection refused");
            return None;
        }
        Ok(Ok(peeked)) => peeked,
    };

    let mut out = BytesMut::with_capacity(64);
    let refuse_v4 = |out: &mut BytesMut, code: m4::ConnectReturnCode| {
        let _ = m4::ConnAck::new(code, false).write(out);
    };
    let refuse_v5 = |out: &mut BytesMut, code: m5::ConnectReturnCode| {
        let _ = m5::ConnAck { session_present: false, code, properties: None }.write(out);
    };
    let max = opts.max_packet_size;

    let result: Result<Session, (RejectReason, &'static str)> = match (name_ok, level) {
        (true, 4) => match m4::Packet::read(buf, max) {
            Ok(m4::Packet::Connect(c)) => {
                let login = c.login.as_ref().map(|l| (l.username.as_str(), l.password.as_str()));
                if c.client_id.is_empty() && !c.clean_session {
                    refuse_v4(&mut out, m4::ConnectReturnCode::BadClientId);
                    Err((RejectReason::BadClientId, "empty client id without clean session"))
                } else if let Some(tenant) = login_tenant(opts, login) {
                    let _ = m4::ConnAck::new(m4::ConnectReturnCode::Success, false).write(&mut out);
                    let client_id = if c.client_id.is_empty() { generate_client_id() } else { c.client_id };
                    Ok(Session { version: Version::V4, client_id, keep_alive: keep_alive(c.keep_alive, opts), tenant })
                } else {
                    refuse_v4(&mut out, m4::ConnectReturnCode::BadUserNamePassword);
                    Err((RejectReason::BadCredentials, "bad user name or password"))
                }
            }
            _ => Err((RejectReason::BadConnect, "malformed CONNECT")),
        },
        (true, 5) => match m5::Packet::read(buf, Some(u32::try_from(max).unwrap_or(u32::MAX))) {
            Ok(m5::Packet::Connect(c, _will, login)) => {
                let auth_method = c.properties.as_ref().and_then(|p| p.authentication_method.as_ref());
                let login_ref = login.as_ref().map(|l| (l.username.as_str(), l.password.as_str()));
                if auth_method.is_some() {
                    refuse_v5(&mut out, m5::ConnectReturnCode::BadAuthenticationMethod);
                    Err((RejectReason::BadAuthMethod, "enhanced authentication is not supported"))
                } else if let Some(tenant) = login_tenant(opts, login_ref) {
                    let assigned = c.client_id.is_empty().then(generate_client_id);
                    let properties = m5::ConnAckProperties {
                        session_expiry_interval: None,
                        receive_max: Some(opts.receive_maximum.max(1)),
                        max_qos: None,
                        retain_available: None,
                        max_packet_size: Some(u32::try_from(max).unwrap_or(u32::MAX)),
                        assigned_client_identifier: assigned.clone(),
                        topic_alias_max: Some(TOPIC_ALIAS_MAX),
                        reason_string: None,
                        user_properties: Vec::new(),
                        wildcard_subscription_available: Some(0),
                        subscription_identifiers_available: Some(0),
                        shared_subscription_available: Some(0),
                        server_keep_alive: None,
                        response_information: None,
                        server_reference: None,
                        authentication_method: None,
                        authentication_data: None,
                    };
                    let connack = m5::ConnAck {
                        session_present: false,
                        code: m5::ConnectReturnCode::Success,
                        properties: Some(properties),
                    };
                    let _ = connack.write(&mut out);
                    let client_id = assigned.unwrap_or(c.client_id);
                    Ok(Session { version: Version::V5, client_id, keep_alive: keep_alive(c.keep_alive, opts), tenant })
                } else {
                    refuse_v5(&mut out, m5::ConnectReturnCode::BadUserNamePassword);
                    Err((RejectReason::BadCredentials, "bad user name or password"))
                }
            }
            _ => Err((RejectReason::BadConnect, "malformed CONNECT")),
        },
        _ => {
            // MQTT 3.1 ("MQIsdp", level 3) and unknown levels: the codec handles only 4 and 5.
            refuse_v4(&mut out, m4::ConnectReturnCode::RefusedProtocolVersion);
            Err((RejectReason::UnsupportedProtocol, "unsupported protocol version"))
        }
    };

    if let Err((reject, _)) = &result {
        metrics.reject(*reject);
    }
    let written = if out.is_empty() { Ok(()) } else { wr.write_all(&out).await };
    match result {
        Ok(session) => written.ok().map(|()| session),
        Err((_, reason)) => {
            limited_warn!(shared.warn_limit, %peer, level, reason, "MQTT connection refused");
            let _ = wr.shutdown().await;
            None
        }
    }
}

/// Reads until a complete CONNECT frame is buffered; returns whether the protocol name is "MQTT" and the
/// protocol level.
async fn read_connect(
    rd: &mut Rd,
    buf: &mut BytesMut,
    max: usize,
    metrics: &EndpointMetrics,
) -> Result<(bool, u8), &'static str> {
    loop {
        match peek_connect(buf, max) {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        if buf.capacity() - buf.len() < MIN_SPARE {
            buf.reserve(READ_BUF);
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Err("connection closed before CONNECT"),
            Ok(n) => {
                metrics.bytes_total.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => return Err("read error before CONNECT"),
        }
    }
}

/// Looks at a buffered CONNECT without consuming it: Ok(None) = need more bytes.
fn peek_connect(buf: &[u8], max: usize) -> Result<Option<(bool, u8)>, &'static str> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != 0x10 {
        return Err("first packet is not CONNECT");
    }
    match rumqttc::mqttbytes::check(buf.iter(), max) {
        Ok(_) => {}
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)) => return Err("CONNECT too large"),
        Err(_) => return Err("malformed CONNECT"),
    }
    // Fixed header: type byte, then 1-4 remaining-length bytes (the last has the high bit clear).
    let header_len = 1 + buf[1..].iter().position(|b| b & 0x80 == 0).ok_or("malformed CONNECT")? + 1;
    let name_len = match buf.get(header_len..header_len + 2) {
        Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
        None => return Err("malformed CONNECT"),
    };
    let name = buf.get(header_len + 2..header_len + 2 + name_len).ok_or("malformed CONNECT")?;
    let level = *buf.get(header_len + 2 + name_len).ok_or("malformed CONNECT")?;
    Ok(Some((name == b"MQTT", level)))
}

fn keep_alive(secs: u16, opts: &EndpointOptions) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs_f32(f32::from(secs) * opts.keep_alive_grace.max(1.0)))
}

/// Compares without stopping at the first difference, so timing tells little about the expected value.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

/// Who may connect: `Some(tenant)` when the login is accepted — `Some(None)` for `mqtt.tenant` (no
/// credential needed, or the fixed user name and password), `Some(Some(t))` for a token login as tenant
/// `t` (user name = tenant, password = a token with the write scope for it) — and `None` when refused.
fn login_tenant(opts: &EndpointOptions, login: Option<(&str, &str)>) -> Option<Option<store::model::Tenant>> {
    let fixed = opts.username.is_some() || opts.password.is_some();
    if !fixed && !opts.auth.is_enabled() {
        return Some(None);
    }
    let (user, pass) = login?;
    if fixed {
        let user_ok = opts.username.as_ref().is_none_or(|u| ct_eq(u.as_bytes(), user.as_bytes()));
        let pass_ok = opts.password.as_ref().is_none_or(|p| ct_eq(p.as_bytes(), pass.as_bytes()));
        if user_ok & pass_ok {
            return Some(None);
        }
    }
    if !opts.auth.is_enabled() {
        return None;
    }
    opts.auth.login(user, pass, auth::Scope::Write).ok().map(|t| (t != opts.tenant).then_some(t))
}

fn generate_client_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("lumen-{nanos:x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A response the writer sends, in order.
#[derive(Debug, Clone, Copy)]
enum Out {
    PubAck(u16),
    PubRec(u16),
    /// pkid, and whether a PUBREC was outstanding for it.
    PubComp(u16, bool),
    PingResp,
    /// pkid, number of filters.
    SubAck(u16, usize),
    UnsubAck(u16, usize),
}

enum Item {
    /// Responses due once `done` (when present) says the job's messages are durable.
    Batch { done: Option<oneshot::Receiver<Result<(), String>>>, outs: Vec<Out> },
    /// MQTT 5: tell the client why the connection closes (after all earlier responses).
    Disconnect(m5::DisconnectReasonCode),
}

/// Why the reader stopped.
enum Close {
    ClientDisconnect,
    Eof,
    Oversized(usize),
    Protocol { error: String, code: m5::DisconnectReasonCode },
    KeepAlive,
    Io(io::Error),
    PipelineStopped,
    Shutdown,
    WriterEnded,
}

impl Close {
    fn describe(&self) -> &'static str {
        match self {
            Close::ClientDisconnect => "client sent DISCONNECT",
            Close::Eof => "connection closed by client",
            Close::Oversized(_) => "packet too large",
            Close::Protocol { .. } => "protocol error",
            Close::KeepAlive => "keep-alive timeout",
            Close::Io(_) => "read error",
            Close::PipelineStopped => "pipeline stopped",
            Close::Shutdown => "server shutting down",
            Close::WriterEnded => "write side closed",
        }
    }
}

fn protocol(error: impl Into<String>, code: m5::DisconnectReasonCode) -> Close {
    Close::Protocol { error: error.into(), code }
}

/// One decoded packet, protocol version aside.
enum Inbound {
    Publish {
        qos: u8,
        dup: bool,
        pkid: u16,
        topic: String,
        payload: bytes::Bytes,
    },
    PubRel(u16),
    Subscribe(u16, usize),
    Unsubscribe(u16, usize),
    PingReq,
    Disconnect,
    /// PUBACK/PUBREC/PUBCOMP from the client: we never publish, nothing to do.
    Ignored,
}

struct Reader {
    rd: Rd,
    /// Where this connection's messages are stored (None: `mqtt.tenant`).
    tenant: Option<store::model::Tenant>,
    buf: BytesMut,
    version: Version,
    session_key: Arc<str>,
    /// MQTT 5 topic aliases (index = alias).
    aliases: Vec<Option<String>>,
    /// QoS 2 packet ids answered with PUBREC (or about to be) whose PUBREL has not come yet.
    awaiting_rel: HashSet<u16>,
    permits: Arc<Semaphore>,
    items: mpsc::Sender<Item>,
    conn_cancel: CancellationToken,
    keep_alive: Option<Duration>,
    shared: Arc<Shared>,
    batch: Vec<Message>,
    outs: Vec<Out>,
}

impl Reader {
    async fn run(&mut self) -> Close {
        loop {
            let received_ns = store::time::now_ns();
            loop {
                let inbound = match self.decode() {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(close) => {
                        if let Err(c) = self.flush().await {
                            return c;
                        }
                        return close;
                    }
                };
                match inbound {
                    Inbound::Publish { qos, dup, pkid, topic, payload } => {
                        if qos > 0
                            && let Err(c) = self.take_permit().await
                        {
                            return c;
                        }
                        if qos == 2 && !self.awaiting_rel.insert(pkid) {
                            // Repeated before PUBREL: already submitted; answer again (after the first answer).
                            self.outs.push(Out::PubRec(pkid));
                            continue;
                        }
                        self.shared.metrics.messages_total[usize::from(qos)].fetch_add(1, Ordering::Relaxed);
                        let dedup = (qos > 0).then(|| DedupKey { session: self.session_key.clone(), pkid, dup });
                        self.batch.push(Message { topic, payload, received_ns, dedup });
                        match qos {
                            1 => self.outs.push(Out::PubAck(pkid)),
                            2 => self.outs.push(Out::PubRec(pkid)),
                            _ => {}
                        }
                    }
                    Inbound::PubRel(pkid) => {
                        let found = self.awaiting_rel.remove(&pkid);
                        self.outs.push(Out::PubComp(pkid, found));
                    }
                    Inbound::Subscribe(pkid, n) => {
                        debug!(session = %self.session_key, "SUBSCRIBE refused: this endpoint only ingests");
                        self.outs.push(Out::SubAck(pkid, n));
                    }
                    Inbound::Unsubscribe(pkid, n) => self.outs.push(Out::UnsubAck(pkid, n)),
                    Inbound::PingReq => self.outs.push(Out::PingResp),
                    Inbound::Ignored => {}
                    Inbound::Disconnect => {
                        if let Err(c) = self.flush().await {
                            return c;
                        }
                        return Close::ClientDisconnect;
                    }
                }
            }
            if let Err(c) = self.flush().await {
                return c;
            }

            if self.buf.capacity() - self.buf.len() < MIN_SPARE {
                self.buf.reserve(READ_BUF);
            }
            let read = async {
                match self.keep_alive {
                    Some(limit) => tokio::time::timeout(limit, self.rd.read_buf(&mut self.buf)).await.ok(),
                    None => Some(self.rd.read_buf(&mut self.buf).await),
                }
            };
            let read = tokio::select! {
                biased;
                _ = self.conn_cancel.cancelled() => return Close::WriterEnded,
                _ = self.shared.shutdown.cancelled() => return Close::Shutdown,
                r = read => r,
            };
            match read {
                None => return Close::KeepAlive,
                Some(Ok(0)) => return Close::Eof,
                Some(Ok(n)) => {
                    self.shared.metrics.bytes_total.fetch_add(n as u64, Ordering::Relaxed);
                }
                Some(Err(e)) => return Close::Io(e),
            }
        }
    }

    /// Takes one receive-maximum slot; when none is free, first submits what was gathered so far (its
    /// acknowledgements free slots), then waits.
    async fn take_permit(&mut self) -> Result<(), Close> {
        if let Ok(p) = self.permits.try_acquire() {
            p.forget();
            return Ok(());
        }
        self.flush().await?;
        let permits = self.permits.clone();
        tokio::select! {
            biased;
            _ = self.conn_cancel.cancelled() => Err(Close::WriterEnded),
            _ = self.shared.shutdown.cancelled() => Err(Close::Shutdown),
            p = permits.acquire() => match p {
                Ok(p) => {
                    p.forget();
                    Ok(())
                }
                Err(_) => Err(Close::WriterEnded),
            },
        }
    }

    /// Submits the gathered messages as one job and queues the responses they (and the control packets among
    /// them) call for.
    async fn flush(&mut self) -> Result<(), Close> {
        if self.outs.is_empty() && self.batch.is_empty() {
            return Ok(());
        }
        let done = if self.batch.is_empty() {
            None
        } else {
            let messages = std::mem::take(&mut self.batch);
            let submitted = tokio::select! {
                biased;
                _ = self.conn_cancel.cancelled() => return Err(Close::WriterEnded),
                _ = self.shared.shutdown.cancelled() => return Err(Close::Shutdown),
                r = self.shared.pipeline.submit_for(self.tenant.clone(), messages) => r,
            };
            match submitted {
                Ok(rx) => Some(rx),
                Err(e) => {
                    limited_warn!(self.shared.warn_limit, session = %self.session_key, error = %e,
                        "MQTT message not submitted");
                    return Err(Close::PipelineStopped);
                }
            }
        };
        let outs = std::mem::take(&mut self.outs);
        self.items.send(Item::Batch { done, outs }).await.map_err(|_| Close::WriterEnded)
    }

    /// Decodes the next complete packet in the buffer; Ok(None) when more bytes are needed.
    fn decode(&mut self) -> Result<Option<Inbound>, Close> {
        let max = self.shared.opts.max_packet_size;
        match self.version {
            Version::V4 => self.decode_v4(max),
            Version::V5 => self.decode_v5(max),
        }
    }

    fn decode_v4(&mut self, max: usize) -> Result<Option<Inbound>, Close> {
        use rumqttc::mqttbytes::Error as E;
        let code = m5::DisconnectReasonCode::ProtocolError;
        let packet = match m4::Packet::read(&mut self.buf, max) {
            Ok(p) => p,
            Err(E::InsufficientBytes(n)) => {
                self.buf.reserve(n);
                return Ok(None);
            }
            Err(E::PayloadSizeLimitExceeded(n)) => return Err(Close::Oversized(n)),
            Err(e) => return Err(protocol(e.to_string(), code)),
        };
        Ok(Some(match packet {
            m4::Packet::Publish(p) => {
                if p.topic.is_empty() || p.topic.contains(['+', '#']) {
                    return Err(protocol(format!("invalid topic name {:?}", p.topic), code));
                }
                Inbound::Publish { qos: p.qos as u8, dup: p.dup, pkid: p.pkid, topic: p.topic, payload: p.payload }
            }
            m4::Packet::PubRel(r) => Inbound::PubRel(r.pkid),
            m4::Packet::Subscribe(s) => Inbound::Subscribe(s.pkid, s.filters.len()),
            m4::Packet::Unsubscribe(u) => Inbound::Unsubscribe(u.pkid, u.topics.len()),
            m4::Packet::PingReq => Inbound::PingReq,
            m4::Packet::Disconnect => Inbound::Disconnect,
            m4::Packet::PubAck(_) | m4::Packet::PubRec(_) | m4::Packet::PubComp(_) => Inbound::Ignored,
            m4::Packet::Connect(_) => return Err(protocol("second CONNECT", code)),
            other => return Err(protocol(format!("unexpected packet from client: {other:?}"), code)),
        }))
    }

    fn decode_v5(&mut self, max: usize) -> Result<Option<Inbound>, Close> {
        use m5::DisconnectReasonCode as D;
        use rumqttc::v5::mqttbytes::Error as E;
        // The codec refuses a DISCONNECT with remaining length 0 (valid in MQTT 5: reason "normal").
        if self.buf.len() >= 2 && self.buf[0] == 0xE0 && self.buf[1] == 0 {
            self.buf.advance(2);
            return Ok(Some(Inbound::Disconnect));
        }
        let packet = match m5::Packet::read(&mut self.buf, Some(u32::try_from(max).unwrap_or(u32::MAX))) {
            Ok(p) => p,
            Err(E::InsufficientBytes(n)) => {
                self.buf.reserve(n);
                return Ok(None);
            }
            Err(E::PayloadSizeLimitExceeded { pkt_size, .. }) => return Err(Close::Oversized(pkt_size)),
            Err(e) => return Err(protocol(e.to_string(), D::MalformedPacket)),
        };
        Ok(Some(match packet {
            m5::Packet::Publish(p) => {
                let alias = p.properties.as_ref().and_then(|props| props.topic_alias);
                let topic = match String::from_utf8(p.topic.to_vec()) {
                    Ok(t) => t,
                    Err(_) => return Err(protocol("topic name is not UTF-8", D::TopicNameInvalid)),
                };
                let topic = match alias {
                    Some(a) if a == 0 || a > TOPIC_ALIAS_MAX => {
                        return Err(protocol(format!("topic alias {a} out of range"), D::TopicAliasInvalid));
                    }
                    Some(a) if topic.is_empty() => match &self.aliases[usize::from(a)] {
                        Some(t) => t.clone(),
                        None => return Err(protocol(format!("unknown topic alias {a}"), D::ProtocolError)),
                    },
                    Some(a) => {
                        self.aliases[usize::from(a)] = Some(topic.clone());
                        topic
                    }
                    None if topic.is_empty() => {
                        return Err(protocol("empty topic without topic alias", D::ProtocolError));
                    }
                    None => topic,
                };
                if topic.contains(['+', '#']) {
                    return Err(protocol(format!("invalid topic name {topic:?}"), D::TopicNameInvalid));
                }
                Inbound::Publish { qos: p.qos as u8, dup: p.dup, pkid: p.pkid, topic, payload: p.payload }
            }
            m5::Packet::PubRel(r) => Inbound::PubRel(r.pkid),
            m5::Packet::Subscribe(s) => Inbound::Subscribe(s.pkid, s.filters.len()),
            m5::Packet::Unsubscribe(u) => Inbound::Unsubscribe(u.pkid, u.filters.len()),
            m5::Packet::PingReq(_) => Inbound::PingReq,
            m5::Packet::Disconnect(_) => Inbound::Disconnect,
            m5::Packet::PubAck(_) | m5::Packet::PubRec(_) | m5::Packet::PubComp(_) => Inbound::Ignored,
            m5::Packet::Connect(..) => return Err(protocol("second CONNECT", D::ProtocolError)),
            m5::Packet::Auth(_) => return Err(protocol("AUTH is not supported", D::ProtocolError)),
            other => return Err(protocol(format!("unexpected packet from client: {other:?}"), D::ProtocolError)),
        }))
    }
}

/// How the writer ended.
enum WriterEnd {
    Done,
    PipelineFailed(String),
    Io(String),
}

struct Writer {
    wr: Wr,
    items: mpsc::Receiver<Item>,
    version: Version,
    permits: Arc<Semaphore>,
    conn_cancel: CancellationToken,
    out: BytesMut,
}

impl Writer {
    async fn run(mut self) -> WriterEnd {
        let end = self.write_loop().await;
        self.conn_cancel.cancel();
        let _ = self.wr.shutdown().await;
        end
    }

    async fn write_loop(&mut self) -> WriterEnd {
        let mut head: Option<Item> = None;
        loop {
            let item = match head.take() {
                Some(item) => item,
                None => match self.items.recv().await {
                    Some(item) => item,
                    None => return WriterEnd::Done,
                },
            };
            // Wait for the oldest job, then take every later one that is already answered.
            let mut failed = None;
            let mut released = 0;
            let mut disconnect = None;
            match item {
                Item::Batch { done, outs } => match wait(done).await {
                    Ok(()) => released += self.encode(&outs),
                    Err(e) => failed = Some(e),
                },
                Item::Disconnect(code) => disconnect = Some(code),
            }
            while failed.is_none() && disconnect.is_none() {
                let Ok(next) = self.items.try_recv() else { break };
                match next {
                    Item::Batch { done: Some(mut rx), outs } => match rx.try_recv() {
                        Ok(Ok(())) => released += self.encode(&outs),
                        Ok(Err(e)) => failed = Some(e),
                        Err(oneshot::error::TryRecvError::Empty) => {
                            head = Some(Item::Batch { done: Some(rx), outs });
                            break;
                        }
                        Err(oneshot::error::TryRecvError::Closed) => failed = Some(pipeline_dropped()),
                    },
                    Item::Batch { done: None, outs } => released += self.encode(&outs),
                    Item::Disconnect(code) => disconnect = Some(code),
                }
            }
            if let Some(code) = disconnect {
                let reason = match code {
                    m5::DisconnectReasonCode::PacketTooLarge => "packet too large",
                    m5::DisconnectReasonCode::KeepAliveTimeout => "keep-alive timeout",
                    m5::DisconnectReasonCode::ServerShuttingDown => "server shutting down",
                    _ => "protocol error",
                };
                let properties = m5::DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some(reason.to_string()),
                    user_properties: Vec::new(),
                    server_reference: None,
                };
                let _ = m5::Disconnect { reason_code: code, properties: Some(properties) }.write(&mut self.out);
            }
            if !self.out.is_empty() {
                let written = self.wr.write_all(&self.out).await;
                self.out.clear();
                if let Err(e) = written {
                    return WriterEnd::Io(e.to_string());
                }
            }
            self.permits.add_permits(released);
            if let Some(e) = failed {
                return WriterEnd::PipelineFailed(e);
            }
            if disconnect.is_some() {
                return WriterEnd::Done;
            }
        }
    }

    /// Encodes the responses; returns how many receive-maximum slots they free.
    fn encode(&mut self, outs: &[Out]) -> usize {
        let mut released = 0;
        for out in outs {
            if matches!(out, Out::PubAck(_) | Out::PubRec(_)) {
                released += 1;
            }
            let buf = &mut self.out;
            // Encoding these small packets into a BytesMut cannot fail.
            let _ = match self.version {
                Version::V4 => encode_v4(*out, buf).is_ok(),
                Version::V5 => encode_v5(*out, buf).is_ok(),
            };
        }
        released
    }
}

fn encode_v4(out: Out, buf: &mut BytesMut) -> Result<usize, rumqttc::mqttbytes::Error> {
    match out {
        Out::PubAck(p) => m4::PubAck::new(p).write(buf),
        Out::PubRec(p) => m4::PubRec::new(p).write(buf),
        Out::PubComp(p, _) => m4::PubComp::new(p).write(buf),
        Out::PingResp => m4::PingResp.write(buf),
        Out::SubAck(p, n) => m4::SubAck::new(p, vec![m4::SubscribeReasonCode::Failure; n.max(1)]).write(buf),
        Out::UnsubAck(p, _) => m4::UnsubAck::new(p).write(buf),
    }
}

fn encode_v5(out: Out, buf: &mut BytesMut) -> Result<usize, rumqttc::v5::mqttbytes::Error> {
    match out {
        Out::PubAck(p) => m5::PubAck::new(p, None).write(buf),
        Out::PubRec(p) => m5::PubRec::new(p, None).write(buf),
        Out::PubComp(p, found) => {
            let reason = if found { m5::PubCompReason::Success } else { m5::PubCompReason::PacketIdentifierNotFound };
            m5::PubComp { pkid: p, reason, properties: None }.write(buf)
        }
        Out::PingResp => m5::PingResp::write(buf),
        Out::SubAck(p, n) => m5::SubAck {
            pkid: p,
            return_codes: vec![m5::SubscribeReasonCode::NotAuthorized; n.max(1)],
            properties: None,
        }
        .write(buf),
        Out::UnsubAck(p, n) => m5::UnsubAck {
            pkid: p,
            reasons: vec![m5::UnsubAckReason::NoSubscriptionExisted; n.max(1)],
            properties: None,
        }
        .write(buf),
    }
}

fn pipeline_dropped() -> String {
    "the pipeline dropped the job without answering".to_string()
}

/// Waits for a job's answer (no job: nothing to wait for).
async fn wait(done: Option<oneshot::Receiver<Result<(), String>>>) -> Result<(), String> {
    match done {
        None => Ok(()),
        Some(rx) => rx.await.unwrap_or_else(|_| Err(pipeline_dropped())),
    }
}
