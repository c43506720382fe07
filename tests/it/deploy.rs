//! deploy/: the Dockerfile (checked statically: no Docker engine runs here), the Compose file, and the
//! CLI verbs the containers rely on (`lumen health`, `lumen server --check`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{ServerProcess, free_addr};
use crate::yaml::yaml_file;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run_lumen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lumen")).args(args).output().unwrap()
}

/// The instructions of a Dockerfile, with continuation lines joined.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || (line.starts_with('#') && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_with_a_healthcheck() {
    let text = std::fs::read_to_string(repo("deploy/Dockerfile")).unwrap();
    let ins = instructions(&text);
    let froms: Vec<&String> = ins.iter().filter(|i| i.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage: {froms:?}");
    assert!(froms[0].contains(" AS builder"), "{}", froms[0]);
    assert!(froms[1].contains("distroless") || froms[1].contains("slim"), "a small runtime image: {}", froms[1]);
    let runtime: Vec<&String> = ins.iter().skip_while(|i| *i != froms[1]).collect();
    let user = runtime.iter().find(|i| i.starts_with("USER ")).expect("the runtime stage sets a user");
    let uid = user.trim_start_matches("USER ").split(':').next().unwrap();
    assert!(uid != "0" && uid != "root", "non-root: {user}");
    assert!(runtime.iter().any(|i| i.starts_with("COPY --from=builder")), "the binary comes from the build stage");
    let health = runtime.iter().find(|i| i.starts_with("HEALTHCHECK ")).expect("a healthcheck");
    assert!(health.contains("lumen") && health.contains("health"), "{health}");
    assert!(runtime.iter().any(|i| i.starts_with("ENTRYPOINT [\"/usr/local/bin/lumen\"]")));
    assert!(ins.iter().any(|i| i.contains("cargo build --release --locked -p lumen")), "builds the one binary");
    for port in ["9700", "4317", "1883"] {
        assert!(runtime.iter().any(|i| i.starts_with("EXPOSE") && i.contains(port)), "exposes {port}");
    }
    // The exposed ingest ports listen beyond the container's loopback.
    let env: Vec<&&String> = runtime.iter().filter(|i| i.starts_with("ENV ")).collect();
    for var in ["LUMEN_HTTP_ADDR=0.0.0.0:9700", "LUMEN_OTLP_GRPC_ADDR=0.0.0.0:4317"] {
        assert!(env.iter().any(|i| i.contains(var)), "{var}: {env:?}");
    }
    assert!(
        ins.iter().any(|i| i.contains("CARGO_PROFILE_RELEASE_STRIP=debuginfo")),
        "the image's binary leaves its debug info behind"
    );
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "the build context leaves target/ out");
}

#[test]
fn the_compose_file_wires_lumen_grafana_and_the_secrets_from_env() {
    let compose = yaml_file(&repo("deploy/compose/docker-compose.yml"));
    let services = &compose["services"];
    let lumen = &services["lumen"];
    assert_eq!(lumen["build"]["dockerfile"], "deploy/Dockerfile");
    let volumes: Vec<&str> = lumen["volumes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(volumes.contains(&"lumen-data:/var/lib/lumen"), "a named volume for the data: {volumes:?}");
    assert!(compose["volumes"].get("lumen-data").is_some());
    assert!(lumen["healthcheck"]["test"].to_string().contains("health"));
    // Grafana gets the provisioning and dashboards of deploy/grafana, which must exist.
    let grafana = &services["grafana"];
    for v in grafana["volumes"].as_array().unwrap() {
        let host = v.as_str().unwrap().split(':').next().unwrap();
        if host.starts_with("..") {
            assert!(repo("deploy/compose").join(host).exists(), "{host} is mounted but missing");
        }
    }
    assert_eq!(grafana["depends_on"]["lumen"]["condition"], "service_healthy");
    // Every ${VAR} the file uses is in .env.example, and .env itself is never committed.
    let text = std::fs::read_to_string(repo("deploy/compose/docker-compose.yml")).unwrap();
    let example = std::fs::read_to_string(repo("deploy/compose/.env.example")).unwrap();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("${") {
        let var: String = rest[i + 2..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        assert!(example.lines().any(|l| l.starts_with(&format!("{var}="))), "{var} missing from .env.example");
        rest = &rest[i + 2..];
    }
    let ignored = Command::new("git")
        .args(["check-ignore", "-q", "deploy/compose/.env"])
        .current_dir(repo("."))
        .status()
        .unwrap();
    assert!(ignored.success(), "deploy/compose/.env must be git-ignored");
    // The configs the containers run with pass the server's own check.
    for file in ["deploy/compose/lumen.toml", "deploy/compose/agent.toml"] {
        let out = run_lumen(&["config", "check", "--config", repo(file).to_str().unwrap()]);
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(services["agent"]["command"][0], "agent", "an agent scrapes Lumen's own metrics");
    let mosquitto = std::fs::read_to_string(repo("deploy/compose/mosquitto.conf")).unwrap();
    assert!(mosquitto.contains("allow_anonymous false") && mosquitto.contains("max_queued_messages 1000000"));
}

#[test]
fn server_check_validates_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[mqtt]\ntopics = [\"devices/{site}/{device}/telemetry\"]\n").unwrap();
    let out = run_lumen(&["server", "--config", good.to_str().unwrap(), "--check"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[mqtt]\ntopics = [\"devices/{site\"]\n").unwrap();
    let out = run_lumen(&["server", "--config", bad.to_str().unwrap(), "--check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("devices/{site"), "the error names the template: {err}");
    let out = run_lumen(&["server", "--check", "--mqtt-broker", "http://broker:1883"]);
    assert!(!out.status.success(), "a broker URL that is not mqtt:// is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_for_a_running_server_and_fails_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut server = ServerProcess::spawn(dir.path(), addr, &[]);
    server.wait_ready().await;
    let url = format!("http://{addr}/health");
    let out = run_lumen(&["health", "--url", &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let missing = format!("http://{addr}/no-such-page");
    assert!(!run_lumen(&["health", "--url", &missing]).status.success(), "a 404 is not healthy");
    server.kill9();
    let out = run_lumen(&["health", "--url", &url]);
    assert!(!out.status.success(), "nothing listens any more");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}
