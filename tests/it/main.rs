//! The one integration-test binary. Servers run in-process on 127.0.0.1:0 with a temporary data
//! directory, except where a real process is needed (kill -9, the directory lock, the CLI).

mod agent;
mod auth;
mod bad_input;
#[cfg(feature = "external-tests")]
mod bucket;
#[cfg(feature = "external-tests")]
mod bucket_cache;
#[cfg(feature = "external-tests")]
mod bucket_lease;
#[cfg(feature = "external-tests")]
mod bucket_nodes;
#[cfg(feature = "external-tests")]
mod bucket_query;
mod config;
mod connections;
mod deletes;
#[cfg(feature = "external-tests")]
mod deploy;
#[cfg(feature = "external-tests")]
mod deploy_grafana;
#[cfg(feature = "external-tests")]
mod deploy_helm;
#[cfg(feature = "external-tests")]
mod deploy_kustomize;
mod disk_budget;
mod disk_full;
mod docker_logs;
mod durability;
#[cfg(feature = "external-tests")]
mod elasticsearch_client;
mod fuzz_corpus;
mod harness;
mod ingest;
mod journal;
mod loki_api;
mod memory_budget;
#[cfg(feature = "external-tests")]
mod mqtt;
mod node_netns;
mod otlp;
mod prom_api;
#[cfg(feature = "external-tests")]
mod prometheus_compare;
mod recovery;
mod retention;
mod ruler;
#[cfg(feature = "external-tests")]
mod ruler_peers;
mod shippers;
mod snapshot;
mod sql_metrics;
mod syslog;
#[cfg(feature = "external-tests")]
mod syslog_peers;
mod tenant_limits;
#[cfg(feature = "external-tests")]
mod tls;
mod ui;
#[cfg(feature = "external-tests")]
mod ui_browser;
mod vector;
#[cfg(feature = "external-tests")]
mod yaml;
