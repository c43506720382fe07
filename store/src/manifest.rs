//! The manifest: the list of live parts and the write-ahead-log checkpoint, in one JSON file that is
//! replaced atomically (write, fsync, rename, fsync the directory). It is the single source of truth: a
//! part file that the manifest does not name is an unfinished flush or compaction, deleted at startup.
//! A flush is committed by the manifest write that adds its parts and moves the checkpoint together, so
//! after a crash every WAL record is either in a listed part or replayed, never both.

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

impl PartMeta {
    /// `logs/tenant=<t>/date=<YYYY-MM-DD>`, relative to the data directory.
    pub(crate) fn partition_dir(&self) -> PathBuf {
        partition_dir(&self.tenant, self.day)
    }

    pub(crate) fn parquet_path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.partition_dir()).join(format!("{:016x}.parquet", self.id))
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

    pub(crate) fn load(data_dir: &Path) -> Result<Manifest> {
        let m: Option<Manifest> = load_json(data_dir, "manifest.json", "manifest")?;
        let Some(m) = m else {
            return Ok(Manifest {
                version: MANIFEST_VERSION,
                wal_checkpoint: 0,
                next_part_id: 1,
                parts: Vec::new(),
                producers: Vec::new(),
            });
        };
        check_version(m.version, &Self::path(data_dir))?;
        Ok(m)
    }

    pub(crate) fn store(&self, data_dir: &Path) -> Result<()> {
        store_json(data_dir, "manifest.json", "manifest", self)
    }
}

/// Reads `<dir>/<name>` as JSON; `None` when the file does not exist.
pub(crate) fn load_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
    what: &'static str,
) -> Result<Option<T>> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Corrupt {
            what,
            path: path.clone(),
            reason: e.to_string(),
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
        reason: format!("version {version} is not {MANIFEST_VERSION}; this lumen is too old for it"),
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
