//! The server's TLS: certificate and key from `server.tls_cert_file` / `tls_key_file`, an optional client
//! CA for mutual TLS, reloaded when the files change (cert-manager renews them in place). HTTP and OTLP
//! gRPC and `mqtts` share the files and the watcher; each listener takes the config of its own ALPN.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
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

/// What a listener speaks, and so which ALPN its handshakes offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (with upgrades): the HTTP port.
    Http1,
    /// HTTP/2: OTLP gRPC.
    Grpc,
    /// MQTT over TLS (`mqtts`): no ALPN required.
    Mqtt,
    /// Syslog over TLS (RFC 5425): no ALPN either, so the same configuration as MQTT's.
    Syslog,
}

struct Configs {
    http1: Arc<::tls::rustls::ServerConfig>,
    grpc: Arc<::tls::rustls::ServerConfig>,
    mqtt: Arc<::tls::rustls::ServerConfig>,
}

/// The server's TLS settings, swapped as a whole when the files change.
pub struct Tls {
    files: TlsFiles,
    configs: RwLock<Configs>,
}

fn build(files: &TlsFiles) -> Result<Configs, String> {
    let config = |alpn: &[&[u8]]| ::tls::server_config(&files.cert, &files.key, files.client_ca.as_deref(), alpn);
    Ok(Configs {
        http1: Arc::new(config(&[b"http/1.1"])?),
        grpc: Arc::new(config(&[b"h2"])?),
        mqtt: Arc::new(config(&[])?),
    })
}

impl Tls {
    /// Reads the files.
    ///
    /// # Errors
    /// A file that cannot be read or holds no certificate or key; the message names it and the key.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Tls>> {
        let configs = build(&files).map_err(anyhow::Error::msg)?;
        Ok(Arc::new(Tls { files, configs: RwLock::new(configs) }))
    }

    /// The current configuration of `protocol`.
    pub fn config(&self, protocol: Protocol) -> Arc<::tls::rustls::ServerConfig> {
        let configs = self.configs.read();
        match protocol {
            Protocol::Http1 => configs.http1.clone(),
            Protocol::Grpc => configs.grpc.clone(),
            Protocol::Mqtt | Protocol::Syslog => configs.mqtt.clone(),
        }
    }

    /// The acceptor for a new connection of `protocol`, with the current certificate.
    pub fn acceptor(&self, protocol: Protocol) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config(protocol))
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
            if self.stamp() == last {
                continue;
            }
            // cert-manager writes the key and the certificate one after the other: give it a moment.
            tokio::time::sleep(Duration::from_millis(500)).await;
            last = self.stamp();
            match build(&self.files) {
                Ok(configs) => {
                    *self.configs.write() = configs;
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Err(error) => tracing::error!(
                    cert = %self.files.cert.display(),
                    %error,
                    "TLS certificate not reloaded: keeping the one in use"
                ),
            }
        }
    }
}
