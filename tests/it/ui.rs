//! The web UI as the server serves it (issue 19): `/` redirects relatively to `ui/`, the committed
//! `ui/dist` files come from the binary's memory (gzip when accepted, long cache for hashed assets, a CSP
//! that keeps the page to this origin), they need no token while the APIs do, and the status endpoint the
//! UI's status page reads masks secrets.

use std::io::Read;

use serde_json::Value;

use crate::harness::{TestServer, test_config};

fn no_redirects() -> reqwest::Client {
    crate::harness::client_builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_is_served_from_memory_under_a_relative_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.mqtt.listener.password = "very-secret-pass".into();
    let server = TestServer::start(config).await;
    let client = no_redirects();
    for path in ["/", "/ui"] {
        let r = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 302, "{path}");
        assert_eq!(r.headers()["location"], "ui/", "{path}: a relative redirect works behind a path prefix");
    }
    // Alerts' generatorURL (Prometheus' /graph link) opens the Metrics view with the rule's expression.
    let r = client.get(server.url("/graph?g0.expr=up+%3D%3D+0&g0.tab=1")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "ui/#/metrics?query=up+%3D%3D+0");
    let files = lumen::ui::files();
    assert!(
        files.iter().any(|(p, _)| *p == "index.html"),
        "ui/dist holds no index.html: build the UI (cd ui && npm ci && npm run build)"
    );
    let r = client.get(server.url("/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(r.headers()["cache-control"], "no-cache");
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'self'") && csp.contains("connect-src 'self'"), "{csp}");
    let html = r.text().await.unwrap();
    // Every asset index.html names is relative and served, gzip-encoded when asked, with a year's cache.
    let assets: Vec<&str> =
        html.split('"').filter(|s| s.starts_with("./assets/") || s.starts_with("assets/")).collect();
    assert!(!assets.is_empty(), "index.html loads no assets: {html}");
    for a in assets {
        let a = a.trim_start_matches("./");
        let raw = files.iter().find(|(p, _)| *p == a).unwrap_or_else(|| panic!("{a} is not embedded")).1;
        let r = client.get(server.url(&format!("/ui/{a}"))).header("Accept-Encoding", "gzip").send().await.unwrap();
        assert_eq!(r.status(), 200, "{a}");
        assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable", "{a}");
        let gz = r.headers().get("content-encoding").is_some_and(|v| v == "gzip");
        let body = r.bytes().await.unwrap();
        let plain = if gz {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).unwrap();
            out
        } else {
            body.to_vec()
        };
        assert_eq!(plain, raw, "{a}: the gzip copy is not the file");
    }
    for bad in ["/ui/../Cargo.toml", "/ui/assets/nope.js", "/ui/index.html.gz"] {
        let r = client.get(server.url(bad)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }
    // The status page's endpoint: figures, and no secret.
    let r = client.get(server.url("/api/v1/status/lumen")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("very-secret-pass"), "a secret in the status: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert!(v["storage"]["disk"]["free_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["config"]["mqtt"]["listener"]["password"], "***");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_on_the_ui_loads_and_the_apis_ask_for_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.auth_token = Some(lumen::config::Secret("ui-test-token-0123456789".into()));
    let server = TestServer::start(config).await;
    let client = no_redirects();
    assert_eq!(client.get(server.url("/ui/")).send().await.unwrap().status(), 200);
    let r = client.get(server.url("/api/v1/status/lumen")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    // The UI's own requests get no Basic challenge, so the browser does not open its login box over the
    // UI's sign-in form.
    let r = client.get(server.url("/api/v1/status/lumen")).header("X-Lumen-UI", "1").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let r = client
        .get(server.url("/api/v1/status/lumen"))
        .basic_auth("default", Some("ui-test-token-0123456789"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

/// The UI's live tail with tokens on (issue 19): a browser cannot put a header on a WebSocket, so it offers
/// `lumen.bearer` and its credential as subprotocols; the server answers with `lumen.bearer` alone and
/// streams the tenant's lines, and refuses a wrong token (401) and a tenant the token lacks (403).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_websocket_takes_the_token_as_a_subprotocol() {
    use base64::Engine;
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let reader = crate::auth::make_token(&file, "team-a", "read");
    let writer = crate::auth::make_token(&file, "team-a", "write");
    let mut config = test_config(&dir.path().join("data"));
    config.server.auth_file = file;
    let server = TestServer::start(config).await;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let url = format!("ws://{}/loki/api/v1/tail?query=%7Bapp%3D%22ws%22%7D", &server.base[7..]);
    let connect = |protocols: String| {
        let mut req = url.clone().into_client_request().unwrap();
        req.headers_mut().insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let basic = |tenant: &str, token: &str| {
        format!("lumen.bearer, base64url.basic.authorization.lumen.{}", b64(&format!("{tenant}:{token}")))
    };
    for (protocols, want) in [
        (basic("team-a", "lumen_not_a_token"), 401),
        (format!("lumen.bearer, base64url.bearer.authorization.lumen.{}", b64("lumen_not_a_token")), 401),
        (basic("team-b", &reader), 403),
        (basic("team-a", &writer), 403),
        ("lumen.bearer".to_string(), 401),
    ] {
        match connect(protocols.clone()).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), want, "{protocols}"),
            other => panic!("{protocols}: must be refused with {want}, got {:?}", other.map(|_| ())),
        }
    }
    let (mut socket, resp) = connect(basic("team-a", &reader)).await.expect("the UI's credential opens the tail");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "lumen.bearer", "only the fixed name is echoed");
    // The bearer form works too, for the token's first tenant.
    let bearer = format!("lumen.bearer, base64url.bearer.authorization.lumen.{}", b64(&reader));
    connect(bearer).await.expect("a bearer token as a subprotocol opens the tail");

    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let body =
        serde_json::json!({"streams": [{"stream": {"app": "ws"}, "values": [[ns.to_string(), "pushed over ws"]]}]});
    let r = server.client.post(server.url("/loki/api/v1/push")).bearer_auth(&writer).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let frame = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match socket.next().await.expect("the tail stays open").unwrap() {
                tungstenite::Message::Text(t) if t.contains("pushed over ws") => break t.to_string(),
                _ => {}
            }
        }
    })
    .await
    .expect("the pushed line arrives over the WebSocket");
    assert!(frame.contains("\"app\":\"ws\""), "{frame}");
    server.stop().await;
}
