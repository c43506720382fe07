use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, Gauge, Histogram, ResourceMetrics, ScopeMetrics, Sum, Summary,
    exponential_histogram_data_point::Buckets, summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::*;
use crate::config::OtlpConfig;

const T: u64 = 1_700_000_000_000_000_000;
const T_MS: i64 = 1_700_000_000_000;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn request(resource: Vec<KeyValue>, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: resource, ..Default::default() }),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            schema_url: String::new(),
        }],
    }
}

fn metric(name: &str, unit: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        description: "what it counts".into(),
        data: Some(data),
        ..Default::default()
    }
}

fn point(v: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        time_unix_nano: T,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

fn mapping() -> MetricMapping {
    MetricMapping::new(&OtlpConfig::default(), 30)
}

/// The samples as `name{k="v",...} value` lines, sorted, to compare whole outputs.
fn lines(out: &MetricsOutcome) -> Vec<String> {
    let mut v: Vec<String> = out
        .samples
        .iter()
        .map(|s| {
            let mut pairs = Vec::new();
            s.pairs(&mut pairs);
            let name = &*s.name;
            let rest: Vec<String> =
                pairs.iter().filter(|(k, _)| *k != "__name__").map(|(k, v)| format!("{k}={v:?}")).collect();
            let v = if s.v.to_bits() == STALE_NAN { "stale".to_string() } else { s.v.to_string() };
            format!("{name}{{{}}} {v}{}", rest.join(","), if s.delta { " delta" } else { "" })
        })
        .collect();
    v.sort();
    v
}

fn service() -> Vec<KeyValue> {
    vec![
        kv("service.name", "checkout"),
        kv("service.namespace", "shop"),
        kv("service.instance.id", "pod-1"),
        kv("host.name", "node-1"),
    ]
}

#[test]
fn gauges_and_sums_get_prometheus_names_job_instance_and_target_info() {
    let metrics = vec![
        metric("cpu.utilization", "1", Data::Gauge(Gauge { data_points: vec![point(0.5, vec![kv("cpu", "0")])] })),
        metric(
            "http.server.requests",
            "{request}",
            Data::Sum(Sum {
                data_points: vec![point(7.0, vec![kv("http.method", "GET")])],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
        ),
        metric(
            "queue.size",
            "By",
            Data::Sum(Sum {
                data_points: vec![point(3.0, vec![])],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: false,
            }),
        ),
    ];
    let out = translate(&request(service(), metrics), &mapping(), 0);
    assert_eq!(
        lines(&out),
        vec![
            r#"cpu_utilization_ratio{cpu="0",instance="pod-1",job="shop/checkout"} 0.5"#,
            r#"http_server_requests_total{http_method="GET",instance="pod-1",job="shop/checkout"} 7"#,
            r#"queue_size_bytes{instance="pod-1",job="shop/checkout"} 3"#,
            r#"target_info{host_name="node-1",instance="pod-1",job="shop/checkout"} 1"#,
        ]
    );
    assert!(out.samples.iter().all(|s| s.t == T_MS));
    assert_eq!((out.points, out.rejected), (3, 0));
    let kinds: Vec<_> = out.metadata.iter().map(|(n, m)| (n.as_str(), m.kind.as_str(), m.unit.as_str())).collect();
    assert_eq!(
        kinds,
        vec![
            ("cpu_utilization_ratio", "gauge", ""),
            ("http_server_requests_total", "counter", ""),
            ("queue_size_bytes", "gauge", "bytes")
        ]
    );
}

#[test]
fn no_target_info_without_job_or_instance_and_promoted_attributes() {
    let cfg = OtlpConfig { promote_resource_attributes: vec!["k8s.namespace.name".into()], ..OtlpConfig::default() };
    let out = translate(
        &request(
            vec![kv("host.name", "h"), kv("k8s.namespace.name", "prod")],
            vec![metric(
                "up",
                "",
                Data::Gauge(Gauge { data_points: vec![point(1.0, vec![kv("k8s.namespace.name", "x")])] }),
            )],
        ),
        &MetricMapping::new(&cfg, 30),
        0,
    );
    assert_eq!(lines(&out), vec![r#"up{k8s_namespace_name="prod"} 1"#]);
}

#[test]
fn colliding_attribute_names_are_joined_and_resource_labels_win() {
    let attrs = vec![kv("a.b", "1"), kv("a_b", "2"), kv("job", "mine")];
    let out = translate(
        &request(
            vec![kv("service.name", "svc")],
            vec![metric("g", "", Data::Gauge(Gauge { data_points: vec![point(1.0, attrs)] }))],
        ),
        &mapping(),
        0,
    );
    assert_eq!(lines(&out), vec![r#"g{a_b="1;2",job="svc"} 1"#]);
}

#[test]
fn explicit_histograms_become_classic_buckets() {
    let h = HistogramDataPoint {
        attributes: vec![kv("route", "/a")],
        time_unix_nano: T,
        count: 10,
        sum: Some(2.5),
        bucket_counts: vec![2, 5, 3],
        explicit_bounds: vec![0.1, 0.5],
        ..Default::default()
    };
    let out = translate(
        &request(
            vec![],
            vec![metric(
                "http.server.request.duration",
                "s",
                Data::Histogram(Histogram {
                    data_points: vec![h],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
            )],
        ),
        &mapping(),
        0,
    );
    assert_eq!(
        lines(&out),
        vec![
            r#"http_server_request_duration_seconds_bucket{le="+Inf",route="/a"} 10"#,
            r#"http_server_request_duration_seconds_bucket{le="0.1",route="/a"} 2"#,
            r#"http_server_request_duration_seconds_bucket{le="0.5",route="/a"} 7"#,
            r#"http_server_request_duration_seconds_count{route="/a"} 10"#,
            r#"http_server_request_duration_seconds_sum{route="/a"} 2.5"#,
        ]
    );
}

#[test]
fn exponential_histograms_become_classic_buckets_at_the_capped_scale() {
    // Scale 1: base √2. Positive buckets 0..4 hold (1, √2], (√2, 2], (2, 2√2], (2√2, 4].
    let p = ExponentialHistogramDataPoint {
        time_unix_nano: T,
        count: 12,
        sum: Some(30.0),
        scale: 1,
        zero_count: 1,
        positive: Some(Buckets { offset: 0, bucket_counts: vec![1, 2, 3, 4] }),
        negative: Some(Buckets { offset: 1, bucket_counts: vec![1] }),
        ..Default::default()
    };
    let data = |p: ExponentialHistogramDataPoint| {
        Data::ExponentialHistogram(ExponentialHistogram {
            data_points: vec![p],
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })
    };
    let cfg = OtlpConfig { exponential_histogram_max_scale: 1, ..OtlpConfig::default() };
    let out = translate(&request(vec![], vec![metric("lat", "ms", data(p.clone()))]), &MetricMapping::new(&cfg, 30), 0);
    let buckets: Vec<(String, f64)> = out
        .samples
        .iter()
        .filter(|s| &*s.name == "lat_milliseconds_bucket")
        .map(|s| (s.extra.as_ref().unwrap().1.clone(), s.v))
        .collect();
    let sqrt2 = 2f64.sqrt();
    let want = vec![
        // negative bucket 1 holds [-2, -√2): its upper bound is -√2
        (crate::value::double_text(-sqrt2), 1.0),
        ("0".to_string(), 2.0),
        (crate::value::double_text(sqrt2), 3.0),
        ("2".to_string(), 5.0),
        (crate::value::double_text(2.0 * sqrt2), 8.0),
        ("4".to_string(), 12.0),
        ("+Inf".to_string(), 12.0),
    ];
    assert_eq!(buckets.len(), want.len(), "{buckets:?}");
    for ((le, v), (wle, wv)) in buckets.iter().zip(&want) {
        let (a, b): (f64, f64) =
            (le.replace("+Inf", "inf").parse().unwrap(), wle.replace("+Inf", "inf").parse().unwrap());
        assert!((a - b).abs() < 1e-9 || a == b, "{le} vs {wle}");
        assert_eq!(v, wv, "le {le}");
    }
    // Capped at scale 0 (base 2): buckets merge pairwise, (1, 2] and (2, 4].
    let out = translate(&request(vec![], vec![metric("lat", "ms", data(p))]), &mapping_scale(0), 0);
    let les: Vec<(String, f64)> = out.samples.iter().filter_map(|s| Some((s.extra.as_ref()?.1.clone(), s.v))).collect();
    assert!(les.contains(&("2".to_string(), 5.0)) && les.contains(&("4".to_string(), 12.0)), "{les:?}");
    assert!(!les.iter().any(|(le, _)| le.starts_with("1.41")), "{les:?}");
}

#[test]
fn exponential_histograms_with_negative_offsets_and_bad_scales() {
    let p = ExponentialHistogramDataPoint {
        time_unix_nano: T,
        count: 3,
        scale: 3,
        positive: Some(Buckets { offset: -5, bucket_counts: vec![1, 1, 1] }),
        ..Default::default()
    };
    let data = |p: ExponentialHistogramDataPoint| {
        Data::ExponentialHistogram(ExponentialHistogram { data_points: vec![p], aggregation_temporality: 2 })
    };
    // Scale 3 merged to 0: indexes -5..=-3 all fall in bucket -1, (0.5, 1].
    let out = translate(&request(vec![], vec![metric("x", "", data(p.clone()))]), &mapping_scale(0), 0);
    assert!(lines(&out).contains(&r#"x_bucket{le="1"} 3"#.to_string()), "{:?}", lines(&out));
    let bad = ExponentialHistogramDataPoint { scale: 1000, ..p };
    let out = translate(&request(vec![], vec![metric("x", "", data(bad))]), &mapping(), 0);
    assert_eq!((out.samples.len(), out.rejected), (0, 1));
    assert!(out.message.contains("scale 1000"), "{}", out.message);
}

fn mapping_scale(scale: i32) -> MetricMapping {
    MetricMapping::new(&OtlpConfig { exponential_histogram_max_scale: scale, ..OtlpConfig::default() }, 30)
}

#[test]
fn summaries_and_stale_markers() {
    let s = SummaryDataPoint {
        time_unix_nano: T,
        count: 4,
        sum: 8.0,
        quantile_values: vec![
            ValueAtQuantile { quantile: 0.5, value: 1.5 },
            ValueAtQuantile { quantile: 0.99, value: 3.0 },
        ],
        ..Default::default()
    };
    let gone = NumberDataPoint { time_unix_nano: T, flags: 1, ..Default::default() };
    let out = translate(
        &request(
            vec![],
            vec![
                metric("rpc.latency", "s", Data::Summary(Summary { data_points: vec![s] })),
                metric("temp", "Cel", Data::Gauge(Gauge { data_points: vec![gone] })),
            ],
        ),
        &mapping(),
        0,
    );
    assert_eq!(
        lines(&out),
        vec![
            r#"rpc_latency_seconds_count{} 4"#,
            r#"rpc_latency_seconds_sum{} 8"#,
            r#"rpc_latency_seconds{quantile="0.5"} 1.5"#,
            r#"rpc_latency_seconds{quantile="0.99"} 3"#,
            r#"temp_celsius{} stale"#,
        ]
    );
}

#[test]
fn delta_points_are_marked_for_the_running_total() {
    let out = translate(
        &request(
            vec![],
            vec![metric(
                "jobs.done",
                "",
                Data::Sum(Sum {
                    data_points: vec![point(2.0, vec![])],
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                    is_monotonic: true,
                }),
            )],
        ),
        &mapping(),
        0,
    );
    assert_eq!(lines(&out), vec![r#"jobs_done_total{} 2 delta"#]);
}

#[test]
fn bad_points_are_rejected_one_by_one() {
    let bad_hist = HistogramDataPoint {
        count: 1,
        bucket_counts: vec![1, 0],
        explicit_bounds: vec![1.0, 2.0],
        ..Default::default()
    };
    let no_value = NumberDataPoint { time_unix_nano: T, ..Default::default() };
    let many: Vec<KeyValue> = (0..40).map(|i| kv(&format!("k{i}"), "v")).collect();
    let huge = vec![kv("blob", &"x".repeat(70_000))];
    let out = translate(
        &request(
            vec![],
            vec![
                metric("h", "", Data::Histogram(Histogram { data_points: vec![bad_hist], aggregation_temporality: 2 })),
                metric(
                    "g",
                    "",
                    Data::Gauge(Gauge {
                        data_points: vec![no_value, point(1.0, vec![]), point(1.0, many), point(1.0, huge)],
                    }),
                ),
                metric(
                    "s",
                    "",
                    Data::Sum(Sum {
                        data_points: vec![point(1.0, vec![])],
                        aggregation_temporality: 0,
                        is_monotonic: true,
                    }),
                ),
                metric("...", "", Data::Gauge(Gauge { data_points: vec![point(1.0, vec![])] })),
            ],
        ),
        &mapping(),
        5,
    );
    assert_eq!(lines(&out), vec![r#"g{} 1"#]);
    assert_eq!((out.points, out.rejected), (7, 6));
    let mut reasons = out.rejected_by_reason.clone();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("invalid_buckets", 1),
            ("invalid_name", 1),
            ("label_too_long", 1),
            ("no_value", 1),
            ("too_many_labels", 1),
            ("unspecified_temporality", 1)
        ]
    );
    assert!(out.message.contains("2 bucket counts for 2 bounds"), "{}", out.message);
    assert!(out.message.contains("temporality is unspecified"), "{}", out.message);
}

#[test]
fn points_without_time_take_the_time_of_receipt() {
    let p = NumberDataPoint { value: Some(number_data_point::Value::AsInt(4)), ..Default::default() };
    let out = translate(
        &request(vec![], vec![metric("g", "", Data::Gauge(Gauge { data_points: vec![p] }))]),
        &mapping(),
        123,
    );
    assert_eq!((out.samples[0].t, out.samples[0].v), (123, 4.0));
}

#[test]
fn points_outside_the_window_are_rejected_as_points_not_samples() {
    let h = HistogramDataPoint {
        time_unix_nano: T,
        count: 3,
        bucket_counts: vec![1, 2],
        explicit_bounds: vec![1.0],
        ..Default::default()
    };
    let req = request(
        vec![],
        vec![
            metric("h", "", Data::Histogram(Histogram { data_points: vec![h], aggregation_temporality: 2 })),
            metric("g", "", Data::Gauge(Gauge { data_points: vec![point(1.0, vec![])] })),
        ],
    );
    // The window starts after T: both points are out, one of them a histogram of three samples.
    let out = translate_within(&req, &mapping(), 0, T_MS + 1..=i64::MAX);
    assert!(out.samples.is_empty());
    assert_eq!((out.points, out.rejected), (2, 2));
    assert_eq!(out.rejected_by_reason, vec![("out_of_window", 2)]);
    assert!(out.message.contains("older than the retention period"), "{}", out.message);
    let out = translate_within(&req, &mapping(), 0, 0..=T_MS);
    assert_eq!((out.samples.len(), out.rejected), (4, 0), "at the window's edge the points are in");
}
