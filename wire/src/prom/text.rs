//! Prometheus text exposition format 0.0.4 and OpenMetrics 1.0 text, for `/api/v1/import/prometheus`.
//!
//! [`parse_text`] hands every good sample to a visitor and collects every bad line as a [`LineError`]; it never
//! stops early. What a caller does with a body that has bad lines is its policy (Lumen: answer 400 naming the
//! lines, and keep or drop the good samples as the endpoint's design says).
//!
//! Format differences that matter (see [`TextFormat`]):
//! * timestamps are integer **milliseconds** in the Prometheus format and float **seconds** in OpenMetrics;
//! * OpenMetrics `<family>_created` samples of counters, histograms, summaries and gauge histograms are creation
//!   times, not samples, and are skipped (counted in [`TextStats::created_skipped`]); in the Prometheus format a
//!   `_created` line is an ordinary sample, because Prometheus itself stores it as one.
//!
//! Both formats accept: `# HELP`/`# TYPE`/`# UNIT` (collected as [`MetricMetadata`]), other `#` comments,
//! blanks and tabs between tokens, a trailing comma in `{}`, quoted UTF-8 metric and label names
//! (`{"my.metric", "http.method"="GET"}`, text format 1.0 / OpenMetrics 2.0 style), Go float syntax for values
//! (`NaN`, `+Inf`, `-Inf`, exponents, hex floats such as `0x1p-3`), and exemplars (` # {trace_id="x"} 1 [ts]`),
//! which are ignored and counted. Label values are unescaped (`\\`, `\"`, `\n`); any other escape is an error.
//! Labels with an empty value are dropped (Prometheus: empty value = label absent). The labels handed to the
//! visitor include `__name__` and are sorted by name (byte order).

use super::{ErrorSink, LineError, Piece, clip, recycle};
use std::collections::HashMap;

/// Which exposition dialect a body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    /// OpenMetrics if the last non-blank line is exactly `# EOF`, else the Prometheus format. Note that some
    /// Prometheus-format bodies also end in `# EOF` (a plain comment there); they parse the same unless they
    /// carry timestamps or OpenMetrics-style `_created` samples, so send the Content-Type when it is known.
    Auto,
    /// Prometheus text format 0.0.4 (`text/plain; version=0.0.4`): timestamps in integer milliseconds.
    Prometheus,
    /// OpenMetrics 1.0 text (`application/openmetrics-text`): timestamps in float seconds, must end with `# EOF`.
    OpenMetrics,
}

impl TextFormat {
    /// Picks the format from a request's Content-Type: `application/openmetrics-text` → OpenMetrics,
    /// `text/plain` with `version=0.0.4` → Prometheus, anything else (or none) → Auto.
    pub fn from_content_type(content_type: Option<&str>) -> TextFormat {
        let Some(ct) = content_type.map(str::to_ascii_lowercase) else { return TextFormat::Auto };
        if ct.starts_with("application/openmetrics-text") {
            TextFormat::OpenMetrics
        } else if ct.starts_with("text/plain") && ct.contains("version=0.0.4") {
            TextFormat::Prometheus
        } else {
            TextFormat::Auto
        }
    }
}

/// HELP/TYPE/UNIT of one metric family, as for `/api/v1/metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricMetadata {
    /// Family name as written in the `# TYPE`/`# HELP`/`# UNIT` line (OpenMetrics counters: without `_total`).
    pub metric: String,
    /// `counter`, `gauge`, `histogram`, `summary`, `gaugehistogram`, `stateset`, `info` or `unknown`
    /// (`untyped` and a missing TYPE are reported as `unknown`, as Prometheus does).
    pub kind: String,
    /// HELP text, unescaped; empty if none.
    pub help: String,
    /// UNIT text; empty if none.
    pub unit: String,
}

/// What a text body contained, besides the samples the visitor saw.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TextStats {
    /// `true` if the body was parsed as OpenMetrics (given, or detected by `# EOF`).
    pub openmetrics: bool,
    /// Sample lines handed to the visitor.
    pub samples: usize,
    /// OpenMetrics `_created` lines skipped.
    pub created_skipped: usize,
    /// Exemplars ignored.
    pub exemplars: usize,
    /// One entry per family with HELP, TYPE or UNIT, in order of first appearance.
    pub metadata: Vec<MetricMetadata>,
    /// Number of bad lines (all of them).
    pub error_lines: usize,
    /// The first [`super::MAX_LINE_ERRORS`] bad lines; their samples were not visited.
    pub errors: Vec<LineError>,
}

/// Family state for the OpenMetrics `_created` rule.
struct Family<'b> {
    name: &'b str,
    has_created: bool,
}

/// Parses a Prometheus-format or OpenMetrics text body.
///
/// `visit(labels, t_ms, value)` is called for every good sample in body order; `labels` include `__name__`, are
/// sorted by name, have unescaped values and no empty values. A sample without a timestamp gets `default_t_ms`.
/// Bad lines are not visited and are reported in [`TextStats::errors`] with their 1-based line numbers.
pub fn parse_text<F>(body: &str, format: TextFormat, default_t_ms: i64, mut visit: F) -> TextStats
where
    F: FnMut(&[(&str, &str)], i64, f64),
{
    let openmetrics = match format {
        TextFormat::OpenMetrics => true,
        TextFormat::Prometheus => false,
        TextFormat::Auto => body.trim_end().rsplit('\n').next().is_some_and(|l| l.trim() == "# EOF"),
    };
    let mut stats = TextStats { openmetrics, ..Default::default() };
    let mut sink = ErrorSink::default();
    let mut meta_index: HashMap<String, usize> = HashMap::new();
    let mut family: Option<Family<'_>> = None;
    let mut pieces: Vec<(Piece<'_>, Piece<'_>)> = Vec::with_capacity(16);
    let mut scratch = String::new();
    let mut spare: Vec<(&str, &str)> = Vec::with_capacity(16);
    let mut seen_eof: Option<usize> = None;

    let bytes = body.as_bytes();
    let mut start = 0;
    let mut lineno = 0;
    while start < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
        let raw = &body[start..end];
        start = end + 1;
        lineno += 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim_start_matches([' ', '\t']);
        if line.trim_end().is_empty() {
            continue;
        }
        if let Some(eof_line) = seen_eof {
            sink.push(lineno, format!("content after the # EOF on line {eof_line}: OpenMetrics bodies end at # EOF"));
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            match parse_comment(comment, openmetrics) {
                Ok(Comment::Eof) if openmetrics => seen_eof = Some(lineno),
                Ok(Comment::Eof | Comment::Other) => {}
                Ok(Comment::Meta { name, what, text }) => {
                    let idx = *meta_index.entry(name.clone()).or_insert_with(|| {
                        stats.metadata.push(MetricMetadata {
                            metric: name.clone(),
                            kind: "unknown".into(),
                            ..Default::default()
                        });
                        stats.metadata.len() - 1
                    });
                    let m = &mut stats.metadata[idx];
                    match what {
                        MetaKind::Help => m.help = text,
                        MetaKind::Unit => m.unit = text,
                        MetaKind::Type => {
                            let has_created =
                                matches!(text.as_str(), "counter" | "histogram" | "summary" | "gaugehistogram");
                            m.kind = text;
                            // Only unquoted names take part in the `_created` rule; keep a borrowed copy.
                            family = comment_family_name(comment).map(|name| Family { name, has_created });
                        }
                    }
                }
                Err(msg) => sink.push(lineno, msg),
            }
            continue;
        }

        pieces.clear();
        scratch.clear();
        let parsed = match parse_sample(line, openmetrics, &mut pieces, &mut scratch) {
            Ok(p) => p,
            Err(msg) => {
                sink.push(lineno, msg);
                continue;
            }
        };
        let name = parsed.name.get(&scratch);
        if openmetrics
            && let Some(fam) = &family
            && fam.has_created
            && name.strip_suffix("_created") == Some(fam.name)
        {
            stats.created_skipped += 1;
            continue;
        }
        let mut labels = recycle(std::mem::take(&mut spare));
        labels.push(("__name__", name));
        labels.extend(pieces.iter().map(|(n, v)| (n.get(&scratch), v.get(&scratch))).filter(|(_, v)| !v.is_empty()));
        labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
        if let Some(w) = labels.windows(2).find(|w| w[0].0 == w[1].0) {
            sink.push(lineno, format!("label name {:?} appears more than once", clip(w[0].0, 64)));
        } else {
            visit(&labels, parsed.t_ms.unwrap_or(default_t_ms), parsed.value);
            stats.samples += 1;
            stats.exemplars += usize::from(parsed.exemplar);
        }
        spare = recycle(labels);
    }
    if openmetrics && format == TextFormat::OpenMetrics && seen_eof.is_none() {
        sink.push(lineno + 1, "the OpenMetrics body does not end with # EOF: it may have been cut short".into());
    }
    stats.error_lines = sink.count;
    stats.errors = sink.errors;
    stats
}

enum MetaKind {
    Help,
    Type,
    Unit,
}

enum Comment {
    Eof,
    Other,
    Meta { name: String, what: MetaKind, text: String },
}

/// The unquoted family name of a `# TYPE name kind` line, borrowed.
fn comment_family_name(comment: &str) -> Option<&str> {
    let rest = comment.trim_start_matches([' ', '\t']).strip_prefix("TYPE")?.trim_start_matches([' ', '\t']);
    let end = rest.find([' ', '\t']).unwrap_or(rest.len());
    (!rest.starts_with('"')).then_some(&rest[..end])
}

/// Parses what follows `#` on a comment line.
fn parse_comment(comment: &str, openmetrics: bool) -> Result<Comment, String> {
    let rest = comment.trim_start_matches([' ', '\t']);
    let (keyword, after) = rest.split_at(rest.find([' ', '\t']).unwrap_or(rest.len()));
    let what = match keyword {
        "HELP" => MetaKind::Help,
        "TYPE" => MetaKind::Type,
        "UNIT" => MetaKind::Unit,
        "EOF" if after.trim().is_empty() => return Ok(Comment::Eof),
        _ => return Ok(Comment::Other),
    };
    let after = after.trim_start_matches([' ', '\t']);
    let (name, text) = if after.starts_with('"') {
        let mut scratch = String::new();
        let (piece, used) = quoted(after, 0, &mut scratch).map_err(|e| format!("# {keyword}: {e}"))?;
        (piece.get(&scratch).to_owned(), &after[used..])
    } else {
        let end = after.find([' ', '\t']).unwrap_or(after.len());
        let name = &after[..end];
        if !is_metric_name(name) {
            return Err(if name.is_empty() {
                format!("# {keyword} without a metric name")
            } else {
                format!("# {keyword}: metric name {:?} is invalid", clip(name, 64))
            });
        }
        (name.to_owned(), &after[end..])
    };
    if !text.is_empty() && !text.starts_with([' ', '\t']) {
        return Err(format!("# {keyword} {name}: expected a blank after the metric name"));
    }
    let text = text.strip_prefix([' ', '\t']).unwrap_or(text);
    let text = match what {
        MetaKind::Help => unescape_help(text, openmetrics),
        MetaKind::Unit => text.trim().to_owned(),
        MetaKind::Type => {
            let kind = text.trim();
            match kind {
                "counter" | "gauge" | "histogram" | "summary" | "gaugehistogram" | "stateset" | "info" | "unknown" => {
                    kind.to_owned()
                }
                "untyped" => "unknown".to_owned(),
                "" => return Err(format!("# TYPE {name}: the type is missing")),
                _ => {
                    return Err(format!(
                        "# TYPE {name}: unknown type {:?} (expected counter, gauge, histogram, summary, \
                         gaugehistogram, stateset, info, unknown or untyped)",
                        clip(kind, 32)
                    ));
                }
            }
        }
    };
    Ok(Comment::Meta { name, what, text })
}

/// HELP text escapes: `\\` and `\n` (and `\"` in OpenMetrics); others are kept as written.
fn unescape_help(text: &str, openmetrics: bool) -> String {
    if !text.contains('\\') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if openmetrics => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn is_metric_name(s: &str) -> bool {
    super::remote::is_valid_metric_name(s)
}

struct ParsedSample<'b> {
    name: Piece<'b>,
    value: f64,
    t_ms: Option<i64>,
    exemplar: bool,
}

/// Reads a quoted string starting at `s[at] == '"'`; returns the content (borrowed if it has no escapes) and
/// the index just past the closing quote.
fn quoted<'b>(s: &'b str, at: usize, scratch: &mut String) -> Result<(Piece<'b>, usize), String> {
    let b = s.as_bytes();
    debug_assert_eq!(b[at], b'"');
    let body = at + 1;
    let mut i = body;
    let mut escaped = false;
    while i < b.len() && b[i] != b'"' {
        if b[i] == b'\\' {
            escaped = true;
            i += 1;
        }
        i += 1;
    }
    if i >= b.len() {
        return Err(format!("unterminated quoted string starting at column {}", at + 1));
    }
    if !escaped {
        return Ok((Piece::Body(&s[body..i]), i + 1));
    }
    let from = scratch.len();
    let mut chars = s[body..i].chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            scratch.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => scratch.push('\\'),
            Some('"') => scratch.push('"'),
            Some('n') => scratch.push('\n'),
            other => {
                return Err(format!(
                    "invalid escape sequence \"\\{}\" in a quoted string (only \\\\, \\\" and \\n are allowed)",
                    other.map(String::from).unwrap_or_default()
                ));
            }
        }
    }
    Ok((Piece::Scratch(from, scratch.len()), i + 1))
}

fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    i
}

fn token_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
        i += 1;
    }
    i
}

fn describe_char(s: &str, i: usize) -> String {
    match s[i..].chars().next() {
        Some(c) => format!("{c:?} at column {}", i + 1),
        None => "the end of the line".to_owned(),
    }
}

/// Parses a sample line `name{labels} value [timestamp] [# exemplar]`.
fn parse_sample<'b>(
    line: &'b str,
    openmetrics: bool,
    pieces: &mut Vec<(Piece<'b>, Piece<'b>)>,
    scratch: &mut String,
) -> Result<ParsedSample<'b>, String> {
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
        i += 1;
    }
    let mut name = None;
    if i > 0 {
        if b[0].is_ascii_digit() {
            return Err(format!("metric name {:?} is invalid: it must not start with a digit", clip(&line[..i], 64)));
        }
        name = Some(Piece::Body(&line[..i]));
    } else if b[0] != b'{' {
        return Err(format!("expected a metric name, found {}", describe_char(line, 0)));
    }
    if i < b.len() && b[i] == b'{' {
        i += 1;
        loop {
            i = skip_blanks(b, i);
            if i >= b.len() {
                return Err("the label set is not closed with '}'".into());
            }
            if b[i] == b'}' {
                i += 1;
                break;
            }
            let (label, quoted_name) = if b[i] == b'"' {
                let (p, next) = quoted(line, i, scratch)?;
                i = next;
                (p, true)
            } else {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                if s == i {
                    return Err(format!("expected a label name, found {}", describe_char(line, i)));
                }
                if b[s].is_ascii_digit() {
                    return Err(format!(
                        "label name {:?} is invalid: it must not start with a digit",
                        clip(&line[s..i], 64)
                    ));
                }
                (Piece::Body(&line[s..i]), false)
            };
            i = skip_blanks(b, i);
            if quoted_name && name.is_none() && i < b.len() && (b[i] == b',' || b[i] == b'}') {
                // `{"metric.name", ...}`: a quoted name alone is the metric name.
                if label.get(scratch).is_empty() {
                    return Err("the quoted metric name is empty".into());
                }
                name = Some(label);
            } else {
                if i >= b.len() || b[i] != b'=' {
                    return Err(format!(
                        "expected '=' after label name {:?}, found {}",
                        clip(label.get(scratch), 64),
                        describe_char(line, i)
                    ));
                }
                i = skip_blanks(b, i + 1);
                if i >= b.len() || b[i] != b'"' {
                    return Err(format!(
                        "expected a quoted value for label {:?}, found {}",
                        clip(label.get(scratch), 64),
                        describe_char(line, i)
                    ));
                }
                let (value, next) = quoted(line, i, scratch)?;
                i = next;
                pieces.push((label, value));
            }
            i = skip_blanks(b, i);
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {}
                _ => return Err(format!("expected ',' or '}}' in the label set, found {}", describe_char(line, i))),
            }
        }
    }
    let Some(name) = name else { return Err("the label set has no metric name".into()) };
    if i >= b.len() || (b[i] != b' ' && b[i] != b'\t') {
        return Err(match b.get(i) {
            None => "the sample has no value".into(),
            Some(_) => format!("expected a blank before the value, found {}", describe_char(line, i)),
        });
    }
    i = skip_blanks(b, i);
    let v_end = token_end(b, i);
    if v_end == i {
        return Err("the sample has no value".into());
    }
    let vtok = &line[i..v_end];
    let value = parse_go_float(vtok).ok_or_else(|| format!("value {:?} is not a number", clip(vtok, 64)))?;
    i = skip_blanks(b, v_end);
    let mut t_ms = None;
    if i < b.len() && b[i] != b'#' {
        let t_end = token_end(b, i);
        let ttok = &line[i..t_end];
        t_ms = Some(if openmetrics { om_timestamp(ttok)? } else { prom_timestamp(ttok)? });
        i = skip_blanks(b, t_end);
    }
    let exemplar = i < b.len();
    if exemplar && (b[i] != b'#' || !line[i + 1..].trim_start().starts_with('{')) {
        return Err(format!(
            "unexpected text after the {}: {:?}",
            if t_ms.is_some() { "timestamp" } else { "value" },
            clip(&line[i..], 64)
        ));
    }
    Ok(ParsedSample { name, value, t_ms, exemplar })
}

fn prom_timestamp(tok: &str) -> Result<i64, String> {
    tok.parse::<i64>().map_err(|_| {
        if parse_go_float(tok).is_some() {
            format!(
                "timestamp {:?} is not an integer number of milliseconds (float seconds are OpenMetrics syntax: \
                 send Content-Type application/openmetrics-text or end the body with # EOF)",
                clip(tok, 64)
            )
        } else {
            format!("timestamp {:?} is not an integer number of milliseconds", clip(tok, 64))
        }
    })
}

fn om_timestamp(tok: &str) -> Result<i64, String> {
    let secs =
        parse_go_float(tok).ok_or_else(|| format!("timestamp {:?} is not a number of seconds", clip(tok, 64)))?;
    let ms = (secs * 1000.0).round();
    if !ms.is_finite() || ms.abs() >= 9.2e18 {
        return Err(format!("timestamp {:?} is out of range", clip(tok, 64)));
    }
    Ok(ms as i64)
}

/// Parses a float the way Go's `strconv.ParseFloat(s, 64)` does: decimal with optional exponent, `NaN`, `Inf`,
/// `Infinity` (any case, optional sign), and hexadecimal floats with a `p` exponent (`0x1.8p3`, underscores
/// allowed between digits). Returns `None` for anything else.
pub fn parse_go_float(s: &str) -> Option<f64> {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    if unsigned.len() > 1 && (unsigned.starts_with("0x") || unsigned.starts_with("0X")) {
        let v = parse_hex_float(&unsigned[2..])?;
        return Some(if s.starts_with('-') { -v } else { v });
    }
    // Rust's grammar is Go's decimal grammar plus `inf`/`infinity`/`nan` in any case, which Go also accepts.
    // Reject what Rust would take and Go would not: nothing known, but keep underscores out explicitly.
    if s.contains('_') {
        return None;
    }
    s.parse::<f64>().ok()
}

fn parse_hex_float(s: &str) -> Option<f64> {
    let (mant, exp) = s.split_once(['p', 'P'])?;
    let exp: i32 = exp.parse().ok()?;
    let mut bits: u64 = 0;
    let mut shift: i32 = 0; // binary exponent adjustment
    let mut seen_dot = false;
    let mut digits = 0;
    let mut prev_underscore = true;
    for c in mant.chars() {
        match c {
            '.' if !seen_dot => {
                seen_dot = true;
                prev_underscore = false;
            }
            '_' if !prev_underscore && !seen_dot => prev_underscore = true,
            _ => {
                let d = c.to_digit(16)?;
                prev_underscore = false;
                digits += 1;
                if bits >> 56 == 0 {
                    bits = (bits << 4) | u64::from(d);
                    if seen_dot {
                        shift -= 4;
                    }
                } else if !seen_dot {
                    shift += 4; // precision beyond 60 bits is dropped
                }
            }
        }
    }
    if digits == 0 || prev_underscore && mant.ends_with('_') {
        return None;
    }
    Some(bits as f64 * 2f64.powi(exp.checked_add(shift)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row = (Vec<(String, String)>, i64, f64);

    fn parse(body: &str, format: TextFormat) -> (Vec<Row>, TextStats) {
        let mut rows = Vec::new();
        let stats = parse_text(body, format, 42, |labels, t, v| {
            rows.push((labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(), t, v));
        });
        (rows, stats)
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    /// Reads a sample file from `shared/data/exposition`, which sits beside the repository (`../shared` from the
    /// root crate; `../../shared` from a crate one level down).
    fn read(name: &str) -> String {
        let root = env!("CARGO_MANIFEST_DIR");
        let candidates =
            [format!("{root}/../shared/data/exposition/{name}"), format!("{root}/../../shared/data/exposition/{name}")];
        let path = candidates.iter().find(|p| std::path::Path::new(p).exists()).unwrap_or(&candidates[0]);
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn find<'r>(rows: &'r [Row], name: &str, extra: &[(&str, &str)]) -> &'r Row {
        rows.iter()
            .find(|(l, _, _)| {
                l.iter().any(|(n, v)| n == "__name__" && v == name)
                    && extra.iter().all(|(en, ev)| l.iter().any(|(n, v)| n == en && v == ev))
            })
            .unwrap_or_else(|| panic!("no sample {name} {extra:?}"))
    }

    fn assert_sorted_with_name(rows: &[Row]) {
        for (l, _, _) in rows {
            assert!(l.windows(2).all(|w| w[0].0 < w[1].0), "{l:?}");
            assert!(l.iter().any(|(n, v)| n == "__name__" && !v.is_empty()));
        }
    }

    #[test]
    fn alltypes_237_families() {
        let (rows, stats) = parse(&read("alltypes.237mfs.prom.txt"), TextFormat::Auto);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        // The file ends in `# EOF`, so Auto takes it for OpenMetrics; it has no timestamps or `_created` samples.
        assert!(stats.openmetrics);
        assert_eq!((rows.len(), stats.samples, stats.created_skipped), (1857, 1857, 0));
        assert_eq!(stats.metadata.len(), 237);
        let kinds = |k: &str| stats.metadata.iter().filter(|m| m.kind == k).count();
        assert_eq!((kinds("counter"), kinds("gauge"), kinds("histogram"), kinds("summary")), (112, 97, 15, 13));
        assert_sorted_with_name(&rows);
        assert!(rows.iter().all(|r| r.1 == 42));
        let r = find(&rows, "prometheus_tsdb_head_chunks_created_total", &[]);
        assert_eq!(r.2, 4.893432e+06);
        let r = find(
            &rows,
            "prometheus_rule_evaluations_total",
            &[("rule_group", "/etc/prometheus/rules/ansible_managed.yml;ansible managed alert rules")],
        );
        assert_eq!(r.2, 118090.0);
        // The same body read as the Prometheus format gives the same samples.
        let (rows2, stats2) = parse(&read("alltypes.237mfs.prom.txt"), TextFormat::Prometheus);
        assert!(!stats2.openmetrics && stats2.errors.is_empty());
        assert_eq!(rows2.len(), 1857);
    }

    #[test]
    fn alltypes_5_families_openmetrics() {
        let (rows, stats) = parse(&read("alltypes.5mfs.om.txt"), TextFormat::Auto);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        assert!(stats.openmetrics);
        assert_eq!((rows.len(), stats.created_skipped, stats.exemplars), (44, 9, 6));
        assert_eq!(stats.metadata.len(), 5);
        assert_eq!(stats.metadata[1].metric, "promhttp_metric_handler_errors");
        assert_eq!(stats.metadata[1].kind, "counter");
        assert_eq!(stats.metadata[0].help, "Build information about the main Go module.");
        assert_sorted_with_name(&rows);
        let r = find(&rows, "go_build_info", &[]);
        assert_eq!(r.0, labels(&[("__name__", "go_build_info")])); // empty label values dropped
        let r = find(&rows, "rpc_durations_histogram_seconds_bucket", &[("le", "-0.0002899999999999998")]);
        assert_eq!(r.2, 3.0);
        let r = find(&rows, "rpc_durations_seconds", &[("service", "normal"), ("quantile", "0.5")]);
        assert_eq!(r.2, -5.066758674917046e-06);
        assert!(rows.iter().all(|(l, _, _)| !l.iter().any(|(n, v)| n == "__name__" && v.ends_with("_created"))));
    }

    #[test]
    fn one_histogram_openmetrics() {
        let (rows, stats) = parse(&read("1histogram.om.txt"), TextFormat::Auto);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        assert_eq!(rows.len(), 42);
        let r = find(&rows, "golang_manual_histogram_seconds_bucket", &[("port", "5002"), ("le", "10.0")]);
        assert_eq!(r.2, 1.0);
        assert_eq!(r.0.len(), 5); // __name__, address, generation, port, le
    }

    #[test]
    fn node_exporter_output() {
        let (rows, stats) = parse(&read("node_exporter-e2e-output.prom.txt"), TextFormat::Auto);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        assert!(!stats.openmetrics);
        assert_eq!(rows.len(), 3027);
        assert_eq!(stats.metadata.iter().filter(|m| !m.kind.is_empty()).count(), 1228);
        assert_eq!(stats.metadata.iter().filter(|m| m.kind == "unknown").count(), 334);
        assert_sorted_with_name(&rows);
        let r = find(&rows, "node_bcachefs_device_info", &[("device", "10")]);
        assert!(r.0.contains(&("state".into(), "[rw] ro evacuating spare".into())));
    }

    #[test]
    fn prometheus_common_expfmt_text() {
        let (rows, stats) = parse(&read("prometheus-common-expfmt-text.prom.txt"), TextFormat::Auto);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        assert_eq!(rows.len(), 248);
        assert_eq!(stats.metadata.len(), 37);
        assert_sorted_with_name(&rows);
    }

    #[test]
    fn escapes_special_values_and_timestamps() {
        let body = "# HELP m A \\\\ help\\nline\n# TYPE m gauge\n\
                    m{b=\"x\\\"y\",a=\"1\\\\2\",c=\"l1\\nl2\",} NaN 1700000000123\n\
                    m{a=\"p\"} +Inf\n\
                    m{a=\"q\"}\t-Inf\t-5\n\
                    m{a=\"r\"} 0x1p-2\n\
                    m{ a = \"s\" , } 1.5e3\n\
                    {\"my.metric\", \"http.method\"=\"GET\"} 7\n";
        let (rows, stats) = parse(body, TextFormat::Auto);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        assert_eq!(
            stats.metadata,
            vec![MetricMetadata {
                metric: "m".into(),
                kind: "gauge".into(),
                help: "A \\ help\nline".into(),
                unit: String::new()
            }]
        );
        assert_eq!(rows[0].0, labels(&[("__name__", "m"), ("a", "1\\2"), ("b", "x\"y"), ("c", "l1\nl2")]));
        assert!(rows[0].2.is_nan());
        assert_eq!(rows[0].1, 1_700_000_000_123);
        assert_eq!((rows[1].1, rows[1].2), (42, f64::INFINITY));
        assert_eq!((rows[2].1, rows[2].2), (-5, f64::NEG_INFINITY));
        assert_eq!(rows[3].2, 0.25);
        assert_eq!(rows[4].2, 1500.0);
        assert_eq!(rows[5].0, labels(&[("__name__", "my.metric"), ("http.method", "GET")]));
    }

    #[test]
    fn openmetrics_timestamps_are_seconds() {
        let body =
            "# TYPE a counter\n# UNIT a seconds\na_total 1 1700000000.5\na_created 1.6e9\nb 2 1700000000\n# EOF\n";
        let (rows, stats) = parse(body, TextFormat::Auto);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        assert_eq!(rows.iter().map(|r| r.1).collect::<Vec<_>>(), vec![1_700_000_000_500, 1_700_000_000_000]);
        assert_eq!(stats.created_skipped, 1);
        assert_eq!(stats.metadata[0].unit, "seconds");
        // In the Prometheus format, a float timestamp is an error that says what to do.
        let (rows, stats) = parse("a_total 1 1700000000.5\n", TextFormat::Prometheus);
        assert!(rows.is_empty());
        assert!(stats.errors[0].message.contains("OpenMetrics"), "{}", stats.errors[0]);
        // A `_created` sample is kept in the Prometheus format.
        let (rows, _) = parse("# TYPE a counter\na_created 5\n", TextFormat::Prometheus);
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn openmetrics_end_of_body_rules() {
        let (rows, stats) = parse("a 1\n# EOF\nb 2\n", TextFormat::OpenMetrics);
        assert_eq!(rows.len(), 1);
        assert_eq!(stats.errors[0].line, 3);
        let (rows, stats) = parse("a 1\n", TextFormat::OpenMetrics);
        assert_eq!(rows.len(), 1);
        assert!(stats.errors[0].message.contains("does not end with # EOF"));
    }

    #[test]
    fn bad_lines_are_reported_and_good_ones_kept() {
        let body = "ok 1\n\
                    1bad 2\n\
                    m{a=\"x\" 3\n\
                    m{a=x} 3\n\
                    m{a=\"\\t\"} 3\n\
                    m 12abc\n\
                    m\n\
                    m{a=\"1\",a=\"2\"} 1\n\
                    # TYPE m bogus\n\
                    m 1 2 3\n\
                    m{0a=\"1\"} 1\n\
                    ok2{x=\"y\"} 2 17\n";
        let (rows, stats) = parse(body, TextFormat::Auto);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1], (labels(&[("__name__", "ok2"), ("x", "y")]), 17, 2.0));
        let lines: Vec<usize> = stats.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(stats.error_lines, 10);
        let msgs: Vec<String> = stats.errors.iter().map(ToString::to_string).collect();
        assert!(msgs[0].contains("must not start with a digit"), "{}", msgs[0]);
        assert!(msgs[2].contains("expected a quoted value for label \"a\""), "{}", msgs[2]);
        assert!(msgs[3].contains("invalid escape"), "{}", msgs[3]);
        assert!(msgs[4].contains("value \"12abc\" is not a number"), "{}", msgs[4]);
        assert!(msgs[6].contains("\"a\" appears more than once"), "{}", msgs[6]);
        assert!(msgs[7].contains("unknown type \"bogus\""), "{}", msgs[7]);
        assert!(msgs[8].contains("unexpected text after the timestamp"), "{}", msgs[8]);
    }

    #[test]
    fn quoted_values_may_hold_delimiters_and_gauge_created_is_kept() {
        let body = "# TYPE g gauge\ng_created{a=\"x}#, y=\\\"z\\\"\"} 1 2.5 # {t=\"1\"} 3\n# EOF\n";
        let (rows, stats) = parse(body, TextFormat::Auto);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        assert_eq!(rows, vec![(labels(&[("__name__", "g_created"), ("a", "x}#, y=\"z\"")]), 2500, 1.0)]);
        assert_eq!((stats.created_skipped, stats.exemplars), (0, 1));
    }

    #[test]
    fn error_list_is_capped_but_counts_every_line() {
        let body = "bad line here\n".repeat(250);
        let (rows, stats) = parse(&body, TextFormat::Prometheus);
        assert!(rows.is_empty());
        assert_eq!((stats.errors.len(), stats.error_lines), (super::super::MAX_LINE_ERRORS, 250));
        assert_eq!(stats.errors[99].line, 100);
    }

    #[test]
    fn go_floats() {
        for (s, v) in [("1", 1.0), ("-1.5e-3", -1.5e-3), (".5", 0.5), ("1.", 1.0), ("+Inf", f64::INFINITY)] {
            assert_eq!(parse_go_float(s), Some(v), "{s}");
        }
        assert_eq!(parse_go_float("-infinity"), Some(f64::NEG_INFINITY));
        assert!(parse_go_float("nan").unwrap().is_nan());
        assert_eq!(parse_go_float("0x1.8p1"), Some(3.0));
        assert_eq!(parse_go_float("-0X_1p4"), None);
        assert_eq!(parse_go_float("0x1_0p0"), Some(16.0));
        for bad in ["", "0x1", "1_000", "abc", "1e", "--1", "0xp1"] {
            assert_eq!(parse_go_float(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_type_detection() {
        assert_eq!(
            TextFormat::from_content_type(Some("application/openmetrics-text; version=1.0.0; charset=utf-8")),
            TextFormat::OpenMetrics
        );
        assert_eq!(TextFormat::from_content_type(Some("text/plain; version=0.0.4")), TextFormat::Prometheus);
        assert_eq!(TextFormat::from_content_type(Some("text/plain")), TextFormat::Auto);
        assert_eq!(TextFormat::from_content_type(None), TextFormat::Auto);
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let alphabet = ['a', '{', '}', '"', '\\', '=', ',', ' ', '#', '1', '.', 'e', '\n', 'é', 'x', '_', 'n'];
        for _ in 0..5000 {
            let s: String = (0..30)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = parse(&s, TextFormat::Auto);
            let _ = parse(&s, TextFormat::OpenMetrics);
        }
    }
}
