//! The `[query]` section of the configuration.

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::logql::Limits;

/// Limits of the query endpoints. The LogQL limits default to Loki's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// A query running longer than this is cancelled and answered with an error.
    #[serde(with = "store::config::duration")]
    pub timeout: Duration,
    /// Most rows a SQL answer carries; more are cut off and the answer says `"truncated": true`.
    pub sql_max_rows: usize,
    /// Memory all SQL queries together may hold (DataFusion's memory pool: hash tables of `GROUP BY` and
    /// `DISTINCT`, sorts, joins); a query that needs more than is left is answered 503. Left at its default,
    /// the server takes `min(256 MiB, 20% of server.memory_limit)`.
    pub sql_max_memory: ByteSize,
    /// Most log entries one LogQL query may ask for (`limit`); more is a 400.
    pub max_entries_limit_per_query: usize,
    /// Most series a LogQL metric query may answer with; more is a 400.
    pub max_query_series: usize,
    /// Longest time range (end - start) of one LogQL query.
    #[serde(with = "store::config::duration")]
    pub max_query_length: Duration,
    /// Threads one LogQL query scans with, and one PromQL range function over many series (`rate`,
    /// `increase`, `delta`) computes on; 0 means one per core. Rules always use one.
    pub query_parallelism: usize,
    /// How far back a PromQL instant selector looks for a sample (Prometheus' `--query.lookback-delta`).
    #[serde(with = "store::config::duration")]
    pub lookback_delta: Duration,
    /// Most samples one PromQL selection may load, and one expression node hold at once (Prometheus'
    /// `--query.max-samples`, 50,000,000 there; 16 bytes each, so the default stays near 256 MiB); also
    /// what one LogQL query may hold (a metric point counts 2, a line kept its bytes / 16). Left at its
    /// default, the server takes `min(15,000,000, 20% of server.memory_limit / 16 bytes)`.
    pub max_samples: usize,
    /// Live tails (`/loki/api/v1/tail` WebSockets) running at once, over all tenants; past it 429 (Loki's
    /// `max_concurrent_tail_requests`).
    pub max_concurrent_tails: usize,
    /// A live tail with nothing to send this long sends a WebSocket ping, so that proxies with an idle
    /// timeout (nginx's 60 s) keep it open and a vanished client is noticed.
    #[serde(with = "store::config::duration")]
    pub tail_ping_interval: Duration,
    /// Step of a PromQL subquery that names none (Prometheus' global evaluation interval).
    #[serde(with = "store::config::duration")]
    pub default_subquery_step: Duration,
    /// Most bytes the cache of PromQL range results holds (dashboards re-run the same queries at every
    /// refresh; a window that moved takes the steps it shares from the cache, exact until a sample
    /// arrives for them). 0 turns it off. Left at its default, the server takes `min(32 MiB, 5% of
    /// server.memory_limit)`.
    pub results_cache_max_bytes: ByteSize,
    /// On a query node (`server.role = "query"`): the base URLs of the ingest nodes it asks, for each
    /// selection, for what they acknowledged that the bucket does not hold yet (their heads and unsynced
    /// parts), e.g. `["http://lumen-0.lumen-headless:3100"]` (a Kubernetes StatefulSet's pod behind a
    /// headless Service) or the writer's Service. Only the holder of the writer lease answers. Empty: the
    /// query node answers from the bucket alone, up to one `storage.sync_interval` behind. On an ingest node
    /// (`server.role = "ingest"`), the same list: an agent's batch marked as resent (`X-Lumen-Resend`) is
    /// stored only once none of them has stored it (the lumen binary's `ingest/resend.rs`).
    pub ingest_urls: Vec<String>,
    /// How long a query node waits for an ingest node's answer before it answers without it (with a
    /// warning), and an ingest node for another's answer about a resent batch (without it: 503).
    #[serde(with = "store::config::duration")]
    pub ingest_timeout: Duration,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            timeout: Duration::from_secs(60),
            sql_max_rows: 100_000,
            sql_max_memory: ByteSize::mib(256),
            max_entries_limit_per_query: 5000,
            max_query_series: 500,
            max_query_length: Duration::from_secs(721 * 3600),
            query_parallelism: 0,
            lookback_delta: Duration::from_secs(300),
            max_samples: 15_000_000,
            max_concurrent_tails: 32,
            tail_ping_interval: Duration::from_secs(30),
            default_subquery_step: Duration::from_secs(60),
            results_cache_max_bytes: ByteSize::mib(32),
            ingest_urls: Vec::new(),
            ingest_timeout: Duration::from_secs(10),
        }
    }
}

impl QueryConfig {
    /// The LogQL engine's limits.
    pub fn limits(&self) -> Limits {
        let defaults = Limits::default();
        Limits {
            max_entries: self.max_entries_limit_per_query,
            max_series: self.max_query_series,
            max_held_samples: self.max_samples,
            max_query_length: self.max_query_length,
            timeout: self.timeout,
            partitions: if self.query_parallelism == 0 { defaults.partitions } else { self.query_parallelism },
            ..defaults
        }
    }
}
