//! The configuration file. Every key has a default, so no file is needed to start; the common settings are
//! also flags and `LUMEN_*` environment variables, which win over the file. `deploy/config.example.toml`
//! lists every key with its default and a line of documentation, and a test keeps the two equal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub server: ServerConfig,
    pub store: store::StoreConfig,
    pub query: query::QueryConfig,
    pub agent: collector::AgentConfig,
    pub mqtt: ingest_mqtt::MqttConfig,
    pub otlp: ingest_otlp::OtlpConfig,
    pub syslog: ingest_syslog::SyslogConfig,
    pub limits: LimitsConfig,
    pub retention: RetentionConfig,
    pub ruler: ruler::RulerConfig,
    pub storage: bucket::StorageConfig,
}

/// `[retention]`: retention per tenant and per stream selector, over `server.retention`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// `[[retention.rule]]` entries.
    pub rule: Vec<RetentionRuleConfig>,
}

/// One `[[retention.rule]]`: keep `tenant`'s data (only what `selector` matches, when given) for `period`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRuleConfig {
    pub tenant: String,
    /// A stream or series selector such as `{namespace="dev"}` or `{__name__=~"debug_.*"}`; empty for the
    /// tenant's whole data.
    #[serde(default)]
    pub selector: String,
    #[serde(with = "store::config::duration")]
    pub period: Duration,
}

/// `[limits]`: what one tenant may take of the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most tenants the server holds; a write for a new tenant past it is a 403. 0: no limit.
    pub max_tenants: usize,
    /// Request body bytes per second one tenant may send over HTTP (a token bucket); past it 429 with
    /// Retry-After. "0 B" (the default): no limit, so one tenant gets the whole server; set it when tenants
    /// share one.
    pub tenant_ingest_rate: ByteSize,
    /// What a tenant may send at once above its rate; at least server.max_request_size.
    pub tenant_ingest_burst: ByteSize,
    /// Queries one tenant runs at once (LogQL, PromQL, SQL, labels, series, rule evaluations); more wait for a slot.
    pub tenant_max_concurrent_queries: usize,
    /// Longest a query waits for its tenant's slot; then 503 with Retry-After.
    #[serde(with = "store::config::duration")]
    pub tenant_query_queue_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_tenants: 1000,
            tenant_ingest_rate: ByteSize::b(0),
            tenant_ingest_burst: ByteSize::mib(128),
            tenant_max_concurrent_queries: 8,
            tenant_query_queue_timeout: Duration::from_secs(30),
        }
    }
}

/// `[log]`: the server's own logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Filter in `RUST_LOG` syntax, e.g. "info" or "info,store=debug"; `RUST_LOG` wins when set.
    pub level: String,
    /// "text" for people, "json" for log pipelines.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".to_string(), format: LogFormat::Text }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[server]`: what `lumen server` listens on and where it keeps its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Directory of the write-ahead log, parts and catalog; locked by one process.
    pub data_dir: PathBuf,
    /// HTTP listen address: ingest, query, /metrics, /health, /ready.
    pub http_addr: SocketAddr,
    /// OTLP gRPC listen address (logs and metrics `Export`); OTLP over HTTP is on `http_addr`.
    pub otlp_grpc_addr: SocketAddr,
    /// Embedded MQTT endpoint address (devices publish here directly), or "off".
    pub mqtt_listen: String,
    /// The same endpoint over TLS (`mqtts`, usually port 8883), on the server's certificate, or "off".
    pub mqtts_listen: String,
    /// Delete whole days of data older than this.
    #[serde(with = "store::config::duration")]
    pub retention: Duration,
    /// The disk budget, as `store.retention_max_disk` (either may be set; both only to the same value).
    pub retention_max_disk: ByteSize,
    /// Longest log line accepted; longer lines are rejected one by one and counted.
    pub max_line_size: ByteSize,
    /// Most labels a stream may have.
    pub max_labels_per_stream: usize,
    /// Most labels (with `__name__`) a metric series may have; a remote-write request with more is a 400.
    pub max_labels_per_series: usize,
    /// Largest request body, compressed or decompressed.
    pub max_request_size: ByteSize,
    /// Token file (`lumen auth token` adds to it): each token's SHA-256, tenants and scopes. Reloaded when it
    /// changes. Empty: no file; with neither a file nor `LUMEN_AUTH_TOKEN`, authentication is off.
    pub auth_file: PathBuf,
    /// Serve beyond loopback without authentication (a trusted network, or a proxy that authenticates); also
    /// what lets syslog listeners (`syslog.listen`), which have no credentials, listen beyond loopback.
    pub allow_unauthenticated: bool,
    /// PEM certificate (chain) for HTTPS and OTLP gRPC over TLS; with `tls_key_file`. Reloaded when it
    /// changes. Empty: plain HTTP and gRPC.
    pub tls_cert_file: PathBuf,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate they signed (mutual TLS).
    pub tls_client_ca_file: PathBuf,
    /// Connections open at once, per listener (HTTP, OTLP gRPC); further ones wait to be accepted.
    pub max_connections: usize,
    /// Longest wait for a TLS handshake and for a request's headers; also how long an idle keep-alive
    /// connection is kept.
    #[serde(with = "store::config::duration")]
    pub http_header_timeout: Duration,
    /// Longest time to receive a request body (408 past it); also the longest OTLP gRPC call.
    #[serde(with = "store::config::duration")]
    pub http_body_timeout: Duration,
    /// An OTLP gRPC connection that has carried no byte for this long is closed (clients reconnect when they
    /// next send); longer than `http_body_timeout`, so that it never cuts a call short.
    #[serde(with = "store::config::duration")]
    pub grpc_idle_timeout: Duration,
    /// Request bodies held at once, being received or handled; past it requests wait, then get 503. Left
    /// at its default: `min(128 MiB, 15% of memory_limit)`, and `max_request_size` at most that.
    pub max_inflight_request_bytes: ByteSize,
    /// The memory budget: a size, or "auto" (75% of the cgroup's memory limit, else 50% of the RAM). Keys
    /// left at their default take a share of it (README "Memory"); over 90% of it, heads flush early and
    /// queries get 503 until memory is below 80%.
    pub memory_limit: crate::memory::MemoryLimit,
    /// What this process does: "all" (ingest, store, query, compact and sync: one node, the default),
    /// "ingest" (one of several ingest nodes on one bucket: it does what "all" does for the writes it
    /// takes, into its own tree `prefix/nodes/<node_name>/`, and evaluates no rules) or "query" (a query
    /// node: follows the bucket of `[storage]`, the prefix's own commits and every ingest node's tree,
    /// answers queries from them, takes no writes) or "compactor" (tends the bucket's retired trees, those
    /// of ingest nodes that stopped for good: retention, merges, old commits; one at a time, by the lease
    /// `compactor`; a second waits). (--role)
    pub role: Role,
    /// An ingest node's name: it names the node's tree in the bucket, so it must be stable across
    /// restarts and different from every other ingest node's ("" (default): the host name, which a
    /// Kubernetes StatefulSet makes the pod's stable name). (--node-name)
    pub node_name: String,
    /// A token of every tenant and scope, from `LUMEN_AUTH_TOKEN` only (never from the file).
    #[serde(skip)]
    pub auth_token: Option<Secret>,
}

/// `server.role`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// One process does everything (the default).
    #[default]
    All,
    /// One of several ingest nodes on one bucket, each writing its own tree.
    Ingest,
    /// Follows the bucket the "all" and "ingest" nodes write and answers queries from it; takes no writes.
    Query,
    /// Tends the retired trees of a shared bucket (retention, merges), holding the lease `compactor`.
    Compactor,
}

/// A secret held in memory: its `Debug` form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./lumen-data"),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 9700)),
            otlp_grpc_addr: SocketAddr::from(([127, 0, 0, 1], 4317)),
            mqtt_listen: "127.0.0.1:1883".to_string(),
            mqtts_listen: "off".to_string(),
            retention: Duration::from_secs(30 * 86_400),
            retention_max_disk: ByteSize::b(0),
            max_line_size: ByteSize::kib(256),
            max_labels_per_stream: 15,
            max_labels_per_series: 40,
            max_request_size: ByteSize::mib(64),
            auth_file: PathBuf::new(),
            allow_unauthenticated: false,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            tls_client_ca_file: PathBuf::new(),
            max_connections: 1024,
            http_header_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(60),
            grpc_idle_timeout: Duration::from_secs(300),
            max_inflight_request_bytes: ByteSize::mib(128),
            memory_limit: crate::memory::MemoryLimit::Auto,
            role: Role::All,
            node_name: String::new(),
            auth_token: None,
        }
    }
}

/// The node name of `lumen agent`: the configured one, else `NODE_NAME` (the downward API sets it in a
/// DaemonSet), else the host name.
pub fn node_name(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_string();
    }
    if let Some(n) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
        return n;
    }
    host_name()
}

/// The host name, else "unknown".
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

impl Config {
    /// `server.node_name`, else the host name (not `NODE_NAME`, which names the Kubernetes node: two
    /// ingest pods may share one).
    pub fn server_node_name(&self) -> String {
        if self.server.node_name.is_empty() { host_name() } else { self.server.node_name.clone() }
    }

    /// Reads a TOML file.
    ///
    /// # Errors
    /// When the file cannot be read or holds an unknown key or a bad value (the message names it).
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Checks values that parse but cannot work.
    ///
    /// # Errors
    /// A message that names the key.
    /// The retention rules as the stores apply them.
    ///
    /// # Errors
    /// A rule whose tenant or selector is invalid, whose period is under an hour, or that would keep what
    /// its selector matches longer than its tenant's period (not supported).
    pub fn retention_rules(&self) -> anyhow::Result<Vec<store::config::RetentionRule>> {
        let mut out = Vec::new();
        for (i, r) in self.retention.rule.iter().enumerate() {
            let what = format!("retention.rule[{i}] (tenant {:?}, selector {:?})", r.tenant, r.selector);
            store::model::Tenant::new(&r.tenant).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            if r.period < Duration::from_secs(3600) {
                bail!("{what}: period {} is below the minimum of 1h", humantime::format_duration(r.period));
            }
            let matchers = if r.selector.trim().is_empty() {
                Vec::new()
            } else {
                let ms = query::promql::parse_selector(&r.selector)
                    .map_err(|e| anyhow::anyhow!("{what}: not a selector like {{namespace=\"dev\"}}: {e}"))?;
                query::http::prom::store_matchers(&ms)
            };
            out.push(store::config::RetentionRule {
                tenant: r.tenant.clone(),
                matchers,
                period: r.period,
                selector: r.selector.clone(),
            });
        }
        for r in out.iter().filter(|r| !r.matchers.is_empty()) {
            let tenant_period = out
                .iter()
                .find(|t| t.tenant == r.tenant && t.matchers.is_empty())
                .map_or(self.server.retention, |t| t.period);
            if r.period > tenant_period {
                bail!(
                    "retention rule for tenant {:?} and selector {}: {} is longer than the tenant's period ({}); a \
                     selector may only shorten retention (give the tenant a longer rule without a selector instead)",
                    r.tenant,
                    r.selector,
                    humantime::format_duration(r.period),
                    humantime::format_duration(tenant_period)
                );
            }
        }
        Ok(out)
    }

    /// The disk budget: `store.retention_max_disk` or `server.retention_max_disk`; `None` for none.
    pub fn disk_budget(&self) -> Option<ByteSize> {
        [self.store.retention_max_disk, self.server.retention_max_disk].into_iter().find(|b| b.as_u64() > 0)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.store.validate().map_err(anyhow::Error::msg)?;
        self.storage.validate().map_err(anyhow::Error::msg)?;
        self.mqtt.validate().map_err(anyhow::Error::msg)?;
        self.otlp.validate().map_err(anyhow::Error::msg)?;
        let s = &self.server;
        if s.mqtt_listen != "off" && s.mqtt_listen.parse::<SocketAddr>().is_err() {
            bail!("server.mqtt_listen = {:?} is neither an address like 127.0.0.1:1883 nor \"off\"", s.mqtt_listen);
        }
        if s.mqtts_listen != "off" {
            if s.mqtts_listen.parse::<SocketAddr>().is_err() {
                bail!("server.mqtts_listen = {:?} is neither an address like 0.0.0.0:8883 nor \"off\"", s.mqtts_listen);
            }
            if s.tls_cert_file.as_os_str().is_empty() {
                bail!("server.mqtts_listen needs server.tls_cert_file and server.tls_key_file (its certificate)");
            }
        }
        let (old, new) = (s.retention_max_disk.as_u64(), self.store.retention_max_disk.as_u64());
        if old > 0 && new > 0 && old != new {
            bail!(
                "server.retention_max_disk ({}) and store.retention_max_disk ({}) disagree: set only one \
                 (they are the same setting)",
                s.retention_max_disk.display().iec(),
                self.store.retention_max_disk.display().iec()
            );
        }
        match s.role {
            Role::All => {}
            Role::Query if self.storage.backend != bucket::Backend::S3 => bail!(
                "server.role = \"query\" follows a bucket: set [storage] backend = \"s3\" and the bucket the writer \
                 (a server with role \"all\") syncs into"
            ),
            Role::Query => {}
            Role::Ingest if self.storage.backend != bucket::Backend::S3 => bail!(
                "server.role = \"ingest\" writes its own tree of a shared bucket: set [storage] backend = \"s3\" \
                 and the bucket (or run one server with role \"all\" and local storage)"
            ),
            Role::Ingest => {
                bucket::check_node_name(&self.server_node_name()).map_err(|e| {
                    anyhow::anyhow!("server.node_name: {e}; set server.node_name (or --node-name) to a stable name")
                })?;
            }
            Role::Compactor if self.storage.backend != bucket::Backend::S3 => bail!(
                "server.role = \"compactor\" tends the retired trees of a shared bucket: set [storage] backend = \"s3\" \
                 and the bucket the ingest nodes write"
            ),
            Role::Compactor if self.storage.retired_trees_interval.is_zero() => bail!(
                "server.role = \"compactor\" does its work every storage.retired_trees_interval, which is \"0s\" \
                 (never): set it, e.g. \"1h\""
            ),
            Role::Compactor => {
                bucket::check_node_name(&self.server_node_name()).map_err(|e| {
                    anyhow::anyhow!("server.node_name: {e}; set server.node_name (or --node-name) to a stable name")
                })?;
            }
        }
        for url in &self.query.ingest_urls {
            let host = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .map(|r| r.split('/').next().unwrap_or(""));
            match host {
                // The URL is not echoed: what precedes the `@` may be a password.
                Some(h) if h.contains('@') => bail!(
                    "query.ingest_urls: an entry carries credentials (user:password@): remove them; the query node \
                     passes each caller's own Authorization on to its ingest nodes"
                ),
                Some(h) if !h.is_empty() => {}
                _ => bail!(
                    "query.ingest_urls: {url:?} is not an ingest node's base URL: write http://host:port or https://host:port"
                ),
            }
        }
        let cache = self.storage.cache_max_bytes.as_u64();
        if let Some(budget) = self.disk_budget()
            && self.storage.backend == bucket::Backend::S3
            && cache > 0
            && cache >= budget.as_u64()
        {
            bail!(
                "storage.cache_max_bytes ({}) must stay below the disk budget store.retention_max_disk ({}): the \
                 budget deletes data everywhere, the cache only evicts the local copy of what the bucket holds",
                self.storage.cache_max_bytes.display().iec(),
                budget.display().iec()
            );
        }
        self.retention_rules()?;
        if s.retention < Duration::from_secs(3600) {
            bail!("server.retention = {} is below the minimum of 1h", humantime::format_duration(s.retention));
        }
        if s.max_line_size.as_u64() == 0 || s.max_line_size > s.max_request_size {
            bail!("server.max_line_size must be above 0 and at most server.max_request_size");
        }
        if s.max_labels_per_series == 0 {
            bail!("server.max_labels_per_series must be at least 1");
        }
        if s.auth_token.as_ref().is_some_and(|t| t.0.len() < 16) {
            bail!("LUMEN_AUTH_TOKEN is shorter than 16 characters: use `lumen auth token` or `openssl rand -hex 32`");
        }
        if !self.auth_enabled() && !s.allow_unauthenticated {
            for (key, addr) in
                [("server.http_addr", Some(s.http_addr)), ("server.otlp_grpc_addr", Some(s.otlp_grpc_addr))]
            {
                if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
                    bail!(
                        "{key} = {addr} is beyond loopback, and no authentication is configured: set server.auth_file \
                         (`lumen auth token --file F ...` makes one) or LUMEN_AUTH_TOKEN, or set \
                         server.allow_unauthenticated = true (--allow-unauthenticated) if a proxy authenticates"
                    );
                }
            }
        }
        let (cert, key) = (!s.tls_cert_file.as_os_str().is_empty(), !s.tls_key_file.as_os_str().is_empty());
        if cert != key {
            bail!("server.tls_cert_file and server.tls_key_file go together: set both, or neither for plain HTTP");
        }
        if !cert && !s.tls_client_ca_file.as_os_str().is_empty() {
            bail!("server.tls_client_ca_file needs server.tls_cert_file and server.tls_key_file");
        }
        // Syslog carries no credentials: beyond loopback only with allow_unauthenticated (or mutual TLS).
        ingest_syslog::check(&self.syslog, self.syslog_server_side())?;
        if s.max_connections == 0 {
            bail!("server.max_connections must be at least 1");
        }
        if s.http_header_timeout < Duration::from_secs(1) || s.http_body_timeout < Duration::from_secs(1) {
            bail!("server.http_header_timeout and server.http_body_timeout must be at least 1s");
        }
        if s.grpc_idle_timeout <= s.http_body_timeout {
            bail!(
                "server.grpc_idle_timeout ({}) must be longer than server.http_body_timeout ({}), the longest gRPC call, or an idle timeout could cut a call short",
                humantime::format_duration(s.grpc_idle_timeout),
                humantime::format_duration(s.http_body_timeout)
            );
        }
        if s.max_inflight_request_bytes < s.max_request_size {
            bail!(
                "server.max_inflight_request_bytes must be at least server.max_request_size, or the largest request could never be received"
            );
        }
        if let crate::memory::MemoryLimit::Bytes(b) = s.memory_limit
            && b.as_u64() < crate::memory::MIN_BUDGET
        {
            bail!(
                "server.memory_limit = {} is below the minimum of {} (an empty server takes about 20 MiB); set a \
                 larger size, or \"auto\"",
                b.display().iec(),
                ByteSize::b(crate::memory::MIN_BUDGET).display().iec()
            );
        }
        let l = &self.limits;
        if l.tenant_ingest_rate.as_u64() > 0 && l.tenant_ingest_burst < s.max_request_size {
            bail!(
                "limits.tenant_ingest_burst must be at least server.max_request_size, or the largest request could never be taken"
            );
        }
        if l.tenant_max_concurrent_queries == 0 {
            bail!("limits.tenant_max_concurrent_queries must be at least 1");
        }
        if s.max_labels_per_stream == 0 {
            bail!("server.max_labels_per_stream must be at least 1");
        }
        if self.query.sql_max_rows == 0 {
            bail!("query.sql_max_rows must be at least 1");
        }
        self.agent.validate()?;
        Ok(())
    }

    /// The TLS files, when TLS is configured.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        let s = &self.server;
        (!s.tls_cert_file.as_os_str().is_empty()).then(|| crate::tls::TlsFiles {
            cert: s.tls_cert_file.clone(),
            key: s.tls_key_file.clone(),
            client_ca: (!s.tls_client_ca_file.as_os_str().is_empty()).then(|| s.tls_client_ca_file.clone()),
        })
    }

    /// What the syslog listeners depend on of the server's settings.
    pub fn syslog_server_side(&self) -> ingest_syslog::ServerSide {
        let s = &self.server;
        ingest_syslog::ServerSide {
            tls: !s.tls_cert_file.as_os_str().is_empty(),
            client_ca: !s.tls_client_ca_file.as_os_str().is_empty(),
            allow_unauthenticated: s.allow_unauthenticated,
        }
    }

    /// True when requests must carry a token: a token file or `LUMEN_AUTH_TOKEN` is configured.
    pub fn auth_enabled(&self) -> bool {
        !self.server.auth_file.as_os_str().is_empty() || self.server.auth_token.is_some()
    }

    /// The defaults as TOML, for `lumen config defaults`.
    pub fn defaults_toml() -> String {
        toml::to_string(&Config::default()).unwrap_or_default()
    }

    pub fn wire_limits(&self) -> wire::Limits {
        wire::Limits {
            max_line_bytes: self.server.max_line_size.as_u64() as usize,
            max_labels: self.server.max_labels_per_stream,
            max_body_bytes: self.server.max_request_size.as_u64() as usize,
            ..wire::Limits::default()
        }
    }
}
