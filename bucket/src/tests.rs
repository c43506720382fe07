use std::sync::Arc;

use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::Bucket;
use super::commit::CommitFile;

/// A store that ignores conditional writes, as some S3 imitations do: every put overwrites.
#[derive(Debug)]
struct NoConditions(InMemory);

impl std::fmt::Display for NoConditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoConditions")
    }
}

#[async_trait::async_trait]
impl ObjectStore for NoConditions {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        opts.mode = PutMode::Overwrite;
        self.0.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &ObjectPath, options: GetOptions) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.0.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&ObjectPath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&ObjectPath>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &ObjectPath, to: &ObjectPath, options: CopyOptions) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

fn file(path: &str, key: &str, bytes: u64) -> CommitFile {
    CommitFile { path: path.into(), key: key.into(), bytes }
}

#[tokio::test]
async fn a_store_that_ignores_conditional_creates_is_refused() {
    let good = Bucket::with_store(Arc::new(InMemory::new()), "p");
    good.check_conditional_create().await.expect("InMemory honours PutMode::Create");
    let bad = Bucket::with_store(Arc::new(NoConditions(InMemory::new())), "p");
    let err = bad.check_conditional_create().await.unwrap_err();
    assert!(matches!(err, super::CheckError::IgnoresConditions(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("ignores conditional writes") && err.contains("storage.backend"), "{err}");
}

#[tokio::test]
async fn commits_are_numbered_and_a_lost_race_takes_the_next_number() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let a = Bucket::with_store(store.clone(), "lumen");
    let b = Bucket::with_store(store.clone(), "lumen");
    assert!(a.latest_commit().await.unwrap().is_none());
    let c1 = a.append_commit("a", vec![file("manifest.json", "objects/1", 3)]).await.unwrap();
    assert_eq!(c1.seq, 1);
    // b wrote number 2 between a's listing and its create: a's create of 2 is refused and it takes 3.
    let mut stolen = c1.clone();
    stolen.seq = 2;
    stolen.node = "b".into();
    assert!(b.put_commit(&stolen).await.unwrap());
    assert!(!a.put_commit(&stolen).await.unwrap(), "a second create of commit 2 is refused");
    let c3 = a.append_commit("a", vec![file("manifest.json", "objects/2", 4)]).await.unwrap();
    assert_eq!(c3.seq, 3);
    assert_eq!(a.commit_numbers().await.unwrap(), vec![1, 2, 3]);
    assert_eq!(b.latest_commit().await.unwrap().unwrap(), c3);
    // Keys live under the prefix.
    let keys: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(None))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    assert!(keys.iter().all(|k| k.starts_with("lumen/commits/")), "{keys:?}");
}

#[tokio::test]
async fn restore_fills_an_empty_directory_and_leaves_a_full_one_alone() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let bucket = Bucket::with_store(store.clone(), "");
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(bucket.restore_if_empty(empty.path()).await.unwrap(), None, "no commit: a first start");
    for (key, body) in [("data/logs/a.parquet", "parquet"), ("objects/m", "{}"), ("objects/s", "streams")] {
        store.put(&ObjectPath::from(key), PutPayload::from(body.as_bytes().to_vec())).await.unwrap();
    }
    bucket
        .append_commit(
            "n",
            vec![
                file("logs/a.parquet", "data/logs/a.parquet", 7),
                file("manifest.json", "objects/m", 2),
                file("logs/tenant=x/streams.bin", "objects/s", 7),
            ],
        )
        .await
        .unwrap();
    let r = bucket.restore_if_empty(empty.path()).await.unwrap().expect("restored");
    assert_eq!((r.commit, r.files, r.bytes), (1, 3, 16));
    assert_eq!(std::fs::read_to_string(empty.path().join("logs/tenant=x/streams.bin")).unwrap(), "streams");
    assert_eq!(std::fs::read_to_string(empty.path().join("manifest.json")).unwrap(), "{}");
    // A directory a server ran in without ever flushing (lock, format, an empty and a written WAL
    // segment): its WAL holds acknowledged writes, so nothing is restored over it.
    let ran = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(ran.path().join("wal")).unwrap();
    std::fs::write(ran.path().join("lock"), "").unwrap();
    std::fs::write(ran.path().join("format.json"), "{}").unwrap();
    std::fs::write(ran.path().join("wal/00000000000000000001.wal"), "").unwrap();
    assert!(!super::restore::has_local_state(ran.path()), "only empty files: nothing of its own yet");
    std::fs::write(ran.path().join("wal/00000000000000000001.wal"), "records").unwrap();
    assert_eq!(bucket.restore_if_empty(ran.path()).await.unwrap(), None, "its WAL has records");
    assert!(!ran.path().join("manifest.json").exists());
    // Now it has a manifest: nothing is touched.
    std::fs::write(empty.path().join("logs/a.parquet"), "local").unwrap();
    assert_eq!(bucket.restore_if_empty(empty.path()).await.unwrap(), None);
    assert_eq!(std::fs::read_to_string(empty.path().join("logs/a.parquet")).unwrap(), "local");

    // A damaged object (its size differs from the commit's) or a path out of the directory: refused.
    let other = tempfile::tempdir().unwrap();
    store.put(&ObjectPath::from("objects/s"), PutPayload::from_static(b"short")).await.unwrap();
    let err = bucket.restore_if_empty(other.path()).await.unwrap_err();
    assert!(err.contains("refusing to restore a damaged file"), "{err}");
    assert!(!other.path().join("manifest.json").exists(), "no manifest after a failed restore");
    let leftovers: Vec<_> =
        crate::sync::walk(other.path()).unwrap().into_iter().filter(|(p, _)| p.ends_with(".restore.tmp")).collect();
    assert!(leftovers.is_empty(), "a failed restore leaves nothing: {leftovers:?}");
    bucket.append_commit("n", vec![file("../escape", "objects/m", 2)]).await.unwrap();
    let err = bucket.restore_if_empty(other.path()).await.unwrap_err();
    assert!(err.contains("outside the data directory"), "{err}");
}

mod syncer {
    use std::time::Duration;

    use prometheus_client::registry::Registry;
    use store::model::{Labels, LogBatch, LogEntry, Tenant};
    use store::{LogStore, MetricStore, StoreConfig, StoreOptions};

    use super::*;
    use crate::sync::{SyncMetrics, Syncer};

    fn stores(dir: &std::path::Path) -> (LogStore, MetricStore) {
        let options = StoreOptions {
            data_dir: dir.to_path_buf(),
            retention: Duration::from_secs(30 * 86_400),
            disk: None,
            retention_rules: Vec::new(),
            tuning: StoreConfig { compaction_min_parts: 2, ..StoreConfig::default() },
        };
        let mut r = Registry::default();
        (LogStore::open(options.clone(), &mut r).unwrap(), MetricStore::open(options, &mut r).unwrap())
    }

    async fn append(logs: &LogStore, app: &str, n: usize) {
        let mut b = LogBatch::default();
        let s = b.stream_index(Labels::from_pairs(vec![("app".into(), app.into())]));
        let t0 = store::time::now_ns();
        for i in 0..n {
            b.entries.push(LogEntry { stream: s, time_ns: t0 + i as i64, line: format!("{app} {i}"), fields: vec![] });
        }
        logs.append(&Tenant::default_tenant(), b).await.unwrap();
    }

    async fn keys(store: &Arc<dyn ObjectStore>, dir: &str) -> Vec<String> {
        let mut k: Vec<String> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(Some(&ObjectPath::from(dir))))
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        k.sort();
        k
    }

    #[tokio::test]
    async fn syncs_commit_only_changes_and_old_commits_take_their_objects_along() {
        let dir = tempfile::tempdir().unwrap();
        let (logs, metrics) = stores(dir.path());
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let bucket = Bucket::with_store(mem.clone(), "");
        let mut syncer =
            Syncer::new(bucket.clone(), logs.clone(), metrics.clone(), "n".into(), 1, SyncMetrics::default())
                .with_orphan_min_age(Duration::ZERO);
        // An upload of a sync that died before its commit.
        mem.put(&ObjectPath::from("data/logs/orphan.parquet"), PutPayload::from_static(b"x")).await.unwrap();

        append(&logs, "a", 10).await;
        logs.flush().await.unwrap();
        let r1 = syncer.sync_once().await.unwrap();
        assert_eq!(r1.commit, Some(1));
        assert_eq!(r1.deleted_objects, 1, "the orphan is swept at the first sync");
        let parts1 = keys(&mem, "data").await;
        assert!(!parts1.iter().any(|k| k.contains("orphan")), "{parts1:?}");
        assert!(
            parts1.iter().any(|k| k.ends_with(".parquet")) && parts1.iter().any(|k| k.ends_with(".idx")),
            "{parts1:?}"
        );
        assert!(!bucket.latest_commit().await.unwrap().unwrap().files.iter().any(|f| f.path.contains("wal")));

        let r2 = syncer.sync_once().await.unwrap();
        assert_eq!((r2.commit, r2.uploaded_objects), (None, 0), "nothing changed: no commit, no upload");

        // More data, then a compaction: the next commit names one part; with keep_commits = 1 the old
        // commit goes, and with it the parts only it named.
        append(&logs, "b", 10).await;
        logs.flush().await.unwrap();
        assert_eq!(syncer.sync_once().await.unwrap().commit, Some(2));
        assert_eq!(logs.compact().await.unwrap(), 2, "the two parts merge");
        let r = syncer.sync_once().await.unwrap();
        assert_eq!(r.commit, Some(3));
        assert!(r.deleted_objects >= 4, "two parts and their indexes of commit 2: {r:?}");
        assert_eq!(bucket.commit_numbers().await.unwrap(), vec![3]);
        let named: std::collections::BTreeSet<String> =
            bucket.latest_commit().await.unwrap().unwrap().files.into_iter().map(|f| f.key).collect();
        for k in keys(&mem, "data").await.into_iter().chain(keys(&mem, "objects").await) {
            assert!(named.contains(&k), "{k} is in the bucket but no commit names it");
        }
        for k in &named {
            mem.head(&ObjectPath::from(k.as_str())).await.unwrap_or_else(|e| panic!("{k} is named but missing: {e}"));
        }
    }
}
