//! Tests of the journal reader against real journal files, written by `systemd-journal-remote` from the
//! journal export format (they skip, saying why, where it is not installed), and of the mapping.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::buffer::{DiskBuffer, Position};
use crate::checkpoint::Checkpoints;
use crate::journal::file::{Entry, FormatError, JournalFile, Next, State};
use crate::journal::{JournalReader, JournalSettings, Mapping, field_name, level, severity_name};
use crate::metrics::AgentMetrics;

const JOURNAL_REMOTE: &str = "/lib/systemd/systemd-journal-remote";
const BOOT: &str = "0123456789abcdef0123456789abcdef";

/// The journal-remote binary, or `None` after saying why the test is skipped.
fn journal_remote(test: &str) -> Option<&'static Path> {
    let p = Path::new(JOURNAL_REMOTE);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping {test}: {JOURNAL_REMOTE} is not installed (apt-get install systemd-journal-remote)");
        None
    }
}

/// One entry to write: its realtime (µs) and fields.
#[derive(Debug, Clone)]
struct TestEntry {
    realtime_us: u64,
    fields: Vec<(String, Vec<u8>)>,
}

impl TestEntry {
    fn new(realtime_us: u64, fields: &[(&str, &[u8])]) -> TestEntry {
        TestEntry { realtime_us, fields: fields.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect() }
    }
}

/// The journal export format: text fields as `NAME=value`, others in the length-prefixed binary form.
fn export(entries: &[TestEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        writeln!(out, "__REALTIME_TIMESTAMP={}", e.realtime_us).unwrap();
        writeln!(out, "__MONOTONIC_TIMESTAMP={}", e.realtime_us % 1_000_000_000).unwrap();
        writeln!(out, "_BOOT_ID={BOOT}").unwrap();
        for (name, value) in &e.fields {
            let text = std::str::from_utf8(value).is_ok_and(|s| !s.contains('\n') && !s.contains('\0'));
            if text {
                out.extend_from_slice(name.as_bytes());
                out.push(b'=');
                out.extend_from_slice(value);
                out.push(b'\n');
            } else {
                out.extend_from_slice(name.as_bytes());
                out.push(b'\n');
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
                out.push(b'\n');
            }
        }
        out.push(b'\n');
    }
    out
}

/// Writes (or appends) `entries` to the journal file `path` with systemd-journal-remote.
fn write_journal(remote: &Path, path: &Path, entries: &[TestEntry], env: &[(&str, &str)], args: &[&str]) {
    let mut child = Command::new(remote)
        .arg(format!("--output={}", path.display()))
        .args(args)
        .arg("-")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&export(entries)).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "journal-remote failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn now_us() -> u64 {
    (store::time::now_ns() / 1000) as u64
}

/// `n` entries an hour old and younger, every 7th with a 2 KB message (compressed), every 11th with a
/// binary message, units and priorities varying.
fn sample(n: usize, tag: &str) -> Vec<TestEntry> {
    // One clock for all samples of a test process, so later samples are later in time.
    static CLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let _ = CLOCK.compare_exchange(0, now_us() - 2 * 3_600_000_000, SeqCst, SeqCst);
    let base = CLOCK.fetch_add(n as u64 * 1000, SeqCst);
    (0..n)
        .map(|k| {
            let mut msg = format!("{tag} entry {k}").into_bytes();
            if k % 7 == 3 {
                msg.push(b' ');
                msg.extend(std::iter::repeat_n(b'x', 2000));
                msg.extend_from_slice(format!(" end {k}").as_bytes());
            }
            if k % 11 == 5 {
                msg.extend_from_slice(&[0, 0xff, 0xfe, b'\n', 7]);
            }
            let unit = ["ssh.service", "kubelet.service", "cron.service"][k % 3];
            let prio = (k % 8).to_string();
            let pid = (1000 + k).to_string();
            let mut e = TestEntry::new(
                base + k as u64 * 1000,
                &[
                    ("MESSAGE", &msg),
                    ("PRIORITY", prio.as_bytes()),
                    ("_SYSTEMD_UNIT", unit.as_bytes()),
                    ("SYSLOG_IDENTIFIER", unit.trim_end_matches(".service").as_bytes()),
                    ("_PID", pid.as_bytes()),
                    ("_HOSTNAME", b"host-a"),
                    ("_TRANSPORT", b"journal"),
                ],
            );
            if k % 13 == 0 {
                // A large field other than MESSAGE.
                e.fields.push(("BLOB".to_string(), vec![b'b'; 3000]));
            }
            e
        })
        .collect()
}

/// What a file yields, read as the reader reads it: broken entries skipped, a broken chain ends it.
#[derive(Debug, Default)]
struct ReadAll {
    entries: Vec<(u64, HashMap<String, Vec<u8>>)>,
    errors: usize,
    unreadable_fields: u32,
}

fn read_all(path: &Path, max_value: usize) -> Result<ReadAll, FormatError> {
    let mut f = JournalFile::open(path)?;
    let mut out = ReadAll::default();
    let mut e = Entry::default();
    loop {
        match f.next_offset() {
            Ok(Next::Entry(at)) => {
                match f.read_entry(at, max_value, &mut e) {
                    Ok(()) => {
                        let fields = e
                            .fields()
                            .iter()
                            .map(|x| (String::from_utf8_lossy(x.name()).into_owned(), x.value().to_vec()))
                            .collect();
                        out.entries.push((e.realtime_us, fields));
                        out.unreadable_fields += e.unreadable;
                    }
                    Err(_) => out.errors += 1,
                }
                f.advance();
            }
            Ok(Next::End) | Ok(Next::Unlinked) => break,
            Err(_) => {
                out.errors += 1;
                break;
            }
        }
    }
    Ok(out)
}

fn assert_same(read: &ReadAll, written: &[TestEntry]) {
    assert_eq!(read.entries.len(), written.len(), "entries read");
    for (k, ((rt, fields), w)) in read.entries.iter().zip(written).enumerate() {
        assert_eq!(*rt, w.realtime_us, "entry {k}'s realtime");
        for (name, value) in &w.fields {
            assert_eq!(fields.get(name), Some(value), "entry {k}'s {name}");
        }
        assert_eq!(fields.get("_BOOT_ID").map(|v| v.as_slice()), Some(BOOT.as_bytes()));
    }
}

/// The header's incompatible flags, as `journalctl --header` prints them.
fn header_flags(path: &Path) -> String {
    let out = Command::new("journalctl").arg(format!("--file={}", path.display())).arg("--header").output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with("Incompatible flags:"))
            .unwrap_or("")
            .to_string(),
        Err(_) => String::new(),
    }
}

/// MESSAGE of every entry as `journalctl --file -o json` prints them, if journalctl is here.
fn journalctl_messages(path: &Path) -> Option<Vec<serde_json::Value>> {
    let out =
        Command::new("journalctl").arg(format!("--file={}", path.display())).args(["-o", "json"]).output().ok()?;
    assert!(out.status.success(), "journalctl failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["MESSAGE"].clone())
            .collect(),
    )
}

fn json_bytes(v: &serde_json::Value) -> Vec<u8> {
    match v {
        serde_json::Value::String(s) => s.clone().into_bytes(),
        // journalctl prints a binary value as an array of byte values.
        serde_json::Value::Array(a) => a.iter().map(|b| b.as_u64().unwrap() as u8).collect(),
        other => panic!("unexpected MESSAGE {other}"),
    }
}

#[test]
fn every_layout_journal_remote_writes_reads_back_whole() {
    let Some(remote) = journal_remote("every_layout_journal_remote_writes_reads_back_whole") else { return };
    let tmp = tempfile::tempdir().unwrap();
    // 700 entries: the entry-array chain has several arrays.
    let entries = sample(700, "layout");
    type Layout<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let layouts: [Layout; 3] = [
        ("compact", &[], &[], "COMPRESSED-ZSTD KEYED-HASH COMPACT"),
        ("regular", &[("SYSTEMD_JOURNAL_COMPACT", "0"), ("SYSTEMD_JOURNAL_KEYED_HASH", "0")], &[], "COMPRESSED-ZSTD"),
        ("plain", &[], &["--compress=no"], "KEYED-HASH COMPACT"),
    ];
    for (name, env, args, flags) in layouts {
        let path = tmp.path().join(format!("{name}.journal"));
        write_journal(remote, &path, &entries, env, args);
        let printed = header_flags(&path);
        assert!(printed.is_empty() || printed.ends_with(flags), "{name}: {printed}");
        let f = JournalFile::open(&path).unwrap();
        assert_eq!(f.header().n_entries, 700);
        assert_eq!(f.header().compact(), name != "regular");
        let read = read_all(&path, 1 << 20).unwrap();
        assert_eq!((read.errors, read.unreadable_fields), (0, 0), "{name}");
        assert_same(&read, &entries);
        if let Some(messages) = journalctl_messages(&path) {
            let ours: Vec<&Vec<u8>> = read.entries.iter().map(|(_, f)| &f["MESSAGE"]).collect();
            let theirs: Vec<Vec<u8>> = messages.iter().map(json_bytes).collect();
            assert_eq!(ours.len(), theirs.len());
            for (k, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(*a, b, "{name}: entry {k} differs from journalctl's");
            }
        }
    }
}

#[test]
fn long_values_are_cut_at_the_limit_and_marked() {
    let Some(remote) = journal_remote("long_values_are_cut_at_the_limit_and_marked") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let long = vec![b'q'; 100_000];
    let entries = vec![TestEntry::new(now_us(), &[("MESSAGE", &long), ("SHORT", b"s")])];
    for (name, args) in [("zstd", &[][..]), ("plain", &["--compress=no"][..])] {
        let path = tmp.path().join(format!("{name}.journal"));
        write_journal(remote, &path, &entries, &[], args);
        let mut f = JournalFile::open(&path).unwrap();
        let Next::Entry(at) = f.next_offset().unwrap() else { panic!("no entry") };
        let mut e = Entry::default();
        f.read_entry(at, 1000, &mut e).unwrap();
        let m = e.get(b"MESSAGE").unwrap();
        assert!(m.truncated, "{name}");
        assert!(m.value().len() <= 1000 + 256 && m.value().len() >= 1000, "{name}: {}", m.value().len());
        assert!(!e.get(b"SHORT").unwrap().truncated);
        f.read_entry(at, 1 << 20, &mut e).unwrap();
        assert_eq!(e.get(b"MESSAGE").unwrap().value(), &long[..], "{name}");
        assert!(!e.get(b"MESSAGE").unwrap().truncated);
    }
}

/// Finds the data object whose payload starts with `prefix` in a regular (64-bit) file; returns its offset.
fn find_data_object(bytes: &[u8], prefix: &[u8]) -> usize {
    let at = bytes.windows(prefix.len()).position(|w| w == prefix).expect("payload in the file");
    let object = at - 64;
    assert_eq!(bytes[object], 1, "a data object");
    object
}

#[test]
fn lz4_fields_decode_and_xz_fields_count_as_unreadable() {
    let Some(remote) = journal_remote("lz4_fields_decode_and_xz_fields_count_as_unreadable") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut big = b"lz4 message ".to_vec();
    big.extend((0..3000).map(|i| b'a' + (i % 23) as u8));
    let entries = vec![
        TestEntry::new(now_us(), &[("MESSAGE", &big), ("_SYSTEMD_UNIT", b"a.service")]),
        TestEntry::new(now_us() + 1, &[("MESSAGE", b"xz one"), ("XZFIELD", &[b'z'; 700])]),
    ];
    let path = tmp.path().join("lz4.journal");
    write_journal(remote, &path, &entries, &[("SYSTEMD_JOURNAL_COMPACT", "0")], &["--compress=no"]);
    let mut bytes = std::fs::read(&path).unwrap();

    // Rewrite MESSAGE as systemd's LZ4 (le64 size, one block) and flag it, the object and the header.
    let object = find_data_object(&bytes, b"MESSAGE=lz4 message ");
    let mut payload = b"MESSAGE=".to_vec();
    payload.extend_from_slice(&big);
    let mut lz4 = (payload.len() as u64).to_le_bytes().to_vec();
    lz4.extend(lz4_flex::block::compress(&payload));
    assert!(lz4.len() < payload.len());
    bytes[object + 1] = 1 << 1;
    bytes[object + 8..object + 16].copy_from_slice(&((64 + lz4.len()) as u64).to_le_bytes());
    bytes[object + 64..object + 64 + lz4.len()].copy_from_slice(&lz4);
    let flags = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) | (1 << 1);
    bytes[12..16].copy_from_slice(&flags.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    // journalctl agrees that the LZ4 object is what systemd writes.
    if let Some(messages) = journalctl_messages(&path) {
        assert_eq!(json_bytes(&messages[0]), big);
    }
    // And XZFIELD as if XZ-compressed (this reader does not decode XZ; its bytes are no XZ stream).
    let xz = find_data_object(&bytes, b"XZFIELD=");
    bytes[xz + 1] = 1 << 0;
    let flags = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) | (1 << 0);
    bytes[12..16].copy_from_slice(&flags.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();

    let read = read_all(&path, 1 << 20).unwrap();
    assert_eq!(read.errors, 0);
    assert_eq!(read.entries.len(), 2);
    assert_eq!(read.entries[0].1["MESSAGE"], big);
    assert_eq!(read.entries[0].1["_SYSTEMD_UNIT"], b"a.service");
    assert_eq!(read.entries[1].1["MESSAGE"], b"xz one");
    assert!(!read.entries[1].1.contains_key("XZFIELD"));
    assert_eq!(read.unreadable_fields, 1, "the XZ field counts as unreadable");
    // Cut at a limit, an LZ4 value is marked; one far beyond the limit is not decompressed at all.
    let mut f = JournalFile::open(&path).unwrap();
    let Next::Entry(at) = f.next_offset().unwrap() else { panic!("no entry") };
    let mut e = Entry::default();
    f.read_entry(at, 1000, &mut e).unwrap();
    assert!(e.get(b"MESSAGE").unwrap().truncated);
    assert_eq!(e.get(b"MESSAGE").unwrap().value(), &big[..1000 + 256 - "MESSAGE=".len()]);
    f.read_entry(at, 100, &mut e).unwrap();
    assert!(e.get(b"MESSAGE").is_none());
    assert_eq!(e.unreadable, 1);
    assert_eq!(e.first_error.as_ref().map(FormatError::reason), Some("decompress"));
}

/// A small deterministic generator (xorshift64*), for seeded corruption.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The end of the last object: the bytes past it are preallocated zeros.
fn used_end(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let tail = u64::from_le_bytes(bytes[136..144].try_into().unwrap()) as usize;
    let size = u64::from_le_bytes(bytes[tail + 8..tail + 16].try_into().unwrap());
    tail as u64 + size
}

#[test]
fn every_truncation_and_random_corruption_reads_without_panic() {
    let Some(remote) = journal_remote("every_truncation_and_random_corruption_reads_without_panic") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let entries = sample(60, "fuzz");
    for (name, env) in [("compact", &[][..]), ("regular", &[("SYSTEMD_JOURNAL_COMPACT", "0")][..])] {
        let path = tmp.path().join(format!("{name}.journal"));
        write_journal(remote, &path, &entries, env, &[]);
        let end = used_end(&path);
        let whole = std::fs::read(&path).unwrap();
        let tables_end = {
            let off = u64::from_le_bytes(whole[104..112].try_into().unwrap());
            let size = u64::from_le_bytes(whole[112..120].try_into().unwrap());
            off + size
        };
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        // Every prefix of the header and of the objects after the hash tables; the tables in steps.
        let mut len = end;
        let mut cut_reads = 0usize;
        while len > 0 {
            f.set_len(len).unwrap();
            if let Ok(read) = read_all(&path, 4096) {
                assert!(read.entries.len() <= entries.len());
                cut_reads += 1;
            }
            len -= if len > 1024 && len < tables_end { 4093.min(len - 1024) } else { 1 };
        }
        assert!(cut_reads > 1000, "{name}: {cut_reads} prefixes had a readable header");
        f.set_len(0).unwrap();
        f.write_all_at(&whole, 0).unwrap();
        assert_eq!(read_all(&path, 4096).unwrap().entries.len(), entries.len());

        // Random bytes flipped in the header and the objects, a few at a time, then put back.
        let baseline = read_all(&path, 4096).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut damaged = 0;
        for _ in 0..3000 {
            let n = 1 + rng.next() % 6;
            let mut saved = Vec::new();
            for _ in 0..n {
                let at = if rng.next().is_multiple_of(4) {
                    rng.next() % 272
                } else {
                    tables_end + rng.next() % (end - tables_end)
                };
                let mut b = [0u8; 1];
                f.read_at(&mut b, at).unwrap();
                saved.push((at, b[0]));
                let flipped = match rng.next() % 3 {
                    0 => b[0] ^ (1 << (rng.next() % 8)),
                    1 => 0,
                    _ => rng.next() as u8,
                };
                f.write_all_at(&[flipped], at).unwrap();
            }
            match read_all(&path, 4096) {
                Ok(read)
                    if read.entries == baseline.entries
                        && (read.errors, read.unreadable_fields) == (baseline.errors, baseline.unreadable_fields) => {}
                _ => damaged += 1,
            }
            for (at, b) in saved.into_iter().rev() {
                f.write_all_at(&[b], at).unwrap();
            }
        }
        assert!(damaged > 100, "{name}: only {damaged} of 3000 corruptions were noticed");
    }
}

fn test_metrics() -> Arc<AgentMetrics> {
    AgentMetrics::register(&mut Registry::default())
}

fn settings(dirs: Vec<PathBuf>, max_age: Duration) -> JournalSettings {
    JournalSettings {
        dirs,
        max_age,
        max_line_bytes: 256 * 1024,
        batch_max_bytes: 64 * 1024,
        batch_wait: Duration::from_millis(50),
        discover_interval: Duration::from_millis(20),
        poll_interval: Duration::from_millis(10),
    }
}

struct Harness {
    buffer: Arc<DiskBuffer>,
    checkpoints: Arc<Mutex<Checkpoints>>,
    metrics: Arc<AgentMetrics>,
}

impl Harness {
    fn new(data: &Path) -> Harness {
        let checkpoints = Checkpoints::load(data).unwrap();
        let (buffer, _) = DiskBuffer::open(&data.join("buffer"), 1 << 30, checkpoints.acked_seq()).unwrap();
        Harness { buffer: Arc::new(buffer), checkpoints: Arc::new(Mutex::new(checkpoints)), metrics: test_metrics() }
    }

    /// Runs a reader until `done` holds for what it buffered (or 20 s pass), then stops it.
    fn run(
        &self,
        settings: JournalSettings,
        mapping: Mapping,
        resume: HashMap<u64, Position>,
        done: impl Fn(&[Line]) -> bool,
    ) -> Vec<Line> {
        let reader = JournalReader::new(
            settings,
            mapping,
            self.buffer.clone(),
            self.checkpoints.clone(),
            resume,
            self.metrics.clone(),
        );
        let token = CancellationToken::new();
        let stop = token.clone();
        let thread = std::thread::spawn(move || reader.run(stop));
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !done(&self.lines()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        token.cancel();
        thread.join().unwrap();
        self.lines()
    }

    /// Every line the buffer holds, in order.
    fn lines(&self) -> Vec<Line> {
        let mut out = Vec::new();
        for frame in self.buffer.pending_frames() {
            let payload = self.buffer.payload(&frame).unwrap();
            if payload.is_empty() {
                continue;
            }
            let limits = wire::Limits {
                max_line_bytes: usize::MAX,
                max_labels: 64,
                max_body_bytes: usize::MAX,
                oldest_ns: i64::MIN,
                newest_ns: i64::MAX,
                max_fields: 1000,
                max_field_bytes: usize::MAX,
            };
            let d = wire::loki::decode(wire::loki::PushFormat::Protobuf, &payload, limits, 0).unwrap();
            for e in d.batch.entries {
                let labels = &d.batch.streams[e.stream as usize].labels;
                out.push(Line {
                    labels: labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
                    fields: e.fields.into_iter().collect(),
                    line: e.line,
                    time_ns: e.time_ns,
                });
            }
        }
        // Entries of one batch are grouped by stream: put them back in time order (the samples' times
        // are distinct and rising).
        out.sort_by_key(|l| l.time_ns);
        out
    }

    /// Acknowledges every buffered batch: the checkpoints take their positions, as the shipper does.
    fn ack_all(&self) {
        for f in self.buffer.pending_frames() {
            let mut cp = self.checkpoints.lock();
            cp.acknowledge(f.seq, &f.positions);
            cp.save().unwrap();
            drop(cp);
            self.buffer.ack(f.seq).unwrap();
        }
    }

    /// The furthest buffered position of every file, as a restart recovers them.
    fn positions(&self) -> HashMap<u64, Position> {
        let mut out: HashMap<u64, Position> = HashMap::new();
        for f in self.buffer.pending_frames() {
            for p in f.positions {
                let e = out.entry(p.fingerprint).or_insert_with(|| p.clone());
                if p.offset >= e.offset {
                    *e = p;
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
struct Line {
    labels: HashMap<String, String>,
    fields: HashMap<String, String>,
    line: String,
    time_ns: i64,
}

fn mapping(units: &[&str], exclude: &[&str], fields: &[&str]) -> Mapping {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    Mapping::new("node-1".to_string(), &s(units), &s(exclude), &s(fields), 256 * 1024).unwrap()
}

/// The MESSAGE of each entry as the reader ships it.
fn texts(entries: &[TestEntry]) -> Vec<String> {
    entries.iter().map(|e| String::from_utf8_lossy(&e.fields[0].1).into_owned()).collect()
}

fn messages(lines: &[Line]) -> Vec<String> {
    lines.iter().map(|l| l.line.clone()).collect()
}

#[test]
fn the_reader_cuts_batches_with_positions_and_resumes_from_them() {
    let Some(remote) = journal_remote("the_reader_cuts_batches_with_positions_and_resumes_from_them") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal");
    let machine = journal.join("3d1219c7c4c5404aaa1f6d2a48adfda4");
    std::fs::create_dir_all(&machine).unwrap();
    let entries = sample(500, "sys");
    let system = machine.join("system.journal");
    write_journal(remote, &system, &entries, &[], &[]);
    // A file journald set aside as corrupt is skipped and counted.
    std::fs::write(machine.join("system@0005-0006.journal~"), b"LPKSHHRH garbage").unwrap();

    let h = Harness::new(&tmp.path().join("data"));
    let lines = h.run(
        settings(vec![journal.clone()], Duration::from_secs(7 * 3600)),
        mapping(&[], &[], &[]),
        HashMap::new(),
        |l| l.len() >= 500,
    );
    assert_eq!(lines.len(), 500);
    for (k, (l, w)) in lines.iter().zip(&entries).enumerate() {
        let msg = String::from_utf8_lossy(&w.fields[0].1).into_owned();
        assert_eq!(l.line, msg, "entry {k}");
        assert_eq!(l.time_ns, w.realtime_us as i64 * 1000);
        assert_eq!(l.labels["node"], "node-1");
        assert_eq!(l.labels["unit"], ["ssh.service", "kubelet.service", "cron.service"][k % 3]);
        assert_eq!(l.labels["level"], level((k % 8) as u8));
        assert_eq!(l.fields["severity"], severity_name((k % 8) as u8));
        assert_eq!(l.fields["pid"], (1000 + k).to_string());
        assert_eq!(l.fields["hostname"], "host-a");
        assert_eq!(l.fields["transport"], "journal");
        assert_eq!(l.fields["boot_id"], BOOT);
        assert_eq!(l.fields.contains_key("message_binary"), k % 11 == 5, "entry {k}");
    }
    let fp = xxhash_rust::xxh3::xxh3_64(&JournalFile::open(&system).unwrap().header().file_id);
    let positions = h.positions();
    assert_eq!(positions[&fp].offset, 500);
    assert_eq!(positions[&fp].container_dir, machine);
    assert_eq!(positions[&fp].path, system);
    assert_eq!(h.metrics.journal_errors.get_or_create(&vec![("reason", "corrupt_file")]).get(), 1);

    // More entries appended; a restart from the buffered positions reads only those.
    let more = sample(40, "more");
    write_journal(remote, &system, &more, &[], &[]);
    let before = h.lines().len();
    let lines =
        h.run(settings(vec![journal.clone()], Duration::from_secs(7 * 3600)), mapping(&[], &[], &[]), positions, |l| {
            l.len() >= before + 40
        });
    assert_eq!(messages(&lines[before..]), texts(&more));

    // Acknowledged: a restart with nothing buffered resumes from the checkpoints, and a rotation by
    // rename (the file id stays) goes on where it was.
    h.ack_all();
    assert_eq!(h.checkpoints.lock().get(fp).unwrap().offset, 540);
    let rotated = machine.join("system@00061a7e0b1c4b3b8d0e5d0f9f6b3a21-0000000000000001-0006000000000000.journal");
    std::fs::rename(&system, &rotated).unwrap();
    let last = sample(5, "last");
    write_journal(remote, &rotated, &last, &[], &[]);
    let lines = h.run(
        settings(vec![journal.clone()], Duration::from_secs(7 * 3600)),
        mapping(&[], &[], &[]),
        HashMap::new(),
        |l| l.len() >= 5,
    );
    assert_eq!(messages(&lines), texts(&last));
    let p = &h.positions()[&fp];
    assert_eq!((p.offset, &p.path), (545, &rotated));
}

#[test]
fn a_first_start_passes_over_entries_older_than_max_age() {
    let Some(remote) = journal_remote("a_first_start_passes_over_entries_older_than_max_age") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let now = now_us();
    let hour = 3_600_000_000u64;
    let mut entries = Vec::new();
    for (k, age_h) in [10u64, 9, 8, 6, 1].iter().enumerate() {
        entries.push(TestEntry::new(now - age_h * hour, &[("MESSAGE", format!("age {age_h}h #{k}").as_bytes())]));
    }
    write_journal(remote, &journal.join("system.journal"), &entries, &[], &[]);
    // An archived file wholly older than max_age.
    let old = vec![TestEntry::new(now - 30 * hour, &[("MESSAGE", b"ancient")])];
    write_journal(remote, &journal.join("system@0001-0002.journal"), &old, &[], &[]);

    let h = Harness::new(&tmp.path().join("data"));
    let s = settings(vec![journal.clone()], Duration::from_secs(7 * 3600));
    let lines = h.run(s.clone(), mapping(&[], &[], &[]), HashMap::new(), |l| l.len() >= 2);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(messages(&lines), vec!["age 6h #3", "age 1h #4"]);
    // The passing-over is a position too, so the next start does not read those entries either.
    h.ack_all();
    let f = JournalFile::open(&journal.join("system.journal")).unwrap();
    let fp = xxhash_rust::xxh3::xxh3_64(&f.header().file_id);
    assert_eq!(h.checkpoints.lock().get(fp).unwrap().offset, 5);

    // A new file in a directory the agent knows is read whole, however old its entries.
    write_journal(remote, &journal.join("user-1000.journal"), &old, &[], &[]);
    let lines = h.run(s, mapping(&[], &[], &[]), HashMap::new(), |l| !l.is_empty());
    assert_eq!(messages(&lines), vec!["ancient"]);
}

#[test]
fn units_are_included_and_excluded_by_glob() {
    let Some(remote) = journal_remote("units_are_included_and_excluded_by_glob") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("journal");
    std::fs::create_dir_all(&journal).unwrap();
    let t = now_us();
    let entries = vec![
        TestEntry::new(t, &[("MESSAGE", b"k3s"), ("_SYSTEMD_UNIT", b"k3s.service")]),
        TestEntry::new(t + 1, &[("MESSAGE", b"k3s-agent"), ("_SYSTEMD_UNIT", b"k3s-agent.service")]),
        TestEntry::new(t + 2, &[("MESSAGE", b"ssh"), ("_SYSTEMD_UNIT", b"ssh.service")]),
        TestEntry::new(t + 3, &[("MESSAGE", b"kernel"), ("_TRANSPORT", b"kernel")]),
    ];
    write_journal(remote, &journal.join("system.journal"), &entries, &[], &[]);
    let h = Harness::new(&tmp.path().join("data"));
    let s = settings(vec![journal.clone()], Duration::ZERO);
    let lines = h.run(s, mapping(&["k3s*"], &["*-agent.service"], &[]), HashMap::new(), |l| !l.is_empty());
    assert_eq!(messages(&lines), vec!["k3s"]);
    assert_eq!(h.metrics.journal_entries_filtered.get(), 3);
    // The left-out entries still move the position.
    let fp = xxhash_rust::xxh3::xxh3_64(&JournalFile::open(&journal.join("system.journal")).unwrap().header().file_id);
    assert_eq!(h.positions()[&fp].offset, 4);
}

#[test]
fn a_file_being_written_is_read_as_it_grows() {
    let Some(remote) = journal_remote("a_file_being_written_is_read_as_it_grows") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("system.journal");
    let mut child = Command::new(remote)
        .arg(format!("--output={}", path.display()))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let first = sample(30, "live");
    stdin.write_all(&export(&first)).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut f = loop {
        if let Ok(f) = JournalFile::open(&path)
            && f.header().n_entries >= 29
        {
            break f;
        }
        assert!(Instant::now() < deadline, "journal-remote wrote nothing");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(f.header().state, State::Online);
    let mut e = Entry::default();
    let mut read = 0;
    let mut drain = |f: &mut JournalFile, read: &mut usize| {
        f.refresh().unwrap();
        while let Next::Entry(at) = f.next_offset().unwrap() {
            f.read_entry(at, 1 << 20, &mut e).unwrap();
            f.advance();
            *read += 1;
        }
    };
    drain(&mut f, &mut read);
    assert!(read >= 29);
    let second = sample(500, "later");
    stdin.write_all(&export(&second)).unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    drain(&mut f, &mut read);
    assert_eq!(read, 530);
    assert_ne!(f.header().state, State::Online);
}

#[test]
fn the_mapping_follows_the_documented_rules() {
    let m = mapping(&[], &[], &["_CMDLINE", "CODE_FILE", "_PID", "MISSING"]);
    let e = Entry::with_fields(
        1_700_000_000_123_456,
        &[
            ("MESSAGE", b"hello"),
            ("PRIORITY", b"4"),
            ("_SYSTEMD_UNIT", b"ssh.service"),
            ("_COMM", b"sshd"),
            ("_PID", b"42"),
            ("_HOSTNAME", b"h1"),
            ("_TRANSPORT", b"syslog"),
            ("_CMDLINE", b"sshd -D"),
            ("CODE_FILE", b"a.c"),
        ],
    );
    let out = m.map(&e).unwrap();
    assert_eq!(out.labels, r#"{app_name="sshd", level="warn", node="node-1", unit="ssh.service"}"#);
    assert_eq!(out.time_ns, 1_700_000_000_123_456_000);
    assert_eq!(out.line, "hello");
    let f: HashMap<&str, &str> = out.fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(f["pid"], "42");
    assert_eq!(f["hostname"], "h1");
    assert_eq!(f["transport"], "syslog");
    assert_eq!(f["severity"], "warning");
    assert_eq!(f["boot_id"], "ab".repeat(16));
    assert_eq!(f["cmdline"], "sshd -D");
    assert_eq!(f["code_file"], "a.c");
    assert_eq!(out.fields.len(), 7, "{:?}", out.fields);

    // SYSLOG_IDENTIFIER wins over _COMM; no unit, no PRIORITY: no such labels; nothing: `unknown`.
    let e = Entry::with_fields(1, &[("MESSAGE", b"x"), ("SYSLOG_IDENTIFIER", b"kernel"), ("_COMM", b"c")]);
    assert_eq!(m.map(&e).unwrap().labels, r#"{app_name="kernel", node="node-1"}"#);
    let e = Entry::with_fields(1, &[("PRIORITY", b"9")]);
    let out = m.map(&e).unwrap();
    assert_eq!(out.labels, r#"{app_name="unknown", node="node-1"}"#);
    assert_eq!(out.line, "");
    assert!(!out.fields.iter().any(|(n, _)| n == "severity"));

    // A binary MESSAGE is kept lossy and marked; a long one is cut and marked.
    let e = Entry::with_fields(1, &[("MESSAGE", b"a\xffb\0")]);
    let out = m.map(&e).unwrap();
    assert_eq!(out.line, "a\u{fffd}b\0");
    assert!(out.fields.contains(&("message_binary".to_string(), "true".to_string())));
    let small = Mapping::new("n".into(), &[], &[], &[], 4).unwrap();
    let out = small.map(&Entry::with_fields(1, &[("MESSAGE", "héllo".as_bytes())])).unwrap();
    assert_eq!(out.line, "hél");
    assert!(out.fields.contains(&("truncated".to_string(), "true".to_string())));

    // Unit globs: include, exclude, and entries without a unit only without an include list.
    let m = mapping(&["k3s*", "kubelet.service"], &["k3s-agent*"], &[]);
    let unit = |u: &[u8]| Entry::with_fields(1, &[("MESSAGE", b"m"), ("_SYSTEMD_UNIT", u)]);
    assert!(m.map(&unit(b"k3s.service")).is_some());
    assert!(m.map(&unit(b"kubelet.service")).is_some());
    assert!(m.map(&unit(b"k3s-agent.service")).is_none());
    assert!(m.map(&unit(b"ssh.service")).is_none());
    assert!(m.map(&Entry::with_fields(1, &[("MESSAGE", b"m")])).is_none());
    let m = mapping(&[], &["ssh.service"], &[]);
    assert!(m.map(&Entry::with_fields(1, &[("MESSAGE", b"m")])).is_some());
    assert!(m.map(&unit(b"ssh.service")).is_none());
}

#[test]
fn levels_and_field_names() {
    let levels: Vec<&str> = (0..8).map(level).collect();
    assert_eq!(levels, ["critical", "critical", "critical", "error", "warn", "info", "info", "debug"]);
    assert_eq!(severity_name(3), "err");
    assert_eq!(severity_name(8), "unknown");
    assert_eq!(field_name("_SYSTEMD_USER_UNIT"), "systemd_user_unit");
    assert_eq!(field_name("__X"), "x");
    let bad = Mapping::new("n".into(), &[], &[], &["code_file".into()], 10).unwrap_err().to_string();
    assert!(bad.contains("\"code_file\"") && bad.contains("journal_fields"), "{bad}");
    let bad = Mapping::new("n".into(), &["[".into()], &[], &[], 10).unwrap_err().to_string();
    assert!(bad.contains("journal_units"), "{bad}");
}

#[test]
fn a_zeroed_or_foreign_file_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let zero = tmp.path().join("zero.journal");
    std::fs::write(&zero, vec![0u8; 4096]).unwrap();
    assert!(matches!(JournalFile::open(&zero), Err(FormatError::Signature)));
    let short = tmp.path().join("short.journal");
    std::fs::write(&short, b"LPKSHHRH").unwrap();
    assert!(matches!(JournalFile::open(&short), Err(FormatError::Signature)));
    // A header with an incompatible flag from the future.
    let mut h = vec![0u8; 4096];
    h[..8].copy_from_slice(b"LPKSHHRH");
    h[12..16].copy_from_slice(&(1u32 << 9).to_le_bytes());
    h[88..96].copy_from_slice(&272u64.to_le_bytes());
    let future = tmp.path().join("future.journal");
    std::fs::write(&future, &h).unwrap();
    let err = JournalFile::open(&future).err().unwrap();
    assert_eq!(err.reason(), "unsupported");
    // A header whose entry count is huge and whose chain points nowhere ends at once.
    h[12..16].copy_from_slice(&0u32.to_le_bytes());
    h[96..104].copy_from_slice(&(4096u64 - 272).to_le_bytes());
    h[152..160].copy_from_slice(&u64::MAX.to_le_bytes());
    h[176..184].copy_from_slice(&1_000_000u64.to_le_bytes());
    let lying = tmp.path().join("lying.journal");
    std::fs::write(&lying, &h).unwrap();
    let mut f = JournalFile::open(&lying).unwrap();
    assert_eq!(f.next_offset().unwrap_err().reason(), "bounds");
    // ... or at zeros, which are no entry array.
    h[176..184].copy_from_slice(&272u64.to_le_bytes());
    std::fs::write(&lying, &h).unwrap();
    let mut f = JournalFile::open(&lying).unwrap();
    assert_eq!(f.next_offset().unwrap_err().reason(), "object");
}
