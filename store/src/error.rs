//! The store's error type: one enum, typed fields, messages that name the offending value.

use std::path::PathBuf;

/// Everything that can go wrong inside the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tenant id that cannot name a directory or a Loki tenant.
    #[error("invalid tenant {tenant:?}: {reason}")]
    InvalidTenant { tenant: String, reason: &'static str },

    /// An I/O error on a named file.
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },

    /// The data directory is held by another process.
    #[error(
        "data directory {} is locked by another lumen process ({holder}); stop that process or choose another --data-dir",
        path.display()
    )]
    Locked { path: PathBuf, holder: String },

    /// A persisted file failed its checks.
    #[error("corrupt {what} {}: {reason}", path.display())]
    Corrupt { what: &'static str, path: PathBuf, reason: String },

    /// A file the store cannot start without is missing or damaged, and going on could hide or overwrite
    /// data; `remedy` tells the operator what to do.
    #[error("{what} {}: {reason}; {remedy}", path.display())]
    Refused { what: &'static str, path: PathBuf, reason: String, remedy: String },

    #[error("parquet error on {}: {source}", path.display())]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },

    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// The write-ahead log thread has stopped, after an I/O error or at shutdown.
    #[error(
        "tenant {tenant:?} has {have} streams; this write would add {new} more, over store.max_streams_per_tenant ({limit}): \
         fewer distinct label sets (move high-cardinality values into fields), or raise the limit"
    )]
    TooManyStreams { tenant: String, have: usize, new: usize, limit: usize },
    #[error("the query would load more than {limit} samples into memory (query.max_samples)")]
    TooManySamples { limit: usize },
    #[error("write-ahead log is not accepting writes: {reason}")]
    WalClosed { reason: String },

    /// Ingest is refused while the free space is below the reserve (see [`crate::disk`]).
    #[error("ingest refused: {reason}")]
    DiskFull { reason: String },

    /// Ingest is refused while another server holds the bucket's writer lease (see
    /// [`crate::disk::DiskGuard::set_standby`]).
    #[error("ingest refused: {reason}")]
    Standby { reason: String },

    /// A part that lives in the object store could not be fetched (see [`crate::remote`]); the read can be
    /// retried.
    #[error("cannot fetch {} from the object store: {reason}", path.display())]
    Remote { path: PathBuf, reason: String },

    /// The store follows a directory another process writes (a query node): it takes no writes.
    #[error("this server takes no writes: {reason}")]
    ReadOnly { reason: String },

    /// A value in the configuration that cannot work.
    #[error("invalid store config: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// True when a tenant limit refused the write (429: it may pass once the tenant has fewer).
    pub fn is_limit(&self) -> bool {
        matches!(self, Error::TooManyStreams { .. })
    }

    /// True when the write may pass if retried later: the disk is full or failing, or the store is
    /// stopping. Ingest answers 503 with `Retry-After` (gRPC `UNAVAILABLE`), which every client retries.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::WalClosed { .. }
                | Error::DiskFull { .. }
                | Error::Standby { .. }
                | Error::Io { .. }
                | Error::Parquet { .. }
        )
    }

    /// True for a refusal of the whole server's ingest (a full disk, a standby), logged once when the
    /// state changes rather than with every refused request.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::DiskFull { .. } | Error::Standby { .. })
    }

    /// True when a write to the data directory failed (not a refusal before it).
    pub fn is_storage_failure(&self) -> bool {
        matches!(self, Error::WalClosed { .. } | Error::Io { .. } | Error::Parquet { .. })
    }

    /// True when the error was caused by the request (bad input), not by the server.
    pub fn is_client_error(&self) -> bool {
        matches!(self, Error::InvalidTenant { .. } | Error::ReadOnly { .. })
    }

    /// True when a part could not be fetched from the object store: the read failed, the part is fine.
    pub fn is_remote(&self) -> bool {
        matches!(self, Error::Remote { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A store's read-only switch (a query node, which follows a directory another process writes): once
/// set, every write is refused with [`Error::ReadOnly`] and the reason.
#[derive(Debug, Default)]
pub(crate) struct ReadOnly(std::sync::OnceLock<String>);

impl ReadOnly {
    /// Turns writes off for good (a second call keeps the first reason).
    pub(crate) fn set(&self, reason: &str) {
        let _ = self.0.set(reason.to_string());
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.get().is_some()
    }

    /// [`Error::ReadOnly`] once set.
    pub(crate) fn check(&self) -> Result<()> {
        match self.0.get() {
            Some(reason) => Err(Error::ReadOnly { reason: reason.clone() }),
            None => Ok(()),
        }
    }
}
