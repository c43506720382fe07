//! Prometheus remote write 1.0 and remote read (SAMPLES response type).
//!
//! The write path does not build prost structs: [`decode_write_request`] walks the protobuf bytes and hands each
//! `TimeSeries` to a visitor as label pairs borrowed from the body plus its samples, reusing one label vector and
//! one sample vector for the whole request. The prost structs in [`pb`] (field numbers as in Prometheus'
//! `prompb/remote.proto` and `prompb/types.proto`) serve remote read and the encoders used by tests and benchmarks.

use super::{WireError, clip};
use prost::Message;
use std::fmt::Write as _;

/// Hand-written prost messages of `prometheus` (prompb) remote write 1.0 and remote read.
pub mod pb {
    /// `prometheus.WriteRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        /// Series, each with a full label set.
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
        /// Metric metadata (HELP/TYPE/UNIT), sent by Prometheus in separate requests.
        #[prost(message, repeated, tag = "3")]
        pub metadata: Vec<MetricMetadata>,
    }

    /// `prometheus.TimeSeries`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// Label pairs, sorted by name by conforming senders.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// Float samples in time order.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
        /// Exemplars (not stored by Lumen).
        #[prost(message, repeated, tag = "3")]
        pub exemplars: Vec<Exemplar>,
        /// Native histogram samples (not stored by Lumen).
        #[prost(message, repeated, tag = "4")]
        pub histograms: Vec<Histogram>,
    }

    /// `prometheus.Label`.
    #[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
    pub struct Label {
        /// Label name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Label value.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `prometheus.Sample`.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Sample {
        /// The value.
        #[prost(double, tag = "1")]
        pub value: f64,
        /// Milliseconds since the Unix epoch.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }

    /// `prometheus.Exemplar`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Exemplar {
        /// Exemplar labels (e.g. `trace_id`).
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// The value.
        #[prost(double, tag = "2")]
        pub value: f64,
        /// Milliseconds since the Unix epoch.
        #[prost(int64, tag = "3")]
        pub timestamp: i64,
    }

    /// `prometheus.MetricMetadata`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MetricMetadata {
        /// The metric type.
        #[prost(enumeration = "MetricType", tag = "1")]
        pub r#type: i32,
        /// Family name as in the `# TYPE` line.
        #[prost(string, tag = "2")]
        pub metric_family_name: String,
        /// HELP text.
        #[prost(string, tag = "4")]
        pub help: String,
        /// UNIT text.
        #[prost(string, tag = "5")]
        pub unit: String,
    }

    /// `prometheus.MetricMetadata.MetricType`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum MetricType {
        /// Untyped / unknown.
        Unknown = 0,
        /// Counter.
        Counter = 1,
        /// Gauge.
        Gauge = 2,
        /// Classic histogram.
        Histogram = 3,
        /// Gauge histogram.
        Gaugehistogram = 4,
        /// Summary.
        Summary = 5,
        /// Info.
        Info = 6,
        /// State set.
        Stateset = 7,
    }

    /// `prometheus.Histogram` (a native histogram sample).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Histogram {
        /// Observation count, integer or float.
        #[prost(oneof = "histogram::Count", tags = "1, 2")]
        pub count: Option<histogram::Count>,
        /// Sum of observations.
        #[prost(double, tag = "3")]
        pub sum: f64,
        /// Bucket schema.
        #[prost(sint32, tag = "4")]
        pub schema: i32,
        /// Width of the zero bucket.
        #[prost(double, tag = "5")]
        pub zero_threshold: f64,
        /// Count in the zero bucket.
        #[prost(oneof = "histogram::ZeroCount", tags = "6, 7")]
        pub zero_count: Option<histogram::ZeroCount>,
        /// Negative bucket spans.
        #[prost(message, repeated, tag = "8")]
        pub negative_spans: Vec<BucketSpan>,
        /// Negative bucket count deltas (integer histograms).
        #[prost(sint64, repeated, tag = "9")]
        pub negative_deltas: Vec<i64>,
        /// Negative bucket counts (float histograms).
        #[prost(double, repeated, tag = "10")]
        pub negative_counts: Vec<f64>,
        /// Positive bucket spans.
        #[prost(message, repeated, tag = "11")]
        pub positive_spans: Vec<BucketSpan>,
        /// Positive bucket count deltas (integer histograms).
        #[prost(sint64, repeated, tag = "12")]
        pub positive_deltas: Vec<i64>,
        /// Positive bucket counts (float histograms).
        #[prost(double, repeated, tag = "13")]
        pub positive_counts: Vec<f64>,
        /// Counter-reset hint (`histogram::ResetHint`).
        #[prost(enumeration = "histogram::ResetHint", tag = "14")]
        pub reset_hint: i32,
        /// Milliseconds since the Unix epoch.
        #[prost(int64, tag = "15")]
        pub timestamp: i64,
        /// Custom bucket bounds (NHCB).
        #[prost(double, repeated, tag = "16")]
        pub custom_values: Vec<f64>,
    }

    /// Nested types of [`Histogram`].
    pub mod histogram {
        /// `oneof count`.
        #[derive(Clone, Copy, PartialEq, prost::Oneof)]
        pub enum Count {
            /// Integer count.
            #[prost(uint64, tag = "1")]
            CountInt(u64),
            /// Float count.
            #[prost(double, tag = "2")]
            CountFloat(f64),
        }

        /// `oneof zero_count`.
        #[derive(Clone, Copy, PartialEq, prost::Oneof)]
        pub enum ZeroCount {
            /// Integer zero-bucket count.
            #[prost(uint64, tag = "6")]
            ZeroCountInt(u64),
            /// Float zero-bucket count.
            #[prost(double, tag = "7")]
            ZeroCountFloat(f64),
        }

        /// `Histogram.ResetHint`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        pub enum ResetHint {
            /// Unknown.
            Unknown = 0,
            /// A reset happened.
            Yes = 1,
            /// No reset.
            No = 2,
            /// Gauge histogram: resets are meaningless.
            Gauge = 3,
        }
    }

    /// `prometheus.BucketSpan`.
    #[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
    pub struct BucketSpan {
        /// Gap to the previous span, or the start index of the first span.
        #[prost(sint32, tag = "1")]
        pub offset: i32,
        /// Number of consecutive buckets.
        #[prost(uint32, tag = "2")]
        pub length: u32,
    }

    /// `prometheus.ReadRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReadRequest {
        /// Queries, answered in the same order.
        #[prost(message, repeated, tag = "1")]
        pub queries: Vec<Query>,
        /// Response types the client accepts, in preference order; empty means SAMPLES.
        #[prost(enumeration = "ResponseType", repeated, tag = "2")]
        pub accepted_response_types: Vec<i32>,
    }

    /// `prometheus.ReadRequest.ResponseType`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum ResponseType {
        /// One snappy-compressed `ReadResponse` with raw samples.
        Samples = 0,
        /// Streamed, CRC-framed `ChunkedReadResponse` messages with XOR chunks.
        StreamedXorChunks = 1,
    }

    /// `prometheus.Query`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Query {
        /// Start of the range, inclusive, in ms.
        #[prost(int64, tag = "1")]
        pub start_timestamp_ms: i64,
        /// End of the range, inclusive, in ms.
        #[prost(int64, tag = "2")]
        pub end_timestamp_ms: i64,
        /// Label matchers, all of which must match.
        #[prost(message, repeated, tag = "3")]
        pub matchers: Vec<LabelMatcher>,
        /// Optional hints about the PromQL context.
        #[prost(message, optional, tag = "4")]
        pub hints: Option<ReadHints>,
    }

    /// `prometheus.LabelMatcher`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct LabelMatcher {
        /// Matcher type (`MatchType`).
        #[prost(enumeration = "MatchType", tag = "1")]
        pub r#type: i32,
        /// Label name.
        #[prost(string, tag = "2")]
        pub name: String,
        /// Value or RE2 regular expression (fully anchored).
        #[prost(string, tag = "3")]
        pub value: String,
    }

    /// `prometheus.LabelMatcher.Type`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum MatchType {
        /// `=`
        Eq = 0,
        /// `!=`
        Neq = 1,
        /// `=~`
        Re = 2,
        /// `!~`
        Nre = 3,
    }

    /// `prometheus.ReadHints`.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct ReadHints {
        /// Query step in ms.
        #[prost(int64, tag = "1")]
        pub step_ms: i64,
        /// Surrounding function or aggregation.
        #[prost(string, tag = "2")]
        pub func: String,
        /// Start in ms.
        #[prost(int64, tag = "3")]
        pub start_ms: i64,
        /// End in ms.
        #[prost(int64, tag = "4")]
        pub end_ms: i64,
        /// Label names of the surrounding aggregation.
        #[prost(string, repeated, tag = "5")]
        pub grouping: Vec<String>,
        /// Whether `grouping` is `by` (true) or `without`.
        #[prost(bool, tag = "6")]
        pub by: bool,
        /// Range-vector selector range in ms.
        #[prost(int64, tag = "7")]
        pub range_ms: i64,
    }

    /// `prometheus.ReadResponse` (SAMPLES response type).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ReadResponse {
        /// One result per query, in request order.
        #[prost(message, repeated, tag = "1")]
        pub results: Vec<QueryResult>,
    }

    /// `prometheus.QueryResult`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct QueryResult {
        /// Matching series, samples in time order.
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }
}

/// One float sample of a series.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub t: i64,
    /// The value; stale markers (NaN with bits `0x7ff0000000000002`) are passed through bit for bit.
    pub v: f64,
}

/// What one `WriteRequest` contained, besides what the visitor saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// `TimeSeries` entries (each one was passed to the visitor).
    pub series: usize,
    /// Float samples (passed to the visitor).
    pub samples: usize,
    /// Exemplars, skipped.
    pub exemplars: usize,
    /// Native histogram samples, skipped: the caller decides whether to refuse or report them.
    pub histograms: usize,
    /// `MetricMetadata` entries, skipped.
    pub metadata: usize,
    /// Unknown top-level fields, skipped as protobuf requires. A remote write 2.0 body
    /// (`io.prometheus.write.v2.Request`: symbols = 4, timeseries = 5) read as 1.0 shows up as `series == 0` with
    /// `unknown_fields > 0`: refuse it (415) by its Content-Type before decoding, or by this count after.
    pub unknown_fields: usize,
}

/// An owned series for [`encode_write_request`]: labels (name, value) in the order to send, and samples.
pub type OwnedSeries = (Vec<(String, String)>, Vec<Sample>);

/// Compresses `data` with the snappy block format (what remote write and remote read use).
///
/// # Panics
/// If `data` is larger than snappy's block limit (about 4 GiB), which no caller's body limit allows.
pub fn compress_snappy(data: &[u8]) -> Vec<u8> {
    // Compression of an in-memory buffer only fails when the input exceeds snappy's ~4 GiB block limit.
    snap::raw::Encoder::new().compress_vec(data).expect("snappy input larger than 4 GiB")
}

/// Decompresses a snappy block-format body, refusing it before allocating if its declared length exceeds `max_len`.
pub fn decompress_snappy(body: &[u8], max_len: usize) -> Result<Vec<u8>, WireError> {
    let declared = snap::raw::decompress_len(body).map_err(|e| WireError::Snappy(e.to_string()))?;
    if declared > max_len {
        return Err(WireError::TooLarge { declared, max: max_len });
    }
    snap::raw::Decoder::new().decompress_vec(body).map_err(|e| WireError::Snappy(e.to_string()))
}

/// Encodes series as a snappy-compressed `WriteRequest` body, as a Prometheus sender would (for tests and benches).
pub fn encode_write_request(series: &[OwnedSeries]) -> Vec<u8> {
    let req = pb::WriteRequest {
        timeseries: series
            .iter()
            .map(|(labels, samples)| pb::TimeSeries {
                labels: labels.iter().map(|(n, v)| pb::Label { name: n.clone(), value: v.clone() }).collect(),
                samples: samples.iter().map(|s| pb::Sample { value: s.v, timestamp: s.t }).collect(),
                exemplars: Vec::new(),
                histograms: Vec::new(),
            })
            .collect(),
        metadata: Vec::new(),
    };
    compress_snappy(&req.encode_to_vec())
}

/// Decodes a snappy-compressed remote read `ReadRequest` (decompressed size limited to `max_len`).
pub fn decode_read_request(body: &[u8], max_len: usize) -> Result<pb::ReadRequest, WireError> {
    let raw = decompress_snappy(body, max_len)?;
    pb::ReadRequest::decode(raw.as_slice()).map_err(|e| WireError::Protobuf {
        message: "ReadRequest",
        offset: 0,
        what: e.to_string(),
    })
}

/// Encodes a remote read `ReadResponse` (SAMPLES type) as a snappy-compressed body.
pub fn encode_read_response(resp: &pb::ReadResponse) -> Vec<u8> {
    compress_snappy(&resp.encode_to_vec())
}

// ---------------------------------------------------------------------------------------------------------------
// Borrowed WriteRequest decoder.

const WT_VARINT: u8 = 0;
const WT_I64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_I32: u8 = 5;

/// A decoding problem below the top level; the top level adds the series index.
struct PbErr {
    offset: usize,
    what: String,
}

fn wire_type_name(wt: u8) -> &'static str {
    match wt {
        WT_VARINT => "varint",
        WT_I64 => "64-bit",
        WT_LEN => "length-delimited",
        3 => "start-group",
        4 => "end-group",
        WT_I32 => "32-bit",
        _ => "invalid",
    }
}

/// Reads a varint ending before `end` (`end <= buf.len()` everywhere in this module).
#[inline(always)]
fn read_varint(buf: &[u8], pos: &mut usize, end: usize, what: &str) -> Result<u64, PbErr> {
    // One-byte varints (keys, short lengths) are the common case of the hot path.
    if *pos < end
        && let Some(&b) = buf.get(*pos)
        && b < 0x80
    {
        *pos += 1;
        return Ok(u64::from(b));
    }
    read_varint_slow(buf, pos, end, what)
}

#[inline(never)]
fn read_varint_slow(buf: &[u8], pos: &mut usize, end: usize, what: &str) -> Result<u64, PbErr> {
    let start = *pos;
    let mut result = 0u64;
    let mut shift = 0u32;
    loop {
        let Some(&b) = buf.get(*pos).filter(|_| *pos < end) else {
            return Err(PbErr { offset: start, what: format!("{what}: varint is cut short") });
        };
        *pos += 1;
        if shift == 63 && b > 1 {
            return Err(PbErr { offset: start, what: format!("{what}: varint is longer than 64 bits") });
        }
        result |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(result);
        }
        shift += 7;
    }
}

/// Reads a field key; returns (field number, wire type).
#[inline(always)]
fn read_key(buf: &[u8], pos: &mut usize, end: usize, msg: &str) -> Result<(u32, u8), PbErr> {
    let at = *pos;
    let key = read_varint(buf, pos, end, msg)?;
    let field = key >> 3;
    if field == 0 || field > (u32::MAX >> 3) as u64 {
        return Err(bad_field_number(at, msg, field));
    }
    Ok((field as u32, (key & 7) as u8))
}

#[cold]
#[inline(never)]
fn bad_field_number(at: usize, msg: &str, field: u64) -> PbErr {
    PbErr { offset: at, what: format!("{msg}: invalid field number {field}") }
}

#[cold]
#[inline(never)]
fn bad_len(at: usize, what: &str, len: u64, left: usize) -> PbErr {
    PbErr { offset: at, what: format!("{what}: declares {len} bytes but only {left} remain in the enclosing message") }
}

/// Reads the length prefix of a length-delimited field; returns the payload's (start, end).
#[inline(always)]
fn read_len(buf: &[u8], pos: &mut usize, end: usize, what: &str) -> Result<(usize, usize), PbErr> {
    let at = *pos;
    let len = read_varint(buf, pos, end, what)?;
    let left = end - *pos;
    if len > left as u64 {
        return Err(bad_len(at, what, len, left));
    }
    let start = *pos;
    *pos += len as usize;
    Ok((start, *pos))
}

fn skip_field(buf: &[u8], pos: &mut usize, end: usize, wt: u8, what: &str) -> Result<(), PbErr> {
    let at = *pos;
    let fixed = match wt {
        WT_VARINT => return read_varint(buf, pos, end, what).map(drop),
        WT_LEN => return read_len(buf, pos, end, what).map(drop),
        WT_I64 => 8,
        WT_I32 => 4,
        _ => {
            return Err(PbErr {
                offset: at,
                what: format!("{what}: unsupported wire type {wt} ({})", wire_type_name(wt)),
            });
        }
    };
    if end - *pos < fixed {
        return Err(PbErr { offset: at, what: format!("{what}: {fixed}-byte value is cut short") });
    }
    *pos += fixed;
    Ok(())
}

fn wrong_type(at: usize, what: &str, got: u8, want: u8) -> PbErr {
    PbErr {
        offset: at,
        what: format!(
            "{what} has wire type {} ({}), expected {want} ({})",
            got,
            wire_type_name(got),
            wire_type_name(want)
        ),
    }
}

/// Borrows `buf[start..end]` as UTF-8; on error returns the offset of the first bad byte.
#[inline]
fn utf8(buf: &[u8], start: usize, end: usize) -> Result<&str, usize> {
    std::str::from_utf8(&buf[start..end]).map_err(|e| start + e.valid_up_to())
}

/// A stretch of the body already validated as UTF-8: (its offset in the body, its text).
type Utf8Region<'a> = Option<(usize, &'a str)>;

/// Borrows `buf[start..end]` as UTF-8, taking it from `region` when it lies inside it (no second validation).
///
/// Inside a valid region, a sub-range is valid UTF-8 exactly when both ends are char boundaries, which `str::get`
/// checks; otherwise (or outside the region) the bytes are validated on their own, which also locates the error.
#[inline]
fn utf8_in<'a>(buf: &'a [u8], region: Utf8Region<'a>, start: usize, end: usize) -> Result<&'a str, usize> {
    if let Some((at, text)) = region
        && start >= at
        && let Some(s) = text.get(start - at..end - at)
    {
        return Ok(s);
    }
    utf8(buf, start, end)
}

/// End of the run of `labels` fields (key byte 0x0a) that starts a `TimeSeries` at `pos`.
///
/// Label fields come first and are contiguous in what Prometheus sends; with short names and values all their
/// framing bytes are ASCII, so the whole run can be validated as UTF-8 with one call instead of two per label.
fn label_run_end(buf: &[u8], mut pos: usize, end: usize) -> usize {
    while pos < end && buf[pos] == (1 << 3 | WT_LEN) {
        let mut p = pos + 1;
        let Ok(len) = read_varint(buf, &mut p, end, "") else { break };
        if len > (end - p) as u64 {
            break;
        }
        pos = p + len as usize;
    }
    pos
}

fn decode_label<'a>(
    buf: &'a [u8],
    region: Utf8Region<'a>,
    mut pos: usize,
    end: usize,
    idx: usize,
) -> Result<(&'a str, &'a str), PbErr> {
    // Fast path for the canonical layout `0x0a len name 0x12 len value` with lengths below 128.
    if let Some(&[0x0a, nl]) = buf.get(pos..pos + 2)
        && nl < 0x80
        && let ns = pos + 2
        && let ne = ns + usize::from(nl)
        && let Some(&[0x12, vl]) = buf.get(ne..ne + 2)
        && vl < 0x80
        && ne + 2 + usize::from(vl) == end
        && let Ok(name) = utf8_in(buf, region, ns, ne)
        && let Ok(value) = utf8_in(buf, region, ne + 2, end)
    {
        return Ok((name, value));
    }
    let (mut name, mut value) = ("", "");
    while pos < end {
        let at = pos;
        let (field, wt) = read_key(buf, &mut pos, end, "Label")?;
        match (field, wt) {
            (1, WT_LEN) => {
                let (s, e) = read_len(buf, &mut pos, end, "Label.name")?;
                name = utf8_in(buf, region, s, e)
                    .map_err(|offset| PbErr { offset, what: format!("labels[{idx}].name is not valid UTF-8") })?;
            }
            (2, WT_LEN) => {
                let (s, e) = read_len(buf, &mut pos, end, "Label.value")?;
                value = utf8_in(buf, region, s, e)
                    .map_err(|offset| PbErr { offset, what: format!("labels[{idx}].value is not valid UTF-8") })?;
            }
            (1 | 2, _) => return Err(wrong_type(at, &format!("labels[{idx}] field {field}"), wt, WT_LEN)),
            _ => skip_field(buf, &mut pos, end, wt, "Label")?,
        }
    }
    Ok((name, value))
}

fn decode_sample(buf: &[u8], mut pos: usize, end: usize, idx: usize) -> Result<Sample, PbErr> {
    let mut s = Sample::default();
    while pos < end {
        let at = pos;
        let (field, wt) = read_key(buf, &mut pos, end, "Sample")?;
        match (field, wt) {
            (1, WT_I64) => {
                let Some(bytes) = buf.get(pos..pos + 8).filter(|_| end - pos >= 8) else {
                    return Err(PbErr { offset: at, what: format!("samples[{idx}].value is cut short") });
                };
                s.v = f64::from_le_bytes(bytes.try_into().expect("8 bytes"));
                pos += 8;
            }
            (2, WT_VARINT) => s.t = read_varint(buf, &mut pos, end, "Sample.timestamp")? as i64,
            (1, _) => return Err(wrong_type(at, &format!("samples[{idx}].value"), wt, WT_I64)),
            (2, _) => return Err(wrong_type(at, &format!("samples[{idx}].timestamp"), wt, WT_VARINT)),
            _ => skip_field(buf, &mut pos, end, wt, "Sample")?,
        }
    }
    Ok(s)
}

fn decode_series<'a>(
    buf: &'a [u8],
    mut pos: usize,
    end: usize,
    labels: &mut Vec<(&'a str, &'a str)>,
    samples: &mut Vec<Sample>,
    stats: &mut WriteStats,
) -> Result<(), PbErr> {
    let run_end = label_run_end(buf, pos, end);
    let region = std::str::from_utf8(&buf[pos..run_end]).ok().map(|text| (pos, text));
    while pos < end {
        let at = pos;
        let (field, wt) = read_key(buf, &mut pos, end, "TimeSeries")?;
        match (field, wt) {
            (1, WT_LEN) => {
                let (s, e) = read_len(buf, &mut pos, end, "TimeSeries.labels")?;
                labels.push(decode_label(buf, region, s, e, labels.len())?);
            }
            (2, WT_LEN) => {
                let (s, e) = read_len(buf, &mut pos, end, "TimeSeries.samples")?;
                samples.push(decode_sample(buf, s, e, samples.len())?);
            }
            (3, WT_LEN) => {
                read_len(buf, &mut pos, end, "TimeSeries.exemplars")?;
                stats.exemplars += 1;
            }
            (4, WT_LEN) => {
                read_len(buf, &mut pos, end, "TimeSeries.histograms")?;
                stats.histograms += 1;
            }
            (1..=4, _) => return Err(wrong_type(at, &format!("TimeSeries field {field}"), wt, WT_LEN)),
            _ => skip_field(buf, &mut pos, end, wt, "TimeSeries")?,
        }
    }
    Ok(())
}

/// Walks an (already decompressed) remote write 1.0 `WriteRequest`, calling `visit` once per `TimeSeries` in
/// request order.
///
/// `visit` receives the series' labels exactly as sent (request order, names and values borrowed from `buf`,
/// validated as UTF-8, not yet checked against [`check_labels`]) and its float samples. It is called for every
/// series, also one whose `samples` is empty (e.g. a series that only carries native histograms, which are
/// skipped and counted in [`WriteStats::histograms`]). Exemplars and metadata are skipped and counted; unknown
/// fields are skipped by wire type, as protobuf requires. No memory is allocated per series: one label vector and
/// one sample vector are reused.
///
/// An error from `visit` stops the walk and is returned unchanged. Series visited before a decoding error have
/// already been handed over, so a caller that must be all-or-nothing should buffer until this returns `Ok`.
pub fn decode_write_request<'a, F>(buf: &'a [u8], mut visit: F) -> Result<WriteStats, WireError>
where
    F: FnMut(&[(&'a str, &'a str)], &[Sample]) -> Result<(), WireError>,
{
    let mut labels: Vec<(&'a str, &'a str)> = Vec::with_capacity(16);
    let mut samples: Vec<Sample> = Vec::with_capacity(4);
    let mut stats = WriteStats::default();
    let end = buf.len();
    let mut pos = 0;
    let top = |e: PbErr| WireError::Protobuf { message: "WriteRequest", offset: e.offset, what: e.what };
    while pos < end {
        let at = pos;
        let (field, wt) = read_key(buf, &mut pos, end, "WriteRequest").map_err(top)?;
        match (field, wt) {
            (1, WT_LEN) => {
                let idx = stats.series;
                let (s, e) = read_len(buf, &mut pos, end, "WriteRequest.timeseries").map_err(top)?;
                labels.clear();
                samples.clear();
                decode_series(buf, s, e, &mut labels, &mut samples, &mut stats).map_err(|e| WireError::Protobuf {
                    message: "WriteRequest",
                    offset: e.offset,
                    what: format!("timeseries[{idx}]: {}", e.what),
                })?;
                stats.series += 1;
                stats.samples += samples.len();
                visit(&labels, &samples)?;
            }
            (3, WT_LEN) => {
                read_len(buf, &mut pos, end, "WriteRequest.metadata").map_err(top)?;
                stats.metadata += 1;
            }
            (1 | 3, _) => return Err(top(wrong_type(at, &format!("WriteRequest field {field}"), wt, WT_LEN))),
            _ => {
                skip_field(buf, &mut pos, end, wt, "WriteRequest").map_err(top)?;
                stats.unknown_fields += 1;
            }
        }
    }
    Ok(stats)
}

// ---------------------------------------------------------------------------------------------------------------
// Label validation.

/// Limits and naming rules applied by [`check_labels_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelLimits {
    /// Most labels (with non-empty values, `__name__` included) a series may have.
    pub max_labels: usize,
    /// Longest label name, in bytes.
    pub max_name_len: usize,
    /// Longest label value, in bytes.
    pub max_value_len: usize,
    /// Accept any non-empty UTF-8 label and metric name (Prometheus 3's `utf8` validation scheme) instead of
    /// the legacy `[a-zA-Z_][a-zA-Z0-9_]*` / `[a-zA-Z_:][a-zA-Z0-9_:]*` character sets.
    pub allow_utf8_names: bool,
}

/// Whether `name` is a legacy Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b[1..].iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Whether `name` is a legacy Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_' || b[0] == b':')
        && b[1..].iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// Renders a label set for an error message: `{__name__="x",job="y",...}`, clipped.
pub fn describe_series(labels: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    let name = labels.iter().find(|(n, _)| *n == "__name__");
    let ordered = name.into_iter().chain(labels.iter().filter(|(n, _)| *n != "__name__"));
    for (i, (n, v)) in ordered.enumerate() {
        if i == 4 {
            out.push_str(",...");
            break;
        }
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{}={:?}", clip(n, 64), clip(v, 64));
    }
    out.push('}');
    out
}

/// Checks one series' labels with the legacy (remote write 1.0) naming rules; see [`check_labels_with`].
pub fn check_labels(
    labels: &[(&str, &str)],
    max_labels: usize,
    max_name_len: usize,
    max_value_len: usize,
) -> Result<(), WireError> {
    check_labels_with(labels, &LabelLimits { max_labels, max_name_len, max_value_len, allow_utf8_names: false })
}

/// Checks one series' labels, as sent, against the remote write 1.0 rules and the server's limits.
///
/// * Every name is non-empty, at most `max_name_len` bytes, and (unless `allow_utf8_names`) matches
///   `[a-zA-Z_][a-zA-Z0-9_]*`. Values are at most `max_value_len` bytes (they are UTF-8 already).
/// * No name appears twice (also when one of the two values is empty).
/// * `__name__` is present with a non-empty value that (unless `allow_utf8_names`) matches
///   `[a-zA-Z_:][a-zA-Z0-9_:]*`.
/// * At most `max_labels` labels have a non-empty value.
/// * An empty value is allowed and means "label absent" (Prometheus semantics): it is not an error, and
///   [`normalize_labels`] drops it. Unsorted labels are allowed too; [`normalize_labels`] sorts them.
pub fn check_labels_with(labels: &[(&str, &str)], limits: &LabelLimits) -> Result<(), WireError> {
    let bad = |msg: String| WireError::InvalidLabels(format!("series {}: {msg}", describe_series(labels)));
    let mut present = 0usize;
    let mut metric = None;
    for &(n, v) in labels {
        if n.is_empty() {
            return Err(bad("has a label with an empty name".into()));
        }
        if n.len() > limits.max_name_len {
            return Err(bad(format!(
                "label name \"{}\" is {} bytes long, over the limit of {}",
                clip(n, 64),
                n.len(),
                limits.max_name_len
            )));
        }
        if !limits.allow_utf8_names && !is_valid_label_name(n) {
            return Err(bad(format!("label name {:?} is invalid: it must match [a-zA-Z_][a-zA-Z0-9_]*", clip(n, 64))));
        }
        if v.len() > limits.max_value_len {
            return Err(bad(format!(
                "the value of label \"{}\" is {} bytes long, over the limit of {}",
                clip(n, 64),
                v.len(),
                limits.max_value_len
            )));
        }
        if !v.is_empty() {
            present += 1;
        }
        if n == "__name__" {
            metric = Some(v);
        }
    }
    // Duplicates: strictly sorted names (what senders must send) have none; otherwise compare all pairs, which is
    // cheap for label sets of this size.
    let strictly_sorted = labels.windows(2).all(|w| w[0].0 < w[1].0);
    let dup = if strictly_sorted {
        None
    } else {
        labels.iter().enumerate().find(|(i, (n, _))| labels[i + 1..].iter().any(|(m, _)| m == n)).map(|(_, (n, _))| *n)
    };
    if let Some(n) = dup {
        return Err(bad(format!("label name \"{}\" appears more than once", clip(n, 64))));
    }
    match metric {
        None | Some("") => return Err(bad("has no metric name (label __name__ is missing or empty)".into())),
        Some(m) if !limits.allow_utf8_names && !is_valid_metric_name(m) => {
            return Err(bad(format!(
                "metric name {:?} is invalid: it must match [a-zA-Z_:][a-zA-Z0-9_:]*",
                clip(m, 64)
            )));
        }
        _ => {}
    }
    if present > limits.max_labels {
        return Err(bad(format!("has {present} labels, more than the limit of {}", limits.max_labels)));
    }
    Ok(())
}

/// Copies the labels with non-empty values into `out` (cleared first), sorted by name: the canonical label set
/// of the series. Reuse `out` across series to avoid allocating.
pub fn normalize_labels<'a>(labels: &[(&'a str, &'a str)], out: &mut Vec<(&'a str, &'a str)>) {
    out.clear();
    out.extend(labels.iter().filter(|(_, v)| !v.is_empty()).copied());
    out.sort_unstable_by(|a, b| a.0.cmp(b.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small deterministic xorshift generator (no dev-dependencies).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn string(&mut self) -> String {
            const ALPHABET: &[&str] = &["a", "Z", "_", "0", ":", " ", "\"", "\\", "é", "日", "🦀", "\n"];
            // Mostly short strings (the decoder's fast path), sometimes long ones (multi-byte length varints).
            let len = if self.below(8) == 0 { self.below(200) } else { self.below(12) };
            (0..len).map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize]).collect()
        }
    }

    fn random_request(rng: &mut Rng) -> pb::WriteRequest {
        let mut req = pb::WriteRequest::default();
        for _ in 0..rng.below(20) {
            let mut ts = pb::TimeSeries::default();
            for _ in 0..rng.below(12) {
                ts.labels.push(pb::Label { name: rng.string(), value: rng.string() });
            }
            for _ in 0..rng.below(4) {
                let v = match rng.below(4) {
                    0 => f64::from_bits(0x7ff0_0000_0000_0002),
                    1 => f64::INFINITY,
                    _ => f64::from_bits(rng.next()),
                };
                ts.samples.push(pb::Sample { value: v, timestamp: rng.next() as i64 });
            }
            for _ in 0..rng.below(2) {
                ts.exemplars.push(pb::Exemplar {
                    labels: vec![pb::Label { name: "trace_id".into(), value: rng.string() }],
                    value: 1.5,
                    timestamp: 7,
                });
            }
            if rng.below(4) == 0 {
                ts.histograms.push(pb::Histogram {
                    count: Some(pb::histogram::Count::CountInt(3)),
                    schema: -1,
                    positive_spans: vec![pb::BucketSpan { offset: -2, length: 2 }],
                    positive_deltas: vec![1, -1],
                    timestamp: 9,
                    ..Default::default()
                });
            }
            req.timeseries.push(ts);
        }
        for _ in 0..rng.below(3) {
            req.metadata.push(pb::MetricMetadata {
                r#type: pb::MetricType::Counter as i32,
                metric_family_name: rng.string(),
                help: rng.string(),
                unit: String::new(),
            });
        }
        req
    }

    type Owned = Vec<(Vec<(String, String)>, Vec<(i64, u64)>)>;

    fn decode_owned(buf: &[u8]) -> Result<(Owned, WriteStats), WireError> {
        let mut out = Owned::new();
        let stats = decode_write_request(buf, |labels, samples| {
            out.push((
                labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
                samples.iter().map(|s| (s.t, s.v.to_bits())).collect(),
            ));
            Ok(())
        })?;
        Ok((out, stats))
    }

    #[test]
    fn random_requests_round_trip() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let req = random_request(&mut rng);
            let (got, stats) = decode_owned(&req.encode_to_vec()).unwrap();
            let want: Owned = req
                .timeseries
                .iter()
                .map(|ts| {
                    (
                        ts.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect(),
                        ts.samples.iter().map(|s| (s.timestamp, s.value.to_bits())).collect(),
                    )
                })
                .collect();
            assert_eq!(got, want);
            assert_eq!(stats.series, req.timeseries.len());
            assert_eq!(stats.samples, req.timeseries.iter().map(|t| t.samples.len()).sum::<usize>());
            assert_eq!(stats.exemplars, req.timeseries.iter().map(|t| t.exemplars.len()).sum::<usize>());
            assert_eq!(stats.histograms, req.timeseries.iter().map(|t| t.histograms.len()).sum::<usize>());
            assert_eq!(stats.metadata, req.metadata.len());
        }
    }

    #[test]
    fn encode_write_request_round_trips_through_snappy() {
        let series = vec![(
            vec![("__name__".to_string(), "up".to_string()), ("job".to_string(), "node".to_string())],
            vec![Sample { t: 1_700_000_000_000, v: 1.0 }, Sample { t: 1_700_000_015_000, v: f64::NAN }],
        )];
        let body = encode_write_request(&series);
        let raw = decompress_snappy(&body, 1 << 20).unwrap();
        let (got, stats) = decode_owned(&raw).unwrap();
        assert_eq!(stats, WriteStats { series: 1, samples: 2, ..Default::default() });
        assert_eq!(got[0].0, series[0].0);
        assert_eq!(got[0].1[0], (1_700_000_000_000, 1.0f64.to_bits()));
        assert!(f64::from_bits(got[0].1[1].1).is_nan());
    }

    /// Offsets at which a `WriteRequest` may be cut and still be a valid (shorter) message.
    fn top_level_boundaries(buf: &[u8]) -> Vec<usize> {
        let mut out = vec![0];
        let mut pos = 0;
        while pos < buf.len() {
            let (_, wt) = read_key(buf, &mut pos, buf.len(), "").ok().unwrap();
            skip_field(buf, &mut pos, buf.len(), wt, "").ok().unwrap();
            out.push(pos);
        }
        out
    }

    #[test]
    fn every_truncation_errors_without_panicking() {
        let mut rng = Rng(42);
        for _ in 0..20 {
            let req = random_request(&mut rng);
            let buf = req.encode_to_vec();
            let ok_cuts = top_level_boundaries(&buf);
            for cut in 0..buf.len() {
                let res = decode_owned(&buf[..cut]);
                if ok_cuts.contains(&cut) {
                    assert!(res.is_ok(), "cut at a message boundary {cut} must decode");
                } else {
                    let err = res.expect_err("a cut inside a message must fail");
                    assert!(matches!(err, WireError::Protobuf { offset, .. } if offset <= cut), "{err}");
                }
            }
            let body = compress_snappy(&buf);
            for cut in 0..body.len() {
                assert!(decompress_snappy(&body[..cut], 1 << 20).is_err(), "snappy cut at {cut}");
            }
        }
    }

    #[test]
    fn mutated_bodies_agree_with_prost() {
        // Without exemplars, histograms and metadata (which prost decodes and this decoder only skips), a mutated
        // body must be accepted by both decoders with the same content, or refused by this one whenever prost
        // refuses it.
        let mut rng = Rng(0xfeed_beef);
        let mut refused = 0;
        for _ in 0..3000 {
            let mut req = random_request(&mut rng);
            req.metadata.clear();
            for ts in &mut req.timeseries {
                ts.exemplars.clear();
                ts.histograms.clear();
            }
            let mut buf = req.encode_to_vec();
            if buf.is_empty() {
                continue;
            }
            for _ in 0..=rng.below(3) {
                let i = rng.below(buf.len() as u64) as usize;
                buf[i] = match rng.below(3) {
                    0 => rng.next() as u8,
                    1 => buf[i] ^ 0x80,
                    _ => 0xff,
                };
            }
            let ours = decode_owned(&buf);
            match pb::WriteRequest::decode(buf.as_slice()) {
                Ok(theirs) if theirs.metadata.is_empty() => {
                    if let Ok((got, _)) = &ours {
                        let want: Owned = theirs
                            .timeseries
                            .iter()
                            .map(|ts| {
                                (
                                    ts.labels.iter().map(|l| (l.name.clone(), l.value.clone())).collect(),
                                    ts.samples.iter().map(|s| (s.timestamp, s.value.to_bits())).collect(),
                                )
                            })
                            .collect();
                        assert_eq!(got, &want);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    refused += 1;
                    // A mutation may create an exemplar, histogram or metadata field, whose content only prost reads.
                    let skipped_only = |s: &WriteStats| s.exemplars + s.histograms + s.metadata > 0;
                    assert!(
                        ours.as_ref().map_or(true, |(_, s)| skipped_only(s)),
                        "prost refused a body this decoder accepted ({e}): {:?}",
                        ours.map(|o| o.1)
                    );
                }
            }
        }
        assert!(refused > 100, "the mutations should break many bodies ({refused})");
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(7);
        for _ in 0..20_000 {
            let len = rng.below(40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = decode_owned(&bytes);
            let _ = decompress_snappy(&bytes, 1 << 16);
        }
    }

    #[test]
    fn errors_name_the_problem_and_offset() {
        // timeseries[0] { labels[0] { name: <invalid UTF-8> } }
        let buf = [0x0a, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0xff];
        let err = decode_owned(&buf).unwrap_err();
        assert_eq!(
            err,
            WireError::Protobuf {
                message: "WriteRequest",
                offset: 6,
                what: "timeseries[0]: labels[0].name is not valid UTF-8".into()
            }
        );
        // Sample.value sent as a varint.
        let buf = [0x0a, 0x04, 0x12, 0x02, 0x08, 0x01];
        let msg = decode_owned(&buf).unwrap_err().to_string();
        assert!(msg.contains("samples[0].value has wire type 0 (varint), expected 1 (64-bit)"), "{msg}");
        assert!(msg.contains("at byte 4"), "{msg}");
        // A group wire type at the top level.
        let msg = decode_owned(&[0x0b]).unwrap_err().to_string();
        assert!(msg.contains("wire type 3"), "{msg}");
        // An over-long varint.
        let msg = decode_owned(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).unwrap_err();
        assert!(msg.to_string().contains("longer than 64 bits"), "{msg}");
        // Field number 0.
        assert!(decode_owned(&[0x02, 0x00]).unwrap_err().to_string().contains("invalid field number 0"));
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let mut buf = Vec::new();
        // Unknown top-level fields: 5 varint, 6 fixed64, 7 len, 8 fixed32.
        buf.extend_from_slice(&[
            0x28, 0x96, 0x01, 0x31, 1, 2, 3, 4, 5, 6, 7, 8, 0x3a, 0x02, 0xaa, 0xbb, 0x45, 1, 2, 3, 4,
        ]);
        let ts = pb::TimeSeries {
            labels: vec![pb::Label { name: "__name__".into(), value: "m".into() }],
            samples: vec![pb::Sample { value: 2.5, timestamp: -5 }],
            ..Default::default()
        };
        let mut inner = ts.encode_to_vec();
        inner.extend_from_slice(&[0x48, 0x01]); // TimeSeries field 9 varint
        buf.push(0x0a);
        prost::encoding::encode_varint(inner.len() as u64, &mut buf);
        buf.extend_from_slice(&inner);
        let (got, stats) = decode_owned(&buf).unwrap();
        assert_eq!((stats.series, stats.unknown_fields), (1, 4));
        assert_eq!(got[0].0, vec![("__name__".to_string(), "m".to_string())]);
        assert_eq!(got[0].1, vec![(-5, 2.5f64.to_bits())]);
    }

    #[test]
    fn visitor_error_stops_the_walk() {
        let body = encode_write_request(&[
            (vec![("__name__".into(), "a".into())], vec![Sample { t: 1, v: 1.0 }]),
            (vec![("__name__".into(), "b".into())], vec![Sample { t: 1, v: 1.0 }]),
        ]);
        let raw = decompress_snappy(&body, 1 << 20).unwrap();
        let mut seen = 0;
        let err = decode_write_request(&raw, |_, _| {
            seen += 1;
            Err(WireError::Rejected("stop".into()))
        })
        .unwrap_err();
        assert_eq!((seen, err), (1, WireError::Rejected("stop".into())));
    }

    #[test]
    fn snappy_limits_and_garbage() {
        let body = compress_snappy(&[7u8; 1000]);
        assert_eq!(decompress_snappy(&body, 1000).unwrap(), vec![7u8; 1000]);
        assert_eq!(decompress_snappy(&body, 999).unwrap_err(), WireError::TooLarge { declared: 1000, max: 999 });
        // The framed (stream) format must be refused.
        let mut framed = snap::write::FrameEncoder::new(Vec::new());
        std::io::Write::write_all(&mut framed, b"hello hello hello").unwrap();
        let framed = framed.into_inner().unwrap();
        assert!(matches!(
            decompress_snappy(&framed, 1 << 20),
            Err(WireError::Snappy(_)) | Err(WireError::TooLarge { .. })
        ));
        assert!(matches!(decompress_snappy(&[0xff, 0xff, 0xff], 1 << 20), Err(WireError::Snappy(_))));
        // Declared 5 bytes, literal of 10.
        assert!(
            decompress_snappy(&[0x05, 0x24, b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h', b'i', b'j'], 100).is_err()
        );
    }

    #[test]
    fn read_request_and_response() {
        let req = pb::ReadRequest {
            queries: vec![pb::Query {
                start_timestamp_ms: 1000,
                end_timestamp_ms: 2000,
                matchers: vec![
                    pb::LabelMatcher { r#type: pb::MatchType::Eq as i32, name: "__name__".into(), value: "up".into() },
                    pb::LabelMatcher { r#type: pb::MatchType::Nre as i32, name: "job".into(), value: "a.*".into() },
                ],
                hints: Some(pb::ReadHints {
                    step_ms: 15_000,
                    func: "rate".into(),
                    range_ms: 300_000,
                    ..Default::default()
                }),
            }],
            accepted_response_types: vec![pb::ResponseType::StreamedXorChunks as i32, pb::ResponseType::Samples as i32],
        };
        let body = compress_snappy(&req.encode_to_vec());
        let got = decode_read_request(&body, 1 << 20).unwrap();
        assert_eq!(got, req);
        assert_eq!(got.queries[0].matchers[1].r#type(), pb::MatchType::Nre);
        // Field numbers: the bytes must match the canonical encoding of matchers (type=1, name=2, value=3).
        let m = pb::LabelMatcher { r#type: 1, name: "a".into(), value: "b".into() }.encode_to_vec();
        assert_eq!(m, vec![0x08, 0x01, 0x12, 0x01, b'a', 0x1a, 0x01, b'b']);
        assert!(decode_read_request(&compress_snappy(&[0x0a, 0x05]), 100).is_err());

        let resp = pb::ReadResponse {
            results: vec![pb::QueryResult {
                timeseries: vec![pb::TimeSeries {
                    labels: vec![pb::Label { name: "__name__".into(), value: "up".into() }],
                    samples: vec![pb::Sample { value: 1.0, timestamp: 1500 }],
                    ..Default::default()
                }],
            }],
        };
        let raw = decompress_snappy(&encode_read_response(&resp), 1 << 20).unwrap();
        assert_eq!(pb::ReadResponse::decode(raw.as_slice()).unwrap(), resp);
        // QueryResult.timeseries is a WriteRequest-compatible field 1, so the borrowed decoder can read it too.
        let qr = resp.results[0].encode_to_vec();
        assert_eq!(decode_owned(&qr).unwrap().1.samples, 1);
    }

    fn l<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        pairs.to_vec()
    }

    #[test]
    fn label_checks() {
        let ok = l(&[("__name__", "up"), ("instance", "a:1"), ("job", "node")]);
        check_labels(&ok, 30, 128, 2048).unwrap();
        let err = |labels: &[(&str, &str)]| check_labels(labels, 3, 16, 8).unwrap_err().to_string();
        assert_eq!(
            err(&l(&[("__name__", "x"), ("1a", "v")])),
            "series {__name__=\"x\",1a=\"v\"}: label name \"1a\" is invalid: it must match [a-zA-Z_][a-zA-Z0-9_]*"
        );
        assert!(err(&l(&[("__name__", "x"), ("", "v")])).contains("empty name"));
        assert!(err(&l(&[("__name__", "x"), ("a", "1"), ("a", "2")])).contains("\"a\" appears more than once"));
        assert!(err(&l(&[("b", "1"), ("__name__", "x"), ("b", "")])).contains("\"b\" appears more than once"));
        assert!(err(&l(&[("job", "x")])).contains("no metric name"));
        assert!(err(&l(&[("__name__", ""), ("job", "x")])).contains("no metric name"));
        assert!(err(&l(&[("__name__", "a.b")])).contains("metric name \"a.b\" is invalid"));
        assert!(err(&l(&[("__name__", "x"), ("a", "1"), ("b", "2"), ("c", "3")])).contains("has 4 labels"));
        assert!(err(&l(&[("__name__", "x"), ("a_very_long_label_name", "1")])).contains("over the limit of 16"));
        assert!(err(&l(&[("__name__", "x"), ("a", "123456789")])).contains("9 bytes long, over the limit of 8"));
        // Empty values do not count towards the limit and are not errors.
        check_labels(&l(&[("__name__", "x"), ("a", "1"), ("b", "2"), ("c", "")]), 3, 16, 8).unwrap();
        // Metric names may contain colons; label names may not.
        check_labels(&l(&[("__name__", "job:rate5m")]), 3, 16, 16).unwrap();
        assert!(err(&l(&[("__name__", "x"), ("a:b", "1")])).contains("invalid"));
        // UTF-8 names when allowed.
        let limits = LabelLimits { max_labels: 3, max_name_len: 32, max_value_len: 32, allow_utf8_names: true };
        check_labels_with(&l(&[("__name__", "my.metric"), ("http.method", "GET")]), &limits).unwrap();
    }

    #[test]
    fn normalize_drops_empty_values_and_sorts() {
        let mut out = Vec::new();
        normalize_labels(&l(&[("job", "a"), ("__name__", "up"), ("env", ""), ("B", "x")]), &mut out);
        assert_eq!(out, l(&[("B", "x"), ("__name__", "up"), ("job", "a")]));
    }

    #[test]
    fn benchmark_shaped_request_decodes() {
        // One TimeSeries per sample, ~10 labels, 2,000 per request, as shared/bench/gen_metrics.py builds them.
        let series: Vec<_> = (0..2000)
            .map(|i| {
                let mut labels = vec![("__name__".to_string(), "node_cpu_seconds_total".to_string())];
                for k in 0..9 {
                    labels.push((format!("label{k}"), format!("value-{i}-{k}")));
                }
                labels.sort();
                (labels, vec![Sample { t: 1_700_000_000_000 + i, v: i as f64 }])
            })
            .collect();
        let raw = decompress_snappy(&encode_write_request(&series), 8 << 20).unwrap();
        let mut n = 0;
        let stats = decode_write_request(&raw, |labels, samples| {
            check_labels(labels, 30, 128, 2048)?;
            assert_eq!(labels.len(), 10);
            n += samples.len();
            Ok(())
        })
        .unwrap();
        assert_eq!((stats.series, stats.samples, n), (2000, 2000, 2000));
    }
}
