//! Parts that live in an object store (issue 22: the local disk as a bounded cache of the bucket).
//!
//! A part file synced into the bucket may be *evicted*: a small sidecar `<id>.remote` is written beside
//! where the Parquet file was (its size, and what opening the part needs from its footer), then the
//! Parquet file is removed. The manifest still names the part; every read of it goes through
//! [`RemoteState::open_file`], which downloads the file back through the [`RemoteParts`] source the server
//! attached (`LogStore::attach_remote`, `MetricStore::attach_remote`) into `<id>.fetch` and renames it into
//! place, one download per part at a time. A part with a sidecar and no Parquet file is thus *in the
//! bucket only*; one with both is cached; one with neither is missing, as before.
//!
//! Which parts go is decided by [`evict`]: while the local part bytes of both stores are above the
//! budget, the part that was read least recently (a part never read counts from the time of its newest
//! row, so the newest days stay warm) and that the bucket holds goes first.
//!
//! A failed download fails the read with [`Error::Remote`] (the query answers 5xx and can be retried); it
//! never marks the part unreadable as damage does.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::{LogStore, MetricStore};

/// Downloads part files from where they were synced.
pub trait RemoteParts: Send + Sync + 'static {
    /// Writes the part file at `rel` (its path under the data directory, `/`-separated) to `dest`, fsynced.
    /// Called from blocking threads (scans, compactions). Returns the bytes written.
    ///
    /// # Errors
    /// A message naming the object and what failed.
    fn fetch(&self, rel: &str, dest: &Path) -> std::result::Result<u64, String>;
}

/// What `<id>.remote` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The Parquet file's size.
    pub bytes: u64,
    /// Its row groups (log parts; checked against the index when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_groups: Option<usize>,
    /// The highest series id it holds (metric parts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_series_id: Option<u32>,
}

/// The extension of a sidecar.
pub const SIDECAR_EXT: &str = "remote";

/// The sidecar of the Parquet file at `parquet`.
pub fn sidecar_path(parquet: &Path) -> PathBuf {
    parquet.with_extension(SIDECAR_EXT)
}

/// Writes the sidecar of `parquet` durably (temporary file, fsync, rename, fsync of the directory).
///
/// # Errors
/// I/O errors.
pub fn write_sidecar(parquet: &Path, sidecar: &Sidecar) -> Result<()> {
    let path = sidecar_path(parquet);
    let tmp = parquet.with_extension("remote-tmp");
    let body = serde_json::to_vec(sidecar).map_err(|e| Error::Config(format!("sidecar: {e}")))?;
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &body)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(Error::io("write", &path))?;
    if let Some(dir) = path.parent() {
        crate::manifest::sync_dir(dir)?;
    }
    Ok(())
}

/// Reads the sidecar of `parquet`; `None` when there is none.
///
/// # Errors
/// I/O errors, or a sidecar that does not parse.
pub fn read_sidecar(parquet: &Path) -> Result<Option<Sidecar>> {
    let path = sidecar_path(parquet);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Corrupt {
            what: "remote part sidecar",
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io { op: "read", path, source: e }),
    }
}

fn now_ms() -> i64 {
    crate::time::now_ns() / 1_000_000
}

/// A part's standing towards the bucket: whether it is there, where to fetch it from, when it was last read.
pub(crate) struct RemoteState {
    /// Its path under the data directory, `/`-separated (the object is `data/<rel>`).
    rel: String,
    /// The bucket holds it (a sidecar exists): a missing local file is fetched, not an error.
    in_bucket: AtomicBool,
    source: OnceLock<Arc<dyn RemoteParts>>,
    fetching: Mutex<()>,
    /// When a read last opened it (ms), or its newest row's time when never read.
    last_read_ms: AtomicI64,
}

impl RemoteState {
    /// `newest_ms`: the time of the part's newest row, its heat until it is read.
    pub(crate) fn new(rel: PathBuf, newest_ms: i64, in_bucket: bool) -> RemoteState {
        let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        RemoteState {
            rel: rel.join("/"),
            in_bucket: AtomicBool::new(in_bucket),
            source: OnceLock::new(),
            fetching: Mutex::new(()),
            last_read_ms: AtomicI64::new(newest_ms.min(now_ms())),
        }
    }

    pub(crate) fn rel(&self) -> &str {
        &self.rel
    }

    pub(crate) fn attach(&self, source: &Arc<dyn RemoteParts>) {
        let _ = self.source.set(source.clone());
    }

    /// Records that the bucket holds it (its sidecar exists).
    pub(crate) fn set_in_bucket(&self) {
        self.in_bucket.store(true, Ordering::Release);
    }

    pub(crate) fn in_bucket(&self) -> bool {
        self.in_bucket.load(Ordering::Acquire)
    }

    pub(crate) fn last_read_ms(&self) -> i64 {
        self.last_read_ms.load(Ordering::Relaxed)
    }

    /// Opens the part's Parquet file at `path` (`bytes` long), downloading it first when it lives in the
    /// bucket only.
    ///
    /// # Errors
    /// I/O errors; [`Error::Remote`] when the download failed or no source is attached.
    pub(crate) fn open_file(&self, path: &Path, bytes: u64) -> Result<File> {
        self.last_read_ms.store(now_ms(), Ordering::Relaxed);
        match File::open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.in_bucket() => {}
            Err(e) => return Err(Error::Io { op: "open", path: path.to_path_buf(), source: e }),
        }
        let _one_at_a_time = self.fetching.lock();
        if let Ok(f) = File::open(path) {
            return Ok(f);
        }
        let remote = |reason: String| Error::Remote { path: path.to_path_buf(), reason };
        let Some(source) = self.source.get() else {
            return Err(remote(
                "the part lives in the object store, and this server has no [storage] to fetch it from; start it \
                 with the [storage] section it was synced with"
                    .into(),
            ));
        };
        let tmp = path.with_extension("fetch");
        let got = source.fetch(&self.rel, &tmp).map_err(remote);
        let got = match got {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if got != bytes {
            let _ = fs::remove_file(&tmp);
            return Err(remote(format!("the object holds {got} bytes where the manifest says {bytes}")));
        }
        fs::rename(&tmp, path).map_err(Error::io("rename", path))?;
        if let Some(dir) = path.parent() {
            crate::manifest::sync_dir(dir)?;
        }
        tracing::debug!(part = %self.rel, bytes, "fetched a part from the object store");
        File::open(path).map_err(Error::io("open", path))
    }

    /// Evicts the local copy at `path`: writes the sidecar (if not there), then removes the file. A read
    /// holding the file open goes on; a later one fetches it again.
    ///
    /// # Errors
    /// I/O errors (the part then stays local).
    pub(crate) fn evict(&self, path: &Path, sidecar: &Sidecar) -> Result<bool> {
        if !path.exists() {
            return Ok(false);
        }
        if self.source.get().is_none() {
            return Ok(false);
        }
        let _no_fetch_meanwhile = self.fetching.lock();
        if !self.in_bucket() || read_sidecar(path)?.is_none() {
            write_sidecar(path, sidecar)?;
            self.in_bucket.store(true, Ordering::Release);
        }
        fs::remove_file(path).map_err(Error::io("remove", path))?;
        Ok(true)
    }
}

/// What both stores' parts offer the cache.
pub(crate) trait CachedPart: Send + Sync + 'static {
    fn remote(&self) -> &RemoteState;
    /// Its Parquet file's path and size.
    fn file(&self) -> (&Path, u64);
    /// Evicts the local file (sidecar first); false when it was not there.
    fn evict(&self) -> Result<bool>;
}

/// Attaches `source` to every part (see `attach_remote` of the stores).
pub(crate) fn attach<P: CachedPart>(parts: &[Arc<P>], source: &Arc<dyn RemoteParts>) {
    for part in parts {
        part.remote().attach(source);
    }
}

/// The parts whose file is on the local disk, as eviction candidates.
pub(crate) fn candidates<P: CachedPart>(parts: Vec<Arc<P>>, source: &Arc<dyn RemoteParts>) -> Vec<Candidate> {
    parts
        .into_iter()
        .filter(|p| p.file().0.exists())
        .map(|part| {
            part.remote().attach(source);
            Candidate {
                rel: part.remote().rel().to_string(),
                bytes: part.file().1,
                heat_ms: part.remote().last_read_ms(),
                evict: Box::new(move || part.evict()),
            }
        })
        .collect()
}

/// The parts a manifest read again names (a query node's refresh): those open already are kept, new ones
/// are opened by `open` (None: left out, it said why), and those it no longer names are marked obsolete by
/// `drop_part` (their local files go once the last read lets go). Returns the parts, and how many were
/// opened and dropped.
///
/// # Errors
/// What `open` returns.
pub(crate) fn follow_parts<P, M>(
    current: &[Arc<P>],
    wanted: &[M],
    part_id: impl Fn(&P) -> u64,
    meta_id: impl Fn(&M) -> u64,
    mut open: impl FnMut(&M) -> Result<Option<P>>,
    drop_part: impl Fn(&P),
) -> Result<(Vec<Arc<P>>, usize, usize)> {
    let by_id: std::collections::HashMap<u64, &Arc<P>> = current.iter().map(|p| (part_id(p), p)).collect();
    let mut parts = Vec::with_capacity(wanted.len());
    let mut opened = 0;
    for meta in wanted {
        match by_id.get(&meta_id(meta)) {
            Some(p) => parts.push(Arc::clone(p)),
            None => {
                if let Some(p) = open(meta)? {
                    parts.push(Arc::new(p));
                    opened += 1;
                }
            }
        }
    }
    let live: std::collections::HashSet<u64> = wanted.iter().map(&meta_id).collect();
    let mut dropped = 0;
    for p in current.iter().filter(|p| !live.contains(&part_id(p))) {
        drop_part(p);
        dropped += 1;
    }
    Ok((parts, opened, dropped))
}

/// A part both stores can evict, as [`evict`] sees it.
pub(crate) struct Candidate {
    pub(crate) rel: String,
    pub(crate) bytes: u64,
    pub(crate) heat_ms: i64,
    pub(crate) evict: Box<dyn FnOnce() -> Result<bool> + Send>,
}

/// What [`evict`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvictReport {
    /// Local part bytes before.
    pub local_bytes: u64,
    pub evicted_parts: usize,
    pub evicted_bytes: u64,
}

/// Evicts local part files of both stores, least recently read first, until their bytes are at most
/// `budget`; only parts for which `in_bucket(rel)` holds (the bucket's newest commit names them) go.
///
/// # Errors
/// I/O errors of an eviction (the ones before it stand).
pub fn evict(
    logs: &LogStore,
    metrics: &MetricStore,
    budget: u64,
    in_bucket: &dyn Fn(&str) -> bool,
) -> Result<EvictReport> {
    let mut candidates = logs.eviction_candidates();
    candidates.extend(metrics.eviction_candidates());
    let mut report = EvictReport { local_bytes: candidates.iter().map(|c| c.bytes).sum(), ..EvictReport::default() };
    if report.local_bytes <= budget {
        return Ok(report);
    }
    candidates.sort_by_key(|c| c.heat_ms);
    let mut local = report.local_bytes;
    for c in candidates {
        if local <= budget {
            break;
        }
        if !in_bucket(&c.rel) {
            continue;
        }
        let bytes = c.bytes;
        if (c.evict)()? {
            local -= bytes;
            report.evicted_parts += 1;
            report.evicted_bytes += bytes;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use futures::StreamExt;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::model::{Labels, LogBatch, LogEntry, Tenant};
    use crate::scan::{LabelMatcher, MatchOp, ScanRequest};
    use crate::{StoreConfig, StoreOptions};

    /// A "bucket" that is a directory: part files copied there by the test, fetched by copying back.
    struct DirParts {
        root: PathBuf,
        fetches: AtomicUsize,
        fail: AtomicBool,
    }

    impl RemoteParts for DirParts {
        fn fetch(&self, rel: &str, dest: &Path) -> std::result::Result<u64, String> {
            if self.fail.load(Ordering::Relaxed) {
                return Err("the store is away".into());
            }
            self.fetches.fetch_add(1, Ordering::Relaxed);
            fs::copy(self.root.join(rel), dest).map_err(|e| e.to_string())
        }
    }

    fn options(dir: &Path, compaction_min_parts: usize) -> StoreOptions {
        StoreOptions {
            data_dir: dir.to_path_buf(),
            retention: Duration::from_secs(30 * 86_400),
            disk: None,
            retention_rules: Vec::new(),
            // No decoded runs, scan answers or pages kept: these tests count what reads fetch from the parts.
            tuning: StoreConfig {
                compaction_min_parts,
                decoded_cache_max_bytes: bytesize::ByteSize::b(0),
                scan_cache_max_bytes: bytesize::ByteSize::b(0),
                log_page_cache_max_bytes: bytesize::ByteSize::b(0),
                ..StoreConfig::default()
            },
        }
    }

    /// Stores that compact only when asked to, with at least `compaction_min_parts` parts.
    fn open(dir: &Path, compaction_min_parts: usize) -> (LogStore, MetricStore) {
        let mut r = Registry::default();
        let o = options(dir, compaction_min_parts);
        (LogStore::open(o.clone(), &mut r).unwrap(), MetricStore::open(o, &mut r).unwrap())
    }

    async fn lines(logs: &LogStore) -> std::result::Result<usize, String> {
        let scan = logs.scan(ScanRequest::all(Tenant::default_tenant())).map_err(|e| e.to_string())?;
        let mut n = 0;
        let mut stream = scan.stream;
        while let Some(b) = stream.next().await {
            n += b.map_err(|e| e.to_string())?.num_rows();
        }
        Ok(n)
    }

    fn samples(metrics: &MetricStore) -> std::result::Result<usize, String> {
        let m = LabelMatcher::new("__name__", MatchOp::Eq, "up").unwrap();
        let got = metrics.select(&Tenant::default_tenant(), &[m], 0, i64::MAX).map_err(|e| e.to_string())?;
        Ok(got.iter().map(|s| s.t.len()).sum())
    }

    /// Copies every part file of the data directory into the "bucket" (what a sync does).
    fn upload(data: &Path, bucket: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![data.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    let rel = p.strip_prefix(data).unwrap().to_string_lossy().into_owned();
                    fs::create_dir_all(bucket.join(&rel).parent().unwrap()).unwrap();
                    fs::copy(&p, bucket.join(&rel)).unwrap();
                    out.push(rel);
                }
            }
        }
        out
    }

    fn parquet_files(data: &Path) -> usize {
        crate::manifest::part_files(&data.join("logs"))
            .into_iter()
            .chain(crate::manifest::part_files(&data.join("metrics")))
            .filter(|(_, p)| p.extension().is_some_and(|x| x == "parquet"))
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn evicted_parts_are_fetched_back_when_read_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = tempfile::tempdir().unwrap();
        let source = Arc::new(DirParts {
            root: bucket.path().to_path_buf(),
            fetches: AtomicUsize::new(0),
            fail: AtomicBool::new(false),
        });
        let t0 = crate::time::now_ns() - 3_600_000_000_000;
        {
            let (logs, metrics) = open(dir.path(), 100);
            logs.attach_remote(source.clone());
            metrics.attach_remote(source.clone());
            for round in 0..3 {
                let mut b = LogBatch::default();
                let s = b.stream_index(Labels::from_pairs(vec![("app".into(), "a".into())]));
                for i in 0..500 {
                    let time_ns = t0 + (round * 500 + i) as i64 * 1_000_000;
                    b.entries.push(LogEntry { stream: s, time_ns, line: format!("line {i}"), fields: vec![] });
                }
                logs.append(&Tenant::default_tenant(), b).await.unwrap();
                logs.flush().await.unwrap();
                let mut m = metrics.batch(&Tenant::default_tenant());
                let t = t0 / 1_000_000 + round as i64 * 60_000;
                m.add(&[("__name__", "up"), ("job", "a")], (0..100).map(|i| (t + i * 100, 1.0)));
                metrics.append(m).await.unwrap();
                metrics.flush().await.unwrap();
            }
            assert_eq!((lines(&logs).await.unwrap(), samples(&metrics).unwrap()), (1500, 300));
            assert_eq!(parquet_files(dir.path()), 6);

            // Nothing goes that the bucket does not hold.
            let r = evict(&logs, &metrics, 0, &|_| false).unwrap();
            assert_eq!(r.evicted_parts, 0);
            let in_bucket: std::collections::HashSet<String> = upload(dir.path(), bucket.path()).into_iter().collect();
            // A budget that keeps some: the coldest go first (the oldest data, never read).
            let total = r.local_bytes;
            let r = evict(&logs, &metrics, total / 2, &|rel| in_bucket.contains(rel)).unwrap();
            assert!(r.evicted_parts >= 1 && r.local_bytes - r.evicted_bytes <= total / 2, "{r:?}");
            let r = evict(&logs, &metrics, 0, &|rel| in_bucket.contains(rel)).unwrap();
            assert!(r.evicted_parts >= 1, "{r:?}");
            assert_eq!(parquet_files(dir.path()), 0, "every part evicted");

            // Reads fetch them back, once each.
            assert_eq!((lines(&logs).await.unwrap(), samples(&metrics).unwrap()), (1500, 300));
            assert_eq!(source.fetches.load(Ordering::Relaxed), 6);
            assert_eq!(parquet_files(dir.path()), 6);
            assert_eq!((lines(&logs).await.unwrap(), samples(&metrics).unwrap()), (1500, 300));
            assert_eq!(source.fetches.load(Ordering::Relaxed), 6, "cached now");

            // Evicted again; a store that cannot deliver fails the read, and marks nothing unreadable.
            evict(&logs, &metrics, 0, &|rel| in_bucket.contains(rel)).unwrap();
            source.fail.store(true, Ordering::Relaxed);
            let err = lines(&logs).await.unwrap_err();
            assert!(err.contains("cannot fetch") && err.contains("the store is away"), "{err}");
            let err = samples(&metrics).unwrap_err();
            assert!(err.contains("cannot fetch"), "{err}");
            let t = Tenant::default_tenant();
            assert!(
                logs.skipped_parts(&t, 0, i64::MAX).is_empty() && metrics.skipped_parts(&t, 0, i64::MAX).is_empty()
            );
            source.fail.store(false, Ordering::Relaxed);
            assert_eq!((lines(&logs).await.unwrap(), samples(&metrics).unwrap()), (1500, 300));
            evict(&logs, &metrics, 0, &|rel| in_bucket.contains(rel)).unwrap();
        }
        // A restart opens the parts from their sidecars; without a source their reads fail and say why.
        let (logs, metrics) = open(dir.path(), 2);
        assert_eq!(parquet_files(dir.path()), 0);
        let err = lines(&logs).await.unwrap_err();
        assert!(err.contains("no [storage]"), "{err}");
        logs.attach_remote(source.clone());
        metrics.attach_remote(source.clone());
        assert_eq!((lines(&logs).await.unwrap(), samples(&metrics).unwrap()), (1500, 300));
        // Compaction reads evicted inputs too; the merged part is local, and the inputs' sidecars go.
        evict(&logs, &metrics, 0, &|rel| in_bucket_all(bucket.path(), rel)).unwrap();
        assert!(logs.compact().await.unwrap() >= 2);
        assert_eq!(lines(&logs).await.unwrap(), 1500);
        drop((logs, metrics));
        let sidecars = crate::manifest::part_files(&dir.path().join("logs"))
            .into_iter()
            .filter(|(_, p)| p.extension().is_some_and(|x| x == SIDECAR_EXT))
            .count();
        assert_eq!(sidecars, 0, "the compacted inputs' sidecars are gone with them");
    }

    fn in_bucket_all(bucket: &Path, rel: &str) -> bool {
        bucket.join(rel).exists()
    }
}
