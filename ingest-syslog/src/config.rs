//! The `[syslog]` section of the configuration. Every key has a default; `listen` is empty, so syslog is
//! off until it is set (or `--syslog-listen` is given).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::Error;

/// `[syslog]`: syslog receivers (RFC 5424 and RFC 3164 over UDP, TCP and TLS) into the log store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyslogConfig {
    /// Where to listen, comma-separated: `udp://ADDR`, `tcp://ADDR`, `tls://ADDR` (TCP with TLS on the
    /// server's certificate, `server.tls_cert_file`), e.g. "udp://0.0.0.0:514,tcp://0.0.0.0:514". Empty:
    /// off. Syslog carries no credentials: an address beyond loopback needs
    /// `server.allow_unauthenticated = true` (or, for `tls://`, client certificates:
    /// `server.tls_client_ca_file`). (--syslog-listen)
    pub listen: String,
    /// Tenant the messages are stored under.
    pub tenant: String,
    /// Longest message (a TCP frame without its framing, a UDP datagram); longer ones are dropped and
    /// counted, and a connection's buffer never holds more than this plus one read.
    pub max_message_bytes: ByteSize,
    /// Most messages appended to the store at once (one WAL commit); a connection stops reading while its
    /// batch is appended.
    pub batch_max_lines: usize,
    /// Longest a received message waits for its batch to fill before the batch is appended anyway.
    #[serde(with = "store::config::duration")]
    pub batch_max_delay: Duration,
    /// TCP and TLS connections open at once (all listeners together); further ones are closed at once.
    pub max_connections: usize,
    /// A TCP or TLS connection that sends nothing for this long is closed (senders reconnect).
    #[serde(with = "store::config::duration")]
    pub idle_timeout: Duration,
    /// Receive buffer of each UDP socket, asked of the kernel (which caps it at `net.core.rmem_max`):
    /// datagrams that arrive faster than they are stored wait there, and are lost once it is full. "0 B":
    /// the system's default.
    pub udp_receive_buffer: ByteSize,
    /// The UTC offset of the senders' clocks, "+HH:MM" or "-HH:MM": RFC 3164 timestamps (and ISO ones
    /// without a zone) carry none and are read at it.
    pub bsd_utc_offset: String,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        SyslogConfig {
            listen: String::new(),
            tenant: "default".to_string(),
            max_message_bytes: ByteSize::kib(64),
            batch_max_lines: 1000,
            batch_max_delay: Duration::from_millis(200),
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            udp_receive_buffer: ByteSize::mib(8),
            bsd_utc_offset: "+00:00".to_string(),
        }
    }
}

/// How a listener receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One listener: its transport and address (the bound one, once started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport, self.addr)
    }
}

/// What the server's own settings say that syslog depends on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSide {
    /// `server.tls_cert_file` and `tls_key_file` are set.
    pub tls: bool,
    /// `server.tls_client_ca_file` is set: TLS clients must present a certificate.
    pub client_ca: bool,
    /// `server.allow_unauthenticated`.
    pub allow_unauthenticated: bool,
}

impl SyslogConfig {
    /// The listeners of `listen`.
    ///
    /// # Errors
    /// An entry that is not `udp://`, `tcp://` or `tls://` with an IP address and port.
    pub fn listeners(&self) -> Result<Vec<Listen>, Error> {
        let mut out = Vec::new();
        for item in self.listen.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || Error::InvalidListen { value: item.to_string() };
            let (scheme, addr) = item.split_once("://").ok_or_else(bad)?;
            let transport = match scheme.to_ascii_lowercase().as_str() {
                "udp" => Transport::Udp,
                "tcp" => Transport::Tcp,
                "tls" => Transport::Tls,
                _ => return Err(bad()),
            };
            let addr: SocketAddr = addr.trim_end_matches('/').parse().map_err(|_| bad())?;
            out.push(Listen { transport, addr });
        }
        Ok(out)
    }

    /// The offset of `bsd_utc_offset` in seconds.
    ///
    /// # Errors
    /// A value that is not `+HH:MM` / `-HH:MM` (or `Z`) within ±18 hours.
    pub fn bsd_offset_secs(&self) -> Result<i64, Error> {
        let s = self.bsd_utc_offset.trim();
        let bad = || Error::InvalidValue {
            key: "bsd_utc_offset",
            value: self.bsd_utc_offset.clone(),
            reason: "expected an offset like \"+00:00\", \"+02:00\" or \"-05:00\"",
        };
        if s.eq_ignore_ascii_case("z") {
            return Ok(0);
        }
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'+') => (1, &s[1..]),
            Some(b'-') => (-1, &s[1..]),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(bad)?;
        let digits =
            |t: &str| (t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse::<i64>().ok()).flatten();
        let (Some(h), Some(m)) = (digits(h), digits(m)) else { return Err(bad()) };
        if h > 18 || m > 59 {
            return Err(bad());
        }
        Ok(sign * (h * 3600 + m * 60))
    }

    /// Checks the values alone, and against the server's settings: `tls://` needs the server's
    /// certificate, and an address beyond loopback needs `server.allow_unauthenticated` (a `tls://` one
    /// with client certificates required is authenticated).
    ///
    /// # Errors
    /// A message naming the key and what to do.
    pub fn check(&self, server: ServerSide) -> Result<Vec<Listen>, Error> {
        let listeners = self.listeners()?;
        store::model::Tenant::new(&self.tenant).map_err(|e| Error::Tenant { reason: e.to_string() })?;
        self.bsd_offset_secs()?;
        let invalid = |key, value: String, reason| Err(Error::InvalidValue { key, value, reason });
        if self.max_message_bytes.as_u64() < 64 || self.max_message_bytes > ByteSize::mib(16) {
            return invalid(
                "max_message_bytes",
                self.max_message_bytes.display().iec().to_string(),
                "must be between 64 B and 16 MiB",
            );
        }
        if self.batch_max_lines == 0 {
            return invalid("batch_max_lines", "0".into(), "must be at least 1");
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "0".into(), "must be at least 1");
        }
        if self.idle_timeout < Duration::from_secs(1) {
            return invalid("idle_timeout", format!("{:?}", self.idle_timeout), "must be at least 1s");
        }
        for l in &listeners {
            if l.transport == Transport::Tls && !server.tls {
                return Err(Error::TlsWithoutCertificate { listen: *l });
            }
            let authenticated = l.transport == Transport::Tls && server.client_ca;
            if !l.addr.ip().is_loopback() && !server.allow_unauthenticated && !authenticated {
                return Err(Error::Unauthenticated { listen: *l, tenant: self.tenant.clone() });
            }
        }
        Ok(listeners)
    }
}

#[cfg(test)]
mod tests;
