//! The engine's IR and its conversion from `promql-parser`'s AST.

use std::time::{Duration, SystemTime};

use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{self as pp, token};

use super::durexpr::{DurExpr, PLACEHOLDER_BASE_MS};
use super::{EvalError, METRIC_NAME, MatchOp, Matcher};

/// `@` modifier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum At {
    /// `@ start()`
    Start,
    /// `@ end()`
    End,
    /// `@ <time>` in ms.
    Ms(i64),
}

/// A vector selector.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Metric name, if given outside braces.
    pub name: Option<String>,
    /// All matchers, including the `__name__` one.
    pub matchers: Vec<Matcher>,
    /// Offset in ms (negative offsets allowed).
    pub offset_ms: i64,
    /// `@` modifier.
    pub at: Option<At>,
    /// Experimental `anchored` modifier (range selectors).
    pub anchored: bool,
    /// Experimental `smoothed` modifier.
    pub smoothed: bool,
    /// Offset given as a duration expression depending on the query (`offset step()`).
    pub offset_dyn: Option<DurExpr>,
}

/// Marker label names the pre-parser uses to carry `anchored`/`smoothed` through promql-parser.
pub(super) const ANCHORED_MARKER: &str = "__lumen_anchored__";
/// See [`ANCHORED_MARKER`].
pub(super) const SMOOTHED_MARKER: &str = "__lumen_smoothed__";

/// Marker matcher added to `info()`'s label selector so that promql-parser accepts selectors whose matchers all
/// match the empty string (`{data=~".*"}`), which Prometheus allows there.
pub(super) const INFO_MARKER: &str = "__lumen_info__";

/// Inserts [`INFO_MARKER`] into the brace selector given as second argument of `info(...)`.
pub(super) fn rewrite_info_selector(q: &str) -> Option<String> {
    if !q.contains("info") {
        return None;
    }
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| regex::Regex::new(r"\binfo\s*\(").ok()).as_ref()?;
    let b = q.as_bytes();
    let mut inserts: Vec<usize> = Vec::new();
    for m in re.find_iter(q) {
        let mut depth = 0i32;
        let mut quote: Option<u8> = None;
        let mut i = m.end() - 1;
        while i < b.len() {
            let c = b[i];
            if let Some(qc) = quote {
                if c == b'\\' && qc != b'`' {
                    i += 1;
                } else if c == qc {
                    quote = None;
                }
            } else {
                match c {
                    b'"' | b'\'' | b'`' => quote = Some(c),
                    b'(' | b'[' | b'{' => depth += 1,
                    b')' | b']' | b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => {
                        let mut j = i + 1;
                        while j < b.len() && b[j].is_ascii_whitespace() {
                            j += 1;
                        }
                        if j < b.len() && b[j] == b'{' {
                            inserts.push(j + 1);
                        }
                        break;
                    }
                    _ => {}
                }
            }
            i += 1;
        }
    }
    if inserts.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(q.len() + inserts.len() * 24);
    let mut last = 0;
    for pos in inserts {
        out.push_str(&q[last..pos]);
        let empty = q[pos..].trim_start().starts_with('}');
        out.push_str(INFO_MARKER);
        out.push_str(if empty { "!=\"\"" } else { "!=\"\", " });
        last = pos;
    }
    out.push_str(&q[last..]);
    Some(out)
}

/// Rewrites `sel[range] ... anchored|smoothed` into a marker matcher on the selector, since promql-parser has no
/// grammar for these experimental modifiers. Returns `None` when the query has none.
pub(super) fn rewrite_extended_modifiers(q: &str) -> Option<String> {
    if !q.contains("anchored") && !q.contains("smoothed") {
        return None;
    }
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let re = RE
        .get_or_init(|| {
            regex::Regex::new(
                r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)?(?P<braces>\{[^{}]*\})?(?P<rest>(?:\[[^\]]*\])?(?:\s*(?:offset\s+[-+]?[0-9a-zA-Z.]+|@\s*(?:start\(\)|end\(\)|[-+]?[0-9.eE+]+)))*)\s+(?P<kw>anchored|smoothed)\b",
            )
            .ok()
        })
        .as_ref()?;
    let mut changed = false;
    let out = re.replace_all(q, |c: &regex::Captures| {
        let name = c.name("name").map_or("", |m| m.as_str());
        let braces = c.name("braces").map_or("", |m| m.as_str());
        let rest = c.name("rest").map_or("", |m| m.as_str());
        let kw = &c["kw"];
        if (name.is_empty() && braces.is_empty())
            || matches!(
                name,
                "by" | "without"
                    | "on"
                    | "ignoring"
                    | "and"
                    | "or"
                    | "unless"
                    | "bool"
                    | "offset"
                    | "group_left"
                    | "group_right"
            )
        {
            return c[0].to_string();
        }
        changed = true;
        let marker = format!("__lumen_{kw}__=\"\"");
        let inner = braces.trim_start_matches('{').trim_end_matches('}').trim();
        let braces = if inner.is_empty() { format!("{{{marker}}}") } else { format!("{{{inner}, {marker}}}") };
        format!("{name}{braces}{rest}")
    });
    changed.then(|| out.into_owned())
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
    /// `^`
    Pow,
    /// `atan2`
    Atan2,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `<`
    Lt,
    /// `>=`
    Ge,
    /// `<=`
    Le,
    /// `and`
    And,
    /// `or`
    Or,
    /// `unless`
    Unless,
}

impl BinOp {
    /// Comparison operators.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Lt | BinOp::Ge | BinOp::Le)
    }
    /// Set operators.
    pub fn is_set(self) -> bool {
        matches!(self, BinOp::And | BinOp::Or | BinOp::Unless)
    }
}

/// Vector matching cardinality.
#[derive(Debug, Clone, PartialEq)]
pub enum Card {
    /// Default.
    OneToOne,
    /// `group_left(labels)`
    ManyToOne(Vec<String>),
    /// `group_right(labels)`
    OneToMany(Vec<String>),
    /// Set operators.
    ManyToMany,
}

/// A binary expression.
#[derive(Debug, Clone)]
pub struct Binary {
    /// Operator.
    pub op: BinOp,
    /// Left operand.
    pub lhs: Expr,
    /// Right operand.
    pub rhs: Expr,
    /// `bool` modifier.
    pub return_bool: bool,
    /// Cardinality.
    pub card: Card,
    /// `on` (true) / `ignoring` (false) labels; `None` = ignoring nothing.
    pub matching: Option<(bool, Vec<String>)>,
    /// `fill_left(v)` / `fill(v)`: value for a missing left (many-side) operand (experimental).
    pub fill_lhs: Option<f64>,
    /// `fill_right(v)` / `fill(v)`: value for a missing right (one-side) operand (experimental).
    pub fill_rhs: Option<f64>,
}

/// Aggregation operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggOp {
    /// sum
    Sum,
    /// avg
    Avg,
    /// min
    Min,
    /// max
    Max,
    /// count
    Count,
    /// group
    Group,
    /// stddev
    Stddev,
    /// stdvar
    Stdvar,
    /// topk
    Topk,
    /// bottomk
    Bottomk,
    /// quantile
    Quantile,
    /// count_values
    CountValues,
    /// limitk
    Limitk,
    /// limit_ratio
    LimitRatio,
}

/// An aggregation.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// Operator.
    pub op: AggOp,
    /// Aggregated expression.
    pub expr: Expr,
    /// Parameter (topk's k, quantile's φ, count_values' label...).
    pub param: Option<Expr>,
    /// `Some((true, l))` = by(l), `Some((false, l))` = without(l), `None` = no grouping.
    pub grouping: Option<(bool, Vec<String>)>,
}

/// A subquery.
#[derive(Debug, Clone)]
pub struct Subquery {
    /// Inner expression.
    pub expr: Expr,
    /// Range in ms.
    pub range_ms: i64,
    /// Step in ms (`None` = default).
    pub step_ms: Option<i64>,
    /// Offset in ms.
    pub offset_ms: i64,
    /// `@` modifier.
    pub at: Option<At>,
    /// Range as a query-dependent duration expression.
    pub range_dyn: Option<DurExpr>,
    /// Step as a query-dependent duration expression.
    pub step_dyn: Option<DurExpr>,
    /// Offset as a query-dependent duration expression.
    pub offset_dyn: Option<DurExpr>,
}

/// The engine's expression IR.
#[derive(Debug, Clone)]
pub enum Expr {
    /// Number literal.
    Number(f64),
    /// String literal.
    Str(String),
    /// Unary minus.
    Neg(Box<Expr>),
    /// Instant vector selector.
    Vector(Selector),
    /// Range vector selector.
    Matrix {
        /// Selector.
        sel: Selector,
        /// Range in ms.
        range_ms: i64,
        /// Range as a query-dependent duration expression (`[step()]`).
        range_dyn: Option<DurExpr>,
    },
    /// Subquery.
    Subquery(Box<Subquery>),
    /// Function call.
    Call {
        /// Function name.
        func: &'static str,
        /// Arguments.
        args: Vec<Expr>,
    },
    /// Aggregation.
    Aggregate(Box<Aggregate>),
    /// Binary operation.
    Binary(Box<Binary>),
}

/// Result type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValType {
    /// Scalar.
    Scalar,
    /// String.
    String,
    /// Instant vector.
    Vector,
    /// Range vector.
    Matrix,
}

impl Expr {
    /// The type this expression evaluates to.
    pub fn value_type(&self) -> ValType {
        match self {
            Expr::Number(_) => ValType::Scalar,
            Expr::Str(_) => ValType::String,
            Expr::Neg(e) => e.value_type(),
            Expr::Vector(_) | Expr::Aggregate(_) => ValType::Vector,
            Expr::Matrix { .. } | Expr::Subquery(_) => ValType::Matrix,
            Expr::Call { func, .. } => match *func {
                "time" | "scalar" | "pi" | "start" | "end" | "step" | "range" | "min_of" | "max_of" => ValType::Scalar,
                _ => ValType::Vector,
            },
            Expr::Binary(b) => {
                if b.lhs.value_type() == ValType::Scalar && b.rhs.value_type() == ValType::Scalar {
                    ValType::Scalar
                } else {
                    ValType::Vector
                }
            }
        }
    }

    /// Calls `f` on every node, parents first.
    pub fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match self {
            Expr::Neg(e) => e.walk(f),
            Expr::Subquery(s) => s.expr.walk(f),
            Expr::Call { args, .. } => args.iter().for_each(|a| a.walk(f)),
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    p.walk(f);
                }
                a.expr.walk(f)
            }
            Expr::Binary(b) => {
                b.lhs.walk(f);
                b.rhs.walk(f)
            }
            _ => {}
        }
    }

    /// Calls `f` on every node, parents first, mutably.
    pub fn walk_mut(&mut self, f: &mut dyn FnMut(&mut Expr)) {
        f(self);
        match self {
            Expr::Neg(e) => e.walk_mut(f),
            Expr::Subquery(s) => s.expr.walk_mut(f),
            Expr::Call { args, .. } => args.iter_mut().for_each(|a| a.walk_mut(f)),
            Expr::Aggregate(a) => {
                if let Some(p) = &mut a.param {
                    p.walk_mut(f);
                }
                a.expr.walk_mut(f)
            }
            Expr::Binary(b) => {
                b.lhs.walk_mut(f);
                b.rhs.walk_mut(f)
            }
            _ => {}
        }
    }

    /// Maps placeholder durations left by the duration-expression pre-pass back to their expressions.
    pub(super) fn attach_dynamic(&mut self, dynamic: &[DurExpr]) {
        let lookup = |ms: i64| -> Option<DurExpr> {
            let k = ms.checked_sub(PLACEHOLDER_BASE_MS)?;
            usize::try_from(k).ok().and_then(|k| dynamic.get(k)).cloned()
        };
        self.walk_mut(&mut |e| match e {
            Expr::Vector(sel) => sel.offset_dyn = lookup(sel.offset_ms),
            Expr::Matrix { sel, range_ms, range_dyn } => {
                sel.offset_dyn = lookup(sel.offset_ms);
                *range_dyn = lookup(*range_ms);
            }
            Expr::Subquery(sq) => {
                sq.range_dyn = lookup(sq.range_ms);
                sq.step_dyn = sq.step_ms.and_then(lookup);
                sq.offset_dyn = lookup(sq.offset_ms);
            }
            _ => {}
        });
    }

    /// Whether any duration depends on the query's step or range.
    pub fn has_dynamic_durations(&self) -> bool {
        let mut found = false;
        self.walk(&mut |e| match e {
            Expr::Vector(sel) => found |= sel.offset_dyn.is_some(),
            Expr::Matrix { sel, range_dyn, .. } => found |= sel.offset_dyn.is_some() || range_dyn.is_some(),
            Expr::Subquery(sq) => found |= sq.range_dyn.is_some() || sq.step_dyn.is_some() || sq.offset_dyn.is_some(),
            _ => {}
        });
        found
    }

    /// Resolves query-dependent durations for a query with the given step and range (ms; 0 for instant queries).
    pub fn resolve_durations(&mut self, step_ms: i64, range_ms: i64) -> Result<(), EvalError> {
        let mut err = None;
        let mut res = |d: &Option<DurExpr>, out: &mut i64| {
            if let Some(d) = d {
                match d.eval_ms(step_ms, range_ms) {
                    Ok(v) => *out = v,
                    Err(e) => err = Some(e),
                }
            }
        };
        self.walk_mut(&mut |e| match e {
            Expr::Vector(sel) => res(&sel.offset_dyn, &mut sel.offset_ms),
            Expr::Matrix { sel, range_ms, range_dyn } => {
                res(&sel.offset_dyn, &mut sel.offset_ms);
                res(range_dyn, range_ms);
            }
            Expr::Subquery(sq) => {
                res(&sq.offset_dyn, &mut sq.offset_ms);
                res(&sq.range_dyn, &mut sq.range_ms);
                if let (Some(_), Some(step)) = (&sq.step_dyn, &mut sq.step_ms) {
                    res(&sq.step_dyn, step);
                }
            }
            _ => {}
        });
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sets `@ t_ms` on every selector and subquery without one; subqueries with `@` are left alone inside.
    pub fn set_at_everywhere(&mut self, t_ms: i64) {
        match self {
            Expr::Vector(sel) | Expr::Matrix { sel, .. } => {
                if sel.at.is_none() {
                    sel.at = Some(At::Ms(t_ms));
                }
            }
            Expr::Subquery(s) => {
                if s.at.is_none() {
                    s.at = Some(At::Ms(t_ms));
                }
            }
            Expr::Neg(e) => e.set_at_everywhere(t_ms),
            Expr::Call { args, .. } => args.iter_mut().for_each(|a| a.set_at_everywhere(t_ms)),
            Expr::Aggregate(a) => {
                if let Some(p) = &mut a.param {
                    p.set_at_everywhere(t_ms);
                }
                a.expr.set_at_everywhere(t_ms)
            }
            Expr::Binary(b) => {
                b.lhs.set_at_everywhere(t_ms);
                b.rhs.set_at_everywhere(t_ms)
            }
            Expr::Number(_) | Expr::Str(_) => {}
        }
    }
}

fn dur_ms(d: &Duration) -> i64 {
    d.as_millis() as i64
}

fn offset_ms(o: &Option<pp::Offset>) -> i64 {
    match o {
        None => 0,
        Some(pp::Offset::Pos(d)) => dur_ms(d),
        Some(pp::Offset::Neg(d)) => -dur_ms(d),
    }
}

fn at_of(a: &Option<pp::AtModifier>) -> Option<At> {
    a.as_ref().map(|a| match a {
        pp::AtModifier::Start => At::Start,
        pp::AtModifier::End => At::End,
        pp::AtModifier::At(t) => At::Ms(match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => dur_ms(&d),
            Err(e) => -dur_ms(&e.duration()),
        }),
    })
}

fn convert_matcher(m: &promql_parser::label::Matcher) -> Result<Matcher, EvalError> {
    let op = match &m.op {
        PMatchOp::Equal => "=",
        PMatchOp::NotEqual => "!=",
        PMatchOp::Re(_) => "=~",
        PMatchOp::NotRe(_) => "!~",
    };
    Matcher::new(&m.name, op, &m.value)
}

fn convert_selector(vs: &pp::VectorSelector) -> Result<Selector, EvalError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(EvalError::BadData("'or' in label matchers is not supported".into()));
    }
    let mut matchers = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(n) = &vs.name {
        let dup =
            vs.matchers.matchers.iter().any(|m| m.name == METRIC_NAME && m.op == PMatchOp::Equal && &m.value == n);
        if !dup {
            matchers.push(Matcher { name: METRIC_NAME.to_string(), op: MatchOp::Equal, value: n.clone() });
        }
    }
    let (mut anchored, mut smoothed) = (false, false);
    for m in &vs.matchers.matchers {
        match m.name.as_str() {
            ANCHORED_MARKER => anchored = true,
            INFO_MARKER => {}
            SMOOTHED_MARKER => smoothed = true,
            _ => matchers.push(convert_matcher(m)?),
        }
    }
    if anchored && smoothed {
        return Err(EvalError::BadData("anchored and smoothed modifiers cannot be combined".into()));
    }
    Ok(Selector {
        name: vs.name.clone(),
        matchers,
        offset_ms: offset_ms(&vs.offset),
        at: at_of(&vs.at),
        anchored,
        smoothed,
        offset_dyn: None,
    })
}

fn label_list(l: &promql_parser::label::Labels) -> Vec<String> {
    l.labels.iter().map(|s| s.to_string()).collect()
}

fn binop_of(id: token::TokenId) -> Result<BinOp, EvalError> {
    use token::*;
    Ok(match id {
        T_ADD => BinOp::Add,
        T_SUB => BinOp::Sub,
        T_MUL => BinOp::Mul,
        T_DIV => BinOp::Div,
        T_MOD => BinOp::Mod,
        T_POW => BinOp::Pow,
        T_ATAN2 => BinOp::Atan2,
        T_EQLC => BinOp::Eq,
        T_NEQ => BinOp::Ne,
        T_GTR => BinOp::Gt,
        T_LSS => BinOp::Lt,
        T_GTE => BinOp::Ge,
        T_LTE => BinOp::Le,
        T_LAND => BinOp::And,
        T_LOR => BinOp::Or,
        T_LUNLESS => BinOp::Unless,
        _ => {
            return Err(EvalError::BadData(format!("unsupported binary operator {}", token::TokenType::new(id))));
        }
    })
}

fn aggop_of(id: token::TokenId) -> Result<AggOp, EvalError> {
    use token::*;
    Ok(match id {
        T_SUM => AggOp::Sum,
        T_AVG => AggOp::Avg,
        T_MIN => AggOp::Min,
        T_MAX => AggOp::Max,
        T_COUNT => AggOp::Count,
        T_GROUP => AggOp::Group,
        T_STDDEV => AggOp::Stddev,
        T_STDVAR => AggOp::Stdvar,
        T_TOPK => AggOp::Topk,
        T_BOTTOMK => AggOp::Bottomk,
        T_QUANTILE => AggOp::Quantile,
        T_COUNT_VALUES => AggOp::CountValues,
        T_LIMITK => AggOp::Limitk,
        T_LIMIT_RATIO => AggOp::LimitRatio,
        _ => {
            return Err(EvalError::BadData(format!("unsupported aggregation {}", token::TokenType::new(id))));
        }
    })
}

/// Converts promql-parser's AST into the IR.
pub fn convert(e: &pp::Expr) -> Result<Expr, EvalError> {
    Ok(match e {
        pp::Expr::NumberLiteral(n) => Expr::Number(n.val),
        pp::Expr::StringLiteral(s) => Expr::Str(s.val.clone()),
        pp::Expr::Paren(p) => convert(&p.expr)?,
        pp::Expr::Unary(u) => Expr::Neg(Box::new(convert(&u.expr)?)),
        pp::Expr::VectorSelector(vs) => Expr::Vector(convert_selector(vs)?),
        pp::Expr::MatrixSelector(ms) => {
            Expr::Matrix { sel: convert_selector(&ms.vs)?, range_ms: dur_ms(&ms.range), range_dyn: None }
        }
        pp::Expr::Subquery(sq) => Expr::Subquery(Box::new(Subquery {
            expr: convert(&sq.expr)?,
            range_ms: dur_ms(&sq.range),
            step_ms: sq.step.as_ref().map(dur_ms).filter(|s| *s > 0),
            offset_ms: offset_ms(&sq.offset),
            at: at_of(&sq.at),
            range_dyn: None,
            step_dyn: None,
            offset_dyn: None,
        })),
        pp::Expr::Call(c) => {
            let args = c.args.args.iter().map(|a| convert(a)).collect::<Result<Vec<_>, _>>()?;
            Expr::Call { func: c.func.name, args }
        }
        pp::Expr::Aggregate(a) => {
            let grouping = a.modifier.as_ref().map(|m| match m {
                pp::LabelModifier::Include(l) => (true, label_list(l)),
                pp::LabelModifier::Exclude(l) => (false, label_list(l)),
            });
            Expr::Aggregate(Box::new(Aggregate {
                op: aggop_of(a.op.id())?,
                expr: convert(&a.expr)?,
                param: a.param.as_ref().map(|p| convert(p)).transpose()?,
                grouping,
            }))
        }
        pp::Expr::Binary(b) => {
            let op = binop_of(b.op.id())?;
            let (card, matching, return_bool) = match &b.modifier {
                None => (if op.is_set() { Card::ManyToMany } else { Card::OneToOne }, None, false),
                Some(m) => {
                    let card = match &m.card {
                        pp::VectorMatchCardinality::OneToOne => Card::OneToOne,
                        pp::VectorMatchCardinality::ManyToOne(l) => Card::ManyToOne(label_list(l)),
                        pp::VectorMatchCardinality::OneToMany(l) => Card::OneToMany(label_list(l)),
                        pp::VectorMatchCardinality::ManyToMany => Card::ManyToMany,
                    };
                    let card = if op.is_set() { Card::ManyToMany } else { card };
                    let matching = m.matching.as_ref().map(|lm| match lm {
                        pp::LabelModifier::Include(l) => (true, label_list(l)),
                        pp::LabelModifier::Exclude(l) => (false, label_list(l)),
                    });
                    (card, matching, m.return_bool)
                }
            };
            Expr::Binary(Box::new(Binary {
                op,
                lhs: convert(&b.lhs)?,
                rhs: convert(&b.rhs)?,
                return_bool,
                card,
                matching,
                fill_lhs: b.modifier.as_ref().and_then(|m| m.fill_values.lhs),
                fill_rhs: b.modifier.as_ref().and_then(|m| m.fill_values.rhs),
            }))
        }
        pp::Expr::Extension(_) => return Err(EvalError::BadData("extension expressions are not supported".into())),
    })
}
