//! `lumen`: one binary for logs, metrics and device telemetry. This file only parses the command line,
//! loads the configuration and dispatches; see `ARCHITECTURE.md` for the map.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lumen::config::{Config, LogFormat};

#[derive(Parser)]
#[command(name = "lumen", version, about = "Logs, metrics and device telemetry in one lean binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the store and query node: ingest, storage, and the query APIs.
    Server(ServerArgs),
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
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
    /// OTLP gRPC listen address [default: 127.0.0.1:4317].
    #[arg(long, env = "LUMEN_OTLP_GRPC_ADDR")]
    otlp_grpc_addr: Option<SocketAddr>,
    /// Embedded MQTT endpoint address, or "off" [default: 127.0.0.1:1883].
    #[arg(long, env = "LUMEN_MQTT_LISTEN")]
    mqtt_listen: Option<String>,
    /// Delete data older than this, whole days at a time [default: 30d].
    #[arg(long, env = "LUMEN_RETENTION")]
    retention: Option<humantime::Duration>,
    /// Log output format.
    #[arg(long, env = "LUMEN_LOG_FORMAT")]
    log_format: Option<LogFormat>,
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
    if let Some(v) = args.mqtt_listen {
        s.mqtt_listen = v;
    }
    if let Some(v) = args.retention {
        s.retention = v.into();
    }
    if let Some(v) = args.log_format {
        config.log.format = v;
    }
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Server(args) => server_config(args).and_then(|config| {
            lumen::telemetry::init(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("lumen").build()?;
            runtime.block_on(async { lumen::start(config).await?.run_until_signal().await })
        }),
        Command::Config(ConfigCommand::Check { config }) => Config::from_file(&config).and_then(|c| {
            c.validate()?;
            eprintln!("{}: ok", config.display());
            Ok(())
        }),
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
