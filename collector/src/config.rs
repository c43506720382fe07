//! The `[agent]` section of the configuration. Every key has a default that suits a DaemonSet on a small
//! node; `lumen agent`'s flags override the keys they name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::transform::ParseConfig;

/// `[agent]`: what `lumen agent` collects and where it ships it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Base URL of the Lumen server the agent ships to. (--server)
    pub server: String,
    /// Where the kubelet writes pod logs: <pods_dir>/<namespace>_<pod>_<uid>/<container>/<n>.log. (--pods-dir)
    pub pods_dir: PathBuf,
    /// The agent's own state: checkpoints and the disk buffer. (--data-dir)
    pub data_dir: PathBuf,
    /// This node's name, the `node` label; empty means NODE_NAME from the environment, else the host name.
    /// (--node-name)
    pub node_name: String,
    /// Listen address of the agent's own /metrics, /health and /ready.
    pub http_addr: SocketAddr,
    /// Tenant sent as X-Scope-OrgID; empty sends none (the server's default tenant, or the token's).
    pub tenant: String,
    /// File whose first line is the token sent as `Authorization: Bearer` to the server (and to scrape
    /// targets on the server's host and port); re-read when the server answers 401. (--bearer-token-file)
    pub bearer_token_file: PathBuf,
    /// PEM CA certificates to trust for an https:// server, besides the system's. (--tls-ca-file)
    pub tls_ca_file: PathBuf,
    /// PEM client certificate for a server that asks for one (mutual TLS); with `tls_client_key_file`.
    pub tls_client_cert_file: PathBuf,
    /// PEM private key of `tls_client_cert_file`.
    pub tls_client_key_file: PathBuf,
    /// Where log batches go (Loki push, protobuf); empty means <server>/loki/api/v1/push. A real Loki works too.
    pub logs_url: String,
    /// Where samples go (Prometheus remote write 1.0); empty means <server>/api/v1/write. Any receiver works.
    pub metrics_url: String,
    /// Collect pod logs.
    pub logs: bool,
    /// Read the systemd journal natively (no journalctl needed) from `journal_dirs`.
    pub journal: bool,
    /// Directories of journal files, each read with its `<machine-id>/` subdirectories; a missing one is
    /// skipped. In a container, mount the host's (read-only) at the same paths. (--journal-dir, repeatable)
    pub journal_dirs: Vec<PathBuf>,
    /// Globs of systemd units (`_SYSTEMD_UNIT`) whose entries are read, e.g. "kubelet.service", "k3s*";
    /// empty reads every entry (with it set, entries without a unit, like the kernel's, are left out).
    pub journal_units: Vec<String>,
    /// Globs of systemd units whose entries are left out, e.g. "session-*.scope".
    pub journal_exclude_units: Vec<String>,
    /// Other journal fields kept as fields, e.g. "_CMDLINE", "CODE_FILE"; they are named in lower case
    /// without leading underscores (`cmdline`, `code_file`).
    pub journal_fields: Vec<String>,
    /// On the agent's first start on a host (no position yet), journal entries older than this are not
    /// read (as Promtail's max_age); "0s" reads the whole journal.
    #[serde(with = "store::config::duration")]
    pub journal_max_age: Duration,
    /// Prometheus endpoints to scrape, e.g. "http://127.0.0.1:9100/metrics". (--scrape-target, repeatable)
    pub scrape_targets: Vec<String>,
    /// How often every target is scraped. (--scrape-interval)
    #[serde(with = "store::config::duration")]
    pub scrape_interval: Duration,
    /// Longest a scrape may take; capped at the interval.
    #[serde(with = "store::config::duration")]
    pub scrape_timeout: Duration,
    /// The `job` label of the static targets.
    pub scrape_job: String,
    /// Keep a scraped target's own job/instance labels instead of renaming them exported_*.
    pub honor_labels: bool,
    /// Scrape this node's pods annotated prometheus.io/scrape: "true" (needs the Kubernetes API).
    pub scrape_pods: bool,
    /// Collect the node's CPU, memory, filesystem, disk and network metrics from /proc and /sys.
    pub node_metrics: bool,
    /// The host's /proc (in a container, mount it and point here, e.g. /host/proc).
    pub proc_dir: PathBuf,
    /// The host's /sys.
    pub sys_dir: PathBuf,
    /// The host's root file system (in a container, mount / read-only and point here, e.g. /host/root), for
    /// the sizes of the host's file systems, as node_exporter's --path.rootfs; "/" outside a container.
    pub rootfs_dir: PathBuf,
    /// Kubernetes API: "auto" (in-cluster config when present, else none), "off", a kubeconfig path, or a URL.
    pub kubernetes_api: String,
    /// Pod labels copied onto the pod's log streams (names made valid: `app.kubernetes.io/name` → `app_kubernetes_io_name`).
    pub pod_labels: Vec<String>,
    /// Docker's containers directory, to read the json-file logs of a Docker host's containers too, e.g.
    /// /var/lib/docker/containers; empty reads none. (--docker-dir)
    pub docker_dir: PathBuf,
    /// Docker container labels copied onto the container's log streams, besides the Compose project and
    /// service (names made valid as for `pod_labels`).
    pub docker_labels: Vec<String>,
    /// Docker containers whose logs are not read: `label` (present) or `label=value`.
    pub docker_exclude_labels: Vec<String>,
    /// Most disk the buffer of unacknowledged batches may take; when full, the agent stops reading files.
    pub buffer_max_size: ByteSize,
    /// A batch is cut once its lines take this much.
    pub batch_max_size: ByteSize,
    /// A batch is cut at the latest this long after its first line.
    #[serde(with = "store::config::duration")]
    pub batch_wait: Duration,
    /// Longest log record: merged partial lines beyond this are cut and the record marked truncated.
    pub max_line_size: ByteSize,
    /// How often the pods directory is listed for new and removed files.
    #[serde(with = "store::config::duration")]
    pub discover_interval: Duration,
    /// How long the reader sleeps when no file has new data.
    #[serde(with = "store::config::duration")]
    pub poll_interval: Duration,
    /// Longest wait for the server's answer to one batch.
    #[serde(with = "store::config::duration")]
    pub request_timeout: Duration,
    /// Longest pause between retries of a batch while the server is down (backoff doubles up to it).
    #[serde(with = "store::config::duration")]
    pub retry_max_backoff: Duration,
    /// How parsed pod log lines are turned into fields, joined, filtered and selected.
    pub parse: ParseConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            server: "http://127.0.0.1:9700".to_string(),
            pods_dir: PathBuf::from("/var/log/pods"),
            data_dir: PathBuf::from("/var/lib/lumen-agent"),
            node_name: String::new(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9701)),
            tenant: String::new(),
            bearer_token_file: PathBuf::new(),
            tls_ca_file: PathBuf::new(),
            tls_client_cert_file: PathBuf::new(),
            tls_client_key_file: PathBuf::new(),
            logs_url: String::new(),
            metrics_url: String::new(),
            logs: true,
            journal: true,
            journal_dirs: vec![PathBuf::from("/var/log/journal"), PathBuf::from("/run/log/journal")],
            journal_units: Vec::new(),
            journal_exclude_units: Vec::new(),
            journal_fields: Vec::new(),
            journal_max_age: Duration::from_secs(7 * 3600),
            scrape_targets: Vec::new(),
            scrape_interval: Duration::from_secs(15),
            scrape_timeout: Duration::from_secs(10),
            scrape_job: "lumen-agent".to_string(),
            honor_labels: false,
            scrape_pods: true,
            node_metrics: true,
            proc_dir: PathBuf::from("/proc"),
            rootfs_dir: PathBuf::from("/"),
            sys_dir: PathBuf::from("/sys"),
            kubernetes_api: "auto".to_string(),
            pod_labels: vec![
                "app".to_string(),
                "app.kubernetes.io/name".to_string(),
                "app.kubernetes.io/instance".to_string(),
                "app.kubernetes.io/component".to_string(),
            ],
            docker_dir: PathBuf::new(),
            docker_labels: Vec::new(),
            docker_exclude_labels: vec!["lumen.io/exclude=true".to_string()],
            buffer_max_size: ByteSize::gib(1),
            batch_max_size: ByteSize::mib(1),
            batch_wait: Duration::from_secs(1),
            max_line_size: ByteSize::kib(256),
            discover_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(250),
            request_timeout: Duration::from_secs(30),
            retry_max_backoff: Duration::from_secs(30),
            parse: ParseConfig::default(),
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("agent.{key} = {value:?} is not a valid http:// or https:// URL")]
    Url { key: &'static str, value: String },
    #[error("agent.{key} must be greater than zero")]
    Zero { key: &'static str },
    #[error("agent.tls_client_cert_file and agent.tls_client_key_file go together: set both or neither")]
    ClientCertPair,
    #[error(transparent)]
    Parse(#[from] crate::transform::TransformError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalConfigError),
}

impl AgentConfig {
    /// How journal entries become log lines on node `node`, from the `journal_*` keys.
    ///
    /// # Errors
    /// A bad unit glob or journal field name.
    pub fn journal_mapping(&self, node: String) -> Result<crate::journal::Mapping, ConfigError> {
        Ok(crate::journal::Mapping::new(
            node,
            &self.journal_units,
            &self.journal_exclude_units,
            &self.journal_fields,
            usize::try_from(self.max_line_size.as_u64()).unwrap_or(usize::MAX),
        )?)
    }

    /// The TLS files of the connections to the server.
    pub fn tls_files(&self) -> crate::client::TlsFiles {
        let set = |p: &PathBuf| (!p.as_os_str().is_empty()).then(|| p.clone());
        crate::client::TlsFiles {
            ca: set(&self.tls_ca_file),
            client_cert: set(&self.tls_client_cert_file).zip(set(&self.tls_client_key_file)),
        }
    }

    /// The URL log batches are posted to.
    pub fn logs_endpoint(&self) -> String {
        if self.logs_url.is_empty() {
            format!("{}/loki/api/v1/push", self.server.trim_end_matches('/'))
        } else {
            self.logs_url.clone()
        }
    }

    /// The URL sample batches are posted to.
    pub fn metrics_endpoint(&self) -> String {
        if self.metrics_url.is_empty() {
            format!("{}/api/v1/write", self.server.trim_end_matches('/'))
        } else {
            self.metrics_url.clone()
        }
    }

    /// Checks what serde cannot: URLs, non-zero intervals, the parse options' regexes and globs.
    ///
    /// # Errors
    /// The first bad key, named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url_ok =
            |s: &str| (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len() - 1;
        for (key, value) in [("server", &self.server), ("logs_url", &self.logs_url), ("metrics_url", &self.metrics_url)]
        {
            let optional_and_unset = value.is_empty() && key != "server";
            if !optional_and_unset && !url_ok(value) {
                return Err(ConfigError::Url { key, value: value.clone() });
            }
        }
        if self.tls_client_cert_file.as_os_str().is_empty() != self.tls_client_key_file.as_os_str().is_empty() {
            return Err(ConfigError::ClientCertPair);
        }
        for t in &self.scrape_targets {
            if !url_ok(t) {
                return Err(ConfigError::Url { key: "scrape_targets", value: t.clone() });
            }
        }
        for (key, d) in [
            ("scrape_interval", self.scrape_interval),
            ("scrape_timeout", self.scrape_timeout),
            ("batch_wait", self.batch_wait),
            ("discover_interval", self.discover_interval),
            ("poll_interval", self.poll_interval),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero { key });
            }
        }
        for (key, s) in [
            ("buffer_max_size", self.buffer_max_size),
            ("batch_max_size", self.batch_max_size),
            ("max_line_size", self.max_line_size),
        ] {
            if s.as_u64() == 0 {
                return Err(ConfigError::Zero { key });
            }
        }
        crate::transform::Transform::new(&self.parse)?;
        self.journal_mapping(String::new())?;
        Ok(())
    }
}
