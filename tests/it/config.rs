//! The example config documents every key at its default, and the CLI validates configs.

use std::path::Path;

use lumen::Config;

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.toml")
}

#[test]
fn example_config_lists_every_default() {
    let parsed = Config::from_file(&example()).unwrap();
    assert_eq!(parsed, Config::default());
    // Every key of the defaults appears in the example.
    let defaults: toml::Table = toml::from_str(&Config::defaults_toml()).unwrap();
    let text = std::fs::read_to_string(example()).unwrap();
    for (section, keys) in &defaults {
        assert!(text.contains(&format!("[{section}]")), "section [{section}] missing from the example");
        for (key, value) in keys.as_table().unwrap() {
            if let Some(sub) = value.as_table() {
                let name = format!("{section}.{key}");
                assert!(text.contains(&format!("[{name}]")), "section [{name}] missing from the example");
                for key in sub.keys() {
                    assert!(text.contains(&format!("\n{key} = ")), "{name}.{key} missing from the example");
                }
                continue;
            }
            assert!(text.contains(&format!("\n{key} = ")), "{section}.{key} missing from the example");
        }
    }
}

#[test]
fn config_check_accepts_the_example_and_names_a_bad_key() {
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["config", "check", "--config"])
        .arg(example())
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nretention = \"soon\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid duration \"soon\""), "{err}");
    std::fs::write(&bad, "[server]\nhttp_adr = \"1.2.3.4:5\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["config", "check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `http_adr`"), "{err}");
}

/// Issue 18: `server --check` refuses what `server` would refuse at start, not only what the config parser
/// sees: an MQTT endpoint beyond loopback without credentials, a token file that does not exist,
/// certificate files that cannot be read, and two disk budgets that disagree.
#[test]
fn server_check_refuses_what_the_server_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let check = |extra: &[&str], toml: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lumen"))
            .args(["server", "--check", "--config"])
            .arg(&path)
            .args(extra)
            .env_remove("LUMEN_AUTH_TOKEN")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) = check(&[], "");
    assert!(ok, "the defaults pass: {err}");
    let (ok, err) = check(&["--mqtt-listen", "0.0.0.0:1883"], "");
    assert!(!ok && err.contains("beyond loopback") && err.contains("mqtt.listener.username"), "{err}");
    let (ok, err) =
        check(&["--mqtt-listen", "0.0.0.0:1883"], "[mqtt.listener]\nusername = \"dev\"\npassword = \"secret-pass\"\n");
    assert!(ok, "with credentials it passes: {err}");
    let (ok, err) = check(&[], "[server]\nauth_file = \"/nonexistent/tokens\"\n");
    assert!(!ok && err.contains("/nonexistent/tokens"), "{err}");
    let (ok, err) =
        check(&[], "[server]\ntls_cert_file = \"/nonexistent/cert.pem\"\ntls_key_file = \"/nonexistent/key.pem\"\n");
    assert!(!ok && err.contains("tls_cert_file"), "{err}");
    let (ok, err) = check(
        &[],
        "[server]\nretention_max_disk = \"1 GiB\"\n[store]\nretention_max_disk = \"2 GiB\"\nmin_free_disk = \"auto\"\n",
    );
    assert!(!ok && err.contains("disagree"), "{err}");
    let (ok, err) = check(&[], "[store]\nmin_free_disk = \"lots\"\n");
    assert!(!ok && err.contains("min_free_disk"), "{err}");
    // A bucket's local cache at or above the disk budget: the budget would delete what the cache evicts.
    let s3 = "[storage]\nbackend = \"s3\"\nbucket = \"b\"\ncache_max_bytes = \"2 GiB\"\n";
    let (ok, err) = check(&[], &format!("{s3}[store]\nretention_max_disk = \"1 GiB\"\n"));
    assert!(!ok && err.contains("storage.cache_max_bytes") && err.contains("retention_max_disk"), "{err}");
    let (ok, err) = check(&[], &format!("{s3}[store]\nretention_max_disk = \"4 GiB\"\n"));
    assert!(ok, "a cache below the budget passes: {err}");
    // Roles: query, ingest and compactor nodes need a bucket; ingest nodes and compactors a name fit for a
    // key; a compactor an interval to work at.
    let (ok, err) = check(&["--role", "query"], "");
    assert!(!ok && err.contains("role = \"query\" follows a bucket"), "{err}");
    let (ok, err) = check(&["--role", "query"], s3);
    assert!(ok, "a query node on a bucket passes: {err}");
    let (ok, err) = check(&["--role", "ingest", "--node-name", "lumen-ingest-0"], s3);
    assert!(ok, "an ingest node on a bucket passes: {err}");
    let (ok, err) = check(&["--role", "ingest", "--node-name", "lumen-ingest-0"], "");
    assert!(!ok && err.contains("role = \"ingest\" writes its own tree"), "{err}");
    let (ok, err) = check(&["--role", "ingest", "--node-name", "../x"], s3);
    assert!(!ok && err.contains("server.node_name"), "{err}");
    let (ok, err) = check(&["--role", "compactor", "--node-name", "lumen-compactor"], s3);
    assert!(ok, "a compactor on a bucket passes: {err}");
    let (ok, err) = check(&["--role", "compactor", "--node-name", "lumen-compactor"], "");
    assert!(!ok && err.contains("role = \"compactor\" tends the retired trees"), "{err}");
    let (ok, err) = check(&["--role", "compactor", "--node-name", "../x"], s3);
    assert!(!ok && err.contains("server.node_name"), "{err}");
    let never = format!("{s3}retired_trees_interval = \"0s\"\n");
    let (ok, err) = check(&["--role", "compactor", "--node-name", "c"], &never);
    assert!(!ok && err.contains("storage.retired_trees_interval"), "{err}");
    // A query node's ingest nodes: base URLs without credentials, from the flag (commas) or the file.
    let (ok, err) = check(&["--role", "query", "--ingest-url", "http://lumen:9700,https://lumen-1:9700"], s3);
    assert!(ok, "two ingest URLs pass: {err}");
    let (ok, err) = check(&["--role", "query", "--ingest-url", "lumen:9700"], s3);
    assert!(!ok && err.contains("query.ingest_urls") && err.contains("http://host:port"), "{err}");
    let (ok, err) = check(&[], &format!("{s3}[query]\ningest_urls = [\"http://user:secret@lumen:9700\"]\n"));
    assert!(!ok && err.contains("carries credentials") && !err.contains("secret"), "{err}");
}

/// Issue 18: `/metrics` carries the process metrics of every Prometheus exporter and the build info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_process_and_build_info() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::harness::TestServer::start(crate::harness::test_config(dir.path())).await;
    // Some CPU time to count (the clock ticks at 10 ms).
    let spin = std::time::Instant::now();
    let mut x = 0u64;
    while spin.elapsed() < std::time::Duration::from_millis(100) {
        x = std::hint::black_box(x.wrapping_add(1));
    }
    let text = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_cpu_seconds_total") > 0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - value("process_start_time_seconds")).abs() < 600.0);
    let info = text.lines().find(|l| l.starts_with("lumen_build_info{")).expect("lumen_build_info");
    assert!(
        info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))) && info.contains("revision=\""),
        "{info}"
    );
    assert!(value("lumen_disk_free_bytes") > 0.0 && value("lumen_disk_reserve_bytes") > 0.0);
    server.stop().await;
}
