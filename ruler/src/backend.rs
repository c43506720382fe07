//! The server's [`Backend`]: PromQL over the metric store, LogQL over the log store, recorded samples,
//! `ALERTS` and `ALERTS_FOR_STATE` into the metric store (so every rule's output is queryable by PromQL
//! and later rules of the same cycle see it). Runs on a blocking thread; the async store calls are
//! driven with the runtime's handle.
//!
//! On a query node ([`Cluster`], issue 22) rules read what every query reads there (each ingest node's
//! tree, and what each node has not synced), and what they write goes to an ingest node as a remote
//! write, acknowledged before the next rule of the cycle runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use query::http::prom::StoreSource;
use query::logql::{Engine, QueryParams, QueryValue};
use query::promql::{self, EngineOptions, Value as PValue};
use store::model::Tenant;
use store::{LabelMatcher, LogStore, MatchOp, MetricStore};

use crate::group::Backend;
use crate::rule::Labels;
use crate::rulefmt::Query;

/// What a rule's query passes before it runs, as an HTTP query does: the server's gate takes one of the
/// tenant's query slots (`limits.tenant_max_concurrent_queries`) and is refused under memory pressure.
pub trait QueryGate: Send + Sync {
    /// Waits for admission; the guard holds it until dropped. The error says which limit refused.
    fn enter(&self, tenant: &Tenant) -> BoxFuture<'static, Result<Box<dyn Send>, String>>;
}

/// The stores and the query limits rules run under.
#[derive(Clone)]
pub struct StoreBackend {
    pub logs: LogStore,
    pub metrics: MetricStore,
    pub query: query::QueryConfig,
    pub runtime: tokio::runtime::Handle,
    /// None: rules run without taking a slot (tests of the ruler alone).
    pub gate: Option<Arc<dyn QueryGate>>,
    /// On a query node: the ingest nodes to read from and write to; None elsewhere.
    pub cluster: Option<Cluster>,
}

/// A query node's ingest nodes, as rules use them.
#[derive(Clone)]
pub struct Cluster {
    pub peers: Arc<query::peers::Peers>,
    /// The trees the query node reads (shared with its follower).
    pub trees: query::peers::Trees,
    /// The credential sent to the ingest nodes (the server's own token), if any.
    pub auth: Option<reqwest::header::HeaderValue>,
    pub client: reqwest::Client,
}

impl Cluster {
    fn call(&self) -> query::peers::PeerCall {
        query::peers::PeerCall::new(self.peers.clone(), self.auth.clone()).with_trees(&self.trees.read())
    }

    /// Sends samples to the first ingest node that takes them (remote write 1.0).
    async fn write(&self, tenant: &Tenant, t_ms: i64, samples: &[(Labels, f64)]) -> Result<(), String> {
        let series: Vec<wire::prom::OwnedSeries> =
            samples.iter().map(|(l, v)| (l.clone(), vec![wire::prom::Sample { t: t_ms, v: *v }])).collect();
        let body = wire::prom::encode_write_request(&series);
        let mut errors = Vec::new();
        for url in self.peers.urls() {
            let mut req = self
                .client
                .post(format!("{url}/api/v1/write"))
                .timeout(Duration::from_secs(30))
                .header("Content-Encoding", "snappy")
                .header("Content-Type", "application/x-protobuf")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .header(query::http::TENANT_HEADER, tenant.as_str())
                .body(body.clone());
            if let Some(a) = &self.auth {
                req = req.header(reqwest::header::AUTHORIZATION, a.clone());
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    errors.push(format!("{url}: {status}: {}", text.trim().chars().take(200).collect::<String>()));
                }
                Err(e) => errors.push(format!("{url}: {}", e.without_url())),
            }
        }
        Err(format!("no ingest node took the rule's samples: {}", errors.join("; ")))
    }
}

impl StoreBackend {
    /// The series source of PromQL rules: the metric store, or on a query node every tree and its node.
    fn source<'a>(&'a self, tenant: &'a Tenant, max_samples: usize) -> StoreSource<'a> {
        StoreSource {
            store: &self.metrics,
            tenant,
            max_samples,
            peers: self.cluster.as_ref().map(|c| (c.call(), self.runtime.clone())),
            trees: self.cluster.as_ref().map(|c| c.trees.read().clone()).unwrap_or_default(),
        }
    }

    fn options(&self) -> EngineOptions {
        let c = &self.query;
        EngineOptions {
            lookback_ms: c.lookback_delta.as_millis() as i64,
            max_samples: c.max_samples,
            default_subquery_step_ms: c.default_subquery_step.as_millis() as i64,
            deadline: Some(Instant::now() + c.timeout),
            // Rules run in the background: one thread each, leaving the other cores to what users wait on.
            threads: 1,
        }
    }
}

impl Backend for StoreBackend {
    fn query(&self, tenant: &Tenant, q: &Query, t_ms: i64) -> Result<Vec<(Labels, f64)>, String> {
        let _slot = match &self.gate {
            Some(gate) => Some(self.runtime.block_on(gate.enter(tenant))?),
            None => None,
        };
        match q {
            Query::PromQL(expr) => {
                let opts = self.options();
                let src = self.source(tenant, opts.max_samples);
                let out = promql::eval_instant(&opts, &src, expr, t_ms).map_err(|e| e.to_string())?;
                match out.value {
                    PValue::Vector(v) => Ok(v.into_iter().map(|(l, _, v)| (l, v)).collect()),
                    PValue::Scalar { v, .. } => Ok(vec![(Vec::new(), v)]),
                    _ => Err("rule result is not a vector or scalar".to_string()),
                }
            }
            Query::LogQL(expr) => {
                let engine = Engine {
                    store: self.logs.clone(),
                    limits: self.query.limits(),
                    peers: self.cluster.as_ref().map(Cluster::call),
                    trees: self.cluster.as_ref().map(|c| c.trees.read().clone()).unwrap_or_default(),
                };
                let params = QueryParams::instant(t_ms.saturating_mul(1_000_000));
                let (v, _) = self
                    .runtime
                    .block_on(tokio::time::timeout(
                        self.query.timeout + Duration::from_secs(1),
                        engine.query(tenant, expr, &params),
                    ))
                    .map_err(|_| format!("query timed out after {:?}", self.query.timeout))?
                    .map_err(|e| e.to_string())?;
                match v {
                    QueryValue::Vector(v) => Ok(v
                        .into_iter()
                        .map(|(mut l, _, v)| {
                            l.sort();
                            (l, v)
                        })
                        .collect()),
                    QueryValue::Scalar(_, v) => Ok(vec![(Vec::new(), v)]),
                    _ => Err("rule result is not a vector or scalar".to_string()),
                }
            }
        }
    }

    fn write(&self, tenant: &Tenant, t_ms: i64, samples: Vec<(Labels, f64)>) -> Result<(), String> {
        if let Some(cluster) = &self.cluster {
            return self.runtime.block_on(cluster.write(tenant, t_ms, &samples));
        }
        let mut batch = self.metrics.batch(tenant);
        for (l, v) in &samples {
            let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            batch.add(&pairs, [(t_ms, *v)]);
        }
        let (rejected, why) = batch.rejected();
        if rejected > 0 {
            return Err(format!("{rejected} samples refused: {}", why.unwrap_or("outside the accepted window")));
        }
        self.runtime.block_on(self.metrics.append(batch)).map_err(|e| e.to_string())
    }

    fn last_samples(
        &self,
        tenant: &Tenant,
        matchers: &[(String, String)],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<(Labels, i64, f64)>, String> {
        if self.cluster.is_some() {
            let ms: Vec<promql::Matcher> = matchers
                .iter()
                .map(|(k, v)| promql::Matcher::new(k, "=", v).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            let found = promql::SeriesSource::select(&self.source(tenant, self.query.max_samples), &ms, mint, maxt)
                .map_err(|e| e.to_string())?;
            return Ok(found
                .into_iter()
                .filter_map(|s| {
                    let i = (0..s.t.len()).rev().find(|&i| !promql::is_stale_nan(s.v[i]))?;
                    Some((s.labels, s.t[i], s.v[i]))
                })
                .collect());
        }
        let ms: Vec<LabelMatcher> = matchers
            .iter()
            .map(|(k, v)| LabelMatcher::new(k.clone(), MatchOp::Eq, v.clone()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let found =
            self.metrics.select_within(tenant, &ms, mint, maxt, self.query.max_samples).map_err(|e| e.to_string())?;
        Ok(found
            .into_iter()
            .filter_map(|s| {
                let i = (0..s.t.len()).rev().find(|&i| !promql::is_stale_nan(s.v[i]))?;
                let l: Labels = s.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                Some((l, s.t[i], s.v[i]))
            })
            .collect())
    }
}
