//! Limits per tenant, so that one tenant cannot take the server from the others: how many tenants the
//! server holds (`limits.max_tenants`), how fast each may send (`limits.tenant_ingest_rate`, a token bucket
//! of request body bytes with `limits.tenant_ingest_burst`), and how many queries each runs at once
//! (`limits.tenant_max_concurrent_queries`; more wait up to `limits.tenant_query_queue_timeout`).
//!
//! The checks run as middleware after the credential (so the tenant is the one it acts for) and, for
//! ingest, after the body was received (so its size is known); OTLP gRPC calls the same write check
//! through [`TenantLimits::grpc_admit`] (its message's size stands for the body), and MQTT through
//! [`TenantLimits::stream_admit`] (a batch's bytes; over the rate it waits instead), and so does syslog.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::config::LimitsConfig;

/// The tenant a request acts for, as the credential check (or the client) set it.
fn tenant_of(req: &Request) -> String {
    req.headers()
        .get(auth::TENANT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| store::model::DEFAULT_TENANT.to_string())
}

fn refuse(status: StatusCode, retry_after: Option<u64>, message: String) -> Response {
    let mut resp = (status, message).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    resp
}

/// A refused write: the status, when to retry, and a message naming the limit.
struct Refusal {
    status: StatusCode,
    retry_after: Option<u64>,
    message: String,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The state of both middlewares: shared by every route.
#[derive(Clone)]
pub struct TenantLimits(Arc<Inner>);

struct Inner {
    config: LimitsConfig,
    known: Mutex<HashSet<String>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    queries: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl TenantLimits {
    /// `existing`: the tenants the stores already hold (they always stay writable).
    pub fn new(config: LimitsConfig, existing: impl IntoIterator<Item = String>) -> TenantLimits {
        TenantLimits(Arc::new(Inner {
            config,
            known: Mutex::new(existing.into_iter().collect()),
            buckets: Mutex::new(HashMap::new()),
            queries: Mutex::new(HashMap::new()),
        }))
    }

    /// The same check for OTLP gRPC, which is served outside the HTTP router.
    pub fn grpc_admit(&self) -> ingest_otlp::Admit {
        let limits = self.clone();
        Arc::new(move |tenant: &str, bytes: usize| {
            limits.check_write(tenant, bytes).map_err(|r| ingest_otlp::Refused {
                retry: r.status == StatusCode::TOO_MANY_REQUESTS,
                message: r.message.trim_end().to_string(),
            })
        })
    }

    /// The same check for MQTT (the embedded endpoint and the broker subscription) and syslog: a tenant
    /// over its rate waits (neither has a 429: the connection is not read meanwhile), a new tenant past
    /// `max_tenants` is refused (an MQTT connection is closed with its messages unacknowledged).
    pub fn stream_admit(&self) -> wire::Admit {
        let limits = self.clone();
        Arc::new(move |tenant: &str, bytes: usize| {
            limits.check_write(tenant, bytes).map_err(|r| wire::AdmitRefused {
                retry_after: r.retry_after.map(std::time::Duration::from_secs),
                message: r.message.trim_end().to_string(),
            })
        })
    }

    /// Admits a write of `bytes` for `tenant`, or says which limit it is over.
    // Fails with the finished response, built once per refused request.
    #[allow(clippy::result_large_err)]
    fn admit_write(&self, tenant: &str, bytes: usize) -> Result<(), Response> {
        self.check_write(tenant, bytes).map_err(|r| refuse(r.status, r.retry_after, r.message))
    }

    fn check_write(&self, tenant: &str, bytes: usize) -> Result<(), Refusal> {
        if store::model::Tenant::new(tenant).is_err() {
            // Not a tenant: the handler answers 400, and it must not take a place among the tenants.
            return Ok(());
        }
        let c = &self.0.config;
        {
            let mut known = self.0.known.lock();
            if !known.contains(tenant) {
                if c.max_tenants > 0 && known.len() >= c.max_tenants {
                    return Err(Refusal {
                        status: StatusCode::FORBIDDEN,
                        retry_after: None,
                        message: format!(
                            "tenant {tenant:?} would be new, and the server holds limits.max_tenants ({}) already\n",
                            c.max_tenants
                        ),
                    });
                }
                known.insert(tenant.to_string());
            }
        }
        let rate = c.tenant_ingest_rate.as_u64() as f64;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = c.tenant_ingest_burst.as_u64() as f64;
        let now = Instant::now();
        let mut buckets = self.0.buckets.lock();
        let bucket = buckets.entry(tenant.to_string()).or_insert(Bucket { tokens: burst, last: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * rate).min(burst);
        bucket.last = now;
        let need = bytes as f64;
        // A write larger than the burst (an MQTT batch: HTTP requests are at most the burst, which
        // `max_request_size` may not pass) is taken once the bucket is full, and leaves it in debt: the
        // writes after it wait until the rate has paid for it.
        let enough = need.min(burst);
        if bucket.tokens >= enough {
            bucket.tokens -= need;
            return Ok(());
        }
        let wait = ((enough - bucket.tokens) / rate).ceil() as u64;
        Err(Refusal {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(wait),
            message: format!(
                "tenant {tenant:?} sends faster than limits.tenant_ingest_rate ({} bytes/s, burst {}): retry in {wait}s\n",
                c.tenant_ingest_rate.as_u64(),
                c.tenant_ingest_burst.as_u64()
            ),
        })
    }

    /// Forgets a tenant's query slots when no query holds or waits for them, so that queries naming ever
    /// new tenants cannot grow the map.
    fn release_idle(&self, tenant: &str, slots: &Arc<Semaphore>) {
        let mut map = self.0.queries.lock();
        // The map's reference and the caller's: nobody else has them.
        if Arc::strong_count(slots) == 2
            && slots.available_permits() == self.0.config.tenant_max_concurrent_queries.max(1)
        {
            map.remove(tenant);
        }
    }

    fn query_slots(&self, tenant: &str) -> Arc<Semaphore> {
        let n = self.0.config.tenant_max_concurrent_queries.max(1);
        self.0.queries.lock().entry(tenant.to_string()).or_insert_with(|| Arc::new(Semaphore::new(n))).clone()
    }
}

/// On write routes, after the body was read: the tenant count and the ingest rate.
pub async fn limit_writes(State(limits): State<TenantLimits>, req: Request, next: Next) -> Response {
    // `inflight::limit_body` ran first: the body is whole, and its size exact.
    let bytes = usize::try_from(hyper::body::Body::size_hint(req.body()).lower()).unwrap_or(usize::MAX);
    if let Err(resp) = limits.admit_write(&tenant_of(&req), bytes) {
        return resp;
    }
    next.run(req).await
}

/// A query's place among its tenant's `tenant_max_concurrent_queries`: held until dropped.
pub struct QuerySlot {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    limits: TenantLimits,
    tenant: String,
    slots: Arc<Semaphore>,
}

impl Drop for QuerySlot {
    fn drop(&mut self) {
        // The permit (and its reference to the semaphore) goes back first, so an idle tenant is forgotten.
        drop(self.permit.take());
        self.limits.release_idle(&self.tenant, &self.slots);
    }
}

impl TenantLimits {
    /// Waits up to `tenant_query_queue_timeout` for one of the tenant's query slots: the HTTP query routes
    /// and the ruler's evaluations both take one. The error names the limit.
    pub async fn query_slot(&self, tenant: &str) -> Result<QuerySlot, String> {
        let slots = self.query_slots(tenant);
        let timeout = self.0.config.tenant_query_queue_timeout;
        match tokio::time::timeout(timeout, slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => {
                Ok(QuerySlot { permit: Some(permit), limits: self.clone(), tenant: tenant.to_string(), slots })
            }
            _ => Err(format!(
                "tenant {tenant:?} runs limits.tenant_max_concurrent_queries ({}) queries already, and none ended within \
                 limits.tenant_query_queue_timeout ({})",
                self.0.config.tenant_max_concurrent_queries,
                humantime::format_duration(timeout)
            )),
        }
    }
}

/// The ruler's evaluations pass the limits an HTTP query passes: refused under memory pressure (counted
/// as `api="ruler"`), then one of the tenant's query slots.
pub struct RuleGate {
    pub limits: TenantLimits,
    pub pressure: crate::memory::Pressure,
}

impl ruler::backend::QueryGate for RuleGate {
    fn enter(
        &self,
        tenant: &store::model::Tenant,
    ) -> futures::future::BoxFuture<'static, Result<Box<dyn Send>, String>> {
        let limits = self.limits.clone();
        let pressure = self.pressure.clone();
        let tenant = tenant.as_str().to_string();
        Box::pin(async move {
            pressure.admit_query_of("ruler")?;
            let slot = limits.query_slot(&tenant).await?;
            Ok(Box::new(slot) as Box<dyn Send>)
        })
    }
}

/// On query routes: at most `tenant_max_concurrent_queries` of a tenant at once; more wait for a slot.
pub async fn limit_queries(State(limits): State<TenantLimits>, req: Request, next: Next) -> Response {
    let tenant = tenant_of(&req);
    let slot = match limits.query_slot(&tenant).await {
        Ok(slot) => slot,
        Err(message) => {
            let retry = limits.0.config.tenant_query_queue_timeout.as_secs().max(1);
            return refuse(StatusCode::SERVICE_UNAVAILABLE, Some(retry), format!("{message}\n"));
        }
    };
    let response = next.run(req).await;
    drop(slot);
    response
}

#[cfg(test)]
mod tests;
