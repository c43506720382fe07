//! The state of each rule and what one evaluation does to it: Prometheus 3's alert state machine
//! (`rules/alerting.go`) and recording rules (`rules/recording.go`), independent of where queries run and
//! where samples go.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use query::template::{Data, Host, Template, Value};

use crate::rulefmt::{RuleKind, RuleSpec};

/// Sorted label pairs.
pub type Labels = Vec<(String, String)>;

/// How long a resolved alert is kept (and re-sent as resolved), as Prometheus' `resolvedRetention`.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// An alert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of an alerting rule. Times in milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: Labels,
    pub state: AlertState,
    pub value: f64,
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub last_sent_at: Option<i64>,
    pub valid_until: i64,
    pub keep_firing_since: Option<i64>,
}

impl Alert {
    /// Prometheus' `needsSending`: never while pending; when resolved since the last send; else once the
    /// resend delay has passed.
    fn needs_sending(&self, ts: i64, resend_delay_ms: i64) -> bool {
        if self.state == AlertState::Pending {
            return false;
        }
        if let Some(r) = self.resolved_at
            && self.last_sent_at.is_none_or(|s| r > s)
        {
            return true;
        }
        self.last_sent_at.is_none_or(|s| s + resend_delay_ms < ts)
    }
}

/// Health of a rule, as the rules API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Ok,
    Err,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Ok => "ok",
            Health::Err => "err",
        }
    }
}

/// What an alert looks like on its way to a notifier.
#[derive(Debug, Clone, PartialEq)]
pub struct OutAlert {
    pub labels: Labels,
    pub annotations: Labels,
    pub starts_at: i64,
    pub ends_at: i64,
    pub generator_url: String,
    /// True when resolved (`ends_at` in the past).
    pub resolved: bool,
}

/// A rule and its state.
#[derive(Debug, Clone)]
pub struct RuleState {
    pub spec: RuleSpec,
    pub health: Health,
    pub last_error: String,
    /// When the last evaluation ran (ms) and how long it took.
    pub last_eval_ms: Option<i64>,
    pub eval_duration: Duration,
    /// Alerts by label hash (alerting rules).
    pub active: HashMap<u64, Alert>,
    /// Whether `for` state was restored (ALERTS samples are written only after that).
    pub restored: bool,
    /// Series written by the previous evaluation (for stale markers when they disappear).
    pub previous_series: HashSet<Labels>,
}

/// What an evaluation of a rule produced for storage.
#[derive(Debug, Default)]
pub struct Output {
    /// Samples to write at the evaluation's (offset) timestamp.
    pub samples: Vec<(Labels, f64)>,
}

/// The inputs templates see besides a sample's labels and value.
pub struct TemplateEnv<'a> {
    pub external_labels: &'a BTreeMap<String, String>,
    pub external_url: &'a str,
    pub host: Option<&'a dyn Host>,
    pub now_ms: i64,
}

pub fn hash_labels(l: &Labels) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (k, v) in l {
        h.update(k.as_bytes());
        h.update(&[0xff]);
        h.update(v.as_bytes());
        h.update(&[0xfe]);
    }
    h.digest()
}

fn set_label(l: &mut Labels, name: &str, value: String) {
    match l.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
        Ok(i) if value.is_empty() => {
            l.remove(i);
        }
        Ok(i) => l[i].1 = value,
        Err(_) if value.is_empty() => {}
        Err(i) => l.insert(i, (name.to_string(), value)),
    }
}

fn labels_value(l: &Labels) -> Value {
    Value::Map(l.iter().map(|(k, v)| (k.clone(), Value::Str(v.clone()))).collect())
}

/// Renders a label or annotation template; an error becomes the text Prometheus puts in its place.
pub fn expand(t: &Template, labels: &Labels, value: f64, env: &TemplateEnv) -> String {
    let ext = Value::Map(env.external_labels.iter().map(|(k, v)| (k.clone(), Value::Str(v.clone()))).collect());
    let lv = labels_value(labels);
    let mut dot = BTreeMap::new();
    dot.insert("Labels".to_string(), lv.clone());
    dot.insert("ExternalLabels".to_string(), ext.clone());
    dot.insert("ExternalURL".to_string(), Value::Str(env.external_url.to_string()));
    dot.insert("Value".to_string(), Value::Float(value));
    let data = Data {
        dot: Value::Map(dot),
        vars: vec![
            ("$labels".to_string(), lv),
            ("$externalLabels".to_string(), ext),
            ("$externalURL".to_string(), Value::Str(env.external_url.to_string())),
            ("$value".to_string(), Value::Float(value)),
        ],
        host: env.host,
        now_ms: env.now_ms,
        external_url: env.external_url.to_string(),
        path_prefix: path_prefix(env.external_url),
    };
    match t.execute(&data) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "expanding a rule template failed");
            format!("<error expanding template: {e}>")
        }
    }
}

/// The path of the external URL (`/lumen` of `https://host/lumen/`), without a trailing slash.
pub fn path_prefix(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    match after_scheme.find('/') {
        Some(i) => after_scheme[i..].trim_end_matches('/').to_string(),
        None => String::new(),
    }
}

impl RuleState {
    pub fn new(spec: RuleSpec) -> RuleState {
        RuleState {
            spec,
            health: Health::Unknown,
            last_error: String::new(),
            last_eval_ms: None,
            eval_duration: Duration::ZERO,
            active: HashMap::new(),
            restored: false,
            previous_series: HashSet::new(),
        }
    }

    /// A failed query: health `err`, the alerts unchanged, nothing written.
    pub fn fail(&mut self, error: String) {
        self.health = Health::Err;
        self.last_error = error;
    }

    /// A recording rule's evaluation over the query's result: the samples to write, or an error when the
    /// result has two series with one label set or is over `limit`.
    pub fn record(&mut self, result: Vec<(Labels, f64)>, limit: usize) -> Result<Output, String> {
        let mut seen = HashSet::with_capacity(result.len());
        let mut samples = Vec::with_capacity(result.len());
        for (mut l, v) in result {
            set_label(&mut l, "__name__", self.spec.name.clone());
            for (k, val, _) in &self.spec.labels {
                set_label(&mut l, k, val.clone());
            }
            if !seen.insert(hash_labels(&l)) {
                return Err(self
                    .failed("vector contains metrics with the same labelset after applying rule labels".to_string()));
            }
            samples.push((l, v));
        }
        if limit > 0 && samples.len() > limit {
            return Err(self.failed(format!("exceeded limit of {limit} with {} series", samples.len())));
        }
        self.health = Health::Ok;
        self.last_error.clear();
        Ok(Output { samples })
    }

    fn failed(&mut self, e: String) -> String {
        self.fail(e.clone());
        e
    }

    /// An alerting rule's evaluation at `ts` (ms) over the query's result (Prometheus'
    /// `AlertingRule.Eval`). Returns the `ALERTS` and `ALERTS_FOR_STATE` samples to write (once restored).
    pub fn alert(
        &mut self,
        ts: i64,
        result: Vec<(Labels, f64)>,
        limit: usize,
        env: &TemplateEnv,
    ) -> Result<Output, String> {
        let RuleKind::Alerting { hold, keep_firing_for, annotations } = &self.spec.kind else {
            return Err("not an alerting rule".to_string());
        };
        let hold_ms = hold.as_millis() as i64;
        let keep_ms = keep_firing_for.as_millis() as i64;
        let mut fresh: HashMap<u64, Alert> = HashMap::with_capacity(result.len());
        for (l, v) in &result {
            let mut lb: Labels = l.iter().filter(|(k, _)| k != "__name__").cloned().collect();
            for (k, _, t) in &self.spec.labels {
                let val = match t {
                    Some(t) => expand(t, l, *v, env),
                    None => String::new(),
                };
                set_label(&mut lb, k, val);
            }
            set_label(&mut lb, "alertname", self.spec.name.clone());
            let ann: Labels = annotations.iter().map(|(k, _, t)| (k.clone(), expand(t, l, *v, env))).collect();
            let h = hash_labels(&lb);
            if fresh.contains_key(&h) {
                return Err(
                    self.failed("vector contains metrics with the same labelset after applying alert labels".into())
                );
            }
            fresh.insert(
                h,
                Alert {
                    labels: lb,
                    annotations: ann,
                    state: AlertState::Pending,
                    value: *v,
                    active_at: ts,
                    fired_at: None,
                    resolved_at: None,
                    last_sent_at: None,
                    valid_until: 0,
                    keep_firing_since: None,
                },
            );
        }
        let result_fps: HashSet<u64> = fresh.keys().copied().collect();
        for (h, a) in fresh {
            if let Some(old) = self.active.get_mut(&h)
                && old.state != AlertState::Inactive
            {
                old.value = a.value;
                old.annotations = a.annotations;
                continue;
            }
            self.active.insert(h, a);
        }
        let mut out = Vec::new();
        let mut active_pending = 0usize;
        let out_ts_labels = self.restored;
        let mut remove = Vec::new();
        for (fp, a) in &mut self.active {
            if !result_fps.contains(fp) {
                let mut keep_firing = false;
                if a.state == AlertState::Firing && keep_ms > 0 {
                    let since = *a.keep_firing_since.get_or_insert(ts);
                    if ts - since < keep_ms {
                        keep_firing = true;
                    }
                }
                if a.state == AlertState::Pending || a.resolved_at.is_some_and(|r| ts - r > RESOLVED_RETENTION_MS) {
                    remove.push(*fp);
                }
                if a.state != AlertState::Inactive && !keep_firing {
                    a.state = AlertState::Inactive;
                    a.resolved_at = Some(ts);
                }
                if !keep_firing {
                    continue;
                }
            } else {
                a.keep_firing_since = None;
            }
            active_pending += 1;
            if a.state == AlertState::Pending && ts - a.active_at >= hold_ms {
                a.state = AlertState::Firing;
                a.fired_at = Some(ts);
            } else if a.state == AlertState::Firing && ts - a.active_at < hold_ms {
                // `for` grew on a reload: back to pending, as Prometheus does.
                a.state = AlertState::Pending;
                a.fired_at = None;
                a.last_sent_at = None;
                a.keep_firing_since = None;
            }
            if out_ts_labels {
                out.push(self_sample(&self.spec, a, Some(a.state.as_str()), 1.0));
                out.push(self_sample(&self.spec, a, None, (a.active_at / 1000) as f64));
            }
        }
        for fp in remove {
            self.active.remove(&fp);
        }
        if limit > 0 && active_pending > limit {
            self.active.clear();
            return Err(self.failed(format!("exceeded limit of {limit} with {active_pending} alerts")));
        }
        self.health = Health::Ok;
        self.last_error.clear();
        Ok(Output { samples: out })
    }

    /// The rule's state for the API: firing if any alert fires, else pending if any is pending.
    pub fn state(&self) -> AlertState {
        let mut s = AlertState::Inactive;
        for a in self.active.values() {
            match a.state {
                AlertState::Firing => return AlertState::Firing,
                AlertState::Pending => s = AlertState::Pending,
                AlertState::Inactive => {}
            }
        }
        s
    }

    /// The alerts of this evaluation that go to the notifiers (Prometheus' `sendAlerts`), marking them sent.
    pub fn to_send(&mut self, ts: i64, resend_delay_ms: i64, interval_ms: i64, generator_url: &str) -> Vec<OutAlert> {
        let mut out = Vec::new();
        for a in self.active.values_mut() {
            if !a.needs_sending(ts, resend_delay_ms) {
                continue;
            }
            a.last_sent_at = Some(ts);
            let delta = resend_delay_ms.max(interval_ms);
            a.valid_until = ts + 4 * delta;
            let (ends_at, resolved) = match a.resolved_at {
                Some(r) => (r, true),
                None => (a.valid_until, false),
            };
            out.push(OutAlert {
                labels: a.labels.clone(),
                annotations: a.annotations.clone(),
                starts_at: a.fired_at.unwrap_or(a.active_at),
                ends_at,
                generator_url: generator_url.to_string(),
                resolved,
            });
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }

    /// Active alerts (pending, firing, kept firing) sorted by labels, for the APIs.
    pub fn active_alerts(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self.active.values().filter(|a| a.resolved_at.is_none()).collect();
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v
    }

    /// Takes over the state of the same rule before a reload: alerts, health, previous series.
    pub fn take_state(&mut self, old: RuleState) {
        self.health = old.health;
        self.last_error = old.last_error;
        self.last_eval_ms = old.last_eval_ms;
        self.eval_duration = old.eval_duration;
        self.restored = old.restored;
        self.previous_series = old.previous_series;
        if self.spec.is_alerting() && old.spec.is_alerting() {
            self.active = old.active;
        }
    }

    /// Restores `for` state from the last `ALERTS_FOR_STATE` samples (Prometheus' `RestoreForState`):
    /// `series` are that rule's series with their last non-stale sample (time, value = ActiveAt in s).
    pub fn restore(&mut self, now: i64, series: &[(Labels, i64, f64)], grace_ms: i64) {
        let RuleKind::Alerting { hold, .. } = &self.spec.kind else {
            return;
        };
        let hold_ms = hold.as_millis() as i64;
        for a in self.active.values_mut() {
            let Some((_, down_at, v)) = series.iter().find(|(l, _, _)| {
                l.iter()
                    .filter(|(k, _)| k != "__name__")
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .eq(a.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }) else {
                continue;
            };
            let restored_active_at = (*v * 1000.0) as i64;
            let remaining = hold_ms - (down_at - restored_active_at);
            if remaining <= 0 {
                // It was firing: it fires again at the next evaluation, as it would have.
            } else if remaining < grace_ms {
                a.active_at = now + grace_ms - hold_ms;
            } else {
                a.active_at = restored_active_at + (now - down_at);
            }
            // In Prometheus the alert also keeps its pending state; firing comes at the next evaluation.
            if a.state == AlertState::Firing && now - a.active_at < hold_ms {
                a.state = AlertState::Pending;
                a.fired_at = None;
            }
        }
        self.restored = true;
    }
}

/// The `ALERTS` (with a state) or `ALERTS_FOR_STATE` (without) sample of an alert: the rule's labels as
/// written, then the alert's, then the name.
fn self_sample(spec: &RuleSpec, a: &Alert, state: Option<&str>, v: f64) -> (Labels, f64) {
    let mut l: Labels = spec.labels.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect();
    for (k, v) in &a.labels {
        set_label(&mut l, k, v.clone());
    }
    set_label(&mut l, "__name__", if state.is_some() { "ALERTS" } else { "ALERTS_FOR_STATE" }.to_string());
    set_label(&mut l, "alertname", spec.name.clone());
    if let Some(s) = state {
        set_label(&mut l, "alertstate", s.to_string());
    }
    (l, v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rulefmt::{Defaults, Lang, parse_file};

    fn rule(yaml: &str) -> RuleState {
        let text = format!("groups:\n- name: g\n  rules:\n{yaml}");
        let g = parse_file("f", &text, Lang::PromQL, &Defaults::default()).unwrap();
        RuleState::new(g[0].rules[0].clone())
    }

    fn env(ext: &BTreeMap<String, String>) -> TemplateEnv<'_> {
        TemplateEnv { external_labels: ext, external_url: "http://lumen:9700", host: None, now_ms: 0 }
    }

    fn l(pairs: &[(&str, &str)]) -> Labels {
        let mut v: Labels = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        v.sort();
        v
    }

    const M: i64 = 60_000;

    #[test]
    fn pending_then_firing_at_for_then_resolved_and_kept_15m() {
        let ext = BTreeMap::new();
        let mut r = rule(
            "  - alert: Down\n    expr: up == 0\n    for: 2m\n    labels: {sev: page}\n    annotations: {s: '{{ $labels.i }} is {{ $value }}'}\n",
        );
        r.restored = true;
        let res = || vec![(l(&[("__name__", "up"), ("i", "a")]), 0.0)];
        r.alert(0, res(), 0, &env(&ext)).unwrap();
        assert_eq!(r.state(), AlertState::Pending);
        assert!(r.to_send(0, M, M, "u").is_empty(), "pending is never sent");
        r.alert(M, res(), 0, &env(&ext)).unwrap();
        assert_eq!(r.state(), AlertState::Pending);
        let out = r.alert(2 * M, res(), 0, &env(&ext)).unwrap();
        assert_eq!(r.state(), AlertState::Firing);
        let a = r.active_alerts()[0].clone();
        assert_eq!(a.labels, l(&[("alertname", "Down"), ("i", "a"), ("sev", "page")]));
        assert_eq!(a.annotations, l(&[("s", "a is 0")]));
        assert_eq!(a.fired_at, Some(2 * M));
        // ALERTS and ALERTS_FOR_STATE.
        assert!(out.samples.contains(&(
            l(&[("__name__", "ALERTS"), ("alertname", "Down"), ("alertstate", "firing"), ("i", "a"), ("sev", "page")]),
            1.0
        )));
        assert!(out.samples.contains(&(
            l(&[("__name__", "ALERTS_FOR_STATE"), ("alertname", "Down"), ("i", "a"), ("sev", "page")]),
            0.0
        )));
        let sent = r.to_send(2 * M, M, M, "u");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].starts_at, 2 * M);
        assert_eq!(sent[0].ends_at, 2 * M + 4 * M);
        assert!(r.to_send(2 * M + 30_000, M, 30_000, "u").is_empty(), "not before the resend delay");
        assert_eq!(r.to_send(3 * M + 1, M, M, "u").len(), 1);
        // Gone: resolved, sent as resolved, kept for 15 minutes, then dropped.
        let out = r.alert(4 * M, vec![], 0, &env(&ext)).unwrap();
        assert!(out.samples.is_empty());
        assert_eq!(r.state(), AlertState::Inactive);
        assert!(r.active_alerts().is_empty());
        let sent = r.to_send(4 * M, M, M, "u");
        assert!(sent[0].resolved && sent[0].ends_at == 4 * M);
        r.alert(19 * M, vec![], 0, &env(&ext)).unwrap();
        assert_eq!(r.active.len(), 1, "kept for 15 minutes");
        r.alert(19 * M + 1, vec![], 0, &env(&ext)).unwrap();
        assert!(r.active.is_empty());
    }

    #[test]
    fn a_pending_alert_that_goes_away_is_dropped_and_zero_for_fires_at_once() {
        let ext = BTreeMap::new();
        let mut r = rule("  - alert: A\n    expr: x\n    for: 5m\n");
        r.alert(0, vec![(l(&[("a", "1")]), 1.0)], 0, &env(&ext)).unwrap();
        r.alert(M, vec![], 0, &env(&ext)).unwrap();
        assert!(r.active.is_empty());
        let mut r = rule("  - alert: A\n    expr: x\n");
        r.alert(0, vec![(l(&[("a", "1")]), 1.0)], 0, &env(&ext)).unwrap();
        assert_eq!(r.state(), AlertState::Firing);
    }

    #[test]
    fn keep_firing_for_holds_a_firing_alert() {
        let ext = BTreeMap::new();
        let mut r = rule("  - alert: A\n    expr: x\n    keep_firing_for: 2m\n");
        let res = || vec![(l(&[("a", "1")]), 1.0)];
        r.alert(0, res(), 0, &env(&ext)).unwrap();
        r.alert(M, vec![], 0, &env(&ext)).unwrap();
        assert_eq!(r.state(), AlertState::Firing);
        assert_eq!(r.active_alerts()[0].keep_firing_since, Some(M));
        r.alert(2 * M, vec![], 0, &env(&ext)).unwrap();
        assert_eq!(r.state(), AlertState::Firing);
        r.alert(3 * M, vec![], 0, &env(&ext)).unwrap();
        assert_eq!(r.state(), AlertState::Inactive);
    }

    #[test]
    fn duplicates_limits_and_failures_leave_state_as_prometheus_does() {
        let ext = BTreeMap::new();
        let mut r = rule("  - alert: A\n    expr: x\n    labels: {a: fixed}\n");
        let e = r.alert(0, vec![(l(&[("a", "1")]), 1.0), (l(&[("a", "2")]), 1.0)], 0, &env(&ext)).unwrap_err();
        assert!(e.contains("same labelset"));
        assert_eq!(r.health, Health::Err);
        let mut r = rule("  - alert: A\n    expr: x\n");
        r.alert(0, vec![(l(&[("a", "1")]), 1.0)], 0, &env(&ext)).unwrap();
        r.fail("boom".into());
        assert_eq!(r.state(), AlertState::Firing, "a failed query leaves the alerts");
        let e = r.alert(M, vec![(l(&[("a", "1")]), 1.0), (l(&[("a", "2")]), 1.0)], 1, &env(&ext)).unwrap_err();
        assert!(e.contains("exceeded limit of 1 with 2 alerts"));
        assert!(r.active.is_empty());
        let mut r = rule("  - record: r\n    expr: x\n    labels: {k: v}\n");
        let out = r.record(vec![(l(&[("__name__", "x"), ("a", "1")]), 2.0)], 0).unwrap();
        assert_eq!(out.samples, vec![(l(&[("__name__", "r"), ("a", "1"), ("k", "v")]), 2.0)]);
        assert!(
            r.record(vec![(l(&[("a", "1")]), 1.0), (l(&[("a", "2")]), 1.0)], 1).unwrap_err().contains("exceeded limit")
        );
    }

    #[test]
    fn restore_follows_prometheus_arithmetic() {
        let ext = BTreeMap::new();
        let mut r = rule("  - alert: A\n    expr: x\n    for: 1h\n");
        let now = 100 * M;
        r.alert(now, vec![(l(&[("a", "1")]), 1.0)], 0, &env(&ext)).unwrap();
        let series_labels = l(&[("__name__", "ALERTS_FOR_STATE"), ("a", "1"), ("alertname", "A")]);
        // Active since 60m, down at 90m: 30 of 60 minutes served; restarted at 100m: fires at 130m.
        r.restore(now, &[(series_labels.clone(), 90 * M, (60 * M / 1000) as f64)], 10 * M);
        assert_eq!(r.active_alerts()[0].active_at, 70 * M);
        // 55 of 60 served: less than the grace period left, so it fires `grace` after the restart.
        let mut r2 = rule("  - alert: A\n    expr: x\n    for: 1h\n");
        r2.alert(now, vec![(l(&[("a", "1")]), 1.0)], 0, &env(&ext)).unwrap();
        r2.restore(now, &[(series_labels, 90 * M, (35 * M / 1000) as f64)], 10 * M);
        assert_eq!(r2.active_alerts()[0].active_at, now + 10 * M - 60 * M);
        assert!(r2.restored);
    }
}
