//! Retired trees (issue 22): an ingest node that stopped for good (scaled down, renamed) leaves its tree
//! in the bucket, `prefix/nodes/<name>/`, with its writer lease released at its graceful stop (after a
//! final sync that succeeded). Nobody writes that tree any more, so nobody would age it out or compact
//! it: its days would outlive `server.retention` for ever, its last small parts never merge. Every
//! `storage.retired_trees_interval` one process tends those trees, by a lease `leases/compactor.json`
//! under the prefix: a compactor (`server.role = "compactor"`), which keeps that lease, or else, round by
//! round, one of the ingest nodes. For a tree whose writer lease was released (or is held by a round
//! whose process died: once the record stayed the same for its ttl):
//!
//! - it takes the tree's writer lease, the same conditional write a returning node would race it for, so
//!   that one process at a time acts on a tree;
//! - when the newest commit names a day older than the shortest retention period, or a day with several
//!   parts, it restores that commit into a work directory (`<data_dir>/bucket-sync/retired/<name>`; the
//!   manifests and catalogs only, the parts stay in the bucket and a merge fetches its inputs), opens a
//!   pair of stores on it, applies the retention as the node itself would have (`apply_retention`: whole
//!   days past `server.retention` or a tenant's `[[retention.rule]]`, and what a rule with a selector
//!   matches in the days past its period),
//!   compacts (`compact`: a finished day's parts become one), and syncs the result as the tree's next
//!   commit, named for the tree's writer and marked `tended_by` this round's lease holder, renewing the
//!   tree's lease meanwhile;
//! - when the newest commit is older than [`settle`] (no query node can still be reading an older one),
//!   it deletes the older commits and the objects only they named: expired and merged-away parts leave
//!   the bucket;
//! - it releases the lease again, so that query nodes keep treating the tree as retired and a node of
//!   that name that comes back takes it at once.
//!
//! A tree whose node holds its lease, or stopped without releasing it (a crash, or a final sync that
//! failed: its disk may hold acknowledged data not yet synced, which only that node can add), is left
//! to that node.
//!
//! The prefix's own tree, the commits of a server with role "all" from before a move to ingest nodes,
//! is tended the same way once that server released its lease.
//!
//! A node that comes back with its old data directory finds a tended newest commit and adopts it before
//! its stores open (`bucket::adopt`): its directory held nothing the tree's commits do not, and its part
//! numbering continues after the parts the round wrote.

use std::path::PathBuf;
use std::time::Duration;

use bucket::lease::{Lease, LeaseError, Observed, WriterLease};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use store::{LogStore, MetricStore, StoreOptions};

/// The label (work directory, logs) of the prefix's own tree.
const PREFIX_TREE: &str = ".prefix";

/// The lease, under the prefix, of the one process that tends the retired trees.
pub const COMPACTOR_LEASE: &str = "compactor";

/// What a round found of a tree's newest commit before taking its lease.
struct Judged {
    /// That commit.
    seq: u64,
    /// It names a day past the shortest retention period.
    expired: bool,
    /// It is older than [`settle`], and older commits exist.
    settled: bool,
    /// It names a day with several parts of one signal and tenant.
    compactable: bool,
    /// It holds a delete request past `store.delete_cancel_period` that is not processed yet.
    deletes_due: bool,
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Trees whose lease this node took.
    pub tended: usize,
    /// Parts the retention deleted.
    pub parts_expired: usize,
    /// Parts merged into others.
    pub parts_compacted: usize,
    /// Parts rewritten without the rows of delete requests.
    pub parts_rewritten: usize,
    /// Commits written.
    pub commits: usize,
    /// Objects deleted from the bucket.
    pub objects_deleted: usize,
}

/// The rounds' metrics, `lumen_bucket_retired_trees_*`.
#[derive(Clone, Default)]
pub struct RetiredMetrics {
    rounds: Counter,
    tended: Counter,
    parts_expired: Counter,
    parts_compacted: Counter,
    parts_rewritten: Counter,
    deletes_recorded: Counter,
    objects_deleted: Counter,
    failures: Counter,
    lease_held: Gauge,
    lease_waits: Counter,
}

impl RetiredMetrics {
    pub fn register(registry: &mut Registry) -> RetiredMetrics {
        let m = RetiredMetrics::default();
        let r = registry.sub_registry_with_prefix("lumen_bucket_retired_trees");
        r.register("rounds", "rounds over the other nodes' trees (storage.retired_trees_interval)", m.rounds.clone());
        r.register("tended", "retired trees whose writer lease a round took", m.tended.clone());
        r.register("parts_expired", "parts of retired trees the retention deleted", m.parts_expired.clone());
        r.register("parts_compacted", "parts of retired trees merged into others", m.parts_compacted.clone());
        r.register(
            "parts_rewritten",
            "parts of retired trees rewritten without the rows of delete requests",
            m.parts_rewritten.clone(),
        );
        r.register(
            "deletes_recorded",
            "delete requests recorded in retired trees for query nodes",
            m.deletes_recorded.clone(),
        );
        r.register(
            "lease_held",
            "1 while this process holds the lease `compactor` (it tends the retired trees)",
            m.lease_held.clone(),
        );
        r.register(
            "lease_waits",
            "rounds that did not run because another process holds the lease `compactor`",
            m.lease_waits.clone(),
        );
        r.register(
            "objects_deleted",
            "objects of retired trees deleted from the bucket (older commits and what only they named)",
            m.objects_deleted.clone(),
        );
        r.register(
            "failures",
            "retired trees (or listings) a round failed on, retried at the next",
            m.failures.clone(),
        );
        m
    }
}

impl Report {
    fn add(&mut self, r: &Report) {
        self.tended += r.tended;
        self.parts_expired += r.parts_expired;
        self.parts_compacted += r.parts_compacted;
        self.parts_rewritten += r.parts_rewritten;
        self.commits += r.commits;
        self.objects_deleted += r.objects_deleted;
    }
}

/// The retired trees' retention and compaction, as one ingest node or a compactor runs them.
pub struct RetiredTrees {
    /// The prefix's bucket: the trees are under it.
    bucket: bucket::Bucket,
    /// This node's name: its own tree is not tended here, and its leases name it.
    node: String,
    /// `<data_dir>/bucket-sync/retired`.
    work: PathBuf,
    /// The stores' options of this node (retention, rules, tuning); the data directory is replaced.
    options: StoreOptions,
    storage: bucket::StorageConfig,
    /// See [`settle`].
    settle: Duration,
    /// Trees told about once (held by their node without a release).
    told: std::collections::HashSet<String>,
    /// The trees' leases this node waits on, kept between rounds: a lease counts as run out once its record
    /// stayed the same for its ttl as this process saw it (a retention round of a process that died
    /// holding it).
    waiting: std::collections::HashMap<String, Lease>,
    /// The lease [`COMPACTOR_LEASE`]; out of `self` while a round runs.
    compactor: Option<Lease>,
    /// Keep the lease between rounds (a compactor), rather than releasing it after each (an ingest node).
    keep_lease: bool,
    /// The holder last told about waiting for the lease.
    told_holder: Option<String>,
    /// Per tree, the newest commit found to hold nothing to merge: not restored again for that.
    merged: std::collections::HashMap<String, u64>,
    /// The `deletes.json` objects (content-addressed, so never changing) found to hold no request left
    /// to process: not downloaded again.
    no_pending: std::collections::HashSet<String>,
    metrics: RetiredMetrics,
}

/// How long after a retired tree's newest commit its older commits and their objects are deleted: no
/// query node is still on an older one by then. They follow every `sync_interval`, and a query reads the
/// commit it started on for at most `query.timeout`.
pub fn settle(storage: &bucket::StorageConfig, query_timeout: Duration) -> Duration {
    2 * storage.sync_interval + query_timeout
}

impl RetiredTrees {
    /// `options`: this node's store options; `settle`: see [`settle`].
    pub fn new(
        bucket: bucket::Bucket,
        node: &str,
        options: &StoreOptions,
        storage: &bucket::StorageConfig,
        settle: Duration,
        metrics: RetiredMetrics,
    ) -> Self {
        Self::in_work_dir(bucket, node, options, storage, settle, metrics, "retired")
    }

    /// As [`Self::new`], for the delete requests query nodes send to retired trees
    /// ([`Self::record_delete`]): a work directory of its own, so that it runs beside the rounds.
    pub fn for_deletes(
        bucket: bucket::Bucket,
        node: &str,
        options: &StoreOptions,
        storage: &bucket::StorageConfig,
        metrics: RetiredMetrics,
    ) -> Self {
        Self::in_work_dir(bucket, node, options, storage, Duration::MAX, metrics, "retired-deletes")
    }

    fn in_work_dir(
        bucket: bucket::Bucket,
        node: &str,
        options: &StoreOptions,
        storage: &bucket::StorageConfig,
        settle: Duration,
        metrics: RetiredMetrics,
        work: &str,
    ) -> Self {
        let work = options.data_dir.join(store::snapshot::STAGING).join(work);
        // A round killed half-way leaves its work directory: nothing in it is needed.
        let _ = std::fs::remove_dir_all(&work);
        RetiredTrees {
            node: node.to_string(),
            work,
            // The node's retention, its `[[retention.rule]]`s with a selector too (they rewrite parts, which
            // a returning node adopts).
            options: StoreOptions { disk: None, ..options.clone() },
            storage: storage.clone(),
            settle,
            told: Default::default(),
            waiting: Default::default(),
            compactor: Some(Lease::new(bucket.clone(), COMPACTOR_LEASE, node, storage.lease_ttl())),
            bucket,
            keep_lease: false,
            told_holder: None,
            merged: Default::default(),
            no_pending: Default::default(),
            metrics,
        }
    }

    /// Keeps the lease [`COMPACTOR_LEASE`] between rounds (a compactor: call [`Self::keep_lease_fresh`]
    /// every third of `storage.lease_ttl`).
    pub fn keeping_the_lease(mut self) -> Self {
        self.keep_lease = true;
        self
    }

    /// One round over the trees of the bucket, if this process holds (or takes) the lease
    /// [`COMPACTOR_LEASE`]; an ingest node releases it again afterwards. Ok(None): another process holds
    /// the lease.
    ///
    /// # Errors
    /// The listing failed, or the lease could not be read. A tree that fails is logged and tried again
    /// at the next round.
    pub async fn run_once(&mut self) -> Result<Option<Report>, String> {
        self.metrics.rounds.inc();
        if !self.keep_lease_fresh().await? {
            return Ok(None);
        }
        let mut lease = self.compactor.take().expect("the lease is back after each round");
        let (result, held) = renewing(&mut lease, self.round()).await;
        if !held {
            self.lease_lost();
        } else if !self.keep_lease {
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "storage: cannot release the lease `compactor`; it runs out after storage.lease_ttl");
            }
            self.metrics.lease_held.set(0);
        }
        self.compactor = Some(lease);
        if result.is_err() {
            self.metrics.failures.inc();
        }
        result.map(Some)
    }

    /// Renews the lease [`COMPACTOR_LEASE`], or takes it when free. Ok(false): another process holds it
    /// (told once per holder).
    ///
    /// # Errors
    /// The store could not be read or written.
    pub async fn keep_lease_fresh(&mut self) -> Result<bool, String> {
        let lease = self.compactor.as_mut().expect("not during a round");
        if lease.is_held() {
            match lease.renew().await {
                Ok(()) => return Ok(true),
                Err(LeaseError::Lost { .. }) => self.lease_lost(),
                Err(LeaseError::Store(e)) => return Err(e),
            }
        }
        let lease = self.compactor.as_mut().expect("not during a round");
        match lease.acquire().await.map_err(|e| e.to_string())? {
            Observed::Held => {
                self.metrics.lease_held.set(1);
                self.told_holder = None;
                tracing::info!(holder = %lease.holder(), "storage: took the lease `compactor`: this process tends the retired trees");
                Ok(true)
            }
            Observed::HeldBy { holder, .. } => {
                self.metrics.lease_waits.inc();
                if self.told_holder.as_deref() != Some(holder.as_str()) {
                    tracing::info!(%holder, "storage: another process holds the lease `compactor` and tends the retired trees; this one waits");
                    self.told_holder = Some(holder);
                }
                Ok(false)
            }
            Observed::Free => Ok(false),
        }
    }

    /// Lets the lease [`COMPACTOR_LEASE`] go (a compactor's graceful stop).
    pub async fn release_lease(&mut self) {
        if let Some(lease) = self.compactor.as_mut()
            && let Err(e) = lease.release().await
        {
            tracing::warn!(error = %e, "storage: cannot release the lease `compactor`; a successor takes it after storage.lease_ttl");
        }
        self.metrics.lease_held.set(0);
    }

    fn lease_lost(&mut self) {
        self.metrics.lease_held.set(0);
        tracing::warn!(
            "storage: the lease `compactor` was taken over (or ran out); this process stops tending the retired trees until it takes it again"
        );
    }

    async fn round(&mut self) -> Result<Report, String> {
        let mut report = Report::default();
        let names = self.bucket.node_trees().await?;
        // The node trees, then the prefix's own tree: the commits of a server with role "all" from before
        // the move to ingest nodes (labelled `.prefix`, which no node name can be).
        let mut trees: Vec<(String, bucket::Bucket)> =
            names.iter().filter(|n| **n != self.node).map(|n| (n.clone(), self.bucket.node_tree(n))).collect();
        trees.push((PREFIX_TREE.to_string(), self.bucket.clone()));
        for (name, tree) in trees {
            let probe = Lease::new(tree.clone(), WriterLease::NAME, &self.node, self.storage.lease_ttl());
            let record = match probe.read().await {
                Ok(Some(r)) => r,
                // A node before its first sync (no lease yet), or a record that cannot be read now.
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "storage: cannot read a tree's writer lease; retried at the next round");
                    continue;
                }
            };
            // Its own writer holds it, or stopped without releasing it. (Held by an ingest node for the
            // prefix's tree, or by another node for a node's tree: a retention round, which ran out if
            // its process is gone; `Lease::acquire` waits for that.)
            let own = (name != PREFIX_TREE).then_some(name.as_str());
            if record.writer_holds(own, &names) {
                if self.told.insert(name.clone()) {
                    tracing::debug!(node = %name, "storage: a tree's own writer holds its lease (or stopped without releasing it); its retention is that writer's");
                }
                continue;
            }
            self.told.remove(&name);
            match self.tend(&name, tree).await {
                Ok(r) => {
                    // Counted per tree, as each is done.
                    self.metrics.tended.inc_by(r.tended as u64);
                    self.metrics.parts_expired.inc_by(r.parts_expired as u64);
                    self.metrics.parts_compacted.inc_by(r.parts_compacted as u64);
                    self.metrics.parts_rewritten.inc_by(r.parts_rewritten as u64);
                    self.metrics.objects_deleted.inc_by(r.objects_deleted as u64);
                    report.add(&r);
                }
                Err(e) => {
                    self.metrics.failures.inc();
                    tracing::warn!(node = %name, error = %e, "storage: tending a retired tree failed; retried at the next round")
                }
            }
        }
        Ok(report)
    }

    /// Whether the newest commit names a day some retention period has passed.
    fn has_expired_days(&self, commit: &bucket::commit::Commit) -> bool {
        let shortest =
            self.options.retention_rules.iter().map(|r| r.period).fold(self.options.retention, Duration::min);
        let cutoff = store::time::day_of_ns(
            store::time::now_ns().saturating_sub(i64::try_from(shortest.as_nanos()).unwrap_or(i64::MAX)),
        );
        commit.files.iter().filter_map(|f| day_of_path(&f.path)).any(|day| day < cutoff)
    }

    async fn tend(&mut self, name: &str, tree: bucket::Bucket) -> Result<Report, String> {
        let seqs = tree.commit_numbers().await?;
        let Some(&newest) = seqs.last() else {
            return Ok(Report::default());
        };
        let commit = tree.read_commit(newest).await?;
        let expired = self.has_expired_days(&commit);
        let age_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
            .saturating_sub(commit.time_unix_ms);
        let settled = age_ms > self.settle.as_millis() as i64 && seqs.len() > 1;
        let compactable = self.merged.get(name) != Some(&commit.seq) && has_days_to_merge(&commit);
        let deletes_due = self.deletes_due(&tree, &commit).await?;
        if !expired && !settled && !compactable && !deletes_due {
            return Ok(Report::default());
        }
        let mut lease = self
            .waiting
            .remove(name)
            .unwrap_or_else(|| Lease::new(tree.clone(), WriterLease::NAME, &self.node, self.storage.lease_ttl()));
        match lease.acquire().await.map_err(|e| e.to_string())? {
            Observed::Held => {}
            // The node came back, or another node tends it now.
            _ => {
                self.waiting.insert(name.to_string(), lease);
                return Ok(Report::default());
            }
        }
        let dir = self.work.join(name);
        // Its commits are named for the tree's writer (the node, or the prefix's server): they hold what that
        // writer's own retention would have done, and the writer, if it comes back, continues from them.
        let judged = Judged { seq: commit.seq, expired, settled, compactable, deletes_due };
        let result = self.adopt(&commit.node, tree, lease, &dir, judged).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        match &result {
            // Nothing merged although the commit looked like it: not restored again for that commit.
            Ok(r) if compactable && r.parts_compacted == 0 => {
                self.merged.insert(name.to_string(), commit.seq);
            }
            _ => {}
        }
        result
    }

    /// With the tree's lease held: restores, expires, merges, commits (named for `writer`, tended by this
    /// round) or trims, and releases the lease.
    async fn adopt(
        &self,
        writer: &str,
        tree: bucket::Bucket,
        mut lease: Lease,
        dir: &std::path::Path,
        judged: Judged,
    ) -> Result<Report, String> {
        let mut report = Report { tended: 1, ..Report::default() };
        let opened = self.open(&tree, dir).await;
        let (logs, metrics, restored) = match opened {
            // A commit written since the judgement (its writer came back and left again): the next round
            // judges that one.
            Ok(Some(o)) if o.2 == judged.seq => o,
            other => {
                let _ = lease.release().await;
                return other.map(|_| report);
            }
        };
        // The retention and the merges fetch parts and write new ones: the tree's lease is renewed meanwhile.
        let holder = lease.holder().to_string();
        let changes = async {
            let mut expired = 0;
            if judged.expired {
                expired += logs.apply_retention().await.map_err(|e| e.to_string())?;
                expired += metrics.apply_retention().await.map_err(|e| e.to_string())?;
            }
            let mut merged = 0;
            if judged.compactable {
                merged += logs.compact().await.map_err(|e| e.to_string())?;
                merged += metrics.compact().await.map_err(|e| e.to_string())?;
            }
            let mut rewritten = 0;
            if judged.deletes_due {
                rewritten += logs.process_deletes().await.map_err(|e| e.to_string())?;
                rewritten += metrics.process_deletes().await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>((expired, merged, rewritten))
        };
        let (changes, held) = renewing(&mut lease, changes).await;
        let (expired, merged, rewritten) = match changes {
            Ok(c) if held => c,
            other => {
                let _ = lease.release().await;
                return Err(other.err().unwrap_or_else(|| "the tree's writer lease was lost during the round".into()));
            }
        };
        report.parts_expired += expired;
        report.parts_compacted += merged;
        report.parts_rewritten += rewritten;
        let lease = WriterLease::new(lease, bucket::lease::LeaseMetrics::default()).with_base_commit(Some(restored));
        let mut syncer = bucket::sync::Syncer::new(
            tree,
            logs.clone(),
            metrics.clone(),
            writer.to_string(),
            self.storage.keep_commits,
            bucket::sync::SyncMetrics::default(),
        )
        .with_lease(lease)
        .tending(holder)
        .verified();
        let work = async {
            // A processed request is a change too (its status), even when no part held its rows.
            if report.parts_expired > 0 || report.parts_compacted > 0 || judged.deletes_due {
                let synced = syncer.sync_once().await?;
                report.commits += usize::from(synced.commit.is_some());
                report.objects_deleted += synced.deleted_objects;
                if synced.waiting {
                    return Err(synced.wait_reason.unwrap_or_else(|| "the tree's lease was lost".into()));
                }
            } else if judged.settled {
                report.objects_deleted += syncer.trim_commits(1).await?;
            }
            Ok::<(), String>(())
        };
        let result = work.await;
        if let Err(e) = syncer.release_lease().await {
            tracing::warn!(writer = %writer, error = %e, "storage: cannot release a retired tree's lease; it runs out after storage.lease_ttl");
        }
        drop(syncer);
        drop((logs, metrics));
        result?;
        if report.parts_expired > 0 || report.parts_compacted > 0 || report.objects_deleted > 0 || judged.deletes_due {
            tracing::info!(
                writer = %writer,
                parts_expired = report.parts_expired,
                parts_compacted = report.parts_compacted,
                parts_rewritten = report.parts_rewritten,
                commits = report.commits,
                objects_deleted = report.objects_deleted,
                "storage: tended a retired node's tree (retention, merges, deletes, old commits)"
            );
        }
        Ok(report)
    }

    /// Whether the newest commit of `tree` holds a delete request that is not processed and whose cancel
    /// period (`store.delete_cancel_period`) has passed: its rewrite is due.
    async fn deletes_due(&mut self, tree: &bucket::Bucket, commit: &bucket::commit::Commit) -> Result<bool, String> {
        let period = i64::try_from(self.options.tuning.delete_cancel_period.as_nanos()).unwrap_or(i64::MAX);
        let due_before = store::time::now_ns().saturating_sub(period);
        for f in commit.files.iter().filter(|f| f.path.rsplit('/').next() == Some("deletes.json")) {
            if self.no_pending.contains(&f.key) {
                continue;
            }
            let bytes = tree.fetch_committed(f, commit.seq).await?;
            let requests: Vec<store::delete::DeleteRequest> = serde_json::from_slice(&bytes).map_err(|e| {
                format!("storage: {} of commit {} is not a list of delete requests: {e}", f.path, commit.seq)
            })?;
            let pending: Vec<_> =
                requests.iter().filter(|r| r.status == store::delete::DeleteStatus::Received).collect();
            if pending.is_empty() {
                self.no_pending.insert(f.key.clone());
            } else if pending.iter().any(|r| r.created_ns <= due_before) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Records a delete request in the retired tree of `node` ("" for the prefix's own tree), sent by a
    /// query node: takes the tree's writer lease (waiting while a round holds it, at most three of its
    /// ttl), restores the newest commit's metadata, records the request (`request_delete`: durable, and
    /// hiding what it covers from every reader that follows the commit), commits that as the tree's next
    /// commit (tended), and releases the lease. A later round rewrites the parts once the request's cancel
    /// period has passed. A node that comes back adopts the commit, and with it the request.
    ///
    /// # Errors
    /// [`DeleteError`]: what the query node answers its caller.
    pub async fn record_delete(
        &mut self,
        node: &str,
        tenant: &store::model::Tenant,
        logs: bool,
        spec: store::delete::DeleteSpec,
    ) -> Result<(), DeleteError> {
        let unavailable = |e: String| DeleteError::Unavailable(e);
        if !node.is_empty() {
            bucket::check_node_name(node).map_err(DeleteError::BadRequest)?;
        }
        let (label, tree) =
            if node.is_empty() { (PREFIX_TREE, self.bucket.clone()) } else { (node, self.bucket.node_tree(node)) };
        let names = self.bucket.node_trees().await.map_err(unavailable)?;
        let mut lease = Lease::new(tree.clone(), WriterLease::NAME, &self.node, self.storage.lease_ttl());
        let deadline = tokio::time::Instant::now() + 3 * self.storage.lease_ttl();
        loop {
            let record = lease.read().await.map_err(|e| unavailable(e.to_string()))?;
            let Some(record) = record else {
                return Err(DeleteError::Conflict(format!("the bucket holds no tree of {label:?}")));
            };
            if record.writer_holds((!node.is_empty()).then_some(node), &names) {
                return Err(DeleteError::Conflict(format!(
                    "the tree of {label:?} is not retired: its node holds its lease again (or stopped without \
                     releasing it); send the delete again, it reaches that node"
                )));
            }
            match lease.acquire().await.map_err(|e| unavailable(e.to_string()))? {
                Observed::Held => break,
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(unavailable(format!(
                        "another process has held the lease of the tree of {label:?} for three times storage.lease_ttl"
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let dir = self.work.join(label);
        let result = self.record_held(&tree, lease, &dir, tenant, logs, spec).await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        if result.is_ok() {
            self.metrics.deletes_recorded.inc();
            tracing::info!(tree = %label, tenant = %tenant, logs, "storage: recorded a delete request in a retired tree");
        }
        result
    }

    async fn record_held(
        &self,
        tree: &bucket::Bucket,
        mut lease: Lease,
        dir: &std::path::Path,
        tenant: &store::model::Tenant,
        logs: bool,
        spec: store::delete::DeleteSpec,
    ) -> Result<(), DeleteError> {
        let (log_store, metric_store, restored) = match self.open(tree, dir).await {
            Ok(Some(o)) => o,
            other => {
                let _ = lease.release().await;
                return Err(DeleteError::Unavailable(
                    other.err().unwrap_or_else(|| "the tree holds no commit".to_string()),
                ));
            }
        };
        let recorded = if logs {
            log_store.request_delete(tenant, spec).map(|_| ())
        } else {
            metric_store.request_delete(tenant, spec).map(|_| ())
        };
        if let Err(e) = recorded {
            let _ = lease.release().await;
            return Err(match e {
                store::Error::Config(m) => DeleteError::BadRequest(m),
                e => DeleteError::Unavailable(e.to_string()),
            });
        }
        let holder = lease.holder().to_string();
        let writer = tree.latest_commit().await.ok().flatten().map(|c| c.node).unwrap_or_default();
        let lease = WriterLease::new(lease, bucket::lease::LeaseMetrics::default()).with_base_commit(Some(restored));
        let mut syncer = bucket::sync::Syncer::new(
            tree.clone(),
            log_store.clone(),
            metric_store.clone(),
            writer,
            self.storage.keep_commits,
            bucket::sync::SyncMetrics::default(),
        )
        .with_lease(lease)
        .tending(holder)
        .verified();
        let synced = syncer.sync_once().await;
        let _ = syncer.release_lease().await;
        match synced {
            Ok(r) if r.commit.is_some() => Ok(()),
            Ok(r) => Err(DeleteError::Unavailable(
                r.wait_reason.unwrap_or_else(|| "the delete request was not committed".to_string()),
            )),
            Err(e) => Err(DeleteError::Unavailable(e)),
        }
    }

    /// Restores the tree's newest commit into `dir` (parts left in the bucket) and opens a store pair on
    /// it. Ok(None): the tree holds no commit.
    async fn open(
        &self,
        tree: &bucket::Bucket,
        dir: &std::path::Path,
    ) -> Result<Option<(LogStore, MetricStore, u64)>, String> {
        let _ = tokio::fs::remove_dir_all(dir).await;
        tokio::fs::create_dir_all(dir).await.map_err(|e| format!("{}: {e}", dir.display()))?;
        let Some(restored) = tree.restore_if_empty_within(dir, Some(0)).await? else {
            return Ok(None);
        };
        let options = StoreOptions { data_dir: dir.to_path_buf(), ..self.options.clone() };
        let (logs, metrics) = crate::trees::open_tree_stores(options, tree, bucket::cache::CacheMetrics::default())
            .await
            .map_err(|e| format!("cannot open a retired tree's stores: {e}"))?;
        Ok(Some((logs, metrics, restored.commit)))
    }
}

/// Awaits `work` while renewing `lease` every third of its ttl. Returns its output and whether the lease
/// is still held (a renewal that fails for the store is retried at the next third; the lease stays valid
/// by this process's clock meanwhile).
async fn renewing<F: std::future::Future>(lease: &mut Lease, work: F) -> (F::Output, bool) {
    let every = lease.ttl() / 3;
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return (out, lease.is_held()),
            () = tokio::time::sleep(every), if lease.is_held() => match lease.renew().await {
                Ok(()) => {}
                Err(LeaseError::Lost { holder }) => {
                    tracing::warn!(%holder, lease = ?lease, "storage: a lease was taken over during a retired trees' round");
                }
                Err(LeaseError::Store(e)) => {
                    tracing::warn!(error = %e, lease = ?lease, "storage: renewing a lease during a retired trees' round failed; retried");
                }
            },
        }
    }
}

/// Whether `commit` names two or more part files in one directory (one signal, tenant and day): parts a
/// merge would make one.
fn has_days_to_merge(commit: &bucket::commit::Commit) -> bool {
    let mut seen = std::collections::HashSet::new();
    commit
        .files
        .iter()
        .filter(|f| f.path.ends_with(".parquet") && day_of_path(&f.path).is_some())
        .filter_map(|f| f.path.rsplit_once('/').map(|(dir, _)| dir))
        .any(|dir| !seen.insert(dir))
}

/// Why a delete request could not be recorded in a retired tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteError {
    /// The request is wrong (400, the same message a node gives).
    BadRequest(String),
    /// The tree is not retired (any more), or does not exist (409).
    Conflict(String),
    /// The bucket or the lease did not allow it now (503: send it again).
    Unavailable(String),
}

/// The day of a part's path (`…/date=YYYY-MM-DD/…`), in days since the epoch.
fn day_of_path(path: &str) -> Option<i64> {
    path.split('/').find_map(|seg| seg.strip_prefix("date=")).and_then(store::time::parse_day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_has_days_to_merge_when_one_directory_holds_two_parts() {
        let commit = |paths: &[&str]| bucket::commit::Commit {
            version: 1,
            seq: 1,
            time_unix_ms: 0,
            node: "n".into(),
            files: paths
                .iter()
                .map(|p| bucket::commit::CommitFile { path: (*p).into(), key: format!("data/{p}"), bytes: 1 })
                .collect(),
            tended_by: None,
        };
        let one_each = commit(&[
            "logs/tenant=t/date=2026-12-01/0000000000000001.parquet",
            "logs/tenant=t/date=2026-12-02/0000000000000002.parquet",
            "logs/tenant=u/date=2026-12-01/0000000000000003.parquet",
            "metrics/tenant=t/date=2026-12-01/0000000000000001.parquet",
            "logs/tenant=t/date=2026-12-01/0000000000000001.idx",
            "logs/manifest.json",
        ]);
        assert!(!has_days_to_merge(&one_each), "one part per signal, tenant and day");
        let two = commit(&[
            "logs/tenant=t/date=2026-12-01/0000000000000001.parquet",
            "logs/tenant=t/date=2026-12-01/0000000000000004.parquet",
        ]);
        assert!(has_days_to_merge(&two));
    }

    #[test]
    fn a_parts_day_is_read_from_its_path() {
        assert_eq!(
            day_of_path("logs/tenant=default/date=1970-01-03/0000000000000001.parquet"),
            Some(2),
            "days since the epoch"
        );
        assert_eq!(day_of_path("metrics/tenant=t/date=2026-12-07/series.idx"), store::time::parse_day("2026-12-07"));
        assert_eq!(day_of_path("logs/manifest.json"), None);
        assert_eq!(day_of_path("logs/tenant=t/date=garbage/1.parquet"), None);
    }
}
