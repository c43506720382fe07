//! A writer that comes back to a tended tree (issue 22). While a node is gone (its writer lease released
//! at a graceful stop, after a final sync that succeeded), another process may write its tree's next
//! commits on its behalf: the retention and compaction of retired trees (`src/retired.rs`), marked
//! `tended_by`. Those commits name parts the node's own data directory lacks, and parts of its own they
//! merged away or expired; parts they wrote took the next ids of the tree. Syncing the node's older state
//! over them would bring expired rows back and could reuse those ids, so the node adopts the newest
//! commit instead: its data directory's data is set aside, the commit restored in its place, and the
//! set-aside data removed once the restore succeeded (restored back if it failed).
//!
//! Nothing is lost by it: a tree is tended only after its writer released the lease, and the writer
//! releases it only after a final sync that succeeded, so the data directory holds nothing the tree's
//! commits do not (its own last commit, then the tended ones that built on it). A data directory records
//! the commit it holds ([`COMMIT_MARKER`], written after each restore and each commit), so that a
//! directory already on the newest commit is not restored again.
//!
//! The adoption happens before the stores open, holding the tree's writer lease, so that no round can
//! commit between the decision and the node's first sync: the lease is handed to the sync.

use std::path::Path;
use std::time::Duration;

use crate::Bucket;
use crate::lease::{Lease, Observed};
use crate::restore::Restored;

/// The file in a data directory that names the commit of its tree it holds all of.
pub const COMMIT_MARKER: &str = "bucket-commit";

/// Where a data directory's own data waits while an adoption restores the newest commit.
const ASIDE: &str = "superseded";

/// The commit `data_dir` recorded as holding, if any.
pub fn recorded_commit(data_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(data_dir.join(COMMIT_MARKER)).ok()?.trim().parse().ok()
}

/// Records durably that `data_dir` holds commit `seq` (temporary file, fsync, rename, fsync of the
/// directory).
///
/// # Errors
/// The write failed.
pub fn record_commit(data_dir: &Path, seq: u64) -> Result<(), String> {
    let path = data_dir.join(COMMIT_MARKER);
    let tmp = data_dir.join(format!("{COMMIT_MARKER}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, format!("{seq}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| format!("storage: cannot write {}: {e}", path.display()))
}

/// What [`Bucket::adopt_tended`] did.
pub struct Adopted {
    /// The tree's writer lease, held: hand it to the sync (`WriterLease::new`).
    pub lease: Lease,
    /// The commit restored, when the data directory adopted one.
    pub restored: Option<Restored>,
}

impl Bucket {
    /// When the newest commit was tended since the commit `data_dir` holds, takes this tree's writer lease
    /// for `node` and replaces the data directory's data with that commit (see the module's
    /// documentation). With `keep` (an ingest node: its tree has no other writer), the lease is taken
    /// whether or not there is anything to adopt, so that no round can commit before the first sync.
    /// Waits while another node's round holds the lease, at most three of its ttl.
    /// Ok(None): nothing taken: nothing to adopt (without `keep`), another process of `node` holds the
    /// lease (the sync waits for it, as before), a round held it for too long (the sync's check refuses
    /// to sync over its commit and says so), or the data directory holds no data of its own (the restore
    /// at start handles it).
    ///
    /// # Errors
    /// The bucket cannot be read, or the restore failed (the data directory is as it was).
    pub async fn adopt_tended(
        &self,
        data_dir: &Path,
        node: &str,
        ttl: Duration,
        warm_bytes: Option<u64>,
        keep: bool,
    ) -> Result<Option<Adopted>, String> {
        if !crate::restore::has_local_state(data_dir) {
            return Ok(None);
        }
        if !keep && !self.to_adopt(data_dir).await? {
            return Ok(None);
        }
        let mut lease = Lease::new(self.clone(), crate::lease::WriterLease::NAME, node, ttl);
        let deadline = tokio::time::Instant::now() + 3 * ttl;
        let mut told = false;
        loop {
            match lease.acquire().await.map_err(|e| e.to_string())? {
                Observed::Held => break,
                Observed::HeldBy { holder, .. } if holder.split('/').next() == Some(node) => return Ok(None),
                Observed::HeldBy { holder, .. } => {
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(
                            %holder,
                            "storage: another node has held this tree's writer lease for three times storage.lease_ttl; \
                             starting without it (the sync waits for the lease)"
                        );
                        return Ok(None);
                    }
                    if !told {
                        tracing::info!(%holder, "storage: another node tends this node's tree; waiting for it to finish");
                        told = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Observed::Free => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let restored = match self.adopt_newest(data_dir, warm_bytes).await {
            Ok(r) => r,
            Err(e) => {
                let _ = lease.release().await;
                return Err(e);
            }
        };
        Ok(Some(Adopted { lease, restored }))
    }

    /// Whether the newest commit is tended and newer than the one `data_dir` holds.
    async fn to_adopt(&self, data_dir: &Path) -> Result<bool, String> {
        let Some(newest) = self.latest_commit().await? else {
            return Ok(false);
        };
        Ok(newest.tended_by.is_some() && recorded_commit(data_dir).is_none_or(|h| h < newest.seq))
    }

    /// With the writer lease held: restores the newest commit in place of the data directory's data when
    /// it is tended and newer than what the directory holds.
    async fn adopt_newest(&self, data_dir: &Path, warm_bytes: Option<u64>) -> Result<Option<Restored>, String> {
        let Some(newest) = self.latest_commit().await? else {
            return Ok(None);
        };
        let held = recorded_commit(data_dir);
        let Some(by) = newest.tended_by.as_deref() else {
            return Ok(None);
        };
        if held.is_some_and(|h| h >= newest.seq) {
            return Ok(None);
        }
        let aside = data_dir.join(store::snapshot::STAGING).join(ASIDE);
        set_aside(data_dir, &aside).map_err(|e| format!("storage: cannot set {} aside: {e}", data_dir.display()))?;
        match self.restore_if_empty_within(data_dir, warm_bytes).await {
            Ok(Some(r)) => {
                let _ = std::fs::remove_dir_all(&aside);
                tracing::info!(
                    commit = r.commit,
                    tended_by = %by,
                    previous_commit = ?held,
                    "storage: this node's tree was tended while it was away (retention, compaction); its data \
                     directory adopted the newest commit, which holds everything it had synced"
                );
                Ok(Some(r))
            }
            other => {
                let back = put_back(data_dir, &aside);
                match (other, back) {
                    (Err(e), Ok(())) => Err(e),
                    (Err(e), Err(b)) => Err(format!("{e}; and putting the data directory back failed: {b}")),
                    (Ok(_), _) => Err(format!(
                        "storage: adopting commit {} of {} restored nothing; the data directory is as it was",
                        newest.seq,
                        self.describe()
                    )),
                }
            }
        }
    }
}

/// Whether an entry of a data directory's top level stays in place during an adoption: the locks and
/// records of the directory itself, the sync's staging directory, and what no commit holds and the
/// adoption must not remove: the user's snapshots and the parts quarantined for inspection.
fn stays(name: &std::ffi::OsStr) -> bool {
    name == "lock"
        || name == "format.json"
        || name == crate::TREE_MARKER
        || name == COMMIT_MARKER
        || store::snapshot::is_set_aside(name)
}

/// Moves the data directory's own data into `aside` (renames within one file system).
fn set_aside(data_dir: &Path, aside: &Path) -> std::io::Result<()> {
    if aside.exists() {
        std::fs::remove_dir_all(aside)?;
    }
    std::fs::create_dir_all(aside)?;
    for e in std::fs::read_dir(data_dir)? {
        let e = e?;
        if !stays(&e.file_name()) {
            std::fs::rename(e.path(), aside.join(e.file_name()))?;
        }
    }
    std::fs::File::open(data_dir)?.sync_all()
}

/// Undoes [`set_aside`] after a failed restore: what the restore left is removed, the data put back.
fn put_back(data_dir: &Path, aside: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(data_dir)? {
        let e = e?;
        if !stays(&e.file_name()) {
            let p = e.path();
            if p.is_dir() { std::fs::remove_dir_all(&p)? } else { std::fs::remove_file(&p)? }
        }
    }
    for e in std::fs::read_dir(aside)? {
        let e = e?;
        std::fs::rename(e.path(), data_dir.join(e.file_name()))?;
    }
    std::fs::remove_dir_all(aside)?;
    std::fs::File::open(data_dir)?.sync_all()
}
