//! The memory budget, `server.memory_limit`: one figure the server's big memory consumers share, and what
//! the server does when its resident memory comes near it.
//!
//! - **The budget.** A size, or `"auto"`: [`AUTO_CGROUP_PERCENT`] % of the cgroup's memory limit when the
//!   process has one (a container, a systemd `MemoryMax=`), else [`AUTO_RAM_PERCENT`] % of the machine's
//!   RAM (`MemTotal`). [`HostMemory`] reads what the machine says; everything after it is pure.
//! - **Shares.** [`derive`] gives each consumer with a limit of its own ([`SHARES`]: the two stores'
//!   heads, request bodies in flight, SQL's memory pool, PromQL's sample budget) a share of the budget.
//!   A key left at its default becomes `min(default, share × budget)` (a head's share pays for
//!   [`HEAD_FACTOR`] heads, and `store.row_group_rows` becomes `min(65,536, budget / 8 KiB)`, as a
//!   flush encodes a row group at a time); a key set to anything else is kept. From [`DEFAULTS_KEPT_FROM`] up every derived key keeps today's default, so a big machine
//!   behaves as before; a small budget gets proportionally small heads, query memory and in-flight bytes.
//! - **Pressure.** [`Monitor::run`] samples the process' resident memory once a second. Above
//!   [`HIGH_WATER_PERCENT`] % of the budget it asks both stores to flush their heads early and
//!   [`refuse_queries`] answers new LogQL, PromQL and SQL queries 503 (naming the limit); below
//!   [`LOW_WATER_PERCENT`] % queries are taken again. Ingest is never refused for memory: its own
//!   in-flight budget bounds it, and refusing it would only move the data into the shippers' retries.
//!   Every tick under pressure also hands the allocator's free memory back to the system
//!   (`sysalloc::release_free_memory`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytesize::ByteSize;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// `auto` with a cgroup memory limit: this share of it (the rest is the page cache's and the kernel's,
/// which count against the cgroup too).
pub const AUTO_CGROUP_PERCENT: u64 = 75;
/// `auto` without a cgroup limit: this share of `MemTotal`, leaving the rest to the other processes of
/// the machine and the page cache Parquet reads lean on.
pub const AUTO_RAM_PERCENT: u64 = 50;
/// Above this share of the budget (resident memory), heads are flushed early and queries refused.
pub const HIGH_WATER_PERCENT: u64 = 90;
/// Below this share queries are taken again.
pub const LOW_WATER_PERCENT: u64 = 80;
/// The smallest budget `server.memory_limit` accepts: an empty server takes about 20 MiB by itself.
pub const MIN_BUDGET: u64 = 32 * 1024 * 1024;
/// Bytes one PromQL sample is counted at (`query.max_samples`): a timestamp and a value.
pub const SAMPLE_BYTES: u64 = 16;
/// A head holds up to this many times `store.head_max_size` before appends wait for its flush, so a
/// head's share pays for that many.
pub const HEAD_FACTOR: u64 = 3;
/// Working memory a flush or compaction counts per row of a row group (`store.row_group_rows`): Parquet
/// encodes a row group at a time and the token filters collect its tokens. Measured, not derived: with a
/// 128 MiB budget, 65,536-row groups put resident memory 50 MiB higher under ingest than 16,384-row ones.
pub const ROW_GROUP_ROW_BYTES: u64 = 8 * 1024;
/// From this budget up, every derived key keeps today's default (the largest `default / share`: SQL's,
/// 256 MiB / 20 %, and the decoded runs', 64 MiB / 5 %).
pub const DEFAULTS_KEPT_FROM: u64 = 1280 * 1024 * 1024;
/// A cgroup limit at or above this means none (cgroup v1 writes 2^63 rounded down to a page).
const NO_LIMIT: u64 = 1 << 60;

/// `server.memory_limit`: `"auto"` (a share of the cgroup's limit, else of the machine's RAM; see the
/// module docs) or a size.
pub type MemoryLimit = store::config::AutoSize;

/// What the machine says about memory: the cgroup's limit (None: no limit, or no cgroup) and `MemTotal`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostMemory {
    pub cgroup_limit: Option<u64>,
    pub mem_total: Option<u64>,
}

impl HostMemory {
    /// Reads `/proc/self/cgroup`, the cgroup's `memory.max` (v2) or `memory.limit_in_bytes` (v1), and
    /// `/proc/meminfo`. What cannot be read is None.
    pub fn read() -> HostMemory {
        Self::from_files(|path| std::fs::read_to_string(path).ok())
    }

    /// [`HostMemory::read`] over any file reader (tests give fixture text).
    pub fn from_files(read: impl Fn(&Path) -> Option<String>) -> HostMemory {
        let self_cgroup = read(Path::new("/proc/self/cgroup")).unwrap_or_default();
        let cgroup_limit = cgroup_limit_files(&self_cgroup)
            .iter()
            .find_map(|path| read(Path::new(path)))
            .and_then(|text| parse_cgroup_limit(&text));
        let mem_total = read(Path::new("/proc/meminfo")).and_then(|text| parse_mem_total(&text));
        HostMemory { cgroup_limit, mem_total }
    }
}

/// The files that may hold this process' cgroup memory limit, most specific first: its own cgroup's (from
/// `/proc/self/cgroup`; v2 `0::/path`, v1 `N:...memory...:/path`), then the root of the mount (what a
/// container with its own cgroup namespace sees).
pub fn cgroup_limit_files(self_cgroup: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in self_cgroup.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (it.next(), it.next(), it.next()) else { continue };
        let path = path.trim().trim_end_matches('/');
        if path.is_empty() {
            continue;
        }
        if controllers.is_empty() {
            out.push(format!("/sys/fs/cgroup{path}/memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            out.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
        }
    }
    out.push("/sys/fs/cgroup/memory.max".to_string());
    out.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".to_string());
    out
}

/// A cgroup memory limit file's value: None for `max` (v2), a huge value (v1's "no limit"), 0 or text
/// that is not a number.
pub fn parse_cgroup_limit(text: &str) -> Option<u64> {
    let n = text.trim().parse::<u64>().ok()?;
    (n > 0 && n < NO_LIMIT).then_some(n)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let rest = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut it = rest.split_whitespace();
    let n = it.next()?.parse::<u64>().ok()?;
    match it.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// Where the budget came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `server.memory_limit` set to a size.
    Configured,
    /// `auto`: a share of this cgroup limit.
    Cgroup { limit: u64 },
    /// `auto`: a share of this `MemTotal`.
    MemTotal { total: u64 },
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Configured => "server.memory_limit".to_string(),
            Source::Cgroup { limit } => {
                format!(
                    "auto: {AUTO_CGROUP_PERCENT}% of the cgroup memory limit ({})",
                    ByteSize::b(*limit).display().iec()
                )
            }
            Source::MemTotal { total } => {
                format!(
                    "auto: {AUTO_RAM_PERCENT}% of MemTotal ({}), no cgroup limit",
                    ByteSize::b(*total).display().iec()
                )
            }
        }
    }
}

/// The budget in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub source: Source,
}

impl Budget {
    /// The budget `limit` gives on `host`; None when it is `auto` and the host says nothing (no
    /// `/proc/meminfo`): then nothing is derived and there is no pressure handling.
    pub fn resolve(limit: MemoryLimit, host: HostMemory) -> Option<Budget> {
        match limit {
            MemoryLimit::Bytes(b) => Some(Budget { bytes: b.as_u64(), source: Source::Configured }),
            MemoryLimit::Auto => {
                // A cgroup limit above the machine's RAM limits nothing.
                let cgroup = host.cgroup_limit.filter(|l| host.mem_total.is_none_or(|t| l < &t));
                if let Some(limit) = cgroup {
                    return Some(Budget {
                        bytes: percent(limit, AUTO_CGROUP_PERCENT),
                        source: Source::Cgroup { limit },
                    });
                }
                let total = host.mem_total?;
                Some(Budget { bytes: percent(total, AUTO_RAM_PERCENT), source: Source::MemTotal { total } })
            }
        }
    }

    /// Resident bytes at which pressure starts.
    pub fn high_water(&self) -> u64 {
        percent(self.bytes, HIGH_WATER_PERCENT)
    }

    /// Resident bytes below which pressure ends.
    pub fn low_water(&self) -> u64 {
        percent(self.bytes, LOW_WATER_PERCENT)
    }
}

fn percent(n: u64, p: u64) -> u64 {
    (u128::from(n) * u128::from(p) / 100) as u64
}

fn iec(n: u64) -> String {
    ByteSize::b(n).display().iec().to_string()
}

/// A consumer with a limit of its own, which gets a share of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// The log store's head (`store.head_max_size`, counted [`HEAD_FACTOR`] times) and the row groups its
    /// flushes and compactions encode (`store.row_group_rows`).
    LogHead,
    /// The metric store's head (the same key: both stores flush at `store.head_max_size`).
    MetricHead,
    /// Request bodies being received or handled (`server.max_inflight_request_bytes`).
    InflightRequests,
    /// DataFusion's memory pool, shared by all SQL queries (`query.sql_max_memory`).
    Sql,
    /// Samples one PromQL selection may load (`query.max_samples`, at [`SAMPLE_BYTES`] each).
    Promql,
}

/// The share of the budget of each consumer, in percent. Of the remaining 25 %, 5 % bound the PromQL results
/// cache (`query.results_cache_max_bytes`), 5 % the decoded runs of metric parts
/// (`store.decoded_cache_max_bytes`), 2 % the answers of log scans (`store.scan_cache_max_bytes`) and 5 %
/// the decoded pages of log parts (`store.log_page_cache_max_bytes`); the rest is for what has no limit
/// of its own: the binary and its runtime, catalogs, part indexes, LogQL's scans, the allocator's slack.
pub const SHARES: [(Consumer, u64); 5] = [
    (Consumer::LogHead, 10),
    (Consumer::MetricHead, 10),
    (Consumer::InflightRequests, 15),
    (Consumer::Sql, 20),
    (Consumer::Promql, 20),
];

impl Consumer {
    /// The `consumer` label of the gauges.
    pub fn name(self) -> &'static str {
        match self {
            Consumer::LogHead => "log_head",
            Consumer::MetricHead => "metric_head",
            Consumer::InflightRequests => "inflight_requests",
            Consumer::Sql => "sql",
            Consumer::Promql => "promql",
        }
    }

    /// The config key that limits it.
    pub fn key(self) -> &'static str {
        match self {
            Consumer::LogHead | Consumer::MetricHead => "store.head_max_size", // and store.row_group_rows
            Consumer::InflightRequests => "server.max_inflight_request_bytes",
            Consumer::Sql => "query.sql_max_memory",
            Consumer::Promql => "query.max_samples",
        }
    }
}

/// One consumer's part of the budget after [`derive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub consumer: Consumer,
    /// Its share of the budget, `percent × budget`.
    pub share: u64,
    /// The bytes its limit allows now (the key's value in force).
    pub limit: u64,
    /// The key was at its default and now follows the budget.
    pub derived: bool,
}

/// Sets every budget-following key that is at its default to `min(default, share × budget)` (never below
/// a floor the key needs to work), and returns each consumer's share. `server.max_request_size`, when at its
/// default, follows `server.max_inflight_request_bytes` down (a body must fit in the in-flight budget), and
/// an in-flight budget derived below an explicitly set `max_request_size` is raised to it.
pub fn derive(config: &mut Config, budget: &Budget) -> Vec<Share> {
    const MIB: u64 = 1024 * 1024;
    let defaults = Config::default();
    let share = |consumer| {
        let p = SHARES.iter().find(|(c, _)| *c == consumer).map_or(0, |(_, p)| *p);
        percent(budget.bytes, p)
    };
    let size = |value: &mut ByteSize, default: ByteSize, share: u64, floor: u64| -> bool {
        if *value != default {
            return false;
        }
        *value = ByteSize::b(share.min(default.as_u64()).max(floor));
        true
    };

    let head_share = share(Consumer::LogHead).min(share(Consumer::MetricHead));
    let head_derived =
        size(&mut config.store.head_max_size, defaults.store.head_max_size, head_share / HEAD_FACTOR, MIB);
    if config.store.row_group_rows == defaults.store.row_group_rows {
        let rows = usize::try_from(budget.bytes / ROW_GROUP_ROW_BYTES).unwrap_or(usize::MAX);
        config.store.row_group_rows = rows.clamp(4096, defaults.store.row_group_rows);
    }
    let s = &mut config.server;
    let inflight_derived = size(
        &mut s.max_inflight_request_bytes,
        defaults.server.max_inflight_request_bytes,
        share(Consumer::InflightRequests),
        MIB,
    );
    if s.max_request_size == defaults.server.max_request_size {
        let fit = s.max_request_size.as_u64().min(s.max_inflight_request_bytes.as_u64());
        s.max_request_size = ByteSize::b(fit.max(s.max_line_size.as_u64()));
    }
    if s.max_inflight_request_bytes < s.max_request_size {
        s.max_inflight_request_bytes = s.max_request_size;
    }
    let q = &mut config.query;
    let sql_derived = size(&mut q.sql_max_memory, defaults.query.sql_max_memory, share(Consumer::Sql), 8 * MIB);
    let promql_derived = q.max_samples == defaults.query.max_samples;
    if promql_derived {
        let samples = share(Consumer::Promql) / SAMPLE_BYTES;
        q.max_samples = usize::try_from(samples).unwrap_or(usize::MAX).clamp(100_000, defaults.query.max_samples);
    }

    // The PromQL results cache and the decoded runs of metric parts take 5 % each out of the part no
    // share covers.
    size(&mut q.results_cache_max_bytes, defaults.query.results_cache_max_bytes, percent(budget.bytes, 5), 0);
    let decoded = &mut config.store.decoded_cache_max_bytes;
    size(decoded, defaults.store.decoded_cache_max_bytes, percent(budget.bytes, 5), 0);
    // The log scans' answers take 2 %, log parts' decoded pages 5 %.
    size(&mut config.store.scan_cache_max_bytes, defaults.store.scan_cache_max_bytes, percent(budget.bytes, 2), 0);
    let pages = &mut config.store.log_page_cache_max_bytes;
    size(pages, defaults.store.log_page_cache_max_bytes, percent(budget.bytes, 5), 0);

    let head = config.store.head_max_size.as_u64() * HEAD_FACTOR;
    SHARES
        .iter()
        .map(|&(consumer, _)| {
            let (limit, derived) = match consumer {
                Consumer::LogHead | Consumer::MetricHead => (head, head_derived),
                Consumer::InflightRequests => (config.server.max_inflight_request_bytes.as_u64(), inflight_derived),
                Consumer::Sql => (config.query.sql_max_memory.as_u64(), sql_derived),
                Consumer::Promql => (config.query.max_samples as u64 * SAMPLE_BYTES, promql_derived),
            };
            Share { consumer, share: share(consumer), limit, derived }
        })
        .collect()
}

/// The `lumen_memory_*` metrics.
#[derive(Debug, Clone, Default)]
pub struct MemoryMetrics {
    pub budget: Gauge,
    pub shares: Family<Vec<(String, String)>, Gauge>,
    pub used: Family<Vec<(String, String)>, Gauge>,
    pub pressure: Gauge,
    pub refused_queries: Family<Vec<(String, String)>, Counter>,
    pub early_flushes: Counter,
    /// The allocator's own figures (jemalloc), by `kind`: allocated, resident, retained.
    pub allocator: Family<Vec<(String, String)>, Gauge>,
}

fn consumer_label(c: Consumer) -> Vec<(String, String)> {
    vec![("consumer".to_string(), c.name().to_string())]
}

impl MemoryMetrics {
    pub fn register(registry: &mut Registry) -> MemoryMetrics {
        let m = MemoryMetrics::default();
        let r = registry.sub_registry_with_prefix("lumen_memory");
        r.register_with_unit("budget", "the memory budget (server.memory_limit)", Unit::Bytes, m.budget.clone());
        r.register_with_unit(
            "share",
            "what each consumer may hold: its limit in force, derived from the budget unless set",
            Unit::Bytes,
            m.shares.clone(),
        );
        r.register_with_unit("used", "what each consumer holds now, sampled every second", Unit::Bytes, m.used.clone());
        r.register(
            "pressure",
            "1 while resident memory is over the high-water mark of the budget (queries refused, heads flushed early)",
            m.pressure.clone(),
        );
        r.register(
            "refused_queries",
            "queries refused because memory was over the high-water mark, by api",
            m.refused_queries.clone(),
        );
        r.register("early_flushes", "head flushes asked for under memory pressure", m.early_flushes.clone());
        r.register_with_unit(
            "allocator",
            "the memory allocator's figures, sampled every second: allocated (held by the program), resident \
             (pages the allocator holds), retained (mapped for reuse, not resident); none with the system allocator",
            Unit::Bytes,
            m.allocator.clone(),
        );
        m
    }
}

/// Whether the server is over its high-water mark; cheap to clone, shared by the monitor and the query
/// middleware.
#[derive(Clone)]
pub struct Pressure(Arc<PressureState>);

struct PressureState {
    /// None: no budget, never under pressure.
    budget: Option<Budget>,
    over: AtomicBool,
    /// Resident bytes that stayed after the heads were flushed and nothing shrank them any more: memory
    /// the allocator keeps for reuse rather than returning it. 0: none.
    retained: AtomicU64,
    /// The last resident size sampled.
    resident: AtomicU64,
    metrics: MemoryMetrics,
    read_resident: fn() -> u64,
}

impl Pressure {
    pub fn new(budget: Option<Budget>, metrics: MemoryMetrics) -> Pressure {
        Self::with_reader(budget, metrics, crate::process_metrics::resident_bytes)
    }

    /// [`Pressure::new`] with another source of the resident size (tests).
    pub fn with_reader(budget: Option<Budget>, metrics: MemoryMetrics, read_resident: fn() -> u64) -> Pressure {
        if let Some(b) = &budget {
            metrics.budget.set(i64::try_from(b.bytes).unwrap_or(i64::MAX));
        }
        Pressure(Arc::new(PressureState {
            budget,
            over: AtomicBool::new(false),
            resident: AtomicU64::new(0),
            retained: AtomicU64::new(0),
            metrics,
            read_resident,
        }))
    }

    pub fn metrics(&self) -> &MemoryMetrics {
        &self.0.metrics
    }

    /// Samples the resident size and moves between the states: over at the high-water mark, back
    /// below the low-water mark. Returns whether the server is over.
    pub fn sample(&self) -> bool {
        let s = &self.0;
        let Some(budget) = s.budget else { return false };
        let resident = (s.read_resident)();
        s.resident.store(resident, Ordering::Relaxed);
        let was = s.over.load(Ordering::Relaxed);
        if resident < budget.low_water() {
            s.retained.store(0, Ordering::Relaxed);
        }
        // Memory the allocator retains is reused by what comes next: pressure starts again only when
        // resident memory grows past it by the gap between the high-water mark and the budget.
        let retained = s.retained.load(Ordering::Relaxed);
        let high = budget.high_water().max(retained.saturating_add(budget.bytes - budget.high_water()));
        let over = if was { resident >= budget.low_water() } else { resident >= high };
        // Only the sampler that moves the state logs it (the monitor and queries sample concurrently).
        if over != was && s.over.compare_exchange(was, over, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            s.metrics.pressure.set(i64::from(over));
            if over {
                tracing::warn!(
                    resident_bytes = resident,
                    budget_bytes = budget.bytes,
                    high_water_bytes = budget.high_water(),
                    "memory over the high-water mark of server.memory_limit: flushing heads early, refusing new queries"
                );
            } else {
                tracing::info!(
                    resident_bytes = resident,
                    low_water_bytes = budget.low_water(),
                    "memory back under the low-water mark of server.memory_limit: taking queries again"
                );
            }
        }
        over
    }

    /// Ends pressure although resident memory stays over the low-water mark: called once the heads are
    /// flushed and resident memory has stopped falling, so what remains is memory the allocator keeps for
    /// reuse, and refusing queries would protect nothing while never ending.
    pub fn release_retained(&self, resident: u64) {
        let s = &self.0;
        let Some(budget) = s.budget else { return };
        s.retained.store(resident, Ordering::Relaxed);
        if s.over.compare_exchange(true, false, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            s.metrics.pressure.set(0);
            tracing::info!(
                resident_bytes = resident,
                low_water_bytes = budget.low_water(),
                "resident memory stays over the low-water mark of server.memory_limit after the heads were flushed: \
                 memory the allocator keeps for reuse; taking queries again until it grows further"
            );
        }
    }

    /// Ok when a new query may start. Samples the resident size itself (a read of `/proc/self/statm`,
    /// cheap next to any query), so a burst of queries cannot all start within one tick of the monitor.
    ///
    /// # Errors
    /// The message for the 503: the limit, the resident size and what to do.
    pub fn admit_query(&self) -> Result<(), String> {
        let s = &self.0;
        let Some(budget) = s.budget else { return Ok(()) };
        if !self.sample() {
            return Ok(());
        }
        Err(format!(
            "the server is over {HIGH_WATER_PERCENT}% of its memory budget (server.memory_limit = {}, resident {}); \
             retry later, or raise server.memory_limit",
            iec(budget.bytes),
            iec(s.resident.load(Ordering::Relaxed))
        ))
    }

    /// [`Pressure::admit_query`] for a query of `api`, counting a refusal in
    /// `lumen_memory_refused_queries_total{api}`.
    ///
    /// # Errors
    /// As `admit_query`.
    pub fn admit_query_of(&self, api: &str) -> Result<(), String> {
        self.admit_query().inspect_err(|_| {
            self.metrics().refused_queries.get_or_create(&vec![("api".to_string(), api.to_string())]).inc();
        })
    }
}

/// The paths that run a LogQL, PromQL or SQL query (or scan logs like one); metadata lookups (labels,
/// series, buildinfo) stay available under pressure, so dashboards can still load their editors.
fn query_api(path: &str) -> Option<&'static str> {
    const LOKI: [&str; 8] = [
        "/loki/api/v1/query",
        "/loki/api/v1/query_range",
        "/loki/api/v1/tail",
        "/loki/api/v1/patterns",
        "/loki/api/v1/index/volume",
        "/loki/api/v1/index/volume_range",
        "/loki/api/v1/detected_fields",
        "/loki/api/v1/detected_labels",
    ];
    if LOKI.contains(&path) || path.starts_with("/loki/api/v1/detected_field/") {
        return Some("loki");
    }
    if ["/api/v1/query", "/api/v1/query_range", "/api/v1/query_exemplars"].contains(&path) {
        return Some("prometheus");
    }
    (path == "/api/v1/sql").then_some("sql")
}

/// The middleware on the query routes: a new query over the high-water mark is answered 503 with
/// `Retry-After` and a message naming `server.memory_limit`, and counted.
pub async fn refuse_queries(State(pressure): State<Pressure>, req: Request, next: Next) -> Response {
    if let Some(api) = query_api(req.uri().path())
        && let Err(message) = pressure.admit_query_of(api)
    {
        let mut resp = (StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n")).into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    }
    next.run(req).await
}

/// Ticks (seconds) resident memory must stay flat, with heads flushed and no body or SQL memory held,
/// before what remains is taken for allocator-retained memory ([`Pressure::release_retained`]).
const SETTLE_TICKS: u32 = 10;
const MIB_1: u64 = 1024 * 1024;

/// The background task: samples resident memory, updates the gauges, flushes heads early under
/// pressure.
pub struct Monitor {
    pub pressure: Pressure,
    pub logs: store::LogStore,
    pub metrics: store::MetricStore,
    pub bodies: crate::inflight::BodyLimits,
    pub query: query::http::QueryState,
    /// `store.head_max_size` in force, in bytes.
    pub logs_head_limit: usize,
}

impl Monitor {
    /// Sets the share gauges and logs the budget, where it came from and each consumer's share.
    pub fn announce(&self, budget: Option<&Budget>, shares: &[Share]) {
        let m = self.pressure.metrics();
        for s in shares {
            m.shares.get_or_create(&consumer_label(s.consumer)).set(i64::try_from(s.limit).unwrap_or(i64::MAX));
        }
        let Some(budget) = budget else {
            tracing::warn!(
                "memory budget unknown (no /proc/meminfo and no server.memory_limit): nothing derived, no pressure handling"
            );
            return;
        };
        let derived: Vec<String> = shares
            .iter()
            .map(|s| format!("{}={}{}", s.consumer.name(), iec(s.limit), if s.derived { "" } else { " (set)" }))
            .collect();
        tracing::info!(
            budget_bytes = budget.bytes,
            budget = %iec(budget.bytes),
            source = %budget.source.describe(),
            shares = %derived.join(" "),
            "memory budget"
        );
    }

    /// Runs until `shutdown`: once a second samples the resident size, updates `lumen_memory_used_bytes`,
    /// and while over the high-water mark asks each store with data in its head to flush. When resident
    /// memory then stays flat for [`SETTLE_TICKS`] seconds with the heads within their limit and no
    /// request body or SQL memory held, the rest is memory the allocator retains, and pressure ends
    /// ([`Pressure::release_retained`]).
    ///
    /// # Errors
    /// None so far; the signature is every long-running task's.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // While over: the lowest resident size seen, and the ticks since it last fell.
        let (mut lowest, mut flat_ticks) = (u64::MAX, 0);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let m = self.pressure.metrics();
            let used = [
                (Consumer::LogHead, self.logs.head_bytes()),
                (Consumer::MetricHead, self.metrics.head_bytes()),
                (Consumer::InflightRequests, self.bodies.in_use()),
                (Consumer::Sql, self.query.sql_runtime.memory_pool.reserved()),
            ];
            for (c, n) in used {
                m.used.get_or_create(&consumer_label(c)).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            // The caches, which give their memory back under pressure (below).
            let caches = [
                ("promql_results_cache", self.query.results_cache.bytes()),
                ("metric_decoded_cache", self.metrics.decoded_cache_stats().0),
                ("log_scan_cache", self.logs.scan_cache_stats().0),
                ("log_page_cache", self.logs.page_cache_stats().0),
            ];
            for (name, n) in caches {
                let label = vec![("consumer".to_string(), name.to_string())];
                m.used.get_or_create(&label).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            if let Some(a) = sysalloc::stats() {
                for (kind, n) in [("allocated", a.allocated), ("resident", a.resident), ("retained", a.retained)] {
                    let label = vec![("kind".to_string(), kind.to_string())];
                    m.allocator.get_or_create(&label).set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            if !self.pressure.sample() {
                (lowest, flat_ticks) = (u64::MAX, 0);
                continue;
            }
            let resident = self.pressure.0.resident.load(Ordering::Relaxed);
            if resident + MIB_1 < lowest {
                (lowest, flat_ticks) = (resident, 0);
            } else {
                flat_ticks += 1;
            }
            let heads_flushed = used[0].1 + used[1].1 <= 2 * self.logs_head_limit;
            if flat_ticks >= SETTLE_TICKS && heads_flushed && used[2].1 == 0 && used[3].1 == 0 {
                self.pressure.release_retained(resident);
                (lowest, flat_ticks) = (u64::MAX, 0);
                continue;
            }
            // Under pressure, caches go first: the next queries fill them again.
            self.query.results_cache.clear();
            self.metrics.clear_decoded_cache();
            self.logs.clear_scan_cache();
            self.logs.clear_page_cache();
            // A query node's stores of the ingest nodes' trees (issue 22) hold decoded runs, scan answers
            // and pages too.
            for tree in self.query.tree_set().others.iter() {
                tree.metrics.clear_decoded_cache();
                tree.logs.clear_scan_cache();
                tree.logs.clear_page_cache();
            }
            let mut flushed = 0;
            if used[0].1 > 0 {
                self.logs.request_flush();
                flushed += 1;
            }
            if used[1].1 > 0 {
                self.metrics.request_flush();
                flushed += 1;
            }
            m.early_flushes.inc_by(flushed);
            // What the caches and the last tick's flushes freed goes back to the system now, not when the
            // allocator would next trim by itself.
            sysalloc::release_free_memory();
        }
    }
}

#[cfg(test)]
mod tests;
