//! The `lumen` binary's library half: configuration, the server wiring and its HTTP router, the log
//! ingest handlers, and the server's own metrics. `main.rs` only parses the command line and dispatches;
//! keeping the rest here lets the integration tests start a server in-process.
//!
//! **Architecture Invariant:** only this crate reads files and the environment, installs the tracing
//! subscriber and builds the Tokio runtime.

pub mod auth;
pub mod backup;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod inflight;
pub mod ingest;
pub mod listen;
pub mod memory;
pub mod metrics;
pub mod process_metrics;
pub mod retired;
pub mod server;
pub mod telemetry;
pub mod tenant_limits;
pub mod tls;
pub mod trees;
pub mod ui;

pub use config::Config;
pub use server::{Running, start};
