//! From frames to the store's entries, gathered into one [`LogBatch`] per connection (per socket for UDP).
//!
//! The mapping (README "Syslog" says the same):
//! - stream labels: `hostname` (HOSTNAME, else the sender's IP address), `app_name` (APP-NAME or the
//!   TAG, else `unknown`), `facility` (`kern` ... `local7`) and `level` (see [`crate::parse::level`]);
//! - fields: `procid`, `msgid` (when present), `severity` (the RFC 5424 keyword: `emerg` ... `debug`),
//!   structured data as `sd.<SD-ID>.<PARAM-NAME>`;
//! - the line is MSG; the time is the message's own, else the time of receipt;
//! - a frame that does not parse is kept whole (lossy UTF-8) with the field `syslog_parse_error`, in the
//!   stream `{hostname="<sender IP>", app_name="unknown"}`.
//!
//! As on every ingest path, an entry whose time is outside the accepted window (older than retention, more
//! than two days ahead), whose line is over `server.max_line_size` or whose fields are over the field
//! limits is dropped and counted.

use std::collections::HashMap;
use std::net::IpAddr;

use store::model::{Labels, LogBatch, LogEntry};
use tokio::time::{Duration, Instant};
use wire::{Limits, RejectReason};

use crate::parse::{self, Message, ParseError};

/// Why a message was dropped, or kept with a change: the `reason` of `lumen_syslog_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Longer than `syslog.max_message_bytes`: dropped.
    Oversized,
    /// Not RFC 5424 or 3164: kept as a raw line with `syslog_parse_error`.
    ParseError,
    /// Invalid UTF-8: kept, each bad sequence replaced by U+FFFD.
    NotUtf8,
    /// Older than the retention period: dropped.
    TooOld,
    /// More than two days ahead: dropped.
    TooNew,
    /// MSG over `server.max_line_size`: dropped.
    LineTooLong,
    /// Structured data over the field limits: dropped.
    TooManyFields,
    FieldsTooLong,
    /// The store refused the batch (not for a reason that passes, or the server stopped meanwhile): dropped.
    StoreRefused,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Oversized,
        Reason::ParseError,
        Reason::NotUtf8,
        Reason::TooOld,
        Reason::TooNew,
        Reason::LineTooLong,
        Reason::TooManyFields,
        Reason::FieldsTooLong,
        Reason::StoreRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Oversized => "oversized",
            Reason::ParseError => "parse_error",
            Reason::NotUtf8 => "not_utf8",
            Reason::TooOld => "too_old",
            Reason::TooNew => "too_new",
            Reason::LineTooLong => "line_too_long",
            Reason::TooManyFields => "too_many_fields",
            Reason::FieldsTooLong => "fields_too_long",
            Reason::StoreRefused => "store_refused",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a problem was, for a rate-limited warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub detail: String,
}

/// Counts kept locally and added to the metrics once per read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Frames received (every one, dropped or not).
    pub messages: u64,
    pub reasons: [u64; Reason::ALL.len()],
}

impl Tally {
    pub fn count(&mut self, reason: Reason) {
        self.reasons[reason.index()] += 1;
    }

    pub fn get(&self, reason: Reason) -> u64 {
        self.reasons[reason.index()]
    }
}

/// How frames become entries.
#[derive(Debug, Clone, Copy)]
pub struct Mapping {
    /// The server's limits (line, labels, fields); the time window is set per message from `retention_ns`.
    pub limits: Limits,
    pub retention_ns: i64,
    pub bsd_offset_secs: i64,
}

/// Entries waiting to be appended.
#[derive(Debug, Default)]
pub struct Pending {
    batch: LogBatch,
    /// Stream id → index in `batch.streams`.
    streams: HashMap<u64, u32>,
    /// When the first entry of the batch came.
    since: Option<Instant>,
    pub tally: Tally,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.batch.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.entries.is_empty()
    }

    /// When the batch must be appended at the latest.
    pub fn deadline(&self, delay: Duration) -> Option<Instant> {
        self.since.map(|s| s + delay)
    }

    /// The batch, leaving this empty (the tally stays).
    pub fn take(&mut self) -> LogBatch {
        self.streams.clear();
        self.since = None;
        std::mem::take(&mut self.batch)
    }

    /// One frame received from `peer` at `received_ns`.
    pub fn add(&mut self, frame: &[u8], peer: IpAddr, received_ns: i64, mapping: &Mapping) -> Option<Problem> {
        let frame = parse::trim_end(frame);
        if frame.is_empty() {
            return None;
        }
        self.tally.messages += 1;
        let cx = parse::Context { received_ns, bsd_offset_secs: mapping.bsd_offset_secs };
        match parse::parse(frame, cx) {
            Ok(message) => self.add_message(message, peer, received_ns, mapping),
            Err(error) => self.add_raw(frame, &error, peer, received_ns, mapping),
        }
    }

    /// The start of an octet-counted frame whose connection closed before its end.
    pub fn add_truncated(
        &mut self,
        data: &[u8],
        expected: usize,
        peer: IpAddr,
        received_ns: i64,
        mapping: &Mapping,
    ) -> Option<Problem> {
        self.tally.messages += 1;
        let error = ParseError::TruncatedFrame { got: data.len(), expected };
        self.add_raw(data, &error, peer, received_ns, mapping)
    }

    /// A frame over the size limit, dropped.
    pub fn add_oversized(&mut self, bytes: usize, max: usize) -> Problem {
        self.tally.messages += 1;
        self.tally.count(Reason::Oversized);
        Problem {
            reason: Reason::Oversized,
            detail: format!("frame of {bytes} bytes is longer than syslog.max_message_bytes ({max} bytes)"),
        }
    }

    fn add_message(&mut self, m: Message, peer: IpAddr, received_ns: i64, mapping: &Mapping) -> Option<Problem> {
        let mut problem = None;
        if m.invalid_utf8 {
            self.tally.count(Reason::NotUtf8);
            problem = Some(Problem { reason: Reason::NotUtf8, detail: "invalid UTF-8 replaced by U+FFFD".into() });
        }
        let labels = [
            ("hostname", m.hostname.unwrap_or_else(|| peer.to_canonical().to_string())),
            ("app_name", m.app_name.unwrap_or_else(|| "unknown".to_string())),
            ("facility", parse::facility_name(m.facility).to_string()),
            ("level", parse::level(m.severity).to_string()),
        ];
        let mut fields = Vec::with_capacity(3 + m.structured.len());
        if let Some(p) = m.procid {
            fields.push(("procid".to_string(), p));
        }
        if let Some(id) = m.msgid {
            fields.push(("msgid".to_string(), id));
        }
        fields.push(("severity".to_string(), parse::severity_name(m.severity).to_string()));
        fields.extend(m.structured);
        let time_ns = m.time_ns.unwrap_or(received_ns);
        self.push(labels, time_ns, m.msg, fields, received_ns, mapping).or(problem)
    }

    fn add_raw(
        &mut self,
        frame: &[u8],
        error: &ParseError,
        peer: IpAddr,
        received_ns: i64,
        mapping: &Mapping,
    ) -> Option<Problem> {
        self.tally.count(Reason::ParseError);
        let labels = [("hostname", peer.to_canonical().to_string()), ("app_name", "unknown".to_string())];
        let line = String::from_utf8_lossy(frame).into_owned();
        let fields = vec![("syslog_parse_error".to_string(), error.to_string())];
        let problem = Problem { reason: Reason::ParseError, detail: error.to_string() };
        self.push(labels, received_ns, line, fields, received_ns, mapping).or(Some(problem))
    }

    fn push<const N: usize>(
        &mut self,
        labels: [(&str, String); N],
        time_ns: i64,
        line: String,
        fields: Vec<(String, String)>,
        received_ns: i64,
        mapping: &Mapping,
    ) -> Option<Problem> {
        let limits = &mapping.limits;
        let oldest = received_ns.saturating_sub(mapping.retention_ns);
        let newest = received_ns.saturating_add(2 * store::time::NANOS_PER_DAY);
        let rejected = if time_ns < oldest {
            Some((Reason::TooOld, RejectReason::TooOld { time: store::time::format_rfc3339_ns(time_ns) }))
        } else if time_ns > newest {
            Some((Reason::TooNew, RejectReason::TooNew { time: store::time::format_rfc3339_ns(time_ns) }))
        } else if line.len() > limits.max_line_bytes {
            Some((Reason::LineTooLong, RejectReason::LineTooLong { bytes: line.len(), limit: limits.max_line_bytes }))
        } else {
            limits.check_fields(&fields).map(|r| {
                let reason = match r {
                    RejectReason::TooManyFields { .. } => Reason::TooManyFields,
                    _ => Reason::FieldsTooLong,
                };
                (reason, r)
            })
        };
        if let Some((reason, why)) = rejected {
            self.tally.count(reason);
            return Some(Problem { reason, detail: why.to_string() });
        }
        // Past the server's label limit, the labels listed last are left out.
        let labels: Vec<(String, String)> =
            labels.into_iter().take(limits.max_labels.max(1)).map(|(k, v)| (k.to_string(), v)).collect();
        let labels = Labels::from_pairs(labels);
        let id = labels.stream_id().0;
        let stream = match self.streams.get(&id) {
            Some(&i) => i,
            None => {
                let i = self.batch.stream_index(labels);
                self.streams.insert(id, i);
                i
            }
        };
        self.batch.entries.push(LogEntry { stream, time_ns, line, fields });
        if self.since.is_none() {
            self.since = Some(Instant::now());
        }
        None
    }
}

#[cfg(test)]
mod tests;
