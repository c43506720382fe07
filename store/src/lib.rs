//! The store: Lumen's data model, write-ahead log, Arrow head, Parquet parts, indexes, compaction,
//! retention and the scan API. It knows nothing of HTTP, ingest formats (the `wire` crate decodes them
//! into this crate's batches) or query languages.
//!
//! - [`model`]: tenants, labels, entries, batches.
//! - [`LogStore`]: the engine. [`LogStore::append`] resolves only once a batch is fsynced in the
//!   write-ahead log and visible to scans; [`LogStore::scan`] answers with Arrow record batches.
//!
//! On disk, under the data directory:
//!
//! ```text
//! lock                                   held by the running process
//! manifest.json                          live parts and the WAL checkpoint (the commit point)
//! wal/<first seq>.wal                    write-ahead-log segments
//! logs/tenant=<t>/streams.bin            the tenant's stream catalog
//! logs/tenant=<t>/date=<YYYY-MM-DD>/<id>.parquet, <id>.idx   parts and their indexes
//! metrics/...                            the metric store, laid out the same way (see [`metric`])
//! quarantine/...                         damaged files set aside, under their relative paths
//! ```
//!
//! The disk is a contract ([`disk`]): below a free-space reserve ingest is refused (and resumes by itself),
//! and one budget covers everything above.
//!
//! Recovery never destroys data: a file that is missing or damaged either stops the start with
//! [`Error::Refused`] (naming it and what to do), or is set aside into `quarantine/` while the rest is
//! served, logged at ERROR and counted (`lumen_store_quarantined_files_total`); reads that leave data
//! out say so ([`LogStore::skipped_parts`], [`MetricStore::skipped_parts`]).

pub mod config;
pub mod delete;
pub mod disk;
pub mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod metric;
pub mod metrics;
pub mod model;
pub mod remote;
pub mod snapshot;
pub mod time;

mod background;
mod catalog;
mod codec;
mod compact;
mod engine;
mod head;
mod lru;
mod manifest;
mod marks;
mod ngrams;
mod page_cache;
mod part;
mod quarantine;
mod scan;
#[cfg(test)]
mod testutil;
mod tokens;
mod wal;

pub use config::{DiskReserve, StoreConfig, StoreOptions};
pub use disk::DiskGuard;
pub use engine::{Appended, LogStore, StoreStats};
pub use error::{Error, Result};
pub use head::{MESSAGE, STREAM_ID, TIME, label_column, time_type};
pub use marks::DeliveryMark;
pub use metric::{ChangeMark, MetricBatch, MetricMetadata, MetricStats, MetricStore, SampleTag, SelectedSeries};
pub use quarantine::SkippedPart;
pub use scan::{LabelMatcher, MatchOp, PartFilter, Scan, ScanRequest, ScanTask, StreamLimit};
