//! MQTT ingest for `lumen server`: a QoS 1 subscription to an external broker (rumqttc) and the embedded
//! MQTT endpoint, topic templates that turn topic segments into labels, and payload decoders (JSON,
//! Sparkplug B, Influx line protocol, plain numbers). Both sources hand their PUBLISHes to one
//! [`pipeline`], which decodes them in batches, stores samples and log entries with one WAL commit each,
//! and only then lets the source acknowledge (PUBACK), in the order the messages came.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub mod broker;
pub mod config;
pub mod decode;
pub mod endpoint;
pub mod metrics;
pub mod pipeline;
mod sparkplug_b;
mod tls;
pub mod topic;

pub use config::MqttConfig;
pub use pipeline::{IngestStart, start};

/// One PUBLISH as received, from the external broker or the embedded endpoint.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    /// Receive time, nanoseconds since the epoch (UTC).
    pub received_ns: i64,
    /// For QoS 1 and 2: identifies the delivery so that a redelivery of a message that was stored but whose
    /// acknowledgement was lost (crash, cut connection) is recognised and not stored twice. None for QoS 0.
    pub dedup: Option<DedupKey>,
}

/// The identity of one QoS 1 or 2 delivery.
#[derive(Debug, Clone)]
pub struct DedupKey {
    /// The MQTT session: for the embedded endpoint "endpoint:<client id>", for the broker "broker:<our client id>".
    pub session: Arc<str>,
    /// The packet identifier.
    pub pkid: u16,
    /// The DUP flag of the PUBLISH.
    pub dup: bool,
}

/// Messages handed to the pipeline, and where to say when they are durable.
pub struct Job {
    pub messages: Vec<Message>,
    /// Ok once every message is in the fsynced write-ahead log (or was found to be a redelivery of a stored
    /// one); Err(reason) when they could not be stored: then none of them may be acknowledged.
    pub done: oneshot::Sender<Result<(), String>>,
}

/// The handle producers submit to; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Job>,
}

impl Pipeline {
    /// A pipeline whose jobs arrive on `tx`'s receiver (tests use this to play the store).
    pub fn from_sender(tx: mpsc::Sender<Job>) -> Pipeline {
        Pipeline { tx }
    }

    /// Submits messages (in order). Await the returned receiver: Ok(Ok(())) = durable, acknowledge them now.
    /// Waits while the pipeline's queue is full (backpressure).
    ///
    /// # Errors
    /// When the pipeline has shut down.
    pub async fn submit(&self, messages: Vec<Message>) -> Result<oneshot::Receiver<Result<(), String>>, String> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Job { messages, done }).await.map_err(|_| "the MQTT ingest pipeline has stopped".to_string())?;
        Ok(rx)
    }
}

#[cfg(test)]
mod endpoint_tests;
