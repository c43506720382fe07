//! Criterion benches of the log ingest and LogQL hot paths. Ids: `store/<op>/<size>`, `logql/<op>/<size>`.
//! Run: `cargo bench -p benches` (add `-- <filter>` for one).

use std::time::Duration;

use benches::{jsonline_body, loghub_lines, loki_json_body, loki_proto_body};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use store::model::Tenant;
use store::wire::loki::PushFormat;
use store::wire::{FieldMapping, Limits, jsonline, loki};
use store::{LogStore, StoreConfig, StoreOptions};

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
        retention_max_disk: None,
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

criterion_group!(benches, decode, append, flush, logql);
criterion_main!(benches);
