//! The local disk as a bounded cache of the bucket (issue 22, `storage.cache_max_bytes`), on real
//! SeaweedFS: synced parts leave the local disk, every query still answers everything by fetching them
//! back, a restore over an empty disk downloads no part beyond the bound, and a query that needs a part
//! while the store is away fails with a 5xx that says so instead of answering less.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::bucket::{KEY_ID, SECRET, SeaweedFs, count_lines, count_samples, credential_files, push, storage};
use crate::harness::{TestServer, test_config};

fn local_parts(data: &Path) -> usize {
    fn walk(dir: &Path, n: &mut usize) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, n);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                *n += 1;
            }
        }
    }
    let mut n = 0;
    for store in ["logs", "metrics"] {
        walk(&data.join(store), &mut n);
    }
    n
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn metrics(server: &TestServer) -> String {
    server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// Waits until a sync evicted what it could: no part file left on the local disk.
async fn until_evicted(server: &TestServer, data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while local_parts(data) > 0 {
        assert!(Instant::now() < deadline, "parts still local after 30s:\n{}", metrics(server).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_beyond_the_cache_bound_live_in_the_bucket_and_queries_fetch_them() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let data = dir.path().join("data");
    let mut config = test_config(&data);
    config.storage = storage(&weed.endpoint, &creds);
    config.storage.prefix = "cached".into();
    config.storage.cache_max_bytes = bytesize::ByteSize::b(1);
    let now = store::time::now_ns();

    let server = TestServer::start(config.clone()).await;
    for round in 0..3 {
        push(&server, &format!("app{round}"), 300, now).await;
        server.flush().await;
    }
    until_evicted(&server, &data).await;
    let m = metrics(&server).await;
    assert!(metric(&m, "lumen_bucket_cache_evicted_parts_total") >= 6.0, "three log and three metric parts:\n{m}");
    assert_eq!(metric(&m, "lumen_bucket_cache_fetches_total"), 0.0);

    // Every line and sample answers, fetched back from the bucket.
    assert_eq!((count_lines(&server).await, count_samples(&server).await), (900, 900));
    let m = metrics(&server).await;
    // (Background compaction may have merged some parts already, reading them back itself.)
    assert!(metric(&m, "lumen_bucket_cache_fetches_total") >= 1.0, "{m}");
    until_evicted(&server, &data).await;
    assert_eq!((count_lines(&server).await, count_samples(&server).await), (900, 900));
    server.stop().await;

    // A new, empty disk: the restore leaves every part in the bucket (the bound is one byte), and the
    // server answers everything from there.
    std::fs::remove_dir_all(&data).unwrap();
    let server = TestServer::start(config.clone()).await;
    assert_eq!(local_parts(&data), 0, "no part is downloaded at start beyond the bound");
    assert_eq!((count_lines(&server).await, count_samples(&server).await), (900, 900));

    // The store goes away: a query that needs a part's lines fails and says so (a count of lines is
    // answered from the local indexes still); the server stays up.
    until_evicted(&server, &data).await;
    drop(weed);
    let r = server
        .client
        .get(server.url("/loki/api/v1/query"))
        .query(&[("query", r#"sum(count_over_time({app=~".+"} |= "line 1" [1h]))"#)])
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(status.is_server_error(), "{status}: {body}");
    assert!(body.contains("cannot fetch") && body.contains("object store"), "{body}");
    let m = metrics(&server).await;
    assert!(metric(&m, "lumen_bucket_cache_fetch_failures_total") >= 1.0, "{m}");
    assert!(m.contains("lumen_bucket_cache_local_bytes"), "{m}");
    server.stop().await;
}
