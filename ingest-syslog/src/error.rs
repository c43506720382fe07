//! The syslog ingest's errors: a configuration that cannot work, or a listener that cannot bind.

use crate::config::Listen;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "syslog.listen: {value:?} is not udp://ADDR, tcp://ADDR or tls://ADDR with an IP address and port (e.g. udp://127.0.0.1:514)"
    )]
    InvalidListen { value: String },

    #[error("syslog.{key} = {value}: {reason}")]
    InvalidValue { key: &'static str, value: String, reason: &'static str },

    #[error("syslog.tenant: {reason}")]
    Tenant { reason: String },

    #[error("syslog.listen = {listen} needs server.tls_cert_file and server.tls_key_file (its certificate)")]
    TlsWithoutCertificate { listen: Listen },

    #[error(
        "syslog.listen = {listen} is beyond loopback and syslog carries no credentials (anyone who reaches the \
         port could write into tenant {tenant:?}): set server.allow_unauthenticated = true \
         (--allow-unauthenticated) if the network is trusted or a firewall limits who reaches it, listen on \
         127.0.0.1, or use tls:// with client certificates (server.tls_client_ca_file)"
    )]
    Unauthenticated { listen: Listen, tenant: String },

    #[error("cannot listen for syslog on {listen} (syslog.listen / --syslog-listen): {source}")]
    Bind { listen: Listen, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
