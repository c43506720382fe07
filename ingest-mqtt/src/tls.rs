//! TLS for `mqtts://` brokers: rustls with the ring provider, the system's roots or a CA file, and an
//! optional client certificate.

use std::path::Path;
use std::sync::Arc;

use tls::rustls;

/// Builds the client configuration.
///
/// # Errors
/// A message naming the file that could not be read or parsed.
pub(crate) fn client_config(
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = if ca_file.as_os_str().is_empty() {
        let roots = tls::system_roots();
        if roots.is_empty() {
            return Err("no system CA certificates found for mqtts://; set mqtt.broker.ca_file".to_string());
        }
        roots
    } else {
        let mut roots = rustls::RootCertStore::empty();
        tls::add_roots(&mut roots, ca_file, "mqtt.broker.ca_file")?;
        roots
    };
    let client = match (cert_file.as_os_str().is_empty(), key_file.as_os_str().is_empty()) {
        (true, true) => None,
        (false, false) => Some(tls::ClientCert {
            cert: cert_file,
            cert_key: "mqtt.broker.client_cert_file",
            key: key_file,
            key_key: "mqtt.broker.client_key_file",
        }),
        _ => return Err("set both mqtt.broker.client_cert_file and mqtt.broker.client_key_file, or neither".into()),
    };
    tls::client_config(roots, client).map(Arc::new)
}
