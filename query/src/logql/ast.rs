//! The LogQL syntax tree. Parsing compiles what can be compiled (regular expressions, templates,
//! patterns, JSON paths) so that evaluation never fails on syntax; `Display` prints the canonical
//! query text, which `/loki/api/v1/format_query` returns.

use std::fmt;

use regex::Regex;
use store::LabelMatcher;

use super::extract::{JsonPath, Pattern};
use crate::template::Template;

/// A whole query: a log query (entries) or a metric query (samples).
#[derive(Debug, Clone)]
pub enum Expr {
    Log(LogExpr),
    Metric(MetricExpr),
}

/// A stream selector and the pipeline its entries go through.
#[derive(Debug, Clone)]
pub struct LogExpr {
    pub matchers: Vec<LabelMatcher>,
    pub stages: Vec<Stage>,
}

/// One stage of a log pipeline.
#[derive(Debug, Clone)]
pub enum Stage {
    LineFilter(LineFilter),
    Parser(Parser),
    LabelFilter(LabelFilter),
    LineFormat(Box<Formatted>),
    LabelFormat(Vec<LabelFmt>),
    Drop(Vec<LabelSel>),
    Keep(Vec<LabelSel>),
    Decolorize,
}

/// A template and its source text.
#[derive(Debug, Clone)]
pub struct Formatted {
    pub source: String,
    pub template: Template,
}

/// How a line filter tests a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    /// `|=`
    Contains,
    /// `!=`
    NotContains,
    /// `|~`
    Regex,
    /// `!~`
    NotRegex,
    /// `|>`
    Pattern,
    /// `!>`
    NotPattern,
}

impl FilterOp {
    pub fn negated(self) -> bool {
        matches!(self, FilterOp::NotContains | FilterOp::NotRegex | FilterOp::NotPattern)
    }

    fn symbol(self) -> &'static str {
        match self {
            FilterOp::Contains => "|=",
            FilterOp::NotContains => "!=",
            FilterOp::Regex => "|~",
            FilterOp::NotRegex => "!~",
            FilterOp::Pattern => "|>",
            FilterOp::NotPattern => "!>",
        }
    }
}

/// A line filter; several values are alternatives (`|= "a" or "b"`): a positive filter keeps a line that
/// matches any of them, a negative one keeps a line that matches none.
#[derive(Debug, Clone)]
pub struct LineFilter {
    pub op: FilterOp,
    pub values: Vec<FilterValue>,
}

/// One value of a line filter, compiled.
#[derive(Debug, Clone)]
pub struct FilterValue {
    pub text: String,
    /// For `|~` and `!~`: the unanchored expression. For `|>` and `!>`: the pattern as a regex.
    pub regex: Option<Regex>,
}

/// A parser stage.
#[derive(Debug, Clone)]
pub enum Parser {
    /// `| json` or `| json a="path", b`: (label, path) and the paths' source text.
    Json { fields: Vec<(String, JsonPath)>, sources: Vec<String> },
    /// `| logfmt [--strict] [--keep-empty] [a, b="key"]`.
    Logfmt { strict: bool, keep_empty: bool, fields: Vec<(String, String)> },
    /// `| regexp "(?P<name>...)"`.
    Regexp { source: String, regex: Regex },
    /// `| pattern "<a> <_>"`.
    Pattern { source: String, pattern: Pattern },
    /// `| unpack`.
    Unpack,
}

/// A label filter expression.
#[derive(Debug, Clone)]
pub enum LabelFilter {
    And(Box<LabelFilter>, Box<LabelFilter>),
    Or(Box<LabelFilter>, Box<LabelFilter>),
    Paren(Box<LabelFilter>),
    Cmp(LabelCmp),
}

/// A comparison of one label with a value.
#[derive(Debug, Clone)]
pub struct LabelCmp {
    pub name: String,
    pub op: CmpOp,
    pub value: CmpValue,
}

/// Comparison operators of label filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
    Re,
    Nre,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    fn symbol(self, numeric: bool) -> &'static str {
        match self {
            CmpOp::Eq if numeric => "==",
            CmpOp::Eq => "=",
            CmpOp::Neq => "!=",
            CmpOp::Re => "=~",
            CmpOp::Nre => "!~",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }
}

/// The right-hand side of a label comparison.
#[derive(Debug, Clone)]
pub enum CmpValue {
    Str(String),
    /// For `=~` and `!~`: the anchored expression.
    Regex(String, Regex),
    Number(f64),
    /// Seconds, with the source text.
    Duration(f64, String),
    /// Bytes, with the source text.
    Bytes(f64, String),
}

impl CmpValue {
    fn is_numeric(&self) -> bool {
        matches!(self, CmpValue::Number(_) | CmpValue::Duration(..) | CmpValue::Bytes(..))
    }
}

/// One assignment of `label_format`.
#[derive(Debug, Clone)]
pub enum LabelFmt {
    /// `dst=src`: renames.
    Rename { dst: String, src: String },
    /// `dst="template"`.
    Template { dst: String, value: Formatted },
}

/// A label named by `drop` or `keep`, optionally only with a matching value.
#[derive(Debug, Clone)]
pub struct LabelSel {
    pub name: String,
    pub matcher: Option<LabelMatcher>,
}

/// A metric query.
#[derive(Debug, Clone)]
pub enum MetricExpr {
    Range(RangeAgg),
    Vector(VectorAgg),
    Binary(Box<Binary>),
    Literal(f64),
    /// `vector(s)`.
    VectorLit(f64),
    LabelReplace(Box<LabelReplace>),
    Paren(Box<MetricExpr>),
}

/// Range aggregation functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    Count,
    Rate,
    RateCounter,
    Bytes,
    BytesRate,
    Absent,
    Sum,
    Avg,
    Min,
    Max,
    Stdvar,
    Stddev,
    Quantile,
    First,
    Last,
}

impl RangeOp {
    pub fn from_name(name: &str) -> Option<RangeOp> {
        Some(match name {
            "count_over_time" => RangeOp::Count,
            "rate" => RangeOp::Rate,
            "rate_counter" => RangeOp::RateCounter,
            "bytes_over_time" => RangeOp::Bytes,
            "bytes_rate" => RangeOp::BytesRate,
            "absent_over_time" => RangeOp::Absent,
            "sum_over_time" => RangeOp::Sum,
            "avg_over_time" => RangeOp::Avg,
            "min_over_time" => RangeOp::Min,
            "max_over_time" => RangeOp::Max,
            "stdvar_over_time" => RangeOp::Stdvar,
            "stddev_over_time" => RangeOp::Stddev,
            "quantile_over_time" => RangeOp::Quantile,
            "first_over_time" => RangeOp::First,
            "last_over_time" => RangeOp::Last,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            RangeOp::Count => "count_over_time",
            RangeOp::Rate => "rate",
            RangeOp::RateCounter => "rate_counter",
            RangeOp::Bytes => "bytes_over_time",
            RangeOp::BytesRate => "bytes_rate",
            RangeOp::Absent => "absent_over_time",
            RangeOp::Sum => "sum_over_time",
            RangeOp::Avg => "avg_over_time",
            RangeOp::Min => "min_over_time",
            RangeOp::Max => "max_over_time",
            RangeOp::Stdvar => "stdvar_over_time",
            RangeOp::Stddev => "stddev_over_time",
            RangeOp::Quantile => "quantile_over_time",
            RangeOp::First => "first_over_time",
            RangeOp::Last => "last_over_time",
        }
    }

    /// Functions that need `| unwrap`.
    pub fn needs_unwrap(self) -> bool {
        !matches!(self, RangeOp::Count | RangeOp::Rate | RangeOp::Bytes | RangeOp::BytesRate | RangeOp::Absent)
    }

    /// Functions that may take `| unwrap`.
    pub fn allows_unwrap(self) -> bool {
        self.needs_unwrap() || matches!(self, RangeOp::Rate | RangeOp::Absent)
    }
}

/// `op(log-range)` with optional parameter and grouping.
#[derive(Debug, Clone)]
pub struct RangeAgg {
    pub op: RangeOp,
    pub param: Option<f64>,
    pub log: LogExpr,
    pub range_ns: i64,
    pub offset_ns: i64,
    pub unwrap: Option<Unwrap>,
    pub grouping: Option<Grouping>,
}

/// `| unwrap [conv(]label[)]` and the label filters after it.
#[derive(Debug, Clone)]
pub struct Unwrap {
    pub label: String,
    pub conv: UnwrapConv,
    pub filters: Vec<LabelFilter>,
}

/// How an unwrapped label's value becomes a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnwrapConv {
    Number,
    Duration,
    DurationSeconds,
    Bytes,
}

/// `by (...)` or `without (...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    pub without: bool,
    pub labels: Vec<String>,
}

/// Vector aggregation operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Stddev,
    Stdvar,
    Topk,
    Bottomk,
    Sort,
    SortDesc,
}

impl VectorOp {
    pub fn from_name(name: &str) -> Option<VectorOp> {
        Some(match name {
            "sum" => VectorOp::Sum,
            "avg" => VectorOp::Avg,
            "min" => VectorOp::Min,
            "max" => VectorOp::Max,
            "count" => VectorOp::Count,
            "stddev" => VectorOp::Stddev,
            "stdvar" => VectorOp::Stdvar,
            "topk" => VectorOp::Topk,
            "bottomk" => VectorOp::Bottomk,
            "sort" => VectorOp::Sort,
            "sort_desc" => VectorOp::SortDesc,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            VectorOp::Sum => "sum",
            VectorOp::Avg => "avg",
            VectorOp::Min => "min",
            VectorOp::Max => "max",
            VectorOp::Count => "count",
            VectorOp::Stddev => "stddev",
            VectorOp::Stdvar => "stdvar",
            VectorOp::Topk => "topk",
            VectorOp::Bottomk => "bottomk",
            VectorOp::Sort => "sort",
            VectorOp::SortDesc => "sort_desc",
        }
    }
}

/// `op [grouping] ([param,] expr)`.
#[derive(Debug, Clone)]
pub struct VectorAgg {
    pub op: VectorOp,
    pub param: Option<f64>,
    pub grouping: Option<Grouping>,
    pub expr: Box<MetricExpr>,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Eq,
    Neq,
    Gt,
    Ge,
    Lt,
    Le,
    And,
    Or,
    Unless,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Pow => "^",
            BinOp::Eq => "==",
            BinOp::Neq => "!=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Unless => "unless",
        }
    }

    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And | BinOp::Unless => 2,
            BinOp::Eq | BinOp::Neq | BinOp::Gt | BinOp::Ge | BinOp::Lt | BinOp::Le => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Mod => 5,
            BinOp::Pow => 6,
        }
    }

    pub fn is_comparison(self) -> bool {
        matches!(self, BinOp::Eq | BinOp::Neq | BinOp::Gt | BinOp::Ge | BinOp::Lt | BinOp::Le)
    }

    pub fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }
}

/// Vector matching of a binary operation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matching {
    /// `on(...)` (true) or `ignoring(...)` (false); `None` matches on all labels.
    pub on: Option<(bool, Vec<String>)>,
    /// `group_left(...)` (true) or `group_right(...)` (false).
    pub group: Option<(bool, Vec<String>)>,
}

#[derive(Debug, Clone)]
pub struct Binary {
    pub op: BinOp,
    pub return_bool: bool,
    pub matching: Matching,
    pub lhs: MetricExpr,
    pub rhs: MetricExpr,
}

/// `label_replace(expr, dst, replacement, src, regex)`.
#[derive(Debug, Clone)]
pub struct LabelReplace {
    pub expr: MetricExpr,
    pub dst: String,
    pub replacement: String,
    pub src: String,
    pub source_regex: String,
    pub regex: Regex,
}

// ----- printing -----

/// Quotes a string as LogQL (Go) does.
pub fn quote(s: &str) -> String {
    crate::template::go_quote(s)
}

/// Prints a duration in nanoseconds as Prometheus does (`1h30m`, `5m`, `250ms`).
pub fn format_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut rest = ns.unsigned_abs();
    if ns < 0 {
        out.push('-');
    }
    let units: [(&str, u64); 7] = [
        ("y", 365 * 86_400_000_000_000),
        ("w", 7 * 86_400_000_000_000),
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
    ];
    for (unit, size) in units {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if rest > 0 {
        out.push_str(&format!("{rest}ns"));
    }
    out
}

/// A number as Prometheus and Loki print sample values: `NaN`, `+Inf`, `-Inf`, or the shortest decimal.
pub fn format_number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Log(l) => l.fmt(f),
            Expr::Metric(m) => m.fmt(f),
        }
    }
}

impl fmt::Display for LogExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, m) in self.matchers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}{}{}", m.name, m.op.symbol(), quote(&m.value))?;
        }
        f.write_str("}")?;
        for stage in &self.stages {
            write!(f, " {stage}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::LineFilter(lf) => {
                let values: Vec<String> = lf.values.iter().map(|v| quote(&v.text)).collect();
                write!(f, "{} {}", lf.op.symbol(), values.join(" or "))
            }
            Stage::Parser(p) => match p {
                Parser::Json { fields, .. } if fields.is_empty() => f.write_str("| json"),
                Parser::Json { fields, sources } => {
                    let fields: Vec<String> =
                        fields.iter().zip(sources).map(|((n, _), src)| format!("{n}={}", quote(src))).collect();
                    write!(f, "| json {}", fields.join(", "))
                }
                Parser::Logfmt { strict, keep_empty, fields } => {
                    f.write_str("| logfmt")?;
                    if *strict {
                        f.write_str(" --strict")?;
                    }
                    if *keep_empty {
                        f.write_str(" --keep-empty")?;
                    }
                    if !fields.is_empty() {
                        let fields: Vec<String> = fields.iter().map(|(n, k)| format!("{n}={}", quote(k))).collect();
                        write!(f, " {}", fields.join(", "))?;
                    }
                    Ok(())
                }
                Parser::Regexp { source, .. } => write!(f, "| regexp {}", quote(source)),
                Parser::Pattern { source, .. } => write!(f, "| pattern {}", quote(source)),
                Parser::Unpack => f.write_str("| unpack"),
            },
            Stage::LabelFilter(lf) => write!(f, "| {lf}"),
            Stage::LineFormat(t) => write!(f, "| line_format {}", quote(&t.source)),
            Stage::LabelFormat(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|i| match i {
                        LabelFmt::Rename { dst, src } => format!("{dst}={src}"),
                        LabelFmt::Template { dst, value } => format!("{dst}={}", quote(&value.source)),
                    })
                    .collect();
                write!(f, "| label_format {}", items.join(", "))
            }
            Stage::Drop(sels) | Stage::Keep(sels) => {
                let name = if matches!(self, Stage::Drop(_)) { "drop" } else { "keep" };
                let sels: Vec<String> = sels
                    .iter()
                    .map(|s| match &s.matcher {
                        None => s.name.clone(),
                        Some(m) => format!("{}{}{}", s.name, m.op.symbol(), quote(&m.value)),
                    })
                    .collect();
                write!(f, "| {name} {}", sels.join(", "))
            }
            Stage::Decolorize => f.write_str("| decolorize"),
        }
    }
}

impl fmt::Display for LabelFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelFilter::And(a, b) => write!(f, "{a} and {b}"),
            LabelFilter::Or(a, b) => write!(f, "{a} or {b}"),
            LabelFilter::Paren(a) => write!(f, "({a})"),
            LabelFilter::Cmp(c) => {
                let op = c.op.symbol(c.value.is_numeric());
                match &c.value {
                    CmpValue::Str(s) | CmpValue::Regex(s, _) => write!(f, "{}{op}{}", c.name, quote(s)),
                    CmpValue::Number(n) => write!(f, "{}{op}{}", c.name, format_number(*n)),
                    CmpValue::Duration(_, src) | CmpValue::Bytes(_, src) => write!(f, "{}{op}{src}", c.name),
                }
            }
        }
    }
}

impl fmt::Display for Grouping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", if self.without { "without" } else { "by" }, self.labels.join(", "))
    }
}

impl fmt::Display for MetricExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricExpr::Range(r) => {
                write!(f, "{}(", r.op.name())?;
                if let Some(p) = r.param {
                    write!(f, "{}, ", format_number(p))?;
                }
                write!(f, "{}", r.log)?;
                if let Some(u) = &r.unwrap {
                    match u.conv {
                        UnwrapConv::Number => write!(f, " | unwrap {}", u.label)?,
                        UnwrapConv::Duration => write!(f, " | unwrap duration({})", u.label)?,
                        UnwrapConv::DurationSeconds => write!(f, " | unwrap duration_seconds({})", u.label)?,
                        UnwrapConv::Bytes => write!(f, " | unwrap bytes({})", u.label)?,
                    }
                    for lf in &u.filters {
                        write!(f, " | {lf}")?;
                    }
                }
                write!(f, " [{}]", format_duration(r.range_ns))?;
                if r.offset_ns != 0 {
                    write!(f, " offset {}", format_duration(r.offset_ns))?;
                }
                f.write_str(")")?;
                if let Some(g) = &r.grouping {
                    write!(f, " {g}")?;
                }
                Ok(())
            }
            MetricExpr::Vector(v) => {
                f.write_str(v.op.name())?;
                if let Some(g) = &v.grouping {
                    write!(f, " {g}")?;
                }
                f.write_str(" (")?;
                if let Some(p) = v.param {
                    write!(f, "{}, ", format_number(p))?;
                }
                write!(f, "{})", v.expr)
            }
            MetricExpr::Binary(b) => {
                write!(f, "{} {}", b.lhs, b.op.symbol())?;
                if b.return_bool {
                    f.write_str(" bool")?;
                }
                if let Some((on, labels)) = &b.matching.on {
                    write!(f, " {}({})", if *on { "on" } else { "ignoring" }, labels.join(", "))?;
                }
                if let Some((left, labels)) = &b.matching.group {
                    write!(f, " {}({})", if *left { "group_left" } else { "group_right" }, labels.join(", "))?;
                }
                write!(f, " {}", b.rhs)
            }
            MetricExpr::Literal(v) => f.write_str(&format_number(*v)),
            MetricExpr::VectorLit(v) => write!(f, "vector({})", format_number(*v)),
            MetricExpr::LabelReplace(l) => write!(
                f,
                "label_replace({}, {}, {}, {}, {})",
                l.expr,
                quote(&l.dst),
                quote(&l.replacement),
                quote(&l.src),
                quote(&l.source_regex)
            ),
            MetricExpr::Paren(e) => write!(f, "({e})"),
        }
    }
}
