//! [`MetricStore`]: samples (series id, ms timestamp, f64) through the same machinery as logs — a
//! group-committed write-ahead log, an in-memory head, Parquet parts per tenant and day, compaction and
//! retention — with a series catalog whose postings select series before any sample is read.
//!
//! On disk, under `<data>/metrics/`:
//!
//! ```text
//! lock                                    held by the running process
//! manifest.json                           live parts and the WAL checkpoint (the commit point)
//! wal/<first seq>.wal                     write-ahead-log segments
//! tenant=<t>/series.bin                   the tenant's series catalog (id → labels)
//! tenant=<t>/date=<YYYY-MM-DD>/<id>.parquet   parts, rows sorted by (series id, time)
//! ```

mod catalog;
mod changes;
mod codec;
mod decoded;
mod head;
mod part;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::buffer::ScalarBuffer;
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::StoreOptions;
use crate::error::{Error, Result};
use crate::manifest::{MANIFEST_VERSION, QuarantinedPart, check_version, load_json, store_json};
use crate::metrics::StoreMetrics;
use crate::model::{Labels, Tenant};
use crate::quarantine::{Quarantine, SkippedPart};
use crate::scan::{LabelMatcher, PartFilter};
use crate::wal::Wal;
use catalog::{SeriesCatalog, TenantSeries, labels_hash};
pub use changes::ChangeMark;
use head::{MetricHead, sort_dedup};
use part::{MetricOpened, MetricPart, MetricPartMeta, MetricPartWriter};

pub use part::{decode_value, encode_run};

const DAY_MS: i64 = 86_400_000;
/// Samples more than this far in the future are refused.
const MAX_FUTURE_MS: i64 = 2 * DAY_MS;
/// Rows one compaction step holds in memory.
const COMPACTION_CHUNK_ROWS: u64 = 2_000_000;
/// Ids from here up are a batch's provisional ids of series it will register when appended.
const PENDING: u32 = 1 << 31;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MetricManifest {
    version: u32,
    wal_checkpoint: u64,
    next_part_id: u64,
    parts: Vec<MetricPartMeta>,
    /// Per epoch, the highest batch tag durable in the store (see [`MetricStore::append_tagged`]).
    #[serde(default)]
    tags: Vec<(u64, u64)>,
    /// Parts set aside into the quarantine (see `quarantine.rs`); times in nanoseconds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    quarantined: Vec<QuarantinedPart>,
}

/// Numbers a batch of one writer (the MQTT pipeline): `epoch` is unique to one run of the writer, `n`
/// counts its batches from 1. `SampleTag::NONE` (0, 0) stands for no batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SampleTag {
    pub epoch: u64,
    pub n: u64,
}

impl SampleTag {
    pub const NONE: SampleTag = SampleTag { epoch: 0, n: 0 };

    pub fn is_none(self) -> bool {
        self == SampleTag::NONE
    }
}

/// Epochs whose durable tags are remembered; older ones are forgotten (their marks then no longer count,
/// which can only make a redelivery stored twice, never lost).
const TAG_EPOCHS: usize = 64;

/// Durable tags by epoch.
#[derive(Debug, Default)]
struct Tags(std::collections::BTreeMap<u64, u64>);

impl Tags {
    fn add(&mut self, tag: SampleTag) {
        let e = self.0.entry(tag.epoch).or_insert(0);
        *e = (*e).max(tag.n);
        while self.0.len() > TAG_EPOCHS {
            self.0.pop_first();
        }
    }
}

struct State {
    parts: Vec<Arc<MetricPart>>,
    frozen: Vec<Arc<MetricHead>>,
}

struct Inner {
    /// See [`MetricStore::tag_durable`].
    tags: Arc<Mutex<Tags>>,
    data_dir: PathBuf,
    root: PathBuf,
    options: StoreOptions,
    metrics: Arc<StoreMetrics>,
    series_gauge: Gauge,
    catalog: SeriesCatalog,
    wal: Wal,
    active: Arc<Mutex<MetricHead>>,
    state: RwLock<State>,
    manifest: Mutex<MetricManifest>,
    flush_lock: tokio::sync::Mutex<()>,
    maintenance_lock: tokio::sync::Mutex<()>,
    /// Delete requests (`delete_series`): they hide samples from selects until their rewrite ran.
    deletes: crate::delete::Deletes,
    flush_wanted: Arc<Notify>,
    flushed: Notify,
    metadata: RwLock<HashMap<Tenant, BTreeMap<String, MetricMetadata>>>,
    /// Where parts evicted from the local disk are fetched from (see [`crate::remote`]).
    remote: std::sync::OnceLock<Arc<dyn crate::remote::RemoteParts>>,
    /// Set on a query node: why writes are refused (see `set_read_only`).
    read_only: crate::error::ReadOnly,
    /// What changed, for caches of query results (see [`MetricStore::changed_since`]).
    changes: Arc<Mutex<changes::Changes>>,
    /// Runs of parts decoded by earlier selects (`store.decoded_cache_max_bytes`).
    decoded: decoded::DecodedRuns,
    _lock: File,
}

/// What a client said of a metric name (`# TYPE`, `# HELP`, `# UNIT`, or remote-write metadata). Kept in
/// memory only: it is re-sent with every scrape and every few minutes by remote write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricMetadata {
    /// `counter`, `gauge`, `histogram`, `summary`, `info`, `stateset`, `gaugehistogram` or `unknown`.
    pub kind: String,
    pub help: String,
    pub unit: String,
}

/// A tenant's series and the ids a label query covers (`None`: all of them).
type LabelScope = (Arc<RwLock<TenantSeries>>, Option<RoaringBitmap>);

/// A handle to the metric store; cheap to clone.
#[derive(Clone)]
pub struct MetricStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MetricStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricStore").field("root", &self.inner.root).finish_non_exhaustive()
    }
}

/// One series as a query reads it: labels and samples in time order within the asked window.
#[derive(Debug, Clone)]
pub struct SelectedSeries {
    pub labels: Arc<Labels>,
    pub t: ScalarBuffer<i64>,
    pub v: ScalarBuffer<f64>,
}

/// Figures about the metric store, for tests, benchmarks and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricStats {
    pub series: usize,
    pub parts: usize,
    pub part_rows: u64,
    pub disk_bytes: u64,
    pub head_samples: usize,
}

/// A tenant's samples being gathered for one append. Series are looked up (or registered) as they are
/// added, so the batch only holds ids.
pub struct MetricBatch {
    tenant: Tenant,
    series: Arc<RwLock<TenantSeries>>,
    new_series: Vec<(u32, Arc<Labels>)>,
    carried: HashSet<u32>,
    /// Series not in the catalog yet, registered only when the batch is appended (so a refused request
    /// leaves no trace): hash → indexes into `pending`; their samples carry `PENDING + index` as id.
    pending_by_hash: HashMap<u64, Vec<u32>>,
    pending: Vec<(u64, Labels)>,
    samples: Vec<(u32, i64, f64)>,
    scratch: Vec<u8>,
    min_t: i64,
    max_t: i64,
    rejected: u64,
    first_rejected: Option<String>,
    /// `store.max_series_per_tenant` (0: none).
    max_series: usize,
}

impl MetricBatch {
    /// Adds samples of the series with these labels (any order; `__name__` included). Samples outside
    /// the accepted window (older than retention, more than two days ahead) are not added but counted,
    /// see [`MetricBatch::rejected`].
    pub fn add(&mut self, labels: &[(&str, &str)], samples: impl IntoIterator<Item = (i64, f64)>) {
        let mut sorted_buf;
        let sorted: &[(&str, &str)] = if labels.windows(2).all(|w| w[0].0 < w[1].0) {
            labels
        } else {
            sorted_buf = labels.to_vec();
            sorted_buf.sort_unstable();
            &sorted_buf
        };
        let mut id = None;
        for (t, v) in samples {
            if t < self.min_t || t > self.max_t {
                self.reject(sorted, t);
                continue;
            }
            let id = match id {
                Some(id) => id,
                None => match self.series_id(sorted) {
                    Some(found) => *id.insert(found),
                    None => {
                        self.reject_over_limit(sorted);
                        return;
                    }
                },
            };
            self.samples.push((id, t, v));
        }
    }

    fn reject_over_limit(&mut self, labels: &[(&str, &str)]) {
        self.rejected += 1;
        if self.first_rejected.is_none() {
            let series =
                crate::model::Labels::from_pairs(labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect());
            self.first_rejected = Some(format!(
                "series {series} would be new, and tenant {:?} has store.max_series_per_tenant ({}) series already",
                self.tenant.as_str(),
                self.max_series
            ));
        }
    }

    fn reject(&mut self, labels: &[(&str, &str)], t: i64) {
        self.rejected += 1;
        if self.first_rejected.is_none() {
            let series =
                crate::model::Labels::from_pairs(labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect());
            self.first_rejected = Some(format!(
                "sample of {series} at {} is outside the accepted window {} .. {} (retention to two days ahead)",
                crate::time::format_rfc3339_ns(t.saturating_mul(1_000_000)),
                crate::time::format_rfc3339_ns(self.min_t.saturating_mul(1_000_000)),
                crate::time::format_rfc3339_ns(self.max_t.saturating_mul(1_000_000)),
            ));
        }
    }

    /// The series' id; `None` when it is new and the tenant has `max_series` already.
    fn series_id(&mut self, sorted: &[(&str, &str)]) -> Option<u32> {
        let hash = labels_hash(sorted.iter().copied(), &mut self.scratch);
        let (found, have) = {
            let series = self.series.read();
            (series.lookup(hash, sorted), series.len())
        };
        Some(match found {
            Some((id, true)) => id,
            Some((id, false)) => {
                if self.carried.insert(id)
                    && let Some(labels) = self.series.read().labels(id).cloned()
                {
                    self.new_series.push((id, labels));
                }
                id
            }
            None => {
                let known = self.pending_by_hash.get(&hash).and_then(|idx| {
                    idx.iter().copied().find(|&i| {
                        let l = &self.pending[i as usize].1;
                        l.len() == sorted.len() && l.iter().zip(sorted).all(|(a, b)| a == *b)
                    })
                });
                let index = match known {
                    Some(i) => i,
                    None => {
                        if self.max_series > 0 && have + self.pending.len() >= self.max_series {
                            return None;
                        }
                        let labels =
                            Labels::from_pairs(sorted.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect());
                        let i = self.pending.len() as u32;
                        self.pending.push((hash, labels));
                        self.pending_by_hash.entry(hash).or_default().push(i);
                        i
                    }
                };
                PENDING + index
            }
        })
    }

    /// Registers the batch's new series and gives their samples the real ids.
    fn register_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut ids = Vec::with_capacity(self.pending.len());
        {
            let mut w = self.series.write();
            for (hash, labels) in std::mem::take(&mut self.pending) {
                let pairs: Vec<(&str, &str)> = labels.iter().collect();
                // Another request may have registered it meanwhile.
                let id = match w.lookup(hash, &pairs) {
                    Some((id, true)) => {
                        ids.push(id);
                        continue;
                    }
                    Some((id, false)) => id,
                    None => w.insert(hash, labels, None, false, false),
                };
                ids.push(id);
                if self.carried.insert(id)
                    && let Some(l) = w.labels(id).cloned()
                {
                    self.new_series.push((id, l));
                }
            }
        }
        for s in &mut self.samples {
            if s.0 >= PENDING {
                s.0 = ids[(s.0 - PENDING) as usize];
            }
        }
    }

    /// Samples added.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Samples refused for their timestamp or for a series past `store.max_series_per_tenant`, and a
    /// message naming the first.
    pub fn rejected(&self) -> (u64, Option<&str>) {
        (self.rejected, self.first_rejected.as_deref())
    }
}

impl MetricStore {
    /// Whether this store is closed: every handle on it dropped, its data directory unlocked. For a
    /// caller that stops the store and must wait until another may open the directory.
    pub fn closed_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let weak = Arc::downgrade(&self.inner);
        move || weak.strong_count() == 0
    }

    /// Opens (or creates) the metric store under `<options.data_dir>/metrics`: takes its lock, loads the
    /// manifest and series catalog, deletes files of unfinished flushes, replays the write-ahead log.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process holds the directory; I/O and corruption errors otherwise.
    pub fn open(options: StoreOptions, registry: &mut Registry) -> Result<MetricStore> {
        options.tuning.validate().map_err(Error::Config)?;
        let data_dir = options.data_dir.clone();
        let root = data_dir.join("metrics");
        fs::create_dir_all(&root).map_err(Error::io("create", &root))?;
        let lock = crate::engine::lock_dir(&root)?;
        let metrics = StoreMetrics::register_with_prefix(registry, "lumen_metric_store");
        let series_gauge = Gauge::default();
        registry.register("lumen_metric_store_series", "series in the metric catalog", series_gauge.clone());
        let quarantine = Quarantine::new(&data_dir, metrics.clone());
        let mut manifest: MetricManifest = match load_json(&root, "manifest.json", "metric manifest")? {
            Some(m) => {
                let m: MetricManifest = m;
                check_version(m.version, &root.join("manifest.json"))?;
                m
            }
            None => {
                crate::manifest::refuse_without_manifest(&root.join("manifest.json"), &root)?;
                MetricManifest {
                    version: MANIFEST_VERSION,
                    wal_checkpoint: 0,
                    next_part_id: 1,
                    parts: Vec::new(),
                    tags: Vec::new(),
                    quarantined: Vec::new(),
                }
            }
        };
        // Never a number a part file on disk already has, whatever the manifest says.
        manifest.next_part_id = manifest.next_part_id.max(crate::manifest::next_free_part_id(&data_dir, "metrics"));
        let (catalog, label_files) = SeriesCatalog::load(&root, &quarantine)?;
        let opened = open_parts(&data_dir, &mut manifest, &quarantine)?;
        let parts = opened.parts;
        if opened.changed {
            store_json(&root, "manifest.json", "metric manifest", &manifest)?;
        }
        let doubtful = opened.missing || crate::wal::starts_after(&root.join("wal"), manifest.wal_checkpoint);
        remove_unlisted_parts(&data_dir, &manifest, doubtful.then_some(&quarantine))?;
        let mut max_replayed_ids: HashMap<Tenant, u32> = HashMap::new();
        let active = Arc::new(Mutex::new(MetricHead::default()));
        let mut replayed = 0usize;
        let mut tags = Tags::default();
        for &(epoch, n) in &manifest.tags {
            tags.add(SampleTag { epoch, n });
        }
        let tags = Arc::new(Mutex::new(tags));
        let wal = {
            let active = active.clone();
            let tags = tags.clone();
            let catalog = &catalog;
            let wal_dir = root.join("wal");
            let max_replayed_ids = &mut max_replayed_ids;
            Wal::open(
                &wal_dir,
                manifest.wal_checkpoint,
                options.tuning.wal_segment_size.as_u64(),
                metrics.clone(),
                &quarantine,
                |r| {
                    let rec =
                        codec::decode(&r.payload).map_err(|reason| crate::engine::undecodable_record(&r, &reason))?;
                    if let Some(max) = rec.samples.iter().map(|s| s.0).max() {
                        let e = max_replayed_ids.entry(rec.tenant.clone()).or_insert(max);
                        *e = (*e).max(max);
                    }
                    if let Some(tag) = rec.tag {
                        tags.lock().add(tag);
                    }
                    let t = catalog.tenant(&rec.tenant);
                    let mut t = t.write();
                    let mut scratch = Vec::new();
                    for (id, labels) in rec.series {
                        let hash = labels_hash(labels.iter(), &mut scratch);
                        t.insert(hash, labels, Some(id), true, false);
                    }
                    replayed += rec.samples.len();
                    active.lock().insert(&rec.tenant, &rec.samples);
                    Ok(())
                },
            )?
        };
        catalog.check_parts(&label_files, &opened.max_ids, &max_replayed_ids)?;
        report_unnamed_series(&catalog, &active.lock());
        tracing::info!(
            dir = %root.display(),
            parts = parts.len(),
            series = catalog.series_count(),
            replayed_samples = replayed,
            checkpoint = manifest.wal_checkpoint,
            "metric store opened"
        );
        let deletes = crate::delete::Deletes::load(&root)?;
        let decoded_bytes = usize::try_from(options.tuning.decoded_cache_max_bytes.as_u64()).unwrap_or(usize::MAX);
        let store = MetricStore {
            inner: Arc::new(Inner {
                data_dir,
                root,
                options,
                metrics,
                series_gauge,
                catalog,
                wal,
                active,
                state: RwLock::new(State { parts, frozen: Vec::new() }),
                manifest: Mutex::new(manifest),
                tags,
                flush_lock: tokio::sync::Mutex::new(()),
                maintenance_lock: tokio::sync::Mutex::new(()),
                deletes,
                flush_wanted: Arc::new(Notify::new()),
                flushed: Notify::new(),
                metadata: RwLock::default(),
                remote: std::sync::OnceLock::new(),
                read_only: crate::error::ReadOnly::default(),
                changes: Arc::new(Mutex::new(changes::Changes::starting_now())),
                decoded: decoded::DecodedRuns::new(decoded_bytes),
                _lock: lock,
            }),
        };
        store.update_gauges();
        Ok(store)
    }

    /// Refuses every write from now on with [`Error::ReadOnly`] and `reason` (a query node, which follows
    /// a directory another process writes with [`Self::refresh`]).
    pub fn set_read_only(&self, reason: &str) {
        self.inner.read_only.set(reason);
    }

    /// Attaches the source that parts living in the object store are fetched from (once; see
    /// [`crate::remote`]). Until then a read of such a part fails with [`Error::Remote`].
    pub fn attach_remote(&self, source: Arc<dyn crate::remote::RemoteParts>) {
        crate::remote::attach(&self.inner.state.read().parts, self.inner.remote.get_or_init(|| source));
    }

    /// Follows the data directory as another process writes it (a query node; see `LogStore::refresh`):
    /// reads the series catalogs, the delete requests and the manifest again, opens the parts it names
    /// that are new and drops those it no longer names. Writes neither the manifest nor the WAL. Returns
    /// the parts opened and dropped.
    ///
    /// # Errors
    /// A manifest or catalog that cannot be read; the store keeps what it had.
    pub fn refresh(&self) -> Result<(usize, usize)> {
        let inner = &self.inner;
        inner.changes.lock().everything();
        let quarantine = Quarantine::new(&inner.data_dir, inner.metrics.clone());
        inner.catalog.load_files(&quarantine)?;
        inner.deletes.reload()?;
        let Some(manifest) = load_json::<MetricManifest>(&inner.root, "manifest.json", "metric manifest")? else {
            return Ok((0, 0));
        };
        check_version(manifest.version, &inner.root.join("manifest.json"))?;
        let current = inner.state.read().parts.clone();
        let (parts, opened, dropped) = crate::remote::follow_parts(
            &current,
            &manifest.parts,
            |p| p.meta.id,
            |m| m.id,
            |meta| {
                Ok(match MetricPart::open_checked(&inner.data_dir, meta.clone())? {
                    part::MetricOpened::Good(p, _) => {
                        if let Some(source) = inner.remote.get() {
                            p.remote.attach(source);
                        }
                        Some(*p)
                    }
                    part::MetricOpened::Damaged(reason) | part::MetricOpened::Missing(reason) => {
                        tracing::warn!(part = meta.id, %reason, "a metric part the followed manifest names cannot be opened; left out");
                        None
                    }
                })
            },
            MetricPart::mark_obsolete,
        )?;
        inner.state.write().parts = parts;
        *inner.manifest.lock() = manifest;
        self.update_gauges();
        Ok((opened, dropped))
    }

    /// The live parts whose file is on the local disk, for [`crate::remote::evict`].
    pub(crate) fn eviction_candidates(&self) -> Vec<crate::remote::Candidate> {
        match self.inner.remote.get() {
            Some(source) => crate::remote::candidates(self.inner.state.read().parts.clone(), source),
            None => Vec::new(),
        }
    }

    /// Starts a batch for a tenant.
    pub fn batch(&self, tenant: &Tenant) -> MetricBatch {
        let now_ms = crate::time::now_ns() / 1_000_000;
        let retention_ms = i64::try_from(self.inner.options.retention.as_millis()).unwrap_or(i64::MAX);
        // Whole days are kept, so a sample of the oldest kept day is still accepted.
        let min_t = (now_ms.saturating_sub(retention_ms)).div_euclid(DAY_MS) * DAY_MS;
        MetricBatch {
            tenant: tenant.clone(),
            series: self.inner.catalog.tenant(tenant),
            new_series: Vec::new(),
            carried: HashSet::new(),
            pending_by_hash: HashMap::new(),
            pending: Vec::new(),
            samples: Vec::new(),
            scratch: Vec::new(),
            min_t,
            max_t: now_ms.saturating_add(MAX_FUTURE_MS),
            rejected: 0,
            first_rejected: None,
            max_series: self.inner.options.tuning.max_series_per_tenant,
        }
    }

    /// Stores a batch durably: resolves once it is in the fsynced WAL and visible to queries.
    ///
    /// # Cancel safety
    /// Dropping the future does not withdraw the batch: it may still be stored.
    pub async fn append(&self, batch: MetricBatch) -> Result<()> {
        self.append_record(batch, None).await
    }

    /// Stores a batch as [`MetricStore::append`] does, numbered with `tag`: once it resolves,
    /// [`MetricStore::tag_durable`] says so, across restarts too. Within an epoch, one writer (the MQTT
    /// pipeline) gives tags in increasing order, one batch after the other, and starts a new epoch after a
    /// failed one (the WAL takes writes again once it recovered from a failure); so a durable tag means
    /// every lower tag of its epoch is durable too. That lets a log record written at the same time tell,
    /// after a crash, whether these samples made it. An empty batch writes nothing, and its tag does not
    /// become durable.
    ///
    /// # Errors
    /// As [`MetricStore::append`].
    pub async fn append_tagged(&self, batch: MetricBatch, tag: SampleTag) -> Result<()> {
        self.append_record(batch, Some(tag)).await
    }

    /// Whether the batch tagged `tag` (and so every earlier one of its epoch) is durable.
    pub fn tag_durable(&self, tag: SampleTag) -> bool {
        self.inner.tags.lock().0.get(&tag.epoch).is_some_and(|&n| n >= tag.n)
    }

    /// The highest epoch of a durable tag; 0 when none.
    pub fn max_tag_epoch(&self) -> u64 {
        self.inner.tags.lock().0.last_key_value().map_or(0, |(&e, _)| e)
    }

    async fn append_record(&self, mut batch: MetricBatch, tag: Option<SampleTag>) -> Result<()> {
        self.inner.read_only.check()?;
        if batch.samples.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        if let Some(disk) = &inner.options.disk {
            disk.admit()?;
        }
        let limit = 3 * inner.options.tuning.head_max_size.as_u64() as usize;
        while self.head_bytes() > limit {
            if let Some(disk) = &inner.options.disk {
                disk.admit()?;
            }
            inner.flush_wanted.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(200), inner.flushed.notified()).await;
        }
        batch.register_pending();
        let MetricBatch { tenant, series, new_series, samples, .. } = batch;
        let changes = inner.changes.clone();
        let earliest = samples.iter().map(|s| s.1).min().unwrap_or(i64::MAX);
        let payload = codec::encode(&tenant, &new_series, &samples, tag);
        let tags = inner.tags.clone();
        let active = inner.active.clone();
        let wanted = inner.flush_wanted.clone();
        let max = inner.options.tuning.head_max_size.as_u64() as usize;
        let res = inner
            .wal
            .append(
                payload,
                Box::new(move |_seq| {
                    if let Some(tag) = tag {
                        tags.lock().add(tag);
                    }
                    {
                        let s = series.read();
                        for (id, _) in &new_series {
                            if let Some(e) = s.entry(*id) {
                                e.logged.store(true, Ordering::Release);
                            }
                        }
                    }
                    let mut a = active.lock();
                    a.insert(&tenant, &samples);
                    // Under the head's lock: a query that reads the head after this sees the samples.
                    changes.lock().appended(&tenant, earliest);
                    if a.bytes() >= max {
                        wanted.notify_one();
                    }
                }),
            )
            .await;
        if let Some(disk) = &inner.options.disk {
            disk.note_write(&res);
        }
        res.map(|_| ())
    }

    /// Bytes the in-memory head holds now (active and frozen memtables), as the flush-by-size rule counts
    /// them: what the server's memory budget reports for this store's head.
    pub fn head_bytes(&self) -> usize {
        let st = self.inner.state.read();
        st.frozen.iter().map(|m| m.bytes()).sum::<usize>() + self.inner.active.lock().bytes()
    }

    /// Asks the background loop ([`Self::run`]) to flush the head now, as a full head does; returns at
    /// once. The flush takes the usual path (WAL rotation, parts, manifest), so durability is unchanged:
    /// it only moves acknowledged data from memory to parts earlier. Used under memory pressure.
    pub fn request_flush(&self) {
        self.inner.flush_wanted.notify_one();
    }

    /// Writes the head to parts now and truncates the write-ahead log.
    ///
    /// # Errors
    /// I/O errors writing parts or the manifest; the head keeps the data and a later flush retries.
    pub async fn flush(&self) -> Result<()> {
        let _guard = self.inner.flush_lock.lock().await;
        let rotated = self.inner.clone();
        let checkpoint = self
            .inner
            .wal
            .rotate(Box::new(move |_| {
                let mut st = rotated.state.write();
                let mut active = rotated.active.lock();
                if !active.is_empty() {
                    st.frozen.push(Arc::new(std::mem::take(&mut *active)));
                }
            }))
            .await?;
        let frozen: Vec<Arc<MetricHead>> = self.inner.state.read().frozen.clone();
        let this = self.clone();
        let res = tokio::task::spawn_blocking(move || this.persist(&frozen, checkpoint))
            .await
            .map_err(|e| Error::WalClosed { reason: format!("metric flush task failed: {e}") })?;
        self.inner.flushed.notify_waiters();
        self.update_gauges();
        if let Some(disk) = &self.inner.options.disk {
            disk.note_write(&res);
        }
        if res.is_err() {
            self.inner.metrics.flush_failures.inc();
        }
        res
    }

    fn next_part_id(&self) -> u64 {
        let mut m = self.inner.manifest.lock();
        let id = m.next_part_id;
        m.next_part_id += 1;
        id
    }

    fn new_meta(&self, tenant: &str, day: i64, level: u32) -> MetricPartMeta {
        MetricPartMeta {
            id: self.next_part_id(),
            tenant: tenant.to_string(),
            day,
            min_time: 0,
            max_time: 0,
            rows: 0,
            series: 0,
            bytes: 0,
            level,
        }
    }

    fn zstd_level(&self, level: u32) -> i32 {
        let t = &self.inner.options.tuning;
        if level == 0 { t.zstd_level } else { t.compaction_zstd_level }
    }

    fn persist(&self, frozen: &[Arc<MetricHead>], checkpoint: u64) -> Result<()> {
        let inner = &self.inner;
        let started = Instant::now();
        let mut new_parts: Vec<Arc<MetricPart>> = Vec::new();
        let mut rows = 0;
        let abandon = |parts: &[Arc<MetricPart>]| parts.iter().for_each(|p| p.mark_obsolete());
        for head in frozen {
            match self.write_head(head) {
                Ok(parts) => new_parts.extend(parts),
                Err(e) => {
                    abandon(&new_parts);
                    return Err(e);
                }
            }
            rows += head.samples;
        }
        if let Err(e) = inner.catalog.persist() {
            abandon(&new_parts);
            return Err(e);
        }
        {
            let mut manifest = inner.manifest.lock();
            let mut next = manifest.clone();
            next.parts.extend(new_parts.iter().map(|p| p.meta.clone()));
            next.wal_checkpoint = next.wal_checkpoint.max(checkpoint);
            // Tags of records past the checkpoint may be included: those records are durable too.
            next.tags = inner.tags.lock().0.iter().map(|(&e, &n)| (e, n)).collect();
            if let Err(e) = store_json(&inner.root, "manifest.json", "metric manifest", &next) {
                abandon(&new_parts);
                return Err(e);
            }
            *manifest = next;
            let mut st = inner.state.write();
            st.parts.extend(new_parts.iter().cloned());
            st.frozen.retain(|m| !frozen.iter().any(|f| Arc::ptr_eq(f, m)));
        }
        let removed = inner.wal.truncate(checkpoint)?;
        inner.metrics.flushes.inc();
        inner.metrics.flushed_rows.inc_by(rows as u64);
        inner.metrics.flush_seconds.observe(started.elapsed().as_secs_f64());
        if rows > 0 {
            tracing::debug!(
                samples = rows,
                parts = new_parts.len(),
                checkpoint,
                wal_segments_removed = removed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "flushed metric head"
            );
        }
        Ok(())
    }

    /// Series ids in part order: by metric name, then id. A query names one metric most of the time,
    /// so its series lie together and a read decodes few pages.
    fn part_order(&self, tenant: &Tenant, ids: impl Iterator<Item = u32>) -> Vec<u32> {
        let Some(series) = self.inner.catalog.get(tenant) else {
            return ids.collect();
        };
        let s = series.read();
        let mut keyed: Vec<(&str, u32)> =
            ids.map(|id| (s.labels(id).and_then(|l| l.get("__name__")).unwrap_or(""), id)).collect();
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, id)| id).collect()
    }

    /// Writes one frozen head as parts: one per tenant and day, series in [`MetricStore::part_order`].
    fn write_head(&self, head: &MetricHead) -> Result<Vec<Arc<MetricPart>>> {
        let dir = &self.inner.data_dir;
        let mut out: Vec<Arc<MetricPart>> = Vec::new();
        for (tenant, th) in &head.tenants {
            let mut writers: HashMap<i64, MetricPartWriter> = HashMap::new();
            let present = th.series.iter().enumerate().filter(|(_, b)| !b.t.is_empty()).map(|(id, _)| id as u32);
            let order = self.part_order(tenant, present);
            let res = (|| {
                for &id in &order {
                    let buf = &th.series[id as usize];
                    let (t, v) = buf.sorted();
                    let mut start = 0;
                    while start < t.len() {
                        let day = t[start].div_euclid(DAY_MS);
                        let end = start + t[start..].partition_point(|&x| x.div_euclid(DAY_MS) == day);
                        let w = match writers.get_mut(&day) {
                            Some(w) => w,
                            None => {
                                let meta = self.new_meta(tenant.as_str(), day, 0);
                                let w = MetricPartWriter::create(dir, meta, self.zstd_level(0))?;
                                writers.entry(day).or_insert(w)
                            }
                        };
                        w.push_series(id, &t[start..end], &v[start..end])?;
                        start = end;
                    }
                }
                Ok::<_, Error>(())
            })();
            if let Err(e) = res {
                writers.into_values().for_each(MetricPartWriter::abort);
                out.iter().for_each(|p| p.mark_obsolete());
                return Err(e);
            }
            for (_, w) in writers {
                match w.finish(dir) {
                    Ok(p) => out.push(p),
                    Err(e) => {
                        out.iter().for_each(|p| p.mark_obsolete());
                        return Err(e);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The series of a tenant that match every matcher, with their samples in `[mint, maxt]` (ms,
    /// inclusive), from parts and head merged; a sample written twice for one timestamp reads as the last.
    ///
    /// # Errors
    /// I/O and Parquet errors reading parts.
    pub fn select(
        &self,
        tenant: &Tenant,
        matchers: &[LabelMatcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<SelectedSeries>> {
        self.select_within(tenant, matchers, mint, maxt, usize::MAX)
    }

    /// [`MetricStore::select`], refusing with [`Error::TooManySamples`] as soon as more than `max_samples`
    /// samples were read, so that a query over too much data fails before it holds all of it.
    ///
    /// # Errors
    /// As `select`, and `TooManySamples`.
    pub fn select_within(
        &self,
        tenant: &Tenant,
        matchers: &[LabelMatcher],
        mint: i64,
        maxt: i64,
        max_samples: usize,
    ) -> Result<Vec<SelectedSeries>> {
        self.select_filtered(tenant, matchers, mint, maxt, max_samples, &PartFilter::All, None)
    }

    /// Changes the bound of the cache of decoded runs (`store.decoded_cache_max_bytes` at the start): a
    /// query node following several ingest nodes' trees shares the bound out between their stores.
    pub fn set_decoded_cache_max(&self, bytes: usize) {
        self.inner.decoded.set_max(bytes);
    }

    /// Empties the cache of decoded runs (memory pressure).
    pub fn clear_decoded_cache(&self) {
        self.inner.decoded.clear();
    }

    /// The cache of decoded runs: (bytes held, hits, misses).
    pub fn decoded_cache_stats(&self) -> (usize, u64, u64) {
        self.inner.decoded.stats()
    }

    /// A mark of the store's changes now, to pass to [`MetricStore::changed_since`] later: take it
    /// before a select whose result is cached.
    pub fn change_mark(&self) -> ChangeMark {
        self.inner.changes.lock().mark()
    }

    /// The earliest time (ms) of the tenant's samples appended since `mark`: a result evaluated after
    /// `mark` is still exact at every step before it. `i64::MAX`: nothing appended; `i64::MIN`: unknown
    /// (samples deleted or a delete cancelled, parts dropped, a refresh, or too many appends since).
    pub fn changed_since(&self, tenant: &Tenant, mark: ChangeMark) -> i64 {
        self.inner.changes.lock().since(tenant, mark)
    }

    /// The ids of the tenant's parts a select of `[mint, maxt]` would read: what a query node tells its
    /// ingest node it holds (see [`MetricStore::select_delta`]).
    pub fn part_ids(&self, tenant: &Tenant, mint: i64, maxt: i64) -> Vec<u64> {
        let st = self.inner.state.read();
        readable_parts(&st.parts, tenant, mint, maxt, &PartFilter::All).map(|p| p.meta.id).collect()
    }

    /// What an ingest node adds to a query node's select (issue 22): the samples of the head and of the
    /// parts not in `have` (the query node's), with the ids of `have` still live here at the same instant.
    /// The query node reads those of its parts and merges these series in.
    ///
    /// # Errors
    /// As [`MetricStore::select_within`].
    pub fn select_delta(
        &self,
        tenant: &Tenant,
        matchers: &[LabelMatcher],
        mint: i64,
        maxt: i64,
        max_samples: usize,
        have: HashSet<u64>,
    ) -> Result<(Vec<u64>, Vec<SelectedSeries>)> {
        let mut keep = Vec::new();
        let filter = PartFilter::Except(Arc::new(have));
        let series = self.select_filtered(tenant, matchers, mint, maxt, max_samples, &filter, Some(&mut keep))?;
        Ok((keep, series))
    }

    /// [`MetricStore::select_within`] over the parts `filter` admits (and the head); with `keep`, also the
    /// ids of `filter`'s `Except` set that are live parts of the tenant when the parts are taken.
    #[allow(clippy::too_many_arguments)] // the select's arguments plus the two of issue 22's split reads
    pub fn select_filtered(
        &self,
        tenant: &Tenant,
        matchers: &[LabelMatcher],
        mint: i64,
        maxt: i64,
        max_samples: usize,
        filter: &PartFilter,
        keep: Option<&mut Vec<u64>>,
    ) -> Result<Vec<SelectedSeries>> {
        let inner = &self.inner;
        let mut loaded = 0usize;
        let Some(series) = inner.catalog.get(tenant) else {
            return Ok(Vec::new());
        };
        let ids = series.read().matching(matchers);
        let (parts, frozen, active) = {
            let st = inner.state.read();
            if let (Some(keep), PartFilter::Except(have)) = (keep, filter) {
                keep.extend(
                    st.parts
                        .iter()
                        .filter(|p| p.meta.tenant == tenant.as_str() && have.contains(&p.meta.id))
                        .map(|p| p.meta.id),
                );
            }
            let mut parts: Vec<Arc<MetricPart>> =
                readable_parts(&st.parts, tenant, mint, maxt, filter).cloned().collect();
            parts.sort_by_key(|p| p.meta.id);
            // The active head is read at the same instant: a flush that froze it after this snapshot and
            // before a later read of it would hide its samples from this select.
            let active = head_pieces(&inner.active.lock(), tenant, &ids, mint, maxt);
            (parts, st.frozen.clone(), active)
        };
        if ids.is_empty() || mint > maxt {
            return Ok(Vec::new());
        }
        type Piece = (ScalarBuffer<i64>, ScalarBuffer<f64>);
        let mut pieces: HashMap<u32, Vec<Piece>> = HashMap::new();
        let trim = |t: &ScalarBuffer<i64>, v: &ScalarBuffer<f64>, off: usize, len: usize| -> Option<Piece> {
            let ts = &t[off..off + len];
            let a = ts.partition_point(|&x| x < mint);
            let b = ts.partition_point(|&x| x <= maxt);
            (a < b).then(|| (t.slice(off + a, b - a), v.slice(off + a, b - a)))
        };
        let decoded = &inner.decoded;
        for part in &parts {
            // An unreadable part is left out, not the whole answer: `skipped_parts` names it.
            let read = (|| {
                let wanted = part.ids()? & &ids;
                if wanted.is_empty() {
                    return Ok(None);
                }
                let runs: Vec<part::Run> = part
                    .runs()?
                    .iter()
                    .filter(|r| wanted.contains(r.id) && r.max_t >= mint && r.min_t <= maxt)
                    .copied()
                    .collect();
                if runs.is_empty() {
                    return Ok(None);
                }
                // Each series' whole run: from the decoded cache, else decoded (and kept) here.
                let mut got: Vec<(u32, Piece)> = Vec::with_capacity(runs.len());
                let mut missing: Vec<part::Run> = Vec::new();
                for r in &runs {
                    match decoded.enabled().then(|| decoded.get(part.meta.id, r.id)).flatten() {
                        Some(run) => got.push((r.id, run)),
                        None => missing.push(*r),
                    }
                }
                if !missing.is_empty() {
                    let (t, v) = part.read_runs(&missing)?;
                    let mut off = 0usize;
                    for r in &missing {
                        let n = r.rows as usize;
                        if decoded.enabled() {
                            decoded.insert(part.meta.id, r.id, &t[off..off + n], &v[off..off + n]);
                        }
                        got.push((r.id, (t.slice(off, n), v.slice(off, n))));
                        off += n;
                    }
                }
                Ok::<_, Error>(Some(got))
            })();
            let got = match read {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                // A part the object store did not deliver fails the answer (see `crate::remote`).
                Err(error) if error.is_remote() => return Err(error),
                Err(error) => {
                    part.set_unreadable(&error, &inner.metrics);
                    continue;
                }
            };
            loaded = loaded.saturating_add(got.iter().map(|(_, (t, _))| t.len()).sum());
            if loaded > max_samples {
                return Err(Error::TooManySamples { limit: max_samples });
            }
            for (id, (t, v)) in got {
                if let Some(p) = trim(&t, &v, 0, t.len()) {
                    pieces.entry(id).or_default().push(p);
                }
            }
        }
        let frozen_pieces = frozen.iter().flat_map(|head| head_pieces(head, tenant, &ids, mint, maxt));
        for (id, p) in frozen_pieces.chain(active) {
            loaded = loaded.saturating_add(p.0.len());
            pieces.entry(id).or_default().push(p);
        }
        if loaded > max_samples {
            return Err(Error::TooManySamples { limit: max_samples });
        }

        let masks = self.delete_masks(tenant);
        let s = series.read();
        let mut out = Vec::with_capacity(pieces.len());
        for (id, mut ps) in pieces {
            let Some(labels) = s.labels(id).cloned() else {
                continue;
            };
            let covering: Vec<(i64, i64)> =
                masks.iter().filter(|(ids, _, _)| ids.contains(id)).map(|(_, a, b)| (*a, *b)).collect();
            if !covering.is_empty() {
                // A pending delete hides these samples: drop them from every piece.
                for p in ps.iter_mut() {
                    let keep: Vec<usize> = (0..p.0.len())
                        .filter(|&i| !covering.iter().any(|(a, b)| p.0[i] >= *a && p.0[i] <= *b))
                        .collect();
                    if keep.len() < p.0.len() {
                        *p = (
                            ScalarBuffer::from(keep.iter().map(|&i| p.0[i]).collect::<Vec<i64>>()),
                            ScalarBuffer::from(keep.iter().map(|&i| p.1[i]).collect::<Vec<f64>>()),
                        );
                    }
                }
                ps.retain(|p| !p.0.is_empty());
                if ps.is_empty() {
                    continue;
                }
            }
            let (t, v) = if ps.len() == 1 {
                ps.pop().unwrap_or_else(|| (ScalarBuffer::from(Vec::new()), ScalarBuffer::from(Vec::new())))
            } else {
                let t: Vec<i64> = ps.iter().flat_map(|p| p.0.iter().copied()).collect();
                let v: Vec<f64> = ps.iter().flat_map(|p| p.1.iter().copied()).collect();
                if t.windows(2).all(|w| w[0] < w[1]) {
                    (ScalarBuffer::from(t), ScalarBuffer::from(v))
                } else {
                    let (t, v) = sort_dedup(&t, &v);
                    (ScalarBuffer::from(t), ScalarBuffer::from(v))
                }
            };
            out.push(SelectedSeries { labels, t, v });
        }
        Ok(out)
    }

    /// The ids of a tenant's series matching any of the selectors (each a list of matchers; no selectors
    /// = every series) that have samples in `[start, end]` (ms).
    fn series_ids(
        &self,
        tenant: &Tenant,
        selectors: &[Vec<LabelMatcher>],
        start: i64,
        end: i64,
    ) -> Result<RoaringBitmap> {
        let Some(series) = self.inner.catalog.get(tenant) else {
            return Ok(RoaringBitmap::new());
        };
        let mut ids = {
            let s = series.read();
            if selectors.is_empty() {
                s.matching(&[])
            } else {
                selectors.iter().fold(RoaringBitmap::new(), |acc, m| acc | s.matching(m))
            }
        };
        if start == i64::MIN && end == i64::MAX {
            return Ok(ids);
        }
        let mut active = RoaringBitmap::new();
        // The active head at the same instant as the rest (see `select_filtered`).
        let (parts, frozen, active_hits) = {
            let st = self.inner.state.read();
            (st.parts.clone(), st.frozen.clone(), head_hits(&self.inner.active.lock(), tenant, &ids, start, end))
        };
        for p in parts.iter().filter(|p| {
            p.meta.tenant == tenant.as_str() && p.meta.max_time >= start && p.meta.min_time <= end && !p.is_unreadable()
        }) {
            let read = if p.meta.min_time >= start && p.meta.max_time <= end {
                p.ids().map(|ids| active |= ids)
            } else {
                p.runs()
                    .map(|runs| active.extend(runs.iter().filter(|r| r.max_t >= start && r.min_t <= end).map(|r| r.id)))
            };
            if let Err(error) = read {
                p.set_unreadable(&error, &self.inner.metrics);
            }
        }
        for h in &frozen {
            active |= head_hits(h, tenant, &ids, start, end);
        }
        active |= active_hits;
        ids &= active;
        Ok(ids)
    }

    /// Labels of the matching series (see [`MetricStore::select`] for the selectors), sorted.
    ///
    /// # Errors
    /// I/O errors reading part indexes.
    pub fn series(
        &self,
        tenant: &Tenant,
        selectors: &[Vec<LabelMatcher>],
        start: i64,
        end: i64,
    ) -> Result<Vec<Arc<Labels>>> {
        let ids = self.series_ids(tenant, selectors, start, end)?;
        let Some(series) = self.inner.catalog.get(tenant) else {
            return Ok(Vec::new());
        };
        let s = series.read();
        let mut out: Vec<Arc<Labels>> = ids.iter().filter_map(|id| s.labels(id).cloned()).collect();
        out.sort();
        Ok(out)
    }

    /// The tenant's series and the ids a label query covers (`None`: every series, no filter needed).
    fn label_scope(
        &self,
        tenant: &Tenant,
        selectors: &[Vec<LabelMatcher>],
        start: i64,
        end: i64,
    ) -> Result<Option<LabelScope>> {
        let Some(series) = self.inner.catalog.get(tenant) else {
            return Ok(None);
        };
        let everything = selectors.is_empty() && start == i64::MIN && end == i64::MAX;
        let ids = if everything { None } else { Some(self.series_ids(tenant, selectors, start, end)?) };
        Ok(Some((series, ids)))
    }

    /// Label names of the matching series (see [`MetricStore::series`]), sorted.
    ///
    /// # Errors
    /// I/O errors reading part indexes.
    pub fn label_names(
        &self,
        tenant: &Tenant,
        selectors: &[Vec<LabelMatcher>],
        start: i64,
        end: i64,
    ) -> Result<BTreeSet<String>> {
        let scope = self.label_scope(tenant, selectors, start, end)?;
        Ok(scope.map(|(series, ids)| series.read().label_names(ids.as_ref())).unwrap_or_default())
    }

    /// Values of one label over the matching series, sorted.
    ///
    /// # Errors
    /// I/O errors reading part indexes.
    pub fn label_values(
        &self,
        tenant: &Tenant,
        name: &str,
        selectors: &[Vec<LabelMatcher>],
        start: i64,
        end: i64,
    ) -> Result<BTreeSet<String>> {
        let scope = self.label_scope(tenant, selectors, start, end)?;
        Ok(scope.map(|(series, ids)| series.read().label_values(name, ids.as_ref())).unwrap_or_default())
    }

    /// Records what a client said of a metric; empty fields keep what was known.
    pub fn set_metadata(&self, tenant: &Tenant, name: &str, meta: MetricMetadata) {
        let mut all = self.inner.metadata.write();
        let entry = all.entry(tenant.clone()).or_default().entry(name.to_string()).or_default();
        for (dst, src) in [(&mut entry.kind, meta.kind), (&mut entry.help, meta.help), (&mut entry.unit, meta.unit)] {
            if !src.is_empty() {
                *dst = src;
            }
        }
    }

    /// Every tenant with series in the catalog.
    pub fn tenants(&self) -> Vec<Tenant> {
        self.inner.catalog.tenants()
    }

    /// The metadata known of a tenant's metrics, by name.
    pub fn metadata(&self, tenant: &Tenant) -> BTreeMap<String, MetricMetadata> {
        self.inner.metadata.read().get(tenant).cloned().unwrap_or_default()
    }

    pub fn stats(&self) -> MetricStats {
        let st = self.inner.state.read();
        let active = self.inner.active.lock();
        MetricStats {
            series: self.inner.catalog.series_count(),
            parts: st.parts.len(),
            part_rows: st.parts.iter().map(|p| p.meta.rows).sum(),
            disk_bytes: st.parts.iter().map(|p| p.meta.bytes).sum(),
            head_samples: st.frozen.iter().map(|h| h.samples).sum::<usize>() + active.samples,
        }
    }

    /// The tenant's parts with samples in `[mint, maxt]` (ms) that reads leave out because they cannot
    /// be read; see [`crate::LogStore::skipped_parts`], which this mirrors (times there are nanoseconds).
    pub fn skipped_parts(&self, tenant: &Tenant, mint: i64, maxt: i64) -> Vec<SkippedPart> {
        let inner = &self.inner;
        let mut out: Vec<SkippedPart> = inner
            .state
            .read()
            .parts
            .iter()
            .filter(|p| p.meta.tenant == tenant.as_str() && p.meta.max_time >= mint && p.meta.min_time <= maxt)
            .filter_map(|p| p.skipped())
            .collect();
        let (start, end) = (mint.saturating_mul(1_000_000), maxt.saturating_add(1).saturating_mul(1_000_000));
        let manifest = inner.manifest.lock();
        out.extend(
            manifest
                .quarantined
                .iter()
                .filter(|q| q.overlaps(tenant.as_str(), start, end))
                .map(|q| q.skipped(&inner.data_dir)),
        );
        out
    }

    fn update_gauges(&self) {
        let s = self.stats();
        let m = &self.inner.metrics;
        // One lock at a time: compaction takes the manifest before the state.
        let marked = self.inner.state.read().parts.iter().filter(|p| p.is_unreadable()).count();
        let unreadable = marked + self.inner.manifest.lock().quarantined.len();
        m.unreadable_parts.set(unreadable as i64);
        m.parts.set(s.parts as i64);
        m.disk_bytes.set(s.disk_bytes as i64);
        m.head_rows.set(s.head_samples as i64);
        m.head_bytes.set((s.head_samples * head::SAMPLE_BYTES) as i64);
        self.inner.series_gauge.set(s.series as i64);
    }

    /// Merges each day's parts into one: a day with `compaction_min_parts` parts, or a finished day with
    /// more than one part or a lone flushed part (rewritten at the compaction zstd level). Returns the
    /// parts merged away.
    ///
    /// # Errors
    /// I/O errors; the inputs stay in place.
    pub async fn compact(&self) -> Result<usize> {
        // A query node's parts are the writer's: it compacts them, not this process.
        // Compaction writes its output before it frees its inputs: not while the disk is low.
        if self.inner.read_only.is_set() || self.inner.options.disk.as_ref().is_some_and(|d| d.low()) {
            return Ok(0);
        }
        let _guard = self.inner.maintenance_lock.lock().await;
        let this = self.clone();
        let n = tokio::task::spawn_blocking(move || this.compact_blocking())
            .await
            .map_err(|e| Error::WalClosed { reason: format!("metric compaction task failed: {e}") })??;
        self.update_gauges();
        Ok(n)
    }

    fn compact_blocking(&self) -> Result<usize> {
        let inner = &self.inner;
        let today = crate::time::day_of_ns(crate::time::now_ns());
        let mut by_day: HashMap<(String, i64), Vec<Arc<MetricPart>>> = HashMap::new();
        for p in inner.state.read().parts.iter().filter(|p| !p.is_unreadable()) {
            by_day.entry((p.meta.tenant.clone(), p.meta.day)).or_default().push(p.clone());
        }
        let min_parts = inner.options.tuning.compaction_min_parts;
        let mut merged = 0;
        for ((tenant, day), parts) in by_day {
            let Some(mut job) = compaction_job(parts, day < today, min_parts) else {
                continue;
            };
            job.sort_by_key(|p| p.meta.id);
            let level = job.iter().map(|p| p.meta.level).max().unwrap_or(0) + 1;
            let started = Instant::now();
            let output = self.merge(&job, self.new_meta(&tenant, day, level))?;
            let mut manifest = inner.manifest.lock();
            let mut st = inner.state.write();
            if !job.iter().all(|p| st.parts.iter().any(|q| Arc::ptr_eq(p, q))) {
                output.mark_obsolete();
                continue;
            }
            let mut next = manifest.clone();
            next.parts.retain(|m| !job.iter().any(|p| p.meta.id == m.id));
            next.parts.push(output.meta.clone());
            if let Err(e) = store_json(&inner.root, "manifest.json", "metric manifest", &next) {
                output.mark_obsolete();
                return Err(e);
            }
            *manifest = next;
            st.parts.retain(|q| !job.iter().any(|p| Arc::ptr_eq(p, q)));
            st.parts.push(output.clone());
            job.iter().for_each(|p| p.mark_obsolete());
            inner.metrics.compactions.inc();
            inner.metrics.compacted_parts.inc_by(job.len() as u64);
            inner.metrics.compacted_rows.inc_by(output.meta.rows);
            merged += job.len();
            tracing::info!(
                %tenant,
                day = %crate::time::format_day(day),
                inputs = job.len(),
                rows = output.meta.rows,
                bytes = output.meta.bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "compacted metric parts"
            );
        }
        Ok(merged)
    }

    /// Merges parts (oldest first; on equal timestamps the newer part wins) chunk by chunk of series, in
    /// [`MetricStore::part_order`].
    fn merge(&self, job: &[Arc<MetricPart>], meta: MetricPartMeta) -> Result<Arc<MetricPart>> {
        self.merge_filtered(job, meta, None)
    }

    /// [`MetricStore::merge`], leaving out the samples `drop` names (series id, time): a delete's rewrite.
    fn merge_filtered(
        &self,
        job: &[Arc<MetricPart>],
        meta: MetricPartMeta,
        drop: Option<&dyn Fn(u32, i64) -> bool>,
    ) -> Result<Arc<MetricPart>> {
        let dir = &self.inner.data_dir;
        let mut writer = MetricPartWriter::create(dir, meta.clone(), self.zstd_level(meta.level))?;
        let res = (|| {
            // Each part's runs by id.
            // An input that fails to read is marked unreadable, so that the next compaction goes on without it.
            let unreadable = |p: &MetricPart, e: Error| {
                p.set_unreadable(&e, &self.inner.metrics);
                e
            };
            let runs: Vec<HashMap<u32, part::Run>> = job
                .iter()
                .map(|p| Ok(p.runs().map_err(|e| unreadable(p, e))?.iter().map(|r| (r.id, *r)).collect()))
                .collect::<Result<_>>()?;
            let mut all = RoaringBitmap::new();
            for p in job {
                all |= p.ids().map_err(|e| unreadable(p, e))?;
            }
            let tenant = Tenant::new(&meta.tenant)?;
            let order = self.part_order(&tenant, all.iter());
            let mut i = 0;
            while i < order.len() {
                // Take series until the chunk holds enough rows.
                let mut rows = 0u64;
                let mut hi = i;
                while hi < order.len() && (rows < COMPACTION_CHUNK_ROWS || hi == i) {
                    rows += runs.iter().filter_map(|r| r.get(&order[hi])).map(|r| r.rows).sum::<u64>();
                    hi += 1;
                }
                // Read each part's runs of the chunk, in file order; note where each series landed.
                let mut data = Vec::with_capacity(job.len());
                for (k, p) in job.iter().enumerate() {
                    let mut chunk: Vec<part::Run> =
                        order[i..hi].iter().filter_map(|id| runs[k].get(id)).copied().collect();
                    chunk.sort_unstable_by_key(|r| r.first_row);
                    let (t, v) = p.read_runs(&chunk).map_err(|e| unreadable(p, e))?;
                    let mut at: HashMap<u32, (usize, usize)> = HashMap::with_capacity(chunk.len());
                    let mut off = 0;
                    for r in &chunk {
                        at.insert(r.id, (off, r.rows as usize));
                        off += r.rows as usize;
                    }
                    data.push((at, t, v));
                }
                for &id in &order[i..hi] {
                    let mut t: Vec<i64> = Vec::new();
                    let mut v: Vec<f64> = Vec::new();
                    for (at, pt, pv) in &data {
                        if let Some(&(o, n)) = at.get(&id) {
                            t.extend_from_slice(&pt[o..o + n]);
                            v.extend_from_slice(&pv[o..o + n]);
                        }
                    }
                    if let Some(drop) = drop {
                        let keep: Vec<usize> = (0..t.len()).filter(|&i| !drop(id, t[i])).collect();
                        if keep.len() < t.len() {
                            t = keep.iter().map(|&i| t[i]).collect();
                            v = keep.iter().map(|&i| v[i]).collect();
                        }
                        if t.is_empty() {
                            continue;
                        }
                    }
                    if t.windows(2).all(|w| w[0] < w[1]) {
                        writer.push_series(id, &t, &v)?;
                    } else {
                        let (t, v) = sort_dedup(&t, &v);
                        writer.push_series(id, &t, &v)?;
                    }
                }
                i = hi;
            }
            Ok::<_, Error>(())
        })();
        match res {
            Ok(()) => writer.finish(dir),
            Err(e) => {
                writer.abort();
                Err(e)
            }
        }
    }

    /// Deletes whole days past the retention period. Returns the parts deleted.
    ///
    /// # Errors
    /// I/O errors writing the manifest.
    pub async fn apply_retention(&self) -> Result<usize> {
        let now = crate::time::now_ns();
        let doomed = crate::delete::past_period(
            &self.inner.options,
            now,
            self.inner
                .state
                .read()
                .parts
                .iter()
                .map(|p| (p.meta.id, p.meta.tenant.as_str(), p.meta.day))
                .collect::<Vec<_>>()
                .into_iter(),
        );
        let mut n = 0;
        if !doomed.is_empty() {
            n = self.delete_parts(&doomed, "retention period").await?.0;
            tracing::info!(parts = n, "retention deleted metric parts");
        }
        let expired = {
            let inner = &self.inner;
            let _guard = inner.maintenance_lock.lock().await;
            let mut manifest = inner.manifest.lock();
            let mut next = manifest.clone();
            let expired = crate::manifest::expire_quarantined(&mut next.quarantined, &inner.options, now);
            if !expired.is_empty() {
                store_json(&inner.root, "manifest.json", "metric manifest", &next)?;
                *manifest = next;
            }
            expired
        };
        crate::manifest::remove_quarantined_files(&expired, &self.inner.data_dir);
        Ok(n + expired.len() + crate::delete::apply_rules(self, now).await?)
    }

    /// Records a delete request (`delete_series`) durably; from now on no select returns the samples it
    /// covers, and its rewrite removes them from disk after `store.delete_cancel_period`.
    ///
    /// # Errors
    /// [`Error::Config`] for a request that cannot work; I/O errors.
    pub fn request_delete(
        &self,
        tenant: &Tenant,
        spec: crate::delete::DeleteSpec,
    ) -> Result<crate::delete::DeleteRequest> {
        self.inner.read_only.check()?;
        let req = self.inner.deletes.add(tenant, spec)?;
        self.inner.changes.lock().everything();
        tracing::info!(tenant = %tenant, id = %req.id, query = %req.spec.query, "series delete requested; its samples are hidden now");
        Ok(req)
    }

    /// The tenant's delete requests still hiding data, as given: an ingest node sends them with its
    /// answers to query nodes (issue 22).
    pub fn pending_deletes(&self, tenant: &Tenant) -> Vec<crate::delete::DeleteSpec> {
        self.inner.deletes.pending(tenant)
    }

    /// On a query node: applies the ingest node's pending delete requests of the tenant to this node's
    /// reads until the next answer replaces them (see [`Self::pending_deletes`]).
    pub fn adopt_peer_deletes(&self, tenant: &Tenant, specs: &[crate::delete::DeleteSpec]) {
        self.inner.deletes.adopt_peer(tenant, specs);
    }

    /// The tenant's delete requests.
    pub fn delete_requests(&self, tenant: &Tenant) -> Vec<crate::delete::DeleteRequest> {
        self.inner.deletes.list(tenant)
    }

    /// Withdraws a delete request that has not been processed.
    ///
    /// # Errors
    /// I/O errors writing the request list.
    pub fn cancel_delete(&self, tenant: &Tenant, id: &str) -> Result<crate::delete::Cancel> {
        self.inner.read_only.check()?;
        let cancel = self.inner.deletes.cancel(tenant, id);
        self.inner.changes.lock().everything();
        cancel
    }

    /// Each pending delete of the tenant as (series ids, first ms, last ms).
    fn delete_masks(&self, tenant: &Tenant) -> Vec<(RoaringBitmap, i64, i64)> {
        let active = self.inner.deletes.active(tenant);
        if active.is_empty() {
            return Vec::new();
        }
        let Some(series) = self.inner.catalog.get(tenant) else { return Vec::new() };
        let s = series.read();
        active
            .iter()
            .map(|a| {
                let ids = a.matchers.iter().fold(RoaringBitmap::new(), |acc, m| acc | s.matching(m));
                (ids, a.start_ns.div_euclid(1_000_000), a.end_ns.div_euclid(1_000_000))
            })
            .collect()
    }

    /// Rewrites the parts holding samples of delete requests past `store.delete_cancel_period`, without
    /// them, then marks the requests processed (see [`crate::delete`]). Returns the parts rewritten.
    ///
    /// # Errors
    /// I/O errors; a request stays `received` and is retried at the next maintenance.
    pub async fn process_deletes(&self) -> Result<usize> {
        let n = crate::delete::process(self).await?;
        if n > 0 {
            self.update_gauges();
        }
        Ok(n)
    }

    fn rewrite_parts_for(&self, req: &crate::delete::DeleteRequest) -> Result<(usize, u64)> {
        let inner = &self.inner;
        let tenant = Tenant::new(&req.tenant)?;
        let active = req.spec.compile()?;
        let Some(series) = inner.catalog.get(&tenant) else { return Ok((0, 0)) };
        let ids = {
            let s = series.read();
            active.matchers.iter().fold(RoaringBitmap::new(), |acc, m| acc | s.matching(m))
        };
        let (a, b) = (active.start_ns.div_euclid(1_000_000), active.end_ns.div_euclid(1_000_000));
        let parts: Vec<Arc<MetricPart>> = inner
            .state
            .read()
            .parts
            .iter()
            .filter(|p| p.meta.tenant == tenant.as_str() && !p.is_unreadable())
            .filter(|p| p.meta.max_time >= a && p.meta.min_time <= b)
            .cloned()
            .collect();
        let (mut n, mut removed) = (0, 0u64);
        for part in parts {
            let holds = part.ids()? & &ids;
            let touched =
                !holds.is_empty() && part.runs()?.iter().any(|r| holds.contains(r.id) && r.max_t >= a && r.min_t <= b);
            if !touched {
                continue;
            }
            let drop_sample = |id: u32, t: i64| ids.contains(id) && t >= a && t <= b;
            let output = self.merge_filtered(
                std::slice::from_ref(&part),
                self.new_meta(&part.meta.tenant, part.meta.day, part.meta.level),
                Some(&drop_sample),
            )?;
            let mut manifest = inner.manifest.lock();
            let mut st = inner.state.write();
            if !st.parts.iter().any(|q| Arc::ptr_eq(q, &part)) {
                output.mark_obsolete();
                continue;
            }
            let mut next = manifest.clone();
            next.parts.retain(|m| m.id != part.meta.id);
            if output.meta.rows > 0 {
                next.parts.push(output.meta.clone());
            }
            if let Err(e) = store_json(&inner.root, "manifest.json", "metric manifest", &next) {
                output.mark_obsolete();
                return Err(e);
            }
            *manifest = next;
            st.parts.retain(|q| !Arc::ptr_eq(q, &part));
            if output.meta.rows > 0 {
                st.parts.push(output.clone());
            } else {
                output.mark_obsolete();
            }
            part.mark_obsolete();
            removed += part.meta.rows - output.meta.rows;
            n += 1;
        }
        Ok((n, removed))
    }

    /// Holds off flushes, compactions and deletions (not appends) while the guards live: a snapshot.
    pub(crate) async fn quiesce(&self) -> (tokio::sync::MutexGuard<'_, ()>, tokio::sync::MutexGuard<'_, ()>) {
        let flush = self.inner.flush_lock.lock().await;
        (flush, self.inner.maintenance_lock.lock().await)
    }

    /// The parts on the local disk as the disk budget weighs them (times in nanoseconds, as the log
    /// store's; a part in the object store only takes no local space).
    pub(crate) fn budget_parts(&self) -> Vec<crate::disk::BudgetPart> {
        let st = self.inner.state.read();
        st.parts
            .iter()
            .filter(|p| !p.remote.in_bucket() || p.path.exists())
            .map(|p| crate::disk::BudgetPart {
                id: p.meta.id,
                day: p.meta.day,
                min_time_ns: p.meta.min_time.saturating_mul(1_000_000),
                bytes: p.meta.bytes,
            })
            .collect()
    }

    /// Takes the parts named by `ids` out of the manifest (the commit point), then deletes their files.
    /// Returns the parts and bytes deleted.
    ///
    /// # Errors
    /// I/O errors writing the manifest; then nothing is deleted.
    pub(crate) async fn delete_parts(&self, ids: &HashSet<u64>, why: &'static str) -> Result<(usize, u64)> {
        let _guard = self.inner.maintenance_lock.lock().await;
        let inner = &self.inner;
        let mut manifest = inner.manifest.lock();
        let mut st = inner.state.write();
        if !st.parts.iter().any(|p| ids.contains(&p.meta.id)) {
            return Ok((0, 0));
        }
        let mut next = manifest.clone();
        next.parts.retain(|m| !ids.contains(&m.id));
        store_json(&inner.root, "manifest.json", "metric manifest", &next)?;
        *manifest = next;
        let mut dirs = BTreeSet::new();
        let (mut n, mut bytes) = (0, 0);
        st.parts.retain(|p| {
            if ids.contains(&p.meta.id) {
                p.mark_obsolete();
                dirs.insert(inner.data_dir.join(p.meta.partition_dir()));
                n += 1;
                bytes += p.meta.bytes;
                false
            } else {
                true
            }
        });
        drop(st);
        drop(manifest);
        inner.changes.lock().everything();
        for d in dirs {
            let _ = fs::remove_dir(&d);
        }
        inner.metrics.retention_deleted_parts.inc_by(n as u64);
        tracing::debug!(parts = n, bytes, why, "deleted metric parts");
        self.update_gauges();
        Ok((n, bytes))
    }

    /// Flushes by size and age, compacts and applies retention until `shutdown`, then flushes the head
    /// and stops the write-ahead log.
    ///
    /// # Errors
    /// The final flush's error; errors on the way are logged and retried.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        crate::background::run(self, shutdown).await
    }
}

crate::background::maintained!(MetricStore, "metric");

impl crate::delete::Rewritable for MetricStore {
    const KIND: &'static str = "metric";

    fn deletes(&self) -> &crate::delete::Deletes {
        &self.inner.deletes
    }

    fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    fn maintenance_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.maintenance_lock
    }

    fn rewrite_for_delete(&self, req: &crate::delete::DeleteRequest) -> Result<(usize, u64)> {
        self.rewrite_parts_for(req)
    }

    fn flush(&self) -> impl std::future::Future<Output = Result<()>> + Send {
        MetricStore::flush(self)
    }
}

/// What to merge of one day's parts. A finished day becomes one part (a lone flushed part is rewritten
/// at the compaction zstd level). Today's parts merge by tiers: `min_parts` parts of one level become one
/// part of the next, so a steady trickle of small flushes costs each sample a few rewrites a day rather
/// than one per compaction round.
fn compaction_job(parts: Vec<Arc<MetricPart>>, finished: bool, min_parts: usize) -> Option<Vec<Arc<MetricPart>>> {
    if finished {
        return (parts.len() > 1 || parts[0].meta.level == 0).then_some(parts);
    }
    let mut by_level: std::collections::BTreeMap<u32, Vec<Arc<MetricPart>>> = Default::default();
    for p in parts {
        by_level.entry(p.meta.level).or_default().push(p);
    }
    by_level.into_values().find(|tier| tier.len() >= min_parts)
}

/// What [`open_parts`] found.
struct OpenedParts {
    parts: Vec<Arc<MetricPart>>,
    /// The manifest changed (parts set aside, quarantine entries forgotten).
    changed: bool,
    /// A part the manifest names is missing.
    missing: bool,
    /// The highest series id in each tenant's parts.
    max_ids: HashMap<Tenant, u32>,
}

/// Opens the parts the manifest lists (see [`MetricPart::open_checked`]), as the log store does: a
/// damaged or missing one moves to the manifest's `quarantined` list, its file set aside.
fn open_parts(data_dir: &Path, manifest: &mut MetricManifest, quarantine: &Quarantine) -> Result<OpenedParts> {
    let mut out = OpenedParts { parts: Vec::new(), changed: false, missing: false, max_ids: HashMap::new() };
    let mut kept = Vec::with_capacity(manifest.parts.len());
    for meta in std::mem::take(&mut manifest.parts) {
        let (reason, missing) = match MetricPart::open_checked(data_dir, meta.clone())? {
            MetricOpened::Good(part, max_id) => {
                if let (Some(max), Ok(tenant)) = (max_id, Tenant::new(&meta.tenant)) {
                    let e = out.max_ids.entry(tenant).or_insert(max);
                    *e = (*e).max(max);
                }
                kept.push(meta);
                out.parts.push(Arc::from(part));
                continue;
            }
            MetricOpened::Damaged(reason) => (reason, false),
            MetricOpened::Missing(reason) => (reason, true),
        };
        let path = meta.path(data_dir);
        let why = format!("metric part of {} samples: {reason}", meta.rows);
        let file = if missing { quarantine.note_missing(&path, &why)? } else { quarantine.set_aside(&path, &why)? };
        out.missing |= missing;
        manifest.quarantined.push(QuarantinedPart {
            tenant: meta.tenant.clone(),
            min_time_ns: meta.min_time.saturating_mul(1_000_000),
            max_time_ns: meta.max_time.saturating_mul(1_000_000),
            rows: meta.rows,
            files: vec![quarantine.relative(&file)],
            reason,
        });
        out.changed = true;
    }
    manifest.parts = kept;
    let before = manifest.quarantined.len();
    manifest.quarantined.retain(|q| q.still_there(data_dir));
    out.changed |= manifest.quarantined.len() != before;
    Ok(out)
}

/// Logs at ERROR the series that replayed samples use but whose labels are known nowhere: their labels
/// were in a WAL record lost in a gap (or a catalog record lost). Their samples are kept, unreachable by
/// selectors; their ids are never given to another series.
fn report_unnamed_series(catalog: &SeriesCatalog, head: &MetricHead) {
    for (tenant, th) in &head.tenants {
        let Some(series) = catalog.get(tenant) else {
            continue;
        };
        let series = series.read();
        let unnamed: Vec<usize> = th
            .series
            .iter()
            .enumerate()
            .filter(|(id, b)| !b.t.is_empty() && series.labels(*id as u32).is_none())
            .map(|(id, _)| id)
            .collect();
        if let Some(first) = unnamed.first() {
            tracing::error!(
                %tenant,
                series = unnamed.len(),
                first_id = first,
                "replayed samples belong to series whose labels are lost (a damaged write-ahead log?); they cannot be selected"
            );
        }
    }
}

/// Deletes part files the manifest does not list: leftovers of a flush or compaction that crashed
/// before its commit. With `set_aside`, they go into the quarantine instead.
fn remove_unlisted_parts(data_dir: &Path, manifest: &MetricManifest, set_aside: Option<&Quarantine>) -> Result<()> {
    let listed: HashSet<PathBuf> = manifest
        .parts
        .iter()
        .flat_map(|m| {
            let path = m.path(data_dir);
            [crate::remote::sidecar_path(&path), path]
        })
        .collect();
    for (_, path) in crate::manifest::part_files(&data_dir.join("metrics")) {
        if listed.contains(&path) {
            continue;
        }
        match set_aside {
            Some(q) => {
                q.set_aside(
                    &path,
                    "part file the manifest does not name, while the manifest looks older than the data",
                )?;
            }
            None => {
                tracing::info!(file = %path.display(), "removing metric part of an unfinished flush");
                fs::remove_file(&path).map_err(Error::io("remove", &path))?;
            }
        }
        if let Some(day) = path.parent() {
            let _ = fs::remove_dir(day);
        }
    }
    Ok(())
}

/// The tenant's parts with samples in `[mint, maxt]` that `filter` admits, leaving out the unreadable
/// ones (`skipped_parts` names them).
fn readable_parts<'a>(
    parts: &'a [Arc<MetricPart>],
    tenant: &'a Tenant,
    mint: i64,
    maxt: i64,
    filter: &'a PartFilter,
) -> impl Iterator<Item = &'a Arc<MetricPart>> {
    parts.iter().filter(move |p| {
        p.meta.tenant == tenant.as_str()
            && p.meta.max_time >= mint
            && p.meta.min_time <= maxt
            && !p.is_unreadable()
            && filter.admits(p.meta.id)
    })
}

/// Sorted times and values of one series.
type Samples = (ScalarBuffer<i64>, ScalarBuffer<f64>);

/// A head's samples of the series `ids` of `tenant` within `[mint, maxt]`, by series id.
fn head_pieces(head: &MetricHead, tenant: &Tenant, ids: &RoaringBitmap, mint: i64, maxt: i64) -> Vec<(u32, Samples)> {
    let Some(th) = head.tenants.get(tenant) else {
        return Vec::new();
    };
    if th.max_t < mint || th.min_t > maxt {
        return Vec::new();
    }
    let mut out = Vec::new();
    for id in ids {
        let Some(buf) = th.series.get(id as usize).filter(|b| !b.t.is_empty()) else {
            continue;
        };
        let (t, v) = buf.sorted();
        let (t, v) = (ScalarBuffer::from(t), ScalarBuffer::from(v));
        let a = t.partition_point(|&x| x < mint);
        let b = t.partition_point(|&x| x <= maxt);
        if a < b {
            out.push((id, (t.slice(a, b - a), v.slice(a, b - a))));
        }
    }
    out
}

/// Which of the series `ids` of `tenant` have a sample in `[start, end]` in a head.
fn head_hits(head: &MetricHead, tenant: &Tenant, ids: &RoaringBitmap, start: i64, end: i64) -> RoaringBitmap {
    let mut hits = RoaringBitmap::new();
    if let Some(th) = head.tenants.get(tenant) {
        for id in ids {
            if th.series.get(id as usize).is_some_and(|b| b.t.iter().any(|&t| t >= start && t <= end)) {
                hits.insert(id);
            }
        }
    }
    hits
}

#[cfg(test)]
mod tests;
