//! The node agent behind `lumen agent`: it tails Kubernetes pod logs (CRI and Docker json-file, partial
//! records merged, rotation by rename with gzipped rotations, copytruncate), scrapes Prometheus endpoints
//! (static targets, this node's annotated pods, the node's own /proc metrics) and ships both to a Lumen
//! server (or to a Loki and a remote-write receiver) through a bounded disk buffer, at least once.
//!
//! The path of a log line: [`tail`] reads it, [`format`] decodes the runtime's framing, [`transform`]
//! joins, filters and parses it, [`tail`] cuts batches into the [`buffer`] with the file positions they
//! reach, and [`ship`] sends each batch and, on the server's acknowledgement, moves the [`checkpoint`]s.
//! [`journal`] reads the systemd journal's files natively on a second thread and cuts its entries into
//! the same buffer, with positions of the same kind.
//! [`agent`] wires it all and serves the agent's own `/metrics` ([`metrics`]), `/health` and `/ready`.
//!
//! The crate uses `store`'s data model and wire formats (never its engine) and `query`'s LogQL line
//! parsers, so a field parsed by the agent is the one `| json` or `| logfmt` would give at query time.

pub mod agent;
pub mod buffer;
pub mod checkpoint;
pub mod client;
pub mod config;
pub mod docker;
pub mod format;
pub mod journal;
pub mod kube;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod scrape;
pub mod ship;
pub mod tail;
pub mod transform;

pub use agent::{AgentError, Running, start};
pub use config::AgentConfig;

/// `text` with the user info of every URL in it (`scheme://user:password@host`) replaced by `***`, so
/// that a credential given in a URL never reaches a log line or an error message.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | ')' | '"' | '\'' | '>') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***@");
                out.push_str(&authority[at + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod redact_tests {
    use super::redact_urls;

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(redact_urls("http://lumen:9700"), "http://lumen:9700");
        assert_eq!(redact_urls("https://ann:s3cret@lumen:9700/loki"), "https://***@lumen:9700/loki");
        assert_eq!(
            redact_urls("error sending request for url (http://u:p%40ss@h/x): connection refused"),
            "error sending request for url (http://***@h/x): connection refused"
        );
        assert_eq!(redact_urls("a http://x:y@h and https://z@k?q=1"), "a http://***@h and https://***@k?q=1");
        assert_eq!(redact_urls("no url here"), "no url here");
    }
}
