//! The local disk as a bounded cache of the bucket's parts (issue 22).
//!
//! - [`BucketParts`]: the [`store::remote::RemoteParts`] source the stores fetch evicted parts through
//!   (`data/<path>` objects, which the sync wrote and which never change), counted in
//!   `lumen_bucket_cache_*`.
//! - After each sync, [`crate::sync::Syncer`] evicts (through [`store::remote::evict`]) the least recently
//!   read parts that the newest commit names, while the local part bytes are above
//!   `storage.cache_max_bytes`.
//! - A restore downloads the newest parts up to the same budget and leaves a sidecar for the rest, so that
//!   a node starts over a bucket of any size after reading only its manifests, catalogs and indexes.

use std::path::Path;
use std::sync::Arc;

use object_store::ObjectStoreExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Bucket;

/// The cache's metrics, `lumen_bucket_cache_*`.
#[derive(Clone, Default)]
pub struct CacheMetrics {
    pub fetches: Counter,
    pub fetched_bytes: Counter,
    pub fetch_failures: Counter,
    pub evicted_parts: Counter,
    pub evicted_bytes: Counter,
    /// Part bytes on the local disk, as the last eviction pass counted them.
    pub local_bytes: Gauge,
}

impl CacheMetrics {
    pub fn register(registry: &mut Registry) -> CacheMetrics {
        let m = CacheMetrics::default();
        let r = registry.sub_registry_with_prefix("lumen_bucket_cache");
        r.register("fetches", "parts fetched from the bucket into the local cache", m.fetches.clone());
        r.register("fetched_bytes", "bytes of parts fetched from the bucket", m.fetched_bytes.clone());
        r.register(
            "fetch_failures",
            "fetches of parts from the bucket that failed (the read failed; it can be retried)",
            m.fetch_failures.clone(),
        );
        r.register("evicted_parts", "local part files evicted (the bucket keeps them)", m.evicted_parts.clone());
        r.register("evicted_bytes", "bytes of local part files evicted", m.evicted_bytes.clone());
        r.register(
            "local_bytes",
            "part bytes on the local disk after the last eviction pass (storage.cache_max_bytes bounds them)",
            m.local_bytes.clone(),
        );
        m
    }
}

/// Fetches parts from the bucket for the stores; blocking calls run the download on the server's runtime.
pub struct BucketParts {
    bucket: Bucket,
    runtime: tokio::runtime::Handle,
    metrics: CacheMetrics,
}

impl BucketParts {
    /// Call on the runtime that will run the downloads.
    pub fn new(bucket: Bucket, metrics: CacheMetrics) -> Arc<BucketParts> {
        Arc::new(BucketParts { bucket, runtime: tokio::runtime::Handle::current(), metrics })
    }

    async fn download(bucket: Bucket, rel: String, dest: std::path::PathBuf) -> Result<u64, String> {
        let key = bucket.key(&format!("data/{rel}"));
        let fail = |e: &dyn std::fmt::Display| format!("{key} in {}: {e}", bucket.describe());
        let mut stream = bucket.store().get(&key).await.map_err(|e| fail(&e))?.into_stream();
        let mut file = tokio::fs::File::create(&dest).await.map_err(|e| fail(&e))?;
        let mut n = 0u64;
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            let chunk = chunk.map_err(|e| fail(&e))?;
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await.map_err(|e| fail(&e))?;
            n += chunk.len() as u64;
        }
        file.sync_all().await.map_err(|e| fail(&e))?;
        Ok(n)
    }
}

impl store::remote::RemoteParts for BucketParts {
    fn fetch(&self, rel: &str, dest: &Path) -> Result<u64, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let task = BucketParts::download(self.bucket.clone(), rel.to_string(), dest.to_path_buf());
        self.runtime.spawn(async move {
            let _ = tx.send(task.await);
        });
        // On a worker thread of a multi-threaded runtime, hand its other tasks over while waiting.
        let wait = || rx.recv().unwrap_or_else(|_| Err("the download was cancelled (the server is stopping)".into()));
        let got = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        match &got {
            Ok(n) => {
                self.metrics.fetches.inc();
                self.metrics.fetched_bytes.inc_by(*n);
            }
            Err(e) => {
                self.metrics.fetch_failures.inc();
                tracing::warn!(part = rel, error = %e, "storage: fetching a part from the bucket failed");
            }
        }
        got
    }
}

/// Evicts local part files that `files` (the newest commit's) name, least recently read first, while the
/// local part bytes are above `budget`; counted in `metrics`. Returns the parts evicted.
///
/// # Errors
/// A message naming what failed (the parts evicted before it stay evicted).
pub(crate) async fn trim(
    logs: &store::LogStore,
    metric_store: &store::MetricStore,
    budget: u64,
    metrics: &CacheMetrics,
    files: &[crate::commit::CommitFile],
) -> Result<usize, String> {
    let named: std::collections::HashSet<String> = files.iter().map(|f| f.path.clone()).collect();
    let (logs, metric_store) = (logs.clone(), metric_store.clone());
    let report = tokio::task::spawn_blocking(move || {
        store::remote::evict(&logs, &metric_store, budget, &|rel| named.contains(rel))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("storage: evicting parts from the local cache failed: {e}"))?;
    metrics.evicted_parts.inc_by(report.evicted_parts as u64);
    metrics.evicted_bytes.inc_by(report.evicted_bytes);
    metrics.local_bytes.set((report.local_bytes - report.evicted_bytes) as i64);
    if report.evicted_parts > 0 {
        tracing::debug!(
            parts = report.evicted_parts,
            bytes = report.evicted_bytes,
            "evicted parts the bucket holds from the local cache"
        );
    }
    Ok(report.evicted_parts)
}

/// Whether `path` (under the data directory) is a part's Parquet file, which a restore may leave in the
/// bucket.
pub(crate) fn is_part_file(path: &str) -> bool {
    (path.starts_with("logs/") || path.starts_with("metrics/")) && path.ends_with(".parquet")
}

/// The order a restore warms parts in: newest day first (`date=YYYY-MM-DD` sorts as dates), newest part
/// of a day first.
pub(crate) fn warm_order(path: &str) -> (String, String) {
    let day = path.split('/').find(|c| c.starts_with("date=")).unwrap_or("").to_string();
    let name = path.rsplit('/').next().unwrap_or("").to_string();
    (day, name)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use object_store::memory::InMemory;
    use prometheus_client::registry::Registry;
    use store::model::{Labels, LogBatch, LogEntry, Tenant};
    use store::{LogStore, MetricStore, ScanRequest, StoreConfig, StoreOptions};

    use super::*;
    use crate::sync::{SyncMetrics, Syncer};

    fn stores(dir: &Path) -> (LogStore, MetricStore) {
        let options = StoreOptions {
            data_dir: dir.to_path_buf(),
            retention: Duration::from_secs(30 * 86_400),
            disk: None,
            retention_rules: Vec::new(),
            tuning: StoreConfig { compaction_min_parts: 100, ..StoreConfig::default() },
        };
        let mut r = Registry::default();
        (LogStore::open(options.clone(), &mut r).unwrap(), MetricStore::open(options, &mut r).unwrap())
    }

    async fn lines(logs: &LogStore) -> usize {
        let mut stream = logs.scan(ScanRequest::all(Tenant::default_tenant())).unwrap().stream;
        let mut n = 0;
        while let Some(b) = stream.next().await {
            n += b.unwrap().num_rows();
        }
        n
    }

    fn local_parquet(dir: &Path) -> Vec<String> {
        crate::sync::walk(dir).unwrap().into_iter().map(|(rel, _)| rel).filter(|r| r.ends_with(".parquet")).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_evicts_what_the_bucket_holds_fetches_it_back_and_a_restore_starts_warm() {
        let dir = tempfile::tempdir().unwrap();
        let (logs, metrics) = stores(dir.path());
        let bucket = Bucket::with_store(Arc::new(InMemory::new()), "p");
        let cache = CacheMetrics::default();
        let parts = BucketParts::new(bucket.clone(), cache.clone());
        logs.attach_remote(parts.clone());
        metrics.attach_remote(parts.clone());
        let mut syncer =
            Syncer::new(bucket.clone(), logs.clone(), metrics.clone(), "n".into(), 2, SyncMetrics::default())
                .with_cache(0, cache.clone());
        let t0 = store::time::now_ns() - 2 * store::time::NANOS_PER_DAY;
        for day in 0..3 {
            let mut b = LogBatch::default();
            let s = b.stream_index(Labels::from_pairs(vec![("app".into(), "a".into())]));
            for i in 0..200 {
                let time_ns = t0 + day * store::time::NANOS_PER_DAY + i;
                b.entries.push(LogEntry { stream: s, time_ns, line: format!("day {day} line {i}"), fields: vec![] });
            }
            logs.append(&Tenant::default_tenant(), b).await.unwrap();
            logs.flush().await.unwrap();
        }
        let first = syncer.sync_once().await.unwrap();
        assert_eq!(first.commit, Some(1));
        assert!(local_parquet(dir.path()).is_empty(), "a zero budget evicts every synced part");
        assert_eq!(cache.evicted_parts.get(), 3);
        // The next commit names the evicted parts as the last did: nothing changed, nothing is collected.
        let again = syncer.sync_once().await.unwrap();
        assert_eq!((again.commit, again.uploaded_objects, again.deleted_objects), (None, 0, 0));

        assert_eq!(lines(&logs).await, 600, "reads fetch the parts back");
        assert_eq!((cache.fetches.get(), local_parquet(dir.path()).len()), (3, 3));

        // New data: the commit names the cached parts and the new one; all go again.
        let mut b = LogBatch::default();
        let s = b.stream_index(Labels::from_pairs(vec![("app".into(), "b".into())]));
        b.entries.push(LogEntry { stream: s, time_ns: store::time::now_ns(), line: "late".into(), fields: vec![] });
        logs.append(&Tenant::default_tenant(), b).await.unwrap();
        logs.flush().await.unwrap();
        let r = syncer.sync_once().await.unwrap();
        assert_eq!((r.commit, r.uploaded_objects >= 2, r.deleted_objects), (Some(2), true, 0), "{r:?}");
        let commit = bucket.latest_commit().await.unwrap().unwrap();
        assert_eq!(commit.files.iter().filter(|f| f.path.ends_with(".parquet")).count(), 4);
        assert!(!commit.files.iter().any(|f| f.path.ends_with(".remote") || f.path.ends_with(".fetch")));
        drop((logs, metrics, syncer));

        // A restore with room for about one part downloads the newest day's and leaves the rest.
        let newest = commit.files.iter().filter(|f| is_part_file(&f.path)).max_by_key(|f| warm_order(&f.path)).unwrap();
        let other = tempfile::tempdir().unwrap();
        let restored = bucket.restore_if_empty_within(other.path(), Some(newest.bytes)).await.unwrap().unwrap();
        assert_eq!(restored.left_in_bucket, 3, "{restored:?}");
        assert_eq!(local_parquet(other.path()), vec![newest.path.clone()]);
        let (logs, metrics) = stores(other.path());
        logs.attach_remote(parts.clone());
        metrics.attach_remote(parts);
        assert_eq!(lines(&logs).await, 601);
        assert_eq!(local_parquet(other.path()).len(), 4);
    }
}
