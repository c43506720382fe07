//! [`LogStore`]: the engine that ties the write-ahead log, the head, the parts and the catalog together.
//!
//! Write path: a request's batch is registered in the catalog, encoded for the WAL and converted to
//! Arrow on the caller's task; the WAL thread writes and syncs it with whatever else is pending, then
//! appends it to the active memtable and acknowledges, in sequence order.
//!
//! Flush: the WAL thread swaps the active memtable for an empty one at a segment boundary (so the frozen
//! memtables hold exactly the records up to that sequence number); the frozen memtables are written as
//! parts, the new streams appended to the catalog, and one manifest write adds the parts and moves the
//! WAL checkpoint. Only then are the memtables dropped and the old WAL segments deleted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::interleave;
use arrow::datatypes::{Schema, SchemaRef, TimestampNanosecondType, UInt64Type};
use arrow::record_batch::RecordBatch;
use parking_lot::{Mutex, RwLock};
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::codec;
use crate::config::StoreOptions;
use crate::error::{Error, Result};
use crate::head::{self, MemTable, label_column, table_schema};
use crate::head::{MESSAGE, STREAM_ID, TIME};
use crate::manifest::QuarantinedPart;
use crate::manifest::{Manifest, PartMeta, TimeUnitTag};
use crate::marks::{DeliveryMark, Marks};
use crate::metrics::StoreMetrics;
use crate::model::{Labels, LogBatch, Tenant};
use crate::part::{Opened, Part, PartWriter, WriteOptions};
use crate::quarantine::{Quarantine, SkippedPart};
use crate::scan::{LabelMatcher, PartFilter, PartSlice, Scan, ScanPlan, ScanRequest, ScanTask, conform};
use crate::time::{day_of_ns, now_ns};
use crate::wal::{Replayed, Wal};

/// A handle to the log store; cheap to clone.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("data_dir", &self.inner.options.data_dir).finish_non_exhaustive()
    }
}

struct State {
    parts: Vec<Arc<Part>>,
    frozen: Vec<Arc<MemTable>>,
}

struct Inner {
    options: StoreOptions,
    metrics: Arc<StoreMetrics>,
    catalog: Catalog,
    wal: Wal,
    active: Arc<Mutex<MemTable>>,
    state: RwLock<State>,
    manifest: Mutex<Manifest>,
    /// Serialises flushes (and their manifest commits) with one another.
    flush_lock: tokio::sync::Mutex<()>,
    /// Serialises compactions and retention with one another.
    maintenance_lock: tokio::sync::Mutex<()>,
    flush_wanted: Arc<Notify>,
    flushed: Notify,
    /// The highest stored batch sequence of each producer, by (tenant, producer).
    producers: Arc<Mutex<HashMap<ProducerKey, u64>>>,
    /// One lock per producer, so that a batch and its retry are never checked at once.
    producer_locks: Mutex<HashMap<ProducerKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Stored MQTT deliveries, for recognising redeliveries.
    marks: Arc<Mutex<Marks>>,
    /// Delete requests: they hide rows from scans until their rewrite ran.
    deletes: crate::delete::Deletes,
    /// Where parts evicted from the local disk are fetched from (see [`crate::remote`]).
    remote: std::sync::OnceLock<Arc<dyn crate::remote::RemoteParts>>,
    /// Set on a query node: why writes are refused (see `set_read_only`).
    read_only: crate::error::ReadOnly,
    /// Answers of reads of parts (`store.scan_cache_max_bytes`).
    scan_cache: Arc<crate::scan::ScanCache>,
    /// Parts' pages kept decoded (`store.log_page_cache_max_bytes`).
    page_cache: Arc<crate::page_cache::PageCache>,
    _lock: File,
}

/// (tenant, producer name).
type ProducerKey = (String, String);

/// What [`LogStore::append_once`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The batch is stored (durably, as by [`LogStore::append`]).
    Stored,
    /// A batch with this or a later sequence of the producer was stored before: nothing was written.
    Duplicate {
        /// The producer's highest stored sequence.
        stored: u64,
    },
}

/// Figures about the store, for tests, benchmarks and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub parts: usize,
    pub part_rows: u64,
    pub disk_bytes: u64,
    pub head_rows: usize,
    pub head_bytes: usize,
}

impl LogStore {
    /// Whether this store is closed: every handle on it dropped, its data directory unlocked. For a
    /// caller that stops the store and must wait until another may open the directory.
    pub fn closed_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let weak = Arc::downgrade(&self.inner);
        move || weak.strong_count() == 0
    }

    /// Opens (or creates) the store in `options.data_dir`: takes the directory lock, loads the manifest
    /// and catalog, deletes files of unfinished flushes, and replays the write-ahead log into the head.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process holds the directory; I/O and corruption errors otherwise.
    pub fn open(options: StoreOptions, registry: &mut Registry) -> Result<LogStore> {
        options.tuning.validate().map_err(Error::Config)?;
        let dir = options.data_dir.clone();
        fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        let lock = lock_dir(&dir)?;
        crate::format::check_and_stamp(&dir)?;
        let metrics = StoreMetrics::register(registry);
        let quarantine = Quarantine::new(&dir, metrics.clone());
        let mut manifest = Manifest::load(&dir)?;
        // Never a number a part file on disk already has, whatever the manifest says.
        manifest.next_part_id = manifest.next_part_id.max(crate::manifest::next_free_part_id(&dir, "logs"));
        let (catalog, label_files) = Catalog::load(&dir, &quarantine)?;
        let write_options = write_options(&options.tuning, 0);
        let (parts, changed, missing) = open_parts(&dir, &mut manifest, &write_options, &quarantine)?;
        if changed {
            manifest.store(&dir)?;
        }
        // Unlisted part files are leftovers of an unfinished flush or compaction, unless the manifest is
        // older than the data (restored from a backup): then parts it names are missing, or the WAL was
        // truncated past its checkpoint, and those files are set aside instead of deleted.
        let doubtful = missing || crate::wal::starts_after(&dir.join("wal"), manifest.wal_checkpoint);
        remove_unlisted_files(&dir, &manifest, doubtful.then_some(&quarantine))?;
        let active = Arc::new(Mutex::new(MemTable::default()));
        let mut replayed = 0usize;
        let producers: Arc<Mutex<HashMap<(String, String), u64>>> =
            Arc::new(Mutex::new(manifest.producers.iter().map(|(t, p, seq)| ((t.clone(), p.clone()), *seq)).collect()));
        let marks = match Marks::load(&dir) {
            Ok(m) => m,
            // The marks only recognise MQTT redeliveries: without them a redelivered message may be stored
            // twice, never lost. Set the damaged file aside and go on (the WAL replay below restores the
            // marks of records past the checkpoint).
            Err(Error::Corrupt { path, reason, .. }) => {
                quarantine.set_aside(
                    &path,
                    &format!("delivery marks {reason}; MQTT messages redelivered after this start may be stored twice"),
                )?;
                Marks::default()
            }
            Err(e) => return Err(e),
        };
        let marks = Arc::new(Mutex::new(marks));
        let wal = {
            let active = active.clone();
            let producers = producers.clone();
            let marks = marks.clone();
            let catalog = &catalog;
            Wal::open(
                &dir.join("wal"),
                manifest.wal_checkpoint,
                options.tuning.wal_segment_size.as_u64(),
                metrics.clone(),
                &quarantine,
                |r| {
                    let (tenant, batch, meta) =
                        codec::decode(&r.payload).map_err(|reason| undecodable_record(&r, &reason))?;
                    catalog.register(&tenant, &batch.streams);
                    if let Some((name, seq)) = meta.producer {
                        let mut p = producers.lock();
                        let e = p.entry((tenant.as_str().to_string(), name)).or_insert(0);
                        *e = (*e).max(seq);
                    }
                    if !meta.marks.is_empty() {
                        let mut m = marks.lock();
                        for mark in &meta.marks {
                            m.insert(mark);
                        }
                    }
                    let rb = head::to_record_batch(&batch)?;
                    replayed += batch.entries.len();
                    active.lock().insert(&tenant, rb, r.seq);
                    Ok(())
                },
            )?
        };
        catalog.check_parts(&label_files, &parts)?;
        let deletes = crate::delete::Deletes::load(&dir)?;
        tracing::info!(
            data_dir = %dir.display(),
            parts = parts.len(),
            replayed_entries = replayed,
            checkpoint = manifest.wal_checkpoint,
            "log store opened"
        );
        let store = LogStore {
            inner: Arc::new(Inner {
                scan_cache: Arc::new(crate::scan::ScanCache::new(
                    usize::try_from(options.tuning.scan_cache_max_bytes.as_u64()).unwrap_or(usize::MAX),
                )),
                page_cache: Arc::new(crate::page_cache::PageCache::new(
                    usize::try_from(options.tuning.log_page_cache_max_bytes.as_u64()).unwrap_or(usize::MAX),
                )),
                options,
                metrics,
                catalog,
                wal,
                active,
                state: RwLock::new(State { parts, frozen: Vec::new() }),
                manifest: Mutex::new(manifest),
                flush_lock: tokio::sync::Mutex::new(()),
                maintenance_lock: tokio::sync::Mutex::new(()),
                flush_wanted: Arc::new(Notify::new()),
                flushed: Notify::new(),
                producers,
                producer_locks: Mutex::new(HashMap::new()),
                marks,
                deletes,
                remote: std::sync::OnceLock::new(),
                read_only: crate::error::ReadOnly::default(),
                _lock: lock,
            }),
        };
        store.update_gauges();
        Ok(store)
    }

    /// Records a delete request durably; from now on no read returns what it covers, and its rewrite
    /// removes that from disk once `store.delete_cancel_period` has passed (see [`crate::delete`]).
    ///
    /// # Errors
    /// [`Error::Config`] for a request that cannot work (the message is for a 400); I/O errors.
    pub fn request_delete(
        &self,
        tenant: &Tenant,
        spec: crate::delete::DeleteSpec,
    ) -> Result<crate::delete::DeleteRequest> {
        self.inner.read_only.check()?;
        let req = self.inner.deletes.add(tenant, spec)?;
        tracing::info!(tenant = %tenant, id = %req.id, query = %req.spec.query, "delete requested; the rows it covers are hidden now");
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

    /// The tenant's delete requests, received and processed.
    pub fn delete_requests(&self, tenant: &Tenant) -> Vec<crate::delete::DeleteRequest> {
        self.inner.deletes.list(tenant)
    }

    /// Withdraws a delete request that has not been processed.
    ///
    /// # Errors
    /// I/O errors writing the request list.
    pub fn cancel_delete(&self, tenant: &Tenant, id: &str) -> Result<crate::delete::Cancel> {
        self.inner.read_only.check()?;
        self.inner.deletes.cancel(tenant, id)
    }

    /// Rewrites the parts holding rows of delete requests past `store.delete_cancel_period`, without
    /// those rows, then marks the requests processed (see [`crate::delete`]). Returns the parts rewritten.
    ///
    /// # Errors
    /// I/O errors; a request stays `received` and its rewrite runs again at the next maintenance.
    pub async fn process_deletes(&self) -> Result<usize> {
        let n = crate::delete::process(self).await?;
        if n > 0 {
            self.update_gauges();
        }
        Ok(n)
    }

    /// Rewrites, one at a time, the tenant's parts that hold rows `req` covers. Returns (parts
    /// rewritten, rows removed).
    fn rewrite_parts_for(&self, req: &crate::delete::DeleteRequest) -> Result<(usize, u64)> {
        let inner = &self.inner;
        let tenant = Tenant::new(&req.tenant)?;
        let active = Arc::new(req.spec.compile()?);
        let mut streams: Option<HashSet<u64>> = Some(HashSet::new());
        for set in &active.matchers {
            match (inner.catalog.matching(&tenant, set), &mut streams) {
                (None, _) => streams = None,
                (Some(ids), Some(all)) => all.extend(ids),
                (Some(_), None) => {}
            }
        }
        let mask = crate::scan::DeleteMask { streams: streams.clone(), active: active.clone() };
        let parts: Vec<Arc<Part>> = inner
            .state
            .read()
            .parts
            .iter()
            .filter(|p| p.meta.tenant == tenant.as_str() && !p.is_unreadable())
            .filter(|p| {
                p.streams.iter().any(|s| {
                    streams.as_ref().is_none_or(|set| set.contains(&s.id))
                        && s.max_time >= active.start_ns
                        && s.min_time <= active.end_ns
                })
            })
            .cloned()
            .collect();
        let (mut n, mut removed) = (0, 0u64);
        for part in parts {
            let meta = PartMeta {
                id: self.next_part_id(),
                tenant: part.meta.tenant.clone(),
                day: part.meta.day,
                min_time: 0,
                max_time: 0,
                rows: 0,
                parquet_bytes: 0,
                index_bytes: 0,
                labels: Vec::new(),
                fields: Vec::new(),
                shared_fields: Vec::new(),
                level: part.meta.level,
                time_unit: part.meta.time_unit,
            };
            let drop_row = |id: u64, t: i64, line: &str| mask.covers(id, t, || Some(line.to_string()));
            let output = crate::compact::merge_filtered(
                std::slice::from_ref(&part),
                &inner.options.data_dir,
                meta,
                self.write_options(part.meta.level),
                inner.options.tuning.row_group_rows,
                &inner.metrics,
                Some(&drop_row),
            )?;
            let gone = part.meta.rows - output.meta.rows;
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
            if let Err(e) = next.store(&inner.options.data_dir) {
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
            n += 1;
            removed += gone;
        }
        Ok((n, removed))
    }

    /// The streams each of the tenant's pending deletes covers (`None`: every stream), for a scan.
    pub(crate) fn delete_masks(&self, tenant: &Tenant) -> Vec<crate::scan::DeleteMask> {
        self.inner
            .deletes
            .active(tenant)
            .into_iter()
            .map(|a| {
                let mut streams: Option<HashSet<u64>> = Some(HashSet::new());
                for set in &a.matchers {
                    match (self.inner.catalog.matching(tenant, set), &mut streams) {
                        (None, _) => streams = None,
                        (Some(ids), Some(all)) => all.extend(ids),
                        (Some(_), None) => {}
                    }
                }
                crate::scan::DeleteMask { streams, active: a }
            })
            .collect()
    }

    /// The data directory.
    pub fn data_dir_path(&self) -> PathBuf {
        self.inner.options.data_dir.clone()
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

    /// Follows the data directory as another process writes it (a query node, issue 22: `bucket::follow`
    /// brings the writer's newest commit into it): reads the stream catalogs, the delete requests and the
    /// manifest again, opens the parts it names that are new, and drops those it no longer names (their
    /// local files go once the last read lets go). Writes neither the manifest nor the WAL. Returns the
    /// parts opened and dropped.
    ///
    /// # Errors
    /// A manifest or catalog that cannot be read; the store keeps what it had.
    pub fn refresh(&self) -> Result<(usize, usize)> {
        let inner = &self.inner;
        let dir = &inner.options.data_dir;
        let quarantine = Quarantine::new(dir, inner.metrics.clone());
        // The catalog first: the parts the new manifest names use streams it holds.
        inner.catalog.load_files(&quarantine)?;
        inner.deletes.reload()?;
        let manifest = Manifest::load(dir)?;
        let options = write_options(&inner.options.tuning, 0);
        let current = inner.state.read().parts.clone();
        let (parts, opened, dropped) = crate::remote::follow_parts(
            &current,
            &manifest.parts,
            |p| p.meta.id,
            |m| m.id,
            |meta| {
                Ok(match Part::open(dir, meta.clone(), &options, &quarantine)? {
                    Opened::Good(p) | Opened::Rebuilt(p) => {
                        if let Some(source) = inner.remote.get() {
                            p.remote.attach(source);
                        }
                        Some(*p)
                    }
                    Opened::Damaged(reason) | Opened::Missing(reason) => {
                        tracing::warn!(part = meta.id, %reason, "a part the followed manifest names cannot be opened; left out");
                        None
                    }
                })
            },
            Part::mark_obsolete,
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

    pub fn metrics(&self) -> &Arc<StoreMetrics> {
        &self.inner.metrics
    }

    /// Changes the bound of the cache of scan answers (`store.scan_cache_max_bytes` at the start): a
    /// query node shares it out among its trees' stores.
    pub fn set_scan_cache_max(&self, bytes: usize) {
        self.inner.scan_cache.set_max(bytes);
    }

    /// Empties the cache of scan answers (memory pressure).
    pub fn clear_scan_cache(&self) {
        self.inner.scan_cache.clear();
    }

    /// The cache of scan answers: (bytes held, hits, misses).
    pub fn scan_cache_stats(&self) -> (usize, u64, u64) {
        self.inner.scan_cache.stats()
    }

    /// Changes the bound of the cache of decoded pages (`store.log_page_cache_max_bytes` at the start): a
    /// query node shares it out among its trees' stores.
    pub fn set_page_cache_max(&self, bytes: usize) {
        self.inner.page_cache.set_max(bytes);
    }

    /// Empties the cache of decoded pages (memory pressure).
    pub fn clear_page_cache(&self) {
        self.inner.page_cache.clear();
    }

    /// The cache of decoded pages: (bytes held, hits, misses), a hit or miss per column of a span.
    pub fn page_cache_stats(&self) -> (usize, u64, u64) {
        self.inner.page_cache.stats()
    }

    /// Stores a tenant's batch durably. Resolves once it is in the fsynced write-ahead log and visible to
    /// scans; only then may the caller acknowledge its client. [`LogStore::run`] must be running: it
    /// flushes the head, and appends wait while the head holds more than three times `head_max_size`.
    ///
    /// # Cancel safety
    /// Dropping the future does not withdraw the batch: it may still be stored.
    pub async fn append(&self, tenant: &Tenant, batch: LogBatch) -> Result<()> {
        self.append_record(tenant, batch, None, Vec::new()).await
    }

    /// Stores a batch of MQTT messages with the marks of their deliveries, durably as by
    /// [`LogStore::append`]. Once it resolves, [`LogStore::is_delivered`] knows the marks, across restarts
    /// too. Callers store a message's other data (its samples) before its marks, so that a mark never
    /// stands for data that is not durable.
    ///
    /// # Errors
    /// As [`LogStore::append`]; on error no mark is recorded.
    pub async fn append_marked(&self, tenant: &Tenant, batch: LogBatch, marks: Vec<DeliveryMark>) -> Result<()> {
        self.append_record(tenant, batch, None, marks).await
    }

    /// The mark of a stored delivery (MQTT session, packet identifier, hash of topic and payload): its
    /// `needs` (the metric-store tag its samples were written under, `SampleTag::NONE` for none), or None when this
    /// delivery is not stored. The delivery is stored whole once that tag is durable in the metric store.
    pub fn delivered(&self, session: &str, pkid: u16, hash: u64) -> Option<crate::SampleTag> {
        self.inner.marks.lock().get(session, pkid, hash)
    }

    /// The highest epoch any mark's `needs` names, so that a new writer takes a later one.
    pub fn max_mark_epoch(&self) -> u64 {
        self.inner.marks.lock().max_epoch()
    }

    /// Stores batch number `seq` of `producer` exactly once: a batch whose sequence is at or below the
    /// producer's highest stored one is a resend and is not written again. The sequences are durable with
    /// the batches (in the WAL record, then in the manifest), so this holds across crashes. Producers send
    /// their batches in order, one at a time (as the agent does); a batch and a concurrent retry of it are
    /// serialised here.
    ///
    /// # Errors
    /// As [`LogStore::append`]; a failed append records nothing, so the retry is stored.
    pub async fn append_once(&self, tenant: &Tenant, batch: LogBatch, producer: &str, seq: u64) -> Result<Appended> {
        let key = (tenant.as_str().to_string(), producer.to_string());
        let lock = self.inner.producer_locks.lock().entry(key.clone()).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(&stored) = self.inner.producers.lock().get(&key)
            && stored >= seq
        {
            return Ok(Appended::Duplicate { stored });
        }
        self.append_record(tenant, batch, Some((producer, seq)), Vec::new()).await?;
        Ok(Appended::Stored)
    }

    /// The highest sequence of `producer` stored for `tenant` (0 for none), once an append of that producer
    /// under way has finished: what [`Self::append_once`] would compare a resend with.
    pub async fn stored_sequence(&self, tenant: &Tenant, producer: &str) -> u64 {
        let key = (tenant.as_str().to_string(), producer.to_string());
        let lock = self.inner.producer_locks.lock().get(&key).cloned();
        let _guard = match &lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        self.inner.producers.lock().get(&key).copied().unwrap_or(0)
    }

    async fn append_record(
        &self,
        tenant: &Tenant,
        batch: LogBatch,
        producer: Option<(&str, u64)>,
        marks: Vec<DeliveryMark>,
    ) -> Result<()> {
        self.inner.read_only.check()?;
        if batch.is_empty() && marks.is_empty() {
            if let Some((name, seq)) = producer {
                // Nothing to make durable; remembering the sequence in memory is enough to answer a resend.
                let mut p = self.inner.producers.lock();
                let e = p.entry((tenant.as_str().to_string(), name.to_string())).or_insert(0);
                *e = (*e).max(seq);
            }
            return Ok(());
        }
        let inner = &self.inner;
        if let Some(disk) = &inner.options.disk {
            disk.admit()?;
        }
        // Backpressure: while flushes fall behind, hold new writes instead of growing without bound.
        let limit = 3 * inner.options.tuning.head_max_size.as_u64() as usize;
        while self.head_bytes() > limit {
            if let Some(disk) = &inner.options.disk {
                disk.admit()?;
            }
            inner.flush_wanted.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(200), inner.flushed.notified()).await;
        }
        let limit = inner.options.tuning.max_streams_per_tenant;
        if limit > 0 {
            let (have, new) = inner.catalog.count_new(tenant, &batch.streams);
            if new > 0 && have + new > limit {
                return Err(Error::TooManyStreams { tenant: tenant.as_str().to_string(), have, new, limit });
            }
        }
        inner.catalog.register(tenant, &batch.streams);
        let payload = codec::encode(tenant, &batch, producer, &marks);
        let rb = head::to_record_batch(&batch)?;
        drop(batch);
        let active = inner.active.clone();
        let producers = inner.producers.clone();
        let marks_table = inner.marks.clone();
        let producer = producer.map(|(name, seq)| ((tenant.as_str().to_string(), name.to_string()), seq));
        let wanted = inner.flush_wanted.clone();
        let max = inner.options.tuning.head_max_size.as_u64() as usize;
        let tenant = tenant.clone();
        let res = inner
            .wal
            .append(
                payload,
                Box::new(move |seq| {
                    if let Some((key, batch_seq)) = producer {
                        let mut p = producers.lock();
                        let e = p.entry(key).or_insert(0);
                        *e = (*e).max(batch_seq);
                    }
                    if !marks.is_empty() {
                        let mut m = marks_table.lock();
                        for mark in &marks {
                            m.insert(mark);
                        }
                    }
                    if rb.num_rows() == 0 {
                        return;
                    }
                    let mut a = active.lock();
                    a.insert(&tenant, rb, seq);
                    if a.bytes >= max {
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
        st.frozen.iter().map(|m| m.bytes).sum::<usize>() + self.inner.active.lock().bytes
    }

    /// Asks the background loop ([`Self::run`]) to flush the head now, as a full head does; returns at
    /// once. The flush takes the usual path (WAL rotation, parts, manifest), so durability is unchanged:
    /// it only moves acknowledged data from memory to parts earlier. Used under memory pressure.
    pub fn request_flush(&self) {
        self.inner.flush_wanted.notify_one();
    }

    /// Writes everything in the head to parts now and truncates the write-ahead log.
    ///
    /// # Errors
    /// I/O errors writing parts or the manifest; the head keeps the data and a later flush retries.
    pub async fn flush(&self) -> Result<()> {
        let _guard = self.inner.flush_lock.lock().await;
        let inner = self.inner.clone();
        let rotated = inner.clone();
        let checkpoint = inner
            .wal
            .rotate(Box::new(move |_| {
                let mut st = rotated.state.write();
                let mut active = rotated.active.lock();
                if !active.is_empty() {
                    let full = std::mem::take(&mut *active);
                    st.frozen.push(Arc::new(full));
                }
            }))
            .await?;
        let frozen: Vec<Arc<MemTable>> = inner.state.read().frozen.clone();
        let this = self.clone();
        let res = tokio::task::spawn_blocking(move || this.persist(&frozen, checkpoint))
            .await
            .map_err(|e| Error::WalClosed { reason: format!("flush task failed: {e}") })?;
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

    /// Writes frozen memtables as parts and commits them with the new checkpoint.
    fn persist(&self, frozen: &[Arc<MemTable>], checkpoint: u64) -> Result<()> {
        let inner = &self.inner;
        let started = Instant::now();
        let mut new_parts: Vec<Arc<Part>> = Vec::new();
        let mut rows = 0;
        for mem in frozen {
            match self.write_memtable(mem) {
                Ok(parts) => new_parts.extend(parts),
                Err(e) => {
                    for p in &new_parts {
                        p.mark_obsolete();
                    }
                    return Err(e);
                }
            }
            rows += mem.rows;
        }
        inner.catalog.persist()?;
        // Marks of records past the checkpoint may be included: those records are durable too, and
        // replaying them again only re-inserts the same marks in the same order.
        inner.marks.lock().store(&inner.options.data_dir)?;
        {
            let mut manifest = inner.manifest.lock();
            let mut next = manifest.clone();
            next.parts.extend(new_parts.iter().map(|p| p.meta.clone()));
            next.wal_checkpoint = next.wal_checkpoint.max(checkpoint);
            // Sequences of records past the checkpoint may be included: those records are durable too.
            next.producers = inner.producers.lock().iter().map(|((t, p), seq)| (t.clone(), p.clone(), *seq)).collect();
            next.producers.sort();
            if let Err(e) = next.store(&inner.options.data_dir) {
                for p in &new_parts {
                    p.mark_obsolete();
                }
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
                rows,
                parts = new_parts.len(),
                checkpoint,
                wal_segments_removed = removed,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "flushed head"
            );
        }
        Ok(())
    }

    fn next_part_id(&self) -> u64 {
        let mut m = self.inner.manifest.lock();
        let id = m.next_part_id;
        m.next_part_id += 1;
        id
    }

    /// Writes one memtable as parts: one per tenant and day, rows sorted by stream then time.
    fn write_memtable(&self, mem: &MemTable) -> Result<Vec<Arc<Part>>> {
        let inner = &self.inner;
        let dir = &inner.options.data_dir;
        let rg_rows = inner.options.tuning.row_group_rows;
        let mut out = Vec::new();
        for (tenant, tm) in &mem.tenants {
            let streams = inner.catalog.tenant(tenant);
            let streams = streams.read();
            // The head schema (built-ins and fields) shared by all of this tenant's batches.
            let head_schema = table_schema([], tm.fields.iter());
            // The batches as appended, each with its own fields: a part's columns are gathered from the
            // batches its rows come from, so that wide, varied batches are never all widened to every
            // field of the head (that made batches × distinct fields arrays).
            let batches = &tm.batches;
            let head_index: HashMap<&str, usize> =
                head_schema.fields().iter().enumerate().map(|(i, f)| (f.name().as_str(), i)).collect();
            // Sort keys: (day, stream, time, batch, row).
            let mut keys: Vec<(i64, u64, i64, u32, u32)> = Vec::with_capacity(tm.rows);
            let mut present: HashSet<u64> = HashSet::new();
            for (b, batch) in batches.iter().enumerate() {
                let times = batch.column(0).as_primitive::<TimestampNanosecondType>();
                let ids = batch.column(1).as_primitive::<UInt64Type>();
                for r in 0..batch.num_rows() {
                    let (t, id) = (times.value(r), ids.value(r));
                    present.insert(id);
                    keys.push((day_of_ns(t), id, t, b as u32, r as u32));
                }
            }
            keys.sort_unstable();
            let mut label_names: BTreeSet<String> = BTreeSet::new();
            for id in &present {
                if let Some(l) = streams.labels(*id) {
                    label_names.extend(l.iter().map(|(n, _)| n.to_string()));
                }
            }
            let label_cols: Vec<String> = label_names.iter().map(|n| label_column(n)).collect();
            let col_map: HashMap<String, String> = label_names.iter().map(|n| (label_column(n), n.clone())).collect();
            let shared_fields: Vec<String> = tm.fields.iter().filter(|f| label_cols.contains(f)).cloned().collect();
            let max_cols = inner.options.tuning.max_field_columns.max(1);
            // Head columns (index into head_schema) of fields, by row, when a part would have more field
            // columns than `max_field_columns`: each Parquet column costs its writer tens of KiB, so a few
            // requests with many distinct field names must not make one part of 100,000 columns.
            let head_fields = head_schema.fields().len() - 3;
            let row_fields: Option<Vec<Vec<Vec<u32>>>> = (head_fields > max_cols).then(|| {
                batches
                    .iter()
                    .map(|b| {
                        let mut rows = vec![Vec::new(); b.num_rows()];
                        for (c, field) in b.schema().fields().iter().enumerate().skip(3) {
                            let col = b.column(c);
                            let Some(&hc) = head_index.get(field.name().as_str()) else { continue };
                            if col.null_count() == col.len() {
                                continue;
                            }
                            for (r, fields) in rows.iter_mut().enumerate() {
                                if col.is_valid(r) {
                                    fields.push(hc as u32);
                                }
                            }
                        }
                        rows
                    })
                    .collect()
            });

            let mut start = 0;
            while start < keys.len() {
                let day = keys[start].0;
                let day_end = start + keys[start..].iter().take_while(|k| k.0 == day).count();
                // The rows of this part: a run of the sorted keys whose fields fit `max_field_columns`.
                let (end, columns): (usize, Vec<usize>) = match &row_fields {
                    None => (day_end, (0..head_schema.fields().len()).collect()),
                    Some(row_fields) => {
                        let mut cols: BTreeSet<u32> = BTreeSet::new();
                        let mut end = start;
                        while end < day_end {
                            let k = keys[end];
                            let row = &row_fields[k.3 as usize][k.4 as usize];
                            let new = row.iter().filter(|c| !cols.contains(c)).count();
                            if end > start && cols.len() + new > max_cols {
                                break;
                            }
                            cols.extend(row.iter().copied());
                            end += 1;
                        }
                        (end, (0..3).chain(cols.into_iter().map(|c| c as usize)).collect())
                    }
                };
                let sub_schema: SchemaRef =
                    Arc::new(Schema::new(columns.iter().map(|&c| head_schema.field(c).clone()).collect::<Vec<_>>()));
                let fields: Vec<String> = sub_schema
                    .fields()
                    .iter()
                    .skip(3)
                    .map(|f| f.name().clone())
                    .filter(|f| !label_cols.contains(f))
                    .collect();
                let part_schema = table_schema(label_cols.iter(), fields.iter());
                // The batches these rows come from, renumbered, and each column of the part from each of
                // them (a batch without the field gives nulls).
                let mut refs: Vec<u32> = keys[start..end].iter().map(|k| k.3).collect();
                refs.sort_unstable();
                refs.dedup();
                let slot: HashMap<u32, usize> = refs.iter().enumerate().map(|(i, b)| (*b, i)).collect();
                let owned: Vec<Vec<ArrayRef>> = columns
                    .iter()
                    .map(|&c| {
                        let field = head_schema.field(c);
                        refs.iter()
                            .map(|&b| {
                                let batch = &batches[b as usize];
                                batch.column_by_name(field.name()).cloned().unwrap_or_else(|| {
                                    arrow::array::new_null_array(field.data_type(), batch.num_rows())
                                })
                            })
                            .collect()
                    })
                    .collect();
                let arrays: Vec<Vec<&dyn Array>> =
                    owned.iter().map(|per_batch| per_batch.iter().map(|a| a.as_ref()).collect()).collect();
                let meta = PartMeta {
                    id: self.next_part_id(),
                    tenant: tenant.as_str().to_string(),
                    day,
                    min_time: 0,
                    max_time: 0,
                    rows: 0,
                    parquet_bytes: 0,
                    index_bytes: 0,
                    labels: label_cols.clone(),
                    fields,
                    shared_fields: shared_fields.clone(),
                    level: 0,
                    time_unit: keys[start..end].iter().map(|k| TimeUnitTag::of(k.2)).max().unwrap_or_default(),
                };
                let mut options = self.write_options(0);
                options.small_fields =
                    crate::part::small_fields(sub_schema.fields().iter().zip(&owned).skip(3).map(|(f, arrays)| {
                        (f.name().as_str(), arrays.iter().map(|a| crate::part::buffer_bytes(a.as_ref())).sum())
                    }));
                let mut writer = PartWriter::create(dir, meta, part_schema, options)?;
                let res = (|| {
                    for chunk in keys[start..end].chunks(rg_rows) {
                        let idx: Vec<(usize, usize)> = chunk.iter().map(|k| (slot[&k.3], k.4 as usize)).collect();
                        let cols: Vec<ArrayRef> =
                            arrays.iter().map(|a| interleave(a, &idx)).collect::<Result<_, _>>()?;
                        let rb = RecordBatch::try_new(sub_schema.clone(), cols)?;
                        let rb = conform(&rb, writer.schema(), Some((&streams, &col_map)))?;
                        writer.write_row_group(&rb)?;
                    }
                    Ok::<_, Error>(())
                })();
                match res {
                    Ok(()) => out.push(writer.finish(dir)?),
                    Err(e) => {
                        writer.abort();
                        for p in &out {
                            p.mark_obsolete();
                        }
                        return Err(e);
                    }
                }
                start = end;
            }
        }
        Ok(out)
    }

    fn write_options(&self, level: u32) -> WriteOptions {
        write_options(&self.inner.options.tuning, level)
    }

    /// The columns of a tenant's logs: `time`, `_stream_id`, `message`, then labels and fields.
    pub fn schema(&self, tenant: &Tenant) -> SchemaRef {
        let inner = &self.inner;
        let mut labels: BTreeSet<String> = BTreeSet::new();
        let mut fields: BTreeSet<String> = BTreeSet::new();
        if let Some(streams) = inner.catalog.get(tenant) {
            labels.extend(streams.read().label_names().iter().map(|n| label_column(n)));
        }
        let st = inner.state.read();
        for p in st.parts.iter().filter(|p| p.meta.tenant == tenant.as_str()) {
            labels.extend(p.meta.labels.iter().cloned());
            fields.extend(p.meta.fields.iter().cloned());
        }
        let active = inner.active.lock();
        for mem in st.frozen.iter().map(|m| m.as_ref()).chain(std::iter::once(&*active)) {
            if let Some(t) = mem.tenants.get(tenant) {
                fields.extend(t.fields.iter().cloned());
            }
        }
        table_schema(labels.iter(), fields.iter())
    }

    /// The names of a tenant's structured-metadata fields (some may also name labels of other streams).
    pub fn field_names(&self, tenant: &Tenant) -> BTreeSet<String> {
        let inner = &self.inner;
        let mut fields: BTreeSet<String> = BTreeSet::new();
        let st = inner.state.read();
        for p in st.parts.iter().filter(|p| p.meta.tenant == tenant.as_str()) {
            fields.extend(p.meta.fields.iter().cloned());
            fields.extend(p.meta.shared_fields.iter().cloned());
        }
        let active = inner.active.lock();
        for mem in st.frozen.iter().map(|m| m.as_ref()).chain(std::iter::once(&*active)) {
            if let Some(t) = mem.tenants.get(tenant) {
                fields.extend(t.fields.iter().cloned());
            }
        }
        fields
    }

    /// The label names of a tenant's streams.
    pub fn label_names(&self, tenant: &Tenant) -> Vec<String> {
        self.inner.catalog.get(tenant).map(|t| t.read().label_names().iter().cloned().collect()).unwrap_or_default()
    }

    /// Tenants that have written anything.
    pub fn tenants(&self) -> Vec<Tenant> {
        self.inner.catalog.tenants()
    }

    /// Starts a scan; see [`ScanRequest`]. Must be called within a Tokio runtime: the reading runs on a
    /// blocking thread and streams its batches back. Parts that cannot be read are left out; once the
    /// stream has ended, [`LogStore::skipped_parts`] names them.
    ///
    /// # Errors
    /// None today; reading errors arrive in the stream.
    pub fn scan(&self, req: ScanRequest) -> Result<Scan> {
        let (schema, mut tasks) = self.plan_scan(req, 1);
        let plan = tasks.pop().map(|t| t.0);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        if let Some(plan) = plan {
            tokio::task::spawn_blocking(move || plan.run(tx));
        }
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Scan { schema, stream: Box::pin(stream) })
    }

    /// Plans a scan as up to `partitions` tasks of about equal size, to run on as many threads; together
    /// they read what [`LogStore::scan`] would. The head goes to the first task.
    pub fn plan_scan(&self, req: ScanRequest, partitions: usize) -> (SchemaRef, Vec<ScanTask>) {
        self.plan_scan_only(req, partitions, None)
    }

    /// [`LogStore::plan_scan`] over only the streams in `only` (of those the matchers select).
    fn plan_scan_only(
        &self,
        req: ScanRequest,
        partitions: usize,
        only: Option<&HashSet<u64>>,
    ) -> (SchemaRef, Vec<ScanTask>) {
        self.plan_scan_inner(req, partitions, only, None)
    }

    /// [`LogStore::plan_scan_only`], also filling `keep` (when given) with the ids of the request's
    /// `PartFilter::Except` set that are live parts of the tenant at the scan's instant.
    fn plan_scan_inner(
        &self,
        req: ScanRequest,
        partitions: usize,
        only: Option<&HashSet<u64>>,
        keep: Option<&mut Vec<u64>>,
    ) -> (SchemaRef, Vec<ScanTask>) {
        let inner = &self.inner;
        inner.metrics.scans.inc();
        let full = self.schema(&req.tenant);
        let output = match &req.columns {
            None => full,
            Some(cols) => {
                let fields: Vec<arrow::datatypes::Field> = cols
                    .iter()
                    .map(|c| match full.field_with_name(c) {
                        Ok(f) => f.clone(),
                        Err(_) => arrow::datatypes::Field::new(c.as_str(), arrow::datatypes::DataType::Utf8, true),
                    })
                    .collect();
                Arc::new(Schema::new(fields))
            }
        };
        let streams = match (inner.catalog.matching(&req.tenant, &req.matchers), only) {
            (set, None) => set,
            (None, Some(only)) => Some(only.clone()),
            (Some(set), Some(only)) => Some(set.intersection(only).copied().collect()),
        };
        let deletes = Arc::new(self.delete_masks(&req.tenant));
        let (head, parts, live) = self.snapshot_filtered(&req.tenant, req.start_ns, req.end_ns, &req.parts);
        if let (Some(keep), PartFilter::Except(have)) = (keep, &req.parts) {
            keep.extend(live.into_iter().filter(|id| have.contains(id)));
        }
        // Each part's candidate rows: its matching streams' ranges that overlap the time range.
        let (start, end) = (req.start_ns, req.end_ns);
        let mut units: Vec<(u64, Arc<Part>, Vec<std::ops::Range<u64>>)> = parts
            .into_iter()
            .filter(|p| req.fields_present.iter().all(|f| p.meta.has_column(f)))
            .filter_map(|p| {
                let ranges: Vec<std::ops::Range<u64>> = p
                    .streams
                    .iter()
                    .filter(|s| streams.as_ref().is_none_or(|set| set.contains(&s.id)))
                    .filter(|s| s.max_time >= start && s.min_time < end)
                    .map(|s| s.first_row..s.first_row + s.rows)
                    .collect();
                let rows: u64 = ranges.iter().map(|r| r.end - r.start).sum();
                (rows > 0).then_some((rows, p, ranges))
            })
            .collect();
        // A scan fills the cache of decoded pages when it reads lines (what costs to decode: numbers and
        // ids decode fast, and a SQL aggregate over every row's time would only push lines out) and
        // would not decode more than half of it (see `page_cache::fills`): guessed from its candidate
        // rows, before the filters skip any.
        let read_columns = crate::scan::read_columns(&output, &req, &deletes);
        let read_columns: Vec<&str> = read_columns.iter().map(String::as_str).collect();
        let fill_pages = inner.page_cache.enabled() && read_columns.contains(&MESSAGE) && {
            let bytes: u64 =
                units.iter().map(|(rows, p, _)| rows.saturating_mul(p.decoded_row_bytes(&read_columns))).sum();
            crate::page_cache::fills(&inner.page_cache, bytes)
        };
        let n = partitions.max(1);
        // Too few parts to keep every thread busy: cut each part's candidate rows into `4n` slices, dealt
        // out in turn below, so that rows the filters skip at run time (row groups, pages) do not all
        // fall on one thread. A slice costs a reader per row group and column (each with its own zstd
        // contexts, about 5 % of a query of 131,000 rows cut in 8), so none is cut below
        // `MIN_SLICE_ROWS`.
        let split = n > 1 && units.len() < 2 * n;
        let mut pieces: Vec<(u64, PartSlice)> = Vec::new();
        for (rows, part, ranges) in units.drain(..) {
            if !split || rows < 2 * 8192 {
                pieces.push((rows, (part, None)));
                continue;
            }
            let chunk = rows.div_ceil(4 * n as u64).max(MIN_SLICE_ROWS);
            for slice in split_ranges(&ranges, chunk, &part.message_page_starts()) {
                let r: u64 = slice.iter().map(|x| x.end - x.start).sum();
                pieces.push((r, (part.clone(), Some(slice))));
            }
        }
        // Largest pieces first, each to the lightest partition.
        pieces.sort_by_key(|p| std::cmp::Reverse(p.0));
        let n = n.min(pieces.len().max(1));
        let mut groups: Vec<(u64, Vec<PartSlice>)> = vec![(0, Vec::new()); n];
        groups[0].0 = head.iter().map(|b| b.num_rows() as u64).sum();
        for (rows, slice) in pieces {
            let lightest = groups.iter_mut().min_by_key(|g| g.0).expect("at least one partition");
            lightest.0 += rows;
            lightest.1.push(slice);
        }
        let mut head = Some(head);
        let tasks = groups
            .into_iter()
            .map(|(_, parts)| {
                ScanTask(ScanPlan {
                    output: output.clone(),
                    head: head.take().unwrap_or_default(),
                    parts,
                    streams: streams.clone(),
                    catalog: inner.catalog.get(&req.tenant),
                    index_numbers: inner.options.tuning.index_numbers,
                    metrics: inner.metrics.clone(),
                    deletes: deletes.clone(),
                    cache: inner.scan_cache.clone(),
                    pages: inner.page_cache.clone(),
                    fill_pages,
                    req: req.clone(),
                })
            })
            .collect();
        (output, tasks)
    }

    /// The head batches and parts of a tenant that may hold rows in `[start, end)`.
    fn snapshot(&self, tenant: &Tenant, start: i64, end: i64) -> (Vec<RecordBatch>, Vec<Arc<Part>>) {
        let (head, parts, _) = self.snapshot_filtered(tenant, start, end, &PartFilter::All);
        (head, parts)
    }

    /// [`LogStore::snapshot`] of the parts `filter` admits, with the ids of all the tenant's live parts
    /// at that instant (whatever their time range and the filter).
    fn snapshot_filtered(
        &self,
        tenant: &Tenant,
        start: i64,
        end: i64,
        filter: &PartFilter,
    ) -> (Vec<RecordBatch>, Vec<Arc<Part>>, Vec<u64>) {
        let inner = &self.inner;
        let overlaps = |min: i64, max: i64| max >= start && min < end;
        let st = inner.state.read();
        let active = inner.active.lock();
        let mut head = Vec::new();
        for mem in st.frozen.iter().map(|m| m.as_ref()).chain(std::iter::once(&*active)) {
            if let Some(t) = mem.tenants.get(tenant)
                && overlaps(t.min_time, t.max_time)
            {
                head.extend(t.batches.iter().cloned());
            }
        }
        let mut live = Vec::new();
        // Unreadable parts are left out; `skipped_parts` names them.
        let parts: Vec<Arc<Part>> = st
            .parts
            .iter()
            .filter(|p| p.meta.tenant == tenant.as_str())
            .inspect(|p| live.push(p.meta.id))
            .filter(|p| overlaps(p.meta.min_time, p.meta.max_time) && !p.is_unreadable() && filter.admits(p.meta.id))
            .cloned()
            .collect();
        (head, parts, live)
    }

    /// The ids of the tenant's parts a read of `[start, end)` would take: what a query node tells its
    /// ingest node it holds (see [`LogStore::plan_delta`]).
    pub fn part_ids(&self, tenant: &Tenant, start: i64, end: i64) -> Vec<u64> {
        let (_, parts, _) = self.snapshot_filtered(tenant, start, end, &PartFilter::All);
        parts.iter().map(|p| p.meta.id).collect()
    }

    /// What an ingest node adds to a query node's read (issue 22): plans `req` over the head and the parts
    /// not in `have` (the query node's parts), and returns with it the ids of `have` still live here, taken
    /// at the same instant. The query node reads those of its parts plus these rows: each acknowledged row
    /// once, although flushes, compactions and syncs go on meanwhile.
    pub fn plan_delta(&self, mut req: ScanRequest, have: HashSet<u64>) -> (Vec<u64>, SchemaRef, Vec<ScanTask>) {
        req.parts = PartFilter::Except(Arc::new(have));
        let mut keep = Vec::new();
        let (schema, tasks) = self.plan_scan_inner(req, 1, None, Some(&mut keep));
        (keep, schema, tasks)
    }

    /// The labels of the given streams of a tenant (unknown ids are left out).
    pub fn stream_labels(&self, tenant: &Tenant, ids: impl IntoIterator<Item = u64>) -> HashMap<u64, Arc<Labels>> {
        let Some(streams) = self.inner.catalog.get(tenant) else {
            return HashMap::new();
        };
        let streams = streams.read();
        ids.into_iter().filter_map(|id| streams.labels(id).map(|l| (id, l.clone()))).collect()
    }

    /// Entries per stream of the streams matching `matchers` in `[start, end)`, exactly. A part's stream
    /// whose time bounds lie inside the range is counted from the index alone; the others read only the
    /// time column of their rows. A part that cannot be read is left out (see [`LogStore::skipped_parts`]).
    ///
    /// # Errors
    /// None today; the `Result` is kept for the callers.
    /// `count_by_stream` by reading rows, so that pending deletes are applied.
    fn count_by_scanning(
        &self,
        tenant: &Tenant,
        matchers: &[LabelMatcher],
        start: i64,
        end: i64,
        only: Option<&HashSet<u64>>,
        parts: &PartFilter,
    ) -> HashMap<u64, u64> {
        let mut req = ScanRequest::all(tenant.clone());
        req.parts = parts.clone();
        req.matchers = matchers.to_vec();
        req.start_ns = start;
        req.end_ns = end;
        req.columns = Some(vec![TIME.to_string(), STREAM_ID.to_string()]);
        let (_, tasks) = self.plan_scan_only(req, 1, only);
        let mut counts: HashMap<u64, u64> = HashMap::new();
        for task in tasks {
            let _ = task.run(|batch| {
                if let Some(ids) = batch.column_by_name(STREAM_ID) {
                    for id in ids.as_primitive::<UInt64Type>().values() {
                        *counts.entry(*id).or_default() += 1;
                    }
                }
                true
            });
        }
        counts
    }

    pub fn count_by_stream(
        &self,
        tenant: &Tenant,
        matchers: &[LabelMatcher],
        start: i64,
        end: i64,
    ) -> Result<HashMap<u64, u64>> {
        self.count_by_stream_in(tenant, matchers, start, end, &PartFilter::All)
    }

    /// [`LogStore::count_by_stream`] over the parts `parts` admits (and the head): a query node's
    /// count over the parts its ingest node kept (issue 22).
    ///
    /// # Errors
    /// None today; the `Result` is kept for the callers.
    pub fn count_by_stream_in(
        &self,
        tenant: &Tenant,
        matchers: &[LabelMatcher],
        start: i64,
        end: i64,
        parts: &PartFilter,
    ) -> Result<HashMap<u64, u64>> {
        // Pending deletes: the streams they cover are counted by reading their rows (which applies the
        // deletes), the others from the indexes as usual.
        let mut covered: HashSet<u64> = HashSet::new();
        for mask in self.delete_masks(tenant) {
            match mask.streams {
                None => return Ok(self.count_by_scanning(tenant, matchers, start, end, None, parts)),
                Some(ids) => covered.extend(ids),
            }
        }
        let mut counts = self.count_from_indexes(tenant, matchers, start, end, &covered, parts);
        if !covered.is_empty() {
            counts.extend(self.count_by_scanning(tenant, matchers, start, end, Some(&covered), parts));
        }
        Ok(counts)
    }

    /// `count_by_stream` from the part indexes (and the head), leaving out the streams in `skip`.
    fn count_from_indexes(
        &self,
        tenant: &Tenant,
        matchers: &[LabelMatcher],
        start: i64,
        end: i64,
        skip: &HashSet<u64>,
        filter: &PartFilter,
    ) -> HashMap<u64, u64> {
        let set = self.inner.catalog.matching(tenant, matchers);
        let wanted = |id: &u64| set.as_ref().is_none_or(|s| s.contains(id)) && !skip.contains(id);
        let (head, parts, _) = self.snapshot_filtered(tenant, start, end, filter);
        let mut counts: HashMap<u64, u64> = HashMap::new();
        let count_batch = |counts: &mut HashMap<u64, u64>, batch: &RecordBatch| {
            let (Some(times), Some(ids)) = (batch.column_by_name(TIME), batch.column_by_name(STREAM_ID)) else {
                return;
            };
            let times = times.as_primitive::<arrow::datatypes::TimestampNanosecondType>().values();
            let ids = ids.as_primitive::<arrow::datatypes::UInt64Type>().values();
            for (t, id) in times.iter().zip(ids.iter()) {
                if *t >= start && *t < end && wanted(id) {
                    *counts.entry(*id).or_default() += 1;
                }
            }
        };
        for batch in &head {
            count_batch(&mut counts, batch);
        }
        for part in &parts {
            let mut partial = Vec::new();
            for s in part.streams.iter().filter(|s| wanted(&s.id) && s.max_time >= start && s.min_time < end) {
                if s.min_time >= start && s.max_time < end {
                    *counts.entry(s.id).or_default() += s.rows;
                } else {
                    partial.push(s.first_row..s.first_row + s.rows);
                }
            }
            if partial.is_empty() {
                continue;
            }
            // A part that fails is left out (see `skipped_parts`); counts taken from it so far stay, as
            // its index vouches for them.
            let read = (|| {
                if let Some(reader) = part.reader(&[TIME, STREAM_ID], Some(&partial), 8192)? {
                    let mut local = HashMap::new();
                    for batch in reader {
                        count_batch(&mut local, &crate::part::time_to_ns(batch.map_err(Error::Arrow)?)?);
                    }
                    return Ok::<_, Error>(local);
                }
                Ok(HashMap::new())
            })();
            match read {
                Ok(local) => {
                    for (id, n) in local {
                        *counts.entry(id).or_default() += n;
                    }
                }
                Err(error) => part.set_unreadable(&error, &self.inner.metrics),
            }
        }
        counts
    }

    /// The streams matching `matchers` that have entries in `[start, end)` (by the index's time bounds
    /// for parts, exactly for the head), with their labels.
    pub fn series(&self, tenant: &Tenant, matchers: &[LabelMatcher], start: i64, end: i64) -> Vec<(u64, Arc<Labels>)> {
        let set = self.inner.catalog.matching(tenant, matchers);
        let wanted = |id: &u64| set.as_ref().is_none_or(|s| s.contains(id));
        let (head, parts) = self.snapshot(tenant, start, end);
        let mut ids: HashSet<u64> = HashSet::new();
        for batch in &head {
            let (Some(times), Some(sids)) = (batch.column_by_name(TIME), batch.column_by_name(STREAM_ID)) else {
                continue;
            };
            let times = times.as_primitive::<arrow::datatypes::TimestampNanosecondType>().values();
            let sids = sids.as_primitive::<arrow::datatypes::UInt64Type>().values();
            for (t, id) in times.iter().zip(sids.iter()) {
                if *t >= start && *t < end && wanted(id) {
                    ids.insert(*id);
                }
            }
        }
        for part in &parts {
            ids.extend(
                part.streams.iter().filter(|s| wanted(&s.id) && s.max_time >= start && s.min_time < end).map(|s| s.id),
            );
        }
        let mut out: Vec<(u64, Arc<Labels>)> = self.stream_labels(tenant, ids).into_iter().collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// The tenant's parts with rows in `[start, end)` (nanoseconds) that reads leave out because they
    /// cannot be read: found unreadable by a read since the start, or set aside into the quarantine at a
    /// start (until an operator deletes their files there). A query over that range answered from the
    /// rest; each entry's `Display` is the warning to pass on. Call it after the reads of a query, as
    /// reads are what find unreadable parts.
    pub fn skipped_parts(&self, tenant: &Tenant, start: i64, end: i64) -> Vec<SkippedPart> {
        let inner = &self.inner;
        let mut out: Vec<SkippedPart> = inner
            .state
            .read()
            .parts
            .iter()
            .filter(|p| p.meta.tenant == tenant.as_str() && p.meta.max_time >= start && p.meta.min_time < end)
            .filter_map(|p| p.skipped())
            .collect();
        let manifest = inner.manifest.lock();
        out.extend(
            manifest
                .quarantined
                .iter()
                .filter(|q| q.overlaps(tenant.as_str(), start, end))
                .map(|q| q.skipped(&inner.options.data_dir)),
        );
        out
    }

    pub fn stats(&self) -> StoreStats {
        let st = self.inner.state.read();
        let active = self.inner.active.lock();
        let mems = st.frozen.iter().map(|m| m.as_ref()).chain(std::iter::once(&*active));
        let (head_rows, head_bytes) = mems.fold((0, 0), |(r, b), m| (r + m.rows, b + m.bytes));
        StoreStats {
            parts: st.parts.len(),
            part_rows: st.parts.iter().map(|p| p.meta.rows).sum(),
            disk_bytes: st.parts.iter().map(|p| p.meta.disk_bytes()).sum(),
            head_rows,
            head_bytes,
        }
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
        m.head_rows.set(s.head_rows as i64);
        m.head_bytes.set(s.head_bytes as i64);
    }

    /// Merges small parts; see `compact.rs`. Returns the number of parts merged away.
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
            .map_err(|e| Error::WalClosed { reason: format!("compaction task failed: {e}") })??;
        self.update_gauges();
        Ok(n)
    }

    fn compact_blocking(&self) -> Result<usize> {
        let inner = &self.inner;
        let parts: Vec<Arc<Part>> = inner.state.read().parts.iter().filter(|p| !p.is_unreadable()).cloned().collect();
        let today = day_of_ns(now_ns());
        let jobs = crate::compact::plan(&parts, &inner.options.tuning, today);
        let mut merged = 0;
        for job in jobs {
            let first = &job[0].meta;
            let meta = PartMeta {
                id: self.next_part_id(),
                tenant: first.tenant.clone(),
                day: first.day,
                min_time: 0,
                max_time: 0,
                rows: 0,
                parquet_bytes: 0,
                index_bytes: 0,
                labels: Vec::new(),
                fields: Vec::new(),
                shared_fields: Vec::new(),
                level: job.iter().map(|p| p.meta.level).max().unwrap_or(0) + 1,
                time_unit: job.iter().map(|p| p.meta.time_unit).max().unwrap_or_default(),
            };
            let level = meta.level;
            let started = Instant::now();
            let output = crate::compact::merge(
                &job,
                &inner.options.data_dir,
                meta,
                self.write_options(level),
                inner.options.tuning.row_group_rows,
                &inner.metrics,
            )?;
            // Commit, unless retention removed an input meanwhile.
            let mut manifest = inner.manifest.lock();
            let mut st = inner.state.write();
            let all_live = job.iter().all(|p| st.parts.iter().any(|q| Arc::ptr_eq(p, q)));
            if !all_live {
                output.mark_obsolete();
                continue;
            }
            let mut next = manifest.clone();
            next.parts.retain(|m| !job.iter().any(|p| p.meta.id == m.id));
            next.parts.push(output.meta.clone());
            if let Err(e) = next.store(&inner.options.data_dir) {
                output.mark_obsolete();
                return Err(e);
            }
            *manifest = next;
            st.parts.retain(|q| !job.iter().any(|p| Arc::ptr_eq(p, q)));
            st.parts.push(output.clone());
            for p in &job {
                p.mark_obsolete();
            }
            inner.metrics.compactions.inc();
            inner.metrics.compacted_parts.inc_by(job.len() as u64);
            inner.metrics.compacted_rows.inc_by(output.meta.rows);
            merged += job.len();
            tracing::info!(
                tenant = %output.meta.tenant,
                day = %crate::time::format_day(output.meta.day),
                inputs = job.len(),
                rows = output.meta.rows,
                bytes = output.meta.disk_bytes(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "compacted parts"
            );
        }
        Ok(merged)
    }

    /// Deletes whole days past the retention period. Returns the parts deleted. (The disk budget, over
    /// both stores, is [`crate::disk::enforce_budget`]'s.)
    ///
    /// # Errors
    /// I/O errors writing the manifest.
    pub async fn apply_retention(&self) -> Result<usize> {
        let now = now_ns();
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
            tracing::info!(parts = n, "retention deleted log parts");
        }
        let expired = {
            let _guard = self.inner.maintenance_lock.lock().await;
            let mut manifest = self.inner.manifest.lock();
            let mut next = manifest.clone();
            let expired = crate::manifest::expire_quarantined(&mut next.quarantined, &self.inner.options, now);
            if !expired.is_empty() {
                next.store(&self.inner.options.data_dir)?;
                *manifest = next;
            }
            expired
        };
        crate::manifest::remove_quarantined_files(&expired, &self.inner.options.data_dir);
        Ok(n + expired.len() + crate::delete::apply_rules(self, now).await?)
    }

    /// Holds off flushes, compactions and deletions (not appends) while the guards live: a snapshot.
    pub(crate) async fn quiesce(&self) -> (tokio::sync::MutexGuard<'_, ()>, tokio::sync::MutexGuard<'_, ()>) {
        let flush = self.inner.flush_lock.lock().await;
        (flush, self.inner.maintenance_lock.lock().await)
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.inner.options.data_dir
    }

    /// The parts as the disk budget weighs them: those on the local disk (a part that lives in the object
    /// store only takes no local space; retention deletes it).
    pub(crate) fn budget_parts(&self) -> Vec<crate::disk::BudgetPart> {
        let st = self.inner.state.read();
        st.parts
            .iter()
            .filter(|p| !p.remote.in_bucket() || p.parquet_path.exists())
            .map(|p| crate::disk::BudgetPart {
                id: p.meta.id,
                day: p.meta.day,
                min_time_ns: p.meta.min_time,
                bytes: p.meta.disk_bytes(),
            })
            .collect()
    }

    /// Takes the parts named by `ids` out of the manifest (the commit point), then deletes their files
    /// (a scan still reading one keeps its files until it ends). Returns the parts and bytes deleted.
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
        next.store(&inner.options.data_dir)?;
        *manifest = next;
        let mut dirs = BTreeSet::new();
        let (mut n, mut bytes) = (0, 0);
        st.parts.retain(|p| {
            if ids.contains(&p.meta.id) {
                p.mark_obsolete();
                dirs.insert(inner.options.data_dir.join(p.meta.partition_dir()));
                n += 1;
                bytes += p.meta.disk_bytes();
                false
            } else {
                true
            }
        });
        drop(st);
        drop(manifest);
        // Partition directories go once empty; a scan still holding a part keeps its files until it ends.
        for d in dirs {
            let _ = fs::remove_dir(&d);
        }
        inner.metrics.retention_deleted_parts.inc_by(n as u64);
        tracing::debug!(parts = n, bytes, why, "deleted log parts");
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

crate::background::maintained!(LogStore, "log");

impl crate::delete::Rewritable for LogStore {
    const KIND: &'static str = "log";

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
        LogStore::flush(self)
    }
}

/// Takes the exclusive lock on `<data>/lock`, writing our pid into it for the next one to name.
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(Error::io("open", &path))?;
    match file.try_lock() {
        Ok(()) => {
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = writeln!(file, "pid {}", std::process::id());
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            Err(Error::Locked {
                path: dir.to_path_buf(),
                holder: if holder.is_empty() { "unknown pid".to_string() } else { holder.to_string() },
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Io { op: "lock", path, source: e }),
    }
}

fn write_options(t: &crate::config::StoreConfig, level: u32) -> WriteOptions {
    WriteOptions {
        zstd_level: if level == 0 { t.zstd_level } else { t.compaction_zstd_level },
        token_filter_bits: t.token_filter_bits,
        index_numbers: t.index_numbers,
        small_fields: Default::default(),
    }
}

/// A WAL record that passes its checksum but does not decode: not damage (the checksum holds) but a
/// format this build does not know, so the start is refused rather than the record dropped.
pub(crate) fn undecodable_record(r: &Replayed, reason: &str) -> Error {
    Error::Refused {
        what: "wal segment",
        path: r.segment.clone(),
        reason: format!("record {} passes its checksum but does not decode: {reason}", r.seq),
        remedy: "run the lumen version that wrote it (a newer one?); to start without the records of this \
                 segment instead, move it into the quarantine directory of the data directory"
            .to_string(),
    }
}

/// Opens the parts the manifest lists (see [`Part::open`]). A part whose Parquet file is damaged or
/// missing leaves the manifest's parts for its `quarantined` list, its files set aside into the
/// quarantine; a rebuilt index updates the entry. Entries of the `quarantined` list whose files are all
/// gone from the quarantine (an operator dealt with them) are dropped. Returns the parts and whether the
/// manifest changed.
fn open_parts(
    dir: &Path,
    manifest: &mut Manifest,
    options: &WriteOptions,
    quarantine: &Quarantine,
) -> Result<(Vec<Arc<Part>>, bool, bool)> {
    let mut parts = Vec::with_capacity(manifest.parts.len());
    let mut kept = Vec::with_capacity(manifest.parts.len());
    let mut changed = false;
    let mut any_missing = false;
    for meta in std::mem::take(&mut manifest.parts) {
        let (reason, missing) = match Part::open(dir, meta.clone(), options, quarantine)? {
            Opened::Good(part) => {
                kept.push(meta);
                parts.push(Arc::from(part));
                continue;
            }
            Opened::Rebuilt(part) => {
                kept.push(part.meta.clone());
                parts.push(Arc::from(part));
                changed = true;
                continue;
            }
            Opened::Damaged(reason) => (reason, false),
            Opened::Missing(reason) => (reason, true),
        };
        let (parquet, index) = (meta.parquet_path(dir), meta.index_path(dir));
        let mut files = Vec::new();
        any_missing |= missing;
        if missing {
            files.push(quarantine.note_missing(&parquet, &format!("part of {} rows: {reason}", meta.rows))?);
        } else {
            files.push(quarantine.set_aside(&parquet, &format!("part of {} rows: {reason}", meta.rows))?);
        }
        if index.exists() {
            files.push(quarantine.set_aside(&index, "the index of a part set aside")?);
        }
        manifest.quarantined.push(QuarantinedPart {
            tenant: meta.tenant.clone(),
            min_time_ns: meta.min_time,
            max_time_ns: meta.max_time,
            rows: meta.rows,
            files: files.iter().map(|f| quarantine.relative(f)).collect(),
            reason,
        });
        changed = true;
    }
    manifest.parts = kept;
    let before = manifest.quarantined.len();
    manifest.quarantined.retain(|q| q.still_there(dir));
    if manifest.quarantined.len() != before {
        tracing::info!(
            parts = before - manifest.quarantined.len(),
            "quarantined parts whose files were removed are forgotten"
        );
        changed = true;
    }
    Ok((parts, changed, any_missing))
}

/// Deletes part files the manifest does not list: leftovers of a flush or compaction that crashed
/// before its commit. With `set_aside`, they go into the quarantine instead.
fn remove_unlisted_files(dir: &Path, manifest: &Manifest, set_aside: Option<&Quarantine>) -> Result<()> {
    let listed: HashSet<PathBuf> = manifest
        .parts
        .iter()
        .flat_map(|m| {
            let parquet = m.parquet_path(dir);
            [crate::remote::sidecar_path(&parquet), parquet, m.index_path(dir)]
        })
        .collect();
    for (_, path) in crate::manifest::part_files(&dir.join("logs")) {
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
                tracing::info!(file = %path.display(), "removing part file of an unfinished flush");
                fs::remove_file(&path).map_err(Error::io("remove", &path))?;
            }
        }
        if let Some(day) = path.parent() {
            let _ = fs::remove_dir(day);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// The fewest rows [`LogStore::plan_scan`] gives one slice of a part.
const MIN_SLICE_ROWS: u64 = 65_536;

/// Cuts sorted, disjoint row ranges into consecutive slices of about `chunk` rows each (at least `chunk`
/// but the last). A cut inside a range falls on the next of `snap` (sorted rows where the part's
/// `message` pages start), so that no page is decompressed by two slices; without one, the range's end.
fn split_ranges(ranges: &[std::ops::Range<u64>], chunk: u64, snap: &[u64]) -> Vec<Vec<std::ops::Range<u64>>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut filled = 0;
    for r in ranges {
        let mut start = r.start;
        while start < r.end {
            let mut cut = start + (chunk - filled).min(r.end - start);
            if cut < r.end {
                // Inside the range: on to the next page start, so that no page is read by two slices.
                let next = snap[snap.partition_point(|&s| s < cut)..].first().copied().unwrap_or(u64::MAX);
                cut = next.min(r.end);
            }
            current.push(start..cut);
            filled += cut - start;
            start = cut;
            if filled >= chunk {
                out.push(std::mem::take(&mut current));
                filled = 0;
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}
