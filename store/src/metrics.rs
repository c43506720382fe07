//! The store's own metrics, registered under `lumen_store_`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Counters and gauges the engine updates; cheap to clone through the `Arc`.
#[derive(Debug)]
pub struct StoreMetrics {
    pub wal_fsyncs: Counter,
    pub wal_fsync_seconds: Histogram,
    pub wal_bytes: Counter,
    pub wal_records: Counter,
    pub flushes: Counter,
    /// Flushes that failed (ENOSPC, EIO, ...): their rows stay in the head and the next flush retries.
    pub flush_failures: Counter,
    pub flush_seconds: Histogram,
    pub flushed_rows: Counter,
    pub parts: Gauge,
    pub disk_bytes: Gauge,
    pub compactions: Counter,
    pub compacted_parts: Counter,
    /// Rows written by compaction (its write amplification against `flushed_rows`).
    pub compacted_rows: Counter,
    pub retention_deleted_parts: Counter,
    pub head_bytes: Gauge,
    pub head_rows: Gauge,
    pub scans: Counter,
    pub scan_skipped_row_groups: Counter,
    /// Data pages of `message` ruled out by their substring filters (never decompressed).
    pub scan_skipped_pages: Counter,
    /// Files set aside into `<data>/quarantine/` (or recorded there as missing) since the start.
    pub quarantined_files: Counter,
    /// Parts left out of reads: set aside at a start (until their quarantined files are deleted) or
    /// found unreadable by a read since.
    pub unreadable_parts: Gauge,
    /// Part index files rebuilt from their Parquet file since the start.
    pub rebuilt_indexes: Counter,
    /// Damaged stretches of the write-ahead log, found by the replay at the start, that lost records.
    pub wal_gaps: Counter,
    /// Acknowledged records lost in those gaps.
    pub wal_lost_records: Counter,
}

impl StoreMetrics {
    /// Creates the log store's metrics and registers them in `registry` under `lumen_store_`.
    pub fn register(registry: &mut Registry) -> Arc<StoreMetrics> {
        Self::register_with_prefix(registry, "lumen_store")
    }

    /// Creates the metrics and registers them under `prefix` (the metric store uses `lumen_metric_store`).
    pub fn register_with_prefix(registry: &mut Registry, prefix: &str) -> Arc<StoreMetrics> {
        let latency = || Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]);
        let m = StoreMetrics {
            wal_fsyncs: Counter::default(),
            wal_fsync_seconds: latency(),
            wal_bytes: Counter::default(),
            wal_records: Counter::default(),
            flushes: Counter::default(),
            flush_failures: Counter::default(),
            flush_seconds: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            flushed_rows: Counter::default(),
            parts: Gauge::default(),
            disk_bytes: Gauge::default(),
            compactions: Counter::default(),
            compacted_parts: Counter::default(),
            compacted_rows: Counter::default(),
            retention_deleted_parts: Counter::default(),
            head_bytes: Gauge::default(),
            head_rows: Gauge::default(),
            scans: Counter::default(),
            scan_skipped_row_groups: Counter::default(),
            scan_skipped_pages: Counter::default(),
            quarantined_files: Counter::default(),
            unreadable_parts: Gauge::default(),
            rebuilt_indexes: Counter::default(),
            wal_gaps: Counter::default(),
            wal_lost_records: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix(prefix);
        r.register("wal_fsyncs", "fsyncs of the write-ahead log (one per commit group)", m.wal_fsyncs.clone());
        r.register_with_unit(
            "wal_fsync_duration",
            "latency of a write-ahead-log commit: write plus fdatasync",
            Unit::Seconds,
            m.wal_fsync_seconds.clone(),
        );
        r.register_with_unit("wal_written", "bytes written to the write-ahead log", Unit::Bytes, m.wal_bytes.clone());
        r.register(
            "wal_records",
            "records written to the write-ahead log (one per request and tenant)",
            m.wal_records.clone(),
        );
        r.register("flushes", "flushes of the in-memory head to Parquet parts", m.flushes.clone());
        r.register_with_unit(
            "flush_duration",
            "time to write one flush's parts",
            Unit::Seconds,
            m.flush_seconds.clone(),
        );
        r.register("flushed_rows", "rows written to Parquet by flushes", m.flushed_rows.clone());
        r.register(
            "flush_failures",
            "flushes that failed; their rows stay in the head and the next flush retries them",
            m.flush_failures.clone(),
        );
        r.register("parts", "Parquet parts in the store", m.parts.clone());
        r.register_with_unit(
            "parts_disk",
            "bytes of Parquet parts and their index files",
            Unit::Bytes,
            m.disk_bytes.clone(),
        );
        r.register("compactions", "compactions of small parts into larger ones", m.compactions.clone());
        r.register("compacted_parts", "parts merged away by compaction", m.compacted_parts.clone());
        r.register(
            "compacted_rows",
            "rows written by compaction (against flushed_rows: how often a row is rewritten)",
            m.compacted_rows.clone(),
        );
        r.register(
            "retention_deleted_parts",
            "parts deleted by retention (age or disk budget)",
            m.retention_deleted_parts.clone(),
        );
        r.register_with_unit("head", "bytes of Arrow data in the in-memory head", Unit::Bytes, m.head_bytes.clone());
        r.register("head_rows", "rows in the in-memory head", m.head_rows.clone());
        r.register("scans", "scans served (each query scans one or more times)", m.scans.clone());
        r.register(
            "scan_skipped_row_groups",
            "row groups skipped by the time, stream and token indexes",
            m.scan_skipped_row_groups.clone(),
        );
        r.register(
            "scan_skipped_pages",
            "message pages skipped by their substring (trigram) filters",
            m.scan_skipped_pages.clone(),
        );
        r.register(
            "quarantined_files",
            "damaged files set aside into the quarantine directory of the data directory, or recorded there as missing",
            m.quarantined_files.clone(),
        );
        r.register(
            "unreadable_parts",
            "parts left out of every read because they cannot be read (queries over their tenant and time range say so)",
            m.unreadable_parts.clone(),
        );
        r.register("rebuilt_indexes", "part index files rebuilt from their Parquet file", m.rebuilt_indexes.clone());
        r.register(
            "wal_gaps",
            "damaged stretches in the middle of the write-ahead log that lost acknowledged records (found at start-up)",
            m.wal_gaps.clone(),
        );
        r.register(
            "wal_lost_records",
            "acknowledged write-ahead-log records lost in damaged stretches",
            m.wal_lost_records.clone(),
        );
        Arc::new(m)
    }
}
