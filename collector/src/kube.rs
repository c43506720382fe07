//! The agent's view of the Kubernetes API: pod metadata for log enrichment and annotated scrape targets.
//!
//! The agent works from log file paths alone (`/var/log/pods/<namespace>_<name>_<uid>/<container>/`);
//! everything here is an optional extra. [`client`] builds an API client from [`ApiSource`], or returns
//! `Ok(None)` when there is no cluster to talk to. [`watch_pods`] then keeps a [`PodCache`] of the pods
//! scheduled on this node, keyed by uid, which the log source joins on the uid in the path. The scrape
//! source reads [`PodCache::pods`] and turns each into a target with [`scrape_url`].
//!
//! The watch asks only for this node's pods (field selector `spec.nodeName=<node>`), so the agent's memory
//! and the API server's work grow with the pods of one node, not of the cluster. The cache is replaced
//! whole on every (re-)list, so a pod deleted while the watch was down leaves it.
//!
//! **Invariant:** an API that is down or forbidden never stops log collection; the watcher only logs
//! and retries with backoff, and readers see the last known pods.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ::kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use ::kube::runtime::{WatchStreamExt, watcher};
use ::kube::{Api, Config};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

/// Annotation that marks a pod for scraping when its value is `"true"`.
pub const SCRAPE_ANNOTATION: &str = "prometheus.io/scrape";
/// Annotation naming the scrape scheme, `http` (default) or `https`.
pub const SCHEME_ANNOTATION: &str = "prometheus.io/scheme";
/// Annotation naming the scrape port; defaults to the pod's first declared container port.
pub const PORT_ANNOTATION: &str = "prometheus.io/port";
/// Annotation naming the scrape path; defaults to [`DEFAULT_METRICS_PATH`].
pub const PATH_ANNOTATION: &str = "prometheus.io/path";
/// Scrape path used when a pod has no [`PATH_ANNOTATION`].
pub const DEFAULT_METRICS_PATH: &str = "/metrics";
/// Annotation by which a pod opts out of log collection when its value is `"true"`.
pub const EXCLUDE_ANNOTATION: &str = "lumen.io/exclude";
/// Annotation by which a pod of the agent's own namespace (the Lumen server) asks to be scraped with the
/// agent's bearer token, when its value is `"true"`.
pub const SCRAPE_TOKEN_ANNOTATION: &str = "lumen.io/scrape-token";

/// Where a pod's service-account credentials are mounted.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Errors of building a Kubernetes API client.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// An [`ApiSource::Url`] that is not a valid URL.
    #[error("invalid kubernetes api url {url:?}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it did not parse.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// A kubeconfig that exists but cannot be read, parsed or resolved to a cluster.
    #[error("failed to load kubeconfig {paths:?}")]
    Kubeconfig {
        /// The kubeconfig files, merged in this order.
        paths: Vec<PathBuf>,
        /// What went wrong.
        #[source]
        source: KubeconfigError,
    },
    /// Running in a pod with a service-account token, but the in-cluster config is incomplete.
    #[error("failed to load in-cluster kubernetes config")]
    InCluster(#[source] InClusterError),
    /// The client could not be built from a config (TLS setup, credentials).
    #[error("failed to build kubernetes client for {url}")]
    Client {
        /// The API server URL of the config.
        url: String,
        /// What went wrong.
        #[source]
        source: ::kube::Error,
    },
}

/// What the agent keeps of one pod of this node.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodInfo {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`, also the key of [`PodCache`] and part of the pod's log directory name.
    pub uid: String,
    /// `spec.nodeName`.
    pub node: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `status.podIP`, absent until the pod has a sandbox.
    pub pod_ip: Option<String>,
    /// `status.phase`: `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    pub phase: Option<String>,
    /// (container name, port number, port name) of every declared container port.
    ///
    /// Ports of `spec.containers` come first, in declaration order, then those of native sidecars
    /// (init containers with `restartPolicy: Always`), which also run for the pod's lifetime.
    pub ports: Vec<(String, u16, Option<String>)>,
}

impl PodInfo {
    /// Keeps what the agent needs of `pod`, or `None` for a pod without a uid (which the API never sends).
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().filter(|uid| !uid.is_empty())?;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let sidecars = spec
            .and_then(|spec| spec.init_containers.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|container| container.restart_policy.as_deref() == Some("Always"));
        let containers = spec.map(|spec| spec.containers.as_slice()).unwrap_or_default().iter().chain(sidecars);
        let ports = containers
            .flat_map(|container| {
                container.ports.as_deref().unwrap_or_default().iter().filter_map(|port| {
                    // The API validates 1..=65535; anything else is skipped rather than wrapped.
                    let number = u16::try_from(port.container_port).ok().filter(|n| *n != 0)?;
                    Some((container.name.clone(), number, port.name.clone()))
                })
            })
            .collect();
        Some(Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid,
            node: spec.and_then(|spec| spec.node_name.clone()).unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            pod_ip: status.and_then(|status| status.pod_ip.clone()).filter(|ip| !ip.is_empty()),
            phase: status.and_then(|status| status.phase.clone()),
            ports,
        })
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(|value| value.trim())
    }
}

/// Pods of this node by uid, kept current by [`watch_pods`].
///
/// Cloning is cheap and every clone sees the same pods. Readers never wait on the API: they get the last
/// known state, which may lag the cluster while the watch reconnects.
#[derive(Clone, Default)]
pub struct PodCache {
    inner: Arc<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    pods: RwLock<HashMap<String, PodInfo>>,
    synced: AtomicBool,
}

impl PodCache {
    /// The pod with this uid, if it is on this node and has been seen.
    pub fn get(&self, uid: &str) -> Option<PodInfo> {
        self.inner.pods.read().get(uid).cloned()
    }

    /// Every known pod of this node, ordered by namespace, name and uid.
    pub fn pods(&self) -> Vec<PodInfo> {
        let mut pods: Vec<PodInfo> = self.inner.pods.read().values().cloned().collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
        pods
    }

    /// True once the first list of pods has been received (so absence from the cache means the pod is gone
    /// or not yet seen).
    ///
    /// It stays true while the watch reconnects: the cache then holds the last known pods.
    pub fn synced(&self) -> bool {
        self.inner.synced.load(Ordering::Acquire)
    }

    /// Replaces every pod with the result of a (re-)list and marks the cache synced.
    fn replace(&self, pods: HashMap<String, PodInfo>) {
        *self.inner.pods.write() = pods;
        self.inner.synced.store(true, Ordering::Release);
    }

    fn upsert(&self, pod: PodInfo) {
        self.inner.pods.write().insert(pod.uid.clone(), pod);
    }

    fn remove(&self, uid: &str) {
        self.inner.pods.write().remove(uid);
    }

    fn len(&self) -> usize {
        self.inner.pods.read().len()
    }
}

impl std::fmt::Debug for PodCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCache").field("pods", &self.len()).field("synced", &self.synced()).finish()
    }
}

/// A synced cache holding these pods, for callers that test against pods without an API server.
impl FromIterator<PodInfo> for PodCache {
    fn from_iter<I: IntoIterator<Item = PodInfo>>(pods: I) -> Self {
        let cache = Self::default();
        cache.replace(pods.into_iter().map(|pod| (pod.uid.clone(), pod)).collect());
        cache
    }
}

/// How to reach the API: in-cluster (`KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT` and the
/// service-account token and CA under `/var/run/secrets/kubernetes.io/serviceaccount`), or an explicit
/// kubeconfig path, or an explicit URL (plain http allowed, for tests and `kubectl proxy`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ApiSource {
    /// In-cluster when `KUBERNETES_SERVICE_HOST` is set and a service-account token is mounted; otherwise
    /// the kubeconfig files of `KUBECONFIG` (missing ones skipped) or else `~/.kube/config`; otherwise
    /// no API at all.
    #[default]
    Auto,
    /// This kubeconfig file, with its current context; it must exist.
    Kubeconfig(PathBuf),
    /// This API server URL, without credentials or custom CA (`http://127.0.0.1:8001` for `kubectl proxy`).
    Url(String),
}

/// Builds a client, or `Ok(None)` when [`ApiSource::Auto`] finds no in-cluster environment and no kubeconfig
/// (the agent then works from paths alone, and logs that once at info).
///
/// # Errors
///
/// [`KubeError`] when a source exists but is unusable: an invalid URL, a kubeconfig that does not parse or
/// has no usable context, an incomplete service-account mount, or a TLS setup that fails.
pub async fn client(source: &ApiSource) -> Result<Option<::kube::Client>, KubeError> {
    client_with_env(source, &AutoEnv::from_process()).await
}

/// [`client`] with the environment that [`ApiSource::Auto`] looks at given as values.
async fn client_with_env(source: &ApiSource, env: &AutoEnv) -> Result<Option<::kube::Client>, KubeError> {
    let config = match source {
        ApiSource::Url(url) => {
            let uri = url.parse().map_err(|source| KubeError::InvalidUrl { url: url.clone(), source })?;
            Config::new(uri)
        }
        ApiSource::Kubeconfig(path) => kubeconfig_config(std::slice::from_ref(path)).await?,
        ApiSource::Auto => match detect(env) {
            Detected::InCluster => Config::incluster().map_err(KubeError::InCluster)?,
            Detected::Kubeconfig(paths) => kubeconfig_config(&paths).await?,
            Detected::Nothing => {
                info!("no kubernetes api configured, working from log paths alone");
                return Ok(None);
            }
        },
    };
    let url = config.cluster_url.to_string();
    let client = ::kube::Client::try_from(config).map_err(|source| KubeError::Client { url: url.clone(), source })?;
    info!(%url, "kubernetes api client ready");
    Ok(Some(client))
}

/// Lists then watches the pods whose `spec.nodeName` is `node` (field selector), updating `cache` (applied,
/// deleted, restarted watches: the cache is rebuilt on a re-list so deleted pods leave). Reconnects with
/// backoff on errors, logging each at warn with the error; returns when `shutdown` is cancelled.
///
/// An empty `node` would select the unscheduled pods of the whole cluster, so it watches nothing and returns
/// at once (logged at warn); the caller takes the node name from the downward API (`spec.nodeName`).
///
/// Lists are served from the API server's watch cache (`resourceVersion=0`), as kubelet and client-go
/// informers do, so that a DaemonSet restarting on every node does not make etcd scan all pods per node.
///
/// # Cancel safety
///
/// Cancel it through `shutdown`; dropping the future is also safe, the cache keeps its last state.
#[instrument(skip_all, fields(%node))]
pub async fn watch_pods(client: ::kube::Client, node: String, cache: PodCache, shutdown: CancellationToken) {
    if node.is_empty() {
        warn!("no node name, not watching kubernetes pods");
        return;
    }
    let pods: Api<Pod> = Api::all(client);
    // kube sends `resourceVersion=0` only without a page size; one node's pods fit one response anyway.
    let config = watcher::Config { page_size: None, ..watcher::Config::default() }
        .fields(&format!("spec.nodeName={node}"))
        .any_semantic();
    let mut events = pin!(watcher(pods, config).default_backoff());
    // Pods of a list in progress; they replace the cache only once the list is complete.
    let mut listing: Option<HashMap<String, PodInfo>> = None;
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            event = events.next() => event,
        };
        match event {
            Some(Ok(watcher::Event::Init)) => listing = Some(HashMap::new()),
            Some(Ok(watcher::Event::InitApply(pod))) => {
                if let (Some(listing), Some(pod)) = (listing.as_mut(), PodInfo::from_pod(&pod)) {
                    listing.insert(pod.uid.clone(), pod);
                }
            }
            Some(Ok(watcher::Event::InitDone)) => {
                let first = !cache.synced();
                let pods = listing.take().unwrap_or_default();
                let n_pods = pods.len();
                cache.replace(pods);
                if first {
                    info!(n_pods, "kubernetes pods listed");
                } else {
                    debug!(n_pods, "kubernetes pods re-listed");
                }
            }
            Some(Ok(watcher::Event::Apply(pod))) => {
                if let Some(pod) = PodInfo::from_pod(&pod) {
                    cache.upsert(pod);
                }
            }
            Some(Ok(watcher::Event::Delete(pod))) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    cache.remove(uid);
                }
            }
            Some(Err(error)) => warn!(%error, "kubernetes pod watch failed, retrying with backoff"),
            None => {
                // kube's watcher never ends by itself; if it ever does, the cache simply stops updating.
                warn!("kubernetes pod watch ended");
                break;
            }
        }
    }
    debug!("kubernetes pod watch stopped");
}

/// The scrape target of a pod annotated `prometheus.io/scrape: "true"`: scheme (`prometheus.io/scheme`,
/// default http), address podIP:port (`prometheus.io/port`, default: the pod's first declared container port;
/// none → no target), path (`prometheus.io/path`, default /metrics). Returns the URL.
///
/// No target either for a pod without an IP, in phase `Succeeded` or `Failed` (nothing listens any more),
/// or whose scheme is neither http nor https or whose port annotation is not a port number.
pub fn scrape_url(pod: &PodInfo) -> Option<String> {
    if pod.annotation(SCRAPE_ANNOTATION) != Some("true") {
        return None;
    }
    if matches!(pod.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let scheme = match pod.annotation(SCHEME_ANNOTATION) {
        None | Some("") => "http",
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => "http",
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => "https",
        Some(_) => return None,
    };
    let port = match pod.annotation(PORT_ANNOTATION) {
        None | Some("") => pod.ports.first().map(|(_, port, _)| *port)?,
        Some(port) => port.parse::<u16>().ok().filter(|port| *port != 0)?,
    };
    let ip = pod.pod_ip.as_deref()?;
    let host = match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        Ok(IpAddr::V4(ip)) => ip.to_string(),
        Err(_) => ip.to_owned(),
    };
    let path = match pod.annotation(PATH_ANNOTATION) {
        None | Some("") => DEFAULT_METRICS_PATH,
        Some(path) => path,
    };
    let slash = if path.starts_with('/') { "" } else { "/" };
    Some(format!("{scheme}://{host}:{port}{slash}{path}"))
}

/// True when the agent sends its token when scraping `pod`: the pod asks for it
/// (`lumen.io/scrape-token: "true"`) and runs in the agent's own namespace. Only who may create pods there
/// can receive the token; an annotation on a pod anywhere else is ignored.
pub fn wants_token(pod: &PodInfo, own_namespace: Option<&str>) -> bool {
    pod.annotation(SCRAPE_TOKEN_ANNOTATION) == Some("true") && own_namespace == Some(pod.namespace.as_str())
}

/// The namespace the agent runs in, from its service account mount; `None` outside Kubernetes.
pub fn own_namespace() -> Option<String> {
    let text = std::fs::read_to_string(Path::new(SERVICE_ACCOUNT_DIR).join("namespace")).ok()?;
    Some(text.trim().to_string()).filter(|ns| !ns.is_empty())
}

/// True when the pod opts out of log collection with the annotation `lumen.io/exclude: "true"`.
pub fn excluded(pod: &PodInfo) -> bool {
    pod.annotation(EXCLUDE_ANNOTATION) == Some("true")
}

/// The parts of the process environment that [`ApiSource::Auto`] looks at, taken as values so that tests
/// need not change the process environment.
struct AutoEnv {
    /// `KUBERNETES_SERVICE_HOST`.
    service_host: Option<OsString>,
    /// Where the service-account token and CA would be mounted.
    service_account_dir: PathBuf,
    /// `KUBECONFIG`: a list of paths joined like `PATH`.
    kubeconfig: Option<OsString>,
    /// The user's home directory, for `~/.kube/config`.
    home: Option<PathBuf>,
}

impl AutoEnv {
    fn from_process() -> Self {
        Self {
            service_host: std::env::var_os("KUBERNETES_SERVICE_HOST"),
            service_account_dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
            kubeconfig: std::env::var_os("KUBECONFIG"),
            home: std::env::home_dir(),
        }
    }
}

/// What [`ApiSource::Auto`] found.
#[derive(Debug, PartialEq)]
enum Detected {
    InCluster,
    Kubeconfig(Vec<PathBuf>),
    Nothing,
}

/// In-cluster first (the agent is a DaemonSet), then kubeconfig files as kubectl finds them: those of a
/// non-empty `KUBECONFIG` that exist (it replaces `~/.kube/config` even when none of them exist), else
/// `~/.kube/config` if it exists.
fn detect(env: &AutoEnv) -> Detected {
    let in_cluster = env.service_host.as_ref().is_some_and(|host| !host.is_empty());
    if in_cluster {
        if env.service_account_dir.join("token").is_file() {
            return Detected::InCluster;
        }
        // A pod with `automountServiceAccountToken: false`: the API is there but we may not use it.
        info!(dir = %env.service_account_dir.display(), "no service-account token mounted");
    }
    let candidates: Vec<PathBuf> = match env.kubeconfig.as_ref().filter(|value| !value.is_empty()) {
        Some(value) => std::env::split_paths(value).filter(|path| !path.as_os_str().is_empty()).collect(),
        None => env.home.iter().map(|home| home.join(".kube").join("config")).collect(),
    };
    let existing: Vec<PathBuf> = candidates.into_iter().filter(|path| path.is_file()).collect();
    if existing.is_empty() { Detected::Nothing } else { Detected::Kubeconfig(existing) }
}

/// A client config from kubeconfig files merged in order (the first to set a value wins), with their
/// current context.
async fn kubeconfig_config(paths: &[PathBuf]) -> Result<Config, KubeError> {
    let err = |source| KubeError::Kubeconfig { paths: paths.to_vec(), source };
    let merged = paths.iter().try_fold(Kubeconfig::default(), |merged, path: &PathBuf| {
        Kubeconfig::read_from(path).and_then(|next| merged.merge(next))
    });
    Config::from_custom_kubeconfig(merged.map_err(err)?, &KubeConfigOptions::default()).await.map_err(err)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use k8s_openapi::api::core::v1::Pod;
    use parking_lot::Mutex;
    use serde_json::{Value, json};
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::*;

    const NODE: &str = "node-a";
    const SELECTOR: &str = "spec.nodeName=node-a";

    /// One request the watcher made: its query parameters, and whether it was a watch.
    #[derive(Debug, Clone)]
    struct Request {
        watch: bool,
        params: HashMap<String, String>,
    }

    struct FakeEvent {
        rv: u64,
        kind: &'static str,
        node: Option<String>,
        object: Value,
    }

    #[derive(Default)]
    struct FakeState {
        rv: u64,
        /// Current pods by uid.
        pods: HashMap<String, Value>,
        history: Vec<FakeEvent>,
        requests: Vec<Request>,
        failing_lists: usize,
    }

    /// Just enough of the Kubernetes API for kube's pod watcher: list and watch of `/api/v1/pods` with a
    /// `spec.nodeName` field selector, resource versions, bookmarks and 410 Gone.
    #[derive(Clone)]
    struct FakeApi {
        state: Arc<Mutex<FakeState>>,
        changed: Arc<watch::Sender<u64>>,
    }

    impl FakeApi {
        async fn start() -> (Self, String) {
            let fake = Self { state: Arc::default(), changed: Arc::new(watch::Sender::new(0)) };
            let app = Router::new().route("/api/v1/pods", get(pods_handler)).with_state(fake.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (fake, url)
        }

        fn push(&self, kind: &'static str, mut object: Value, node: Option<&str>) {
            let mut state = self.state.lock();
            state.rv += 1;
            let rv = state.rv;
            if kind != "ERROR" {
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
            }
            let uid = object["metadata"]["uid"].as_str().map(str::to_owned);
            match (kind, uid) {
                ("ADDED" | "MODIFIED", Some(uid)) => {
                    state.pods.insert(uid, object.clone());
                }
                ("DELETED", Some(uid)) => {
                    state.pods.remove(&uid);
                }
                _ => {}
            }
            state.history.push(FakeEvent { rv, kind, node: node.map(str::to_owned), object });
            drop(state);
            self.changed.send_replace(rv);
        }

        fn apply(&self, pod: Value) {
            let node = pod["spec"]["nodeName"].as_str().map(str::to_owned);
            let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
            let kind = if self.state.lock().pods.contains_key(&uid) { "MODIFIED" } else { "ADDED" };
            self.push(kind, pod, node.as_deref());
        }

        fn delete(&self, uid: &str) {
            let pod = self.state.lock().pods.get(uid).cloned().unwrap();
            let node = pod["spec"]["nodeName"].as_str().map(str::to_owned);
            self.push("DELETED", pod, node.as_deref());
        }

        /// Deletes a pod without a watch event, as when the event was compacted away.
        fn delete_unseen(&self, uid: &str) {
            let mut state = self.state.lock();
            state.rv += 1;
            state.pods.remove(uid);
        }

        fn bookmark(&self) {
            self.push("BOOKMARK", json!({"kind": "Pod", "apiVersion": "v1", "metadata": {}}), None);
        }

        /// Ends every open watch cleanly, as the API server does at `timeoutSeconds`.
        fn close_watches(&self) {
            self.push("CLOSE", json!({}), None);
        }

        /// Ends every open watch with 410 Gone, which makes a client re-list.
        fn expire(&self) {
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410,
            });
            self.push("ERROR", status, None);
        }

        fn requests(&self) -> Vec<Request> {
            self.state.lock().requests.clone()
        }
    }

    fn node_of_selector(params: &HashMap<String, String>) -> Option<String> {
        params.get("fieldSelector")?.strip_prefix("spec.nodeName=").map(str::to_owned)
    }

    fn selects(selected: Option<&str>, node: Option<&str>) -> bool {
        selected.is_none_or(|selected| node == Some(selected))
    }

    async fn pods_handler(State(fake): State<FakeApi>, Query(params): Query<HashMap<String, String>>) -> Response {
        let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
        fake.state.lock().requests.push(Request { watch, params: params.clone() });
        let selected = node_of_selector(&params);
        if !watch {
            let mut state = fake.state.lock();
            if state.failing_lists > 0 {
                state.failing_lists -= 1;
                let status = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "fake failure", "reason": "InternalError", "code": 500,
                });
                return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(status)).into_response();
            }
            let mut items: Vec<Value> = state
                .pods
                .values()
                .filter(|pod| selects(selected.as_deref(), pod["spec"]["nodeName"].as_str()))
                .cloned()
                .collect();
            items.sort_by_key(|pod| pod["metadata"]["uid"].as_str().map(str::to_owned));
            let list = json!({
                "kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": state.rv.to_string()},
                "items": items,
            });
            return axum::Json(list).into_response();
        }
        let Some(since) = params.get("resourceVersion").and_then(|rv| rv.parse::<u64>().ok()) else {
            return (StatusCode::BAD_REQUEST, "watch without resourceVersion").into_response();
        };
        let bookmarks = params.get("allowWatchBookmarks").is_some_and(|value| value == "true");
        let opened_at = fake.state.lock().rv;
        let cursor = WatchCursor {
            opened_at,
            rx: fake.changed.subscribe(),
            fake,
            since,
            bookmarks,
            selected,
            pending: VecDeque::new(),
            done: false,
        };
        Body::from_stream(futures::stream::unfold(cursor, WatchCursor::next_line)).into_response()
    }

    struct WatchCursor {
        fake: FakeApi,
        rx: watch::Receiver<u64>,
        since: u64,
        /// The resource version when the watch was opened: older CLOSE events are not for it.
        opened_at: u64,
        bookmarks: bool,
        /// The node of the field selector; `None` selects every pod.
        selected: Option<String>,
        pending: VecDeque<String>,
        done: bool,
    }

    impl WatchCursor {
        async fn next_line(mut self) -> Option<(Result<String, Infallible>, Self)> {
            loop {
                if let Some(line) = self.pending.pop_front() {
                    return Some((Ok(line), self));
                }
                if self.done {
                    return None;
                }
                self.rx.borrow_and_update();
                {
                    let state = self.fake.state.lock();
                    let since = self.since;
                    for event in state.history.iter().filter(|event| event.rv > since) {
                        self.since = event.rv;
                        if event.kind == "CLOSE" {
                            if event.rv > self.opened_at {
                                self.done = true;
                                break;
                            }
                            continue;
                        }
                        let wanted = match event.kind {
                            "BOOKMARK" => self.bookmarks,
                            "ERROR" => true,
                            _ => selects(self.selected.as_deref(), event.node.as_deref()),
                        };
                        if !wanted {
                            continue;
                        }
                        let mut object = event.object.clone();
                        if event.kind == "BOOKMARK" {
                            object["metadata"]["resourceVersion"] = json!(event.rv.to_string());
                        }
                        self.pending.push_back(format!("{}\n", json!({"type": event.kind, "object": object})));
                        if event.kind == "ERROR" {
                            self.done = true;
                            break;
                        }
                    }
                }
                if self.pending.is_empty() && !self.done && self.rx.changed().await.is_err() {
                    return None;
                }
            }
        }
    }

    fn pod_json(uid: &str, node: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("pod-{uid}"), "namespace": "default", "uid": uid,
                "labels": {"app": "web"},
                "annotations": {"prometheus.io/scrape": "true"},
            },
            "spec": {
                "nodeName": node,
                "containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080, "name": "http"}]}],
            },
            "status": {"phase": "Running", "podIP": "192.0.2.10"},
        })
    }

    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn start_watch(url: &str) -> (PodCache, CancellationToken, tokio::task::JoinHandle<()>) {
        let client = client(&ApiSource::Url(url.to_owned())).await.unwrap().unwrap();
        let cache = PodCache::default();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch_pods(client, NODE.to_owned(), cache.clone(), shutdown.clone()));
        (cache, shutdown, task)
    }

    async fn stop(shutdown: CancellationToken, task: tokio::task::JoinHandle<()>) {
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    fn uids(cache: &PodCache) -> Vec<String> {
        cache.pods().into_iter().map(|pod| pod.uid).collect()
    }

    #[tokio::test]
    async fn watch_lists_then_follows_added_modified_deleted_of_own_node() {
        let (fake, url) = FakeApi::start().await;
        fake.apply(pod_json("a1", NODE));
        fake.apply(pod_json("b1", "node-b"));
        let (cache, shutdown, task) = start_watch(&url).await;

        eventually("the first list is in", || cache.synced()).await;
        assert_eq!(uids(&cache), ["a1"]);
        let a1 = cache.get("a1").unwrap();
        assert_eq!((a1.namespace.as_str(), a1.name.as_str(), a1.node.as_str()), ("default", "pod-a1", NODE));
        assert_eq!(a1.ports, [("app".to_owned(), 8080, Some("http".to_owned()))]);
        assert_eq!(scrape_url(&a1).as_deref(), Some("http://192.0.2.10:8080/metrics"));

        fake.apply(pod_json("b2", "node-b"));
        fake.apply(pod_json("a2", NODE));
        eventually("ADDED a2 is in", || cache.get("a2").is_some()).await;
        // a2 is resource version 4; the bookmark moves the watch on to 5 without an object.
        fake.bookmark();
        fake.close_watches();
        eventually("the watch reopened", || fake.requests().iter().filter(|request| request.watch).count() == 2).await;
        let mut modified = pod_json("a1", NODE);
        modified["metadata"]["annotations"]["lumen.io/exclude"] = json!("true");
        fake.apply(modified);
        eventually("MODIFIED a1 is excluded", || cache.get("a1").is_some_and(|pod| excluded(&pod))).await;
        fake.delete("a2");
        eventually("DELETED a2 is gone", || cache.get("a2").is_none()).await;
        assert_eq!(uids(&cache), ["a1"]);
        stop(shutdown, task).await;

        let requests = fake.requests();
        let lists: Vec<&Request> = requests.iter().filter(|request| !request.watch).collect();
        let watches: Vec<&Request> = requests.iter().filter(|request| request.watch).collect();
        assert_eq!(lists.len(), 1, "{requests:?}");
        assert!(!watches.is_empty(), "{requests:?}");
        for request in &requests {
            assert_eq!(request.params.get("fieldSelector").map(String::as_str), Some(SELECTOR), "{request:?}");
        }
        // Served from the API server's watch cache, as informers do.
        assert_eq!(lists[0].params.get("resourceVersion").map(String::as_str), Some("0"));
        assert_eq!(lists[0].params.get("resourceVersionMatch").map(String::as_str), Some("NotOlderThan"));
        // The watch resumes from the list's resource version, after the two initial pods.
        assert_eq!(watches[0].params.get("resourceVersion").map(String::as_str), Some("2"));
        assert_eq!(watches[0].params.get("allowWatchBookmarks").map(String::as_str), Some("true"));
        assert_eq!(watches[1].params.get("resourceVersion").map(String::as_str), Some("5"));
    }

    #[tokio::test]
    async fn relist_after_expired_watch_drops_pods_deleted_meanwhile() {
        let (fake, url) = FakeApi::start().await;
        fake.apply(pod_json("a1", NODE));
        fake.apply(pod_json("a2", NODE));
        let (cache, shutdown, task) = start_watch(&url).await;
        eventually("the first list is in", || cache.synced()).await;
        assert_eq!(uids(&cache), ["a1", "a2"]);
        eventually("the watch is open", || fake.requests().iter().any(|request| request.watch)).await;

        fake.delete_unseen("a2");
        fake.apply(pod_json("a3", NODE));
        eventually("a3 is in", || cache.get("a3").is_some()).await;
        // The deletion of a2 was never sent, so only a re-list can tell.
        assert_eq!(uids(&cache), ["a1", "a2", "a3"]);
        fake.expire();
        eventually("a re-list dropped a2", || cache.get("a2").is_none()).await;
        assert_eq!(uids(&cache), ["a1", "a3"]);
        assert!(cache.synced());
        stop(shutdown, task).await;
        assert_eq!(fake.requests().iter().filter(|request| !request.watch).count(), 2);
    }

    #[tokio::test]
    async fn watch_retries_a_failing_list() {
        let (fake, url) = FakeApi::start().await;
        fake.apply(pod_json("a1", NODE));
        fake.state.lock().failing_lists = 1;
        let (cache, shutdown, task) = start_watch(&url).await;
        eventually("the retried list is in", || cache.synced()).await;
        assert_eq!(uids(&cache), ["a1"]);
        stop(shutdown, task).await;
        assert!(fake.requests().iter().filter(|request| !request.watch).count() >= 2);
    }

    #[tokio::test]
    async fn watch_of_empty_node_name_requests_nothing() {
        let (fake, url) = FakeApi::start().await;
        let client = client(&ApiSource::Url(url)).await.unwrap().unwrap();
        let cache = PodCache::default();
        let watch = watch_pods(client, String::new(), cache.clone(), CancellationToken::new());
        tokio::time::timeout(Duration::from_secs(5), watch).await.unwrap();
        assert!(fake.requests().is_empty());
        assert!(!cache.synced());
    }

    #[tokio::test]
    async fn watch_stops_on_shutdown_while_api_is_unreachable() {
        // A port that was just free: connections are refused, and the watcher keeps retrying.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let (cache, shutdown, task) = start_watch(&url).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop(shutdown, task).await;
        assert!(!cache.synced());
        assert!(cache.pods().is_empty());
    }

    fn test_pod() -> PodInfo {
        PodInfo {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: "u1".into(),
            node: NODE.into(),
            pod_ip: Some("192.0.2.7".into()),
            phase: Some("Running".into()),
            ports: vec![("app".into(), 8080, Some("http".into())), ("app".into(), 9090, None)],
            ..PodInfo::default()
        }
    }

    #[test]
    fn the_token_goes_only_to_pods_of_the_agents_namespace_that_ask() {
        let asks = annotated(&[("lumen.io/scrape-token", "true")]);
        assert!(wants_token(&asks, Some("default")));
        assert!(!wants_token(&asks, Some("lumen")), "a pod elsewhere cannot ask for the agent's token");
        assert!(!wants_token(&asks, None), "outside Kubernetes no pod gets it");
        assert!(!wants_token(&annotated(&[]), Some("default")));
        assert!(!wants_token(&annotated(&[("lumen.io/scrape-token", "yes")]), Some("default")));
    }

    fn annotated(annotations: &[(&str, &str)]) -> PodInfo {
        let mut pod = test_pod();
        pod.annotations = annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        pod
    }

    #[test]
    fn scrape_url_follows_prometheus_annotations() {
        let scrape = ("prometheus.io/scrape", "true");
        let cases: Vec<(PodInfo, Option<&str>)> = vec![
            (annotated(&[]), None),
            (annotated(&[("prometheus.io/scrape", "false")]), None),
            (annotated(&[scrape]), Some("http://192.0.2.7:8080/metrics")),
            (annotated(&[scrape, ("prometheus.io/port", "9102")]), Some("http://192.0.2.7:9102/metrics")),
            (annotated(&[scrape, ("prometheus.io/scheme", "https")]), Some("https://192.0.2.7:8080/metrics")),
            (annotated(&[scrape, ("prometheus.io/scheme", "HTTP")]), Some("http://192.0.2.7:8080/metrics")),
            (
                annotated(&[scrape, ("prometheus.io/path", "/stats/prometheus")]),
                Some("http://192.0.2.7:8080/stats/prometheus"),
            ),
            (annotated(&[scrape, ("prometheus.io/path", "m")]), Some("http://192.0.2.7:8080/m")),
            (
                annotated(&[scrape, ("prometheus.io/path", "/m?format=text")]),
                Some("http://192.0.2.7:8080/m?format=text"),
            ),
            (
                annotated(&[
                    scrape,
                    ("prometheus.io/scheme", "https"),
                    ("prometheus.io/port", "8443"),
                    ("prometheus.io/path", "/x"),
                ]),
                Some("https://192.0.2.7:8443/x"),
            ),
            (annotated(&[scrape, ("prometheus.io/scheme", "ftp")]), None),
            (annotated(&[scrape, ("prometheus.io/port", "http")]), None),
            (annotated(&[scrape, ("prometheus.io/port", "70000")]), None),
            (annotated(&[scrape, ("prometheus.io/port", "0")]), None),
        ];
        for (pod, want) in cases {
            assert_eq!(scrape_url(&pod).as_deref(), want, "{:?}", pod.annotations);
        }

        let mut no_ports = annotated(&[scrape]);
        no_ports.ports.clear();
        assert_eq!(scrape_url(&no_ports), None);
        no_ports.annotations.insert("prometheus.io/port".into(), "9100".into());
        assert_eq!(scrape_url(&no_ports).as_deref(), Some("http://192.0.2.7:9100/metrics"));

        let mut no_ip = annotated(&[scrape]);
        no_ip.pod_ip = None;
        assert_eq!(scrape_url(&no_ip), None);

        let mut ipv6 = annotated(&[scrape]);
        ipv6.pod_ip = Some("2001:db8::7".into());
        assert_eq!(scrape_url(&ipv6).as_deref(), Some("http://[2001:db8::7]:8080/metrics"));

        for phase in ["Succeeded", "Failed"] {
            let mut done = annotated(&[scrape]);
            done.phase = Some(phase.into());
            assert_eq!(scrape_url(&done), None, "{phase}");
        }
    }

    #[test]
    fn excluded_only_by_true_annotation() {
        assert!(!excluded(&annotated(&[])));
        assert!(excluded(&annotated(&[("lumen.io/exclude", "true")])));
        assert!(!excluded(&annotated(&[("lumen.io/exclude", "false")])));
        assert!(!excluded(&annotated(&[("lumen.io/exclude", "")])));
        assert!(!excluded(&annotated(&[("lumen.io/excluded", "true")])));
    }

    #[test]
    fn pod_info_keeps_ports_of_containers_then_sidecars() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {
                "nodeName": NODE,
                "initContainers": [
                    {"name": "init", "ports": [{"containerPort": 1}]},
                    {"name": "sidecar", "restartPolicy": "Always", "ports": [{"containerPort": 15090, "name": "envoy"}]},
                ],
                "containers": [
                    {"name": "a", "ports": [{"containerPort": 80}, {"containerPort": 9000, "name": "metrics"}]},
                    {"name": "b"},
                ],
            },
            "status": {"phase": "Pending", "podIP": ""},
        }))
        .unwrap();
        let info = PodInfo::from_pod(&pod).unwrap();
        assert_eq!(
            info.ports,
            [
                ("a".to_owned(), 80, None),
                ("a".to_owned(), 9000, Some("metrics".to_owned())),
                ("sidecar".to_owned(), 15090, Some("envoy".to_owned())),
            ]
        );
        assert_eq!(info.pod_ip, None);
        assert_eq!(info.phase.as_deref(), Some("Pending"));
        assert!(PodInfo::from_pod(&Pod::default()).is_none());
    }

    #[test]
    fn cache_from_pods_is_synced() {
        let cache: PodCache = [test_pod()].into_iter().collect();
        assert!(cache.synced());
        assert_eq!(cache.get("u1"), Some(test_pod()));
        assert!(!PodCache::default().synced());
    }

    fn env(service_host: Option<&str>, dir: &std::path::Path, kubeconfig: Option<OsString>) -> AutoEnv {
        AutoEnv {
            service_host: service_host.map(OsString::from),
            service_account_dir: dir.join("serviceaccount"),
            kubeconfig,
            home: Some(dir.join("home")),
        }
    }

    #[tokio::test]
    async fn auto_without_cluster_or_kubeconfig_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-kubeconfig");
        let env = env(None, dir.path(), Some(missing.into_os_string()));
        assert!(client_with_env(&ApiSource::Auto, &env).await.unwrap().is_none());
    }

    #[test]
    fn auto_detects_in_cluster_then_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, "").unwrap();
        let missing = dir.path().join("missing");
        let both = std::env::join_paths([&missing, &kubeconfig]).unwrap();

        // A service host without a mounted token is not usable in-cluster.
        assert_eq!(detect(&env(Some("10.96.0.1"), dir.path(), None)), Detected::Nothing);
        assert_eq!(detect(&env(None, dir.path(), Some(both.clone()))), Detected::Kubeconfig(vec![kubeconfig.clone()]));
        // KUBECONFIG replaces ~/.kube/config even when none of its files exist.
        let home_config = dir.path().join("home/.kube/config");
        std::fs::create_dir_all(home_config.parent().unwrap()).unwrap();
        std::fs::write(&home_config, "").unwrap();
        assert_eq!(detect(&env(None, dir.path(), Some(missing.into_os_string()))), Detected::Nothing);
        assert_eq!(detect(&env(None, dir.path(), Some(OsString::new()))), Detected::Kubeconfig(vec![home_config]));

        std::fs::create_dir_all(dir.path().join("serviceaccount")).unwrap();
        std::fs::write(dir.path().join("serviceaccount/token"), "t").unwrap();
        assert_eq!(detect(&env(Some("10.96.0.1"), dir.path(), Some(both))), Detected::InCluster);
    }

    /// A self-signed CA made for these tests (`openssl req -x509 -newkey ec`); nothing is signed with it.
    const TEST_CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBhzCCAS2gAwIBAgIUIPpsr3s0DEfet6iPRrYrG8habc4wCgYIKoZIzj0EAwIw\n\
GDEWMBQGA1UEAwwNbHVtZW4tdGVzdC1jYTAgFw0yNjExMjIxOTM2NTBaGA8yMTI2\n\
MTAyOTE5MzY1MFowGDEWMBQGA1UEAwwNbHVtZW4tdGVzdC1jYTBZMBMGByqGSM49\n\
AgEGCCqGSM49AwEHA0IABFEynLRFXw06NgyA0PlPXIzBe6xKrKgUZaacEMUHPGZn\n\
aYvs2MFlXwNp/2fRc0Qb4auOuRDHvfrKwNPoqHTEpTOjUzBRMB0GA1UdDgQWBBT9\n\
wwGPaMQhV9wiVTzpghuic2V4ezAfBgNVHSMEGDAWgBT9wwGPaMQhV9wiVTzpghui\n\
c2V4ezAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQD19N39OGsJ\n\
+YF7G2W60KqIIrkUjSSa2LRjcKF5wnKQPwIgIxaMPq1RI+aB5937AZEWQLzFsc1t\n\
RkVCVoF8bgAR3js=\n\
-----END CERTIFICATE-----\n\
";

    #[tokio::test]
    async fn explicit_sources_build_clients_or_name_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        // An https API server with its own CA, as in a cluster: rustls (ring) must accept the CA.
        std::fs::write(dir.path().join("ca.crt"), TEST_CA).unwrap();
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
             clusters: [{name: test, cluster: {server: 'https://127.0.0.1:6443', certificate-authority: ca.crt}}]\n\
             users: [{name: test, user: {token: abc}}]\n\
             contexts: [{name: test, context: {cluster: test, user: test}}]\n",
        )
        .unwrap();
        assert!(client(&ApiSource::Kubeconfig(path)).await.unwrap().is_some());
        // Without a CA the system roots are used.
        assert!(client(&ApiSource::Url("https://127.0.0.1:6443".into())).await.unwrap().is_some());

        let missing = dir.path().join("missing");
        let err = client(&ApiSource::Kubeconfig(missing.clone())).await.err();
        assert!(matches!(err, Some(KubeError::Kubeconfig { ref paths, .. }) if paths == &[missing]), "{err:?}");

        let err = client(&ApiSource::Url("http://exa mple".into())).await.err();
        assert!(matches!(err, Some(KubeError::InvalidUrl { .. })), "{err:?}");
    }
}
