//! Query metrics, registered under `lumen_query_`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(String, String)>;

#[derive(Debug)]
pub struct QueryMetrics {
    /// Queries by API and outcome (`ok`, `bad_request`, `error`, `timeout`).
    pub queries: Family<Labels, Counter>,
    /// Query latency by API.
    pub duration: Family<Labels, Histogram>,
    /// The PromQL results cache's (`lumen_query_results_cache_*`).
    pub results_cache: crate::http::prom_cache::CacheMetrics,
}

impl QueryMetrics {
    pub fn register(registry: &mut Registry) -> Arc<QueryMetrics> {
        let m = QueryMetrics {
            queries: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            }),
            results_cache: crate::http::prom_cache::CacheMetrics::register(registry),
        };
        let r = registry.sub_registry_with_prefix("lumen_query");
        r.register("queries", "queries answered, by api and outcome", m.queries.clone());
        r.register_with_unit("duration", "time to answer a query, by api", Unit::Seconds, m.duration.clone());
        Arc::new(m)
    }

    pub fn observe(&self, api: &str, outcome: &str, seconds: f64) {
        self.queries.get_or_create(&vec![("api".into(), api.into()), ("outcome".into(), outcome.into())]).inc();
        self.duration.get_or_create(&vec![("api".into(), api.into())]).observe(seconds);
    }
}
