//! Ingest metrics of the server, registered under `lumen_ingest_`, per protocol.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(String, String)>;

#[derive(Debug)]
pub struct IngestMetrics {
    pub lines: Family<Labels, Counter>,
    pub bytes: Family<Labels, Counter>,
    pub rejected_lines: Family<Labels, Counter>,
    pub rejected_bytes: Family<Labels, Counter>,
    pub rejected_requests: Family<Labels, Counter>,
    pub duplicate_batches: Family<Labels, Counter>,
    pub invalid_utf8_requests: Family<Labels, Counter>,
    pub samples: Family<Labels, Counter>,
    pub rejected_samples: Family<Labels, Counter>,
}

fn proto(p: &str) -> Labels {
    vec![("protocol".to_string(), p.to_string())]
}

impl IngestMetrics {
    pub fn register(registry: &mut Registry) -> Arc<IngestMetrics> {
        let m = IngestMetrics {
            lines: Family::default(),
            bytes: Family::default(),
            rejected_lines: Family::default(),
            rejected_bytes: Family::default(),
            rejected_requests: Family::default(),
            duplicate_batches: Family::default(),
            invalid_utf8_requests: Family::default(),
            samples: Family::default(),
            rejected_samples: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("lumen_ingest");
        r.register("lines", "log lines stored, by protocol", m.lines.clone());
        r.register_with_unit("line", "bytes of log lines stored, by protocol", Unit::Bytes, m.bytes.clone());
        r.register("rejected_lines", "log lines rejected one by one, by protocol and reason", m.rejected_lines.clone());
        r.register_with_unit(
            "rejected_line",
            "bytes of rejected log lines, by protocol",
            Unit::Bytes,
            m.rejected_bytes.clone(),
        );
        r.register("rejected_requests", "whole requests rejected, by protocol and status", m.rejected_requests.clone());
        r.register(
            "duplicate_batches",
            "batches a producer (the agent) sent again after they were stored, acknowledged without storing",
            m.duplicate_batches.clone(),
        );
        r.register(
            "invalid_utf8_requests",
            "requests in which invalid UTF-8 was replaced with U+FFFD, by protocol",
            m.invalid_utf8_requests.clone(),
        );
        r.register("samples", "metric samples stored, by protocol", m.samples.clone());
        r.register(
            "rejected_samples",
            "metric samples not stored, by protocol and reason (bad_line, out_of_window, native_histogram, ...)",
            m.rejected_samples.clone(),
        );
        Arc::new(m)
    }

    pub fn accepted_samples(&self, protocol: &str, n: usize) {
        self.samples.get_or_create(&proto(protocol)).inc_by(n as u64);
    }

    pub fn rejected_samples(&self, protocol: &str, reason: &str, n: usize) {
        if n > 0 {
            let labels =
                vec![("protocol".to_string(), protocol.to_string()), ("reason".to_string(), reason.to_string())];
            self.rejected_samples.get_or_create(&labels).inc_by(n as u64);
        }
    }

    pub fn accepted(&self, protocol: &str, lines: usize, bytes: usize) {
        self.lines.get_or_create(&proto(protocol)).inc_by(lines as u64);
        self.bytes.get_or_create(&proto(protocol)).inc_by(bytes as u64);
    }

    /// Counts one line rejected for `reason`.
    pub fn rejected(&self, protocol: &str, reason: &str) {
        let mut l = proto(protocol);
        l.push(("reason".to_string(), reason.to_string()));
        self.rejected_lines.get_or_create(&l).inc();
    }

    pub fn rejected_bytes(&self, protocol: &str, bytes: usize) {
        if bytes > 0 {
            self.rejected_bytes.get_or_create(&proto(protocol)).inc_by(bytes as u64);
        }
    }

    pub fn rejected_request(&self, protocol: &str, status: u16) {
        let mut l = proto(protocol);
        l.push(("status".to_string(), status.to_string()));
        self.rejected_requests.get_or_create(&l).inc();
    }

    pub fn duplicate_batch(&self, protocol: &str) {
        self.duplicate_batches.get_or_create(&proto(protocol)).inc();
    }

    pub fn invalid_utf8(&self, protocol: &str) {
        self.invalid_utf8_requests.get_or_create(&proto(protocol)).inc();
    }
}
