//! `lumen agent`: its flags, and the configuration they make with the file.

use std::net::SocketAddr;
use std::path::PathBuf;

use lumen::config::{Config, LogFormat};

#[derive(clap::Args)]
pub struct AgentArgs {
    /// TOML configuration file (its [agent] section); flags and LUMEN_AGENT_* variables override it.
    #[arg(long, env = "LUMEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Base URL of the Lumen server [default: http://127.0.0.1:9700].
    #[arg(long, env = "LUMEN_AGENT_SERVER")]
    pub server: Option<String>,
    /// The kubelet's pod log directory [default: /var/log/pods].
    #[arg(long, env = "LUMEN_AGENT_PODS_DIR")]
    pub pods_dir: Option<PathBuf>,
    /// Docker's containers directory, to read its containers' json-file logs too, e.g.
    /// /var/lib/docker/containers [default: none].
    #[arg(long, env = "LUMEN_AGENT_DOCKER_DIR")]
    pub docker_dir: Option<PathBuf>,
    /// The agent's state: checkpoints and disk buffer [default: /var/lib/lumen-agent].
    #[arg(long, env = "LUMEN_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// This node's name [default: $NODE_NAME, else the host name].
    #[arg(long)]
    pub node_name: Option<String>,
    /// A Prometheus endpoint to scrape (repeatable), e.g. http://127.0.0.1:9100/metrics.
    #[arg(long = "scrape-target")]
    pub scrape_targets: Vec<String>,
    /// A systemd journal directory to read (repeatable; replaces the configured list)
    /// [default: /var/log/journal and /run/log/journal].
    #[arg(long = "journal-dir")]
    pub journal_dirs: Vec<PathBuf>,
    /// How often targets are scraped [default: 15s].
    #[arg(long)]
    pub scrape_interval: Option<humantime::Duration>,
    /// File holding the token sent to the server as `Authorization: Bearer` [default: none].
    #[arg(long, env = "LUMEN_AGENT_BEARER_TOKEN_FILE")]
    pub bearer_token_file: Option<PathBuf>,
    /// PEM CA certificates to trust for an https:// server, besides the system's [default: none].
    #[arg(long, env = "LUMEN_AGENT_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Listen address of the agent's /metrics, /health and /ready [default: 127.0.0.1:9701].
    #[arg(long, env = "LUMEN_AGENT_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Log output format.
    #[arg(long, env = "LUMEN_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// `lumen agent`: runs until SIGINT or SIGTERM.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let (config, node) = config(args)?;
    lumen::telemetry::init(&config.log);
    // The agent is small: two workers serve the shipper, scrapers and HTTP; the readers have their threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("lumen-agent")
        .build()?;
    runtime.block_on(async {
        collector::start(config.agent, node).await?.run_until_signal().await?;
        anyhow::Ok(())
    })
}

fn config(args: AgentArgs) -> anyhow::Result<(Config, String)> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let a = &mut config.agent;
    if let Some(v) = args.server {
        a.server = v;
    }
    if let Some(v) = args.pods_dir {
        a.pods_dir = v;
    }
    if let Some(v) = args.docker_dir {
        a.docker_dir = v;
    }
    if let Some(v) = args.data_dir {
        a.data_dir = v;
    }
    if let Some(v) = args.node_name {
        a.node_name = v;
    }
    if !args.scrape_targets.is_empty() {
        a.scrape_targets = args.scrape_targets;
    }
    if !args.journal_dirs.is_empty() {
        a.journal_dirs = args.journal_dirs;
    }
    if let Some(v) = args.scrape_interval {
        a.scrape_interval = v.into();
    }
    if let Some(v) = args.http_addr {
        a.http_addr = v;
    }
    if let Some(v) = args.bearer_token_file {
        a.bearer_token_file = v;
    }
    if let Some(v) = args.tls_ca_file {
        a.tls_ca_file = v;
    }
    if let Some(v) = args.log_format {
        config.log.format = v;
    }
    config.agent.validate()?;
    let node = lumen::config::node_name(&config.agent.node_name);
    Ok((config, node))
}
