//! `lumen agent --docker-dir` as a real process against a real `lumen server`: a Docker host's containers
//! directory written as Docker's json-file driver writes it (no Docker engine runs here, so the test writes
//! the files: `<id>/<id>-json.log` lines, `config.v2.json`, and both of the driver's rotations, plain and
//! with `compress=true`), kills of the agent mid-stream, and containers to skip.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::agent::{AgentProcess, agent_config, count, wait_count};
use crate::harness::{ServerProcess, free_addr, sql_rows};

/// One container of a Docker host, written as dockerd's json-file driver writes it.
struct DockerContainer {
    id: String,
    dir: PathBuf,
    file: std::fs::File,
    /// Every message written, for the final check.
    lines: Vec<String>,
    name: String,
    clock_ns: i64,
    /// `max-file`: rotations beyond it are removed, as the driver does.
    max_file: u32,
    compress: bool,
}

impl DockerContainer {
    fn create(root: &Path, n: u8, name: &str, image: &str, labels: Value, max_file: u32, compress: bool) -> Self {
        // A 64-hex-digit id, as Docker makes them.
        let x = u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        let id = format!("{x:032x}{x:032x}");
        let dir = root.join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        write_config(&dir, &id, name, image, labels);
        let file = append(&dir.join(format!("{id}-json.log")));
        DockerContainer {
            id,
            dir,
            file,
            lines: Vec::new(),
            name: name.to_string(),
            clock_ns: store::time::now_ns() - 3_600_000_000_000,
            max_file,
            compress,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join(format!("{}-json.log", self.id))
    }

    fn rotation(&self, n: u32) -> PathBuf {
        let gz = if self.compress { ".gz" } else { "" };
        self.dir.join(format!("{}-json.log.{n}{gz}", self.id))
    }

    /// Writes `n` messages; every 7th is longer than 16 KiB, which the driver splits into pieces whose `log`
    /// has no final newline but the last; every 11th goes to stderr.
    fn write(&mut self, n: usize) {
        let mut out = Vec::new();
        for _ in 0..n {
            let k = self.lines.len();
            let stream = if k % 11 == 4 { "stderr" } else { "stdout" };
            let mut msg = format!("{} message {k} status=200", self.name);
            if k % 7 == 3 {
                msg.push(' ');
                msg.push_str(&"y".repeat(40_000));
            }
            let mut rest = format!("{msg}\n");
            while !rest.is_empty() {
                let cut = rest.len().min(16 * 1024);
                let piece: String = rest.drain(..cut).collect();
                self.clock_ns += 1_000_321;
                // Docker's time is RFC 3339 with nanoseconds, trailing zeros trimmed.
                let obj =
                    json!({"log": piece, "stream": stream, "time": store::time::format_rfc3339_ns(self.clock_ns)});
                writeln!(out, "{obj}").unwrap();
            }
            self.lines.push(msg);
        }
        self.file.write_all(&out).unwrap();
    }

    /// Rotates as the json-file driver does at `max-size`: the oldest rotation is removed, the others shift
    /// up by one (`.1` → `.2`), the log becomes `.1` and a new log starts; with `compress=true` the new `.1`
    /// is then gzipped to `.1.gz` and removed.
    fn rotate(&mut self) {
        let _ = std::fs::remove_file(self.rotation(self.max_file - 1));
        for i in (2..self.max_file).rev() {
            let _ = std::fs::rename(self.rotation(i - 1), self.rotation(i));
        }
        let plain = self.dir.join(format!("{}-json.log.1", self.id));
        std::fs::rename(self.log(), &plain).unwrap();
        self.file = append(&self.log());
        if self.compress {
            let data = std::fs::read(&plain).unwrap();
            let mut enc = flate2::write::GzEncoder::new(
                std::fs::File::create(self.rotation(1)).unwrap(),
                flate2::Compression::fast(),
            );
            enc.write_all(&data).unwrap();
            enc.finish().unwrap();
            std::fs::remove_file(&plain).unwrap();
        }
    }
}

fn write_config(dir: &Path, id: &str, name: &str, image: &str, labels: Value) {
    // The members dockerd writes that the agent reads, among some that it does not.
    let config = json!({
        "StreamConfig": {}, "State": {"Running": true, "Pid": 4242, "StartedAt": "2026-12-06T09:00:00Z"},
        "ID": id, "Created": "2026-12-06T08:59:59Z", "Path": "/docker-entrypoint.sh", "Args": [],
        "Config": {"Hostname": &id[..12], "Env": ["PATH=/usr/bin"], "Cmd": ["run"], "Image": image,
                   "Labels": labels, "StopSignal": "SIGQUIT"},
        "Image": "sha256:5ef79149e0ec84a7a9f9284c3f91aa3c20608f8391f5445eabe92ef5c7f2a4b7",
        "Name": format!("/{name}"), "Driver": "overlay2", "LogPath": dir.join(format!("{id}-json.log")),
    });
    std::fs::write(dir.join("config.v2.json"), config.to_string()).unwrap();
}

fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_hosts_container_logs_arrive_once_with_compose_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let docker = tmp.path().join("containers");
    std::fs::create_dir_all(&docker).unwrap();
    let server_addr = free_addr();
    let mut server = ServerProcess::spawn(&tmp.path().join("server"), server_addr, &[]);
    server.wait_ready().await;
    let base = server.base.clone();
    // No pods directory on a Docker host.
    let config = agent_config(
        tmp.path(),
        &base,
        &tmp.path().join("no-pods"),
        &format!("docker_dir = \"{}\"\ndocker_labels = [\"com.example.team\"]\n", docker.display()),
    );
    let agent_addr = free_addr();
    let mut agent = AgentProcess::spawn(&config, agent_addr);
    agent.wait_ready().await;

    let compose = |service: &str| {
        json!({"com.docker.compose.project": "shop", "com.docker.compose.service": service,
               "com.docker.compose.container-number": "1", "com.example.team": "payments"})
    };
    let mut web = DockerContainer::create(&docker, 1, "shop-web-1", "nginx:1.27", compose("web"), 3, false);
    let mut db = DockerContainer::create(&docker, 2, "shop-db-1", "postgres:17", compose("db"), 4, true);
    let mut skipped =
        DockerContainer::create(&docker, 3, "noisy", "busybox", json!({"lumen.io/exclude": "true"}), 2, false);
    let total = |cs: &[&DockerContainer]| cs.iter().map(|c| c.lines.len()).sum::<usize>();

    web.write(200);
    db.write(200);
    skipped.write(50);
    wait_count(&base, 400, "first lines").await;

    // Rotations of both kinds while lines keep coming.
    web.write(50);
    web.rotate();
    web.write(50);
    db.write(30);
    db.rotate();
    db.write(30);
    wait_count(&base, total(&[&web, &db]), "after rotations").await;

    // kill -9 of the agent mid-stream; while it is down both containers rotate twice, so lines it never read
    // sit in `.2` and in `.2.gz`.
    web.write(150);
    db.write(150);
    agent.kill9();
    for c in [&mut web, &mut db] {
        c.write(60);
        c.rotate();
        c.write(60);
        c.rotate();
        c.write(20);
    }
    assert!(db.rotation(2).exists() && web.rotation(2).exists());
    let mut agent = AgentProcess::spawn(&config, agent_addr);
    agent.wait_ready().await;

    // A container whose metadata cannot be read still has its logs read, under its short id; a line that
    // is not Docker's JSON is kept with a parse error.
    let mut broken = DockerContainer::create(&docker, 4, "broken", "alpine", json!({}), 2, false);
    std::fs::write(broken.dir.join("config.v2.json"), b"{not json").unwrap();
    broken.write(10);
    broken.file.write_all(b"this is not docker json\n").unwrap();
    web.write(40);
    let expected = total(&[&web, &db, &broken]) + 1;
    wait_count(&base, expected, "after the agent's kill -9").await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = crate::harness::client();
    let rows = sql_rows(
        &client,
        &base,
        "default",
        "SELECT container, image, compose_project, compose_service, com_example_team, node, stream, container_id, \
         parse_error, message, count(*) AS n FROM logs \
         GROUP BY container, image, compose_project, compose_service, com_example_team, node, stream, container_id, \
         parse_error, message",
    )
    .await;
    let mut seen: HashMap<String, Value> = HashMap::new();
    for r in rows.iter() {
        let msg = r["message"].as_str().unwrap().to_string();
        assert!(seen.insert(msg.clone(), r.clone()).is_none(), "{msg:.80} under two label sets");
    }
    for c in [&web, &db] {
        let service = c.name.trim_start_matches("shop-").trim_end_matches("-1");
        for (k, line) in c.lines.iter().enumerate() {
            let Some(r) = seen.get(line) else { panic!("{} message {k} never arrived", c.name) };
            assert_eq!(r["n"], 1, "{} message {k} arrived {} times", c.name, r["n"]);
            assert_eq!(r["container"], c.name.as_str());
            assert_eq!(r["compose_project"], "shop");
            assert_eq!(r["compose_service"], service);
            assert_eq!(r["com_example_team"], "payments");
            assert_eq!(r["image"], if service == "web" { "nginx:1.27" } else { "postgres:17" });
            assert_eq!(r["node"], "node-1");
            assert_eq!(r["container_id"], c.id.as_str());
            assert_eq!(r["stream"], if k % 11 == 4 { "stderr" } else { "stdout" });
        }
    }
    for line in &broken.lines {
        let r = &seen[line];
        assert_eq!(r["container"], &broken.id[..12], "a container without metadata is named by its short id");
        assert!(r["image"].is_null() && r["compose_project"].is_null(), "{r}");
    }
    let raw = &seen["this is not docker json"];
    assert!(raw["parse_error"].as_str().is_some_and(|e| e.starts_with("docker:")), "{raw}");
    assert!(!seen.keys().any(|m| m.starts_with("noisy")), "a container labelled lumen.io/exclude=true was read");
    assert_eq!(rows.len(), expected, "lines that nobody wrote arrived");
    assert_eq!(count(&base).await, expected as i64);
    agent.terminate();
}
