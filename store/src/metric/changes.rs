//! What changed in the samples queries see, for caches of query results (issue 23): each append's tenant
//! and earliest sample time, numbered; deletes, cancelled deletes, parts dropped (retention, the disk
//! budget) and refreshes change what any range reads, and start a new epoch.
//!
//! A cache takes a [`ChangeMark`] before it evaluates and keeps it with the result; later,
//! [`super::MetricStore::changed_since`] tells the earliest sample time written since, so that the
//! result's steps before it are still exact (PromQL reads no sample after a step's time without `@` or
//! a negative `offset`).

use std::collections::VecDeque;

use crate::model::Tenant;

/// Appends remembered; a mark older than the oldest one kept is treated as "everything changed".
const KEPT: usize = 16_384;

/// A point in the store's history of changes. Marks of another run of the store never match (the first
/// epoch is drawn from the clock at open), so a query node may keep an ingest node's mark across that
/// node's restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeMark {
    epoch: u64,
    seq: u64,
}

#[derive(Default)]
pub(crate) struct Changes {
    epoch: u64,
    seq: u64,
    /// (generation, tenant, earliest sample time in ms) of the latest appends, oldest first.
    log: VecDeque<(u64, Tenant, i64)>,
}

impl Changes {
    /// A history whose marks differ from those of every earlier run.
    pub(crate) fn starting_now() -> Changes {
        Changes { epoch: crate::time::now_ns() as u64, ..Changes::default() }
    }

    pub(crate) fn mark(&self) -> ChangeMark {
        ChangeMark { epoch: self.epoch, seq: self.seq }
    }

    pub(crate) fn appended(&mut self, tenant: &Tenant, min_t: i64) {
        self.seq += 1;
        if self.log.len() == KEPT {
            self.log.pop_front();
        }
        self.log.push_back((self.seq, tenant.clone(), min_t));
    }

    /// Anything may have changed: every earlier mark is void.
    pub(crate) fn everything(&mut self) {
        self.epoch += 1;
        self.log.clear();
    }

    /// The earliest sample time of `tenant` appended since `mark`: `i64::MAX` when nothing was,
    /// `i64::MIN` when that is not known (a new epoch, or more appends than the log keeps).
    pub(crate) fn since(&self, tenant: &Tenant, mark: ChangeMark) -> i64 {
        if mark.epoch != self.epoch {
            return i64::MIN;
        }
        if mark.seq == self.seq {
            return i64::MAX;
        }
        match self.log.front() {
            Some(&(oldest, _, _)) if oldest <= mark.seq + 1 => {}
            _ => return i64::MIN,
        }
        self.log
            .iter()
            .rev()
            .take_while(|(g, _, _)| *g > mark.seq)
            .filter(|(_, t, _)| t == tenant)
            .map(|(_, _, min_t)| *min_t)
            .min()
            .unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_since_a_mark_give_their_earliest_sample_of_the_tenant() {
        let (a, b) = (Tenant::new("a").unwrap(), Tenant::new("b").unwrap());
        let mut c = Changes::default();
        c.appended(&a, 50);
        let m = c.mark();
        assert_eq!(c.since(&a, m), i64::MAX, "nothing since");
        c.appended(&a, 100);
        c.appended(&b, 10);
        c.appended(&a, 90);
        assert_eq!(c.since(&a, m), 90);
        assert_eq!(c.since(&b, m), 10);
        let later = c.mark();
        assert_eq!(c.since(&b, later), i64::MAX);
        c.everything();
        assert_eq!(c.since(&a, later), i64::MIN, "a delete or a refresh voids every mark");
        let m = c.mark();
        for i in 0..KEPT + 1 {
            c.appended(&b, i as i64);
        }
        assert_eq!(c.since(&a, m), i64::MIN, "appends the log no longer holds are unknown");
        let m = c.mark();
        c.appended(&b, 5);
        assert_eq!(c.since(&a, m), i64::MAX);
    }
}
