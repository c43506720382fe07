//! `lumen server`: opens the store, binds the HTTP port and runs until shut down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use prometheus_client::registry::Registry;
use store::{LogStore, MetricStore, StoreOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::AppState;
use crate::metrics::IngestMetrics;

/// A started server.
pub struct Running {
    /// The bound HTTP address (useful when the config asked for port 0).
    pub http_addr: SocketAddr,
    /// The bound address of the embedded MQTT endpoint, when it listens.
    pub mqtt_addr: Option<SocketAddr>,
    /// The bound address of its `mqtts` listener, when it listens.
    pub mqtts_addr: Option<SocketAddr>,
    /// The bound OTLP gRPC address.
    pub otlp_grpc_addr: SocketAddr,
    /// The bound syslog listeners (`syslog.listen`), in its order.
    pub syslog_listeners: Vec<ingest_syslog::Listen>,
    pub store: LogStore,
    pub metric_store: MetricStore,
    shutdown: CancellationToken,
    ready: Arc<AtomicBool>,
    http: JoinHandle<std::io::Result<()>>,
    otlp_grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    mqtt: Vec<JoinHandle<()>>,
    mqtt_shutdown: CancellationToken,
    syslog: Vec<JoinHandle<()>>,
    syslog_shutdown: CancellationToken,
    engine: JoinHandle<store::Result<()>>,
    metric_engine: JoinHandle<store::Result<()>>,
    /// The ruler (rules APIs, reload on SIGHUP).
    pub ruler: ruler::Ruler,
    ruler_stop: tokio::sync::watch::Sender<bool>,
    /// The sync into `[storage]`'s bucket, when there is one: once more after the final flush.
    syncer: Option<Arc<tokio::sync::Mutex<bucket::sync::Syncer>>>,
    /// A compactor's rounds over the retired trees: the lease `compactor` is released at a graceful stop.
    compactor: Option<Arc<tokio::sync::Mutex<crate::retired::RetiredTrees>>>,
}

/// Checks, without opening the store or binding a port, everything [`start`] would refuse: the config's
/// values (the syslog listeners among them), the MQTT templates, broker and endpoint credentials, and with
/// `read_files` the token file, the TLS certificate and key and the MQTT password file (`lumen server
/// --check` reads them; `lumen config check` checks a file that may be meant for another machine, and does
/// not).
///
/// # Errors
/// The first problem, as `start` would report it.
pub fn check(config: &Config, read_files: bool) -> anyhow::Result<()> {
    config.validate()?;
    let auth_enabled = if read_files {
        if let Some(files) = config.tls_files() {
            crate::tls::Tls::load(files).context("server.tls_cert_file / server.tls_key_file")?;
        }
        crate::auth::load(config)?.is_enabled()
    } else {
        config.auth_enabled()
    };
    let s = &config.server;
    let mut listen = Vec::new();
    if s.mqtt_listen != "off" {
        listen.push((s.mqtt_listen.parse()?, "server.mqtt_listen", "--mqtt-listen"));
    }
    if s.mqtts_listen != "off" {
        listen.push((s.mqtts_listen.parse()?, "server.mqtts_listen", "--mqtts-listen"));
    }
    ingest_mqtt::check(&config.mqtt, &listen, auth_enabled, read_files).map_err(anyhow::Error::msg).context(
        "cannot start the MQTT ingest ([mqtt] section, --mqtt-listen, --mqtts-listen, --mqtt-broker, --mqtt-topic)",
    )?;
    if read_files {
        ruler::Ruler::check_sources(&config.ruler, &s.data_dir).map_err(anyhow::Error::msg).context(
            "the rules do not load ([ruler] rule_files, loki_rules_dir; `lumen rules check FILE` says more)",
        )?;
    }
    Ok(())
}

/// What a sync's report means for writes ([`store::DiskGuard::set_standby`]): refused while another server
/// holds the writer lease; and for an ingest node, also for `grace` after its first sync, so that query
/// nodes, which list the trees and read their leases every `storage.sync_interval`, know its tree (a new
/// one) and ask it again (after a graceful stop released the lease) before it acknowledges anything.
#[derive(Clone)]
struct WriteGate {
    guard: store::DiskGuard,
    grace: Option<std::time::Duration>,
    open_at: Arc<std::sync::OnceLock<std::time::Instant>>,
}

impl WriteGate {
    fn apply(&self, wait_reason: Option<String>) {
        let Some(grace) = self.grace.filter(|_| wait_reason.is_none()) else {
            return self.guard.set_standby(wait_reason);
        };
        let at = *self.open_at.get_or_init(|| std::time::Instant::now() + grace);
        if std::time::Instant::now() < at {
            self.guard.set_standby(Some(
                "ingest node starting: writes wait until query nodes have seen its tree and lease (2 x storage.sync_interval)"
                    .into(),
            ));
        } else {
            self.guard.set_standby(None);
        }
    }
}

/// Opens the store (replaying its write-ahead log), binds the HTTP listener and starts serving.
///
/// # Errors
/// An invalid config, a locked or unreadable data directory, or an address in use.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    config.validate()?;
    // The keys left at their default follow the memory budget; the derived values are checked again.
    let mut config = config;
    let budget = crate::memory::Budget::resolve(config.server.memory_limit, crate::memory::HostMemory::read());
    let shares = budget.map(|b| crate::memory::derive(&mut config, &b)).unwrap_or_default();
    config.validate().context("the values derived from server.memory_limit")?;
    let query_node = config.server.role == crate::config::Role::Query;
    let ingest_node = config.server.role == crate::config::Role::Ingest;
    // A compactor tends the retired trees of the bucket (`src/retired.rs`) and serves only its probes and
    // metrics.
    let compactor_node = config.server.role == crate::config::Role::Compactor;
    // The name of this node's tree of the bucket (an ingest node), empty for the prefix's own writer.
    let tree_name = if ingest_node { config.server_node_name() } else { String::new() };
    if ingest_node {
        // Rules read every node's data, and an ingest node holds only what came through it.
        config.ruler.rule_files.clear();
        config.ruler.tenant_rule_files.clear();
        config.ruler.loki_rules_dir = std::path::PathBuf::new();
        tracing::info!(
            node = %tree_name,
            "server.role = ingest: takes writes, compacts and syncs them into its own tree of the bucket (nodes/<node>); rules are off"
        );
    }
    if compactor_node {
        config.server.mqtt_listen = "off".into();
        config.server.mqtts_listen = "off".into();
        config.mqtt.broker.url.clear();
        config.syslog.listen.clear();
        config.ruler.rule_files.clear();
        config.ruler.tenant_rule_files.clear();
        config.ruler.loki_rules_dir = std::path::PathBuf::new();
        tracing::info!(
            node = %config.server_node_name(),
            interval = ?config.storage.retired_trees_interval,
            "server.role = compactor: tends the bucket's retired trees (retention, merges, old commits) while it holds the lease `compactor`; takes no writes and answers no queries"
        );
    }
    if query_node {
        // A query node takes no writes. It evaluates the rules when it knows ingest nodes to write their
        // samples to (issue 22: with several ingest nodes, none of them sees all the data).
        config.server.mqtt_listen = "off".into();
        config.server.mqtts_listen = "off".into();
        config.mqtt.broker.url.clear();
        config.syslog.listen.clear();
        if config.query.ingest_urls.is_empty() || !config.ruler.on_query_nodes {
            config.ruler.rule_files.clear();
            config.ruler.tenant_rule_files.clear();
            config.ruler.loki_rules_dir = std::path::PathBuf::new();
        }
        tracing::info!(
            "server.role = query: answers queries from the bucket's newest commit; MQTT and syslog are off, writes are refused; rules run with ruler.on_query_nodes and query.ingest_urls"
        );
        if config.query.ingest_urls.is_empty() {
            tracing::warn!(
                "query.ingest_urls is empty: this query node answers from the bucket alone, without what the writer \
                 acknowledged since its last sync (up to one storage.sync_interval); name the writer's URL there"
            );
        } else {
            tracing::info!(ingest_urls = ?config.query.ingest_urls, "query node: selections also ask these ingest nodes for what the bucket does not hold yet");
        }
    }
    let s = &config.server;
    let auth = crate::auth::load(&config)?;
    if auth.is_enabled() {
        tracing::info!(tokens = auth.token_count(), auth_file = %s.auth_file.display(), "authentication on: every request needs a token");
    } else if [s.http_addr, s.otlp_grpc_addr].iter().any(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            http_addr = %s.http_addr,
            otlp_grpc_addr = %s.otlp_grpc_addr,
            "serving beyond loopback WITHOUT authentication (server.allow_unauthenticated): anyone who reaches these ports reads and writes every tenant"
        );
    }
    // `[storage]`: a bucket that refuses a second create of the same key, and a data directory without
    // state of its own filled from the bucket's newest commit before the stores open.
    let bucket = bucket::Bucket::open(&config.storage).map_err(anyhow::Error::msg)?;
    // A query node also follows the ingest nodes' trees, listed from the prefix itself.
    let prefix_bucket = bucket.clone();
    let bucket = if ingest_node { bucket.map(|b| b.node_tree(&tree_name)) } else { bucket };
    let mut bucket_verified = false;
    // The commit the data directory was restored from: it holds all of it (the writer lease's check).
    let mut restored_commit = None;
    // The writer lease when the adoption at start took it (see below).
    let mut early_lease = None;
    // Who this server writes as: its node's tree (an ingest node), or the prefix's own tree.
    let writer_node = if ingest_node { tree_name.clone() } else { crate::config::node_name("") };
    if let Some(b) = &bucket {
        match b.check_conditional_create().await {
            Ok(()) => bucket_verified = true,
            // A server with data of its own starts while the store is away (it keeps everything locally);
            // the sync checks again before its first commit. One without needs the bucket to start.
            Err(bucket::CheckError::Unreachable(e)) if bucket::restore::has_local_state(&s.data_dir) => {
                tracing::warn!(error = %e, "storage: the bucket cannot be reached; starting on the local data, the sync retries");
            }
            Err(e) => return Err(anyhow::Error::new(e)),
        }
        std::fs::create_dir_all(&s.data_dir)
            .with_context(|| format!("cannot create the data directory {}", s.data_dir.display()))?;
        let warm = Some(config.storage.cache_max_bytes.as_u64()).filter(|&b| b > 0);
        if bucket_verified
            && !compactor_node
            && let Some(r) = b.restore_if_empty_within(&s.data_dir, warm).await.map_err(anyhow::Error::msg)?
        {
            tracing::info!(commit = r.commit, files = r.files, bytes = r.bytes, left_in_bucket = r.left_in_bucket, bucket = %b.describe(), "data directory restored from the bucket");
            restored_commit = Some(r.commit);
        }
        if !query_node && !compactor_node {
            b.claim_tree(&s.data_dir).map_err(anyhow::Error::msg)?;
        }
        // A writer whose tree another node tended while it was away (a retired tree's retention or
        // compaction) adopts the newest commit instead of syncing its older data over it
        // (`bucket::adopt`). It takes its writer lease for that; an ingest node keeps it for its sync
        // (its tree has no other writer that could hold newer data), a server with role "all" lets it go
        // unless it adopted, so that its sync's check against a newer commit of another server still runs.
        if bucket_verified && !query_node && !compactor_node && restored_commit.is_none() {
            let warm = Some(config.storage.cache_max_bytes.as_u64()).filter(|&b| b > 0);
            let ttl = config.storage.lease_ttl();
            if let Some(mut adopted) =
                b.adopt_tended(&s.data_dir, &writer_node, ttl, warm, ingest_node).await.map_err(anyhow::Error::msg)?
            {
                if let Some(r) = &adopted.restored {
                    restored_commit = Some(r.commit);
                }
                if ingest_node || adopted.restored.is_some() {
                    early_lease = Some(adopted.lease);
                } else {
                    adopted.lease.release().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
        }
    }
    let mut registry = Registry::default();
    let disk =
        store::DiskGuard::new(&s.data_dir, config.store.min_free_disk.bytes(), config.disk_budget(), &mut registry)
            .with_context(|| format!("cannot read the free space of the data directory {}", s.data_dir.display()))?;
    if ingest_node {
        // Until its first commit, the node's tree is not in the bucket and no query node would answer
        // what it acknowledged: writes wait for the first sync (see below).
        disk.set_standby(Some("waiting for its first sync into the bucket (server.role = \"ingest\")".into()));
    }
    tracing::info!(
        free_bytes = disk.free(),
        reserve_bytes = disk.reserve(),
        budget_bytes = disk.budget().unwrap_or(0),
        "disk: ingest is refused below the reserve (store.min_free_disk); the budget (store.retention_max_disk, 0: none) covers all data"
    );
    let options = StoreOptions {
        data_dir: s.data_dir.clone(),
        retention: s.retention,
        disk: Some(disk.clone()),
        retention_rules: config.retention_rules()?,
        tuning: config.store.clone(),
    };
    let store_options = options.clone();
    let store = tokio::task::block_in_place(|| LogStore::open(options.clone(), &mut registry))
        .with_context(|| format!("cannot open the data directory {}", s.data_dir.display()))?;
    let metric_store = tokio::task::block_in_place(|| MetricStore::open(options, &mut registry))
        .with_context(|| format!("cannot open the metric store in {}", s.data_dir.display()))?;
    crate::process_metrics::register(&mut registry);
    if query_node {
        let reason = "this is a query node (server.role = \"query\"): it answers from the bucket the writer syncs \
                      into; send writes to the writer (server.role = \"all\")";
        store.set_read_only(reason);
        metric_store.set_read_only(reason);
    }
    if compactor_node {
        let reason =
            "this is a compactor (server.role = \"compactor\"): it takes no writes; send them to an ingest node";
        store.set_read_only(reason);
        metric_store.set_read_only(reason);
    }
    let trees = query::peers::Trees::default();
    let cache_metrics = bucket.as_ref().map(|b| {
        let metrics = bucket::cache::CacheMetrics::register(&mut registry);
        let parts: Arc<dyn store::remote::RemoteParts> = bucket::cache::BucketParts::new(b.clone(), metrics.clone());
        store.attach_remote(parts.clone());
        metric_store.attach_remote(parts);
        metrics
    });
    let follower = match (&bucket, query_node) {
        (Some(b), true) => {
            let follow_metrics = bucket::follow::FollowMetrics::register(&mut registry);
            let follower = bucket::follow::Follower::new(
                b.clone(),
                store.clone(),
                metric_store.clone(),
                restored_commit,
                follow_metrics.clone(),
            );
            let mut follower = match (config.storage.cache_max_bytes.as_u64(), cache_metrics.clone()) {
                (max, Some(metrics)) if max > 0 => follower.with_cache(max, metrics),
                _ => follower,
            };
            // Catch up before serving: a restarted query node's directory may hold an older commit.
            if let Err(e) = follower.follow_once().await {
                tracing::warn!(error = %e, "storage: following the bucket failed; answering from the last commit applied, retried every sync_interval");
            }
            let mut node_trees = crate::trees::NodeTrees::new(
                prefix_bucket.clone().unwrap_or_else(|| b.clone()),
                &store_options,
                cache_metrics.clone().map(|m| (config.storage.cache_max_bytes.as_u64(), m)),
                follow_metrics,
                trees.clone(),
            );
            if let Err(e) = node_trees.follow_once(follower.applied().is_some()).await {
                tracing::warn!(error = %e, "storage: listing the ingest nodes' trees failed; retried every sync_interval");
            }
            Some((follower, node_trees))
        }
        _ => None,
    };
    // Whether this server holds the writer lease now (None: no bucket): only the holder answers a query
    // node's delta requests.
    let mut lease_held: Option<prometheus_client::metrics::gauge::Gauge> = None;
    let syncer = bucket.filter(|_| !query_node && !compactor_node).map(|b| {
        tracing::info!(bucket = %b.describe(), interval = ?config.storage.sync_interval, "flushed data is synced into the bucket ([storage])");
        let node = writer_node.clone();
        // Only the holder of the lease `writer` syncs: a second server on this bucket and prefix waits.
        let lease = early_lease.take().unwrap_or_else(|| {
            bucket::lease::Lease::new(b.clone(), bucket::lease::WriterLease::NAME, &node, config.storage.lease_ttl())
        });
        let lease_metrics = bucket::lease::LeaseMetrics::register(&mut registry);
        lease_held = Some(lease_metrics.held.clone());
        let lease = bucket::lease::WriterLease::new(lease, lease_metrics)
            .with_base_commit(restored_commit)
            .with_recorded_commit(bucket::adopt::recorded_commit(&s.data_dir));
        let syncer = bucket::sync::Syncer::new(
            b,
            store.clone(),
            metric_store.clone(),
            node,
            config.storage.keep_commits,
            bucket::sync::SyncMetrics::register(&mut registry),
        )
        .with_lease(lease);
        let syncer = match (config.storage.cache_max_bytes.as_u64(), cache_metrics) {
            (max, Some(metrics)) if max > 0 => syncer.with_cache(max, metrics),
            _ => syncer,
        };
        Arc::new(tokio::sync::Mutex::new(if bucket_verified { syncer.verified() } else { syncer }))
    });
    let retired_metrics = ((ingest_node || compactor_node) && prefix_bucket.is_some())
        .then(|| crate::retired::RetiredMetrics::register(&mut registry));
    let ingest = IngestMetrics::register(&mut registry);
    let memory = crate::memory::Pressure::new(budget, crate::memory::MemoryMetrics::register(&mut registry));
    let query_metrics = query::metrics::QueryMetrics::register(&mut registry);
    let listener = tokio::net::TcpListener::bind(s.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (server.http_addr / --http-addr)", s.http_addr))?;
    let http_addr = listener.local_addr()?;
    let grpc_listener = tokio::net::TcpListener::bind(s.otlp_grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {} (server.otlp_grpc_addr / --otlp-grpc-addr)", s.otlp_grpc_addr))?;
    let otlp_grpc_addr = grpc_listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let mqtt_shutdown = CancellationToken::new();
    let tls = config.tls_files().map(crate::tls::Tls::load).transpose()?;
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(shutdown.clone()));
    }
    let mqtt_listen = if s.mqtt_listen == "off" { None } else { Some(s.mqtt_listen.parse()?) };
    let mqtts_listen = match (s.mqtts_listen.as_str(), &tls) {
        ("off", _) => None,
        (addr, Some(tls)) => {
            let tls = tls.clone();
            let config: ingest_mqtt::ServerTls = Arc::new(move || tls.config(crate::tls::Protocol::Mqtt));
            Some((addr.parse()?, config))
        }
        // `Config::validate` refuses mqtts without certificate files.
        (_, None) => None,
    };
    let mut mqtt_config = config.mqtt.clone();
    if mqtt_config.broker.client_id.is_empty() {
        // Stable across restarts of this server (the broker keeps its session), different between servers.
        let name = if ingest_node { tree_name.clone() } else { crate::config::node_name("") };
        mqtt_config.broker.client_id = format!("lumen-{name}");
    }
    // The tenants the stores hold, and those a broker subscription and the syslog listeners write to
    // (`mqtt.tenant`, `syslog.tenant`), are always writable: limits.max_tenants counts them. (A subscription
    // refused its tenant would have to stop.)
    let broker_tenant = (!config.mqtt.broker.url.is_empty()).then(|| config.mqtt.tenant.clone());
    let syslog_tenant = (!config.syslog.listen.trim().is_empty()).then(|| config.syslog.tenant.clone());
    let existing = store
        .tenants()
        .into_iter()
        .chain(metric_store.tenants())
        .map(|t| t.as_str().to_string())
        .chain(broker_tenant)
        .chain(syslog_tenant);
    let tenants = crate::tenant_limits::TenantLimits::new(config.limits.clone(), existing);
    let mqtt = ingest_mqtt::start(
        &mqtt_config,
        ingest_mqtt::EndpointListen { plain: mqtt_listen, tls: mqtts_listen, auth: auth.clone() },
        store.clone(),
        metric_store.clone(),
        &mut registry,
        Some(tenants.stream_admit()),
        mqtt_shutdown.clone(),
    )
    .await
    .map_err(anyhow::Error::msg)
    .context(
        "cannot start the MQTT ingest ([mqtt] section, --mqtt-listen, --mqtts-listen, --mqtt-broker, --mqtt-topic)",
    )?;
    let syslog_shutdown = CancellationToken::new();
    let syslog = ingest_syslog::start(
        ingest_syslog::Settings {
            config: config.syslog.clone(),
            server: config.syslog_server_side(),
            tls: tls
                .clone()
                .map(|tls| -> ingest_syslog::ServerTls { Arc::new(move || tls.config(crate::tls::Protocol::Syslog)) }),
            limits: config.wire_limits(),
            retention: s.retention,
            admit: Some(tenants.stream_admit()),
        },
        store.clone(),
        &mut registry,
        syslog_shutdown.clone(),
    )
    .await
    .context("cannot start the syslog ingest ([syslog] section, --syslog-listen)")?;
    let otlp = ingest_otlp::Otlp::new(
        store.clone(),
        metric_store.clone(),
        ingest_otlp::Settings {
            config: config.otlp.clone(),
            limits: config.wire_limits(),
            retention: s.retention,
            max_labels_per_series: s.max_labels_per_series,
        },
        &mut registry,
    );

    let ruler_metrics = Arc::new(ruler::RulerMetrics::default());
    ruler_metrics.register(&mut registry);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let external_url = if config.ruler.external_url.is_empty() {
        format!("{scheme}://{http_addr}")
    } else {
        config.ruler.external_url.trim_end_matches('/').to_string()
    };
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(
            ::tls::client_config(::tls::system_roots(), None).map_err(|e| anyhow::anyhow!("ruler TLS: {e}"))?,
        )
        .build()
        .context("cannot build the ruler's HTTP client")?;
    // A query node's ingest nodes: its queries and its rules ask them.
    let peers = (query_node && !config.query.ingest_urls.is_empty()).then(|| {
        Arc::new(query::peers::Peers::new(
            config.query.ingest_urls.clone(),
            client.clone(),
            config.query.ingest_timeout,
            query::peers::PeerMetrics::register(&mut registry),
        ))
    });
    // An ingest node's fellow nodes: an agent's resent batch is checked against them (`ingest/resend.rs`).
    let resend = (ingest_node && !config.query.ingest_urls.is_empty()).then(|| {
        tracing::info!(ingest_urls = ?config.query.ingest_urls,
            "ingest node: an agent's resent batch is stored only if none of these nodes stored it");
        Arc::new(crate::ingest::resend::ResendCheck::new(
            config.query.ingest_urls.clone(),
            client.clone(),
            config.query.ingest_timeout,
            tree_name.clone(),
            &mut registry,
        ))
    });
    let cluster = peers.clone().map(|peers| ruler::backend::Cluster {
        peers,
        trees: trees.clone(),
        // Rules present the server's own token to the ingest nodes.
        auth: s.auth_token.as_ref().and_then(|t| format!("Bearer {}", t.0).parse().ok()),
        client: client.clone(),
    });
    let backend = ruler::backend::StoreBackend {
        logs: store.clone(),
        metrics: metric_store.clone(),
        query: config.query.clone(),
        runtime: tokio::runtime::Handle::current(),
        gate: Some(Arc::new(crate::tenant_limits::RuleGate { limits: tenants.clone(), pressure: memory.clone() })),
        cluster,
    };
    let (ruler_stop, ruler_stop_rx) = tokio::sync::watch::channel(false);
    let ruler = ruler::Ruler::start(
        config.ruler.clone(),
        external_url,
        &s.data_dir,
        Arc::new(backend),
        ruler_metrics,
        client.clone(),
        ruler_stop_rx,
    )
    .map_err(anyhow::Error::msg)
    .context("cannot start the ruler ([ruler] section; `lumen rules check FILE` checks rule files)")?;

    let ready = Arc::new(AtomicBool::new(true));
    let query = query::http::QueryState::new(store.clone(), metric_store.clone(), config.query.clone(), query_metrics)
        .map_err(|e| anyhow::anyhow!("cannot build the SQL runtime: {e}"))?
        .with_shutdown(shutdown.clone())
        .with_node(tree_name.clone())
        .with_trees(trees.clone());
    let query = match (&lease_held, query_node, &peers) {
        (_, true, Some(peers)) => query.with_peers(peers.clone()),
        (_, true, None) => query.with_serves_delta(Arc::new(|| false)),
        (Some(held), false, _) => {
            let held = held.clone();
            query.with_serves_delta(Arc::new(move || held.get() > 0))
        }
        (None, false, _) => query,
    };
    // An ingest node records a query node's delete request in a retired tree (`src/retired.rs`).
    let query = match (&prefix_bucket, &retired_metrics, ingest_node) {
        (Some(prefix), Some(metrics), true) => {
            let deletes = crate::retired::RetiredTrees::for_deletes(
                prefix.clone(),
                &tree_name,
                &store_options,
                &config.storage,
                metrics.clone(),
            );
            let deletes = Arc::new(tokio::sync::Mutex::new(deletes));
            query.with_retired_deletes(Arc::new(move |node, tenant, logs, spec| {
                let deletes = deletes.clone();
                Box::pin(async move {
                    use crate::retired::DeleteError;
                    use axum::http::StatusCode;
                    deletes.lock().await.record_delete(&node, &tenant, logs, spec).await.map_err(|e| match e {
                        DeleteError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
                        DeleteError::Conflict(m) => (StatusCode::CONFLICT, m),
                        DeleteError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
                    })
                })
            }))
        }
        _ => query,
    };
    let bodies = crate::inflight::BodyLimits::new(
        usize::try_from(s.max_inflight_request_bytes.as_u64()).unwrap_or(usize::MAX),
        usize::try_from(s.max_request_size.as_u64()).unwrap_or(usize::MAX),
        s.http_body_timeout,
    );
    let monitor = crate::memory::Monitor {
        pressure: memory.clone(),
        logs: store.clone(),
        metrics: metric_store.clone(),
        bodies: bodies.clone(),
        query: query.clone(),
        logs_head_limit: usize::try_from(config.store.head_max_size.as_u64()).unwrap_or(usize::MAX),
    };
    monitor.announce(budget.as_ref(), &shares);
    let app = AppState {
        store: store.clone(),
        metric_store: metric_store.clone(),
        limits: config.wire_limits(),
        max_labels_per_series: s.max_labels_per_series,
        retention: s.retention,
        ingest,
        registry: Arc::new(registry),
        ready: ready.clone(),
        disk: disk.clone(),
        config: Arc::new(crate::http::masked_config(&config)),
        node: tree_name.clone(),
        resend,
    };
    let grpc_admit = tenants.grpc_admit();
    let router = crate::http::router(
        app,
        query,
        ruler.clone(),
        ingest_otlp::router(otlp.clone()),
        auth.clone(),
        bodies,
        tenants,
        memory,
    );
    let limits = crate::listen::ConnLimits {
        max_connections: s.max_connections,
        header_timeout: s.http_header_timeout,
        idle_timeout: None,
    };
    let router = if compactor_node { router.layer(axum::middleware::from_fn(compactor_routes)) } else { router };
    let http = tokio::spawn(crate::listen::serve_http(listener, router, limits, tls.clone(), shutdown.clone()));
    let grpc_limits = crate::listen::ConnLimits { idle_timeout: Some(s.grpc_idle_timeout), ..limits };
    let otlp_grpc = tokio::spawn(
        tonic::transport::Server::builder()
            // The whole call, body included: a trickling client cannot hold a call for ever.
            .timeout(s.http_body_timeout)
            // No keep-alive pings: a silent client is closed by the idle timeout of its connection instead
            // (`server.grpc_idle_timeout`), which pings would defeat.
            .max_concurrent_streams(64)
            .add_routes(ingest_otlp::grpc_routes(otlp, auth.clone(), Some(grpc_admit)))
            .serve_with_incoming_shutdown(
                crate::listen::incoming(grpc_listener, grpc_limits, tls.clone(), shutdown.clone()),
                shutdown.clone().cancelled_owned(),
            ),
    );
    tokio::spawn(crate::auth::watch(auth.clone(), config.clone(), shutdown.clone()));
    // A query node's stores hold the writer's parts: no flush, compaction, retention or budget here (the
    // cache bound keeps its disk in check).
    let (engine, metric_engine) = if query_node || compactor_node {
        let idle = |stop: CancellationToken| {
            tokio::spawn(async move {
                stop.cancelled_owned().await;
                Ok(())
            })
        };
        (idle(shutdown.clone()), idle(shutdown.clone()))
    } else {
        tokio::spawn(store::disk::maintain(
            disk.clone(),
            store.clone(),
            metric_store.clone(),
            config.store.maintenance_interval,
            shutdown.clone(),
        ));
        (tokio::spawn(store.clone().run(shutdown.clone())), tokio::spawn(metric_store.clone().run(shutdown.clone())))
    };
    tokio::spawn(monitor.run(shutdown.clone()));
    if let Some(follower) = follower {
        let follower = Arc::new(tokio::sync::Mutex::new(follower));
        every(config.storage.sync_interval, shutdown.clone(), move || {
            let follower = follower.clone();
            async move {
                let mut guard = follower.lock().await;
                let (own, node_trees) = &mut *guard;
                if let Some(share) = node_trees.own_cache_share() {
                    own.set_cache_max(share);
                }
                own.metrics().set_decoded_cache_max(node_trees.own_decoded_share());
                own.logs().set_scan_cache_max(node_trees.own_scan_share());
                own.logs().set_page_cache_max(node_trees.own_page_share());
                if let Err(e) = own.follow_once().await {
                    tracing::warn!(error = %e, "storage: following the bucket failed; answering from the last commit applied, retried at the next interval");
                }
                if let Err(e) = node_trees.follow_once(own.applied().is_some()).await {
                    tracing::warn!(error = %e, "storage: listing the ingest nodes' trees failed; retried at the next interval");
                }
            }
        });
    }
    if let Some(syncer) = syncer.clone() {
        // A first sync at once: it takes the writer lease (or learns who holds it), so that this server
        // answers query nodes for what it acknowledges from the start (see `query::peers`). While another
        // server holds the lease, this one refuses writes (503): what it acknowledged would never reach the
        // bucket. A failed sync leaves that state as it was.
        let first = syncer.clone();
        // An ingest node: query nodes list the trees and read their leases every sync_interval; in two of
        // them they know this node's tree (new) or that it writes again (they skip a tree whose writer
        // released its lease at a graceful stop).
        let grace = ingest_node.then(|| 2 * config.storage.sync_interval);
        let gate = WriteGate { guard: disk.clone(), grace, open_at: Arc::default() };
        let first_gate = gate.clone();
        tokio::spawn(async move {
            match first.lock().await.sync_once().await {
                Ok(report) => first_gate.apply(report.wait_reason),
                Err(e) => {
                    tracing::warn!(error = %e, "storage: the first sync into the bucket failed; it is retried at the next interval");
                }
            }
        });
        every(config.storage.sync_interval, shutdown.clone(), move || {
            let (syncer, gate) = (syncer.clone(), gate.clone());
            async move {
                match syncer.lock().await.sync_once().await {
                    Ok(report) => gate.apply(report.wait_reason),
                    Err(e) => {
                        tracing::warn!(error = %e, "storage: the sync into the bucket failed; it is retried at the next interval");
                    }
                }
            }
        });
    }
    // The retention and merges of the trees of ingest nodes that stopped for good (`src/retired.rs`): a
    // compactor keeps the lease `compactor` and tends them; without one, ingest nodes take it round by round.
    let mut compactor = None;
    if let (Some(prefix), Some(metrics)) =
        (prefix_bucket, retired_metrics.filter(|_| !config.storage.retired_trees_interval.is_zero()))
    {
        let settle = crate::retired::settle(&config.storage, config.query.timeout);
        let name = if compactor_node { config.server_node_name() } else { tree_name.clone() };
        let retired =
            crate::retired::RetiredTrees::new(prefix, &name, &store_options, &config.storage, settle, metrics);
        if compactor_node {
            let retired = Arc::new(tokio::sync::Mutex::new(retired.keeping_the_lease()));
            compactor = Some(retired.clone());
            let interval = config.storage.retired_trees_interval;
            let tick = interval.min(config.storage.lease_ttl() / 3);
            // A round at start, then every interval; the lease renewed every tick between rounds.
            let last = Arc::new(parking_lot::Mutex::new(None::<std::time::Instant>));
            let run = move || {
                let (retired, last) = (retired.clone(), last.clone());
                async move {
                    let due = last.lock().is_none_or(|t: std::time::Instant| t.elapsed() >= interval);
                    let mut retired = retired.lock().await;
                    // A round is due from when this process holds the lease: a compactor that takes it over
                    // runs one at once.
                    let result = if due {
                        retired.run_once().await.map(|r| r.is_some())
                    } else {
                        retired.keep_lease_fresh().await.map(|_| false)
                    };
                    match result {
                        Ok(true) => *last.lock() = Some(std::time::Instant::now()),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "storage: the compactor's round over the retired trees failed; retried")
                        }
                    }
                }
            };
            tokio::spawn(run());
            every(tick, shutdown.clone(), run);
        } else {
            let retired = Arc::new(tokio::sync::Mutex::new(retired));
            every(config.storage.retired_trees_interval, shutdown.clone(), move || {
                let retired = retired.clone();
                async move {
                    if let Err(e) = retired.lock().await.run_once().await {
                        tracing::warn!(error = %e, "storage: looking for retired ingest nodes' trees failed; retried at the next interval");
                    }
                }
            });
        }
    }
    tracing::info!(%http_addr, %otlp_grpc_addr, tls = tls.is_some(), data_dir = %s.data_dir.display(), "lumen server started");
    Ok(Running {
        http_addr,
        mqtt_addr: mqtt.endpoint_addr,
        mqtts_addr: mqtt.endpoint_tls_addr,
        otlp_grpc_addr,
        syslog_listeners: syslog.listeners,
        store,
        metric_store,
        shutdown,
        ready,
        http,
        otlp_grpc,
        mqtt: mqtt.tasks,
        mqtt_shutdown,
        syslog: syslog.tasks,
        syslog_shutdown,
        engine,
        metric_engine,
        ruler,
        ruler_stop,
        syncer,
        compactor,
    })
}

impl Running {
    /// Stops accepting work, finishes in-flight requests, flushes the head and closes the store.
    ///
    /// # Errors
    /// The HTTP server's or the final flush's error.
    pub async fn stop(self) -> anyhow::Result<()> {
        // The data directory's lock goes with the last handle on each store: wait for it, so that a
        // restart in the same process (tests, an embedding) never finds the directory still locked by a
        // task that was finishing with it.
        let closed: [Box<dyn Fn() -> bool + Send + Sync>; 2] =
            [Box::new(self.store.closed_probe()), Box::new(self.metric_store.closed_probe())];
        let result = self.stop_serving().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while closed.iter().any(|c| !c()) {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(
                    "a task still holds the store 10 s after the stop; the data directory stays locked until it ends"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        result
    }

    async fn stop_serving(self) -> anyhow::Result<()> {
        self.ready.store(false, Ordering::Release);
        // The MQTT sources stop taking messages and send the acknowledgements of what was stored, and the
        // pipeline drains, while the stores are still open.
        self.mqtt_shutdown.cancel();
        for task in self.mqtt {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        }
        // Syslog connections stop reading and append what they received (TCP senders cannot be told).
        self.syslog_shutdown.cancel();
        for task in self.syslog {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(15), task).await;
        }
        // Rule groups finish their cycle (their samples reach the stores); notifiers send what they hold.
        self.ruler.stop().await;
        let _ = self.ruler_stop.send(true);
        self.ruler.notifiers_stopped(std::time::Duration::from_secs(15)).await;
        self.shutdown.cancel();
        self.http.await.context("http server task failed")?.context("http server failed")?;
        self.otlp_grpc.await.context("OTLP gRPC task failed")?.context("OTLP gRPC server failed")?;
        let logs = self.engine.await.context("store task failed")?.context("final flush failed");
        let metrics =
            self.metric_engine.await.context("metric store task failed")?.context("final metric flush failed");
        logs?;
        metrics?;
        // What the final flush wrote goes into the bucket too. A failure is logged, not returned: the
        // local data directory holds everything, and the next start's sync uploads it.
        if let Some(syncer) = self.syncer {
            let mut syncer = syncer.lock().await;
            let synced = match syncer.sync_once().await {
                Ok(report) if report.waiting => false,
                Ok(report) => {
                    tracing::info!(commit = ?report.commit, files = report.files, uploaded = report.uploaded_objects, "final sync into the bucket");
                    true
                }
                Err(e) => {
                    tracing::error!(error = %e, "the final sync into the bucket ([storage]) failed; the local data directory holds everything and the next start syncs it; the writer lease is kept (it runs out after storage.lease_ttl), so that no other node tends this tree meanwhile");
                    false
                }
            };
            // A successor need not wait for the lease to expire. Released only when the bucket holds
            // everything: a released tree counts as retired, and another node may tend it (and this data
            // directory adopts what it committed at the next start).
            if synced && let Err(e) = syncer.release_lease().await {
                tracing::warn!(error = %e, "storage: the writer lease could not be released; a successor takes it over after storage.lease_ttl");
            }
        }
        if let Some(compactor) = self.compactor {
            // After the round under way, if any.
            compactor.lock().await.release_lease().await;
        }
        tracing::info!("lumen server stopped");
        Ok(())
    }

    /// Serves until SIGINT or SIGTERM, then stops.
    ///
    /// # Errors
    /// See [`Running::stop`].
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the rules");
                    // A failure is logged by the ruler; the rules in force stay.
                    let _ = self.ruler.reload().await;
                }
            }
        }
        tracing::info!("shutting down");
        self.stop().await
    }
}

/// Runs `task` every `interval` (the first time one interval from now) until `stop`.
/// A compactor answers its probes, its metrics and its status; everything else is refused, saying why.
async fn compactor_routes(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    match req.uri().path() {
        "/health" | "/ready" | "/metrics" | "/api/v1/status/lumen" => next.run(req).await,
        path => (
            axum::http::StatusCode::NOT_FOUND,
            format!(
                "{path}: this is a compactor (server.role = \"compactor\"): it serves /health, /ready, /metrics and \
                 /api/v1/status/lumen only; send writes to an ingest node and queries to a query node\n"
            ),
        )
            .into_response(),
    }
}

fn every<F, Fut>(interval: std::time::Duration, stop: CancellationToken, task: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => break,
            }
            task().await;
        }
    });
}
