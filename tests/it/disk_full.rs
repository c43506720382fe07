//! The disk as a contract (issue 18 §1), on a real server process whose data directory is a small tmpfs
//! the test mounts itself (skipped, saying so, where mounting is not permitted):
//!
//! - below the free-space reserve ingest is refused with 503, `Retry-After` and a message naming
//!   `store.min_free_disk`, `/ready` answers 503 with the reason, queries answer, and MQTT stops
//!   acknowledging; once space returns everything resumes without a restart;
//! - a disk so full that the write-ahead log itself gets ENOSPC refuses the write and recovers by itself;
//! - `kill -9` while the disk is full, then a restart: everything acknowledged is there, once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::Value;
use wire::prom::{OwnedSeries, Sample, encode_write_request};

use crate::harness::{ServerProcess, client, free_addr, ready_becomes, sql_rows};

/// A tmpfs mounted for the test, unmounted on drop.
pub(crate) struct Tmpfs {
    _dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
}

impl Tmpfs {
    pub(crate) fn mount(size_mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { _dir: dir, path }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs for the disk-full test (run as root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount for the disk-full test: {e}");
                None
            }
        }
    }

    fn avail(&self) -> u64 {
        let out = Command::new("df").args(["-B1", "--output=avail"]).arg(&self.path).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
    }

    /// Writes a filler file that leaves about `leave` bytes free (0: until the volume is full).
    pub(crate) fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path.join(format!("filler-{}", rand_suffix()));
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5au8; 256 << 10];
        loop {
            let avail = self.avail();
            if avail <= leave {
                break;
            }
            let n = (avail - leave).min(chunk.len() as u64) as usize;
            if f.write_all(&chunk[..n]).is_err() {
                break; // ENOSPC: full
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// What the writers sent and what was acknowledged.
#[derive(Default)]
struct Outcome {
    /// JSON-lines requests answered 200 (ids).
    logs_acked: Vec<String>,
    /// Remote-write samples answered 204 (their values).
    samples_acked: Vec<i64>,
    /// MQTT sequence numbers that got their PUBACK.
    mqtt_acked: Vec<u64>,
    /// Bodies of the 503 answers seen.
    refusals: Vec<String>,
    /// Statuses other than 2xx and 503.
    unexpected: Vec<String>,
}

/// Log, metric and MQTT writers running against one server until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    outcome: Arc<Mutex<Outcome>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(base: &str, mqtt_port: u16, phase: &str, seq0: u64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let mut tasks = Vec::new();
        // JSON lines: 20 lines a request, each request an id in a field.
        {
            let (stop, outcome, base, phase) = (stop.clone(), outcome.clone(), base.to_string(), phase.to_string());
            tasks.push(tokio::spawn(async move {
                let client = client();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let req = format!("{phase}-{n}");
                    n += 1;
                    let body: String = (0..20)
                        .map(|k| format!("{}\n", serde_json::json!({"_msg": format!("line {k} of {req} {}", "x".repeat(200)), "req": req})))
                        .collect();
                    match client.post(format!("{base}/insert/jsonline")).body(body).send().await {
                        Ok(r) if r.status() == 200 => outcome.lock().logs_acked.push(req),
                        Ok(r) => record(&outcome, r).await,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }));
        }
        // Remote write: one sample a request, its value its number, a series of its own per phase.
        {
            let (stop, outcome, base, phase) = (stop.clone(), outcome.clone(), base.to_string(), phase.to_string());
            let t0 = store::time::now_ns() / 1_000_000 - 600_000;
            tasks.push(tokio::spawn(async move {
                let client = client();
                let mut k = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let i = seq0 as i64 + k;
                    let series: Vec<OwnedSeries> = vec![(
                        vec![("__name__".into(), "disk_test".into()), ("phase".into(), phase.clone())],
                        vec![Sample { t: t0 + k, v: i as f64 }],
                    )];
                    let r = client
                        .post(format!("{base}/api/v1/write"))
                        .header("Content-Encoding", "snappy")
                        .body(encode_write_request(&series))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 204 => outcome.lock().samples_acked.push(i),
                        Ok(r) => record(&outcome, r).await,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    k += 1;
                }
            }));
        }
        // MQTT QoS 1 to the embedded endpoint; the k-th PUBLISH that leaves carries seq0 + k.
        {
            let (stop, outcome, phase) = (stop.clone(), outcome.clone(), phase.to_string());
            tasks.push(tokio::spawn(async move {
                let mut opts = MqttOptions::new(format!("disk-{phase}"), "127.0.0.1", mqtt_port);
                opts.set_inflight(20);
                let (client, mut eventloop) = AsyncClient::new(opts, 100);
                let publisher = {
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        let mut k = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let body = format!("{{\"seq\":{}}}", seq0 + k);
                            if client.publish("dev/d1", QoS::AtLeastOnce, false, body).await.is_err() {
                                break;
                            }
                            k += 1;
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    })
                };
                let (mut sent, mut by_pkid) = (0u64, std::collections::HashMap::new());
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await {
                        Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                            by_pkid.insert(pkid, seq0 + sent);
                            sent += 1;
                        }
                        Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                            if let Some(seq) = by_pkid.remove(&ack.pkid) {
                                outcome.lock().mqtt_acked.push(seq);
                            }
                        }
                        Ok(Ok(_)) | Err(_) => {}
                        // The endpoint closes the connection when it cannot store: unacknowledged messages
                        // are not stored (their publisher would send them again); stop this client.
                        Ok(Err(_)) => break,
                    }
                }
                publisher.abort();
            }));
        }
        Writers { stop, outcome, tasks }
    }

    async fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
        std::mem::take(&mut *self.outcome.lock())
    }
}

async fn record(outcome: &Mutex<Outcome>, r: reqwest::Response) {
    let status = r.status();
    let retry_after = r.headers().get("retry-after").is_some();
    let body = r.text().await.unwrap_or_default();
    if status == 503 {
        assert!(retry_after, "a 503 without Retry-After: {body}");
        outcome.lock().refusals.push(body);
    } else {
        outcome.lock().unexpected.push(format!("{status}: {body}"));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

fn server_config(dir: &Path, min_free: &str) -> PathBuf {
    let path = dir.join(format!("lumen-{}.toml", rand_suffix()));
    std::fs::write(
        &path,
        format!(
            "[store]\nmin_free_disk = \"{min_free}\"\nhead_max_size = \"1 MiB\"\nhead_max_age = \"1s\"\n\
             maintenance_interval = \"1s\"\nwal_segment_size = \"1 MiB\"\n"
        ),
    )
    .unwrap();
    path
}

fn spawn(data: &Path, addr: std::net::SocketAddr, config: &Path, mqtt: std::net::SocketAddr) -> ServerProcess {
    let (config, mqtt) = (config.to_str().unwrap().to_string(), mqtt.to_string());
    ServerProcess::spawn(data, addr, &["--config", &config, "--mqtt-listen", &mqtt, "--mqtt-topic", "dev/{device}"])
}

/// A write that must succeed now (after space returned): retried for a few seconds.
async fn write_succeeds(base: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = client()
            .post(format!("{base}/insert/jsonline"))
            .body("{\"_msg\":\"probe\",\"req\":\"probe\"}\n")
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "writes did not resume: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks on a (restarted) server that every acknowledged log request, sample and MQTT message is stored
/// once.
async fn assert_all_stored(base: &str, acked: &Outcome) {
    assert_requests_stored_once_but_probes(base, &acked.logs_acked).await;
    // Samples: every acknowledged value is among the stored ones.
    let t_end = store::time::now_ns() / 1_000_000;
    let r: Value = client()
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", "disk_test[2h]".to_string()), ("time", format!("{}", t_end as f64 / 1000.0))])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored: HashSet<i64> = r["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| {
            s["values"].as_array().unwrap().iter().map(|v| v[1].as_str().unwrap().parse::<f64>().unwrap() as i64)
        })
        .collect();
    let lost: Vec<i64> = acked.samples_acked.iter().copied().filter(|i| !stored.contains(i)).take(10).collect();
    assert!(lost.is_empty(), "acknowledged samples lost: {lost:?} of {}", acked.samples_acked.len());
    // MQTT messages.
    let rows = sql_rows(&client(), base, "default", "SELECT message FROM logs WHERE message LIKE '{\"seq\"%'").await;
    let seqs: Vec<u64> = rows
        .iter()
        .map(|r| serde_json::from_str::<Value>(r["message"].as_str().unwrap()).unwrap()["seq"].as_u64().unwrap())
        .collect();
    let stored: HashSet<u64> = seqs.iter().copied().collect();
    assert_eq!(stored.len(), seqs.len(), "an MQTT message stored twice");
    let lost: Vec<u64> = acked.mqtt_acked.iter().copied().filter(|s| !stored.contains(s)).take(10).collect();
    assert!(lost.is_empty(), "acknowledged MQTT messages lost: {lost:?} of {}", acked.mqtt_acked.len());
}

/// Every acknowledged JSON-lines request is stored exactly once with its 20 lines, and no request is
/// stored partly or twice (the contract of the kill -9 tests; the one-line probes aside).
async fn assert_requests_stored_once_but_probes(base: &str, acked: &[String]) {
    let sql = "SELECT req, count(*) AS n, count(DISTINCT message) AS d FROM logs WHERE req <> 'probe' GROUP BY req";
    let rows = sql_rows(&client(), base, "default", sql).await;
    let stored: std::collections::HashMap<String, (i64, i64)> = rows
        .iter()
        .map(|r| (r["req"].as_str().unwrap().to_string(), (r["n"].as_i64().unwrap(), r["d"].as_i64().unwrap())))
        .collect();
    for id in acked {
        assert_eq!(stored.get(id), Some(&(20, 20)), "acknowledged request {id} is not stored exactly once");
    }
    for (id, got) in &stored {
        assert_eq!(got, &(20, 20), "request {id} was stored partly or twice");
    }
}

fn merge(into: &mut Outcome, from: Outcome) {
    into.logs_acked.extend(from.logs_acked);
    into.samples_acked.extend(from.samples_acked);
    into.mqtt_acked.extend(from.mqtt_acked);
    into.refusals.extend(from.refusals);
    into.unexpected.extend(from.unexpected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_ingest_resumes_by_itself_and_loses_nothing_acknowledged() {
    let Some(fs) = Tmpfs::mount(96) else { return };
    let conf_dir = tempfile::tempdir().unwrap();
    let data = fs.path.join("data");
    let (addr, mqtt) = (free_addr(), free_addr());
    let reserve_config = server_config(conf_dir.path(), "16 MiB");
    let mut server = spawn(&data, addr, &reserve_config, mqtt);
    server.wait_ready().await;
    let base = server.base.clone();
    let mut all = Outcome::default();

    // 1. Below the reserve, under concurrent log, metric and MQTT ingest.
    let writers = Writers::start(&base, mqtt.port(), "a", 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let filler = fs.fill(10 << 20);
    let why = ready_becomes(&base, 503, Duration::from_secs(5)).await;
    assert!(why.contains("store.min_free_disk"), "/ready should say why: {why}");
    let acked_at_refusal = writers.outcome.lock().mqtt_acked.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every protocol answers 503 with Retry-After and the reason.
    let push = serde_json::json!({"streams": [{"stream": {"app": "x"}, "values": [[store::time::now_ns().to_string(), "refused"]]}]});
    let r = client().post(format!("{base}/loki/api/v1/push")).json(&push).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let body = r.text().await.unwrap();
    assert!(body.contains("store.min_free_disk") && body.contains("queries still work"), "{body}");
    let r = client()
        .post(format!("{base}/v1/logs"))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(r.status() == 503 || r.status() == 200, "OTLP: {}", r.status());
    // Queries answer meanwhile.
    let r = client()
        .get(format!("{base}/loki/api/v1/query_range"))
        .query(&[("query", "{source=\"mqtt\"}"), ("limit", "5")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = client().get(format!("{base}/api/v1/query")).query(&[("query", "count(disk_test)")]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let metrics = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("lumen_ingest_refused{reason=\"disk_reserve\"} 1"), "{}", grep(&metrics, "refused"));
    assert!(metrics.contains("lumen_disk_reserve_bytes 16777216"), "{}", grep(&metrics, "lumen_disk"));
    assert!(metrics.contains("lumen_store_data_bytes{kind=\"wal\"}"), "{}", grep(&metrics, "store_data"));
    // MQTT stopped acknowledging: no PUBACK for what was sent while refused (a few in flight may finish).
    let acked_later = writers.outcome.lock().mqtt_acked.len();
    assert!(acked_later <= acked_at_refusal + 25, "MQTT went on acknowledging: {acked_at_refusal} -> {acked_later}");
    let out = writers.finish().await;
    assert!(!out.refusals.is_empty(), "the writers saw no refusal");
    assert!(out.refusals.iter().all(|b| b.contains("store.min_free_disk")), "{:?}", out.refusals.first());
    assert!(out.unexpected.is_empty(), "{:?}", &out.unexpected[..out.unexpected.len().min(3)]);
    merge(&mut all, out);

    // 2. Space returns: ingest resumes within seconds, no restart.
    std::fs::remove_file(&filler).unwrap();
    let started = Instant::now();
    ready_becomes(&base, 200, Duration::from_secs(10)).await;
    write_succeeds(&base, Duration::from_secs(5)).await;
    eprintln!("ingest resumed {:?} after the space returned", started.elapsed());
    let writers = Writers::start(&base, mqtt.port(), "b", 1_000_000);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = writers.finish().await;
    assert!(
        !out.logs_acked.is_empty() && !out.samples_acked.is_empty() && !out.mqtt_acked.is_empty(),
        "ingest did not resume for every protocol"
    );
    merge(&mut all, out);

    // 3. The volume quite full (flushes fail with ENOSPC), writers running: kill -9 at that moment.
    let writers = Writers::start(&base, mqtt.port(), "c", 2_000_000);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let filler = fs.fill(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.kill9();
    merge(&mut all, writers.finish().await);
    std::fs::remove_file(&filler).unwrap();
    let mut server = spawn(&data, addr, &reserve_config, mqtt);
    server.wait_ready().await;
    write_succeeds(&base, Duration::from_secs(5)).await;
    assert_all_stored(&base, &all).await;
    server.terminate();

    // 4. No reserve: the write-ahead log itself meets ENOSPC, refuses the write, and recovers once space
    // returns, without a restart.
    let no_reserve = server_config(conf_dir.path(), "0 B");
    let mut server = spawn(&data, addr, &no_reserve, mqtt);
    server.wait_ready().await;
    let filler = fs.fill(0);
    let big: String =
        (0..200).map(|k| format!("{{\"_msg\":\"{k} {}\",\"req\":\"big\"}}\n", "y".repeat(4000))).collect();
    let r = client().post(format!("{base}/insert/jsonline")).body(big).send().await.unwrap();
    assert_eq!(r.status(), 503, "a write into a full volume");
    let body = r.text().await.unwrap();
    assert!(body.contains("No space left"), "{body}");
    let why = ready_becomes(&base, 503, Duration::from_secs(3)).await;
    assert!(why.contains("last write"), "{why}");
    std::fs::remove_file(&filler).unwrap();
    write_succeeds(&base, Duration::from_secs(5)).await;
    ready_becomes(&base, 200, Duration::from_secs(5)).await;
    let writers = Writers::start(&base, mqtt.port(), "d", 3_000_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.kill9();
    merge(&mut all, writers.finish().await);
    let mut server = spawn(&data, addr, &no_reserve, mqtt);
    server.wait_ready().await;
    assert_all_stored(&base, &all).await;
    let rows = sql_rows(&client(), &base, "default", "SELECT count(*) AS n FROM logs WHERE req = 'big'").await;
    assert_eq!(rows[0]["n"], 0, "the refused write left nothing behind");

    // 5. A flush that meets ENOSPC fails and is counted; the rows stay in the head and are answered; once
    // space returns the flush goes through, and after kill -9 every row is there once.
    let flush_probe: String = (0..20).map(|k| format!("{{\"_msg\":\"flush {k}\",\"req\":\"flush\"}}\n")).collect();
    let r = client().post(format!("{base}/insert/jsonline")).body(flush_probe).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let flushes = |base: String| async move {
        let r = client().post(format!("{base}/api/v1/admin/flush")).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let filler = fs.fill(0);
    let (status, body) = flushes(base.clone()).await;
    assert_eq!(status, 500, "a flush into a full volume: {body}");
    assert!(body.contains("No space left"), "{body}");
    let m = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let failures: f64 = grep(&m, "lumen_store_flush_failures_total ")
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "{}", grep(&m, "flush_failures"));
    let count = || async {
        sql_rows(&client(), &base, "default", "SELECT count(*) AS n FROM logs WHERE req = 'flush'").await[0]["n"]
            .clone()
    };
    assert_eq!(count().await, 20, "the head still answers");
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = flushes(base.clone()).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the flush did not go through after the space returned: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count().await, 20, "after the flush");
    server.kill9();
    let mut server = spawn(&data, addr, &no_reserve, mqtt);
    server.wait_ready().await;
    assert_eq!(count().await, 20, "after kill -9 and a restart");
    eprintln!(
        "acknowledged: {} log requests, {} samples, {} MQTT messages; {} refusals",
        all.logs_acked.len(),
        all.samples_acked.len(),
        all.mqtt_acked.len(),
        all.refusals.len()
    );
    server.terminate();
}

fn grep(text: &str, what: &str) -> String {
    text.lines().filter(|l| l.contains(what)).collect::<Vec<_>>().join("\n")
}
