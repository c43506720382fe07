//! `lumen`: one binary for logs, metrics and device telemetry. This file only parses the command line and
//! dispatches to `cmd/`, one module per subcommand; see `ARCHITECTURE.md` for the map.

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lumen", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LUMEN_REVISION"), ")"), about = "Logs, metrics and device telemetry in one lean binary")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the store and query node: ingest, storage, and the query APIs.
    Server(cmd::server::ServerArgs),
    /// Run the node agent: tail pod logs, scrape Prometheus endpoints, ship both to a server.
    Agent(cmd::agent::AgentArgs),
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Manage the server's tokens.
    #[command(subcommand)]
    Auth(cmd::auth::AuthCommand),
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
    Rules(cmd::rules::RulesCommand),
    /// Ask a running server or agent whether it is healthy (for container health checks): exit 0 when
    /// the URL answers 200.
    Health {
        /// The health endpoint.
        #[arg(long, default_value = "http://127.0.0.1:9700/health")]
        url: String,
    },
}

fn main() -> ExitCode {
    let res = match Cli::parse().command {
        Command::Server(args) => cmd::server::run(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Config(c) => cmd::config::run(c),
        Command::Auth(c) => cmd::auth::run(c),
        Command::Rules(c) => cmd::rules::run(c),
        Command::Health { url } => lumen::health::check(&url),
        Command::Backup { server, to, token_file, ca_file, keep_snapshot } => {
            cmd::backup::run(server, to, token_file, ca_file, keep_snapshot)
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
