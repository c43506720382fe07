//! `lumen auth token`.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum AuthCommand {
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

pub fn run(cmd: AuthCommand) -> anyhow::Result<()> {
    match cmd {
        AuthCommand::Token { file, tenants, scopes, name } => {
            let name = name.unwrap_or_else(|| format!("{} {}", tenants.join(","), scopes.join(",")));
            lumen::auth::add_token(&file, &name, &tenants, &scopes).map(|token| {
                #[allow(clippy::print_stdout)] // the token is this command's output, shown once
                {
                    println!("{token}");
                }
                eprintln!("added token {name:?} to {}; it is shown only this once", file.display());
            })
        }
    }
}
