//! The disk as a contract (issue 18 §1): a free-space reserve below which ingest is refused before a
//! write can fail half-way, ingest that resumes by itself once space returns, and one disk budget over
//! everything the store keeps (log parts, metric parts, catalogs and both write-ahead logs).
//!
//! One [`DiskGuard`] per data directory is shared by both stores (through [`crate::StoreOptions::disk`]);
//! they ask it before every append ([`DiskGuard::admit`]) and tell it how their writes went. [`maintain`]
//! runs beside them: it reads the free space every second and, every `maintenance_interval` (or at once
//! when the volume runs low), deletes the oldest data while the store is over its budget.
//!
//! While ingest is refused, flushes go on (a flush turns write-ahead-log records into far smaller Parquet
//! and then frees the log) and so do queries; compaction waits, since it needs room for its output
//! before it frees its inputs.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::{LogStore, MetricStore};

/// The default reserve's ceiling; below it, 5 % of the volume (as VictoriaLogs'
/// `-storage.minFreeDiskSpaceBytes` keeps a fixed reserve).
const DEFAULT_RESERVE_MAX: u64 = 1 << 30;

/// Why ingest is refused, for `/ready`, the error and the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// The guard's own metrics, under `lumen_disk_` and `lumen_ingest_refused`.
#[derive(Debug, Default)]
struct DiskMetrics {
    free: Gauge,
    total: Gauge,
    reserve: Gauge,
    budget: Gauge,
    refused: Family<ReasonLabel, Gauge>,
    used: Family<KindLabel, Gauge>,
    budget_deleted_parts: Family<KindLabel, Counter>,
    budget_deleted_bytes: Family<KindLabel, Counter>,
}

#[derive(Debug, Default)]
struct Status {
    /// Set while the free space is below the reserve: the message every refused write carries.
    reserve: Option<String>,
    /// The last failed write to the WAL or a flush, until a later one succeeds.
    write_error: Option<String>,
    /// Set while another server holds the bucket's writer lease (issue 22): why writes go elsewhere.
    standby: Option<String>,
    /// Over the budget with nothing left to delete: warned once.
    budget_stuck: bool,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    reserve: u64,
    budget: Option<u64>,
    /// Mirrors `status.reserve.is_some()` for the append path.
    refusing: AtomicBool,
    /// Mirrors `status.write_error.is_some()`.
    write_failing: AtomicBool,
    /// Mirrors `status.standby.is_some()`.
    standby: AtomicBool,
    free: AtomicU64,
    status: Mutex<Status>,
    metrics: DiskMetrics,
}

/// The free-space reserve and the disk budget of one data directory; cheap to clone.
#[derive(Debug, Clone)]
pub struct DiskGuard {
    inner: Arc<Inner>,
}

/// Bytes on the volume: free to this process, and its size.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    pub free: u64,
    pub total: u64,
}

/// Reads the free space and size of the filesystem holding `dir`.
///
/// # Errors
/// The `statvfs` error, naming the directory.
pub fn space(dir: &Path) -> Result<Space> {
    let st = rustix::fs::statvfs(dir).map_err(|e| Error::Io {
        op: "statvfs",
        path: dir.to_path_buf(),
        source: std::io::Error::from(e),
    })?;
    Ok(Space { free: st.f_bavail.saturating_mul(st.f_frsize), total: st.f_blocks.saturating_mul(st.f_frsize) })
}

/// The default reserve for a volume of `total` bytes: the smaller of 1 GiB and 5 % of it.
pub fn default_reserve(total: u64) -> u64 {
    (total / 20).min(DEFAULT_RESERVE_MAX)
}

impl DiskGuard {
    /// A guard for `dir` (created if missing). `min_free`: the reserve (`None` for the default, 0 for
    /// none); `budget`: the most the store may keep (`None` for no budget). Reads the free space once.
    ///
    /// # Errors
    /// The directory cannot be created or its filesystem read.
    pub fn new(
        dir: &Path,
        min_free: Option<ByteSize>,
        budget: Option<ByteSize>,
        registry: &mut Registry,
    ) -> Result<DiskGuard> {
        std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        let sp = space(dir)?;
        let reserve = min_free.map_or_else(|| default_reserve(sp.total), |b| b.as_u64());
        let metrics = DiskMetrics::default();
        let r = registry.sub_registry_with_prefix("lumen");
        r.register_with_unit(
            "disk_free",
            "bytes free on the data directory's volume (to this process)",
            Unit::Bytes,
            metrics.free.clone(),
        );
        r.register_with_unit("disk_size", "size of the data directory's volume", Unit::Bytes, metrics.total.clone());
        r.register_with_unit(
            "disk_reserve",
            "free space below which ingest is refused (store.min_free_disk)",
            Unit::Bytes,
            metrics.reserve.clone(),
        );
        r.register_with_unit(
            "disk_budget",
            "the most the store may keep on disk (store.retention_max_disk; 0: no budget)",
            Unit::Bytes,
            metrics.budget.clone(),
        );
        r.register(
            "ingest_refused",
            "1 while ingest is refused, by reason: standby (another server holds the bucket's writer lease), \
             disk_reserve (free space below store.min_free_disk), \
             write_error (the last write to the disk failed)",
            metrics.refused.clone(),
        );
        r.register_with_unit(
            "store_data",
            "bytes the store keeps on disk, by kind: logs (parts, indexes, catalogs), metrics (the same), wal (both write-ahead logs)",
            Unit::Bytes,
            metrics.used.clone(),
        );
        r.register(
            "disk_budget_deleted_parts",
            "parts deleted to keep the store within store.retention_max_disk, by kind",
            metrics.budget_deleted_parts.clone(),
        );
        r.register_with_unit(
            "disk_budget_deleted",
            "bytes of parts deleted to keep the store within store.retention_max_disk, by kind",
            Unit::Bytes,
            metrics.budget_deleted_bytes.clone(),
        );
        metrics.reserve.set(i64::try_from(reserve).unwrap_or(i64::MAX));
        metrics.budget.set(budget.map_or(0, |b| i64::try_from(b.as_u64()).unwrap_or(i64::MAX)));
        for reason in ["disk_reserve", "write_error", "standby"] {
            metrics.refused.get_or_create(&ReasonLabel { reason }).set(0);
        }
        let guard = DiskGuard {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                reserve,
                budget: budget.map(|b| b.as_u64()).filter(|b| *b > 0),
                refusing: AtomicBool::new(false),
                write_failing: AtomicBool::new(false),
                standby: AtomicBool::new(false),
                free: AtomicU64::new(sp.free),
                status: Mutex::new(Status::default()),
                metrics,
            }),
        };
        guard.observe(sp);
        Ok(guard)
    }

    /// The reserve in bytes.
    pub fn reserve(&self) -> u64 {
        self.inner.reserve
    }

    /// The budget in bytes, if any.
    pub fn budget(&self) -> Option<u64> {
        self.inner.budget
    }

    /// Free bytes at the last reading.
    pub fn free(&self) -> u64 {
        self.inner.free.load(Ordering::Relaxed)
    }

    /// `Ok` when ingest may write.
    ///
    /// # Errors
    /// [`Error::Standby`] while another server holds the bucket's writer lease, [`Error::DiskFull`] while
    /// the free space is below the reserve; each with the message to answer.
    pub fn admit(&self) -> Result<()> {
        if self.inner.standby.load(Ordering::Acquire)
            && let Some(reason) = &self.inner.status.lock().standby
        {
            return Err(Error::Standby { reason: reason.clone() });
        }
        if !self.inner.refusing.load(Ordering::Acquire) {
            return Ok(());
        }
        match &self.inner.status.lock().reserve {
            Some(reason) => Err(Error::DiskFull { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// True while compaction should wait: it needs room for its output before it frees its inputs.
    pub fn low(&self) -> bool {
        self.inner.refusing.load(Ordering::Acquire)
    }

    /// Why ingest is refused or failing, for `/ready`; `None` when all is well.
    pub fn problem(&self) -> Option<String> {
        if !self.inner.refusing.load(Ordering::Acquire)
            && !self.inner.write_failing.load(Ordering::Acquire)
            && !self.inner.standby.load(Ordering::Acquire)
        {
            return None;
        }
        let st = self.inner.status.lock();
        st.standby
            .clone()
            .or_else(|| st.reserve.clone())
            .or_else(|| st.write_error.as_ref().map(|e| format!("the last write to the data directory failed: {e}")))
    }

    /// Records the outcome of a write (a WAL append or a flush): an error marks the disk as failing
    /// (reported by `/ready` and `lumen_ingest_refused{reason="write_error"}`) until a later write succeeds.
    pub fn note_write<T>(&self, res: &Result<T>) {
        match res {
            Ok(_) => {
                if self.inner.write_failing.load(Ordering::Acquire) {
                    let mut st = self.inner.status.lock();
                    if st.write_error.take().is_some() {
                        self.inner.write_failing.store(false, Ordering::Release);
                        self.inner.metrics.refused.get_or_create(&ReasonLabel { reason: "write_error" }).set(0);
                        tracing::warn!(dir = %self.inner.dir.display(), "writes to the data directory succeed again");
                    }
                }
            }
            Err(e) if e.is_storage_failure() => {
                let mut st = self.inner.status.lock();
                if st.write_error.is_none() {
                    tracing::warn!(dir = %self.inner.dir.display(), error = %e, "a write to the data directory failed; it is refused and retried");
                    self.inner.metrics.refused.get_or_create(&ReasonLabel { reason: "write_error" }).set(1);
                }
                st.write_error = Some(e.to_string());
                self.inner.write_failing.store(true, Ordering::Release);
            }
            Err(_) => {}
        }
    }

    /// Refuses ingest with `reason` (a server that does not hold the bucket's writer lease: what it
    /// acknowledged would never reach the bucket; an ingest node whose new tree query nodes have not found
    /// yet), or takes writes again with `None`. Logged when it
    /// changes; the refusal is a 503 with `Retry-After` that every client retries.
    pub fn set_standby(&self, reason: Option<String>) {
        let inner = &self.inner;
        let mut st = inner.status.lock();
        if st.standby == reason {
            return;
        }
        match &reason {
            Some(why) => {
                if st.standby.is_none() {
                    tracing::warn!(reason = %why, "refusing ingest: this server may not write into the bucket yet (standby)");
                }
                inner.metrics.refused.get_or_create(&ReasonLabel { reason: "standby" }).set(1);
            }
            None => {
                tracing::info!("this server may write into the bucket: ingest resumes");
                inner.metrics.refused.get_or_create(&ReasonLabel { reason: "standby" }).set(0);
            }
        }
        inner.standby.store(reason.is_some(), Ordering::Release);
        st.standby = reason;
    }

    /// Reads the free space now and updates the state; returns it.
    ///
    /// # Errors
    /// The `statvfs` error.
    pub fn refresh(&self) -> Result<Space> {
        let sp = space(&self.inner.dir)?;
        self.observe(sp);
        Ok(sp)
    }

    fn observe(&self, sp: Space) {
        let inner = &self.inner;
        inner.free.store(sp.free, Ordering::Relaxed);
        inner.metrics.free.set(i64::try_from(sp.free).unwrap_or(i64::MAX));
        inner.metrics.total.set(i64::try_from(sp.total).unwrap_or(i64::MAX));
        let refusing = inner.refusing.load(Ordering::Acquire);
        // Resume a little above the reserve, so that a volume hovering at it does not flap.
        let resume_at = inner.reserve.saturating_add((inner.reserve / 20).min(64 << 20));
        let low = if refusing { sp.free < resume_at } else { sp.free < inner.reserve };
        if low == refusing && !low {
            return;
        }
        let mut st = inner.status.lock();
        if low {
            let reason = format!(
                "only {} free on the volume of {}, below the reserve of {} (store.min_free_disk): ingest is refused \
                 until space returns (retention, store.retention_max_disk, a larger volume); queries still work, \
                 and writes resume by themselves",
                ByteSize::b(sp.free).display().iec(),
                inner.dir.display(),
                ByteSize::b(inner.reserve).display().iec()
            );
            if !refusing {
                tracing::warn!(
                    dir = %inner.dir.display(),
                    free_bytes = sp.free,
                    reserve_bytes = inner.reserve,
                    "free space below the reserve: refusing ingest until space returns"
                );
                inner.metrics.refused.get_or_create(&ReasonLabel { reason: "disk_reserve" }).set(1);
            }
            st.reserve = Some(reason);
            inner.refusing.store(true, Ordering::Release);
        } else {
            st.reserve = None;
            inner.refusing.store(false, Ordering::Release);
            inner.metrics.refused.get_or_create(&ReasonLabel { reason: "disk_reserve" }).set(0);
            tracing::warn!(
                dir = %inner.dir.display(),
                free_bytes = sp.free,
                reserve_bytes = inner.reserve,
                "free space is back above the reserve: ingest resumes"
            );
        }
    }
}

/// Bytes under each kind of data, read from the directory tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Log parts, their indexes and catalogs (`<data>/logs`).
    pub logs: u64,
    /// Metric parts and catalogs (`<data>/metrics` but its WAL).
    pub metrics: u64,
    /// Both write-ahead logs (`<data>/wal`, `<data>/metrics/wal`).
    pub wal: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.logs + self.metrics + self.wal
    }
}

/// Sums the sizes of the files under `dir`, leaving out the subtrees in `skip`.
fn tree_bytes(dir: &Path, skip: &[PathBuf]) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let path = e.path();
            if ft.is_dir() {
                if !skip.contains(&path) {
                    stack.push(path);
                }
            } else if ft.is_file() {
                total += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

/// What the store keeps under `data_dir`, by kind (quarantined files are not counted: they are the
/// operator's to look at and delete).
pub fn usage(data_dir: &Path) -> Usage {
    let metric_wal = data_dir.join("metrics").join("wal");
    Usage {
        logs: tree_bytes(&data_dir.join("logs"), &[]) + file_len(&data_dir.join("manifest.json")),
        metrics: tree_bytes(&data_dir.join("metrics"), std::slice::from_ref(&metric_wal)),
        wal: tree_bytes(&data_dir.join("wal"), &[]) + tree_bytes(&metric_wal, &[]),
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// A part as the budget sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BudgetPart {
    pub(crate) id: u64,
    /// Days since the epoch (UTC).
    pub(crate) day: i64,
    /// Its oldest entry or sample, in nanoseconds.
    pub(crate) min_time_ns: i64,
    pub(crate) bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Logs,
    Metrics,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Logs => "logs",
            Kind::Metrics => "metrics",
        }
    }
}

/// Picks what to delete to bring `used` bytes within `budget`: whole days, oldest first, while more than
/// one day is left; then the oldest parts of the last day. Returns the chosen parts.
pub(crate) fn choose(parts: &[(Kind, BudgetPart)], used: u64, budget: u64) -> Vec<(Kind, BudgetPart)> {
    let mut excess = used.saturating_sub(budget);
    if excess == 0 {
        return Vec::new();
    }
    let mut by_day: BTreeMap<i64, Vec<(Kind, BudgetPart)>> = BTreeMap::new();
    for p in parts {
        by_day.entry(p.1.day).or_default().push(*p);
    }
    let mut out = Vec::new();
    while excess > 0 {
        let days_left = by_day.len();
        let Some(mut entry) = by_day.first_entry() else { break };
        if days_left > 1 {
            for p in entry.get() {
                excess = excess.saturating_sub(p.1.bytes);
            }
            out.extend(entry.remove());
        } else {
            let day = entry.get_mut();
            day.sort_by_key(|(k, p)| (p.min_time_ns, *k, p.id));
            let mut taken = 0;
            for p in day.iter() {
                if excess == 0 {
                    break;
                }
                excess = excess.saturating_sub(p.1.bytes);
                out.push(*p);
                taken += 1;
            }
            day.drain(..taken);
            break;
        }
    }
    out
}

/// Reads the free space every second and keeps the store within its budget: at every
/// `interval`, and at once when the free space falls below the reserve. Runs until `shutdown`.
pub async fn maintain(
    guard: DiskGuard,
    logs: LogStore,
    metrics: MetricStore,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_budget: Option<Instant> = None;
    let mut last_usage: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let was_low = guard.low();
        if let Err(error) = guard.refresh() {
            tracing::error!(%error, "cannot read the free space of the data directory");
        }
        let budget_due = last_budget.is_none_or(|t| t.elapsed() >= interval) || (guard.low() && !was_low);
        if budget_due && guard.budget().is_some() {
            last_budget = Some(Instant::now());
            if let Err(error) = enforce_budget(&guard, &logs, &metrics).await {
                tracing::error!(%error, "the disk budget could not be applied; retrying");
            }
            last_usage = None;
        }
        if last_usage.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            last_usage = Some(Instant::now());
            let dir = guard.inner.dir.clone();
            if let Ok(u) = tokio::task::spawn_blocking(move || usage(&dir)).await {
                guard.set_usage(u);
            }
        }
    }
}

impl DiskGuard {
    fn set_usage(&self, u: Usage) {
        let m = &self.inner.metrics;
        for (kind, v) in [("logs", u.logs), ("metrics", u.metrics), ("wal", u.wal)] {
            m.used.get_or_create(&KindLabel { kind }).set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }
}

/// Deletes the oldest data while the store is over its budget. Returns the parts deleted.
///
/// # Errors
/// I/O errors writing a manifest; what was deleted before stays deleted.
pub async fn enforce_budget(guard: &DiskGuard, logs: &LogStore, metrics: &MetricStore) -> Result<usize> {
    let Some(budget) = guard.budget() else { return Ok(0) };
    let dir = guard.inner.dir.clone();
    let used = tokio::task::spawn_blocking(move || usage(&dir))
        .await
        .map_err(|e| Error::Config(format!("the disk usage task failed: {e}")))?;
    guard.set_usage(used);
    if used.total() <= budget {
        guard.inner.status.lock().budget_stuck = false;
        return Ok(0);
    }
    let mut parts: Vec<(Kind, BudgetPart)> = logs.budget_parts().into_iter().map(|p| (Kind::Logs, p)).collect();
    parts.extend(metrics.budget_parts().into_iter().map(|p| (Kind::Metrics, p)));
    let chosen = choose(&parts, used.total(), budget);
    if chosen.is_empty() {
        let mut st = guard.inner.status.lock();
        if !st.budget_stuck {
            st.budget_stuck = true;
            tracing::warn!(
                used_bytes = used.total(),
                budget_bytes = budget,
                wal_bytes = used.wal,
                "over the disk budget (store.retention_max_disk) with no part left to delete: the write-ahead log \
                 and catalogs alone exceed it; raise the budget"
            );
        }
        return Ok(0);
    }
    // Log what goes, by kind and day.
    let mut summary: BTreeMap<(Kind, i64), (usize, u64)> = BTreeMap::new();
    for (k, p) in &chosen {
        let e = summary.entry((*k, p.day)).or_default();
        e.0 += 1;
        e.1 += p.bytes;
    }
    for ((kind, day), (n, bytes)) in &summary {
        tracing::warn!(
            kind = kind.name(),
            day = %crate::time::format_day(*day),
            parts = n,
            bytes,
            used_bytes = used.total(),
            budget_bytes = budget,
            "disk budget (store.retention_max_disk): deleting the oldest data"
        );
    }
    let log_ids: HashSet<u64> = chosen.iter().filter(|(k, _)| *k == Kind::Logs).map(|(_, p)| p.id).collect();
    let metric_ids: HashSet<u64> = chosen.iter().filter(|(k, _)| *k == Kind::Metrics).map(|(_, p)| p.id).collect();
    let mut deleted = 0;
    for (kind, ids) in [(Kind::Logs, log_ids), (Kind::Metrics, metric_ids)] {
        if ids.is_empty() {
            continue;
        }
        let (n, bytes) = match kind {
            Kind::Logs => logs.delete_parts(&ids, "disk budget").await?,
            Kind::Metrics => metrics.delete_parts(&ids, "disk budget").await?,
        };
        let label = KindLabel { kind: kind.name() };
        guard.inner.metrics.budget_deleted_parts.get_or_create(&label).inc_by(n as u64);
        guard.inner.metrics.budget_deleted_bytes.get_or_create(&label).inc_by(bytes);
        deleted += n;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(id: u64, day: i64, min: i64, bytes: u64) -> BudgetPart {
        BudgetPart { id, day, min_time_ns: min, bytes }
    }

    #[test]
    fn whole_days_go_first_oldest_first_across_kinds() {
        let parts = vec![
            (Kind::Logs, part(1, 10, 100, 50)),
            (Kind::Metrics, part(1, 10, 50, 30)),
            (Kind::Logs, part(2, 11, 200, 40)),
            (Kind::Metrics, part(2, 12, 300, 10)),
        ];
        // 130 used, budget 100: day 10 (80 bytes) goes whole, although 30 would have been enough.
        let chosen = choose(&parts, 130, 100);
        let ids: Vec<(Kind, u64)> = chosen.iter().map(|(k, p)| (*k, p.id)).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&(Kind::Logs, 1)) && ids.contains(&(Kind::Metrics, 1)));
        // Within budget: nothing.
        assert!(choose(&parts, 100, 100).is_empty());
        // Far over: days 10 and 11 go whole, then day 12's parts although it is the last.
        let chosen = choose(&parts, 1000, 100);
        assert_eq!(chosen.len(), 4);
    }

    #[test]
    fn the_last_day_loses_its_oldest_parts_only() {
        let parts = vec![
            (Kind::Logs, part(1, 20, 300, 10)),
            (Kind::Logs, part(2, 20, 100, 10)),
            (Kind::Metrics, part(3, 20, 200, 10)),
        ];
        let chosen = choose(&parts, 25, 10);
        let ids: Vec<u64> = chosen.iter().map(|(_, p)| p.id).collect();
        assert_eq!(ids, vec![2, 3], "oldest first by time, and no more than needed");
    }

    #[test]
    fn the_reserve_refuses_and_resumes_with_a_margin() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::default();
        let g = DiskGuard::new(dir.path(), Some(ByteSize::mib(100)), None, &mut reg).unwrap();
        g.observe(Space { free: 50 << 20, total: 1 << 30 });
        let err = g.admit().unwrap_err();
        assert!(matches!(err, Error::DiskFull { .. }));
        assert!(err.to_string().contains("store.min_free_disk"), "{err}");
        assert!(g.problem().is_some());
        // Just at the reserve: still refused (the margin is 5 %).
        g.observe(Space { free: 100 << 20, total: 1 << 30 });
        assert!(g.admit().is_err());
        g.observe(Space { free: 106 << 20, total: 1 << 30 });
        assert!(g.admit().is_ok());
        assert!(g.problem().is_none());
    }

    #[test]
    fn a_failed_write_is_reported_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::default();
        let g = DiskGuard::new(dir.path(), Some(ByteSize::b(0)), None, &mut reg).unwrap();
        let failed: Result<()> =
            Err(Error::Io { op: "write", path: dir.path().join("wal"), source: std::io::Error::from_raw_os_error(28) });
        g.note_write(&failed);
        assert!(g.problem().unwrap().contains("last write"), "{:?}", g.problem());
        // A failed write does not refuse ingest by itself: the next write is how it recovers.
        assert!(g.admit().is_ok());
        g.note_write(&Ok(()));
        assert!(g.problem().is_none());
    }

    #[test]
    fn a_standby_refuses_ingest_until_it_holds_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::default();
        let g = DiskGuard::new(dir.path(), Some(ByteSize::b(0)), None, &mut reg).unwrap();
        g.set_standby(Some("another server (b/1) holds the bucket's writer lease".into()));
        let err = g.admit().unwrap_err();
        assert!(matches!(err, Error::Standby { .. }) && err.is_retryable() && err.is_refusal(), "{err}");
        assert!(err.to_string().contains("b/1"), "{err}");
        assert!(g.problem().unwrap().contains("writer lease"));
        g.set_standby(None);
        assert!(g.admit().is_ok());
        assert!(g.problem().is_none());
    }

    #[test]
    fn the_default_reserve_is_the_smaller_of_1_gib_and_5_percent() {
        assert_eq!(default_reserve(10 << 30), 512 << 20);
        assert_eq!(default_reserve(100 << 30), 1 << 30);
    }
}
