//! JSON payloads: an object is one reading, an array of objects one reading per object.
//!
//! Every numeric field of a reading is a sample of the series named after the field (booleans are 0 and 1):
//! nested objects are flattened with `_` (`{"env":{"temp":1}}` gives `env_temp`), array elements get their
//! index (`{"v":[1,2]}` gives `v_0` and `v_1`), and names are made valid Prometheus metric names. Strings and
//! nulls are not samples. A top-level `ts`, `timestamp` or `time` field is the reading's time (an epoch number
//! whose unit is told by its magnitude, or an RFC 3339 string) and not a sample; without one the reading is
//! timed at reception.

use serde_json::{Map, Value};
use store::time::{epoch_auto_ns, epoch_auto_ns_int, parse_rfc3339_ns};

use super::{Kind, Out, Outcome, push_metric_name};

/// Top-level fields that give a reading's time, in order of preference.
const TIME_FIELDS: [&str; 3] = ["ts", "timestamp", "time"];

/// True when the first non-whitespace byte opens an object or an array.
pub(super) fn looks_like_json(payload: &[u8]) -> bool {
    matches!(payload.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['))
}

/// Decodes a JSON payload into samples and one log entry (line = the payload as received).
pub(super) fn decode(text: &str, out: &mut Out<'_>) -> Outcome {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return out.garbage(text.as_bytes(), "invalid_json", describe_error(&e)),
    };
    let readings = match &value {
        Value::Object(_) => std::slice::from_ref(&value),
        Value::Array(items) => items.as_slice(),
        other => {
            let detail = format!("expected a JSON object or an array of objects, found {}", kind_of(other));
            return out.garbage(text.as_bytes(), "not_an_object", detail);
        }
    };
    if let Some((i, other)) = readings.iter().enumerate().find(|(_, v)| !v.is_object()) {
        let detail = format!("element {i} of the JSON array is {}, expected an object", kind_of(other));
        return out.garbage(text.as_bytes(), "not_an_object", detail);
    }
    let mut name = out.take_name();
    let mut first_t_ns = None;
    for reading in readings.iter().filter_map(Value::as_object) {
        let t_ns = reading_time_ns(reading).unwrap_or(out.received_ns);
        first_t_ns.get_or_insert(t_ns);
        emit_reading(reading, t_ns.div_euclid(1_000_000), &mut name, out);
    }
    out.put_name(name);
    out.log(first_t_ns.unwrap_or(out.received_ns), text, &[]);
    Outcome::Decoded(Kind::Json)
}

/// `serde_json`'s message, rephrased as "invalid JSON at line L column C: what".
fn describe_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let what = full.strip_suffix(&position).unwrap_or(&full);
    format!("invalid JSON{position}: {what}")
}

/// "a number", "a string", ... for error messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The time of a reading from its first usable time field, ns since the epoch.
fn reading_time_ns(reading: &Map<String, Value>) -> Option<i64> {
    TIME_FIELDS.iter().filter_map(|k| reading.get(*k)).find_map(time_ns)
}

/// An epoch number (unit by magnitude) or an RFC 3339 string as ns since the epoch.
fn time_ns(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => epoch_auto_ns_int(i),
            (None, Some(u)) => i64::try_from(u).ok().and_then(epoch_auto_ns_int),
            (None, None) => n.as_f64().and_then(epoch_auto_ns),
        },
        Value::String(s) => parse_rfc3339_ns(s),
        _ => None,
    }
}

/// Emits the samples of one reading (its time fields excluded).
fn emit_reading(reading: &Map<String, Value>, t_ms: i64, name: &mut String, out: &mut Out<'_>) {
    for (key, value) in reading {
        if TIME_FIELDS.contains(&key.as_str()) {
            continue;
        }
        name.clear();
        push_metric_name(key, name);
        emit_value(value, t_ms, name, out);
    }
}

/// Emits `value` as series `name` (numbers, booleans) or flattens it (objects, arrays).
fn emit_value(value: &Value, t_ms: i64, name: &mut String, out: &mut Out<'_>) {
    match value {
        Value::Number(n) => {
            if let Some(v) = n.as_f64() {
                out.sample(name, t_ms, v);
            }
        }
        Value::Bool(b) => out.sample(name, t_ms, f64::from(u8::from(*b))),
        Value::Object(fields) => {
            for (key, v) in fields {
                let len = name.len();
                name.push('_');
                push_metric_name(key, name);
                emit_value(v, t_ms, name, out);
                name.truncate(len);
            }
        }
        Value::Array(items) => {
            let mut index = itoa::Buffer::new();
            for (i, v) in items.iter().enumerate() {
                let len = name.len();
                name.push('_');
                name.push_str(index.format(i));
                emit_value(v, t_ms, name, out);
                name.truncate(len);
            }
        }
        Value::String(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::decode::testing::{Collect, labels};
    use crate::decode::{Decoder, Kind, Outcome};
    use crate::topic::{Format, TemplateConfig};

    const NOW_NS: i64 = 1_700_000_000_123_456_789;
    const NOW_MS: i64 = 1_700_000_000_123;

    fn run(payload: &str) -> (Outcome, Collect) {
        let template = TemplateConfig {
            topic: "dev/{device}/json".to_owned(),
            format: Format::Json,
            metric: None,
            labels: BTreeMap::from([("site".to_owned(), "s1".to_owned())]),
        };
        let mut d = Decoder::new(vec![template]).unwrap();
        let mut sink = Collect::default();
        let outcome = d.decode("dev/d7/json", payload.as_bytes(), NOW_NS, &mut sink);
        (outcome, sink)
    }

    fn decoded(payload: &str) -> Collect {
        let (outcome, sink) = run(payload);
        assert_eq!(outcome, Outcome::Decoded(Kind::Json), "{payload}");
        sink
    }

    #[test]
    fn flat_object_gives_one_sample_per_number() {
        let sink = decoded(r#"{"temp": 21.5, "hum": 40, "name": "pump", "err": null}"#);
        assert_eq!(sink.samples.len(), 2);
        assert_eq!(sink.one("temp"), (NOW_MS, 21.5));
        assert_eq!(sink.one("hum"), (NOW_MS, 40.0));
        let temp = sink.named("temp")[0];
        assert_eq!(temp.labels, labels(&[("__name__", "temp"), ("device", "d7"), ("site", "s1"), ("source", "mqtt")]));
        let log = sink.log();
        assert_eq!(log.line, r#"{"temp": 21.5, "hum": 40, "name": "pump", "err": null}"#);
        assert_eq!(log.t_ns, NOW_NS);
        assert_eq!(log.labels, labels(&[("device", "d7"), ("site", "s1"), ("source", "mqtt")]));
        assert_eq!(log.field("topic"), Some("dev/d7/json"));
    }

    #[test]
    fn nested_objects_and_arrays_are_flattened_with_valid_names() {
        let sink = decoded(r#"{"env":{"temp":1,"air quality":{"pm2.5":3}},"v":[4,5],"1st":6,"ok":true,"bad":false}"#);
        assert_eq!(sink.one("env_temp").1, 1.0);
        assert_eq!(sink.one("env_air_quality_pm2_5").1, 3.0);
        assert_eq!(sink.one("v_0").1, 4.0);
        assert_eq!(sink.one("v_1").1, 5.0);
        assert_eq!(sink.one("_1st").1, 6.0);
        assert_eq!(sink.one("ok").1, 1.0);
        assert_eq!(sink.one("bad").1, 0.0);
        assert_eq!(sink.samples.len(), 7);
    }

    #[test]
    fn array_of_objects_is_one_reading_each_with_its_own_time() {
        let sink = decoded(r#"[{"ts":1700000000,"t":1},{"ts":1700000060,"t":2},{"t":3}]"#);
        let t = sink.named("t");
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].t_ms, t[0].value), (1_700_000_000_000, 1.0));
        assert_eq!((t[1].t_ms, t[1].value), (1_700_000_060_000, 2.0));
        assert_eq!((t[2].t_ms, t[2].value), (NOW_MS, 3.0));
        assert!(sink.named("ts").is_empty());
        assert_eq!(sink.log().t_ns, 1_700_000_000_000_000_000);
    }

    #[test]
    fn every_timestamp_form() {
        let cases = [
            (r#"{"ts":1700000000,"v":1}"#, 1_700_000_000_000),
            (r#"{"ts":1700000000.5,"v":1}"#, 1_700_000_000_500),
            (r#"{"timestamp":1700000000123,"v":1}"#, 1_700_000_000_123),
            (r#"{"time":1700000000123456,"v":1}"#, 1_700_000_000_123),
            (r#"{"ts":1700000000123456789,"v":1}"#, 1_700_000_000_123),
            (r#"{"time":"2023-11-14T22:13:20.5Z","v":1}"#, 1_700_000_000_500),
            (r#"{"time":"2023-11-15T00:13:20+02:00","v":1}"#, 1_700_000_000_000),
            (r#"{"time":"not a time","v":1}"#, NOW_MS),
            (r#"{"time":-5,"v":1}"#, NOW_MS),
        ];
        for (payload, want) in cases {
            let sink = decoded(payload);
            assert_eq!(sink.one("v").0, want, "{payload}");
            assert_eq!(sink.samples.len(), 1, "{payload}: the time field is no sample");
        }
        let sink = decoded(r#"{"ts":1700000000123456789,"v":1}"#);
        assert_eq!(sink.log().t_ns, 1_700_000_000_123_456_789);
    }

    #[test]
    fn time_field_only_counts_at_the_top_level() {
        let sink = decoded(r#"{"inner":{"ts":5},"v":1}"#);
        assert_eq!(sink.one("inner_ts"), (NOW_MS, 5.0));
        assert_eq!(sink.one("v").0, NOW_MS);
    }

    #[test]
    fn invalid_json_is_garbage_with_a_log_entry() {
        let (outcome, sink) = run(r#"{"temp": }"#);
        let Outcome::Garbage { reason, detail } = outcome else { panic!("{outcome:?}") };
        assert_eq!(reason, "invalid_json");
        assert_eq!(detail, "invalid JSON at line 1 column 10: expected value");
        assert!(sink.samples.is_empty());
        let log = sink.log();
        assert_eq!(log.line, r#"{"temp": }"#);
        assert_eq!(log.field("error"), Some(detail.as_str()));
        assert_eq!(log.field("topic"), Some("dev/d7/json"));
        assert_eq!(log.t_ns, NOW_NS);
    }

    #[test]
    fn non_objects_are_garbage() {
        let (outcome, sink) = run("[1, 2]");
        let Outcome::Garbage { reason, detail } = outcome else { panic!("{outcome:?}") };
        assert_eq!(reason, "not_an_object");
        assert_eq!(detail, "element 0 of the JSON array is a number, expected an object");
        assert!(sink.samples.is_empty());
        assert_eq!(sink.logs.len(), 1);
        let (outcome, _) = run(r#""hello""#);
        assert!(matches!(outcome, Outcome::Garbage { reason: "not_an_object", .. }));
    }
}
