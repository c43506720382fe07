//! The sync of a data directory's flushed state into the bucket: stage a consistent view (both stores'
//! flushes, compactions and deletions wait while it is made; appends go on), upload what the bucket does
//! not hold yet, commit, then delete the commits past `storage.keep_commits` and the objects only they
//! named.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, WriteMultipart};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use store::{LogStore, MetricStore};

use crate::Bucket;
use crate::commit::CommitFile;

/// Every this many syncs (and at the first), objects no kept commit names are looked for.
const ORPHAN_SWEEP_EVERY: u64 = 60;
/// An unnamed object younger than this may belong to a sync in progress: it is left for a later sweep.
const ORPHAN_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Files up to this size go up in one request; larger ones in parts of [`PART_BYTES`].
const SINGLE_PUT_BYTES: u64 = 16 * 1024 * 1024;
const PART_BYTES: usize = 8 * 1024 * 1024;

/// The sync's own metrics, `lumen_bucket_*`.
#[derive(Clone, Default)]
pub struct SyncMetrics {
    pub syncs: Counter,
    pub failures: Counter,
    pub uploaded_objects: Counter,
    pub uploaded_bytes: Counter,
    pub deleted_objects: Counter,
    pub last_commit: Gauge,
    pub last_success_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl SyncMetrics {
    pub fn register(registry: &mut Registry) -> SyncMetrics {
        let m = SyncMetrics::default();
        let r = registry.sub_registry_with_prefix("lumen_bucket");
        r.register("syncs", "syncs of the data directory into the bucket that ended well", m.syncs.clone());
        r.register(
            "sync_failures",
            "syncs into the bucket that failed (retried at the next interval)",
            m.failures.clone(),
        );
        r.register("uploaded_objects", "objects uploaded into the bucket", m.uploaded_objects.clone());
        r.register("uploaded_bytes", "bytes uploaded into the bucket", m.uploaded_bytes.clone());
        r.register(
            "deleted_objects",
            "objects deleted from the bucket (old commits and what only they named)",
            m.deleted_objects.clone(),
        );
        r.register("last_commit", "number of the last commit written", m.last_commit.clone());
        r.register(
            "last_success_timestamp_seconds",
            "when a sync last ended well (Unix seconds)",
            m.last_success_seconds.clone(),
        );
        m
    }
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The commit written; None when nothing changed since the last one.
    pub commit: Option<u64>,
    pub files: usize,
    pub uploaded_objects: usize,
    pub uploaded_bytes: u64,
    pub deleted_objects: usize,
    /// Nothing was done: another server holds the writer lease, or this one is behind the bucket.
    pub waiting: bool,
    /// Why, while `waiting`: the server refuses writes with it (see `store::disk::DiskGuard::set_standby`).
    pub wait_reason: Option<String>,
}

/// Syncs one data directory into one bucket; one at a time (hold it in a mutex).
pub struct Syncer {
    bucket: Bucket,
    logs: LogStore,
    metric_store: MetricStore,
    node: String,
    keep_commits: usize,
    /// Keys known to be in the bucket.
    known: HashSet<String>,
    /// The part objects (`data/…`) this writer may take as its own, with their sizes: those a kept commit
    /// names, and those this process uploaded. Any other object under a part's key is an upload of a
    /// writer that died before its commit (part ids start again from the restored commit), and is
    /// overwritten, never named as if it held this part.
    ours: std::collections::HashMap<String, u64>,
    seeded: bool,
    /// The store passed the conditional-create check (at start, or before this syncer's first commit).
    verified: bool,
    /// The files of the last commit: a sync that finds the same writes no commit.
    last_files: Option<Vec<CommitFile>>,
    /// Syncs that ended well, for the orphan sweep's rhythm.
    done: u64,
    /// The object keys of the commits read or written, by number: a commit never changes, so the
    /// clean-up after each sync reads none it already knows (pruned with the commits it deletes).
    commit_keys: std::collections::BTreeMap<u64, Arc<BTreeSet<String>>>,
    orphan_min_age: std::time::Duration,
    metrics: SyncMetrics,
    /// `storage.cache_max_bytes` and the cache's metrics: parts past it are evicted after each sync.
    cache: Option<(u64, crate::cache::CacheMetrics)>,
    /// The writer lease: without it (tests), this syncer assumes it is the only writer.
    lease: Option<crate::lease::WriterLease>,
    /// The lease is out of `lease` while the uploads run (see `sync_inner`).
    lease_out: bool,
    /// The lease holder of a round that syncs a retired tree on its writer's behalf (see
    /// [`crate::commit::Commit::tended_by`]).
    tended_by: Option<String>,
}

impl Syncer {
    pub fn new(
        bucket: Bucket,
        logs: LogStore,
        metric_store: MetricStore,
        node: String,
        keep_commits: usize,
        metrics: SyncMetrics,
    ) -> Syncer {
        Syncer {
            bucket,
            logs,
            metric_store,
            node,
            keep_commits: keep_commits.max(1),
            known: HashSet::new(),
            ours: std::collections::HashMap::new(),
            seeded: false,
            verified: false,
            last_files: None,
            done: 0,
            commit_keys: std::collections::BTreeMap::new(),
            orphan_min_age: ORPHAN_MIN_AGE,
            metrics,
            cache: None,
            lease: None,
            lease_out: false,
            tended_by: None,
        }
    }

    /// Marks this syncer's commits as written by `holder` on behalf of the tree's writer (a retired tree's
    /// round): a writer that comes back adopts them.
    pub fn tending(mut self, holder: String) -> Syncer {
        self.tended_by = Some(holder);
        self
    }

    /// Syncs only while holding the writer lease (see [`crate::lease`]).
    pub fn with_lease(mut self, lease: crate::lease::WriterLease) -> Syncer {
        self.lease = Some(lease);
        self
    }

    /// Lets the writer lease go, after the final sync of a graceful stop, so that a successor need not
    /// wait for it to expire.
    ///
    /// # Errors
    /// The write failed (a successor waits for the lease's ttl).
    pub async fn release_lease(&mut self) -> Result<(), String> {
        match &mut self.lease {
            Some(lease) => lease.release().await,
            None => Ok(()),
        }
    }

    /// Bounds the local part bytes to `max_bytes` after each sync, evicting what the bucket holds (see
    /// [`crate::cache`]).
    pub fn with_cache(mut self, max_bytes: u64, metrics: crate::cache::CacheMetrics) -> Syncer {
        self.cache = Some((max_bytes, metrics));
        self
    }

    /// Evicts local part files the newest commit names, least recently read first, while the local part
    /// bytes are above the cache's bound. Returns the parts evicted.
    async fn evict(&self) -> Result<usize, String> {
        match (&self.cache, &self.last_files) {
            (Some((budget, metrics)), Some(files)) => {
                crate::cache::trim(&self.logs, &self.metric_store, *budget, metrics, files).await
            }
            _ => Ok(0),
        }
    }

    /// How old an object no commit names must be before a sweep deletes it (tests shorten it).
    pub fn with_orphan_min_age(mut self, age: std::time::Duration) -> Syncer {
        self.orphan_min_age = age;
        self
    }

    /// One sync, counted in the metrics; an error leaves the bucket's last commit as it was (objects
    /// uploaded before the error are reused by the next sync).
    ///
    /// # Errors
    /// A message naming what failed.
    pub async fn sync_once(&mut self) -> Result<SyncReport, String> {
        match self.sync_inner().await {
            Ok(r) if r.waiting => Ok(r),
            Ok(r) => {
                self.metrics.syncs.inc();
                if let Some(seq) = r.commit {
                    self.metrics.last_commit.set(seq as i64);
                }
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                self.metrics.last_success_seconds.set(now.as_secs_f64());
                Ok(r)
            }
            Err(e) => {
                self.metrics.failures.inc();
                Err(e)
            }
        }
    }

    /// Records that the store passed the conditional-create check already (at start).
    pub fn verified(mut self) -> Syncer {
        self.verified = true;
        self
    }

    async fn seed(&mut self) -> Result<(), String> {
        for m in self.stored_objects().await? {
            self.known.insert(self.bucket.unprefixed(&m.location).to_string());
        }
        for seq in self.bucket.commit_numbers().await? {
            let commit = self.bucket.read_commit(seq).await?;
            for f in commit.files.iter().filter(|f| f.key.starts_with("data/")) {
                self.ours.insert(f.key.clone(), f.bytes);
            }
        }
        self.last_files = self.bucket.latest_commit().await?.map(|c| c.files);
        self.seeded = true;
        Ok(())
    }

    async fn sync_inner(&mut self) -> Result<SyncReport, String> {
        // A sync dropped half-way (it never is: its loop awaits it) must not leave a syncer that, its lease
        // gone, believes it is the only writer.
        if self.lease_out {
            return Err(
                "storage: an earlier sync was interrupted while it held the writer lease; restart the server".into()
            );
        }
        if !self.verified {
            self.bucket.check_conditional_create().await.map_err(|e| e.to_string())?;
            self.verified = true;
        }
        if let Some(lease) = &mut self.lease {
            match lease.before_sync().await? {
                crate::lease::Gate::Wait(why) => {
                    return Ok(SyncReport { waiting: true, wait_reason: Some(why), ..SyncReport::default() });
                }
                // What this syncer knew of the bucket may be stale: another writer may have committed and
                // deleted since.
                crate::lease::Gate::Write { fresh: true } => {
                    self.seeded = false;
                    self.known.clear();
                    self.ours.clear();
                    self.commit_keys.clear();
                    self.last_files = None;
                }
                crate::lease::Gate::Write { fresh: false } => {}
            }
        }
        if !self.seeded {
            self.seed().await?;
        }
        let view = store::snapshot::stage(&self.logs, &self.metric_store, "current")
            .await
            .map_err(|e| format!("storage: cannot stage the data directory for the sync: {e}"))?;
        // The lease leaves `self` while the uploads borrow it (renewed meanwhile); `lease_out` marks that
        // (checked first thing in `sync_inner`).
        let result = match self.lease.take() {
            Some(mut lease) => {
                self.lease_out = true;
                let result = lease.renewing_while(self.upload_view(&view.path)).await;
                self.lease = Some(lease);
                self.lease_out = false;
                result
            }
            None => self.upload_view(&view.path).await,
        };
        let _ = tokio::fs::remove_dir_all(&view.path).await;
        let (files, mut report) = result?;
        report.files = files.len();
        self.done += 1;
        if self.done % ORPHAN_SWEEP_EVERY == 1 && self.lease.as_ref().is_none_or(|l| l.may_delete()) {
            match self.sweep_orphans(&files).await {
                Ok(n) => report.deleted_objects += n,
                Err(e) => tracing::warn!(error = %e, "storage: looking for unnamed objects in the bucket failed"),
            }
        }
        if self.last_files.as_ref() == Some(&files) {
            if let Err(e) = self.evict().await {
                tracing::warn!(error = %e, "storage: the local cache could not be trimmed; retried after the next sync");
            }
            return Ok(report);
        }
        if let Some(lease) = &mut self.lease {
            lease.before_commit().await?;
        }
        let commit = self.bucket.append_commit_as(&self.node, self.tended_by.as_deref(), files.clone()).await?;
        if let Some(lease) = &mut self.lease {
            lease.committed(commit.seq);
        }
        // The data directory holds this commit (what an adoption at the next start compares).
        if let Err(e) = crate::adopt::record_commit(&self.logs.data_dir_path(), commit.seq) {
            tracing::warn!(error = %e, "storage: the data directory's record of its commit could not be written");
        }
        tracing::debug!(
            commit = commit.seq,
            files = files.len(),
            uploaded = report.uploaded_objects,
            "synced into the bucket"
        );
        report.commit = Some(commit.seq);
        self.commit_keys.insert(commit.seq, Arc::new(files.iter().map(|f| f.key.clone()).collect()));
        self.last_files = Some(files);
        // Deletions only while the lease is valid by this server's clock: a successor may be acting.
        let holding = self.lease.as_ref().is_none_or(|l| l.may_delete());
        match if holding { self.collect_garbage().await } else { Ok(0) } {
            Ok(n) => report.deleted_objects += n,
            // The next sync tries again; nothing a commit names is ever deleted.
            Err(e) => tracing::warn!(error = %e, "storage: cleaning old commits out of the bucket failed"),
        }
        if let Err(e) = self.evict().await {
            tracing::warn!(error = %e, "storage: the local cache could not be trimmed; retried after the next sync");
        }
        Ok(report)
    }

    /// Deletes every commit but the newest `keep` (at least 1) and the objects only they named, after
    /// renewing the writer lease (an error when it is not held). For a tree no node writes any more (see
    /// the retention of retired trees, `src/retired.rs`), once no reader can still be on an older commit.
    /// Returns the objects deleted.
    ///
    /// # Errors
    /// The lease is not held, or listing or deleting failed.
    pub async fn trim_commits(&mut self, keep: usize) -> Result<usize, String> {
        if let Some(lease) = &mut self.lease {
            lease.before_commit().await?;
            if !lease.may_delete() {
                return Ok(0);
            }
        }
        let kept = std::mem::replace(&mut self.keep_commits, keep.max(1));
        let result = self.collect_garbage().await;
        self.keep_commits = kept;
        result
    }

    async fn upload_view(&mut self, root: &Path) -> Result<(Vec<CommitFile>, SyncReport), String> {
        let mut report = SyncReport::default();
        let mut files = Vec::new();
        let staged = walk(root).map_err(|e| format!("storage: cannot read the staged view {}: {e}", root.display()))?;
        let present: HashSet<&str> = staged.iter().map(|(rel, _)| rel.as_str()).collect();
        for (rel, abs) in &staged {
            let (rel, abs) = (rel.clone(), abs.as_path());
            if let Some(stem) = rel.strip_suffix(".remote") {
                // A part the bucket holds and the local disk does not (evicted, or left there by a restore):
                // the commit names its object as the earlier ones did.
                let parquet = format!("{stem}.parquet");
                if present.contains(parquet.as_str()) {
                    continue;
                }
                let sidecar = store::remote::read_sidecar(&root.join(&parquet))
                    .map_err(|e| format!("storage: {e}"))?
                    .ok_or_else(|| format!("storage: the sidecar {rel} vanished from the staged view"))?;
                let key = format!("data/{parquet}");
                if self.ours.get(&key) != Some(&sidecar.bytes) {
                    return Err(format!(
                        "storage: {parquet} lives in the bucket only, but {key} is not in {}; the sync stops rather \
                         than commit a state without it",
                        self.bucket.describe()
                    ));
                }
                files.push(CommitFile { path: parquet, key, bytes: sidecar.bytes });
                continue;
            }
            // The record of the commit the directory holds is the directory's own, never a commit's: it would
            // change each commit, and a restored directory records the commit it came from.
            if rel.ends_with(".fetch") || rel.ends_with(".remote-tmp") || rel == crate::adopt::COMMIT_MARKER {
                continue;
            }
            let immutable = matches!(abs.extension().and_then(|x| x.to_str()), Some("parquet" | "idx"));
            let bytes = std::fs::metadata(abs).map_err(|e| format!("{}: {e}", abs.display()))?.len();
            let (key, content) = if immutable {
                (format!("data/{rel}"), None)
            } else {
                let content = tokio::fs::read(&abs).await.map_err(|e| format!("{}: {e}", abs.display()))?;
                (crate::content_key(&content), Some(content))
            };
            let upload = match (content.is_none(), self.ours.get(&key)) {
                (true, Some(&b)) if b == bytes => false,
                (true, Some(&b)) => {
                    return Err(format!(
                        "storage: the part {rel} ({bytes} bytes) has the name of another part the bucket keeps ({b} \
                         bytes under {key}); the sync stops rather than name the wrong object"
                    ));
                }
                (true, None) => true,
                (false, _) => !self.known.contains(&key),
            };
            if upload {
                self.upload(&key, abs, bytes, content).await?;
                self.known.insert(key.clone());
                if key.starts_with("data/") {
                    self.ours.insert(key.clone(), bytes);
                }
                report.uploaded_objects += 1;
                report.uploaded_bytes += bytes;
                self.metrics.uploaded_objects.inc();
                self.metrics.uploaded_bytes.inc_by(bytes);
            }
            files.push(CommitFile { path: rel, key, bytes });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok((files, report))
    }

    async fn upload(&self, key: &str, path: &Path, bytes: u64, content: Option<Vec<u8>>) -> Result<(), String> {
        let location = self.bucket.key(key);
        let fail = |e: &dyn std::fmt::Display| format!("storage: cannot upload {} to {location}: {e}", path.display());
        if bytes <= SINGLE_PUT_BYTES || content.is_some() {
            // A content key names its content: an object already there holds these bytes. A part's key is
            // written whatever is there: only the upload of a writer that died before naming it can be
            // (see `ours`), as a multipart upload overwrites too.
            let mode = if content.is_some() { PutMode::Create } else { PutMode::Overwrite };
            let content = match content {
                Some(c) => c,
                None => tokio::fs::read(path).await.map_err(|e| fail(&e))?,
            };
            return match self.bucket.store().put_opts(&location, PutPayload::from(content), mode.into()).await {
                Ok(_) | Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                    Ok(())
                }
                Err(e) => Err(fail(&e)),
            };
        }
        let upload = self.bucket.store().put_multipart(&location).await.map_err(|e| fail(&e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut file = tokio::fs::File::open(path).await.map_err(|e| fail(&e))?;
        let mut buf = vec![0u8; PART_BYTES];
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf).await.map_err(|e| fail(&e))?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(4).await.map_err(|e| fail(&e))?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(|e| fail(&e))?;
        Ok(())
    }

    /// Deletes the commits before the newest `keep_commits`, and the objects they named that no kept commit
    /// names. Returns the objects deleted.
    async fn collect_garbage(&mut self) -> Result<usize, String> {
        let seqs = self.bucket.commit_numbers().await?;
        if seqs.len() <= self.keep_commits {
            return Ok(0);
        }
        let (old, kept) = seqs.split_at(seqs.len() - self.keep_commits);
        let mut live: BTreeSet<String> = BTreeSet::new();
        for &seq in kept {
            live.extend(self.keys_of(seq).await?.iter().cloned());
        }
        let mut deleted = 0;
        for &seq in old {
            let doomed: Vec<String> = match self.keys_of(seq).await {
                Ok(keys) => keys.iter().filter(|k| !live.contains(*k)).cloned().collect(),
                // A commit this build cannot read names nothing it can judge: drop only the commit.
                Err(e) => {
                    tracing::warn!(seq, error = %e, "storage: an old commit cannot be read; deleting it alone");
                    Vec::new()
                }
            };
            // The commit goes first: no commit ever names a deleted object.
            self.bucket.delete_commit(seq).await?;
            self.commit_keys.remove(&seq);
            for key in doomed {
                if self.delete_object(&key).await {
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }

    /// Deletes the object `key` (no commit names it), counted; false when the store refused (logged; a
    /// later clean-up tries again).
    async fn delete_object(&mut self, key: &str) -> bool {
        match self.bucket.store().delete(&self.bucket.key(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                self.known.remove(key);
                self.ours.remove(key);
                self.metrics.deleted_objects.inc();
                true
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "storage: cannot delete an object no commit names");
                false
            }
        }
    }

    /// Every object under `data/` and `objects/`: what commits may name.
    async fn stored_objects(&self) -> Result<Vec<object_store::ObjectMeta>, String> {
        let mut out = Vec::new();
        for dir in ["data", "objects"] {
            out.extend(self.bucket.objects_under(dir).await?);
        }
        Ok(out)
    }

    /// The object keys commit `seq` names, read once.
    async fn keys_of(&mut self, seq: u64) -> Result<Arc<BTreeSet<String>>, String> {
        if let Some(k) = self.commit_keys.get(&seq) {
            return Ok(k.clone());
        }
        let keys: Arc<BTreeSet<String>> =
            Arc::new(self.bucket.read_commit(seq).await?.files.into_iter().map(|f| f.key).collect());
        self.commit_keys.insert(seq, keys.clone());
        Ok(keys)
    }
}

impl Syncer {
    /// Deletes objects under `data/` and `objects/` that no kept commit names and that are older than
    /// [`ORPHAN_MIN_AGE`]: uploads of a sync that failed or was killed before its commit. Returns how many.
    async fn sweep_orphans(&mut self, current: &[CommitFile]) -> Result<usize, String> {
        let mut live: BTreeSet<String> = current.iter().map(|f| f.key.clone()).collect();
        for seq in self.bucket.commit_numbers().await? {
            live.extend(self.keys_of(seq).await?.iter().cloned());
        }
        if let Some(files) = &self.last_files {
            live.extend(files.iter().map(|f| f.key.clone()));
        }
        let cutoff = std::time::SystemTime::now() - self.orphan_min_age;
        let mut deleted = 0;
        for m in self.stored_objects().await? {
            let key = self.bucket.unprefixed(&m.location).to_string();
            if !live.contains(&key)
                && std::time::SystemTime::from(m.last_modified) <= cutoff
                && self.delete_object(&key).await
            {
                deleted += 1;
            }
        }
        if deleted > 0 {
            tracing::info!(objects = deleted, "storage: deleted objects no commit names (left by an unfinished sync)");
        }
        Ok(deleted)
    }
}

/// Every file under `root`, as (path relative to `root` with `/` separators, absolute path).
pub(crate) fn walk(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                out.push((rel.join("/"), path));
            }
        }
    }
    out.sort();
    Ok(out)
}
