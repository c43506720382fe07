//! TLS for `mqtts://` brokers: rustls with the ring provider, the system's roots or a CA file, and an
//! optional client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Builds the client configuration.
///
/// # Errors
/// A message naming the file that could not be read or parsed.
pub(crate) fn client_config(
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    if ca_file.as_os_str().is_empty() {
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err("no system CA certificates found for mqtts://; set mqtt.broker.ca_file".to_string());
        }
    } else {
        for cert in read_certs(ca_file, "mqtt.broker.ca_file")? {
            roots.add(cert).map_err(|e| format!("mqtt.broker.ca_file {}: {e}", ca_file.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots);
    let config = match (cert_file.as_os_str().is_empty(), key_file.as_os_str().is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let certs = read_certs(cert_file, "mqtt.broker.client_cert_file")?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| format!("mqtt.broker.client_key_file {}: {e}", key_file.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("the client certificate and key do not fit together: {e}"))?
        }
        _ => return Err("set both mqtt.broker.client_cert_file and mqtt.broker.client_key_file, or neither".into()),
    };
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key} {} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}
