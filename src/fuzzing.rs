//! Fuzz targets: every decoder of untrusted input, the query parsers, and the readers of every file the
//! store keeps, each as `run(target, bytes)`. `fuzz/` (cargo-fuzz, nightly) drives them coverage-guided;
//! `tests/it/fuzz_corpus.rs` runs every saved input through them on every test run. A target must return
//! for any input: an error is fine, a panic, a hang or an allocation beyond the input's measure is a bug.

use bytes::Bytes;
use prost::Message;
use wire::loki::PushFormat;
use wire::prom::{Precision, TextFormat};
use wire::{FieldMapping, Limits};

/// Every target, by name (the file names of `fuzz/fuzz_targets/` and the directories of `fuzz/corpus/`).
pub const TARGETS: &[&str] = &[
    "loki_push_json",
    "loki_push_protobuf",
    "remote_write",
    "es_bulk",
    "jsonline",
    "influx",
    "text_exposition",
    "otlp_logs",
    "otlp_metrics",
    "mqtt_payload",
    "logql",
    "promql",
    "wal_segment",
    "manifest",
    "streams_file",
    "series_file",
    "part_index",
];

/// A receive time inside every window the decoders check against.
const NOW_NS: i64 = 1_765_000_000_000_000_000;

fn limits() -> Limits {
    Limits { oldest_ns: 0, newest_ns: i64::MAX, ..Limits::default() }
}

struct NullSink;

impl ingest_mqtt::decode::Sink for NullSink {
    fn sample(&mut self, labels: &[(&str, &str)], t_ms: i64, value: f64) {
        std::hint::black_box((labels.len(), t_ms, value));
    }
    fn log(&mut self, labels: &[(&str, &str)], t_ns: i64, line: &str, fields: &[(&str, &str)]) {
        std::hint::black_box((labels.len(), t_ns, line.len(), fields.len()));
    }
}

/// Runs `data` through `target`.
///
/// # Panics
/// On an unknown target name, and wherever the code under test panics (which is what a fuzzer looks for).
pub fn run(target: &str, data: &[u8]) {
    let text = || String::from_utf8_lossy(data);
    match target {
        "loki_push_json" => {
            let _ = wire::loki::decode(PushFormat::Json, data, limits(), NOW_NS);
        }
        "loki_push_protobuf" => {
            // As sent (snappy), and the message itself, so that the fuzzer reaches the protobuf walker.
            let body = Bytes::copy_from_slice(data);
            let _ = wire::loki::decode_request(None, Some("snappy"), body, limits(), NOW_NS);
            let _ = wire::loki::decode(PushFormat::Protobuf, data, limits(), NOW_NS);
        }
        "remote_write" => {
            let _ = wire::prom::decode_write_request(data, |labels, samples| {
                std::hint::black_box((labels.len(), samples.len()));
                Ok(())
            });
        }
        "es_bulk" => {
            let mapping = FieldMapping::from_params(None, None, Some("host,app"), None, "@timestamp", "message");
            let _ = wire::esbulk::decode(data, &mapping, limits(), NOW_NS);
        }
        "jsonline" => {
            let mapping = FieldMapping::from_params(None, None, Some("host,app"), None, "_time", "_msg");
            let _ = wire::jsonline::decode(data, &mapping, limits(), NOW_NS);
        }
        "influx" => {
            let _ = wire::prom::parse_influx(&text(), Precision::Ns, NOW_NS / 1_000_000, |l, t, v| {
                std::hint::black_box((l.len(), t, v));
            });
        }
        "text_exposition" => {
            // The first byte picks the format, so one corpus covers both.
            let format =
                if data.first().is_some_and(|b| b & 1 == 1) { TextFormat::OpenMetrics } else { TextFormat::Prometheus };
            let _ = wire::prom::parse_text(&text(), format, NOW_NS / 1_000_000, |l, t, v| {
                std::hint::black_box((l.len(), t, v));
            });
        }
        "otlp_logs" => {
            use ingest_otlp::proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
            let from_json = serde_json::from_slice::<ExportLogsServiceRequest>(data).ok();
            for req in ExportLogsServiceRequest::decode(data).ok().into_iter().chain(from_json) {
                let config = ingest_otlp::OtlpConfig::default();
                let mapping = ingest_otlp::logs::StreamMapping::new(&config.stream_attributes);
                std::hint::black_box(ingest_otlp::logs::translate(req, &mapping, &limits(), NOW_NS));
            }
        }
        "otlp_metrics" => {
            use ingest_otlp::proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
            let from_json = serde_json::from_slice::<ExportMetricsServiceRequest>(data).ok();
            for req in ExportMetricsServiceRequest::decode(data).ok().into_iter().chain(from_json) {
                let mapping = ingest_otlp::metrics::MetricMapping::new(&ingest_otlp::OtlpConfig::default(), 40);
                std::hint::black_box(ingest_otlp::metrics::translate(&req, &mapping, NOW_NS / 1_000_000));
            }
        }
        "mqtt_payload" => {
            // The topic up to the first newline, the payload after it; with and without a template, and as
            // Sparkplug B, which is recognised by its topic.
            let (topic, payload) = match data.iter().position(|b| *b == b'\n') {
                Some(i) => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 1..]),
                None => ("devices/site/dev".to_string(), data),
            };
            let template = ingest_mqtt::topic::TemplateConfig {
                topic: "devices/{site}/{device}".to_string(),
                format: ingest_mqtt::topic::Format::Auto,
                metric: None,
                labels: Default::default(),
            };
            for templates in [vec![], vec![template]] {
                if let Ok(mut decoder) = ingest_mqtt::decode::Decoder::new(templates) {
                    std::hint::black_box(decoder.decode(&topic, payload, NOW_NS, &mut NullSink));
                    std::hint::black_box(decoder.decode("spBv1.0/g/DDATA/n/d", payload, NOW_NS, &mut NullSink));
                }
            }
        }
        "logql" => {
            let _ = query::logql::parse(&text());
        }
        "promql" => {
            let _ = query::promql::parse(&text());
        }
        "wal_segment" => store::fuzzing::wal_segment(data),
        "manifest" => store::fuzzing::manifest(data),
        "streams_file" => store::fuzzing::label_file(data, false),
        "series_file" => store::fuzzing::label_file(data, true),
        "part_index" => store::fuzzing::part_index(data),
        other => panic!("no fuzz target {other:?}; the targets are {TARGETS:?}"),
    }
}
