//! A query node follows the bucket (issue 22, `server.role = "query"`): every `storage.sync_interval` it
//! reads the newest commit the writer made and brings its data directory to that state without
//! downloading a single part: manifests, catalogs, delete requests and part indexes are downloaded when
//! they changed (content keys tell; a part index never changes), each part the commit names gets a sidecar
//! (see `store::remote`), fetched into the bounded cache when a query reads it. Then both stores
//! [`refresh`](store::LogStore::refresh): new parts are opened, parts the writer compacted away or deleted
//! are dropped along with their local files. The manifests are renamed into place last, so a follow cut
//! short leaves the previous state readable.
//!
//! A query node never writes to the bucket and takes no lease: its stores refuse writes
//! (`set_read_only`). It sees what the writer synced: what is still in the writer's head, or flushed since
//! its last sync, shows up one flush and one sync interval later.

use std::path::{Path, PathBuf};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use store::{LogStore, MetricStore};

use crate::Bucket;
use crate::cache::CacheMetrics;
use crate::commit::{Commit, CommitFile};

/// The follower's metrics, `lumen_bucket_follow_*`.
#[derive(Clone, Default)]
pub struct FollowMetrics {
    pub applied_commit: Gauge,
    /// Ingest nodes' trees followed besides the prefix's own commits (see `lumen::trees`).
    pub trees: Gauge,
    pub follows: Counter,
    pub failures: Counter,
    pub downloaded_bytes: Counter,
}

impl FollowMetrics {
    pub fn register(registry: &mut Registry) -> FollowMetrics {
        let m = FollowMetrics::default();
        let r = registry.sub_registry_with_prefix("lumen_bucket_follow");
        r.register("applied_commit", "the writer's commit this query node answers from", m.applied_commit.clone());
        r.register("trees", "ingest nodes' trees of the bucket this query node follows", m.trees.clone());
        r.register("follows", "newer commits of the writer brought into this query node", m.follows.clone());
        r.register("failures", "follows that failed (retried at the next interval)", m.failures.clone());
        r.register(
            "downloaded_bytes",
            "bytes of manifests, catalogs and part indexes downloaded by the follows",
            m.downloaded_bytes.clone(),
        );
        m
    }
}

/// What one follow did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Followed {
    /// The commit applied; None when the newest was applied already (or the bucket holds none).
    pub commit: Option<u64>,
    pub downloaded_files: usize,
    pub downloaded_bytes: u64,
    pub parts_opened: usize,
    pub parts_dropped: usize,
}

/// Brings one data directory to the bucket's newest commit, again and again.
pub struct Follower {
    bucket: Bucket,
    logs: LogStore,
    metric_store: MetricStore,
    data_dir: PathBuf,
    applied: Option<u64>,
    /// `storage.cache_max_bytes`: fetched parts past it are evicted after each follow.
    cache: Option<(u64, CacheMetrics)>,
    metrics: FollowMetrics,
}

impl Follower {
    /// `applied`: the commit the data directory holds already (a restore's), if known.
    pub fn new(
        bucket: Bucket,
        logs: LogStore,
        metric_store: MetricStore,
        applied: Option<u64>,
        metrics: FollowMetrics,
    ) -> Follower {
        let data_dir = logs.data_dir_path();
        Follower { bucket, logs, metric_store, data_dir, applied, cache: None, metrics }
    }

    /// Bounds the parts fetched into the local cache (see [`crate::cache`]).
    pub fn with_cache(mut self, max_bytes: u64, metrics: CacheMetrics) -> Follower {
        self.cache = Some((max_bytes, metrics));
        self
    }

    /// Changes the bound of the parts fetched into the local cache (a query node following several
    /// ingest nodes' trees gives each its share of `storage.cache_max_bytes`).
    pub fn set_cache_max(&mut self, max_bytes: u64) {
        if let Some((max, _)) = &mut self.cache {
            *max = max_bytes;
        }
    }

    /// The log store it brings up to date.
    pub fn logs(&self) -> &LogStore {
        &self.logs
    }

    /// The metric store it brings up to date.
    pub fn metrics(&self) -> &MetricStore {
        &self.metric_store
    }

    /// The commit the data directory holds, once one was applied (or restored).
    pub fn applied(&self) -> Option<u64> {
        self.applied
    }

    /// One follow, counted.
    ///
    /// # Errors
    /// A message naming what failed; the data directory and the stores keep the last state applied.
    pub async fn follow_once(&mut self) -> Result<Followed, String> {
        let res = self.follow_inner().await;
        match &res {
            Ok(f) if f.commit.is_some() => {
                self.metrics.follows.inc();
            }
            Ok(_) => {}
            Err(_) => {
                self.metrics.failures.inc();
            }
        }
        res
    }

    async fn follow_inner(&mut self) -> Result<Followed, String> {
        let mut out = Followed::default();
        let Some(commit) = self.bucket.latest_commit().await? else {
            return Ok(out);
        };
        if Some(commit.seq) != self.applied {
            self.apply(&commit, &mut out).await?;
            let (logs, metrics) = (self.logs.clone(), self.metric_store.clone());
            let (l, m) =
                tokio::task::spawn_blocking(move || Ok::<_, store::Error>((logs.refresh()?, metrics.refresh()?)))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("storage: the followed commit {} cannot be opened: {e}", commit.seq))?;
            out.parts_opened = l.0 + m.0;
            out.parts_dropped = l.1 + m.1;
            self.applied = Some(commit.seq);
            self.metrics.applied_commit.set(commit.seq as i64);
            self.metrics.downloaded_bytes.inc_by(out.downloaded_bytes);
            out.commit = Some(commit.seq);
            tracing::debug!(
                commit = commit.seq,
                downloaded = out.downloaded_files,
                opened = out.parts_opened,
                dropped = out.parts_dropped,
                "followed the writer's commit"
            );
        }
        if let Some((budget, metrics)) = &self.cache {
            crate::cache::trim(&self.logs, &self.metric_store, *budget, metrics, &commit.files).await?;
        }
        Ok(out)
    }

    /// Places every file of `commit` that the data directory does not hold as the commit has it.
    async fn apply(&self, commit: &Commit, out: &mut Followed) -> Result<(), String> {
        if let Some(bad) = commit.files.iter().find(|f| !crate::restore::safe(&f.path)) {
            return Err(format!(
                "storage: commit {} names the path {:?}, outside the data directory",
                commit.seq, bad.path
            ));
        }
        let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
        let res = self.stage(commit, out, &mut staged).await;
        if let Err(e) = res {
            for (tmp, _) in &staged {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(e);
        }
        // Manifests last: until they are in place, the stores' refresh sees the previous state.
        staged.sort_by_key(|(_, dest)| dest.file_name().is_some_and(|n| n == "manifest.json"));
        for (tmp, dest) in &staged {
            std::fs::rename(tmp, dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        }
        Ok(())
    }

    async fn stage(
        &self,
        commit: &Commit,
        out: &mut Followed,
        staged: &mut Vec<(PathBuf, PathBuf)>,
    ) -> Result<(), String> {
        for f in &commit.files {
            let dest = self.data_dir.join(&f.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            if crate::cache::is_part_file(&f.path) {
                // The part itself stays in the bucket until a read fetches it.
                if !dest.exists() && !store::remote::sidecar_path(&dest).exists() {
                    let sidecar = store::remote::Sidecar { bytes: f.bytes, row_groups: None, max_series_id: None };
                    let tmp = tmp_name(&store::remote::sidecar_path(&dest));
                    let body = serde_json::to_vec(&sidecar).map_err(|e| e.to_string())?;
                    std::fs::write(&tmp, body).map_err(|e| format!("{}: {e}", tmp.display()))?;
                    staged.push((tmp, store::remote::sidecar_path(&dest)));
                }
                continue;
            }
            if holds(&dest, f) {
                continue;
            }
            let content = self.bucket.fetch_committed(f, commit.seq).await?;
            let tmp = tmp_name(&dest);
            std::fs::write(&tmp, &content).map_err(|e| format!("{}: {e}", tmp.display()))?;
            staged.push((tmp, dest));
            out.downloaded_files += 1;
            out.downloaded_bytes += f.bytes;
        }
        Ok(())
    }
}

/// Whether the local file at `dest` is the commit's: a part index (never rewritten) of its size, or a
/// file whose content has the commit's content key.
fn holds(dest: &Path, f: &CommitFile) -> bool {
    if f.key.starts_with("data/") {
        return std::fs::metadata(dest).is_ok_and(|m| m.len() == f.bytes);
    }
    std::fs::read(dest).is_ok_and(|b| b.len() as u64 == f.bytes && crate::content_key(&b) == f.key)
}

fn tmp_name(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!("{name}.follow.tmp"))
}
