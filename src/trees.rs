//! A query node over several ingest nodes (issue 22, `server.role = "query"` beside servers with
//! `server.role = "ingest"`): each ingest node writes its own tree of the bucket, `prefix/nodes/<name>/`,
//! under its own writer lease. The query node lists those trees every `storage.sync_interval`, follows
//! each into a pair of read-only stores of its own (`<data_dir>/nodes/<name>/`, the same `Follower` as the
//! prefix's own commits use), and hands the set to the query paths (`query::peers::TreeSet`), which read
//! every tree and ask each tree's node for what it has not synced yet.
//!
//! The prefix's own commits (a server with role "all") stay the query node's own stores; they are read
//! while they hold a commit, or while no ingest node's tree exists (a writer before its first commit).
//! `storage.cache_max_bytes` (the parts on disk), `store.decoded_cache_max_bytes` (decoded metric runs
//! in memory) and `store.scan_cache_max_bytes` (log scans' answers in memory) are shared out evenly
//! between the own stores and the trees followed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use store::{LogStore, MetricStore, StoreOptions};

/// The ingest nodes' trees a query node follows.
pub struct NodeTrees {
    bucket: bucket::Bucket,
    /// Where the trees' stores live: `<data_dir>/nodes`.
    dir: PathBuf,
    options: StoreOptions,
    cache: Option<(u64, bucket::cache::CacheMetrics)>,
    metrics: bucket::follow::FollowMetrics,
    followers: Vec<(String, bucket::follow::Follower)>,
    trees: query::peers::Trees,
    /// `store.decoded_cache_max_bytes`, shared out evenly between the own stores and the trees'.
    decoded_cache: usize,
    /// `store.scan_cache_max_bytes`, the same.
    scan_cache: usize,
    /// `store.log_page_cache_max_bytes`, the same.
    page_cache: usize,
    /// Whether the prefix's own lease was seen released at the last round.
    root_released: bool,
}

impl NodeTrees {
    /// `options`: the query node's own store options (their data directory is the parent of the trees').
    pub fn new(
        bucket: bucket::Bucket,
        options: &StoreOptions,
        cache: Option<(u64, bucket::cache::CacheMetrics)>,
        metrics: bucket::follow::FollowMetrics,
        trees: query::peers::Trees,
    ) -> NodeTrees {
        let dir = options.data_dir.join(bucket::NODES_DIR);
        let options = StoreOptions { disk: None, ..options.clone() };
        let decoded_cache = usize::try_from(options.tuning.decoded_cache_max_bytes.as_u64()).unwrap_or(usize::MAX);
        let scan_cache = usize::try_from(options.tuning.scan_cache_max_bytes.as_u64()).unwrap_or(usize::MAX);
        let page_cache = usize::try_from(options.tuning.log_page_cache_max_bytes.as_u64()).unwrap_or(usize::MAX);
        let cache = cache.filter(|(max, _)| *max > 0);
        NodeTrees {
            bucket,
            dir,
            options,
            cache,
            metrics,
            followers: Vec::new(),
            trees,
            decoded_cache,
            scan_cache,
            page_cache,
            root_released: false,
        }
    }

    /// Opens the trees that appeared in the bucket, follows every tree to its newest commit, and publishes
    /// the set: the own stores are read when `own_commit` (they follow a commit of the prefix's own) or
    /// when there is no ingest node's tree.
    ///
    /// # Errors
    /// The listing failed; the trees followed so far stay as they were.
    pub async fn follow_once(&mut self, own_commit: bool) -> Result<(), String> {
        let names = self.bucket.node_trees().await?;
        for name in names {
            if self.followers.iter().any(|(n, _)| *n == name) {
                continue;
            }
            match self.open(&name).await {
                Ok(f) => {
                    tracing::info!(node = %name, "query node: following a new ingest node's tree of the bucket");
                    self.followers.push((name, f));
                }
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "query node: cannot open an ingest node's tree; retried at the next interval")
                }
            }
        }
        // A writer that released its lease (a graceful stop, after its last sync) left everything in its
        // tree, and so did one whose lease another node took for the tree's retention (`crate::retired`):
        // nobody is asked for it until a writer takes the lease again. The leases are read before the
        // follows, so a tree counts as retired only once the commit before the release is applied.
        let mut released = std::collections::HashSet::new();
        for (name, _) in &self.followers {
            let tree = self.bucket.node_tree(name);
            let lease = bucket::lease::Lease::new(tree, bucket::lease::WriterLease::NAME, "query-node", Duration::ZERO);
            if matches!(lease.read().await, Ok(Some(record)) if !record.writer_holds(Some(name), &[])) {
                released.insert(name.clone());
            }
        }
        // The prefix's own writer (a server with role "all") likewise, but only beside ingest nodes' trees,
        // after a move to ingest nodes: a query node beside that server alone keeps asking it through its
        // restarts, since it takes writes again at once (an ingest node waits until query nodes have seen
        // its lease taken; see `WriteGate`). Its commits were followed before this runs: it counts as
        // retired once its lease was seen released at two rounds in a row.
        let root_released = own_commit && !self.followers.is_empty() && {
            let lease = bucket::lease::Lease::new(
                self.bucket.clone(),
                bucket::lease::WriterLease::NAME,
                "query-node",
                Duration::ZERO,
            );
            let nodes: Vec<String> = self.followers.iter().map(|(n, _)| n.clone()).collect();
            matches!(lease.read().await, Ok(Some(record)) if !record.writer_holds(None, &nodes))
        };
        if root_released && self.root_released {
            released.insert(String::new());
        }
        self.root_released = root_released;
        let share = self.cache.as_ref().map(|(max, _)| max / (self.followers.len() as u64 + 1));
        let decoded = self.own_decoded_share();
        let scan = self.own_scan_share();
        let pages = self.own_page_share();
        let mut retired: std::collections::HashSet<String> =
            released.iter().filter(|n| n.is_empty()).cloned().collect();
        for (name, follower) in &mut self.followers {
            if let Some(share) = share {
                follower.set_cache_max(share.max(1));
            }
            follower.metrics().set_decoded_cache_max(decoded);
            follower.logs().set_scan_cache_max(scan);
            follower.logs().set_page_cache_max(pages);
            match follower.follow_once().await {
                Ok(_) if released.contains(name.as_str()) => {
                    retired.insert(name.clone());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(node = %name, error = %e, "storage: following an ingest node's tree failed; answering from the last commit applied, retried at the next interval");
                }
            }
        }
        let others: Vec<query::peers::Tree> = self
            .followers
            .iter()
            .map(|(name, f)| query::peers::Tree {
                node: name.clone(),
                logs: f.logs().clone(),
                metrics: f.metrics().clone(),
            })
            .collect();
        self.metrics.trees.set(others.len() as i64);
        let set = query::peers::TreeSet { root: own_commit || others.is_empty(), others: Arc::new(others), retired };
        *self.trees.write() = set;
        Ok(())
    }

    /// The share of `store.decoded_cache_max_bytes` of each metric store (the own one and each tree's).
    pub fn own_decoded_share(&self) -> usize {
        self.decoded_cache / (self.followers.len() + 1)
    }

    /// The share of `store.scan_cache_max_bytes` of each log store (the own one and each tree's).
    pub fn own_scan_share(&self) -> usize {
        self.scan_cache / (self.followers.len() + 1)
    }

    /// The share of `store.log_page_cache_max_bytes` of each log store (the own one and each tree's).
    pub fn own_page_share(&self) -> usize {
        self.page_cache / (self.followers.len() + 1)
    }

    /// The share of `storage.cache_max_bytes` of the query node's own stores.
    pub fn own_cache_share(&self) -> Option<u64> {
        self.cache.as_ref().map(|(max, _)| (max / (self.followers.len() as u64 + 1)).max(1))
    }

    async fn open(&self, name: &str) -> Result<bucket::follow::Follower, String> {
        let options = StoreOptions { data_dir: self.dir.join(name), ..self.options.clone() };
        std::fs::create_dir_all(&options.data_dir).map_err(|e| format!("{}: {e}", options.data_dir.display()))?;
        let tree = self.bucket.node_tree(name);
        let cache_metrics = self.cache.as_ref().map(|(_, m)| m.clone()).unwrap_or_default();
        let (logs, metrics) = open_tree_stores(options, &tree, cache_metrics).await?;
        let reason = "this is a query node (server.role = \"query\"): send writes to an ingest node";
        logs.set_read_only(reason);
        metrics.set_read_only(reason);
        // Counters shared with the own follower; the applied commit is the own stores'.
        let follow_metrics =
            bucket::follow::FollowMetrics { applied_commit: Default::default(), ..self.metrics.clone() };
        let follower = bucket::follow::Follower::new(tree, logs, metrics, None, follow_metrics);
        Ok(match &self.cache {
            Some((max, m)) => follower.with_cache(*max, m.clone()),
            None => follower,
        })
    }
}

/// Opens a store pair on `options.data_dir` that reads the parts it lacks from `tree` (a tree of the bucket
/// followed or tended by another node). Its store metrics are not exported: the node's own are.
///
/// # Errors
/// A store does not open.
pub(crate) async fn open_tree_stores(
    options: StoreOptions,
    tree: &bucket::Bucket,
    cache_metrics: bucket::cache::CacheMetrics,
) -> Result<(LogStore, MetricStore), String> {
    let (logs, metrics) = tokio::task::spawn_blocking(move || {
        let mut registry = Registry::default();
        let logs = LogStore::open(options.clone(), &mut registry)?;
        let metrics = MetricStore::open(options, &mut registry)?;
        Ok::<_, store::Error>((logs, metrics))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let parts: Arc<dyn store::remote::RemoteParts> = bucket::cache::BucketParts::new(tree.clone(), cache_metrics);
    logs.attach_remote(parts.clone());
    metrics.attach_remote(parts);
    Ok((logs, metrics))
}
