//! Leases in the bucket (issue 22: "exactly one acts at a time, by a lease object in the bucket taken
//! with conditional writes; a second one waits").
//!
//! A lease is one object, `leases/<name>.json` under the prefix, holding a [`LeaseRecord`]: who holds it
//! (the node name and a random id of the process), its time to live, and a renewal count. Every write of
//! it is conditional, so that of two servers acting on the same record only one succeeds:
//!
//! - absent: it is created with `PutMode::Create` (`If-None-Match: *`);
//! - held by this process: renewed with `PutMode::Update` (`If-Match: <the ETag it wrote>`); a refused
//!   renewal means someone else wrote the record: the lease was lost;
//! - held by another: it is taken over, with `PutMode::Update` against the version read, once the record
//!   has not changed for its `ttl` *as measured by this process's monotonic clock* from when it first read
//!   that version, or at once when the holder released it. No wall clocks are compared: the waiter's
//!   clock starts after the holder's last write, so the holder's own deadline (below) always comes first
//!   as long as the two clocks run at about the same rate.
//!
//! A holder trusts its lease only until `HOLDER_SHARE` of the ttl after it *sent* its last successful
//! write ([`Lease::is_valid`]); what it must not do without the lease (commit, delete) it checks first.
//! A lease is not a fencing token: a holder paused for longer than the ttl between its check and its
//! write can still write once after a successor took over. The conditional commit log and the clean-up's
//! rule that a commit goes before the objects only it names keep such a write from destroying data.
//!
//! [`WriterLease`] is the lease `writer` as the sync uses it: only its holder uploads, commits and
//! deletes, and a server whose data directory does not hold the bucket's newest commit never takes it
//! (it would replace that commit with older data).
//!
//! SeaweedFS (the test store: concurrent takes with one ETag let exactly one through), AWS S3, MinIO and
//! R2 honour `If-Match` on PUT; a store that ignores it would let two servers hold the lease at once, so
//! the start-up check ([`crate::Bucket::check_conditional_create`]) refuses it.

use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::Bucket;

/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// The share of the ttl, after sending its last successful write, for which a holder trusts its lease:
/// the rest is the margin for clocks that run at different rates.
const HOLDER_SHARE: f64 = 0.75;

/// What a lease object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub version: u32,
    /// The lease's name ("writer").
    pub name: String,
    /// `<node>/<random id of the process>`: a restarted server is another holder.
    pub holder: String,
    /// The node name of the holder, for messages.
    pub node: String,
    /// How long a waiter lets the record stay unchanged before it takes the lease over.
    pub ttl_ms: u64,
    /// Renewals by this holder; every write differs, so that every write has a new ETag.
    pub renewals: u64,
    /// When it was written, by the holder's clock: for people reading the object, never compared.
    pub renewed_unix_ms: i64,
    /// The holder let it go (a graceful stop): a waiter takes it over at once.
    pub released: bool,
}

impl LeaseRecord {
    /// Whether the tree's own writer holds this lease, or stopped without releasing it (its disk may hold
    /// what it acknowledged and did not sync). A node's tree (`tree` = its node name) is written by that
    /// node; the prefix's own tree (`tree` = None) by a server with role "all", and never by one of the
    /// ingest nodes `nodes`. Any other holder is another node's retention round for a retired tree
    /// (`src/retired.rs`), which has nothing of its own to sync.
    pub fn writer_holds(&self, tree: Option<&str>, nodes: &[String]) -> bool {
        !self.released
            && match tree {
                Some(node) => self.node == node,
                None => !nodes.contains(&self.node),
            }
    }
}

/// What [`Lease::observe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// This process holds the lease.
    Held,
    /// Nobody holds it (absent, released, or unchanged for its ttl): [`Lease::take`] may take it.
    Free,
    /// Another holder has it.
    HeldBy {
        holder: String,
        /// When it becomes free if it is not renewed, by this process's clock.
        expires_in: Duration,
    },
}

/// Why a lease operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// Someone else wrote the record since this holder's last write: it holds the lease no more.
    Lost { holder: String },
    /// The store could not be read or written; nothing is known about the lease.
    Store(String),
}

impl std::fmt::Display for LeaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseError::Lost { holder } => write!(f, "the lease was taken over by {holder}"),
            LeaseError::Store(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LeaseError {}

/// One lease, as one process sees it. Not shared: each process (each task that needs the lease) holds
/// its own.
pub struct Lease {
    bucket: Bucket,
    key: ObjectPath,
    name: String,
    node: String,
    holder: String,
    ttl: Duration,
    state: State,
}

enum State {
    /// Not held. `seen`: the record as last read, and since when it has not changed.
    Waiting {
        seen: Option<Seen>,
    },
    Held {
        version: UpdateVersion,
        renewals: u64,
        valid_until: Instant,
    },
}

struct Seen {
    /// None: there was no record.
    version: Option<UpdateVersion>,
    since: Instant,
    /// What [`Lease::observe`] said: only a free lease is taken.
    free: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lease {} as {}", self.key, self.holder)
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A random id of this process: the time, the pid and an address, hashed.
fn process_id() -> String {
    let marker = 0u8;
    let seed = format!(
        "{}-{}-{:p}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
        std::process::id(),
        &marker
    );
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(seed.as_bytes()))
}

fn is_conflict(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. })
}

impl Lease {
    /// The lease `name` of `bucket`, for a holder on `node`; nothing is sent yet.
    pub fn new(bucket: Bucket, name: &str, node: &str, ttl: Duration) -> Lease {
        Lease {
            key: bucket.key(&format!("leases/{name}.json")),
            bucket,
            name: name.to_string(),
            node: node.to_string(),
            holder: format!("{node}/{}", process_id()),
            ttl,
            state: State::Waiting { seen: None },
        }
    }

    /// How long a waiter lets the record stay unchanged before it takes the lease over.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// This process's holder name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Whether this process holds the lease and may still act on it by its own clock.
    pub fn is_valid(&self) -> bool {
        matches!(self.state, State::Held { valid_until, .. } if Instant::now() < valid_until)
    }

    /// Whether this process took the lease and did not find it lost or release it since (its validity
    /// may have run out: [`Lease::renew`] says whether it is still held).
    pub fn is_held(&self) -> bool {
        matches!(self.state, State::Held { .. })
    }

    /// Reads the record.
    ///
    /// # Errors
    /// [`LeaseError::Store`].
    pub async fn read(&self) -> Result<Option<LeaseRecord>, LeaseError> {
        Ok(self.get().await?.map(|(r, _)| r))
    }

    /// Reads the record and says whether the lease is free to take. Remembers the version read: a
    /// holder's record is free once it stayed the same for its ttl, counted from the first time this
    /// process read that version (so a waiter that reads rarely takes over late, never early).
    ///
    /// # Errors
    /// [`LeaseError::Store`].
    pub async fn observe(&mut self) -> Result<Observed, LeaseError> {
        if self.is_held() {
            return Ok(Observed::Held);
        }
        let now = Instant::now();
        let Some((record, version)) = self.get().await? else {
            self.state = State::Waiting { seen: Some(Seen { version: None, since: now, free: true }) };
            return Ok(Observed::Free);
        };
        let since = match &self.state {
            State::Waiting { seen: Some(s) } if s.version.as_ref() == Some(&version) => s.since,
            _ => now,
        };
        let ttl = Duration::from_millis(record.ttl_ms);
        let unchanged = now.duration_since(since);
        // A record of this process (a write whose answer was lost): taking it is a renewal.
        let free = record.released || record.holder == self.holder || unchanged >= ttl;
        self.state = State::Waiting { seen: Some(Seen { version: Some(version), since, free }) };
        if free {
            return Ok(Observed::Free);
        }
        Ok(Observed::HeldBy { holder: record.holder, expires_in: ttl - unchanged })
    }

    /// Takes the lease found [`Observed::Free`] by the last [`Lease::observe`], if the record is still as
    /// read then. Ok(false): another process wrote it meanwhile (observe again).
    ///
    /// # Errors
    /// [`LeaseError::Store`].
    pub async fn take(&mut self) -> Result<bool, LeaseError> {
        let expected = match &self.state {
            State::Held { .. } => return Ok(true),
            State::Waiting { seen: Some(s) } if s.free => s.version.clone(),
            State::Waiting { .. } => return Ok(false),
        };
        let mode = match expected {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v),
        };
        match self.write(0, false, mode).await {
            Ok(()) => Ok(true),
            Err(e) if is_conflict(&e) => {
                self.state = State::Waiting { seen: None };
                Ok(false)
            }
            Err(e) => Err(self.store_error("take", &e)),
        }
    }

    /// [`Lease::observe`], then [`Lease::take`] when free. Ok(Observed::Held): this process holds it.
    ///
    /// # Errors
    /// [`LeaseError::Store`].
    pub async fn acquire(&mut self) -> Result<Observed, LeaseError> {
        match self.observe().await? {
            Observed::Free => {
                if self.take().await? {
                    return Ok(Observed::Held);
                }
                // Someone wrote between the read and the take: what it wrote decides.
                match self.observe().await? {
                    Observed::Free => Ok(Observed::HeldBy { holder: "another process".into(), expires_in: self.ttl }),
                    o => Ok(o),
                }
            }
            o => Ok(o),
        }
    }

    /// Renews the lease this process holds.
    ///
    /// # Errors
    /// [`LeaseError::Lost`]: another process wrote the record (or this one never held it);
    /// [`LeaseError::Store`]: the write failed, nothing is known (the lease stays held until its
    /// validity runs out).
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        let State::Held { version, renewals, .. } = &self.state else {
            return Err(LeaseError::Lost { holder: "nobody (not held)".into() });
        };
        let (version, renewals) = (version.clone(), renewals + 1);
        match self.write(renewals, false, PutMode::Update(version)).await {
            Ok(()) => Ok(()),
            Err(e) if is_conflict(&e) => {
                self.state = State::Waiting { seen: None };
                let holder = match self.get().await {
                    Ok(Some((r, _))) if r.released => format!("nobody ({} released it)", r.holder),
                    Ok(Some((r, _))) => r.holder,
                    Ok(None) => "nobody (the lease object was deleted)".into(),
                    Err(_) => "an unknown holder".into(),
                };
                Err(LeaseError::Lost { holder })
            }
            Err(e) => Err(self.store_error("renew", &e)),
        }
    }

    /// Lets the lease go (marks the record released), so that a waiter takes it at once. Nothing when it
    /// is not held.
    ///
    /// # Errors
    /// [`LeaseError::Store`]: the write failed (a waiter takes over after the ttl).
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        let State::Held { version, renewals, .. } = &self.state else {
            return Ok(());
        };
        let (version, renewals) = (version.clone(), renewals + 1);
        let res = self.write(renewals, true, PutMode::Update(version)).await;
        self.state = State::Waiting { seen: None };
        match res {
            // Conflict: someone else holds it already.
            Ok(()) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.store_error("release", &e)),
        }
    }

    async fn get(&self) -> Result<Option<(LeaseRecord, UpdateVersion)>, LeaseError> {
        let res = match self.bucket.store().get(&self.key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_error("read", &e)),
        };
        let version = UpdateVersion { e_tag: res.meta.e_tag.clone(), version: res.meta.version.clone() };
        let bytes = res.bytes().await.map_err(|e| self.store_error("read", &e))?;
        let record = match serde_json::from_slice::<LeaseRecord>(&bytes) {
            Ok(r) if r.version == VERSION => r,
            // A record this build cannot read is held by someone, for this build's ttl.
            _ => LeaseRecord {
                version: 0,
                name: self.name.clone(),
                holder: format!("an unreadable lease record ({} bytes)", bytes.len()),
                node: String::new(),
                ttl_ms: self.ttl.as_millis() as u64,
                renewals: 0,
                renewed_unix_ms: 0,
                released: false,
            },
        };
        Ok(Some((record, version)))
    }

    /// Writes this holder's record with `mode`; on success the lease is held until `HOLDER_SHARE` of the
    /// ttl after now (before the request was sent).
    async fn write(&mut self, renewals: u64, released: bool, mode: PutMode) -> object_store::Result<()> {
        let sent = Instant::now();
        let record = LeaseRecord {
            version: VERSION,
            name: self.name.clone(),
            holder: self.holder.clone(),
            node: self.node.clone(),
            ttl_ms: self.ttl.as_millis() as u64,
            renewals,
            renewed_unix_ms: unix_ms(),
            released,
        };
        let body = serde_json::to_vec(&record).unwrap_or_default();
        let put = self.bucket.store().put_opts(&self.key, PutPayload::from(body), mode.into()).await?;
        self.state = State::Held {
            version: UpdateVersion { e_tag: put.e_tag, version: put.version },
            renewals,
            valid_until: sent + self.ttl.mul_f64(HOLDER_SHARE),
        };
        Ok(())
    }

    fn store_error(&self, what: &str, e: &dyn std::fmt::Display) -> LeaseError {
        LeaseError::Store(format!("storage: cannot {what} the lease {} in {}: {e}", self.key, self.bucket.describe()))
    }
}

/// The lease's own metrics, `lumen_bucket_lease_*`.
#[derive(Clone, Default)]
pub struct LeaseMetrics {
    pub held: Gauge,
    pub waits: Counter,
    pub lost: Counter,
    pub behind: Gauge,
    pub renewals_during_sync: Counter,
}

impl LeaseMetrics {
    pub fn register(registry: &mut Registry) -> LeaseMetrics {
        let m = LeaseMetrics::default();
        let r = registry.sub_registry_with_prefix("lumen_bucket_lease");
        r.register("held", "1 while this server holds the bucket's writer lease and syncs, else 0", m.held.clone());
        r.register(
            "waits",
            "syncs skipped because another server holds the writer lease or this data directory is behind the bucket",
            m.waits.clone(),
        );
        r.register("lost", "times another server took the writer lease over from this one", m.lost.clone());
        r.register(
            "behind",
            "1 while the bucket's newest commit is not in this data directory, so this server never takes the writer lease",
            m.behind.clone(),
        );
        r.register(
            "renewals_during_sync",
            "renewals of the writer lease while a sync's uploads ran longer than a third of storage.lease_ttl",
            m.renewals_during_sync.clone(),
        );
        m
    }
}

/// What the sync may do, by the writer lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Gate {
    /// This server holds the lease; `fresh`: it just took it, what it knew of the bucket may be stale.
    Write { fresh: bool },
    /// It does not: no upload, commit or deletion; why, for the refusal of writes (see
    /// [`crate::sync::SyncReport::wait_reason`]).
    Wait(String),
}

/// Why a server that waits for the lease `holder` holds takes no writes.
fn held_by(holder: &str) -> String {
    format!(
        "another server ({holder}) holds the bucket's writer lease, and what this one acknowledged would never \
         reach the bucket: send writes to that server; this one takes over, and takes writes, once that server \
         stops renewing the lease (storage.lease_ttl)"
    )
}

/// The lease `writer` as the sync uses it: taken before the first upload, renewed at each sync, every
/// third of its ttl while the uploads run, and again just before each commit, released at a graceful stop.
pub struct WriterLease {
    lease: Lease,
    metrics: LeaseMetrics,
    /// The newest commit this data directory holds all of: the one it was restored from or last wrote.
    base_commit: Option<u64>,
    /// The commit the data directory recorded as holding at start ([`crate::adopt::COMMIT_MARKER`]): only
    /// compared with a tended commit (a record that missed a commit of this node's own must not stop it).
    recorded_commit: Option<u64>,
    /// The holder the last WARN named, so that a wait is told once per holder.
    warned: Option<String>,
    behind_told: bool,
}

impl std::fmt::Debug for WriterLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writer {:?}, base commit {:?}", self.lease, self.base_commit)
    }
}

impl WriterLease {
    /// The lease name the sync takes.
    pub const NAME: &'static str = "writer";

    /// `lease` may be held already (taken at start, see [`crate::Bucket::adopt_tended`]).
    pub fn new(lease: Lease, metrics: LeaseMetrics) -> WriterLease {
        metrics.held.set(i64::from(lease.is_held()));
        WriterLease { lease, metrics, base_commit: None, recorded_commit: None, warned: None, behind_told: false }
    }

    /// The commit this data directory was restored from: it holds all of it. Without one, the data
    /// directory counts as holding the bucket's newest commit only when this node wrote it.
    pub fn with_base_commit(mut self, seq: Option<u64>) -> WriterLease {
        self.base_commit = seq;
        self
    }

    /// The commit the data directory recorded as holding (see [`crate::adopt::recorded_commit`]).
    pub fn with_recorded_commit(mut self, seq: Option<u64>) -> WriterLease {
        self.recorded_commit = seq;
        self
    }

    /// The lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Before a sync: renews the lease, or tries to take it.
    pub(crate) async fn before_sync(&mut self) -> Result<Gate, String> {
        if self.lease.is_held() {
            return match self.lease.renew().await {
                Ok(()) => Ok(Gate::Write { fresh: false }),
                Err(LeaseError::Lost { holder }) => {
                    self.lost(&holder);
                    Ok(Gate::Wait(held_by(&holder)))
                }
                Err(LeaseError::Store(e)) => Err(e),
            };
        }
        match self.lease.observe().await.map_err(|e| e.to_string())? {
            Observed::HeldBy { holder, expires_in } => {
                let why = held_by(&holder);
                self.wait(holder, expires_in);
                return Ok(Gate::Wait(why));
            }
            Observed::Held | Observed::Free => {}
        }
        if let Some((seq, node)) = self.behind().await? {
            self.metrics.waits.inc();
            self.metrics.behind.set(1);
            if !self.behind_told {
                self.behind_told = true;
                tracing::error!(
                    commit = seq,
                    commit_node = %node,
                    base_commit = ?self.base_commit,
                    "storage: the bucket's newest commit is not in this data directory, so this server does not take \
                     the writer lease (its sync would replace that commit with older data); start this server on an \
                     empty data directory to restore that commit, or start the server that wrote it (a commit another \
                     node wrote on this server's behalf, tended_by, is adopted when this server starts again)"
                );
            }
            return Ok(Gate::Wait(format!(
                "the bucket's newest commit ({seq}, by {node}) is not in this server's data directory, so it does \
                 not take the writer lease and takes no writes: send writes to the server that wrote that commit, \
                 or start this one on an empty data directory to restore it"
            )));
        }
        self.metrics.behind.set(0);
        self.behind_told = false;
        if !self.lease.take().await.map_err(|e| e.to_string())? {
            self.metrics.waits.inc();
            return Ok(Gate::Wait(
                "another server took the bucket's writer lease first; this one takes no writes".to_string(),
            ));
        }
        self.metrics.held.set(1);
        self.warned = None;
        tracing::info!(holder = %self.lease.holder(), "storage: took the bucket's writer lease; this server syncs");
        Ok(Gate::Write { fresh: true })
    }

    /// Awaits `work` (a sync's uploads) while renewing the lease every third of its ttl, so that uploads
    /// that take longer than the ttl (a first sync of a large directory, a slow link) do not let a waiting
    /// server take over in the middle of a sync. A renewal that finds the lease taken stops the renewals
    /// but not the uploads (a dropped multipart upload would stay behind in the bucket):
    /// [`WriterLease::before_commit`] then refuses the commit. A renewal that fails is retried at the next
    /// third; the lease stays valid by this server's clock until its share of the ttl runs out.
    pub(crate) async fn renewing_while<F: std::future::Future>(&mut self, work: F) -> F::Output {
        let every = self.lease.ttl / 3;
        tokio::pin!(work);
        loop {
            if !self.lease.is_held() {
                return work.await;
            }
            tokio::select! {
                out = &mut work => return out,
                () = tokio::time::sleep(every) => match self.lease.renew().await {
                    Ok(()) => {
                        self.metrics.renewals_during_sync.inc();
                    }
                    Err(LeaseError::Lost { holder }) => self.lost(&holder),
                    Err(LeaseError::Store(e)) => {
                        tracing::warn!(error = %e, "storage: renewing the writer lease during the sync's uploads failed; retried")
                    }
                },
            }
        }
    }

    /// Just before a commit: the lease must be renewed, so that a commit never follows a takeover.
    pub(crate) async fn before_commit(&mut self) -> Result<(), String> {
        if !self.lease.is_held() {
            // Lost during the uploads (told then).
            return Err("storage: the writer lease was taken over during the sync; nothing committed".into());
        }
        match self.lease.renew().await {
            Ok(()) => Ok(()),
            Err(LeaseError::Lost { holder }) => {
                self.lost(&holder);
                Err(format!("storage: the writer lease was taken over by {holder} during the sync; nothing committed"))
            }
            Err(LeaseError::Store(e)) => Err(e),
        }
    }

    /// Whether deleting from the bucket is allowed now (the lease is valid by this server's clock).
    pub(crate) fn may_delete(&self) -> bool {
        self.lease.is_valid()
    }

    /// This server wrote commit `seq`: its data directory holds it.
    pub(crate) fn committed(&mut self, seq: u64) {
        self.base_commit = Some(seq);
    }

    /// Lets the lease go (a graceful stop, after the final sync).
    ///
    /// # Errors
    /// The write failed: a successor waits for the ttl.
    pub async fn release(&mut self) -> Result<(), String> {
        if !self.lease.is_held() {
            return Ok(());
        }
        let res = self.lease.release().await.map_err(|e| e.to_string());
        self.metrics.held.set(0);
        if res.is_ok() {
            tracing::info!(holder = %self.lease.holder(), "storage: released the bucket's writer lease");
        }
        res
    }

    fn wait(&mut self, holder: String, expires_in: Duration) {
        self.metrics.waits.inc();
        self.metrics.held.set(0);
        if self.warned.as_deref() != Some(holder.as_str()) {
            tracing::warn!(
                %holder,
                expires_in = ?expires_in,
                "storage: another server holds the bucket's writer lease; this one does not sync until it stops renewing it"
            );
            self.warned = Some(holder);
        }
    }

    fn lost(&mut self, holder: &str) {
        self.metrics.lost.inc();
        self.metrics.held.set(0);
        self.warned = Some(holder.to_string());
        tracing::error!(
            %holder,
            "storage: the bucket's writer lease was taken over by another server; this one stops syncing and deletes nothing"
        );
    }

    /// The bucket's newest commit (number, node) when this data directory does not hold it.
    async fn behind(&self) -> Result<Option<(u64, String)>, String> {
        let bucket = &self.lease.bucket;
        let Some(&seq) = bucket.commit_numbers().await?.last() else {
            return Ok(None);
        };
        if let Some(base) = self.base_commit {
            if seq <= base {
                return Ok(None);
            }
            let node = bucket.read_commit(seq).await.map(|c| c.node).unwrap_or_default();
            return Ok(Some((seq, node)));
        }
        let commit = bucket.read_commit(seq).await?;
        // A commit another process wrote on this node's behalf (a retired tree's round) is not in this
        // directory unless it recorded it: it adopts it at its next start ([`crate::Bucket::adopt_tended`]).
        let tended_elsewhere = commit.tended_by.is_some() && self.recorded_commit != Some(seq);
        Ok((commit.node != self.lease.node || tended_elsewhere).then_some((seq, commit.node)))
    }
}
