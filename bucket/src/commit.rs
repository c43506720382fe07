//! The commit log: `commits/<seq>.json`, `seq` zero-padded to 20 digits so that names sort as numbers.
//! A commit is written once, with a conditional create; a writer that loses the race for a number reads
//! the log again and takes the next. The newest commit is the state of the bucket; older ones are kept
//! (`storage.keep_commits`) for a reader that started on them.
//!
//! The format, for other readers: a JSON object `{"version": 1, "seq": N, "time_unix_ms": T, "node": "…",
//! "files": [{"path": "logs/tenant=t/date=d/0000000000000001.parquet", "key": "data/logs/…", "bytes": B},
//! …]}`; `path` is where the file lies under a data directory, `key` the object holding it (under the
//! prefix). Log parts are plain Parquet; metric parts are Parquet with delta-coded columns (see
//! ARCHITECTURE.md, *metric parts*). A commit another process wrote on the tree's behalf (the retention or
//! compaction of a retired tree, `src/retired.rs`) also holds `"tended_by": "<node>/<process id>"`; `node`
//! stays the tree's writer. Readers that do not know the field ignore it.

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};

use crate::Bucket;

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// One file of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitFile {
    /// Its path under the data directory.
    pub path: String,
    /// The object holding it, under the prefix.
    pub key: String,
    pub bytes: u64,
}

/// One commit: the whole set of files a data directory is restored from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub version: u32,
    pub seq: u64,
    pub time_unix_ms: i64,
    /// The host that wrote it (a tended commit: the tree's writer, on whose behalf it was written).
    pub node: String,
    pub files: Vec<CommitFile>,
    /// The lease holder (`<node>/<process id>`) of a round that wrote this commit for a tree whose writer had
    /// stopped. A writer that comes back to a tree whose newest commit is tended adopts it (see
    /// [`Bucket::adopt_tended`]) instead of syncing its own older state over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tended_by: Option<String>,
}

fn commit_key(seq: u64) -> String {
    format!("commits/{seq:020}.json")
}

impl Bucket {
    /// The numbers of the commits in the bucket, ascending.
    ///
    /// # Errors
    /// The listing failed.
    pub async fn commit_numbers(&self) -> Result<Vec<u64>, String> {
        let prefix = self.key("commits");
        let metas: Vec<_> = self
            .store()
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| format!("storage: cannot list the commits of {}: {e}", self.describe()))?;
        let mut seqs: Vec<u64> = metas
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                name.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Reads commit `seq`.
    ///
    /// # Errors
    /// It cannot be read, or it is not a commit this build understands.
    pub async fn read_commit(&self, seq: u64) -> Result<Commit, String> {
        let key = self.key(&commit_key(seq));
        let bytes = async { self.store().get(&key).await?.bytes().await }
            .await
            .map_err(|e| format!("storage: cannot read {key} from {}: {e}", self.describe()))?;
        let commit: Commit =
            serde_json::from_slice(&bytes).map_err(|e| format!("storage: {key} is not a commit: {e}"))?;
        if commit.version != VERSION || commit.seq != seq {
            return Err(format!(
                "storage: {key} is commit version {} number {}; this build reads version {VERSION}",
                commit.version, commit.seq
            ));
        }
        Ok(commit)
    }

    /// The newest commit, if any.
    ///
    /// # Errors
    /// Listing or reading failed.
    pub async fn latest_commit(&self) -> Result<Option<Commit>, String> {
        match self.commit_numbers().await?.last() {
            Some(&seq) => self.read_commit(seq).await.map(Some),
            None => Ok(None),
        }
    }

    /// Writes `commit` as number `commit.seq` if no commit has that number yet. Ok(false): another writer
    /// has it.
    ///
    /// # Errors
    /// The write failed for another reason.
    pub async fn put_commit(&self, commit: &Commit) -> Result<bool, String> {
        let key = self.key(&commit_key(commit.seq));
        let body = serde_json::to_vec(commit).map_err(|e| e.to_string())?;
        match self.store().put_opts(&key, PutPayload::from(body), PutMode::Create.into()).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(format!("storage: cannot write {key} to {}: {e}", self.describe())),
        }
    }

    /// Appends `files` as the next commit: numbered after the newest, retried with the next number when
    /// another writer took it. Returns the commit written.
    ///
    /// # Errors
    /// Listing or writing failed.
    pub async fn append_commit(&self, node: &str, files: Vec<CommitFile>) -> Result<Commit, String> {
        self.append_commit_as(node, None, files).await
    }

    /// As [`Bucket::append_commit`], for a commit written on behalf of the writer `node` by `tended_by`.
    ///
    /// # Errors
    /// Listing or writing failed.
    pub async fn append_commit_as(
        &self,
        node: &str,
        tended_by: Option<&str>,
        files: Vec<CommitFile>,
    ) -> Result<Commit, String> {
        let mut seq = self.commit_numbers().await?.last().map_or(1, |s| s + 1);
        loop {
            let commit = Commit {
                version: VERSION,
                seq,
                time_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0),
                node: node.to_string(),
                files: files.clone(),
                tended_by: tended_by.map(str::to_string),
            };
            if self.put_commit(&commit).await? {
                return Ok(commit);
            }
            tracing::info!(seq, "another writer took this commit number; taking the next");
            seq = self.commit_numbers().await?.last().map_or(seq, |&s| s.max(seq)) + 1;
        }
    }

    /// Deletes `commits/<seq>.json`.
    pub(crate) async fn delete_commit(&self, seq: u64) -> Result<(), String> {
        let key = self.key(&commit_key(seq));
        match self.store().delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(format!("storage: cannot delete {key}: {e}")),
        }
    }
}
