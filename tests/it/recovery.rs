//! Recovery never destroys data (issue 17 §5). A missing manifest, a damaged series catalog, a corrupted
//! WAL record in the middle of the log, a truncated part and a corrupt index sidecar either stop the
//! server with a message naming the file, or are set aside into `<data>/quarantine/` while everything
//! else is served — never silently dropped, overwritten, or attributed to another series.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{ServerProcess, client, free_addr, sql_rows};

/// Starts a server on `data`: Ok once it is ready, Err with its exit status and stderr if it exits first.
async fn start(data: &Path) -> Result<ServerProcess, String> {
    let mut server = ServerProcess::spawn(data, free_addr(), &[]);
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return Err(format!("{status}: {}", stderr(&mut server)));
        }
        if let Ok(r) = c.get(format!("{}/ready", server.base)).send().await
            && r.status() == 200
        {
            return Ok(server);
        }
        assert!(Instant::now() < deadline, "lumen neither became ready nor exited in 30s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn started(data: &Path) -> ServerProcess {
    match start(data).await {
        Ok(s) => s,
        Err(e) => panic!("lumen did not start on {}: {e}", data.display()),
    }
}

fn stderr(server: &mut ServerProcess) -> String {
    let mut err = String::new();
    if let Some(mut s) = server.child.stderr.take() {
        s.read_to_string(&mut err).unwrap();
    }
    err
}

/// SIGTERM (which flushes the heads) and what the server logged.
fn stop(mut server: ServerProcess) -> String {
    server.terminate();
    stderr(&mut server)
}

/// SIGKILL: the heads stay in the WAL.
fn kill9(mut server: ServerProcess) -> String {
    server.kill9();
    stderr(&mut server)
}

async fn push_logs(base: &str, app: &str, n: usize) {
    let body: String =
        (0..n).map(|i| format!("{}\n", json!({"_msg": format!("{app} line {i}"), "app": app}))).collect();
    let r = client().post(format!("{base}/insert/jsonline?_stream_fields=app")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn flush(base: &str) {
    let r = client().post(format!("{base}/api/v1/admin/flush")).send().await.unwrap();
    assert_eq!(r.status(), 200, "flush: {}", r.text().await.unwrap());
}

/// Log entries per `app`, through SQL (which fails the whole query on an unreadable part).
async fn log_counts(base: &str) -> BTreeMap<String, i64> {
    let rows = sql_rows(&client(), base, "default", "SELECT app, count(*) AS n FROM logs GROUP BY app").await;
    rows.iter().map(|r| (r["app"].as_str().unwrap().to_string(), r["n"].as_i64().unwrap())).collect()
}

/// The same through LogQL (`count_over_time`, answered from the part indexes where it can).
async fn logql_counts(base: &str) -> BTreeMap<String, i64> {
    let q = r#"sum by (app) (count_over_time({app=~".+"}[1h]))"#;
    let r = client().get(format!("{base}/loki/api/v1/query")).query(&[("query", q)]).send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["metric"]["app"].as_str().unwrap().to_string(), s["value"][1].as_str().unwrap().parse().unwrap()))
        .collect()
}

/// A log line query with a filter, which goes through the token filters of the part indexes.
async fn logql_lines(base: &str, query: &str) -> Vec<String> {
    let r = client()
        .get(format!("{base}/loki/api/v1/query_range"))
        .query(&[("query", query), ("limit", "5000"), ("since", "1h")])
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let mut lines: Vec<String> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().iter().map(|v| v[1].as_str().unwrap().to_string()))
        .collect();
    lines.sort();
    lines
}

fn now_ms() -> i64 {
    store::time::now_ns() / 1_000_000
}

/// The samples of series `m_<s>`: `n` samples, value `1000 * k + i`, so that a sample read under the
/// wrong series shows.
fn series_text(series: &[(&str, i64)], t0: i64, n: i64) -> String {
    let mut out = String::new();
    for (s, k) in series {
        for i in 0..n {
            out.push_str(&format!("m_test{{s=\"{s}\"}} {} {}\n", 1000 * k + i, t0 + i * 1000));
        }
    }
    out
}

async fn import(base: &str, text: String) {
    let r = client()
        .post(format!("{base}/api/v1/import/prometheus"))
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(text)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}: {}", r.status(), r.text().await.unwrap());
}

/// Every series of `m_test` with its raw samples of the last hour, by its `s` label.
async fn samples(base: &str) -> BTreeMap<String, Vec<(i64, f64)>> {
    let t = format!("{:.3}", (now_ms() + 60_000) as f64 / 1000.0);
    let r = client()
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", "m_test[1h]"), ("time", t.as_str())])
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "success", "{body}");
    body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let values = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| ((v[0].as_f64().unwrap() * 1000.0).round() as i64, v[1].as_str().unwrap().parse().unwrap()))
                .collect();
            (s["metric"]["s"].as_str().unwrap().to_string(), values)
        })
        .collect()
}

/// What [`series_text`] wrote for these series.
fn expected(series: &[(&str, i64)], t0: i64, n: i64) -> BTreeMap<String, Vec<(i64, f64)>> {
    series
        .iter()
        .map(|(s, k)| (s.to_string(), (0..n).map(|i| (t0 + i * 1000, (1000 * k + i) as f64)).collect()))
        .collect()
}

async fn metrics_text(base: &str) -> String {
    client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap()
}

/// The value of a sample in `/metrics` (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}

/// Files under `dir` (recursively) whose name ends with `suffix`, sorted.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The part files of a store (`logs` or `metrics`) outside the quarantine, oldest first.
fn parts(data: &Path, store: &str) -> Vec<PathBuf> {
    files(&data.join(store), ".parquet")
}

/// Byte offsets of the frames (`u32 len | u32 crc | …`) of a WAL segment or catalog file.
fn frame_offsets(bytes: &[u8], header: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + header <= bytes.len() {
        out.push(pos);
        pos += header + u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
    }
    out
}

/// Issue 17 §5: without `manifest.json` the server started empty and deleted (or overwrote) the parts.
/// Now it refuses to start and names the file; once the manifest is back, everything is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_manifest_refuses_to_start_and_keeps_every_part() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let t0 = now_ms() - 120_000;
    let series = [("a", 1), ("b", 2)];
    let server = started(data).await;
    push_logs(&server.base, "a", 100).await;
    import(&server.base, series_text(&series, t0, 5)).await;
    flush(&server.base).await;
    push_logs(&server.base, "b", 50).await;
    stop(server);

    for manifest in [data.join("manifest.json"), data.join("metrics/manifest.json")] {
        let saved = std::fs::read(&manifest).unwrap();
        let parts_before: Vec<(PathBuf, Vec<u8>)> = ["logs", "metrics"]
            .iter()
            .flat_map(|s| parts(data, s))
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        assert!(parts_before.len() >= 3, "{parts_before:?}");
        std::fs::remove_file(&manifest).unwrap();
        match start(data).await {
            Ok(server) => {
                let counts = log_counts(&server.base).await;
                let err = stop(server);
                panic!("started without {}: logs {counts:?}; {err}", manifest.display());
            }
            Err(e) => assert!(e.contains(&manifest.display().to_string()), "the refusal names the file: {e}"),
        }
        for (p, bytes) in &parts_before {
            assert_eq!(&std::fs::read(p).unwrap(), bytes, "{} changed", p.display());
        }
        std::fs::write(&manifest, saved).unwrap();
    }

    let server = started(data).await;
    assert_eq!(log_counts(&server.base).await, BTreeMap::from([("a".into(), 100), ("b".into(), 50)]));
    assert_eq!(samples(&server.base).await, expected(&series, t0, 5));
    // New parts get new names: nothing written now can land on an existing file.
    push_logs(&server.base, "c", 10).await;
    import(&server.base, series_text(&[("c", 3)], t0, 5)).await;
    flush(&server.base).await;
    assert_eq!(log_counts(&server.base).await.get("c"), Some(&10));
    assert_eq!(samples(&server.base).await.len(), 3);
    stop(server);
}

/// Issue 17 §5: a corrupted `series.bin` dropped every series with a WARN, and new series took the old
/// ids, so old samples showed under new names. Now the server refuses to start and names the file; with
/// the file restored nothing is lost; and when the operator asks for a salvage (renaming it to
/// `series.bin.salvage`) the readable series keep their samples, the damaged file is set aside, and new
/// series never take the ids of the lost ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_series_catalog_is_refused_and_ids_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let t0 = now_ms() - 300_000;
    let first = [("a", 1), ("b", 2), ("c", 3)];
    let second = [("d", 4), ("e", 5)];
    let server = started(data).await;
    import(&server.base, series_text(&first, t0, 4)).await;
    flush(&server.base).await;
    import(&server.base, series_text(&second, t0, 4)).await;
    flush(&server.base).await;
    stop(server);

    let catalog = data.join("metrics/tenant=default/series.bin");
    let good = std::fs::read(&catalog).unwrap();
    let frames = frame_offsets(&good, 8);
    assert_eq!(frames.len(), 2, "one frame per flush");
    let mut bad = good.clone();
    // Inside the last frame (the series d and e, the highest ids): a torn append would look the same, but
    // parts hold samples of those ids, so this is damage, not a crash during an append.
    bad[frames[1] + 8 + 5] ^= 0x5a;
    std::fs::write(&catalog, &bad).unwrap();

    match start(data).await {
        Ok(server) => {
            let got = samples(&server.base).await;
            let err = stop(server);
            panic!("started with a damaged series catalog: {got:?}; {err}");
        }
        Err(e) => assert!(e.contains(&catalog.display().to_string()), "the refusal names the file: {e}"),
    }
    assert_eq!(std::fs::read(&catalog).unwrap(), bad, "the damaged file is left as it was");

    // Restored from a backup: nothing is lost.
    std::fs::write(&catalog, &good).unwrap();
    let server = started(data).await;
    let all: Vec<(&str, i64)> = first.iter().chain(&second).copied().collect();
    assert_eq!(samples(&server.base).await, expected(&all, t0, 4));
    stop(server);

    // No backup: the operator salvages what can be read.
    std::fs::write(&catalog, &bad).unwrap();
    std::fs::rename(&catalog, data.join("metrics/tenant=default/series.bin.salvage")).unwrap();
    let server = started(data).await;
    assert_eq!(samples(&server.base).await, expected(&first, t0, 4), "the series of the intact frame");
    assert_eq!(metric(&metrics_text(&server.base).await, "lumen_metric_store_quarantined_files_total"), 1.0);
    // New series: they must not take the ids of d and e, whose samples are still in a part.
    let third = [("f", 6), ("g", 7), ("h", 8)];
    import(&server.base, series_text(&third, t0 + 100_000, 4)).await;
    let mut want = expected(&first, t0, 4);
    want.extend(expected(&third, t0 + 100_000, 4));
    assert_eq!(samples(&server.base).await, want, "no old sample appears under a new series");
    let err = stop(server);
    assert!(err.contains("ERROR") && err.contains("series.bin"), "{err}");
    assert_eq!(files(&data.join("quarantine"), "series.bin.salvage").len(), 1, "the damaged file is kept");

    let server = started(data).await;
    assert_eq!(samples(&server.base).await, want, "after a restart too");
    stop(server);
}

/// Issue 17 §5: one corrupted WAL record dropped every later, intact, acknowledged record as if it were
/// a torn tail. Now the records after it are replayed and the gap is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_wal_record_in_the_middle_keeps_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let server = started(data).await;
    for app in ["a", "b", "c", "d"] {
        push_logs(&server.base, app, 20).await; // one acknowledged WAL record each
    }
    kill9(server);

    let segments: Vec<PathBuf> =
        files(&data.join("wal"), ".wal").into_iter().filter(|p| p.metadata().unwrap().len() > 0).collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    let frames = frame_offsets(&bytes, 16);
    assert_eq!(frames.len(), 4);
    bytes[frames[1] + 16 + 10] ^= 0xff; // the payload of record 2 (app b)
    std::fs::write(&segments[0], &bytes).unwrap();

    let server = started(data).await;
    assert_eq!(
        log_counts(&server.base).await,
        BTreeMap::from([("a".into(), 20), ("c".into(), 20), ("d".into(), 20)]),
        "the records after the damaged one are replayed"
    );
    let m = metrics_text(&server.base).await;
    assert_eq!(metric(&m, "lumen_store_wal_gaps_total"), 1.0, "{m}");
    assert_eq!(metric(&m, "lumen_store_wal_lost_records_total"), 1.0, "{m}");
    assert_eq!(files(&data.join("quarantine"), ".wal").len(), 1, "a copy of the damaged segment is kept");
    // Written after the restart, flushed, restarted: still everything once.
    push_logs(&server.base, "e", 20).await;
    flush(&server.base).await;
    let err = stop(server);
    assert!(err.contains("ERROR") && err.contains(&segments[0].display().to_string()), "{err}");
    let server = started(data).await;
    assert_eq!(
        log_counts(&server.base).await,
        BTreeMap::from([("a".into(), 20), ("c".into(), 20), ("d".into(), 20), ("e".into(), 20)])
    );
    stop(server);
}

/// Issue 17 §5: a truncated part made every SQL query of the tenant fail. Now a query answers from the
/// rest (the part is left out and counted), and at the next start the part is set aside into the
/// quarantine directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_part_is_left_out_and_set_aside_while_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let t0 = now_ms() - 300_000;
    let server = started(data).await;
    push_logs(&server.base, "a", 100).await;
    import(&server.base, series_text(&[("a", 1)], t0, 4)).await;
    flush(&server.base).await;
    push_logs(&server.base, "b", 100).await;
    import(&server.base, series_text(&[("b", 2)], t0, 4)).await;
    flush(&server.base).await;
    push_logs(&server.base, "c", 100).await; // in the head and the WAL

    // Damage the first part of each store while the server runs, before anything read it.
    let (log_part, metric_part) = (parts(data, "logs")[0].clone(), parts(data, "metrics")[0].clone());
    for p in [&log_part, &metric_part] {
        let len = p.metadata().unwrap().len();
        std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(len / 2).unwrap();
    }
    let rest = BTreeMap::from([("b".into(), 100), ("c".into(), 100)]);
    assert_eq!(log_counts(&server.base).await, rest, "SQL answers from the other parts and the head");
    assert_eq!(logql_counts(&server.base).await, rest, "LogQL leaves the part out too");
    assert_eq!(samples(&server.base).await, expected(&[("b", 2)], t0, 4));
    // Each language says the answer left a part out, naming the part's file but not the server's paths.
    let base = &server.base;
    let name = log_part.file_name().unwrap().to_string_lossy().into_owned();
    let mname = metric_part.file_name().unwrap().to_string_lossy().into_owned();
    let sql = client().post(format!("{base}/api/v1/sql")).body("SELECT count(*) FROM logs").send();
    let logql = client()
        .get(format!("{base}/loki/api/v1/query"))
        .query(&[("query", r#"sum(count_over_time({app=~".+"}[1h]))"#)])
        .send();
    let promql = client().get(format!("{base}/api/v1/query")).query(&[("query", "count(m_test)")]).send();
    for (what, resp, file) in
        [("SQL", sql.await, &name), ("LogQL", logql.await, &name), ("PromQL", promql.await, &mname)]
    {
        let body: Value = resp.unwrap().json().await.unwrap();
        let warnings = body["warnings"].to_string();
        assert!(warnings.contains("results may be incomplete") && warnings.contains(file.as_str()), "{what}: {body}");
        assert!(!warnings.contains(&data.display().to_string()), "{what} leaks the data directory: {body}");
    }
    let m = metrics_text(&server.base).await;
    assert_eq!(metric(&m, "lumen_store_unreadable_parts"), 1.0, "{m}");
    assert_eq!(metric(&m, "lumen_metric_store_unreadable_parts"), 1.0, "{m}");
    let err = stop(server);
    assert!(err.contains("ERROR") && err.contains(&log_part.display().to_string()), "{err}");

    let server = started(data).await;
    assert_eq!(log_counts(&server.base).await, rest);
    assert_eq!(logql_counts(&server.base).await, rest);
    assert_eq!(samples(&server.base).await, expected(&[("b", 2)], t0, 4));
    let m = metrics_text(&server.base).await;
    assert_eq!(metric(&m, "lumen_store_quarantined_files_total"), 2.0, "the part and its index: {m}");
    assert_eq!(metric(&m, "lumen_metric_store_quarantined_files_total"), 1.0, "{m}");
    assert!(!log_part.exists() && !metric_part.exists());
    for p in [&log_part, &metric_part] {
        let kept = data.join("quarantine").join(p.strip_prefix(data).unwrap());
        assert!(kept.exists(), "{} is kept in the quarantine", p.display());
    }
    // New writes get new part names and land beside the others.
    push_logs(&server.base, "d", 10).await;
    flush(&server.base).await;
    assert_eq!(log_counts(&server.base).await.get("d"), Some(&10));
    let err = stop(server);
    assert!(err.contains("ERROR") && err.contains(&log_part.display().to_string()), "{err}");
}

/// Issue 17 §5: a corrupt `.idx` sidecar stopped the server from starting. Now the index is rebuilt from
/// the part (the damaged one set aside) and the data is queryable, token filters included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_index_sidecar_is_rebuilt_from_its_part() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let server = started(data).await;
    push_logs(&server.base, "a", 300).await;
    flush(&server.base).await;
    push_logs(&server.base, "b", 300).await;
    flush(&server.base).await;
    push_logs(&server.base, "c", 300).await;
    flush(&server.base).await;
    let want_lines = logql_lines(&server.base, r#"{app=~"a|b|c"} |= "line 7""#).await;
    assert_eq!(want_lines.len(), 3 * 11, "line 7 and line 70..79 of each app");
    stop(server);

    let idx = files(&data.join("logs"), ".idx");
    assert_eq!(idx.len(), 3);
    // Bad magic; a flipped byte in the header (checksum); cut short.
    let mut bytes = std::fs::read(&idx[0]).unwrap();
    bytes[0..8].copy_from_slice(b"NOTANIDX");
    std::fs::write(&idx[0], &bytes).unwrap();
    let mut bytes = std::fs::read(&idx[1]).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&idx[1], &bytes).unwrap();
    let len = idx[2].metadata().unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&idx[2]).unwrap().set_len(len - 7).unwrap();

    let server = started(data).await;
    let all = BTreeMap::from([("a".into(), 300), ("b".into(), 300), ("c".into(), 300)]);
    assert_eq!(log_counts(&server.base).await, all);
    assert_eq!(logql_counts(&server.base).await, all);
    assert_eq!(logql_lines(&server.base, r#"{app=~"a|b|c"} |= "line 7""#).await, want_lines);
    let m = metrics_text(&server.base).await;
    assert_eq!(metric(&m, "lumen_store_rebuilt_indexes_total"), 3.0, "{m}");
    assert_eq!(files(&data.join("quarantine"), ".idx").len(), 3, "the damaged indexes are kept");
    stop(server);
    // The rebuilt indexes are good ones: the next start has nothing to repair.
    let server = started(data).await;
    assert_eq!(log_counts(&server.base).await, all);
    assert_eq!(metric(&metrics_text(&server.base).await, "lumen_store_rebuilt_indexes_total"), 0.0);
    stop(server);
}

/// Issue 17: a token filter damaged on disk (here: every bit cleared, which reads as "no token here") must
/// not hide lines. Each filter carries its own checksum; one that fails it is not used and its row group is
/// read in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_token_filter_costs_speed_not_lines() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let server = started(data).await;
    push_logs(&server.base, "a", 300).await;
    flush(&server.base).await;
    let want_lines = logql_lines(&server.base, r#"{app="a"} |= "a line 7""#).await;
    // "line" is a whole word of the needle, so the token filters are consulted.
    assert_eq!(want_lines.len(), 11, "line 7 and lines 70..79");
    stop(server);

    let idx = files(&data.join("logs"), ".idx");
    assert_eq!(idx.len(), 1);
    let mut bytes = std::fs::read(&idx[0]).unwrap();
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize;
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap()) as usize;
    let (n_streams, n_rgs) = (u32_at(&bytes, 8), u32_at(&bytes, 12));
    let mut cleared = 0;
    for g in 0..n_rgs {
        let rec = 16 + n_streams * 40 + g * 48;
        let (offset, len) = (u64_at(&bytes, rec + 32), u64_at(&bytes, rec + 40));
        bytes[offset..offset + len].fill(0);
        cleared += len;
    }
    assert!(cleared > 0, "the part has token filters");
    std::fs::write(&idx[0], &bytes).unwrap();

    let server = started(data).await;
    assert_eq!(logql_lines(&server.base, r#"{app="a"} |= "a line 7""#).await, want_lines);
    let m = metrics_text(&server.base).await;
    assert_eq!(metric(&m, "lumen_store_rebuilt_indexes_total"), 0.0, "the header was intact: {m}");
    stop(server);
}

/// Index files of the first version (`LUMNIDX1`, token filters without checksums) written by earlier
/// releases are still read, filters included, without a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_files_of_the_first_version_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let server = started(data).await;
    push_logs(&server.base, "a", 300).await;
    flush(&server.base).await;
    let want_lines = logql_lines(&server.base, r#"{app="a"} |= "a line 7""#).await;
    stop(server);

    // Rewrite the index as the first version wrote it: magic LUMNIDX1, row-group records without the
    // page filters' offset and length, no checksum after each token filter, no page filters.
    let idx = files(&data.join("logs"), ".idx");
    let v3 = std::fs::read(&idx[0]).unwrap();
    assert_eq!(&v3[..8], b"LUMNIDX3");
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize;
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap()) as usize;
    let (n_streams, n_rgs) = (u32_at(&v3, 8), u32_at(&v3, 12));
    let header_len = 16 + n_streams * 40 + n_rgs * 48;
    let mut header = v3[..16 + n_streams * 40].to_vec();
    header[..8].copy_from_slice(b"LUMNIDX1");
    for g in 0..n_rgs {
        let rec = 16 + n_streams * 40 + g * 64;
        header.extend_from_slice(&v3[rec..rec + 48]);
    }
    let mut filters = Vec::new();
    for g in 0..n_rgs {
        let rec = 16 + n_streams * 40 + g * 48;
        let (offset, len) = (u64_at(&header, rec + 32), u64_at(&header, rec + 40));
        let new_offset = (header_len + 4 + filters.len()) as u64;
        header[rec + 32..rec + 40].copy_from_slice(&new_offset.to_le_bytes());
        filters.extend_from_slice(&v3[offset..offset + len]);
    }
    let crc = crc32(&header);
    let mut v1 = header;
    v1.extend_from_slice(&crc.to_le_bytes());
    v1.extend_from_slice(&filters);
    std::fs::write(&idx[0], &v1).unwrap();
    // The manifest records the index's size, as the first version wrote it.
    let manifest_path = data.join("manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    let (from, to) = (format!("\"index_bytes\":{}", v3.len()), format!("\"index_bytes\":{}", v1.len()));
    assert!(manifest.contains(&from), "{manifest}");
    std::fs::write(&manifest_path, manifest.replace(&from, &to)).unwrap();
    let server = started(data).await;
    assert_eq!(logql_lines(&server.base, r#"{app="a"} |= "a line 7""#).await, want_lines);
    let m = metrics_text(&server.base).await;
    assert_eq!(metric(&m, "lumen_store_rebuilt_indexes_total"), 0.0, "the first version's index was rebuilt: {m}");
    stop(server);
}

/// CRC-32 (IEEE, as the `crc32fast` crate and zlib compute it), bit by bit: small and slow, for tests.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
