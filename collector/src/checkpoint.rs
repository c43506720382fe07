//! Read positions of log files that the server has acknowledged, in `<data_dir>/checkpoints.json`.
//!
//! A file is known by a fingerprint of its first line (the kubelet's CRI and Docker lines start with a
//! nanosecond timestamp, so first lines do not repeat), not by its path: a rotation renames the file, and
//! its gzipped copy later has the same first line. The device and inode are kept to tell a renamed file
//! from a new one while it is open.
//!
//! The offset of a file moves only when the batch that holds its lines up to that offset is acknowledged,
//! together with the buffer's acknowledged sequence number, in one atomic replace of the file (write a
//! temporary file, fsync, rename, fsync the directory). After `kill -9` the agent resumes from there:
//! nothing acknowledged is lost and nothing unacknowledged is skipped.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "checkpoints.json";
const VERSION: u32 = 1;
/// A checkpoint of a file that has left the disk is kept this long, for a gzipped rotation of it that may
/// still appear.
const GONE_RETENTION_NS: i64 = 24 * 3600 * 1_000_000_000;

/// The acknowledged position of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    /// Bytes of the (decompressed) file delivered and acknowledged.
    pub offset: u64,
    /// The container directory the file lives in.
    pub container_dir: PathBuf,
    /// The last path it was seen at.
    pub path: PathBuf,
    /// When the file was last seen gone from the disk (ns), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone_at_ns: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    /// The name this agent's batches carry (`X-Lumen-Producer`); it lives and dies with these checkpoints,
    /// because the server drops a batch whose sequence it has stored before under this name.
    #[serde(default)]
    producer: String,
    /// The highest buffer sequence number acknowledged by the server.
    acked_seq: u64,
    /// Fingerprints as 16 hex digits (JSON numbers lose precision above 2^53).
    files: HashMap<String, FileCheckpoint>,
}

/// The acknowledged positions of every file, and the acknowledged buffer sequence.
#[derive(Debug)]
pub struct Checkpoints {
    path: PathBuf,
    producer: String,
    acked_seq: u64,
    files: HashMap<u64, FileCheckpoint>,
    dirty: bool,
    /// The journal reader's directories: [`Checkpoints::mark_present`] leaves the checkpoints of their
    /// `*.journal` files to [`Checkpoints::mark_journal_present`].
    journal_dirs: Vec<PathBuf>,
}

impl Checkpoints {
    /// Loads `<data_dir>/checkpoints.json`, or starts empty when there is none.
    ///
    /// # Errors
    /// An unreadable or corrupt file: the agent refuses to guess positions (that could resend or skip
    /// whole files); the message says to move the file away to start over.
    pub fn load(data_dir: &Path) -> Result<Checkpoints, CheckpointError> {
        let path = data_dir.join(FILE);
        let mut cp = Checkpoints {
            path: path.clone(),
            producer: new_producer(&path),
            acked_seq: 0,
            files: HashMap::new(),
            dirty: true,
            journal_dirs: Vec::new(),
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cp),
            Err(source) => return Err(CheckpointError::Io { path, source }),
        };
        let disk: OnDisk = serde_json::from_slice(&bytes)
            .map_err(|e| CheckpointError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        if disk.version != VERSION {
            return Err(CheckpointError::Corrupt { path, reason: format!("unknown version {}", disk.version) });
        }
        cp.acked_seq = disk.acked_seq;
        if !disk.producer.is_empty() {
            cp.producer = disk.producer;
            cp.dirty = false;
        }
        for (k, v) in disk.files {
            let fp = u64::from_str_radix(&k, 16).map_err(|_| CheckpointError::Corrupt {
                path: path.clone(),
                reason: format!("bad fingerprint {k:?}"),
            })?;
            cp.files.insert(fp, v);
        }
        Ok(cp)
    }

    /// The producer name the agent's batches carry; new with every new checkpoint file.
    pub fn producer(&self) -> &str {
        &self.producer
    }

    /// The highest acknowledged buffer sequence number.
    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// The checkpoint of a fingerprint.
    pub fn get(&self, fingerprint: u64) -> Option<&FileCheckpoint> {
        self.files.get(&fingerprint)
    }

    /// Whether any file of this container directory has a checkpoint (the agent has followed it before).
    pub fn knows_container(&self, dir: &Path) -> bool {
        self.files.values().any(|f| f.container_dir == dir)
    }

    /// Records that the batch `seq` was acknowledged, with the file positions it carried.
    pub fn acknowledge(&mut self, seq: u64, positions: &[crate::buffer::Position]) {
        self.acked_seq = self.acked_seq.max(seq);
        for p in positions {
            let entry = self.files.entry(p.fingerprint).or_insert_with(|| FileCheckpoint {
                offset: 0,
                container_dir: p.container_dir.clone(),
                path: p.path.clone(),
                gone_at_ns: None,
            });
            entry.offset = entry.offset.max(p.offset);
            entry.path.clone_from(&p.path);
        }
        self.dirty = true;
    }

    /// Hands the checkpoints of `*.journal` files under `dirs` to the journal reader: from now on only
    /// [`Checkpoints::mark_journal_present`] marks them present or gone.
    pub fn reserve_journal_dirs(&mut self, dirs: &[PathBuf]) {
        self.journal_dirs = dirs.to_vec();
    }

    /// Marks which checkpointed files are still on disk (by fingerprint); those gone for a day are forgotten.
    /// The journal reader's files are left alone (see [`Checkpoints::reserve_journal_dirs`]).
    pub fn mark_present(&mut self, present: &dyn Fn(u64) -> bool, now_ns: i64) {
        let journal_dirs = std::mem::take(&mut self.journal_dirs);
        let in_scope =
            |f: &FileCheckpoint| !crate::journal::reader::is_journal_file(&f.path, &f.container_dir, &journal_dirs);
        self.mark(&in_scope, present, now_ns);
        self.journal_dirs = journal_dirs;
    }

    /// [`Checkpoints::mark_present`] for the journal files under `dirs` only.
    pub fn mark_journal_present(&mut self, dirs: &[PathBuf], present: &dyn Fn(u64) -> bool, now_ns: i64) {
        let in_scope = |f: &FileCheckpoint| crate::journal::reader::is_journal_file(&f.path, &f.container_dir, dirs);
        self.mark(&in_scope, present, now_ns);
    }

    fn mark(&mut self, in_scope: &dyn Fn(&FileCheckpoint) -> bool, present: &dyn Fn(u64) -> bool, now_ns: i64) {
        self.files.retain(|fp, f| {
            if !in_scope(f) {
                return true;
            }
            if present(*fp) {
                if f.gone_at_ns.take().is_some() {
                    self.dirty = true;
                }
                true
            } else {
                match f.gone_at_ns {
                    None => {
                        f.gone_at_ns = Some(now_ns);
                        self.dirty = true;
                        true
                    }
                    Some(t) if now_ns - t > GONE_RETENTION_NS => {
                        self.dirty = true;
                        false
                    }
                    Some(_) => true,
                }
            }
        });
    }

    /// Writes the checkpoints if they changed, atomically and durably.
    ///
    /// # Errors
    /// Writing, syncing or renaming failed.
    pub fn save(&mut self) -> Result<(), CheckpointError> {
        if !self.dirty {
            return Ok(());
        }
        let disk = OnDisk {
            version: VERSION,
            producer: self.producer.clone(),
            acked_seq: self.acked_seq,
            files: self.files.iter().map(|(fp, f)| (format!("{fp:016x}"), f.clone())).collect(),
        };
        let json = serde_json::to_vec(&disk)
            .map_err(|e| CheckpointError::Corrupt { path: self.path.clone(), reason: e.to_string() })?;
        let tmp = self.path.with_extension("json.tmp");
        let io = |source| CheckpointError::Io { path: self.path.clone(), source };
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.sync_data().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        self.dirty = false;
        Ok(())
    }
}

/// A producer name that no earlier checkpoint file of any agent had: the host's boot-unique clock, the
/// process id and the path, hashed.
fn new_producer(path: &Path) -> String {
    let seed = format!("{}/{}/{}", store::time::now_ns(), std::process::id(), path.display());
    format!("agent-{:016x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

/// The checkpoint file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "checkpoint file {path} is corrupt ({reason}); move it away to start over (files are then read from \
         their beginning, which resends what they hold)"
    )]
    Corrupt { path: PathBuf, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::Position;

    fn pos(fp: u64, offset: u64) -> Position {
        Position { fingerprint: fp, offset, container_dir: PathBuf::from("/p/c"), path: PathBuf::from("/p/c/0.log") }
    }

    #[test]
    fn acknowledged_positions_survive_a_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cp = Checkpoints::load(tmp.path()).unwrap();
        assert_eq!(cp.acked_seq(), 0);
        cp.acknowledge(3, &[pos(u64::MAX - 1, 100), pos(7, 5)]);
        cp.acknowledge(4, &[pos(7, 50)]);
        // An older position never moves a checkpoint back.
        cp.acknowledge(2, &[pos(7, 10)]);
        cp.save().unwrap();
        let producer = cp.producer().to_string();
        let cp = Checkpoints::load(tmp.path()).unwrap();
        assert_eq!(cp.producer(), producer, "the producer name is kept with the checkpoints");
        assert_eq!(cp.acked_seq(), 4);
        assert_eq!(cp.get(u64::MAX - 1).unwrap().offset, 100);
        assert_eq!(cp.get(7).unwrap().offset, 50);
        assert!(cp.knows_container(Path::new("/p/c")));
        assert!(!cp.knows_container(Path::new("/p/d")));
    }

    #[test]
    fn a_new_checkpoint_file_gets_a_new_producer_name() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let pa = Checkpoints::load(a.path()).unwrap().producer().to_string();
        let pb = Checkpoints::load(b.path()).unwrap().producer().to_string();
        assert_ne!(pa, pb);
        assert!(pa.starts_with("agent-"));
    }

    #[test]
    fn gone_files_are_forgotten_after_a_day() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cp = Checkpoints::load(tmp.path()).unwrap();
        cp.acknowledge(1, &[pos(1, 1), pos(2, 2)]);
        cp.mark_present(&|fp| fp == 1, 0);
        assert!(cp.get(2).unwrap().gone_at_ns.is_some());
        cp.mark_present(&|fp| fp == 1, GONE_RETENTION_NS + 1);
        assert!(cp.get(2).is_none());
        assert!(cp.get(1).is_some());
    }

    #[test]
    fn the_pod_reader_leaves_journal_checkpoints_to_the_journal_reader() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cp = Checkpoints::load(tmp.path()).unwrap();
        let dirs = [PathBuf::from("/var/log/journal")];
        cp.reserve_journal_dirs(&dirs);
        let journal = Position {
            fingerprint: 9,
            offset: 3,
            container_dir: PathBuf::from("/var/log/journal/abc"),
            path: PathBuf::from("/var/log/journal/abc/system.journal"),
        };
        cp.acknowledge(1, &[pos(1, 1), journal]);
        // The pod reader sees neither file: only its own is forgotten after a day.
        cp.mark_present(&|_| false, 0);
        cp.mark_present(&|_| false, GONE_RETENTION_NS + 1);
        assert!(cp.get(1).is_none());
        assert_eq!(cp.get(9).unwrap().gone_at_ns, None);
        // The journal reader marks its own, and only its own.
        cp.acknowledge(2, &[pos(1, 1)]);
        cp.mark_journal_present(&dirs, &|_| false, 0);
        assert_eq!(cp.get(9).unwrap().gone_at_ns, Some(0));
        assert_eq!(cp.get(1).unwrap().gone_at_ns, None);
    }

    #[test]
    fn a_corrupt_file_is_an_error_that_says_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(FILE), b"{not json").unwrap();
        let err = Checkpoints::load(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("move it away"), "{err}");
    }
}
