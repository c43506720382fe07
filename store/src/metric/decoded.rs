//! Decoded runs of metric parts, kept for the next select (issue 23): decompressing and decoding a
//! part's pages is about a third of a PromQL evaluation, and dashboards read the same series again at
//! every refresh. A run is one series' samples in one part, as `MetricPart::read_runs` gives them
//! (times and values decoded, whole: the select trims them to its range). Parts never change and their
//! ids are never reused, so an entry is never stale; those of parts that left stay until evicted.
//!
//! Bounded by `store.decoded_cache_max_bytes` (0: off), least recently used out first ([`ByteLru`]).

use arrow::buffer::ScalarBuffer;

use crate::lru::ByteLru;

/// Bytes an entry is counted at beyond its samples (map slot, buffers' headers).
const ENTRY_OVERHEAD: usize = 96;

/// A run's times and values.
type Run = (ScalarBuffer<i64>, ScalarBuffer<f64>);

pub(crate) struct DecodedRuns(ByteLru<(u64, u32), Run>);

impl DecodedRuns {
    pub(crate) fn new(max_bytes: usize) -> DecodedRuns {
        DecodedRuns(ByteLru::new(max_bytes))
    }

    pub(crate) fn enabled(&self) -> bool {
        self.0.enabled()
    }

    /// Changes the bound; what is held beyond a lower one goes at once (least recently used first).
    pub(crate) fn set_max(&self, max_bytes: usize) {
        self.0.set_max(max_bytes);
    }

    /// The run of `series` in part `part`, if kept.
    pub(crate) fn get(&self, part: u64, series: u32) -> Option<Run> {
        self.0.get(&(part, series))
    }

    /// Keeps a run (its own copy of the samples, so that no larger decoded buffer stays alive with it).
    pub(crate) fn insert(&self, part: u64, series: u32, t: &[i64], v: &[f64]) {
        let cost = t.len() * 16 + ENTRY_OVERHEAD;
        if self.0.admits(cost) {
            self.0.insert((part, series), (ScalarBuffer::from(t.to_vec()), ScalarBuffer::from(v.to_vec())), cost);
        }
    }

    /// (bytes held, hits, misses).
    pub(crate) fn stats(&self) -> (usize, u64, u64) {
        self.0.stats()
    }

    /// Drops everything (memory pressure).
    pub(crate) fn clear(&self) {
        self.0.clear();
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
