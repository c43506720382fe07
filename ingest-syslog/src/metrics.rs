//! The syslog ingest's metrics, registered under `lumen_syslog_`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::batch::{Reason, Tally};
use crate::config::Transport;

type Labels = Vec<(String, String)>;

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

/// Counters of all listeners.
#[derive(Debug, Default)]
pub struct SyslogMetrics {
    /// Messages (frames, datagrams) received, by transport, whatever became of them.
    pub messages: Family<Labels, Counter>,
    /// Messages dropped, or kept with a change, by reason.
    pub rejected: Family<Labels, Counter>,
    /// Entries appended to the store.
    pub stored: Counter,
    pub batches: Counter,
    /// Appends the store refused for a passing reason (a full disk), tried again.
    pub store_retries: Counter,
    /// TCP and TLS connections open now.
    pub connections: Gauge,
    /// Connections refused or closed early, by reason (too_many, tls_handshake).
    pub connections_rejected: Family<Labels, Counter>,
    /// Batches that waited for the tenant's ingest rate (`limits.tenant_ingest_rate`).
    pub rate_limited: Counter,
}

impl SyslogMetrics {
    pub fn register(registry: &mut Registry) -> Arc<SyslogMetrics> {
        let m = SyslogMetrics::default();
        let r = registry.sub_registry_with_prefix("lumen_syslog");
        r.register(
            "messages",
            "syslog messages received (TCP frames, UDP datagrams), by transport, stored or not",
            m.messages.clone(),
        );
        r.register(
            "rejected",
            "syslog messages dropped (oversized, too_old, too_new, line_too_long, too_many_fields, \
             fields_too_long, store_refused) or kept with a change (parse_error: as a raw line; not_utf8: \
             with U+FFFD), by reason",
            m.rejected.clone(),
        );
        r.register("stored", "syslog messages appended to the store (fsynced)", m.stored.clone());
        r.register(
            "rate_limited_waits",
            "syslog batches that waited for their tenant's ingest rate (limits.tenant_ingest_rate)",
            m.rate_limited.clone(),
        );
        r.register("batches", "batches of syslog messages appended (one WAL commit each)", m.batches.clone());
        r.register(
            "store_retries",
            "appends the store refused for a passing reason (free space below the reserve) and that were retried",
            m.store_retries.clone(),
        );
        r.register("connections", "syslog TCP and TLS connections open", m.connections.clone());
        r.register(
            "connections_rejected",
            "syslog connections refused (too_many: over syslog.max_connections) or failed (tls_handshake)",
            m.connections_rejected.clone(),
        );
        for reason in Reason::ALL {
            // Every reason shows from the start, at 0, so alerts on increase() see the first one.
            let _ = m.rejected.get_or_create(&label("reason", reason.as_str()));
        }
        Arc::new(m)
    }

    /// Adds a tally and empties it.
    pub fn add(&self, transport: Transport, tally: &mut Tally) {
        if tally.messages > 0 {
            self.messages.get_or_create(&label("transport", transport.as_str())).inc_by(tally.messages);
        }
        for reason in Reason::ALL {
            let n = tally.get(reason);
            if n > 0 {
                self.rejected.get_or_create(&label("reason", reason.as_str())).inc_by(n);
            }
        }
        *tally = Tally::default();
    }

    pub fn rejected_connection(&self, reason: &str) {
        self.connections_rejected.get_or_create(&label("reason", reason)).inc();
    }
}
