//! The reader: follows every container log file under the pods directory and cuts batches into the disk
//! buffer. It runs on its own thread, because file reads block.
//!
//! Each round it lists the pods directory (at most every `discover_interval`), reads what the files have
//! gained, decodes CRI or Docker lines (merging partial records), applies the parse options, and appends
//! entries to the batch being built; a batch is cut into the buffer once large or old enough.
//!
//! Files are known by a fingerprint of their first line (see [`crate::checkpoint`]):
//! - a rotation by rename keeps the open file descriptor, which is read to its end before it is closed,
//!   and the new `0.log` is a new file read from its start;
//! - a gzipped rotation whose fingerprint has a position (acknowledged or buffered) is read from there, so
//!   what was read before is not read again, and a finished one is skipped;
//! - a gzipped rotation with no position is read whole if the agent followed that container before (it
//!   was rotated away while the agent was down or behind), and skipped as history otherwise;
//! - a file that shrinks under its read position (copytruncate) is read again from its start;
//! - a removed pod's files are read to their end through the descriptors still open.
//!
//! The position a batch records for a file never passes a record that is not complete yet (a partial CRI
//! or Docker line, a multiline group still open), so a restart from a checkpoint re-reads such a record
//! whole.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use wire::loki::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp};

use crate::buffer::{DiskBuffer, Kind, Position};
use crate::checkpoint::Checkpoints;
use crate::format::{Decoder, Record, Stream};
use crate::kube::PodCache;
use crate::metrics::AgentMetrics;
use crate::pods::{self, ContainerDir, FileKind};
use crate::transform::{Multiline, Transform};

/// Bytes read from one file per round before moving to the next (fairness between busy files).
const READ_BUDGET: usize = 1024 * 1024;
const READ_CHUNK: usize = 256 * 1024;
/// The fingerprint covers the first line, or this many bytes when the first line is longer.
const FINGERPRINT_MAX: usize = 1024;
/// A renamed file is closed once it has been at its end this long (the runtime may write a last line
/// before it reopens the new file).
const ROTATED_GRACE: Duration = Duration::from_secs(5);
/// A partial record whose file has not grown for this long is sent as it is (the runtime died mid-line,
/// or wrote a last line without its end).
const IDLE_PARTIAL: Duration = Duration::from_secs(3);
/// Positions of files no longer followed are kept this long, for a gzipped rotation of them.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What the reader needs besides the shared state.
#[derive(Debug, Clone)]
pub struct TailerSettings {
    pub pods_dir: PathBuf,
    /// Docker's containers directory (`/var/lib/docker/containers`), when its json-file logs are read too.
    pub docker_dir: Option<PathBuf>,
    pub node: String,
    /// Pod labels copied onto streams, with their sanitized label names.
    pub pod_labels: Vec<(String, String)>,
    /// Docker container labels copied onto streams, with their sanitized label names.
    pub docker_labels: Vec<(String, String)>,
    /// Docker containers not read, by label.
    pub docker_exclude: Vec<crate::docker::LabelMatch>,
    pub max_line_bytes: usize,
    pub batch_max_bytes: usize,
    pub batch_wait: Duration,
    pub discover_interval: Duration,
    pub poll_interval: Duration,
}

/// One container: its log directory, stream labels (as a Loki label set) and identity.
#[derive(Debug)]
struct Container {
    dir: PathBuf,
    labels: String,
    /// The field naming the container's identity: `pod_uid` for a pod's container, `container_id` for Docker.
    id_field: &'static str,
    id: String,
}

/// A container directory found at a listing, with what its files are to carry.
struct Found {
    dir: PathBuf,
    labels: String,
    id_field: &'static str,
    id: String,
    files: Vec<pods::LogFile>,
}

enum Source {
    Plain(File),
    Gzip(Box<flate2::read::MultiGzDecoder<File>>),
}

impl Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::Plain(f) => f.read(buf),
            Source::Gzip(g) => g.read(buf),
        }
    }
}

struct Tailed {
    fingerprint: u64,
    dev: u64,
    ino: u64,
    path: PathBuf,
    kind: FileKind,
    container: Arc<Container>,
    source: Source,
    /// Bytes consumed from the (decompressed) file.
    offset: u64,
    /// The unterminated end of what was read.
    line: Vec<u8>,
    /// An over-long raw line is being skipped up to its newline.
    skipping: bool,
    decoder: Decoder,
    multiline: [Option<Multiline>; 2],
    /// The path no longer names this file (renamed away or deleted).
    gone: bool,
    /// At the end of the file since then.
    eof_since: Option<Instant>,
    /// The position last put into a batch.
    cut_offset: u64,
    done: bool,
    /// Truncated under its position: dropped without a final position (see [`Tailer::at_eof`]).
    reset: bool,
}

impl Tailed {
    /// The position that everything before has been emitted: the start of the oldest incomplete record.
    fn safe_offset(&self) -> u64 {
        let mut at = self.offset - self.line.len() as u64;
        if let Some(p) = self.decoder.pending_start() {
            at = at.min(p);
        }
        for m in self.multiline.iter().flatten() {
            if let Some(p) = m.pending_start() {
                at = at.min(p);
            }
        }
        at
    }
}

/// Entries of the batch being built, by stream label set: the pod and Docker reader's and the journal's.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) streams: HashMap<String, Vec<EntryAdapter>>,
    pub(crate) bytes: usize,
    pub(crate) entries: usize,
    /// When the first entry (or moved position) of this batch came.
    pub(crate) first_at: Option<Instant>,
}

impl Batch {
    /// Adds an entry of the stream `labels` that counts `bytes` towards the batch size.
    pub(crate) fn push(&mut self, labels: &str, entry: EntryAdapter, bytes: usize, now: Instant) {
        match self.streams.get_mut(labels) {
            Some(v) => v.push(entry),
            None => {
                self.streams.insert(labels.to_string(), vec![entry]);
            }
        }
        self.bytes += bytes;
        self.entries += 1;
        self.first_at.get_or_insert(now);
    }
}

/// How a reader thread paces itself: batch size and age, and how often it lists and polls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) batch_max_bytes: usize,
    pub(crate) batch_wait: Duration,
    pub(crate) discover_interval: Duration,
    pub(crate) poll_interval: Duration,
}

/// A reader thread that cuts batches into the disk buffer: the pod and Docker reader ([`Tailer`]) and the
/// journal's ([`crate::journal::JournalReader`]). [`ReadLoop::run_loop`] is their common loop.
pub(crate) trait ReadLoop {
    /// Lists what there is to follow.
    fn discover(&mut self);
    /// Reads what the followed sources gained; returns the bytes (or entries) read.
    fn read_round(&mut self) -> usize;
    /// Whether a source's position moved past the last cut (entries read but none kept still move it).
    fn positions_moved(&self) -> bool;
    /// Cuts the batch, with the positions reached, into the buffer.
    fn cut(&mut self);
    fn batch(&mut self) -> &mut Batch;
    fn pace(&self) -> Pace;
    fn buffer(&self) -> &DiskBuffer;
    fn metrics(&self) -> &AgentMetrics;

    /// Cuts the batch once large or old enough; starts its clock when only positions moved.
    fn cut_if_due(&mut self, now: Instant) {
        let pace = self.pace();
        let batch = self.batch();
        let due = batch.bytes >= pace.batch_max_bytes
            || batch.first_at.is_some_and(|t| now.duration_since(t) >= pace.batch_wait);
        if due {
            self.cut();
        } else if self.batch().first_at.is_none() && self.positions_moved() {
            // Read but nothing kept (dropped, filtered, partial): the positions still move, in time.
            self.batch().first_at = Some(now);
        }
    }

    /// Lists, reads and cuts until `shutdown`, waiting while the buffer is full; then cuts what it holds.
    fn run_loop(&mut self, shutdown: &CancellationToken) {
        let pace = self.pace();
        let mut last_discovery: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            let now = Instant::now();
            if last_discovery.is_none_or(|t| now.duration_since(t) >= pace.discover_interval) {
                self.discover();
                last_discovery = Some(now);
            }
            if !self.buffer().has_space() {
                self.metrics().buffer_full_waits.inc();
                self.buffer().wait_for_space(pace.poll_interval);
                self.cut_if_due(Instant::now());
                continue;
            }
            let read = self.read_round();
            self.cut_if_due(Instant::now());
            if read == 0 {
                std::thread::sleep(pace.poll_interval);
            }
        }
        self.cut();
    }
}

/// The reader. Build it with [`Tailer::new`] and run it on a thread with [`Tailer::run`].
pub struct Tailer {
    settings: TailerSettings,
    transform: Transform,
    buffer: Arc<DiskBuffer>,
    checkpoints: Arc<Mutex<Checkpoints>>,
    pods: Option<PodCache>,
    metrics: Arc<AgentMetrics>,
    files: Vec<Tailed>,
    /// Positions reached in this run or buffered before it, by fingerprint: (offset, finished).
    known: HashMap<u64, (u64, bool)>,
    /// Since when a fingerprint in `known` has not been followed; forgotten after [`FORGET_AFTER`].
    absent_since: HashMap<u64, Instant>,
    /// Inodes not to open again: finished or skipped gzipped rotations, copies of tracked files.
    ignored: HashSet<(u64, u64)>,
    containers: HashMap<PathBuf, Arc<Container>>,
    batch: Batch,
    /// Final positions of files closed since the last cut.
    finished: Vec<Position>,
    /// The last listing of the pods directory failed (warned once).
    listing_failed: bool,
    /// The last listing of the Docker directory failed (warned once).
    docker_listing_failed: bool,
    /// Docker containers' metadata, by container directory, with the modification time of the
    /// `config.v2.json` it was read from (read again when that changes).
    docker_meta: HashMap<PathBuf, (Option<std::time::SystemTime>, Result<crate::docker::Metadata, String>)>,
    read_buf: Vec<u8>,
}

impl Tailer {
    /// A reader that resumes from `resume` (the furthest buffered position of each file) or the checkpoints.
    pub fn new(
        settings: TailerSettings,
        transform: Transform,
        buffer: Arc<DiskBuffer>,
        checkpoints: Arc<Mutex<Checkpoints>>,
        resume: HashMap<u64, Position>,
        pods: Option<PodCache>,
        metrics: Arc<AgentMetrics>,
    ) -> Tailer {
        let known = resume.into_iter().map(|(fp, p)| (fp, (p.offset, false))).collect();
        Tailer {
            settings,
            transform,
            buffer,
            checkpoints,
            pods,
            metrics,
            files: Vec::new(),
            known,
            absent_since: HashMap::new(),
            ignored: HashSet::new(),
            containers: HashMap::new(),
            batch: Batch::default(),
            finished: Vec::new(),
            listing_failed: false,
            docker_listing_failed: false,
            docker_meta: HashMap::new(),
            read_buf: vec![0; READ_CHUNK],
        }
    }

    /// Reads until `shutdown`, then cuts what it holds into the buffer.
    pub fn run(mut self, shutdown: CancellationToken) {
        match &self.settings.docker_dir {
            Some(docker_dir) => tracing::info!(pods_dir = %self.settings.pods_dir.display(),
                docker_dir = %docker_dir.display(), "reading pod and Docker container logs"),
            None => tracing::info!(pods_dir = %self.settings.pods_dir.display(), "reading pod logs"),
        }
        self.run_loop(&shutdown);
        tracing::info!("stopped reading pod logs");
    }

    /// The container directories of the pods directory that the filters select.
    fn find_pods(&mut self) -> Vec<Found> {
        let dirs = match pods::scan(&self.settings.pods_dir) {
            Ok(d) => {
                self.listing_failed = false;
                d
            }
            Err(error) => {
                // On a Docker host without Kubernetes there is no pods directory: nothing to say.
                let expected = self.settings.docker_dir.is_some() && error.kind() == std::io::ErrorKind::NotFound;
                if !self.listing_failed && !expected {
                    tracing::warn!(%error, pods_dir = %self.settings.pods_dir.display(),
                        "cannot list the pods directory; trying again at every listing");
                }
                self.listing_failed = true;
                // Files already open are still read to their end.
                Vec::new()
            }
        };
        let mut out = Vec::with_capacity(dirs.len());
        for dir in dirs {
            if !self.transform.selects(&dir.namespace, &dir.container) {
                continue;
            }
            let pod = self.pods.as_ref().and_then(|c| c.get(&dir.uid));
            if pod.as_ref().is_some_and(crate::kube::excluded) {
                continue;
            }
            let labels = self.stream_labels(&dir, pod.as_ref());
            out.push(Found {
                files: pods::list_files(&dir.dir),
                dir: dir.dir,
                labels,
                id_field: "pod_uid",
                id: dir.uid,
            });
        }
        out
    }

    /// The Docker containers of the Docker directory that the filters select.
    fn find_docker(&mut self, docker_dir: &Path) -> Vec<Found> {
        let dirs = match crate::docker::scan(docker_dir) {
            Ok(d) => {
                self.docker_listing_failed = false;
                d
            }
            Err(error) => {
                if !self.docker_listing_failed {
                    tracing::warn!(%error, docker_dir = %docker_dir.display(),
                        "cannot list Docker's containers directory; trying again at every listing");
                    self.docker_listing_failed = true;
                }
                Vec::new()
            }
        };
        let mut out = Vec::with_capacity(dirs.len());
        let live: HashSet<PathBuf> = dirs.iter().map(|(_, d)| d.clone()).collect();
        self.docker_meta.retain(|d, _| live.contains(d));
        for (id, dir) in dirs {
            let files = crate::docker::list_files(&dir, &id);
            if files.is_empty() {
                // Another log driver (journald, local, none), or not started yet.
                continue;
            }
            let mtime = std::fs::metadata(dir.join("config.v2.json")).and_then(|m| m.modified()).ok();
            let stale = self.docker_meta.get(&dir).is_none_or(|(t, _)| *t != mtime || mtime.is_none());
            if stale {
                let meta = crate::docker::read_metadata(&dir);
                if let Err(error) = &meta
                    && self.docker_meta.get(&dir).is_none_or(|(_, m)| m.is_ok())
                {
                    tracing::warn!(%error, container_id = %id,
                        "cannot read a Docker container's metadata; its logs carry only its id until it can be read");
                }
                self.docker_meta.insert(dir.clone(), (mtime, meta));
            }
            let meta = match self.docker_meta.get(&dir) {
                Some((_, Ok(m))) => Some(m),
                _ => None,
            };
            if let Some(m) = meta {
                if self.settings.docker_exclude.iter().any(|rule| rule.matches(&m.labels)) {
                    continue;
                }
                let project = m.labels.get(crate::docker::COMPOSE_PROJECT).map_or("", String::as_str);
                if !self.transform.selects(project, &m.name) {
                    continue;
                }
            }
            let labels = self.docker_stream_labels(&id, meta);
            out.push(Found { dir, labels, id_field: "container_id", id, files });
        }
        out
    }

    fn discover(&mut self) {
        let mut found = self.find_pods();
        if let Some(docker_dir) = self.settings.docker_dir.clone() {
            found.extend(self.find_docker(&docker_dir));
        }
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut live_dirs: HashSet<PathBuf> = HashSet::new();
        for dir in found {
            let container = match self.containers.get(&dir.dir) {
                Some(c) if c.labels == dir.labels => c.clone(),
                _ => {
                    let c = Arc::new(Container {
                        dir: dir.dir.clone(),
                        labels: dir.labels,
                        id_field: dir.id_field,
                        id: dir.id,
                    });
                    self.containers.insert(dir.dir.clone(), c.clone());
                    c
                }
            };
            live_dirs.insert(dir.dir.clone());
            for file in dir.files {
                let Ok(meta) = std::fs::metadata(&file.path) else { continue };
                let id = (meta.dev(), meta.ino());
                seen.insert(id);
                if let Some(i) = self.files.iter().position(|t| (t.dev, t.ino) == id) {
                    // Emptied and written again since the last look (copytruncate, then more lines than
                    // before): the first line changed under the same inode. Read through the open
                    // descriptor, so the check costs one pread per file and listing.
                    let t = &self.files[i];
                    if let Source::Plain(f) = &t.source
                        && !t.reset
                        && head_fingerprint(f).is_some_and(|fp| fp != t.fingerprint)
                    {
                        tracing::info!(file = %file.path.display(), "log file rewritten in place; following its copy and its new content");
                        self.reset(i);
                        continue;
                    }
                    let t = &mut self.files[i];
                    if t.path != file.path {
                        self.metrics.rotations.inc();
                        t.path = file.path.clone();
                        t.kind = t.kind.min(file.kind);
                        t.eof_since = None;
                    }
                    t.gone = false;
                    t.container = container.clone();
                    continue;
                }
                if self.ignored.contains(&id) {
                    continue;
                }
                self.open(&file.path, file.kind, id, &container);
            }
        }
        for t in &mut self.files {
            if !seen.contains(&(t.dev, t.ino)) {
                t.gone = true;
            }
        }
        self.ignored.retain(|id| seen.contains(id));
        self.containers.retain(|dir, _| live_dirs.contains(dir));
        let present: HashSet<u64> = self.files.iter().map(|t| t.fingerprint).collect();
        let now = Instant::now();
        for fp in self.known.keys() {
            if present.contains(fp) {
                self.absent_since.remove(fp);
            } else {
                self.absent_since.entry(*fp).or_insert(now);
            }
        }
        self.absent_since.retain(|fp, since| {
            let keep = now.duration_since(*since) < FORGET_AFTER;
            if !keep {
                self.known.remove(fp);
            }
            keep
        });
        let now_ns = store::time::now_ns();
        self.checkpoints.lock().mark_present(&|fp| present.contains(&fp), now_ns);
        self.metrics.files_open.set(self.files.len() as i64);
    }

    /// `{container="..", namespace="..", node="..", pod="..", <allow-listed pod labels>}`.
    fn stream_labels(&self, dir: &ContainerDir, pod: Option<&crate::kube::PodInfo>) -> String {
        let mut pairs: Vec<(&str, &str)> = vec![
            ("namespace", &dir.namespace),
            ("pod", &dir.pod),
            ("container", &dir.container),
            ("node", &self.settings.node),
        ];
        if let Some(pod) = pod {
            for (key, name) in &self.settings.pod_labels {
                if let Some(v) = pod.labels.get(key).filter(|v| !v.is_empty())
                    && !pairs.iter().any(|(n, _)| n == name)
                {
                    pairs.push((name, v));
                }
            }
        }
        label_set(pairs)
    }

    /// `{compose_project="..", compose_service="..", container="..", image="..", node="..", <allow-listed
    /// container labels>}`; `{container="<short id>", node=".."}` while the metadata cannot be read.
    fn docker_stream_labels(&self, id: &str, meta: Option<&crate::docker::Metadata>) -> String {
        let short = &id[..12.min(id.len())];
        let mut pairs: Vec<(&str, &str)> = vec![("node", &self.settings.node)];
        match meta {
            None => pairs.push(("container", short)),
            Some(m) => {
                pairs.push(("container", if m.name.is_empty() { short } else { &m.name }));
                pairs.push(("image", &m.image));
                for (key, name) in [
                    (crate::docker::COMPOSE_PROJECT, "compose_project"),
                    (crate::docker::COMPOSE_SERVICE, "compose_service"),
                ] {
                    if let Some(v) = m.labels.get(key) {
                        pairs.push((name, v));
                    }
                }
                for (key, name) in &self.settings.docker_labels {
                    if let Some(v) = m.labels.get(key).filter(|v| !v.is_empty())
                        && !pairs.iter().any(|(n, _)| n == name)
                    {
                        pairs.push((name, v));
                    }
                }
            }
        }
        label_set(pairs)
    }

    /// Starts following a file not followed yet, if it has a first line and is not already read.
    fn open(&mut self, path: &Path, kind: FileKind, id: (u64, u64), container: &Arc<Container>) {
        let Some((fingerprint, first_line)) = fingerprint(path, kind) else { return };
        if self.files.iter().any(|t| t.fingerprint == fingerprint) {
            // A copy of a file being followed (a gzipped rotation made while the original is still open).
            self.ignored.insert(id);
            return;
        }
        let dir = &container.dir;
        let start = match self.known.get(&fingerprint) {
            Some(&(_, true)) => {
                self.ignored.insert(id);
                return;
            }
            Some(&(offset, false)) => offset,
            None => {
                let cp = self.checkpoints.lock();
                match cp.get(fingerprint) {
                    Some(c) => c.offset,
                    None if kind == FileKind::Gzip
                        && !cp.knows_container(dir)
                        && !self.files.iter().any(|t| t.container.dir == *dir) =>
                    {
                        tracing::debug!(file = %path.display(), "skipping a compressed rotation from before the agent");
                        self.ignored.insert(id);
                        return;
                    }
                    None => 0,
                }
            }
        };
        let opened = File::open(path).and_then(|mut f| {
            if kind == FileKind::Gzip {
                let mut g = flate2::read::MultiGzDecoder::new(f);
                let skipped = std::io::copy(&mut (&mut g).take(start), &mut std::io::sink())?;
                Ok((Source::Gzip(Box::new(g)), skipped))
            } else {
                let size = f.metadata()?.len();
                // A file shorter than its position was truncated while the agent was away.
                let start = if start > size { 0 } else { start };
                f.seek(SeekFrom::Start(start))?;
                Ok((Source::Plain(f), start))
            }
        });
        let (source, offset) = match opened {
            Ok(s) => s,
            Err(error) if kind == FileKind::Gzip => {
                // A broken archive stays broken: skip it rather than decompress it again every listing.
                tracing::warn!(%error, file = %path.display(), "cannot read a compressed rotation; skipping it");
                self.ignored.insert(id);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, file = %path.display(), "cannot open a log file; retrying at the next listing");
                return;
            }
        };
        let format = crate::format::detect(&first_line);
        tracing::debug!(file = %path.display(), offset, ?format, "following a log file");
        let multiline = [self.transform.multiline(), self.transform.multiline()];
        self.files.push(Tailed {
            fingerprint,
            dev: id.0,
            ino: id.1,
            path: path.to_path_buf(),
            kind,
            container: container.clone(),
            source,
            offset,
            line: Vec::new(),
            skipping: false,
            decoder: Decoder::new(format, self.settings.max_line_bytes),
            multiline,
            gone: false,
            eof_since: None,
            cut_offset: offset,
            done: false,
            reset: false,
        });
    }

    /// Reads what every file gained (up to a budget each); returns the bytes read.
    fn read_round(&mut self) -> usize {
        let mut total = 0;
        let now = Instant::now();
        for i in 0..self.files.len() {
            if self.files[i].reset {
                continue;
            }
            let mut budget = READ_BUDGET;
            while budget > 0 {
                if self.batch.bytes >= self.settings.batch_max_bytes {
                    self.cut();
                    if !self.buffer.has_space() {
                        return total + 1;
                    }
                }
                let mut buf = std::mem::take(&mut self.read_buf);
                let n = match self.files[i].source.read(&mut buf) {
                    Ok(n) => n,
                    Err(error) => {
                        tracing::warn!(%error, file = %self.files[i].path.display(), "cannot read a log file; closing it");
                        self.files[i].done = true;
                        0
                    }
                };
                if n > 0 {
                    self.consume(i, &buf[..n], now);
                    self.metrics.bytes_read.inc_by(n as u64);
                    total += n;
                    budget = budget.saturating_sub(n);
                    self.files[i].eof_since = None;
                }
                self.read_buf = buf;
                if n == 0 {
                    self.at_eof(i, now);
                    break;
                }
            }
            self.flush_due_multiline(i, now);
        }
        let before = self.files.len();
        let mut finished = Vec::new();
        self.files.retain(|t| {
            if t.reset {
                return false;
            }
            if t.done {
                finished.push(Position {
                    fingerprint: t.fingerprint,
                    offset: t.offset,
                    container_dir: t.container.dir.clone(),
                    path: t.path.clone(),
                });
            }
            !t.done
        });
        if before != self.files.len() {
            for p in finished {
                // Finished files still need their final position in the next batch.
                self.known.insert(p.fingerprint, (p.offset, true));
                self.batch.first_at.get_or_insert(now);
                self.finished.push(p);
            }
            self.metrics.files_open.set(self.files.len() as i64);
        }
        total
    }

    /// Splits what was read into raw lines and decodes them.
    fn consume(&mut self, i: usize, data: &[u8], now: Instant) {
        let max_raw = self.settings.max_line_bytes.saturating_mul(2).max(64 * 1024);
        let mut rest = data;
        while !rest.is_empty() {
            let t = &mut self.files[i];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if t.skipping {
                    t.offset += rest.len() as u64;
                } else {
                    let room = max_raw.saturating_sub(t.line.len());
                    let keep = room.min(rest.len());
                    t.line.extend_from_slice(&rest[..keep]);
                    t.offset += rest.len() as u64;
                    if keep < rest.len() {
                        // The raw line is longer than any record may be: keep its head, skip to its end.
                        t.skipping = true;
                    }
                }
                break;
            };
            let piece = &rest[..nl];
            rest = &rest[nl + 1..];
            let end = t.offset + nl as u64 + 1;
            let start = end - (t.line.len() + nl + 1) as u64;
            let record = if t.line.is_empty() && !t.skipping {
                t.offset = end;
                t.decoder.push(piece, start, end)
            } else {
                let mut line = std::mem::take(&mut t.line);
                if !t.skipping {
                    let room = max_raw.saturating_sub(line.len());
                    line.extend_from_slice(&piece[..room.min(piece.len())]);
                }
                t.skipping = false;
                // The start of a skipped line is not known exactly; its kept head began there.
                t.offset = end;
                let r = t.decoder.push(&line, start.min(end), end);
                line.clear();
                t.line = line;
                r
            };
            self.metrics.lines_read.inc();
            if let Some(r) = record {
                self.multiline_then_emit(i, r, now);
            }
        }
    }

    fn multiline_then_emit(&mut self, i: usize, r: Record, now: Instant) {
        let slot = match r.stream {
            Some(Stream::Stderr) => 1,
            _ => 0,
        };
        // A malformed record goes through the joiner too: it is never joined, but it must not overtake the
        // record pending there.
        if let Some(m) = self.files[i].multiline[slot].as_mut() {
            let out = m.push(r, now);
            for r in out {
                self.emit(i, r, now);
            }
            return;
        }
        self.emit(i, r, now);
    }

    fn flush_due_multiline(&mut self, i: usize, now: Instant) {
        for slot in 0..2 {
            let due = self.files[i].multiline[slot].as_mut().and_then(|m| m.flush_due(now));
            if let Some(r) = due {
                self.emit(i, r, now);
            }
        }
    }

    /// At the end of a file: a finished rotation, removed file or gzipped file is completed and closed; a
    /// file shorter than its position was truncated and is read again from its start.
    fn at_eof(&mut self, i: usize, now: Instant) {
        let t = &mut self.files[i];
        let since = *t.eof_since.get_or_insert(now);
        if let Source::Plain(f) = &t.source
            && let Ok(meta) = f.metadata()
            && meta.len() < t.offset
        {
            // copytruncate: the content read so far was copied away (to a file with the same first line)
            // and this file emptied. The copy is read from where this file's records were complete, and
            // this file, with a new first line, is picked up afresh at the next listing.
            tracing::info!(file = %t.path.display(), size = meta.len(), offset = t.offset,
                "log file truncated (copytruncate); following its copy and its new content");
            self.reset(i);
            return;
        }
        let t = &self.files[i];
        let finished = match t.kind {
            FileKind::Gzip => true,
            _ if t.gone => true,
            FileKind::Rotated => now.duration_since(since) >= ROTATED_GRACE,
            FileKind::Current => false,
        };
        if finished {
            self.finish(i, now);
        } else if now.duration_since(since) >= IDLE_PARTIAL && self.files[i].decoder.pending_start().is_some() {
            let pending = self.files[i].decoder.flush();
            for r in pending {
                self.multiline_then_emit(i, r, now);
            }
        }
    }

    /// Lets go of a file whose content was replaced under it (copytruncate): its copy, which has the old
    /// first line, is read from where this file's records were complete, and the file itself, with a new
    /// first line, is picked up afresh at the next listing.
    fn reset(&mut self, i: usize) {
        let t = &mut self.files[i];
        self.metrics.truncations.inc();
        self.known.insert(t.fingerprint, (t.safe_offset(), false));
        t.reset = true;
        // The copy may have been seen, and skipped, as a copy of a followed file.
        self.ignored.clear();
    }

    /// Completes whatever is pending in a file that will not grow any more and marks it done.
    fn finish(&mut self, i: usize, now: Instant) {
        let t = &mut self.files[i];
        let mut records = Vec::new();
        if !t.line.is_empty() {
            let line = std::mem::take(&mut t.line);
            let start = t.offset - line.len() as u64;
            records.extend(t.decoder.push(&line, start, t.offset));
        }
        records.extend(t.decoder.flush());
        for r in records {
            self.multiline_then_emit(i, r, now);
        }
        for slot in 0..2 {
            if let Some(r) = self.files[i].multiline[slot].as_mut().and_then(Multiline::flush) {
                self.emit(i, r, now);
            }
        }
        let t = &mut self.files[i];
        t.done = true;
        tracing::debug!(file = %t.path.display(), offset = t.offset, "finished a log file");
    }

    /// Adds a complete record to the batch.
    fn emit(&mut self, i: usize, r: Record, now: Instant) {
        let t = &self.files[i];
        if !self.transform.keeps(&r.message) {
            self.metrics.lines_dropped.inc();
            return;
        }
        let time_ns = if r.time_ns == 0 { store::time::now_ns() } else { r.time_ns };
        let mut fields = Vec::new();
        if let Some(s) = r.stream {
            fields.push(("stream".to_string(), s.as_str().to_string()));
        }
        fields.push((t.container.id_field.to_string(), t.container.id.clone()));
        if let Some(reason) = &r.malformed {
            self.metrics.malformed_lines.inc();
            fields.push(("parse_error".to_string(), reason.clone()));
        } else {
            self.transform.fields(&r.message, &mut fields);
        }
        if r.truncated {
            self.metrics.truncated_records.inc();
            fields.push(("truncated".to_string(), "true".to_string()));
        }
        let bytes = r.message.len() + fields.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
        let entry = EntryAdapter {
            timestamp: Some(Timestamp {
                seconds: time_ns.div_euclid(1_000_000_000),
                nanos: time_ns.rem_euclid(1_000_000_000) as i32,
            }),
            line: r.message.into_bytes(),
            structured_metadata: fields
                .into_iter()
                .map(|(n, v)| LabelPairAdapter { name: n.into_bytes(), value: v.into_bytes() })
                .collect(),
            parsed: Vec::new(),
        };
        self.batch.push(&self.files[i].container.labels, entry, bytes, now);
        self.metrics.records.inc();
    }

    fn positions_moved(&self) -> bool {
        !self.finished.is_empty() || self.files.iter().any(|t| t.safe_offset() != t.cut_offset)
    }

    /// Cuts the batch into the disk buffer with the position each file reached.
    fn cut(&mut self) {
        if self.batch.entries == 0 && !self.positions_moved() {
            self.batch.first_at = None;
            return;
        }
        let mut positions: Vec<Position> = std::mem::take(&mut self.finished);
        for t in &mut self.files {
            let at = t.safe_offset();
            if at != t.cut_offset {
                positions.push(Position {
                    fingerprint: t.fingerprint,
                    offset: at,
                    container_dir: t.container.dir.clone(),
                    path: t.path.clone(),
                });
            }
        }
        let batch = std::mem::take(&mut self.batch);
        append_batch(&self.buffer, &self.metrics, positions, batch.streams);
        for t in &mut self.files {
            t.cut_offset = t.safe_offset();
            self.known.insert(t.fingerprint, (t.cut_offset, false));
        }
        self.metrics.batches_cut.inc();
    }
}

impl ReadLoop for Tailer {
    fn discover(&mut self) {
        Tailer::discover(self);
    }

    fn read_round(&mut self) -> usize {
        Tailer::read_round(self)
    }

    fn positions_moved(&self) -> bool {
        Tailer::positions_moved(self)
    }

    fn cut(&mut self) {
        Tailer::cut(self);
    }

    fn batch(&mut self) -> &mut Batch {
        &mut self.batch
    }

    fn pace(&self) -> Pace {
        let s = &self.settings;
        Pace {
            batch_max_bytes: s.batch_max_bytes,
            batch_wait: s.batch_wait,
            discover_interval: s.discover_interval,
            poll_interval: s.poll_interval,
        }
    }

    fn buffer(&self) -> &DiskBuffer {
        &self.buffer
    }

    fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }
}

/// A Loki label set `{a="1", b="2"}` of the pairs with a value, sorted by name, with `"`, `\` and newlines
/// escaped: the stream labels of pod, Docker and journal lines.
pub(crate) fn label_set(mut pairs: Vec<(&str, &str)>) -> String {
    pairs.retain(|(_, v)| !v.is_empty());
    pairs.sort_unstable();
    let mut out = String::with_capacity(128);
    out.push('{');
    for (i, (n, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(n);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// Cuts a batch of log entries, by stream label set, into the disk buffer (a Loki push body) with the
/// positions it reaches; `streams` may be empty when only positions moved. Retries until the buffer takes
/// it: nothing is read on until the batch is safe, and the files (or the journal) keep the lines meanwhile.
pub(crate) fn append_batch(
    buffer: &DiskBuffer,
    metrics: &AgentMetrics,
    positions: Vec<Position>,
    streams: HashMap<String, Vec<EntryAdapter>>,
) {
    let payload = if streams.is_empty() {
        Vec::new()
    } else {
        let req = PushRequest {
            streams: streams
                .into_iter()
                .map(|(labels, entries)| StreamAdapter { labels: labels.into_bytes(), entries, hash: 0 })
                .collect(),
        };
        wire::loki::encode_protobuf(&req)
    };
    loop {
        match buffer.append(Kind::Logs, positions.clone(), &payload) {
            Ok(_) => break,
            Err(error) => {
                tracing::error!(%error, "cannot write a batch to the disk buffer; retrying in 1s");
                metrics.buffer_errors.inc();
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// The fingerprint of a file's first line (or first [`FINGERPRINT_MAX`] bytes), and that line; `None` while
/// the file has neither.
fn fingerprint(path: &Path, kind: FileKind) -> Option<(u64, Vec<u8>)> {
    let mut head = Vec::with_capacity(FINGERPRINT_MAX);
    let file = File::open(path).ok()?;
    let read = if kind == FileKind::Gzip {
        flate2::read::MultiGzDecoder::new(file).take(FINGERPRINT_MAX as u64).read_to_end(&mut head)
    } else {
        file.take(FINGERPRINT_MAX as u64).read_to_end(&mut head)
    };
    read.ok()?;
    let line = first_line(&head)?;
    Some((xxhash_rust::xxh3::xxh3_64(line), line.to_vec()))
}

/// The fingerprint of what an open plain file now starts with.
fn head_fingerprint(f: &File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; FINGERPRINT_MAX];
    let n = f.read_at(&mut head, 0).ok()?;
    first_line(&head[..n]).map(xxhash_rust::xxh3::xxh3_64)
}

/// The bytes a fingerprint covers: the first line with its newline, or the first [`FINGERPRINT_MAX`] bytes.
fn first_line(head: &[u8]) -> Option<&[u8]> {
    match memchr::memchr(b'\n', head) {
        Some(nl) => Some(&head[..=nl]),
        None if head.len() >= FINGERPRINT_MAX => Some(head),
        None => None,
    }
}
