//! Influx line protocol payloads, parsed by the store's parser (nanosecond precision).

use wire::prom::influx::{InfluxStats, Precision, parse_influx};

use super::{Kind, Out, Outcome};

/// Cheap pre-check for detection: line protocol has a space before its fields and `=` in them.
pub(super) fn looks_like_influx(text: &str) -> bool {
    memchr::memchr(b' ', text.as_bytes()).is_some() && memchr::memchr(b'=', text.as_bytes()).is_some()
}

/// Decodes line protocol: every numeric field of a good line is a sample (labels: the line's, then the
/// message's, which win on a clash); any bad line makes the message garbage (the good lines still count).
pub(super) fn decode(text: &str, out: &mut Out<'_>) -> Outcome {
    let stats = emit(text, out);
    finish(&stats, text, out)
}

/// For detection: decodes `text` if it holds at least one sample, else emits nothing and gives `None`.
pub(super) fn decode_if_any(text: &str, out: &mut Out<'_>) -> Option<Outcome> {
    let stats = emit(text, out);
    (stats.samples > 0).then(|| finish(&stats, text, out))
}

fn emit(text: &str, out: &mut Out<'_>) -> InfluxStats {
    parse_influx(text, Precision::Ns, out.received_ms(), |labels, t_ms, value| out.sample_with(labels, t_ms, value))
}

/// The log entry, and the outcome.
fn finish(stats: &InfluxStats, text: &str, out: &mut Out<'_>) -> Outcome {
    let Some(first) = stats.errors.first() else {
        out.log(out.received_ns, text, &[]);
        return Outcome::Decoded(Kind::Influx);
    };
    let mut detail = format!("invalid line protocol: {first}");
    if stats.error_lines > 1 {
        detail.push_str(&format!(" (and {} more bad lines)", stats.error_lines - 1));
    }
    out.garbage(text.as_bytes(), "invalid_line_protocol", detail)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::decode::testing::{Collect, labels};
    use crate::decode::{Decoder, Kind, Outcome};
    use crate::topic::{Format, TemplateConfig};

    const NOW_NS: i64 = 1_700_000_000_000_000_000;

    fn run(payload: &str) -> (Outcome, Collect) {
        let template = TemplateConfig {
            topic: "influx/{site}".to_owned(),
            format: Format::Influx,
            metric: None,
            labels: BTreeMap::new(),
        };
        let mut d = Decoder::new(vec![template]).unwrap();
        let mut sink = Collect::default();
        let outcome = d.decode("influx/north", payload.as_bytes(), NOW_NS, &mut sink);
        (outcome, sink)
    }

    #[test]
    fn lines_become_samples_with_line_and_match_labels() {
        let payload = "weather,station=w1 temp=12.5,hum=80i 1700000001000000000\nweather,site=south temp=13";
        let (outcome, sink) = run(payload);
        assert_eq!(outcome, Outcome::Decoded(Kind::Influx));
        let temps = sink.named("weather_temp");
        assert_eq!(temps.len(), 2);
        assert_eq!(
            temps[0].labels,
            labels(&[("__name__", "weather_temp"), ("site", "north"), ("source", "mqtt"), ("station", "w1")])
        );
        assert_eq!((temps[0].t_ms, temps[0].value), (1_700_000_001_000, 12.5));
        // The template's label wins over the line's tag, and a line without a time is timed at reception.
        assert_eq!(temps[1].labels, labels(&[("__name__", "weather_temp"), ("site", "north"), ("source", "mqtt")]));
        assert_eq!(temps[1].t_ms, 1_700_000_000_000);
        assert_eq!(sink.one("weather_hum").1, 80.0);
        assert_eq!(sink.log().line, payload);
        assert_eq!(sink.log().labels, labels(&[("site", "north"), ("source", "mqtt")]));
    }

    #[test]
    fn bad_lines_are_garbage_but_good_lines_count() {
        let (outcome, sink) = run("m v=1\nm v=\nm w=oops");
        let Outcome::Garbage { reason, detail } = outcome else { panic!("{outcome:?}") };
        assert_eq!(reason, "invalid_line_protocol");
        assert!(detail.starts_with("invalid line protocol: line 2: "), "{detail}");
        assert!(detail.ends_with("(and 1 more bad lines)"), "{detail}");
        assert_eq!(sink.one("m_v").1, 1.0);
        assert_eq!(sink.log().field("error"), Some(detail.as_str()));
    }
}
