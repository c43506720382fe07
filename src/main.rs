//! `lumen`: one binary for logs, metrics and device telemetry. This file only parses the command line,
//! loads the configuration and dispatches; see `ARCHITECTURE.md` for the map.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lumen::config::{Config, LogFormat};

#[derive(Parser)]
#[command(name = "lumen", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LUMEN_REVISION"), ")"), about = "Logs, metrics and device telemetry in one lean binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the store and query node: ingest, storage, and the query APIs.
    Server(ServerArgs),
    /// Run the node agent: tail pod logs, scrape Prometheus endpoints, ship both to a server.
    Agent(AgentArgs),
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the server's tokens.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Back up a running server: snapshot its data directory (while it keeps ingesting), copy the
    /// snapshot to DIR, delete the snapshot. Run it where the data directory is. Restore: start a server
    /// with --data-dir DIR.
    Backup {
        /// The server's base URL.
        #[arg(long, default_value = "http://127.0.0.1:9700")]
        server: String,
        /// Where to copy the snapshot; must not exist or be empty.
        #[arg(long)]
        to: PathBuf,
        /// A file holding a token with the admin scope (else LUMEN_AUTH_TOKEN, when set).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// A CA certificate (PEM) to trust for an https server.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Leave the snapshot in <data>/snapshots after copying it.
        #[arg(long)]
        keep_snapshot: bool,
    },
    /// Check rule files, or run their unit tests, as `promtool check rules` and `promtool test rules` do.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Ask a running server or agent whether it is healthy (for container health checks): exit 0 when
    /// the URL answers 200.
    Health {
        /// The health endpoint.
        #[arg(long, default_value = "http://127.0.0.1:9700/health")]
        url: String,
    },
}

#[derive(clap::Args)]
struct ServerArgs {
    /// TOML configuration file; flags and LUMEN_* variables override its values.
    #[arg(long, env = "LUMEN_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ./lumen-data].
    #[arg(long, env = "LUMEN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:9700].
    #[arg(long, env = "LUMEN_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// PEM certificate for HTTPS and gRPC over TLS (with --tls-key-file) [default: none].
    #[arg(long, env = "LUMEN_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "LUMEN_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// OTLP gRPC listen address [default: 127.0.0.1:4317].
    #[arg(long, env = "LUMEN_OTLP_GRPC_ADDR")]
    otlp_grpc_addr: Option<SocketAddr>,
    /// Embedded MQTT endpoint address, or "off" [default: 127.0.0.1:1883].
    #[arg(long, env = "LUMEN_MQTT_LISTEN")]
    mqtt_listen: Option<String>,
    /// The MQTT endpoint over TLS (needs --tls-cert-file), e.g. 0.0.0.0:8883, or "off" [default: off].
    #[arg(long, env = "LUMEN_MQTTS_LISTEN")]
    mqtts_listen: Option<String>,
    /// External MQTT broker to subscribe to, mqtt://HOST:PORT or mqtts://HOST:PORT [default: none].
    #[arg(long, env = "LUMEN_MQTT_BROKER")]
    mqtt_broker: Option<String>,
    /// Syslog listeners, comma-separated: udp://ADDR, tcp://ADDR, tls://ADDR (TLS needs --tls-cert-file),
    /// e.g. tcp://127.0.0.1:514,udp://127.0.0.1:514 [default: none].
    #[arg(long, env = "LUMEN_SYSLOG_LISTEN")]
    syslog_listen: Option<String>,
    /// MQTT topic template (repeatable), e.g. 'devices/{site}/{device}/telemetry'; each {name} becomes a label.
    #[arg(long = "mqtt-topic")]
    mqtt_topics: Vec<String>,
    /// Delete data older than this, whole days at a time [default: 30d].
    #[arg(long, env = "LUMEN_RETENTION")]
    retention: Option<humantime::Duration>,
    /// Log output format.
    #[arg(long, env = "LUMEN_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Token file (`lumen auth token` writes it); with it, every request needs a token [default: none].
    #[arg(long, env = "LUMEN_AUTH_FILE")]
    auth_file: Option<PathBuf>,
    /// Serve beyond loopback without authentication (only behind a proxy that authenticates).
    #[arg(long, env = "LUMEN_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// Validate the configuration (file, flags and environment) and exit without starting.
    #[arg(long)]
    check: bool,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// TOML configuration file (its [agent] section); flags and LUMEN_AGENT_* variables override it.
    #[arg(long, env = "LUMEN_CONFIG")]
    config: Option<PathBuf>,
    /// Base URL of the Lumen server [default: http://127.0.0.1:9700].
    #[arg(long, env = "LUMEN_AGENT_SERVER")]
    server: Option<String>,
    /// The kubelet's pod log directory [default: /var/log/pods].
    #[arg(long, env = "LUMEN_AGENT_PODS_DIR")]
    pods_dir: Option<PathBuf>,
    /// Docker's containers directory, to read its containers' json-file logs too, e.g.
    /// /var/lib/docker/containers [default: none].
    #[arg(long, env = "LUMEN_AGENT_DOCKER_DIR")]
    docker_dir: Option<PathBuf>,
    /// The agent's state: checkpoints and disk buffer [default: /var/lib/lumen-agent].
    #[arg(long, env = "LUMEN_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// This node's name [default: $NODE_NAME, else the host name].
    #[arg(long)]
    node_name: Option<String>,
    /// A Prometheus endpoint to scrape (repeatable), e.g. http://127.0.0.1:9100/metrics.
    #[arg(long = "scrape-target")]
    scrape_targets: Vec<String>,
    /// A systemd journal directory to read (repeatable; replaces the configured list)
    /// [default: /var/log/journal and /run/log/journal].
    #[arg(long = "journal-dir")]
    journal_dirs: Vec<PathBuf>,
    /// How often targets are scraped [default: 15s].
    #[arg(long)]
    scrape_interval: Option<humantime::Duration>,
    /// File holding the token sent to the server as `Authorization: Bearer` [default: none].
    #[arg(long, env = "LUMEN_AGENT_BEARER_TOKEN_FILE")]
    bearer_token_file: Option<PathBuf>,
    /// PEM CA certificates to trust for an https:// server, besides the system's [default: none].
    #[arg(long, env = "LUMEN_AGENT_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
    /// Listen address of the agent's /metrics, /health and /ready [default: 127.0.0.1:9701].
    #[arg(long, env = "LUMEN_AGENT_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Log output format.
    #[arg(long, env = "LUMEN_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Make a new token: print it once on standard output and add its SHA-256, tenants and scopes to FILE
    /// (created when missing), which `server.auth_file` names. A running server picks it up within seconds.
    Token {
        /// The token file.
        #[arg(long)]
        file: PathBuf,
        /// A tenant the token may use (repeatable, or comma-separated); "*" for every tenant.
        #[arg(long = "tenant", required = true)]
        tenants: Vec<String>,
        /// What it may do: read, write, admin (comma-separated).
        #[arg(long, required = true)]
        scopes: Vec<String>,
        /// A label for the token in the file and in logs [default: the tenants and scopes].
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Check rule files (Prometheus' format): exit 0 when every file loads, else print what is wrong, with
    /// file, line, group and rule.
    Check {
        /// The expressions are LogQL (Loki's rule files) instead of PromQL.
        #[arg(long)]
        logql: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run rule unit tests in promtool's format (rule_files, input_series, alert_rule_test,
    /// promql_expr_test): exit 0 when every test passes.
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and exit (status 0 when it is valid).
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the default configuration as TOML.
    Defaults,
}

fn server_config(args: ServerArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let s = &mut config.server;
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

fn agent_config(args: AgentArgs) -> anyhow::Result<(Config, String)> {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Server(args) if args.check => {
            let source = args.config.as_ref().map_or("the defaults".to_string(), |p| p.display().to_string());
            server_config(args)
                .and_then(|config| lumen::server::check(&config, true))
                .map(|()| eprintln!("{source}: ok"))
        }
        Command::Server(args) => server_config(args).and_then(|config| {
            lumen::telemetry::init(&config.log);
            // 8 MiB stacks (reserved, touched only as used) for the query engines' recursion within
            // query::depth::MAX_QUERY_DEPTH.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("lumen")
                .thread_stack_size(8 << 20)
                .build()?;
            runtime.block_on(async { lumen::start(config).await?.run_until_signal().await })
        }),
        Command::Agent(args) => agent_config(args).and_then(|(config, node)| {
            lumen::telemetry::init(&config.log);
            // The agent is small: two workers serve the shipper, scrapers and HTTP; the reader has its thread.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name("lumen-agent")
                .build()?;
            runtime.block_on(async {
                collector::start(config.agent, node).await?.run_until_signal().await?;
                anyhow::Ok(())
            })
        }),
        Command::Config(ConfigCommand::Check { config }) => Config::from_file(&config).and_then(|mut c| {
            // As `server --check` does: a token from the environment counts, so a config that listens
            // beyond loopback with LUMEN_AUTH_TOKEN set is valid.
            if let Some(v) =
                std::env::var("LUMEN_AUTH_TOKEN").ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
            {
                c.server.auth_token = Some(lumen::config::Secret(v));
            }
            lumen::server::check(&c, false)?;
            eprintln!("{}: ok", config.display());
            Ok(())
        }),
        Command::Health { url } => lumen::health::check(&url),
        Command::Rules(cmd) => {
            let mut out = String::new();
            let (ok, what) = match cmd {
                RulesCommand::Check { logql, files } => {
                    let lang = if logql { ruler::rulefmt::Lang::LogQL } else { ruler::rulefmt::Lang::PromQL };
                    (ruler::check_files(&files, lang, &mut out), "rule files did not check")
                }
                RulesCommand::Test { files } => (ruler::test_files(&files, &mut out), "rule tests failed"),
            };
            #[allow(clippy::print_stdout)] // the report is this command's output
            {
                print!("{out}");
            }
            if ok { Ok(()) } else { Err(anyhow::anyhow!("{what}")) }
        }
        Command::Backup { server, to, token_file, ca_file, keep_snapshot } => (|| {
            let token = match token_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                None => std::env::var("LUMEN_AUTH_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
            };
            let args = lumen::backup::BackupArgs { server, to: to.clone(), token, ca_file, keep_snapshot };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let copied = runtime.block_on(lumen::backup::run(&args))?;
            eprintln!(
                "backed up {} files ({} bytes) to {}; restore: lumen server --data-dir {}",
                copied.files,
                copied.bytes,
                to.display(),
                to.display()
            );
            Ok(())
        })(),
        Command::Auth(AuthCommand::Token { file, tenants, scopes, name }) => {
            let name = name.unwrap_or_else(|| format!("{} {}", tenants.join(","), scopes.join(",")));
            lumen::auth::add_token(&file, &name, &tenants, &scopes).map(|token| {
                #[allow(clippy::print_stdout)] // the token is this command's output, shown once
                {
                    println!("{token}");
                }
                eprintln!("added token {name:?} to {}; it is shown only this once", file.display());
            })
        }
        Command::Config(ConfigCommand::Defaults) => {
            #[allow(clippy::print_stdout)] // this command's output is the document itself
            {
                print!("{}", Config::defaults_toml());
            }
            Ok(())
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lumen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
