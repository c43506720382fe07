//! The restore at start: a data directory that holds no data of its own (a new disk, a lost volume) is
//! filled from the bucket's newest commit before the stores open. Files are downloaded under temporary
//! names and renamed into place only when all arrived; a restore that fails removes what it downloaded,
//! so it runs again from scratch at the next start.

use std::path::{Component, Path};

use object_store::ObjectStoreExt;

use crate::Bucket;

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub commit: u64,
    pub files: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Part files left in the bucket (a sidecar stands in their place).
    pub left_in_bucket: usize,
}

/// The part files of `commit` a restore leaves in the bucket: all but the newest `warm_bytes`.
fn remote_parts(commit: &crate::commit::Commit, warm_bytes: Option<u64>) -> std::collections::HashSet<String> {
    let Some(warm) = warm_bytes else {
        return std::collections::HashSet::new();
    };
    let mut parts: Vec<&crate::commit::CommitFile> =
        commit.files.iter().filter(|f| crate::cache::is_part_file(&f.path)).collect();
    parts.sort_by_key(|f| std::cmp::Reverse(crate::cache::warm_order(&f.path)));
    let mut used = 0u64;
    let mut out = std::collections::HashSet::new();
    for f in parts {
        if used + f.bytes <= warm {
            used += f.bytes;
        } else {
            out.insert(f.path.clone());
        }
    }
    out
}

/// What a file being restored is called until every file arrived.
const TMP_SUFFIX: &str = ".restore.tmp";

/// Whether `data_dir` holds data of its own: any file with content besides the lock files and
/// `format.json` (a manifest, a part, a catalog, a write-ahead-log segment with records). A restore goes
/// only into a directory without any, so that it can never overwrite or shadow acknowledged local data.
/// The sync's staging directory (`bucket-sync/`: copies of the data beside it, and the work directories
/// of retired trees' retention), the snapshots and the quarantine are not the directory's own data.
pub fn has_local_state(data_dir: &Path) -> bool {
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { return true };
            let name = e.file_name();
            if ft.is_dir() {
                if !(dir == data_dir && store::snapshot::is_set_aside(&name)) {
                    stack.push(e.path());
                }
            } else if name != "lock"
                && name != "format.json"
                && name != crate::TREE_MARKER
                && name != crate::adopt::COMMIT_MARKER
                && !name.to_string_lossy().ends_with(TMP_SUFFIX)
                && e.metadata().map_or(true, |m| m.len() > 0)
            {
                return true;
            }
        }
    }
    false
}

/// A path of a commit that stays inside the data directory: relative, no `..`, no root.
pub(crate) fn safe(path: &str) -> bool {
    !path.is_empty() && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

impl Bucket {
    /// Restores the newest commit into `data_dir` when it has no state of its own. Ok(None): it has, or
    /// the bucket holds no commit (a first start).
    ///
    /// # Errors
    /// A commit that cannot be read or names a path outside the data directory, or a download that
    /// fails: the server must not start empty over a bucket that holds data.
    pub async fn restore_if_empty(&self, data_dir: &Path) -> Result<Option<Restored>, String> {
        self.restore_if_empty_within(data_dir, None).await
    }

    /// As [`Bucket::restore_if_empty`], downloading part files (newest day first) only up to `warm_bytes`;
    /// the others get a sidecar and stay in the bucket until a read fetches them (see [`crate::cache`]).
    ///
    /// # Errors
    /// As [`Bucket::restore_if_empty`].
    pub async fn restore_if_empty_within(
        &self,
        data_dir: &Path,
        warm_bytes: Option<u64>,
    ) -> Result<Option<Restored>, String> {
        if has_local_state(data_dir) {
            return Ok(None);
        }
        let Some(commit) = self.latest_commit().await? else {
            return Ok(None);
        };
        if let Some(bad) = commit.files.iter().find(|f| !safe(&f.path)) {
            return Err(format!(
                "storage: commit {} of {} names the path {:?}, outside the data directory; refusing to restore it",
                commit.seq,
                self.describe(),
                bad.path
            ));
        }
        tracing::info!(commit = commit.seq, files = commit.files.len(), bucket = %self.describe(), "the data directory is empty: restoring it from the bucket");
        let mut staged = Vec::with_capacity(commit.files.len());
        let remote = remote_parts(&commit, warm_bytes);
        let result = self.download(data_dir, &commit, &remote, &mut staged).await;
        if result.is_err() {
            // Nothing half-restored stays: the next start tries again from scratch.
            for (tmp, _) in &staged {
                let _ = std::fs::remove_file(tmp);
            }
        }
        let bytes = result?;
        // Manifests last: a restore cut short leaves none, and the next start restores again.
        staged.sort_by_key(|(_, dest)| dest.file_name().is_some_and(|n| n == "manifest.json"));
        for (tmp, dest) in &staged {
            tokio::fs::rename(tmp, dest).await.map_err(|e| format!("{}: {e}", dest.display()))?;
        }
        let dirs: std::collections::BTreeSet<_> =
            staged.iter().filter_map(|(_, d)| d.parent().map(Path::to_path_buf)).collect();
        for d in dirs {
            if let Ok(f) = std::fs::File::open(&d) {
                let _ = f.sync_all();
            }
        }
        crate::adopt::record_commit(data_dir, commit.seq)?;
        tracing::info!(
            commit = commit.seq,
            files = staged.len(),
            bytes,
            left_in_bucket = remote.len(),
            "restored the data directory from the bucket"
        );
        Ok(Some(Restored { commit: commit.seq, files: staged.len(), bytes, left_in_bucket: remote.len() }))
    }

    /// Downloads every file of `commit` under its temporary name, listing each in `staged` as it is
    /// written; returns the bytes.
    async fn download(
        &self,
        data_dir: &Path,
        commit: &crate::commit::Commit,
        remote: &std::collections::HashSet<String>,
        staged: &mut Vec<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Result<u64, String> {
        let mut bytes = 0u64;
        for f in &commit.files {
            let mut dest = data_dir.join(&f.path);
            if remote.contains(&f.path) {
                dest = store::remote::sidecar_path(&dest);
            }
            let tmp = dest.with_file_name(format!(
                "{}{TMP_SUFFIX}",
                dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            ));
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            if remote.contains(&f.path) {
                let sidecar = store::remote::Sidecar { bytes: f.bytes, row_groups: None, max_series_id: None };
                let content = serde_json::to_vec(&sidecar).map_err(|e| e.to_string())?;
                write_synced(&tmp, content).await?;
                staged.push((tmp, dest));
                continue;
            }
            let content = self.fetch_committed(f, commit.seq).await?;
            bytes += f.bytes;
            write_synced(&tmp, content).await?;
            staged.push((tmp, dest));
        }
        Ok(bytes)
    }
}

impl Bucket {
    /// The object of a commit's file, refused when it does not hold the size the commit names (a damaged
    /// or replaced object is never restored or followed).
    pub async fn fetch_committed(&self, f: &crate::commit::CommitFile, seq: u64) -> Result<bytes::Bytes, String> {
        let key = self.key(&f.key);
        let content = async { self.store().get(&key).await?.bytes().await }
            .await
            .map_err(|e| format!("storage: cannot download {key} (for {}) from {}: {e}", f.path, self.describe()))?;
        if content.len() as u64 != f.bytes {
            return Err(format!(
                "storage: {key} holds {} bytes, commit {seq} says {}: refusing to restore a damaged file",
                content.len(),
                f.bytes
            ));
        }
        Ok(content)
    }
}

/// Writes `content` to `path` and fsyncs it.
async fn write_synced(path: &Path, content: impl AsRef<[u8]> + Send + 'static) -> Result<(), String> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&p)?;
        file.write_all(content.as_ref())?;
        file.sync_all()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("{}: {e}", path.display()))
}
