//! Point-in-time snapshots of the whole data directory (`POST /api/v1/admin/snapshot`), as Prometheus' and
//! VictoriaMetrics' snapshots: `<data>/snapshots/<UTC time>-<n>/`, itself a data directory a server can
//! start on (the restore), made while ingest goes on.
//!
//! Both stores' flushes, compactions and deletions wait while it is made, so their manifests, catalogs,
//! parts and write-ahead logs agree with each other; appends go on. Parquet parts and index files never
//! change once written, and older WAL segments are never appended to: they are hard-linked (copied where
//! the filesystem refuses links). Everything else (manifests, catalogs, delivery marks, the newest WAL
//! segment, which is still being appended to) is copied; a copy of the newest segment may end in a torn
//! record, which replay cuts as it does after a crash. Every write acknowledged before the snapshot began
//! is in it: in a part or in the WAL.
//!
//! Left out: `lock`, `snapshots/`, `quarantine/` (damaged files set aside; copy them yourself if you want
//! them) and temporary files. A snapshot holds disk space until deleted, and is not counted by the disk
//! budget.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::{LogStore, MetricStore};

/// The directory snapshots are made in.
pub const DIR: &str = "snapshots";

/// The directory an object-store sync stages its views in (see [`stage`]); never part of a snapshot.
pub const STAGING: &str = "bucket-sync";

/// Whether a directory at the top of a data directory holds copies set aside rather than the directory's
/// own data: the snapshots, the sync's staging, the quarantined parts.
pub fn is_set_aside(name: &std::ffi::OsStr) -> bool {
    name == DIR || name == STAGING || name == crate::quarantine::DIR
}

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Its name: `<YYYYMMDDTHHMMSSZ>-<n>`.
    pub name: String,
    pub path: PathBuf,
    pub files: usize,
    pub linked_bytes: u64,
    pub copied_bytes: u64,
}

/// Makes a snapshot of the data directory both stores live in.
///
/// # Errors
/// I/O errors; a half-made snapshot directory is removed.
pub async fn create(logs: &LogStore, metrics: &MetricStore) -> Result<Snapshot> {
    // Always in this order: nothing else takes both stores' locks.
    let _logs = logs.quiesce().await;
    let _metrics = metrics.quiesce().await;
    let data = logs.data_dir().to_path_buf();
    tokio::task::spawn_blocking(move || create_blocking(&data))
        .await
        .map_err(|e| Error::Config(format!("the snapshot task failed: {e}")))?
}

fn create_blocking(data: &Path) -> Result<Snapshot> {
    let root = data.join(DIR);
    fs::create_dir_all(&root).map_err(Error::io("create", &root))?;
    let stamp = crate::time::format_rfc3339_compact(crate::time::now_ns());
    let (name, path) = (1..)
        .map(|n| format!("{stamp}-{n}"))
        .map(|name| (root.join(&name), name))
        .find_map(|(p, name)| fs::create_dir(&p).ok().map(|()| (name, p)))
        .expect("some name is free");
    let mut snap = Snapshot { name, path: path.clone(), files: 0, linked_bytes: 0, copied_bytes: 0 };
    let res = copy_tree(data, &path, data, &mut snap, true).and_then(|()| {
        crate::manifest::sync_dir(&path)?;
        crate::manifest::sync_dir(&root)
    });
    if let Err(e) = res {
        let _ = fs::remove_dir_all(&path);
        return Err(e);
    }
    tracing::info!(snapshot = %path.display(), files = snap.files, linked_bytes = snap.linked_bytes, copied_bytes = snap.copied_bytes, "snapshot made");
    Ok(snap)
}

/// The newest WAL segment of `dir` (the one still appended to), by name.
fn newest_segment(dir: &Path) -> Option<PathBuf> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    names.sort();
    names.pop()
}

/// A consistent view of the data directory without its write-ahead logs, made the way a snapshot is, at
/// `<data>/bucket-sync/<name>` (replaced if it exists): what an object-store sync uploads. Its manifests'
/// WAL checkpoints name records that are in its parts; a server started on it begins the WAL after them.
///
/// # Errors
/// I/O errors; a half-made view is removed.
pub async fn stage(logs: &LogStore, metrics: &MetricStore, name: &str) -> Result<Snapshot> {
    let _logs = logs.quiesce().await;
    let _metrics = metrics.quiesce().await;
    let data = logs.data_dir().to_path_buf();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let path = data.join(STAGING).join(&name);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(Error::io("remove", &path))?;
        }
        fs::create_dir_all(&path).map_err(Error::io("create", &path))?;
        let mut snap = Snapshot { name, path: path.clone(), files: 0, linked_bytes: 0, copied_bytes: 0 };
        if let Err(e) = copy_tree(&data, &path, &data, &mut snap, false) {
            let _ = fs::remove_dir_all(&path);
            return Err(e);
        }
        Ok(snap)
    })
    .await
    .map_err(|e| Error::Config(format!("the staging task failed: {e}")))?
}

fn copy_tree(src: &Path, dst: &Path, data: &Path, snap: &mut Snapshot, wal: bool) -> Result<()> {
    let newest: Vec<PathBuf> =
        [data.join("wal"), data.join("metrics").join("wal")].iter().filter_map(|d| newest_segment(d)).collect();
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((from, to)) = stack.pop() {
        for entry in fs::read_dir(&from).map_err(Error::io("read", &from))? {
            let entry = entry.map_err(Error::io("read", &from))?;
            let name = entry.file_name();
            let (src_path, dst_path) = (entry.path(), to.join(&name));
            let top = from == data;
            let n = name.to_string_lossy();
            let wal_dir = (top || from == data.join("metrics")) && n == "wal";
            if (top && (is_set_aside(&name) || n == "lock"))
                || (from == data.join("metrics") && n == "lock")
                || (wal_dir && !wal)
                || n.ends_with(".tmp")
            {
                continue;
            }
            let ft = entry.file_type().map_err(Error::io("stat", &src_path))?;
            if ft.is_dir() {
                fs::create_dir(&dst_path).map_err(Error::io("create", &dst_path))?;
                stack.push((src_path, dst_path));
                continue;
            }
            if !ft.is_file() {
                continue;
            }
            let immutable = matches!(src_path.extension().and_then(|x| x.to_str()), Some("parquet" | "idx"))
                || (src_path.extension().is_some_and(|x| x == "wal") && !newest.contains(&src_path));
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if immutable && fs::hard_link(&src_path, &dst_path).is_ok() {
                snap.linked_bytes += len;
            } else {
                let copied = fs::copy(&src_path, &dst_path).map_err(Error::io("copy", &src_path))?;
                fs::File::open(&dst_path).and_then(|f| f.sync_all()).map_err(Error::io("sync", &dst_path))?;
                snap.copied_bytes += copied;
            }
            snap.files += 1;
        }
        crate::manifest::sync_dir(&to)?;
    }
    Ok(())
}

/// The snapshots under `data`, oldest first.
pub fn list(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(data.join(DIR))
        .map(|rd| {
            rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Deletes the snapshot `name`. False when there is none by that name.
///
/// # Errors
/// A name that is not a snapshot's; I/O errors.
pub fn delete(data: &Path, name: &str) -> Result<bool> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Error::Config(format!("{name:?} is not a snapshot name")));
    }
    let path = data.join(DIR).join(name);
    match fs::remove_dir_all(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::Io { op: "remove", path, source: e }),
    }
}
