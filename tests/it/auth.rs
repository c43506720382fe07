//! Authentication (issue 17): tokens made by `lumen auth token`, checked on every endpoint family (ingest,
//! query, SQL, admin, `/metrics`, OTLP over HTTP and gRPC, the Loki tail WebSocket, the MQTT endpoint),
//! their tenants and scopes, a reload of the token file, and the refusal to serve beyond loopback without
//! authentication.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::harness::{TestServer, test_config};

/// Runs `lumen auth token` and returns the token it printed.
pub fn make_token(file: &Path, tenants: &str, scopes: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["auth", "token", "--file"])
        .arg(file)
        .args(["--tenant", tenants, "--scopes", scopes])
        .output()
        .unwrap();
    assert!(out.status.success(), "lumen auth token failed: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("lumen_") && !token.contains('\n'), "stdout is the token alone: {token:?}");
    token
}

fn basic(user: &str, token: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}")))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn push_body(line: &str) -> String {
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    serde_json::json!({"streams": [{"stream": {"job": "auth-test"}, "values": [[ns.to_string(), line]]}]}).to_string()
}

struct Client<'a> {
    server: &'a TestServer,
}

impl Client<'_> {
    async fn call(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        tenant: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, String) {
        let mut req = self.server.client.request(method, self.server.url(path));
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        if let Some(t) = tenant {
            req = req.header("X-Scope-OrgID", t);
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
            assert!(challenge.is_some_and(|c| c.starts_with("Basic")), "a 401 carries a WWW-Authenticate challenge");
        }
        (status, resp.text().await.unwrap())
    }

    async fn push(&self, authorization: Option<&str>, tenant: Option<&str>, line: &str) -> (StatusCode, String) {
        self.call(Method::POST, "/loki/api/v1/push", authorization, tenant, Some(push_body(line))).await
    }

    /// The lines of `{job="auth-test"}` (or `query`) the credential sees.
    async fn lines(&self, authorization: &str, tenant: Option<&str>, query: &str) -> Vec<String> {
        let path = format!("/loki/api/v1/query_range?query={}&limit=100", urlencode(query));
        let (status, body) = self.call(Method::GET, &path, Some(authorization), tenant, None).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let mut out: Vec<String> = v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["values"].as_array().unwrap().iter().map(|p| p[1].as_str().unwrap().to_string()))
            .collect();
        out.sort();
        out
    }
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

async fn mqtt_connect(port: u16, credentials: Option<(&str, &str)>, publish: Option<&str>) -> Result<(), String> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut opts = MqttOptions::new(format!("auth-{}", rand_suffix()), "127.0.0.1", port);
    if let Some((u, p)) = credentials {
        opts.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    if let Some(payload) = publish {
        client.publish("sensors/room-1", QoS::AtLeastOnce, false, payload.as_bytes().to_vec()).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) if publish.is_none() => return Ok(()),
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timed out".to_string()),
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_family_needs_a_token_for_its_tenant_and_scope() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let writer = make_token(&file, "team-a", "write");
    let reader = make_token(&file, "team-a,team-b", "read");
    let admin = make_token(&file, "*", "admin");
    let writer_b = make_token(&file, "team-b", "write");
    let text = std::fs::read_to_string(&file).unwrap();
    for t in [&writer, &reader, &admin] {
        assert!(!text.contains(t.as_str()), "the token file holds hashes only");
    }

    let mut config = test_config(&dir.path().join("data"));
    config.server.auth_file = file.clone();
    config.server.mqtt_listen = "127.0.0.1:0".to_string();
    config.mqtt.tenant = "team-a".to_string();
    let server = TestServer::start(config).await;
    let c = Client { server: &server };
    let (w, r, a) = (bearer(&writer), bearer(&reader), bearer(&admin));

    // Probes stay open; everything else needs a credential.
    for path in ["/health", "/ready"] {
        assert_eq!(c.call(Method::GET, path, None, None, None).await.0, 200, "{path}");
    }

    // Ingest: the write scope, for a tenant of the token.
    let (status, body) = c.push(None, None, "anonymous").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("requires a token"), "{body}");
    let (status, body) = c.push(Some(&r), None, "from a reader").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("write scope"), "{body}");
    let (status, body) = c.push(Some(&w), Some("team-b"), "into another tenant").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("team-b"), "{body}");
    assert_eq!(c.push(Some(&bearer("lumen_not_a_token_at_all")), None, "forged").await.0, 401);
    assert_eq!(c.push(Some(&w), None, "bearer line").await.0, 204);
    assert_eq!(c.push(Some(&basic("team-a", &writer)), None, "basic line").await.0, 204);
    for path in
        ["/api/v1/write", "/insert/jsonline", "/api/v1/import/prometheus", "/api/v2/write", "/v1/logs", "/v1/metrics"]
    {
        let (status, body) = c.call(Method::POST, path, None, None, Some("{}".into())).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, body) = c.call(Method::POST, path, Some(&r), None, Some("{}".into())).await;
        assert_eq!(status, 403, "{path}: {body}");
    }

    // Query: the read scope. A token without a tenant header acts for its first tenant; basic auth names
    // the tenant as user (Grafana's data sources); the tenants stay apart.
    let q = "{job=\"auth-test\"}";
    let path = format!("/loki/api/v1/query_range?query={}", urlencode(q));
    assert_eq!(c.call(Method::GET, &path, None, None, None).await.0, 401);
    assert_eq!(c.call(Method::GET, &path, Some(&w), None, None).await.0, 403);
    assert_eq!(c.lines(&r, None, q).await, vec!["basic line", "bearer line"]);
    assert_eq!(c.lines(&basic("team-a", &reader), None, q).await, vec!["basic line", "bearer line"]);
    assert!(c.lines(&basic("team-b", &reader), None, q).await.is_empty());
    assert_eq!(c.call(Method::GET, &path, Some(&r), Some("team-c"), None).await.0, 403);
    assert_eq!(c.call(Method::GET, &path, Some(&a), None, None).await.0, 403, "admin alone does not read");
    for path in ["/api/v1/query?query=1", "/api/v1/labels", "/loki/api/v1/labels", "/metrics"] {
        assert_eq!(c.call(Method::GET, path, None, None, None).await.0, 401, "{path}");
        let (status, body) = c.call(Method::GET, path, Some(&r), None, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let sql_body = "SELECT count(*) AS n FROM logs".to_string();
    assert_eq!(c.call(Method::POST, "/api/v1/sql", None, None, Some(sql_body.clone())).await.0, 401);
    assert_eq!(c.call(Method::POST, "/api/v1/sql", Some(&w), None, Some(sql_body.clone())).await.0, 403);
    let (status, body) = c.call(Method::POST, "/api/v1/sql", Some(&r), None, Some(sql_body)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"n\":2"), "SQL sees team-a's two lines: {body}");

    // Admin: only the admin scope.
    for auth in [None, Some(r.as_str()), Some(w.as_str())] {
        let (status, body) = c.call(Method::POST, "/api/v1/admin/flush", auth, None, None).await;
        assert_eq!(status, if auth.is_none() { 401 } else { 403 }, "{body}");
    }
    assert_eq!(c.call(Method::POST, "/api/v1/admin/flush", Some(&a), None, None).await.0, 200);

    // The tail WebSocket.
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://{}/loki/api/v1/tail?query={}", &server.base[7..], urlencode(q));
        match tokio_tungstenite::connect_async(url.clone()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("a tail without a token must be refused, got {:?}", other.map(|_| ())),
        }
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("Authorization", r.parse().unwrap());
        tokio_tungstenite::connect_async(req).await.expect("a reader may tail");
    }

    // The MQTT endpoint: user name = tenant, password = a write token for it; each connection's messages go
    // to the tenant it logged in as.
    let port = server.running.as_ref().unwrap().mqtt_addr.unwrap().port();
    assert!(mqtt_connect(port, None, None).await.is_err(), "anonymous MQTT is refused");
    assert!(mqtt_connect(port, Some(("team-a", &reader)), None).await.is_err(), "a read token cannot publish");
    assert!(mqtt_connect(port, Some(("team-b", &writer)), None).await.is_err(), "nor a token of another tenant");
    mqtt_connect(port, Some(("team-a", &writer)), Some("{\"temp\": 21.5}")).await.expect("the writer publishes");
    let lines = c.lines(&r, None, "{source=\"mqtt\"}").await;
    assert_eq!(lines.len(), 1, "the MQTT message is stored under team-a: {lines:?}");
    mqtt_connect(port, Some(("team-b", &writer_b)), Some("{\"temp\": 19}")).await.expect("team-b's device publishes");
    let lines = c.lines(&r, Some("team-b"), "{source=\"mqtt\"}").await;
    assert_eq!(lines.len(), 1, "its message is stored under team-b: {lines:?}");
    assert_eq!(c.lines(&r, None, "{source=\"mqtt\"}").await.len(), 1, "and not under team-a");

    server.stop().await;
}

/// A token added while the server runs works within seconds; a file broken while it runs keeps the tokens
/// in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_is_reloaded_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let first = make_token(&file, "team-a", "write");
    let mut config = test_config(&dir.path().join("data"));
    config.server.auth_file = file.clone();
    let server = TestServer::start(config).await;
    let c = Client { server: &server };
    assert_eq!(c.push(Some(&bearer(&first)), None, "one").await.0, 204);

    let second = make_token(&file, "team-b", "write");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = c.push(Some(&bearer(&second)), None, "two").await;
        if status == 204 {
            break;
        }
        assert_eq!(status, 401, "{body}");
        assert!(Instant::now() < deadline, "the new token was not accepted within 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    std::fs::write(&file, "[[tokens]]\nthis is not a token file\n").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(c.push(Some(&bearer(&first)), None, "three").await.0, 204, "a broken file keeps the tokens in force");
    server.stop().await;
}

/// Safe by default: without authentication the server will not listen beyond loopback unless told to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_needs_authentication_or_an_explicit_opt_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.http_addr = "0.0.0.0:0".parse().unwrap();
    let err = lumen::start(config.clone()).await.err().expect("refused").to_string();
    assert!(err.contains("server.http_addr") && err.contains("allow_unauthenticated"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["server", "--check", "--http-addr", "0.0.0.0:9700"])
        .env("LUMEN_DATA_DIR", dir.path())
        .env_remove("LUMEN_AUTH_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("beyond loopback"));
    for env in [("LUMEN_AUTH_TOKEN", "0123456789abcdef0123"), ("LUMEN_ALLOW_UNAUTHENTICATED", "true")] {
        let out = Command::new(env!("CARGO_BIN_EXE_lumen"))
            .args(["server", "--check", "--http-addr", "0.0.0.0:9700"])
            .env(env.0, env.1)
            .output()
            .unwrap();
        assert!(out.status.success(), "{env:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    config.server.allow_unauthenticated = true;
    let server = TestServer::start(config).await;
    server.stop().await;
}

/// `[limits]` on MQTT (issue 17): a token login as a new tenant past `limits.max_tenants` has its connection
/// closed with its message unacknowledged and stored nowhere; the tenants already held keep publishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_login_as_a_new_tenant_past_max_tenants_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let writer_a = make_token(&file, "team-a", "write");
    let writer_b = make_token(&file, "team-b", "write");
    let reader = make_token(&file, "team-a,team-b", "read");
    let mut config = test_config(&dir.path().join("data"));
    config.server.auth_file = file.clone();
    config.server.mqtt_listen = "127.0.0.1:0".to_string();
    config.mqtt.tenant = "team-a".to_string();
    config.limits.max_tenants = 1;
    let server = TestServer::start(config).await;
    let c = Client { server: &server };
    let r = bearer(&reader);
    let port = server.running.as_ref().unwrap().mqtt_addr.unwrap().port();

    mqtt_connect(port, Some(("team-a", &writer_a)), Some("{\"temp\": 21.5}")).await.expect("team-a publishes");
    let err = mqtt_connect(port, Some(("team-b", &writer_b)), Some("{\"temp\": 19}")).await.unwrap_err();
    assert!(!err.contains("timed out"), "the connection is closed, not left hanging: {err}");
    assert!(c.lines(&r, Some("team-b"), "{source=\"mqtt\"}").await.is_empty(), "team-b's message was stored");
    mqtt_connect(port, Some(("team-a", &writer_a)), Some("{\"temp\": 22}")).await.expect("team-a still publishes");
    assert_eq!(c.lines(&r, None, "{source=\"mqtt\"}").await.len(), 2);
    server.stop().await;
}
