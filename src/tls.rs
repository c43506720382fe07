//! The server's TLS (rustls): certificate and key from `server.tls_cert_file` / `tls_key_file`, an optional
//! client CA for mutual TLS, reloaded when the files change (cert-manager renews them in place). HTTP and
//! OTLP gRPC share the files; each listener has its own ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use parking_lot::RwLock;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

/// How often the certificate files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// The files TLS is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// The TLS settings of one listener, swapped when the files change.
pub struct Tls {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    config: RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    /// Reads the files. `alpn` is what the listener speaks (`http/1.1`, or `h2` for gRPC).
    ///
    /// # Errors
    /// A file that cannot be read or holds no certificate or key; the message names it and the key.
    pub fn load(files: TlsFiles, alpn: &[&[u8]]) -> anyhow::Result<Arc<Tls>> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let config = build(&files, &alpn)?;
        Ok(Arc::new(Tls { files, alpn, config: RwLock::new(Arc::new(config)) }))
    }

    /// The acceptor for a new connection, with the current certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.read().clone())
    }

    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        let mut paths = vec![&self.files.cert, &self.files.key];
        paths.extend(self.files.client_ca.as_ref());
        paths.iter().map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
    }

    /// Reloads the certificate when its files change, until `shutdown`. New connections get the new
    /// certificate; open ones keep theirs. A renewal that does not load is an ERROR and the old one stays.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut last = self.stamp();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            let now = self.stamp();
            if now == last {
                continue;
            }
            // cert-manager writes the key and the certificate one after the other: give it a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            last = self.stamp();
            match build(&self.files, &self.alpn) {
                Ok(config) => {
                    *self.config.write() = Arc::new(config);
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => tracing::error!(
                    cert = %self.files.cert.display(),
                    error = format!("{e:#}"),
                    "TLS certificate not reloaded: keeping the one in use"
                ),
            }
        }
    }
}

fn read_certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {} ({key})", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} ({key}) is not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{} ({key}) holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn build(files: &TlsFiles, alpn: &[Vec<u8>]) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert, "server.tls_cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("cannot read a PEM private key from {} (server.tls_key_file)", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version is available")?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca, "server.tls_client_ca_file")? {
                roots.add(cert).with_context(|| format!("{} holds an unusable CA certificate", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("cannot verify clients against {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "the key in {} does not match the certificate in {} (or is of an unsupported kind)",
            files.key.display(),
            files.cert.display()
        )
    })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}
