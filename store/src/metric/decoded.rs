//! Decoded runs of metric parts, kept for the next select (issue 23): decompressing and decoding a
//! part's pages is about a third of a PromQL evaluation, and dashboards read the same series again at
//! every refresh. A run is one series' samples in one part, as `MetricPart::read_runs` gives them
//! (times and values decoded, whole: the select trims them to its range). Parts never change and their
//! ids are never reused, so an entry is never stale; those of parts that left stay until evicted.
//!
//! Bounded by `store.decoded_cache_max_bytes` (0: off); past it the least recently used quarter of the
//! bytes goes at once, so that eviction costs one pass over the entries per many inserts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::buffer::ScalarBuffer;
use parking_lot::Mutex;

/// Bytes an entry is counted at beyond its samples (map slot, buffers' headers).
const ENTRY_OVERHEAD: usize = 96;

#[derive(Default)]
pub(crate) struct DecodedRuns {
    max_bytes: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<(u64, u32), Entry>,
    bytes: usize,
    tick: u64,
    hits: u64,
    misses: u64,
}

struct Entry {
    t: ScalarBuffer<i64>,
    v: ScalarBuffer<f64>,
    used: u64,
}

fn cost(t: &ScalarBuffer<i64>) -> usize {
    t.len() * 16 + ENTRY_OVERHEAD
}

impl DecodedRuns {
    pub(crate) fn new(max_bytes: usize) -> DecodedRuns {
        DecodedRuns { max_bytes: AtomicUsize::new(max_bytes), inner: Mutex::default() }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.max() > 0
    }

    fn max(&self) -> usize {
        self.max_bytes.load(Ordering::Relaxed)
    }

    /// Changes the bound; what is held beyond a lower one goes at once (least recently used first).
    pub(crate) fn set_max(&self, max_bytes: usize) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        let mut inner = self.inner.lock();
        if inner.bytes > max_bytes {
            inner.evict(max_bytes - max_bytes / 4);
        }
    }

    /// The run of `series` in part `part`, if kept.
    pub(crate) fn get(&self, part: u64, series: u32) -> Option<(ScalarBuffer<i64>, ScalarBuffer<f64>)> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let found = inner.map.get_mut(&(part, series)).map(|e| {
            e.used = tick;
            (e.t.clone(), e.v.clone())
        });
        if found.is_some() {
            inner.hits += 1;
        } else {
            inner.misses += 1;
        }
        found
    }

    /// Keeps a run (its own copy of the samples, so that no larger decoded buffer stays alive with it).
    pub(crate) fn insert(&self, part: u64, series: u32, t: &[i64], v: &[f64]) {
        let t = ScalarBuffer::from(t.to_vec());
        let size = cost(&t);
        let max = self.max();
        if size > max / 8 {
            return;
        }
        let v = ScalarBuffer::from(v.to_vec());
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let used = inner.tick;
        if let Some(old) = inner.map.insert((part, series), Entry { t, v, used }) {
            inner.bytes -= cost(&old.t);
        }
        inner.bytes += size;
        if inner.bytes > max {
            inner.evict(max - max / 4);
        }
    }

    /// (bytes held, hits, misses).
    pub(crate) fn stats(&self) -> (usize, u64, u64) {
        let inner = self.inner.lock();
        (inner.bytes, inner.hits, inner.misses)
    }

    /// Drops everything (memory pressure).
    pub(crate) fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.map.clear();
        inner.bytes = 0;
    }
}

impl Inner {
    /// Drops the least recently used entries until at most `target` bytes are held.
    fn evict(&mut self, target: usize) {
        let mut ages: Vec<(u64, usize)> = self.map.values().map(|e| (e.used, cost(&e.t))).collect();
        ages.sort_unstable();
        let mut freed = 0usize;
        let mut cutoff = 0u64;
        for (used, size) in ages {
            if self.bytes - freed <= target {
                break;
            }
            freed += size;
            cutoff = used;
        }
        let mut bytes = self.bytes;
        self.map.retain(|_, e| {
            let keep = e.used > cutoff;
            if !keep {
                bytes -= cost(&e.t);
            }
            keep
        });
        self.bytes = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of 100 samples, and the bytes the cache counts for it.
    fn run_of_100() -> (Vec<i64>, Vec<f64>, usize) {
        ((0..100).collect(), (0..100).map(f64::from).collect(), 100 * 16 + ENTRY_OVERHEAD)
    }

    #[test]
    fn runs_come_back_and_the_least_recently_used_go_past_the_bound() {
        let (run, vals, one) = run_of_100();
        let cache = DecodedRuns::new(one * 10);
        for s in 0..10 {
            cache.insert(1, s, &run, &vals);
        }
        assert_eq!(cache.stats().0, one * 10);
        assert!(cache.get(1, 0).is_some(), "series 0 read again");
        cache.insert(2, 0, &run, &vals);
        let (bytes, _, _) = cache.stats();
        assert!(bytes <= one * 10, "{bytes}");
        assert!(cache.get(1, 0).is_some(), "the recently read run stays");
        assert!(cache.get(2, 0).is_some(), "the new run stays");
        assert!(cache.get(1, 1).is_none(), "the least recently used went");
        let (t, v) = cache.get(1, 0).unwrap();
        assert_eq!((&t[..], &v[..]), (&run[..], &vals[..]));
        assert!(DecodedRuns::new(one * 4).get(1, 0).is_none());
        let tiny = DecodedRuns::new(one);
        tiny.insert(1, 0, &run, &vals);
        assert_eq!(tiny.stats().0, 0, "a run over an eighth of the bound is not kept");
        cache.clear();
        assert_eq!(cache.stats().0, 0);
    }

    #[test]
    fn a_lower_bound_evicts_at_once_and_bounds_later_inserts() {
        let (run, vals, one) = run_of_100();
        let cache = DecodedRuns::new(one * 16);
        for s in 0..16 {
            cache.insert(1, s, &run, &vals);
        }
        assert!(cache.get(1, 15).is_some());
        cache.set_max(one * 8);
        assert!(cache.stats().0 <= one * 6, "evicted to three quarters of the new bound: {}", cache.stats().0);
        assert!(cache.get(1, 15).is_some(), "the most recently read run stays");
        for s in 16..40 {
            cache.insert(1, s, &run, &vals);
        }
        assert!(cache.stats().0 <= one * 8, "{}", cache.stats().0);
        cache.set_max(0);
        assert_eq!(cache.stats().0, 0);
        assert!(!cache.enabled());
    }
}
