//! TLS (issue 17): the server on HTTPS with tokens on, the real agent process shipping to it with a CA file
//! and a bearer token file, Grafana-style basic auth over HTTPS, and a renewed certificate picked up without a
//! restart. Certificates come from the `openssl` command, as an operator would make them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{AgentProcess, agent_config};
use crate::auth::make_token;
use crate::harness::{TestServer, free_addr, test_config};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `openssl req` arguments for a new P-256 key without a passphrase.
const NEW_EC_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

/// A CA: ca.pem and ca.key.
pub(crate) fn make_ca(dir: &Path) -> PathBuf {
    let rest = ["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=lumen test CA"];
    openssl(dir, &[&["req", "-x509"][..], &NEW_EC_KEY, &rest].concat());
    dir.join("ca.pem")
}

/// A certificate the CA signed for 127.0.0.1 and localhost: `name`.pem and `name`.key.
pub(crate) fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, csr, pem, ext) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
    std::fs::write(dir.join(&ext), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    let subject = format!("/CN={name}");
    openssl(dir, &[&["req"][..], &NEW_EC_KEY, &["-keyout", &key, "-out", &csr, "-subj", &subject]].concat());
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
    (dir.join(pem), dir.join(key))
}

fn https_client(ca: &Path) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    crate::harness::client_builder().add_root_certificate(cert).tls_info(true).build().unwrap()
}

fn basic(user: &str, token: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")))
}

/// The DER of the first certificate in a PEM file.
fn der(pem: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(pem).unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_ships_over_https_with_a_token_and_a_renewed_certificate_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = make_ca(&pki);
    let (cert, key) = make_cert(&pki, "server");
    let tokens = dir.path().join("tokens.toml");
    let agent_token = make_token(&tokens, "default", "write,read");
    let grafana = make_token(&tokens, "default", "read");

    let mut config = test_config(&dir.path().join("data"));
    config.server.auth_file = tokens;
    config.server.tls_cert_file = cert.clone();
    config.server.tls_key_file = key.clone();
    let server = TestServer::start(config).await;
    let addr = server.running.as_ref().unwrap().http_addr;
    let base = format!("https://127.0.0.1:{}", addr.port());

    // Plain HTTP to the TLS port, and HTTPS without trusting the CA, get nowhere.
    let plain = crate::harness::client().get(format!("http://{addr}/health")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plain HTTP must not be served on the TLS port");
    assert!(crate::harness::client().get(format!("{base}/health")).send().await.is_err(), "an unknown CA is refused");

    // The agent: https:// server, the CA file, the token from a file.
    let token_file = dir.path().join("agent-token");
    std::fs::write(&token_file, format!("{agent_token}\n")).unwrap();
    let pods = dir.path().join("pods");
    let container = pods.join("default_web-1_uid1/app");
    std::fs::create_dir_all(&container).unwrap();
    let lines: Vec<String> = (0..50).map(|i| format!("over tls {i}")).collect();
    let now = chrono_like_now();
    let text: String = lines.iter().map(|l| format!("{now} stdout F {l}\n")).collect();
    std::fs::write(container.join("0.log"), text).unwrap();
    let extra = format!("bearer_token_file = \"{}\"\ntls_ca_file = \"{}\"", token_file.display(), ca.display());
    let config = agent_config(dir.path(), &base, &pods, &extra);
    let mut agent = AgentProcess::spawn(&config, free_addr());
    agent.wait_ready().await;

    let client = https_client(&ca);
    let query = |auth: String| {
        let client = client.clone();
        let url = format!("{base}/loki/api/v1/query_range");
        async move {
            let r = client
                .get(url)
                .header("Authorization", auth)
                .query(&[("query", "{pod=\"web-1\"}"), ("limit", "1000"), ("since", "2h")])
                .send()
                .await
                .unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 200, "{v}");
            v["data"]["result"].as_array().unwrap().iter().map(|s| s["values"].as_array().unwrap().len()).sum::<usize>()
        }
    };
    // Grafana's data source: basic auth, tenant as user.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = query(basic("default", &grafana)).await;
        if n == lines.len() {
            break;
        }
        assert!(Instant::now() < deadline, "only {n} of {} lines arrived over HTTPS", lines.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.terminate();

    // Renew the certificate in place (cert-manager style): new connections get the new one.
    let before = client.get(format!("{base}/health")).send().await.unwrap();
    let served = before.extensions().get::<reqwest::tls::TlsInfo>().unwrap().peer_certificate().unwrap().to_vec();
    assert_eq!(served, der(&cert));
    let (new_cert, new_key) = make_cert(&pki, "renewed");
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A fresh client, so that the connection (and its handshake) is new.
        let r = https_client(&ca).get(format!("{base}/health")).send().await.unwrap();
        let served = r.extensions().get::<reqwest::tls::TlsInfo>().unwrap().peer_certificate().unwrap().to_vec();
        if served == der(&new_cert) {
            break;
        }
        assert!(Instant::now() < deadline, "the renewed certificate was not served within 30 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(query(basic("default", &grafana)).await, lines.len(), "data and tokens unaffected by the renewal");
    server.stop().await;
}

/// Now in the CRI log format (RFC 3339 with nanoseconds, UTC).
fn chrono_like_now() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `mqtts`: a real MQTT client (mosquitto_pub) publishes over TLS with a token as its password; without the
/// CA, or in plain MQTT on the TLS port, it gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_publishes_over_mqtts_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = make_ca(&pki);
    let (cert, key) = make_cert(&pki, "server");
    let tokens = dir.path().join("tokens.toml");
    let device = make_token(&tokens, "default", "write");
    let reader = make_token(&tokens, "default", "read");
    let mut config = test_config(&dir.path().join("data"));
    config.server.auth_file = tokens;
    config.server.tls_cert_file = cert;
    config.server.tls_key_file = key;
    config.server.mqtts_listen = "127.0.0.1:0".to_string();
    let server = TestServer::start(config).await;
    let port = server.running.as_ref().unwrap().mqtts_addr.expect("mqtts listens").port().to_string();

    let publish = |extra: Vec<String>| {
        let port = port.clone();
        let device = device.clone();
        tokio::task::spawn_blocking(move || {
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-i", "dev-1", "-u", "default", "-P", &device])
                .args(["-t", "sensors/room-1", "-m", "{\"temp\": 21.5}"])
                .args(extra)
                .output()
                .unwrap()
        })
    };
    let plain = publish(vec![]).await.unwrap();
    assert!(!plain.status.success(), "plain MQTT on the mqtts port must fail");
    let ca_str = ca.display().to_string();
    let ok = publish(vec!["--cafile".into(), ca_str]).await.unwrap();
    assert!(ok.status.success(), "mosquitto_pub over TLS: {}", String::from_utf8_lossy(&ok.stderr));

    let base = format!("https://127.0.0.1:{}", server.running.as_ref().unwrap().http_addr.port());
    let r = https_client(&ca)
        .get(format!("{base}/loki/api/v1/query_range"))
        .header("Authorization", format!("Bearer {reader}"))
        .query(&[("query", "{source=\"mqtt\"}"), ("since", "1h")])
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let n: usize = v["data"]["result"].as_array().unwrap().iter().map(|s| s["values"].as_array().unwrap().len()).sum();
    assert_eq!(n, 1, "the message published over mqtts is stored: {v}");
    server.stop().await;
}

/// Mutual TLS: with `server.tls_client_ca_file`, a client without a certificate that CA signed gets no
/// connection; one with such a certificate gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_required_when_a_client_ca_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = make_ca(&pki);
    let (cert, key) = make_cert(&pki, "server");
    let (client_cert, client_key) = make_cert(&pki, "client");
    let mut config = test_config(&dir.path().join("data"));
    config.server.tls_cert_file = cert;
    config.server.tls_key_file = key;
    config.server.tls_client_ca_file = ca.clone();
    let server = TestServer::start(config).await;
    let url = format!("https://127.0.0.1:{}/health", server.running.as_ref().unwrap().http_addr.port());

    assert!(https_client(&ca).get(&url).send().await.is_err(), "no client certificate: refused");
    let mut pem = std::fs::read(&client_cert).unwrap();
    pem.extend(std::fs::read(&client_key).unwrap());
    let identity = reqwest::Identity::from_pem(&pem).unwrap();
    let root = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let client = crate::harness::client_builder().add_root_certificate(root).identity(identity).build().unwrap();
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}
