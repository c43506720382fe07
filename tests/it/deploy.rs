//! deploy/: the Dockerfile (checked statically: no Docker engine runs here), the Compose file with its
//! token wiring, and the CLI verbs the containers rely on (`lumen health`, `lumen server --check`).

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

/// A token as the deployments' instructions make one (`openssl rand -hex 32`).
pub const DEPLOY_TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Checks a server config that listens beyond loopback the way it is deployed: `lumen config check --config
/// FILE` (which checks what `server --check` does but reads none of the files the config names: they are the
/// pod's secrets) passes with `LUMEN_AUTH_TOKEN` in the environment (as the Secret or `.env` gives it), and
/// is refused without it, since the server will not serve beyond loopback unauthenticated.
pub fn server_check_needs_the_token(file: &Path, what: &str) {
    let check = |token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lumen"));
        cmd.args(["config", "check", "--config"]).arg(file);
        for var in ["LUMEN_AUTH_TOKEN", "LUMEN_AUTH_FILE", "LUMEN_ALLOW_UNAUTHENTICATED"] {
            cmd.env_remove(var);
        }
        if let Some(token) = token {
            cmd.env("LUMEN_AUTH_TOKEN", token);
        }
        cmd.output().unwrap()
    };
    let out = check(Some(DEPLOY_TOKEN));
    assert!(out.status.success(), "{what} with LUMEN_AUTH_TOKEN: {}", String::from_utf8_lossy(&out.stderr));
    let out = check(None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("beyond loopback"), "{what} must need a token: {err}");
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
    // The configs the containers run with pass the server's own check: the server's with the token its
    // environment gets, and not without it.
    server_check_needs_the_token(&repo("deploy/compose/lumen.toml"), "deploy/compose/lumen.toml");
    let out = run_lumen(&["config", "check", "--config", repo("deploy/compose/agent.toml").to_str().unwrap()]);
    assert!(out.status.success(), "deploy/compose/agent.toml: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(services["agent"]["command"][0], "agent", "an agent scrapes Lumen's own metrics");
    // The agent reads the host's container logs: agent.toml's docker_dir is mounted read-only, and the
    // agent runs as uid 0 with DAC_READ_SEARCH only, since Docker writes the logs as root with mode 0640.
    let agent_toml: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo("deploy/compose/agent.toml")).unwrap()).unwrap();
    let docker_dir = agent_toml["agent"]["docker_dir"].as_str().expect("agent.toml sets docker_dir");
    assert_eq!(agent_toml["agent"]["logs"].as_bool(), Some(true), "agent.toml reads logs");
    let agent = &services["agent"];
    let mounts: Vec<&str> = agent["volumes"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(mounts.contains(&format!("/var/lib/docker/containers:{docker_dir}:ro").as_str()), "{mounts:?}");
    // The host's journal is read through the read-only mount of the host's root, so no journal directory
    // is created on a host that has none.
    let rootfs = agent_toml["agent"]["rootfs_dir"].as_str().unwrap();
    let journal_dirs = agent_toml["agent"]["journal_dirs"].as_array().expect("agent.toml sets journal_dirs");
    assert_eq!(journal_dirs.len(), 2);
    for d in journal_dirs {
        assert!(d.as_str().unwrap().starts_with(&format!("{rootfs}/")), "{d} is not under {rootfs}");
    }
    assert!(mounts.iter().any(|m| m.starts_with(&format!("/:{rootfs}:ro"))), "{mounts:?}");
    assert_eq!(agent["user"], "0:0");
    assert_eq!(agent["cap_drop"][0], "ALL");
    assert_eq!(agent["cap_add"].as_array().map(Vec::len), Some(1));
    assert_eq!(agent["cap_add"][0], "DAC_READ_SEARCH");
    assert_eq!(agent["read_only"], true);
    let mosquitto = std::fs::read_to_string(repo("deploy/compose/mosquitto.conf")).unwrap();
    assert!(mosquitto.contains("allow_anonymous false") && mosquitto.contains("max_queued_messages 1000000"));
}

#[test]
fn the_compose_file_turns_authentication_on_with_the_token_from_env() {
    let compose = yaml_file(&repo("deploy/compose/docker-compose.yml"));
    let services = &compose["services"];
    // Server and Grafana take LUMEN_AUTH_TOKEN from .env, and Compose refuses to start without it.
    for service in ["lumen", "grafana"] {
        let value = services[service]["environment"]["LUMEN_AUTH_TOKEN"].as_str().unwrap_or_default();
        assert!(value.starts_with("${LUMEN_AUTH_TOKEN:?"), "{service} gets LUMEN_AUTH_TOKEN from .env: {value:?}");
    }
    // The agent reads only a file: a Compose secret made from the same variable, readable by the image's
    // user (the distroless image has no shell to write one).
    assert_eq!(compose["secrets"]["lumen_auth_token"]["environment"], "LUMEN_AUTH_TOKEN");
    let agent = &services["agent"];
    let secret = agent["secrets"]
        .as_array()
        .expect("the agent gets secrets")
        .iter()
        .find(|s| s["source"] == "lumen_auth_token")
        .expect("the agent gets the secret lumen_auth_token");
    let target = secret["target"].as_str().unwrap_or("lumen_auth_token");
    let token_file = if target.starts_with('/') { target.to_string() } else { format!("/run/secrets/{target}") };
    assert_eq!(secret["uid"], "65532", "owned by the image's user");
    assert_eq!(secret["mode"], 0o400);
    assert!(agent.get("environment").is_none_or(|e| e.get("LUMEN_AUTH_TOKEN").is_none()), "a file, not the env");
    // agent.toml names that file, and its scrape of Lumen's /metrics (which needs the read scope) goes to the
    // server's scheme, host and port, so the token is sent there too.
    let text = std::fs::read_to_string(repo("deploy/compose/agent.toml")).unwrap();
    let config: toml::Table = toml::from_str(&text).unwrap();
    let a = &config["agent"];
    let bearer_token_file = a.get("bearer_token_file").and_then(toml::Value::as_str);
    assert_eq!(bearer_token_file, Some(token_file.as_str()), "agent.toml's bearer_token_file");
    let server = a["server"].as_str().unwrap();
    let scrapes: Vec<&str> = a["scrape_targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(scrapes.contains(&format!("{server}/metrics").as_str()), "{server}/metrics is scraped: {scrapes:?}");
    // .env.example holds the variable, empty (so that Compose stops until it is set), and how to make one.
    let example = std::fs::read_to_string(repo("deploy/compose/.env.example")).unwrap();
    assert!(example.lines().any(|l| l == "LUMEN_AUTH_TOKEN="), "LUMEN_AUTH_TOKEN= in .env.example");
    assert!(example.contains("openssl rand -hex 32"), ".env.example says how to make a token");
    let header: String =
        std::fs::read_to_string(repo("deploy/compose/docker-compose.yml")).unwrap().lines().take(12).collect();
    assert!(header.contains("LUMEN_AUTH_TOKEN"), "the header comment names the token");
    // The server listens beyond loopback in the container: only a token lets it start.
    let lumen: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo("deploy/compose/lumen.toml")).unwrap()).unwrap();
    assert_eq!(lumen["server"]["http_addr"].as_str(), Some("0.0.0.0:9700"));
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
