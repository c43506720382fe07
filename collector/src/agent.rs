//! Wiring of `lumen agent`: the data directory, the reader threads (pod logs, the journal), the shipper,
//! the scrapers, the Kubernetes watch and the agent's own HTTP endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::buffer::{DiskBuffer, Kind};
use crate::checkpoint::Checkpoints;
use crate::config::AgentConfig;
use crate::journal::{JournalReader, JournalSettings};
use crate::kube::PodCache;
use crate::metrics::AgentMetrics;
use crate::scrape::{Scraper, Target, TargetState};
use crate::ship::{Shipper, ShipperSettings};
use crate::tail::{Tailer, TailerSettings};

/// How long a stopping agent keeps sending what its buffer holds.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often annotated pods are looked up for scrape targets.
const POD_TARGETS_INTERVAL: Duration = Duration::from_secs(10);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot use the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("the data directory {path} is in use by another lumen agent; give each agent its own --data-dir")]
    Locked { path: PathBuf },
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Buffer(#[from] crate::buffer::BufferError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Kube(#[from] crate::kube::KubeError),
    /// The bearer token file or the TLS files cannot be used (the message names the file and the key).
    #[error("{0}")]
    Credentials(String),
}

/// A running agent.
pub struct Running {
    /// Where its /metrics, /health and /ready answer.
    pub http_addr: SocketAddr,
    stop_reading: CancellationToken,
    stop_sending: CancellationToken,
    /// The file reader threads: pod logs, the journal.
    readers: Vec<std::thread::JoinHandle<()>>,
    shipper: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    buffer: Arc<DiskBuffer>,
    _lock: std::fs::File,
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
}

/// Starts the agent for node `node` (resolved by the caller from the config, `NODE_NAME` or the host name).
///
/// # Errors
/// A bad configuration, a data directory that cannot be used or is locked, corrupt checkpoints, a bind
/// failure.
pub async fn start(cfg: AgentConfig, node: String) -> Result<Running, AgentError> {
    cfg.validate()?;
    let token = if cfg.bearer_token_file.as_os_str().is_empty() {
        crate::client::BearerToken::none()
    } else {
        crate::client::BearerToken::from_file(&cfg.bearer_token_file).map_err(AgentError::Credentials)?
    };
    let transform = crate::transform::Transform::new(&cfg.parse).map_err(crate::config::ConfigError::from)?;
    let data_dir = cfg.data_dir.clone();
    let io = |source| AgentError::DataDir { path: data_dir.clone(), source };
    std::fs::create_dir_all(&data_dir).map_err(io)?;
    let lock = std::fs::File::create(data_dir.join("agent.lock")).map_err(io)?;
    if lock.try_lock().is_err() {
        return Err(AgentError::Locked { path: data_dir });
    }
    let mut checkpoints = Checkpoints::load(&data_dir)?;
    // A new producer name must be durable before any batch carries it.
    checkpoints.save()?;
    let producer = checkpoints.producer().to_string();
    let (buffer, recovered) =
        DiskBuffer::open(&data_dir.join("buffer"), cfg.buffer_max_size.as_u64(), checkpoints.acked_seq())?;
    if recovered.frames > 0 {
        tracing::info!(batches = recovered.frames, "sending again the batches left unacknowledged");
    }
    // The journal reader resumes its own files; the pod log reader gets the other positions.
    let mut recovered = recovered;
    let journal_resume = crate::journal::reader::take_positions(&mut recovered.positions, &cfg.journal_dirs);
    if cfg.journal {
        checkpoints.reserve_journal_dirs(&cfg.journal_dirs);
    }
    let buffer = Arc::new(buffer);
    let checkpoints = Arc::new(Mutex::new(checkpoints));
    let mut registry = Registry::default();
    let metrics = AgentMetrics::register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));

    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|source| AgentError::Bind { addr: cfg.http_addr, source })?;
    let http_addr = listener.local_addr().map_err(|source| AgentError::Bind { addr: cfg.http_addr, source })?;

    let stop_reading = CancellationToken::new();
    let stop_sending = CancellationToken::new();
    let mut tasks = Vec::new();

    let pods = match kube_source(&cfg.kubernetes_api) {
        None => None,
        Some(source) => match crate::kube::client(&source).await? {
            None => None,
            Some(client) => {
                let cache = PodCache::default();
                tasks.push(tokio::spawn(crate::kube::watch_pods(
                    client,
                    node.clone(),
                    cache.clone(),
                    stop_reading.clone(),
                )));
                Some(cache)
            }
        },
    };

    let reader = if cfg.logs {
        let settings = TailerSettings {
            pods_dir: cfg.pods_dir.clone(),
            docker_dir: (!cfg.docker_dir.as_os_str().is_empty()).then(|| cfg.docker_dir.clone()),
            node: node.clone(),
            pod_labels: cfg.pod_labels.iter().map(|k| (k.clone(), store::model::sanitize_label_name(k))).collect(),
            docker_labels: cfg
                .docker_labels
                .iter()
                .map(|k| (k.clone(), store::model::sanitize_label_name(k)))
                .collect(),
            docker_exclude: cfg.docker_exclude_labels.iter().map(|s| crate::docker::LabelMatch::parse(s)).collect(),
            max_line_bytes: usize::try_from(cfg.max_line_size.as_u64()).unwrap_or(usize::MAX),
            batch_max_bytes: usize::try_from(cfg.batch_max_size.as_u64()).unwrap_or(usize::MAX),
            batch_wait: cfg.batch_wait,
            discover_interval: cfg.discover_interval,
            poll_interval: cfg.poll_interval,
        };
        let tailer = Tailer::new(
            settings,
            transform,
            buffer.clone(),
            checkpoints.clone(),
            recovered.positions,
            pods.clone(),
            metrics.clone(),
        );
        let token = stop_reading.clone();
        let handle = std::thread::Builder::new()
            .name("lumen-agent-reader".to_string())
            .spawn(move || tailer.run(token))
            .map_err(io)?;
        Some(handle)
    } else {
        None
    };
    let mut readers: Vec<std::thread::JoinHandle<()>> = reader.into_iter().collect();
    if cfg.journal && !cfg.journal_dirs.is_empty() {
        let settings = JournalSettings {
            dirs: cfg.journal_dirs.clone(),
            max_age: cfg.journal_max_age,
            max_line_bytes: usize::try_from(cfg.max_line_size.as_u64()).unwrap_or(usize::MAX),
            batch_max_bytes: usize::try_from(cfg.batch_max_size.as_u64()).unwrap_or(usize::MAX),
            batch_wait: cfg.batch_wait,
            discover_interval: cfg.discover_interval,
            poll_interval: cfg.poll_interval,
        };
        let journal = JournalReader::new(
            settings,
            cfg.journal_mapping(node.clone())?,
            buffer.clone(),
            checkpoints.clone(),
            journal_resume,
            metrics.clone(),
        );
        let token = stop_reading.clone();
        let handle = std::thread::Builder::new()
            .name("lumen-agent-journal".to_string())
            .spawn(move || journal.run(token))
            .map_err(io)?;
        readers.push(handle);
    }

    let shipper = Shipper::new(
        ShipperSettings {
            logs_url: cfg.logs_endpoint(),
            metrics_url: cfg.metrics_endpoint(),
            tenant: cfg.tenant.clone(),
            producer,
            request_timeout: cfg.request_timeout,
            max_backoff: cfg.retry_max_backoff,
            token: token.clone(),
            tls: cfg.tls_files(),
        },
        buffer.clone(),
        checkpoints.clone(),
        metrics.clone(),
    )
    .map_err(AgentError::Credentials)?;
    let shipper = tokio::spawn(shipper.run(stop_sending.clone()));

    // The token goes to the server, and to scrape targets that are the server: a static target on the
    // server's own scheme, host and port, or a pod of the agent's namespace that asks for it
    // (`crate::kube::wants_token`). Never to other targets.
    let scraper = Arc::new(Scraper::new().with_token(token.clone()));
    let server_origin = crate::client::origin(&cfg.server);
    let timeout = cfg.scrape_timeout.min(cfg.scrape_interval);
    for url in &cfg.scrape_targets {
        let target = Target {
            url: url.clone(),
            job: cfg.scrape_job.clone(),
            labels: vec![("node".to_string(), node.clone())],
            honor_labels: cfg.honor_labels,
            honor_timestamps: true,
            timeout,
            interval: cfg.scrape_interval,
            send_token: server_origin.is_some() && crate::client::origin(url) == server_origin,
        };
        tasks.push(tokio::spawn(scrape_loop(
            scraper.clone(),
            target,
            buffer.clone(),
            metrics.clone(),
            stop_reading.clone(),
        )));
    }
    if cfg.node_metrics {
        tasks.push(tokio::spawn(node_loop(
            cfg.clone(),
            node.clone(),
            buffer.clone(),
            metrics.clone(),
            stop_reading.clone(),
        )));
    }
    if let (Some(cache), true) = (pods.clone(), cfg.scrape_pods) {
        tasks.push(tokio::spawn(pod_targets_loop(
            cache,
            cfg.clone(),
            node.clone(),
            scraper.clone(),
            buffer.clone(),
            metrics.clone(),
            stop_reading.clone(),
        )));
    }

    let state = HttpState { registry: Arc::new(registry), ready: ready.clone() };
    let router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready_handler))
        .with_state(state);
    let token = stop_sending.clone();
    tasks.push(tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(token.cancelled_owned());
        if let Err(error) = serve.await {
            tracing::error!(%error, "agent http server failed");
        }
    }));
    ready.store(true, Ordering::Release);
    tracing::info!(%http_addr, %node, server = %crate::redact_urls(&cfg.server), data_dir = %cfg.data_dir.display(), "lumen agent started");
    Ok(Running { http_addr, stop_reading, stop_sending, readers, shipper, tasks, buffer, _lock: lock })
}

fn kube_source(setting: &str) -> Option<crate::kube::ApiSource> {
    match setting.trim() {
        "off" | "" => None,
        "auto" => Some(crate::kube::ApiSource::Auto),
        s if s.starts_with("http://") || s.starts_with("https://") => Some(crate::kube::ApiSource::Url(s.to_string())),
        path => Some(crate::kube::ApiSource::Kubeconfig(PathBuf::from(path))),
    }
}

impl Running {
    /// Stops reading, cuts the last batch, gives the shipper a few seconds to deliver what the buffer holds
    /// (what it cannot deliver stays in the buffer for the next start), and stops.
    pub async fn stop(mut self) {
        self.stop_reading.cancel();
        for reader in std::mem::take(&mut self.readers) {
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while self.buffer.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop_sending.cancel();
        let _ = self.shipper.await;
        for t in self.tasks {
            t.abort();
        }
        tracing::info!(unsent_batches = self.buffer.pending(), "lumen agent stopped");
    }

    /// Runs until SIGINT or SIGTERM, then stops.
    ///
    /// # Errors
    /// The signal handler could not be installed.
    pub async fn run_until_signal(self) -> std::io::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        self.stop().await;
        Ok(())
    }
}

async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &state.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], String::new());
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

async fn ready_handler(State(state): State<HttpState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

fn now_ms() -> i64 {
    store::time::now_ns() / 1_000_000
}

/// Puts one scrape's series into the buffer, unless it is full (scrapes cannot wait: the next one comes).
fn buffer_series(buffer: &DiskBuffer, metrics: &AgentMetrics, series: &[wire::prom::OwnedSeries]) {
    if series.is_empty() {
        return;
    }
    if !buffer.has_space() {
        metrics.scrapes_dropped.inc();
        return;
    }
    let payload = wire::prom::encode_write_request(series);
    if let Err(error) = buffer.append(Kind::Metrics, Vec::new(), &payload) {
        metrics.buffer_errors.inc();
        tracing::error!(%error, "cannot write scraped samples to the disk buffer; they are lost");
    }
}

async fn scrape_loop(
    scraper: Arc<Scraper>,
    target: Target,
    buffer: Arc<DiskBuffer>,
    metrics: Arc<AgentMetrics>,
    shutdown: CancellationToken,
) {
    let mut state = TargetState::default();
    let mut ticker = tokio::time::interval(target.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let outcome = scraper.scrape(&target, &mut state, now_ms()).await;
        let up = if outcome.up { "up" } else { "down" };
        metrics.scrapes.get_or_create(&vec![("outcome", up)]).inc();
        metrics.scrape_samples.inc_by(outcome.samples_scraped as u64);
        let buffer = buffer.clone();
        let metrics = metrics.clone();
        let _ = tokio::task::spawn_blocking(move || buffer_series(&buffer, &metrics, &outcome.series)).await;
    }
}

async fn node_loop(
    cfg: AgentConfig,
    node: String,
    buffer: Arc<DiskBuffer>,
    metrics: Arc<AgentMetrics>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(cfg.scrape_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let (proc_dir, sys_dir, rootfs, node, buffer, metrics) = (
            cfg.proc_dir.clone(),
            cfg.sys_dir.clone(),
            cfg.rootfs_dir.clone(),
            node.clone(),
            buffer.clone(),
            metrics.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            let mut series = crate::node::collect(&proc_dir, &sys_dir, &rootfs, now_ms());
            for (labels, _) in &mut series {
                labels.push(("job".to_string(), "node".to_string()));
                labels.push(("instance".to_string(), node.clone()));
                labels.push(("node".to_string(), node.clone()));
                labels.sort_unstable();
            }
            buffer_series(&buffer, &metrics, &series);
        })
        .await;
    }
}

/// Keeps one scrape loop per annotated pod of this node, starting and stopping loops as pods come and go.
async fn pod_targets_loop(
    cache: PodCache,
    cfg: AgentConfig,
    node: String,
    scraper: Arc<Scraper>,
    buffer: Arc<DiskBuffer>,
    metrics: Arc<AgentMetrics>,
    shutdown: CancellationToken,
) {
    let own_namespace = crate::kube::own_namespace();
    let mut running: HashMap<String, (CancellationToken, JoinHandle<()>)> = HashMap::new();
    let mut ticker = tokio::time::interval(POD_TARGETS_INTERVAL.min(cfg.scrape_interval));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let mut wanted: HashMap<String, Target> = HashMap::new();
        for pod in cache.pods() {
            let Some(url) = crate::kube::scrape_url(&pod) else { continue };
            let target = Target {
                url: url.clone(),
                job: "kubernetes-pods".to_string(),
                labels: vec![
                    ("namespace".to_string(), pod.namespace.clone()),
                    ("pod".to_string(), pod.name.clone()),
                    ("node".to_string(), node.clone()),
                ],
                honor_labels: cfg.honor_labels,
                honor_timestamps: true,
                timeout: cfg.scrape_timeout.min(cfg.scrape_interval),
                interval: cfg.scrape_interval,
                send_token: crate::kube::wants_token(&pod, own_namespace.as_deref()),
            };
            wanted.insert(url, target);
        }
        running.retain(|url, (token, _)| {
            let keep = wanted.contains_key(url);
            if !keep {
                token.cancel();
            }
            keep
        });
        for (url, target) in wanted {
            if running.contains_key(&url) {
                continue;
            }
            tracing::info!(url = %crate::redact_urls(&url), "scraping an annotated pod");
            let token = shutdown.child_token();
            let handle =
                tokio::spawn(scrape_loop(scraper.clone(), target, buffer.clone(), metrics.clone(), token.clone()));
            running.insert(url, (token, handle));
        }
    }
    for (_, (token, handle)) in running {
        token.cancel();
        let _ = handle.await;
    }
}
