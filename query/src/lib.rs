//! Lumen's query side: LogQL and SQL over the log store, and the HTTP handlers that speak the query
//! APIs (Loki's, Prometheus' and Lumen's SQL).
//!
//! - [`logql`]: the LogQL parser and engine.
//! - [`promql`]: the PromQL engine (parsing by the `promql-parser` crate) over a [`promql::SeriesSource`].
//! - [`sql::LogsTable`]: a DataFusion table provider over [`store::LogStore::scan`], pushing time
//!   bounds, label equalities and `LIKE '%text%'` searches down to the store's indexes.
//! - [`depth`]: the bound on LogQL and PromQL nesting, checked before either parser runs.
//! - [`template`]: Go's `text/template`, for LogQL's `line_format`/`label_format` and for the
//!   labels and annotations of Prometheus alerting rules.
//! - [`http`]: `/api/v1/sql`, the Loki API under `/loki/api/v1/`, the tenant header, and the JSON
//!   shapes of answers and errors; the Prometheus API under `/api/v1/` ([`http::prom`]).
//!
//! **Architecture Invariant:** this crate never opens WAL or Parquet files; everything it reads comes
//! through the store's scan API as Arrow record batches.

pub mod config;
pub mod depth;
pub mod http;
pub mod logql;
pub mod metrics;
pub mod peers;
pub mod promql;
pub mod sql;
pub mod sql_metrics;
pub mod template;

pub use config::QueryConfig;
