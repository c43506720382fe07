use std::time::Duration;

use super::*;
use crate::config::StoreConfig;
use crate::scan::MatchOp;

const STALE: u64 = 0x7ff0_0000_0000_0002;

fn open(dir: &Path) -> MetricStore {
    let options = StoreOptions {
        data_dir: dir.to_path_buf(),
        retention: Duration::from_secs(7 * 86_400),
        disk: None,
        retention_rules: Vec::new(),
        tuning: StoreConfig { compaction_min_parts: 2, ..StoreConfig::default() },
    };
    MetricStore::open(options, &mut Registry::default()).unwrap()
}

fn now_ms() -> i64 {
    crate::time::now_ns() / 1_000_000
}

fn eq(name: &str, value: &str) -> LabelMatcher {
    LabelMatcher::new(name, MatchOp::Eq, value).unwrap()
}

/// (labels as "k=v,..", samples) of a select, sorted by labels.
fn read(store: &MetricStore, matchers: &[LabelMatcher], mint: i64, maxt: i64) -> Vec<(String, Vec<(i64, u64)>)> {
    let tenant = Tenant::default_tenant();
    let mut out: Vec<(String, Vec<(i64, u64)>)> = store
        .select(&tenant, matchers, mint, maxt)
        .unwrap()
        .into_iter()
        .map(|s| {
            let l: Vec<String> = s.labels.iter().map(|(n, v)| format!("{n}={v}")).collect();
            (l.join(","), s.t.iter().zip(s.v.iter()).map(|(&t, &v)| (t, v.to_bits())).collect())
        })
        .collect();
    out.sort();
    out
}

async fn write(store: &MetricStore, labels: &[(&str, &str)], samples: &[(i64, f64)]) {
    let mut b = store.batch(&Tenant::default_tenant());
    b.add(labels, samples.iter().copied());
    assert_eq!(b.rejected().0, 0, "{:?}", b.rejected().1);
    store.append(b).await.unwrap();
}

#[tokio::test]
async fn samples_survive_flush_restart_and_compaction_merged_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ms() - 3_600_000;
    let up = [("__name__", "up"), ("job", "api")];
    // Labels in any order name the same series.
    let cpu = [("job", "api"), ("__name__", "cpu_seconds_total"), ("mode", "idle")];
    {
        let store = open(dir.path());
        write(&store, &up, &[(t0, 1.0), (t0 + 15_000, 0.0)]).await;
        write(&store, &cpu, &[(t0, 10.5), (t0 + 15_000, 11.25)]).await;
        store.flush().await.unwrap();
        // Out of order, a duplicate timestamp (last write wins), and a stale marker, in the head.
        write(&store, &up, &[(t0 + 45_000, 1.0), (t0 + 30_000, 1.0), (t0 + 15_000, 7.0)]).await;
        write(&store, &cpu, &[(t0 + 30_000, f64::from_bits(STALE))]).await;
        let got = read(&store, &[eq("__name__", "up")], t0, t0 + 60_000);
        assert_eq!(
            got,
            vec![(
                "__name__=up,job=api".to_string(),
                vec![
                    (t0, 1f64.to_bits()),
                    (t0 + 15_000, 7f64.to_bits()),
                    (t0 + 30_000, 1f64.to_bits()),
                    (t0 + 45_000, 1f64.to_bits())
                ]
            )]
        );
        // The store is dropped without a flush: the head comes back from the WAL.
    }
    let store = open(dir.path());
    let want_cpu = vec![(t0, 10.5f64.to_bits()), (t0 + 15_000, 11.25f64.to_bits()), (t0 + 30_000, STALE)];
    let got = read(&store, &[eq("job", "api"), eq("__name__", "cpu_seconds_total")], i64::MIN, i64::MAX);
    assert_eq!(got, vec![("__name__=cpu_seconds_total,job=api,mode=idle".to_string(), want_cpu.clone())]);
    store.flush().await.unwrap();
    // Window bounds are inclusive.
    let got = read(&store, &[eq("__name__", "cpu_seconds_total")], t0 + 15_000, t0 + 15_000);
    assert_eq!(got[0].1, vec![(t0 + 15_000, 11.25f64.to_bits())]);
    // Compaction merges the day's parts (the duplicate still reads as the last write).
    let before = store.stats();
    assert!(before.parts >= 2, "{before:?}");
    assert!(store.compact().await.unwrap() >= 2);
    let after = store.stats();
    assert!(after.parts < before.parts, "{before:?} -> {after:?}");
    let got = read(&store, &[eq("__name__", "up")], i64::MIN, i64::MAX);
    assert_eq!(got[0].1.len(), 4);
    assert_eq!(got[0].1[1], (t0 + 15_000, 7f64.to_bits()));
    let got = read(&store, &[eq("__name__", "cpu_seconds_total")], i64::MIN, i64::MAX);
    assert_eq!(got[0].1, want_cpu);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.stats().series, 2);
    assert_eq!(read(&store, &[eq("__name__", "cpu_seconds_total")], i64::MIN, i64::MAX)[0].1, want_cpu);
}

#[tokio::test]
async fn label_queries_use_postings_and_time_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t0 = now_ms() - 600_000;
    write(&store, &[("__name__", "up"), ("job", "api"), ("instance", "a")], &[(t0, 1.0)]).await;
    write(&store, &[("__name__", "up"), ("job", "db"), ("instance", "b")], &[(t0 + 300_000, 1.0)]).await;
    write(&store, &[("__name__", "temp"), ("room", "kitchen")], &[(t0, 21.5)]).await;
    store.flush().await.unwrap();
    let tenant = Tenant::default_tenant();
    let all = store.label_names(&tenant, &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(all.into_iter().collect::<Vec<_>>(), vec!["__name__", "instance", "job", "room"]);
    let ups = vec![vec![eq("__name__", "up")]];
    let names = store.label_names(&tenant, &ups, i64::MIN, i64::MAX).unwrap();
    assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["__name__", "instance", "job"]);
    let jobs = store.label_values(&tenant, "job", &[], i64::MIN, i64::MAX).unwrap();
    assert_eq!(jobs.into_iter().collect::<Vec<_>>(), vec!["api", "db"]);
    // Only `db` has samples in the later window.
    let late = store.label_values(&tenant, "job", &ups, t0 + 200_000, t0 + 400_000).unwrap();
    assert_eq!(late.into_iter().collect::<Vec<_>>(), vec!["db"]);
    let series =
        store.series(&tenant, &[vec![eq("room", "kitchen")], vec![eq("job", "api")]], i64::MIN, i64::MAX).unwrap();
    assert_eq!(series.len(), 2);
    assert!(store.series(&Tenant::new("other").unwrap(), &ups, i64::MIN, i64::MAX).unwrap().is_empty());
}

#[tokio::test]
async fn samples_outside_the_window_are_counted_not_added() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut b = store.batch(&Tenant::default_tenant());
    let now = now_ms();
    b.add(&[("__name__", "x")], [(now - 30 * DAY_MS, 1.0), (now, 2.0), (now + 3 * DAY_MS, 3.0)]);
    let (n, first) = b.rejected();
    assert_eq!(n, 2);
    assert!(first.unwrap().contains("outside the accepted window"), "{first:?}");
    assert_eq!(b.len(), 1);
}

#[tokio::test]
async fn a_series_first_used_by_two_concurrent_batches_survives_a_crash_of_either() {
    // The second batch sees the series registered but not yet logged: it carries the labels too.
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ms();
    {
        let store = open(dir.path());
        let tenant = Tenant::default_tenant();
        let mut a = store.batch(&tenant);
        a.add(&[("__name__", "x")], [(t0, 1.0)]);
        a.register_pending();
        let mut b = store.batch(&tenant);
        b.add(&[("__name__", "x")], [(t0 + 1, 2.0)]);
        assert_eq!(b.new_series.len(), 1, "the unlogged series travels with the second batch as well");
        // Only the second batch reaches the log.
        store.append(b).await.unwrap();
        drop(a);
    }
    {
        // A batch that is never appended registers nothing.
        let store = open(dir.path());
        let mut c = store.batch(&Tenant::default_tenant());
        c.add(&[("__name__", "never")], [(t0, 1.0)]);
        drop(c);
        let names = store.label_values(&Tenant::default_tenant(), "__name__", &[], i64::MIN, i64::MAX).unwrap();
        assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["x"]);
    }
    let store = open(dir.path());
    let got = read(&store, &[eq("__name__", "x")], i64::MIN, i64::MAX);
    assert_eq!(got, vec![("__name__=x".to_string(), vec![(t0 + 1, 2f64.to_bits())])]);
}

#[test]
fn compaction_merges_today_by_tiers_and_a_finished_day_whole() {
    let part = |id: u64, level: u32| {
        let meta = MetricPartMeta {
            id,
            tenant: "t".into(),
            day: 1,
            min_time: 0,
            max_time: 0,
            rows: 1,
            series: 1,
            bytes: 1,
            level,
        };
        Arc::new(MetricPart::open(Path::new("/nonexistent"), meta))
    };
    let ids = |job: Option<Vec<Arc<MetricPart>>>| job.map(|j| j.iter().map(|p| p.meta.id).collect::<Vec<_>>());
    // Today: three small parts and a big one; only a full tier merges.
    let today = vec![part(1, 1), part(2, 0), part(3, 0), part(4, 0)];
    assert_eq!(ids(compaction_job(today.clone(), false, 4)), None);
    assert_eq!(ids(compaction_job(today.clone(), false, 3)), Some(vec![2, 3, 4]));
    assert_eq!(ids(compaction_job(vec![part(1, 1), part(5, 1)], false, 2)), Some(vec![1, 5]));
    // A finished day: everything, or a lone flushed part alone.
    assert_eq!(ids(compaction_job(today, true, 4)), Some(vec![1, 2, 3, 4]));
    assert_eq!(ids(compaction_job(vec![part(6, 0)], true, 4)), Some(vec![6]));
    assert_eq!(ids(compaction_job(vec![part(7, 2)], true, 4)), None);
}

#[tokio::test]
async fn batch_tags_are_durable_across_replay_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Tenant::default_tenant();
    let t0 = now_ms();
    let tag = |epoch: u64, n: u64| SampleTag { epoch, n };
    {
        let store = open(dir.path());
        assert!(!store.tag_durable(tag(1, 1)));
        let mut b = store.batch(&tenant);
        b.add(&[("__name__", "x")], [(t0, 1.0)]);
        store.append_tagged(b, tag(1, 5)).await.unwrap();
        assert!(store.tag_durable(tag(1, 5)) && store.tag_durable(tag(1, 4)));
        assert!(!store.tag_durable(tag(1, 6)) && !store.tag_durable(tag(2, 1)), "epochs are apart");
        // An empty batch stores nothing, so its tag is not durable.
        store.append_tagged(store.batch(&tenant), tag(1, 6)).await.unwrap();
        assert!(!store.tag_durable(tag(1, 6)));
        store.flush().await.unwrap();
        let mut b = store.batch(&tenant);
        b.add(&[("__name__", "x")], [(t0 + 1, 2.0)]);
        store.append_tagged(b, tag(2, 1)).await.unwrap();
        // Untagged appends leave the tags alone.
        write(&store, &[("__name__", "y")], &[(t0, 3.0)]).await;
        assert_eq!(store.max_tag_epoch(), 2);
    }
    // (1, 5) from the manifest written at flush, (2, 1) from the WAL replay.
    let store = open(dir.path());
    assert!(store.tag_durable(tag(1, 5)) && store.tag_durable(tag(2, 1)));
    assert!(!store.tag_durable(tag(1, 6)));
    store.flush().await.unwrap();
    drop(store);
    let store = open(dir.path());
    assert!(store.tag_durable(tag(1, 5)) && store.tag_durable(tag(2, 1)));
    assert_eq!(store.max_tag_epoch(), 2);
}

/// Issue 17 §5: a truncated part failed every query; a lost catalog let new series take old ids.
#[tokio::test]
async fn an_unreadable_part_is_left_out_and_new_series_never_take_the_ids_of_parts() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_ms() - 600_000;
    let all = [LabelMatcher::new("__name__", MatchOp::Re, ".+").unwrap()];
    let tenant = Tenant::default_tenant();
    {
        let store = open(dir.path());
        write(&store, &[("__name__", "a")], &[(t0, 1.0), (t0 + 1000, 2.0)]).await; // id 0
        store.flush().await.unwrap();
        write(&store, &[("__name__", "b")], &[(t0, 3.0)]).await; // id 1
        store.flush().await.unwrap();
        let parts = crate::manifest::part_files(&dir.path().join("metrics"));
        assert_eq!(parts.len(), 2);
        let len = fs::metadata(&parts[0].1).unwrap().len();
        fs::OpenOptions::new().write(true).open(&parts[0].1).unwrap().set_len(len - 10).unwrap();
        let got = read(&store, &all, t0 - 1, t0 + 10_000);
        assert_eq!(got, vec![("__name__=b".to_string(), vec![(t0, 3.0f64.to_bits())])]);
        let skipped = store.skipped_parts(&tenant, t0 - 1, t0 + 10_000);
        assert_eq!((skipped.len(), skipped[0].rows, skipped[0].min_time_ns), (1, 2, t0 * 1_000_000));
        assert!(store.skipped_parts(&tenant, t0 + 5000, t0 + 10_000).is_empty());
        assert_eq!(store.series(&tenant, &[all.to_vec()], t0 - 1, t0 + 10_000).unwrap().len(), 1);
    }
    // Set aside at the start; the catalog is lost and salvaged empty: the ids 0 and 1 stay taken.
    let catalog = dir.path().join("metrics/tenant=default/series.bin");
    fs::remove_file(&catalog).unwrap();
    let err = MetricStore::open(
        StoreOptions {
            data_dir: dir.path().to_path_buf(),
            retention: Duration::from_secs(7 * 86_400),
            disk: None,
            retention_rules: Vec::new(),
            tuning: StoreConfig::default(),
        },
        &mut Registry::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("series.bin") && err.to_string().contains("missing"), "{err}");
    fs::write(dir.path().join("metrics/tenant=default/series.bin.salvage"), b"").unwrap();
    let store = open(dir.path());
    // The damaged part was set aside by the refused start already (a repair of its own); this one
    // set aside the salvage request.
    assert_eq!(store.inner.metrics.quarantined_files.get(), 1);
    assert_eq!(crate::manifest::part_files(&dir.path().join("quarantine/metrics")).len(), 1);
    assert_eq!(store.skipped_parts(&tenant, t0 - 1, t0 + 10_000).len(), 1);
    write(&store, &[("__name__", "c")], &[(t0 + 5000, 4.0)]).await;
    let got = read(&store, &all, t0 - 1, t0 + 10_000);
    assert_eq!(got, vec![("__name__=c".to_string(), vec![(t0 + 5000, 4.0f64.to_bits())])], "not b's sample");
    drop(store);
    // The salvage is remembered: the next start goes on without asking again.
    let store = open(dir.path());
    assert_eq!(read(&store, &all, t0 - 1, t0 + 10_000), got);
}

/// Issue 22's split select: a query node reads its parts the writer kept, the writer adds its head and
/// its other parts; across a flush and a compaction each sample is read once.
#[tokio::test]
async fn a_delta_and_the_kept_parts_select_each_sample_once_across_flush_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let tenant = Tenant::default_tenant();
    let t0 = now_ms() - 3_600_000;
    let up = [("__name__", "up"), ("job", "api")];
    let m = [eq("__name__", "up")];
    let samples = |s: &[SelectedSeries]| -> usize { s.iter().map(|s| s.t.len()).sum() };
    let split = |have: &[u64]| -> (usize, usize) {
        let (keep, delta) =
            store.select_delta(&tenant, &m, i64::MIN, i64::MAX, usize::MAX, have.iter().copied().collect()).unwrap();
        // The query node's head is empty; here one store plays both nodes, so its head is taken out.
        let only = |ids: Vec<u64>| {
            let f = PartFilter::Only(Arc::new(ids.into_iter().collect()));
            samples(&store.select_filtered(&tenant, &m, i64::MIN, i64::MAX, usize::MAX, &f, None).unwrap())
        };
        (only(keep) - only(Vec::new()), samples(&delta))
    };
    write(&store, &up, &(0..100).map(|i| (t0 + i * 1000, i as f64)).collect::<Vec<_>>()).await;
    store.flush().await.unwrap();
    let first = store.part_ids(&tenant, i64::MIN, i64::MAX);
    assert_eq!(first.len(), 1);
    write(&store, &up, &(100..150).map(|i| (t0 + i * 1000, i as f64)).collect::<Vec<_>>()).await;
    assert_eq!(split(&first), (100, 50), "the part from the node, the head from the writer");
    store.flush().await.unwrap();
    assert_eq!(split(&first), (100, 50));
    assert!(store.compact().await.unwrap() >= 2);
    assert_eq!(split(&first), (0, 150), "the merged part replaced the node's");
    let merged = store.part_ids(&tenant, i64::MIN, i64::MAX);
    assert_eq!(split(&merged), (150, 0));
}

/// Issue 23: the second select of the same series reads decoded runs from the cache and answers the
/// same, also after a compaction replaced the parts and under a pending delete.
#[tokio::test]
async fn a_repeated_select_reads_decoded_runs_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t0 = now_ms() - 3_600_000;
    for job in ["a", "b"] {
        let up = [("__name__", "up"), ("job", job)];
        write(&store, &up, &(0..200).map(|i| (t0 + i * 1000, i as f64)).collect::<Vec<_>>()).await;
        store.flush().await.unwrap();
    }
    let m = [eq("__name__", "up")];
    let first = read(&store, &m, t0, t0 + 100_000);
    let (_, hits0, misses0) = store.decoded_cache_stats();
    assert_eq!(hits0, 0);
    assert!(misses0 >= 2);
    // Another range over the same runs: all from the cache, trimmed to it.
    let again = read(&store, &m, t0, t0 + 100_000);
    assert_eq!(again, first);
    assert_eq!(store.decoded_cache_stats().1, 2, "both runs came from the cache");
    let later = read(&store, &m, t0 + 150_000, t0 + 199_000);
    assert_eq!(later[0].1.len(), 50);
    assert!(store.compact().await.unwrap() >= 2);
    assert_eq!(read(&store, &m, t0, t0 + 100_000), first, "the merged part reads the same");
    let tenant = Tenant::default_tenant();
    let spec = crate::delete::DeleteSpec {
        query: "up{job=\"a\"}".into(),
        matchers: vec![vec![("job".into(), "=".into(), "a".into())]],
        line_filters: Vec::new(),
        start_ns: 0,
        end_ns: i64::MAX,
    };
    store.request_delete(&tenant, spec).unwrap();
    let after = read(&store, &m, t0, t0 + 100_000);
    assert_eq!(after.len(), 1, "the pending delete hides job a, cached runs or not: {after:?}");
    store.clear_decoded_cache();
    assert_eq!(read(&store, &m, t0, t0 + 100_000), after);
}

/// A select sees every sample appended before it started, while flushes move the head into parts: the
/// active head is read at the same instant as the parts and frozen heads (a select that read it later
/// missed what a flush froze and wrote in between; seen as lost samples in the memory-budget test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selects_racing_flushes_see_every_sample_appended_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let t0 = now_ms() - 3_600_000;
    let series: Vec<String> = (0..200).map(|i| format!("s{i:03}")).collect();
    let appended = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flusher = {
        let (store, series, appended) = (store.clone(), series.clone(), appended.clone());
        tokio::spawn(async move {
            for k in 0..150i64 {
                let mut b = store.batch(&Tenant::default_tenant());
                for s in &series {
                    b.add(&[("__name__", "race"), ("s", s.as_str())], [(t0 + k * 1000, k as f64)]);
                }
                store.append(b).await.unwrap();
                appended.fetch_add(series.len(), std::sync::atomic::Ordering::SeqCst);
                if k % 3 == 0 {
                    store.flush().await.unwrap();
                }
            }
        })
    };
    let matchers = [eq("__name__", "race")];
    while !flusher.is_finished() {
        let before = appended.load(std::sync::atomic::Ordering::SeqCst);
        let seen: usize = {
            let store = store.clone();
            let m = matchers.clone();
            tokio::task::spawn_blocking(move || {
                store.select(&Tenant::default_tenant(), &m, t0, t0 + 1_000_000).unwrap().iter().map(|s| s.t.len()).sum()
            })
            .await
            .unwrap()
        };
        assert!(seen >= before, "a select saw {seen} samples where {before} were appended before it");
    }
    flusher.await.unwrap();
    assert_eq!(read(&store, &matchers, t0, t0 + 1_000_000).iter().map(|s| s.1.len()).sum::<usize>(), 30_000);
}
