//! The quarantine: `<data>/quarantine/`, where the stores set aside files they cannot use instead of
//! deleting, truncating or overwriting them. A file keeps its path relative to the data directory
//! (`quarantine/logs/tenant=t/date=d/<id>.parquet`); a name already taken gets `.1`, `.2`, … appended,
//! so nothing in the quarantine is ever overwritten either. A file that was expected but missing is
//! recorded as a note `<path>.missing`.
//!
//! Every file put here is logged at ERROR with its original path and the reason, and counted in
//! `lumen_store_quarantined_files_total` (`lumen_metric_store_…` for the metric store). Parts set aside
//! stay in their manifest's `quarantined` list, so that queries over their tenant and time range keep
//! saying that data is missing ([`SkippedPart`]) until an operator deletes their files from the quarantine,
//! or until their days are past the retention period: then retention deletes them as it would have
//! deleted the parts (`manifest::expire_quarantined`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::manifest::sync_dir;
use crate::metrics::StoreMetrics;

/// The directory under the data directory.
pub(crate) const DIR: &str = "quarantine";

/// A part that a read left out because it cannot be read: found damaged or missing at a start (and set
/// aside into the quarantine), or failing during a read since. Queries whose tenant and time range
/// overlap it answer from the rest and should say so; its `Display` is the warning to pass on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedPart {
    /// The part's Parquet file: where it lies now (in the quarantine once set aside).
    pub file: PathBuf,
    /// First and last time of its rows, nanoseconds.
    pub min_time_ns: i64,
    pub max_time_ns: i64,
    /// Rows (log entries or samples) it holds.
    pub rows: u64,
    /// Why it cannot be read.
    pub reason: String,
}

impl std::fmt::Display for SkippedPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "results may be incomplete: {} rows from {} to {} are in a part that cannot be read ({}: {})",
            self.rows,
            crate::time::format_rfc3339_ns(self.min_time_ns),
            crate::time::format_rfc3339_ns(self.max_time_ns),
            // The file's name only: clients see this, and the server's paths are none of their business.
            self.file.file_name().map_or_else(|| self.file.display().to_string(), |n| n.to_string_lossy().into_owned()),
            without_dirs(&self.reason)
        )
    }
}

/// `text` with every path in it cut to its last component (the errors of the Parquet reader name the file by
/// its full path).
fn without_dirs(text: &str) -> String {
    text.split(' ')
        .map(|word| match word.rfind('/') {
            Some(i) if word.starts_with('/') => &word[i + 1..],
            _ => word,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sets files aside under `<data>/quarantine/`.
pub(crate) struct Quarantine {
    data_dir: PathBuf,
    metrics: Arc<StoreMetrics>,
}

impl Quarantine {
    pub(crate) fn new(data_dir: &Path, metrics: Arc<StoreMetrics>) -> Quarantine {
        Quarantine { data_dir: data_dir.to_path_buf(), metrics }
    }

    /// Where `path` (a file inside the data directory) goes in the quarantine: the same relative path,
    /// with a suffix while that name is taken.
    fn target(&self, path: &Path, suffix: &str) -> PathBuf {
        let rel = path.strip_prefix(&self.data_dir).unwrap_or_else(|_| Path::new(path.file_name().unwrap_or_default()));
        let base = self.data_dir.join(DIR).join(rel);
        let base = PathBuf::from(format!("{}{suffix}", base.display()));
        let mut candidate = base.clone();
        let mut n = 0;
        while candidate.exists() {
            n += 1;
            candidate = PathBuf::from(format!("{}.{n}", base.display()));
        }
        candidate
    }

    fn prepare(&self, target: &Path) -> Result<PathBuf> {
        let dir = target.parent().unwrap_or(&self.data_dir).to_path_buf();
        fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        Ok(dir)
    }

    /// Moves a damaged file into the quarantine. Returns where it went.
    pub(crate) fn set_aside(&self, path: &Path, reason: &str) -> Result<PathBuf> {
        let target = self.move_file(path)?;
        tracing::error!(
            file = %path.display(),
            moved_to = %target.display(),
            %reason,
            "set a damaged file aside into the quarantine"
        );
        Ok(target)
    }

    /// Moves a damaged file that the store rebuilds (a part index) into the quarantine: nothing is lost,
    /// so this logs at WARN.
    pub(crate) fn replace(&self, path: &Path, reason: &str) -> Result<PathBuf> {
        let target = self.move_file(path)?;
        tracing::warn!(file = %path.display(), moved_to = %target.display(), %reason, "set a damaged file aside into the quarantine");
        Ok(target)
    }

    fn move_file(&self, path: &Path) -> Result<PathBuf> {
        let target = self.target(path, "");
        let dir = self.prepare(&target)?;
        fs::rename(path, &target).map_err(Error::io("move into quarantine", path))?;
        sync_dir(&dir)?;
        if let Some(from) = path.parent() {
            sync_dir(from)?;
        }
        self.metrics.quarantined_files.inc();
        Ok(target)
    }

    /// Keeps a copy of a damaged file that stays in use (a write-ahead-log segment whose intact records
    /// are replayed). A copy of the same length already there is taken to be this one: a restart before
    /// the file is gone does not copy it again. Returns the copy, or None when it existed.
    pub(crate) fn keep_copy(&self, path: &Path, reason: &str) -> Result<Option<PathBuf>> {
        let len = fs::metadata(path).map_err(Error::io("stat", path))?.len();
        let rel = path.strip_prefix(&self.data_dir).unwrap_or(path);
        let earlier = self.data_dir.join(DIR).join(rel);
        if fs::metadata(&earlier).is_ok_and(|m| m.len() == len) {
            return Ok(None);
        }
        let target = self.target(path, "");
        let dir = self.prepare(&target)?;
        let mut out =
            OpenOptions::new().write(true).create_new(true).open(&target).map_err(Error::io("create", &target))?;
        let mut src = File::open(path).map_err(Error::io("open", path))?;
        std::io::copy(&mut src, &mut out).and_then(|_| out.sync_all()).map_err(Error::io("copy into", &target))?;
        sync_dir(&dir)?;
        self.metrics.quarantined_files.inc();
        tracing::error!(file = %path.display(), copy = %target.display(), %reason, "kept a copy of a damaged file in the quarantine");
        Ok(Some(target))
    }

    /// Records in the quarantine that an expected file is missing: a note `<path>.missing` saying why it
    /// was expected. Returns the note.
    pub(crate) fn note_missing(&self, path: &Path, reason: &str) -> Result<PathBuf> {
        let target = self.target(path, ".missing");
        let dir = self.prepare(&target)?;
        let mut f =
            OpenOptions::new().write(true).create_new(true).open(&target).map_err(Error::io("create", &target))?;
        writeln!(f, "{} is missing: {reason}", path.display())
            .and_then(|()| f.sync_all())
            .map_err(Error::io("write", &target))?;
        sync_dir(&dir)?;
        self.metrics.quarantined_files.inc();
        tracing::error!(file = %path.display(), note = %target.display(), %reason, "a file the store needs is missing");
        Ok(target)
    }

    /// The path of a quarantined file relative to the data directory, as the manifests record it.
    pub(crate) fn relative(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.data_dir).map(Path::to_path_buf).unwrap_or_else(|_| path.to_path_buf())
    }

    pub(crate) fn metrics(&self) -> &Arc<StoreMetrics> {
        &self.metrics
    }
}
