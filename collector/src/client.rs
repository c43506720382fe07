//! The agent's HTTP clients: TLS (rustls with the system's roots, plus `agent.tls_ca_file` and an optional
//! client certificate) and the bearer token of `agent.bearer_token_file`.
//!
//! Every client is built with its TLS configuration given explicitly, so no process-wide rustls provider
//! is needed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

/// The TLS files of the agent's connections to the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Extra CA certificates (PEM) to trust besides the system's.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for a server that asks for one (mutual TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// A rustls client configuration: the system's roots (when it has any) plus `files.ca`.
///
/// # Errors
/// A file that cannot be read or holds no usable certificate or key; the message names it.
pub fn tls_config(files: &TlsFiles) -> Result<tls::rustls::ClientConfig, String> {
    // A container without CA bundle simply has no system roots; the CA file may be all it needs.
    let mut roots = tls::system_roots();
    if let Some(ca) = &files.ca {
        tls::add_roots(&mut roots, ca, "agent.tls_ca_file")?;
    }
    let client = files.client_cert.as_ref().map(|(cert, key)| tls::ClientCert {
        cert,
        cert_key: "agent.tls_client_cert_file",
        key,
        key_key: "agent.tls_client_key_file",
    });
    tls::client_config(roots, client)
}

/// A reqwest client builder with TLS set (so that building never needs a process-wide provider).
///
/// # Errors
/// See [`tls_config`].
pub fn builder(files: &TlsFiles) -> Result<reqwest::ClientBuilder, String> {
    Ok(reqwest::Client::builder().tls_backend_preconfigured(tls_config(files)?))
}

/// The bearer token of `agent.bearer_token_file`, read at start and again whenever the server answers 401
/// (a rotated Secret). Its `Debug` form never shows it.
#[derive(Clone, Default)]
pub struct BearerToken {
    file: Option<PathBuf>,
    value: Arc<RwLock<Option<String>>>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerToken({:?})", self.file)
    }
}

impl BearerToken {
    /// No token.
    pub fn none() -> BearerToken {
        BearerToken::default()
    }

    /// The token in `file` (its first line).
    ///
    /// # Errors
    /// An unreadable or empty file, named in the message (the token is not).
    pub fn from_file(file: &Path) -> Result<BearerToken, String> {
        let token = BearerToken { file: Some(file.to_path_buf()), value: Arc::default() };
        token.reload()?;
        Ok(token)
    }

    /// Reads the file again.
    ///
    /// # Errors
    /// See [`BearerToken::from_file`]; the token in force stays.
    pub fn reload(&self) -> Result<(), String> {
        let Some(file) = &self.file else { return Ok(()) };
        let text = std::fs::read_to_string(file).map_err(|e| {
            format!("cannot read the bearer token file {} (agent.bearer_token_file): {e}", file.display())
        })?;
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            return Err(format!("the bearer token file {} (agent.bearer_token_file) is empty", file.display()));
        }
        *self.value.write() = Some(token);
        Ok(())
    }

    /// The `Authorization` header value, when there is a token.
    pub fn header(&self) -> Option<String> {
        self.value.read().as_ref().map(|t| format!("Bearer {t}"))
    }
}

/// `scheme://host:port` of a URL (the port made explicit), to tell whether a URL is the server's.
pub fn origin(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    Some(format!("{}://{}:{}", u.scheme(), u.host_str()?, u.port_or_known_default()?))
}
