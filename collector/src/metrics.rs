//! The agent's own metrics, served at `/metrics` on its HTTP address under `lumen_agent_`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(&'static str, &'static str)>;

/// Counters and gauges of the reader, the shipper and the scrapers.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    pub bytes_read: Counter,
    pub lines_read: Counter,
    pub records: Counter,
    pub lines_dropped: Counter,
    pub malformed_lines: Counter,
    pub truncated_records: Counter,
    pub files_open: Gauge,
    pub rotations: Counter,
    pub truncations: Counter,
    pub batches_cut: Counter,
    pub buffer_full_waits: Counter,
    pub buffer_errors: Counter,
    pub buffer_bytes: Gauge,
    pub buffer_batches: Gauge,
    pub batches_sent: Family<Labels, Counter>,
    pub batches_rejected: Family<Labels, Counter>,
    pub send_failures: Family<Labels, Counter>,
    pub bytes_sent: Family<Labels, Counter>,
    pub scrapes: Family<Labels, Counter>,
    pub scrape_samples: Counter,
    pub scrapes_dropped: Counter,
    pub journal_entries: Counter,
    pub journal_entries_filtered: Counter,
    pub journal_files_open: Gauge,
    pub journal_errors: Family<Labels, Counter>,
}

impl AgentMetrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<AgentMetrics> {
        let m = AgentMetrics::default();
        let r = registry.sub_registry_with_prefix("lumen_agent");
        r.register_with_unit("read", "bytes read from log files", Unit::Bytes, m.bytes_read.clone());
        r.register("lines_read", "raw lines read from log files", m.lines_read.clone());
        r.register(
            "records",
            "log records put into batches (after merging partial and multiline lines)",
            m.records.clone(),
        );
        r.register("lines_dropped", "records dropped by the parse.drop patterns", m.lines_dropped.clone());
        r.register(
            "malformed_lines",
            "lines that were neither CRI nor Docker json-file, shipped raw with a parse_error field",
            m.malformed_lines.clone(),
        );
        r.register("truncated_records", "records cut at max_line_size", m.truncated_records.clone());
        r.register("files_open", "log files being followed", m.files_open.clone());
        r.register("rotations", "log files seen renamed by a rotation", m.rotations.clone());
        r.register("truncations", "log files seen truncated (copytruncate)", m.truncations.clone());
        r.register("batches_cut", "log batches written to the disk buffer", m.batches_cut.clone());
        r.register(
            "buffer_full_waits",
            "times the reader paused because the disk buffer was full",
            m.buffer_full_waits.clone(),
        );
        r.register("buffer_errors", "failed writes to the disk buffer (retried)", m.buffer_errors.clone());
        r.register_with_unit("buffer", "disk taken by unacknowledged batches", Unit::Bytes, m.buffer_bytes.clone());
        r.register("buffer_batches", "batches waiting for the server's acknowledgement", m.buffer_batches.clone());
        r.register("batches_sent", "batches acknowledged by the server, by kind", m.batches_sent.clone());
        r.register("batches_rejected", "batches refused with a 4xx and dropped, by kind", m.batches_rejected.clone());
        r.register("send_failures", "failed sends that will be retried, by kind", m.send_failures.clone());
        r.register_with_unit(
            "sent",
            "compressed bytes acknowledged by the server, by kind",
            Unit::Bytes,
            m.bytes_sent.clone(),
        );
        r.register("scrapes", "scrapes by outcome (up, down)", m.scrapes.clone());
        r.register("scrape_samples", "samples scraped", m.scrape_samples.clone());
        r.register(
            "scrapes_dropped",
            "scrape results dropped because the disk buffer was full",
            m.scrapes_dropped.clone(),
        );
        r.register("journal_entries", "systemd journal entries read", m.journal_entries.clone());
        r.register(
            "journal_entries_filtered",
            "journal entries left out by journal_units / journal_exclude_units",
            m.journal_entries_filtered.clone(),
        );
        r.register("journal_files_open", "systemd journal files being followed", m.journal_files_open.clone());
        r.register(
            "journal_errors",
            "journal files, entries and fields that could not be read, by reason (io, header, unsupported, \
             bounds, object, chain, codec, decompress, field, directory, corrupt_file)",
            m.journal_errors.clone(),
        );
        Arc::new(m)
    }
}

/// The label set of a batch kind.
pub fn kind_labels(kind: crate::buffer::Kind) -> Labels {
    vec![(
        "kind",
        match kind {
            crate::buffer::Kind::Logs => "logs",
            crate::buffer::Kind::Metrics => "metrics",
        },
    )]
}
