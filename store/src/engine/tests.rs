use std::time::Duration;

use bytesize::ByteSize;

use arrow::array::AsArray;
use futures::StreamExt;

use super::*;
use crate::config::StoreConfig;
use crate::model::{Labels, LogEntry};
use crate::scan::{LabelMatcher, MatchOp};
use crate::time::NANOS_PER_DAY;

fn options(dir: &Path) -> StoreOptions {
    StoreOptions {
        data_dir: dir.to_path_buf(),
        retention: Duration::from_secs(30 * 86_400),
        disk: None,
        retention_rules: Vec::new(),
        tuning: StoreConfig { row_group_rows: 1024, ..StoreConfig::default() },
    }
}

fn batch(app: &str, from: usize, n: usize, t0: i64) -> LogBatch {
    let mut b = LogBatch::default();
    let s = b.stream_index(Labels::from_pairs(vec![("app".into(), app.into())]));
    for i in from..from + n {
        b.entries.push(LogEntry {
            stream: s,
            time_ns: t0 + i as i64,
            line: format!("line {i} from {app} with word{}", i % 7),
            fields: if i % 2 == 0 { vec![("level".into(), "info".into())] } else { vec![] },
        });
    }
    b
}

async fn collect(store: &LogStore, req: ScanRequest) -> Vec<RecordBatch> {
    let scan = store.scan(req).unwrap();
    scan.stream.map(|b| b.unwrap()).collect().await
}

/// A delete request of the lines of `app` holding `word`, over the first 10 µs from `t0`.
fn delete_lines_with(app: &str, word: &str, t0: i64) -> crate::delete::DeleteSpec {
    crate::delete::DeleteSpec {
        query: format!(r#"{{app="{app}"}} |= "{word}""#),
        matchers: vec![vec![("app".into(), "=".into(), app.into())]],
        line_filters: vec![(crate::delete::LineOp::Contains, word.into())],
        start_ns: t0,
        end_ns: t0 + 10_000,
    }
}

async fn count(store: &LogStore, req: ScanRequest) -> usize {
    collect(store, req).await.iter().map(RecordBatch::num_rows).sum()
}

fn tenant() -> Tenant {
    Tenant::default_tenant()
}

#[tokio::test]
async fn append_scan_flush_reopen_compact() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns();
    {
        let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
        store.append(&tenant(), batch("api", 0, 3000, t0)).await.unwrap();
        store.append(&tenant(), batch("web", 0, 500, t0)).await.unwrap();
        assert_eq!(count(&store, ScanRequest::all(tenant())).await, 3500);

        store.flush().await.unwrap();
        assert_eq!(store.stats().head_rows, 0);
        assert_eq!(store.stats().part_rows, 3500);
        store.append(&tenant(), batch("api", 3000, 100, t0)).await.unwrap();

        // Matchers, substrings and time bounds, across part and head.
        let mut req = ScanRequest::all(tenant());
        req.matchers = vec![LabelMatcher::new("app", MatchOp::Eq, "web").unwrap()];
        assert_eq!(count(&store, req.clone()).await, 500);
        req.line_contains = vec![" word3".into()];
        assert_eq!(count(&store, req.clone()).await, (0..500).filter(|i| i % 7 == 3).count());
        let mut req = ScanRequest::all(tenant());
        req.start_ns = t0 + 10;
        req.end_ns = t0 + 20;
        req.columns = Some(vec!["message".into(), "app".into(), "level".into()]);
        let got = collect(&store, req).await;
        assert_eq!(got.iter().map(RecordBatch::num_rows).sum::<usize>(), 20);
        let b = &got[0];
        assert_eq!(b.num_columns(), 3);
        assert!(b.column(1).as_string::<i32>().iter().all(|v| matches!(v, Some("api" | "web"))));
        // Not closed cleanly: the last append is only in the WAL.
    }
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 3600);
    assert_eq!(store.stats().head_rows, 100);

    for i in 0..4 {
        store.append(&tenant(), batch("db", i * 10, 10, t0)).await.unwrap();
        store.flush().await.unwrap();
    }
    let before = store.stats();
    let merged = store.compact().await.unwrap();
    assert!(merged >= 4, "merged {merged}");
    let after = store.stats();
    assert!(after.parts < before.parts);
    assert_eq!(after.part_rows, 3640);
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 3640);
    let mut req = ScanRequest::all(tenant());
    req.matchers = vec![LabelMatcher::new("app", MatchOp::Re, "db|web").unwrap()];
    assert_eq!(count(&store, req).await, 540);
}

#[tokio::test]
async fn retention_drops_old_days_and_lock_excludes_a_second_opener() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.retention = Duration::from_secs(2 * 86_400);
    let store = LogStore::open(opts.clone(), &mut Registry::default()).unwrap();
    assert!(matches!(LogStore::open(opts.clone(), &mut Registry::default()), Err(Error::Locked { .. })));
    let now = now_ns();
    store.append(&tenant(), batch("old", 0, 10, now - 5 * NANOS_PER_DAY)).await.unwrap();
    store.append(&tenant(), batch("new", 0, 10, now)).await.unwrap();
    store.flush().await.unwrap();
    assert_eq!(store.stats().parts, 2);
    assert_eq!(store.apply_retention().await.unwrap(), 1);
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 10);
    let old_day = crate::time::format_day(day_of_ns(now - 5 * NANOS_PER_DAY));
    assert!(!dir.path().join(format!("logs/tenant=default/date={old_day}")).exists());
}

#[tokio::test]
async fn compaction_of_large_multi_stream_parts_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns() - 3 * NANOS_PER_DAY;
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    for k in 0..16 {
        store.append(&tenant(), batch(&format!("app{k}"), 0, 2000, t0)).await.unwrap();
        if k == 7 {
            store.flush().await.unwrap();
        }
    }
    store.flush().await.unwrap();
    assert_eq!(store.stats().parts, 2);
    drop(store);
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 32_000);
    assert_eq!(store.compact().await.unwrap(), 2);
    assert_eq!(store.stats().parts, 1);
    assert_eq!(store.stats().part_rows, 32_000);
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 32_000);
    let mut req = ScanRequest::all(tenant());
    req.columns = Some(vec!["app".into()]);
    assert_eq!(count(&store, req).await, 32_000);
}

#[tokio::test]
async fn a_day_of_many_parts_is_merged_in_jobs_of_bounded_fan_in() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns() - 3 * NANOS_PER_DAY;
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    let parts = 2 * crate::compact::MAX_MERGE_INPUTS + 5;
    for k in 0..parts {
        store.append(&tenant(), batch(&format!("app{}", k % 3), k * 10, 10, t0)).await.unwrap();
        store.flush().await.unwrap();
    }
    assert_eq!(store.stats().parts, parts);
    // One round: jobs of at most MAX_MERGE_INPUTS parts each, every part of the day taken.
    assert_eq!(store.compact().await.unwrap(), parts);
    assert_eq!(store.stats().parts, 3);
    assert!(store.inner.state.read().parts.iter().all(|p| p.meta.rows <= 10 * crate::compact::MAX_MERGE_INPUTS as u64));
    // The next round merges their outputs.
    assert_eq!(store.compact().await.unwrap(), 3);
    assert_eq!(store.stats().parts, 1);
    assert_eq!(store.stats().part_rows, 10 * parts as u64);
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 10 * parts);
    // Each row was written by two merges.
    assert_eq!(store.metrics().compacted_rows.get(), 2 * 10 * parts as u64);
}

#[tokio::test]
async fn the_current_day_merges_by_tiers_and_leaves_a_merged_part_alone_until_its_tier_fills() {
    let dir = tempfile::tempdir().unwrap();
    // Today's rows (the tiers are the current day's rule).
    let t0 = now_ns();
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    let min = StoreConfig::default().compaction_min_parts;
    let mut rows = 0;
    let flush_one = async |k: usize| {
        store.append(&tenant(), batch("app", k * 10, 10, t0)).await.unwrap();
        store.flush().await.unwrap();
    };
    for k in 0..min {
        flush_one(k).await;
        rows += 10;
    }
    assert_eq!(store.compact().await.unwrap(), min);
    let levels = |s: &LogStore| {
        let mut v: Vec<(u32, u64)> = s.inner.state.read().parts.iter().map(|p| (p.meta.level, p.meta.id)).collect();
        v.sort_unstable();
        v
    };
    let first = levels(&store);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, 1);
    // Fewer than `min` new flushed parts: nothing merges, and the merged part is not rewritten with them.
    for k in min..2 * min - 1 {
        flush_one(k).await;
        rows += 10;
    }
    assert_eq!(store.compact().await.unwrap(), 0);
    // The tier of flushed parts fills: they merge among themselves; the first merged part stays as it was.
    flush_one(2 * min).await;
    rows += 10;
    assert_eq!(store.compact().await.unwrap(), min);
    let now = levels(&store);
    assert_eq!(now.len(), 2);
    assert!(now.contains(&first[0]), "{now:?} lost {first:?}");
    assert!(now.iter().all(|(level, _)| *level == 1));
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, rows);
}

#[tokio::test]
async fn coarse_timestamps_are_stored_in_a_coarse_unit_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    let t0 = (now_ns() / 1_000_000) * 1_000_000;
    let mut b = batch("ms", 0, 100, 0);
    for (i, e) in b.entries.iter_mut().enumerate() {
        e.time_ns = t0 + i as i64 * 1_000_000;
    }
    store.append(&tenant(), b).await.unwrap();
    store.flush().await.unwrap();
    let units: Vec<TimeUnitTag> = store.inner.state.read().parts.iter().map(|p| p.meta.time_unit).collect();
    assert_eq!(units, vec![TimeUnitTag::Ms]);
    // A nanosecond entry of the same day makes the merged part nanosecond again, losing nothing.
    let mut b = batch("ns", 0, 1, 0);
    b.entries[0].time_ns = t0 + 7;
    store.append(&tenant(), b).await.unwrap();
    store.flush().await.unwrap();
    for _ in 0..2 {
        store.append(&tenant(), batch("more", 0, 1, t0 + 1_000_000_000)).await.unwrap();
        store.flush().await.unwrap();
    }
    assert!(store.compact().await.unwrap() >= 4);
    let units: Vec<TimeUnitTag> = store.inner.state.read().parts.iter().map(|p| p.meta.time_unit).collect();
    assert_eq!(units, vec![TimeUnitTag::Ns]);
    let mut req = ScanRequest::all(tenant());
    req.columns = Some(vec!["time".into()]);
    let mut times: Vec<i64> = collect(&store, req)
        .await
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<arrow::datatypes::TimestampNanosecondType>().values().to_vec())
        .collect();
    times.sort_unstable();
    assert_eq!(times.len(), 103);
    assert_eq!((times[0], times[1], times[2]), (t0, t0 + 7, t0 + 1_000_000));
}

/// One budget over both stores: whole days go oldest first across logs and metrics, then the last day's
/// oldest parts (today's too).
#[tokio::test]
async fn disk_budget_deletes_the_oldest_days_across_both_stores() {
    use crate::disk::{DiskGuard, enforce_budget, usage};
    let dir = tempfile::tempdir().unwrap();
    let now = now_ns();
    let mut opts = options(dir.path());
    let open = |opts: &StoreOptions| {
        let mut reg = Registry::default();
        (LogStore::open(opts.clone(), &mut reg).unwrap(), crate::MetricStore::open(opts.clone(), &mut reg).unwrap())
    };
    {
        let (logs, metrics) = open(&opts);
        for (age, app) in [(3, "d3"), (2, "d2"), (0, "today")] {
            logs.append(&tenant(), batch(app, 0, 2000, now - age * NANOS_PER_DAY)).await.unwrap();
        }
        let mut b = metrics.batch(&tenant());
        for age in [3i64, 0] {
            let t = (now - age * NANOS_PER_DAY) / 1_000_000;
            b.add(&[("__name__", "up"), ("age", &age.to_string())], (0..500).map(|i| (t + i, i as f64)));
        }
        metrics.append(b).await.unwrap();
        logs.flush().await.unwrap();
        metrics.flush().await.unwrap();
    }
    let (logs, metrics) = open(&opts);
    let day3 = day_of_ns(now - 3 * NANOS_PER_DAY);
    let weigh = |logs: &LogStore, metrics: &crate::MetricStore, day: i64| -> u64 {
        logs.budget_parts().iter().chain(metrics.budget_parts().iter()).filter(|p| p.day == day).map(|p| p.bytes).sum()
    };
    let used = usage(dir.path()).total();
    assert!(used > 0);
    assert_eq!(metrics.budget_parts().iter().filter(|p| p.day == day3).count(), 1);
    // One byte over: day 3 goes whole, in both stores, and nothing else.
    let guard = DiskGuard::new(dir.path(), Some(ByteSize::b(0)), Some(ByteSize::b(used - 1)), &mut Registry::default())
        .unwrap();
    let day3_bytes = weigh(&logs, &metrics, day3);
    assert_eq!(enforce_budget(&guard, &logs, &metrics).await.unwrap(), 2);
    assert_eq!(weigh(&logs, &metrics, day3), 0);
    assert!(usage(dir.path()).total() <= used - day3_bytes);
    let mut req = ScanRequest::all(tenant());
    req.matchers = vec![LabelMatcher::new("app", MatchOp::Eq, "d2").unwrap()];
    assert_eq!(count(&logs, req).await, 2000);
    assert_eq!(metrics.stats().parts, 1);
    // Within budget now: nothing more goes.
    assert_eq!(enforce_budget(&guard, &logs, &metrics).await.unwrap(), 0);
    drop((logs, metrics));

    // A budget nothing fits in: every day but the last goes whole, then the last day's parts, today's too.
    opts.disk = None;
    let (logs, metrics) = open(&opts);
    let tiny =
        DiskGuard::new(dir.path(), Some(ByteSize::b(0)), Some(ByteSize::b(1)), &mut Registry::default()).unwrap();
    assert_eq!(enforce_budget(&tiny, &logs, &metrics).await.unwrap(), 3);
    assert_eq!(logs.stats().parts + metrics.stats().parts, 0);
    assert_eq!(count(&logs, ScanRequest::all(tenant())).await, 0);
}

/// A field named like another stream's label shares that label's column in parts and scans: neither the
/// label values nor the field values are lost.
#[tokio::test]
async fn a_field_named_like_another_streams_label_keeps_both() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    let t0 = crate::time::now_ns() - 1_000_000_000;
    let mut b = LogBatch::default();
    let labelled =
        b.stream_index(Labels::from_pairs(vec![("app".into(), "a".into()), ("level".into(), "error".into())]));
    let plain = b.stream_index(Labels::from_pairs(vec![("app".into(), "b".into())]));
    b.entries.push(LogEntry { stream: labelled, time_ns: t0, line: "x".into(), fields: vec![] });
    b.entries.push(LogEntry {
        stream: plain,
        time_ns: t0 + 1,
        line: "y".into(),
        fields: vec![("level".into(), "warn".into())],
    });
    store.append(&tenant(), b).await.unwrap();
    for flushed in [false, true] {
        if flushed {
            store.flush().await.unwrap();
        }
        let req = ScanRequest { columns: Some(vec!["app".into(), "level".into()]), ..ScanRequest::all(tenant()) };
        let mut got: Vec<(String, String)> = Vec::new();
        for batch in collect(&store, req).await {
            let (apps, levels) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>());
            for i in 0..batch.num_rows() {
                got.push((apps.value(i).to_string(), levels.value(i).to_string()));
            }
        }
        got.sort();
        assert_eq!(got, vec![("a".into(), "error".into()), ("b".into(), "warn".into())], "flushed: {flushed}");
        assert!(store.field_names(&tenant()).contains("level"), "the shared field stays known; flushed: {flushed}");
    }
}

#[tokio::test]
async fn a_producers_batch_is_stored_once_across_replay_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns();
    {
        let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
        assert_eq!(store.append_once(&tenant(), batch("a", 0, 10, t0), "agent-1", 1).await.unwrap(), Appended::Stored);
        assert_eq!(store.append_once(&tenant(), batch("a", 10, 10, t0), "agent-1", 2).await.unwrap(), Appended::Stored);
        // A resend of 2 and an older batch are not stored; another producer's 1 is.
        let dup = store.append_once(&tenant(), batch("a", 10, 10, t0), "agent-1", 2).await.unwrap();
        assert_eq!(dup, Appended::Duplicate { stored: 2 });
        let old = store.append_once(&tenant(), batch("a", 0, 10, t0), "agent-1", 1).await.unwrap();
        assert_eq!(old, Appended::Duplicate { stored: 2 });
        assert_eq!(store.append_once(&tenant(), batch("b", 0, 5, t0), "agent-2", 1).await.unwrap(), Appended::Stored);
        // The sequence is per tenant.
        let other = Tenant::new("other").unwrap();
        assert_eq!(store.append_once(&other, batch("a", 0, 1, t0), "agent-1", 2).await.unwrap(), Appended::Stored);
        assert_eq!(count(&store, ScanRequest::all(tenant())).await, 25);
        store.flush().await.unwrap();
        // Batch 3 lives only in the WAL when the store closes.
        assert_eq!(store.append_once(&tenant(), batch("a", 20, 10, t0), "agent-1", 3).await.unwrap(), Appended::Stored);
    }
    // Reopened: sequences up to the flush come from the manifest, batch 3's from the WAL replay.
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    for seq in 1..=3 {
        let r = store.append_once(&tenant(), batch("a", 0, 10, t0), "agent-1", seq).await.unwrap();
        assert_eq!(r, Appended::Duplicate { stored: 3 }, "seq {seq}");
    }
    let r = store.append_once(&tenant(), batch("b", 0, 5, t0), "agent-2", 1).await.unwrap();
    assert_eq!(r, Appended::Duplicate { stored: 1 });
    assert_eq!(store.append_once(&tenant(), batch("a", 30, 10, t0), "agent-1", 4).await.unwrap(), Appended::Stored);
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 45);
}

#[tokio::test]
async fn delivery_marks_survive_replay_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns();
    let mark = |pkid: u16, hash: u64| DeliveryMark {
        session: Arc::from("broker:lumen"),
        window: 100,
        pkid,
        hash,
        needs: crate::SampleTag { epoch: 7, n: hash },
    };
    {
        let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
        assert!(store.delivered("broker:lumen", 1, 11).is_none());
        store.append_marked(&tenant(), batch("a", 0, 2, t0), vec![mark(1, 11), mark(2, 22)]).await.unwrap();
        assert!(store.delivered("broker:lumen", 1, 11).is_some());
        assert!(store.delivered("broker:lumen", 1, 12).is_none(), "the hash tells a reused packet id apart");
        store.flush().await.unwrap();
        // This one lives only in the WAL when the store closes.
        store.append_marked(&tenant(), batch("a", 2, 1, t0), vec![mark(3, 33)]).await.unwrap();
    }
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    assert!(store.delivered("broker:lumen", 1, 11).is_some(), "from the file written at flush");
    assert_eq!(
        store.delivered("broker:lumen", 3, 33),
        Some(crate::SampleTag { epoch: 7, n: 33 }),
        "from the WAL replay, with what it needs"
    );
    assert_eq!(store.max_mark_epoch(), 7);
    assert!(store.delivered("endpoint:dev", 3, 33).is_none());
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 3);
    drop(store);

    // A damaged marks file does not stop the start: it is set aside, the data is all there, and the marks
    // of records past the checkpoint come back from the WAL.
    std::fs::write(dir.path().join("delivery-marks.bin"), b"LMK1 garbage").unwrap();
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    assert!(dir.path().join("quarantine/delivery-marks.bin").exists(), "the damaged file is kept for inspection");
    assert!(store.delivered("broker:lumen", 1, 11).is_none(), "that mark lived only in the damaged file");
    assert!(store.delivered("broker:lumen", 3, 33).is_some(), "replayed from the WAL");
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 3);
}

/// The log store's part files (Parquet and index), sorted.
fn part_files(dir: &Path) -> Vec<PathBuf> {
    crate::manifest::part_files(&dir.join("logs")).into_iter().map(|(_, p)| p).collect()
}

/// Issue 17 §5: without its manifest the store started empty and its next flush overwrote a part.
#[tokio::test]
async fn a_missing_manifest_is_refused_and_part_numbers_stay_above_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns();
    {
        let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
        store.append(&tenant(), batch("api", 0, 100, t0)).await.unwrap();
        store.flush().await.unwrap();
    }
    let manifest = dir.path().join("manifest.json");
    let saved = fs::read(&manifest).unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> =
        part_files(dir.path()).into_iter().map(|p| (p.clone(), fs::read(p).unwrap())).collect();
    fs::remove_file(&manifest).unwrap();
    let err = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap_err();
    assert!(matches!(err, Error::Refused { .. }) && err.to_string().contains("manifest.json"), "{err}");
    for (p, bytes) in &before {
        assert_eq!(&fs::read(p).unwrap(), bytes, "{} is untouched", p.display());
    }

    // A part file the manifest never knew of (here one set aside earlier) keeps its number.
    fs::write(&manifest, saved).unwrap();
    let day = before[0].0.parent().unwrap().strip_prefix(dir.path()).unwrap().to_path_buf();
    let stray = dir.path().join("quarantine").join(&day).join("0000000000000050.parquet");
    fs::create_dir_all(stray.parent().unwrap()).unwrap();
    fs::write(&stray, b"not a part").unwrap();
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    store.append(&tenant(), batch("api", 100, 10, t0)).await.unwrap();
    store.flush().await.unwrap();
    let ids: Vec<u64> = crate::manifest::part_files(&dir.path().join("logs")).into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![1, 1, 0x51, 0x51], "the new part is numbered above the stray file");
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 110);

    // And a part is never written over an existing file.
    let meta = store.inner.state.read().parts[0].meta.clone();
    let schema = table_schema(std::iter::empty::<&String>(), std::iter::empty::<&String>());
    let err = PartWriter::create(dir.path(), meta.clone(), schema, store.write_options(0)).err().unwrap();
    assert!(err.to_string().contains("create"), "{err}");
    assert_eq!(fs::read(meta.parquet_path(dir.path())).unwrap(), before[1].1);
}

/// Issue 17 §5: a truncated part failed every scan of its tenant.
#[tokio::test]
async fn an_unreadable_part_is_left_out_named_and_set_aside_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns();
    let mut registry = Registry::default();
    let store = LogStore::open(options(dir.path()), &mut registry).unwrap();
    store.append(&tenant(), batch("api", 0, 100, t0)).await.unwrap();
    store.flush().await.unwrap();
    store.append(&tenant(), batch("web", 0, 50, t0)).await.unwrap();
    store.flush().await.unwrap();
    store.append(&tenant(), batch("db", 0, 20, t0)).await.unwrap();
    let first = part_files(dir.path())[1].clone(); // the first part's Parquet file (after its index)
    assert!(first.to_string_lossy().ends_with("0000000000000001.parquet"));
    let len = fs::metadata(&first).unwrap().len();
    OpenOptions::new().write(true).open(&first).unwrap().set_len(len / 2).unwrap();

    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 70, "the other part and the head");
    let skipped = store.skipped_parts(&tenant(), i64::MIN, i64::MAX);
    assert_eq!(skipped.len(), 1);
    assert_eq!((skipped[0].file.clone(), skipped[0].rows), (first.clone(), 100));
    assert!(skipped[0].to_string().contains("100 rows"), "{}", skipped[0]);
    assert!(store.skipped_parts(&tenant(), t0 + 200, t0 + 300).is_empty(), "outside its time range");
    let counts = store.count_by_stream(&tenant(), &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(counts.values().sum::<u64>(), 70);
    assert_eq!(store.compact().await.unwrap(), 0, "compaction leaves it alone");
    store.update_gauges();
    assert_eq!(store.metrics().unreadable_parts.get(), 1);
    drop(store);

    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 70);
    assert_eq!(store.metrics().quarantined_files.get(), 2, "the part and its index");
    let skipped = store.skipped_parts(&tenant(), i64::MIN, i64::MAX);
    assert_eq!(skipped.len(), 1, "still named after the restart");
    let kept = dir.path().join("quarantine").join(first.strip_prefix(dir.path()).unwrap());
    assert_eq!(skipped[0].file, kept);
    assert_eq!(fs::metadata(&kept).unwrap().len(), len / 2);
    drop(store);

    // Once an operator deleted the quarantined files, the part is forgotten.
    fs::remove_dir_all(dir.path().join("quarantine")).unwrap();
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    assert!(store.skipped_parts(&tenant(), i64::MIN, i64::MAX).is_empty());
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 70);
}

/// A quarantined part is kept (and named by queries) until its days are past the retention period; then
/// retention deletes it as it would have deleted the part, files and entry.
#[tokio::test]
async fn a_quarantined_part_past_the_retention_period_is_deleted_by_retention() {
    let dir = tempfile::tempdir().unwrap();
    let old = now_ns() - 10 * 86_400 * 1_000_000_000;
    {
        let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
        store.append(&tenant(), batch("api", 0, 100, old)).await.unwrap();
        store.flush().await.unwrap();
        store.append(&tenant(), batch("web", 0, 50, now_ns())).await.unwrap();
        store.flush().await.unwrap();
    }
    let first = part_files(dir.path())[1].clone();
    assert!(first.to_string_lossy().ends_with("0000000000000001.parquet"));
    let len = fs::metadata(&first).unwrap().len();
    OpenOptions::new().write(true).open(&first).unwrap().set_len(len / 2).unwrap();
    let kept = dir.path().join("quarantine").join(first.strip_prefix(dir.path()).unwrap());
    {
        // Within the 30-day period: quarantined at start, kept by retention, still named.
        let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
        assert!(kept.exists());
        assert_eq!(store.apply_retention().await.unwrap(), 0);
        assert_eq!(store.skipped_parts(&tenant(), i64::MIN, i64::MAX).len(), 1);
        assert!(kept.exists(), "kept while within the period");
    }
    // A 5-day period: its days are past it.
    let short = StoreOptions { retention: Duration::from_secs(5 * 86_400), ..options(dir.path()) };
    let store = LogStore::open(short.clone(), &mut Registry::default()).unwrap();
    assert_eq!(store.apply_retention().await.unwrap(), 1);
    assert!(store.skipped_parts(&tenant(), i64::MIN, i64::MAX).is_empty(), "no longer named");
    assert!(!kept.exists(), "its files left the quarantine");
    assert_eq!(count(&store, ScanRequest::all(tenant())).await, 50, "the other part stays");
    drop(store);
    let store = LogStore::open(short, &mut Registry::default()).unwrap();
    assert!(store.skipped_parts(&tenant(), i64::MIN, i64::MAX).is_empty(), "the manifest no longer lists it");
}

/// Issue 17 §5: a corrupt index file stopped the store from opening.
#[tokio::test]
async fn a_damaged_index_is_rebuilt_byte_for_byte_from_its_part() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns();
    {
        let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
        store.append(&tenant(), batch("api", 0, 3000, t0)).await.unwrap(); // three row groups
        store.append(&tenant(), batch("web", 0, 500, t0)).await.unwrap();
        store.flush().await.unwrap();
    }
    let index = part_files(dir.path())[0].clone();
    assert!(index.to_string_lossy().ends_with(".idx"));
    let good = fs::read(&index).unwrap();
    for damage in [0, 30, good.len() - 1] {
        let mut bad = good.clone();
        bad[damage] ^= 0x10;
        if damage == good.len() - 1 {
            bad.truncate(damage); // cut short
        }
        fs::write(&index, &bad).unwrap();
        let mut registry = Registry::default();
        let store = LogStore::open(options(dir.path()), &mut registry).unwrap();
        assert_eq!(store.metrics().rebuilt_indexes.get(), 1, "damage at {damage}");
        assert_eq!(fs::read(&index).unwrap(), good, "damage at {damage}");
        let mut req = ScanRequest::all(tenant());
        req.line_contains = vec![" word3".into()];
        assert_eq!(
            count(&store, req).await,
            (0..3000).filter(|i| i % 7 == 3).count() + (0..500).filter(|i| i % 7 == 3).count()
        );
    }
    assert_eq!(
        fs::read_dir(index.parent().unwrap().to_string_lossy().replace("/logs/", "/quarantine/logs/")).unwrap().count(),
        3
    );
}

/// Issue 23: the scan's shortcuts (part rows read through the stream index are not checked against the
/// stream set again, a part inside the time range is not compared with it, the first substring is
/// searched over a batch's whole buffer) give exactly the rows a check of every row gives.
#[tokio::test]
async fn scan_shortcuts_give_the_rows_a_check_of_every_row_gives() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns();
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    for app in ["a", "b", "c"] {
        store.append(&tenant(), batch(app, 0, 3000, t0)).await.unwrap();
    }
    store.flush().await.unwrap();
    // Head rows of a selected stream and of one left out.
    store.append(&tenant(), batch("b", 3000, 500, t0)).await.unwrap();
    store.append(&tenant(), batch("a", 3000, 500, t0)).await.unwrap();
    let expected = |range: std::ops::Range<usize>, needles: &[&str]| -> usize {
        let mut n = 0;
        for (app, rows) in [("b", 0..3500), ("c", 0..3000)] {
            n += rows
                .filter(|i| range.contains(i))
                .map(|i| format!("line {i} from {app} with word{}", i % 7))
                .filter(|line| needles.iter().all(|s| line.contains(s)))
                .count();
        }
        n
    };
    for (range, needles) in [
        (0..usize::MAX, vec!["word3"]),
        (0..usize::MAX, vec!["word3", "1"]),
        (100..3200, vec!["9 from", "word"]),
        (0..usize::MAX, vec!["e 1", "b w"]),
        (0..usize::MAX, vec!["nowhere"]),
    ] {
        let mut req = ScanRequest::all(tenant());
        req.matchers = vec![LabelMatcher::new("app", MatchOp::Re, "b|c").unwrap()];
        req.line_contains = needles.iter().map(|s| s.to_string()).collect();
        if range.end != usize::MAX {
            req.start_ns = t0 + range.start as i64;
            req.end_ns = t0 + range.end as i64;
        }
        assert_eq!(count(&store, req).await, expected(range.clone(), &needles), "{range:?} {needles:?}");
    }
}

/// Issue 22's split read: a query node reads the parts it holds that the writer kept, the writer the
/// rest (its head and its other parts); across a flush and a compaction each row is read once.
#[tokio::test]
async fn a_delta_and_the_kept_parts_read_each_row_once_across_flush_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns() - NANOS_PER_DAY;
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    let rows = |tasks: Vec<ScanTask>| -> usize {
        let mut n = 0;
        for t in tasks {
            t.run(|b| {
                n += b.num_rows();
                true
            })
            .unwrap();
        }
        n
    };
    // What a query node that followed the commit holding `have` reads, and what the writer adds.
    let split = |have: &[u64]| -> (usize, usize) {
        let (keep, _, delta) = store.plan_delta(ScanRequest::all(tenant()), have.iter().copied().collect());
        // The query node's head is empty; here one store plays both nodes, so its head is taken out.
        let only = |ids: Vec<u64>| {
            let mut r = ScanRequest::all(tenant());
            r.parts = PartFilter::Only(Arc::new(ids.into_iter().collect()));
            rows(store.plan_scan(r, 2).1)
        };
        (only(keep) - only(Vec::new()), rows(delta))
    };
    store.append(&tenant(), batch("api", 0, 1000, t0)).await.unwrap();
    store.flush().await.unwrap();
    let first = store.part_ids(&tenant(), i64::MIN, i64::MAX);
    assert_eq!(first.len(), 1);
    store.append(&tenant(), batch("web", 0, 500, t0)).await.unwrap();
    assert_eq!(split(&first), (1000, 500), "the part from the node, the head from the writer");
    assert_eq!(split(&[]), (0, 1500), "a node that holds nothing gets everything");
    store.flush().await.unwrap();
    assert_eq!(split(&first), (1000, 500), "the new part from the writer");
    assert_eq!(store.compact().await.unwrap(), 2);
    assert_eq!(split(&first), (0, 1500), "the merged part replaced the node's: all from the writer");
    let merged = store.part_ids(&tenant(), i64::MIN, i64::MAX);
    assert_eq!(split(&merged), (1500, 0), "once the node follows the compaction, all from its part");
    // A node's part the writer does not know (never, across a takeover) is not kept.
    assert_eq!(split(&[u64::MAX]), (0, 1500));
}

/// Compression of each field column of every live part file, by field name (the last seen wins).
fn field_compression(dir: &Path) -> HashMap<String, parquet::basic::Compression> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut out = HashMap::new();
    for path in part_files(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")) {
        let Ok(file) = std::fs::File::open(&path) else { continue };
        let reader = SerializedFileReader::new(file).unwrap();
        for rg in reader.metadata().row_groups() {
            for c in rg.columns() {
                out.insert(c.column_descr().name().to_string(), c.compression());
            }
        }
    }
    out
}

/// Issue 17: a field with a few bytes of values in a part is written uncompressed (a compressed column
/// costs its writer ~100 KiB of zstd contexts, so 2,000 sparse field columns took ~200 MiB to flush);
/// a field with many bytes keeps zstd. Both at flush and after compaction, every value reads back.
#[tokio::test]
async fn sparse_fields_are_written_uncompressed_and_dense_ones_with_zstd() {
    use parquet::basic::Compression;
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    let t0 = now_ns();
    for round in 0..4 {
        let mut b = LogBatch::default();
        let s = b.stream_index(Labels::from_pairs(vec![("app".into(), "a".into())]));
        for i in 0..2000 {
            let mut fields = vec![("trace".to_string(), format!("{:032x}", i * 7919 + round))];
            if i == 5 {
                fields.push((format!("rare{round}"), "x".into()));
            }
            b.entries.push(LogEntry {
                stream: s,
                time_ns: t0 + (round * 2000 + i) as i64,
                line: format!("l{i}"),
                fields,
            });
        }
        store.append(&tenant(), b).await.unwrap();
        store.flush().await.unwrap();
        let c = field_compression(dir.path());
        assert_eq!(c.get(&format!("rare{round}")), Some(&Compression::UNCOMPRESSED), "{c:?}");
        assert!(matches!(c.get("trace"), Some(Compression::ZSTD(_))), "{c:?}");
    }
    assert!(store.compact().await.unwrap() >= 4);
    assert_eq!(store.stats().parts, 1);
    let c = field_compression(dir.path());
    for round in 0..4 {
        assert_eq!(c.get(&format!("rare{round}")), Some(&Compression::UNCOMPRESSED), "{c:?}");
    }
    assert!(matches!(c.get("trace"), Some(Compression::ZSTD(_))), "{c:?}");
    let req = ScanRequest {
        columns: Some(vec!["rare0".into(), "rare1".into(), "trace".into()]),
        ..ScanRequest::all(tenant())
    };
    let (mut rare, mut traces) = (0, 0);
    for batch in collect(&store, req).await {
        rare +=
            batch.column(0).len() - batch.column(0).null_count() + batch.column(1).len() - batch.column(1).null_count();
        traces += batch.column(2).len() - batch.column(2).null_count();
    }
    assert_eq!((rare, traces), (2, 8000));
}

/// Issue 23: a substring search skips the message pages whose trigram filters lack it (counted in
/// `scan_skipped_pages`), and finds exactly the lines a check of every line finds, in flushed and in
/// compacted parts.
#[tokio::test]
async fn substring_searches_skip_pages_without_the_needle_and_miss_no_line() {
    let dir = tempfile::tempdir().unwrap();
    // Yesterday: a finished day merges all its parts.
    let t0 = now_ns() - NANOS_PER_DAY;
    let mut opts = options(dir.path());
    opts.tuning.row_group_rows = 100_000;
    let store = LogStore::open(opts, &mut Registry::default()).unwrap();
    let lines = |app: &str, i: usize| {
        let what = if app == "noisy" && i % 100 == 7 { "error: disk full" } else { "request served" };
        format!("{app} line {i:05} {what} in {} ms", i % 13)
    };
    for round in 0..2 {
        for app in ["noisy", "quiet", "calm"] {
            let mut b = LogBatch::default();
            let s = b.stream_index(Labels::from_pairs(vec![("app".into(), app.into())]));
            for i in round * 3000..(round + 1) * 3000 {
                b.entries.push(LogEntry { stream: s, time_ns: t0 + i as i64, line: lines(app, i), fields: vec![] });
            }
            store.append(&tenant(), b).await.unwrap();
        }
        store.flush().await.unwrap();
    }
    let all: Vec<String> =
        ["noisy", "quiet", "calm"].iter().flat_map(|app| (0..6000).map(move |i| lines(app, i))).collect();
    for compacted in [false, true] {
        if compacted {
            assert!(store.compact().await.unwrap() >= 2);
        }
        for needles in
            [vec!["error"], vec!["quiet line 0"], vec!["disk", "noisy"], vec!["ms"], vec!["12 ms"], vec!["no such"]]
        {
            let skipped = store.metrics().scan_skipped_pages.get();
            let mut req = ScanRequest::all(tenant());
            req.line_contains = needles.iter().map(|s| s.to_string()).collect();
            let expected = all.iter().filter(|l| needles.iter().all(|n| l.contains(n))).count();
            assert_eq!(count(&store, req).await, expected, "{needles:?} compacted: {compacted}");
            let skipped = store.metrics().scan_skipped_pages.get() - skipped;
            match needles[0] {
                // Under three bytes: no page filter decides it. At the lines' ends, in every page.
                "ms" | "12 ms" => assert_eq!(skipped, 0),
                // The other streams' pages at least, in each part.
                _ => assert!(skipped >= if compacted { 2 } else { 4 }, "{needles:?}: {skipped} pages skipped"),
            }
        }
    }
}

/// Issue 23: a part's rows are cut into slices for the scan threads at its message pages' starts, and
/// every row lands in exactly one slice, in order.
#[test]
fn scan_slices_cover_every_row_once_and_cut_at_page_starts() {
    let ranges = vec![0..100, 150..1000, 1200..1210];
    let pages = [0, 70, 180, 400, 650, 900, 1200];
    for chunk in [1, 50, 200, 333, 5000] {
        for snap in [&pages[..], &[]] {
            let slices = split_ranges(&ranges, chunk, snap);
            let rows: Vec<u64> = slices.iter().flatten().flat_map(|r| r.clone()).collect();
            let expected: Vec<u64> = ranges.iter().flat_map(|r| r.clone()).collect();
            assert_eq!(rows, expected, "chunk {chunk}");
            for pair in slices.windows(2) {
                let cut = pair[1][0].start;
                let inside = ranges.iter().any(|r| r.start < cut && cut < r.end);
                assert!(!inside || snap.contains(&cut), "chunk {chunk}: cut at {cut} inside a range, not at a page");
                let rows: u64 = pair[0].iter().map(|r| r.end - r.start).sum();
                assert!(rows >= chunk, "chunk {chunk}: a slice before the last holds {rows}");
            }
        }
    }
    assert_eq!(
        split_ranges(&ranges, 200, &pages).len(),
        4,
        "cuts at 400, 650 and 900 (the last slice runs to the end)"
    );
}

/// Issue 23: a scan that asks the same of a part again is answered from the cache of scan answers with
/// the same rows; another substring or time range is not; while a delete is pending, nothing is taken
/// from or put into the cache, and the delete's rows stay hidden; a bound of 0 turns it off.
#[tokio::test]
async fn repeated_scans_are_answered_from_the_cache_and_deletes_bypass_it() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns() - NANOS_PER_DAY;
    let store = LogStore::open(options(dir.path()), &mut Registry::default()).unwrap();
    store.append(&tenant(), batch("api", 0, 3000, t0)).await.unwrap();
    store.append(&tenant(), batch("web", 0, 500, t0)).await.unwrap();
    store.flush().await.unwrap();
    let rows = |batches: Vec<RecordBatch>| -> Vec<String> {
        let mut out: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let m = b.column_by_name("message").unwrap().as_string::<i32>().clone();
                (0..m.len()).map(move |i| m.value(i).to_string())
            })
            .collect();
        out.sort();
        out
    };
    let request = |needle: &str, from: i64| {
        let mut r = ScanRequest::all(tenant());
        r.line_contains = vec![needle.to_string()];
        r.start_ns = t0 + from;
        r.columns = Some(vec!["message".into()]);
        r
    };
    let stats = || store.scan_cache_stats();
    let first = rows(collect(&store, request("word3", 0)).await);
    assert_eq!(first.len(), (0..3000).filter(|i| i % 7 == 3).count() + (0..500).filter(|i| i % 7 == 3).count());
    let (bytes, hits, misses) = stats();
    assert!(bytes > 0 && hits == 0 && misses > 0, "{:?}", stats());
    assert_eq!(rows(collect(&store, request("word3", 0)).await), first);
    assert!(stats().1 > hits, "the second scan was answered from the cache: {:?}", stats());
    // Another substring, another time range: not the cached answer.
    let word4 = (0..3000).filter(|i| i % 7 == 4).count() + (0..500).filter(|i| i % 7 == 4).count();
    assert_eq!(rows(collect(&store, request("word4", 0)).await).len(), word4);
    // From row 4 on: the same row groups and stream rows are read, only the time range differs.
    let later = rows(collect(&store, request("word3", 4)).await);
    assert_eq!(later.len(), first.len() - 2, "line 3 of each app is before the range");

    // A pending delete of the web lines with word3: hidden at once, the cache neither asked nor filled.
    let spec = delete_lines_with("web", "word3", t0);
    store.request_delete(&tenant(), spec).unwrap();
    let before = stats();
    let hidden = rows(collect(&store, request("word3", 0)).await);
    assert_eq!(hidden.len(), (0..3000).filter(|i| i % 7 == 3).count());
    assert!(hidden.iter().all(|l| l.contains("from api")));
    assert_eq!((stats().1, stats().2), (before.1, before.2), "no lookup while a delete is pending");

    store.set_scan_cache_max(0);
    assert_eq!(stats().0, 0);
    store.clear_scan_cache();
}

/// Issue 23: reads through the cache of decoded pages give exactly what reads without it give: any
/// streams, substrings, time range, stream limit and columns, in one task or cut into slices, from an
/// empty cache, a full one and one too small to fill. Another substring over the same rows is served from
/// the pages a first search kept; a pending delete still hides its rows; a scan that would decode more
/// than half the cache keeps nothing.
#[tokio::test]
async fn reads_through_the_page_cache_answer_as_reads_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ns() - NANOS_PER_DAY;
    let mut o = options(dir.path());
    o.tuning.scan_cache_max_bytes = ByteSize::b(0);
    let store = LogStore::open(o, &mut Registry::default()).unwrap();
    for (app, n) in [("api", 3000), ("web", 500), ("db", 1700), ("one", 1)] {
        store.append(&tenant(), batch(app, 0, n, t0)).await.unwrap();
    }
    store.flush().await.unwrap();
    store.append(&tenant(), batch("api", 3000, 900, t0)).await.unwrap();
    store.flush().await.unwrap();
    // Rows as text, in the order the tasks give them (one task: the store's order).
    async fn read(store: &LogStore, req: ScanRequest, partitions: usize) -> Vec<String> {
        let (_, tasks) = store.plan_scan(req, partitions);
        let mut out = Vec::new();
        for task in tasks {
            task.run(|b| {
                for i in 0..b.num_rows() {
                    let cols: Vec<String> = b
                        .columns()
                        .iter()
                        .map(|c| match c.data_type() {
                            arrow::datatypes::DataType::Timestamp(..) => {
                                c.as_primitive::<arrow::datatypes::TimestampNanosecondType>().value(i).to_string()
                            }
                            _ => arrow::util::display::array_value_to_string(c, i).unwrap(),
                        })
                        .collect();
                    out.push(cols.join("|"));
                }
                true
            })
            .unwrap();
        }
        out
    }
    let mut next = crate::testutil::xorshift(23);
    let apps = ["api", "web", "db", "one"];
    for round in 0..60 {
        let mut req = ScanRequest::all(tenant());
        if next().is_multiple_of(2) {
            let app = apps[(next() % 4) as usize];
            req.matchers = vec![LabelMatcher::new("app", MatchOp::Eq, app).unwrap()];
        }
        match next() % 3 {
            0 => {}
            1 => req.line_contains = vec![format!("word{}", next() % 7)],
            _ => req.line_contains = vec![format!("line {}", next() % 40), "word".into()],
        }
        if next().is_multiple_of(2) {
            req.start_ns = t0 + (next() % 3000) as i64;
            req.end_ns = req.start_ns + (next() % 2000) as i64;
        }
        if req.line_contains.is_empty() && next().is_multiple_of(3) {
            req.stream_limit =
                Some(crate::scan::StreamLimit { rows: 1 + next() % 300, newest: next().is_multiple_of(2) });
        }
        if next().is_multiple_of(2) {
            req.columns = Some(vec!["message".into(), "level".into()]);
        }
        let partitions = 1 + (next() % 3) as usize;
        store.set_page_cache_max(0);
        let want = read(&store, req.clone(), partitions).await;
        // Every few rounds the cache starts empty or too small to fill; else it keeps what it has.
        match round % 5 {
            0 => store.clear_page_cache(),
            1 => store.set_page_cache_max(1024),
            _ => store.set_page_cache_max(64 << 20),
        }
        if round % 5 != 1 {
            store.set_page_cache_max(64 << 20);
        }
        let got = read(&store, req.clone(), partitions).await;
        assert_eq!(got, want, "round {round}: {req:?}");
        let again = read(&store, req.clone(), partitions).await;
        assert_eq!(again, want, "round {round}, from the cache: {req:?}");
    }

    // A search keeps the pages it decoded; another substring over the same rows decodes nothing.
    store.clear_page_cache();
    let search = |needle: &str| {
        let mut r = ScanRequest::all(tenant());
        r.matchers = vec![LabelMatcher::new("app", MatchOp::Eq, "db").unwrap()];
        r.line_contains = vec![needle.to_string()];
        r.columns = Some(vec!["message".into()]);
        r
    };
    let word3 = read(&store, search("word3"), 1).await;
    assert_eq!(word3.len(), (0..1700).filter(|i| i % 7 == 3).count());
    let (bytes, hits, misses) = store.page_cache_stats();
    assert!(bytes > 0 && misses > 0, "{:?}", store.page_cache_stats());
    let word5 = read(&store, search("word5"), 1).await;
    assert_eq!(word5.len(), (0..1700).filter(|i| i % 7 == 5).count());
    let (_, hits2, misses2) = store.page_cache_stats();
    assert_eq!(misses2, misses, "no span of the db stream was decoded again");
    assert!(hits2 > hits);

    // A scan that reads no lines (times and a field) keeps nothing: they decode fast.
    let before = store.page_cache_stats().0;
    let mut times = ScanRequest::all(tenant());
    times.columns = Some(vec!["level".into()]);
    assert_eq!(read(&store, times, 1).await.len(), 3000 + 500 + 1700 + 1 + 900);
    assert_eq!(store.page_cache_stats().0, before, "nothing kept: {:?}", store.page_cache_stats());

    // A pending delete hides its rows from reads served from the cache.
    let spec = delete_lines_with("db", "word5", t0);
    store.request_delete(&tenant(), spec).unwrap();
    let misses = store.page_cache_stats().2;
    assert!(read(&store, search("word5"), 1).await.is_empty());
    assert_eq!(store.page_cache_stats().2, misses, "served from the cache");

    // A cache too small for the scan (over half of it): it takes nothing in.
    store.set_page_cache_max(0);
    store.set_page_cache_max(4096);
    assert!(!read(&store, search("word3"), 1).await.is_empty());
    assert_eq!(store.page_cache_stats().0, 0, "nothing kept: {:?}", store.page_cache_stats());
}
