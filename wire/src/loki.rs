//! Loki push (`/loki/api/v1/push`): protobuf `PushRequest` with a snappy block body, or JSON
//! `{"streams":[{"stream":{..},"values":[["<ns>","<line>",{structured metadata}]]}]}`. Structured metadata
//! becomes the entry's fields. The messages follow Loki's `pkg/push/push.proto`; they are declared with
//! prost's derive (what prost-build would emit), so no protoc is needed to build Lumen.

use std::borrow::Cow;
use std::fmt;

use prost::Message as _;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use crate::flatten::{BorrowedStr, ScalarText};
use crate::{Decoded, Limits, RejectReason, WireError, body, lossy_utf8};
use store::model::{BatchStream, Labels, LogEntry, is_valid_label_name};

/// Loki's `logproto.PushRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// Loki's `logproto.StreamAdapter`: labels in Prometheus notation and the stream's entries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    /// `{name="value", ...}`. Bytes rather than a string so that invalid UTF-8 is replaced, not fatal.
    #[prost(bytes = "vec", tag = "1")]
    pub labels: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}

/// Loki's `logproto.EntryAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(bytes = "vec", tag = "2")]
    pub line: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
    #[prost(message, repeated, tag = "4")]
    pub parsed: Vec<LabelPairAdapter>,
}

/// Loki's `logproto.LabelPairAdapter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The two bodies the push endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushFormat {
    Protobuf,
    Json,
}

impl PushFormat {
    /// The format for a `Content-Type`, read as Loki reads it: `application/json` (any parameters) is
    /// JSON and everything else is snappy-compressed protobuf — `application/x-protobuf`, no content type
    /// at all, and types Loki does not know (some clients send `application/octet-stream`).
    pub fn from_content_type(content_type: Option<&str>) -> PushFormat {
        match content_type.map(media_type).as_deref() {
            Some("application/json") => PushFormat::Json,
            _ => PushFormat::Protobuf,
        }
    }
}

/// The media type of a `Content-Type` value, lower case, without parameters.
fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// What the push endpoint accepts as `Content-Encoding`.
const LOKI_ENCODINGS: &str = "Loki push takes snappy (protobuf bodies), gzip, deflate, zstd or none";

/// Decodes a whole push request from its `Content-Type`, `Content-Encoding` and body, as Loki reads one
/// (`pkg/loghttp/push/push.go`), so that every shipper that talks to Loki works unchanged:
///
/// - `Content-Encoding: snappy` names the snappy block a protobuf body always is (Vector's `loki` sink
///   sends it; Promtail, Alloy and the Loki Go client send no `Content-Encoding`). On a JSON body, which
///   Loki would fail to parse, the block is decoded when the body is one, else the body is read as it is.
/// - `gzip`, `deflate` and `zstd` are taken off first (Fluent Bit and Vector gzip JSON; a gzipped protobuf
///   body is a gzipped snappy block, as for Loki).
/// - Any other encoding fails the request ([`WireError::UnsupportedEncoding`]).
///
/// # Errors
/// As [`decode`], plus the encoding errors of [`body::decode`]; nothing of a failed request is stored.
pub fn decode_request(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: bytes::Bytes,
    limits: Limits,
    received_ns: i64,
) -> Result<Decoded, WireError> {
    let format = PushFormat::from_content_type(content_type);
    let encoding = content_encoding.map(|e| e.trim().to_ascii_lowercase());
    let body = match encoding.as_deref() {
        Some("snappy") => {
            if body.len() > limits.max_body_bytes {
                return Err(WireError::BodyTooLarge { limit: limits.max_body_bytes, decompressed: false });
            }
            match format {
                PushFormat::Protobuf => body,
                PushFormat::Json => match body::snappy_block(&body, limits.max_body_bytes) {
                    Ok(raw) => bytes::Bytes::from(raw),
                    Err(e @ WireError::BodyTooLarge { .. }) => return Err(e),
                    Err(_) => body,
                },
            }
        }
        other => body::decode(other, body, limits.max_body_bytes).map_err(|e| match e {
            WireError::UnsupportedEncoding { encoding, .. } => {
                WireError::UnsupportedEncoding { encoding, expected: LOKI_ENCODINGS }
            }
            e => e,
        })?,
    };
    decode(format, &body, limits, received_ns).map_err(|e| match (e, content_type.map(media_type)) {
        // A type Loki does not know is read as protobuf; say so when that reading fails.
        (WireError::Compression { encoding: "snappy", reason }, Some(ct))
            if !matches!(ct.as_str(), "" | "application/x-protobuf" | "application/protobuf") =>
        {
            WireError::Compression {
                encoding: "snappy",
                reason: format!(
                    "{reason} (a body of Content-Type {ct:?} is read as snappy-compressed protobuf, as Loki \
                     reads every type but application/json; send JSON as application/json)"
                ),
            }
        }
        (e, _) => e,
    })
}

/// Decodes a push body (already stripped of its `Content-Encoding`).
///
/// # Errors
/// Malformed protobuf, snappy or JSON, an invalid label set, too many labels or a bad timestamp fail the
/// whole request: nothing of it is stored.
pub fn decode(format: PushFormat, body: &[u8], limits: Limits, received_ns: i64) -> Result<Decoded, WireError> {
    match format {
        PushFormat::Protobuf => decode_protobuf(body, limits, received_ns),
        PushFormat::Json => decode_json(body, limits, received_ns),
    }
}

fn decode_protobuf(body: &[u8], limits: Limits, received_ns: i64) -> Result<Decoded, WireError> {
    let raw = body::snappy_block(body, limits.max_body_bytes)?;
    let req = PushRequest::decode(&raw[..]).map_err(|e| WireError::Protobuf { reason: e.to_string() })?;
    let mut out = Decoded::default();
    let mut invalid = false;
    for (i, stream) in req.streams.into_iter().enumerate() {
        let text = lossy_utf8(&stream.labels, &mut invalid);
        let pairs = parse_label_set(&text).map_err(|reason| WireError::Labels {
            stream: i,
            labels: text.to_string(),
            reason,
        })?;
        let stream_ix = add_stream(&mut out, i, pairs, &text, limits)?;
        for entry in stream.entries {
            let time_ns = match entry.timestamp {
                // Saturating: a time past what i64 nanoseconds hold is rejected as out of the window,
                // never wrapped around into another time.
                Some(ts) if ts.seconds != 0 || ts.nanos != 0 => {
                    ts.seconds.saturating_mul(1_000_000_000).saturating_add(i64::from(ts.nanos))
                }
                _ => received_ns,
            };
            let line = lossy_utf8(&entry.line, &mut invalid).into_owned();
            let fields = entry
                .structured_metadata
                .iter()
                .map(|p| {
                    (lossy_utf8(&p.name, &mut invalid).into_owned(), lossy_utf8(&p.value, &mut invalid).into_owned())
                })
                .collect();
            push_entry(&mut out, stream_ix, time_ns, line, fields, limits);
        }
    }
    out.invalid_utf8 = invalid;
    Ok(out)
}

#[derive(Deserialize)]
struct PushJson<'a> {
    #[serde(borrow, default)]
    streams: Vec<StreamJson<'a>>,
}

#[derive(Deserialize)]
struct StreamJson<'a> {
    #[serde(borrow, default)]
    stream: LabelMap<'a>,
    #[serde(borrow, default)]
    values: Vec<EntryJson<'a>>,
}

/// `["<ns>", "<line>"]` or `["<ns>", "<line>", {"name": "value"}]`.
struct EntryJson<'a> {
    ts: Cow<'a, str>,
    line: Cow<'a, str>,
    metadata: Vec<(String, String)>,
}

impl<'de: 'a, 'a> Deserialize<'de> for EntryJson<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = EntryJson<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an entry [\"<unix ns>\", \"<line>\"] with optional structured metadata")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let ts: ScalarText<'a> = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let BorrowedStr(line): BorrowedStr<'a> =
                    seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let metadata: Option<Vec<(String, ScalarText<'a>)>> =
                    seq.next_element::<Option<MapAsPairs<'a>>>()?.flatten().map(|m| m.0);
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(4, &self));
                }
                let metadata = metadata
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| v.0.map(|v| (k, v.into_owned())))
                    .collect();
                Ok(EntryJson { ts: ts.0.unwrap_or(Cow::Borrowed("")), line, metadata })
            }
        }
        deserializer.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// A JSON object of label names to string values.
#[derive(Default)]
struct LabelMap<'a>(Vec<(BorrowedStr<'a>, BorrowedStr<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for LabelMap<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = LabelMap<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of label names to string values")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = map.next_entry::<BorrowedStr<'a>, BorrowedStr<'a>>()? {
                    out.push(pair);
                }
                Ok(LabelMap(out))
            }
        }
        deserializer.deserialize_map(V(std::marker::PhantomData))
    }
}

struct MapAsPairs<'a>(Vec<(String, ScalarText<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for MapAsPairs<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = MapAsPairs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of structured metadata")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((BorrowedStr(k), v)) = map.next_entry::<BorrowedStr<'a>, ScalarText<'a>>()? {
                    out.push((k.into_owned(), v));
                }
                Ok(MapAsPairs(out))
            }
        }
        deserializer.deserialize_map(V(std::marker::PhantomData))
    }
}

fn decode_json(body: &[u8], limits: Limits, received_ns: i64) -> Result<Decoded, WireError> {
    let mut invalid = false;
    let text = lossy_utf8(body, &mut invalid);
    let req: PushJson<'_> = serde_json::from_str(&text).map_err(|e| WireError::Json {
        line: e.line(),
        column: e.column(),
        reason: e.to_string(),
    })?;
    let mut out = Decoded::default();
    for (i, stream) in req.streams.into_iter().enumerate() {
        let pairs: Vec<(String, String)> =
            stream.stream.0.into_iter().map(|(k, v)| (k.0.into_owned(), v.0.into_owned())).collect();
        let shown = || format!("{}", Labels::from_pairs(pairs.clone()));
        for (name, _) in &pairs {
            if !is_valid_label_name(name) {
                return Err(WireError::Labels {
                    stream: i,
                    labels: shown(),
                    reason: format!("invalid label name {name:?}"),
                });
            }
        }
        let stream_ix = add_stream(&mut out, i, pairs.clone(), &shown(), limits)?;
        for (j, entry) in stream.values.into_iter().enumerate() {
            let time_ns = match entry.ts.parse::<i64>() {
                Ok(0) => received_ns,
                Ok(ns) => ns,
                Err(_) => {
                    return Err(WireError::Timestamp {
                        location: format!("stream {i}, entry {j}"),
                        value: entry.ts.into_owned(),
                        reason: "expected Unix epoch nanoseconds as a string",
                    });
                }
            };
            push_entry(&mut out, stream_ix, time_ns, entry.line.into_owned(), entry.metadata, limits);
        }
    }
    out.invalid_utf8 = invalid;
    Ok(out)
}

fn add_stream(
    out: &mut Decoded,
    i: usize,
    pairs: Vec<(String, String)>,
    shown: &str,
    limits: Limits,
) -> Result<u32, WireError> {
    if let Some(reason) = crate::label_set_problem(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))) {
        return Err(WireError::Labels { stream: i, labels: crate::shorten(shown, 256), reason });
    }
    let labels = Labels::from_pairs(pairs);
    if labels.is_empty() {
        return Err(WireError::Labels {
            stream: i,
            labels: shown.to_string(),
            reason: "a stream needs at least one label with a non-empty value".to_string(),
        });
    }
    if labels.len() > limits.max_labels {
        return Err(WireError::TooManyLabels { stream: i, count: labels.len(), limit: limits.max_labels });
    }
    let id = labels.stream_id();
    if let Some(ix) = out.batch.streams.iter().position(|s| s.id == id) {
        return Ok(ix as u32);
    }
    out.batch.streams.push(BatchStream { id, labels });
    Ok((out.batch.streams.len() - 1) as u32)
}

fn push_entry(
    out: &mut Decoded,
    stream: u32,
    time_ns: i64,
    line: String,
    fields: Vec<(String, String)>,
    limits: Limits,
) {
    let index = out.total;
    out.total += 1;
    if line.len() > limits.max_line_bytes {
        let reason = RejectReason::LineTooLong { bytes: line.len(), limit: limits.max_line_bytes };
        out.reject(index, line.len(), reason);
        return;
    }
    if let Some(reason) = limits.check_time(time_ns).or_else(|| limits.check_fields(&fields)) {
        out.reject(index, line.len(), reason);
        return;
    }
    out.batch.entries.push(LogEntry { stream, time_ns, line, fields });
}

/// Parses a label set in Prometheus notation, `{a="b", c="d"}`, with Go string escapes in values.
///
/// # Errors
/// A description of what is wrong and at which byte.
pub fn parse_label_set(s: &str) -> Result<Vec<(String, String)>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if b.get(i) != Some(&b'{') {
        return Err(format!("expected '{{' at byte {i}"));
    }
    i += 1;
    let mut out = Vec::new();
    loop {
        skip_ws(&mut i);
        if b.get(i) == Some(&b'}') {
            i += 1;
            break;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let name = &s[start..i];
        if !is_valid_label_name(name) {
            return Err(format!("invalid label name {name:?} at byte {start}"));
        }
        skip_ws(&mut i);
        if b.get(i) != Some(&b'=') {
            return Err(format!("expected '=' after label {name:?} at byte {i}"));
        }
        i += 1;
        skip_ws(&mut i);
        if b.get(i) != Some(&b'"') {
            return Err(format!("expected '\"' to open the value of {name:?} at byte {i}"));
        }
        i += 1;
        let mut value = String::new();
        loop {
            let Some(&c) = b.get(i) else {
                return Err(format!("unterminated value of label {name:?}"));
            };
            match c {
                b'"' => {
                    i += 1;
                    break;
                }
                b'\\' => {
                    let esc = b.get(i + 1).copied();
                    let unescaped = match esc {
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        Some(b'r') => '\r',
                        Some(b'\\') => '\\',
                        Some(b'"') => '"',
                        Some(b'\'') => '\'',
                        None => return Err(format!("unterminated value of label {name:?}")),
                        // Vector's loki sink writes label values without escaping them, so a Windows path
                        // arrives as `C:\logs`: an escape that means nothing is kept as written rather
                        // than failing the whole request.
                        Some(_) => {
                            value.push('\\');
                            i += 1;
                            continue;
                        }
                    };
                    value.push(unescaped);
                    i += 2;
                }
                _ => {
                    let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
                    value.push_str(&s[i..i + ch_len]);
                    i += ch_len;
                }
            }
        }
        out.push((name.to_string(), value));
        skip_ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => {
                i += 1;
                break;
            }
            _ => return Err(format!("expected ',' or '}}' at byte {i}")),
        }
    }
    skip_ws(&mut i);
    if i != b.len() {
        return Err(format!("unexpected text after '}}' at byte {i}"));
    }
    Ok(out)
}

/// Encodes a push request as Loki clients send it: protobuf, then a snappy block. Used by tests, benches
/// and, later, the agent's Loki sink.
pub fn encode_protobuf(req: &PushRequest) -> Vec<u8> {
    let raw = req.encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&raw).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets() {
        assert_eq!(
            parse_label_set(r#"{app="api", pod = "a\"b\\c"}"#).unwrap(),
            vec![("app".to_string(), "api".to_string()), ("pod".to_string(), "a\"b\\c".to_string())]
        );
        assert_eq!(parse_label_set("{}").unwrap(), vec![]);
        assert!(parse_label_set(r#"{1a="x"}"#).unwrap_err().contains("invalid label name"));
        assert!(parse_label_set(r#"{a="x""#).unwrap_err().contains("expected ','"));
        assert!(parse_label_set(r#"{a="x"} tail"#).is_err());
        // An escape that means nothing is kept as written (Vector does not escape label values).
        assert_eq!(
            parse_label_set(r#"{file="C:\logs\app.log"}"#).unwrap(),
            vec![("file".to_string(), r"C:\logs\app.log".to_string())]
        );
        assert!(parse_label_set(r#"{a="x\"#).is_err());
    }

    /// A label name used twice, or a label over the size limits, fails the request with a short message.
    #[test]
    fn duplicate_and_oversized_labels_are_refused() {
        let dup = r#"{"streams":[{"stream":{"app":"a"},"values":[["1","x"]]}]}"#
            .replace(r#""app":"a""#, r#""app":"a","app":"b""#);
        let e = decode(PushFormat::Json, dup.as_bytes(), Limits::default(), 0).unwrap_err();
        assert!(e.to_string().contains("label name \"app\" appears more than once"), "{e}");
        let req = PushRequest {
            streams: vec![StreamAdapter { labels: br#"{app="a", app="b"}"#.to_vec(), entries: vec![], hash: 0 }],
        };
        let e = decode(PushFormat::Protobuf, &encode_protobuf(&req), Limits::default(), 0).unwrap_err();
        assert!(e.to_string().contains("appears more than once"), "{e}");
        let big = "v".repeat(crate::MAX_LABEL_VALUE_BYTES + 1);
        let body = format!(r#"{{"streams":[{{"stream":{{"app":"{big}"}},"values":[["1","x"]]}}]}}"#);
        let e = decode(PushFormat::Json, body.as_bytes(), Limits::default(), 0).unwrap_err().to_string();
        assert!(e.contains("more than the limit of 65536 bytes"), "{e}");
        assert!(e.len() < 1000, "the error repeats the label: {} bytes", e.len());
    }

    /// A protobuf timestamp past what i64 nanoseconds hold is rejected as out of the window, not wrapped.
    #[test]
    fn overflowing_protobuf_timestamps_are_rejected_not_wrapped() {
        let entry = |seconds: i64| EntryAdapter {
            timestamp: Some(Timestamp { seconds, nanos: 999_999_999 }),
            line: b"x".to_vec(),
            structured_metadata: vec![],
            parsed: vec![],
        };
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: br#"{app="api"}"#.to_vec(),
                entries: vec![
                    entry(i64::MAX / 1_000_000_000 + 1),
                    entry(i64::MIN / 1_000_000_000 - 1),
                    entry(1_700_000_000),
                ],
                hash: 0,
            }],
        };
        let limits = Limits { oldest_ns: 0, newest_ns: 2_000_000_000_000_000_000, ..Limits::default() };
        let d = decode(PushFormat::Protobuf, &encode_protobuf(&req), limits, 0).unwrap();
        assert_eq!(d.batch.entries.len(), 1);
        assert_eq!(d.batch.entries[0].time_ns, 1_700_000_000_999_999_999);
        assert!(matches!(d.rejected[0].reason, RejectReason::TooNew { .. }), "{:?}", d.rejected);
        assert!(matches!(d.rejected[1].reason, RejectReason::TooOld { .. }), "{:?}", d.rejected);
    }

    /// Every `Content-Type` × `Content-Encoding` pair that a shipper sends, and the odd ones, read as Loki
    /// reads them.
    #[test]
    fn request_headers_as_loki_reads_them() {
        use std::io::Write as _;
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: br#"{app="api"}"#.to_vec(),
                entries: vec![EntryAdapter {
                    timestamp: Some(Timestamp { seconds: 1, nanos: 5 }),
                    line: b"hello".to_vec(),
                    structured_metadata: vec![],
                    parsed: vec![],
                }],
                hash: 0,
            }],
        };
        let proto = bytes::Bytes::from(encode_protobuf(&req));
        let json =
            bytes::Bytes::from_static(br#"{"streams":[{"stream":{"app":"api"},"values":[["1000000005","hello"]]}]}"#);
        let gzip = |b: &[u8]| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(b).unwrap();
            bytes::Bytes::from(gz.finish().unwrap())
        };
        let snappy = |b: &[u8]| bytes::Bytes::from(snap::raw::Encoder::new().compress_vec(b).unwrap());
        let ok = |ct: Option<&str>, ce: Option<&str>, body: bytes::Bytes| {
            let d = decode_request(ct, ce, body, Limits::default(), 0).unwrap_or_else(|e| panic!("{ct:?} {ce:?}: {e}"));
            assert_eq!(d.batch.entries.len(), 1, "{ct:?} {ce:?}");
            assert_eq!(d.batch.entries[0].line, "hello");
            assert_eq!(d.batch.entries[0].time_ns, 1_000_000_005);
        };
        // Vector's loki sink (default compression): protobuf with Content-Encoding: snappy.
        ok(Some("application/x-protobuf"), Some("snappy"), proto.clone());
        ok(Some("application/x-protobuf"), Some("Snappy"), proto.clone());
        // Promtail, Alloy, the Loki Go client: no Content-Encoding.
        ok(Some("application/x-protobuf"), None, proto.clone());
        // No content type, or one Loki does not know: protobuf, as Loki reads it.
        ok(None, None, proto.clone());
        ok(Some("application/octet-stream"), None, proto.clone());
        // A gzipped protobuf body is a gzipped snappy block.
        ok(Some("application/x-protobuf"), Some("gzip"), gzip(&proto));
        // Fluent Bit and Vector with gzip: JSON, gzipped or not; deflate and zstd too.
        ok(Some("application/json"), None, json.clone());
        ok(Some("application/json; charset=utf-8"), Some("gzip"), gzip(&json));
        ok(Some("application/json"), Some("zstd"), bytes::Bytes::from(zstd::encode_all(&json[..], 1).unwrap()));
        // JSON named snappy: decoded when it is a snappy block, read as it is when it is not.
        ok(Some("application/json"), Some("snappy"), snappy(&json));
        ok(Some("application/json"), Some("snappy"), json.clone());

        // An encoding nobody supports.
        let e = decode_request(Some("application/json"), Some("br"), json.clone(), Limits::default(), 0).unwrap_err();
        assert!(matches!(&e, WireError::UnsupportedEncoding { encoding, .. } if encoding == "br"), "{e}");
        assert!(e.to_string().contains("snappy (protobuf bodies), gzip"), "{e}");
        // JSON under a type Loki reads as protobuf: the error says how it was read.
        let e = decode_request(Some("text/plain"), None, json.clone(), Limits::default(), 0).unwrap_err();
        assert!(e.to_string().contains("Content-Type \"text/plain\" is read as snappy-compressed protobuf"), "{e}");
        // A protobuf body sent without its snappy block.
        let e = decode_request(
            Some("application/x-protobuf"),
            Some("snappy"),
            req.encode_to_vec().into(),
            Limits::default(),
            0,
        );
        assert!(e.is_err());
        // Size limits hold on the snappy path, compressed and decompressed.
        let small = Limits { max_body_bytes: 200, ..Limits::default() };
        let big = bytes::Bytes::from(vec![b'x'; 300]);
        let e = decode_request(Some("application/x-protobuf"), Some("snappy"), big, small, 0).unwrap_err();
        assert_eq!(e, WireError::BodyTooLarge { limit: 200, decompressed: false });
        let bomb = snappy(&[b' '; 3000]);
        assert!(bomb.len() < 200, "{}", bomb.len());
        let e = decode_request(Some("application/json"), Some("snappy"), bomb.clone(), small, 0).unwrap_err();
        assert_eq!(e, WireError::BodyTooLarge { limit: 200, decompressed: true });
        let e = decode_request(Some("application/x-protobuf"), Some("snappy"), bomb, small, 0).unwrap_err();
        assert_eq!(e, WireError::BodyTooLarge { limit: 200, decompressed: true });
    }

    #[test]
    fn json_push_with_metadata() {
        let body =
            r#"{"streams":[{"stream":{"app":"api"},"values":[["1000","one"],["2000","two",{"trace_id":"abc"}]]}]}"#;
        let d = decode(PushFormat::Json, body.as_bytes(), Limits::default(), 0).unwrap();
        assert_eq!(d.batch.entries.len(), 2);
        assert_eq!(d.batch.entries[1].time_ns, 2000);
        assert_eq!(d.batch.entries[1].fields, vec![("trace_id".to_string(), "abc".to_string())]);
        let bad = r#"{"streams":[{"stream":{"app":"api"},"values":[["x","one"]]}]}"#;
        assert!(matches!(
            decode(PushFormat::Json, bad.as_bytes(), Limits::default(), 0),
            Err(WireError::Timestamp { .. })
        ));
        let bad = r#"{"streams":[{"stream":{"a-b":"api"},"values":[]}]}"#;
        assert!(matches!(
            decode(PushFormat::Json, bad.as_bytes(), Limits::default(), 0),
            Err(WireError::Labels { .. })
        ));
    }

    #[test]
    fn protobuf_push_round_trip() {
        let req = PushRequest {
            streams: vec![StreamAdapter {
                labels: br#"{job="x", host="h"}"#.to_vec(),
                entries: vec![EntryAdapter {
                    timestamp: Some(Timestamp { seconds: 1, nanos: 5 }),
                    line: b"hello \xff".to_vec(),
                    structured_metadata: vec![LabelPairAdapter { name: b"k".to_vec(), value: b"v".to_vec() }],
                    parsed: vec![],
                }],
                hash: 0,
            }],
        };
        let d = decode(PushFormat::Protobuf, &encode_protobuf(&req), Limits::default(), 0).unwrap();
        assert!(d.invalid_utf8);
        assert_eq!(d.batch.entries[0].time_ns, 1_000_000_005);
        assert_eq!(d.batch.entries[0].line, "hello \u{fffd}");
        assert_eq!(d.batch.streams[0].labels.to_string(), r#"{host="h", job="x"}"#);
        assert!(matches!(
            decode(PushFormat::Protobuf, b"garbage", Limits::default(), 0),
            Err(WireError::Compression { encoding: "snappy", .. })
        ));
    }
}
