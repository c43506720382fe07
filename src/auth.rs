//! The server's tokens: read from `server.auth_file` and `LUMEN_AUTH_TOKEN`, reloaded when the file changes,
//! and `lumen auth token`, which adds one to the file. The rules themselves live in the `auth` crate.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use auth::{Auth, Grant, Scope, TokenSet};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// How often the token file is checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The accepted tokens of `config`: [`Auth::disabled`] when neither a token file nor `LUMEN_AUTH_TOKEN` is set.
///
/// # Errors
/// A token file that cannot be read or parsed (the message names it and the bad token).
pub fn load(config: &Config) -> anyhow::Result<Auth> {
    if !config.auth_enabled() {
        return Ok(Auth::disabled());
    }
    Ok(Auth::new(read_tokens(config)?))
}

fn read_tokens(config: &Config) -> anyhow::Result<TokenSet> {
    let s = &config.server;
    let mut tokens = if s.auth_file.as_os_str().is_empty() {
        TokenSet::default()
    } else {
        let text = std::fs::read_to_string(&s.auth_file).with_context(|| {
            format!(
                "cannot read the token file {} (server.auth_file); `lumen auth token --file {} ...` creates it",
                s.auth_file.display(),
                s.auth_file.display()
            )
        })?;
        TokenSet::parse(&text)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("invalid token file {} (server.auth_file)", s.auth_file.display()))?
    };
    if let Some(token) = &s.auth_token {
        tokens.insert_plain(&token.0, Grant::everything("LUMEN_AUTH_TOKEN"));
    }
    Ok(tokens)
}

/// What identifies a version of the file without reading it.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reloads the token file whenever it changes (a Secret remounted, an edit, `lumen auth token`), until
/// `shutdown`. A file that no longer parses is logged as an ERROR and the tokens in force stay.
pub async fn watch(auth: Auth, config: Config, shutdown: CancellationToken) {
    let path: PathBuf = config.server.auth_file.clone();
    if path.as_os_str().is_empty() || !auth.is_enabled() {
        return;
    }
    let mut last = stamp(&path);
    let mut content = std::fs::read(&path).ok();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        // A rewrite within the same second and of the same length has the same stamp; the content decides.
        let text = std::fs::read(&path).ok();
        if text == content {
            continue;
        }
        content = text;
        match tokio::task::block_in_place(|| read_tokens(&config)) {
            Ok(tokens) => {
                tracing::info!(file = %path.display(), tokens = tokens.len(), "token file reloaded");
                auth.replace(tokens);
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = format!("{e:#}"), "token file not reloaded: keeping the tokens in force");
            }
        }
    }
}

/// `lumen auth token`: makes a new token allowed `tenants` and `scopes`, adds its hash to `file` (created
/// when missing, replaced atomically so a server reloading it never reads half a file), and returns the
/// token, which exists nowhere else.
///
/// # Errors
/// Bad tenants or scopes, an existing file that does not parse, or a write that fails.
pub fn add_token(file: &Path, name: &str, tenants: &[String], scopes: &[String]) -> anyhow::Result<String> {
    let scopes = scopes
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.trim().is_empty())
        .map(Scope::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let tenants: Vec<String> = tenants.iter().flat_map(|t| t.split(',')).map(|t| t.trim().to_string()).collect();
    let grant_tenants = auth::parse_tenants(&tenants).map_err(anyhow::Error::msg)?;
    Grant::new(name, grant_tenants, &scopes).map_err(anyhow::Error::msg)?;
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::from(
            "# Lumen tokens, made by `lumen auth token`: each token's SHA-256, the tenants it may use (\"*\" for\n\
             # every tenant) and its scopes (read, write, admin). The tokens themselves are not in this file.\n",
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    TokenSet::parse(&existing)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("{} is not a valid token file; fix it before adding to it", file.display()))?;
    let token = auth::new_token().map_err(anyhow::Error::msg)?;
    let created = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let mut text = existing;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&auth::entry_toml(name, &auth::hash_hex(&token), &tenants, &scopes, &created));
    if TokenSet::parse(&text).is_err() {
        bail!("the new token file would not parse; nothing was written");
    }
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", file.file_name().and_then(|n| n.to_str()).unwrap_or("tokens")));
    std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot replace {}", file.display()))?;
    Ok(token)
}
