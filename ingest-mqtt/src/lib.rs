//! MQTT ingest for `lumen server`: a QoS 1 subscription to an external broker (rumqttc) and the embedded
//! MQTT endpoint, topic templates that turn topic segments into labels, and payload decoders (JSON,
//! Sparkplug B, Influx line protocol, plain numbers). A PUBACK leaves only after the message is in the
//! write-ahead log.
//!
//! This crate is a placeholder until the MQTT issue: it holds no code yet. The server already accepts the
//! `--mqtt-listen` flag so that configurations written today keep working.
