//! OTLP logs to a [`LogBatch`].
//!
//! - The resource attributes listed in `otlp.stream_attributes` name the stream: they become its labels,
//!   dots turned into underscores (`service.name` → `service_name`). A resource without `service.name`
//!   gets `service_name="unknown_service"`, as Loki does, so every stream has a label to select it by.
//! - Every other attribute — of the resource, the scope and the record — becomes a field, under the
//!   same name translation; maps are flattened (`a.b` = {c: 1} → `a_b_c`). Of equal names, the record's
//!   wins over the scope's, which wins over the resource's.
//! - Severity becomes `level`: the severity number's name (`trace`, `debug`, `info`, `warn`, `error`,
//!   `fatal`) or, with no number, the severity text in lower case.
//! - Trace and span ids become `trace_id` and `span_id` (hex); the scope's name and version
//!   `scope_name` and `scope_version`; an event name `event_name`.
//! - The body is the line: a string as it is, a map or array as JSON, other values as text.
//! - The time is the record's time, else its observed time, else the time of receipt.
//!
//! A record is rejected on its own (and counted in `partial_success`) when its line is longer than the
//! limit or its time is outside the accepted window.

use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use store::model::{Labels, LogBatch, LogEntry};
use wire::Limits;

use crate::naming::label_name;
use crate::value::{self, dedup_last_wins, flatten_into};

/// Which resource attributes become stream labels, and under what names.
#[derive(Debug, Clone)]
pub struct StreamMapping {
    labels: HashMap<String, String>,
    /// The order of the config: when there are more than the store's label limit, the first ones win.
    order: Vec<String>,
}

impl StreamMapping {
    pub fn new(attributes: &[String]) -> StreamMapping {
        let mut labels = HashMap::new();
        let mut order = Vec::new();
        for key in attributes {
            if let Some(name) = label_name(key) {
                labels.insert(key.clone(), name);
                order.push(key.clone());
            }
        }
        StreamMapping { labels, order }
    }
}

/// What one request became.
#[derive(Debug, Default)]
pub struct LogsOutcome {
    pub batch: LogBatch,
    /// Records in the request, stored or not.
    pub total: usize,
    /// Records rejected one by one, and the reason of each kind (for the counters).
    pub rejected: usize,
    pub rejected_by_reason: Vec<(&'static str, usize)>,
    /// A message naming the first rejections, for `partial_success.error_message`.
    pub message: String,
}

impl LogsOutcome {
    fn reject(&mut self, reason: &'static str, detail: String) {
        self.rejected += 1;
        match self.rejected_by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.rejected_by_reason.push((reason, 1)),
        }
        if self.rejected <= 5 {
            if !self.message.is_empty() {
                self.message.push_str("; ");
            }
            self.message.push_str(&detail);
        }
    }
}

/// The name of a severity number's range, as OpenTelemetry's data model defines them.
fn severity_name(n: i32) -> Option<&'static str> {
    Some(match n {
        1..=4 => "trace",
        5..=8 => "debug",
        9..=12 => "info",
        13..=16 => "warn",
        17..=20 => "error",
        21..=24 => "fatal",
        _ => return None,
    })
}

fn hex(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() || bytes.iter().all(|&b| b == 0) {
        return None;
    }
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    Some(s)
}

fn scope_fields(scope: Option<&InstrumentationScope>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(scope) = scope {
        if !scope.name.is_empty() {
            out.push(("scope_name".to_string(), scope.name.clone()));
        }
        if !scope.version.is_empty() {
            out.push(("scope_version".to_string(), scope.version.clone()));
        }
        for kv in &scope.attributes {
            flatten_into(kv, &label_name, &mut out);
        }
    }
    out
}

/// Stream labels and the remaining resource attributes as fields.
fn resource_parts(
    attributes: &[KeyValue],
    mapping: &StreamMapping,
    max_labels: usize,
) -> (Labels, Vec<(String, String)>) {
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut fields = Vec::new();
    let mut as_label: Vec<(usize, &KeyValue)> = Vec::new();
    for kv in attributes {
        match mapping.order.iter().position(|k| *k == kv.key) {
            Some(rank) => as_label.push((rank, kv)),
            None => flatten_into(kv, &label_name, &mut fields),
        }
    }
    as_label.sort_by_key(|(rank, _)| *rank);
    for (_, kv) in as_label {
        let text = value::text(kv.value.as_ref());
        let name = &mapping.labels[&kv.key];
        if text.is_empty() || labels.iter().any(|(n, _)| n == name) {
            continue;
        }
        // Past the store's label limit, the names listed last stay fields.
        if labels.len() >= max_labels {
            fields.push((name.clone(), text));
        } else {
            labels.push((name.clone(), text));
        }
    }
    if !labels.iter().any(|(n, _)| n == "service_name") {
        if labels.len() >= max_labels.max(1)
            && let Some(last) = labels.pop()
        {
            fields.push(last);
        }
        labels.push(("service_name".to_string(), "unknown_service".to_string()));
    }
    (Labels::from_pairs(labels), fields)
}

/// Translates a request; `now_ns` stamps records that carry no time.
/// The request is taken by value so that bodies move into the batch instead of being copied.
pub fn translate(req: ExportLogsServiceRequest, mapping: &StreamMapping, limits: &Limits, now_ns: i64) -> LogsOutcome {
    let mut out = LogsOutcome::default();
    let mut index = 0usize;
    for rl in req.resource_logs {
        let attributes = rl.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let (labels, resource_fields) = resource_parts(attributes, mapping, limits.max_labels);
        let stream = out.batch.stream_index(labels);
        for sl in rl.scope_logs {
            let mut base = resource_fields.clone();
            base.extend(scope_fields(sl.scope.as_ref()));
            for mut record in sl.log_records {
                out.total += 1;
                let i = index;
                index += 1;
                if let Some(entry) = entry(&mut record, stream, &base, limits, now_ns, i, &mut out) {
                    out.batch.entries.push(entry);
                }
            }
        }
    }
    out
}

fn entry(
    record: &mut LogRecord,
    stream: u32,
    base: &[(String, String)],
    limits: &Limits,
    now_ns: i64,
    index: usize,
    out: &mut LogsOutcome,
) -> Option<LogEntry> {
    let line = match record.body.take().and_then(|b| b.value) {
        Some(Value::StringValue(s)) => s,
        other => value::text(Some(&AnyValue { value: other })),
    };
    if line.len() > limits.max_line_bytes {
        out.reject(
            "line_too_long",
            format!(
                "log record {index}: body of {} bytes is longer than the limit of {} bytes",
                line.len(),
                limits.max_line_bytes
            ),
        );
        return None;
    }
    let time = [record.time_unix_nano, record.observed_time_unix_nano].into_iter().find(|&t| t != 0);
    let time_ns = time.map_or(now_ns, |t| i64::try_from(t).unwrap_or(i64::MAX));
    if time_ns < limits.oldest_ns || time_ns > limits.newest_ns {
        let (reason, what) = if time_ns < limits.oldest_ns {
            ("too_old", "older than the retention period")
        } else {
            ("too_new", "more than 2 days in the future")
        };
        out.reject(reason, format!("log record {index}: time {} is {what}", store::time::format_rfc3339_ns(time_ns)));
        return None;
    }
    let mut fields = base.to_vec();
    for kv in &record.attributes {
        flatten_into(kv, &label_name, &mut fields);
    }
    let level = severity_name(record.severity_number)
        .map(str::to_string)
        .or_else(|| (!record.severity_text.is_empty()).then(|| record.severity_text.to_lowercase()));
    if let Some(level) = level {
        fields.push(("level".to_string(), level));
    }
    if let Some(t) = hex(&record.trace_id) {
        fields.push(("trace_id".to_string(), t));
    }
    if let Some(s) = hex(&record.span_id) {
        fields.push(("span_id".to_string(), s));
    }
    if !record.event_name.is_empty() {
        fields.push(("event_name".to_string(), std::mem::take(&mut record.event_name)));
    }
    dedup_last_wins(&mut fields);
    if let Some(reason) = limits.check_fields(&fields) {
        out.reject(reason.kind(), format!("log record {index}: {reason}"));
        return None;
    }
    Some(LogEntry { stream, time_ns, line, fields })
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::KeyValueList;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    use super::*;
    use crate::config::OtlpConfig;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }),
            ..Default::default()
        }
    }

    fn request(resource: Vec<KeyValue>, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource { attributes: resource, ..Default::default() }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "checkout.logger".into(),
                        version: "1.2".into(),
                        ..Default::default()
                    }),
                    log_records: records,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn mapping() -> StreamMapping {
        StreamMapping::new(&OtlpConfig::default().stream_attributes)
    }

    #[test]
    fn resource_attributes_name_the_stream_and_the_rest_become_fields() {
        let record = LogRecord {
            time_unix_nano: 1_700_000_000_123_456_789,
            severity_number: 13,
            severity_text: "WARNING".into(),
            body: Some(AnyValue { value: Some(Value::StringValue("card declined".into())) }),
            attributes: vec![kv("http.method", "POST"), kv("host.name", "record wins")],
            trace_id: (1..=16).collect(),
            span_id: vec![0xab; 8],
            ..Default::default()
        };
        let req = request(
            vec![
                kv("service.name", "checkout"),
                kv("k8s.namespace.name", "shop"),
                kv("host.name", "node-1"),
                kv("telemetry.sdk.language", "python"),
            ],
            vec![record],
        );
        let out = translate(req, &mapping(), &Limits::default(), 5);
        assert_eq!(out.total, 1);
        assert_eq!(out.rejected, 0);
        let labels: Vec<_> = out.batch.streams[0].labels.iter().collect();
        assert_eq!(labels, vec![("k8s_namespace_name", "shop"), ("service_name", "checkout")]);
        let e = &out.batch.entries[0];
        assert_eq!(e.time_ns, 1_700_000_000_123_456_789);
        assert_eq!(e.line, "card declined");
        let f: HashMap<_, _> = e.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(f["http_method"], "POST");
        assert_eq!(f["host_name"], "record wins");
        assert_eq!(f["telemetry_sdk_language"], "python");
        assert_eq!(f["level"], "warn");
        assert_eq!(f["trace_id"], "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(f["span_id"], "abababababababab");
        assert_eq!(f["scope_name"], "checkout.logger");
        assert_eq!(f["scope_version"], "1.2");
        assert!(!f.contains_key("service_name"), "labels are not repeated as fields");
        assert!(e.fields.windows(2).all(|w| w[0].0 < w[1].0), "fields sorted and unique");
    }

    #[test]
    fn bodies_times_and_levels() {
        let map_body = AnyValue {
            value: Some(Value::KvlistValue(KeyValueList {
                values: vec![
                    kv("user", "ann"),
                    KeyValue {
                        key: "n".into(),
                        value: Some(AnyValue { value: Some(Value::IntValue(3)) }),
                        ..Default::default()
                    },
                ],
            })),
        };
        let records = vec![
            LogRecord {
                body: Some(map_body),
                observed_time_unix_nano: 42,
                severity_text: "Notice".into(),
                ..Default::default()
            },
            LogRecord { body: Some(AnyValue { value: Some(Value::DoubleValue(1.5)) }), ..Default::default() },
        ];
        let out = translate(request(vec![], records), &mapping(), &Limits::default(), 777);
        let [a, b] = &out.batch.entries[..] else { panic!("two entries") };
        assert_eq!(a.line, r#"{"user":"ann","n":3}"#);
        assert_eq!(a.time_ns, 42, "observed time when the record has none");
        assert!(a.fields.contains(&("level".to_string(), "notice".to_string())));
        assert_eq!(b.line, "1.5");
        assert_eq!(b.time_ns, 777, "receipt time when neither is set");
        assert!(!b.fields.iter().any(|(k, _)| k == "level"));
        assert_eq!(out.batch.streams[0].labels.get("service_name"), Some("unknown_service"));
    }

    #[test]
    fn long_lines_and_times_outside_the_window_are_rejected_one_by_one() {
        let limits = Limits { max_line_bytes: 10, oldest_ns: 100, newest_ns: 1_000, ..Limits::default() };
        let body = |s: &str| Some(AnyValue { value: Some(Value::StringValue(s.into())) });
        let long = "much too long a line";
        let records = vec![
            LogRecord { body: body("ok"), time_unix_nano: 500, ..Default::default() },
            LogRecord { body: body(long), time_unix_nano: 500, ..Default::default() },
            LogRecord { body: body("old"), time_unix_nano: 50, ..Default::default() },
            LogRecord { body: body("new"), time_unix_nano: 5_000, ..Default::default() },
        ];
        let out = translate(request(vec![kv("service.name", "s")], records), &mapping(), &limits, 500);
        assert_eq!((out.total, out.rejected, out.batch.entries.len()), (4, 3, 1), "{}", out.message);
        assert_eq!(out.batch.entries[0].line, "ok");
        assert!(out.message.contains(&format!("log record 1: body of {} bytes", long.len())), "{}", out.message);
        assert!(
            out.message.contains("log record 2") && out.message.contains("older than the retention"),
            "{}",
            out.message
        );
        assert!(out.message.contains("log record 3") && out.message.contains("future"), "{}", out.message);
        let mut reasons = out.rejected_by_reason.clone();
        reasons.sort();
        assert_eq!(reasons, vec![("line_too_long", 1), ("too_new", 1), ("too_old", 1)]);
    }

    #[test]
    fn labels_past_the_limit_stay_fields() {
        let attrs = vec![
            kv("service.name", "a"),
            kv("service.namespace", "b"),
            kv("k8s.namespace.name", "c"),
            kv("k8s.pod.name", "d"),
        ];
        let limits = Limits { max_labels: 3, ..Limits::default() };
        let out = translate(request(attrs.clone(), vec![LogRecord::default()]), &mapping(), &limits, 1);
        let labels: Vec<_> = out.batch.streams[0].labels.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(labels, vec!["k8s_namespace_name", "service_name", "service_namespace"]);
        let fields: Vec<_> = out.batch.entries[0].fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(fields, vec!["k8s_pod_name", "scope_name", "scope_version"]);
        let out = translate(request(attrs[1..].to_vec(), vec![LogRecord::default()]), &mapping(), &limits, 1);
        let labels: Vec<_> = out.batch.streams[0].labels.iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(
            labels,
            vec!["k8s_namespace_name", "service_name", "service_namespace"],
            "unknown_service takes the last place"
        );
    }
}
