//! The MQTT ingest's own metrics, registered under `lumen_mqtt_`.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

type Labels = Vec<(String, String)>;

/// Counters of the pipeline and of the broker connection.
#[derive(Debug, Default)]
pub struct MqttMetrics {
    /// Messages stored, by format (json, sparkplug, influx, plain, text, garbage).
    pub messages: Family<Labels, Counter>,
    pub payload_bytes: Counter,
    /// Messages kept only as log entries because their payload was bad, by reason.
    pub garbage: Family<Labels, Counter>,
    pub samples: Counter,
    pub samples_rejected: Counter,
    /// Redeliveries of stored messages, acknowledged without storing them again.
    pub duplicates: Counter,
    pub store_errors: Counter,
    pub batches: Counter,
    pub sparkplug_seq_gaps: Counter,
    pub sparkplug_births: Counter,
    pub sparkplug_deaths: Counter,
    pub sparkplug_unknown_aliases: Counter,
    pub broker_connected: Gauge,
    pub broker_connections: Counter,
    pub broker_errors: Counter,
    pub broker_subscribe_failures: Counter,
    /// Jobs that waited because their tenant was over `limits.tenant_ingest_rate`.
    pub rate_limited: Counter,
}

pub(crate) fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

impl MqttMetrics {
    pub fn register(registry: &mut Registry) -> Arc<MqttMetrics> {
        let m = MqttMetrics::default();
        let r = registry.sub_registry_with_prefix("lumen_mqtt");
        r.register("messages", "MQTT messages stored, by payload format (garbage included)", m.messages.clone());
        r.register(
            "rate_limited_waits",
            "Batches of MQTT messages that waited for their tenant's ingest rate (limits.tenant_ingest_rate)",
            m.rate_limited.clone(),
        );
        r.register_with_unit("payload", "bytes of MQTT payloads stored", Unit::Bytes, m.payload_bytes.clone());
        r.register(
            "garbage_messages",
            "messages whose payload could not be decoded, kept as log entries with an error field, by reason",
            m.garbage.clone(),
        );
        r.register("samples", "samples decoded from MQTT messages and stored", m.samples.clone());
        r.register(
            "samples_rejected",
            "samples outside the accepted time window (older than retention, over two days ahead)",
            m.samples_rejected.clone(),
        );
        r.register(
            "duplicate_messages",
            "redeliveries of messages already stored, acknowledged without storing them again",
            m.duplicates.clone(),
        );
        r.register(
            "store_errors",
            "batches the store refused; their messages were not acknowledged",
            m.store_errors.clone(),
        );
        r.register("batches", "batches written (one WAL commit each for samples and log entries)", m.batches.clone());
        r.register(
            "sparkplug_seq_gaps",
            "Sparkplug B messages whose seq did not follow the previous one",
            m.sparkplug_seq_gaps.clone(),
        );
        r.register("sparkplug_births", "Sparkplug B NBIRTH and DBIRTH messages", m.sparkplug_births.clone());
        r.register("sparkplug_deaths", "Sparkplug B NDEATH and DDEATH messages", m.sparkplug_deaths.clone());
        r.register(
            "sparkplug_unknown_aliases",
            "Sparkplug B metrics whose alias no birth message defined",
            m.sparkplug_unknown_aliases.clone(),
        );
        r.register("broker_connected", "1 while connected to the external broker", m.broker_connected.clone());
        r.register("broker_connections", "connections made to the external broker", m.broker_connections.clone());
        r.register("broker_errors", "connection errors with the external broker", m.broker_errors.clone());
        r.register(
            "broker_subscribe_failures",
            "topic filters the broker refused to subscribe",
            m.broker_subscribe_failures.clone(),
        );
        Arc::new(m)
    }
}

/// Exposes the embedded endpoint's atomics at scrape time.
#[derive(Debug)]
pub struct EndpointCollector(pub Arc<crate::endpoint::EndpointMetrics>);

impl EndpointCollector {
    pub fn register(registry: &mut Registry) -> Arc<crate::endpoint::EndpointMetrics> {
        let m = Arc::new(crate::endpoint::EndpointMetrics::default());
        registry.register_collector(Box::new(EndpointCollector(m.clone())));
        m
    }
}

impl prometheus_client::collector::Collector for EndpointCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let m = &self.0;
        let open = ConstGauge::new(m.connections());
        open.encode(encoder.encode_descriptor(
            "lumen_mqtt_endpoint_connections_open",
            "devices connected to the embedded MQTT endpoint now",
            None,
            open.metric_type(),
        )?)?;
        let counters: [(&str, &str, u64); 4] = [
            ("lumen_mqtt_endpoint_connections", "connections accepted by the embedded endpoint", m.connections_total()),
            ("lumen_mqtt_endpoint_received_bytes", "bytes read from devices", m.bytes_total()),
            (
                "lumen_mqtt_endpoint_protocol_errors",
                "connections closed for breaking the MQTT protocol",
                m.protocol_errors_total(),
            ),
            (
                "lumen_mqtt_endpoint_oversized_packets",
                "connections closed for a packet over max_packet_size",
                m.oversized_total(),
            ),
        ];
        for (name, help, v) in counters {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let mut family = encoder.encode_descriptor(
            "lumen_mqtt_endpoint_messages",
            "PUBLISH messages received by the embedded endpoint, by QoS",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for qos in 0..3u8 {
            let labels = [("qos", qos.to_string())];
            ConstCounter::new(m.messages_total(qos)).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "lumen_mqtt_endpoint_rejected_connections",
            "connections refused by the embedded endpoint, by reason",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for reason in crate::endpoint::RejectReason::ALL {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(m.rejected_connections_total(reason)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
