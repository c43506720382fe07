//! Syslog into the server (issue 21 §3) with nothing but sockets: bad input over TCP and UDP (garbage,
//! oversized frames, invalid UTF-8, a frame cut short, a stalled peer), the connection cap and idle
//! timeout, what a closing connection and a stopping server append, and `server --check` refusing a
//! listener beyond loopback. The real senders (`logger`, rsyslog) and TLS are in `syslog_peers.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use lumen::Config;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::harness::{TestServer, test_config};

/// A test server's config with syslog on TCP and UDP (ports chosen by the system) and short batches.
pub(crate) fn syslog_config(dir: &std::path::Path, listen: &str) -> Config {
    let mut c = test_config(dir);
    c.syslog.listen = listen.to_string();
    c.syslog.batch_max_delay = Duration::from_millis(50);
    c
}

/// The bound address of the server's first syslog listener of `transport`.
pub(crate) fn listener(server: &TestServer, transport: ingest_syslog::Transport) -> SocketAddr {
    let running = server.running.as_ref().unwrap();
    running.syslog_listeners.iter().find(|l| l.transport == transport).expect("a listener of that transport").addr
}

/// Waits until the tenant `default` holds `n` entries (at most 20 s), then returns the rows of `sql`.
pub(crate) async fn rows_once_stored(server: &TestServer, n: i64, sql: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let have = if server.store_has_logs().await { server.count("default").await } else { 0 };
        if have >= n {
            assert_eq!(have, n, "more entries than expected");
            return server.sql("default", sql).await;
        }
        assert!(Instant::now() < deadline, "only {have} of {n} syslog messages stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one sample of the server's `/metrics` (0 when absent).
pub(crate) async fn metric(server: &TestServer, sample: &str) -> f64 {
    let text = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

impl TestServer {
    /// True once the tenant `default` has a log table to count (before the first entry SQL knows none).
    pub(crate) async fn store_has_logs(&self) -> bool {
        let r = self
            .client
            .post(self.url("/api/v1/sql"))
            .header("X-Scope-OrgID", "default")
            .body("SELECT count(*) AS n FROM logs")
            .send()
            .await
            .unwrap();
        r.status() == 200
    }
}

/// (hostname, app_name, message, syslog_parse_error) of every row, sorted.
fn quads(rows: &[Value]) -> Vec<(String, String, String, String)> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out: Vec<_> = rows
        .iter()
        .map(|r| (s(&r["hostname"]), s(&r["app_name"]), s(&r["message"]), s(&r["syslog_parse_error"])))
        .collect();
    out.sort();
    out
}

fn q(host: &str, app: &str, message: &str, error: &str) -> (String, String, String, String) {
    (host.into(), app.into(), message.into(), error.into())
}

/// Issue 21, "Bad input": malformed, oversized and non-UTF-8 frames, a frame cut short and a stalled peer
/// neither stop the server nor the good messages around them; each is kept raw or dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_tcp_and_udp_keeps_the_good_messages_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = syslog_config(dir.path(), "tcp://127.0.0.1:0,udp://127.0.0.1:0");
    config.syslog.max_message_bytes = ByteSize::kib(1);
    let server = TestServer::start(config).await;
    let tcp = listener(&server, ingest_syslog::Transport::Tcp);
    let udp = listener(&server, ingest_syslog::Transport::Udp);

    // A peer that sends one message and the start of an octet-counted frame, then stalls.
    let mut stalled = TcpStream::connect(tcp).await.unwrap();
    stalled.write_all(b"<13>1 - stalled app - - - before the stall\n100 <13>1 - h").await.unwrap();
    // Its complete message is stored within batch_max_delay, although the connection goes on.
    let rows = rows_once_stored(&server, 1, "SELECT hostname, message FROM logs").await;
    assert_eq!(rows[0]["message"], "before the stall");

    // Another peer, meanwhile, sends good and bad frames and closes half-way through a frame.
    let mut input = Vec::new();
    input.extend(b"<14>1 - host-b app - - - good 1\n");
    input.extend(b"\x01\x02garbage\xff\n");
    input.extend("x".repeat(2000).as_bytes());
    input.push(b'\n');
    input.extend(format!("5000 {}", "y".repeat(5000)).as_bytes());
    input.extend(b"<14>1 - host-b app - - - bad \xff utf8\n");
    input.extend(b"<14>1 - host-b app - - - good 2\n");
    // No MSG at all: an empty line.
    input.extend(b"<14>1 - host-b app - - [x a=\"1\"]\n");
    input.extend(b"40 <14>1 - host-b app - - - cut");
    let mut peer = TcpStream::connect(tcp).await.unwrap();
    peer.write_all(&input).await.unwrap();
    peer.shutdown().await.unwrap();
    // The server closes its side once it has read to the end.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut rest)).await.unwrap().unwrap();

    // UDP: an oversized datagram and a good one (a trailing newline is not part of the message).
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to("z".repeat(2000).as_bytes(), udp).await.unwrap();
    sock.send_to(b"<14>1 - host-u app - - - via udp\n", udp).await.unwrap();

    let sql = "SELECT hostname, app_name, message, syslog_parse_error FROM logs";
    let rows = rows_once_stored(&server, 8, sql).await;
    let not_syslog = "not syslog: no <PRI> and no timestamp";
    let cut = "octet-counted frame cut short: the connection closed after 28 of 40 bytes";
    assert_eq!(
        quads(&rows),
        vec![
            q("127.0.0.1", "unknown", "\u{1}\u{2}garbage\u{fffd}", not_syslog),
            q("127.0.0.1", "unknown", "<14>1 - host-b app - - - cut", cut),
            q("host-b", "app", "", ""),
            q("host-b", "app", "bad \u{fffd} utf8", ""),
            q("host-b", "app", "good 1", ""),
            q("host-b", "app", "good 2", ""),
            q("host-u", "app", "via udp", ""),
            q("stalled", "app", "before the stall", ""),
        ]
    );
    assert_eq!(metric(&server, "lumen_syslog_rejected_total{reason=\"oversized\"}").await, 3.0);
    assert_eq!(metric(&server, "lumen_syslog_rejected_total{reason=\"parse_error\"}").await, 2.0);
    assert_eq!(metric(&server, "lumen_syslog_rejected_total{reason=\"not_utf8\"}").await, 1.0);
    assert_eq!(metric(&server, "lumen_syslog_messages_total{transport=\"tcp\"}").await, 9.0);
    assert_eq!(metric(&server, "lumen_syslog_messages_total{transport=\"udp\"}").await, 2.0);
    assert_eq!(metric(&server, "lumen_syslog_stored_total").await, 8.0);
    assert_eq!(metric(&server, "lumen_syslog_connections").await, 1.0, "the stalled peer is still connected");

    // The stalled peer goes away: the start of its frame is kept with the reason.
    drop(stalled);
    let sql = "SELECT message, syslog_parse_error FROM logs WHERE message = '<13>1 - h'";
    let rows = rows_once_stored(&server, 9, sql).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["message"], "<13>1 - h");
    assert_eq!(
        rows[0]["syslog_parse_error"],
        "octet-counted frame cut short: the connection closed after 9 of 100 bytes"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "lumen_syslog_connections").await != 0.0 {
        assert!(Instant::now() < deadline, "the connection gauge did not go back to 0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = server.client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}

/// Past `syslog.max_connections` a connection is closed at once; an idle one is closed after
/// `syslog.idle_timeout`, which frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_idle_ones_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = syslog_config(dir.path(), "tcp://127.0.0.1:0");
    config.syslog.max_connections = 2;
    config.syslog.idle_timeout = Duration::from_secs(1);
    let server = TestServer::start(config).await;
    let tcp = listener(&server, ingest_syslog::Transport::Tcp);
    let mut first = TcpStream::connect(tcp).await.unwrap();
    let mut second = TcpStream::connect(tcp).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "lumen_syslog_connections").await != 2.0 {
        assert!(Instant::now() < deadline, "two connections were not accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let mut third = TcpStream::connect(tcp).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the third connection is closed at once");
    assert!(started.elapsed() < Duration::from_millis(900), "closed before the idle timeout");
    assert_eq!(metric(&server, "lumen_syslog_connections_rejected_total{reason=\"too_many\"}").await, 1.0);
    // Idle for a second: both are closed by the server.
    for conn in [&mut first, &mut second] {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "closed by the idle timeout, not at once");
    let mut again = TcpStream::connect(tcp).await.unwrap();
    again.write_all(b"<14>1 - h a - - - after the idle ones\n").await.unwrap();
    let rows = rows_once_stored(&server, 1, "SELECT message FROM logs").await;
    assert_eq!(rows[0]["message"], "after the idle ones");
    server.stop().await;
}

/// README "Syslog", acknowledgement: messages wait for their batch, a closing connection appends what it
/// holds, and so does every connection when the server stops (after a restart they are there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_connection_and_a_stopping_server_append_what_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut config = syslog_config(&data, "tcp://127.0.0.1:0");
    config.syslog.batch_max_delay = Duration::from_secs(3600);
    let server = TestServer::start(config.clone()).await;
    let tcp = listener(&server, ingest_syslog::Transport::Tcp);

    let mut closing = TcpStream::connect(tcp).await.unwrap();
    closing.write_all(b"<14>1 - h closing - - - one\n<14>1 - h closing - - - two\n").await.unwrap();
    let mut open = TcpStream::connect(tcp).await.unwrap();
    open.write_all(b"<14>1 - h open - - - three\n").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "lumen_syslog_messages_total{transport=\"tcp\"}").await < 3.0 {
        assert!(Instant::now() < deadline, "the messages were not received");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Received, not yet appended: the batch waits for its delay (an hour).
    assert!(!server.store_has_logs().await || server.count("default").await == 0);
    drop(closing);
    let rows = rows_once_stored(&server, 2, "SELECT message FROM logs ORDER BY message").await;
    assert_eq!(rows.iter().map(|r| r["message"].as_str().unwrap()).collect::<Vec<_>>(), ["one", "two"]);
    // The server stops with the other connection open: it appends its message first.
    server.stop().await;
    drop(open);
    let server = TestServer::start(config).await;
    let rows = rows_once_stored(&server, 3, "SELECT app_name, message FROM logs ORDER BY message").await;
    assert_eq!(rows.iter().map(|r| r["message"].as_str().unwrap()).collect::<Vec<_>>(), ["one", "three", "two"]);
    server.stop().await;
}

/// Safe by default: a syslog listener beyond loopback is refused by `server --check` and `config check`,
/// naming the key, unless `server.allow_unauthenticated` is set; `tls://` needs the server's certificate.
#[test]
fn server_check_refuses_a_listener_beyond_loopback_without_allow_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let lumen = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lumen"))
            .args(args)
            .env_remove("LUMEN_AUTH_TOKEN")
            .env_remove("LUMEN_SYSLOG_LISTEN")
            .env_remove("LUMEN_ALLOW_UNAUTHENTICATED")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) = lumen(&["server", "--check", "--syslog-listen", "udp://127.0.0.1:514,tcp://0.0.0.0:514"]);
    assert!(!ok, "refused");
    assert!(
        err.contains("syslog.listen = tcp://0.0.0.0:514 is beyond loopback")
            && err.contains("server.allow_unauthenticated = true"),
        "{err}"
    );
    let (ok, err) = lumen(&["server", "--check", "--syslog-listen", "tcp://0.0.0.0:514", "--allow-unauthenticated"]);
    assert!(ok, "allowed with --allow-unauthenticated: {err}");
    let (ok, err) = lumen(&["server", "--check", "--syslog-listen", "tcp://127.0.0.1:514,udp://127.0.0.1:514"]);
    assert!(ok, "loopback needs nothing: {err}");
    let (ok, err) = lumen(&["server", "--check", "--syslog-listen", "tls://127.0.0.1:6514"]);
    assert!(!ok && err.contains("server.tls_cert_file"), "{err}");
    let (ok, err) = lumen(&["server", "--check", "--syslog-listen", "tcp:/127.0.0.1:514"]);
    assert!(!ok && err.contains("syslog.listen: \"tcp:/127.0.0.1:514\""), "{err}");
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[syslog]\nlisten = \"udp://[::]:514\"\n").unwrap();
    let (ok, err) = lumen(&["config", "check", "--config", file.to_str().unwrap()]);
    assert!(!ok && err.contains("syslog.listen = udp://[::]:514 is beyond loopback"), "{err}");
    std::fs::write(&file, "[server]\nallow_unauthenticated = true\n[syslog]\nlisten = \"udp://[::]:514\"\n").unwrap();
    let (ok, err) = lumen(&["config", "check", "--config", file.to_str().unwrap()]);
    assert!(ok, "{err}");
}

/// README "Syslog", a full disk: while the store refuses appends (free space below `store.min_free_disk`),
/// a connection's batch is kept and tried again, not dropped; once space returns it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_full_disk_refuses_is_stored_once_space_returns() {
    let Some(fs) = crate::disk_full::Tmpfs::mount(64) else { return };
    let mut config = syslog_config(&fs.path.join("data"), "tcp://127.0.0.1:0");
    config.store.min_free_disk = store::DiskReserve::Bytes(ByteSize::mib(16));
    let server = TestServer::start(config).await;
    let tcp = listener(&server, ingest_syslog::Transport::Tcp);
    let filler = fs.fill(8 << 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.client.get(server.url("/ready")).send().await.unwrap().status() != 503 {
        assert!(Instant::now() < deadline, "the server did not notice the full disk");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut peer = TcpStream::connect(tcp).await.unwrap();
    peer.write_all(b"<14>1 - h a - - - one\n<14>1 - h a - - - two\n<14>1 - h a - - - three\n").await.unwrap();
    drop(peer);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&server, "lumen_syslog_store_retries_total").await < 2.0 {
        assert!(Instant::now() < deadline, "the refused batch was not retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!server.store_has_logs().await || server.count("default").await == 0, "nothing stored on a full disk");
    std::fs::remove_file(filler).unwrap();
    let rows = rows_once_stored(&server, 3, "SELECT message FROM logs ORDER BY message").await;
    assert_eq!(rows.iter().map(|r| r["message"].as_str().unwrap()).collect::<Vec<_>>(), ["one", "three", "two"]);
    assert_eq!(metric(&server, "lumen_syslog_rejected_total{reason=\"store_refused\"}").await, 0.0);
    server.stop().await;
}

/// `[limits]` on syslog (issue 17): `syslog.tenant` over `limits.tenant_ingest_rate` is slowed down over
/// TCP (the connection is not read while it waits), and every message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_rate_slows_a_tcp_syslog_sender_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = syslog_config(dir.path(), "tcp://127.0.0.1:0");
    c.limits.tenant_ingest_rate = ByteSize::kib(20);
    c.limits.tenant_ingest_burst = ByteSize::kib(4);
    // The burst must hold the largest HTTP request.
    c.server.max_request_size = ByteSize::kib(4);
    c.server.max_line_size = ByteSize::kib(4);
    // Batches of 10 messages: the first passes on the burst, the others wait for the rate.
    c.syslog.batch_max_lines = 10;
    let server = TestServer::start(c).await;
    let addr = listener(&server, ingest_syslog::Transport::Tcp);
    // 100 messages of about 1 KiB: at 20 KiB/s after a 4 KiB burst, at least 4 s to store.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    for i in 0..100 {
        let line = format!("<14>1 2026-12-06T10:00:00Z host app - - - message {i} {}\n", "x".repeat(1000));
        stream.write_all(line.as_bytes()).await.unwrap();
    }
    stream.shutdown().await.unwrap();
    rows_once_stored(&server, 100, "SELECT count(*) AS n FROM logs").await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(3), "100 KiB at 20 KiB/s were stored in {took:?}");
    assert!(metric(&server, "lumen_syslog_rate_limited_waits_total").await > 0.0, "no batch waited");
}
