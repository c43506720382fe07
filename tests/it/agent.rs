//! `lumen agent` as a real process against a real `lumen server` process: a pods directory written the
//! way the kubelet writes it, rotations, kills of either process, the server down for a while; and
//! scrapes of the exposition samples served over HTTP.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{ServerProcess, free_addr, sql_rows};

/// A `lumen agent` child process.
pub struct AgentProcess {
    pub process: ServerProcess,
    pub addr: SocketAddr,
}

impl AgentProcess {
    pub fn spawn(config: &Path, addr: SocketAddr) -> AgentProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_lumen"))
            .args(["agent", "--config"])
            .arg(config)
            .args(["--http-addr", &addr.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn lumen agent");
        AgentProcess { process: ServerProcess::adopt(child, format!("http://{addr}")), addr }
    }

    pub async fn wait_ready(&mut self) {
        self.process.wait_ready().await;
    }

    pub async fn metrics(&self) -> String {
        crate::harness::get(format!("http://{}/metrics", self.addr)).await.unwrap().text().await.unwrap()
    }

    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    pub fn terminate(&mut self) {
        self.process.terminate();
    }
}

/// Writes an agent config for tests: fast batching and discovery, no Kubernetes API, no node metrics, and
/// no journal unless `extra` names `journal_dirs`.
pub fn agent_config(dir: &Path, server: &str, pods: &Path, extra: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    let text = format!(
        r#"[log]
level = "warn"

[agent]
server = "{server}"
pods_dir = "{pods}"
data_dir = "{data}"
node_name = "node-1"
kubernetes_api = "off"
node_metrics = false
batch_wait = "100ms"
discover_interval = "100ms"
poll_interval = "20ms"
retry_max_backoff = "300ms"
request_timeout = "5s"
{journal}{extra}
"#,
        pods = pods.display(),
        data = dir.join("agent-data").display(),
        // The machine's own journal stays out of tests that do not name journal directories.
        journal = if extra.contains("journal_dirs") { "" } else { "journal_dirs = []\n" },
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Fmt {
    Cri,
    Docker,
}

/// One container's log directory, written as the kubelet and the runtime write it.
pub(crate) struct ContainerLog {
    dir: PathBuf,
    fmt: Fmt,
    file: std::fs::File,
    /// Every line written, for the final check.
    pub(crate) lines: Vec<String>,
    tag: String,
    clock_ns: i64,
    rotations: u32,
}

impl ContainerLog {
    pub(crate) fn create(pods: &Path, ns: &str, pod: &str, uid: &str, container: &str, fmt: Fmt) -> ContainerLog {
        let dir = pods.join(format!("{ns}_{pod}_{uid}")).join(container);
        std::fs::create_dir_all(&dir).unwrap();
        let file = append(&dir.join("0.log"));
        ContainerLog {
            dir,
            fmt,
            file,
            lines: Vec::new(),
            tag: format!("{ns}/{pod}/{container}"),
            // An hour ago, a millisecond per record: inside retention, after any line written before.
            clock_ns: store::time::now_ns() - 3_600_000_000_000,
            rotations: 0,
        }
    }

    fn ts(&mut self) -> String {
        self.clock_ns += 1_000_123;
        store::time::format_rfc3339_ns(self.clock_ns)
    }

    /// Writes `n` lines; every 7th is split into partial records, every 13th goes to stderr.
    pub(crate) fn write(&mut self, n: usize) {
        let mut out = Vec::new();
        for _ in 0..n {
            let k = self.lines.len();
            let stream = if k % 13 == 5 { "stderr" } else { "stdout" };
            let mut msg = format!("{} line {k} level=info", self.tag);
            if k % 7 == 3 {
                // Long enough that the runtime splits it.
                msg.push(' ');
                msg.push_str(&"x".repeat(20_000));
            }
            match self.fmt {
                Fmt::Cri => {
                    let chunks: Vec<&str> = if k % 7 == 3 {
                        let (a, b) = msg.split_at(16_384);
                        vec![a, b]
                    } else {
                        vec![&msg]
                    };
                    for (i, c) in chunks.iter().enumerate() {
                        let tag = if i + 1 == chunks.len() { "F" } else { "P" };
                        let ts = self.ts();
                        writeln!(out, "{ts} {stream} {tag} {c}").unwrap();
                    }
                }
                Fmt::Docker => {
                    let pieces: Vec<String> = if k % 7 == 3 {
                        let (a, b) = msg.split_at(16_384);
                        vec![a.to_string(), format!("{b}\n")]
                    } else {
                        vec![format!("{msg}\n")]
                    };
                    for p in pieces {
                        let ts = self.ts();
                        let obj = serde_json::json!({"log": p, "stream": stream, "time": ts});
                        writeln!(out, "{obj}").unwrap();
                    }
                }
            }
            self.lines.push(msg);
        }
        self.file.write_all(&out).unwrap();
    }

    /// Rotates as the kubelet does: `0.log` becomes `0.log.<timestamp>`, a new `0.log` starts, and the
    /// previous rotation (if any) is gzipped and removed.
    fn rotate(&mut self) {
        self.rotations += 1;
        let rotated = self.dir.join(format!("0.log.20261122-1200{:02}", self.rotations));
        std::fs::rename(self.dir.join("0.log"), &rotated).unwrap();
        self.file = append(&self.dir.join("0.log"));
        if self.rotations >= 2 {
            let prev = self.dir.join(format!("0.log.20261122-1200{:02}", self.rotations - 1));
            let data = std::fs::read(&prev).unwrap();
            let gz_tmp = self.dir.join(format!("0.log.20261122-1200{:02}.gz.tmp", self.rotations - 1));
            let mut enc =
                flate2::write::GzEncoder::new(std::fs::File::create(&gz_tmp).unwrap(), flate2::Compression::fast());
            enc.write_all(&data).unwrap();
            enc.finish().unwrap();
            std::fs::rename(
                &gz_tmp,
                prev.with_extension(format!("{}.gz", prev.extension().unwrap().to_str().unwrap())),
            )
            .unwrap();
            std::fs::remove_file(&prev).unwrap();
        }
    }
}

impl ContainerLog {
    /// Rotates as logrotate's copytruncate does: copy the file away, then empty it in place (the writer
    /// appends, so it goes on at the new end).
    fn copytruncate(&mut self) {
        self.rotations += 1;
        let copy = self.dir.join(format!("0.log.20261122-1300{:02}", self.rotations));
        std::fs::copy(self.dir.join("0.log"), copy).unwrap();
        self.file.set_len(0).unwrap();
    }
}

fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap()
}

/// Log lines the server holds for the default tenant (-1 while SQL cannot answer).
pub(crate) async fn count(base: &str) -> i64 {
    let client = crate::harness::client();
    match client.post(format!("{base}/api/v1/sql")).body("SELECT count(*) AS n FROM logs").send().await {
        Ok(r) if r.status() == 200 => {
            let v: Value = r.json().await.unwrap();
            v["rows"][0]["n"].as_i64().unwrap_or(0)
        }
        _ => -1,
    }
}

/// Waits (at most 60 s) until the server holds at least `want` lines.
pub(crate) async fn wait_count(base: &str, want: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = -1;
    while Instant::now() < deadline {
        last = count(base).await;
        if last >= want as i64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: the server holds {last} lines after 60s, expected {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_arrives_once_through_rotations_kills_and_an_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let pods = tmp.path().join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    let server_addr = free_addr();
    let mut server = ServerProcess::spawn(&tmp.path().join("server"), server_addr, &[]);
    server.wait_ready().await;
    let base = server.base.clone();
    let config = agent_config(tmp.path(), &base, &pods, "");
    let agent_addr = free_addr();
    let mut agent = AgentProcess::spawn(&config, agent_addr);
    agent.wait_ready().await;

    let mut web = ContainerLog::create(&pods, "default", "web-7d9f", "uid-web", "app", Fmt::Cri);
    let mut dns = ContainerLog::create(&pods, "kube-system", "dns-1", "uid-dns", "dns", Fmt::Docker);
    let total = |logs: &[&ContainerLog]| logs.iter().map(|l| l.lines.len()).sum::<usize>();

    // Plain tailing, partial records of both formats.
    web.write(300);
    dns.write(300);
    wait_count(&base, 600, "first lines").await;

    // A rotation by rename while lines keep coming.
    web.write(50);
    web.rotate();
    web.write(100);
    wait_count(&base, total(&[&web, &dns]), "after a rotation").await;

    // kill -9 of the agent mid-stream; while it is down, two more rotations happen, so lines it never read
    // end up in a gzipped rotation.
    web.write(200);
    dns.write(200);
    agent.kill9();
    web.write(100);
    web.rotate();
    web.write(100);
    web.rotate();
    web.write(50);
    assert!(std::fs::read_dir(&web.dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".gz")));
    let mut agent = AgentProcess::spawn(&config, agent_addr);
    agent.wait_ready().await;
    wait_count(&base, total(&[&web, &dns]), "after the agent's kill -9").await;

    // copytruncate, with lines the agent may not have read yet at the time of the copy.
    dns.write(100);
    web.write(100);
    web.copytruncate();
    web.write(30);
    wait_count(&base, total(&[&web, &dns]), "after copytruncate").await;
    let m = agent.metrics().await;
    assert!(!m.contains("lumen_agent_truncations_total 0"), "the truncation went unnoticed:\n{m}");

    // A new pod appears.
    let mut job = ContainerLog::create(&pods, "batch", "job-x", "uid-job", "worker", Fmt::Cri);
    job.write(200);

    // kill -9 of the server mid-stream.
    web.write(200);
    dns.write(100);
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.kill9();
    web.write(100);
    job.write(100);
    let mut server = ServerProcess::spawn(&tmp.path().join("server"), server_addr, &[]);
    server.wait_ready().await;
    wait_count(&base, total(&[&web, &dns, &job]), "after the server's kill -9").await;

    // The server down for a while: the agent buffers and catches up.
    server.terminate();
    web.write(300);
    dns.write(300);
    job.write(100);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = agent.metrics().await;
    assert!(m.contains("lumen_agent_send_failures_total{kind=\"logs\"}"), "no failed sends counted:\n{m}");
    let mut server = ServerProcess::spawn(&tmp.path().join("server"), server_addr, &[]);
    server.wait_ready().await;
    wait_count(&base, total(&[&web, &dns, &job]), "after the outage").await;

    // A pod directory removed: the agent lets it go and goes on.
    std::fs::remove_dir_all(pods.join("batch_job-x_uid-job")).unwrap();
    web.write(100);
    let expected = total(&[&web, &dns, &job]);
    wait_count(&base, expected, "after a pod was removed").await;

    // Nothing more arrives (no gzipped rotation read twice), and every line is there once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = crate::harness::client();
    let rows = sql_rows(
        &client,
        &base,
        "default",
        "SELECT namespace, pod, container, node, stream, message, count(*) AS n FROM logs \
         GROUP BY namespace, pod, container, node, stream, message",
    )
    .await;
    let mut seen: HashMap<String, (String, i64)> = HashMap::new();
    for r in &rows {
        let tag = format!(
            "{}/{}/{}",
            r["namespace"].as_str().unwrap(),
            r["pod"].as_str().unwrap(),
            r["container"].as_str().unwrap()
        );
        assert_eq!(r["node"], "node-1");
        let msg = r["message"].as_str().unwrap().to_string();
        assert!(msg.starts_with(&tag), "line {msg:.80} carries the labels of {tag}");
        seen.insert(msg, (r["stream"].as_str().unwrap().to_string(), r["n"].as_i64().unwrap()));
    }
    for log in [&web, &dns, &job] {
        for (k, line) in log.lines.iter().enumerate() {
            let Some((stream, n)) = seen.get(line) else {
                panic!("{} line {k} never arrived", log.tag);
            };
            assert_eq!(*n, 1, "{} line {k} arrived {n} times", log.tag);
            let want = if k % 13 == 5 { "stderr" } else { "stdout" };
            assert_eq!(stream, want, "{} line {k}", log.tag);
        }
    }
    assert_eq!(rows.len(), expected, "lines that nobody wrote arrived");
    assert_eq!(count(&base).await, expected as i64);
    agent.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_k8s_log_fixtures_arrive_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let pods = tmp.path().join("pods");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/k8s-logs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the k8s-logs fixtures are missing");
    let mut expected: HashMap<String, usize> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        let pod = format!("fixture-{i}");
        let dir = pods.join(format!("fixtures_{pod}_uid-{i}")).join("c");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(f, dir.join("0.log")).unwrap();
        // Docker splits nothing in these files: one record per line, a corrupt line shipped raw.
        let text = std::fs::read_to_string(f).unwrap();
        expected.insert(pod, text.lines().filter(|l| !l.trim().is_empty()).count());
    }
    // The fixtures are from 2016-2019: a long retention keeps them.
    let mut server = ServerProcess::spawn(&tmp.path().join("server"), free_addr(), &["--retention", "36500d"]);
    server.wait_ready().await;
    let config = agent_config(tmp.path(), &server.base, &pods, "");
    let mut agent = AgentProcess::spawn(&config, free_addr());
    agent.wait_ready().await;
    let want: usize = expected.values().sum();
    // A record whose last piece never came (a `log` without its newline) is sent after a few idle seconds.
    wait_count(&server.base, want, "fixture lines").await;
    let client = crate::harness::client();
    let rows = sql_rows(&client, &server.base, "default", "SELECT pod, count(*) AS n FROM logs GROUP BY pod").await;
    for r in &rows {
        let pod = r["pod"].as_str().unwrap();
        assert_eq!(r["n"].as_i64().unwrap() as usize, expected[pod], "{pod}");
    }
    assert_eq!(rows.len(), expected.len());
    let corrupt =
        sql_rows(&client, &server.base, "default", "SELECT message FROM logs WHERE parse_error IS NOT NULL").await;
    assert_eq!(corrupt.len(), 1, "docker_corrupted.log has one corrupt line: {corrupt:?}");
    assert!(corrupt[0]["message"].as_str().unwrap().contains("\"log\":"));
    let m = agent.metrics().await;
    assert!(m.contains("lumen_agent_malformed_lines_total 1"), "{m}");
    agent.terminate();
}

/// Serves one exposition file on its own port, with the content type its dialect has.
pub async fn serve_exposition(path: PathBuf) -> SocketAddr {
    let body = std::fs::read(&path).unwrap();
    let ct = if path.to_string_lossy().ends_with(".om.txt") {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, ct)], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn prom_query(base: &str, q: &str) -> Vec<Value> {
    let r = crate::harness::client().get(format!("{base}/api/v1/query")).query(&[("query", q)]).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "success", "{q}: {v}");
    v["data"]["result"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_exposition_samples_reach_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/exposition");
    let mut targets = Vec::new();
    for name in [
        "alltypes.237mfs.prom.txt",
        "alltypes.5mfs.om.txt",
        "1histogram.om.txt",
        "node_exporter-e2e-output.prom.txt",
        "prometheus-common-expfmt-text.prom.txt",
    ] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let format = if name.ends_with(".om.txt") {
            wire::prom::TextFormat::OpenMetrics
        } else {
            wire::prom::TextFormat::Prometheus
        };
        let mut series = std::collections::HashSet::new();
        let stats = wire::prom::parse_text(&text, format, 0, |labels, _, _| {
            series.insert(format!("{labels:?}"));
        });
        assert_eq!(stats.error_lines, 0, "{name}");
        let addr = serve_exposition(path).await;
        targets.push((name, addr, series.len()));
    }
    let mut server = ServerProcess::spawn(&tmp.path().join("server"), free_addr(), &[]);
    server.wait_ready().await;
    let list: Vec<String> = targets.iter().map(|(_, a, _)| format!("\"http://{a}/metrics\"")).collect();
    let extra = format!("scrape_targets = [{}]\nscrape_interval = \"1s\"\n", list.join(", "));
    let config = agent_config(tmp.path(), &server.base, &tmp.path().join("no-pods"), &extra);
    let mut agent = AgentProcess::spawn(&config, free_addr());
    agent.wait_ready().await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = prom_query(&server.base, "up{job=\"lumen-agent\"} == 1").await;
        if up.len() == targets.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {} of {} targets up: {up:?}", up.len(), targets.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (name, addr, n) in &targets {
        let q = format!("count({{instance=\"{addr}\", job=\"lumen-agent\"}})");
        let got = prom_query(&server.base, &q).await;
        let got: usize = got[0]["value"][1].as_str().unwrap().parse().unwrap();
        // Every series of the file, plus up, scrape_duration_seconds, scrape_samples_scraped,
        // scrape_samples_post_metric_relabeling and scrape_series_added.
        assert_eq!(got, n + 5, "{name}");
        let d = prom_query(&server.base, &format!("scrape_duration_seconds{{instance=\"{addr}\"}}")).await;
        assert_eq!(d.len(), 1, "{name}");
        assert_eq!(d[0]["metric"]["node"], "node-1");
    }
    agent.terminate();
}

/// What [`ack_losing_proxy`] counts and obeys.
pub(crate) struct Proxy {
    pub addr: SocketAddr,
    /// Answers lost so far.
    pub lost: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// [`LOSE_EVERY_OTHER`] (at first), [`PASS`] or [`LOSE_AND_HOLD_FIRST`].
    pub mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    /// Set once an answer is held ([`LOSE_AND_HOLD_FIRST`]).
    pub holding: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Lets the held answer go (as a 503).
    pub release: std::sync::Arc<tokio::sync::Notify>,
}

/// Every other stored push loses its answer.
pub(crate) const LOSE_EVERY_OTHER: u8 = 0;
/// Answers pass.
pub(crate) const PASS: u8 = 1;
/// The next push not marked as resent that the first upstream stores loses its answer, which is held until
/// `release` (then a 503); the mode becomes [`PASS`].
pub(crate) const LOSE_AND_HOLD_FIRST: u8 = 2;

/// A proxy that forwards pushes to the upstreams in turn (a load balancer spreading requests) and loses
/// answers as its mode says: the agent sees a 503 for a batch a server stored. A real server cannot be
/// made to lose an answer on cue.
pub(crate) async fn ack_losing_proxy(upstreams: Vec<String>) -> Proxy {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
    let proxy = Proxy {
        addr: "127.0.0.1:0".parse().unwrap(),
        lost: Arc::new(AtomicUsize::new(0)),
        mode: Arc::new(AtomicU8::new(LOSE_EVERY_OTHER)),
        holding: Arc::new(AtomicBool::new(false)),
        release: Arc::new(tokio::sync::Notify::new()),
    };
    let seen = Arc::new(AtomicUsize::new(0));
    let turn = Arc::new(AtomicUsize::new(0));
    let upstreams = Arc::new(upstreams);
    let client = crate::harness::client();
    let (lost, mode, holding, release) =
        (proxy.lost.clone(), proxy.mode.clone(), proxy.holding.clone(), proxy.release.clone());
    let app = axum::Router::new().route(
        "/loki/api/v1/push",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let (client, lost, seen) = (client.clone(), lost.clone(), seen.clone());
            let (mode, holding, release) = (mode.clone(), holding.clone(), release.clone());
            let which = turn.fetch_add(1, Ordering::SeqCst) % upstreams.len();
            let upstream = upstreams[which].clone();
            async move {
                let mut req = client.post(format!("{upstream}/loki/api/v1/push")).body(body);
                for (k, v) in &headers {
                    if k.as_str().starts_with("x-") || k == "content-type" || k == "content-encoding" {
                        req = req.header(k.as_str(), v.as_bytes());
                    }
                }
                let status = match req.send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 502,
                };
                let stored = status < 300;
                let resent = headers.contains_key("x-lumen-resend");
                match mode.load(Ordering::SeqCst) {
                    LOSE_EVERY_OTHER if stored && seen.fetch_add(1, Ordering::SeqCst) % 2 == 1 => {
                        lost.fetch_add(1, Ordering::SeqCst);
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    LOSE_AND_HOLD_FIRST
                        if stored
                            && which == 0
                            && !resent
                            && mode
                                .compare_exchange(LOSE_AND_HOLD_FIRST, PASS, Ordering::SeqCst, Ordering::SeqCst)
                                .is_ok() =>
                    {
                        lost.fetch_add(1, Ordering::SeqCst);
                        let released = release.notified();
                        holding.store(true, Ordering::SeqCst);
                        released.await;
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    _ => {}
                }
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Proxy { addr, ..proxy }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_does_not_store_a_batch_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let pods = tmp.path().join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    let mut server = ServerProcess::spawn(&tmp.path().join("server"), free_addr(), &[]);
    server.wait_ready().await;
    let proxy = ack_losing_proxy(vec![server.base.clone()]).await;
    let (proxy, lost) = (proxy.addr, proxy.lost);
    let config = agent_config(tmp.path(), &format!("http://{proxy}"), &pods, "");
    let mut agent = AgentProcess::spawn(&config, free_addr());
    agent.wait_ready().await;
    let mut app = ContainerLog::create(&pods, "default", "api-1", "uid-api", "api", Fmt::Cri);
    for _ in 0..10 {
        app.write(50);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_count(&server.base, app.lines.len(), "lines through the proxy").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(lost.load(std::sync::atomic::Ordering::SeqCst) >= 2, "the proxy lost no answers");
    let client = crate::harness::client();
    let dup = sql_rows(
        &client,
        &server.base,
        "default",
        "SELECT message, count(*) AS n FROM logs GROUP BY message HAVING count(*) > 1",
    )
    .await;
    assert!(dup.is_empty(), "batches stored twice: {} lines duplicated", dup.len());
    assert_eq!(count(&server.base).await, app.lines.len() as i64);
    let m = crate::harness::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    assert!(m.contains("lumen_ingest_duplicate_batches_total{protocol=\"loki\"}"), "{m}");
    agent.terminate();
}

/// Serves what the agent's pod watch asks of the Kubernetes API: a list of this node's pods, then a watch
/// that stays open with no events. No cluster runs here, so this stands in for the API server.
async fn fake_kubernetes_api(pods: Value) -> SocketAddr {
    let app = axum::Router::new().route(
        "/api/v1/pods",
        axum::routing::get(move |q: axum::extract::Query<HashMap<String, String>>| {
            let pods = pods.clone();
            async move {
                assert_eq!(q.get("fieldSelector").map(String::as_str), Some("spec.nodeName=node-1"));
                if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                    let body =
                        axum::body::Body::from_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>());
                    return axum::response::Response::builder()
                        .header("content-type", "application/json")
                        .body(body)
                        .unwrap();
                }
                let list = serde_json::json!({
                    "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"}, "items": pods,
                });
                axum::response::Response::builder()
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(list.to_string()))
                    .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn pod(name: &str, uid: &str, labels: Value, annotations: Value, port: u16) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid, "labels": labels,
                     "annotations": annotations, "resourceVersion": "7"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [{"containerPort": port}]}]},
        "status": {"podIP": "127.0.0.1", "phase": "Running"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_api_adds_labels_excludes_pods_and_finds_scrape_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let pods_dir = tmp.path().join("pods");
    let exposition = serve_exposition(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/exposition/prometheus-common-expfmt-text.prom.txt"),
    )
    .await;
    let api = fake_kubernetes_api(serde_json::json!([
        pod(
            "web-1",
            "uid-web",
            serde_json::json!({"app": "web", "app.kubernetes.io/name": "webapp", "team": "x"}),
            serde_json::json!({}),
            8080
        ),
        pod(
            "noisy-1",
            "uid-noisy",
            serde_json::json!({"app": "noisy"}),
            serde_json::json!({"lumen.io/exclude": "true"}),
            8080
        ),
        pod(
            "exporter-1",
            "uid-exp",
            serde_json::json!({}),
            serde_json::json!({"prometheus.io/scrape": "true", "prometheus.io/port": exposition.port().to_string()}),
            1
        ),
    ]))
    .await;
    let mut server = ServerProcess::spawn(&tmp.path().join("server"), free_addr(), &[]);
    server.wait_ready().await;
    let config = agent_config(tmp.path(), &server.base, &pods_dir, "scrape_interval = \"1s\"");
    // The test config turns the API off; this one points it at the fake.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("kubernetes_api = \"off\"", &format!("kubernetes_api = \"http://{api}\"")))
        .unwrap();
    let mut agent = AgentProcess::spawn(&config, free_addr());
    agent.wait_ready().await;
    // Written once the watch has had a moment to list the pods, so the first listing sees their labels.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut web = ContainerLog::create(&pods_dir, "default", "web-1", "uid-web", "c", Fmt::Cri);
    let mut noisy = ContainerLog::create(&pods_dir, "default", "noisy-1", "uid-noisy", "c", Fmt::Cri);
    noisy.write(20);
    web.write(20);
    wait_count(&server.base, 20, "the web pod's lines").await;
    let client = crate::harness::client();
    let rows = sql_rows(
        &client,
        &server.base,
        "default",
        "SELECT pod, app, app_kubernetes_io_name, count(*) AS n FROM logs GROUP BY pod, app, app_kubernetes_io_name",
    )
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["pod"], "web-1");
    assert_eq!(rows[0]["app"], "web", "an allow-listed pod label");
    assert_eq!(rows[0]["app_kubernetes_io_name"], "webapp");
    assert_eq!(rows[0]["n"], 20);

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up =
            prom_query(&server.base, "up{job=\"kubernetes-pods\", pod=\"exporter-1\", namespace=\"default\"}").await;
        if up.first().is_some_and(|s| s["value"][1] == "1") {
            break;
        }
        assert!(Instant::now() < deadline, "the annotated pod was not scraped: {up:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still nothing of the excluded pod.
    noisy.write(5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&server.base).await, 20);
    agent.terminate();
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in the agent's metrics:\n{text}"))
}

/// An agent with a 256 KiB buffer, shipping to a server address nobody listens on yet: (its directory, the
/// pods directory it follows, that address, the agent).
async fn agent_with_small_buffer() -> (tempfile::TempDir, PathBuf, SocketAddr, AgentProcess) {
    let tmp = tempfile::tempdir().unwrap();
    let pods = tmp.path().join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    let server_addr = free_addr();
    let extra = "buffer_max_size = \"256 KiB\"\nbatch_max_size = \"16 KiB\"";
    let config = agent_config(tmp.path(), &format!("http://{server_addr}"), &pods, extra);
    let mut agent = AgentProcess::spawn(&config, free_addr());
    agent.wait_ready().await;
    (tmp, pods, server_addr, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_stops_reading_and_the_agent_catches_up() {
    // No server yet.
    let (tmp, pods, server_addr, mut agent) = agent_with_small_buffer().await;
    let mut app = ContainerLog::create(&pods, "default", "chatty-1", "uid-chatty", "app", Fmt::Docker);
    app.write(3000);
    let bytes = std::fs::metadata(app.dir.join("0.log")).unwrap().len();
    assert!(bytes > 4 * 256 * 1024, "the file ({bytes} bytes) should outgrow the buffer");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = agent.metrics().await;
    assert!(metric(&m, "lumen_agent_buffer_full_waits_total") > 0.0, "the reader never paused");
    let buffered = metric(&m, "lumen_agent_buffer_bytes");
    assert!(buffered <= (256.0 + 64.0) * 1024.0, "the buffer grew to {buffered} bytes");
    assert!(metric(&m, "lumen_agent_read_bytes_total") < bytes as f64, "the whole file was read into a full buffer");

    let mut server = ServerProcess::spawn(&tmp.path().join("server"), server_addr, &[]);
    server.wait_ready().await;
    wait_count(&server.base, app.lines.len(), "after the server came").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&server.base).await, app.lines.len() as i64);
    agent.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_server_refuses_is_dropped_and_the_rest_flows() {
    let tmp = tempfile::tempdir().unwrap();
    let pods = tmp.path().join("pods");
    let mut server = ServerProcess::spawn(&tmp.path().join("server"), free_addr(), &[]);
    server.wait_ready().await;
    let config = agent_config(tmp.path(), &server.base, &pods, "");
    let mut agent = AgentProcess::spawn(&config, free_addr());
    agent.wait_ready().await;
    // A clock a century ahead: the server refuses these lines (400), which no retry can change.
    let dir = pods.join("default_skewed-1_uid-skewed").join("c");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0.log"), "2126-01-01T00:00:00.000000001Z stdout F from the future\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_or_zero(&agent.metrics().await, "lumen_agent_batches_rejected_total{kind=\"logs\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the refused batch was not dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The agent is not stuck on it.
    let mut ok = ContainerLog::create(&pods, "default", "fine-1", "uid-fine", "c", Fmt::Cri);
    ok.write(10);
    wait_count(&server.base, 10, "lines after a refused batch").await;
    assert_eq!(count(&server.base).await, 10);
    agent.terminate();
}

fn metric_or_zero(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// A password in the server URL never reaches the agent's log: not at start, not in the errors of a
/// server that cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_never_logs_a_credential_of_its_server_url() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods");
    let container = pods.join("default_web_0123/app");
    std::fs::create_dir_all(&container).unwrap();
    std::fs::write(container.join("0.log"), "2026-01-01T00:00:00.000000000Z stdout F hello\n").unwrap();
    let closed = free_addr();
    let config = agent_config(dir.path(), &format!("http://ann:s3cret-token@{closed}"), &pods, "");
    let log = dir.path().join("agent.log");
    let addr = free_addr();
    let child = Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["agent", "--config"])
        .arg(&config)
        .args(["--http-addr", &addr.to_string()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = ServerProcess::adopt(child, format!("http://{addr}"));
    agent.wait_ready().await;
    // Wait for the failed delivery to be logged.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("cannot deliver a batch") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    agent.terminate();
    assert!(text.contains("cannot deliver a batch"), "{text}");
    assert!(text.contains("http://***@"), "{text}");
    assert!(!text.contains("s3cret"), "the password reached the log:\n{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a log file:\n{text}");
}

/// Issue 18: while no server takes the agent's batches and its buffer is full, the kubelet rotates the
/// file three times and keeps no gzipped rotation (the worst `containerLogMaxFiles`): each rotated file is
/// gone from the directory before the agent reads it. The agent keeps opening each new `0.log` while it
/// waits, and reads the rotated ones through the descriptors it holds: once the server is there, every
/// line arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_rotated_away_while_the_buffer_is_full_arrive_whole() {
    let (tmp, pods, server_addr, mut agent) = agent_with_small_buffer().await;
    let mut app = ContainerLog::create(&pods, "default", "rotating-1", "uid-rotating", "app", Fmt::Cri);
    app.write(4000);
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&agent.metrics().await, "lumen_agent_buffer_full_waits_total") == 0.0 {
        assert!(Instant::now() < deadline, "the reader never paused:\n{}", agent.metrics().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..3 {
        app.rotate();
        for e in std::fs::read_dir(&app.dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".gz") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        app.write(3000);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // Only the newest rotation and 0.log are left: the first two files exist only as open descriptors.
    let left: Vec<String> =
        std::fs::read_dir(&app.dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    let m = agent.metrics().await;
    let written: u64 = app.lines.iter().map(|l| l.len() as u64).sum();
    assert!(metric(&m, "lumen_agent_read_bytes_total") < written as f64 / 2.0, "the agent read on into a full buffer");

    let mut server = ServerProcess::spawn(&tmp.path().join("server"), server_addr, &[]);
    server.wait_ready().await;
    wait_count(&server.base, app.lines.len(), "after the server came").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&server.base).await, app.lines.len() as i64);
    agent.terminate();
}
