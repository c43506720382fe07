//! OTLP/HTTP on the main port: `POST /v1/logs` and `/v1/metrics` (so an exporter given the base URL
//! `http://host:9700` works unchanged), plus the paths Loki (`/otlp/v1/logs`) and Prometheus
//! (`/api/v1/otlp/v1/metrics`) serve them at, so an exporter pointed at either keeps working.
//!
//! Bodies are protobuf (`application/x-protobuf`) or OTLP's JSON (`application/json`), optionally gzip
//! (or deflate, zstd) compressed. The answer is in the request's encoding: 200 with the export response
//! (`partial_success` when records or points were left out); 400 with a `google.rpc.Status` when the
//! body does not decode (nothing stored); 415 for another content type; 503 when the store refuses
//! writes, which OTLP clients retry.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use store::model::Tenant;

use crate::{ExportError, Exported, Otlp, Transport};

pub fn router(otlp: Arc<Otlp>) -> Router {
    Router::new()
        .route("/v1/logs", post(logs))
        .route("/v1/metrics", post(metrics))
        .route("/otlp/v1/logs", post(logs))
        .route("/otlp/v1/metrics", post(metrics))
        .route("/api/v1/otlp/v1/metrics", post(metrics))
        .with_state(otlp)
}

/// The two encodings OTLP/HTTP defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP's error answers.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// gRPC's INVALID_ARGUMENT, UNAVAILABLE and INTERNAL codes, which the Status body carries.
const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;

fn error(encoding: Encoding, status: StatusCode, code: i32, message: String) -> Response {
    let body = RpcStatus { code, message };
    let bytes = match encoding {
        Encoding::Protobuf => body.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&body).unwrap_or_default(),
    };
    (status, [(header::CONTENT_TYPE, encoding.content_type())], bytes).into_response()
}

fn reply<T: Message + serde::Serialize>(encoding: Encoding, msg: &T) -> Response {
    let bytes = match encoding {
        Encoding::Protobuf => msg.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(msg).unwrap_or_default(),
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, encoding.content_type())], bytes).into_response()
}

/// Tenant, encoding and the decoded request, or the error answer.
fn decode<T: Message + Default + serde::de::DeserializeOwned>(
    otlp: &Otlp,
    signal: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(Tenant, Encoding, T), Box<Response>> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let encoding = match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" | "" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        _ => {
            otlp.rejected_request(signal, Transport::Http, "415");
            let msg = format!(
                "unsupported content type {content_type:?}; OTLP/HTTP takes application/x-protobuf or application/json"
            );
            return Err(Box::new(error(Encoding::Protobuf, StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID_ARGUMENT, msg)));
        }
    };
    let bad = |status: StatusCode, msg: String| {
        otlp.rejected_request(signal, Transport::Http, status.as_str());
        Box::new(error(encoding, status, INVALID_ARGUMENT, msg))
    };
    let tenant = match headers.get(crate::grpc::TENANT_HEADER) {
        None => Tenant::default_tenant(),
        Some(v) => {
            let v = v.to_str().map_err(|_| bad(StatusCode::BAD_REQUEST, "X-Scope-OrgID is not valid ASCII".into()))?;
            Tenant::new(v.trim()).map_err(|e| bad(StatusCode::BAD_REQUEST, e.to_string()))?
        }
    };
    let encoding_header = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    let raw = wire::body::decode(encoding_header, body, otlp.max_message_bytes()).map_err(|e| {
        let status = match e {
            wire::WireError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            wire::WireError::UnsupportedEncoding { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        bad(status, format!("nothing of this request was stored: {e}"))
    })?;
    let req = match encoding {
        Encoding::Protobuf => T::decode(&raw[..]).map_err(|e| {
            bad(
                StatusCode::BAD_REQUEST,
                format!("nothing of this request was stored: invalid OTLP {signal} protobuf: {e}"),
            )
        })?,
        Encoding::Json => {
            let req: T = serde_json::from_slice(&raw).map_err(|e| {
                bad(
                    StatusCode::BAD_REQUEST,
                    format!("nothing of this request was stored: invalid OTLP {signal} JSON: {e}"),
                )
            })?;
            // OTLP/JSON names fields in lowerCamelCase and receivers ignore unknown names, so a body in the
            // proto's snake_case would decode as an empty request and be acknowledged with nothing stored.
            let top = format!("\"resource_{signal}\"");
            if req.encoded_len() == 0 && memchr::memmem::find(&raw, top.as_bytes()).is_some() {
                return Err(bad(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "nothing of this request was stored: OTLP/JSON field names are lowerCamelCase (resource{}), not {top}",
                        if signal == "logs" { "Logs" } else { "Metrics" }
                    ),
                ));
            }
            req
        }
    };
    Ok((tenant, encoding, req))
}

fn store_failed(otlp: &Otlp, signal: &str, encoding: Encoding, e: &ExportError) -> Response {
    if e.0.is_refusal() {
        // The disk guard logged the state change once; not every refused request.
        tracing::debug!(error = %e, signal, "refused an OTLP request");
    } else {
        tracing::error!(error = %e, signal, "could not store an OTLP request");
    }
    let (status, code) = if e.0.is_limit() {
        // A tenant limit (store.max_streams_per_tenant): OTLP/HTTP clients retry 429 with backoff.
        (StatusCode::TOO_MANY_REQUESTS, RESOURCE_EXHAUSTED)
    } else if e.is_client_error() {
        (StatusCode::BAD_REQUEST, INVALID_ARGUMENT)
    } else if e.0.is_retryable() {
        // A full or failing disk: OTLP/HTTP exporters retry 503 and keep the data.
        (StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, INTERNAL)
    };
    otlp.rejected_request(signal, Transport::Http, status.as_str());
    let mut resp = error(encoding, status, code, e.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("10"));
    }
    resp
}

async fn logs(State(otlp): State<Arc<Otlp>>, headers: HeaderMap, body: Bytes) -> Response {
    let (tenant, encoding, req) = match decode::<ExportLogsServiceRequest>(&otlp, "logs", &headers, body) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    match otlp.export_logs(Transport::Http, &tenant, req).await {
        Ok(Exported { rejected, message }) => {
            let partial_success = (rejected > 0)
                .then_some(ExportLogsPartialSuccess { rejected_log_records: rejected, error_message: message });
            reply(encoding, &ExportLogsServiceResponse { partial_success })
        }
        Err(e) => store_failed(&otlp, "logs", encoding, &e),
    }
}

async fn metrics(State(otlp): State<Arc<Otlp>>, headers: HeaderMap, body: Bytes) -> Response {
    let (tenant, encoding, req) = match decode::<ExportMetricsServiceRequest>(&otlp, "metrics", &headers, body) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    match otlp.export_metrics(Transport::Http, &tenant, &req).await {
        Ok(Exported { rejected, message }) => {
            let partial_success = (rejected > 0)
                .then_some(ExportMetricsPartialSuccess { rejected_data_points: rejected, error_message: message });
            reply(encoding, &ExportMetricsServiceResponse { partial_success })
        }
        Err(e) => store_failed(&otlp, "metrics", encoding, &e),
    }
}
