//! Turns MQTT messages into samples and log entries.
//!
//! [`Decoder::decode`] picks the payload format from the topic (Sparkplug B namespace, then the first matching
//! template, else detection) and hands the message to the format's decoder, which writes into a [`Sink`]. Every
//! message yields one log entry, also when its payload could not be decoded.

mod influx;
mod json;
mod plain;
mod sparkplug;

use std::mem;

use crate::topic::{Format, SPARKPLUG_NAMESPACE, TemplateConfig, Templates};

/// Where decoders put what a message holds. Implemented by the pipeline (it feeds the store's batches) and by
/// tests (they collect).
pub trait Sink {
    /// One sample. `labels` are the series' labels including `__name__`, in any order, with valid Prometheus
    /// names and non-empty values; `t_ms` milliseconds since the epoch.
    fn sample(&mut self, labels: &[(&str, &str)], t_ms: i64, value: f64);
    /// One log entry: `labels` are the stream labels (valid label names, non-empty values), `t_ns` nanoseconds since the epoch,
    /// `fields` structured fields (any names).
    fn log(&mut self, labels: &[(&str, &str)], t_ns: i64, line: &str, fields: &[(&str, &str)]);
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Decoded as this format.
    Decoded(Kind),
    /// The payload (or topic) was not what its format requires. The message was still kept as a log entry
    /// carrying the error, and what could be decoded of it was emitted.
    Garbage {
        /// Short snake_case cause, for a metric label: `invalid_json`, `invalid_utf8`, `not_an_object`,
        /// `invalid_protobuf`, `invalid_sparkplug`, `unknown_alias`, `invalid_number`, `invalid_line_protocol`.
        reason: &'static str,
        /// What was wrong, for people.
        detail: String,
    },
}

/// The format a message was decoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A JSON object or array of objects.
    Json,
    /// Sparkplug B.
    Sparkplug,
    /// Influx line protocol.
    Influx,
    /// A plain number.
    Plain,
    /// Text (a log entry only).
    Text,
}

/// Counters of the Sparkplug B state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Messages whose `seq` was not the previous one plus 1 (mod 256) of their edge node.
    pub sparkplug_seq_gaps: u64,
    /// NBIRTH and DBIRTH messages.
    pub sparkplug_births: u64,
    /// NDEATH and DDEATH messages.
    pub sparkplug_deaths: u64,
    /// Metrics of data messages whose alias no birth declared.
    pub sparkplug_unknown_aliases: u64,
}

/// Decodes MQTT messages; owns the templates and the Sparkplug B state, so one task uses it.
#[derive(Debug)]
pub struct Decoder {
    templates: Templates,
    sparkplug: sparkplug::State,
    stats: DecodeStats,
    /// The labels of the current message's match, kept between messages for their allocation.
    matched: Vec<(&'static str, &'static str)>,
    bufs: Buffers,
}

impl Decoder {
    /// A decoder for these templates; the error says which template is invalid and why.
    pub fn new(templates: Vec<TemplateConfig>) -> Result<Decoder, String> {
        Ok(Decoder {
            templates: Templates::new(templates)?,
            sparkplug: sparkplug::State::default(),
            stats: DecodeStats::default(),
            matched: Vec::new(),
            bufs: Buffers::default(),
        })
    }

    /// The MQTT subscription filters (see [`Templates::filters`]).
    pub fn filters(&self) -> Vec<String> {
        self.templates.filters()
    }

    /// Decodes one message into `sink`. Always emits the message's log entry (also for garbage).
    pub fn decode(&mut self, topic: &str, payload: &[u8], received_ns: i64, sink: &mut dyn Sink) -> Outcome {
        let mut labels = recycle(mem::take(&mut self.matched));
        let outcome = if topic.starts_with(SPARKPLUG_NAMESPACE) {
            let statics = self.templates.static_labels(topic);
            labels.extend(statics.iter().filter(|(k, _)| !sparkplug::is_topic_label(k)).map(|(k, v)| (&**k, &**v)));
            let msg = sparkplug::Message { topic, payload, received_ns };
            self.sparkplug.decode(msg, &mut labels, &mut self.stats, sink, &mut self.bufs)
        } else {
            let info = self.templates.match_into(topic, &mut labels);
            let format = info.map_or(Format::Auto, |i| i.format);
            let metric = info.and_then(|i| i.metric);
            let mut out = Out::new(sink, &mut self.bufs, topic, received_ns, &labels);
            out.topic_label = info.is_none() && !topic.is_empty();
            decode_format(format, metric, payload, &mut out)
        };
        self.matched = recycle(labels);
        outcome
    }

    /// The Sparkplug counters so far.
    pub fn stats(&self) -> &DecodeStats {
        &self.stats
    }
}

/// Decodes a non-Sparkplug payload as `format`.
fn decode_format(format: Format, metric: Option<&str>, payload: &[u8], out: &mut Out<'_>) -> Outcome {
    if format == Format::Sparkplug {
        let detail = format!("topic {:?} is not in the Sparkplug B namespace ({SPARKPLUG_NAMESPACE}...)", out.topic);
        return out.garbage(payload, "invalid_sparkplug", detail);
    }
    let text = match std::str::from_utf8(payload) {
        Ok(text) => text,
        Err(e) => return out.garbage(payload, "invalid_utf8", format!("the payload is not valid UTF-8: {e}")),
    };
    match format {
        Format::Json => json::decode(text, out),
        Format::Plain => plain::decode_number(text, metric, out),
        Format::Influx => influx::decode(text, out),
        Format::Text => plain::decode_text(text, out),
        Format::Auto => decode_auto(text, metric, out),
        Format::Sparkplug => unreachable!("handled above"),
    }
}

/// Format detection: JSON by its first byte, then a plain number, then Influx line protocol with at least
/// one sample, else text.
fn decode_auto(text: &str, metric: Option<&str>, out: &mut Out<'_>) -> Outcome {
    if json::looks_like_json(text.as_bytes()) {
        return json::decode(text, out);
    }
    if plain::parse_number(text).is_some() {
        return plain::decode_number(text, metric, out);
    }
    if influx::looks_like_influx(text)
        && let Some(outcome) = influx::decode_if_any(text, out)
    {
        return outcome;
    }
    plain::decode_text(text, out)
}

/// Buffers reused across messages so that emitting costs no allocation once they have grown.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    sample: Vec<(&'static str, &'static str)>,
    log_labels: Vec<(&'static str, &'static str)>,
    fields: Vec<(&'static str, &'static str)>,
    /// Metric names being built (JSON flattening, sanitizing).
    pub name: String,
    /// Log lines being built (Sparkplug rendering).
    pub line: String,
}

/// Empties a vector of borrowed pairs and hands back its allocation for borrows of another lifetime.
///
/// Collecting an empty `IntoIter` into a vector of an element type with the same layout happens in place, so
/// the buffer survives the change of lifetime.
pub(crate) fn recycle<'b>(mut v: Vec<(&str, &str)>) -> Vec<(&'b str, &'b str)> {
    v.clear();
    v.into_iter().map(|_| ("", "")).collect()
}

/// One message's output: the sink, the message's labels and reusable buffers.
pub(crate) struct Out<'a> {
    sink: &'a mut dyn Sink,
    bufs: &'a mut Buffers,
    /// The MQTT topic.
    pub topic: &'a str,
    /// Receive time, ns since the epoch.
    pub received_ns: i64,
    /// The labels shared by the message's samples and its log entry.
    labels: &'a [(&'a str, &'a str)],
    /// Add label `topic` to samples (no template matched).
    pub topic_label: bool,
}

impl<'a> Out<'a> {
    pub(crate) fn new(
        sink: &'a mut dyn Sink,
        bufs: &'a mut Buffers,
        topic: &'a str,
        received_ns: i64,
        labels: &'a [(&'a str, &'a str)],
    ) -> Out<'a> {
        Out { sink, bufs, topic, received_ns, labels, topic_label: false }
    }

    /// The receive time in milliseconds.
    pub fn received_ms(&self) -> i64 {
        self.received_ns.div_euclid(1_000_000)
    }

    /// Takes the name buffer (give it back with [`Out::put_name`]).
    pub fn take_name(&mut self) -> String {
        let mut s = mem::take(&mut self.bufs.name);
        s.clear();
        s
    }

    /// Returns the name buffer for the next message.
    pub fn put_name(&mut self, s: String) {
        self.bufs.name = s;
    }

    /// Takes the line buffer (give it back with [`Out::put_line`]).
    pub fn take_line(&mut self) -> String {
        let mut s = mem::take(&mut self.bufs.line);
        s.clear();
        s
    }

    /// Returns the line buffer for the next message.
    pub fn put_line(&mut self, s: String) {
        self.bufs.line = s;
    }

    /// One sample of series `name` with the message's labels.
    pub fn sample(&mut self, name: &str, t_ms: i64, value: f64) {
        self.sample_with(&[("__name__", name)], t_ms, value);
    }

    /// One sample with the message's labels, `source="mqtt"` (which tells device series apart from, say,
    /// node exporter's `device` label), plus `own` (which includes `__name__`). An own label whose name the
    /// message's labels already have is dropped: the template's labels win.
    pub fn sample_with(&mut self, own: &[(&str, &str)], t_ms: i64, value: f64) {
        let mut labels = recycle(mem::take(&mut self.bufs.sample));
        labels.extend_from_slice(self.labels);
        labels.push(("source", "mqtt"));
        if self.topic_label {
            labels.push(("topic", self.topic));
        }
        let shared = labels.len();
        for &(k, v) in own {
            if !labels[..shared].iter().any(|&(n, _)| n == k) {
                labels.push((k, v));
            }
        }
        self.sink.sample(&labels, t_ms, value);
        self.bufs.sample = recycle(labels);
    }

    /// The message's log entry: stream labels = the message's labels + `source="mqtt"`, fields = `topic` +
    /// `fields`.
    pub fn log(&mut self, t_ns: i64, line: &str, fields: &[(&str, &str)]) {
        let mut labels = recycle(mem::take(&mut self.bufs.log_labels));
        labels.extend_from_slice(self.labels);
        labels.push(("source", "mqtt"));
        let mut all = recycle(mem::take(&mut self.bufs.fields));
        all.push(("topic", self.topic));
        all.extend_from_slice(fields);
        self.sink.log(&labels, t_ns, line, &all);
        self.bufs.log_labels = recycle(labels);
        self.bufs.fields = recycle(all);
    }

    /// Keeps an undecodable payload as a log entry carrying the error, and says so.
    pub fn garbage(&mut self, payload: &[u8], reason: &'static str, detail: String) -> Outcome {
        let line = payload_line(payload);
        self.log(self.received_ns, &line, &[("error", &detail)]);
        Outcome::Garbage { reason, detail }
    }
}

/// A payload as a log line: its text, or `base64:` and its bytes in standard base64 if it is not UTF-8.
pub(crate) fn payload_line(payload: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(payload) {
        Ok(s) => s.into(),
        Err(_) => {
            let mut s = String::with_capacity(7 + payload.len().div_ceil(3) * 4);
            s.push_str("base64:");
            push_base64(payload, &mut s);
            s.into()
        }
    }
}

/// Appends standard base64 (with padding) of `bytes` to `out`.
fn push_base64(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}

/// Appends `name` made a valid Prometheus metric name: characters outside `[a-zA-Z0-9_:]` become `_`; at the
/// start of `out`, a digit gets a leading `_`, and an empty name becomes `_`.
pub(crate) fn push_metric_name(name: &str, out: &mut String) {
    if out.is_empty() && name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }));
    if out.is_empty() {
        out.push('_');
    }
}

/// `name` as a valid Prometheus metric name (see [`push_metric_name`]).
pub(crate) fn metric_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 1);
    push_metric_name(name, &mut s);
    s
}

/// A Sink that collects, for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::Sink;

    /// Owned labels, sorted by name.
    pub type Labels = Vec<(String, String)>;

    /// A collected sample.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Sample {
        pub labels: Labels,
        pub t_ms: i64,
        pub value: f64,
    }

    /// A collected log entry.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Log {
        pub labels: Labels,
        pub t_ns: i64,
        pub line: String,
        pub fields: Vec<(String, String)>,
    }

    impl Log {
        pub fn field(&self, name: &str) -> Option<&str> {
            self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
        }
    }

    #[derive(Debug, Default)]
    pub struct Collect {
        pub samples: Vec<Sample>,
        pub logs: Vec<Log>,
    }

    fn owned(labels: &[(&str, &str)]) -> Labels {
        let mut v: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        v.sort();
        v
    }

    /// Owned, sorted labels from literals.
    pub fn labels(pairs: &[(&str, &str)]) -> Labels {
        owned(pairs)
    }

    impl Collect {
        /// The value and time of the only sample named `name`.
        pub fn one(&self, name: &str) -> (i64, f64) {
            let found: Vec<&Sample> = self.named(name);
            assert_eq!(found.len(), 1, "samples named {name}: {:?}", self.samples);
            (found[0].t_ms, found[0].value)
        }

        /// The samples named `name`.
        pub fn named(&self, name: &str) -> Vec<&Sample> {
            self.samples.iter().filter(|s| s.labels.iter().any(|(k, v)| k == "__name__" && v == name)).collect()
        }

        /// The only log entry.
        pub fn log(&self) -> &Log {
            assert_eq!(self.logs.len(), 1, "{:?}", self.logs);
            &self.logs[0]
        }
    }

    impl Sink for Collect {
        fn sample(&mut self, labels: &[(&str, &str)], t_ms: i64, value: f64) {
            let names: Vec<&str> = labels.iter().map(|l| l.0).collect();
            let mut unique = names.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), names.len(), "duplicate label names {names:?}");
            assert!(labels.iter().all(|(k, v)| store::model::is_valid_label_name(k) && !v.is_empty()), "{labels:?}");
            self.samples.push(Sample { labels: owned(labels), t_ms, value });
        }

        fn log(&mut self, labels: &[(&str, &str)], t_ns: i64, line: &str, fields: &[(&str, &str)]) {
            assert!(labels.iter().all(|(k, v)| store::model::is_valid_label_name(k) && !v.is_empty()), "{labels:?}");
            let fields = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            self.logs.push(Log { labels: owned(labels), t_ns, line: line.to_owned(), fields });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Collect, labels};
    use super::*;
    use std::collections::BTreeMap;

    const NOW_NS: i64 = 1_700_000_000_123_456_789;
    const NOW_MS: i64 = 1_700_000_000_123;

    fn decoder(templates: &[(&str, Format)]) -> Decoder {
        let configs = templates
            .iter()
            .map(|&(topic, format)| TemplateConfig {
                topic: topic.to_owned(),
                format,
                metric: None,
                labels: BTreeMap::new(),
            })
            .collect();
        Decoder::new(configs).unwrap()
    }

    fn run(d: &mut Decoder, topic: &str, payload: &[u8]) -> (Outcome, Collect) {
        let mut sink = Collect::default();
        let outcome = d.decode(topic, payload, NOW_NS, &mut sink);
        (outcome, sink)
    }

    #[test]
    fn decoder_can_move_to_another_task() {
        fn is_send<T: Send + 'static>(_: &T) {}
        is_send(&decoder(&[]));
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        let enc = |b: &[u8]| {
            let mut s = String::new();
            push_base64(b, &mut s);
            s
        };
        assert_eq!(enc(b""), "");
        assert_eq!(enc(b"f"), "Zg==");
        assert_eq!(enc(b"fo"), "Zm8=");
        assert_eq!(enc(b"foo"), "Zm9v");
        assert_eq!(enc(b"foobar"), "Zm9vYmFy");
        assert_eq!(enc(&[0xff, 0xfe, 0x00, 0x80]), "//4AgA==");
    }

    #[test]
    fn metric_names_are_sanitized() {
        assert_eq!(metric_name("Inputs/Temperature"), "Inputs_Temperature");
        assert_eq!(metric_name("1st"), "_1st");
        assert_eq!(metric_name("a:b-c.d"), "a:b_c_d");
        assert_eq!(metric_name("température"), "temp_rature");
        assert_eq!(metric_name(""), "_");
    }

    #[test]
    fn recycle_keeps_the_buffer() {
        let text = String::from("x");
        let mut v: Vec<(&str, &str)> = Vec::with_capacity(10);
        v.push((&text, &text));
        let ptr = v.as_ptr() as usize;
        let w: Vec<(&'static str, &'static str)> = recycle(v);
        assert!(w.is_empty());
        assert_eq!(w.as_ptr() as usize, ptr);
    }

    #[test]
    fn unmatched_topic_gets_topic_label_on_samples_only() {
        let mut d = decoder(&[("other/#", Format::Auto)]);
        let (outcome, sink) = run(&mut d, "plant/boiler/temp", b" 21.5\n");
        assert_eq!(outcome, Outcome::Decoded(Kind::Plain));
        assert_eq!(sink.samples.len(), 1);
        assert_eq!(
            sink.samples[0].labels,
            labels(&[("__name__", "temp"), ("source", "mqtt"), ("topic", "plant/boiler/temp")])
        );
        assert_eq!(sink.samples[0].t_ms, NOW_MS);
        let log = sink.log();
        assert_eq!(log.labels, labels(&[("source", "mqtt")]));
        assert_eq!(log.field("topic"), Some("plant/boiler/temp"));
        assert_eq!(log.line, " 21.5\n");
    }

    #[test]
    fn auto_detection_picks_each_format() {
        let mut d = decoder(&[("d/{id}/#", Format::Auto)]);
        assert_eq!(run(&mut d, "d/1/a", b"  {\"t\":1}").0, Outcome::Decoded(Kind::Json));
        assert_eq!(run(&mut d, "d/1/a", b"[{\"t\":1}]").0, Outcome::Decoded(Kind::Json));
        assert_eq!(run(&mut d, "d/1/a", b"-1.5e3").0, Outcome::Decoded(Kind::Plain));
        assert_eq!(run(&mut d, "d/1/a", b"true").0, Outcome::Decoded(Kind::Plain));
        let (outcome, sink) = run(&mut d, "d/1/a", b"cpu,host=a usage=0.5");
        assert_eq!(outcome, Outcome::Decoded(Kind::Influx));
        assert_eq!(sink.one("cpu_usage").1, 0.5);
        let (outcome, sink) = run(&mut d, "d/1/a", b"online");
        assert_eq!(outcome, Outcome::Decoded(Kind::Text));
        assert!(sink.samples.is_empty());
        assert_eq!(sink.log().line, "online");
        assert_eq!(sink.log().labels, labels(&[("id", "1"), ("source", "mqtt")]));
        // Contains a space and `=` but is no line protocol: text, not an error.
        let (outcome, sink) = run(&mut d, "d/1/a", b"a = b");
        assert_eq!(outcome, Outcome::Decoded(Kind::Text));
        assert!(sink.log().field("error").is_none());
    }

    #[test]
    fn explicit_formats_never_fall_back() {
        let mut d =
            decoder(&[("j", Format::Json), ("p", Format::Plain), ("i", Format::Influx), ("s", Format::Sparkplug)]);
        let (outcome, sink) = run(&mut d, "p", b"online");
        assert!(matches!(outcome, Outcome::Garbage { reason: "invalid_number", .. }), "{outcome:?}");
        assert!(sink.samples.is_empty());
        assert_eq!(sink.log().line, "online");
        assert!(sink.log().field("error").unwrap().contains("online"));
        let (outcome, _) = run(&mut d, "j", b"42");
        assert!(matches!(outcome, Outcome::Garbage { reason: "not_an_object", .. }), "{outcome:?}");
        let (outcome, _) = run(&mut d, "i", b"42");
        assert!(matches!(outcome, Outcome::Garbage { reason: "invalid_line_protocol", .. }), "{outcome:?}");
        let (outcome, _) = run(&mut d, "s", b"42");
        assert!(matches!(outcome, Outcome::Garbage { reason: "invalid_sparkplug", .. }), "{outcome:?}");
    }

    #[test]
    fn binary_garbage_is_kept_as_base64() {
        let mut d = decoder(&[]);
        let (outcome, sink) = run(&mut d, "bin", &[0xff, 0x00, 0x41]);
        assert!(matches!(outcome, Outcome::Garbage { reason: "invalid_utf8", .. }), "{outcome:?}");
        let log = sink.log();
        assert_eq!(log.line, "base64:/wBB");
        assert_eq!(log.t_ns, NOW_NS);
        assert!(log.field("error").unwrap().contains("UTF-8"));
        assert_eq!(log.field("topic"), Some("bin"));
    }

    #[test]
    fn empty_payload_is_an_empty_text_entry() {
        let mut d = decoder(&[]);
        let (outcome, sink) = run(&mut d, "x", b"");
        assert_eq!(outcome, Outcome::Decoded(Kind::Text));
        assert_eq!(sink.log().line, "");
    }

    #[test]
    fn filters_come_from_the_templates() {
        assert_eq!(decoder(&[]).filters(), vec!["#".to_owned()]);
        assert_eq!(decoder(&[("a/{b}/c", Format::Auto)]).filters(), vec!["a/+/c".to_owned()]);
        assert!(
            Decoder::new(vec![TemplateConfig {
                topic: "a/{".to_owned(),
                format: Format::Auto,
                metric: None,
                labels: BTreeMap::new()
            }])
            .is_err()
        );
    }
}
