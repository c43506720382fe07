//! The node agent behind `lumen agent`: it tails Kubernetes pod logs (CRI and Docker json-file, partial
//! records merged, rotation by rename with gzipped rotations, copytruncate), scrapes Prometheus endpoints
//! (static targets, this node's annotated pods, the node's own /proc metrics) and ships both to a Lumen
//! server (or to a Loki and a remote-write receiver) through a bounded disk buffer, at least once.
//!
//! The path of a log line: [`tail`] reads it, [`format`] decodes the runtime's framing, [`transform`]
//! joins, filters and parses it, [`tail`] cuts batches into the [`buffer`] with the file positions they
//! reach, and [`ship`] sends each batch and, on the server's acknowledgement, moves the [`checkpoint`]s.
//! [`agent`] wires it all and serves the agent's own `/metrics` ([`metrics`]), `/health` and `/ready`.
//!
//! The crate uses `store`'s data model and wire formats (never its engine) and `query`'s LogQL line
//! parsers, so a field parsed by the agent is the one `| json` or `| logfmt` would give at query time.

pub mod agent;
pub mod buffer;
pub mod checkpoint;
pub mod config;
pub mod format;
pub mod kube;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod scrape;
pub mod ship;
pub mod tail;
pub mod transform;

pub use agent::{AgentError, Running, start};
pub use config::AgentConfig;
