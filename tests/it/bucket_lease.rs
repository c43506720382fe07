//! The writer lease on a real S3 store (issue 22: "exactly one ... acts at a time, by a lease object in
//! the bucket taken with conditional writes; a second one waits"). SeaweedFS honours `If-Match` on PUT,
//! atomically; two `lumen server` processes on one bucket and prefix: only the lease holder commits;
//! after a `kill -9` of the holder the other takes over within the ttl and an interval; a server whose
//! data directory lacks the bucket's newest commit never takes over; no acknowledged line the bucket
//! held is lost on the way.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bucket::lease::{Lease, LeaseError, Observed};
use serde_json::{Value, json};

use crate::bucket::{KEY_ID, SECRET, SeaweedFs, count_lines, credential_files, storage};
use crate::harness::{ServerProcess, TestServer, client, free_addr, test_config};

const INTERVAL: Duration = Duration::from_secs(1);
const TTL: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_on_seaweedfs_is_taken_by_one_of_many_and_a_stale_if_match_is_refused() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let b = bucket::Bucket::open(&storage(&weed.endpoint, &creds)).unwrap().unwrap();
    let ttl = Duration::from_millis(800);
    let mut first = Lease::new(b.clone(), "probe", "first", ttl);
    assert_eq!(first.acquire().await.unwrap(), Observed::Held);
    let mut waiters: Vec<Lease> = (0..8).map(|i| Lease::new(b.clone(), "probe", &format!("w{i}"), ttl)).collect();
    for w in &mut waiters {
        assert!(matches!(w.observe().await.unwrap(), Observed::HeldBy { .. }));
    }
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    for w in &mut waiters {
        assert_eq!(w.observe().await.unwrap(), Observed::Free);
    }
    // Eight takes at once, each with If-Match on the same ETag: the store lets exactly one through.
    let mut tasks = tokio::task::JoinSet::new();
    for mut w in waiters {
        tasks.spawn(async move {
            let took = w.take().await.unwrap_or_else(|e| panic!("take by {}: {e}", w.holder()));
            (took, w)
        });
    }
    let mut takers = Vec::new();
    while let Some(r) = tasks.join_next().await {
        takers.push(r.unwrap());
    }
    let record = first.read().await.unwrap().expect("the lease record");
    let said_took: Vec<&str> = takers.iter().filter(|(took, _)| *took).map(|(_, w)| w.holder()).collect();
    assert!(said_took.len() <= 1, "at most one conditional take succeeds, these all did: {said_took:?}");
    let i = takers
        .iter()
        .position(|(_, w)| w.holder() == record.holder)
        .unwrap_or_else(|| panic!("the record names one of the eight takers, not {}", record.holder));
    let (took, mut winner) = takers.swap_remove(i);
    if !took {
        // The store applied this take but its answer was lost (object_store retries a 5xx or a 409, and
        // the retry meets the new ETag): the taker finds its own record and takes it as a renewal.
        assert_eq!(
            winner.acquire().await.unwrap(),
            Observed::Held,
            "a taker whose answer was lost takes its own record"
        );
    }
    for (_, loser) in &mut takers {
        assert!(
            matches!(loser.acquire().await.unwrap(), Observed::HeldBy { ref holder, .. } if holder == winner.holder()),
            "a loser of the race finds the lease held by the winner"
        );
    }
    // The first holder's If-Match names an ETag that is gone: refused.
    match first.renew().await {
        Err(LeaseError::Lost { holder }) => assert_eq!(holder, winner.holder()),
        r => panic!("a renewal with a stale If-Match must be refused: {r:?}"),
    }
    // The winner's own ETag goes on matching.
    for _ in 0..3 {
        winner.renew().await.unwrap();
    }
    assert_eq!(winner.read().await.unwrap().unwrap().renewals, 3);
    winner.release().await.unwrap();
    assert_eq!(first.acquire().await.unwrap(), Observed::Held, "a released lease is taken at once");
}

/// A `lumen server` process on the bucket, as node `node`.
fn spawn(config: &Path, data: &Path, node: &str) -> ServerProcess {
    let addr = free_addr();
    let child = Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["server", "--mqtt-listen", "off", "--otlp-grpc-addr", "127.0.0.1:0", "--config"])
        .arg(config)
        .args(["--http-addr", &addr.to_string(), "--data-dir"])
        .arg(data)
        .env("NODE_NAME", node)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lumen");
    ServerProcess::adopt(child, format!("http://{addr}"))
}

async fn push(base: &str, app: &str, n: usize) {
    let now = store::time::now_ns();
    let values: Vec<Value> = (0..n)
        .map(|i| json!([(now - 600_000_000_000 + i as i64 * 1_000_000).to_string(), format!("{app} {i}")]))
        .collect();
    let body = json!({"streams": [{"stream": {"app": app}, "values": values}]});
    let r = client().post(format!("{base}/loki/api/v1/push")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = client().post(format!("{base}/api/v1/admin/flush")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// The value of a metric line `name ` in `base`'s `/metrics`.
async fn metric(base: &str, name: &str) -> f64 {
    let text = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

async fn commit_nodes(b: &bucket::Bucket) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for seq in b.commit_numbers().await.unwrap() {
        // A commit deleted between the listing and the read (keep_commits) is skipped.
        if let Ok(c) = b.read_commit(seq).await {
            out.push((seq, c.node));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_servers_on_one_prefix_only_the_lease_holder_commits_and_the_other_takes_over_after_a_kill() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let mut storage = storage(&weed.endpoint, &creds);
    storage.prefix = "lease".into();
    storage.sync_interval = INTERVAL;
    storage.lease_ttl = TTL;
    let config = dir.path().join("lumen.toml");
    std::fs::write(&config, toml::to_string(&json!({ "storage": storage })).unwrap()).unwrap();
    let b = bucket::Bucket::open(&storage).unwrap().unwrap();

    // a holds the lease and commits what it was sent.
    let mut a = spawn(&config, &dir.path().join("a"), "lease-a");
    a.wait_ready().await;
    // a's first sync, at its start, may have committed its empty directory already: wait for a later one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        if let Some(c) = b.latest_commit().await.unwrap() {
            break c.seq;
        }
        assert!(Instant::now() < deadline, "a committed nothing at its start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    push(&a.base, "a", 400).await;
    while b.latest_commit().await.unwrap().is_none_or(|c| c.seq == before) {
        assert!(Instant::now() < deadline, "a did not commit its lines");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // b starts on an empty disk: it restores a's commit, serves reads, and waits. It refuses writes (503,
    // Retry-After, naming the holder) and says so on /ready: what it acknowledged would never reach the
    // bucket while a holds the lease.
    let mut second = spawn(&config, &dir.path().join("b"), "lease-b");
    let why = crate::harness::ready_becomes(&second.base, 503, Duration::from_secs(20)).await;
    assert!(why.contains("holds the bucket's writer lease") && why.contains("lease-a/"), "{why}");
    let body = json!({"streams": [{"stream": {"app": "b"}, "values": [[store::time::now_ns().to_string(), "b"]]}]});
    let r = client().post(format!("{}/loki/api/v1/push", second.base)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let text = r.text().await.unwrap();
    assert!(text.contains("lease-a/") && text.contains("send writes to that server"), "{text}");
    assert_eq!(metric(&second.base, "lumen_ingest_refused{reason=\"standby\"}").await, 1.0);
    assert_eq!(metric(&a.base, "lumen_ingest_refused{reason=\"standby\"}").await, 0.0);
    tokio::time::sleep(INTERVAL * 4).await;
    let nodes = commit_nodes(&b).await;
    assert!(!nodes.is_empty() && nodes.iter().all(|(_, n)| n == "lease-a"), "only a commits while it lives: {nodes:?}");
    assert_eq!(metric(&second.base, "lumen_bucket_syncs_total").await, 0.0, "a waiting server syncs nothing");
    assert_eq!(metric(&second.base, "lumen_bucket_lease_held").await, 0.0);
    assert!(metric(&second.base, "lumen_bucket_lease_waits_total").await >= 2.0);
    assert_eq!(metric(&a.base, "lumen_bucket_lease_held").await, 1.0);

    // a dies without a word: b takes over once the lease went unrenewed for the ttl, and commits.
    // (b has nothing new to commit yet: the lease shows the takeover.)
    a.kill9();
    let killed = Instant::now();
    let deadline = killed + TTL + INTERVAL * 2 + Duration::from_secs(10);
    while metric(&second.base, "lumen_bucket_lease_held").await != 1.0 {
        assert!(Instant::now() < deadline, "b did not take the lease over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = killed.elapsed();
    assert!(took >= TTL - INTERVAL, "the takeover waited for the ttl: {took:?}");
    let lease = Lease::new(b.clone(), "writer", "reader", TTL).read().await.unwrap().unwrap();
    assert!(lease.holder.starts_with("lease-b/"), "{lease:?}");
    // Holding the lease, b takes writes, and commits them.
    crate::harness::ready_becomes(&second.base, 200, INTERVAL * 3).await;
    let before = b.latest_commit().await.unwrap().unwrap().seq;
    push(&second.base, "b", 100).await;
    let deadline = Instant::now() + INTERVAL * 3 + Duration::from_secs(10);
    while b.latest_commit().await.unwrap().unwrap().seq == before {
        assert!(Instant::now() < deadline, "b did not commit its lines");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.latest_commit().await.unwrap().unwrap().node, "lease-b");
    // That commit may come from a sync that began before the push's flush: the next one holds the lines.
    tokio::time::sleep(INTERVAL * 3).await;

    // A third server restored from the bucket answers every line a had committed, and b's.
    let c_dir = dir.path().join("c");
    let mut c_config = test_config(&c_dir);
    c_config.storage = storage.clone();
    let c = TestServer::start(c_config.clone()).await;
    assert_eq!(count_lines(&c).await, 500, "a's lines and b's, from the bucket");

    // b goes on: its new commit is not in c's data directory. When b dies, c does not take over (its sync
    // would replace b's commit with older data): the bucket keeps answering everything b committed.
    let before = b.latest_commit().await.unwrap().unwrap().seq;
    push(&second.base, "b-later", 50).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.latest_commit().await.unwrap().unwrap().seq == before {
        assert!(Instant::now() < deadline, "b did not commit its later lines");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count_restored(&b, &dir.path().join("check")).await, 550, "b's newest commit holds everything");
    second.kill9();
    let last_by_b = b.latest_commit().await.unwrap().unwrap().seq;
    tokio::time::sleep(TTL + INTERVAL * 3).await;
    let newest = b.latest_commit().await.unwrap().unwrap();
    assert_eq!((newest.seq, newest.node.as_str()), (last_by_b, "lease-b"), "c committed nothing");
    let base = c.base.clone();
    assert_eq!(metric(&base, "lumen_bucket_lease_behind").await, 1.0);
    assert_eq!(metric(&base, "lumen_bucket_lease_held").await, 0.0);
    c.stop().await;
    assert_eq!(count_restored(&b, &dir.path().join("check")).await, 550, "c's stop committed nothing either");

    // b's stderr told of the wait once, with its fields.
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.child.stderr.take().unwrap(), &mut err).unwrap();
    let waits: Vec<&str> =
        err.lines().filter(|l| l.contains("another server holds the bucket's writer lease")).collect();
    assert_eq!(waits.len(), 1, "{err}");
    assert!(
        waits[0].contains("WARN") && waits[0].contains("holder=lease-a/") && waits[0].contains("expires_in="),
        "{err}"
    );

    // A server restored from the newest commit answers all of it, and takes the lease over.
    std::fs::remove_dir_all(&c_dir).unwrap();
    let d = TestServer::start(c_config).await;
    assert_eq!(count_lines(&d).await, 550);
    let base = d.base.clone();
    let deadline = Instant::now() + TTL + INTERVAL * 2 + Duration::from_secs(10);
    while metric(&base, "lumen_bucket_lease_held").await != 1.0 {
        assert!(Instant::now() < deadline, "d did not take the lease over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    crate::harness::ready_becomes(&base, 200, INTERVAL * 3).await;
    push(&d.base, "d", 10).await;
    d.stop().await;
    // Its graceful stop synced and released the lease.
    let lease = Lease::new(b.clone(), "writer", "reader", TTL).read().await.unwrap().unwrap();
    assert!(lease.released, "{lease:?}");
    assert_eq!(count_restored(&b, &dir.path().join("final")).await, 560);
}

/// Lines in the bucket's newest commit: restored into `dir` and counted by a server on it.
async fn count_restored(b: &bucket::Bucket, dir: &Path) -> u64 {
    let _ = std::fs::remove_dir_all(dir);
    b.restore_if_empty(dir).await.unwrap();
    let server = TestServer::start(test_config(dir)).await;
    let n = count_lines(&server).await;
    server.stop().await;
    n
}
