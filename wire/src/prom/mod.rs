//! Decoders for the metrics wire formats Lumen ingests.
//!
//! * [`remote`]: Prometheus remote write 1.0 (a borrowed, allocation-free `WriteRequest` walker for the hot
//!   path), remote read messages, snappy block compression, and label-set validation.
//! * [`text`]: Prometheus text exposition 0.0.4 and OpenMetrics 1.0 text (for `/api/v1/import/prometheus`).
//! * [`influx`]: InfluxDB line protocol (for `/write` and `/api/v2/write`).
//!
//! The text decoders never stop at the first bad line: they hand every good sample to the caller's visitor and
//! return the bad lines as [`LineError`]s, so the HTTP layer can answer 400 naming the lines while keeping (or
//! discarding) the rest, whichever the endpoint's policy is.

pub mod influx;
pub mod remote;
pub mod text;

use std::fmt;

pub use influx::{InfluxStats, Precision, parse_influx};
pub use remote::{
    LabelLimits, OwnedSeries, Sample, WriteStats, check_labels, check_labels_with, compress_snappy,
    decode_read_request, decode_write_request, decompress_snappy, encode_read_response, encode_write_request,
    normalize_labels,
};
pub use text::{MetricMetadata, TextFormat, TextStats, parse_text};

/// At most this many [`LineError`]s are kept per body; the stats still count every bad line.
pub const MAX_LINE_ERRORS: usize = 100;

/// Why a remote-write / remote-read body (or a series in it) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The snappy header declares more bytes than the caller allows; nothing was allocated.
    #[error(
        "the decompressed body would be {declared} bytes, over the limit of {max} bytes: send smaller batches \
         (Prometheus: lower queue_config.max_samples_per_send) or raise the server's body limit"
    )]
    TooLarge {
        /// Length declared in the snappy header.
        declared: usize,
        /// The caller's limit.
        max: usize,
    },
    /// The body is not valid snappy block data.
    #[error(
        "the body is not valid snappy block-format data ({0}): compress it with snappy's block format \
         (not the framed/stream format) and send Content-Encoding: snappy"
    )]
    Snappy(String),
    /// The decompressed body is not a valid protobuf message of the expected type.
    #[error(
        "malformed {message} protobuf at byte {offset} of the decompressed body: {what} (the body must be a \
         snappy-compressed prometheus.{message}, as remote write 1.0 / remote read send it)"
    )]
    Protobuf {
        /// The message type being decoded, e.g. `WriteRequest`.
        message: &'static str,
        /// Byte offset (in the decompressed body) where the problem was found.
        offset: usize,
        /// What was wrong, including the path to the field, e.g. `timeseries[3].labels[1].name: invalid UTF-8`.
        what: String,
    },
    /// A series' label set breaks the rules of [`check_labels`].
    #[error("{0}")]
    InvalidLabels(String),
    /// Raised by a caller's visitor to stop decoding; the text is passed through unchanged.
    #[error("{0}")]
    Rejected(String),
}

/// One malformed line of a text body (exposition format or line protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number in the body.
    pub line: usize,
    /// What was wrong with the line.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for LineError {}

/// Collects line errors, keeping the first [`MAX_LINE_ERRORS`] and counting all.
#[derive(Debug, Default)]
pub(crate) struct ErrorSink {
    pub(crate) errors: Vec<LineError>,
    pub(crate) count: usize,
}

impl ErrorSink {
    pub(crate) fn push(&mut self, line: usize, message: String) {
        self.count += 1;
        if self.errors.len() < MAX_LINE_ERRORS {
            self.errors.push(LineError { line, message });
        }
    }
}

/// A string of the current line: borrowed from the body, or a range of the line's unescape buffer.
#[derive(Clone, Copy)]
pub(crate) enum Piece<'b> {
    Body(&'b str),
    Scratch(usize, usize),
}

impl<'b> Piece<'b> {
    pub(crate) fn get<'s>(self, scratch: &'s str) -> &'s str
    where
        'b: 's,
    {
        match self {
            Piece::Body(s) => s,
            Piece::Scratch(a, b) => &scratch[a..b],
        }
    }
}

/// Turns an empty vector of borrowed label pairs into one with a shorter lifetime, keeping its allocation.
///
/// The in-place `collect` of an empty iterator re-uses the buffer, so a per-line label vector can be recycled
/// across lines even though each line borrows from a different scratch string.
pub(crate) fn recycle<'x>(mut v: Vec<(&str, &str)>) -> Vec<(&'x str, &'x str)> {
    v.clear();
    v.into_iter().map(|_| -> (&'x str, &'x str) { unreachable!("the vector was just cleared") }).collect()
}

/// Formats a float as Prometheus prints sample values and `le`/`quantile` labels: like Go's
/// `strconv.FormatFloat(v, 'f', -1, 64)` (shortest round-trip form), with `NaN`, `+Inf` and `-Inf`.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}

/// Shortens a metric or label name for an error message.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn recycle_keeps_the_allocation() {
        let owned = String::from("abc");
        let mut v: Vec<(&str, &str)> = Vec::with_capacity(32);
        v.push((&owned, &owned));
        let ptr = v.as_ptr() as usize;
        let w = super::recycle(v);
        assert!(w.is_empty() && w.capacity() >= 32);
        assert_eq!(w.as_ptr() as usize, ptr);
    }
}
