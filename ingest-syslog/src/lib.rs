//! Syslog ingest for `lumen server`: routers, NAS boxes, firewalls and rsyslog send RFC 5424 or RFC 3164
//! messages over UDP, TCP or TLS, and they land in the log store like any other log line.
//!
//! ```text
//!  udp://  ─ datagram ─┐
//!  tcp://  ─ frame.rs ─┼─▶ parse.rs ─▶ batch.rs (labels, fields, limits) ─▶ LogStore::append (fsynced)
//!  tls://  ─ frame.rs ─┘      (one pending batch per connection / UDP socket: listen.rs)
//! ```
//!
//! - [`frame`]: RFC 6587 framing on a byte stream (octet counting or LF/NUL), bounded by
//!   `max_message_bytes`.
//! - [`parse`]: RFC 5424 and RFC 3164 (with the variants senders really write) into a [`parse::Message`].
//! - [`batch`]: the mapping to stream labels (`hostname`, `app_name`, `facility`, `level`) and fields,
//!   the store's limits, and the pending batch of a connection.
//! - `listen`: the UDP, TCP and TLS tasks; [`start`] binds them.
//!
//! **Invariants.** Syslog has no acknowledgements, so "durable" can only mean: once an append returned, its
//! messages are in the fsynced WAL. A connection reads nothing while its batch is appended (TCP
//! backpressure), appends what it holds when it ends, and holds at most one batch plus one frame; so a
//! `kill -9` loses at most what each connection had received and not yet appended. Bad input never stops a
//! reader: frames that do not parse are kept raw with the reason, oversized ones are skipped, and every
//! connection has its own task, buffer bound and idle timeout.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use store::LogStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod batch;
pub mod config;
pub mod error;
pub mod frame;
mod listen;
pub mod metrics;
pub mod parse;

pub use config::{Listen, ServerSide, SyslogConfig, Transport};
pub use error::{Error, Result};

/// The TLS of a `tls://` listener: called for each new connection, so that a reloaded certificate applies
/// to the connections made after it.
pub type ServerTls = Arc<dyn Fn() -> Arc<tls::rustls::ServerConfig> + Send + Sync>;

/// What [`start`] needs from the server.
pub struct Settings {
    pub config: SyslogConfig,
    pub server: ServerSide,
    /// The server's TLS, for `tls://` listeners.
    pub tls: Option<ServerTls>,
    /// The server's ingest limits (line length, labels, fields); the time window comes from `retention`.
    pub limits: wire::Limits,
    pub retention: Duration,
    /// The server's per-tenant write limits: a batch over `syslog.tenant`'s ingest rate waits (a TCP
    /// sender is not read meanwhile; UDP datagrams wait in the socket's buffer, and the kernel drops
    /// what overflows it).
    pub admit: Option<wire::Admit>,
}

/// Started listeners.
pub struct Started {
    /// The bound addresses, in the order of `syslog.listen`.
    pub listeners: Vec<Listen>,
    /// The tasks; they end after `shutdown` is cancelled, once their connections appended what they hold.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Checks everything [`start`] would refuse, without binding (`lumen server --check`, `lumen config check`).
///
/// # Errors
/// See [`SyslogConfig::check`].
pub fn check(config: &SyslogConfig, server: ServerSide) -> Result<()> {
    config.check(server).map(|_| ())
}

/// Binds the listeners of `syslog.listen` and starts serving them. Metrics are registered even when
/// nothing listens, so dashboards see zeros.
///
/// # Errors
/// An invalid configuration (see [`SyslogConfig::check`]) or an address that cannot be bound.
pub async fn start(
    settings: Settings,
    logs: LogStore,
    registry: &mut Registry,
    shutdown: CancellationToken,
) -> Result<Started> {
    let config = &settings.config;
    let listeners = config.check(settings.server)?;
    let metrics = metrics::SyslogMetrics::register(registry);
    if listeners.is_empty() {
        return Ok(Started { listeners: Vec::new(), tasks: Vec::new() });
    }
    let tenant = store::model::Tenant::new(&config.tenant).map_err(|e| Error::Tenant { reason: e.to_string() })?;
    let shared = Arc::new(listen::Shared {
        logs,
        admit: settings.admit.clone(),
        tenant,
        mapping: batch::Mapping {
            limits: settings.limits,
            retention_ns: i64::try_from(settings.retention.as_nanos()).unwrap_or(i64::MAX),
            bsd_offset_secs: config.bsd_offset_secs()?,
        },
        max_message: usize::try_from(config.max_message_bytes.as_u64()).unwrap_or(usize::MAX),
        batch_max_lines: config.batch_max_lines.max(1),
        batch_max_delay: config.batch_max_delay,
        idle_timeout: config.idle_timeout,
        metrics,
        warnings: listen::Warnings::default(),
        shutdown,
    });
    // Everything is bound before anything is spawned, so a refused address leaves nothing running.
    enum Socket {
        Udp(tokio::net::UdpSocket),
        Tcp(tokio::net::TcpListener),
    }
    let mut sockets = Vec::new();
    for l in listeners {
        let bind_error = |source| Error::Bind { listen: l, source };
        let (socket, addr) = match l.transport {
            Transport::Udp => {
                let socket = tokio::net::UdpSocket::bind(l.addr).await.map_err(bind_error)?;
                let wanted = usize::try_from(config.udp_receive_buffer.as_u64()).unwrap_or(usize::MAX);
                if wanted > 0 {
                    let sock = socket2::SockRef::from(&socket);
                    if let Err(error) = sock.set_recv_buffer_size(wanted) {
                        tracing::warn!(%error, listen = %l, "cannot set the UDP receive buffer (syslog.udp_receive_buffer)");
                    }
                    let got = sock.recv_buffer_size().unwrap_or(0);
                    tracing::debug!(listen = %l, wanted, got, "syslog UDP receive buffer (Linux counts its overhead twice)");
                }
                let addr = socket.local_addr().map_err(bind_error)?;
                (Socket::Udp(socket), addr)
            }
            Transport::Tcp | Transport::Tls => {
                if l.transport == Transport::Tls && settings.tls.is_none() {
                    return Err(Error::TlsWithoutCertificate { listen: l });
                }
                let listener = tokio::net::TcpListener::bind(l.addr).await.map_err(bind_error)?;
                let addr = listener.local_addr().map_err(bind_error)?;
                (Socket::Tcp(listener), addr)
            }
        };
        sockets.push((Listen { transport: l.transport, addr }, socket));
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    let mut bound = Vec::new();
    let mut tasks = Vec::new();
    for (at, socket) in sockets {
        tasks.push(match socket {
            Socket::Udp(socket) => tokio::spawn(listen::serve_udp(socket, shared.clone())),
            Socket::Tcp(listener) => {
                let tls = if at.transport == Transport::Tls { settings.tls.clone() } else { None };
                tokio::spawn(listen::serve_tcp(listener, at.transport, tls, shared.clone(), slots.clone()))
            }
        });
        if at.addr.ip().is_loopback() {
            tracing::info!(listen = %at, tenant = %config.tenant, "syslog listening");
        } else {
            tracing::warn!(
                listen = %at,
                tenant = %config.tenant,
                "syslog listening beyond loopback: syslog has no credentials, anyone who reaches this port writes into the tenant"
            );
        }
        bound.push(at);
    }
    Ok(Started { listeners: bound, tasks })
}
