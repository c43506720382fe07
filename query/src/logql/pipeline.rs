//! Running a log pipeline over one entry: line filters, parsers, label filters, formatting. Stages that
//! fail do not drop the entry; they set `__error__` (and `__error_details__`) as Loki does, and the
//! entry goes on.

use std::borrow::Cow;

use memchr::memmem::Finder;
use regex::Regex;
use store::model::Labels;

use super::ast::{CmpOp, CmpValue, FilterOp, LabelFilter, LabelFmt, LineFilter, Parser, Stage};
use super::extract;

pub const ERROR: &str = "__error__";
pub const ERROR_DETAILS: &str = "__error_details__";
pub const DETECTED_LEVEL: &str = "detected_level";

/// Where a label of an entry comes from; `categorize-labels` answers keep them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    Stream,
    Metadata,
    Parsed,
}

/// The labels of one entry while it goes through a pipeline.
#[derive(Debug, Clone, Default)]
pub struct LabelSet {
    items: Vec<(String, String, Category)>,
}

impl LabelSet {
    pub fn from_stream(labels: &Labels) -> LabelSet {
        LabelSet { items: labels.iter().map(|(k, v)| (k.to_string(), v.to_string(), Category::Stream)).collect() }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.items.iter().find(|(k, _, _)| k == name).map(|(_, v, _)| v.as_str())
    }

    fn category(&self, name: &str) -> Option<Category> {
        self.items.iter().find(|(k, _, _)| k == name).map(|(_, _, c)| *c)
    }

    pub fn set(&mut self, name: &str, value: &str, category: Category) {
        match self.items.iter_mut().find(|(k, _, _)| k == name) {
            Some(item) => {
                item.1.clear();
                item.1.push_str(value);
                item.2 = category;
            }
            None => self.items.push((name.to_string(), value.to_string(), category)),
        }
    }

    pub fn delete(&mut self, name: &str) {
        self.items.retain(|(k, _, _)| k != name);
    }

    pub fn has_error(&self) -> bool {
        self.get(ERROR).is_some_and(|v| !v.is_empty())
    }

    fn set_error(&mut self, kind: &str, details: &str) {
        if !self.has_error() {
            self.set(ERROR, kind, Category::Parsed);
            self.set(ERROR_DETAILS, details, Category::Parsed);
        }
    }

    /// Adds a parsed label; a name taken by a stream label gets the `_extracted` suffix, as in Loki.
    fn add_parsed(&mut self, name: &str, value: &str) {
        if self.category(name) == Some(Category::Stream) {
            let renamed = format!("{name}_extracted");
            self.set(&renamed, value, Category::Parsed);
        } else {
            self.set(name, value, Category::Parsed);
        }
    }

    /// All labels with a non-empty value, sorted by name.
    pub fn sorted(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> =
            self.items.iter().filter(|(_, v, _)| !v.is_empty()).map(|(k, v, _)| (k.clone(), v.clone())).collect();
        out.sort();
        out
    }

    /// Non-empty labels of one category, sorted by name.
    pub fn sorted_of(&self, category: Category) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .items
            .iter()
            .filter(|(_, v, c)| !v.is_empty() && *c == category)
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        out.sort();
        out
    }

    fn retain(&mut self, f: impl Fn(&str, &str) -> bool) {
        self.items.retain(|(k, v, _)| f(k, v));
    }
}

/// A line filter ready to run.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    negated: bool,
    finders: Vec<Finder<'static>>,
    regexes: Vec<Regex>,
}

impl CompiledFilter {
    pub fn new(filter: &LineFilter) -> CompiledFilter {
        let mut finders = Vec::new();
        let mut regexes = Vec::new();
        for v in &filter.values {
            match (filter.op, &v.regex) {
                (FilterOp::Contains | FilterOp::NotContains, _) => {
                    finders.push(Finder::new(v.text.as_bytes()).into_owned());
                }
                (_, Some(re)) => regexes.push(re.clone()),
                (_, None) => {}
            }
        }
        CompiledFilter { negated: filter.op.negated(), finders, regexes }
    }

    /// Whether the line passes.
    pub fn passes(&self, line: &str) -> bool {
        let found = self.finders.iter().any(|f| f.find(line.as_bytes()).is_some())
            || self.regexes.iter().any(|r| r.is_match(line));
        found != self.negated
    }
}

/// A compiled pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    stages: Vec<Compiled>,
    /// True when some stage reads or changes labels (anything but line filters).
    pub touches_labels: bool,
    /// Add `detected_level` before the stages, as Loki adds it at ingestion.
    pub detect_level: bool,
}

#[derive(Debug, Clone)]
enum Compiled {
    Filter(CompiledFilter),
    Other(Stage),
}

impl Pipeline {
    pub fn new(stages: &[Stage], detect_level: bool) -> Pipeline {
        let stages: Vec<Compiled> = stages
            .iter()
            .map(|s| match s {
                Stage::LineFilter(f) => Compiled::Filter(CompiledFilter::new(f)),
                other => Compiled::Other(other.clone()),
            })
            .collect();
        let touches_labels = stages.iter().any(|s| matches!(s, Compiled::Other(_))) || detect_level;
        Pipeline { stages, touches_labels, detect_level }
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty() && !self.detect_level
    }

    /// No stages, only `detected_level` to add: the caller may derive it without a label set.
    pub fn only_detects_level(&self) -> bool {
        self.stages.is_empty() && self.detect_level
    }

    /// Only line filters: [`Pipeline::filter_line`] is all there is to run.
    pub fn line_only(&self) -> bool {
        !self.touches_labels
    }

    /// Runs a pipeline of line filters only.
    pub fn filter_line(&self, line: &str) -> bool {
        self.stages.iter().all(|s| match s {
            Compiled::Filter(f) => f.passes(line),
            Compiled::Other(_) => true,
        })
    }

    /// Runs every stage; `None` when the entry is filtered out.
    pub fn process<'a>(&self, ts: i64, line: &'a str, labels: &mut LabelSet) -> Option<Cow<'a, str>> {
        let mut line: Cow<'a, str> = Cow::Borrowed(line);
        if self.detect_level && labels.get(DETECTED_LEVEL).is_none() {
            let level = extract::detect_level(&|name| labels.get(name).map(str::to_string), &line);
            labels.set(DETECTED_LEVEL, level, Category::Metadata);
        }
        let mut scratch = Vec::new();
        for stage in &self.stages {
            match stage {
                Compiled::Filter(f) => {
                    if !f.passes(&line) {
                        return None;
                    }
                }
                Compiled::Other(stage) => {
                    if !run_stage(stage, ts, &mut line, labels, &mut scratch) {
                        return None;
                    }
                }
            }
        }
        Some(line)
    }
}

fn run_stage(
    stage: &Stage,
    ts: i64,
    line: &mut Cow<'_, str>,
    labels: &mut LabelSet,
    scratch: &mut extract::Extracted,
) -> bool {
    match stage {
        // Pipeline::new compiles line filters into `Compiled::Filter`; none reach here.
        Stage::LineFilter(_) => true,
        Stage::Parser(p) => {
            scratch.clear();
            parse(p, line, labels, scratch);
            true
        }
        Stage::LabelFilter(f) => eval_label_filter(f, labels),
        Stage::LineFormat(t) => {
            let rendered = t.template.render(line, ts, &|name| labels.get(name).map(str::to_string));
            match rendered {
                Ok(s) => *line = Cow::Owned(s),
                Err(e) => labels.set_error("TemplateFormatErr", &e),
            }
            true
        }
        Stage::LabelFormat(items) => {
            // Every assignment sees the labels as they were before the stage.
            let before = labels.clone();
            for item in items {
                match item {
                    LabelFmt::Rename { dst, src } => {
                        let value = before.get(src).unwrap_or("").to_string();
                        let category = before.category(src).unwrap_or(Category::Parsed);
                        labels.delete(src);
                        labels.set(dst, &value, category);
                    }
                    LabelFmt::Template { dst, value } => {
                        match value.template.render(line, ts, &|name| before.get(name).map(str::to_string)) {
                            Ok(s) => {
                                let category = before.category(dst).unwrap_or(Category::Parsed);
                                labels.set(dst, &s, category);
                            }
                            Err(e) => labels.set_error("TemplateFormatErr", &e),
                        }
                    }
                }
            }
            true
        }
        Stage::Drop(sels) => {
            labels.retain(|k, v| !sels.iter().any(|s| s.name == k && s.matcher.as_ref().is_none_or(|m| m.matches(v))));
            true
        }
        Stage::Keep(sels) => {
            // Errors stay: they must remain visible to the filters after `keep`.
            labels.retain(|k, v| {
                k == ERROR
                    || k == ERROR_DETAILS
                    || sels.iter().any(|s| s.name == k && s.matcher.as_ref().is_none_or(|m| m.matches(v)))
            });
            true
        }
        Stage::Decolorize => {
            let clean = extract::decolorize(line);
            *line = Cow::Owned(clean);
            true
        }
    }
}

fn parse(p: &Parser, line: &mut Cow<'_, str>, labels: &mut LabelSet, out: &mut extract::Extracted) {
    let result = match p {
        Parser::Json { fields, .. } if fields.is_empty() => extract::json(line, out).map_err(|e| ("JSONParserErr", e)),
        Parser::Json { fields, .. } => extract::json_fields(line, fields, out).map_err(|e| ("JSONParserErr", e)),
        Parser::Logfmt { strict, keep_empty, fields } if fields.is_empty() => {
            extract::logfmt(line, *strict, *keep_empty, out).map_err(|e| ("LogfmtParserErr", e))
        }
        Parser::Logfmt { strict, keep_empty, fields } => {
            extract::logfmt_fields(line, fields, *strict, *keep_empty, out).map_err(|e| ("LogfmtParserErr", e))
        }
        Parser::Regexp { regex, .. } => {
            if let Some(caps) = regex.captures(line) {
                for name in regex.capture_names().flatten() {
                    if let Some(m) = caps.name(name) {
                        out.push((name.to_string(), m.as_str().to_string()));
                    }
                }
            }
            Ok(())
        }
        Parser::Pattern { pattern, .. } => {
            pattern.matches(line, out);
            Ok(())
        }
        Parser::Unpack => match extract::unpack(line, out) {
            Ok(Some(new_line)) => {
                *line = Cow::Owned(new_line);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(("JSONParserErr", e)),
        },
    };
    for (name, value) in out.iter() {
        labels.add_parsed(name, value);
    }
    if let Err((kind, details)) = result {
        labels.set_error(kind, &details);
    }
}

/// Evaluates a label filter; a value that is not a number (duration, size) where one is compared sets
/// `LabelFilterErr` and keeps the entry. Numeric comparisons pass entries that already carry an error.
pub fn eval_label_filter(f: &LabelFilter, labels: &mut LabelSet) -> bool {
    match f {
        LabelFilter::And(a, b) => eval_label_filter(a, labels) && eval_label_filter(b, labels),
        LabelFilter::Or(a, b) => eval_label_filter(a, labels) || eval_label_filter(b, labels),
        LabelFilter::Paren(a) => eval_label_filter(a, labels),
        LabelFilter::Cmp(c) => {
            let found = labels.get(&c.name);
            let value = found.unwrap_or("");
            let number = match &c.value {
                CmpValue::Str(s) => {
                    return match c.op {
                        CmpOp::Neq => value != s,
                        _ => value == s,
                    };
                }
                CmpValue::Regex(_, re) => {
                    let m = re.is_match(value);
                    return if c.op == CmpOp::Nre { !m } else { m };
                }
                CmpValue::Number(n) => (value.trim().parse::<f64>().ok(), *n),
                CmpValue::Duration(n, _) => (extract::parse_duration_secs(value), *n),
                CmpValue::Bytes(n, _) => (extract::parse_bytes(value), *n),
            };
            if labels.has_error() {
                return true;
            }
            if found.is_none() {
                // Loki drops entries without the label in numeric comparisons.
                return false;
            }
            let (Some(actual), expected) = number else {
                let details = format!("cannot convert label {:?} value {value:?} for comparison", c.name);
                labels.set_error("LabelFilterErr", &details);
                return true;
            };
            match c.op {
                CmpOp::Eq => actual == expected,
                CmpOp::Neq => actual != expected,
                CmpOp::Gt => actual > expected,
                CmpOp::Ge => actual >= expected,
                CmpOp::Lt => actual < expected,
                CmpOp::Le => actual <= expected,
                CmpOp::Re | CmpOp::Nre => false,
            }
        }
    }
}

/// A substring that every match of `pattern` contains, if there is one worth searching for: the
/// longest literal run of a top-level concatenation (through capture groups). Case-insensitive parts,
/// alternations and repetitions yield none. Used to let the store prefilter lines for `|~`.
pub fn required_literal(pattern: &str) -> Option<String> {
    use regex_syntax::hir::{Hir, HirKind};
    fn literal(h: &Hir) -> Option<String> {
        match h.kind() {
            HirKind::Literal(l) => std::str::from_utf8(&l.0).ok().map(str::to_string),
            HirKind::Capture(c) => literal(&c.sub),
            _ => None,
        }
    }
    fn best(h: &Hir) -> Option<String> {
        match h.kind() {
            HirKind::Capture(c) => best(&c.sub),
            HirKind::Concat(parts) => {
                // Adjacent literal pieces join into one run.
                let mut runs: Vec<String> = vec![String::new()];
                for p in parts {
                    match literal(p) {
                        Some(s) => runs.last_mut().expect("one run at least").push_str(&s),
                        None => {
                            if let Some(inner) = best(p) {
                                runs.push(inner);
                            }
                            runs.push(String::new());
                        }
                    }
                }
                runs.into_iter().max_by_key(String::len).filter(|s| !s.is_empty())
            }
            _ => literal(h),
        }
    }
    let hir = regex_syntax::ParserBuilder::new().build().parse(pattern).ok()?;
    best(&hir).filter(|s| s.len() >= 3)
}

#[cfg(test)]
mod tests {
    use super::required_literal;

    #[test]
    fn required_literals_of_regexes() {
        assert_eq!(required_literal("Receiving").as_deref(), Some("Receiving"));
        assert_eq!(required_literal(r"error: \d+ blocks").as_deref(), Some(" blocks"));
        assert_eq!(required_literal(r"(GET|POST) /api/v1/(\w+)").as_deref(), Some(" /api/v1/"));
        assert_eq!(required_literal("(?i)error"), None);
        assert_eq!(required_literal("error|warn"), None);
        assert_eq!(required_literal("a.*b"), None);
        assert_eq!(required_literal("(timeout)+"), None);
    }
}
