//! What the agent does to decoded records before shipping them, configured by `[agent.parse]`
//! ([`ParseConfig`], compiled into a [`Transform`]):
//!
//! 1. **Selection** ([`Transform::selects`]): which pods' files are tailed at all, by namespace and
//!    container name globs.
//! 2. **Multiline joining** ([`Multiline`]): continuation lines such as a Java stack trace's `\tat ...` and
//!    `Caused by: ...` are joined to the line before them, per (file, stream), so that one exception is one
//!    record. A joined record is emitted when the next non-continuation line arrives, when it reaches its
//!    size limit, or when it has waited `multiline_timeout` for more lines.
//! 3. **Dropping** ([`Transform::keeps`]): lines matching a drop regex are not shipped (the caller counts
//!    them).
//! 4. **Fields** ([`Transform::fields`]): a message is parsed as JSON or logfmt into fields, with the very
//!    parsers behind LogQL's `| json` and `| logfmt`, so that a field stored at ingest equals the label the
//!    same parser would give at query time; and a `level` field is added as Loki's `detected_level` would
//!    detect it.
//!
//! Checkpoints: a record held by a [`Multiline`] joiner is not shipped yet, so the file offset that may be
//! checkpointed must not pass [`Multiline::pending_start`].

use std::time::{Duration, Instant};

use bytesize::ByteSize;
use globset::{Glob, GlobSet, GlobSetBuilder};
use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};

use crate::format::Record;

/// How a message is parsed into fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineParser {
    /// No fields are parsed.
    #[default]
    None,
    /// The message is a JSON object; nested keys are joined with `_` as LogQL's `| json` does.
    Json,
    /// The message is logfmt `key=value` pairs, read as LogQL's `| logfmt` does.
    Logfmt,
    /// JSON when the message starts with `{`, else logfmt when it holds `key=value` pairs.
    Auto,
}

/// The `[agent.parse]` section: how the agent selects, joins, drops and parses container log lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParseConfig {
    /// How a message is parsed into fields: "none", "json", "logfmt" or "auto" (json when it starts with '{', else logfmt when it holds key=value pairs).
    pub format: LineParser,
    /// Add a `level` field detected from the message (as Loki's detected_level does) when the line has none.
    pub detect_level: bool,
    /// Join continuation lines (leading whitespace, `at `, `Caused by:`, `...`, or multiline_pattern) to the line before them.
    pub multiline: bool,
    /// Extra regex: a line matching it continues the previous one. Empty means none.
    pub multiline_pattern: String,
    /// Emit a joined record at the latest this long after its last line arrived.
    #[serde(with = "store::config::duration")]
    pub multiline_timeout: Duration,
    /// Most bytes of one joined record; later lines start a new record.
    pub multiline_max_bytes: ByteSize,
    /// Lines matching any of these regexes are dropped (and counted).
    pub drop: Vec<String>,
    /// Only these namespaces (globs, e.g. "prod-*"); empty means all.
    pub include_namespaces: Vec<String>,
    /// Never these namespaces (globs); wins over include.
    pub exclude_namespaces: Vec<String>,
    /// Only these containers (globs); empty means all.
    pub include_containers: Vec<String>,
    /// Never these containers (globs); wins over include.
    pub exclude_containers: Vec<String>,
}

impl Default for ParseConfig {
    /// No parsing, level detection on, no multiline joining (1s timeout and 256 KiB limit once enabled),
    /// nothing dropped, every namespace and container selected.
    fn default() -> ParseConfig {
        ParseConfig {
            format: LineParser::None,
            detect_level: true,
            multiline: false,
            multiline_pattern: String::new(),
            multiline_timeout: Duration::from_secs(1),
            multiline_max_bytes: ByteSize::kib(256),
            drop: Vec::new(),
            include_namespaces: Vec::new(),
            exclude_namespaces: Vec::new(),
            include_containers: Vec::new(),
            exclude_containers: Vec::new(),
        }
    }
}

/// A `[agent.parse]` setting that does not compile.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// A regex (`drop` or `multiline_pattern`) is invalid.
    #[error("invalid regex {pattern:?} in agent.parse.{key}: {source}")]
    Regex {
        /// The config key, e.g. `drop`.
        key: &'static str,
        /// The regex as written.
        pattern: String,
        /// Why it does not compile.
        #[source]
        source: regex::Error,
    },
    /// A namespace or container glob is invalid.
    #[error("invalid glob {glob:?} in agent.parse.{key}: {source}")]
    Glob {
        /// The config key, e.g. `include_namespaces`.
        key: &'static str,
        /// The glob as written.
        glob: String,
        /// Why it does not compile.
        #[source]
        source: globset::Error,
    },
}

/// A compiled [`ParseConfig`].
#[derive(Debug, Clone)]
pub struct Transform {
    parser: LineParser,
    detect_level: bool,
    drop: Option<RegexSet>,
    include_namespaces: Option<GlobSet>,
    exclude_namespaces: Option<GlobSet>,
    include_containers: Option<GlobSet>,
    exclude_containers: Option<GlobSet>,
    /// `Some` when multiline joining is enabled.
    multiline: Option<MultilineRule>,
}

impl Transform {
    /// Compiles the regexes and globs of `cfg`.
    ///
    /// # Errors
    ///
    /// [`TransformError`] naming the bad regex or glob, its config key and why it does not compile.
    pub fn new(cfg: &ParseConfig) -> Result<Transform, TransformError> {
        let multiline = if cfg.multiline {
            let pattern = if cfg.multiline_pattern.is_empty() {
                None
            } else {
                Some(compile_regex("multiline_pattern", &cfg.multiline_pattern)?)
            };
            Some(MultilineRule {
                pattern,
                timeout: cfg.multiline_timeout,
                max_bytes: usize::try_from(cfg.multiline_max_bytes.as_u64()).unwrap_or(usize::MAX),
            })
        } else {
            None
        };
        Ok(Transform {
            parser: cfg.format,
            detect_level: cfg.detect_level,
            drop: compile_regex_set("drop", &cfg.drop)?,
            include_namespaces: compile_globs("include_namespaces", &cfg.include_namespaces)?,
            exclude_namespaces: compile_globs("exclude_namespaces", &cfg.exclude_namespaces)?,
            include_containers: compile_globs("include_containers", &cfg.include_containers)?,
            exclude_containers: compile_globs("exclude_containers", &cfg.exclude_containers)?,
            multiline,
        })
    }

    /// Whether files of this namespace and container are collected: both are included (an empty include
    /// list includes all) and neither is excluded.
    pub fn selects(&self, namespace: &str, container: &str) -> bool {
        let included = |set: &Option<GlobSet>, name: &str| set.as_ref().is_none_or(|s| s.is_match(name));
        let excluded = |set: &Option<GlobSet>, name: &str| set.as_ref().is_some_and(|s| s.is_match(name));
        included(&self.include_namespaces, namespace)
            && included(&self.include_containers, container)
            && !excluded(&self.exclude_namespaces, namespace)
            && !excluded(&self.exclude_containers, container)
    }

    /// Whether this message is kept (false if a drop regex matches).
    pub fn keeps(&self, message: &str) -> bool {
        self.drop.as_ref().is_none_or(|set| !set.is_match(message))
    }

    /// Appends the fields of a message to `out` as (name, value): the fields the configured parser finds,
    /// then `level` if `detect_level` is on and none of the parsed fields is a level.
    ///
    /// Fields equal the labels LogQL's `| json` and `| logfmt` give at query time (names sanitized, nested
    /// JSON keys joined with `_`, the last duplicate wins). A message that fails to parse as the configured
    /// format adds no parsed fields, and no error field. The detected level is what Loki's
    /// `detected_level` would be: the normalized value of a level-like parsed field, else one found in the
    /// line (a level-like JSON or logfmt key, then a level word such as `ERROR`). Nothing is added when
    /// no level can be told, rather than `unknown`, which is what query time then detects anyway.
    pub fn fields(&self, message: &str, out: &mut Vec<(String, String)>) {
        let start = out.len();
        let parser = match self.parser {
            LineParser::Auto if message.trim_start().starts_with('{') => LineParser::Json,
            LineParser::Auto if message.contains('=') => LineParser::Logfmt,
            LineParser::Auto => LineParser::None,
            parser => parser,
        };
        match parser {
            LineParser::Json => {
                if query::logql::extract::json(message, out).is_err() {
                    out.truncate(start);
                }
            }
            LineParser::Logfmt => {
                // Not strict, as `| logfmt` is not by default: malformed parts are skipped.
                if query::logql::extract::logfmt(message, false, false, out).is_err() {
                    out.truncate(start);
                }
            }
            LineParser::None | LineParser::Auto => {}
        }
        if !self.detect_level {
            return;
        }
        let parsed = &out[start..];
        let lookup = |name: &str| parsed.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        if query::logql::extract::level_from_labels(&lookup).is_some() {
            return;
        }
        let level = query::logql::extract::level_from_line(message);
        if level != UNKNOWN_LEVEL {
            out.push((LEVEL_FIELD.to_string(), level.to_string()));
        }
    }

    /// A fresh joiner for one (file, stream), when multiline joining is enabled.
    pub fn multiline(&self) -> Option<Multiline> {
        self.multiline.clone().map(|rule| Multiline { rule, pending: None })
    }
}

/// Joins continuation lines of one (file, stream) into the record before them.
///
/// A line continues the record before it when it starts with whitespace, `at `, `Caused by:` or `...`, or
/// matches `multiline_pattern`. A joined record's message is its lines joined by `\n`; its time and start
/// are its first line's, its end its last line's. It is handed back when a line that starts a new record
/// arrives (see [`Multiline::push`]), or by [`Multiline::flush_due`] once `multiline_timeout` passed
/// without more lines.
#[derive(Debug)]
pub struct Multiline {
    rule: MultilineRule,
    pending: Option<(Record, Instant)>,
}

/// The records [`Multiline::push`] hands back, oldest first: none, one, or two (the pending record and a
/// malformed one that arrived after it). Iterate over it to take them.
#[derive(Debug, Default)]
#[must_use = "the records it holds are lost when it is dropped"]
pub struct Joined {
    records: [Option<Record>; 2],
    next: usize,
}

impl Joined {
    fn of(first: Option<Record>, second: Option<Record>) -> Joined {
        Joined { records: [first, second], next: 0 }
    }
}

impl Iterator for Joined {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        while self.next < self.records.len() {
            let slot = self.records[self.next].take();
            self.next += 1;
            if slot.is_some() {
                return slot;
            }
        }
        None
    }
}

impl Multiline {
    /// Takes the next record of its stream, which arrived at `now`.
    ///
    /// Returns the records that are complete because of it, oldest first: the pending joined record when
    /// `rec` starts a new one (`rec` is then pending), nothing when `rec` was joined to the pending record or
    /// is the first. A malformed record is never joined: the pending record and the malformed one are both
    /// returned, in that order. A continuation line that would make the joined record longer than
    /// `multiline_max_bytes` starts a new record instead.
    pub fn push(&mut self, rec: Record, now: Instant) -> Joined {
        if rec.malformed.is_some() {
            return Joined::of(self.pending.take().map(|(pending, _)| pending), Some(rec));
        }
        if let Some((pending, last_at)) = &mut self.pending
            && self.rule.continues(&rec.message)
            && pending.message.len() + 1 + rec.message.len() <= self.rule.max_bytes
        {
            pending.message.push('\n');
            pending.message.push_str(&rec.message);
            pending.end = rec.end;
            pending.invalid_utf8 |= rec.invalid_utf8;
            pending.truncated |= rec.truncated;
            *last_at = now;
            return Joined::default();
        }
        Joined::of(self.pending.replace((rec, now)).map(|(pending, _)| pending), None)
    }

    /// Start offset of the pending record, if any (checkpoints must not pass it).
    pub fn pending_start(&self) -> Option<u64> {
        self.pending.as_ref().map(|(rec, _)| rec.start)
    }

    /// The pending record if its last line arrived `multiline_timeout` or longer before `now`.
    pub fn flush_due(&mut self, now: Instant) -> Option<Record> {
        let (_, last_at) = self.pending.as_ref()?;
        if now.saturating_duration_since(*last_at) >= self.rule.timeout { self.flush() } else { None }
    }

    /// The pending record, whatever its age.
    pub fn flush(&mut self) -> Option<Record> {
        self.pending.take().map(|(rec, _)| rec)
    }
}

/// What makes a line a continuation, and the limits of a joined record.
#[derive(Debug, Clone)]
struct MultilineRule {
    pattern: Option<Regex>,
    timeout: Duration,
    max_bytes: usize,
}

impl MultilineRule {
    fn continues(&self, message: &str) -> bool {
        message.starts_with([' ', '\t'])
            || message.starts_with("at ")
            || message.starts_with("Caused by:")
            || message.starts_with("...")
            || self.pattern.as_ref().is_some_and(|p| p.is_match(message))
    }
}

/// The name of the field [`Transform::fields`] adds.
const LEVEL_FIELD: &str = "level";
/// What Loki's level detection answers when it finds nothing.
const UNKNOWN_LEVEL: &str = "unknown";

fn compile_regex(key: &'static str, pattern: &str) -> Result<Regex, TransformError> {
    Regex::new(pattern).map_err(|source| TransformError::Regex { key, pattern: pattern.to_string(), source })
}

fn compile_regex_set(key: &'static str, patterns: &[String]) -> Result<Option<RegexSet>, TransformError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    // Compiled one by one first, so that an error names the regex at fault.
    for pattern in patterns {
        compile_regex(key, pattern)?;
    }
    RegexSet::new(patterns).map(Some).map_err(|source| TransformError::Regex {
        key,
        pattern: patterns.join(", "),
        source,
    })
}

fn compile_globs(key: &'static str, globs: &[String]) -> Result<Option<GlobSet>, TransformError> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        let compiled = Glob::new(glob).map_err(|source| TransformError::Glob { key, glob: glob.clone(), source })?;
        builder.add(compiled);
    }
    builder.build().map(Some).map_err(|source| TransformError::Glob { key, glob: globs.join(", "), source })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytesize::ByteSize;

    use crate::format::{Decoder, Record, Stream, detect};
    use crate::transform::{LineParser, Multiline, ParseConfig, Transform, TransformError};

    fn transform(cfg: ParseConfig) -> Transform {
        Transform::new(&cfg).unwrap()
    }

    fn fields(t: &Transform, message: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        t.fields(message, &mut out);
        out
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    /// Records of consecutive 100-byte lines, one second apart.
    fn records(lines: &[&str]) -> Vec<Record> {
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| Record {
                time_ns: i as i64 * 1_000_000_000,
                stream: Some(Stream::Stdout),
                message: line.to_string(),
                invalid_utf8: false,
                start: i as u64 * 100,
                end: (i as u64 + 1) * 100,
                truncated: false,
                malformed: None,
            })
            .collect()
    }

    fn multiline(cfg: ParseConfig) -> Multiline {
        transform(ParseConfig { multiline: true, ..cfg }).multiline().unwrap()
    }

    /// Pushes all records at one instant, then flushes; returns the messages of what came out.
    fn join_all(ml: &mut Multiline, recs: Vec<Record>) -> Vec<Record> {
        let now = Instant::now();
        let mut out = Vec::new();
        for rec in recs {
            out.extend(ml.push(rec, now));
        }
        out.extend(ml.flush());
        out
    }

    #[test]
    fn default_config() {
        let cfg = ParseConfig::default();
        assert_eq!(cfg.format, LineParser::None);
        assert!(cfg.detect_level);
        assert!(!cfg.multiline);
        assert_eq!(cfg.multiline_timeout, Duration::from_secs(1));
        assert_eq!(cfg.multiline_max_bytes, ByteSize::kib(256));
        assert!(transform(cfg).multiline().is_none());
    }

    #[test]
    fn config_serde() {
        let cfg: ParseConfig = serde_json::from_str(
            r#"{"format":"auto","multiline":true,"multiline_timeout":"250ms","multiline_max_bytes":"1 MiB",
                "drop":["^DEBUG"],"include_namespaces":["prod-*"]}"#,
        )
        .unwrap();
        assert_eq!(cfg.format, LineParser::Auto);
        assert!(cfg.detect_level, "a missing key keeps its default");
        assert_eq!(cfg.multiline_timeout, Duration::from_millis(250));
        assert_eq!(cfg.multiline_max_bytes, ByteSize::mib(1));
        assert_eq!(cfg.drop, ["^DEBUG"]);
        let back: ParseConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        assert!(serde_json::from_str::<ParseConfig>(r#"{"fromat":"json"}"#).is_err());
        assert!(serde_json::from_str::<ParseConfig>(r#"{"format":"xml"}"#).is_err());
        assert!(serde_json::from_str::<ParseConfig>(r#"{"multiline_timeout":"soon"}"#).is_err());
    }

    #[test]
    fn errors_name_key_and_value() {
        let err = Transform::new(&ParseConfig { drop: vec!["ok".into(), "(unclosed".into()], ..Default::default() })
            .unwrap_err();
        assert!(matches!(&err, TransformError::Regex { key: "drop", pattern, .. } if pattern == "(unclosed"));
        assert!(err.to_string().starts_with(r#"invalid regex "(unclosed" in agent.parse.drop: "#), "{err}");

        let cfg = ParseConfig { multiline: true, multiline_pattern: "[".into(), ..Default::default() };
        let err = Transform::new(&cfg).unwrap_err();
        assert!(matches!(err, TransformError::Regex { key: "multiline_pattern", .. }));
        // Not compiled while multiline is off.
        assert!(Transform::new(&ParseConfig { multiline: false, ..cfg }).is_ok());

        let err =
            Transform::new(&ParseConfig { exclude_containers: vec!["a[".into()], ..Default::default() }).unwrap_err();
        assert!(matches!(&err, TransformError::Glob { key: "exclude_containers", glob, .. } if glob == "a["));
        assert!(err.to_string().starts_with(r#"invalid glob "a[" in agent.parse.exclude_containers: "#), "{err}");
    }

    #[test]
    fn selects_by_globs() {
        let all = transform(ParseConfig::default());
        assert!(all.selects("default", "app"));

        let t = transform(ParseConfig {
            include_namespaces: vec!["prod-*".into(), "staging".into()],
            exclude_namespaces: vec!["prod-secret*".into()],
            include_containers: vec![],
            exclude_containers: vec!["istio-*".into(), "linkerd-proxy".into()],
            ..Default::default()
        });
        assert!(t.selects("prod-eu", "app"));
        assert!(t.selects("staging", "app"));
        assert!(!t.selects("staging-2", "app"));
        assert!(!t.selects("default", "app"));
        assert!(!t.selects("prod-secrets", "app"), "exclude wins over include");
        assert!(!t.selects("prod-eu", "istio-proxy"));
        assert!(!t.selects("prod-eu", "linkerd-proxy"));

        let t = transform(ParseConfig { include_containers: vec!["app?".into()], ..Default::default() });
        assert!(t.selects("any", "app1"));
        assert!(!t.selects("any", "app"));
    }

    #[test]
    fn drops_matching_lines() {
        let t = transform(ParseConfig {
            drop: vec![r"^\s*$".into(), "GET /healthz".into(), "(?i)debug".into()],
            ..Default::default()
        });
        assert!(t.keeps("GET /api/users 200"));
        assert!(!t.keeps("10.0.0.1 GET /healthz 200"));
        assert!(!t.keeps("  "));
        assert!(!t.keeps("level=DEBUG msg=x"));
        assert!(transform(ParseConfig::default()).keeps(""));
    }

    #[test]
    fn json_fields() {
        let t = transform(ParseConfig { format: LineParser::Json, ..Default::default() });
        assert_eq!(
            fields(&t, r#"{"msg":"hi","user":{"id":7,"name":"a b"},"tags":["x"],"ok":true,"n":null}"#),
            pairs(&[("msg", "hi"), ("user_id", "7"), ("user_name", "a b"), ("ok", "true")])
        );
        // Not JSON: no parsed fields and no error field, only the level.
        assert_eq!(fields(&t, "ERROR plain text"), pairs(&[("level", "error")]));
        assert_eq!(fields(&t, r#"{"msg":"cut"#), vec![]);
    }

    #[test]
    fn logfmt_fields() {
        let t = transform(ParseConfig { format: LineParser::Logfmt, ..Default::default() });
        assert_eq!(
            fields(&t, r#"ts=2024-05-01 level=error msg="disk full" path=/var/x empty="#),
            pairs(&[("ts", "2024-05-01"), ("level", "error"), ("msg", "disk full"), ("path", "/var/x")])
        );
        // A parsed `level` is not repeated.
        assert_eq!(fields(&t, "level=error").len(), 1);
        assert_eq!(fields(&t, "just words"), vec![]);
    }

    #[test]
    fn auto_picks_the_parser() {
        let t = transform(ParseConfig { format: LineParser::Auto, detect_level: false, ..Default::default() });
        assert_eq!(fields(&t, r#" {"a":"1"}"#), pairs(&[("a", "1")]));
        assert_eq!(fields(&t, "a=1 b=2"), pairs(&[("a", "1"), ("b", "2")]));
        assert_eq!(fields(&t, "no pairs here"), vec![]);
        assert_eq!(fields(&t, "{broken a=1"), vec![], "json when it starts with '{{'");
    }

    #[test]
    fn detects_levels() {
        let none = transform(ParseConfig::default());
        assert_eq!(fields(&none, "level=error msg=boom"), pairs(&[("level", "error")]));
        assert_eq!(fields(&none, r#"{"severity":"WARN","msg":"slow"}"#), pairs(&[("level", "warn")]));
        assert_eq!(fields(&none, "2024-05-01 10:00:00 ERROR could not connect"), pairs(&[("level", "error")]));
        assert_eq!(fields(&none, "all good"), vec![], "unknown adds nothing");

        let json = transform(ParseConfig { format: LineParser::Json, ..Default::default() });
        // The parsed `severity` field is the level: no `level` is added.
        assert_eq!(fields(&json, r#"{"severity":"WARN"}"#), pairs(&[("severity", "WARN")]));
        // A level-like field counts even when its value is not a known level, as detected_level has it.
        assert_eq!(
            fields(&json, r#"{"level":"notice","msg":"error"}"#),
            pairs(&[("level", "notice"), ("msg", "error")])
        );
        // Nested one level down, the parsed name is `log_level`; the line search still finds it.
        assert_eq!(fields(&json, r#"{"log":{"level":"debug"}}"#), pairs(&[("log_level", "debug"), ("level", "debug")]));

        let off = transform(ParseConfig { detect_level: false, ..Default::default() });
        assert_eq!(fields(&off, "ERROR x"), vec![]);
    }

    #[test]
    fn fields_append_after_existing() {
        let t = transform(ParseConfig { format: LineParser::Logfmt, ..Default::default() });
        let mut out = pairs(&[("level", "info")]);
        t.fields("a=1 oops", &mut out);
        // An earlier entry of `out` is not one of this message's fields: the level is still detected.
        assert_eq!(out, pairs(&[("level", "info"), ("a", "1")]));
        t.fields("msg=x WARN", &mut out);
        assert_eq!(out, pairs(&[("level", "info"), ("a", "1"), ("msg", "x"), ("level", "warn")]));
    }

    #[test]
    fn fields_of_a_sample_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/k8s-logs/",
            "session-db-fdd649d68-cq5sp_socks_istio-proxy-b75ad5eba8ddde3687e11d07b5f1d13b59c6168d5183621ac2792482b99e7155.log"
        );
        let bytes = std::fs::read(path).unwrap();
        let line = bytes.strip_suffix(b"\n").unwrap();
        let rec = Decoder::new(detect(line), 1 << 20).push(line, 0, bytes.len() as u64).unwrap();
        let t = transform(ParseConfig { format: LineParser::Auto, ..Default::default() });
        let out = fields(&t, &rec.message);
        assert_eq!(out.len(), 28, "{out:?}");
        assert_eq!(out[0], ("level".to_string(), "info".to_string()));
        assert!(out.contains(&("receivedBytes".to_string(), "432".to_string())));
        assert!(out.contains(&("destinationApp".to_string(), String::new())), "empty strings are kept, as | json does");
        assert_eq!(out.iter().filter(|(n, _)| n == "level").count(), 1);
    }

    #[test]
    fn joins_java_stack_trace() {
        let mut ml = multiline(ParseConfig::default());
        let out = join_all(
            &mut ml,
            records(&[
                "2024-05-01 10:00:00 INFO starting",
                "2024-05-01 10:00:01 ERROR request failed",
                "java.lang.IllegalStateException: boom",
                "\tat com.example.Service.handle(Service.java:42)",
                "\tat com.example.Main.main(Main.java:7)",
                "Caused by: java.io.IOException: disk full",
                "\tat com.example.Disk.write(Disk.java:9)",
                "\t... 2 more",
                "2024-05-01 10:00:02 INFO recovered",
            ]),
        );
        let messages: Vec<&str> = out.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "2024-05-01 10:00:00 INFO starting",
                "2024-05-01 10:00:01 ERROR request failed",
                "java.lang.IllegalStateException: boom\n\
                 \tat com.example.Service.handle(Service.java:42)\n\
                 \tat com.example.Main.main(Main.java:7)\n\
                 Caused by: java.io.IOException: disk full\n\
                 \tat com.example.Disk.write(Disk.java:9)\n\
                 \t... 2 more",
                "2024-05-01 10:00:02 INFO recovered",
            ]
        );
        let trace = &out[2];
        assert_eq!((trace.time_ns, trace.start, trace.end), (2_000_000_000, 200, 800));
    }

    #[test]
    fn joins_python_traceback_with_pattern() {
        let cfg =
            ParseConfig { multiline_pattern: r"^[A-Za-z_.]*(Error|Exception)(: |$)".into(), ..Default::default() };
        let mut ml = multiline(cfg);
        let out = join_all(
            &mut ml,
            records(&[
                "Traceback (most recent call last):",
                "  File \"/app/main.py\", line 3, in <module>",
                "    main()",
                "ValueError: invalid literal for int() with base 10: 'x'",
                "INFO next request",
            ]),
        );
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].message,
            "Traceback (most recent call last):\n  File \"/app/main.py\", line 3, in <module>\n    main()\n\
             ValueError: invalid literal for int() with base 10: 'x'"
        );
        assert_eq!((out[0].start, out[0].end), (0, 400));
        assert_eq!(out[1].message, "INFO next request");

        // Without the pattern, the exception line starts a record of its own.
        let mut ml = multiline(ParseConfig::default());
        let out = join_all(&mut ml, records(&["Traceback (most recent call last):", "  File x", "ValueError: x"]));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn multiline_pending_and_timeout() {
        let mut ml = multiline(ParseConfig { multiline_timeout: Duration::from_millis(500), ..Default::default() });
        let t0 = Instant::now();
        let mut recs = records(&["first", "  more", "second"]).into_iter();
        assert!(ml.flush_due(t0).is_none());
        assert_eq!(ml.pending_start(), None);
        assert_eq!(ml.push(recs.next().unwrap(), t0).count(), 0);
        assert_eq!(ml.pending_start(), Some(0));
        assert_eq!(ml.push(recs.next().unwrap(), t0 + Duration::from_millis(400)).count(), 0);
        // Due 500ms after the last line, not the first.
        assert!(ml.flush_due(t0 + Duration::from_millis(800)).is_none());
        let due = ml.flush_due(t0 + Duration::from_millis(900)).unwrap();
        assert_eq!(due.message, "first\n  more");
        assert_eq!(ml.pending_start(), None);
        // A continuation after a timeout flush starts a record of its own.
        let out: Vec<Record> = ml.push(recs.next().unwrap(), t0).collect();
        assert!(out.is_empty());
        assert_eq!(ml.pending_start(), Some(200));
        assert_eq!(ml.flush().unwrap().message, "second");
        assert!(ml.flush().is_none());
    }

    #[test]
    fn multiline_max_bytes() {
        let mut ml = multiline(ParseConfig { multiline_max_bytes: ByteSize::b(12), ..Default::default() });
        let out = join_all(&mut ml, records(&["head", " 12345", " 6789", " x"]));
        let messages: Vec<&str> = out.iter().map(|r| r.message.as_str()).collect();
        // "head\n 12345" is 11 bytes; adding "\n 6789" would make 17.
        assert_eq!(messages, ["head\n 12345", " 6789\n x"]);
    }

    #[test]
    fn multiline_malformed_passes_through() {
        let mut ml = multiline(ParseConfig::default());
        let mut recs = records(&["head", " cont", " garbage", " after"]);
        recs[2].malformed = Some("cri: invalid tag".into());
        recs[2].stream = None;
        let now = Instant::now();
        let mut it = recs.into_iter();
        assert_eq!(ml.push(it.next().unwrap(), now).count(), 0);
        assert_eq!(ml.push(it.next().unwrap(), now).count(), 0);
        let out: Vec<Record> = ml.push(it.next().unwrap(), now).collect();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].message, "head\n cont");
        assert_eq!(out[1].message, " garbage");
        assert!(out[1].malformed.is_some());
        assert_eq!(ml.pending_start(), None);
        // With nothing pending, only the malformed record comes back.
        let mut bad = records(&["x"]).remove(0);
        bad.malformed = Some("bad".into());
        assert_eq!(ml.push(bad, now).count(), 1);
        assert_eq!(ml.push(it.next().unwrap(), now).count(), 0);
        assert_eq!(ml.flush().unwrap().message, " after");
    }
}
