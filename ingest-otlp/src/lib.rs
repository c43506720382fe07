//! OpenTelemetry ingest for `lumen server`: the OTLP logs and metrics `Export` services over gRPC
//! (`server.otlp_grpc_addr`) and over HTTP on the main port (`/v1/logs`, `/v1/metrics`, protobuf or
//! JSON, optionally gzip), translated into Lumen's streams and Prometheus series.
//!
//! Every request takes one path: decoded whole (a body that does not decode is refused — HTTP 400, gRPC
//! `INVALID_ARGUMENT` — and nothing of it is stored), translated ([`logs`], [`metrics`]: records and
//! points that cannot be stored are left out one by one and reported in OTLP's `partial_success`),
//! appended to the store, and answered only once the store has fsynced it.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use store::model::Tenant;
use store::{LogStore, MetricStore};
use wire::Limits;

pub mod config;
pub mod delta;
mod grpc;
mod http;
pub mod logs;
pub mod metrics;
pub mod naming;
mod value;

pub use config::OtlpConfig;
pub use grpc::{Admit, Refused, routes as grpc_routes};
pub use http::router;
/// The OTLP message types (from the `opentelemetry-proto` crate), for clients and tests.
pub use opentelemetry_proto as proto;
/// The gRPC server's error.
pub use tonic::transport::Error as GrpcError;

/// How a request arrived, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// The answer to a stored request: what was left out, for OTLP's `partial_success`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exported {
    pub rejected: i64,
    pub message: String,
}

/// A request that could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("could not store the request: {0}")]
pub struct ExportError(#[from] store::Error);

impl ExportError {
    /// True when sending the same request again cannot help.
    pub fn is_client_error(&self) -> bool {
        self.0.is_client_error()
    }
}

type Labels = Vec<(String, String)>;

struct Stats {
    log_records: Family<Labels, Counter>,
    rejected_log_records: Family<Labels, Counter>,
    samples: Family<Labels, Counter>,
    rejected_points: Family<Labels, Counter>,
    rejected_requests: Family<Labels, Counter>,
    delta_series: Gauge,
}

impl Stats {
    fn register(registry: &mut Registry) -> Stats {
        let s = Stats {
            log_records: Family::default(),
            rejected_log_records: Family::default(),
            samples: Family::default(),
            rejected_points: Family::default(),
            rejected_requests: Family::default(),
            delta_series: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("lumen_otlp");
        r.register("log_records", "OTLP log records stored, by transport", s.log_records.clone());
        r.register(
            "rejected_log_records",
            "OTLP log records left out of a stored request, by transport and reason",
            s.rejected_log_records.clone(),
        );
        r.register("samples", "samples stored from OTLP metrics, by transport", s.samples.clone());
        r.register(
            "rejected_data_points",
            "OTLP metric data points left out of a stored request, by transport and reason",
            s.rejected_points.clone(),
        );
        r.register(
            "rejected_requests",
            "OTLP requests refused whole, by signal, transport and status",
            s.rejected_requests.clone(),
        );
        r.register(
            "delta_series",
            "series whose delta points are being summed into a running total",
            s.delta_series.clone(),
        );
        s
    }

    fn by(transport: Transport) -> Labels {
        vec![("transport".to_string(), transport.as_str().to_string())]
    }

    fn by_reason(transport: Transport, reason: &str) -> Labels {
        vec![("transport".to_string(), transport.as_str().to_string()), ("reason".to_string(), reason.to_string())]
    }
}

/// The OTLP receiver: translation settings, the stores, and the delta totals. Shared by the gRPC and HTTP
/// front ends.
pub struct Otlp {
    log_store: LogStore,
    metric_store: MetricStore,
    limits: Limits,
    retention: Duration,
    streams: logs::StreamMapping,
    metric_mapping: metrics::MetricMapping,
    deltas: delta::DeltaTotals,
    stats: Stats,
}

/// What the receiver needs from the server's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: OtlpConfig,
    /// Line length, label count and body size limits of log ingest.
    pub limits: Limits,
    /// Entries and samples older than this are refused: retention would delete them at once.
    pub retention: Duration,
    /// Most labels a metric series may have.
    pub max_labels_per_series: usize,
}

const DAY_MS: i64 = 86_400_000;

impl Otlp {
    pub fn new(
        log_store: LogStore,
        metric_store: MetricStore,
        settings: Settings,
        registry: &mut Registry,
    ) -> Arc<Otlp> {
        Arc::new(Otlp {
            log_store,
            metric_store,
            limits: settings.limits,
            retention: settings.retention,
            streams: logs::StreamMapping::new(&settings.config.stream_attributes),
            metric_mapping: metrics::MetricMapping::new(&settings.config, settings.max_labels_per_series),
            deltas: delta::DeltaTotals::new(settings.config.delta_state_ttl),
            stats: Stats::register(registry),
        })
    }

    /// Largest request body or gRPC message accepted, before and after decompression.
    pub fn max_message_bytes(&self) -> usize {
        self.limits.max_body_bytes
    }

    fn rejected_request(&self, signal: &str, transport: Transport, status: &str) {
        let labels = vec![
            ("signal".to_string(), signal.to_string()),
            ("transport".to_string(), transport.as_str().to_string()),
            ("status".to_string(), status.to_string()),
        ];
        self.stats.rejected_requests.get_or_create(&labels).inc();
    }

    /// Translates and stores a logs request.
    ///
    /// # Errors
    /// When the store refused the batch; nothing of it is stored then.
    pub async fn export_logs(
        &self,
        transport: Transport,
        tenant: &Tenant,
        req: ExportLogsServiceRequest,
    ) -> Result<Exported, ExportError> {
        let now_ns = store::time::now_ns();
        let retention = i64::try_from(self.retention.as_nanos()).unwrap_or(i64::MAX);
        let limits = Limits {
            oldest_ns: now_ns.saturating_sub(retention),
            newest_ns: now_ns.saturating_add(2 * store::time::NANOS_PER_DAY),
            ..self.limits
        };
        let out = logs::translate(req, &self.streams, &limits, now_ns);
        let stored = out.batch.len();
        if !out.batch.is_empty() {
            self.log_store.append(tenant, out.batch).await?;
        }
        let s = &self.stats;
        let counts = Counts { stored, rejected: out.rejected, total: out.total, by_reason: &out.rejected_by_reason };
        Ok(counts.record(transport, (&s.log_records, &s.rejected_log_records), "log records", out.message))
    }

    /// Translates and stores a metrics request.
    ///
    /// # Errors
    /// When the store refused the batch; nothing of it is stored then, and its delta points are taken
    /// back out of the running totals.
    pub async fn export_metrics(
        &self,
        transport: Transport,
        tenant: &Tenant,
        req: &ExportMetricsServiceRequest,
    ) -> Result<Exported, ExportError> {
        let now_ms = store::time::now_ns() / 1_000_000;
        // The store's own window: whole days are kept, so the oldest kept day still takes samples.
        let retention_ms = i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX);
        let min_t = now_ms.saturating_sub(retention_ms).div_euclid(DAY_MS) * DAY_MS;
        let window = min_t..=now_ms.saturating_add(2 * DAY_MS);
        let mut out = metrics::translate_within(req, &self.metric_mapping, now_ms, window);
        let mut samples = std::mem::take(&mut out.samples);
        let mut applied = delta::Applied::default();
        let deltas: Vec<usize> = (0..samples.len()).filter(|&i| samples[i].delta).collect();
        if !deltas.is_empty() {
            let mut pairs = Vec::with_capacity(16);
            let keys: Vec<(u64, f64)> = deltas
                .iter()
                .map(|&i| {
                    samples[i].pairs(&mut pairs);
                    (delta::key(tenant, &pairs), samples[i].v)
                })
                .collect();
            let totals = self.deltas.add(keys, &mut applied);
            for (&i, total) in deltas.iter().zip(totals) {
                samples[i].v = total;
            }
            self.stats.delta_series.set(self.deltas.len() as i64);
        }
        let mut batch = self.metric_store.batch(tenant);
        let mut pairs = Vec::with_capacity(16);
        for s in &samples {
            s.pairs(&mut pairs);
            batch.add(&pairs, [(s.t, s.v)]);
        }
        let n = batch.len();
        if let Err(e) = self.metric_store.append(batch).await {
            self.deltas.undo(applied);
            return Err(e.into());
        }
        for (name, meta) in out.metadata {
            self.metric_store.set_metadata(tenant, &name, meta);
        }
        let s = &self.stats;
        let counts =
            Counts { stored: n, rejected: out.rejected, total: out.points, by_reason: &out.rejected_by_reason };
        Ok(counts.record(transport, (&s.samples, &s.rejected_points), "data points", out.message))
    }
}

/// What became of one stored request.
struct Counts<'a> {
    stored: usize,
    rejected: usize,
    total: usize,
    by_reason: &'a [(&'static str, usize)],
}

impl Counts<'_> {
    /// Counts the request in `(stored, rejected)` and gives its answer.
    fn record(
        &self,
        transport: Transport,
        (stored, rejected): (&Family<Labels, Counter>, &Family<Labels, Counter>),
        what: &str,
        detail: String,
    ) -> Exported {
        stored.get_or_create(&Stats::by(transport)).inc_by(self.stored as u64);
        for (reason, n) in self.by_reason {
            rejected.get_or_create(&Stats::by_reason(transport, reason)).inc_by(*n as u64);
        }
        let message = if self.rejected == 0 {
            String::new()
        } else {
            format!("{} of {} {what} rejected: {detail}", self.rejected, self.total)
        };
        Exported { rejected: self.rejected as i64, message }
    }
}
