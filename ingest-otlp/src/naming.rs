//! OTLP names to Prometheus names, by the rules of Prometheus' own OTLP receiver (its default
//! "underscore escaping with suffixes" strategy, which follows OpenTelemetry's Prometheus compatibility
//! specification):
//!
//! - A metric name is cut into tokens at every character outside `[a-zA-Z0-9:]` (so runs of `.`, `-` and
//!   `_` become one `_`); the unit's suffix (`s` → `seconds`, `By/s` → `bytes_per_second`, `{requests}` →
//!   nothing) is appended unless a token already says it; monotonic counters end in `_total`, gauges of unit
//!   `1` in `_ratio`; a name that starts with a digit gets a leading `_`.
//! - A label name has every character outside `[a-zA-Z0-9]` replaced by `_` (runs collapsed, `__x__` kept
//!   reserved), and `key_` in front when it starts with a digit.

/// What kind of Prometheus metric an OTLP metric becomes; it decides the suffixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// A monotonic sum: `_total`.
    Counter,
    /// A sum that may go down: named as a gauge but without `_ratio`.
    UpDownCounter,
    Histogram,
    Summary,
}

fn metric_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == ':'
}

/// The Prometheus name of an OTLP metric, or `None` when nothing of it is usable.
pub fn metric_name(name: &str, unit: &str, kind: Kind) -> Option<String> {
    let mut tokens: Vec<&str> = name.split(|c: char| !metric_char(c)).filter(|t| !t.is_empty()).collect();
    let (main, per) = unit_suffixes(unit);
    let main = clean_unit(&main);
    let mut per = clean_unit(&per);
    let mut main = if tokens.contains(&main.as_str()) { String::new() } else { main };
    if per == "per_" {
        per.clear();
    } else {
        if per.ends_with('_') {
            per.pop();
        }
        if tokens.contains(&per.as_str()) {
            per.clear();
        }
    }
    if !per.is_empty() && main.ends_with('_') {
        main.pop();
    }
    if !main.is_empty() {
        tokens.push(&main);
    }
    if !per.is_empty() {
        tokens.push(&per);
    }
    if kind == Kind::Counter {
        tokens.retain(|t| *t != "total");
        tokens.push("total");
    }
    if unit == "1" && kind == Kind::Gauge {
        tokens.retain(|t| *t != "ratio");
        tokens.push("ratio");
    }
    let mut out = tokens.join("_");
    if out.is_empty() {
        return None;
    }
    if out.as_bytes()[0].is_ascii_digit() {
        out.insert(0, '_');
    }
    Some(out)
}

/// A UCUM unit as a Prometheus unit word, for metadata: `s` → `seconds`, `By/s` → `bytes_per_second`.
pub fn unit_name(unit: &str) -> String {
    let (main, per) = unit_suffixes(unit);
    let (main, per) = (clean_unit(&main), clean_unit(&per));
    let u = match (main.is_empty(), per.is_empty()) {
        (false, false) => format!("{main}_{per}"),
        (false, true) => main,
        _ => per,
    };
    u.trim_matches('_').to_string()
}

/// The main and the "per" suffix of a UCUM unit, before clean-up: `By/s` → (`bytes`, `per_second`).
/// Annotations in braces name no unit.
fn unit_suffixes(unit: &str) -> (String, String) {
    let (main, per) = match unit.split_once('/') {
        Some((m, p)) => (m, Some(p)),
        None => (unit, None),
    };
    let main = main.trim();
    let main = if main.is_empty() || main.contains(['{', '}']) { String::new() } else { unit_word(main).to_string() };
    let per = match per.map(str::trim) {
        Some(p) if !p.is_empty() && !p.contains(['{', '}']) => format!("per_{}", per_unit_word(p)),
        _ => String::new(),
    };
    (main, per)
}

fn unit_word(u: &str) -> &str {
    match u {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "",
        "%" => "percent",
        other => other,
    }
}

fn per_unit_word(u: &str) -> &str {
    match u {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    }
}

/// A unit suffix made of metric-name characters: others become `_`, runs of `_` collapse, a leading `_`
/// goes.
fn clean_unit(u: &str) -> String {
    let mut out = String::with_capacity(u.len());
    for c in u.chars() {
        let c = if metric_char(c) { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    match out.strip_prefix('_') {
        Some(rest) => rest.to_string(),
        None => out,
    }
}

/// The Prometheus label name of an OTLP attribute key, or `None` when it holds nothing but separators.
pub fn label_name(key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let reserved = key.len() >= 4 && key.starts_with("__") && key.ends_with("__");
    let inner = if reserved { &key[2..key.len() - 2] } else { key };
    let mut out = String::with_capacity(key.len() + 4);
    if reserved {
        out.push_str("__");
    }
    let start = out.len();
    for c in inner.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out[start..].ends_with('_') || out.len() == start {
            out.push('_');
        }
    }
    if reserved {
        out.push_str("__");
    }
    if out.bytes().all(|b| b == b'_') {
        return None;
    }
    if out.as_bytes()[0].is_ascii_digit() {
        out.insert_str(0, "key_");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_follow_prometheus_translation() {
        let cases = [
            ("http.server.request.duration", "s", Kind::Histogram, "http_server_request_duration_seconds"),
            ("http.server.duration", "ms", Kind::Histogram, "http_server_duration_milliseconds"),
            ("requests.count", "1", Kind::Counter, "requests_count_total"),
            ("memory.usage", "By", Kind::Gauge, "memory_usage_bytes"),
            ("cpu.utilization", "1", Kind::Gauge, "cpu_utilization_ratio"),
            ("cpu.utilization", "1", Kind::UpDownCounter, "cpu_utilization"),
            ("system.network.io", "By/s", Kind::Gauge, "system_network_io_bytes_per_second"),
            ("queue.length", "{items}", Kind::UpDownCounter, "queue_length"),
            ("http.requests", "{request}/s", Kind::Gauge, "http_requests_per_second"),
            ("requests_total", "", Kind::Counter, "requests_total"),
            ("total.requests", "", Kind::Counter, "requests_total"),
            ("latency_seconds", "s", Kind::Histogram, "latency_seconds"),
            ("a__b..c", "", Kind::Gauge, "a_b_c"),
            ("2xx.responses", "", Kind::Counter, "_2xx_responses_total"),
            ("temp", "Cel", Kind::Gauge, "temp_celsius"),
            ("weird", "km/h", Kind::Gauge, "weird_km_per_hour"),
            ("ns:metric", "", Kind::Gauge, "ns:metric"),
            ("free", "%", Kind::Gauge, "free_percent"),
        ];
        for (name, unit, kind, want) in cases {
            assert_eq!(metric_name(name, unit, kind).as_deref(), Some(want), "{name} [{unit}] {kind:?}");
        }
        assert_eq!(metric_name("...", "", Kind::Gauge), None);
        assert_eq!(unit_name("By/s"), "bytes_per_second");
        assert_eq!(unit_name("{request}/s"), "per_second");
        assert_eq!(unit_name("1"), "");
        assert_eq!(metric_name("", "s", Kind::Gauge).as_deref(), Some("seconds"));
    }

    #[test]
    fn label_names_follow_prometheus_translation() {
        let cases = [
            ("http.method", "http_method"),
            ("service.instance.id", "service_instance_id"),
            ("k8s.pod.name", "k8s_pod_name"),
            ("a..b--c", "a_b_c"),
            ("123invalid", "key_123invalid"),
            ("__reserved__", "__reserved__"),
            ("_private", "_private"),
            ("Ünïcode", "_n_code"),
        ];
        for (key, want) in cases {
            assert_eq!(label_name(key).as_deref(), Some(want), "{key}");
        }
        assert_eq!(label_name(""), None);
        assert_eq!(label_name("..."), None);
    }
}
