//! Accepting connections: the connection cap, TLS, and the time limits that keep idle and slow clients
//! from holding the server. HTTP is served here with hyper directly (not `axum::serve`) for the header
//! timeout, TLS and the cap; OTLP gRPC gets its connections from [`incoming`], past the same cap and TLS.
//!
//! A connection is accepted only while fewer than `max_connections` are open; past the cap the listener
//! waits (the kernel's backlog holds newcomers) until a connection ends, and the header timeout makes sure
//! one does. TLS handshakes run in each connection's own task, so a client that stalls its handshake holds
//! nothing but its own slot, and only for the header timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::tls::{Protocol, Tls};

/// How long in-flight requests get to finish once shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Longest wait for the TLS handshake and for a request's headers; also how long an idle keep-alive
    /// connection stays open.
    pub header_timeout: Duration,
    /// A connection that has carried no byte, either way, for this long is closed (for gRPC, whose HTTP/2
    /// connections hyper would otherwise keep for ever); `None` for HTTP/1, where the header timeout does it.
    pub idle_timeout: Option<Duration>,
}

/// An accepted connection: plain TCP or TLS over it, holding its slot under the cap until dropped.
pub struct Conn {
    io: ConnIo,
    _slot: OwnedSemaphorePermit,
    peer: Option<std::net::SocketAddr>,
    idle: Option<Idle>,
}

/// The idle limit of a connection: a timer pushed back by every byte read or written.
struct Idle {
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    fn touch(&mut self) {
        self.timer.as_mut().reset(tokio::time::Instant::now() + self.limit);
    }
}

enum ConnIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let res = match &mut self.io {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        let peer = self.peer;
        let Some(idle) = self.idle.as_mut() else { return res };
        match res {
            Poll::Ready(r) => {
                idle.touch();
                Poll::Ready(r)
            }
            // Nothing to read: past the idle limit, the connection ends as if the client had closed it.
            Poll::Pending => match idle.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    tracing::debug!(peer = ?peer, limit = ?idle.limit, "connection closed: idle past the limit");
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection closed")))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = match &mut self.io {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        if let (Poll::Ready(Ok(n)), Some(idle)) = (&res, self.idle.as_mut())
            && *n > 0
        {
            idle.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = match &mut self.io {
            ConnIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        if let (Poll::Ready(Ok(n)), Some(idle)) = (&res, self.idle.as_mut())
            && *n > 0
        {
            idle.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Plain(s) => s.is_write_vectored(),
            ConnIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Option<std::net::SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer
    }
}

/// Waits for a slot under the cap, then for a connection. Accept errors (out of file descriptors, a
/// connection reset before it was accepted) are logged and retried after a pause, never fatal.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    let slot = tokio::select! {
        slot = slots.clone().acquire_owned() => slot.ok()?,
        _ = shutdown.cancelled() => return None,
    };
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    return Some((stream, slot));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Completes the TLS handshake within the header timeout.
async fn handshake(
    stream: TcpStream,
    slot: OwnedSemaphorePermit,
    tls: Option<(&Tls, Protocol)>,
    limits: ConnLimits,
) -> Option<Conn> {
    let peer = stream.peer_addr().ok();
    // A client that connects and sends nothing holds a slot for the header timeout at most (gRPC's HTTP/2
    // server would otherwise wait for its preface for ever).
    if !matches!(tokio::time::timeout(limits.header_timeout, stream.readable()).await, Ok(Ok(()))) {
        tracing::debug!(peer = ?peer, "connection closed: nothing received within the header timeout");
        return None;
    }
    let io = match tls {
        None => ConnIo::Plain(stream),
        Some((tls, protocol)) => {
            match tokio::time::timeout(limits.header_timeout, tls.acceptor(protocol).accept(stream)).await {
                Ok(Ok(s)) => ConnIo::Tls(Box::new(s)),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, peer = ?peer, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(peer = ?peer, "TLS handshake timed out");
                    return None;
                }
            }
        }
    };
    let idle = limits.idle_timeout.map(|limit| Idle { limit, timer: Box::pin(tokio::time::sleep(limit)) });
    Some(Conn { io, _slot: slot, peer, idle })
}

/// Serves `router` over HTTP/1.1 (with upgrades, for the tail WebSocket) on `listener` until `shutdown`,
/// then lets in-flight requests finish for a grace period.
///
/// # Errors
/// None today; the signature leaves room for fatal listener errors.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let max = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let http = Arc::new(http);
    while let Some((stream, slot)) = accept(&listener, &slots, &shutdown).await {
        let (tls, http, router, shutdown) = (tls.clone(), http.clone(), router.clone(), shutdown.clone());
        tokio::spawn(async move {
            let Some(conn) = handshake(stream, slot, tls.as_deref().map(|t| (t, Protocol::Http1)), limits).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let conn = http.serve_connection(TokioIo::new(conn), service).with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let res = tokio::select! {
                res = conn.as_mut() => res,
                _ = shutdown.cancelled() => {
                    // Finish the request in progress (if any), then close.
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = res {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    // Every connection holds a slot until it ends: having them all back means every request has finished.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), slots.acquire_many(all)).await.is_err() {
        tracing::warn!("HTTP connections still open after the shutdown grace period; closing them");
    }
    Ok(())
}

/// The connections of `listener`, past the cap and TLS, as a stream for tonic's
/// `serve_with_incoming_shutdown`. Ends at `shutdown`.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
) -> impl futures::Stream<Item = Result<Conn, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<Result<Conn, io::Error>>(64);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        while let Some((stream, slot)) = accept(&listener, &slots, &shutdown).await {
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(conn) = handshake(stream, slot, tls.as_deref().map(|t| (t, Protocol::Grpc)), limits).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}
