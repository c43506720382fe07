//! JSON lines (`/insert/jsonline`): one JSON object per line. Nested objects are flattened with dots;
//! `_time` and `_msg` name the time and the message unless the request says otherwise; the fields named
//! in `_stream_fields` become the stream's labels and every other field a structured field.

use std::collections::HashMap;

use crate::flatten::{Pair, flatten_object};
use crate::{Decoded, FieldMapping, Limits, RejectReason, WireError, lossy_utf8};
use store::model::{BatchStream, Labels, LogEntry, sanitize_label_name, stream_id_of};
use store::time::{epoch_auto_ns, parse_rfc3339_ns};

/// Decodes a JSON-lines body. Blank lines are skipped.
///
/// # Errors
/// A line that is not a JSON object, or whose time field cannot be read, fails the whole request with
/// its line number, so that nothing of a malformed request is stored.
pub fn decode(body: &[u8], mapping: &FieldMapping, limits: Limits, received_ns: i64) -> Result<Decoded, WireError> {
    let mut sink = DocSink::new(mapping, limits, received_ns);
    let mut invalid_utf8 = false;
    let text = lossy_utf8(body, &mut invalid_utf8);
    // The pairs borrow from `text`, which outlives the loop, so one vector serves every line.
    let mut pairs: Vec<Pair<'_>> = Vec::with_capacity(16);
    for (n, line) in text.split('\n').enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let index = sink.decoded.total;
        sink.decoded.total += 1;
        pairs.clear();
        flatten_object(line, &mut pairs).map_err(|e| WireError::Json {
            line: n + 1,
            column: e.column(),
            reason: e.to_string(),
        })?;
        sink.add(index, &mut pairs, || format!("line {}", n + 1))?;
    }
    sink.decoded.invalid_utf8 = invalid_utf8;
    Ok(sink.decoded)
}

/// Turns flattened JSON documents into entries of one batch; shared with the bulk decoder.
pub(crate) struct DocSink<'m> {
    mapping: &'m FieldMapping,
    limits: Limits,
    received_ns: i64,
    /// Sanitized label names of the stream fields, in the mapping's order.
    label_names: Vec<String>,
    streams: HashMap<u64, u32>,
    pub(crate) decoded: Decoded,
}

impl<'m> DocSink<'m> {
    pub(crate) fn new(mapping: &'m FieldMapping, limits: Limits, received_ns: i64) -> DocSink<'m> {
        DocSink {
            mapping,
            limits,
            received_ns,
            label_names: mapping.stream_fields.iter().map(|f| sanitize_label_name(f)).collect(),
            streams: HashMap::new(),
            decoded: Decoded::default(),
        }
    }

    /// Adds one document as an entry, or as a rejection when its line is too long.
    pub(crate) fn add(
        &mut self,
        index: usize,
        pairs: &mut Vec<Pair<'_>>,
        location: impl Fn() -> String,
    ) -> Result<(), WireError> {
        let mapping = self.mapping;
        let mut time_ns = None;
        if let Some((pos, value)) = first_named(pairs, &mapping.time_fields, |_| true) {
            time_ns = parse_time(value).map_err(|reason| WireError::Timestamp {
                location: location(),
                value: value.to_string(),
                reason,
            })?;
            pairs.swap_remove(pos);
        }
        let line = match first_named(pairs, &mapping.msg_fields, |v| !v.is_empty()) {
            Some((pos, _)) => pairs.swap_remove(pos).1.into_owned(),
            None => String::new(),
        };
        if line.len() > self.limits.max_line_bytes {
            let reason = RejectReason::LineTooLong { bytes: line.len(), limit: self.limits.max_line_bytes };
            self.decoded.reject(index, line.len(), reason);
            return Ok(());
        }
        if let Some(reason) = self.limits.check_time(time_ns.unwrap_or(self.received_ns)) {
            self.decoded.reject(index, line.len(), reason);
            return Ok(());
        }

        // Stream labels, sorted by name, hashed before anything is allocated for them.
        let mut labels: Vec<(&str, usize)> = Vec::with_capacity(self.label_names.len());
        for (field, label) in mapping.stream_fields.iter().zip(&self.label_names) {
            if let Some(pos) = pairs.iter().position(|(k, v)| k == field && !v.is_empty()) {
                labels.push((label.as_str(), pos));
            }
        }
        labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
        labels.dedup_by(|a, b| a.0 == b.0);
        let id = stream_id_of(labels.iter().map(|&(name, pos)| (name, pairs[pos].1.as_ref())));
        let stream = match self.streams.get(&id.0) {
            Some(&i) => i,
            None => {
                let named = labels.iter().map(|&(name, pos)| (name, pairs[pos].1.as_ref()));
                if let Some(reason) = crate::label_set_problem(named) {
                    return Err(WireError::Labels {
                        stream: self.streams.len(),
                        labels: crate::shorten(&labels.iter().map(|l| l.0).collect::<Vec<_>>().join(","), 256),
                        reason,
                    });
                }
                if labels.len() > self.limits.max_labels {
                    return Err(WireError::TooManyLabels {
                        stream: self.streams.len(),
                        count: labels.len(),
                        limit: self.limits.max_labels,
                    });
                }
                let owned = labels.iter().map(|&(n, pos)| (n.to_string(), pairs[pos].1.to_string())).collect();
                let labels = Labels::from_pairs(owned);
                let i = self.decoded.batch.streams.len() as u32;
                self.decoded.batch.streams.push(BatchStream { id, labels });
                self.streams.insert(id.0, i);
                i
            }
        };

        let fields: Vec<(String, String)> = pairs
            .drain(..)
            .filter(|(k, v)| !v.is_empty() && !mapping.stream_fields.iter().any(|f| f == k) && !mapping.ignored(k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some(reason) = self.limits.check_fields(&fields) {
            self.decoded.reject(index, line.len(), reason);
            return Ok(());
        }
        self.decoded.batch.entries.push(LogEntry {
            stream,
            time_ns: time_ns.unwrap_or(self.received_ns),
            line,
            fields,
        });
        Ok(())
    }
}

/// The first pair, in the order of `names`, whose name matches and whose value passes `accept`.
fn first_named<'p, 'de>(
    pairs: &'p [Pair<'de>],
    names: &[String],
    accept: impl Fn(&str) -> bool,
) -> Option<(usize, &'p str)> {
    names
        .iter()
        .find_map(|name| pairs.iter().position(|(k, v)| k == name && accept(v)).map(|pos| (pos, pairs[pos].1.as_ref())))
}

/// A time value: RFC 3339, or an epoch number in s, ms, µs or ns by magnitude. Empty, `0` and `-` mean
/// "use the time of receipt" (`Ok(None)`).
pub(crate) fn parse_time(value: &str) -> Result<Option<i64>, &'static str> {
    let value = value.trim();
    if value.is_empty() || value == "0" || value == "-" {
        return Ok(None);
    }
    if value.bytes().all(|c| c.is_ascii_digit()) {
        return value
            .parse::<i64>()
            .ok()
            .and_then(store::time::epoch_auto_ns_int)
            .map(Some)
            .ok_or("epoch number out of range");
    }
    if let Ok(v) = value.parse::<f64>() {
        return epoch_auto_ns(v).map(Some).ok_or("epoch number out of range");
    }
    parse_rfc3339_ns(value).map(Some).ok_or("expected RFC 3339 or a Unix epoch number")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(stream: &str) -> FieldMapping {
        FieldMapping::from_params(None, None, Some(stream), None, "_time", "_msg")
    }

    /// An entry with more fields than the limit, or fields longer than a line may be, is rejected alone;
    /// the others are stored.
    #[test]
    fn too_many_or_too_long_fields_reject_the_entry() {
        let many: serde_json::Map<String, serde_json::Value> =
            (0..1001).map(|i| (format!("f{i}"), serde_json::json!("v"))).collect();
        let mut many = serde_json::Value::Object(many);
        many["_msg"] = serde_json::json!("many");
        let long = serde_json::json!({"_msg": "long", "big": "x".repeat(300)});
        let body = format!("{{\"_msg\":\"ok\",\"a\":\"b\"}}\n{many}\n{long}\n");
        let limits = Limits { max_field_bytes: 256, ..Limits::default() };
        let d = decode(body.as_bytes(), &mapping(""), limits, 1).unwrap();
        assert_eq!(d.batch.entries.len(), 1);
        assert_eq!(d.batch.entries[0].line, "ok");
        assert!(matches!(d.rejected[0].reason, RejectReason::TooManyFields { count: 1001, limit: 1000 }));
        assert!(matches!(d.rejected[1].reason, RejectReason::FieldsTooLong { bytes: 303, limit: 256 }));
    }

    #[test]
    fn decodes_lines_into_streams_and_fields() {
        let body = concat!(
            r#"{"_time":"2024-01-01T00:00:00Z","_msg":"hello","app":"api","pod":"p1","user":{"id":7}}"#,
            "\n\n",
            r#"{"_time":1704067201,"_msg":"world","app":"api","pod":"p1"}"#,
            "\n",
            r#"{"_msg":"other","app":"web"}"#,
            "\n"
        );
        let d = decode(body.as_bytes(), &mapping("app,pod"), Limits::default(), 42).unwrap();
        assert_eq!(d.total, 3);
        assert_eq!(d.batch.streams.len(), 2);
        assert_eq!(d.batch.streams[0].labels.to_string(), r#"{app="api", pod="p1"}"#);
        let e = &d.batch.entries;
        assert_eq!(e[0].time_ns, 1_704_067_200_000_000_000);
        assert_eq!(e[0].fields, vec![("user.id".to_string(), "7".to_string())]);
        assert_eq!(e[1].time_ns, 1_704_067_201_000_000_000);
        assert_eq!((e[1].stream, e[2].stream), (0, 1));
        assert_eq!(e[2].time_ns, 42);
        assert_eq!(e[2].line, "other");
    }

    #[test]
    fn malformed_line_fails_the_request_with_its_position() {
        let body = "{\"_msg\":\"ok\"}\n{\"_msg\": nope}\n";
        let err = decode(body.as_bytes(), &mapping(""), Limits::default(), 0).unwrap_err();
        assert!(matches!(err, WireError::Json { line: 2, column: 11, .. }), "{err:?}");
        let err = decode(b"{\"_time\":\"yesterday\"}", &mapping(""), Limits::default(), 0).unwrap_err();
        assert!(err.to_string().contains("line 1: invalid timestamp \"yesterday\""), "{err}");
    }

    #[test]
    fn long_lines_are_rejected_alone() {
        let limits = Limits { max_line_bytes: 5, ..Limits::default() };
        let body = "{\"_msg\":\"short\"}\n{\"_msg\":\"too long\"}\n";
        let d = decode(body.as_bytes(), &mapping(""), limits, 0).unwrap();
        assert_eq!(d.batch.entries.len(), 1);
        assert_eq!(d.rejected.len(), 1);
        assert_eq!(d.rejected[0].index, 1);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let body = b"{\"_msg\":\"a\xffb\"}";
        let d = decode(body, &mapping(""), Limits::default(), 0).unwrap();
        assert!(d.invalid_utf8);
        assert_eq!(d.batch.entries[0].line, "a\u{fffd}b");
    }
}
