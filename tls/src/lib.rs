//! rustls with the ring provider, as every TLS connection of Lumen uses it: PEM certificates and keys read
//! with messages that name the config key, the system's roots, and client and server configurations.
//! Callers decide which roots to trust and which files to read; this crate only builds.

use std::path::Path;
use std::sync::Arc;

pub use rustls;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider of every config built here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file; `key` is the config key that named it, for the message.
///
/// # Errors
/// An unreadable file, one that is not PEM, or one without a certificate.
pub fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {} ({key}): {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} ({key}) is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} ({key}) holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
///
/// # Errors
/// An unreadable file or one without a key.
pub fn read_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a PEM private key from {} ({key}): {e}", path.display()))
}

/// The system's CA certificates (none in a container without a CA bundle).
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
}

/// Adds the CA certificates of a PEM file to `roots`.
///
/// # Errors
/// See [`read_certs`], or a certificate that is no usable CA.
pub fn add_roots(roots: &mut RootCertStore, path: &Path, key: &str) -> Result<(), String> {
    for cert in read_certs(path, key)? {
        roots.add(cert).map_err(|e| format!("{} ({key}) holds an unusable CA certificate: {e}", path.display()))?;
    }
    Ok(())
}

/// A client certificate and its key, with the config keys that named them.
pub struct ClientCert<'a> {
    pub cert: &'a Path,
    pub cert_key: &'a str,
    pub key: &'a Path,
    pub key_key: &'a str,
}

/// A client configuration trusting `roots`, presenting `client` when given.
///
/// # Errors
/// An unreadable client certificate or key, or a key that does not fit the certificate.
pub fn client_config(roots: RootCertStore, client: Option<ClientCert<'_>>) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("no TLS protocol version is available: {e}"))?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some(c) => {
            let certs = read_certs(c.cert, c.cert_key)?;
            let key = read_key(c.key, c.key_key)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                format!(
                    "the key {} ({}) does not fit the certificate {} ({}): {e}",
                    c.key.display(),
                    c.key_key,
                    c.cert.display(),
                    c.cert_key
                )
            })
        }
    }
}

/// A server configuration for `cert`/`key`, requiring client certificates signed by `client_ca` when given,
/// and offering `alpn`.
///
/// # Errors
/// An unreadable file, or a key that does not fit the certificate; the message names the config key.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, String> {
    let certs = read_certs(cert, "server.tls_cert_file")?;
    let private = read_key(key, "server.tls_key_file")?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("no TLS protocol version is available: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            add_roots(&mut roots, ca, "server.tls_client_ca_file")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("cannot verify clients against {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, private).map_err(|e| {
        format!(
            "the key in {} (server.tls_key_file) does not fit the certificate in {} (server.tls_cert_file): {e}",
            key.display(),
            cert.display()
        )
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
