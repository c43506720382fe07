//! Criterion benches of the log ingest, LogQL, metric ingest and PromQL hot paths. Ids: `store/<op>/<size>`,
//! `logql/<op>/<size>`, `metrics/<op>/<size>`.
//! Run: `cargo bench -p benches` (add `-- <filter>` for one).

use std::time::Duration;

use benches::{jsonline_body, loghub_lines, loki_json_body, loki_proto_body, otlp_logs_body};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use store::model::Tenant;
use store::{LogStore, StoreConfig, StoreOptions};
use wire::loki::PushFormat;
use wire::{FieldMapping, Limits, jsonline, loki};

const LINES: usize = 2000;

fn decode(c: &mut Criterion) {
    let lines = loghub_lines();
    let t0 = store::time::now_ns();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(LINES as u64));
    let body = jsonline_body(&lines, LINES, t0);
    let mapping =
        FieldMapping::from_params(None, None, Some("namespace,pod,container,app,node"), None, "_time", "_msg");
    g.bench_function("decode_jsonline/2000", |b| {
        b.iter(|| jsonline::decode(&body, &mapping, Limits::default(), t0).unwrap())
    });
    let body = loki_json_body(&lines, LINES, t0);
    g.bench_function("decode_loki_json/2000", |b| {
        b.iter(|| loki::decode(PushFormat::Json, &body, Limits::default(), t0).unwrap())
    });
    let body = loki_proto_body(&lines, LINES, t0);
    g.bench_function("decode_loki_proto/2000", |b| {
        b.iter(|| loki::decode(PushFormat::Protobuf, &body, Limits::default(), t0).unwrap())
    });
    g.finish();
}

fn open(dir: &std::path::Path) -> LogStore {
    let options = StoreOptions {
        data_dir: dir.to_path_buf(),
        retention: Duration::from_secs(30 * 86_400),
        disk: None,
        retention_rules: Vec::new(),
        tuning: StoreConfig::default(),
    };
    LogStore::open(options, &mut prometheus_client::registry::Registry::default()).unwrap()
}

/// Append of one 2000-line batch: WAL encode, write, fdatasync, Arrow conversion, head insert. Sequential,
/// so every append pays a whole fsync; concurrent requests share one (group commit).
fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let lines = loghub_lines();
    let t0 = store::time::now_ns();
    let body = jsonline_body(&lines, LINES, t0);
    let mapping =
        FieldMapping::from_params(None, None, Some("namespace,pod,container,app,node"), None, "_time", "_msg");
    let decoded = jsonline::decode(&body, &mapping, Limits::default(), t0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(async { open(dir.path()) });
    // The background task flushes the head by size, as in the server; without it appends would stall
    // in backpressure once the head is full.
    let shutdown = tokio_util::sync::CancellationToken::new();
    rt.spawn(store.clone().run(shutdown.clone()));
    let tenant = Tenant::default_tenant();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(LINES as u64));
    g.bench_function("append/2000", |b| {
        b.iter_batched(
            || decoded.batch.clone(),
            |batch| rt.block_on(store.append(&tenant, batch)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    shutdown.cancel();
}

/// Flush of 100,000 head rows: sort, Parquet encoding with zstd, token filters, index, fsync, manifest.
fn flush(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let lines = loghub_lines();
    let t0 = store::time::now_ns();
    let mapping =
        FieldMapping::from_params(None, None, Some("namespace,pod,container,app,node"), None, "_time", "_msg");
    let batches: Vec<_> = (0..50)
        .map(|i| {
            jsonline::decode(
                &jsonline_body(&lines[(i * 37) % 1000..], LINES, t0 + i as i64 * 1_000_000_000),
                &mapping,
                Limits::default(),
                t0,
            )
            .unwrap()
            .batch
        })
        .collect();
    let tenant = Tenant::default_tenant();
    let mut g = c.benchmark_group("store");
    g.sample_size(10);
    g.throughput(Throughput::Elements(50 * LINES as u64));
    g.bench_function("flush/100000", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = rt.block_on(async { open(dir.path()) });
                for batch in &batches {
                    rt.block_on(store.append(&tenant, batch.clone())).unwrap();
                }
                (dir, store)
            },
            |(dir, store)| {
                rt.block_on(store.flush()).unwrap();
                (dir, store)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// LogQL: parsing a query, and pipelines over 2000 Loghub lines (as they are, as logfmt, as JSON).
fn logql(c: &mut Criterion) {
    use query::logql::ast::{Expr, LogExpr};
    use query::logql::pipeline::{LabelSet, Pipeline};
    let lines = loghub_lines();
    let lines: Vec<&(String, String)> = lines.iter().cycle().take(LINES).collect();
    const LEVELS: [&str; 2] = ["info", "error"];
    let mut g = c.benchmark_group("logql");
    let complex = r#"sum by (app) (rate({app=~"hdfs|spark", pod!=""} |= "error" != "debug" | logfmt | level=~"error|warn" and took > 10ms | line_format "{{.app}} {{.msg | ToUpper}}" [5m] offset 1m)) / ignoring (pod) group_left sum by (app) (count_over_time({app=~".+"}[5m]))"#;
    g.bench_function("parse/complex", |b| b.iter(|| query::logql::parse(complex).unwrap()));
    let pipeline = |q: &str| match query::logql::parse(q).unwrap() {
        Expr::Log(LogExpr { stages, .. }) => Pipeline::new(&stages, false),
        Expr::Metric(_) => unreachable!("a log query"),
    };
    let labels = store::model::Labels::from_pairs(vec![("app".into(), "bench".into())]);
    g.throughput(Throughput::Elements(LINES as u64));
    let run = |p: &Pipeline, texts: &[String]| {
        let mut kept = 0usize;
        for (i, t) in texts.iter().enumerate() {
            let mut set = LabelSet::from_stream(&labels);
            kept += usize::from(p.process(i as i64, t, &mut set).is_some());
        }
        kept
    };
    let raw: Vec<String> = lines.iter().map(|(_, l)| l.clone()).collect();
    let filter = pipeline(r#"{app="x"} |= "error" or "WARN" |~ "(?i)fail(ed|ure)?""#);
    g.bench_function("line_filters/2000", |b| b.iter(|| raw.iter().filter(|l| filter.filter_line(l)).count()));
    let logfmt: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, (app, l))| format!("level={} app={app} took={}ms msg={:?}", LEVELS[i % 2], i % 97, l))
        .collect();
    let p = pipeline(r#"{app="x"} | logfmt | level="error" and took > 50ms"#);
    g.bench_function("logfmt_label_filter/2000", |b| b.iter(|| run(&p, &logfmt)));
    let json: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, (app, l))| serde_json::json!({"level": LEVELS[i % 2], "app": app, "status": 200 + i % 400, "msg": l, "req": {"path": "/x", "ms": i % 97}}).to_string())
        .collect();
    let p = pipeline(r#"{app="x"} | json | status >= 500 | line_format "{{.app}}: {{.msg}}""#);
    g.bench_function("json_filter_format/2000", |b| b.iter(|| run(&p, &json)));
    g.finish();
}

/// A node_exporter-like remote-write body: 2,000 series of ten labels, one sample each (as Prometheus
/// sends them), at time `t`.
fn remote_write_body(t: i64, round: i64) -> Vec<u8> {
    use wire::prom::{Sample, encode_write_request};
    let series: Vec<_> = (0..2000)
        .map(|i| {
            let labels = vec![
                ("__name__".to_string(), format!("node_metric_{}_total", i % 100)),
                ("cpu".to_string(), (i % 25).to_string()),
                ("device".to_string(), format!("eth{}", i % 4)),
                ("instance".to_string(), format!("host-{:02}:9100", i / 100)),
                ("job".to_string(), "node".to_string()),
                ("mode".to_string(), ["user", "system", "idle", "iowait"][i as usize % 4].to_string()),
                ("region".to_string(), "eu-west-1".to_string()),
                ("rack".to_string(), format!("r{}", i % 10)),
                ("env".to_string(), "prod".to_string()),
                ("team".to_string(), "infra".to_string()),
            ];
            (labels, vec![Sample { t, v: (i * 1000 + round * 7) as f64 }])
        })
        .collect();
    encode_write_request(&series)
}

/// The metric ingest and PromQL hot paths: remote-write decode, catalog lookup per sample, the decimal
/// value encoding of parts, and a `rate` over 2,000 series.
fn metrics(c: &mut Criterion) {
    use wire::prom::{decode_write_request, decompress_snappy, normalize_labels};
    let t0 = store::time::now_ns() / 1_000_000;
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(2000));
    let body = remote_write_body(t0, 0);
    g.bench_function("remote_write_decode/2000", |b| {
        b.iter(|| {
            let raw = decompress_snappy(&body, 64 << 20).unwrap();
            let mut n = 0usize;
            decode_write_request(&raw, |labels, samples| {
                n += labels.len() + samples.len();
                Ok(())
            })
            .unwrap();
            n
        })
    });
    // Decode + validate + catalog lookup of known series into a batch (no WAL): the CPU of a request
    // before its fsync.
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        data_dir: dir.path().to_path_buf(),
        retention: Duration::from_secs(30 * 86_400),
        disk: None,
        retention_rules: Vec::new(),
        tuning: StoreConfig::default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ms = rt.block_on(async {
        store::MetricStore::open(options, &mut prometheus_client::registry::Registry::default()).unwrap()
    });
    let tenant = Tenant::default_tenant();
    let warm = {
        let raw = decompress_snappy(&body, 64 << 20).unwrap();
        let mut batch = ms.batch(&tenant);
        let mut norm = Vec::new();
        decode_write_request(&raw, |l, s| {
            normalize_labels(l, &mut norm);
            batch.add(&norm, s.iter().map(|s| (s.t, s.v)));
            Ok(())
        })
        .unwrap();
        batch
    };
    rt.block_on(ms.append(warm)).unwrap();
    g.bench_function("remote_write_to_batch/2000", |b| {
        b.iter(|| {
            let raw = decompress_snappy(&body, 64 << 20).unwrap();
            let mut batch = ms.batch(&tenant);
            let mut norm = Vec::new();
            decode_write_request(&raw, |l, s| {
                wire::prom::check_labels(l, 40, 1024, 65536)?;
                normalize_labels(l, &mut norm);
                batch.add(&norm, s.iter().map(|s| (s.t, s.v)));
                Ok(())
            })
            .unwrap();
            batch.len()
        })
    });
    // Values of one series run (500 points): a counter, a decimal gauge, random doubles.
    let counter: Vec<f64> = (0..500).map(|i| (i * 1234) as f64).collect();
    let gauge: Vec<f64> = (0..500).map(|i| 40.0 + (i % 37) as f64 * 0.25).collect();
    let random: Vec<f64> = (0..500).map(|i| ((i as f64) * 0.618_033_988_7).fract() * 1e3).collect();
    g.throughput(Throughput::Elements(500));
    for (name, values) in [("counter", &counter), ("gauge", &gauge), ("random", &random)] {
        g.bench_function(format!("encode_values_{name}/500"), |b| {
            b.iter(|| {
                let (mut m, mut s) = (Vec::with_capacity(500), Vec::with_capacity(500));
                store::metric::encode_run(values, &mut m, &mut s);
                m.len()
            })
        });
    }
    // PromQL over an in-memory source: 2,000 series × 240 points (one hour at 15 s), 60 steps.
    struct Mem(Vec<query::promql::Series>);
    impl query::promql::SeriesSource for Mem {
        fn select(
            &self,
            m: &[query::promql::Matcher],
            _: i64,
            _: i64,
        ) -> Result<Vec<query::promql::Series>, query::promql::EvalError> {
            Ok(self
                .0
                .iter()
                .filter(|s| m.iter().all(|m| m.matches(query::promql::label_value(&s.labels, &m.name).unwrap_or(""))))
                .cloned()
                .collect())
        }
    }
    let src = Mem((0..2000)
        .map(|i| query::promql::Series {
            labels: vec![
                ("__name__".to_string(), "node_cpu_seconds_total".to_string()),
                ("cpu".to_string(), (i % 25).to_string()),
                ("instance".to_string(), format!("host-{:02}", i / 100)),
                ("mode".to_string(), ["user", "system", "idle", "iowait"][i % 4].to_string()),
            ],
            t: (0..240).map(|k| k * 15_000).collect::<Vec<i64>>().into(),
            v: (0..240).map(|k| (k * (i as i64 % 13 + 1)) as f64).collect::<Vec<f64>>().into(),
        })
        .collect());
    let opts = query::promql::EngineOptions::default();
    g.throughput(Throughput::Elements(2000 * 240));
    for (name, q) in [
        ("rate", "rate(node_cpu_seconds_total[5m])"),
        ("sum_by_rate", "sum by (mode) (rate(node_cpu_seconds_total[5m]))"),
    ] {
        let expr = query::promql::parse(q).unwrap();
        g.bench_function(format!("promql_{name}/2000x240"), |b| {
            b.iter(|| query::promql::eval_range(&opts, &src, &expr, 300_000, 3_585_000, 60_000).unwrap())
        });
    }
    g.finish();
}

/// The agent's per-line work: CRI and Docker json-file decoding (partial records merged), and the parse
/// options' field extraction and level detection.
fn agent(c: &mut Criterion) {
    use collector::format::{Decoder, LogFormat};
    let mut g = c.benchmark_group("agent");
    let n = 10_000usize;
    let ts = "2026-11-22T10:00:00.123456789Z";
    let mut cri = Vec::with_capacity(n);
    let mut docker = Vec::with_capacity(n);
    for i in 0..n {
        let msg = format!(
            "level=info ts={i} caller=server.go:{i} msg=\"request served\" path=/api/v1/items/{i} status=200 took=1.{i}ms"
        );
        let stream = if i % 13 == 0 { "stderr" } else { "stdout" };
        cri.push(format!("{ts} {stream} F {msg}"));
        docker.push(serde_json::json!({"log": format!("{msg}\n"), "stream": stream, "time": ts}).to_string());
    }
    g.throughput(Throughput::Elements(n as u64));
    for (name, format, lines) in [("cri_decode", LogFormat::Cri, &cri), ("docker_decode", LogFormat::Docker, &docker)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut d = Decoder::new(format, 256 * 1024);
                let mut at = 0u64;
                let mut out = 0usize;
                for l in lines {
                    let end = at + l.len() as u64 + 1;
                    out += d.push(l.as_bytes(), at, end).map_or(0, |r| r.message.len());
                    at = end;
                }
                out
            })
        });
    }
    let transform = collector::transform::Transform::new(&collector::transform::ParseConfig {
        format: collector::transform::LineParser::Logfmt,
        ..Default::default()
    })
    .unwrap();
    g.bench_function("logfmt_fields_and_level", |b| {
        b.iter(|| {
            let mut fields = Vec::new();
            for l in &cri {
                fields.clear();
                transform.fields(&l[36..], &mut fields);
            }
            fields.len()
        })
    });
    g.finish();
}

/// A sink that only counts, so the MQTT benches measure decoding alone.
#[derive(Default)]
struct CountingSink {
    samples: usize,
    entries: usize,
}

impl ingest_mqtt::decode::Sink for CountingSink {
    fn sample(&mut self, labels: &[(&str, &str)], _t_ms: i64, _value: f64) {
        self.samples += labels.len();
    }

    fn log(&mut self, _labels: &[(&str, &str)], _t_ns: i64, line: &str, _fields: &[(&str, &str)]) {
        self.entries += line.len();
    }
}

/// The MQTT pipeline's per-message decoding: a ~120-byte JSON telemetry message through a topic template,
/// and a Sparkplug B DDATA resolved through its DBIRTH's aliases.
fn mqtt(c: &mut Criterion) {
    use ingest_mqtt::decode::Decoder;
    use ingest_mqtt::sparkplug_b::Payload;
    use ingest_mqtt::sparkplug_b::payload::{Metric, metric};
    use ingest_mqtt::topic::TemplateConfig;
    use prost::Message as _;
    let mut g = c.benchmark_group("mqtt");
    let n = 10_000usize;
    let template = |t: &str| TemplateConfig {
        topic: t.into(),
        format: Default::default(),
        metric: None,
        labels: Default::default(),
    };
    let json: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let body = format!(
                r#"{{"ts":{},"seq":{i},"temperature":21.{},"humidity":48.2,"battery":3.71,"rssi":-67,"status":"ok","fw":"2.1.7"}}"#,
                1_795_000_000_000i64 + i as i64,
                i % 100
            );
            (format!("bench/site{}/dev{}/telemetry", i % 10, i % 1000), body.into_bytes())
        })
        .collect();
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("json_decode", |b| {
        let mut d = Decoder::new(vec![template("bench/{site}/{device}/telemetry")]).unwrap();
        b.iter(|| {
            let mut sink = CountingSink::default();
            for (topic, payload) in &json {
                d.decode(topic, payload, 1_795_000_000_000_000_000, &mut sink);
            }
            sink.samples + sink.entries
        })
    });
    let metric = |name: Option<&str>, alias: u64, value: f64| Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        datatype: Some(10),
        value: Some(metric::Value::DoubleValue(value)),
        ..Metric::default()
    };
    let birth = Payload {
        timestamp: Some(1_795_000_000_000),
        seq: Some(0),
        metrics: (0..5).map(|a| metric(Some(&format!("Inputs/Value{a}")), a, 0.0)).collect(),
        ..Payload::default()
    }
    .encode_to_vec();
    let data: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            Payload {
                timestamp: Some(1_795_000_000_000 + i as u64),
                seq: Some((i as u64 + 1) % 256),
                metrics: (0..5).map(|a| metric(None, a, i as f64)).collect(),
                ..Payload::default()
            }
            .encode_to_vec()
        })
        .collect();
    g.bench_function("sparkplug_ddata_by_alias", |b| {
        let mut d = Decoder::new(Vec::new()).unwrap();
        let mut sink = CountingSink::default();
        d.decode("spBv1.0/plant/DBIRTH/edge1/pump7", &birth, 1_795_000_000_000_000_000, &mut sink);
        b.iter(|| {
            let mut sink = CountingSink::default();
            for p in &data {
                d.decode("spBv1.0/plant/DDATA/edge1/pump7", p, 1_795_000_000_000_000_000, &mut sink);
            }
            sink.samples + sink.entries
        })
    });
    g.finish();
}

/// OTLP logs: protobuf decode plus translation to a batch, beside `store/decode_loki_proto` on the same
/// 2000 lines (Loki's is snappy-compressed; OTLP's is not, as exporters send it without gzip by default).
fn otlp(c: &mut Criterion) {
    use ingest_otlp::logs::{StreamMapping, translate};
    use ingest_otlp::proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use ingest_otlp::proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use prost::Message;
    let lines = loghub_lines();
    let t0 = store::time::now_ns();
    let mut g = c.benchmark_group("otlp");
    g.throughput(Throughput::Elements(LINES as u64));
    let body = otlp_logs_body(&lines, LINES, t0);
    let mapping = StreamMapping::new(&ingest_otlp::OtlpConfig::default().stream_attributes);
    g.bench_function("decode_logs/2000", |b| b.iter(|| ExportLogsServiceRequest::decode(&body[..]).unwrap()));
    g.bench_function("decode_translate_logs/2000", |b| {
        b.iter(|| {
            let req = ExportLogsServiceRequest::decode(&body[..]).unwrap();
            translate(req, &mapping, &Limits::default(), t0)
        })
    });
    // Metrics as an SDK exports them: 200 series of a counter and 200 of a 15-bucket histogram, each with
    // three attributes, under one resource; per output sample (4,000: 200 + 200 × 19).
    let req = otlp_metrics_request(200);
    let body = req.encode_to_vec();
    let mapping = ingest_otlp::metrics::MetricMapping::new(&ingest_otlp::OtlpConfig::default(), 40);
    let samples = ingest_otlp::metrics::translate(&req, &mapping, t0 / 1_000_000).samples.len();
    g.throughput(Throughput::Elements(samples as u64));
    g.bench_function(format!("decode_translate_metrics/{samples}"), |b| {
        b.iter(|| {
            let req = ExportMetricsServiceRequest::decode(&body[..]).unwrap();
            let out = ingest_otlp::metrics::translate(&req, &mapping, t0 / 1_000_000);
            // Each sample's sorted label pairs, as the append builds them for the catalog lookup.
            let mut pairs = Vec::new();
            let mut n = 0;
            for s in &out.samples {
                s.pairs(&mut pairs);
                n += pairs.len();
            }
            (out, n)
        })
    });
    g.finish();
}

fn otlp_metrics_request(
    series: usize,
) -> ingest_otlp::proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest {
    use ingest_otlp::proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use ingest_otlp::proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use ingest_otlp::proto::tonic::metrics::v1::{
        Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data,
        number_data_point,
    };
    use ingest_otlp::proto::tonic::resource::v1::Resource;
    let kv = |k: &str, v: String| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(v)) }),
        ..Default::default()
    };
    let attrs = |i: usize| {
        vec![
            kv("http.route", format!("/api/{}", i % 40)),
            kv("http.method", "GET".into()),
            kv("http.status_code", format!("{}", 200 + i % 5)),
        ]
    };
    let t = store::time::now_ns() as u64;
    let counter = (0..series)
        .map(|i| NumberDataPoint {
            attributes: attrs(i),
            time_unix_nano: t,
            value: Some(number_data_point::Value::AsInt(i as i64)),
            ..Default::default()
        })
        .collect();
    let bounds = vec![0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0];
    let hist = (0..series)
        .map(|i| HistogramDataPoint {
            attributes: attrs(i),
            time_unix_nano: t,
            count: 160,
            sum: Some(12.5),
            bucket_counts: vec![10; bounds.len() + 1],
            explicit_bounds: bounds.clone(),
            ..Default::default()
        })
        .collect();
    let metrics = vec![
        Metric {
            name: "http.server.requests".into(),
            data: Some(Data::Sum(Sum { data_points: counter, aggregation_temporality: 2, is_monotonic: true })),
            ..Default::default()
        },
        Metric {
            name: "http.server.request.duration".into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram { data_points: hist, aggregation_temporality: 2 })),
            ..Default::default()
        },
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "api".into()),
                    kv("service.instance.id", "api-1".into()),
                    kv("host.name", "node-1".into()),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            schema_url: String::new(),
        }],
    }
}

criterion_group!(benches, decode, append, flush, logql, metrics, agent, mqtt, otlp);
criterion_main!(benches);
