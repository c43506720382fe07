//! OTLP/gRPC: the logs and metrics `Export` services on tonic, at `server.otlp_grpc_addr`.
//!
//! The services are written out here rather than taken from generated server code for one reason: a
//! request that does not decode must fail with `INVALID_ARGUMENT` (OTLP clients drop it instead of
//! retrying), and tonic's stock protobuf codec reports decode errors as `INTERNAL`. The codec below
//! decodes the same prost messages and says what was wrong. gzip requests are accepted; the tenant
//! comes from the `x-scope-orgid` metadata, as over HTTP.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Buf;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use prost::Message;
use store::model::Tenant;
use tonic::Status;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::{NamedService, UnaryService};

use crate::{ExportError, Exported, Otlp, Transport};

/// The tenant header, as HTTP ingest and Loki name it (gRPC metadata keys are lower case).
pub(crate) const TENANT_HEADER: &str = "x-scope-orgid";

/// The server's per-tenant limits, checked before a call is stored: the tenant and the size of its message.
/// `Err` names the limit; `retry` says whether the same call may pass later (a rate) or not (a count).
pub type Admit = Arc<dyn Fn(&str, usize) -> Result<(), Refused> + Send + Sync>;

/// Why [`Admit`] refused a call.
#[derive(Debug, Clone)]
pub struct Refused {
    pub retry: bool,
    pub message: String,
}

/// Both services, for the server to serve on its gRPC listener (which owns TLS, the connection cap and the
/// time limits). With `auth` enabled, each call needs a token with the `write` scope; `admit` checks the
/// tenant's limits.
pub fn routes(otlp: Arc<Otlp>, auth: auth::Auth, admit: Option<Admit>) -> tonic::service::Routes {
    let logs = ExportService::<Logs>::new(otlp.clone(), auth.clone(), admit.clone());
    tonic::service::Routes::new(logs).add_service(ExportService::<Metrics>::new(otlp, auth, admit))
}

/// A prost codec whose decode errors are `INVALID_ARGUMENT`.
struct OtlpCodec<Req, Resp>(PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for OtlpCodec<Req, Resp> {
    fn default() -> Self {
        OtlpCodec(PhantomData)
    }
}

struct Enc<T>(PhantomData<fn() -> T>);
struct Dec<T>(PhantomData<fn() -> T>);

impl<T: Message> Encoder for Enc<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf).map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

impl<T: Message + Default> Decoder for Dec<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        // The message as one contiguous piece (split off tonic's buffer, not copied): prost decodes a
        // slice much faster than a generic `Buf`, whose every varint read goes through `advance`.
        let bytes = buf.copy_to_bytes(buf.remaining());
        T::decode(&bytes[..]).map(Some).map_err(|e| {
            Status::invalid_argument(format!("nothing of this request was stored: invalid OTLP protobuf: {e}"))
        })
    }
}

impl<Req, Resp> Codec for OtlpCodec<Req, Resp>
where
    Req: Message + Default + Send + 'static,
    Resp: Message + Send + 'static,
{
    type Encode = Resp;
    type Decode = Req;
    type Encoder = Enc<Resp>;
    type Decoder = Dec<Req>;

    fn encoder(&mut self) -> Enc<Resp> {
        Enc(PhantomData)
    }

    fn decoder(&mut self) -> Dec<Req> {
        Dec(PhantomData)
    }
}

/// One of the two signals: its service name, messages and export call.
trait Signal: Send + Sync + 'static {
    const SERVICE: &'static str;
    const METHOD: &'static str;
    const NAME: &'static str;
    type Request: Message + Default + Send + 'static;
    type Response: Message + Send + 'static;

    fn export(
        otlp: Arc<Otlp>,
        tenant: Tenant,
        req: Self::Request,
    ) -> impl Future<Output = Result<Self::Response, ExportError>> + Send;
}

struct Logs;
struct Metrics;

impl Signal for Logs {
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const METHOD: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const NAME: &'static str = "logs";
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;

    async fn export(otlp: Arc<Otlp>, tenant: Tenant, req: Self::Request) -> Result<Self::Response, ExportError> {
        let Exported { rejected, message } = otlp.export_logs(Transport::Grpc, &tenant, req).await?;
        Ok(ExportLogsServiceResponse {
            partial_success: (rejected > 0)
                .then_some(ExportLogsPartialSuccess { rejected_log_records: rejected, error_message: message }),
        })
    }
}

impl Signal for Metrics {
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const METHOD: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    const NAME: &'static str = "metrics";
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;

    async fn export(otlp: Arc<Otlp>, tenant: Tenant, req: Self::Request) -> Result<Self::Response, ExportError> {
        let Exported { rejected, message } = otlp.export_metrics(Transport::Grpc, &tenant, &req).await?;
        Ok(ExportMetricsServiceResponse {
            partial_success: (rejected > 0)
                .then_some(ExportMetricsPartialSuccess { rejected_data_points: rejected, error_message: message }),
        })
    }
}

/// The tower service of one signal, as tonic's router takes it.
struct ExportService<S> {
    otlp: Arc<Otlp>,
    auth: auth::Auth,
    admit: Option<Admit>,
    signal: PhantomData<fn() -> S>,
}

impl<S> ExportService<S> {
    fn new(otlp: Arc<Otlp>, auth: auth::Auth, admit: Option<Admit>) -> Self {
        ExportService { otlp, auth, admit, signal: PhantomData }
    }
}

impl<S> Clone for ExportService<S> {
    fn clone(&self) -> Self {
        ExportService::new(self.otlp.clone(), self.auth.clone(), self.admit.clone())
    }
}

impl<S: Signal> NamedService for ExportService<S> {
    const NAME: &'static str = S::SERVICE;
}

/// The unary call: tenant from metadata, then export.
struct Unary<S>(Arc<Otlp>, Option<Admit>, PhantomData<fn() -> S>);

impl<S: Signal> UnaryService<S::Request> for Unary<S> {
    type Response = S::Response;
    type Future = BoxFuture<tonic::Response<S::Response>, Status>;

    fn call(&mut self, request: tonic::Request<S::Request>) -> Self::Future {
        let otlp = self.0.clone();
        let admit = self.1.clone();
        Box::pin(async move {
            let tenant = match request.metadata().get(TENANT_HEADER) {
                None => Tenant::default_tenant(),
                Some(v) => {
                    let v = v.to_str().map_err(|_| {
                        otlp.rejected_request(S::NAME, Transport::Grpc, "invalid_argument");
                        Status::invalid_argument("x-scope-orgid is not valid ASCII")
                    })?;
                    Tenant::new(v.trim()).map_err(|e| {
                        otlp.rejected_request(S::NAME, Transport::Grpc, "invalid_argument");
                        Status::invalid_argument(e.to_string())
                    })?
                }
            };
            if let Some(admit) = &admit {
                let bytes = prost::Message::encoded_len(request.get_ref());
                if let Err(r) = admit(tenant.as_str(), bytes) {
                    let status = if r.retry {
                        Status::resource_exhausted(r.message)
                    } else {
                        Status::permission_denied(r.message)
                    };
                    otlp.rejected_request(S::NAME, Transport::Grpc, &format!("{:?}", status.code()).to_lowercase());
                    return Err(status);
                }
            }
            match S::export(otlp.clone(), tenant, request.into_inner()).await {
                Ok(resp) => Ok(tonic::Response::new(resp)),
                Err(e) => {
                    tracing::error!(error = %e, signal = S::NAME, "could not store an OTLP request");
                    let status = if e.0.is_limit() {
                        Status::resource_exhausted(e.to_string())
                    } else if e.is_client_error() {
                        Status::invalid_argument(e.to_string())
                    } else {
                        // OTLP clients retry UNAVAILABLE with backoff.
                        Status::unavailable(e.to_string())
                    };
                    otlp.rejected_request(S::NAME, Transport::Grpc, &format!("{:?}", status.code()).to_lowercase());
                    Err(status)
                }
            }
        })
    }
}

impl<S, B> Service<http::Request<B>> for ExportService<S>
where
    S: Signal,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let otlp = self.otlp.clone();
        let admit = self.admit.clone();
        // The credential travels in the `authorization` metadata, as over HTTP; with authentication on, the
        // tenant it acts for replaces whatever `x-scope-orgid` said (after checking it may use that one).
        match self.auth.authorize(req.headers(), auth::Scope::Write) {
            Ok(None) => {}
            Ok(Some(tenant)) => {
                if let Ok(v) = http::HeaderValue::from_str(tenant.as_str()) {
                    req.headers_mut().insert(TENANT_HEADER, v);
                }
            }
            Err(denied) => {
                let status = if denied.is_unauthenticated() {
                    otlp.rejected_request(S::NAME, Transport::Grpc, "unauthenticated");
                    Status::unauthenticated(denied.to_string())
                } else {
                    otlp.rejected_request(S::NAME, Transport::Grpc, "permission_denied");
                    Status::permission_denied(denied.to_string())
                };
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        Box::pin(async move {
            if req.uri().path() != S::METHOD {
                return Ok(
                    Status::unimplemented(format!("{} has no method {}", S::SERVICE, req.uri().path())).into_http()
                );
            }
            let limit = otlp.max_message_bytes();
            let mut grpc = tonic::server::Grpc::new(OtlpCodec::<S::Request, S::Response>::default())
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit);
            Ok(grpc.unary(Unary::<S>(otlp, admit, PhantomData), req).await)
        })
    }
}
