//! Syslog from real senders (issue 21 §3), installed by scripts/test: util-linux `logger` over TCP
//! (newline framing and octet counting) and UDP, RFC 5424 and RFC 3164; rsyslog receiving from `logger`
//! and forwarding to Lumen in RFC 5424 (octet-counted) and in its BSD forwarding format (ISO
//! timestamps, newline-framed); and a `tls://` listener on a certificate made with `openssl`, reached by
//! a rustls client. Every stored value is compared exactly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ingest_syslog::Transport;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::harness::{TestServer, free_addr};
use crate::syslog::{listener, metric, rows_once_stored, syslog_config};

/// This machine's host name, as `logger` and rsyslog put it in messages (RFC 3164: up to the first dot).
fn hostname(short: bool) -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    if short { name.split('.').next().unwrap().to_string() } else { name }
}

fn logger(args: &[&str]) {
    let out = Command::new("logger").args(args).env("TZ", "UTC").output().expect("logger (util-linux) is installed");
    assert!(out.status.success(), "logger {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The rows' `time` column, checked to be within a minute of now, then removed.
fn check_recent(rows: &mut [Value]) {
    let now = store::time::now_ns();
    for r in rows.iter_mut() {
        let time = r.as_object_mut().unwrap().remove("time").unwrap();
        let ns = store::time::parse_rfc3339_ns(time.as_str().unwrap()).unwrap();
        assert!((now - ns).abs() < 60 * store::time::NANOS_PER_SEC, "time {time} is not now");
    }
}

/// The streams of a LogQL range query over the last hour: (stream labels, [line]).
async fn logql(server: &TestServer, query: &str) -> Vec<(Value, Vec<String>)> {
    let r = server
        .client
        .get(server.url("/loki/api/v1/query_range"))
        .header("X-Scope-OrgID", "default")
        .query(&[("query", query), ("since", "1h"), ("limit", "100")])
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "success", "{query}: {body}");
    body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let lines = s["values"].as_array().unwrap().iter().map(|v| v[1].as_str().unwrap().to_string()).collect();
            (s["stream"].clone(), lines)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_over_tcp_udp_and_octet_counting_is_stored_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(syslog_config(dir.path(), "tcp://127.0.0.1:0,udp://127.0.0.1:0")).await;
    let tcp = listener(&server, Transport::Tcp).port().to_string();
    let udp = listener(&server, Transport::Udp).port().to_string();
    let base = ["--server", "127.0.0.1"];
    // RFC 5424 over TCP, newline-framed, with structured data, a MSGID and a PID.
    logger(
        &[
            &base[..],
            &["--port", &tcp, "--tcp", "--rfc5424=notq", "--sd-id", "origin@32473", "--sd-param", "ip=\"10.0.0.1\""],
            &["--sd-param", "note=\"two words\"", "--msgid", "ID47", "--id=4242", "-p", "auth.err", "-t", "myapp"],
            &["hello over tcp"],
        ]
        .concat(),
    );
    // RFC 3164 over UDP.
    logger(
        &[
            &base[..],
            &["--port", &udp, "--udp", "--rfc3164", "--id=77", "-p", "local3.warning", "-t", "legacy"],
            &["over udp"],
        ]
        .concat(),
    );
    // RFC 5424 over TCP with octet counting, with logger's default timeQuality element.
    logger(
        &[
            &base[..],
            &["--port", &tcp, "--tcp", "--octet-count", "--rfc5424", "-p", "daemon.debug", "-t", "counted"],
            &["framed by count"],
        ]
        .concat(),
    );

    let sql = "SELECT time, hostname, app_name, facility, level, procid, msgid, severity, \"sd.origin@32473.ip\" AS ip, \
               \"sd.origin@32473.note\" AS note, \"sd.timeQuality.tzKnown\" AS tz_known, message FROM logs ORDER BY app_name";
    let mut rows = rows_once_stored(&server, 3, sql).await;
    check_recent(&mut rows);
    let (long, short) = (hostname(false), hostname(true));
    assert_eq!(
        rows,
        vec![
            json!({"hostname": long, "app_name": "counted", "facility": "daemon", "level": "debug", "procid": null,
                   "msgid": null, "severity": "debug", "ip": null, "note": null, "tz_known": "1",
                   "message": "framed by count"}),
            json!({"hostname": short, "app_name": "legacy", "facility": "local3", "level": "warn", "procid": "77",
                   "msgid": null, "severity": "warning", "ip": null, "note": null, "tz_known": null,
                   "message": "over udp"}),
            json!({"hostname": long, "app_name": "myapp", "facility": "auth", "level": "error", "procid": "4242",
                   "msgid": "ID47", "severity": "err", "ip": "10.0.0.1", "note": "two words", "tz_known": null,
                   "message": "hello over tcp"}),
        ]
    );
    // LogQL: the stream labels, a field filter, and detected_level agreeing with the level label.
    let streams = logql(&server, "{app_name=\"myapp\"}").await;
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].1, ["hello over tcp"]);
    let labels = &streams[0].0;
    for (k, v) in [("hostname", long.as_str()), ("app_name", "myapp"), ("facility", "auth"), ("level", "error")] {
        assert_eq!(labels[k], v, "{labels}");
    }
    let streams = logql(&server, "{facility=~\"local3|daemon\"} | severity=\"warning\"").await;
    assert_eq!(streams.iter().flat_map(|s| s.1.clone()).collect::<Vec<_>>(), ["over udp"]);
    let r = server
        .client
        .get(server.url("/loki/api/v1/query"))
        .header("X-Scope-OrgID", "default")
        .query(&[("query", "sum by (detected_level) (count_over_time({hostname=~\".+\"}[1h]))")])
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let mut levels: Vec<(String, String)> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (s["metric"]["detected_level"].as_str().unwrap().to_string(), s["value"][1].as_str().unwrap().to_string())
        })
        .collect();
    levels.sort();
    let want = [("debug", "1"), ("error", "1"), ("warn", "1")].map(|(a, b)| (a.to_string(), b.to_string()));
    assert_eq!(levels, want);
    server.stop().await;
}

/// An rsyslogd of our own, on loopback, with its own work directory.
struct Rsyslog {
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Rsyslog {
    /// Listens on UDP `inputs` (port, ruleset) and forwards to Lumen's TCP port by each ruleset's action.
    fn start(conf_body: &str, inputs: &[u16]) -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let conf = dir.path().join("rsyslog.conf");
        std::fs::write(&conf, format!("global(workDirectory=\"{}\")\n{conf_body}", work.display())).unwrap();
        let bin = if Path::new("/usr/sbin/rsyslogd").exists() { "/usr/sbin/rsyslogd" } else { "rsyslogd" };
        let mut child = Command::new(bin)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rsyslogd is installed (scripts/test installs rsyslog)");
        // Ready once it holds its UDP ports.
        let deadline = Instant::now() + Duration::from_secs(15);
        for &port in inputs {
            while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                if let Some(status) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    use std::io::Read;
                    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                    panic!("rsyslogd exited with {status}: {err}");
                }
                assert!(Instant::now() < deadline, "rsyslogd did not listen on UDP {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Rsyslog { child: Some(child), _dir: dir }
    }

    /// SIGTERM, by its process id.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_forwards_rfc5424_and_its_bsd_format_into_lumen() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(syslog_config(dir.path(), "tcp://127.0.0.1:0")).await;
    let lumen = listener(&server, Transport::Tcp).port();
    let (a, b) = (free_addr().port(), free_addr().port());
    let conf = format!(
        r#"module(load="imudp")
ruleset(name="rfc5424") {{
  action(type="omfwd" target="127.0.0.1" port="{lumen}" protocol="tcp" TCP_Framing="octet-counted"
         template="RSYSLOG_SyslogProtocol23Format")
}}
ruleset(name="bsd") {{
  action(type="omfwd" target="127.0.0.1" port="{lumen}" protocol="tcp" template="RSYSLOG_ForwardFormat")
}}
input(type="imudp" address="127.0.0.1" port="{a}" ruleset="rfc5424")
input(type="imudp" address="127.0.0.1" port="{b}" ruleset="bsd")
"#
    );
    let mut rsyslog = Rsyslog::start(&conf, &[a, b]);
    for (port, text) in [(a, "relayed as RFC 5424"), (b, "relayed in the forward format")] {
        let port = port.to_string();
        let args = ["--server", "127.0.0.1", "--port", &port, "--udp", "--rfc3164", "--id=77", "-p", "local0.notice"];
        logger(&[&args[..], &["-t", "viarsyslog", text]].concat());
    }
    let sql = "SELECT time, hostname, app_name, facility, level, procid, severity, message FROM logs ORDER BY message";
    let mut rows = rows_once_stored(&server, 2, sql).await;
    check_recent(&mut rows);
    let host = hostname(true);
    let row = |message: &str| {
        json!({"hostname": host, "app_name": "viarsyslog", "facility": "local0", "level": "info", "procid": "77",
               "severity": "notice", "message": message})
    };
    assert_eq!(rows, vec![row("relayed as RFC 5424"), row("relayed in the forward format")]);
    rsyslog.stop();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_on_the_servers_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca: PathBuf = crate::tls::make_ca(&pki);
    let (cert, key) = crate::tls::make_cert(&pki, "server");
    let mut config = syslog_config(&dir.path().join("data"), "tls://127.0.0.1:0");
    config.server.tls_cert_file = cert;
    config.server.tls_key_file = key;
    let mut server = TestServer::start(config).await;
    let addr = listener(&server, Transport::Tls);
    // The HTTP port is HTTPS now.
    let cert = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    server.client = crate::harness::client_builder().add_root_certificate(cert).build().unwrap();
    server.base = format!("https://127.0.0.1:{}", server.running.as_ref().unwrap().http_addr.port());

    // Plain TCP to the TLS port: the handshake fails, nothing is stored.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"<14>1 - plain app - - - not over tls\n").await.unwrap();
    drop(plain);

    let mut roots = tls::rustls::RootCertStore::empty();
    tls::add_roots(&mut roots, &ca, "the test CA").unwrap();
    let client = tls::client_config(roots, None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = connector.connect(name, tcp).await.expect("TLS handshake with the server's certificate");
    let now = store::time::format_rfc3339_ns(store::time::now_ns());
    let counted =
        format!(r#"<165>1 {now} tls-host tlsapp 99 MSG1 [meta@1 q="say \"hi\"" path="C:\\x" br="a\]b"] over tls"#);
    let mut data = format!("{} {counted}", counted.len()).into_bytes();
    // Newline-framed, a PRI and a tag only: the sender's address names the host, the receipt is the time.
    data.extend(b"<12>tlsapp: newline framed\n");
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();

    let sql = "SELECT hostname, app_name, facility, level, procid, msgid, \"sd.meta@1.q\" AS q, \
               \"sd.meta@1.path\" AS path, \"sd.meta@1.br\" AS br, message FROM logs ORDER BY message";
    let rows = rows_once_stored(&server, 2, sql).await;
    assert_eq!(
        rows,
        vec![
            json!({"hostname": "127.0.0.1", "app_name": "tlsapp", "facility": "user", "level": "warn", "procid": null,
                   "msgid": null, "q": null, "path": null, "br": null, "message": "newline framed"}),
            json!({"hostname": "tls-host", "app_name": "tlsapp", "facility": "local4", "level": "info", "procid": "99",
                   "msgid": "MSG1", "q": "say \"hi\"", "path": "C:\\x", "br": "a]b", "message": "over tls"}),
        ]
    );
    assert_eq!(metric(&server, "lumen_syslog_connections_rejected_total{reason=\"tls_handshake\"}").await, 1.0);
    server.stop().await;
}
