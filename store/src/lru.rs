//! A cache bounded in bytes, least recently used out first: the decoded runs of metric parts
//! ([`crate::metric`]) and the answers of log scans from parts ([`crate::scan`]) both keep what was read
//! from immutable parts for the next query (issue 23). Past the bound the least recently used quarter
//! of the bytes goes at once, so that eviction costs one pass over the entries per many inserts.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

pub(crate) struct ByteLru<K, V> {
    max_bytes: AtomicUsize,
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    map: HashMap<K, Entry<V>>,
    bytes: usize,
    tick: u64,
    hits: u64,
    misses: u64,
}

struct Entry<V> {
    value: V,
    cost: usize,
    used: u64,
}

impl<K: Hash + Eq, V: Clone> ByteLru<K, V> {
    pub(crate) fn new(max_bytes: usize) -> ByteLru<K, V> {
        ByteLru {
            max_bytes: AtomicUsize::new(max_bytes),
            inner: Mutex::new(Inner { map: HashMap::new(), bytes: 0, tick: 0, hits: 0, misses: 0 }),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.max() > 0
    }

    pub(crate) fn max(&self) -> usize {
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

    /// The value kept under `key`, if any.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let found = inner.map.get_mut(key).map(|e| {
            e.used = tick;
            e.value.clone()
        });
        if found.is_some() {
            inner.hits += 1;
        } else {
            inner.misses += 1;
        }
        found
    }

    /// Whether a value of `cost` bytes would be kept: at most an eighth of the bound, so that one entry
    /// never empties the cache.
    pub(crate) fn admits(&self, cost: usize) -> bool {
        cost <= self.max() / 8
    }

    /// Keeps `value`, counted at `cost` bytes, unless [`ByteLru::admits`] says no.
    pub(crate) fn insert(&self, key: K, value: V, cost: usize) {
        let max = self.max();
        if !self.admits(cost) {
            return;
        }
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let used = inner.tick;
        if let Some(old) = inner.map.insert(key, Entry { value, cost, used }) {
            inner.bytes -= old.cost;
        }
        inner.bytes += cost;
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

impl<K: Hash + Eq, V> Inner<K, V> {
    /// Drops the least recently used entries until at most `target` bytes are held.
    fn evict(&mut self, target: usize) {
        let mut ages: Vec<(u64, usize)> = self.map.values().map(|e| (e.used, e.cost)).collect();
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
                bytes -= e.cost;
            }
            keep
        });
        self.bytes = bytes;
    }
}
