//! Plain payloads: one number per message, or text kept as a log entry.

use super::{Kind, Out, Outcome, push_metric_name};

/// Longest payload quoted in an error message.
const QUOTE_MAX: usize = 64;

/// The payload as a number: trimmed, `true`/`false` (any case) as 1/0, else anything `f64` parses
/// (including `nan` and `inf`).
pub(super) fn parse_number(text: &str) -> Option<f64> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("true") {
        Some(1.0)
    } else if t.eq_ignore_ascii_case("false") {
        Some(0.0)
    } else {
        t.parse().ok()
    }
}

/// Decodes a plain number: one sample named `metric` (else the topic's last level) at reception, and the log
/// entry with the payload as its line.
pub(super) fn decode_number(text: &str, metric: Option<&str>, out: &mut Out<'_>) -> Outcome {
    let Some(value) = parse_number(text) else {
        let detail = format!("expected a number or true/false, got {:?}", quote(text.trim()));
        return out.garbage(text.as_bytes(), "invalid_number", detail);
    };
    let mut name = out.take_name();
    match metric {
        Some(m) => name.push_str(m),
        None => push_metric_name(last_level(out.topic), &mut name),
    }
    out.sample(&name, out.received_ms(), value);
    out.put_name(name);
    out.log(out.received_ns, text, &[]);
    Outcome::Decoded(Kind::Plain)
}

/// Keeps a text payload as a log entry, timed at reception.
pub(super) fn decode_text(text: &str, out: &mut Out<'_>) -> Outcome {
    out.log(out.received_ns, text, &[]);
    Outcome::Decoded(Kind::Text)
}

/// The last level of a topic.
fn last_level(topic: &str) -> &str {
    topic.rsplit('/').next().unwrap_or(topic)
}

/// At most [`QUOTE_MAX`] bytes of `s`, cut at a character boundary.
fn quote(s: &str) -> &str {
    let mut end = s.len().min(QUOTE_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::decode::Decoder;
    use crate::decode::testing::{Collect, labels};
    use crate::topic::{Format, TemplateConfig};

    const NOW_NS: i64 = 1_700_000_000_987_654_321;

    fn decoder(format: Format, metric: Option<&str>) -> Decoder {
        let template = TemplateConfig {
            topic: "home/{room}/#".to_owned(),
            format,
            metric: metric.map(str::to_owned),
            labels: BTreeMap::new(),
        };
        Decoder::new(vec![template]).unwrap()
    }

    fn run(d: &mut Decoder, topic: &str, payload: &str) -> (Outcome, Collect) {
        let mut sink = Collect::default();
        let outcome = d.decode(topic, payload.as_bytes(), NOW_NS, &mut sink);
        (outcome, sink)
    }

    #[test]
    fn numbers_and_booleans_parse() {
        assert_eq!(parse_number(" 42\n"), Some(42.0));
        assert_eq!(parse_number("-1.5e-3"), Some(-0.0015));
        assert_eq!(parse_number("TRUE"), Some(1.0));
        assert_eq!(parse_number("false"), Some(0.0));
        assert_eq!(parse_number("online"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("1 2"), None);
    }

    #[test]
    fn plain_number_is_named_after_the_last_level() {
        let mut d = decoder(Format::Plain, None);
        let (outcome, sink) = run(&mut d, "home/kitchen/temp-C", "21.5");
        assert_eq!(outcome, Outcome::Decoded(Kind::Plain));
        assert_eq!(sink.samples.len(), 1);
        assert_eq!(sink.samples[0].labels, labels(&[("__name__", "temp_C"), ("room", "kitchen"), ("source", "mqtt")]));
        assert_eq!(sink.samples[0].t_ms, 1_700_000_000_987);
        assert_eq!(sink.samples[0].value, 21.5);
        let log = sink.log();
        assert_eq!(log.line, "21.5");
        assert_eq!(log.t_ns, NOW_NS);
        assert_eq!(log.labels, labels(&[("room", "kitchen"), ("source", "mqtt")]));
    }

    #[test]
    fn plain_number_uses_the_template_metric() {
        let mut d = decoder(Format::Plain, Some("room_temperature"));
        let (_, sink) = run(&mut d, "home/hall/t", "true");
        assert_eq!(sink.one("room_temperature").1, 1.0);
    }

    #[test]
    fn explicit_plain_rejects_text() {
        let mut d = decoder(Format::Plain, None);
        let (outcome, sink) = run(&mut d, "home/hall/t", "offline");
        assert_eq!(
            outcome,
            Outcome::Garbage {
                reason: "invalid_number",
                detail: "expected a number or true/false, got \"offline\"".to_owned()
            }
        );
        assert!(sink.samples.is_empty());
        assert_eq!(sink.log().line, "offline");
    }

    #[test]
    fn text_is_a_log_entry_only() {
        let mut d = decoder(Format::Text, None);
        let (outcome, sink) = run(&mut d, "home/hall/status", "42");
        assert_eq!(outcome, Outcome::Decoded(Kind::Text));
        assert!(sink.samples.is_empty());
        assert_eq!(sink.log().line, "42");
        assert_eq!(sink.log().field("topic"), Some("home/hall/status"));
        assert!(sink.log().field("error").is_none());
    }

    #[test]
    fn long_payloads_are_clipped_in_errors() {
        assert_eq!(quote(&"é".repeat(40)).len(), 64);
        assert_eq!(quote("short"), "short");
    }
}
