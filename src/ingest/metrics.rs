//! Metric ingest over HTTP: Prometheus remote write 1.0 (`/api/v1/write`), Prometheus text and
//! OpenMetrics import (`/api/v1/import/prometheus`), and Influx line protocol (`/write`, `/api/v2/write`).
//!
//! Remote write is all or nothing, as Prometheus' own receiver: a body that cannot be decoded, a series
//! whose labels break the rules, or a sample outside the accepted window (older than retention, more
//! than two days ahead) makes the whole request a 400 with a message, and nothing of it is stored — so a
//! Prometheus queue drops it instead of retrying forever. A 5xx only comes when storing failed, where a
//! retry helps. The text formats are line by line, as VictoriaMetrics and InfluxDB treat them: good lines
//! are stored, bad ones named in a 400.
//!
//! Remote read (`/api/v1/read`) lives here too, beside the protocol it shares: a Prometheus configured
//! with Lumen as `remote_read` gets raw samples (the SAMPLES response type) of every query.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use store::MetricMetadata;

use super::{header_str, plain, store_error};
use crate::http::{AppState, tenant};
use wire::prom::{self as metrics_wire, LabelLimits, LineError, Precision, TextFormat, WireError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/write", post(remote_write).get(remote_write_probe))
        .route("/api/v1/read", post(remote_read))
        .route("/api/v1/import/prometheus", post(import_prometheus))
        .route("/write", post(influx))
        .route("/api/v2/write", post(influx))
}

fn now_ms() -> i64 {
    store::time::now_ns() / 1_000_000
}

fn label_limits(app: &AppState) -> LabelLimits {
    LabelLimits {
        max_labels: app.max_labels_per_series,
        max_name_len: 1024,
        max_value_len: 64 * 1024,
        allow_utf8_names: false,
    }
}

/// `GET /api/v1/write`: 200, for the health checks of senders that probe the endpoint before they write
/// (Vector's `prometheus_remote_write` sink fails its start-up check on anything but 200).
async fn remote_write_probe() -> &'static str {
    "Prometheus remote write receiver: POST protobuf WriteRequests here (snappy, gzip, deflate or zstd)\n"
}

/// `POST /api/v1/write`: 204 once every sample is durable; 400 (nothing stored) for a request that cannot
/// be stored; 503 when the store refuses writes.
async fn remote_write(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    const PROTOCOL: &str = "prometheus_remote_write";
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let reject = |status: StatusCode, msg: String| {
        app.ingest.rejected_request(PROTOCOL, status.as_u16());
        plain(status, msg)
    };
    // Snappy is the protocol's own; Vector's `compression: gzip|zstd` and vmagent's zstd send the
    // protobuf under that HTTP content coding instead, as VictoriaMetrics accepts.
    let encoding = header_str(&headers, header::CONTENT_ENCODING).map(|e| e.trim().to_ascii_lowercase());
    let raw = match encoding.as_deref() {
        None | Some("snappy" | "") => match metrics_wire::decompress_snappy(&body, app.limits.max_body_bytes) {
            Ok(raw) => raw,
            Err(e @ WireError::TooLarge { .. }) => return reject(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            Err(e) => return reject(StatusCode::BAD_REQUEST, e.to_string()),
        },
        Some(other @ ("gzip" | "x-gzip" | "deflate" | "zstd")) => {
            match wire::body::decode(Some(other), body, app.limits.max_body_bytes) {
                Ok(raw) => raw.to_vec(),
                Err(e @ wire::WireError::BodyTooLarge { .. }) => {
                    return reject(StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
                }
                Err(e) => return reject(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
        Some(other) => {
            return reject(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Encoding {other:?} is not supported: remote write bodies are protobuf compressed with \
                     snappy (the protocol's default), gzip, deflate or zstd"
                ),
            );
        }
    };
    let limits = label_limits(&app);
    let mut batch = app.metric_store.batch(&tenant);
    let mut normalized: Vec<(&str, &str)> = Vec::with_capacity(16);
    let decoded = metrics_wire::decode_write_request(&raw, |labels, samples| {
        metrics_wire::check_labels_with(labels, &limits)?;
        metrics_wire::normalize_labels(labels, &mut normalized);
        batch.add(&normalized, samples.iter().map(|s| (s.t, s.v)));
        Ok(())
    });
    let stats = match decoded {
        Ok(stats) => stats,
        Err(e) => return reject(StatusCode::BAD_REQUEST, format!("nothing of this request was stored: {e}")),
    };
    let (out_of_window, first) = batch.rejected();
    if out_of_window > 0 {
        app.ingest.rejected_samples(PROTOCOL, "out_of_window", out_of_window as usize);
        return reject(
            StatusCode::BAD_REQUEST,
            format!(
                "nothing of this request was stored: {out_of_window} of {} samples are outside the accepted window or of new series past store.max_series_per_tenant; first: {}",
                stats.samples,
                first.unwrap_or("")
            ),
        );
    }
    if stats.histograms > 0 {
        // Floats of the same request are stored: refusing them would lose more than it protects.
        tracing::warn!(histograms = stats.histograms, "native histogram samples are not stored yet; dropped");
        app.ingest.rejected_samples(PROTOCOL, "native_histogram", stats.histograms);
    }
    let n = batch.len();
    if let Err(e) = app.metric_store.append(batch).await {
        app.ingest.rejected_request(PROTOCOL, 503);
        return store_error(&e);
    }
    app.ingest.accepted_samples(PROTOCOL, n);
    StatusCode::NO_CONTENT.into_response()
}

/// The label limits of remote write, applied to the series the line decoders (text import, line protocol)
/// produce: a series over them is skipped, counted, and named in the answer.
struct LabelGate {
    limits: LabelLimits,
    rejected: usize,
    first: Vec<String>,
}

impl LabelGate {
    fn new(limits: LabelLimits) -> LabelGate {
        LabelGate { limits, rejected: 0, first: Vec::new() }
    }

    fn admit(&mut self, labels: &[(&str, &str)]) -> bool {
        let l = &self.limits;
        let problem = if labels.len() > l.max_labels {
            format!("{} labels (with __name__), over server.max_labels_per_series ({})", labels.len(), l.max_labels)
        } else if let Some((name, _)) = labels.iter().find(|(n, _)| n.len() > l.max_name_len) {
            format!("a label name of {} bytes, over {}", name.len(), l.max_name_len)
        } else if let Some((name, value)) = labels.iter().find(|(_, v)| v.len() > l.max_value_len) {
            format!("label {} of {} bytes, over {}", clip(name), value.len(), l.max_value_len)
        } else {
            return true;
        };
        self.rejected += 1;
        if self.first.len() < 3 {
            let metric = labels.iter().find(|(n, _)| *n == "__name__").map_or("", |(_, v)| *v);
            self.first.push(format!("series {}: {problem}", clip(metric)));
        }
        false
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(100) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Stores what a line-by-line decoder produced, then answers 204, or 400 naming the bad lines and the
/// out-of-window samples (the good samples are stored either way).
async fn store_lines(
    app: &AppState,
    protocol: &'static str,
    batch: store::MetricBatch,
    errors: &[LineError],
    error_lines: usize,
    gate: LabelGate,
) -> Response {
    let (out_of_window, first) = batch.rejected();
    let first = first.map(str::to_string);
    let n = batch.len();
    if let Err(e) = app.metric_store.append(batch).await {
        app.ingest.rejected_request(protocol, 503);
        return store_error(&e);
    }
    app.ingest.accepted_samples(protocol, n);
    app.ingest.rejected_samples(protocol, "bad_line", error_lines);
    app.ingest.rejected_samples(protocol, "out_of_window", out_of_window as usize);
    app.ingest.rejected_samples(protocol, "labels", gate.rejected);
    if error_lines == 0 && out_of_window == 0 && gate.rejected == 0 {
        return StatusCode::NO_CONTENT.into_response();
    }
    let mut msg = format!("{n} samples stored");
    if error_lines > 0 {
        msg.push_str(&format!("; {error_lines} lines rejected"));
        for e in errors.iter().take(10) {
            msg.push_str(&format!("; {e}"));
        }
        if error_lines > 10 {
            msg.push_str("; ...");
        }
    }
    if gate.rejected > 0 {
        msg.push_str(&format!("; {} samples rejected for their labels", gate.rejected));
        for e in &gate.first {
            msg.push_str(&format!("; {e}"));
        }
    }
    if out_of_window > 0 {
        msg.push_str(&format!(
            "; {out_of_window} samples outside the accepted window or of new series past store.max_series_per_tenant, first: {}",
            first.unwrap_or_default()
        ));
    }
    plain(StatusCode::BAD_REQUEST, msg)
}

/// Decompresses (gzip, zstd, deflate per Content-Encoding) and checks UTF-8.
// Fails with the finished error response, built once per failed request.
#[allow(clippy::result_large_err)]
fn text_body(app: &AppState, protocol: &'static str, headers: &HeaderMap, body: Bytes) -> Result<String, Response> {
    let limit = app.limits.max_body_bytes;
    let raw = wire::body::decode(header_str(headers, header::CONTENT_ENCODING), body, limit).map_err(|e| {
        app.ingest.rejected_request(protocol, 400);
        plain(StatusCode::BAD_REQUEST, e)
    })?;
    String::from_utf8(raw.to_vec()).map_err(|e| {
        app.ingest.rejected_request(protocol, 400);
        plain(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid UTF-8 (at byte {}); nothing was stored", e.utf8_error().valid_up_to()),
        )
    })
}

/// `POST /api/v1/import/prometheus`: Prometheus text format or OpenMetrics (by Content-Type, or by a
/// final `# EOF`); samples without a timestamp get the time of the request (or `?timestamp=` ms).
async fn import_prometheus(
    State(app): State<AppState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const PROTOCOL: &str = "prometheus_text";
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let text = match text_body(&app, PROTOCOL, &headers, body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let default_t = match q.get("timestamp").map(|t| t.parse::<i64>()) {
        None => now_ms(),
        Some(Ok(t)) => t,
        Some(Err(_)) => return plain(StatusCode::BAD_REQUEST, "timestamp must be Unix milliseconds"),
    };
    let format = TextFormat::from_content_type(header_str(&headers, header::CONTENT_TYPE));
    let mut batch = app.metric_store.batch(&tenant);
    let mut gate = LabelGate::new(label_limits(&app));
    let stats = metrics_wire::parse_text(&text, format, default_t, |labels, t, v| {
        if gate.admit(labels) {
            batch.add(labels, [(t, v)]);
        }
    });
    for m in &stats.metadata {
        let meta = MetricMetadata { kind: m.kind.clone(), help: m.help.clone(), unit: m.unit.clone() };
        app.metric_store.set_metadata(&tenant, &m.metric, meta);
    }
    store_lines(&app, PROTOCOL, batch, &stats.errors, stats.error_lines, gate).await
}

/// `POST /write?precision=` (InfluxDB 1.x; `db` and `rp` are accepted and ignored) and
/// `POST /api/v2/write?precision=` (InfluxDB 2.x; `org` and `bucket` likewise).
async fn influx(
    State(app): State<AppState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    const PROTOCOL: &str = "influx_line_protocol";
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let precision = match q.get("precision") {
        None => Precision::Ns,
        Some(p) => match Precision::parse(p) {
            Some(p) => p,
            None => {
                return plain(StatusCode::BAD_REQUEST, format!("unknown precision {p:?}: use ns, us, ms, s, m or h"));
            }
        },
    };
    let text = match text_body(&app, PROTOCOL, &headers, body) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut batch = app.metric_store.batch(&tenant);
    let mut gate = LabelGate::new(label_limits(&app));
    let stats = metrics_wire::parse_influx(&text, precision, now_ms(), |labels, t, v| {
        if gate.admit(labels) {
            batch.add(labels, [(t, v)]);
        }
    });
    store_lines(&app, PROTOCOL, batch, &stats.errors, stats.error_lines, gate).await
}

/// `POST /api/v1/read`: Prometheus remote read, SAMPLES response type (a Prometheus that prefers streamed
/// chunks falls back to it), stale markers included as stored.
async fn remote_read(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    use metrics_wire::remote::pb;
    let tenant = match tenant(&headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let req = match metrics_wire::decode_read_request(&body, app.limits.max_body_bytes) {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e),
    };
    let mut results = Vec::with_capacity(req.queries.len());
    for (i, q) in req.queries.iter().enumerate() {
        let mut matchers = Vec::with_capacity(q.matchers.len());
        for m in &q.matchers {
            let op = match pb::MatchType::try_from(m.r#type) {
                Ok(pb::MatchType::Eq) => store::MatchOp::Eq,
                Ok(pb::MatchType::Neq) => store::MatchOp::Neq,
                Ok(pb::MatchType::Re) => store::MatchOp::Re,
                Ok(pb::MatchType::Nre) => store::MatchOp::Nre,
                Err(_) => {
                    return plain(StatusCode::BAD_REQUEST, format!("query {i}: unknown matcher type {}", m.r#type));
                }
            };
            match store::LabelMatcher::new(m.name.clone(), op, m.value.clone()) {
                Ok(m) => matchers.push(m),
                Err(e) => return plain(StatusCode::BAD_REQUEST, format!("query {i}: invalid regular expression: {e}")),
            }
        }
        let (store, tenant) = (app.metric_store.clone(), tenant.clone());
        let (start, end) = (q.start_timestamp_ms, q.end_timestamp_ms);
        let selected = tokio::task::spawn_blocking(move || store.select(&tenant, &matchers, start, end)).await;
        let selected = match selected {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return store_error(&e),
            Err(e) => return plain(StatusCode::INTERNAL_SERVER_ERROR, format!("remote read task failed: {e}")),
        };
        let mut timeseries: Vec<pb::TimeSeries> = selected
            .into_iter()
            .map(|s| pb::TimeSeries {
                labels: s.labels.iter().map(|(n, v)| pb::Label { name: n.to_string(), value: v.to_string() }).collect(),
                samples: s.t.iter().zip(s.v.iter()).map(|(&t, &v)| pb::Sample { value: v, timestamp: t }).collect(),
                exemplars: Vec::new(),
                histograms: Vec::new(),
            })
            .collect();
        timeseries.sort_by(|a, b| {
            let key =
                |t: &pb::TimeSeries| t.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect::<Vec<_>>();
            key(a).cmp(&key(b))
        });
        results.push(pb::QueryResult { timeseries });
    }
    let body = metrics_wire::encode_read_response(&pb::ReadResponse { results });
    ([(header::CONTENT_TYPE, "application/x-protobuf"), (header::CONTENT_ENCODING, "snappy")], body).into_response()
}
