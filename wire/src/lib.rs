//! Wire formats of log ingest, as pure decoders from request bytes to a [`LogBatch`]: Loki push (JSON and
//! protobuf with snappy), JSON lines and Elasticsearch bulk (with VictoriaLogs' `_time_field`,
//! `_msg_field` and `_stream_fields` parameters), and the body encodings they arrive in.
//!
//! Decoders know nothing of HTTP: the caller passes the content type, encoding and parameters, and maps
//! [`WireError`] to a status code. A decoder either fails the whole request (malformed input: nothing of
//! it is stored) or returns a batch plus per-entry [`Rejection`]s (an over-long line is dropped alone and
//! counted).
//!
//! Invalid UTF-8 is replaced, not rejected: each invalid sequence becomes U+FFFD and the entry is kept, so
//! a binary byte in one line never costs the rest of a batch. [`Decoded::invalid_utf8`] says when it
//! happened.

pub mod body;
pub mod esbulk;
pub mod jsonline;
pub mod loki;
pub mod prom;

mod flatten;

use store::model::LogBatch;

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted line in bytes; longer lines are rejected one by one.
    pub max_line_bytes: usize,
    /// Most labels a stream may have.
    pub max_labels: usize,
    /// Largest body, before and after decompression.
    pub max_body_bytes: usize,
    /// Entries older than this (ns) are rejected: retention would delete them at once.
    pub oldest_ns: i64,
    /// Entries newer than this (ns) are rejected: a clock that far ahead is wrong.
    pub newest_ns: i64,
    /// Most fields (structured metadata, JSON keys) one entry may carry; more rejects the entry.
    pub max_fields: usize,
    /// Most bytes an entry's field names and values may add up to; more rejects the entry.
    pub max_field_bytes: usize,
}

/// The server's per-tenant write limits (`[limits]`) for ingest paths that are not HTTP requests (MQTT,
/// syslog): asked with the tenant and the bytes of a batch before it is stored.
pub type Admit = std::sync::Arc<dyn Fn(&str, usize) -> Result<(), AdmitRefused> + Send + Sync>;

/// Why an [`Admit`] refused a batch.
#[derive(Debug, Clone)]
pub struct AdmitRefused {
    /// Over a rate: ask again after this long (the caller waits: a connection-based sender is slowed down,
    /// not refused). `None`: refused for good (a tenant past `limits.max_tenants`).
    pub retry_after: Option<std::time::Duration>,
    /// What was refused and which limit, for the log.
    pub message: String,
}

/// Waits until `admit` takes `bytes` for `tenant`: while the tenant is over its rate, `on_wait` is called
/// and the wait it was told (at most 5 s at a time) is slept, then it asks again.
///
/// # Errors
/// The refusal's message, when the tenant is refused for good.
pub async fn admitted(admit: &Admit, tenant: &str, bytes: usize, mut on_wait: impl FnMut(&str)) -> Result<(), String> {
    loop {
        match admit(tenant, bytes) {
            Ok(()) => return Ok(()),
            Err(AdmitRefused { retry_after: Some(wait), message }) => {
                on_wait(&message);
                tokio::time::sleep(wait.min(std::time::Duration::from_secs(5))).await;
            }
            Err(AdmitRefused { retry_after: None, message }) => return Err(message),
        }
    }
}

pub use store::model::MAX_FIELDS_PER_ENTRY;
/// Most bytes of field names and values one log entry may carry (the default line limit).
pub const MAX_FIELD_BYTES_PER_ENTRY: usize = 256 * 1024;

impl Limits {
    /// The rejection of an entry whose fields are too many, or whose field names and values together are
    /// longer than `max_field_bytes` (fields must not be a way around the line limit).
    pub fn check_fields<K: AsRef<str>, V: AsRef<str>>(&self, fields: &[(K, V)]) -> Option<RejectReason> {
        if fields.len() > self.max_fields {
            return Some(RejectReason::TooManyFields { count: fields.len(), limit: self.max_fields });
        }
        let bytes: usize = fields.iter().map(|(k, v)| k.as_ref().len() + v.as_ref().len()).sum();
        if bytes > self.max_field_bytes {
            return Some(RejectReason::FieldsTooLong { bytes, limit: self.max_field_bytes });
        }
        None
    }

    /// The rejection of an entry at `time_ns`, if its time is outside the accepted window.
    pub(crate) fn check_time(&self, time_ns: i64) -> Option<RejectReason> {
        if time_ns < self.oldest_ns {
            Some(RejectReason::TooOld { time: store::time::format_rfc3339_ns(time_ns) })
        } else if time_ns > self.newest_ns {
            Some(RejectReason::TooNew { time: store::time::format_rfc3339_ns(time_ns) })
        } else {
            None
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: 256 * 1024,
            max_labels: 15,
            max_body_bytes: 64 * 1024 * 1024,
            oldest_ns: i64::MIN,
            newest_ns: i64::MAX,
            max_fields: MAX_FIELDS_PER_ENTRY,
            max_field_bytes: MAX_FIELD_BYTES_PER_ENTRY,
        }
    }
}

/// Longest label name of a log stream, in bytes (as for metric series).
pub const MAX_LABEL_NAME_BYTES: usize = 1024;
/// Longest label value of a log stream, in bytes (as for metric series): labels stay in memory for as long
/// as their stream is known, so a huge one is refused rather than kept.
pub const MAX_LABEL_VALUE_BYTES: usize = 64 * 1024;

/// Why a stream's label set cannot be stored: a label name used twice, or one over the size limits.
pub(crate) fn label_set_problem<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<String> {
    let mut names: Vec<&str> = Vec::new();
    for (name, value) in pairs {
        if name.len() > MAX_LABEL_NAME_BYTES {
            return Some(format!(
                "label name of {} bytes is longer than the limit of {MAX_LABEL_NAME_BYTES} bytes",
                name.len()
            ));
        }
        if value.len() > MAX_LABEL_VALUE_BYTES {
            return Some(format!(
                "value of label {name:?} has {} bytes, more than the limit of {MAX_LABEL_VALUE_BYTES} bytes",
                value.len()
            ));
        }
        names.push(name);
    }
    names.sort_unstable();
    names.windows(2).find(|w| w[0] == w[1]).map(|w| format!("label name {:?} appears more than once", w[0]))
}

/// At most `max` bytes of `text` (on a character boundary) and its length, for error messages.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    format!("{} ({} bytes)", prom::clip(text, max), text.len())
}

/// A request that cannot be stored at all.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("unsupported content type {content_type:?}; {expected}")]
    UnsupportedContentType { content_type: String, expected: &'static str },

    #[error("unsupported content encoding {encoding:?}; {expected}")]
    UnsupportedEncoding { encoding: String, expected: &'static str },

    #[error("request body is larger than the limit of {limit} bytes{}", if *.decompressed { " once decompressed" } else { "" })]
    BodyTooLarge { limit: usize, decompressed: bool },

    #[error("invalid {encoding} body: {reason}")]
    Compression { encoding: &'static str, reason: String },

    #[error("invalid protobuf PushRequest: {reason}")]
    Protobuf { reason: String },

    #[error("invalid JSON at line {line}, column {column}: {reason}")]
    Json { line: usize, column: usize, reason: String },

    #[error("stream {stream}: invalid labels {labels:?}: {reason}")]
    Labels { stream: usize, labels: String, reason: String },

    #[error("stream {stream} has {count} labels, more than the limit of {limit}")]
    TooManyLabels { stream: usize, count: usize, limit: usize },

    #[error("{location}: invalid timestamp {value:?}: {reason}")]
    Timestamp { location: String, value: String, reason: &'static str },

    #[error("line {line}: {reason}")]
    Bulk { line: usize, reason: String },
}

/// Why one entry of an otherwise good request was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    LineTooLong { bytes: usize, limit: usize },
    UnsupportedAction { action: String },
    TooOld { time: String },
    TooNew { time: String },
    TooManyFields { count: usize, limit: usize },
    FieldsTooLong { bytes: usize, limit: usize },
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::LineTooLong { bytes, limit } => {
                write!(f, "line of {bytes} bytes is longer than the limit of {limit} bytes")
            }
            RejectReason::UnsupportedAction { action } => {
                write!(f, "bulk action {action:?} is not supported; use create or index")
            }
            RejectReason::TooOld { time } => {
                write!(f, "timestamp {time} is older than the retention period")
            }
            RejectReason::TooNew { time } => {
                write!(f, "timestamp {time} is more than 2 days in the future")
            }
            RejectReason::TooManyFields { count, limit } => {
                write!(f, "{count} fields, more than the limit of {limit} per entry")
            }
            RejectReason::FieldsTooLong { bytes, limit } => {
                write!(
                    f,
                    "fields of {bytes} bytes in all (names and values), longer than the line limit of {limit} bytes"
                )
            }
        }
    }
}

impl RejectReason {
    /// A short stable name, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            RejectReason::LineTooLong { .. } => "line_too_long",
            RejectReason::UnsupportedAction { .. } => "unsupported_action",
            RejectReason::TooOld { .. } => "too_old",
            RejectReason::TooNew { .. } => "too_new",
            RejectReason::TooManyFields { .. } => "too_many_fields",
            RejectReason::FieldsTooLong { .. } => "fields_too_long",
        }
    }
}

/// One dropped entry: its position among the request's entries (0-based) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub index: usize,
    pub reason: RejectReason,
}

/// The outcome of decoding one request.
#[derive(Debug, Default)]
pub struct Decoded {
    pub batch: LogBatch,
    /// Entries the request held, accepted and rejected.
    pub total: usize,
    pub rejected: Vec<Rejection>,
    /// Bytes of the rejected lines.
    pub rejected_bytes: usize,
    /// True when invalid UTF-8 was replaced with U+FFFD somewhere in the request.
    pub invalid_utf8: bool,
}

impl Decoded {
    pub(crate) fn reject(&mut self, index: usize, bytes: usize, reason: RejectReason) {
        self.rejected_bytes += bytes;
        self.rejected.push(Rejection { index, reason });
    }
}

/// VictoriaLogs-style field mapping of the JSON-lines and bulk endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMapping {
    /// Candidate names of the time field; the first present wins.
    pub time_fields: Vec<String>,
    /// Candidate names of the message field; the first non-empty wins.
    pub msg_fields: Vec<String>,
    /// Fields that name the stream and become its labels.
    pub stream_fields: Vec<String>,
    /// Fields to drop; a trailing `*` matches a prefix.
    pub ignore_fields: Vec<String>,
}

impl FieldMapping {
    /// The mapping from comma-separated parameter values, with the endpoint's default names for time and
    /// message.
    pub fn from_params(
        time_field: Option<&str>,
        msg_field: Option<&str>,
        stream_fields: Option<&str>,
        ignore_fields: Option<&str>,
        default_time: &str,
        default_msg: &str,
    ) -> FieldMapping {
        fn list(v: Option<&str>) -> Vec<String> {
            v.map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
                .unwrap_or_default()
        }
        let or_default = |v: Vec<String>, d: &str| if v.is_empty() { vec![d.to_string()] } else { v };
        FieldMapping {
            time_fields: or_default(list(time_field), default_time),
            msg_fields: or_default(list(msg_field), default_msg),
            stream_fields: list(stream_fields),
            ignore_fields: list(ignore_fields),
        }
    }

    fn ignored(&self, name: &str) -> bool {
        self.ignore_fields.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    }
}

/// Replaces invalid UTF-8, remembering that it did.
pub(crate) fn lossy_utf8<'a>(bytes: &'a [u8], invalid: &mut bool) -> std::borrow::Cow<'a, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => {
            *invalid = true;
            String::from_utf8_lossy(bytes)
        }
    }
}
