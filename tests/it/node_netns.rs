//! Node metrics that describe the node (issue 21 §4): an agent running in a network namespace of its own,
//! as in a container, reports the host's network interfaces (read through PID 1's `net/dev`), not its
//! namespace's. The test makes the namespace and a veth pair with `ip` (root needed; it skips, saying so,
//! without), runs the server on the host side of the pair and the agent inside, and asks the server.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{ServerProcess, client};

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The namespace and the host end of the veth pair, removed on drop.
struct Netns {
    name: String,
    host_if: String,
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["link", "del", &self.host_if]);
        ip(&["netns", "del", &self.name]);
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_its_own_network_namespace_reports_the_hosts_interfaces() {
    let id = std::process::id() % 60_000;
    let tag = format!("lmn{id}");
    let ns = Netns { name: format!("{tag}ns"), host_if: format!("{tag}h") };
    let ns_if = format!("{tag}n");
    if !ip(&["netns", "add", &ns.name]) {
        eprintln!("skipped: cannot create a network namespace (`ip netns add` needs root and iproute2)");
        return;
    }
    let (a, b) = (id / 64 % 250, id % 64 * 4);
    let (host_ip, ns_ip) = (format!("10.231.{a}.{}", b + 1), format!("10.231.{a}.{}", b + 2));
    for args in [
        vec!["link", "add", &ns.host_if, "type", "veth", "peer", "name", &ns_if],
        vec!["link", "set", &ns_if, "netns", &ns.name],
        vec!["addr", "add", &format!("{host_ip}/30"), "dev", &ns.host_if],
        vec!["link", "set", &ns.host_if, "up"],
        vec!["netns", "exec", &ns.name, "ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if],
        vec!["netns", "exec", &ns.name, "ip", "link", "set", &ns_if, "up"],
        vec!["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"],
    ] {
        assert!(ip(&args), "ip {}", args.join(" "));
    }
    // Inside, the namespace's own view lists only its interfaces.
    let own = Command::new("ip").args(["netns", "exec", &ns.name, "cat", "/proc/net/dev"]).output().unwrap();
    let own = String::from_utf8_lossy(&own.stdout).to_string();
    assert!(own.contains(&ns_if) && !own.contains(&ns.host_if), "{own}");

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind(format!("{host_ip}:0")).unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("{host_ip}:{port}").parse().unwrap();
    // Beyond loopback, so the documented opt-in.
    let mut server = ServerProcess::spawn(&dir.path().join("data"), addr, &["--allow-unauthenticated"]);
    server.wait_ready().await;
    std::fs::create_dir_all(dir.path().join("pods")).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\nlevel = \"warn\"\n\n[agent]\nserver = \"http://{addr}\"\npods_dir = \"{}\"\ndata_dir = \"{}\"\nnode_name = \"netns-node\"\nkubernetes_api = \"off\"\nnode_metrics = true\nscrape_interval = \"1s\"\nbatch_wait = \"100ms\"\n",
            dir.path().join("pods").display(),
            dir.path().join("agent-data").display()
        ),
    )
    .unwrap();
    let _agent = Agent(
        Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_lumen"), "agent", "--config"])
            .arg(&config)
            .args(["--http-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let devices = |v: &Value| -> Vec<String> {
        v["data"]["result"]
            .as_array()
            .map(|r| r.iter().map(|s| s["metric"]["device"].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let v: Value = client()
            .get(format!("http://{addr}/api/v1/query"))
            .query(&[("query", "node_network_receive_bytes_total{node=\"netns-node\"}")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let d = devices(&v);
        if !d.is_empty() {
            break d;
        }
        assert!(Instant::now() < deadline, "no node_network_receive_bytes_total from the agent: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // The host's interfaces (the host end of the pair among them), not the namespace's.
    assert!(found.contains(&ns.host_if), "{found:?}");
    assert!(!found.contains(&ns_if), "the namespace's own interface was reported: {found:?}");
    server.terminate();
}
