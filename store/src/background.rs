//! The background loop both stores run: flush by size (on request) and by age, then retention and
//! compaction every `maintenance_interval`, until shutdown; then a last flush and the WAL closed.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::StoreConfig;
use crate::error::Result;

/// What the loop needs of a store.
pub(crate) trait Maintained: Send + Sync {
    /// `log` or `metric`, for messages.
    const KIND: &'static str;
    fn tuning(&self) -> &StoreConfig;
    /// Notified when the head passed its size limit.
    fn flush_wanted(&self) -> &Notify;
    /// The active head's first write is older than `max_age`, or frozen heads wait for a retry.
    fn flush_due(&self, max_age: Duration) -> bool;
    fn flush(&self) -> impl Future<Output = Result<()>> + Send;
    fn apply_retention(&self) -> impl Future<Output = Result<usize>> + Send;
    /// Rewrites what delete requests past their cancel period cover.
    fn process_deletes(&self) -> impl Future<Output = Result<usize>> + Send;
    fn compact(&self) -> impl Future<Output = Result<usize>> + Send;
    fn update_gauges(&self);
    fn close_wal(&self);
}

pub(crate) async fn run<S: Maintained>(store: S, shutdown: CancellationToken) -> Result<()> {
    let tuning = store.tuning().clone();
    let kind = S::KIND;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_maintenance = Instant::now() - tuning.maintenance_interval;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = store.flush_wanted().notified() => {
                if let Err(error) = store.flush().await {
                    tracing::error!(%error, kind, "flush failed; the head keeps the data and will retry");
                }
            }
            _ = tick.tick() => {
                if store.flush_due(tuning.head_max_age)
                    && let Err(error) = store.flush().await {
                        tracing::error!(%error, kind, "flush failed; the head keeps the data and will retry");
                    }
                if last_maintenance.elapsed() >= tuning.maintenance_interval {
                    last_maintenance = Instant::now();
                    if let Err(error) = store.apply_retention().await {
                        tracing::error!(%error, kind, "retention failed");
                    }
                    if let Err(error) = store.process_deletes().await {
                        tracing::error!(%error, kind, "processing delete requests failed; they stay hidden and are retried");
                    }
                    if let Err(error) = store.compact().await {
                        tracing::error!(%error, kind, "compaction failed; inputs kept");
                    }
                }
                store.update_gauges();
            }
        }
    }
    let res = store.flush().await;
    store.close_wal();
    res
}

/// Implements [`Maintained`] for a store whose `inner` has the fields both stores share: `options`,
/// `flush_wanted`, `active` (with `first_write`), `state` (with `frozen`) and `wal`.
macro_rules! maintained {
    ($store:ty, $kind:literal) => {
        impl crate::background::Maintained for $store {
            const KIND: &'static str = $kind;

            fn tuning(&self) -> &crate::config::StoreConfig {
                &self.inner.options.tuning
            }

            fn flush_wanted(&self) -> &tokio::sync::Notify {
                &self.inner.flush_wanted
            }

            fn flush_due(&self, max_age: std::time::Duration) -> bool {
                self.inner.active.lock().first_write.is_some_and(|t| t.elapsed() >= max_age)
                    || !self.inner.state.read().frozen.is_empty()
            }

            fn flush(&self) -> impl std::future::Future<Output = crate::error::Result<()>> + Send {
                <$store>::flush(self)
            }

            fn apply_retention(&self) -> impl std::future::Future<Output = crate::error::Result<usize>> + Send {
                <$store>::apply_retention(self)
            }

            fn process_deletes(&self) -> impl std::future::Future<Output = crate::error::Result<usize>> + Send {
                <$store>::process_deletes(self)
            }

            fn compact(&self) -> impl std::future::Future<Output = crate::error::Result<usize>> + Send {
                <$store>::compact(self)
            }

            fn update_gauges(&self) {
                <$store>::update_gauges(self);
            }

            fn close_wal(&self) {
                self.inner.wal.close();
            }
        }
    };
}
pub(crate) use maintained;
