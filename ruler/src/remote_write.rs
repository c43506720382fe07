//! Remote write of what rules write (`[ruler] remote_write_url`), as Loki's ruler sends its recording
//! rules' samples: every sample the rules store (recorded series, `ALERTS`, `ALERTS_FOR_STATE`, stale
//! markers) is also sent, in Prometheus remote write 1.0 (snappy protobuf), to each URL, with
//! `X-Scope-OrgID` set to the rule's tenant. The local store stays the source of truth: a receiver that is
//! down costs retries and, past a bounded queue, dropped samples (counted), never a rule evaluation.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use store::model::Tenant;
use tokio::sync::mpsc;
use wire::prom::{OwnedSeries, Sample, encode_write_request};

use crate::group::Backend;
use crate::rule::Labels;
use crate::rulefmt::Query;

/// Samples sent, failed and dropped, by target (`scheme://host`).
#[derive(Default)]
pub struct RemoteWriteMetrics {
    pub sent: Family<Vec<(String, String)>, Counter>,
    pub failed: Family<Vec<(String, String)>, Counter>,
    pub dropped: Family<Vec<(String, String)>, Counter>,
}

/// One write of a rule: tenant, time, samples.
type Item = (String, i64, Vec<(Labels, f64)>);

/// Most items queued per target before new ones are dropped.
const QUEUE: usize = 1_000;
/// Most samples in one request.
const MAX_SAMPLES: usize = 5_000;

/// A [`Backend`] that stores through `inner` and then queues what it stored for every target.
pub struct Tee {
    pub inner: Arc<dyn Backend>,
    targets: Vec<(String, mpsc::Sender<Item>)>,
    metrics: Arc<RemoteWriteMetrics>,
}

impl Tee {
    /// Starts one sender per URL; they stop when `shutdown` fires.
    pub fn start(
        inner: Arc<dyn Backend>,
        urls: &[String],
        bearer_token: Option<String>,
        client: reqwest::Client,
        metrics: Arc<RemoteWriteMetrics>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Tee {
        let mut targets = Vec::new();
        for url in urls {
            let (tx, rx) = mpsc::channel(QUEUE);
            let name = crate::notify::redact(url);
            tokio::spawn(run(
                url.clone(),
                name.clone(),
                bearer_token.clone(),
                client.clone(),
                metrics.clone(),
                rx,
                shutdown.clone(),
            ));
            targets.push((name, tx));
        }
        Tee { inner, targets, metrics }
    }
}

impl Backend for Tee {
    fn query(&self, tenant: &Tenant, q: &Query, t_ms: i64) -> Result<Vec<(Labels, f64)>, String> {
        self.inner.query(tenant, q, t_ms)
    }

    fn write(&self, tenant: &Tenant, t_ms: i64, samples: Vec<(Labels, f64)>) -> Result<(), String> {
        self.inner.write(tenant, t_ms, samples.clone())?;
        for (name, tx) in &self.targets {
            let n = samples.len() as u64;
            if tx.try_send((tenant.as_str().to_string(), t_ms, samples.clone())).is_err() {
                self.metrics.dropped.get_or_create(&vec![("target".to_string(), name.clone())]).inc_by(n);
            }
        }
        Ok(())
    }

    fn last_samples(
        &self,
        tenant: &Tenant,
        matchers: &[(String, String)],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<(Labels, i64, f64)>, String> {
        self.inner.last_samples(tenant, matchers, mint, maxt)
    }
}

async fn run(
    url: String,
    name: String,
    token: Option<String>,
    client: reqwest::Client,
    metrics: Arc<RemoteWriteMetrics>,
    mut rx: mpsc::Receiver<Item>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let key = vec![("target".to_string(), name.clone())];
    loop {
        let first = tokio::select! {
            i = rx.recv() => i,
            _ = shutdown.changed() => None,
        };
        let Some(first) = first else { break };
        // One request per tenant: what is queued now, up to MAX_SAMPLES for the first item's tenant.
        let tenant = first.0.clone();
        let mut items = vec![first];
        let mut n: usize = items[0].2.len();
        let mut others = Vec::new();
        while n < MAX_SAMPLES {
            match rx.try_recv() {
                Ok(i) if i.0 == tenant => {
                    n += i.2.len();
                    items.push(i);
                }
                Ok(i) => others.push(i),
                Err(_) => break,
            }
        }
        for batch in std::iter::once((tenant, items)).chain(group_by_tenant(others)) {
            let (tenant, items) = batch;
            let series: Vec<OwnedSeries> = items
                .into_iter()
                .flat_map(|(_, t, samples)| samples.into_iter().map(move |(l, v)| (l, vec![Sample { t, v }])))
                .collect();
            let count = series.len() as u64;
            let body = encode_write_request(&series);
            if send(&client, &url, &name, token.as_deref(), &tenant, body).await {
                metrics.sent.get_or_create(&key).inc_by(count);
            } else {
                metrics.failed.get_or_create(&key).inc_by(count);
            }
        }
    }
}

fn group_by_tenant(items: Vec<Item>) -> Vec<(String, Vec<Item>)> {
    let mut out: Vec<(String, Vec<Item>)> = Vec::new();
    for i in items {
        match out.iter_mut().find(|(t, _)| *t == i.0) {
            Some((_, v)) => v.push(i),
            None => out.push((i.0.clone(), vec![i])),
        }
    }
    out
}

/// Posts one request, retrying server errors and network failures three times.
async fn send(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    token: Option<&str>,
    tenant: &str,
    body: Vec<u8>,
) -> bool {
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=3 {
        let mut req = client
            .post(url)
            .timeout(Duration::from_secs(30))
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header("X-Scope-OrgID", tenant)
            .body(body.clone());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                tracing::warn!(target_url = %name, %status, attempt, answer = %text.chars().take(200).collect::<String>(), "remote write of rule samples refused");
                if status.is_client_error() && status.as_u16() != 429 {
                    return false;
                }
            }
            Err(e) => {
                tracing::warn!(target_url = %name, attempt, error = %e.without_url(), "remote write of rule samples failed")
            }
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    false
}
