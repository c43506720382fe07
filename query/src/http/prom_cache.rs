//! A cache of PromQL range results (issue 23): Grafana runs the same dashboard queries at every refresh,
//! over a window that moves by a step or two. A range query's steps are evaluated independently, and a
//! step reads no sample after its own time (queries with `@` or a negative `offset` are not cached), so
//! a cached result stays exact at every step before the earliest sample appended since it was computed
//! ([`store::MetricStore::changed_since`]); deletes, retention and refreshes void it. A query whose
//! window starts inside a cached one takes those steps from the cache and evaluates only the rest.
//!
//! Bounded by `query.results_cache_max_bytes` (least recently used entries go first; 0 turns it off),
//! emptied under memory pressure.
//!
//! On a query node an answer is, per tree, exactly its ingest node's state (the bucket's parts plus what
//! the node adds), so an entry keeps each node's own mark, asked for before the evaluation
//! (`peers::ChangesRequest`), and the node says what it appended since; a retired tree (nobody to ask)
//! keeps the query node's local mark of that tree's store. An answer with a peer warning (a node that did
//! not answer) is not kept.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use store::ChangeMark;
use store::model::Tenant;

use crate::promql::{Labels, QueryResult, Value};

/// A matrix: labels and `(ms, value)` points, sorted by labels.
type Matrix = Vec<(Labels, Vec<(i64, f64)>)>;

/// What a result was computed from: one change mark per source (the local store, or each ingest node and
/// retired tree of a query node), by name.
pub type Marks = Vec<(String, ChangeMark)>;

/// What a result was computed from: the query and everything that changes its steps' values.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub tenant: Tenant,
    pub query: String,
    pub step: i64,
    /// `start` modulo `step`: only windows on the same grid share steps.
    pub phase: i64,
    pub lookback: i64,
    pub subquery_step: i64,
}

impl Key {
    /// The key of a range query, or None when it is not cached: `@` and negative offsets read samples
    /// after a step's time (checked on the text, so a `@` inside a label value is left uncached too).
    pub fn of(tenant: &Tenant, query: &str, start: i64, step: i64, lookback: i64, subquery_step: i64) -> Option<Key> {
        let compact: String = query.chars().filter(|c| !c.is_whitespace()).collect();
        if query.contains('@') || compact.contains("offset-") {
            return None;
        }
        Some(Key {
            tenant: tenant.clone(),
            query: query.to_string(),
            step,
            phase: start.rem_euclid(step),
            lookback,
            subquery_step,
        })
    }
}

struct Entry {
    start: i64,
    end: i64,
    marks: Marks,
    matrix: Arc<Matrix>,
    warnings: Vec<String>,
    infos: Vec<String>,
    bytes: usize,
    used: u64,
}

/// Steps a query may take from the cache: every cached point in `[from, upto]`.
pub struct Reuse {
    pub upto: i64,
    matrix: Arc<Matrix>,
    warnings: Vec<String>,
    infos: Vec<String>,
}

/// `lumen_query_results_cache_*`.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub bytes: Gauge,
}

impl CacheMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> CacheMetrics {
        let m = CacheMetrics::default();
        let r = registry.sub_registry_with_prefix("lumen_query_results_cache");
        r.register("hits", "PromQL range queries that took steps from the results cache", m.hits.clone());
        r.register("misses", "PromQL range queries the results cache could not help", m.misses.clone());
        r.register("bytes", "bytes the PromQL results cache holds (query.results_cache_max_bytes)", m.bytes.clone());
        m
    }
}

pub struct ResultsCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
    metrics: CacheMetrics,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    bytes: usize,
    tick: u64,
}

impl ResultsCache {
    pub fn new(max_bytes: usize, metrics: CacheMetrics) -> ResultsCache {
        ResultsCache { max_bytes, inner: Mutex::default(), metrics }
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// Empties the cache (memory pressure).
    pub fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.map.clear();
        inner.bytes = 0;
        self.metrics.bytes.set(0);
    }

    /// The marks the entry of `key` was computed at, if there is one.
    pub fn marks_of(&self, key: &Key) -> Option<Marks> {
        self.inner.lock().map.get(key).map(|e| e.marks.clone())
    }

    /// The cached steps a window `[start, end]` may reuse: those from `start` that are still exact, given
    /// what `changed_since` (the sources') says was appended since each entry was computed.
    pub fn lookup(&self, key: &Key, start: i64, end: i64, changed_since: impl Fn(&Marks) -> i64) -> Option<Reuse> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let found = inner.map.get_mut(key).and_then(|e| {
            if e.start > start {
                return None;
            }
            let changed = changed_since(&e.marks);
            if changed == i64::MIN {
                return None;
            }
            // The last cached step before the earliest sample appended since, within the window.
            let limit = e.end.min(end).min(changed.saturating_sub(1));
            if limit < start {
                return None;
            }
            let upto = start + (limit - start) / key.step * key.step;
            e.used = tick;
            Some(Reuse { upto, matrix: e.matrix.clone(), warnings: e.warnings.clone(), infos: e.infos.clone() })
        });
        match &found {
            Some(_) => self.metrics.hits.inc(),
            None => self.metrics.misses.inc(),
        };
        found
    }

    /// As [`Self::lookup`], for a caller that found out ahead what was appended since the marks `since`
    /// (`changed`, from [`Self::marks_of`]'s marks): an entry with other marks (another query replaced it
    /// meanwhile, perhaps with older ones) is not reused.
    pub fn lookup_since(&self, key: &Key, start: i64, end: i64, since: &Marks, changed: i64) -> Option<Reuse> {
        self.lookup(key, start, end, |m| if m == since { changed } else { i64::MIN })
    }

    /// Keeps the result of the window `[start, end]`, computed from what the sources held at `marks` (taken
    /// before the lookup and the evaluation).
    pub fn insert(&self, key: Key, start: i64, end: i64, marks: Marks, result: &QueryResult) {
        let Value::Matrix(m) = &result.value else { return };
        let bytes = size_of(m);
        if bytes > self.max_bytes / 4 {
            return;
        }
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let entry = Entry {
            start,
            end,
            marks,
            matrix: Arc::new(m.clone()),
            warnings: result.warnings.clone(),
            infos: result.infos.clone(),
            bytes,
            used: inner.tick,
        };
        if let Some(old) = inner.map.insert(key, entry) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        while inner.bytes > self.max_bytes {
            let Some(oldest) = inner.map.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone()) else {
                break;
            };
            if let Some(e) = inner.map.remove(&oldest) {
                inner.bytes -= e.bytes;
            }
        }
        self.metrics.bytes.set(i64::try_from(inner.bytes).unwrap_or(i64::MAX));
    }
}

fn size_of(m: &Matrix) -> usize {
    m.iter().map(|(l, pts)| 64 + l.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>() + pts.len() * 16).sum()
}

/// The cached points in `[start, reuse.upto]` and the freshly evaluated ones after, by series.
pub fn merge(reuse: &Reuse, start: i64, fresh: QueryResult) -> QueryResult {
    let Value::Matrix(fresh_m) = fresh.value else { return fresh };
    let mut by_labels: std::collections::BTreeMap<Labels, Vec<(i64, f64)>> = std::collections::BTreeMap::new();
    for (labels, pts) in reuse.matrix.iter() {
        let kept: Vec<(i64, f64)> = pts.iter().copied().filter(|(t, _)| *t >= start && *t <= reuse.upto).collect();
        if !kept.is_empty() {
            by_labels.insert(labels.clone(), kept);
        }
    }
    for (labels, pts) in fresh_m {
        by_labels.entry(labels).or_default().extend(pts);
    }
    let mut warnings = reuse.warnings.clone();
    let mut infos = reuse.infos.clone();
    for w in fresh.warnings {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    for i in fresh.infos {
        if !infos.contains(&i) {
            infos.push(i);
        }
    }
    QueryResult {
        value: Value::Matrix(by_labels.into_iter().collect()),
        warnings,
        infos,
        samples_scanned: fresh.samples_scanned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> Tenant {
        Tenant::default_tenant()
    }

    fn result(points: &[(i64, f64)]) -> QueryResult {
        QueryResult {
            value: Value::Matrix(vec![(vec![("a".into(), "1".into())], points.to_vec())]),
            warnings: Vec::new(),
            infos: Vec::new(),
            samples_scanned: 0,
        }
    }

    fn points(r: &QueryResult) -> Vec<(i64, f64)> {
        match &r.value {
            Value::Matrix(m) => m.iter().flat_map(|(_, p)| p.iter().copied()).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn queries_reading_after_a_steps_time_are_not_cached() {
        assert!(Key::of(&tenant(), "rate(x[5m])", 0, 60, 1, 1).is_some());
        assert!(Key::of(&tenant(), "rate(x[5m] @ end())", 0, 60, 1, 1).is_none());
        assert!(Key::of(&tenant(), "x offset -5m", 0, 60, 1, 1).is_none());
        assert!(Key::of(&tenant(), "x offset 5m", 0, 60, 1, 1).is_some());
        let (a, b) = (Key::of(&tenant(), "x", 0, 60, 1, 1), Key::of(&tenant(), "x", 30, 60, 1, 1));
        assert_ne!(a, b, "another grid, another key");
    }

    #[test]
    fn reuse_stops_before_the_earliest_sample_appended_since() {
        let cache = ResultsCache::new(1 << 20, CacheMetrics::default());
        let key = Key::of(&tenant(), "x", 0, 10, 1, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store =
            store::MetricStore::open(store_options(dir.path()), &mut prometheus_client::registry::Registry::default())
                .unwrap();
        let marks = vec![(String::new(), store.change_mark())];
        assert!(cache.marks_of(&key).is_none());
        cache.insert(key.clone(), 0, 100, marks.clone(), &result(&[(0, 1.0), (10, 2.0), (50, 3.0), (100, 4.0)]));
        assert_eq!(cache.marks_of(&key), Some(marks), "the marks the entry was computed at");
        // Nothing appended since: everything from the window's start is reused.
        let r = cache.lookup(&key, 10, 120, |_| i64::MAX).unwrap();
        assert_eq!(r.upto, 100);
        assert_eq!(points(&merge(&r, 10, result(&[(110, 5.0)]))), [(10, 2.0), (50, 3.0), (100, 4.0), (110, 5.0)]);
        // A sample at 55 appended since: steps up to 50 stay.
        let r = cache.lookup(&key, 10, 120, |_| 55).unwrap();
        assert_eq!(r.upto, 50);
        assert!(cache.lookup(&key, 10, 120, |_| 5).is_none(), "nothing before the window's start is left");
        assert!(cache.lookup(&key, 10, 120, |_| i64::MIN).is_none(), "a delete or a refresh voids it");
        assert!(cache.lookup(&key, -10, 120, |_| i64::MAX).is_none(), "a window that starts earlier");
        // What was appended since marks found ahead holds only for the entry that has them.
        let ahead = cache.marks_of(&key).unwrap();
        assert!(cache.lookup_since(&key, 10, 120, &ahead, i64::MAX).is_some());
        let older = vec![(String::new(), store.change_mark()), ("node:b".to_string(), store.change_mark())];
        cache.insert(key.clone(), 0, 100, older, &result(&[(0, 1.0)]));
        assert!(cache.lookup_since(&key, 10, 120, &ahead, i64::MAX).is_none(), "replaced meanwhile");
        cache.clear();
        assert_eq!(cache.bytes(), 0);
        assert!(cache.lookup(&key, 10, 120, |_| i64::MAX).is_none());
    }

    #[test]
    fn the_least_recently_used_entries_go_past_the_bound() {
        let pts: Vec<(i64, f64)> = (0..100).map(|i| (i * 10, 1.0)).collect();
        let one = size_of(match &result(&pts).value {
            Value::Matrix(m) => m,
            _ => unreachable!(),
        });
        let cache = ResultsCache::new(one * 4 + one / 2, CacheMetrics::default());
        let dir = tempfile::tempdir().unwrap();
        let store =
            store::MetricStore::open(store_options(dir.path()), &mut prometheus_client::registry::Registry::default())
                .unwrap();
        let keys: Vec<Key> = (0..5).map(|i| Key::of(&tenant(), &format!("q{i}"), 0, 10, 1, 1).unwrap()).collect();
        for k in &keys[..4] {
            cache.insert(k.clone(), 0, 1000, vec![(String::new(), store.change_mark())], &result(&pts));
        }
        assert!(cache.lookup(&keys[0], 0, 1000, |_| i64::MAX).is_some(), "q0 used again");
        cache.insert(keys[4].clone(), 0, 1000, vec![(String::new(), store.change_mark())], &result(&pts));
        assert!(cache.bytes() <= one * 4 + one / 2);
        assert!(cache.lookup(&keys[1], 0, 1000, |_| i64::MAX).is_none(), "q1, the least recently used, went");
        assert!(cache.lookup(&keys[0], 0, 1000, |_| i64::MAX).is_some());
        assert!(cache.lookup(&keys[4], 0, 1000, |_| i64::MAX).is_some());
    }

    fn store_options(dir: &std::path::Path) -> store::StoreOptions {
        store::StoreOptions {
            data_dir: dir.to_path_buf(),
            retention: std::time::Duration::from_secs(86_400),
            disk: None,
            retention_rules: Vec::new(),
            tuning: store::StoreConfig::default(),
        }
    }
}
