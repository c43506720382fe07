//! The object-store stage (issue 22, first step): `[storage]` names an S3-compatible bucket, and the
//! server keeps there what its local disk holds once flushed, so that a node that loses its disk starts
//! again from the bucket.
//!
//! - [`Bucket`]: the client ([`object_store`]'s S3 implementation; credentials from the environment or
//!   files, never from the config file) and [`Bucket::check_conditional_create`], the start-up check that
//!   the store really refuses a second create of the same key (some S3 imitations ignore
//!   `If-None-Match`), without which commits could silently overwrite each other, and a replacement
//!   naming a stale ETag (`If-Match`), without which two servers could hold the writer lease.
//! - [`commit`]: the commit log, `commits/<seq, 20 digits>.json`, each written with a conditional create
//!   (`PutMode::Create`), so that two writers can never both believe they wrote commit N.
//! - [`sync`]: every `storage.sync_interval` (and once more at shutdown), a consistent view of the data
//!   directory without its write-ahead logs ([`store::snapshot::stage`]) is uploaded: part files under
//!   `data/<their path>` (they never change), everything else (manifests, catalogs, delivery marks)
//!   content-addressed under `objects/<hash>`, then a commit naming every file; old commits and the
//!   objects only they named are deleted.
//! - [`lease`]: a lease object taken with conditional writes; only the holder of the lease `writer`
//!   syncs, so that two servers pointed at one bucket and prefix never alternate commits or delete what
//!   the other's commits name. A second server waits, and takes over when the holder stops renewing.
//! - [`restore`]: a server whose data directory holds no data of its own (no manifest, part, catalog or
//!   written WAL segment) downloads the newest commit's files before it opens its stores; with
//!   `storage.cache_max_bytes`, only the newest parts up to that size.
//! - [`adopt`]: a writer that comes back to a tree another process tended meanwhile (a retired tree's
//!   retention or compaction) adopts the newest commit instead of syncing its older state over it.
//! - [`cache`]: the local disk as a bounded cache of the bucket's parts: evicted after a sync while over
//!   `storage.cache_max_bytes`, fetched back when a read needs them.
//!
//! What the bucket holds is what was flushed: acknowledged writes still in the head are in the local
//! write-ahead log only (the durability contract does not change), and a graceful stop flushes and
//! syncs them. Several nodes on one bucket are the next step of issue 22.

pub mod adopt;
pub mod cache;
pub mod commit;
pub mod follow;
pub mod lease;
pub mod restore;
pub mod sync;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use serde::{Deserialize, Serialize};

/// Where flushed data lives besides the local data directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The local data directory only (the default).
    #[default]
    Local,
    /// An S3 or S3-compatible bucket (AWS, MinIO, SeaweedFS, R2, Ceph).
    S3,
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// "local" (default) or "s3".
    pub backend: Backend,
    /// The bucket's name (s3).
    pub bucket: String,
    /// Key prefix inside the bucket, so that several deployments can share one bucket.
    pub prefix: String,
    /// The S3 endpoint, for S3-compatible stores ("http://127.0.0.1:8333"); empty: AWS.
    pub endpoint: String,
    /// The region; empty: `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1.
    pub region: String,
    /// Allow a plain-HTTP endpoint (a store on loopback or a private network).
    pub allow_http: bool,
    /// File holding the access key id; empty: `AWS_ACCESS_KEY_ID` from the environment.
    pub access_key_id_file: PathBuf,
    /// File holding the secret access key; empty: `AWS_SECRET_ACCESS_KEY` from the environment.
    pub secret_access_key_file: PathBuf,
    /// How often flushed data is synced into the bucket.
    #[serde(with = "store::config::duration")]
    pub sync_interval: Duration,
    /// Commits kept in the bucket (older ones and the objects only they name are deleted); at least 1.
    pub keep_commits: usize,
    /// Part bytes kept on the local disk; beyond them, the least recently read parts the bucket holds are
    /// evicted and fetched again when read, and a restore downloads only the newest this much. 0: no
    /// bound (every part stays local too).
    pub cache_max_bytes: bytesize::ByteSize,
    /// How long the writer lease stays with a server that stopped renewing it (it renews at every sync)
    /// before another server on the same bucket and prefix takes it over; "0s" (default): the larger of
    /// 30s and 3 × `sync_interval`. At least 2 × `sync_interval`.
    #[serde(with = "store::config::duration")]
    pub lease_ttl: Duration,
    /// How often the compactor (or, without one, an ingest node) looks for the trees of ingest nodes that
    /// stopped for good (their writer lease released at a graceful stop) and tends them as their own node
    /// would have (retention, merges); at least 1s, "0s": never.
    #[serde(with = "store::config::duration")]
    pub retired_trees_interval: Duration,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            backend: Backend::Local,
            bucket: String::new(),
            prefix: String::new(),
            endpoint: String::new(),
            region: String::new(),
            allow_http: false,
            access_key_id_file: PathBuf::new(),
            secret_access_key_file: PathBuf::new(),
            sync_interval: Duration::from_secs(10),
            keep_commits: 3,
            cache_max_bytes: bytesize::ByteSize::b(0),
            lease_ttl: Duration::ZERO,
            retired_trees_interval: Duration::from_secs(3600),
        }
    }
}

impl StorageConfig {
    /// Checks what can be checked without the network.
    ///
    /// # Errors
    /// A message naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.backend == Backend::Local {
            return Ok(());
        }
        if self.bucket.is_empty() {
            return Err("storage.backend = \"s3\" needs storage.bucket".into());
        }
        if self.sync_interval < Duration::from_secs(1) {
            return Err("storage.sync_interval must be at least 1s".into());
        }
        if self.keep_commits == 0 {
            return Err("storage.keep_commits must be at least 1".into());
        }
        if !self.retired_trees_interval.is_zero() && self.retired_trees_interval < Duration::from_secs(1) {
            return Err("storage.retired_trees_interval must be at least 1s, or \"0s\" for never".into());
        }
        if !self.lease_ttl.is_zero() && self.lease_ttl < 2 * self.sync_interval {
            return Err(format!(
                "storage.lease_ttl ({:?}) must be at least twice storage.sync_interval ({:?}), or \"0s\" for the default",
                self.lease_ttl, self.sync_interval
            ));
        }
        if self.access_key_id_file.as_os_str().is_empty() != self.secret_access_key_file.as_os_str().is_empty() {
            return Err("set both storage.access_key_id_file and storage.secret_access_key_file, or neither (then \
                        AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY come from the environment)"
                .into());
        }
        Ok(())
    }

    /// `lease_ttl`, with "0s" resolved: the larger of 30s and 3 × `sync_interval`.
    pub fn lease_ttl(&self) -> Duration {
        if self.lease_ttl.is_zero() { (3 * self.sync_interval).max(Duration::from_secs(30)) } else { self.lease_ttl }
    }
}

/// An opened bucket: the client and the key prefix.
#[derive(Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `bucket/prefix`: what a data directory's [`TREE_MARKER`] names.
    location: String,
    /// `s3://bucket/prefix` at `endpoint`, for messages (no credential).
    describe: String,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe)
    }
}

fn read_secret(path: &std::path::Path, key: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {key} {}: {e}", path.display()))?;
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(format!("{key} {} is empty", path.display()));
    }
    Ok(text)
}

impl Bucket {
    /// The bucket `[storage]` names; None for the local backend. Nothing is sent yet.
    ///
    /// # Errors
    /// A configuration the client refuses, or a credential file that cannot be read.
    pub fn open(config: &StorageConfig) -> Result<Option<Bucket>, String> {
        config.validate()?;
        if config.backend == Backend::Local {
            return Ok(None);
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_allow_http(config.allow_http)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(config.allow_http)
                    .with_connect_timeout(Duration::from_secs(10))
                    .with_timeout(Duration::from_secs(300)),
            );
        if !config.endpoint.is_empty() {
            b = b.with_endpoint(&config.endpoint);
        }
        if !config.region.is_empty() {
            b = b.with_region(&config.region);
        } else if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            b = b.with_region("us-east-1");
        }
        if !config.access_key_id_file.as_os_str().is_empty() {
            b = b
                .with_access_key_id(read_secret(&config.access_key_id_file, "storage.access_key_id_file")?)
                .with_secret_access_key(read_secret(&config.secret_access_key_file, "storage.secret_access_key_file")?);
        }
        let store = b.build().map_err(|e| format!("storage: cannot set up the S3 client: {e}"))?;
        let prefix = config.prefix.trim_matches('/').to_string();
        let endpoint = if config.endpoint.is_empty() { "AWS" } else { config.endpoint.as_str() };
        let describe = format!("s3://{}/{prefix} at {endpoint}", config.bucket);
        let location = format!("{}/{prefix}", config.bucket);
        Ok(Some(Bucket { store: Arc::new(store), prefix, location, describe }))
    }

    /// A bucket over any object store (tests).
    pub fn with_store(store: Arc<dyn ObjectStore>, prefix: &str) -> Bucket {
        let prefix = prefix.trim_matches('/').to_string();
        Bucket { store, location: format!("/{prefix}"), describe: format!("object store /{prefix}"), prefix }
    }

    /// The tree of the ingest node `node` (`server.role = "ingest"`): `prefix/nodes/<node>`, with its own
    /// commit log, parts, objects and writer lease. Each ingest node writes only its own tree.
    pub fn node_tree(&self, node: &str) -> Bucket {
        let prefix = if self.prefix.is_empty() {
            format!("{NODES_DIR}/{node}")
        } else {
            format!("{}/{NODES_DIR}/{node}", self.prefix)
        };
        Bucket {
            store: self.store.clone(),
            location: format!("{}/{NODES_DIR}/{node}", self.location),
            describe: format!("{} (node {node})", self.describe),
            prefix,
        }
    }

    /// Records in `data_dir` the tree of the bucket it syncs into ([`TREE_MARKER`]), or checks the record: a
    /// directory synced into one tree and then into another (a server started with another
    /// `storage.prefix`, `server.role` or `server.node_name`) would have its data in both, and query nodes
    /// would answer it twice.
    ///
    /// # Errors
    /// The directory names another tree (the message says which and what to do), or the record cannot be
    /// read or written.
    pub fn claim_tree(&self, data_dir: &std::path::Path) -> Result<(), String> {
        let path = data_dir.join(TREE_MARKER);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let claimed = text.trim();
                if claimed == self.location {
                    return Ok(());
                }
                Err(format!(
                    "storage: the data directory {} syncs into {claimed:?} of the bucket ({}), and this server \
                     would sync it into {:?}: query nodes would then answer its data twice. Start it with the \
                     storage.prefix, server.role and server.node_name it had, or give this server a new data directory",
                    data_dir.display(),
                    path.display(),
                    self.location
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let tmp = data_dir.join(format!("{TREE_MARKER}.tmp"));
                let write = || -> std::io::Result<()> {
                    let mut f = std::fs::File::create(&tmp)?;
                    std::io::Write::write_all(&mut f, format!("{}\n", self.location).as_bytes())?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, &path)?;
                    std::fs::File::open(data_dir)?.sync_all()
                };
                write().map_err(|e| format!("storage: cannot write {}: {e}", path.display()))
            }
            Err(e) => Err(format!("storage: cannot read {}: {e}", path.display())),
        }
    }

    /// The ingest nodes whose trees the bucket holds (`prefix/nodes/<name>/`), sorted: what a query node
    /// follows besides the prefix's own commits.
    ///
    /// # Errors
    /// The listing failed.
    pub async fn node_trees(&self) -> Result<Vec<String>, String> {
        let dir = self.key(NODES_DIR);
        let listed = self
            .store
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(|e| format!("storage: cannot list the ingest nodes' trees in {}: {e}", self.describe))?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|n| check_node_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every object under `dir` (relative to the prefix).
    ///
    /// # Errors
    /// The listing failed.
    pub async fn objects_under(&self, dir: &str) -> Result<Vec<object_store::ObjectMeta>, String> {
        let prefix = self.key(dir);
        self.store
            .list(Some(&prefix))
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| format!("storage: cannot list {prefix} in {}: {e}", self.describe))
    }

    /// `prefix/key`.
    pub(crate) fn key(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() { ObjectPath::from(key) } else { ObjectPath::from(format!("{}/{key}", self.prefix)) }
    }

    /// The key without the prefix.
    pub(crate) fn unprefixed<'a>(&self, path: &'a ObjectPath) -> &'a str {
        let s = path.as_ref();
        if self.prefix.is_empty() { s } else { s.strip_prefix(&self.prefix).map_or(s, |r| r.trim_start_matches('/')) }
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// What the messages call it.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// Creates one probe object twice with a conditional create: the second must be refused, or the store
    /// ignores the condition and commits could overwrite each other. Then replaces it naming an ETag it
    /// does not have (If-Match): refused too, or two servers could hold the writer lease. The probe is
    /// deleted after.
    ///
    /// # Errors
    /// [`CheckError`]: the store cannot be reached, or it ignores conditional creates or replacements (the
    /// message says which and what to do).
    pub async fn check_conditional_create(&self) -> Result<(), CheckError> {
        self.probe().await
    }

    async fn probe(&self) -> Result<(), CheckError> {
        let nonce = format!(
            "{:x}-{}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
            std::process::id()
        );
        let probe = self.key(&format!("probe/{nonce}"));
        let create = || self.store.put_opts(&probe, PutPayload::from_static(b"lumen probe"), PutMode::Create.into());
        create()
            .await
            .map_err(|e| CheckError::Unreachable(format!("storage: cannot write to {}: {e}", self.describe)))?;
        let second = create().await;
        // And a replacement on an ETag the object does not have must be refused too (If-Match): the writer
        // lease is renewed and taken over with it (see [`lease`]).
        let stale = object_store::UpdateVersion { e_tag: Some("\"lumen-probe-stale-etag\"".into()), version: None };
        let update = match second {
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Some(
                self.store
                    .put_opts(&probe, PutPayload::from_static(b"lumen probe 2"), PutMode::Update(stale).into())
                    .await,
            ),
            _ => None,
        };
        let _ = self.store.delete(&probe).await;
        match (second, update) {
            (Err(_), Some(Err(object_store::Error::Precondition { .. }))) => Ok(()),
            (Err(_), Some(Ok(_))) => Err(CheckError::IgnoresConditions(format!(
                "storage: {} accepted a replacement of an object whose ETag did not match: it ignores If-Match, \
                 which Lumen needs so that only one server holds the bucket's writer lease. Use a store that honours \
                 it (AWS S3, MinIO, SeaweedFS, R2), or storage.backend = \"local\"",
                self.describe
            ))),
            (Err(_), Some(Err(e))) => Err(CheckError::Unreachable(format!(
                "storage: the conditional-replace (If-Match) check against {} failed: {e}",
                self.describe
            ))),
            (Ok(_), _) => Err(CheckError::IgnoresConditions(format!(
                "storage: {} accepted a second create of the same key: it ignores conditional writes \
                 (If-None-Match: *), which Lumen needs so that two writers never overwrite each other's commits. \
                 Use a store that honours them (AWS S3, MinIO, SeaweedFS, R2, recent Ceph), or storage.backend = \"local\"",
                self.describe
            ))),
            (Err(e), None) => Err(CheckError::Unreachable(format!(
                "storage: the conditional-create check against {} failed: {e}",
                self.describe
            ))),
        }
    }
}

/// The file in a data directory that names the tree of the bucket it syncs into (see [`Bucket::claim_tree`]).
pub const TREE_MARKER: &str = "bucket-tree";

/// Where the ingest nodes' trees live under the prefix (see [`Bucket::node_tree`]).
pub const NODES_DIR: &str = "nodes";

/// Checks an ingest node's name (`server.node_name`): it names the node's tree in the bucket.
///
/// # Errors
/// What is wrong with it.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("node name {name:?} must be 1 to 128 characters"));
    }
    if name.starts_with('.') || !name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')) {
        return Err(format!(
            "node name {name:?} may hold only ASCII letters, digits, '-', '_' and '.', and not start with '.'"
        ));
    }
    Ok(())
}

/// Why [`Bucket::check_conditional_create`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// The store could not be written to (network, credentials, bucket): may pass later.
    Unreachable(String),
    /// The store accepted a second create of one key: never usable.
    IgnoresConditions(String),
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckError::Unreachable(m) | CheckError::IgnoresConditions(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CheckError {}

/// Hex of the xxh3-128 of `bytes`: the key of a content-addressed object.
pub(crate) fn content_key(bytes: &[u8]) -> String {
    format!("objects/{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

#[cfg(test)]
mod tests;
