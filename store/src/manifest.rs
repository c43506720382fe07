//! The manifest: the list of live parts and the write-ahead-log checkpoint, in one JSON file that is
//! replaced atomically (write, fsync, rename, fsync the directory). It is the single source of truth: a
//! part file that the manifest does not name is an unfinished flush or compaction, deleted at startup
//! (set aside into the quarantine instead when the manifest looks older than the data).
//! A flush is committed by the manifest write that adds its parts and moves the checkpoint together, so
//! after a crash every WAL record is either in a listed part or replayed, never both.
//!
//! Without its manifest a store cannot tell its parts from leftovers, nor where the WAL stops being in
//! parts: a missing manifest next to part files stops the start ([`Manifest::load`]) rather than starting
//! empty, and part numbers are taken above every part file on disk (quarantine included), so a lost or
//! older manifest can never make a new part land on an existing file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub(crate) const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) version: u32,
    /// Every WAL record with a sequence number at or below this is in a part.
    pub(crate) wal_checkpoint: u64,
    pub(crate) next_part_id: u64,
    pub(crate) parts: Vec<PartMeta>,
    /// The highest batch sequence stored of each producer (tenant, name) that numbers its batches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) producers: Vec<(String, String, u64)>,
    /// Parts set aside into the quarantine (see `quarantine.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) quarantined: Vec<QuarantinedPart>,
}

/// A part that was set aside into the quarantine (damaged or missing at a start). It stays listed so that
/// reads over its tenant and time range say that data is missing, until none of its `files` is left in
/// the quarantine (an operator deleted them, having restored or given up the data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct QuarantinedPart {
    pub(crate) tenant: String,
    pub(crate) min_time_ns: i64,
    pub(crate) max_time_ns: i64,
    pub(crate) rows: u64,
    /// Where its files (or the note of a missing one) lie, relative to the data directory; the first is
    /// the Parquet file.
    pub(crate) files: Vec<PathBuf>,
    pub(crate) reason: String,
}

/// Quarantined parts whose rows all lie in days before their tenant's retention period: retention would
/// have deleted them had they been readable. Their files leave the quarantine and their entries the list
/// (so queries stop warning about data that is past retention anyway). Returns how many; the caller
/// stores the manifest before anything else relies on it.
pub(crate) fn expire_quarantined(
    list: &mut Vec<QuarantinedPart>,
    options: &crate::config::StoreOptions,
    now_ns: i64,
) -> Vec<QuarantinedPart> {
    let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(list).into_iter().partition(|q| {
        let period = crate::delete::tenant_period(&options.retention_rules, &q.tenant, options.retention);
        let cutoff = now_ns.saturating_sub(i64::try_from(period.as_nanos()).unwrap_or(i64::MAX));
        crate::time::day_of_ns(q.max_time_ns) < crate::time::day_of_ns(cutoff)
    });
    *list = kept;
    expired
}

/// Deletes the files of expired quarantined parts (after the manifest without them was stored).
pub(crate) fn remove_quarantined_files(expired: &[QuarantinedPart], data_dir: &Path) {
    for q in expired {
        for f in &q.files {
            let _ = std::fs::remove_file(data_dir.join(f));
        }
        tracing::info!(tenant = %q.tenant, file = %q.files.first().map(|f| f.display().to_string()).unwrap_or_default(), "retention deleted a quarantined part past the retention period");
    }
}

impl QuarantinedPart {
    pub(crate) fn still_there(&self, data_dir: &Path) -> bool {
        self.files.iter().any(|f| data_dir.join(f).exists())
    }

    pub(crate) fn skipped(&self, data_dir: &Path) -> crate::quarantine::SkippedPart {
        crate::quarantine::SkippedPart {
            file: self.files.first().map(|f| data_dir.join(f)).unwrap_or_default(),
            min_time_ns: self.min_time_ns,
            max_time_ns: self.max_time_ns,
            rows: self.rows,
            reason: self.reason.clone(),
        }
    }

    pub(crate) fn overlaps(&self, tenant: &str, start_ns: i64, end_ns: i64) -> bool {
        self.tenant == tenant && self.max_time_ns >= start_ns && self.min_time_ns < end_ns
    }
}

/// What the engine knows of a part without opening it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PartMeta {
    pub(crate) id: u64,
    pub(crate) tenant: String,
    /// Day number since the epoch (UTC) of every row.
    pub(crate) day: i64,
    pub(crate) min_time: i64,
    pub(crate) max_time: i64,
    pub(crate) rows: u64,
    pub(crate) parquet_bytes: u64,
    pub(crate) index_bytes: u64,
    /// Columns that hold stream labels.
    pub(crate) labels: Vec<String>,
    /// Columns that hold structured fields.
    pub(crate) fields: Vec<String>,
    /// Fields named like a label of other streams: they live in that label's column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) shared_fields: Vec<String>,
    /// 0 for a flushed part, one more than its highest input for a compacted one.
    pub(crate) level: u32,
    /// Unit of the stored `time` column: the coarsest of ns, us and ms that loses nothing. Coarser units
    /// give smaller deltas, which encode in fewer bits.
    #[serde(default)]
    pub(crate) time_unit: TimeUnitTag,
}

/// The unit a part stores its times in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TimeUnitTag {
    Ms,
    Us,
    #[default]
    Ns,
}

impl TimeUnitTag {
    /// The coarsest unit that represents `ns` exactly.
    pub(crate) fn of(ns: i64) -> TimeUnitTag {
        if ns % 1_000_000 == 0 {
            TimeUnitTag::Ms
        } else if ns % 1_000 == 0 {
            TimeUnitTag::Us
        } else {
            TimeUnitTag::Ns
        }
    }

    pub(crate) fn arrow(self) -> arrow::datatypes::TimeUnit {
        match self {
            TimeUnitTag::Ms => arrow::datatypes::TimeUnit::Millisecond,
            TimeUnitTag::Us => arrow::datatypes::TimeUnit::Microsecond,
            TimeUnitTag::Ns => arrow::datatypes::TimeUnit::Nanosecond,
        }
    }
}

/// See [`PartMeta::is_wide`].
pub(crate) const WIDE_PART_COLUMNS: usize = 256;

impl PartMeta {
    /// Whether the part has more label and field columns than [`WIDE_PART_COLUMNS`]. Its footer (the
    /// Parquet and Arrow schemas and every column chunk's metadata, ~1.4 KiB a column) is then not kept
    /// while the part lives but read by each reader: a tenant with 150,000 distinct field names kept
    /// ~100 MB of footers after one query that opened all its parts.
    pub(crate) fn is_wide(&self) -> bool {
        self.labels.len() + self.fields.len() > WIDE_PART_COLUMNS
    }

    /// Whether the part has a column named `name`: a field, a label column, or a field stored in a label
    /// column of the same name.
    pub(crate) fn has_column(&self, name: &str) -> bool {
        [&self.fields, &self.labels, &self.shared_fields].iter().any(|names| names.iter().any(|n| n == name))
    }

    /// `logs/tenant=<t>/date=<YYYY-MM-DD>`, relative to the data directory.
    pub(crate) fn partition_dir(&self) -> PathBuf {
        partition_dir(&self.tenant, self.day)
    }

    pub(crate) fn parquet_path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.partition_dir()).join(format!("{:016x}.parquet", self.id))
    }

    /// The Parquet file's path under the data directory.
    pub(crate) fn parquet_rel(&self) -> PathBuf {
        self.partition_dir().join(format!("{:016x}.parquet", self.id))
    }

    pub(crate) fn index_path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.partition_dir()).join(format!("{:016x}.idx", self.id))
    }

    pub(crate) fn disk_bytes(&self) -> u64 {
        self.parquet_bytes + self.index_bytes
    }
}

pub(crate) fn partition_dir(tenant: &str, day: i64) -> PathBuf {
    PathBuf::from("logs").join(format!("tenant={tenant}")).join(format!("date={}", crate::time::format_day(day)))
}

impl Manifest {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("manifest.json")
    }

    /// Reads the manifest; a new store has none.
    ///
    /// # Errors
    /// [`Error::Refused`] when the manifest is missing but part files exist; `Corrupt` when it does not
    /// parse or comes from a newer version.
    pub(crate) fn load(data_dir: &Path) -> Result<Manifest> {
        let m: Option<Manifest> = load_json(data_dir, "manifest.json", "manifest")?;
        let Some(m) = m else {
            refuse_without_manifest(&Self::path(data_dir), &data_dir.join("logs"))?;
            return Ok(Manifest {
                version: MANIFEST_VERSION,
                wal_checkpoint: 0,
                next_part_id: 1,
                parts: Vec::new(),
                producers: Vec::new(),
                quarantined: Vec::new(),
            });
        };
        check_version(m.version, &Self::path(data_dir))?;
        Ok(m)
    }

    pub(crate) fn store(&self, data_dir: &Path) -> Result<()> {
        store_json(data_dir, "manifest.json", "manifest", self)
    }
}

/// Part files (`<hex id>.parquet`, `.idx`, the sidecar `.remote` of a part in the object store, a
/// download `.fetch` left by a crash, and quarantined copies with a suffix) under `root`'s
/// `tenant=*/date=*/` directories, with their ids.
pub(crate) fn part_files(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut out = Vec::new();
    for tenant in fs::read_dir(root).into_iter().flatten().flatten() {
        if !tenant.file_name().to_string_lossy().starts_with("tenant=") {
            continue;
        }
        for day in fs::read_dir(tenant.path()).into_iter().flatten().flatten() {
            if !day.file_name().to_string_lossy().starts_with("date=") {
                continue;
            }
            for f in fs::read_dir(day.path()).into_iter().flatten().flatten() {
                let name = f.file_name();
                let name = name.to_string_lossy();
                let mut pieces = name.split('.');
                let (Some(stem), Some(ext)) = (pieces.next(), pieces.next()) else {
                    continue;
                };
                if !matches!(ext, "parquet" | "idx" | crate::remote::SIDECAR_EXT | "fetch") {
                    continue;
                }
                if let Ok(id) = u64::from_str_radix(stem, 16) {
                    out.push((id, f.path()));
                }
            }
        }
    }
    out.sort();
    out
}

/// The lowest part id above every part file of a store (`logs` or `metrics`) on disk, quarantine included.
pub(crate) fn next_free_part_id(data_dir: &Path, store: &str) -> u64 {
    let live = part_files(&data_dir.join(store));
    let quarantined = part_files(&data_dir.join(crate::quarantine::DIR).join(store));
    live.iter().chain(&quarantined).map(|(id, _)| id + 1).max().unwrap_or(1)
}

/// A missing manifest is a new store only when no part file exists under `parts_root`. Otherwise the
/// manifest was lost: starting without it would serve nothing of those parts, replay the WAL from its
/// start and remove the parts as leftovers, so the start is refused.
pub(crate) fn refuse_without_manifest(manifest: &Path, parts_root: &Path) -> Result<()> {
    let files = part_files(parts_root);
    let Some((_, first)) = files.first() else {
        return Ok(());
    };
    Err(Error::Refused {
        what: "manifest",
        path: manifest.to_path_buf(),
        reason: format!(
            "missing, but {} part files exist under {} (such as {}); the manifest lists the live parts and how \
             much of the write-ahead log they hold, and starting without it would hide those parts and remove \
             them as leftovers",
            files.len(),
            parts_root.display(),
            first.display()
        ),
        remedy: format!(
            "restore {} from a backup of the data directory and start again; to start without those parts \
             instead, move the date=… directories under {} out of the data directory",
            manifest.file_name().unwrap_or_default().to_string_lossy(),
            parts_root.display()
        ),
    })
}

/// Reads `<dir>/<name>` as JSON; `None` when the file does not exist.
pub(crate) fn load_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
    what: &'static str,
) -> Result<Option<T>> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Refused {
            what,
            path: path.clone(),
            reason: format!("does not parse ({e})"),
            remedy: format!(
                "restore {name} from a backup of the data directory and start again; the store does not start \
                 without it, as it could not tell live parts from leftovers"
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io { op: "read", path, source: e }),
    }
}

/// Refuses a manifest written by a newer format.
pub(crate) fn check_version(version: u32, path: &Path) -> Result<()> {
    if version == MANIFEST_VERSION {
        return Ok(());
    }
    Err(Error::Corrupt {
        what: "manifest",
        path: path.to_path_buf(),
        reason: format!(
            "version {version} is not {MANIFEST_VERSION}: a newer lumen wrote it; run that version or a newer one \
             (a format is never downgraded), or start this one on a snapshot taken before the upgrade"
        ),
    })
}

/// Replaces `<dir>/<name>` atomically with `value` as JSON: write a temporary file, fsync, rename, fsync
/// the directory.
pub(crate) fn store_json<T: Serialize>(dir: &Path, name: &str, what: &'static str, value: &T) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let bytes =
        serde_json::to_vec(value).map_err(|e| Error::Corrupt { what, path: path.clone(), reason: e.to_string() })?;
    let mut f = File::create(&tmp).map_err(Error::io("create", &tmp))?;
    f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(Error::io("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(Error::io("rename", &tmp))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("sync", dir))
}
