//! Request bodies: each must arrive within `server.http_body_timeout`, and all bodies being received or
//! handled at once may hold at most `server.max_inflight_request_bytes`. A middleware reads the body (every
//! handler reads it whole anyway) under both limits and hands it on as one buffer.
//!
//! Bytes are reserved from a semaphore (1 KiB per permit) as they arrive, starting from the declared
//! `Content-Length`, and released when the handler has answered. A request that cannot get its bytes within
//! the body timeout is answered 503 with `Retry-After`, which every shipper retries. A body over
//! `server.max_request_size` is read and dropped up to twice the limit before the 413, so that a client
//! still writing it reads the answer instead of a closed connection; a bigger one is refused at once.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

const PERMIT_BYTES: usize = 1024;

/// The shared budget and the limits, as the middleware's state.
#[derive(Clone)]
pub struct BodyLimits {
    budget: Arc<Semaphore>,
    permits: usize,
    budget_bytes: usize,
    max_body: usize,
    timeout: Duration,
}

impl BodyLimits {
    pub fn new(max_inflight: usize, max_body: usize, timeout: Duration) -> BodyLimits {
        let permits = (max_inflight / PERMIT_BYTES).clamp(1, Semaphore::MAX_PERMITS);
        BodyLimits { budget: Arc::new(Semaphore::new(permits)), permits, budget_bytes: max_inflight, max_body, timeout }
    }

    /// Bytes of the budget held now by bodies being received or handled (what the memory budget reports).
    pub fn in_use(&self) -> usize {
        self.permits.saturating_sub(self.budget.available_permits()) * PERMIT_BYTES
    }
}

fn permits(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(PERMIT_BYTES)).unwrap_or(u32::MAX)
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut resp = (status, message).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

/// The middleware: see the module docs.
pub async fn limit_body(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if declared.unwrap_or(0) == 0 && !chunked {
        // No body (GET, HEAD, a WebSocket upgrade): nothing to hold.
        return next.run(req).await;
    }
    if let Some(n) = declared.filter(|n| *n > limits.max_body) {
        let deadline = Instant::now() + limits.timeout;
        // Read and drop a body that is not too much bigger, so that the client, still writing it, gets to
        // read the answer instead of a closed connection; nothing of it is held.
        if n <= limits.max_body.saturating_mul(2) {
            let mut body = req.into_body();
            while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, body.frame()).await {}
        }
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body of {n} bytes is over server.max_request_size ({} bytes)\n", limits.max_body),
        );
    }
    let too_busy = || {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is receiving server.max_inflight_request_bytes ({} bytes) of request bodies already; retry shortly\n",
                limits.budget_bytes
            ),
        )
    };
    let deadline = Instant::now() + limits.timeout;
    let reserve = |n: usize| {
        let budget = limits.budget.clone();
        async move { tokio::time::timeout_at(deadline, budget.acquire_many_owned(permits(n))).await.ok()?.ok() }
    };
    let first = declared.unwrap_or(64 * 1024).min(limits.max_body);
    let Some(mut held): Option<OwnedSemaphorePermit> = reserve(first).await else { return too_busy() };
    let mut reserved = first.div_ceil(PERMIT_BYTES) * PERMIT_BYTES;

    let (parts, body) = req.into_parts();
    let mut body = body;
    let mut buf = BytesMut::with_capacity(first);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within server.http_body_timeout ({}s): {} bytes received\n",
                        limits.timeout.as_secs(),
                        buf.len()
                    ),
                );
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return refuse(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}\n"));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > limits.max_body {
            // As above: drop the rest (up to twice the limit) so that the client reads the answer.
            let (mut seen, cap) = (buf.len() + data.len(), limits.max_body.saturating_mul(2));
            drop(buf);
            while seen <= cap {
                match tokio::time::timeout_at(deadline, body.frame()).await {
                    Ok(Some(Ok(frame))) => seen += frame.data_ref().map_or(0, |d| d.len()),
                    _ => break,
                }
            }
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is over server.max_request_size ({} bytes)\n", limits.max_body),
            );
        }
        if buf.len() + data.len() > reserved {
            // Chunked, or longer than declared: reserve in steps of at least 64 KiB.
            let more = (buf.len() + data.len() - reserved).max(64 * 1024);
            let Some(extra) = reserve(more).await else { return too_busy() };
            held.merge(extra);
            reserved += more.div_ceil(PERMIT_BYTES) * PERMIT_BYTES;
        }
        buf.extend_from_slice(&data);
    }
    let req = Request::from_parts(parts, Body::from(buf.freeze()));
    let resp = next.run(req).await;
    drop(held);
    resp
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::post;
    use tower::ServiceExt;

    use super::{BodyLimits, limit_body};

    #[tokio::test]
    async fn a_body_that_cannot_get_the_budget_within_the_timeout_is_a_503_with_retry_after() {
        let limits = BodyLimits::new(64 * 1024, 64 * 1024, Duration::from_millis(300));
        let held = limits.budget.clone().acquire_many_owned(64).await.unwrap();
        assert_eq!(limits.in_use(), 64 * 1024);
        let app = Router::new()
            .route("/push", post(|body: axum::body::Bytes| async move { body.len().to_string() }))
            .route_layer(axum::middleware::from_fn_with_state(limits.clone(), limit_body));
        let req = || Request::post("/push").header("content-length", "5").body(Body::from("hello")).unwrap();
        let resp = app.clone().oneshot(req()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "5");
        drop(held);
        let resp = app.oneshot(req()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 100).await.unwrap();
        assert_eq!(&body[..], b"5", "the handler got the whole body");
        assert_eq!(limits.budget.available_permits(), 64, "the budget is given back after the answer");
        assert_eq!(limits.in_use(), 0);
    }
}
