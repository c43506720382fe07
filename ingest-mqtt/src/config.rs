//! The `[mqtt]` section of the configuration: the external broker subscription, the embedded endpoint's
//! limits and credentials, and the topic templates. Every key has a default; the server's flags
//! `--mqtt-broker`, `--mqtt-topic` and `--mqtt-listen` override the keys they name.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::topic::TemplateConfig;

/// `[mqtt]`: where device telemetry comes from and how topics and payloads map to labels and series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Tenant the MQTT data is stored under.
    pub tenant: String,
    /// Topic templates as plain strings, e.g. "devices/{site}/{device}/telemetry"; format detected. (--mqtt-topic)
    pub topics: Vec<String>,
    /// Topic templates with options (format, metric name, static labels); tried after `topics`.
    pub templates: Vec<TemplateConfig>,
    /// The external broker to subscribe to.
    pub broker: BrokerConfig,
    /// The embedded endpoint (its address is `server.mqtt_listen`).
    pub listener: ListenerConfig,
    /// Most messages gathered into one write (one WAL commit for logs and one for samples).
    pub batch_max_messages: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            tenant: "default".to_string(),
            topics: Vec::new(),
            templates: Vec::new(),
            broker: BrokerConfig::default(),
            listener: ListenerConfig::default(),
            batch_max_messages: 8192,
        }
    }
}

impl MqttConfig {
    /// Checks what can be checked without the network or secret files: the templates, the broker URL and
    /// the tenant.
    ///
    /// # Errors
    /// A message naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        crate::topic::Templates::new(self.all_templates())?;
        if !self.broker.url.is_empty() {
            crate::broker::parse_url(&self.broker.url)?;
        }
        store::model::Tenant::new(&self.tenant).map_err(|e| format!("mqtt.tenant: {e}"))?;
        Ok(())
    }

    /// The templates in the order they are tried: the plain `topics` first, then `templates`.
    pub fn all_templates(&self) -> Vec<TemplateConfig> {
        self.topics
            .iter()
            .map(|t| TemplateConfig {
                topic: t.clone(),
                format: Default::default(),
                metric: None,
                labels: Default::default(),
            })
            .chain(self.templates.iter().cloned())
            .collect()
    }
}

/// MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Protocol {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

/// `[mqtt.broker]`: the subscription to an external broker such as Mosquitto.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT (TLS); empty subscribes to no broker. (--mqtt-broker)
    pub url: String,
    /// Protocol version: "3.1.1" or "5".
    pub protocol: Protocol,
    /// Client id; keep it stable so the broker keeps the session (and its queued messages) across restarts.
    /// Empty means "lumen-<node name>" (NODE_NAME, else the host name).
    pub client_id: String,
    /// Username, if the broker wants one.
    pub username: String,
    /// Password; `password_file` wins when set.
    pub password: String,
    /// File holding the password (e.g. a mounted Kubernetes secret).
    pub password_file: PathBuf,
    /// CA certificates (PEM) that sign the broker's certificate for mqtts://; empty uses the system's roots.
    pub ca_file: PathBuf,
    /// Client certificate (PEM) for brokers that authenticate clients by certificate.
    pub client_cert_file: PathBuf,
    /// Private key (PEM) of the client certificate.
    pub client_key_file: PathBuf,
    /// Subscribe as a member of this shared-subscription group ($share/<group>/<filter>), so that several
    /// Lumen servers split one broker's messages; empty subscribes normally.
    pub shared_group: String,
    /// Keep-alive interval announced to the broker.
    #[serde(with = "store::config::duration")]
    pub keep_alive: Duration,
    /// MQTT 5: how long the broker keeps the session (and queues messages) while Lumen is away.
    #[serde(with = "store::config::duration")]
    pub session_expiry: Duration,
    /// MQTT 5: most unacknowledged messages the broker may send at once (Mosquitto's own cap is its
    /// `max_inflight_messages`).
    pub receive_maximum: u16,
    /// First delay before reconnecting; doubled on every failure up to `reconnect_max`.
    #[serde(with = "store::config::duration")]
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts.
    #[serde(with = "store::config::duration")]
    pub reconnect_max: Duration,
    /// Largest message accepted from the broker.
    pub max_packet_size: ByteSize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: String::new(),
            protocol: Protocol::V311,
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            client_cert_file: PathBuf::new(),
            client_key_file: PathBuf::new(),
            shared_group: String::new(),
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(7 * 86_400),
            receive_maximum: 1000,
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(30),
            max_packet_size: ByteSize::mib(1),
        }
    }
}

/// `[mqtt.listener]`: the embedded endpoint that devices publish to directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Username devices must give; required (with a password) when server.mqtt_listen is not a loopback address.
    pub username: String,
    /// Password devices must give; `password_file` wins when set.
    pub password: String,
    /// File holding the password.
    pub password_file: PathBuf,
    /// Largest PUBLISH accepted; a larger one closes the connection.
    pub max_packet_size: ByteSize,
    /// Most unacknowledged QoS 1/2 messages a device may have in flight (MQTT 5 receive maximum).
    pub receive_maximum: u16,
    /// Most devices connected at once.
    pub max_connections: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            username: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            max_packet_size: ByteSize::mib(1),
            receive_maximum: 512,
            max_connections: 10_000,
        }
    }
}

/// Reads a password: the file's first line when a file is named, else the inline value; None when neither.
///
/// # Errors
/// A message naming the unreadable file.
pub fn password(inline: &str, file: &std::path::Path) -> Result<Option<String>, String> {
    if !file.as_os_str().is_empty() {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the MQTT password file {}: {e}", file.display()))?;
        return Ok(Some(text.lines().next().unwrap_or("").to_string()));
    }
    Ok((!inline.is_empty()).then(|| inline.to_string()))
}
