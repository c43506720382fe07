//! The log data model: tenants, stream labels, entries and the batches that travel from a decoder through
//! the write-ahead log into the head.

use std::fmt;
use std::hash::Hasher;

use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, Result};

/// The longest tenant id accepted, as in Loki.
pub const MAX_TENANT_LEN: usize = 150;

/// Most fields one log entry may carry (VictoriaLogs' default `-insert.maxFieldsPerLine`): the decoders
/// refuse more, and a part's field columns are never fewer.
pub const MAX_FIELDS_PER_ENTRY: usize = 1000;

/// The tenant used when a request names none.
pub const DEFAULT_TENANT: &str = "default";

/// A validated tenant id. It names a directory (`tenant=<id>`), so it is restricted to characters that are
/// safe in a path and in Loki's `X-Scope-OrgID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(String);

impl Tenant {
    /// Validates a tenant id.
    ///
    /// # Errors
    /// [`Error::InvalidTenant`] when it is empty, longer than [`MAX_TENANT_LEN`], `.` or `..`, or holds a
    /// character other than ASCII letters, digits and `!-_.*'()`.
    pub fn new(id: &str) -> Result<Tenant> {
        let reason = if id.is_empty() {
            Some("is empty")
        } else if id.len() > MAX_TENANT_LEN {
            Some("is longer than 150 bytes")
        } else if id == "." || id == ".." {
            Some("may not be . or ..")
        } else if !id.bytes().all(|c| c.is_ascii_alphanumeric() || b"!-_.*'()".contains(&c)) {
            Some("may only hold ASCII letters, digits and !-_.*'()")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidTenant { tenant: id.to_string(), reason }),
            None => Ok(Tenant(id.to_string())),
        }
    }

    pub fn default_tenant() -> Tenant {
        Tenant(DEFAULT_TENANT.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a stream: a 64-bit hash of its sorted labels, so that every process derives the same id
/// from the same labels without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// True when `name` is a valid Prometheus/Loki label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Turns an arbitrary field name (`kubernetes.pod.name`) into a valid label name (`kubernetes_pod_name`).
pub fn sanitize_label_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() || out.as_bytes()[0].is_ascii_digit() {
        out.insert(0, '_');
    }
    out
}

/// A stream's label set, sorted by name, names unique.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Builds a label set from pairs in any order. Empty values are dropped, as Prometheus and Loki
    /// treat an empty label as an absent one; of two pairs with the same name the last wins.
    pub fn from_pairs(mut pairs: Vec<(String, String)>) -> Labels {
        pairs.retain(|(_, v)| !v.is_empty());
        // A stable sort keeps the input order among equal names, so dedup can keep the last.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match out.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => out.push(pair),
            }
        }
        Labels(out)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok().map(|i| self.0[i].1.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The stream id of these labels; see [`StreamId`].
    pub fn stream_id(&self) -> StreamId {
        stream_id_of(self.iter())
    }
}

/// The stream id of sorted label pairs, without building a [`Labels`]; the decoders use it to find a
/// batch-local stream before allocating anything.
pub fn stream_id_of<'a>(sorted_pairs: impl Iterator<Item = (&'a str, &'a str)>) -> StreamId {
    let mut h = Xxh3::new();
    for (n, v) in sorted_pairs {
        h.write(n.as_bytes());
        h.write_u8(0xff);
        h.write(v.as_bytes());
        h.write_u8(0xfe);
    }
    StreamId(h.finish())
}

impl fmt::Display for Labels {
    /// Prometheus notation: `{app="api", pod="x"}` with Go-style escapes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (n, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}=\"")?;
            for c in v.chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

/// One log line of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Index into [`LogBatch::streams`].
    pub stream: u32,
    /// Nanoseconds since the epoch, UTC.
    pub time_ns: i64,
    pub line: String,
    /// Structured fields: any cardinality, not part of the stream identity.
    pub fields: Vec<(String, String)>,
}

/// A stream of a batch, with its id computed once.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStream {
    pub id: StreamId,
    pub labels: Labels,
}

/// What one request carries for one tenant: the distinct streams and the entries that point at them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogBatch {
    pub streams: Vec<BatchStream>,
    pub entries: Vec<LogEntry>,
}

impl LogBatch {
    /// Adds a stream if it is not in the batch yet and returns its index. Linear in the batch's streams,
    /// which are few; decoders with many streams keep their own map by id.
    pub fn stream_index(&mut self, labels: Labels) -> u32 {
        let id = labels.stream_id();
        if let Some(i) = self.streams.iter().position(|s| s.id == id) {
            return i as u32;
        }
        self.streams.push(BatchStream { id, labels });
        (self.streams.len() - 1) as u32
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of line text, the figure that limits and metrics count.
    pub fn line_bytes(&self) -> usize {
        self.entries.iter().map(|e| e.line.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn labels_are_sorted_deduplicated_and_hashed_by_content() {
        let a = Labels::from_pairs(pairs(&[("pod", "x"), ("app", "api"), ("app", "web"), ("empty", "")]));
        assert_eq!(a.to_string(), r#"{app="web", pod="x"}"#);
        let b = Labels::from_pairs(pairs(&[("app", "web"), ("pod", "x")]));
        assert_eq!(a.stream_id(), b.stream_id());
        let c = Labels::from_pairs(pairs(&[("app", "webp"), ("od", "x")]));
        assert_ne!(a.stream_id(), c.stream_id());
        assert_eq!(a.get("pod"), Some("x"));
        assert_eq!(a.get("nope"), None);
    }

    #[test]
    fn tenant_validation() {
        assert!(Tenant::new("team-a_1").is_ok());
        assert!(Tenant::new("").is_err());
        assert!(Tenant::new("..").is_err());
        assert!(Tenant::new("a/b").is_err());
        assert!(Tenant::new(&"x".repeat(151)).is_err());
    }

    #[test]
    fn label_names() {
        assert!(is_valid_label_name("_a1"));
        assert!(!is_valid_label_name("1a"));
        assert!(!is_valid_label_name("a.b"));
        assert_eq!(sanitize_label_name("kubernetes.pod-name"), "kubernetes_pod_name");
        assert_eq!(sanitize_label_name("1x"), "_1x");
    }
}
