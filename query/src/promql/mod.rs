//! PromQL evaluation engine (Prometheus 3 float semantics).
//!
//! Queries are parsed with `promql-parser` and converted into our own IR ([`Expr`]). Every query is evaluated as a
//! range evaluation over a grid of steps (an instant query is a single step), series-major: each node yields, per
//! series, one optional value per step. Selectors fetch each series once for the whole window through a
//! [`SeriesSource`].
//!
//! Annotations are returned as text (`PromQL warning: ...` / `PromQL info: ...`) without the `(line:col)` position
//! suffix Prometheus appends, because the parser does not expose source positions.
//!
//! Scope: float samples only (native histograms are not supported). Experimental Prometheus features that
//! promql-parser 0.11 cannot parse are handled by small text pre-passes before parsing: duration expressions
//! (`[5m+1m]`, `offset (1h/2)`, `[step()]`), the `anchored`/`smoothed` range modifiers, `info()` label selectors
//! whose matchers all match the empty string, and Go-style `\xNN` byte escapes. `fill()`/`fill_left()`/
//! `fill_right()`, `limitk`, `limit_ratio`, `info()`, `histogram_quantiles`, `min_of`/`max_of`, `step()`/`range()`/
//! `start()`/`end()` and the other experimental functions are evaluated.

mod aggr;
mod ast;
mod binop;
mod durexpr;
mod eval;
mod functions;
#[cfg(test)]
mod promqltest;
pub mod series;
#[cfg(test)]
mod tests;

pub use ast::{AggOp, Aggregate, At, BinOp, Binary, Card, Expr, Selector, Subquery, ValType};
pub use durexpr::DurExpr;
pub use eval::too_many_samples;
pub use functions::civil_from_days;

/// A label set, sorted by label name; includes `__name__` when present.
pub type Labels = Vec<(String, String)>;

/// Name of the metric name label.
pub const METRIC_NAME: &str = "__name__";

/// Bit pattern of Prometheus' staleness marker.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Returns true if `v` is exactly the staleness marker (not any NaN).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// How a label matcher compares a label value.
#[derive(Debug, Clone)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`, compiled fully anchored as `^(?s:VALUE)$`.
    Re(regex::Regex),
    /// `!~`, compiled fully anchored as `^(?s:VALUE)$`.
    NotRe(regex::Regex),
}

/// A label matcher of a selector.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// Comparison.
    pub op: MatchOp,
    /// The value as written in the query (the regex source for regex matchers).
    pub value: String,
}

impl Matcher {
    /// Builds a matcher, compiling regexes fully anchored.
    pub fn new(name: &str, op_str: &str, value: &str) -> Result<Matcher, EvalError> {
        let op = match op_str {
            "=" => MatchOp::Equal,
            "!=" => MatchOp::NotEqual,
            "=~" => MatchOp::Re(anchored_regex(value)?),
            "!~" => MatchOp::NotRe(anchored_regex(value)?),
            _ => return Err(EvalError::BadData(format!("invalid match operator {op_str}"))),
        };
        Ok(Matcher { name: name.to_string(), op, value: value.to_string() })
    }

    /// Whether the label value `v` satisfies the matcher (a missing label matches as `""`).
    pub fn matches(&self, v: &str) -> bool {
        match &self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::Re(re) => re.is_match(v),
            MatchOp::NotRe(re) => !re.is_match(v),
        }
    }

    /// Whether a label set satisfies the matcher.
    pub fn matches_labels(&self, labels: &Labels) -> bool {
        self.matches(label_value(labels, &self.name).unwrap_or(""))
    }
}

/// Compiles `re` anchored at both ends with `.` matching newlines.
pub(crate) fn anchored_regex(re: &str) -> Result<regex::Regex, EvalError> {
    regex::Regex::new(&format!("^(?s:{re})$"))
        .map_err(|e| EvalError::BadData(format!("invalid regular expression: {e}")))
}

/// Looks up a label value in a sorted label set.
pub fn label_value<'a>(labels: &'a Labels, name: &str) -> Option<&'a str> {
    labels.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// One stored series: labels and samples (milliseconds, ascending timestamps).
#[derive(Debug, Clone)]
pub struct Series {
    /// Labels, sorted by name.
    pub labels: Labels,
    /// Sample timestamps in milliseconds, ascending.
    pub t: arrow_buffer::ScalarBuffer<i64>,
    /// Sample values (staleness markers keep their bit pattern).
    pub v: arrow_buffer::ScalarBuffer<f64>,
}

/// Storage behind the engine.
pub trait SeriesSource {
    /// Every series matching all matchers, with its samples in [mint_ms, maxt_ms] (inclusive). Order not guaranteed.
    fn select(&self, matchers: &[Matcher], mint_ms: i64, maxt_ms: i64) -> Result<Vec<Series>, EvalError>;
}

/// Engine limits and defaults.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Lookback delta for instant selectors (Prometheus default 5 minutes).
    pub lookback_ms: i64,
    /// Maximum number of samples held by one node at one step.
    pub max_samples: usize,
    /// Step of subqueries that do not give one.
    pub default_subquery_step_ms: i64,
    /// Evaluation deadline; past it the query fails with [`EvalError::Timeout`].
    pub deadline: Option<std::time::Instant>,
    /// Threads a range function over many series may use at once (`query.query_parallelism`).
    pub threads: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_ms: 300_000,
            max_samples: 15_000_000,
            default_subquery_step_ms: 60_000,
            deadline: None,
            threads: 1,
        }
    }
}

/// A query result value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar at time `t` (ms).
    Scalar {
        /// Timestamp in ms.
        t: i64,
        /// Value.
        v: f64,
    },
    /// A string at time `t` (ms).
    String {
        /// Timestamp in ms.
        t: i64,
        /// Value.
        s: String,
    },
    /// An instant vector: labels, timestamp (ms), value.
    Vector(Vec<(Labels, i64, f64)>),
    /// A range vector / range query result, sorted by labels.
    Matrix(Vec<(Labels, Vec<(i64, f64)>)>),
}

/// The result of a query.
#[derive(Debug, Clone)]
pub struct QueryResult {
    /// The value.
    pub value: Value,
    /// Warning annotations, `PromQL warning: ...`.
    pub warnings: Vec<String>,
    /// Info annotations, `PromQL info: ...`.
    pub infos: Vec<String>,
    /// Number of samples the query touched.
    pub samples_scanned: u64,
}

impl QueryResult {
    /// A range result with no series.
    pub fn empty_matrix() -> QueryResult {
        QueryResult { value: Value::Matrix(Vec::new()), warnings: Vec::new(), infos: Vec::new(), samples_scanned: 0 }
    }
}

/// Errors of parsing and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Bad query or parameters (HTTP 400, `bad_data`).
    #[error("{0}")]
    BadData(String),
    /// Evaluation failure (HTTP 422, `execution`).
    #[error("{0}")]
    Execution(String),
    /// The deadline passed (HTTP 503, `timeout`).
    #[error("query timed out in expression evaluation")]
    Timeout,
    /// The query was canceled (HTTP 499, `canceled`).
    #[error("query was canceled in expression evaluation")]
    Canceled,
}

/// `promql_parser`'s parser, whose panics on some inputs (a duration of 10^35 seconds panics in
/// `Duration::from_secs_f64`, found by `fuzz/`) become a 400 instead of killing the request's task.
fn parse_guarded(q: &str) -> Result<promql_parser::parser::Expr, EvalError> {
    match std::panic::catch_unwind(|| promql_parser::parser::parse(q)) {
        Ok(res) => res.map_err(EvalError::BadData),
        Err(_) => Err(EvalError::BadData(
            "the query could not be parsed: a number or duration in it is out of range".to_string(),
        )),
    }
}

/// Parses a PromQL query into the engine's IR.
pub fn parse(query: &str) -> Result<Expr, EvalError> {
    crate::depth::check(query).map_err(EvalError::BadData)?;
    let pre = go_byte_escapes(query);
    let q = pre.as_deref().unwrap_or(query);
    let pre2 = ast::rewrite_extended_modifiers(q);
    let q = pre2.as_deref().unwrap_or(q);
    let pre3 = ast::rewrite_info_selector(q);
    let q = pre3.as_deref().unwrap_or(q);
    let pre4 = durexpr::rewrite(q)?;
    let q = pre4.as_ref().map_or(q, |r| r.query.as_str());
    let e = parse_guarded(q)?;
    let mut out = ast::convert(&e)?;
    if let Some(r) = &pre4
        && !r.dynamic.is_empty()
    {
        out.attach_dynamic(&r.dynamic);
    }
    Ok(out)
}

/// Parses a series selector (`up{job="x"}`, `{__name__=~"a.*"}`) into matchers, as for `match[]` parameters.
pub fn parse_selector(s: &str) -> Result<Vec<Matcher>, EvalError> {
    match parse(s)? {
        Expr::Vector(sel) if sel.offset_ms == 0 && sel.at.is_none() && !sel.anchored && !sel.smoothed => {
            Ok(sel.matchers)
        }
        _ => Err(EvalError::BadData(format!("invalid series selector: {s}"))),
    }
}

/// Pretty-prints a query, for `/api/v1/format_query`.
pub fn format_query(query: &str) -> Result<String, EvalError> {
    let e = parse_guarded(query)?;
    Ok(e.prettify())
}

/// Evaluates `expr` at one instant `t_ms`.
pub fn eval_instant(
    opts: &EngineOptions,
    src: &dyn SeriesSource,
    expr: &Expr,
    t_ms: i64,
) -> Result<QueryResult, EvalError> {
    eval::run(opts, src, expr, t_ms, t_ms, 1, true)
}

/// Evaluates `expr` at `start_ms, start_ms + step_ms, ... <= end_ms`; the result is always a matrix.
pub fn eval_range(
    opts: &EngineOptions,
    src: &dyn SeriesSource,
    expr: &Expr,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
) -> Result<QueryResult, EvalError> {
    if step_ms <= 0 {
        return Err(EvalError::BadData("zero or negative query resolution step widths are not accepted".into()));
    }
    if end_ms < start_ms {
        return Err(EvalError::BadData("end timestamp must not be before start time".into()));
    }
    eval::run(opts, src, expr, start_ms, end_ms, step_ms, false)
}

/// Formats a float like Go's `strconv.FormatFloat(v, 'f', -1, 64)`, with `NaN`, `+Inf` and `-Inf`.
pub use wire::prom::format_float;

/// Formats a label set the way Prometheus prints it: `{a="b", c="d"}`.
pub fn labels_to_string(labels: &Labels) -> String {
    let mut s = String::from("{");
    for (i, (n, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(n);
        s.push('=');
        s.push_str(&go_quote(v));
    }
    s.push('}');
    s
}

/// First code point of the private-use range that stands for raw (non-UTF-8) bytes from `\xNN` escapes.
const RAW_BYTE_BASE: u32 = 0x10_FF00;

/// promql-parser decodes `\xNN` as the code point U+00NN, while Go (and Prometheus) produce the raw byte. This
/// rewrites runs of high `\xNN` escapes inside quoted strings before parsing: valid UTF-8 sequences become their
/// characters, invalid bytes become private-use characters (`RAW_BYTE_BASE + byte`) that label name validation
/// rejects and [`go_quote`] prints back as `\xNN`. Returns `None` when there is nothing to rewrite.
fn go_byte_escapes(q: &str) -> Option<String> {
    if !q.contains("\\x") {
        return None;
    }
    let b = q.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = String::with_capacity(q.len());
    let mut i = 0;
    let mut quote: Option<u8> = None;
    let mut changed = false;
    while i < b.len() {
        let c = b[i];
        match quote {
            None => {
                if c == b'"' || c == b'\'' || c == b'`' {
                    quote = Some(c);
                }
            }
            Some(qc) => {
                if c == qc {
                    quote = None;
                } else if c == b'\\' && qc != b'`' {
                    // Collect a run of \xNN escapes with high bytes.
                    let mut bytes = Vec::new();
                    let mut j = i;
                    while j + 3 < b.len() && b[j] == b'\\' && b[j + 1] == b'x' {
                        match (hex(b[j + 2]), hex(b[j + 3])) {
                            (Some(h), Some(l)) if h >= 8 => bytes.push((h * 16 + l) as u8),
                            _ => break,
                        }
                        j += 4;
                    }
                    if bytes.is_empty() {
                        // Copy the escape pair verbatim.
                        out.push('\\');
                        if i + 1 < b.len() {
                            let ch = q[i + 1..].chars().next().unwrap_or('\\');
                            out.push(ch);
                            i += 1 + ch.len_utf8();
                        } else {
                            i += 1;
                        }
                        continue;
                    }
                    changed = true;
                    for chunk in bytes.utf8_chunks() {
                        out.push_str(chunk.valid());
                        for &x in chunk.invalid() {
                            out.push(char::from_u32(RAW_BYTE_BASE + x as u32).unwrap_or('\u{fffd}'));
                        }
                    }
                    i = j;
                    continue;
                }
            }
        }
        let ch = q[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    changed.then_some(out)
}

/// Renders raw-byte placeholders (see [`go_byte_escapes`]) as `\xNN` for messages.
pub(crate) fn display_raw(s: &str) -> String {
    s.chars()
        .map(|c| {
            let u = c as u32;
            if (RAW_BYTE_BASE..=RAW_BYTE_BASE + 0xff).contains(&u) {
                format!("\\x{:02x}", u - RAW_BYTE_BASE)
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Whether `name` is a valid label name (Prometheus 3: any non-empty valid UTF-8).
pub(crate) fn valid_label_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| (c as u32) >= RAW_BYTE_BASE && (c as u32) <= RAW_BYTE_BASE + 0xff)
}

/// Quotes a string like Go's `strconv.Quote` (enough for label values).
pub(crate) fn go_quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => s.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) >= RAW_BYTE_BASE && (c as u32) <= RAW_BYTE_BASE + 0xff => {
                s.push_str(&format!("\\x{:02x}", c as u32 - RAW_BYTE_BASE))
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}
