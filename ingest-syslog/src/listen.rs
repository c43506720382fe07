//! The listeners: one task per UDP socket, one accept loop per TCP or TLS socket and one task per
//! connection.
//!
//! A connection's task reads, cuts frames ([`crate::frame`]), maps them into its own pending batch
//! ([`crate::batch`]) and appends that batch itself when it holds `batch_max_lines` messages or its first
//! message is `batch_max_delay` old, when the connection ends (closed, idle, failed) and at shutdown. It
//! reads nothing while it appends: a sender faster than the disk is slowed by TCP itself. A UDP socket's
//! task gathers every sender's messages into one batch and appends it in a task of its own while it
//! receives the next; what the store cannot keep up with waits in the kernel's receive buffer, and what
//! overflows that is lost (UDP has no backpressure).
//!
//! When the store refuses an append for a reason that passes (free space below the reserve, a failed WAL
//! write), the task keeps the batch, stops reading, and tries again with a backoff of up to 5 s for as long
//! as the server runs; at shutdown it tries once more and then drops and counts the batch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use store::LogStore;
use store::model::{LogBatch, Tenant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::ServerTls;
use crate::batch::{Mapping, Pending, Problem, Reason};
use crate::config::Transport;
use crate::frame::{Frame, Framer};
use crate::metrics::SyslogMetrics;

/// One read from a socket.
const READ_BUF: usize = 64 * 1024;
/// The largest UDP payload (IPv4: 65,507 bytes).
const UDP_BUF: usize = 65_536;
/// Longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections to append what they hold.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Longest pause between two tries of an append the store refused.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At most one warning of a kind per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What every listener and connection shares.
pub(crate) struct Shared {
    pub logs: LogStore,
    pub admit: Option<wire::Admit>,
    pub tenant: Tenant,
    pub mapping: Mapping,
    pub max_message: usize,
    pub batch_max_lines: usize,
    pub batch_max_delay: Duration,
    pub idle_timeout: Duration,
    pub metrics: Arc<SyslogMetrics>,
    pub warnings: Warnings,
    pub shutdown: CancellationToken,
}

/// Rate limits of warnings, one per kind: at most one per [`WARN_EVERY`], with the count held back.
#[derive(Default)]
pub(crate) struct Warnings {
    last: Mutex<Vec<(&'static str, std::time::Instant, u64)>>,
}

impl Warnings {
    /// Some(warnings held back since the last one) when a warning of `kind` may be logged now.
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut last = self.last.lock();
        match last.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, at, held)) if now.duration_since(*at) < WARN_EVERY => {
                *held += 1;
                None
            }
            Some((_, at, held)) => {
                *at = now;
                Some(std::mem::take(held))
            }
            None => {
                last.push((kind, now, 0));
                Some(0)
            }
        }
    }
}

impl Shared {
    /// Maps one frame into `pending`, warning (rate-limited) about what was wrong with it.
    fn handle(&self, pending: &mut Pending, frame: Frame, peer: SocketAddr, received_ns: i64) {
        let problem = match frame {
            Frame::Message(bytes) => pending.add(&bytes, peer.ip(), received_ns, &self.mapping),
            Frame::Oversized { bytes } => Some(pending.add_oversized(bytes, self.max_message)),
            Frame::Truncated { data, expected } => {
                pending.add_truncated(&data, expected, peer.ip(), received_ns, &self.mapping)
            }
        };
        if let Some(problem) = problem {
            self.warn(&problem, peer);
        }
    }

    fn warn(&self, problem: &Problem, peer: SocketAddr) {
        let Some(held) = self.warnings.allow(problem.reason.as_str()) else {
            return;
        };
        let reason = problem.reason.as_str();
        match problem.reason {
            Reason::ParseError | Reason::NotUtf8 => {
                warn!(%peer, reason, detail = %problem.detail, held_back = held, "syslog message kept as it came")
            }
            _ => warn!(%peer, reason, detail = %problem.detail, held_back = held, "syslog message dropped"),
        }
    }

    /// Appends what `pending` holds, retrying while the store refuses for a reason that passes.
    ///
    /// # Cancel safety
    /// Not cancel safe: callers await it to the end (that is the backpressure).
    async fn append(&self, pending: &mut Pending) {
        if !pending.is_empty() {
            self.append_batch(pending.take()).await;
        }
    }

    /// [`Shared::append`] of a batch already taken.
    async fn append_batch(&self, batch: LogBatch) {
        let lines = batch.len() as u64;
        if let Some(admit) = &self.admit {
            let bytes: usize = batch.entries.iter().map(|e| e.line.len()).sum();
            let admitted = tokio::select! {
                r = wire::admitted(admit, self.tenant.as_str(), bytes, |_| {
                    self.metrics.rate_limited.inc();
                }) => r,
                // At shutdown what was received is stored rather than held back.
                _ = self.shutdown.cancelled() => Ok(()),
            };
            if let Err(message) = admitted {
                self.metrics.rejected.get_or_create(&vec![("reason".into(), "tenant_limit".into())]).inc_by(lines);
                if let Some(held) = self.warnings.allow("tenant_limit") {
                    error!(%message, lines, held_back = held, "syslog messages refused by the tenant limits");
                }
                return;
            }
        }
        let mut backoff = Duration::from_millis(100);
        let mut last_try = false;
        loop {
            // A clone per try: the store takes the batch, and a refused one is tried again.
            match self.logs.append(&self.tenant, batch.clone()).await {
                Ok(()) => {
                    self.metrics.stored.inc_by(lines);
                    self.metrics.batches.inc();
                    return;
                }
                Err(e) if e.is_retryable() && !last_try => {
                    self.metrics.store_retries.inc();
                    if let Some(held) = self.warnings.allow("store_retry") {
                        warn!(error = %e, lines, held_back = held, "the store refused a syslog batch; it is kept and tried again (a TCP sender is not read meanwhile)");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.shutdown.cancelled() => last_try = true,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    self.metrics.rejected.get_or_create(&vec![("reason".into(), "store_refused".into())]).inc_by(lines);
                    if let Some(held) = self.warnings.allow("store_refused") {
                        error!(error = %e, lines, held_back = held, "syslog messages lost: the store refused their batch");
                    }
                    return;
                }
            }
        }
    }
}

/// Counts the connection in the gauge while it lives.
struct ConnGuard(Arc<SyslogMetrics>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// Accepts TCP (or TLS) connections until shutdown; then waits up to [`SHUTDOWN_GRACE`] for the
/// connections to append what they hold.
pub(crate) async fn serve_tcp(
    listener: TcpListener,
    transport: Transport,
    tls: Option<ServerTls>,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            Some(joined) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = joined
                    && e.is_panic()
                {
                    error!(error = %e, "syslog connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        shared.metrics.rejected_connection("too_many");
                        if let Some(held) = shared.warnings.allow("too_many_connections") {
                            warn!(%peer, held_back = held, "syslog connection refused: syslog.max_connections are open");
                        }
                        continue;
                    };
                    conns.spawn(connection(stream, peer, transport, tls.clone(), shared.clone(), permit));
                }
                Err(e) => {
                    // Usually passing (a reset before accept, out of file descriptors): back off a little.
                    if let Some(held) = shared.warnings.allow("accept") {
                        warn!(error = %e, held_back = held, "syslog accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(connections = conns.len(), "syslog connections did not finish appending in time; closing them");
        conns.shutdown().await;
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    tls: Option<ServerTls>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    shared.metrics.connections.inc();
    let _guard = ConnGuard(shared.metrics.clone());
    debug!(%peer, %transport, "syslog connection");
    match tls {
        None => read_stream(stream, peer, transport, &shared).await,
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls());
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => read_stream(stream, peer, transport, &shared).await,
                Ok(Err(e)) => {
                    shared.metrics.rejected_connection("tls_handshake");
                    debug!(%peer, error = %e, "syslog TLS handshake failed");
                }
                Err(_) => {
                    shared.metrics.rejected_connection("tls_handshake");
                    debug!(%peer, "syslog TLS handshake timed out");
                }
            }
        }
    }
}

/// Reads one connection to its end.
async fn read_stream<R: AsyncRead + Unpin>(mut rd: R, peer: SocketAddr, transport: Transport, shared: &Shared) {
    let mut framer = Framer::new(shared.max_message);
    let mut pending = Pending::default();
    let mut buf = vec![0u8; READ_BUF];
    let mut idle_at = Instant::now() + shared.idle_timeout;
    let end = loop {
        let flush_at = pending.deadline(shared.batch_max_delay);
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break "shutdown",
            _ = tokio::time::sleep_until(flush_at.unwrap_or(idle_at)), if flush_at.is_some() => {
                shared.append(&mut pending).await;
                // An append can wait long (a full disk): the peer was not idle, it was not being read.
                idle_at = Instant::now() + shared.idle_timeout;
            }
            // Before the idle timer: data that waited in the socket during an append is read, not dropped.
            read = rd.read(&mut buf) => match read {
                Ok(0) => break "closed",
                Ok(n) => {
                    idle_at = Instant::now() + shared.idle_timeout;
                    framer.push(&buf[..n]);
                    let now = store::time::now_ns();
                    while let Some(frame) = framer.next_frame() {
                        shared.handle(&mut pending, frame, peer, now);
                        if pending.len() >= shared.batch_max_lines {
                            shared.append(&mut pending).await;
                            idle_at = Instant::now() + shared.idle_timeout;
                        }
                    }
                    shared.metrics.add(transport, &mut pending.tally);
                }
                Err(e) => {
                    debug!(%peer, error = %e, "syslog connection failed");
                    break "failed";
                }
            },
            _ = tokio::time::sleep_until(idle_at) => break "idle",
        }
    };
    // What arrived is appended whatever the end: a last frame without its delimiter is a message, the
    // start of an octet-counted frame is kept raw with the reason.
    if let Some(frame) = framer.finish() {
        shared.handle(&mut pending, frame, peer, store::time::now_ns());
    }
    shared.metrics.add(transport, &mut pending.tally);
    shared.append(&mut pending).await;
    debug!(%peer, %transport, end, "syslog connection ended");
}

/// Receives datagrams until shutdown: one datagram, one message. A full batch is appended by a task of its
/// own while the next one fills, so the socket is read during the fsync; with two batches full (the store
/// is slower than the senders) it waits, and the kernel's receive buffer (`udp_receive_buffer`) takes the
/// rest until it overflows.
pub(crate) async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; UDP_BUF];
    let mut pending = Pending::default();
    let mut appending: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let flush_at = pending.deadline(shared.batch_max_delay);
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                hand_over(&shared, &mut pending, &mut appending).await;
            }
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, peer)) => {
                    let problem = if n > shared.max_message {
                        Some(pending.add_oversized(n, shared.max_message))
                    } else {
                        pending.add(&buf[..n], peer.ip(), store::time::now_ns(), &shared.mapping)
                    };
                    if let Some(problem) = problem {
                        shared.warn(&problem, peer);
                    }
                    shared.metrics.add(Transport::Udp, &mut pending.tally);
                    if pending.len() >= shared.batch_max_lines {
                        hand_over(&shared, &mut pending, &mut appending).await;
                    }
                }
                Err(e) => {
                    // ICMP errors of earlier sends surface here on Linux; nothing to do but go on.
                    if let Some(held) = shared.warnings.allow("udp_receive") {
                        warn!(error = %e, held_back = held, "syslog UDP receive failed");
                    }
                }
            }
        }
    }
    if let Some(previous) = appending.take() {
        let _ = previous.await;
    }
    shared.append(&mut pending).await;
    info!("syslog UDP listener stopped");
}

/// Starts appending `pending` in a task, after the previous one finished.
async fn hand_over(shared: &Arc<Shared>, pending: &mut Pending, appending: &mut Option<tokio::task::JoinHandle<()>>) {
    if let Some(previous) = appending.take() {
        let _ = previous.await;
    }
    if pending.is_empty() {
        return;
    }
    let (shared, batch) = (shared.clone(), pending.take());
    *appending = Some(tokio::spawn(async move { shared.append_batch(batch).await }));
}
