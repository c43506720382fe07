//! The shipper: sends the disk buffer's batches in order, one at a time, and acknowledges each only on
//! the server's 2xx.
//!
//! - 2xx: the batch's file positions go into the checkpoints, which are saved, and then the batch leaves
//!   the buffer (in that order: a crash between the two resends one batch, never skips one).
//! - 4xx other than 408 and 429: the server will never take this batch. It is logged with the server's
//!   reason, counted in `lumen_agent_batches_rejected_total`, and dropped, so one bad batch cannot stop
//!   the agent forever.
//! - Anything else (connection refused, timeout, 5xx, 408, 429): the same batch is retried with
//!   exponential backoff (250 ms doubling up to `retry_max_backoff`), for as long as it takes.
//!
//! A log batch that may have reached a server before (a retry, or a batch an earlier run left in the
//! buffer) carries `X-Lumen-Resend: 1`: an ingest node that did not store it asks the other ingest nodes
//! whether one of them did before storing it (a load balancer may send the retry elsewhere).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::buffer::{DiskBuffer, Frame, Kind};
use crate::checkpoint::Checkpoints;
use crate::metrics::{AgentMetrics, kind_labels};

const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Where and how batches are sent.
#[derive(Debug, Clone)]
pub struct ShipperSettings {
    pub logs_url: String,
    pub metrics_url: String,
    pub tenant: String,
    /// The name log batches carry in `X-Lumen-Producer`, with their sequence in `X-Lumen-Sequence`: a
    /// Lumen server stores each batch once however often it is resent.
    pub producer: String,
    pub request_timeout: Duration,
    pub max_backoff: Duration,
    /// Sent as `Authorization: Bearer` with every batch.
    pub token: crate::client::BearerToken,
    /// TLS of an https:// server.
    pub tls: crate::client::TlsFiles,
}

/// The sending half of the agent.
pub struct Shipper {
    settings: ShipperSettings,
    client: reqwest::Client,
    buffer: Arc<DiskBuffer>,
    checkpoints: Arc<Mutex<Checkpoints>>,
    metrics: Arc<AgentMetrics>,
}

enum Outcome {
    Delivered,
    Rejected(String),
    Retry(String),
}

impl Shipper {
    pub fn new(
        settings: ShipperSettings,
        buffer: Arc<DiskBuffer>,
        checkpoints: Arc<Mutex<Checkpoints>>,
        metrics: Arc<AgentMetrics>,
    ) -> Result<Shipper, String> {
        let client = crate::client::builder(&settings.tls)?
            .timeout(settings.request_timeout)
            .user_agent(concat!("lumen-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the agent's HTTP client: {e}"))?;
        Ok(Shipper { settings, client, buffer, checkpoints, metrics })
    }

    /// Sends batches until `shutdown`. A batch in flight when it comes is abandoned (it stays in the buffer).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        let mut failing_since: Option<Instant> = None;
        let mut last_warn: Option<Instant> = None;
        // The batch last sent: if `next` gives it again, this is a retry.
        let mut last_sent: Option<u64> = None;
        loop {
            self.update_gauges();
            let frame = tokio::select! {
                f = self.buffer.next() => f,
                () = shutdown.cancelled() => return,
            };
            let resend = last_sent == Some(frame.seq) || self.buffer.from_earlier_run(frame.seq);
            last_sent = Some(frame.seq);
            let outcome = tokio::select! {
                o = self.send(&frame, resend) => o,
                () = shutdown.cancelled() => return,
            };
            match outcome {
                Outcome::Delivered => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(down_for = ?since.elapsed(), "the server takes batches again");
                    }
                    backoff = FIRST_BACKOFF;
                    self.acknowledge(&frame).await;
                }
                Outcome::Rejected(reason) => {
                    tracing::warn!(seq = frame.seq, kind = ?frame.kind, %reason,
                        "the server refused a batch; dropping it (it would be refused again)");
                    self.metrics.batches_rejected.get_or_create(&kind_labels(frame.kind)).inc();
                    self.acknowledge(&frame).await;
                }
                Outcome::Retry(reason) => {
                    self.metrics.send_failures.get_or_create(&kind_labels(frame.kind)).inc();
                    failing_since.get_or_insert_with(Instant::now);
                    if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                        tracing::warn!(seq = frame.seq, %reason, retry_in = ?backoff, pending = self.buffer.pending(),
                            "cannot deliver a batch; retrying with backoff");
                        last_warn = Some(Instant::now());
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(self.settings.max_backoff.max(FIRST_BACKOFF));
                }
            }
        }
    }

    fn update_gauges(&self) {
        self.metrics.buffer_bytes.set(i64::try_from(self.buffer.bytes()).unwrap_or(i64::MAX));
        self.metrics.buffer_batches.set(self.buffer.pending() as i64);
    }

    async fn send(&self, frame: &Frame, resend: bool) -> Outcome {
        let payload = match self.buffer.payload(frame) {
            Ok(p) => p,
            Err(e) => return Outcome::Rejected(format!("the batch cannot be read back from the buffer: {e}")),
        };
        if payload.is_empty() {
            // Positions only (every line of it was dropped by the parse options): nothing to send.
            return Outcome::Delivered;
        }
        let len = payload.len() as u64;
        let mut req = match frame.kind {
            Kind::Logs => self
                .client
                .post(&self.settings.logs_url)
                .header("Content-Type", "application/x-protobuf")
                .header("X-Lumen-Producer", &self.settings.producer)
                .header("X-Lumen-Sequence", frame.seq.to_string()),
            Kind::Metrics => self
                .client
                .post(&self.settings.metrics_url)
                .header("Content-Type", "application/x-protobuf")
                .header("Content-Encoding", "snappy")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0"),
        };
        if resend && frame.kind == Kind::Logs {
            req = req.header("X-Lumen-Resend", "1");
        }
        if !self.settings.tenant.is_empty() {
            req = req.header("X-Scope-OrgID", &self.settings.tenant);
        }
        if let Some(auth) = self.settings.token.header() {
            req = req.header("Authorization", auth);
        }
        let resp = match req.body(payload).send().await {
            Ok(r) => r,
            Err(e) => return Outcome::Retry(describe(&e)),
        };
        let status = resp.status();
        if status.is_success() {
            self.metrics.batches_sent.get_or_create(&kind_labels(frame.kind)).inc();
            self.metrics.bytes_sent.get_or_create(&kind_labels(frame.kind)).inc_by(len);
            return Outcome::Delivered;
        }
        let body = resp.text().await.unwrap_or_default();
        let reason = format!("{status}: {}", body.trim().chars().take(500).collect::<String>());
        if status.as_u16() == 401 || status.as_u16() == 403 {
            // A credential problem is the operator's to fix, not the batch's: keep it and retry. A rotated
            // token file is read again.
            if let Err(e) = self.settings.token.reload() {
                return Outcome::Retry(format!("{reason} ({e})"));
            }
            return Outcome::Retry(format!(
                "{reason} (check agent.bearer_token_file and the token's tenant and scopes)"
            ));
        }
        if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
            Outcome::Rejected(reason)
        } else {
            Outcome::Retry(reason)
        }
    }

    /// Saves the batch's positions, then removes it from the buffer.
    async fn acknowledge(&self, frame: &Frame) {
        let checkpoints = self.checkpoints.clone();
        let (seq, positions) = (frame.seq, frame.positions.clone());
        let saved = tokio::task::spawn_blocking(move || {
            let mut cp = checkpoints.lock();
            cp.acknowledge(seq, &positions);
            cp.save()
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "cannot save checkpoints; a restart would resend more"),
            Err(error) => tracing::error!(%error, "checkpoint task failed"),
        }
        if let Err(error) = self.buffer.ack(frame.seq) {
            tracing::error!(%error, "cannot remove an acknowledged batch from the disk buffer");
        }
        self.update_gauges();
    }
}

/// A reqwest error with its causes, which name the address and the OS error; no credential of the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    // reqwest names the URL, user info included.
    crate::redact_urls(&s)
}
