//! Log ingest over HTTP: Loki push, JSON lines and Elasticsearch bulk, plus the Elasticsearch handshake
//! endpoints that shippers probe before they send (`GET /`, `_license`, `_cluster/health`, template and
//! ILM setup).
//!
//! Every handler follows one path: tenant from `X-Scope-OrgID`, body decompressed and decoded by
//! `wire` (a malformed request fails whole and stores nothing), the batch appended to the store
//! (resolving only once it is fsynced), then the protocol's own answer. Lines rejected one by one (too
//! long) are counted in the answer and in `lumen_ingest_rejected_lines_total`.

use std::collections::HashMap;
use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use bytes::Bytes;
use serde_json::json;
use store::model::Tenant;
use wire::esbulk::BulkItem;
use wire::{Decoded, FieldMapping, WireError, body, esbulk, jsonline, loki};

use crate::http::AppState;

pub mod metrics;
pub mod resend;

/// The Elasticsearch version reported to shippers. Filebeat refuses a server older than itself and
/// Vector picks its API flavour from the major version, so this is a recent 8.x.
const ES_VERSION: &str = "8.17.0";

pub fn router() -> Router<AppState> {
    const ES: &str = "/insert/elasticsearch";
    let es = Router::new()
        .route(ES, get(es_root).head(es_root))
        .route(&format!("{ES}/"), get(es_root).head(es_root))
        .route(&format!("{ES}/_bulk"), post(es_bulk).put(es_bulk))
        .route(&format!("{ES}/{{index}}/_bulk"), post(es_bulk).put(es_bulk))
        .route(&format!("{ES}/_license"), get(es_license))
        .route(&format!("{ES}/_cluster/health"), get(es_health))
        .route(&format!("{ES}/_ilm/{{*rest}}"), any(es_empty))
        .route(&format!("{ES}/_index_template/{{*rest}}"), any(es_empty))
        .route(&format!("{ES}/_ingest/{{*rest}}"), any(es_empty))
        .route(&format!("{ES}/_nodes/{{*rest}}"), any(es_empty))
        .layer(axum::middleware::map_response(es_product_header));
    Router::new()
        .route("/loki/api/v1/push", post(loki_push))
        .route("/insert/jsonline", post(jsonline_insert))
        .merge(es)
        .merge(metrics::router())
}

/// The decoding limits of a request received at `now`: entries must fall between the retention cutoff
/// and two days ahead.
fn limits(app: &AppState, now: i64) -> wire::Limits {
    let retention = i64::try_from(app.retention.as_nanos()).unwrap_or(i64::MAX);
    wire::Limits {
        oldest_ns: now.saturating_sub(retention),
        newest_ns: now.saturating_add(2 * store::time::NANOS_PER_DAY),
        ..app.limits
    }
}

fn header_str(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Status and message of a request that cannot be stored.
fn wire_status(e: &WireError) -> StatusCode {
    match e {
        WireError::UnsupportedContentType { .. } | WireError::UnsupportedEncoding { .. } => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        WireError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn plain(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    (status, format!("{msg}\n")).into_response()
}

fn store_error(e: &store::Error) -> Response {
    if e.is_retryable() {
        // A full or failing disk, or a stopping store: 503 with Retry-After, which Loki and
        // Elasticsearch shippers, Prometheus remote write, OTLP exporters and the agent all retry,
        // keeping the data. The disk guard has logged the state change once; not every request.
        if e.is_refusal() {
            tracing::debug!(error = %e, "refused a write");
        } else {
            tracing::error!(error = %e, "could not store a request");
        }
        let mut resp = plain(StatusCode::SERVICE_UNAVAILABLE, format!("could not store the request: {e}"));
        resp.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("10"));
        return resp;
    }
    let status = match e {
        // As Loki answers a stream limit: shippers retry with backoff.
        e if e.is_limit() => StatusCode::TOO_MANY_REQUESTS,
        e if e.is_client_error() => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::error!(error = %e, "could not store a request");
    plain(status, format!("could not store the request: {e}"))
}

/// Decompresses and decodes a body, mapping failures to the protocol's error response.
fn decode_with<T>(
    app: &AppState,
    protocol: &'static str,
    headers: &HeaderMap,
    body: Bytes,
    decode: impl FnOnce(&[u8]) -> Result<T, WireError>,
) -> Result<T, (StatusCode, String)> {
    let limit = app.limits.max_body_bytes;
    let res = body::decode(header_str(headers, header::CONTENT_ENCODING), body, limit).and_then(|b| decode(&b));
    res.map_err(|e| {
        let status = wire_status(&e);
        app.ingest.rejected_request(protocol, status.as_u16());
        (status, e.to_string())
    })
}

/// Counts a decoded request and stores its batch.
async fn store_decoded(
    app: &AppState,
    protocol: &'static str,
    tenant: &Tenant,
    decoded: &mut Decoded,
) -> Result<(), Response> {
    store_decoded_once(app, protocol, tenant, decoded, None).await
}

/// As [`store_decoded`]; with a producer and sequence the batch is stored once however often it is sent,
/// on this node, and (for a batch marked as resent) on any ingest node of `query.ingest_urls`.
async fn store_decoded_once(
    app: &AppState,
    protocol: &'static str,
    tenant: &Tenant,
    decoded: &mut Decoded,
    producer: Option<&Producer>,
) -> Result<(), Response> {
    let batch = std::mem::take(&mut decoded.batch);
    let (lines, bytes) = (batch.entries.len(), batch.line_bytes());
    if decoded.invalid_utf8 {
        app.ingest.invalid_utf8(protocol);
    }
    for r in &decoded.rejected {
        app.ingest.rejected(protocol, r.reason.kind());
    }
    app.ingest.rejected_bytes(protocol, decoded.rejected_bytes);
    if let (Some(p), Some(check)) = (producer, &app.resend)
        && p.resend
        && app.store.stored_sequence(tenant, &p.name).await < p.seq
    {
        match check.ask(tenant, &p.name, p.seq, p.auth.as_ref()).await {
            resend::Verdict::StoredOn(node, stored) => {
                tracing::debug!(producer = %p.name, seq = p.seq, %node, stored,
                    "a resent batch was stored by another ingest node; not storing it here");
                app.ingest.duplicate_batch(protocol);
                return Ok(());
            }
            resend::Verdict::NotStored => {}
            resend::Verdict::Unknown(why) => {
                app.ingest.rejected_request(protocol, 503);
                tracing::warn!(producer = %p.name, seq = p.seq, %why,
                    "a resent batch is refused until every ingest node can say whether it stored it");
                let mut resp = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "batch {} of producer {:?} is marked as resent (X-Lumen-Resend) and not stored on this node; \
                         another ingest node of query.ingest_urls may have stored it, and not every one answered \
                         ({why}): storing it here could store it twice, so retry it later",
                        p.seq, p.name
                    ),
                );
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return Err(resp);
            }
        }
    }
    let appended = match producer {
        None => app.store.append(tenant, batch).await.map(|()| store::Appended::Stored),
        Some(p) => app.store.append_once(tenant, batch, &p.name, p.seq).await,
    };
    match appended.map_err(|e| {
        app.ingest.rejected_request(protocol, 503);
        store_error(&e)
    })? {
        store::Appended::Stored => app.ingest.accepted(protocol, lines, bytes),
        store::Appended::Duplicate { stored } => {
            tracing::debug!(
                producer = producer.map(|p| p.name.as_str()),
                seq = producer.map(|p| p.seq),
                stored,
                "a resent batch was stored before; not storing it again"
            );
            app.ingest.duplicate_batch(protocol);
        }
    }
    Ok(())
}

fn rejection_summary(d: &Decoded) -> String {
    let mut msg = format!("{} of {} entries rejected", d.rejected.len(), d.total);
    for r in d.rejected.iter().take(10) {
        msg.push_str(&format!("; entry {}: {}", r.index, r.reason));
    }
    if d.rejected.len() > 10 {
        msg.push_str("; ...");
    }
    msg
}

/// A batch of a producer that numbers its batches (the agent).
struct Producer {
    name: String,
    seq: u64,
    /// `X-Lumen-Resend: 1`: the batch may have reached a server before.
    resend: bool,
    /// The caller's credential, passed on when other ingest nodes are asked about a resent batch.
    auth: Option<HeaderValue>,
}

/// The `X-Lumen-Producer` and `X-Lumen-Sequence` headers (both or neither), and `X-Lumen-Resend`.
fn producer(headers: &HeaderMap) -> Result<Option<Producer>, String> {
    let name = header_str(headers, "x-lumen-producer");
    let seq = header_str(headers, "x-lumen-sequence");
    match (name, seq) {
        (None, None) => Ok(None),
        (Some(name), Some(seq)) => {
            if name.is_empty() || name.len() > 256 {
                return Err(format!("X-Lumen-Producer must be 1 to 256 characters, got {} characters", name.len()));
            }
            let seq = seq
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("X-Lumen-Sequence must be an unsigned integer, got {seq:?}"))?;
            let resend = match header_str(headers, "x-lumen-resend") {
                None | Some("0") => false,
                Some("1") => true,
                Some(other) => return Err(format!("X-Lumen-Resend must be 0 or 1, got {other:?}")),
            };
            Ok(Some(Producer {
                name: name.to_string(),
                seq,
                resend,
                auth: headers.get(header::AUTHORIZATION).cloned(),
            }))
        }
        _ => Err("X-Lumen-Producer and X-Lumen-Sequence go together: send both or neither".to_string()),
    }
}

/// `POST /loki/api/v1/push`: 204 when everything was stored; 400 naming the dropped entries when some
/// lines were rejected (the rest is stored, as Loki does, so the client must not resend). Headers are read
/// as Loki reads them ([`loki::decode_request`]).
async fn loki_push(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let tenant = match crate::http::tenant(&headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let producer = match producer(&headers) {
        Ok(p) => p,
        Err(msg) => {
            app.ingest.rejected_request("loki", 400);
            return plain(StatusCode::BAD_REQUEST, msg);
        }
    };
    let received = store::time::now_ns();
    let content_type = header_str(&headers, header::CONTENT_TYPE);
    let encoding = header_str(&headers, header::CONTENT_ENCODING);
    let mut decoded = match loki::decode_request(content_type, encoding, body, limits(&app, received), received) {
        Ok(d) => d,
        Err(e) => {
            // As Loki: a request it cannot read is a 400, whatever the reason, but for size (413).
            let status = match e {
                WireError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            app.ingest.rejected_request("loki", status.as_u16());
            return plain(status, e);
        }
    };
    if let Err(r) = store_decoded_once(&app, "loki", &tenant, &mut decoded, producer.as_ref()).await {
        return r;
    }
    if decoded.rejected.is_empty() {
        StatusCode::NO_CONTENT.into_response()
    } else {
        plain(StatusCode::BAD_REQUEST, rejection_summary(&decoded))
    }
}

/// The VictoriaLogs field mapping from query parameters, or `VL-*` headers when a parameter is absent.
fn mapping(
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    default_time: &str,
    default_msg: &str,
) -> FieldMapping {
    let get = |param: &str, hdr: &str| params.get(param).map(String::as_str).or_else(|| header_str(headers, hdr));
    FieldMapping::from_params(
        get("_time_field", "VL-Time-Field"),
        get("_msg_field", "VL-Msg-Field"),
        get("_stream_fields", "VL-Stream-Fields"),
        get("ignore_fields", "VL-Ignore-Fields"),
        default_time,
        default_msg,
    )
}

/// `POST /insert/jsonline`: 200 with `{"accepted":N,"rejected":M,"errors":[..]}`.
async fn jsonline_insert(
    State(app): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let tenant = match crate::http::tenant(&headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mapping = mapping(&params, &headers, "_time", "_msg");
    let received = store::time::now_ns();
    let mut decoded = match decode_with(&app, "jsonline", &headers, body, |b| {
        jsonline::decode(b, &mapping, limits(&app, received), received)
    }) {
        Ok(d) => d,
        Err((status, msg)) => return plain(status, msg),
    };
    if let Err(r) = store_decoded(&app, "jsonline", &tenant, &mut decoded).await {
        return r;
    }
    let errors: Vec<String> =
        decoded.rejected.iter().take(10).map(|r| format!("line {}: {}", r.index + 1, r.reason)).collect();
    let body = json!({"accepted": decoded.total - decoded.rejected.len(), "rejected": decoded.rejected.len(), "errors": errors});
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// `POST|PUT /insert/elasticsearch/[<index>/]_bulk`: always 200 with per-item statuses, as Elasticsearch
/// answers, so that Filebeat and Vector retry nothing that was stored; a malformed body is a 400 with an
/// Elasticsearch error object.
async fn es_bulk(
    State(app): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let tenant = match crate::http::tenant(&headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mapping = mapping(&params, &headers, "@timestamp", "message");
    let received = store::time::now_ns();
    let (mut decoded, items) = match decode_with(&app, "elasticsearch", &headers, body, |b| {
        esbulk::decode(b, &mapping, limits(&app, received), received)
    }) {
        Ok(d) => d,
        Err((status, msg)) => {
            let body = json!({"error": {"type": "parse_exception", "reason": msg}, "status": status.as_u16()});
            return (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
        }
    };
    if let Err(r) = store_decoded(&app, "elasticsearch", &tenant, &mut decoded).await {
        return r;
    }
    let took = started.elapsed().as_millis() as u64;
    ([(header::CONTENT_TYPE, "application/json")], bulk_response(took, &items, &decoded)).into_response()
}

/// `{"took":N,"errors":false,"items":[{"create":{"_index":"x","status":201}}, ...]}`, compact: Vector
/// looks for the literal `"errors":true`.
fn bulk_response(took: u64, items: &[BulkItem], decoded: &Decoded) -> String {
    let mut rejected = decoded.rejected.iter().peekable();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mut body = serde_json::Map::new();
        if let Some(index) = &item.index {
            body.insert("_index".into(), json!(index));
        }
        match rejected.next_if(|r| r.index == i) {
            Some(r) => {
                body.insert("status".into(), json!(400));
                let kind = match r.reason {
                    wire::RejectReason::LineTooLong { .. } | wire::RejectReason::FieldsTooLong { .. } => {
                        "document_too_large_exception"
                    }
                    wire::RejectReason::TooManyFields { .. } => "document_parsing_exception",
                    wire::RejectReason::UnsupportedAction { .. } => "action_request_validation_exception",
                    wire::RejectReason::TooOld { .. } | wire::RejectReason::TooNew { .. } => {
                        "illegal_argument_exception"
                    }
                };
                body.insert("error".into(), json!({"type": kind, "reason": r.reason.to_string()}));
            }
            None => {
                body.insert("status".into(), json!(201));
                body.insert("result".into(), json!("created"));
            }
        }
        out.push(json!({ item.action.clone(): body }));
    }
    json!({"took": took, "errors": !decoded.rejected.is_empty(), "items": out}).to_string()
}

async fn es_product_header(mut response: Response) -> Response {
    response.headers_mut().insert("x-elastic-product", HeaderValue::from_static("Elasticsearch"));
    response
}

async fn es_root() -> Response {
    let body = json!({
        "name": "lumen",
        "cluster_name": "lumen",
        "version": {"number": ES_VERSION, "build_flavor": "default", "lucene_version": "9.12.0", "minimum_wire_compatibility_version": "7.17.0", "minimum_index_compatibility_version": "7.0.0"},
        "tagline": "You Know, for Search"
    });
    ([(header::CONTENT_TYPE, "application/json")], [("x-elastic-product", "Elasticsearch")], body.to_string())
        .into_response()
}

async fn es_license() -> Response {
    let body = json!({"license": {"uid": "lumen", "type": "basic", "status": "active", "expiry_date_in_millis": 4_000_000_000_000u64}});
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn es_health() -> Response {
    let body = json!({"cluster_name": "lumen", "status": "green", "timed_out": false, "number_of_nodes": 1, "number_of_data_nodes": 1});
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn es_empty() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
}
