//! Entry points for the fuzzers (`fuzz/`) and their corpus regression test: the readers of every file
//! the store keeps, fed arbitrary bytes. Each must answer (Ok or an error) and never panic, loop or
//! allocate beyond the input's measure. Not an API: nothing else calls these.

use std::path::PathBuf;
use std::sync::Arc;

use crate::manifest::{Manifest, PartMeta, TimeUnitTag};
use crate::metrics::StoreMetrics;
use crate::quarantine::Quarantine;

/// A scratch directory of this process (and thread: fuzzers may run several).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("lumen-fuzz-{}-{:?}", std::process::id(), std::thread::current().id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

fn quarantine(dir: &std::path::Path) -> Quarantine {
    let metrics = StoreMetrics::register(&mut prometheus_client::registry::Registry::default());
    Quarantine::new(dir, Arc::clone(&metrics))
}

/// A write-ahead-log segment, replayed from checkpoint 0 (records are read, checked and handed over).
pub fn wal_segment(data: &[u8]) {
    let dir = scratch("wal");
    let wal = dir.join("wal");
    let _ = std::fs::create_dir_all(&wal);
    let _ = std::fs::write(wal.join("00000000000000000001.wal"), data);
    let q = quarantine(&dir);
    let _ = crate::wal::replay_segments(&wal, 0, &q, |r| {
        std::hint::black_box(r.payload.len());
        Ok(())
    });
}

/// `manifest.json` of the log store.
pub fn manifest(data: &[u8]) {
    let dir = scratch("manifest");
    let _ = std::fs::write(dir.join("manifest.json"), data);
    let _ = Manifest::load(&dir);
}

/// A stream catalog (`streams.bin`, plain frames) or a series catalog (`series.bin`, zstd frames).
pub fn label_file(data: &[u8], compressed: bool) {
    let dir = scratch("labels");
    let path = dir.join("labels.bin");
    let _ = std::fs::write(&path, data);
    let _ = crate::catalog::read_label_file(&path, compressed, |id, labels| {
        std::hint::black_box((id, labels.len()));
    });
}

/// A part's `.idx` sidecar, checked as the engine checks it at start (header, stream ranges, row groups);
/// the same bytes as a row group's page filters, read as a substring search reads them.
pub fn part_index(data: &[u8]) {
    if let Some(pages) = crate::ngrams::PageFilters::parse(data) {
        let _ = pages.passing(1_000, &[crate::ngrams::needle_positions(b"error")]);
    }
    let dir = scratch("index");
    let path = dir.join("0000000000000001.idx");
    let _ = std::fs::write(&path, data);
    let meta = PartMeta {
        id: 1,
        tenant: "default".to_string(),
        day: 0,
        min_time: 0,
        max_time: i64::MAX,
        rows: 1_000,
        parquet_bytes: 0,
        index_bytes: 0,
        labels: vec!["app".to_string()],
        fields: Vec::new(),
        shared_fields: Vec::new(),
        level: 0,
        time_unit: TimeUnitTag::Ns,
    };
    let _ = crate::part::check_index_file(&path, &meta, 4);
}
