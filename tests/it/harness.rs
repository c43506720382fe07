//! Shared helpers: servers in-process and as child processes, and an HTTP client.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lumen::Config;
use serde_json::Value;

/// The Loghub samples in `../shared/data/loghub`, as (system name, lines).
pub fn loghub() -> Vec<(String, Vec<String>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/loghub");
    let mut out = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("_2k.log"))
        .collect();
    names.sort();
    for path in names {
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<String> = text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect();
        let name = path.file_name().unwrap().to_string_lossy().trim_end_matches("_2k.log").to_lowercase();
        out.push((name, lines));
    }
    assert_eq!(out.len(), 16, "expected the 16 Loghub samples");
    out
}

/// A config for a test server: loopback port 0 (HTTP and OTLP gRPC), a temporary directory, MQTT off.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.data_dir = dir.to_path_buf();
    c.server.http_addr = "127.0.0.1:0".parse().unwrap();
    c.server.otlp_grpc_addr = "127.0.0.1:0".parse().unwrap();
    c.server.mqtt_listen = "off".to_string();
    c
}

/// An in-process server and a client for it.
pub struct TestServer {
    pub running: Option<lumen::Running>,
    pub base: String,
    pub client: reqwest::Client,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let running = lumen::start(config).await.expect("server starts");
        let base = format!("http://{}", running.http_addr);
        TestServer { running: Some(running), base, client: client() }
    }

    pub async fn stop(mut self) {
        self.running.take().unwrap().stop().await.unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Runs SQL for a tenant and returns the rows.
    pub async fn sql(&self, tenant: &str, sql: &str) -> Vec<Value> {
        sql_rows(&self.client, &self.base, tenant, sql).await
    }

    /// A PromQL instant query for a tenant, at `time` (seconds) or now; the whole JSON answer.
    pub async fn promql(&self, tenant: &str, query: &str, time: Option<f64>) -> Value {
        let mut params = vec![("query", query.to_string())];
        if let Some(t) = time {
            params.push(("time", format!("{t:.3}")));
        }
        let r = self.client.get(self.url("/api/v1/query")).header("X-Scope-OrgID", tenant).query(&params);
        r.send().await.unwrap().json().await.unwrap()
    }

    pub async fn count(&self, tenant: &str) -> i64 {
        self.sql(tenant, "SELECT count(*) AS n FROM logs").await[0]["n"].as_i64().unwrap()
    }

    pub async fn flush(&self) {
        let r = self.client.post(self.url("/api/v1/admin/flush")).send().await.unwrap();
        assert_eq!(r.status(), 200, "flush: {}", r.text().await.unwrap());
    }
}

pub async fn sql_rows(client: &reqwest::Client, base: &str, tenant: &str, sql: &str) -> Vec<Value> {
    sql_answer(client, base, tenant, sql).await["rows"].as_array().unwrap().clone()
}

/// The whole JSON answer of a SQL query (rows, warnings), asserting a 200.
pub async fn sql_answer(client: &reqwest::Client, base: &str, tenant: &str, sql: &str) -> Value {
    let r = client
        .post(format!("{base}/api/v1/sql"))
        .header("X-Scope-OrgID", tenant)
        .body(sql.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{sql}: {body}");
    body
}

/// Polls `/ready` until it answers `want` (at most `within`); returns its body.
pub async fn ready_becomes(base: &str, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = client().get(format!("{base}/ready")).send().await {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            if status == want {
                return body;
            }
            assert!(Instant::now() < deadline, "/ready still answers {status} ({body}), not {want}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free loopback port (bound and released; good enough for tests that start at once).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A `lumen server` child process.
pub struct ServerProcess {
    pub child: Child,
    pub base: String,
}

impl ServerProcess {
    pub fn spawn(data_dir: &Path, addr: SocketAddr, extra: &[&str]) -> ServerProcess {
        // MQTT is off unless the test asks for it; OTLP gRPC takes any free port unless it names one.
        let mqtt: &[&str] = if extra.contains(&"--mqtt-listen") { &[] } else { &["--mqtt-listen", "off"] };
        let grpc: &[&str] =
            if extra.contains(&"--otlp-grpc-addr") { &[] } else { &["--otlp-grpc-addr", "127.0.0.1:0"] };
        let child = Command::new(env!("CARGO_BIN_EXE_lumen"))
            .arg("server")
            .args(mqtt)
            .args(grpc)
            .args(["--http-addr", &addr.to_string(), "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lumen");
        ServerProcess { child, base: format!("http://{addr}") }
    }

    /// A `lumen` child process of another kind (the agent) that answers `/ready` at `base`.
    pub fn adopt(child: Child, base: String) -> ServerProcess {
        ServerProcess { child, base }
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&mut self) {
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/ready", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                if let Some(mut stderr) = self.child.stderr.take() {
                    stderr.read_to_string(&mut err).unwrap();
                }
                panic!("lumen exited with {status} before it was ready: {err}");
            }
            assert!(Instant::now() < deadline, "lumen did not become ready in 30s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no flush, no cleanup.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "lumen exited with {status} after SIGTERM");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks, on a restarted server, that every acknowledged request (its lines carry a `req` field) is
/// stored exactly once with all `per_request` distinct lines, and that no request is stored partly or
/// twice. Returns how many stored requests were never acknowledged (in flight at a kill).
pub async fn assert_requests_stored_once(base: &str, acked: &[String], per_request: usize) -> usize {
    let sql = "SELECT req, count(*) AS n, count(DISTINCT message) AS d FROM logs GROUP BY req";
    let rows = sql_rows(&client(), base, "default", sql).await;
    let stored: std::collections::HashMap<String, (i64, i64)> = rows
        .iter()
        .map(|r| (r["req"].as_str().unwrap().to_string(), (r["n"].as_i64().unwrap(), r["d"].as_i64().unwrap())))
        .collect();
    let want = (per_request as i64, per_request as i64);
    for id in acked {
        assert_eq!(stored.get(id), Some(&want), "acknowledged request {id} is not stored exactly once");
    }
    // Requests in flight at a kill are all or nothing, and never doubled.
    for (id, got) in &stored {
        assert_eq!(got, &want, "request {id} was stored partly or twice");
    }
    let acked: std::collections::HashSet<&String> = acked.iter().collect();
    stored.keys().filter(|k| !acked.contains(k)).count()
}

/// A reqwest client builder. reqwest's TLS uses rustls without a crypto provider of its own, so the
/// process-wide one (ring) is installed first.
pub fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// A reqwest client (see [`client_builder`]).
pub fn client() -> reqwest::Client {
    client_builder().build().unwrap()
}

/// `GET url` with a fresh client, like `reqwest::get`.
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    client().get(url).send().await
}
