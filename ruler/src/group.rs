//! A group of rules and one evaluation cycle of it: every rule in order at one aligned timestamp, each
//! seeing what the earlier ones wrote, stale markers for series that went away, the alerts to send, and
//! the restore of `for` state after a start.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use query::template::{Host, Value};
use store::model::Tenant;

use crate::rule::{Labels, OutAlert, RuleState, TemplateEnv};
use crate::rulefmt::{GroupSpec, Lang, Query, RuleKind};

/// The bit pattern Prometheus uses for a stale marker.
pub const STALE_NAN: f64 = f64::from_bits(query::promql::STALE_NAN_BITS);

/// Where rules read and write. Synchronous: the server's implementation runs on a blocking thread.
pub trait Backend: Send + Sync {
    /// An instant query at `t_ms`: a vector (a scalar becomes one sample with no labels).
    fn query(&self, tenant: &Tenant, q: &Query, t_ms: i64) -> Result<Vec<(Labels, f64)>, String>;
    /// Stores samples at `t_ms`.
    fn write(&self, tenant: &Tenant, t_ms: i64, samples: Vec<(Labels, f64)>) -> Result<(), String>;
    /// The series matching `name` and the equality matchers, each with its last sample in
    /// `[mint, maxt]` that is not a stale marker.
    fn last_samples(
        &self,
        tenant: &Tenant,
        matchers: &[(String, String)],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<(Labels, i64, f64)>, String>;
}

/// Settings every group shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub external_labels: BTreeMap<String, String>,
    pub external_url: String,
    pub resend_delay: Duration,
    pub outage_tolerance: Duration,
    pub grace_period: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            external_labels: BTreeMap::new(),
            external_url: "http://localhost:9700".to_string(),
            resend_delay: Duration::from_secs(60),
            outage_tolerance: Duration::from_secs(3600),
            grace_period: Duration::from_secs(600),
        }
    }
}

/// A group's identity: tenant, language, file (or namespace), name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub tenant: String,
    pub lang: Lang,
    pub file: String,
    pub name: String,
}

/// A group and the state of its rules.
#[derive(Debug, Clone)]
pub struct GroupState {
    pub tenant: Tenant,
    pub spec: GroupSpec,
    pub rules: Vec<RuleState>,
    pub last_eval_ms: Option<i64>,
    pub eval_duration: Duration,
    /// Whether `for` state is still to be restored (after the second evaluation since start).
    pub should_restore: bool,
    pub evaluations: u64,
}

/// What one cycle did.
#[derive(Debug, Default)]
pub struct Report {
    pub alerts: Vec<OutAlert>,
    pub failures: usize,
    pub rules: usize,
}

/// Runs template `query` calls in the rule's language, at the evaluation time.
struct QueryHost<'a> {
    backend: &'a dyn Backend,
    tenant: &'a Tenant,
    lang: Lang,
    t_ms: i64,
}

impl Host for QueryHost<'_> {
    fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let parsed = crate::rulefmt::parse_query(q, self.lang)?;
        let res = self.backend.query(self.tenant, &parsed, self.t_ms)?;
        Ok(res
            .into_iter()
            .map(|(l, v)| {
                let mut m = BTreeMap::new();
                m.insert("Labels".to_string(), Value::Map(l.into_iter().map(|(k, v)| (k, Value::Str(v))).collect()));
                m.insert("Value".to_string(), Value::Float(v));
                Value::Map(m)
            })
            .collect())
    }
}

/// `url` + Prometheus' table link for `expr`.
pub fn generator_url(external_url: &str, expr: &str) -> String {
    let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    format!("{}/graph?g0.expr={q}&g0.tab=1", external_url.trim_end_matches('/'))
}

/// Prometheus' phase of a group within its interval, in ms: `labels.Hash()` of `{file="…", name="…"}` (the
/// labels in name order, each as `name 0xff value 0xff`, hashed with XXH64 seed 0) modulo the interval
/// in nanoseconds (`Group.EvalTimestamp`). A whole-millisecond interval keeps the grid the same in ms.
pub fn prometheus_group_offset_ms(file: &str, name: &str, interval_ms: i64) -> i64 {
    let mut b = Vec::with_capacity(file.len() + name.len() + 12);
    for (k, v) in [("file", file), ("name", name)] {
        b.extend_from_slice(k.as_bytes());
        b.push(0xff);
        b.extend_from_slice(v.as_bytes());
        b.push(0xff);
    }
    let interval_ns = (interval_ms.max(1) as u64).saturating_mul(1_000_000);
    (xxhash_rust::xxh64::xxh64(&b, 0) % interval_ns / 1_000_000) as i64
}

impl GroupState {
    pub fn new(tenant: Tenant, spec: GroupSpec) -> GroupState {
        let rules = spec.rules.iter().cloned().map(RuleState::new).collect();
        GroupState {
            tenant,
            spec,
            rules,
            last_eval_ms: None,
            eval_duration: Duration::ZERO,
            should_restore: true,
            evaluations: 0,
        }
    }

    pub fn key(&self) -> GroupKey {
        GroupKey {
            tenant: self.tenant.as_str().to_string(),
            lang: self.spec.lang,
            file: self.spec.file.clone(),
            name: self.spec.name.clone(),
        }
    }

    /// The evaluation time of the cycle that `now_ms` falls in: aligned to the interval plus a per-group
    /// offset, so ticks are stable across restarts and spread between groups. The offset is Prometheus'
    /// own (XXH64 of the label set `{file, name}` in its byte form, modulo the interval in nanoseconds),
    /// so the same group file evaluates at the same instants in both, and their `ALERTS` samples,
    /// `activeAt` and `ALERTS_FOR_STATE` values agree to the millisecond.
    pub fn eval_timestamp(&self, now_ms: i64) -> i64 {
        let interval = (self.spec.interval.as_millis() as i64).max(1);
        let offset = prometheus_group_offset_ms(&self.spec.file, &self.spec.name, interval);
        let adj = now_ms - offset;
        adj - adj.rem_euclid(interval) + offset
    }

    /// Takes over the state of the same group before a reload: each rule takes the state of the first old
    /// rule with the same name and kind (as Prometheus' `CopyState`). Returns the series of old rules no
    /// new rule took over (to be marked stale).
    pub fn take_state(&mut self, old: GroupState) -> Vec<Labels> {
        self.last_eval_ms = old.last_eval_ms;
        self.eval_duration = old.eval_duration;
        self.should_restore = old.should_restore;
        self.evaluations = old.evaluations;
        let mut olds: Vec<Option<RuleState>> = old.rules.into_iter().map(Some).collect();
        for r in &mut self.rules {
            let found = olds.iter_mut().find(|o| {
                o.as_ref().is_some_and(|o| o.spec.name == r.spec.name && o.spec.is_alerting() == r.spec.is_alerting())
            });
            if let Some(o) = found.and_then(Option::take) {
                r.take_state(o);
            }
        }
        olds.into_iter().flatten().flat_map(|o| o.previous_series).collect()
    }

    /// Every series this group wrote last, for stale markers when the group goes away.
    pub fn all_series(&self) -> Vec<Labels> {
        self.rules.iter().flat_map(|r| r.previous_series.iter().cloned()).collect()
    }

    /// One cycle at `ts` (ms).
    pub fn eval(&mut self, ts: i64, backend: &dyn Backend, settings: &Settings, now_ms: i64) -> Report {
        let started = Instant::now();
        let offset = self.spec.query_offset.as_millis() as i64;
        let t = ts - offset;
        let interval_ms = self.spec.interval.as_millis() as i64;
        let resend_ms = settings.resend_delay.as_millis() as i64;
        let mut report = Report { rules: self.rules.len(), ..Report::default() };
        let host = QueryHost { backend, tenant: &self.tenant, lang: self.spec.lang, t_ms: t };
        let env = TemplateEnv {
            external_labels: &settings.external_labels,
            external_url: &settings.external_url,
            host: Some(&host),
            now_ms,
        };
        for rule in &mut self.rules {
            let rule_started = Instant::now();
            rule.last_eval_ms = Some(now_ms);
            let result = backend.query(&self.tenant, &rule.spec.query, t);
            let out = match result {
                Err(e) => {
                    rule.fail(e);
                    Err(())
                }
                Ok(v) => match rule.spec.kind {
                    RuleKind::Recording => rule.record(v, self.spec.limit).map_err(|_| ()),
                    RuleKind::Alerting { .. } => rule.alert(ts, v, self.spec.limit, &env).map_err(|_| ()),
                },
            };
            match out {
                Err(()) => report.failures += 1,
                Ok(o) => {
                    let current: HashSet<Labels> = o.samples.iter().map(|(l, _)| l.clone()).collect();
                    let mut samples = o.samples;
                    samples.extend(rule.previous_series.difference(&current).map(|l| (l.clone(), STALE_NAN)));
                    if !samples.is_empty()
                        && let Err(e) = backend.write(&self.tenant, t, samples)
                    {
                        rule.fail(format!("storing the rule's samples failed: {e}"));
                        report.failures += 1;
                    } else {
                        rule.previous_series = current;
                    }
                }
            }
            if rule.spec.is_alerting() {
                let url = generator_url(&settings.external_url, &rule.spec.expr);
                report.alerts.extend(rule.to_send(ts, resend_ms, interval_ms, &url));
            }
            rule.eval_duration = rule_started.elapsed();
        }
        self.evaluations += 1;
        self.last_eval_ms = Some(now_ms);
        self.eval_duration = started.elapsed();
        report
    }

    /// Restores `for` state from `ALERTS_FOR_STATE` over the outage tolerance (after the second cycle).
    pub fn restore(&mut self, now_ms: i64, backend: &dyn Backend, settings: &Settings) {
        self.should_restore = false;
        let grace = settings.grace_period.as_millis() as i64;
        let tolerance = settings.outage_tolerance.as_millis() as i64;
        for rule in &mut self.rules {
            let RuleKind::Alerting { hold, .. } = &rule.spec.kind else {
                rule.restored = true;
                continue;
            };
            if (hold.as_millis() as i64) < grace || rule.active.is_empty() {
                rule.restored = true;
                continue;
            }
            let mut m = vec![
                ("__name__".to_string(), "ALERTS_FOR_STATE".to_string()),
                ("alertname".to_string(), rule.spec.name.clone()),
            ];
            m.extend(
                rule.spec.labels.iter().filter(|(_, v, _)| !v.contains("{{")).map(|(k, v, _)| (k.clone(), v.clone())),
            );
            match backend.last_samples(&self.tenant, &m, now_ms - tolerance, now_ms) {
                Ok(series) => rule.restore(now_ms, &series, grace),
                Err(e) => {
                    tracing::warn!(group = %self.spec.name, rule = %rule.spec.name, error = %e, "restoring the alert's for state failed; it starts anew");
                    rule.restored = true;
                }
            }
        }
    }

    /// Stale markers for every series of the group (it was removed, or the server stops for good).
    pub fn mark_stale(&mut self, ts: i64, backend: &dyn Backend) {
        let series = self.all_series();
        if series.is_empty() {
            return;
        }
        let samples = series.into_iter().map(|l| (l, STALE_NAN)).collect();
        if let Err(e) = backend.write(&self.tenant, ts, samples) {
            tracing::warn!(group = %self.spec.name, error = %e, "writing stale markers failed");
        }
        for r in &mut self.rules {
            r.previous_series.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_prometheus_hash_of_file_and_name_in_nanoseconds() {
        // The hash's reference value (XXH64 of "abc", seed 0), so a change of hash function shows here.
        assert_eq!(xxhash_rust::xxh64::xxh64(b"abc", 0), 0x44bc_2cf5_ad77_0999);
        let bytes = b"file\xffrules.yaml\xffname\xffg\xff";
        let h = xxhash_rust::xxh64::xxh64(bytes, 0);
        assert_eq!(prometheus_group_offset_ms("rules.yaml", "g", 60_000), (h % 60_000_000_000 / 1_000_000) as i64);
        for interval in [1, 1_000, 15_000, 86_400_000] {
            let o = prometheus_group_offset_ms("/etc/rules/a.yaml", "group", interval);
            assert!((0..interval).contains(&o), "{o} outside [0, {interval})");
        }
        // Groups differ in phase; the same group keeps its phase.
        let a = prometheus_group_offset_ms("f", "a", 60_000);
        assert_eq!(a, prometheus_group_offset_ms("f", "a", 60_000));
        assert_ne!(a, prometheus_group_offset_ms("f", "b", 60_000));
    }
}
