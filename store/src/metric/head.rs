//! The metric head: samples acknowledged but not yet in a part, per tenant in per-series append buffers
//! indexed by series id, so a flush walks ids in order without a global sort. A buffer that received an
//! out-of-order sample is sorted (last write wins on equal timestamps) when it is read or flushed.

use std::collections::HashMap;
use std::time::Instant;

use crate::model::Tenant;

/// One series' buffered samples.
#[derive(Default, Clone)]
pub(crate) struct SeriesBuf {
    pub(crate) t: Vec<i64>,
    pub(crate) v: Vec<f64>,
    sorted: bool,
}

impl SeriesBuf {
    fn push(&mut self, t: i64, v: f64) {
        if self.t.last().is_some_and(|&last| t <= last) {
            self.sorted = false;
        } else if self.t.is_empty() {
            self.sorted = true;
        }
        self.t.push(t);
        self.v.push(v);
    }

    /// The samples in time order, duplicates resolved to the last written.
    pub(crate) fn sorted(&self) -> (Vec<i64>, Vec<f64>) {
        if self.sorted {
            return (self.t.clone(), self.v.clone());
        }
        sort_dedup(&self.t, &self.v)
    }

    #[cfg(test)]
    pub(crate) fn is_sorted(&self) -> bool {
        self.sorted
    }
}

/// Sorts samples by time, keeping the last of equal timestamps (stable sort, then keep the last).
pub(crate) fn sort_dedup(t: &[i64], v: &[f64]) -> (Vec<i64>, Vec<f64>) {
    let mut idx: Vec<u32> = (0..t.len() as u32).collect();
    idx.sort_by_key(|&i| t[i as usize]);
    let mut ot: Vec<i64> = Vec::with_capacity(t.len());
    let mut ov: Vec<f64> = Vec::with_capacity(t.len());
    for i in idx {
        let (ti, vi) = (t[i as usize], v[i as usize]);
        if ot.last() == Some(&ti) {
            *ov.last_mut().expect("same length") = vi;
        } else {
            ot.push(ti);
            ov.push(vi);
        }
    }
    (ot, ov)
}

/// A tenant's part of the head.
#[derive(Default)]
pub(crate) struct TenantHead {
    pub(crate) series: Vec<SeriesBuf>,
    pub(crate) samples: usize,
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
}

/// Samples of all tenants since the last flush.
#[derive(Default)]
pub(crate) struct MetricHead {
    pub(crate) tenants: HashMap<Tenant, TenantHead>,
    pub(crate) samples: usize,
    pub(crate) first_write: Option<Instant>,
}

/// Bytes of head memory per buffered sample (time and value).
pub(crate) const SAMPLE_BYTES: usize = 16;

impl MetricHead {
    pub(crate) fn insert(&mut self, tenant: &Tenant, samples: &[(u32, i64, f64)]) {
        if samples.is_empty() {
            return;
        }
        let th = match self.tenants.get_mut(tenant) {
            Some(th) => th,
            None => self.tenants.entry(tenant.clone()).or_insert_with(|| TenantHead {
                min_t: i64::MAX,
                max_t: i64::MIN,
                ..TenantHead::default()
            }),
        };
        for &(id, t, v) in samples {
            let id = id as usize;
            if th.series.len() <= id {
                th.series.resize_with(id + 1, SeriesBuf::default);
            }
            th.series[id].push(t, v);
            th.min_t = th.min_t.min(t);
            th.max_t = th.max_t.max(t);
        }
        th.samples += samples.len();
        self.samples += samples.len();
        self.first_write.get_or_insert_with(Instant::now);
    }

    pub(crate) fn bytes(&self) -> usize {
        self.samples * SAMPLE_BYTES
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.samples == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_samples_are_sorted_and_the_last_duplicate_wins() {
        let mut h = MetricHead::default();
        let t = Tenant::new("a").unwrap();
        h.insert(&t, &[(2, 30, 3.0), (2, 10, 1.0), (2, 20, 2.0), (2, 10, 1.5), (0, 5, 0.5)]);
        let th = &h.tenants[&t];
        assert_eq!(th.series.len(), 3);
        assert!(!th.series[2].is_sorted());
        assert_eq!(th.series[2].sorted(), (vec![10, 20, 30], vec![1.5, 2.0, 3.0]));
        assert!(th.series[0].is_sorted());
        assert_eq!((th.min_t, th.max_t, h.samples), (5, 30, 5));
    }
}
