//! OTLP metrics to Prometheus samples, as Prometheus' own OTLP receiver translates them.
//!
//! - Names and labels: see [`crate::naming`]. `service.namespace`/`service.name` become `job`
//!   (`namespace/name`), `service.instance.id` becomes `instance`; the resource's other attributes go on
//!   `target_info{job, instance, ...} 1` (when the resource has a job or an instance to join on), and
//!   those listed in `otlp.promote_resource_attributes` on every series too. Data point attributes whose
//!   names collide after translation are joined with `;` in key order.
//! - Gauge → a gauge (`_ratio` when the unit is `1`). Monotonic sum → a counter named `_total`;
//!   non-monotonic sum → a gauge.
//! - Delta sums and histograms are turned into cumulative ones: each point is added to a running total
//!   kept per series in memory (see [`crate::delta`]).
//! - Histogram → classic `_bucket{le}` (cumulative), `_sum`, `_count`.
//! - Exponential histogram → the same classic series: each bucket of the point, merged down to
//!   `otlp.exponential_histogram_max_scale`, gives a `_bucket` whose `le` is its upper bound
//!   (base^(index+1)); negative buckets and the zero bucket come first, so the counts stay cumulative.
//! - Summary → `{quantile}`, `_sum`, `_count`.
//! - A point flagged "no recorded value" writes Prometheus stale markers, so the series ends at once.
//! - Timestamps are milliseconds; a point without a time is stamped with the time of receipt.
//!
//! A data point is rejected on its own (counted in `partial_success`) when it has no value, an
//! unspecified temporality, buckets that do not match its bounds, or too many labels.

use std::ops::RangeInclusive;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, ExponentialHistogramDataPoint, HistogramDataPoint, Metric, NumberDataPoint,
    SummaryDataPoint, metric::Data, number_data_point,
};
use store::MetricMetadata;

use crate::naming::{Kind, label_name, metric_name};
use crate::value;

/// Prometheus' stale marker: a NaN that queries read as "the series ended here".
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;
const NO_RECORDED_VALUE: u32 = 1;
/// The label limits remote write applies too.
const MAX_NAME_LEN: usize = 1024;
const MAX_VALUE_LEN: usize = 64 * 1024;

/// The translation settings taken from the config.
#[derive(Debug, Clone)]
pub struct MetricMapping {
    pub promote: Vec<(String, String)>,
    pub max_exp_scale: i32,
    pub max_labels: usize,
}

impl MetricMapping {
    pub fn new(cfg: &crate::config::OtlpConfig, max_labels: usize) -> MetricMapping {
        MetricMapping {
            promote: cfg.promote_resource_attributes.iter().filter_map(|k| Some((k.clone(), label_name(k)?))).collect(),
            max_exp_scale: cfg.exponential_histogram_max_scale,
            max_labels,
        }
    }
}

/// One sample to store. The labels are shared by every sample of a data point (a histogram point has
/// one per bucket), so a sample costs no copies of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The data point's labels, sorted by name, without `__name__`.
    pub labels: Arc<[(String, String)]>,
    pub name: Arc<str>,
    /// `le` or `quantile`, which wins over a data point attribute of the same name.
    pub extra: Option<(&'static str, String)>,
    pub t: i64,
    pub v: f64,
    /// The value is an increment to add to the series' running total.
    pub delta: bool,
}

impl Sample {
    /// All the sample's labels, `__name__` included, sorted by name, into `out`.
    pub fn pairs<'a>(&'a self, out: &mut Vec<(&'a str, &'a str)>) {
        out.clear();
        let extra = self.extra.as_ref().map(|(k, _)| *k);
        out.extend(
            self.labels.iter().filter(|(k, _)| Some(k.as_str()) != extra).map(|(k, v)| (k.as_str(), v.as_str())),
        );
        out.push(("__name__", &self.name));
        if let Some((k, v)) = &self.extra {
            out.push((k, v));
        }
        out.sort_unstable_by(|a, b| a.0.cmp(b.0));
    }
}

/// What one request became.
#[derive(Debug, Default)]
pub struct MetricsOutcome {
    pub samples: Vec<Sample>,
    /// Data points in the request, stored or not.
    pub points: usize,
    pub rejected: usize,
    pub rejected_by_reason: Vec<(&'static str, usize)>,
    pub message: String,
    /// Rejections described in `message` (the first five).
    noted: usize,
    /// What the request said of each metric name, to serve at `/api/v1/metadata`.
    pub metadata: Vec<(String, MetricMetadata)>,
}

impl MetricsOutcome {
    pub fn reject(&mut self, reason: &'static str, n: usize, detail: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        self.rejected += n;
        match self.rejected_by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, c)) => *c += n,
            None => self.rejected_by_reason.push((reason, n)),
        }
        if self.noted < 5 {
            self.noted += 1;
            if !self.message.is_empty() {
                self.message.push_str("; ");
            }
            self.message.push_str(&detail());
        }
    }
}

/// The labels every series of a resource carries.
struct ResourceLabels {
    base: Vec<(String, String)>,
    target_info: Option<Vec<(String, String)>>,
}

fn resource_labels(attributes: &[KeyValue], mapping: &MetricMapping) -> ResourceLabels {
    let get = |key: &str| attributes.iter().find(|kv| kv.key == key).map(|kv| value::text(kv.value.as_ref()));
    let job = match (get("service.namespace"), get("service.name")) {
        (Some(ns), Some(name)) if !ns.is_empty() => Some(format!("{ns}/{name}")),
        (_, name) => name,
    };
    let instance = get("service.instance.id");
    let mut base = Vec::new();
    for (key, name) in &mapping.promote {
        if let Some(v) = get(key) {
            base.push((name.clone(), v));
        }
    }
    let identifying = ["service.name", "service.namespace", "service.instance.id"];
    let mut info = Vec::new();
    for kv in attributes {
        if identifying.contains(&kv.key.as_str()) {
            continue;
        }
        if let Some(name) = label_name(&kv.key) {
            info.push((name, value::text(kv.value.as_ref())));
        }
    }
    let mut ids = Vec::new();
    if let Some(job) = job {
        ids.push(("job".to_string(), job));
    }
    if let Some(instance) = instance {
        ids.push(("instance".to_string(), instance));
    }
    let target_info = (!ids.is_empty() && !info.is_empty()).then(|| {
        let mut l = join_collisions(info);
        l.retain(|(k, _)| k != "job" && k != "instance" && k != "__name__");
        l.extend(ids.iter().cloned());
        l.sort();
        l
    });
    base.extend(ids);
    ResourceLabels { base, target_info }
}

/// Attributes whose names collide after translation become one label, values joined with `;` in the
/// order of their original keys.
fn join_collisions(mut pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        match out.last_mut() {
            Some(last) if last.0 == k => {
                last.1.push(';');
                last.1.push_str(&v);
            }
            _ => out.push((k, v)),
        }
    }
    out
}

/// Series labels of one data point, without the name: point attributes, then the resource's labels over
/// them.
fn point_labels(attributes: &[KeyValue], resource: &[(String, String)]) -> Vec<(String, String)> {
    let mut keyed: Vec<(&str, String, String)> = attributes
        .iter()
        .filter_map(|kv| Some((kv.key.as_str(), label_name(&kv.key)?, value::text(kv.value.as_ref()))))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(b.0));
    let mut labels = join_collisions(keyed.into_iter().map(|(_, n, v)| (n, v)).collect());
    labels.retain(|(k, _)| k != "__name__" && !resource.iter().any(|(r, _)| r == k));
    labels.extend(resource.iter().cloned());
    labels
}

fn millis(t_ns: u64, now_ms: i64) -> i64 {
    if t_ns == 0 { now_ms } else { i64::try_from(t_ns / 1_000_000).unwrap_or(i64::MAX) }
}

/// What every data point of a metric shares.
/// The time of receipt and the accepted window, in ms.
struct Clock {
    now_ms: i64,
    window: RangeInclusive<i64>,
}

struct PointContext<'r> {
    resource: &'r [(String, String)],
    clock: &'r Clock,
    delta: bool,
    max_labels: usize,
}

impl PointContext<'_> {
    fn sink<'a>(
        &self,
        out: &'a mut MetricsOutcome,
        attrs: &[KeyValue],
        t: u64,
        flags: u32,
        max_t: &'a mut i64,
    ) -> PointSink<'a> {
        let mut labels = point_labels(attrs, self.resource);
        labels.sort_unstable();
        PointSink {
            labels: labels.into(),
            name: None,
            t: millis(t, self.clock.now_ms),
            window: self.clock.window.clone(),
            stale: flags & NO_RECORDED_VALUE != 0,
            delta: self.delta,
            max_labels: self.max_labels,
            out,
            max_t,
        }
    }
}

/// Emits the samples of one data point.
struct PointSink<'a> {
    out: &'a mut MetricsOutcome,
    labels: Arc<[(String, String)]>,
    /// The accepted time range: older than retention or more than two days ahead is out.
    window: RangeInclusive<i64>,
    /// The name of the last sample, shared with the next one when they are the same (a run of buckets).
    name: Option<Arc<str>>,
    t: i64,
    stale: bool,
    delta: bool,
    max_labels: usize,
    max_t: &'a mut i64,
}

impl PointSink<'_> {
    /// Whether the point is within the label limit; rejects it otherwise.
    fn check(&mut self, metric: &str, extra: usize) -> bool {
        if !self.window.contains(&self.t) {
            let t = self.t;
            self.out.reject("out_of_window", 1, || {
                format!(
                    "metric {metric:?}: a data point at {} is older than the retention period or more than 2 days ahead",
                    store::time::format_rfc3339_ns(t.saturating_mul(1_000_000))
                )
            });
            return false;
        }
        let n = self.labels.len() + 1 + extra;
        if n > self.max_labels {
            let max = self.max_labels;
            self.out.reject("too_many_labels", 1, || {
                format!("metric {metric:?}: a data point has {n} labels, more than the limit of {max}")
            });
            return false;
        }
        if let Some((k, v)) = self.labels.iter().find(|(k, v)| k.len() > MAX_NAME_LEN || v.len() > MAX_VALUE_LEN) {
            let (name_len, value_len) = (k.len(), v.len());
            self.out.reject("label_too_long", 1, || {
                format!(
                    "metric {metric:?}: a label of {name_len} bytes of name and {value_len} of value; the limits are {MAX_NAME_LEN} and {MAX_VALUE_LEN}"
                )
            });
            return false;
        }
        true
    }

    fn emit(&mut self, name: &str, extra: Option<(&'static str, String)>, v: f64) {
        let name = match &self.name {
            Some(n) if **n == *name => n.clone(),
            _ => {
                let n: Arc<str> = Arc::from(name);
                self.name = Some(n.clone());
                n
            }
        };
        let (v, delta) = if self.stale { (f64::from_bits(STALE_NAN), false) } else { (v, self.delta) };
        *self.max_t = (*self.max_t).max(self.t);
        self.out.samples.push(Sample { labels: self.labels.clone(), name, extra, t: self.t, v, delta });
    }
}

/// Translates a request; `now_ms` stamps points without a time.
pub fn translate(req: &ExportMetricsServiceRequest, mapping: &MetricMapping, now_ms: i64) -> MetricsOutcome {
    translate_within(req, mapping, now_ms, i64::MIN..=i64::MAX)
}

/// As [`translate`], rejecting the data points whose time (ms) is outside `window`.
pub fn translate_within(
    req: &ExportMetricsServiceRequest,
    mapping: &MetricMapping,
    now_ms: i64,
    window: RangeInclusive<i64>,
) -> MetricsOutcome {
    let clock = Clock { now_ms, window };
    let mut out = MetricsOutcome::default();
    for rm in &req.resource_metrics {
        let attributes = rm.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let resource = resource_labels(attributes, mapping);
        let mut max_t = i64::MIN;
        for sm in &rm.scope_metrics {
            for metric in &sm.metrics {
                translate_metric(metric, &resource.base, mapping, &clock, &mut max_t, &mut out);
            }
        }
        if let Some(labels) = resource.target_info
            && max_t != i64::MIN
        {
            out.samples.push(Sample {
                labels: labels.into(),
                name: Arc::from("target_info"),
                extra: None,
                t: max_t,
                v: 1.0,
                delta: false,
            });
        }
    }
    out
}

fn temporality(t: i32) -> Option<bool> {
    match AggregationTemporality::try_from(t) {
        Ok(AggregationTemporality::Delta) => Some(true),
        Ok(AggregationTemporality::Cumulative) => Some(false),
        _ => None,
    }
}

fn number(p: &NumberDataPoint) -> Option<f64> {
    match p.value? {
        number_data_point::Value::AsDouble(d) => Some(d),
        number_data_point::Value::AsInt(i) => Some(i as f64),
    }
}

fn translate_metric(
    metric: &Metric,
    resource: &[(String, String)],
    mapping: &MetricMapping,
    clock: &Clock,
    max_t: &mut i64,
    out: &mut MetricsOutcome,
) {
    let Some(data) = &metric.data else {
        return;
    };
    let (kind, points) = match data {
        Data::Gauge(g) => (Kind::Gauge, g.data_points.len()),
        Data::Sum(s) if s.is_monotonic => (Kind::Counter, s.data_points.len()),
        Data::Sum(s) => (Kind::UpDownCounter, s.data_points.len()),
        Data::Histogram(h) => (Kind::Histogram, h.data_points.len()),
        Data::ExponentialHistogram(h) => (Kind::Histogram, h.data_points.len()),
        Data::Summary(s) => (Kind::Summary, s.data_points.len()),
    };
    out.points += points;
    let Some(name) = metric_name(&metric.name, &metric.unit, kind) else {
        out.reject("invalid_name", points, || format!("metric name {:?} has no usable character", metric.name));
        return;
    };
    let delta = match data {
        Data::Sum(s) => temporality(s.aggregation_temporality),
        Data::Histogram(h) => temporality(h.aggregation_temporality),
        Data::ExponentialHistogram(h) => temporality(h.aggregation_temporality),
        Data::Gauge(_) | Data::Summary(_) => Some(false),
    };
    let Some(delta) = delta else {
        out.reject("unspecified_temporality", points, || {
            format!("metric {:?}: aggregation temporality is unspecified; send delta or cumulative", metric.name)
        });
        return;
    };
    let kind_name = match kind {
        Kind::Gauge | Kind::UpDownCounter => "gauge",
        Kind::Counter => "counter",
        Kind::Histogram => "histogram",
        Kind::Summary => "summary",
    };
    out.metadata.push((
        name.clone(),
        MetricMetadata {
            kind: kind_name.to_string(),
            help: metric.description.clone(),
            unit: crate::naming::unit_name(&metric.unit),
        },
    ));
    let ctx = PointContext { resource, clock, delta, max_labels: mapping.max_labels };
    match data {
        Data::Gauge(g) => {
            for p in &g.data_points {
                number_point(p, &name, &metric.name, ctx.sink(out, &p.attributes, p.time_unix_nano, p.flags, max_t));
            }
        }
        Data::Sum(s) => {
            for p in &s.data_points {
                number_point(p, &name, &metric.name, ctx.sink(out, &p.attributes, p.time_unix_nano, p.flags, max_t));
            }
        }
        Data::Histogram(h) => {
            for p in &h.data_points {
                histogram_point(p, &name, &metric.name, ctx.sink(out, &p.attributes, p.time_unix_nano, p.flags, max_t));
            }
        }
        Data::ExponentialHistogram(h) => {
            for p in &h.data_points {
                let s = ctx.sink(out, &p.attributes, p.time_unix_nano, p.flags, max_t);
                exponential_point(p, &name, &metric.name, mapping.max_exp_scale, s);
            }
        }
        Data::Summary(s) => {
            for p in &s.data_points {
                summary_point(p, &name, &metric.name, ctx.sink(out, &p.attributes, p.time_unix_nano, p.flags, max_t));
            }
        }
    }
}

fn number_point(p: &NumberDataPoint, name: &str, metric: &str, mut sink: PointSink<'_>) {
    let v = number(p);
    if v.is_none() && !sink.stale {
        sink.out.reject("no_value", 1, || format!("metric {metric:?}: a data point has no value"));
        return;
    }
    if sink.check(metric, 0) {
        sink.emit(name, None, v.unwrap_or(0.0));
    }
}

fn histogram_point(p: &HistogramDataPoint, name: &str, metric: &str, mut sink: PointSink<'_>) {
    if !p.bucket_counts.is_empty() && p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
        let (b, n) = (p.explicit_bounds.len(), p.bucket_counts.len());
        sink.out.reject("invalid_buckets", 1, || {
            format!("metric {metric:?}: {n} bucket counts for {b} bounds; there must be one more count than bounds")
        });
        return;
    }
    if !sink.check(metric, 1) {
        return;
    }
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0u64;
    if !p.bucket_counts.is_empty() {
        for (bound, count) in p.explicit_bounds.iter().zip(&p.bucket_counts) {
            cumulative += count;
            sink.emit(&bucket, Some(("le", value::double_text(*bound))), cumulative as f64);
        }
    }
    sink.emit(&bucket, Some(("le", "+Inf".to_string())), p.count as f64);
    sink.emit(&format!("{name}_count"), None, p.count as f64);
    if let Some(sum) = p.sum {
        sink.emit(&format!("{name}_sum"), None, sum);
    }
}

/// Merges buckets `(offset, counts)` at `scale` down to `target` (a coarser scale): index i becomes
/// i >> (scale - target).
fn downscale(offset: i32, counts: &[u64], shift: u32) -> (i32, Vec<u64>) {
    if shift == 0 || counts.is_empty() {
        return (offset, counts.to_vec());
    }
    let first = offset >> shift;
    let last = (offset + counts.len() as i32 - 1) >> shift;
    let mut out = vec![0u64; (last - first + 1) as usize];
    for (i, c) in counts.iter().enumerate() {
        out[(((offset + i as i32) >> shift) - first) as usize] += c;
    }
    (first, out)
}

/// The upper bound of positive bucket `index` at `scale`: base^(index+1), base = 2^(2^-scale).
fn bucket_upper(index: i32, scale: i32) -> f64 {
    (f64::from(index + 1) * (-f64::from(scale)).exp2()).exp2()
}

/// Most buckets an exponential histogram point may have on one side: OTLP SDKs default to 160.
const MAX_EXP_BUCKETS: usize = 4096;

fn exponential_point(
    p: &ExponentialHistogramDataPoint,
    name: &str,
    metric: &str,
    max_scale: i32,
    mut sink: PointSink<'_>,
) {
    let sides = [&p.positive, &p.negative];
    let widest = sides.iter().filter_map(|b| b.as_ref()).map(|b| b.bucket_counts.len()).max().unwrap_or(0);
    let offsets_ok =
        sides.iter().filter_map(|b| b.as_ref()).all(|b| b.offset.checked_add(b.bucket_counts.len() as i32).is_some());
    if !(-10..=20).contains(&p.scale) || widest > MAX_EXP_BUCKETS || !offsets_ok {
        let scale = p.scale;
        sink.out.reject("invalid_buckets", 1, || {
            format!(
                "metric {metric:?}: exponential histogram of scale {scale} with {widest} buckets; the scale must be within -10..=20 and the buckets at most {MAX_EXP_BUCKETS}"
            )
        });
        return;
    }
    if !sink.check(metric, 1) {
        return;
    }
    let scale = p.scale.min(max_scale);
    let shift = (p.scale - scale) as u32;
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0u64;
    if let Some(neg) = &p.negative {
        let (offset, counts) = downscale(neg.offset, &neg.bucket_counts, shift);
        // Most negative first: bucket j holds [-base^(j+1), -base^j), so its upper bound is -base^j.
        for (j, c) in counts.iter().enumerate().rev() {
            cumulative += c;
            let upper = -bucket_upper(offset + j as i32 - 1, scale);
            sink.emit(&bucket, Some(("le", value::double_text(upper))), cumulative as f64);
        }
    }
    if p.zero_count > 0 || p.zero_threshold > 0.0 {
        cumulative += p.zero_count;
        sink.emit(&bucket, Some(("le", value::double_text(p.zero_threshold))), cumulative as f64);
    }
    if let Some(pos) = &p.positive {
        let (offset, counts) = downscale(pos.offset, &pos.bucket_counts, shift);
        for (i, c) in counts.iter().enumerate() {
            cumulative += c;
            let upper = bucket_upper(offset + i as i32, scale);
            sink.emit(&bucket, Some(("le", value::double_text(upper))), cumulative as f64);
        }
    }
    sink.emit(&bucket, Some(("le", "+Inf".to_string())), p.count as f64);
    sink.emit(&format!("{name}_count"), None, p.count as f64);
    if let Some(sum) = p.sum {
        sink.emit(&format!("{name}_sum"), None, sum);
    }
}

fn summary_point(p: &SummaryDataPoint, name: &str, metric: &str, mut sink: PointSink<'_>) {
    if !sink.check(metric, 1) {
        return;
    }
    for q in &p.quantile_values {
        sink.emit(name, Some(("quantile", value::double_text(q.quantile))), q.value);
    }
    sink.emit(&format!("{name}_count"), None, p.count as f64);
    sink.emit(&format!("{name}_sum"), None, p.sum);
}

#[cfg(test)]
mod tests;
