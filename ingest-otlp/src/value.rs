//! OTLP attribute values (`AnyValue`) as the text Lumen stores: strings as they are, numbers and
//! booleans in their usual spelling, bytes in base64, arrays and maps as JSON.

use base64::Engine;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

/// The text of a value; an absent value is the empty string.
pub fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => double_text(*d),
        Some(Value::BytesValue(b)) => base64::engine::general_purpose::STANDARD.encode(b),
        Some(v @ (Value::ArrayValue(_) | Value::KvlistValue(_))) => json(Some(v)),
        Some(_) => String::new(),
    }
}

/// A double as Prometheus prints it: shortest round-trip form, `NaN`, `+Inf`, `-Inf`.
pub use wire::prom::format_float as double_text;

/// A value as JSON text, for bodies and attributes that are maps or arrays; map keys keep their order.
pub fn json(v: Option<&Value>) -> String {
    let mut out = String::new();
    write_json(v, &mut out, 0);
    out
}

fn write_json(v: Option<&Value>, out: &mut String, depth: usize) {
    let quoted = |s: &str, out: &mut String| out.push_str(&serde_json::Value::from(s).to_string());
    match v {
        None => out.push_str("null"),
        Some(Value::StringValue(s)) => quoted(s, out),
        Some(Value::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Value::IntValue(i)) => out.push_str(&i.to_string()),
        Some(Value::DoubleValue(d)) if d.is_finite() => out.push_str(&serde_json::Value::from(*d).to_string()),
        Some(Value::DoubleValue(d)) => quoted(&double_text(*d), out),
        Some(Value::BytesValue(b)) => quoted(&base64::engine::general_purpose::STANDARD.encode(b), out),
        Some(Value::ArrayValue(a)) if depth < 32 => {
            out.push('[');
            for (i, v) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(v.value.as_ref(), out, depth + 1);
            }
            out.push(']');
        }
        Some(Value::KvlistValue(kv)) if depth < 32 => {
            out.push('{');
            for (i, kv) in kv.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                quoted(&kv.key, out);
                out.push(':');
                write_json(kv.value.as_ref().and_then(|v| v.value.as_ref()), out, depth + 1);
            }
            out.push('}');
        }
        Some(_) => out.push_str("null"),
    }
}

/// Appends an attribute as fields: a map is flattened into one field per leaf, its keys joined with `_`
/// (`http.request` = {method: GET} → `http_request_method`); names go through `name`.
pub fn flatten_into(kv: &KeyValue, name: &impl Fn(&str) -> Option<String>, out: &mut Vec<(String, String)>) {
    fn walk(
        prefix: String,
        v: Option<&AnyValue>,
        name: &impl Fn(&str) -> Option<String>,
        out: &mut Vec<(String, String)>,
        depth: usize,
    ) {
        match v.and_then(|v| v.value.as_ref()) {
            Some(Value::KvlistValue(kv)) if depth < 8 => {
                for kv in &kv.values {
                    walk(format!("{prefix}_{}", kv.key), kv.value.as_ref(), name, out, depth + 1);
                }
            }
            _ => {
                if let Some(n) = name(&prefix) {
                    out.push((n, text(v)));
                }
            }
        }
    }
    walk(kv.key.clone(), kv.value.as_ref(), name, out, 0);
}

/// Sorts fields by name and keeps, of equal names, the one pushed last.
pub fn dedup_last_wins(fields: &mut Vec<(String, String)>) {
    if fields.len() < 2 {
        return;
    }
    // A stable sort keeps pushes in order within a name; reversing first makes the last one come first,
    // and `dedup_by` keeps the first of each run.
    fields.reverse();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields.dedup_by(|later, first| later.0 == first.0);
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    use super::*;

    fn s(v: &str) -> AnyValue {
        AnyValue { value: Some(Value::StringValue(v.to_string())) }
    }

    #[test]
    fn values_render_as_text() {
        assert_eq!(text(Some(&s("hi"))), "hi");
        assert_eq!(text(Some(&AnyValue { value: Some(Value::IntValue(-3)) })), "-3");
        assert_eq!(text(Some(&AnyValue { value: Some(Value::DoubleValue(0.25)) })), "0.25");
        assert_eq!(text(Some(&AnyValue { value: Some(Value::DoubleValue(f64::INFINITY)) })), "+Inf");
        assert_eq!(text(Some(&AnyValue { value: Some(Value::BoolValue(true)) })), "true");
        assert_eq!(text(Some(&AnyValue { value: Some(Value::BytesValue(vec![0, 255])) })), "AP8=");
        let arr = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: vec![s("a"), AnyValue { value: Some(Value::IntValue(1)) }],
            })),
        };
        assert_eq!(text(Some(&arr)), r#"["a",1]"#);
        let map = AnyValue {
            value: Some(Value::KvlistValue(KeyValueList {
                values: vec![KeyValue { key: "k".into(), value: Some(arr), ..Default::default() }],
            })),
        };
        assert_eq!(text(Some(&map)), r#"{"k":["a",1]}"#);
        assert_eq!(text(None), "");
    }

    #[test]
    fn maps_flatten_and_later_fields_win() {
        let kv = KeyValue {
            key: "http.request".into(),
            value: Some(AnyValue {
                value: Some(Value::KvlistValue(KeyValueList {
                    values: vec![KeyValue { key: "method".into(), value: Some(s("GET")), ..Default::default() }],
                })),
            }),
            ..Default::default()
        };
        let mut out = vec![("http_request_method".to_string(), "old".to_string())];
        flatten_into(&kv, &crate::naming::label_name, &mut out);
        out.push(("a".into(), "1".into()));
        dedup_last_wins(&mut out);
        assert_eq!(
            out,
            vec![("a".to_string(), "1".to_string()), ("http_request_method".to_string(), "GET".to_string())]
        );
    }
}
