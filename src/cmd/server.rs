//! `lumen server`: its flags, and the configuration they make with the file and the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use lumen::config::{Config, LogFormat};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// TOML configuration file; flags and LUMEN_* variables override its values.
    #[arg(long, env = "LUMEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./lumen-data].
    #[arg(long, env = "LUMEN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:9700].
    #[arg(long, env = "LUMEN_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// PEM certificate for HTTPS and gRPC over TLS (with --tls-key-file) [default: none].
    #[arg(long, env = "LUMEN_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "LUMEN_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// OTLP gRPC listen address [default: 127.0.0.1:4317].
    #[arg(long, env = "LUMEN_OTLP_GRPC_ADDR")]
    pub otlp_grpc_addr: Option<SocketAddr>,
    /// Embedded MQTT endpoint address, or "off" [default: 127.0.0.1:1883].
    #[arg(long, env = "LUMEN_MQTT_LISTEN")]
    pub mqtt_listen: Option<String>,
    /// The MQTT endpoint over TLS (needs --tls-cert-file), e.g. 0.0.0.0:8883, or "off" [default: off].
    #[arg(long, env = "LUMEN_MQTTS_LISTEN")]
    pub mqtts_listen: Option<String>,
    /// External MQTT broker to subscribe to, mqtt://HOST:PORT or mqtts://HOST:PORT [default: none].
    #[arg(long, env = "LUMEN_MQTT_BROKER")]
    pub mqtt_broker: Option<String>,
    /// Syslog listeners, comma-separated: udp://ADDR, tcp://ADDR, tls://ADDR (TLS needs --tls-cert-file),
    /// e.g. tcp://127.0.0.1:514,udp://127.0.0.1:514 [default: none].
    #[arg(long, env = "LUMEN_SYSLOG_LISTEN")]
    pub syslog_listen: Option<String>,
    /// MQTT topic template (repeatable), e.g. 'devices/{site}/{device}/telemetry'; each {name} becomes a label.
    #[arg(long = "mqtt-topic")]
    pub mqtt_topics: Vec<String>,
    /// Delete data older than this, whole days at a time [default: 30d].
    #[arg(long, env = "LUMEN_RETENTION")]
    pub retention: Option<humantime::Duration>,
    /// Log output format.
    #[arg(long, env = "LUMEN_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Token file (`lumen auth token` writes it); with it, every request needs a token [default: none].
    #[arg(long, env = "LUMEN_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Serve beyond loopback without authentication (only behind a proxy that authenticates).
    #[arg(long, env = "LUMEN_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// What this process does (server.role): all; ingest (one of several ingest nodes on one bucket);
    /// query (a query node following the bucket); or compactor (tends the trees of stopped ingest nodes).
    #[arg(long, env = "LUMEN_ROLE", value_enum)]
    pub role: Option<lumen::config::Role>,
    /// A query node evaluates the rules, reading every ingest node and writing through one
    /// (ruler.on_query_nodes; for several ingest nodes, which evaluate none).
    #[arg(long, env = "LUMEN_RULES_ON_QUERY_NODES")]
    pub rules_on_query_nodes: bool,
    /// An ingest node's stable name, which names its tree in the bucket (server.node_name) [default: the
    /// host name].
    #[arg(long, env = "LUMEN_NODE_NAME")]
    pub node_name: Option<String>,
    /// A query node's ingest node, asked for what the bucket does not hold yet (query.ingest_urls;
    /// repeat the flag, or separate with commas in the environment).
    #[arg(long = "ingest-url", env = "LUMEN_INGEST_URLS", value_delimiter = ',')]
    pub ingest_urls: Vec<String>,
    /// Validate the configuration (file, flags and environment) and exit without starting.
    #[arg(long)]
    pub check: bool,
}

/// `lumen server`: `--check` validates and exits; otherwise runs until SIGINT or SIGTERM.
pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    if args.check {
        let source = args.config.as_ref().map_or("the defaults".to_string(), |p| p.display().to_string());
        return config(args).and_then(|config| lumen::server::check(&config, true)).map(|()| eprintln!("{source}: ok"));
    }
    let config = config(args)?;
    lumen::telemetry::init(&config.log);
    // 8 MiB stacks (reserved, touched only as used) for the query engines' recursion within
    // query::depth::MAX_QUERY_DEPTH.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lumen")
        .thread_stack_size(8 << 20)
        .build()?;
    runtime.block_on(async { lumen::start(config).await?.run_until_signal().await })
}

fn config(args: ServerArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if !args.ingest_urls.is_empty() {
        config.query.ingest_urls = args.ingest_urls.clone();
    }
    let s = &mut config.server;
    if let Some(v) = args.role {
        s.role = v;
    }
    if let Some(v) = args.node_name {
        s.node_name = v;
    }
    if args.rules_on_query_nodes {
        config.ruler.on_query_nodes = true;
    }
    if let Some(v) = args.data_dir {
        s.data_dir = v;
    }
    if let Some(v) = args.http_addr {
        s.http_addr = v;
    }
    if let Some(v) = args.otlp_grpc_addr {
        s.otlp_grpc_addr = v;
    }
    if let Some(v) = args.tls_cert_file {
        s.tls_cert_file = v;
    }
    if let Some(v) = args.tls_key_file {
        s.tls_key_file = v;
    }
    if let Some(v) = args.mqtt_listen {
        s.mqtt_listen = v;
    }
    if let Some(v) = args.mqtts_listen {
        s.mqtts_listen = v;
    }
    if let Some(v) = args.retention {
        s.retention = v.into();
    }
    if let Some(v) = args.syslog_listen {
        config.syslog.listen = v;
    }
    if let Some(v) = args.mqtt_broker {
        config.mqtt.broker.url = v;
    }
    if !args.mqtt_topics.is_empty() {
        // Templates from flags replace the file's plain topics; its detailed [[mqtt.templates]] stay after them.
        config.mqtt.topics = args.mqtt_topics;
    }
    if let Some(v) = args.log_format {
        config.log.format = v;
    }
    if let Some(v) = args.auth_file {
        config.server.auth_file = v;
    }
    if args.allow_unauthenticated {
        config.server.allow_unauthenticated = true;
    }
    // Secrets come from the environment (a Kubernetes secretKeyRef, a Compose .env), never from the file.
    if let Some(v) = std::env::var("LUMEN_MQTT_LISTENER_PASSWORD").ok().filter(|v| !v.is_empty()) {
        config.mqtt.listener.password = v;
    }
    if let Some(v) = std::env::var("LUMEN_AUTH_TOKEN").ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
        config.server.auth_token = Some(lumen::config::Secret(v));
    }
    if let Some(v) = std::env::var("LUMEN_MQTT_BROKER_PASSWORD").ok().filter(|v| !v.is_empty()) {
        config.mqtt.broker.password = v;
    }
    config.validate()?;
    Ok(config)
}
