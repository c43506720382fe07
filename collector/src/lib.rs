//! The node agent behind `lumen agent`: it will tail Kubernetes pod logs (CRI and Docker json-file, with
//! rotation and checkpoints that advance only on the server's acknowledgement), scrape Prometheus
//! endpoints, and ship both to a `lumen server` through a bounded disk buffer, at least once.
//!
//! This crate is a placeholder until the agent issue: it holds no code yet. When it grows, it uses only
//! `store`'s data model and wire modules (`store::model`, `store::wire`), never its engine, so that an agent
//! build stays small.
