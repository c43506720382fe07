//! Delta to cumulative: the running total of every series that arrives as deltas.
//!
//! Prometheus stores cumulative counters, so a delta point is added to its series' total and the total
//! is stored. The totals live in memory only: after a restart, or after `otlp.delta_state_ttl` without a
//! point, a series starts again from zero, which `rate()` and `increase()` read as a counter reset and
//! handle. Points are added in arrival order; a point that arrives after a later one of the same series
//! still counts, at its own timestamp.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use store::model::Tenant;
use xxhash_rust::xxh3::Xxh3;

/// The running totals, per tenant and series.
#[derive(Debug)]
pub struct DeltaTotals {
    inner: Mutex<Inner>,
    ttl: Duration,
}

#[derive(Debug)]
struct Inner {
    totals: HashMap<u64, Total>,
    last_sweep: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Total {
    value: f64,
    seen: Instant,
}

/// The increments one request made, to take back if storing it fails (the client then sends it again).
#[derive(Debug, Default)]
pub struct Applied(Vec<(u64, f64)>);

/// The key of a series: its tenant and sorted labels.
pub fn key(tenant: &Tenant, sorted_labels: &[(&str, &str)]) -> u64 {
    let mut h = Xxh3::new();
    h.update(tenant.as_str().as_bytes());
    for (k, v) in sorted_labels {
        h.update(&[0xff]);
        h.update(k.as_bytes());
        h.update(&[0xfe]);
        h.update(v.as_bytes());
    }
    h.digest()
}

impl DeltaTotals {
    pub fn new(ttl: Duration) -> DeltaTotals {
        DeltaTotals { inner: Mutex::new(Inner { totals: HashMap::new(), last_sweep: Instant::now() }), ttl }
    }

    /// Adds increments `(key, delta)` and gives each one's new total, in order.
    pub fn add(&self, increments: impl IntoIterator<Item = (u64, f64)>, applied: &mut Applied) -> Vec<f64> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        if now.duration_since(inner.last_sweep) > self.ttl.min(Duration::from_secs(60)) {
            let ttl = self.ttl;
            inner.totals.retain(|_, t| now.duration_since(t.seen) <= ttl);
            inner.last_sweep = now;
        }
        increments
            .into_iter()
            .map(|(key, delta)| {
                let t = inner.totals.entry(key).or_insert(Total { value: 0.0, seen: now });
                if now.duration_since(t.seen) > self.ttl {
                    t.value = 0.0;
                }
                t.value += delta;
                t.seen = now;
                applied.0.push((key, delta));
                t.value
            })
            .collect()
    }

    /// Takes back what a request added.
    pub fn undo(&self, applied: Applied) {
        let mut inner = self.inner.lock();
        for (key, delta) in applied.0 {
            if let Some(t) = inner.totals.get_mut(&key) {
                t.value -= delta;
            }
        }
    }

    /// Series with a running total.
    pub fn len(&self) -> usize {
        self.inner.lock().totals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_accumulate_per_series_and_can_be_taken_back() {
        let d = DeltaTotals::new(Duration::from_secs(3600));
        let t = Tenant::default_tenant();
        let a = key(&t, &[("__name__", "x_total"), ("k", "a")]);
        let b = key(&t, &[("__name__", "x_total"), ("k", "b")]);
        assert_ne!(a, b);
        let other = key(&Tenant::new("other").unwrap(), &[("__name__", "x_total"), ("k", "a")]);
        assert_ne!(a, other, "tenants never share a total");
        let mut applied = Applied::default();
        assert_eq!(d.add([(a, 2.0), (b, 1.0), (a, 3.0)], &mut applied), vec![2.0, 1.0, 5.0]);
        let mut second = Applied::default();
        assert_eq!(d.add([(a, 10.0)], &mut second), vec![15.0]);
        d.undo(second);
        assert_eq!(d.add([(a, 1.0)], &mut Applied::default()), vec![6.0], "the failed request was taken back");
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn a_total_idle_past_the_ttl_starts_again() {
        let d = DeltaTotals::new(Duration::from_millis(20));
        let k = key(&Tenant::default_tenant(), &[("__name__", "x_total")]);
        assert_eq!(d.add([(k, 5.0)], &mut Applied::default()), vec![5.0]);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(d.add([(k, 1.0)], &mut Applied::default()), vec![1.0]);
    }
}
