//! `lumen config check|defaults`.

use std::path::PathBuf;

use clap::Subcommand;
use lumen::config::Config;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file and exit (status 0 when it is valid).
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the default configuration as TOML.
    Defaults,
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check { config } => Config::from_file(&config).and_then(|mut c| {
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
        ConfigCommand::Defaults => {
            #[allow(clippy::print_stdout)] // this command's output is the document itself
            {
                print!("{}", Config::defaults_toml());
            }
            Ok(())
        }
    }
}
