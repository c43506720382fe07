//! `lumen health`: a container health check that needs no curl in the image. It sends one HTTP/1.0 GET
//! and succeeds on a 200.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};

/// Checks `url` (http://HOST:PORT/PATH).
///
/// # Errors
/// When the URL is not plain http, the endpoint does not answer within 5 s, or answers anything but 200.
pub fn check(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").with_context(|| format!("{url:?}: only http:// URLs are checked"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("{url}: cannot resolve {authority:?} (write HOST:PORT)"))?
        .next()
        .with_context(|| format!("{url}: {authority:?} resolves to no address"))?;
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("{url}: cannot connect"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).with_context(|| format!("{url}: no answer"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("{url} answered {:?}", line.lines().next().unwrap_or(""));
    }
    Ok(())
}
