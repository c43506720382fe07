//! The format version of a data directory: `<data>/format.json`, `{"format": N, "written_by": "0.1.0"}`.
//!
//! A server refuses a directory of a newer format (it cannot know what it would break) and upgrades an
//! older one in place, step by step, before anything else reads it ([`UPGRADES`]). A directory without the
//! file was written before the file existed: it is format 1. Format 1 is the only format so far; every
//! change to what is on disk that an older server would misread raises [`FORMAT`] and adds a step.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The format this build writes and reads.
pub const FORMAT: u32 = 1;

const FILE: &str = "format.json";

#[derive(Debug, Serialize, Deserialize)]
struct Stamp {
    format: u32,
    /// The version of lumen that last wrote the stamp, for the message a newer directory gets.
    #[serde(default)]
    written_by: String,
}

/// Upgrade steps: `UPGRADES[i]` takes a directory from format `i + 1` to `i + 2`. Empty while there is
/// one format.
const UPGRADES: &[fn(&Path) -> Result<()>] = &[];

/// Checks the directory's format, upgrades an older one in place, and stamps it with this build's. Called
/// with the data directory locked, before the stores read it.
///
/// # Errors
/// [`Error::Refused`] for a newer format or an unreadable stamp; I/O errors.
pub fn check_and_stamp(data_dir: &Path) -> Result<()> {
    let path = data_dir.join(FILE);
    let stamp: Option<Stamp> = match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
            Error::Refused {
                what: "format stamp",
                path: path.clone(),
                reason: format!("it does not parse ({e})"),
                remedy: "it names the on-disk format of this directory; restore it, or delete it only if this \
                     directory was written by lumen 0.1 (format 1)"
                    .to_string(),
            }
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::Io { op: "read", path, source: e }),
    };
    let found = stamp.as_ref().map_or(1, |s| s.format);
    if found > FORMAT {
        let by = stamp.map(|s| s.written_by).filter(|v| !v.is_empty()).unwrap_or_else(|| "a newer lumen".into());
        return Err(Error::Refused {
            what: "data directory",
            path: data_dir.to_path_buf(),
            reason: format!(
                "it is in on-disk format {found}, written by {by}; this lumen ({}) reads format {FORMAT} and older",
                env!("CARGO_PKG_VERSION")
            ),
            remedy: "run that version of lumen or a newer one (a format is never downgraded), or start this \
                     one on a snapshot taken before the upgrade"
                .to_string(),
        });
    }
    for (i, step) in UPGRADES.iter().enumerate().skip(found as usize - 1) {
        tracing::warn!(dir = %data_dir.display(), from = i + 1, to = i + 2, "upgrading the data directory's on-disk format");
        step(data_dir)?;
        crate::manifest::store_json(
            data_dir,
            FILE,
            "format stamp",
            &Stamp { format: i as u32 + 2, written_by: env!("CARGO_PKG_VERSION").to_string() },
        )?;
    }
    let current = Stamp { format: FORMAT, written_by: env!("CARGO_PKG_VERSION").to_string() };
    if stamp.is_none_or(|s| s.format != FORMAT || s.written_by != current.written_by) {
        crate::manifest::store_json(data_dir, FILE, "format stamp", &current)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_stamped_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        check_and_stamp(dir.path()).unwrap();
        let stamp: Stamp = serde_json::from_slice(&std::fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        assert_eq!(stamp.format, FORMAT);
        check_and_stamp(dir.path()).unwrap();
        std::fs::write(dir.path().join(FILE), r#"{"format": 7, "written_by": "9.9.9"}"#).unwrap();
        let err = check_and_stamp(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format 7") && err.contains("9.9.9") && err.contains("run that version"), "{err}");
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        let err = check_and_stamp(dir.path()).unwrap_err().to_string();
        assert!(err.contains("does not parse"), "{err}");
    }
}
