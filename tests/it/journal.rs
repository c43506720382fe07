//! `lumen agent` reading a systemd journal natively, against a real `lumen server`: journal files written
//! by `systemd-journal-remote` from the journal export format (the tests skip, saying why, where it is
//! not installed), appended to while the agent reads, rotated, with corrupt files beside the good ones and
//! `kill -9` of the agent; the lines checked through LogQL and SQL.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agent::{AgentProcess, agent_config};
use crate::harness::{ServerProcess, free_addr, sql_rows};

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";
const BOOT: &str = "5c9a0e3f1b2d4e6f8a7b9c0d1e2f3a4b";
const MACHINE: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";
const UNITS: [&str; 4] = ["ssh.service", "kubelet.service", "cron.service", "session-7.scope"];

fn journal_remote(test: &str) -> Option<&'static Path> {
    let p = Path::new(JOURNAL_REMOTE);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping {test}: {JOURNAL_REMOTE} is not installed (apt-get install systemd-journal-remote)");
        None
    }
}

/// Entries written so far, by message, and the clock of the next one.
struct Journal {
    remote: &'static Path,
    clock_us: u64,
    written: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    message: String,
    unit: &'static str,
    priority: u8,
    pid: u32,
}

impl Journal {
    fn new(remote: &'static Path) -> Journal {
        // An hour ago, a millisecond apart: newer than the first start's max_age, inside retention.
        Journal { remote, clock_us: (store::time::now_ns() / 1000) as u64 - 3_600_000_000, written: Vec::new() }
    }

    /// Appends `n` entries to `file` (creating it) with systemd-journal-remote.
    fn write(&mut self, file: &Path, n: usize, tag: &str) {
        let mut export = Vec::new();
        for _ in 0..n {
            let k = self.written.len();
            let e = Entry {
                message: format!("{tag} entry {k}"),
                unit: UNITS[k % 4],
                priority: (k % 8) as u8,
                pid: 2000 + k as u32,
            };
            self.clock_us += 1000;
            let mut msg = e.message.clone();
            if k % 9 == 4 {
                // Long enough to be stored zstd-compressed.
                msg.push(' ');
                msg.push_str(&"z".repeat(1500));
            }
            write_entry(&mut export, self.clock_us, &e, &msg);
            self.written.push(Entry { message: msg, ..e });
        }
        run_remote(self.remote, file, &export);
    }

    /// What the agent must ship: every entry but those of the excluded `session-*.scope` unit.
    fn expected(&self) -> Vec<&Entry> {
        self.written.iter().filter(|e| !e.unit.starts_with("session-")).collect()
    }
}

fn write_entry(out: &mut Vec<u8>, realtime_us: u64, e: &Entry, msg: &str) {
    writeln!(out, "__REALTIME_TIMESTAMP={realtime_us}").unwrap();
    writeln!(out, "__MONOTONIC_TIMESTAMP={}", realtime_us % 1_000_000_000).unwrap();
    writeln!(out, "_BOOT_ID={BOOT}").unwrap();
    writeln!(out, "_MACHINE_ID={MACHINE}").unwrap();
    writeln!(out, "MESSAGE={msg}").unwrap();
    writeln!(out, "PRIORITY={}", e.priority).unwrap();
    writeln!(out, "_SYSTEMD_UNIT={}", e.unit).unwrap();
    writeln!(out, "SYSLOG_IDENTIFIER={}", e.unit.split('.').next().unwrap()).unwrap();
    writeln!(out, "_COMM=ignored-when-syslog-identifier-is-set").unwrap();
    writeln!(out, "_PID={}", e.pid).unwrap();
    writeln!(out, "_HOSTNAME=host-a").unwrap();
    writeln!(out, "_TRANSPORT=stdout").unwrap();
    writeln!(out, "CODE_FILE=src/{}.c", e.unit.split('.').next().unwrap()).unwrap();
    out.push(b'\n');
}

fn run_remote(remote: &Path, file: &Path, export: &[u8]) {
    let mut child = Command::new(remote)
        .arg(format!("--output={}", file.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(export).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "journal-remote failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// `message → count` of the tenant's lines whose app_name is not `trunc` (the truncated file's).
async fn stored(base: &str, tenant: &str) -> HashMap<String, i64> {
    let sql = "SELECT message, count(*) AS n FROM logs WHERE app_name <> 'trunc' GROUP BY message";
    let client = crate::harness::client();
    let r = client.post(format!("{base}/api/v1/sql")).header("X-Scope-OrgID", tenant).body(sql).send().await;
    match r {
        Ok(r) if r.status() == 200 => {
            let v: Value = r.json().await.unwrap();
            v["rows"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| (r["message"].as_str().unwrap().to_string(), r["n"].as_i64().unwrap()))
                        .collect()
                })
                .unwrap_or_default()
        }
        _ => HashMap::new(),
    }
}

async fn wait_stored(base: &str, tenant: &str, want: usize, what: &str) -> HashMap<String, i64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = HashMap::new();
    while Instant::now() < deadline {
        got = stored(base, tenant).await;
        if got.values().sum::<i64>() >= want as i64 {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: the server holds {} journal lines after 60s, expected {want}", got.values().sum::<i64>());
}

/// Every expected entry is stored exactly once, and nothing else.
fn assert_exactly_once(got: &HashMap<String, i64>, expected: &[&Entry], what: &str) {
    for e in expected {
        let n = got.get(&e.message).copied().unwrap_or(0);
        assert_eq!(n, 1, "{what}: {:.60} stored {n} times", e.message);
    }
    assert_eq!(got.len(), expected.len(), "{what}: lines that were not expected arrived");
}

/// A LogQL range query over the last day, with structured metadata apart (`categorize-labels`).
async fn logql(base: &str, query: &str) -> Vec<Value> {
    let now = store::time::now_ns();
    let client = crate::harness::client();
    let r = client
        .get(format!("{base}/loki/api/v1/query_range"))
        .header("X-Loki-Response-Encoding-Flags", "categorize-labels")
        .query(&[
            ("query", query.to_string()),
            ("start", (now - 86_400_000_000_000).to_string()),
            ("end", now.to_string()),
            ("limit", "5000".to_string()),
            ("direction", "forward".to_string()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{query}");
    let v: Value = r.json().await.unwrap();
    v["data"]["result"].as_array().unwrap().clone()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// A journal file holding `n` entries of app `trunc`, cut in the middle of its objects.
fn truncated_journal(remote: &Path, path: &Path, n: usize) {
    let mut export = Vec::new();
    let t = (store::time::now_ns() / 1000) as u64 - 1_800_000_000;
    for k in 0..n {
        let e = Entry { message: format!("trunc entry {k}"), unit: "trunc.service", priority: 6, pid: 1 };
        write_entry(&mut export, t + k as u64, &e, &e.message);
    }
    run_remote(remote, path, &export);
    let bytes = std::fs::read(path).unwrap();
    let tail = u64::from_le_bytes(bytes[136..144].try_into().unwrap()) as usize;
    let end = tail + u64::from_le_bytes(bytes[tail + 8..tail + 16].try_into().unwrap()) as usize;
    let tables_end = u64::from_le_bytes(bytes[104..112].try_into().unwrap()) as usize
        + u64::from_le_bytes(bytes[112..120].try_into().unwrap()) as usize;
    std::fs::write(path, &bytes[..tables_end + (end - tables_end) * 3 / 5]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_entries_arrive_once_with_their_labels_through_appends_rotation_and_kill9() {
    let Some(remote) =
        journal_remote("journal_entries_arrive_once_with_their_labels_through_appends_rotation_and_kill9")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let pods = tmp.path().join("pods");
    let journal_dir = tmp.path().join("journal");
    let machine = journal_dir.join(MACHINE);
    std::fs::create_dir_all(&machine).unwrap();
    std::fs::create_dir_all(&pods).unwrap();
    let system = machine.join("system.journal");

    // Entries older than max_age (7h) at the head of the file: a first start passes over them.
    let mut old = Vec::new();
    let old_us = (store::time::now_ns() / 1000) as u64 - 8 * 3_600_000_000;
    for k in 0..3 {
        let e = Entry { message: format!("too old {k}"), unit: "ssh.service", priority: 6, pid: 1 };
        write_entry(&mut old, old_us + k, &e, &e.message);
    }
    run_remote(remote, &system, &old);
    let mut j = Journal::new(remote);
    j.write(&system, 400, "first");
    // Bad files beside the good one: set aside by journald, zeroed, truncated mid-object.
    std::fs::write(machine.join("system@0123-4567.journal~"), b"LPKSHHRH and then nothing").unwrap();
    std::fs::write(machine.join("zero.journal"), vec![0u8; 8192]).unwrap();
    truncated_journal(remote, &machine.join("user-1000.journal"), 200);

    let server_addr = free_addr();
    let mut server = ServerProcess::spawn(&tmp.path().join("server"), server_addr, &[]);
    server.wait_ready().await;
    let base = server.base.clone();
    let extra = format!(
        "journal_dirs = [\"{}\"]\njournal_exclude_units = [\"session-*.scope\"]\njournal_fields = [\"CODE_FILE\"]\n",
        journal_dir.display()
    );
    let config = agent_config(tmp.path(), &base, &pods, &extra);
    let agent_addr = free_addr();
    let mut agent = AgentProcess::spawn(&config, agent_addr);
    agent.wait_ready().await;

    let got = wait_stored(&base, "default", j.expected().len(), "first read").await;
    assert_exactly_once(&got, &j.expected(), "first read");
    let m = agent.metrics().await;
    assert!(metric(&m, "lumen_agent_journal_errors_total{reason=\"corrupt_file\"}") >= 1.0, "{m}");
    assert!(metric(&m, "lumen_agent_journal_errors_total{reason=\"header\"}") >= 1.0, "the zeroed file: {m}");
    assert!(metric(&m, "lumen_agent_journal_entries_total") >= 400.0, "{m}");

    // The documented labels and fields, through LogQL.
    let streams = logql(&base, r#"{unit="kubelet.service", node="node-1"}"#).await;
    let mut levels: Vec<&str> = j
        .written
        .iter()
        .filter(|e| e.unit == "kubelet.service")
        .map(|e| collector::journal::level(e.priority))
        .collect();
    levels.sort_unstable();
    levels.dedup();
    assert_eq!(streams.len(), levels.len(), "one stream per level: {streams:?}");
    let mut seen = 0;
    for s in &streams {
        let labels = s["stream"].as_object().unwrap();
        let mut names: Vec<&str> = labels.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["app_name", "level", "node", "unit"], "{s}");
        assert_eq!(labels["app_name"], "kubelet");
        for v in s["values"].as_array().unwrap() {
            let line = v[1].as_str().unwrap();
            let Some(e) = j.written.iter().find(|e| e.message == line) else { panic!("unknown line {line:.60}") };
            let meta = &v[2]["structuredMetadata"];
            assert_eq!(labels["level"], collector::journal::level(e.priority), "{line:.60}");
            assert_eq!(meta["severity"], collector::journal::severity_name(e.priority), "{v}");
            assert_eq!(meta["pid"], e.pid.to_string(), "{v}");
            assert_eq!(meta["hostname"], "host-a", "{v}");
            assert_eq!(meta["transport"], "stdout", "{v}");
            assert_eq!(meta["boot_id"], BOOT, "{v}");
            assert_eq!(meta["code_file"], "src/kubelet.c", "{v}");
            seen += 1;
        }
    }
    assert_eq!(seen, j.written.iter().filter(|e| e.unit == "kubelet.service").count());
    assert!(logql(&base, r#"{unit="session-7.scope"}"#).await.is_empty(), "an excluded unit arrived");
    assert!(logql(&base, r#"{app_name="ssh"} |= "too old""#).await.is_empty(), "entries older than max_age arrived");

    // Appends while the agent reads (the file is ONLINE while journal-remote writes), then kill -9 of
    // the agent once the server has acknowledged some of them; more appends while it is down.
    let before = j.expected().len();
    j.write(&system, 300, "second");
    wait_stored(&base, "default", before + 50, "some of the appended entries").await;
    agent.kill9();
    j.write(&system, 200, "while down");
    // A rotation while the agent is down: journald renames the file (its file id stays) and starts a
    // new one, which the agent reads whole (it knows the directory).
    std::fs::rename(&system, machine.join(format!("system@{MACHINE}-0000000000000001-0006000000000000.journal")))
        .unwrap();
    j.write(&system, 100, "after rotation");
    let mut agent = AgentProcess::spawn(&config, agent_addr);
    agent.wait_ready().await;
    let got = wait_stored(&base, "default", j.expected().len(), "after kill -9 and rotation").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got_later = stored(&base, "default").await;
    assert_eq!(got, got_later, "lines kept arriving after all had");
    assert_exactly_once(&got, &j.expected(), "after kill -9 and rotation");

    // The truncated file beside them gave what it could, and did not stop the others.
    let trunc = sql_rows(
        &crate::harness::client(),
        &base,
        "default",
        "SELECT count(*) AS n, count(DISTINCT message) AS d FROM logs WHERE app_name = 'trunc'",
    )
    .await;
    assert_eq!(trunc[0]["n"], trunc[0]["d"], "the truncated file's entries arrived twice: {trunc:?}");
    assert!(trunc[0]["n"].as_i64().unwrap() < 200, "{trunc:?}");
    agent.terminate();

    // Units selected by glob: a second agent (own data directory, own tenant) reads only kube*.
    let units_dir = tmp.path().join("units");
    std::fs::create_dir_all(&units_dir).unwrap();
    let extra = format!(
        "tenant = \"units\"\njournal_dirs = [\"{}\"]\njournal_units = [\"kube*\"]\njournal_max_age = \"0s\"\n",
        journal_dir.display()
    );
    let config = agent_config(&units_dir, &base, &pods, &extra);
    let mut agent = AgentProcess::spawn(&config, free_addr());
    agent.wait_ready().await;
    let kube: Vec<&Entry> = j.written.iter().filter(|e| e.unit == "kubelet.service").collect();
    wait_stored(&base, "units", kube.len(), "kube* only").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&stored(&base, "units").await, &kube, "kube* only");
    agent.terminate();
}

#[test]
fn the_journal_and_syslog_ingest_name_levels_alike() {
    for p in 0..=8u8 {
        assert_eq!(collector::journal::level(p), ingest_syslog::parse::level(p), "priority {p}");
        assert_eq!(collector::journal::severity_name(p), ingest_syslog::parse::severity_name(p), "priority {p}");
    }
}
