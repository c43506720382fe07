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
use super::lease::LeaseRecord;

/// A store that ignores conditional writes, as some S3 imitations do: `If-Match` (every update overwrites)
/// and, with `create`, `If-None-Match` too (every put overwrites).
#[derive(Debug)]
struct Ignores {
    inner: InMemory,
    create: bool,
}

impl std::fmt::Display for Ignores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ignores(create: {})", self.create)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Ignores {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.create || matches!(opts.mode, PutMode::Update(_)) {
            opts.mode = PutMode::Overwrite;
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &ObjectPath, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&ObjectPath>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&ObjectPath>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &ObjectPath, to: &ObjectPath, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn file(path: &str, key: &str, bytes: u64) -> CommitFile {
    CommitFile { path: path.into(), key: key.into(), bytes }
}

#[tokio::test]
async fn a_store_that_ignores_conditional_creates_is_refused() {
    let good = Bucket::with_store(Arc::new(InMemory::new()), "p");
    good.check_conditional_create().await.expect("InMemory honours PutMode::Create");
    let bad = Bucket::with_store(Arc::new(Ignores { inner: InMemory::new(), create: true }), "p");
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
    // The sync's staging directory (copies, a retired tree's work directory) is not its own data.
    std::fs::create_dir_all(ran.path().join("bucket-sync/retired/n/logs")).unwrap();
    std::fs::write(ran.path().join("bucket-sync/retired/n/manifest.json"), "{}").unwrap();
    assert!(!super::restore::has_local_state(ran.path()), "only a staging directory");
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

    /// A writer killed after uploading a part and before its commit leaves the object; the writer restored
    /// from the last commit numbers its next part the same. The sync writes the new part over it instead of
    /// naming the dead writer's bytes.
    #[tokio::test]
    async fn an_unnamed_object_under_a_new_parts_key_is_overwritten_not_named() {
        let dir = tempfile::tempdir().unwrap();
        let (logs, metrics) = stores(dir.path());
        let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let bucket = Bucket::with_store(mem.clone(), "");
        let mut syncer =
            Syncer::new(bucket.clone(), logs.clone(), metrics.clone(), "n".into(), 2, SyncMetrics::default());
        append(&logs, "a", 10).await;
        logs.flush().await.unwrap();
        let part = crate::sync::walk(dir.path())
            .unwrap()
            .into_iter()
            .find(|(rel, _)| rel.ends_with(".parquet"))
            .expect("a part");
        let key = format!("data/{}", part.0);
        mem.put(&ObjectPath::from(key.as_str()), PutPayload::from_static(b"a dead writer's part")).await.unwrap();

        assert_eq!(syncer.sync_once().await.unwrap().commit, Some(1));
        let named = bucket.latest_commit().await.unwrap().unwrap();
        let f = named.files.iter().find(|f| f.path == part.0).unwrap();
        assert_eq!(f.key, key);
        let stored = mem.get(&ObjectPath::from(key.as_str())).await.unwrap().bytes().await.unwrap();
        assert_eq!(stored.as_ref(), std::fs::read(&part.1).unwrap().as_slice(), "the object holds this part");
    }
}

/// The writer lease (issue 22: "exactly one acts at a time ... a second one waits"), on `InMemory`,
/// which honours `PutMode::Create` and `PutMode::Update` as S3 does; short ttls, real time.
mod lease {
    use std::time::Duration;

    use prometheus_client::registry::Registry;
    use store::model::{Labels, LogBatch, LogEntry, Tenant};
    use store::{LogStore, MetricStore, StoreConfig, StoreOptions};

    use super::*;
    use crate::lease::{Lease, LeaseError, LeaseMetrics, LeaseRecord, Observed, WriterLease};
    use crate::sync::{SyncMetrics, Syncer};

    const TTL: Duration = Duration::from_millis(300);

    fn lease(bucket: &Bucket, node: &str) -> Lease {
        Lease::new(bucket.clone(), "writer", node, TTL)
    }

    async fn record(store: &Arc<dyn ObjectStore>) -> LeaseRecord {
        let bytes = store.get(&ObjectPath::from("p/leases/writer.json")).await.unwrap().bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn one_holder_a_waiter_renewal_takeover_after_the_ttl_loss_and_release() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let bucket = Bucket::with_store(store.clone(), "p");
        let (mut a, mut b) = (lease(&bucket, "a"), lease(&bucket, "b"));
        assert!(a.holder().starts_with("a/") && a.holder() != lease(&bucket, "a").holder(), "a random id per process");

        // Absent: created by the first.
        assert_eq!(a.acquire().await.unwrap(), Observed::Held);
        assert!(a.is_valid());
        let r = record(&store).await;
        assert_eq!((r.holder.as_str(), r.node.as_str(), r.ttl_ms, r.released), (a.holder(), "a", 300, false));

        // The second waits, and keeps waiting while the holder renews, however long that goes on.
        for _ in 0..3 {
            match b.acquire().await.unwrap() {
                Observed::HeldBy { holder, expires_in } => {
                    assert_eq!(holder, a.holder());
                    assert!(expires_in <= TTL && expires_in > TTL / 2, "{expires_in:?}");
                }
                o => panic!("the second must wait: {o:?}"),
            }
            tokio::time::sleep(TTL * 2 / 3).await;
            a.renew().await.unwrap();
        }
        assert!(!b.is_held());
        assert_eq!(record(&store).await.renewals, 3);

        // The holder stops renewing: once the record has not changed for the ttl by the waiter's clock,
        // the waiter takes over.
        assert!(matches!(b.acquire().await.unwrap(), Observed::HeldBy { .. }));
        tokio::time::sleep(TTL + TTL / 3).await;
        assert!(!a.is_valid(), "the old holder's own clock told it to stop first");
        assert_eq!(b.acquire().await.unwrap(), Observed::Held);
        assert_eq!(record(&store).await.holder, b.holder());

        // The old holder finds out at its next renewal: its If-Match fails.
        match a.renew().await {
            Err(LeaseError::Lost { holder }) => assert_eq!(holder, b.holder()),
            r => panic!("the old holder must find the lease lost: {r:?}"),
        }
        assert!(!a.is_held());
        assert!(matches!(a.acquire().await.unwrap(), Observed::HeldBy { .. }), "and waits like any other");

        // A release lets a waiter take it at once, without the ttl.
        b.release().await.unwrap();
        assert!(record(&store).await.released);
        assert!(!b.is_held());
        assert_eq!(a.acquire().await.unwrap(), Observed::Held);
        b.release().await.unwrap();
        assert_eq!(record(&store).await.holder, a.holder(), "releasing a lease not held writes nothing");
    }

    #[tokio::test]
    async fn of_two_waiters_of_an_expired_lease_only_one_takes_it() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let bucket = Bucket::with_store(store.clone(), "p");
        let mut dead = lease(&bucket, "dead");
        assert_eq!(dead.acquire().await.unwrap(), Observed::Held);
        let (mut c, mut d) = (lease(&bucket, "c"), lease(&bucket, "d"));
        assert!(matches!(c.observe().await.unwrap(), Observed::HeldBy { .. }));
        assert!(matches!(d.observe().await.unwrap(), Observed::HeldBy { .. }));
        assert!(!c.take().await.unwrap(), "a lease observed held is not taken");
        tokio::time::sleep(TTL + TTL / 3).await;
        assert_eq!(c.observe().await.unwrap(), Observed::Free);
        assert_eq!(d.observe().await.unwrap(), Observed::Free);
        assert!(c.take().await.unwrap());
        assert!(!d.take().await.unwrap(), "the second take's If-Match fails");
        assert!(c.is_held() && !d.is_held());
        assert!(matches!(d.acquire().await.unwrap(), Observed::HeldBy { holder, .. } if holder == c.holder()));

        // Two first takers of an absent lease: one create wins.
        let other = Bucket::with_store(Arc::new(InMemory::new()), "p");
        let (mut e, mut f) = (lease(&other, "e"), lease(&other, "f"));
        assert_eq!(e.observe().await.unwrap(), Observed::Free);
        assert_eq!(f.observe().await.unwrap(), Observed::Free);
        assert!(e.take().await.unwrap());
        assert!(!f.take().await.unwrap(), "the second create is refused");
    }

    fn stores(dir: &std::path::Path) -> (LogStore, MetricStore) {
        let options = StoreOptions {
            data_dir: dir.to_path_buf(),
            retention: Duration::from_secs(30 * 86_400),
            disk: None,
            retention_rules: Vec::new(),
            tuning: StoreConfig::default(),
        };
        let mut r = Registry::default();
        (LogStore::open(options.clone(), &mut r).unwrap(), MetricStore::open(options, &mut r).unwrap())
    }

    /// A flushed line, under a tenant named after `app`: these nodes' stores start empty while they claim
    /// to hold a commit (`with_base_commit`), so their part numbers start at 1 each, and one tenant per node
    /// keeps their part names apart (a real successor restores the commit and numbers after its parts).
    async fn flushed_lines(logs: &LogStore, app: &str) {
        let mut b = LogBatch::default();
        let s = b.stream_index(Labels::from_pairs(vec![("app".into(), app.into())]));
        b.entries.push(LogEntry { stream: s, time_ns: store::time::now_ns(), line: app.into(), fields: vec![] });
        logs.append(&Tenant::new(app).unwrap(), b).await.unwrap();
        logs.flush().await.unwrap();
    }

    struct Node {
        syncer: Syncer,
        logs: LogStore,
        metrics: LeaseMetrics,
        _dir: tempfile::TempDir,
    }

    fn node(bucket: &Bucket, name: &str, base_commit: Option<u64>) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let (logs, metric_store) = stores(dir.path());
        let metrics = LeaseMetrics::default();
        let writer = WriterLease::new(lease(bucket, name), metrics.clone()).with_base_commit(base_commit);
        let syncer = Syncer::new(bucket.clone(), logs.clone(), metric_store, name.into(), 2, SyncMetrics::default())
            .with_lease(writer);
        Node { syncer, logs, metrics, _dir: dir }
    }

    #[tokio::test]
    async fn only_the_lease_holder_syncs_and_a_successor_must_hold_the_newest_commit() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let bucket = Bucket::with_store(store.clone(), "p");
        let mut a = node(&bucket, "a", None);
        let mut b = node(&bucket, "b", None);
        flushed_lines(&a.logs, "a").await;
        flushed_lines(&b.logs, "b").await;

        let r = a.syncer.sync_once().await.unwrap();
        assert_eq!((r.commit, r.waiting), (Some(1), false));
        assert_eq!(a.metrics.held.get(), 1);
        // The second writes nothing: no upload, no commit.
        let r = b.syncer.sync_once().await.unwrap();
        assert!(r.waiting && r.commit.is_none() && r.uploaded_objects == 0, "{r:?}");
        assert_eq!((b.metrics.waits.get(), b.metrics.held.get()), (1, 0));
        assert_eq!(bucket.commit_numbers().await.unwrap(), vec![1]);

        // a stops renewing. b's data directory does not hold a's commit (it was never restored from
        // it): b never takes over, so that its sync cannot replace a's data with its own.
        tokio::time::sleep(TTL + TTL / 3).await;
        assert!(b.syncer.sync_once().await.unwrap().waiting);
        assert_eq!(b.metrics.behind.get(), 1);
        assert_eq!(bucket.latest_commit().await.unwrap().unwrap().node, "a");

        // c was restored from commit 1 (as a server on an empty disk is): it takes over and commits.
        let mut c = node(&bucket, "c", Some(1));
        assert!(c.syncer.sync_once().await.unwrap().waiting, "the lease is new to c: it starts its own clock");
        tokio::time::sleep(TTL + TTL / 3).await;
        flushed_lines(&c.logs, "c").await;
        let r = c.syncer.sync_once().await.unwrap();
        assert_eq!(r.commit, Some(2), "{r:?}");
        assert_eq!(bucket.latest_commit().await.unwrap().unwrap().node, "c");

        // a comes back (it was only paused): its renewal fails, it counts the loss and writes nothing.
        flushed_lines(&a.logs, "a2").await;
        let r = a.syncer.sync_once().await.unwrap();
        assert!(r.waiting && r.commit.is_none(), "{r:?}");
        assert_eq!((a.metrics.lost.get(), a.metrics.held.get()), (1, 0));
        assert_eq!(bucket.commit_numbers().await.unwrap(), vec![1, 2]);

        // A graceful stop releases: a successor holding the newest commit takes over at once.
        c.syncer.release_lease().await.unwrap();
        assert_eq!(c.metrics.held.get(), 0);
        let mut d = node(&bucket, "d", Some(2));
        flushed_lines(&d.logs, "d").await;
        assert_eq!(d.syncer.sync_once().await.unwrap().commit, Some(3));
        // Its first clean-up went as usual: keep_commits = 2.
        assert_eq!(bucket.commit_numbers().await.unwrap(), vec![2, 3]);
        // a, which lost the lease, stays out.
        assert!(a.syncer.sync_once().await.unwrap().waiting);
        assert_eq!(bucket.commit_numbers().await.unwrap(), vec![2, 3]);
    }
}

#[tokio::test]
async fn a_store_that_ignores_if_match_is_refused() {
    let bad = Bucket::with_store(Arc::new(Ignores { inner: InMemory::new(), create: false }), "p");
    let err = bad.check_conditional_create().await.unwrap_err();
    assert!(matches!(err, super::CheckError::IgnoresConditions(_)), "{err:?}");
    assert!(err.to_string().contains("ignores If-Match"), "{err}");
}

/// Uploads that run longer than the lease's ttl: the writer renews every third of the ttl meanwhile, so a
/// waiting server never finds the lease free during them; and when another server takes the record over
/// in the middle, the uploads still finish and the commit is refused.
#[tokio::test]
async fn the_writer_lease_is_renewed_during_long_uploads_and_a_takeover_refuses_the_commit() {
    use crate::lease::{Gate, Lease, LeaseMetrics, Observed, WriterLease};
    use std::time::Duration;

    let bucket = Bucket::with_store(Arc::new(InMemory::new()), "p");
    let ttl = Duration::from_millis(300);
    let metrics = LeaseMetrics::default();
    let mut writer = WriterLease::new(Lease::new(bucket.clone(), WriterLease::NAME, "a", ttl), metrics.clone());
    assert_eq!(writer.before_sync().await.unwrap(), Gate::Write { fresh: true });
    let mut waiter = Lease::new(bucket.clone(), WriterLease::NAME, "b", ttl);
    assert!(matches!(waiter.observe().await.unwrap(), Observed::HeldBy { .. }));

    // "Uploads" of 4 ttls, while the waiter looks every 50 ms: it never sees the lease free.
    let uploads = async {
        tokio::time::sleep(ttl * 4).await;
        "uploaded"
    };
    let watch = async {
        let until = tokio::time::Instant::now() + ttl * 4;
        let mut looks = 0;
        while tokio::time::Instant::now() < until {
            let seen = waiter.observe().await.unwrap();
            assert!(matches!(seen, Observed::HeldBy { .. }), "look {looks}: {seen:?}");
            looks += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        looks
    };
    let (out, looks) = tokio::join!(writer.renewing_while(uploads), watch);
    assert_eq!(out, "uploaded");
    assert!(looks >= 10, "{looks}");
    let renewed = metrics.renewals_during_sync.get();
    assert!((4..=13).contains(&renewed), "renewed {renewed} times in 4 ttls (every third of the ttl: ~11)");
    writer.before_commit().await.expect("still the holder");

    // Another server overwrites the record in the middle of the next uploads (as a takeover does): the
    // renewal after it finds it, the uploads finish anyway, and the commit is refused.
    let record = waiter.read().await.unwrap().unwrap();
    let key = ObjectPath::from(format!("p/leases/{}.json", WriterLease::NAME));
    let taken = LeaseRecord { holder: "b/other".into(), node: "b".into(), renewals: record.renewals + 100, ..record };
    let uploads = async {
        tokio::time::sleep(ttl / 2).await;
        bucket.store().put(&key, PutPayload::from(serde_json::to_vec(&taken).unwrap())).await.unwrap();
        tokio::time::sleep(ttl * 2).await;
        "uploaded"
    };
    assert_eq!(writer.renewing_while(uploads).await, "uploaded");
    assert_eq!(metrics.lost.get(), 1);
    let err = writer.before_commit().await.unwrap_err();
    assert!(err.contains("taken over during the sync") && err.contains("nothing committed"), "{err}");
    assert_eq!(metrics.lost.get(), 1, "the loss is told once");
    assert_eq!(waiter.read().await.unwrap().unwrap().holder, "b/other", "the new holder's record stands");
}

#[test]
fn storage_settings_out_of_range_are_refused_naming_the_key() {
    use std::time::Duration;
    let base = super::StorageConfig { backend: super::Backend::S3, bucket: "b".into(), ..Default::default() };
    assert_eq!(base.validate(), Ok(()));
    let hammering = super::StorageConfig { retired_trees_interval: Duration::from_millis(10), ..base.clone() };
    let err = hammering.validate().unwrap_err();
    assert!(err.contains("storage.retired_trees_interval"), "{err}");
    let off = super::StorageConfig { retired_trees_interval: Duration::ZERO, ..base.clone() };
    assert_eq!(off.validate(), Ok(()));
    // Below twice the default sync_interval (10 s).
    let short_lease = super::StorageConfig { lease_ttl: Duration::from_secs(5), ..base };
    assert!(short_lease.validate().unwrap_err().contains("storage.lease_ttl"));
}

#[tokio::test]
async fn a_writer_adopts_a_tended_newest_commit_and_keeps_its_data_when_the_restore_fails() {
    use super::adopt::{record_commit, recorded_commit};
    use super::lease::{Lease, Observed};
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let bucket = Bucket::with_store(store.clone(), "tree");
    let ttl = std::time::Duration::from_millis(600);
    for (key, body) in [("data/logs/1.parquet", "one"), ("data/logs/3.parquet", "merged"), ("objects/m2", "m2")] {
        store.put(&ObjectPath::from(format!("tree/{key}")), PutPayload::from(body.as_bytes().to_vec())).await.unwrap();
    }
    // The node's own commit 1, which its data directory holds (with a WAL segment the final flush emptied).
    let c1 = bucket.append_commit("n", vec![file("logs/1.parquet", "data/logs/1.parquet", 3)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    std::fs::write(dir.path().join("logs/1.parquet"), "one").unwrap();
    std::fs::write(dir.path().join("lock"), "").unwrap();
    std::fs::create_dir_all(dir.path().join("snapshots/before-upgrade")).unwrap();
    std::fs::write(dir.path().join("snapshots/before-upgrade/manifest.json"), "mine").unwrap();
    record_commit(dir.path(), c1.seq).unwrap();
    assert_eq!(recorded_commit(dir.path()), Some(1));
    // Not tended: nothing to adopt, and without `keep` the lease is not even taken.
    assert!(bucket.adopt_tended(dir.path(), "n", ttl, None, false).await.unwrap().is_none());
    assert!(Lease::new(bucket.clone(), "writer", "probe", ttl).read().await.unwrap().is_none());
    // With `keep` (an ingest node) it is taken and handed back, nothing restored.
    let mut kept = bucket.adopt_tended(dir.path(), "n", ttl, None, true).await.unwrap().expect("the lease");
    assert!(kept.restored.is_none() && kept.lease.is_held());
    kept.lease.release().await.unwrap();

    // A round merged the node's part into part 3 while it was away (its commit 2 is tended); it still holds
    // the tree's lease when the node starts, and stops renewing it (its process died).
    let files = vec![file("logs/3.parquet", "data/logs/3.parquet", 6), file("manifest.json", "objects/m2", 2)];
    let c2 = bucket.append_commit_as("n", Some("c/round"), files).await.unwrap();
    assert_eq!(c2.tended_by.as_deref(), Some("c/round"));
    let mut round = Lease::new(bucket.clone(), "writer", "c", ttl);
    assert_eq!(round.acquire().await.unwrap(), Observed::Held);
    let started = std::time::Instant::now();
    let adopted = bucket.adopt_tended(dir.path(), "n", ttl, None, false).await.unwrap().expect("adopted");
    assert!(started.elapsed() >= ttl, "it waited for the round's lease to run out");
    assert_eq!(adopted.restored.as_ref().map(|r| r.commit), Some(2));
    assert!(adopted.lease.is_held(), "handed to the sync, held");
    assert!(!dir.path().join("logs/1.parquet").exists(), "the merged-away part is gone");
    assert_eq!(std::fs::read_to_string(dir.path().join("logs/3.parquet")).unwrap(), "merged");
    assert_eq!(std::fs::read_to_string(dir.path().join("manifest.json")).unwrap(), "m2");
    assert!(dir.path().join("lock").exists(), "the directory's own lock stays");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("snapshots/before-upgrade/manifest.json")).unwrap(),
        "mine",
        "the user's snapshots stay"
    );
    assert_eq!(recorded_commit(dir.path()), Some(2));
    assert!(!dir.path().join("bucket-sync/superseded").exists(), "the set-aside data is removed");
    let mut lease = adopted.lease;
    lease.release().await.unwrap();
    // Holding commit 2 now: nothing to adopt at the next start.
    assert!(bucket.adopt_tended(dir.path(), "n", ttl, None, false).await.unwrap().is_none());

    // A tended commit 3 whose object is damaged: the restore fails, and the directory is as it was.
    store.put(&ObjectPath::from("tree/objects/bad"), PutPayload::from_static(b"short")).await.unwrap();
    bucket.append_commit_as("n", Some("c/round"), vec![file("manifest.json", "objects/bad", 99)]).await.unwrap();
    let err = bucket.adopt_tended(dir.path(), "n", ttl, None, false).await.err().expect("refused");
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.path().join("logs/3.parquet")).unwrap(), "merged");
    assert_eq!(std::fs::read_to_string(dir.path().join("manifest.json")).unwrap(), "m2");
    assert_eq!(recorded_commit(dir.path()), Some(2));
    let record = Lease::new(bucket.clone(), "writer", "probe", ttl).read().await.unwrap().unwrap();
    assert!(record.released, "a failed adoption lets the lease go: {record:?}");
}

#[tokio::test]
async fn a_writer_waits_behind_a_tended_commit_it_has_not_recorded_and_not_behind_its_own() {
    use super::lease::{Gate, Lease, LeaseMetrics, WriterLease};
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let bucket = Bucket::with_store(store, "tree");
    let ttl = std::time::Duration::from_secs(30);
    let writer = |recorded: Option<u64>| {
        WriterLease::new(Lease::new(bucket.clone(), "writer", "n", ttl), LeaseMetrics::default())
            .with_recorded_commit(recorded)
    };
    // Commit 2 is the node's own; its directory's record missed it (a write that failed): not behind.
    bucket.append_commit("n", vec![file("manifest.json", "objects/1", 1)]).await.unwrap();
    bucket.append_commit("n", vec![file("manifest.json", "objects/2", 1)]).await.unwrap();
    let mut w = writer(Some(1));
    assert_eq!(w.before_sync().await.unwrap(), Gate::Write { fresh: true });
    w.release().await.unwrap();
    // Commit 3 was tended on its behalf: behind unless the directory recorded holding it (adopted).
    bucket.append_commit_as("n", Some("c/round"), vec![file("manifest.json", "objects/3", 1)]).await.unwrap();
    let gate = writer(Some(2)).before_sync().await.unwrap();
    assert!(matches!(&gate, Gate::Wait(why) if why.contains("newest commit (3, by n)")), "{gate:?}");
    assert_eq!(writer(Some(3)).before_sync().await.unwrap(), Gate::Write { fresh: true });
}
