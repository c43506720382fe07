//! Criterion benches of the log ingest hot paths. Ids: `store/<op>/<size>`.
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

criterion_group!(benches, decode, append, flush);
criterion_main!(benches);
