//! Backup and restore (issue 18 §3): `lumen backup` snapshots a real server process under concurrent
//! ingest, copies the snapshot elsewhere and deletes it; a server started on the copy has every log line
//! and sample acknowledged before the backup began, each once. A data directory of a newer on-disk format
//! is refused with a message that says so.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use wire::prom::{OwnedSeries, Sample, encode_write_request};

use crate::harness::{ServerProcess, client, free_addr, sql_rows};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_ingest_restores_everything_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let copy = dir.path().join("backup");
    let mut server = ServerProcess::spawn(&data, free_addr(), &[]);
    server.wait_ready().await;
    let base = server.base.clone();
    let stop = Arc::new(AtomicBool::new(false));
    // (request id, when its 200 arrived) and (sample value, when its 204 arrived).
    let logs: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let samples: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let log_writer = {
        let (stop, logs, base) = (stop.clone(), logs.clone(), base.clone());
        tokio::spawn(async move {
            let client = client();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let req = format!("r{n}");
                n += 1;
                let body: String = (0..20)
                    .map(|k| format!("{}\n", serde_json::json!({"_msg": format!("line {k} of {req}"), "req": req})))
                    .collect();
                let r = client.post(format!("{base}/insert/jsonline")).body(body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                logs.lock().push((req, Instant::now()));
            }
        })
    };
    let sample_writer = {
        let (stop, samples, base) = (stop.clone(), samples.clone(), base.clone());
        tokio::spawn(async move {
            let client = client();
            let t0 = store::time::now_ns() / 1_000_000 - 600_000;
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let series: Vec<OwnedSeries> =
                    vec![(vec![("__name__".into(), "snap_test".into())], vec![Sample { t: t0 + i, v: i as f64 }])];
                let r = client
                    .post(format!("{base}/api/v1/write"))
                    .header("Content-Encoding", "snappy")
                    .body(encode_write_request(&series))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204);
                samples.lock().push((i, Instant::now()));
                i += 1;
            }
        })
    };
    // Let some data reach parts (a flush) and some stay in the head and WAL.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let r = client().post(format!("{base}/api/v1/admin/flush")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(700)).await;

    let began = Instant::now();
    let lumen = env!("CARGO_BIN_EXE_lumen").to_string();
    let (b, c) = (base.clone(), copy.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(lumen)
            .args(["backup", "--server", &b, "--to"])
            .arg(&c)
            .env_remove("LUMEN_AUTH_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "lumen backup: {}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("restore: lumen server --data-dir"), "{said}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    log_writer.await.unwrap();
    sample_writer.await.unwrap();

    let before: Vec<String> = logs.lock().iter().filter(|(_, t)| *t < began).map(|(r, _)| r.clone()).collect();
    let samples_before: Vec<i64> = samples.lock().iter().filter(|(_, t)| *t < began).map(|(i, _)| *i).collect();
    let after = logs.lock().len() - before.len();
    assert!(before.len() > 10 && !samples_before.is_empty(), "too little written before the backup");
    assert!(after > 0, "ingest went on during and after the backup");
    // The snapshot was deleted after the copy; the live data directory is untouched.
    let listed: Value =
        client().get(format!("{base}/api/v1/admin/snapshot")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"], serde_json::json!([]), "{listed}");
    assert!(!copy.join("lock").exists(), "the copy carries no lock");

    // Restore: a server on the copy, elsewhere.
    let mut restored = ServerProcess::spawn(&copy, free_addr(), &[]);
    restored.wait_ready().await;
    let sql = "SELECT req, count(*) AS n, count(DISTINCT message) AS d FROM logs GROUP BY req";
    let rows = sql_rows(&client(), &restored.base, "default", sql).await;
    let stored: std::collections::HashMap<String, (i64, i64)> = rows
        .iter()
        .map(|r| (r["req"].as_str().unwrap().to_string(), (r["n"].as_i64().unwrap(), r["d"].as_i64().unwrap())))
        .collect();
    for id in &before {
        assert_eq!(stored.get(id), Some(&(20, 20)), "request {id}, acknowledged before the backup, is not in it once");
    }
    for (id, got) in &stored {
        assert_eq!(got, &(20, 20), "request {id} is in the backup partly or twice");
    }
    let t = store::time::now_ns() as f64 / 1e9;
    let r: Value = client()
        .get(format!("{}/api/v1/query", restored.base))
        .query(&[("query", "snap_test[2h]".to_string()), ("time", t.to_string())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let values: HashSet<i64> = r["data"]["result"][0]["values"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|v| v[1].as_str().unwrap().parse::<f64>().unwrap() as i64)
        .collect();
    let lost: Vec<i64> = samples_before.iter().copied().filter(|i| !values.contains(i)).take(5).collect();
    assert!(lost.is_empty(), "samples acknowledged before the backup missing from it: {lost:?}");
    eprintln!(
        "backup holds {} of {} requests and {} samples; {} requests came after it began",
        stored.len(),
        before.len() + after,
        values.len(),
        after
    );
    restored.terminate();
    server.terminate();

    // A directory of a newer format is refused, saying so.
    std::fs::write(copy.join("format.json"), r#"{"format": 99, "written_by": "9.0.0"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args([
            "server",
            "--mqtt-listen",
            "off",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("format 99") && err.contains("9.0.0") && err.contains("run that version"), "{err}");
    // Issue 18: no colour codes when standard error is not a terminal (docker logs, kubectl logs).
    assert!(!err.contains('\u{1b}'), "escape codes in a log that is not a terminal: {err:?}");
}

/// The snapshot API as Prometheus tools call it, and its deletion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_api_makes_lists_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::harness::TestServer::start(crate::harness::test_config(dir.path())).await;
    let r = server.client.post(server.url("/insert/jsonline")).body("{\"_msg\":\"hello\"}\n").send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.flush().await;
    let r: Value =
        server.client.post(server.url("/api/v1/admin/tsdb/snapshot")).send().await.unwrap().json().await.unwrap();
    assert_eq!(r["status"], "success", "{r}");
    let name = r["data"]["name"].as_str().unwrap().to_string();
    let path = std::path::PathBuf::from(r["data"]["path"].as_str().unwrap());
    assert!(path.starts_with(dir.path().join("snapshots")), "{path:?}");
    assert!(path.join("manifest.json").exists() && path.join("format.json").exists());
    assert!(r["data"]["linked_bytes"].as_u64().unwrap() > 0, "parts are hard-linked: {r}");
    // A part in the snapshot is the same file (inode) as in the store.
    let part = walk(&path).into_iter().find(|p| p.extension().is_some_and(|x| x == "parquet")).expect("a part");
    let live = dir.path().join(part.strip_prefix(&path).unwrap());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&part).unwrap().ino(), std::fs::metadata(&live).unwrap().ino());
    let listed: Value =
        server.client.get(server.url("/api/v1/admin/snapshot")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["data"], serde_json::json!([name]));
    let r = server.client.delete(server.url(&format!("/api/v1/admin/snapshot/{name}"))).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(!path.exists());
    assert!(live.exists(), "deleting the snapshot leaves the store's part");
    let r = server.client.delete(server.url(&format!("/api/v1/admin/snapshot/{name}"))).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = server.client.delete(server.url("/api/v1/admin/snapshot/..")).send().await.unwrap();
    assert!(r.status() == 400 || r.status() == 404, "{}", r.status());
    server.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
