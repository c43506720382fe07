//! MQTT topic templates: which topics to subscribe to, which labels a topic level becomes, and how to decode
//! the payload.
//!
//! A template such as `devices/{site}/{device}/telemetry` matches topics level by level: a whole level written
//! `{name}` matches any one level and captures it as label `name`; `+` matches any one level; `#` (only as the
//! last level) matches any number of levels, including none; any other level matches itself literally.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use store::model::is_valid_label_name;

/// The topic prefix of Sparkplug B, decoded as Sparkplug whatever the templates say.
pub const SPARKPLUG_NAMESPACE: &str = "spBv1.0/";

/// Label names a template may not capture or set: `__name__` is the series name and `source` marks the stream
/// as coming from MQTT.
const RESERVED_LABELS: [&str; 2] = ["__name__", "source"];

/// One configured topic template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    /// The topic pattern, e.g. `devices/{site}/{device}/telemetry`.
    pub topic: String,
    /// How payloads of matching topics are decoded.
    #[serde(default)]
    pub format: Format,
    /// The series name of plain-number payloads (default: the topic's last level).
    #[serde(default)]
    pub metric: Option<String>,
    /// Static labels added to everything decoded from matching topics.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Payload format of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Detect from the payload: JSON, a plain number, Influx line protocol, else text.
    #[default]
    Auto,
    /// A JSON object or an array of objects.
    Json,
    /// Sparkplug B protobuf.
    Sparkplug,
    /// Influx line protocol.
    Influx,
    /// One number (or `true`/`false`).
    Plain,
    /// Text, kept as a log entry only.
    Text,
}

/// One level of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// Matches exactly this text.
    Literal(String),
    /// `{name}`: matches one level and captures it.
    Capture(String),
    /// `+`: matches one level.
    Plus,
    /// `#`: matches the rest of the topic.
    Hash,
}

/// A validated template.
#[derive(Debug, Clone)]
struct Template {
    levels: Vec<Level>,
    format: Format,
    metric: Option<String>,
    /// Static labels, sorted by name.
    labels: Vec<(String, String)>,
}

/// What a topic matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Match<'a> {
    /// Captured and static labels, sorted by name, values non-empty.
    pub labels: Vec<(&'a str, &'a str)>,
    /// The template's payload format.
    pub format: Format,
    /// The template's series name for plain numbers.
    pub metric: Option<&'a str>,
}

/// The format and metric of a match whose labels went into a caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MatchInfo<'a> {
    pub format: Format,
    pub metric: Option<&'a str>,
}

/// The configured templates, in configuration order.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    templates: Vec<Template>,
}

impl Templates {
    /// Validates the templates; the error names the template and says what is wrong with it.
    pub fn new(configs: Vec<TemplateConfig>) -> Result<Templates, String> {
        let templates = configs
            .into_iter()
            .map(|c| Template::new(c).map_err(|(topic, e)| format!("mqtt topic template {topic:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Templates { templates })
    }

    /// The MQTT subscription filters: every template with its captures as `+`, without duplicates, in
    /// configuration order; `#` when there are no templates.
    pub fn filters(&self) -> Vec<String> {
        if self.templates.is_empty() {
            return vec!["#".to_owned()];
        }
        let mut out: Vec<String> = Vec::with_capacity(self.templates.len());
        for t in &self.templates {
            let filter = t.filter();
            if !out.contains(&filter) {
                out.push(filter);
            }
        }
        out
    }

    /// The first template matching `topic`, with its labels.
    pub fn matches<'a>(&'a self, topic: &'a str) -> Option<Match<'a>> {
        let mut labels = Vec::new();
        let info = self.match_into(topic, &mut labels)?;
        Some(Match { labels, format: info.format, metric: info.metric })
    }

    /// Like [`Templates::matches`], but puts the labels (sorted) into `labels`, which is cleared first.
    pub(crate) fn match_into<'a>(
        &'a self,
        topic: &'a str,
        labels: &mut Vec<(&'a str, &'a str)>,
    ) -> Option<MatchInfo<'a>> {
        labels.clear();
        let template = self.templates.iter().find(|t| {
            labels.clear();
            t.capture(topic, labels)
        });
        let Some(t) = template else {
            labels.clear();
            return None;
        };
        labels.extend(t.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Some(MatchInfo { format: t.format, metric: t.metric.as_deref() })
    }

    /// The static labels of the first template matching `topic` (none when no template matches).
    pub(crate) fn static_labels(&self, topic: &str) -> &[(String, String)] {
        self.templates.iter().find(|t| t.matches(topic)).map_or(&[], |t| &t.labels)
    }
}

impl Template {
    /// Validates one template; the error carries the template's topic for the message.
    fn new(config: TemplateConfig) -> Result<Template, (String, String)> {
        let TemplateConfig { topic, format, metric, labels } = config;
        match Template::validate(&topic, metric.as_deref(), &labels) {
            Ok(levels) => Ok(Template { levels, format, metric, labels: labels.into_iter().collect() }),
            Err(e) => Err((topic, e)),
        }
    }

    fn validate(topic: &str, metric: Option<&str>, labels: &BTreeMap<String, String>) -> Result<Vec<Level>, String> {
        if topic.is_empty() {
            return Err("the topic is empty".to_owned());
        }
        if topic.contains('\0') {
            return Err("the topic contains a NUL character".to_owned());
        }
        let parts: Vec<&str> = topic.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = parse_level(part)?;
            if level == Level::Hash && i + 1 != parts.len() {
                return Err("`#` may only be the last level".to_owned());
            }
            if let Level::Capture(name) = &level
                && levels.contains(&level)
            {
                return Err(format!("the label {name:?} is captured twice"));
            }
            levels.push(level);
        }
        if let Some(m) = metric
            && !is_valid_metric_name(m)
        {
            return Err(format!("metric {m:?} is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"));
        }
        for (name, value) in labels {
            check_label_name(name)?;
            if levels.contains(&Level::Capture(name.clone())) {
                return Err(format!("the static label {name:?} is also captured from the topic"));
            }
            if value.is_empty() {
                return Err(format!("the static label {name:?} has an empty value"));
            }
        }
        Ok(levels)
    }

    /// The subscription filter of this template.
    fn filter(&self) -> String {
        let parts: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Capture(_) | Level::Plus => "+",
                Level::Hash => "#",
            })
            .collect();
        parts.join("/")
    }

    /// True when `topic` matches; then the captured labels with non-empty values have been pushed to `labels`.
    fn capture<'a>(&'a self, topic: &'a str, labels: &mut Vec<(&'a str, &'a str)>) -> bool {
        self.walk(topic, Some(labels))
    }

    /// True when `topic` matches (nothing captured).
    fn matches(&self, topic: &str) -> bool {
        self.walk(topic, None)
    }

    /// Matches `topic` level by level, pushing captures to `labels` if given.
    fn walk<'a>(&'a self, topic: &'a str, mut labels: Option<&mut Vec<(&'a str, &'a str)>>) -> bool {
        // MQTT: wildcards at the first level do not match topics starting with `$` (`$SYS/...`).
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Literal(_))) {
            return false;
        }
        let mut parts = topic.split('/');
        for level in &self.levels {
            let part = match level {
                Level::Hash => return true,
                _ => match parts.next() {
                    Some(p) => p,
                    None => return false,
                },
            };
            match level {
                Level::Literal(s) if s != part => return false,
                Level::Capture(name) if !part.is_empty() => {
                    if let Some(labels) = labels.as_deref_mut() {
                        labels.push((name, part));
                    }
                }
                _ => {}
            }
        }
        parts.next().is_none()
    }
}

/// Parses one template level.
fn parse_level(part: &str) -> Result<Level, String> {
    match part {
        "+" => return Ok(Level::Plus),
        "#" => return Ok(Level::Hash),
        _ => {}
    }
    if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
        check_label_name(name)?;
        return Ok(Level::Capture(name.to_owned()));
    }
    if part.contains(['{', '}']) {
        return Err(format!("the level {part:?} is not a capture: write `{{name}}` as a whole level"));
    }
    if part.contains(['+', '#']) {
        return Err(format!("the level {part:?} mixes a wildcard with text: `+` and `#` must be whole levels"));
    }
    Ok(Level::Literal(part.to_owned()))
}

/// Checks a captured or static label name.
fn check_label_name(name: &str) -> Result<(), String> {
    if !is_valid_label_name(name) {
        return Err(format!("{name:?} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"));
    }
    if RESERVED_LABELS.contains(&name) {
        return Err(format!("the label name {name:?} is reserved"));
    }
    Ok(())
}

/// True when `name` is a valid Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && bytes.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(topic: &str) -> TemplateConfig {
        TemplateConfig { topic: topic.to_owned(), format: Format::Auto, metric: None, labels: BTreeMap::new() }
    }

    fn templates(topics: &[&str]) -> Templates {
        Templates::new(topics.iter().map(|t| config(t)).collect()).unwrap()
    }

    fn error(c: TemplateConfig) -> String {
        Templates::new(vec![c]).unwrap_err()
    }

    #[test]
    fn captures_levels_as_sorted_labels() {
        let t = templates(&["devices/{site}/{device}/telemetry"]);
        let m = t.matches("devices/berlin/pump-1/telemetry").unwrap();
        assert_eq!(m.labels, vec![("device", "pump-1"), ("site", "berlin")]);
        assert_eq!(m.format, Format::Auto);
        assert!(t.matches("devices/berlin/pump-1/status").is_none());
        assert!(t.matches("devices/berlin/telemetry").is_none());
        assert!(t.matches("devices/berlin/pump-1/telemetry/x").is_none());
    }

    #[test]
    fn static_labels_and_metric_are_added() {
        let mut c = config("sensors/{room}/temp");
        c.metric = Some("room_temperature".to_owned());
        c.format = Format::Plain;
        c.labels.insert("building".to_owned(), "hq".to_owned());
        let t = Templates::new(vec![c]).unwrap();
        let m = t.matches("sensors/kitchen/temp").unwrap();
        assert_eq!(m.labels, vec![("building", "hq"), ("room", "kitchen")]);
        assert_eq!(m.metric, Some("room_temperature"));
        assert_eq!(m.format, Format::Plain);
    }

    #[test]
    fn wildcards_match_like_mqtt() {
        let t = templates(&["a/+/c"]);
        assert!(t.matches("a/b/c").is_some());
        assert!(t.matches("a//c").is_some());
        assert!(t.matches("a/b/d").is_none());
        let t = templates(&["a/#"]);
        assert!(t.matches("a").is_some());
        assert!(t.matches("a/b/c/d").is_some());
        assert!(t.matches("b/c").is_none());
        let t = templates(&["#"]);
        assert!(t.matches("anything/at/all").is_some());
        assert!(t.matches("$SYS/broker/uptime").is_none());
        assert!(templates(&["$SYS/#"]).matches("$SYS/broker/uptime").is_some());
    }

    #[test]
    fn empty_captured_level_gives_no_label() {
        let t = templates(&["a/{x}/{y}"]);
        assert_eq!(t.matches("a//b").unwrap().labels, vec![("y", "b")]);
    }

    #[test]
    fn first_matching_template_wins() {
        let mut specific = config("home/{room}/power");
        specific.format = Format::Plain;
        let t = Templates::new(vec![specific, config("home/#")]).unwrap();
        assert_eq!(t.matches("home/hall/power").unwrap().format, Format::Plain);
        let m = t.matches("home/hall/light").unwrap();
        assert_eq!(m.format, Format::Auto);
        assert!(m.labels.is_empty());
    }

    #[test]
    fn filters_replace_captures_and_deduplicate() {
        let t = templates(&["devices/{site}/{device}/telemetry", "devices/+/+/telemetry", "home/#"]);
        assert_eq!(t.filters(), vec!["devices/+/+/telemetry".to_owned(), "home/#".to_owned()]);
        assert_eq!(templates(&[]).filters(), vec!["#".to_owned()]);
    }

    #[test]
    fn static_labels_of_first_match() {
        let mut c = config("spBv1.0/plant1/#");
        c.labels.insert("site".to_owned(), "north".to_owned());
        let t = Templates::new(vec![c]).unwrap();
        assert_eq!(t.static_labels("spBv1.0/plant1/NDATA/e1"), &[("site".to_owned(), "north".to_owned())]);
        assert!(t.static_labels("spBv1.0/plant2/NDATA/e1").is_empty());
    }

    #[test]
    fn validation_errors_name_the_template_and_the_problem() {
        let e = error(config("a/{x"));
        assert!(e.starts_with("mqtt topic template \"a/{x\": "), "{e}");
        assert!(e.contains("whole level"), "{e}");
        assert!(error(config("a/#/b")).contains("`#` may only be the last level"));
        assert!(error(config("a/b+")).contains("must be whole levels"));
        assert!(error(config("a/{1x}")).contains("not a valid label name"));
        assert!(error(config("a/{__name__}")).contains("reserved"));
        assert!(error(config("a/{source}")).contains("reserved"));
        assert!(error(config("{x}/{x}")).contains("captured twice"));
        assert!(error(config("")).contains("empty"));
        let mut c = config("a/{x}");
        c.labels.insert("x".to_owned(), "1".to_owned());
        assert!(error(c).contains("also captured"));
        let mut c = config("a");
        c.labels.insert("k".to_owned(), String::new());
        assert!(error(c).contains("empty value"));
        let mut c = config("a");
        c.metric = Some("1bad".to_owned());
        assert!(error(c).contains("not a valid metric name"));
    }

    #[test]
    fn config_deserializes_and_rejects_unknown_fields() {
        let c: TemplateConfig =
            serde_json::from_str(r#"{"topic":"a/{b}","format":"plain","metric":"m","labels":{"k":"v"}}"#).unwrap();
        assert_eq!(c.format, Format::Plain);
        assert_eq!(c.labels.get("k").map(String::as_str), Some("v"));
        let c: TemplateConfig = serde_json::from_str(r#"{"topic":"a"}"#).unwrap();
        assert_eq!(c.format, Format::Auto);
        assert!(serde_json::from_str::<TemplateConfig>(r#"{"topic":"a","fromat":"json"}"#).is_err());
        assert!(serde_json::from_str::<TemplateConfig>(r#"{"topic":"a","format":"xml"}"#).is_err());
    }
}
