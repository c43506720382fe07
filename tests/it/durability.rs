//! What was acknowledged survives `kill -9`, exactly once; a second process cannot open the same data
//! directory.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::harness::{ServerProcess, assert_requests_stored_once, free_addr, sql_rows};

const WRITERS: usize = 4;
const LINES_PER_REQUEST: usize = 50;

/// Writers send requests of uniquely numbered lines until the server dies; every request that got a 200
/// is recorded. The server flushes often (a 1 MiB head) so that kills land before, during and after
/// flushes and WAL truncations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_ingest_loses_nothing_acknowledged_and_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lumen.toml");
    std::fs::write(&config, "[store]\nhead_max_size = \"1 MiB\"\n[query]\nsql_max_rows = 1000000\n").unwrap();
    let cfg = config.to_str().unwrap().to_string();
    let data = dir.path().join("data");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();

    for round in 0..3 {
        let addr = free_addr();
        let mut server = ServerProcess::spawn(&data, addr, &["--config", &cfg]);
        server.wait_ready().await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (base, acked, stop) = (server.base.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let client = crate::harness::client();
                let mut r = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = format!("r{round}-w{w}-q{r}");
                    let body: String = (0..LINES_PER_REQUEST)
                        .map(|i| {
                            format!(
                                "{}\n",
                                json!({"_msg": format!("{id}-l{i} payload"), "req": id, "writer": w.to_string()})
                            )
                        })
                        .collect();
                    let res = client
                        .post(format!("{base}/insert/jsonline?_stream_fields=writer"))
                        .body(body)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match res {
                        Ok(resp) if resp.status() == 200 => acked.lock().unwrap().push(id),
                        Ok(resp) => panic!("unexpected status {}", resp.status()),
                        Err(_) => break, // the server was killed mid-request: not acknowledged
                    }
                    r += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(1200 + 300 * round as u64)).await;
        server.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "only {} requests were acknowledged", acked.len());

    let addr = free_addr();
    let mut server = ServerProcess::spawn(&data, addr, &["--config", &cfg]);
    server.wait_ready().await;
    let extra = assert_requests_stored_once(&server.base, &acked, LINES_PER_REQUEST).await;
    assert!(extra <= 3 * WRITERS, "{extra} unacknowledged requests stored; at most one per writer per kill can be");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_then_restart_keeps_everything_and_a_second_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut server = ServerProcess::spawn(dir.path(), addr, &[]);
    server.wait_ready().await;
    let client = crate::harness::client();
    let body: String = (0..1000).map(|i| format!("{}\n", json!({"_msg": format!("line {i}"), "app": "a"}))).collect();
    let r = client
        .post(format!("{}/insert/jsonline?_stream_fields=app", server.base))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client.post(format!("{}/api/v1/admin/flush", server.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.post(format!("{}/insert/jsonline?_stream_fields=app", server.base)).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A second server on the same directory is refused with a message that says why.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["server", "--mqtt-listen", "off", "--http-addr", &free_addr().to_string(), "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("locked by another lumen process"), "{stderr}");

    // A clean stop flushes the head; the restart finds parts and an empty log.
    server.terminate();
    let mut server = ServerProcess::spawn(dir.path(), addr, &[]);
    server.wait_ready().await;
    let rows =
        sql_rows(&client, &server.base, "default", "SELECT count(*) AS n, count(DISTINCT message) AS d FROM logs")
            .await;
    assert_eq!((rows[0]["n"].as_i64(), rows[0]["d"].as_i64()), (Some(2000), Some(1000)));
    let metrics = client.get(format!("{}/metrics", server.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("lumen_store_head_rows 0"), "the clean stop should have flushed the head");
    server.terminate();
}
