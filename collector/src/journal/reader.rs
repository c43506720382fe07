//! The journal reader thread: lists the journal directories, follows every journal file, maps its
//! entries ([`crate::journal::Mapping`]) and cuts batches into the disk buffer with the position each
//! file reached. It runs on its own thread, because file reads block. See [`crate::journal`] for the
//! rules; the batch cutting is the pod log reader's ([`crate::tail`]).

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use wire::loki::{EntryAdapter, LabelPairAdapter, Timestamp};

use crate::buffer::{DiskBuffer, Position};
use crate::checkpoint::Checkpoints;
use crate::journal::Mapping;
use crate::journal::file::{Entry, FormatError, JournalFile, Next, State};
use crate::metrics::AgentMetrics;
use crate::tail::{Batch, Pace, ReadLoop};

/// Entries read from one file per round before moving to the next (fairness between files).
const ENTRY_BUDGET: usize = 4096;
/// How long an entry that a file being written lists but that does not read yet is retried before it is
/// given up as corrupt (journald links an entry microseconds after writing it).
const STALL_GRACE: Duration = Duration::from_secs(10);
/// A renamed (archived) or deleted file is closed once it has been at its end this long.
const ROTATED_GRACE: Duration = Duration::from_secs(5);
/// Positions of files no longer on disk are kept this long.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
/// At most one warning per reason in this time; the others are counted only.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What the journal reader needs besides the shared state.
#[derive(Debug, Clone)]
pub struct JournalSettings {
    /// Directories holding journal files directly or in `<machine-id>/` subdirectories.
    pub dirs: Vec<PathBuf>,
    /// On the first start (no position in a directory), entries older than this are passed over.
    pub max_age: Duration,
    /// The longest value read from a field (MESSAGE is cut there).
    pub max_line_bytes: usize,
    pub batch_max_bytes: usize,
    pub batch_wait: Duration,
    pub discover_interval: Duration,
    pub poll_interval: Duration,
}

/// A journal file being followed.
struct Followed {
    fingerprint: u64,
    dev: u64,
    ino: u64,
    path: PathBuf,
    /// The directory holding it (the position's `container_dir`).
    dir: PathBuf,
    file: JournalFile,
    /// The position last put into a batch.
    cut_offset: u64,
    /// The path no longer names this file (deleted).
    gone: bool,
    at_end_since: Option<Instant>,
    /// Since when the entry at the read position has not read (a writer mid-append, or corruption).
    stalled_since: Option<Instant>,
    /// The header has not read since then.
    header_failed_since: Option<Instant>,
    /// The header counts entries the chain does not list, reported once.
    unlinked_reported: bool,
    done: bool,
}

/// A file on disk that is not followed: finished, or not readable as a journal file.
enum Ignored {
    /// Read to its end (its fingerprint keeps its checkpoint alive).
    Finished(u64),
    /// Not readable; tried again when its length changes.
    Unreadable { len: u64 },
}

/// Warnings at most once per [`WARN_EVERY`] per reason.
#[derive(Default)]
struct Warnings {
    last: HashMap<&'static str, (Instant, u64)>,
}

impl Warnings {
    /// `Some(suppressed since the last warning)` when a warning for `reason` may be logged now.
    fn allow(&mut self, reason: &'static str, now: Instant) -> Option<u64> {
        match self.last.get_mut(reason) {
            Some((at, suppressed)) if now.duration_since(*at) < WARN_EVERY => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

/// The reader. Build it with [`JournalReader::new`] and run it on a thread with [`JournalReader::run`].
pub struct JournalReader {
    settings: JournalSettings,
    mapping: Mapping,
    buffer: Arc<DiskBuffer>,
    checkpoints: Arc<Mutex<Checkpoints>>,
    metrics: Arc<AgentMetrics>,
    files: Vec<Followed>,
    /// Positions reached in this run or buffered before it, by fingerprint: (offset, finished).
    known: HashMap<u64, (u64, bool)>,
    absent_since: HashMap<u64, Instant>,
    ignored: HashMap<(u64, u64), Ignored>,
    /// Directories with a file followed in this run or before it: their new files are read whole.
    known_dirs: HashSet<PathBuf>,
    batch: Batch,
    /// Final positions of files closed since the last cut.
    finished: Vec<Position>,
    /// Directories warned about (unreadable) or noted (missing), until they list again.
    dir_problems: HashSet<PathBuf>,
    /// `*.journal~` files already counted.
    corrupt_seen: HashSet<PathBuf>,
    warnings: Warnings,
    entry: Entry,
}

impl JournalReader {
    /// A reader that resumes from `resume` (the furthest buffered position of each journal file) or the
    /// checkpoints.
    pub fn new(
        settings: JournalSettings,
        mapping: Mapping,
        buffer: Arc<DiskBuffer>,
        checkpoints: Arc<Mutex<Checkpoints>>,
        resume: HashMap<u64, Position>,
        metrics: Arc<AgentMetrics>,
    ) -> JournalReader {
        let known_dirs: HashSet<PathBuf> = resume.values().map(|p| p.container_dir.clone()).collect();
        let known = resume.into_iter().map(|(fp, p)| (fp, (p.offset, false))).collect();
        JournalReader {
            settings,
            mapping,
            buffer,
            checkpoints,
            metrics,
            files: Vec::new(),
            known,
            absent_since: HashMap::new(),
            ignored: HashMap::new(),
            known_dirs,
            batch: Batch::default(),
            finished: Vec::new(),
            dir_problems: HashSet::new(),
            corrupt_seen: HashSet::new(),
            warnings: Warnings::default(),
            entry: Entry::default(),
        }
    }

    /// Reads until `shutdown`, then cuts what it holds into the buffer.
    pub fn run(mut self, shutdown: CancellationToken) {
        let dirs: Vec<String> = self.settings.dirs.iter().map(|d| d.display().to_string()).collect();
        tracing::info!(journal_dirs = ?dirs, "reading the systemd journal");
        self.run_loop(&shutdown);
        tracing::info!("stopped reading the systemd journal");
    }

    /// Lists the directories: follows new files, notes renames and deletions.
    fn discover(&mut self) {
        let mut candidates: Vec<(PathBuf, PathBuf)> = Vec::new();
        for dir in self.settings.dirs.clone() {
            self.list(&dir, true, &mut candidates);
        }
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut opened = false;
        // Whether a directory is new is decided for the whole listing: on a first start every file of
        // the directory gets the max_age rule, not only the first one opened.
        let first_start: HashSet<PathBuf> = {
            let cp = self.checkpoints.lock();
            candidates
                .iter()
                .map(|(_, dir)| dir)
                .filter(|dir| !self.known_dirs.contains(*dir) && !cp.knows_container(dir))
                .cloned()
                .collect()
        };
        for (path, dir) in candidates {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let id = (meta.dev(), meta.ino());
            seen.insert(id);
            if let Some(f) = self.files.iter_mut().find(|f| (f.dev, f.ino) == id) {
                if f.path != path {
                    tracing::debug!(from = %f.path.display(), to = %path.display(), "journal file renamed");
                    f.path = path;
                    f.at_end_since = None;
                }
                f.gone = false;
                continue;
            }
            match self.ignored.get(&id) {
                Some(Ignored::Finished(_)) => continue,
                Some(Ignored::Unreadable { len }) if *len == meta.len() => continue,
                _ => {}
            }
            opened |= self.open(&path, &dir, id, meta.len(), first_start.contains(&dir));
        }
        for f in &self.files {
            self.known_dirs.insert(f.dir.clone());
        }
        for f in &mut self.files {
            if !seen.contains(&(f.dev, f.ino)) {
                f.gone = true;
            }
        }
        if opened {
            // Older files first, so a stream's entries go out roughly in time order.
            self.files.sort_by_key(|f| f.file.header().head_entry_realtime);
        }
        self.ignored.retain(|id, _| seen.contains(id));
        let mut present: HashSet<u64> = self.files.iter().map(|f| f.fingerprint).collect();
        present.extend(self.ignored.values().filter_map(|i| match i {
            Ignored::Finished(fp) => Some(*fp),
            Ignored::Unreadable { .. } => None,
        }));
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
        self.checkpoints.lock().mark_journal_present(&self.settings.dirs, &|fp| present.contains(&fp), now_ns);
        self.metrics.journal_files_open.set(self.files.len() as i64);
    }

    /// Adds the journal files of `dir` (and, at the top, of its subdirectories) to `out`.
    fn list(&mut self, dir: &Path, top: bool, out: &mut Vec<(PathBuf, PathBuf)>) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => {
                self.dir_problems.remove(dir);
                e
            }
            Err(error) => {
                if self.dir_problems.insert(dir.to_path_buf()) {
                    if error.kind() == std::io::ErrorKind::NotFound {
                        tracing::debug!(dir = %dir.display(), "no journal directory here");
                    } else {
                        self.metrics.journal_errors.get_or_create(&vec![("reason", "directory")]).inc();
                        tracing::warn!(%error, dir = %dir.display(),
                            "cannot list a journal directory; mount it readable into the agent (read-only is enough), or drop it from agent.journal_dirs");
                    }
                }
                return;
            }
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                if top {
                    self.list(&path, false, out);
                }
                continue;
            }
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".journal") {
                out.push((path, dir.to_path_buf()));
            } else if name.ends_with(".journal~") && self.corrupt_seen.insert(path.clone()) {
                self.metrics.journal_errors.get_or_create(&vec![("reason", "corrupt_file")]).inc();
                tracing::debug!(file = %path.display(), "skipping a journal file journald set aside as corrupt");
            }
        }
    }

    /// Starts following a journal file; returns whether it did.
    fn open(&mut self, path: &Path, dir: &Path, id: (u64, u64), len: u64, first_start: bool) -> bool {
        let mut file = match JournalFile::open(path) {
            Ok(f) => f,
            Err(error) => {
                self.count_error(&error, path);
                self.ignored.insert(id, Ignored::Unreadable { len });
                return false;
            }
        };
        let fingerprint = xxhash_rust::xxh3::xxh3_64(&file.header().file_id);
        if self.files.iter().any(|f| f.fingerprint == fingerprint) {
            // A copy of a file being followed.
            self.ignored.insert(id, Ignored::Finished(fingerprint));
            return false;
        }
        let start = match self.known.get(&fingerprint) {
            Some(&(_, true)) => {
                self.ignored.insert(id, Ignored::Finished(fingerprint));
                return false;
            }
            Some(&(offset, false)) => Some(offset),
            None => self.checkpoints.lock().get(fingerprint).map(|c| c.offset),
        };
        let (offset, cut_offset) = match start {
            Some(o) => (o, o),
            None if !first_start => (0, 0),
            None => {
                let skipped = self.skip_old(&mut file);
                if skipped > 0 {
                    tracing::info!(file = %path.display(), entries = skipped, max_age = ?self.settings.max_age,
                        "first read of this journal: passing over entries older than agent.journal_max_age");
                }
                (skipped, 0)
            }
        };
        file.seek(offset);
        tracing::debug!(file = %path.display(), offset, entries = file.header().n_entries, "following a journal file");
        self.files.push(Followed {
            fingerprint,
            dev: id.0,
            ino: id.1,
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            file,
            cut_offset,
            gone: false,
            at_end_since: None,
            stalled_since: None,
            header_failed_since: None,
            unlinked_reported: false,
            done: false,
        });
        true
    }

    /// Moves past the entries older than `max_age` at the start of a file; returns how many.
    fn skip_old(&self, file: &mut JournalFile) -> u64 {
        let now_us = u64::try_from(store::time::now_ns() / 1000).unwrap_or(0);
        let cutoff = now_us.saturating_sub(u64::try_from(self.settings.max_age.as_micros()).unwrap_or(u64::MAX));
        if self.settings.max_age.is_zero() {
            return 0;
        }
        let h = file.header();
        if h.n_entries > 0 && h.tail_entry_realtime != 0 && h.tail_entry_realtime < cutoff {
            return h.n_entries;
        }
        file.seek(0);
        while let Ok(Next::Entry(at)) = file.next_offset() {
            match file.entry_realtime(at) {
                Ok(t) if t < cutoff => file.advance(),
                // A newer entry, or one that does not read (the read path counts it).
                _ => break,
            }
        }
        file.consumed()
    }

    /// Reads what every file gained (up to a budget each); returns the entries read.
    fn read_round(&mut self) -> usize {
        let mut total = 0;
        let now = Instant::now();
        let max_value = self.settings.max_line_bytes;
        for i in 0..self.files.len() {
            if self.files[i].done {
                continue;
            }
            if let Err(error) = self.files[i].file.refresh() {
                let f = &mut self.files[i];
                let since = *f.header_failed_since.get_or_insert(now);
                if now.duration_since(since) >= STALL_GRACE || f.gone {
                    let path = f.path.clone();
                    f.done = true;
                    self.count_error(&error, &path);
                }
                continue;
            }
            self.files[i].header_failed_since = None;
            let mut budget = ENTRY_BUDGET;
            while budget > 0 {
                if self.batch.bytes >= self.settings.batch_max_bytes {
                    self.cut();
                    if !self.buffer.has_space() {
                        return total + 1;
                    }
                }
                let f = &mut self.files[i];
                match f.file.next_offset() {
                    Ok(Next::End) => {
                        self.at_end(i, now);
                        break;
                    }
                    Ok(Next::Unlinked) => {
                        if self.stalled(i, now) {
                            let f = &mut self.files[i];
                            if !f.unlinked_reported {
                                f.unlinked_reported = true;
                                let error = FormatError::Header {
                                    reason: "the header counts more entries than the entry arrays list",
                                };
                                let path = f.path.clone();
                                self.count_error(&error, &path);
                            }
                            self.at_end(i, now);
                        }
                        break;
                    }
                    Ok(Next::Entry(at)) => {
                        let mut entry = std::mem::take(&mut self.entry);
                        let res = f.file.read_entry(at, max_value, &mut entry);
                        match res {
                            Ok(()) => {
                                f.file.advance();
                                f.stalled_since = None;
                                f.unlinked_reported = false;
                                f.at_end_since = None;
                                self.emit(&entry, now);
                                if entry.unreadable > 0
                                    && let Some(error) = entry.first_error.take()
                                {
                                    let path = self.files[i].path.clone();
                                    self.metrics
                                        .journal_errors
                                        .get_or_create(&vec![("reason", "field")])
                                        .inc_by(u64::from(entry.unreadable));
                                    self.warn(&error, &path, "field");
                                }
                                total += 1;
                                budget -= 1;
                            }
                            Err(error) => {
                                if self.stalled(i, now) {
                                    // Given up: the entry is lost, the reader goes on.
                                    let path = self.files[i].path.clone();
                                    self.count_error(&error, &path);
                                    self.files[i].file.advance();
                                    self.files[i].stalled_since = None;
                                } else {
                                    self.entry = entry;
                                    break;
                                }
                            }
                        }
                        self.entry = entry;
                    }
                    Err(error) => {
                        if self.stalled(i, now) {
                            // The chain is broken: nothing after this point can be found.
                            let f = &mut self.files[i];
                            f.done = true;
                            let path = f.path.clone();
                            self.count_error(&error, &path);
                        }
                        break;
                    }
                }
            }
        }
        let before = self.files.len();
        let mut finished = Vec::new();
        self.files.retain_mut(|f| {
            if f.done {
                finished.push((f.dev, f.ino, position(f)));
                f.file.release();
            }
            !f.done
        });
        if before != self.files.len() {
            for (dev, ino, p) in finished {
                tracing::debug!(file = %p.path.display(), offset = p.offset, "finished a journal file");
                self.known.insert(p.fingerprint, (p.offset, true));
                self.ignored.insert((dev, ino), Ignored::Finished(p.fingerprint));
                self.batch.first_at.get_or_insert(now);
                self.finished.push(p);
            }
            self.metrics.journal_files_open.set(self.files.len() as i64);
        }
        total
    }

    /// Whether the read position has failed long enough to give up on it: at once in a file that is not
    /// being written, after [`STALL_GRACE`] in one that is.
    fn stalled(&mut self, i: usize, now: Instant) -> bool {
        let f = &mut self.files[i];
        let since = *f.stalled_since.get_or_insert(now);
        let online = f.file.header().state == State::Online;
        !online || now.duration_since(since) >= STALL_GRACE
    }

    /// At the end of what a file lists: an archived file, or a renamed or deleted one that stopped
    /// growing, is finished.
    fn at_end(&mut self, i: usize, now: Instant) {
        let f = &mut self.files[i];
        f.stalled_since = None;
        f.file.release();
        let since = *f.at_end_since.get_or_insert(now);
        let archived_name = f.path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains('@'));
        let finished = f.file.header().state == State::Archived
            || ((f.gone || archived_name) && now.duration_since(since) >= ROTATED_GRACE);
        if finished {
            f.done = true;
        }
    }

    fn count_error(&mut self, error: &FormatError, path: &Path) {
        let reason = error.reason();
        self.metrics.journal_errors.get_or_create(&vec![("reason", reason)]).inc();
        self.warn(error, path, reason);
    }

    fn warn(&mut self, error: &FormatError, path: &Path, reason: &'static str) {
        if let Some(suppressed) = self.warnings.allow(reason, Instant::now()) {
            tracing::warn!(%error, file = %path.display(), reason, suppressed,
                "cannot read part of a journal file; skipping it (see lumen_agent_journal_errors_total)");
        }
    }

    /// Adds an entry to the batch (or counts it as left out by the unit filters).
    fn emit(&mut self, entry: &Entry, now: Instant) {
        self.metrics.journal_entries.inc();
        let Some(m) = self.mapping.map(entry) else {
            self.metrics.journal_entries_filtered.inc();
            return;
        };
        let bytes = m.line.len() + m.fields.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
        let e = EntryAdapter {
            timestamp: Some(Timestamp {
                seconds: m.time_ns.div_euclid(1_000_000_000),
                nanos: m.time_ns.rem_euclid(1_000_000_000) as i32,
            }),
            line: m.line.into_bytes(),
            structured_metadata: m
                .fields
                .into_iter()
                .map(|(n, v)| LabelPairAdapter { name: n.into_bytes(), value: v.into_bytes() })
                .collect(),
            parsed: Vec::new(),
        };
        self.batch.push(&m.labels, e, bytes, now);
    }

    fn positions_moved(&self) -> bool {
        !self.finished.is_empty() || self.files.iter().any(|f| f.file.consumed() != f.cut_offset)
    }

    /// Cuts the batch into the disk buffer with the position each file reached.
    fn cut(&mut self) {
        if self.batch.entries == 0 && !self.positions_moved() {
            self.batch.first_at = None;
            return;
        }
        let mut positions: Vec<Position> = std::mem::take(&mut self.finished);
        for f in &self.files {
            if f.file.consumed() != f.cut_offset {
                positions.push(position(f));
            }
        }
        let batch = std::mem::take(&mut self.batch);
        crate::tail::append_batch(&self.buffer, &self.metrics, positions, batch.streams);
        for f in &mut self.files {
            f.cut_offset = f.file.consumed();
            self.known.insert(f.fingerprint, (f.cut_offset, false));
        }
        self.metrics.batches_cut.inc();
    }
}

impl ReadLoop for JournalReader {
    fn discover(&mut self) {
        JournalReader::discover(self);
    }

    fn read_round(&mut self) -> usize {
        JournalReader::read_round(self)
    }

    fn positions_moved(&self) -> bool {
        JournalReader::positions_moved(self)
    }

    fn cut(&mut self) {
        JournalReader::cut(self);
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

fn position(f: &Followed) -> Position {
    Position {
        fingerprint: f.fingerprint,
        offset: f.file.consumed(),
        container_dir: f.dir.clone(),
        path: f.path.clone(),
    }
}

/// Whether a position or checkpoint is a journal file's: a `*.journal` file under one of `dirs`.
pub fn is_journal_file(path: &Path, container_dir: &Path, dirs: &[PathBuf]) -> bool {
    path.extension().is_some_and(|e| e == "journal") && dirs.iter().any(|d| container_dir.starts_with(d))
}

/// Removes from `positions` those of journal files under `dirs`, and returns them.
pub fn take_positions(positions: &mut HashMap<u64, Position>, dirs: &[PathBuf]) -> HashMap<u64, Position> {
    let ours: Vec<u64> =
        positions.iter().filter(|(_, p)| is_journal_file(&p.path, &p.container_dir, dirs)).map(|(fp, _)| *fp).collect();
    ours.into_iter().filter_map(|fp| positions.remove_entry(&fp)).collect()
}
