//! The LogQL lexer and recursive-descent parser. Errors name what was expected and where, as
//! `parse error at line L, col C: ...`, the shape Loki's errors have.

use std::fmt;

use regex::Regex;
use store::{LabelMatcher, MatchOp};

use super::ast::*;
use super::extract::{self, JsonPath, Pattern};
use crate::template::Template;

/// A query that does not parse, or parses into something LogQL does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "parse error at line {}, col {}: {}", self.line, self.col, self.msg)
    }
}

impl std::error::Error for ParseError {}

/// Parses a LogQL query.
///
/// # Errors
/// A [`ParseError`] naming the position and what was wrong.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    crate::depth::check(src).map_err(|msg| ParseError { line: 1, col: 1, msg })?;
    let tokens = lex(src)?;
    let mut p = QueryParser { src, tokens, pos: 0 };
    let expr = p.expr(0)?;
    if let Some(t) = p.peek_token() {
        return Err(p.error_at(t.start, format!("unexpected {}", t.kind.describe())));
    }
    match expr {
        Ast::Log(l) => Ok(Expr::Log(l)),
        Ast::Metric(m) => Ok(Expr::Metric(m)),
        Ast::LogRange(start, _) => Err(
            p.error_at(start, "a range vector must be inside a range aggregation such as count_over_time(...)".into())
        ),
    }
}

// ----- lexer -----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Number(f64),
    /// A number with a unit (`5m`, `10KB`), as written.
    Unit(String),
    /// `[5m]`: the duration text.
    Range(String),
    /// `--strict`
    Flag(String),
    Sym(&'static str),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("identifier {s:?}"),
            Tok::Str(s) => format!("string {}", quote(s)),
            Tok::Number(n) => format!("number {n}"),
            Tok::Unit(s) => format!("{s:?}"),
            Tok::Range(s) => format!("range [{s}]"),
            Tok::Flag(s) => format!("flag --{s}"),
            Tok::Sym(s) => format!("{s:?}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Tok,
    start: usize,
}

const SYMBOLS: [&str; 27] = [
    "|=", "!=", "|~", "!~", "|>", "!>", "==", "=~", ">=", "<=", "{", "}", "(", ")", ",", "|", "=", ">", "<", "+", "-",
    "*", "/", "%", "^", "[", "]",
];

fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |pos: usize, msg: String| {
        let (line, col) = line_col(src, pos);
        ParseError { line, col, msg }
    };
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            // A comment to the end of the line.
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        if c == b'"' || c == b'`' {
            let (s, next) = lex_string(src, i).map_err(|m| err(start, m))?;
            out.push(Token { kind: Tok::Str(s), start });
            i = next;
            continue;
        }
        if c == b'[' {
            let Some(close) = src[i..].find(']') else {
                return Err(err(start, "unclosed range: missing ']'".into()));
            };
            let text = src[i + 1..i + close].trim().to_string();
            out.push(Token { kind: Tok::Range(text), start });
            i += close + 1;
            continue;
        }
        if c == b'-' && bytes.get(i + 1) == Some(&b'-') && bytes.get(i + 2).is_some_and(u8::is_ascii_alphabetic) {
            let mut j = i + 2;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'-' || bytes[j] == b'_') {
                j += 1;
            }
            out.push(Token { kind: Tok::Flag(src[i + 2..j].to_string()), start });
            i = j;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_digit() || bytes[j] == b'.') {
                j += 1;
            }
            // Exponent, hex or a unit suffix: take the whole alphanumeric run.
            let mut k = j;
            while k < bytes.len() && (bytes[k].is_ascii_alphanumeric() || bytes[k] == b'.' || !bytes[k].is_ascii()) {
                if !bytes[k].is_ascii() && !src[k..].starts_with('µ') {
                    break;
                }
                k += if bytes[k].is_ascii() { 1 } else { 'µ'.len_utf8() };
            }
            // `1e3` and `1e-3` are numbers.
            if k < bytes.len() && (bytes[k] == b'-' || bytes[k] == b'+') && matches!(bytes[k - 1], b'e' | b'E') {
                k += 1;
                while k < bytes.len() && bytes[k].is_ascii_digit() {
                    k += 1;
                }
            }
            let text = &src[i..k];
            if k == j || text.parse::<f64>().is_ok() && !text.ends_with(|c: char| c.is_ascii_alphabetic()) {
                let n = text.parse::<f64>().map_err(|_| err(start, format!("invalid number {text:?}")))?;
                out.push(Token { kind: Tok::Number(n), start });
            } else if text.starts_with("0x") || text.contains('e') && text.parse::<f64>().is_ok() {
                let n = parse_number(text).ok_or_else(|| err(start, format!("invalid number {text:?}")))?;
                out.push(Token { kind: Tok::Number(n), start });
            } else {
                out.push(Token { kind: Tok::Unit(text.to_string()), start });
            }
            i = k;
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b'.') {
                j += 1;
            }
            out.push(Token { kind: Tok::Ident(src[i..j].to_string()), start });
            i = j;
            continue;
        }
        if let Some(sym) = SYMBOLS.iter().find(|s| src[i..].starts_with(**s)) {
            out.push(Token { kind: Tok::Sym(sym), start });
            i += sym.len();
            continue;
        }
        let ch = src[i..].chars().next().unwrap_or('?');
        return Err(err(start, format!("unexpected character {ch:?}")));
    }
    Ok(out)
}

fn parse_number(text: &str) -> Option<f64> {
    if let Some(hex) = text.strip_prefix("0x") {
        return i64::from_str_radix(hex, 16).ok().map(|v| v as f64);
    }
    text.parse().ok()
}

/// Lexes a double-quoted (with Go escapes) or backquoted (raw) string at `i`; returns it and the index
/// after it.
fn lex_string(src: &str, i: usize) -> Result<(String, usize), String> {
    let quote_char = src.as_bytes()[i] as char;
    let mut out = String::new();
    let mut chars = src[i + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        if c == quote_char {
            return Ok((out, i + 1 + off + 1));
        }
        if c == '\\' && quote_char == '"' {
            let Some((_, e)) = chars.next() else { break };
            match e {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                '\'' => out.push('\''),
                'a' => out.push('\x07'),
                'b' => out.push('\x08'),
                'f' => out.push('\x0c'),
                'v' => out.push('\x0b'),
                'x' | 'u' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = (0..n).filter_map(|_| chars.next().map(|(_, c)| c)).collect();
                    let v = u32::from_str_radix(&hex, 16).map_err(|_| format!("invalid escape \\{e}{hex}"))?;
                    out.push(char::from_u32(v).ok_or_else(|| format!("invalid code point \\{e}{hex}"))?);
                }
                other => return Err(format!("unknown escape sequence \\{other} in string")),
            }
            continue;
        }
        out.push(c);
    }
    Err("unterminated string: missing closing quote".into())
}

fn line_col(src: &str, pos: usize) -> (usize, usize) {
    let before = &src[..pos.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.chars().count(), |nl| before[nl + 1..].chars().count()) + 1;
    (line, col)
}

/// Parses a duration as Prometheus and Go do: `5m`, `1h30m`, `1.5s`, `250ms`, `1d`, `1w`, `1y`.
pub fn parse_duration_ns(text: &str) -> Option<i64> {
    let text = text.trim();
    let (neg, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86_400e9,
            "w" => 7.0 * 86_400e9,
            "y" => 365.0 * 86_400e9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    let ns = total.round();
    if ns > i64::MAX as f64 {
        return None;
    }
    Some(if neg { -(ns as i64) } else { ns as i64 })
}

// ----- parser -----

/// Longest range or offset accepted: ten years keeps every window computation far from overflow.
const MAX_RANGE_NS: i64 = 10 * 365 * 86_400 * 1_000_000_000;

/// What a sub-expression parsed to.
enum Ast {
    Log(LogExpr),
    /// A log expression with its range, offset and unwrap: only valid inside a range aggregation.
    LogRange(usize, Box<LogRangeParts>),
    Metric(MetricExpr),
}

struct LogRangeParts {
    log: LogExpr,
    range_ns: i64,
    offset_ns: i64,
    unwrap: Option<Unwrap>,
}

struct QueryParser<'a> {
    src: &'a str,
    tokens: Vec<Token>,
    pos: usize,
}

type PResult<T> = Result<T, ParseError>;

impl QueryParser<'_> {
    fn error_at(&self, pos: usize, msg: String) -> ParseError {
        let (line, col) = line_col(self.src, pos);
        ParseError { line, col, msg }
    }

    fn error_here(&self, msg: impl Into<String>) -> ParseError {
        let pos = self.tokens.get(self.pos).map_or(self.src.len(), |t| t.start);
        self.error_at(pos, msg.into())
    }

    fn unexpected(&self, expected: &str) -> ParseError {
        match self.tokens.get(self.pos) {
            Some(t) => self.error_at(t.start, format!("unexpected {}, expected {expected}", t.kind.describe())),
            None => self.error_here(format!("unexpected end of query, expected {expected}")),
        }
    }

    fn peek_token(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.kind)
    }

    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.tokens.get(self.pos + n).map(|t| &t.kind)
    }

    fn here(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.src.len(), |t| t.start)
    }

    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Sym(x)) if *x == s)
    }

    fn is_ident(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(x)) if x == s)
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if self.is_sym(s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_ident(&mut self, s: &str) -> bool {
        if self.is_ident(s) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, s: &str) -> PResult<()> {
        if self.eat_sym(s) { Ok(()) } else { Err(self.unexpected(&format!("{s:?}"))) }
    }

    fn ident(&mut self, what: &str) -> PResult<String> {
        match self.peek() {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn string(&mut self, what: &str) -> PResult<String> {
        match self.peek() {
            Some(Tok::Str(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn number(&mut self, what: &str) -> PResult<f64> {
        let neg = self.eat_sym("-");
        match self.peek() {
            Some(Tok::Number(n)) => {
                let n = if neg { -*n } else { *n };
                self.pos += 1;
                Ok(n)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    // --- expressions ---

    fn expr(&mut self, min_prec: u8) -> PResult<Ast> {
        let start = self.here();
        let mut lhs = self.unary()?;
        while let Some(op) = self.peek_binop() {
            let prec = op.precedence();
            if prec < min_prec {
                break;
            }
            let op_pos = self.here();
            self.pos += 1;
            let return_bool = self.eat_ident("bool");
            if return_bool && !op.is_comparison() {
                return Err(self.error_at(
                    op_pos,
                    format!("bool modifier can only be used on comparison operators, not {}", op.symbol()),
                ));
            }
            let matching = self.matching()?;
            // `^` is right-associative, the others left.
            let next = if op == BinOp::Pow { prec } else { prec + 1 };
            let rhs = self.expr(next)?;
            let lhs_m = self.metric(lhs, start)?;
            let rhs_m = self.metric(rhs, op_pos)?;
            if op.is_set() && (matches!(lhs_m, MetricExpr::Literal(_)) || matches!(rhs_m, MetricExpr::Literal(_))) {
                return Err(self.error_at(
                    op_pos,
                    format!("set operator {} not allowed in binary scalar expression", op.symbol()),
                ));
            }
            lhs =
                Ast::Metric(MetricExpr::Binary(Box::new(Binary { op, return_bool, matching, lhs: lhs_m, rhs: rhs_m })));
        }
        Ok(lhs)
    }

    /// Requires a metric expression where an operand of a binary operator stands.
    fn metric(&self, ast: Ast, pos: usize) -> PResult<MetricExpr> {
        match ast {
            Ast::Metric(m) => Ok(m),
            Ast::Log(_) => Err(self.error_at(pos, "a log query cannot be an operand of a binary operation; wrap it in a range aggregation such as count_over_time({...}[5m])".into())),
            Ast::LogRange(p, _) => Err(self.error_at(p, "a range vector must be inside a range aggregation such as count_over_time(...)".into())),
        }
    }

    fn peek_binop(&self) -> Option<BinOp> {
        Some(match self.peek()? {
            Tok::Sym("+") => BinOp::Add,
            Tok::Sym("-") => BinOp::Sub,
            Tok::Sym("*") => BinOp::Mul,
            Tok::Sym("/") => BinOp::Div,
            Tok::Sym("%") => BinOp::Mod,
            Tok::Sym("^") => BinOp::Pow,
            Tok::Sym("==") => BinOp::Eq,
            Tok::Sym("!=") => BinOp::Neq,
            Tok::Sym(">") => BinOp::Gt,
            Tok::Sym(">=") => BinOp::Ge,
            Tok::Sym("<") => BinOp::Lt,
            Tok::Sym("<=") => BinOp::Le,
            Tok::Ident(s) if s == "and" => BinOp::And,
            Tok::Ident(s) if s == "or" => BinOp::Or,
            Tok::Ident(s) if s == "unless" => BinOp::Unless,
            _ => return None,
        })
    }

    fn matching(&mut self) -> PResult<Matching> {
        let mut m = Matching::default();
        if self.is_ident("on") || self.is_ident("ignoring") {
            let on = self.is_ident("on");
            self.pos += 1;
            m.on = Some((on, self.label_list()?));
        }
        if self.is_ident("group_left") || self.is_ident("group_right") {
            let left = self.is_ident("group_left");
            self.pos += 1;
            let labels = if self.is_sym("(") { self.label_list()? } else { Vec::new() };
            m.group = Some((left, labels));
        }
        Ok(m)
    }

    fn label_list(&mut self) -> PResult<Vec<String>> {
        self.expect_sym("(")?;
        let mut labels = Vec::new();
        while !self.eat_sym(")") {
            labels.push(self.ident("a label name")?);
            if !self.eat_sym(",") {
                self.expect_sym(")")?;
                break;
            }
        }
        Ok(labels)
    }

    fn unary(&mut self) -> PResult<Ast> {
        let pos = self.here();
        if self.eat_sym("-") {
            let inner = self.unary()?;
            let m = self.metric(inner, pos)?;
            return Ok(Ast::Metric(match m {
                MetricExpr::Literal(v) => MetricExpr::Literal(-v),
                other => MetricExpr::Binary(Box::new(Binary {
                    op: BinOp::Mul,
                    return_bool: false,
                    matching: Matching::default(),
                    lhs: MetricExpr::Literal(-1.0),
                    rhs: other,
                })),
            }));
        }
        if self.eat_sym("+") {
            return self.unary();
        }
        self.primary()
    }

    fn primary(&mut self) -> PResult<Ast> {
        let pos = self.here();
        match self.peek().cloned() {
            None => Err(self.error_here("unexpected end of query, expected an expression")),
            Some(Tok::Number(n)) => {
                self.pos += 1;
                Ok(Ast::Metric(MetricExpr::Literal(n)))
            }
            Some(Tok::Sym("(")) => {
                self.pos += 1;
                let inner = self.expr(0)?;
                self.expect_sym(")")?;
                match inner {
                    Ast::Metric(m) => Ok(Ast::Metric(MetricExpr::Paren(Box::new(m)))),
                    Ast::Log(l) => self.log_range_tail(pos, l),
                    other @ Ast::LogRange(..) => Ok(other),
                }
            }
            Some(Tok::Sym("{")) => {
                let log = self.log_expr()?;
                let unwrap_next = self.is_sym("|") && matches!(self.peek_at(1), Some(Tok::Ident(s)) if s == "unwrap");
                if matches!(self.peek(), Some(Tok::Range(_))) || unwrap_next {
                    self.log_range_tail(pos, log)
                } else {
                    Ok(Ast::Log(log))
                }
            }
            Some(Tok::Ident(name)) => self.function(pos, &name),
            Some(t) => Err(self.error_at(pos, format!("unexpected {}, expected an expression", t.describe()))),
        }
    }

    fn function(&mut self, pos: usize, name: &str) -> PResult<Ast> {
        if let Some(op) = RangeOp::from_name(name) {
            self.pos += 1;
            return self.range_agg(pos, op).map(Ast::Metric);
        }
        if let Some(op) = VectorOp::from_name(name) {
            self.pos += 1;
            return self.vector_agg(op).map(Ast::Metric);
        }
        match name {
            "vector" => {
                self.pos += 1;
                self.expect_sym("(")?;
                let v = self.number("a number")?;
                self.expect_sym(")")?;
                Ok(Ast::Metric(MetricExpr::VectorLit(v)))
            }
            "label_replace" => {
                self.pos += 1;
                self.label_replace().map(Ast::Metric)
            }
            _ if self.peek_at(1) == Some(&Tok::Sym("(")) => {
                Err(self.error_at(pos, format!("unknown function {name:?}")))
            }
            _ => Err(self.error_at(pos, format!("unexpected identifier {name:?}, expected an expression"))),
        }
    }

    fn label_replace(&mut self) -> PResult<MetricExpr> {
        self.expect_sym("(")?;
        let pos = self.here();
        let inner = self.expr(0)?;
        let expr = self.metric(inner, pos)?;
        self.expect_sym(",")?;
        let dst = self.string("the destination label")?;
        self.expect_sym(",")?;
        let replacement = self.string("the replacement")?;
        self.expect_sym(",")?;
        let src = self.string("the source label")?;
        self.expect_sym(",")?;
        let rpos = self.here();
        let source_regex = self.string("a regular expression")?;
        self.expect_sym(")")?;
        let regex = Regex::new(&format!("^(?s:{source_regex})$"))
            .map_err(|e| self.error_at(rpos, format!("invalid regex in label_replace: error parsing regexp: {e}")))?;
        if !store::model::is_valid_label_name(&dst) {
            return Err(self.error_at(pos, format!("invalid destination label name in label_replace: {dst:?}")));
        }
        Ok(MetricExpr::LabelReplace(Box::new(LabelReplace { expr, dst, replacement, src, source_regex, regex })))
    }

    fn grouping(&mut self) -> PResult<Option<Grouping>> {
        if self.is_ident("by") || self.is_ident("without") {
            let without = self.is_ident("without");
            self.pos += 1;
            return Ok(Some(Grouping { without, labels: self.label_list()? }));
        }
        Ok(None)
    }

    fn vector_agg(&mut self, op: VectorOp) -> PResult<MetricExpr> {
        let before = self.grouping()?;
        self.expect_sym("(")?;
        let needs_param = matches!(op, VectorOp::Topk | VectorOp::Bottomk);
        let mut param = None;
        if needs_param {
            let ppos = self.here();
            let k = match self.peek() {
                Some(Tok::Number(_)) => self.number("k")?,
                _ => return Err(self.error_at(ppos, format!("parameter required for operation {}", op.name()))),
            };
            if k < 1.0 || k.fract() != 0.0 {
                return Err(self.error_at(
                    ppos,
                    format!("invalid parameter for operation {}: k must be a positive integer, got {k}", op.name()),
                ));
            }
            param = Some(k);
            if !self.eat_sym(",") {
                return Err(self.unexpected("\",\" after the parameter"));
            }
        }
        let pos = self.here();
        let inner = self.expr(0)?;
        let expr = self.metric(inner, pos)?;
        self.expect_sym(")")?;
        let after = self.grouping()?;
        if before.is_some() && after.is_some() {
            return Err(self.error_here("grouping given twice"));
        }
        let grouping = before.or(after);
        if matches!(op, VectorOp::Sort | VectorOp::SortDesc) && grouping.is_some() {
            return Err(self.error_here(format!("sort and sort_desc doesn't allow grouping by ({} given)", op.name())));
        }
        Ok(MetricExpr::Vector(VectorAgg { op, param, grouping, expr: Box::new(expr) }))
    }

    fn range_agg(&mut self, pos: usize, op: RangeOp) -> PResult<MetricExpr> {
        self.expect_sym("(")?;
        let mut param = None;
        if op == RangeOp::Quantile {
            let ppos = self.here();
            let q = match self.peek() {
                Some(Tok::Number(_)) => self.number("φ")?,
                _ => return Err(self.error_at(ppos, "parameter required for operation quantile_over_time".into())),
            };
            param = Some(q);
            self.expect_sym(",")?;
        }
        let inner_pos = self.here();
        let inner = self.expr(0)?;
        let parts = match inner {
            Ast::LogRange(_, parts) => parts,
            Ast::Log(_) => {
                return Err(self.error_at(
                    inner_pos,
                    format!("{} needs a range: add one such as [5m] after the log selector or pipeline", op.name()),
                ));
            }
            Ast::Metric(_) => {
                return Err(self.error_at(
                    inner_pos,
                    format!("{} takes a log range such as {{app=\"x\"}}[5m], not a metric expression", op.name()),
                ));
            }
        };
        self.expect_sym(")")?;
        let grouping = self.grouping()?;
        let LogRangeParts { log, range_ns, offset_ns, unwrap } = *parts;
        if op.needs_unwrap() && unwrap.is_none() {
            return Err(self.error_at(pos, format!("invalid aggregation {} without unwrap", op.name())));
        }
        if unwrap.is_some() && !op.allows_unwrap() {
            return Err(self.error_at(pos, format!("invalid aggregation {} with unwrap", op.name())));
        }
        // Loki allows grouping only where samples of several series can be combined meaningfully.
        let can_group = matches!(
            op,
            RangeOp::Avg
                | RangeOp::Min
                | RangeOp::Max
                | RangeOp::First
                | RangeOp::Last
                | RangeOp::Stdvar
                | RangeOp::Stddev
                | RangeOp::Quantile
        );
        if grouping.is_some() && !can_group {
            return Err(self.error_at(pos, format!("grouping not allowed for {} aggregation", op.name())));
        }
        Ok(MetricExpr::Range(RangeAgg { op, param, log, range_ns, offset_ns, unwrap, grouping }))
    }

    /// After a log expression: `[range]`, then more pipeline stages (Loki allows them after the range),
    /// `| unwrap ...` and `offset`.
    fn log_range_tail(&mut self, pos: usize, mut log: LogExpr) -> PResult<Ast> {
        let mut range_ns = None;
        let mut unwrap = None;
        loop {
            match self.peek().cloned() {
                Some(Tok::Range(text)) => {
                    let rpos = self.here();
                    if range_ns.is_some() {
                        return Err(self.error_at(rpos, "a log range has one range".into()));
                    }
                    self.pos += 1;
                    let ns = parse_duration_ns(&text).ok_or_else(|| {
                        self.error_at(rpos, format!("invalid range [{text}]: expected a duration such as [5m]"))
                    })?;
                    if ns <= 0 {
                        return Err(self.error_at(rpos, format!("invalid range [{text}]: must be positive")));
                    }
                    if ns > MAX_RANGE_NS {
                        return Err(self.error_at(rpos, format!("invalid range [{text}]: at most 10y")));
                    }
                    range_ns = Some(ns);
                }
                Some(Tok::Sym("|")) if matches!(self.peek_at(1), Some(Tok::Ident(s)) if s == "unwrap") => {
                    if unwrap.is_some() {
                        return Err(self.error_here("unwrap given twice"));
                    }
                    self.pos += 2;
                    unwrap = Some(self.unwrap()?);
                }
                Some(Tok::Sym(s)) if is_stage_start(s) && unwrap.is_none() => {
                    let stage = self.stage()?;
                    log.stages.push(stage);
                }
                _ => break,
            }
        }
        let Some(range_ns) = range_ns else {
            return Err(self.error_at(pos, "missing range: add one such as [5m]".into()));
        };
        let mut offset_ns = 0;
        if self.eat_ident("offset") {
            let opos = self.here();
            offset_ns = match self.peek().cloned() {
                Some(Tok::Unit(text)) => {
                    self.pos += 1;
                    parse_duration_ns(&text).ok_or_else(|| self.error_at(opos, format!("invalid offset {text:?}")))?
                }
                Some(Tok::Number(0.0)) => {
                    self.pos += 1;
                    0
                }
                _ => return Err(self.unexpected("a duration after offset")),
            };
            if offset_ns.abs() > MAX_RANGE_NS {
                return Err(self.error_at(opos, "invalid offset: at most 10y".into()));
            }
        }
        Ok(Ast::LogRange(pos, Box::new(LogRangeParts { log, range_ns, offset_ns, unwrap })))
    }

    fn unwrap(&mut self) -> PResult<Unwrap> {
        let name = self.ident("the label to unwrap")?;
        let (label, conv) = if self.eat_sym("(") {
            let conv = match name.as_str() {
                "duration" => UnwrapConv::Duration,
                "duration_seconds" => UnwrapConv::DurationSeconds,
                "bytes" => UnwrapConv::Bytes,
                other => {
                    return Err(self.error_here(format!(
                        "unknown unwrap conversion {other:?}: expected duration, duration_seconds or bytes"
                    )));
                }
            };
            let label = self.ident("a label name")?;
            self.expect_sym(")")?;
            (label, conv)
        } else {
            (name, UnwrapConv::Number)
        };
        let mut filters = Vec::new();
        while self.is_sym("|") && !matches!(self.peek_at(1), Some(Tok::Ident(s)) if s == "unwrap") {
            self.pos += 1;
            filters.push(self.label_filter_or()?);
        }
        Ok(Unwrap { label, conv, filters })
    }

    // --- log expressions ---

    fn log_expr(&mut self) -> PResult<LogExpr> {
        let matchers = self.selector()?;
        let mut stages = Vec::new();
        while let Some(Tok::Sym(s)) = self.peek() {
            if !is_stage_start(s) {
                break;
            }
            if *s == "|" && matches!(self.peek_at(1), Some(Tok::Ident(s)) if s == "unwrap") {
                break;
            }
            stages.push(self.stage()?);
        }
        Ok(LogExpr { matchers, stages })
    }

    fn selector(&mut self) -> PResult<Vec<LabelMatcher>> {
        let open = self.here();
        self.expect_sym("{")?;
        let mut matchers = Vec::new();
        while !self.eat_sym("}") {
            let name = self.ident("a label name")?;
            let op = match self.peek() {
                Some(Tok::Sym("=")) => MatchOp::Eq,
                Some(Tok::Sym("!=")) => MatchOp::Neq,
                Some(Tok::Sym("=~")) => MatchOp::Re,
                Some(Tok::Sym("!~")) => MatchOp::Nre,
                _ => return Err(self.unexpected("a matcher operator (=, !=, =~, !~)")),
            };
            self.pos += 1;
            let vpos = self.here();
            let value = self.string("a quoted label value")?;
            let m = LabelMatcher::new(name, op, value).map_err(|e| {
                self.error_at(vpos, format!("invalid regular expression in matcher: error parsing regexp: {e}"))
            })?;
            matchers.push(m);
            if !self.eat_sym(",") {
                if self.eat_sym("}") {
                    break;
                }
                return Err(self.unexpected("\",\" or \"}\""));
            }
        }
        if matchers.is_empty() {
            return Err(self.error_at(open, "queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will".into()));
        }
        if matchers.iter().all(|m| m.matches("")) {
            return Err(self.error_at(open, "queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will".into()));
        }
        Ok(matchers)
    }

    fn stage(&mut self) -> PResult<Stage> {
        let pos = self.here();
        let op = match self.peek() {
            Some(Tok::Sym("|=")) => FilterOp::Contains,
            Some(Tok::Sym("!=")) => FilterOp::NotContains,
            Some(Tok::Sym("|~")) => FilterOp::Regex,
            Some(Tok::Sym("!~")) => FilterOp::NotRegex,
            Some(Tok::Sym("|>")) => FilterOp::Pattern,
            Some(Tok::Sym("!>")) => FilterOp::NotPattern,
            Some(Tok::Sym("|")) => {
                self.pos += 1;
                return self.pipe_stage();
            }
            _ => return Err(self.unexpected("a pipeline stage")),
        };
        self.pos += 1;
        let mut values = vec![self.filter_value(op)?];
        while self.is_ident("or") && matches!(self.peek_at(1), Some(Tok::Str(_))) {
            self.pos += 1;
            values.push(self.filter_value(op)?);
        }
        let _ = pos;
        Ok(Stage::LineFilter(LineFilter { op, values }))
    }

    fn filter_value(&mut self, op: FilterOp) -> PResult<FilterValue> {
        let vpos = self.here();
        if self.is_ident("ip") {
            return Err(self.error_here("ip() line filters are not supported yet"));
        }
        let text = self.string("a quoted string after the line filter")?;
        let regex = match op {
            FilterOp::Regex | FilterOp::NotRegex => Some(Regex::new(&text).map_err(|e| {
                self.error_at(vpos, format!("invalid regular expression in line filter: error parsing regexp: {e}"))
            })?),
            FilterOp::Pattern | FilterOp::NotPattern => Some(
                pattern_filter_regex(&text).map_err(|e| self.error_at(vpos, format!("invalid pattern filter: {e}")))?,
            ),
            FilterOp::Contains | FilterOp::NotContains => None,
        };
        Ok(FilterValue { text, regex })
    }

    fn pipe_stage(&mut self) -> PResult<Stage> {
        let pos = self.here();
        let name = match self.peek() {
            Some(Tok::Ident(s)) => s.clone(),
            Some(Tok::Sym("(")) => return Ok(Stage::LabelFilter(self.label_filter_or()?)),
            _ => return Err(self.unexpected("a parser, formatter or label filter after \"|\"")),
        };
        // A label filter starts with a label name and a comparison operator.
        if matches!(self.peek_at(1), Some(Tok::Sym("=" | "!=" | "=~" | "!~" | ">" | ">=" | "<" | "<=" | "==")))
            && !matches!(name.as_str(), "json" | "logfmt" | "label_format" | "drop" | "keep")
        {
            return Ok(Stage::LabelFilter(self.label_filter_or()?));
        }
        self.pos += 1;
        match name.as_str() {
            "json" => {
                let mut fields = Vec::new();
                let mut sources = Vec::new();
                if matches!(self.peek(), Some(Tok::Ident(_))) {
                    loop {
                        let fpos = self.here();
                        let out = self.ident("a label name")?;
                        let path_src = if self.eat_sym("=") { self.string("a quoted JSON path")? } else { out.clone() };
                        let path = JsonPath::parse(&path_src)
                            .map_err(|e| self.error_at(fpos, format!("invalid JSON path {path_src:?}: {e}")))?;
                        fields.push((out, path));
                        sources.push(path_src);
                        if !self.eat_sym(",") {
                            break;
                        }
                    }
                }
                Ok(Stage::Parser(Parser::Json { fields, sources }))
            }
            "logfmt" => {
                let (mut strict, mut keep_empty) = (false, false);
                while let Some(Tok::Flag(flag)) = self.peek().cloned() {
                    match flag.as_str() {
                        "strict" => strict = true,
                        "keep-empty" => keep_empty = true,
                        other => return Err(self.error_here(format!("unknown logfmt flag --{other}: expected --strict or --keep-empty"))),
                    }
                    self.pos += 1;
                }
                let mut fields = Vec::new();
                if matches!(self.peek(), Some(Tok::Ident(_))) {
                    loop {
                        let out = self.ident("a label name")?;
                        let key = if self.eat_sym("=") { self.string("a quoted logfmt key")? } else { out.clone() };
                        fields.push((out, key));
                        if !self.eat_sym(",") {
                            break;
                        }
                    }
                }
                Ok(Stage::Parser(Parser::Logfmt { strict, keep_empty, fields }))
            }
            "regexp" => {
                let rpos = self.here();
                let source = self.string("a quoted regular expression")?;
                let regex = Regex::new(&source)
                    .map_err(|e| self.error_at(rpos, format!("invalid regular expression in regexp parser: error parsing regexp: {e}")))?;
                if regex.capture_names().flatten().next().is_none() {
                    return Err(self.error_at(rpos, "at least one named capture must be supplied, such as (?P<name>...)".into()));
                }
                for name in regex.capture_names().flatten() {
                    if !store::model::is_valid_label_name(name) {
                        return Err(self.error_at(rpos, format!("invalid capture group name {name:?}: not a valid label name")));
                    }
                }
                Ok(Stage::Parser(Parser::Regexp { source, regex }))
            }
            "pattern" => {
                let ppos = self.here();
                let source = self.string("a quoted pattern")?;
                let pattern =
                    Pattern::parse(&source).map_err(|e| self.error_at(ppos, format!("invalid pattern: {e}")))?;
                Ok(Stage::Parser(Parser::Pattern { source, pattern }))
            }
            "unpack" => Ok(Stage::Parser(Parser::Unpack)),
            "decolorize" => Ok(Stage::Decolorize),
            "line_format" => {
                let tpos = self.here();
                let source = self.string("a quoted template")?;
                let template = Template::parse(&source)
                    .map_err(|e| self.error_at(tpos, format!("invalid line_format template: {e}")))?;
                Ok(Stage::LineFormat(Box::new(Formatted { source, template })))
            }
            "label_format" => {
                let mut items = Vec::new();
                loop {
                    let dst = self.ident("a label name")?;
                    self.expect_sym("=")?;
                    let tpos = self.here();
                    match self.peek().cloned() {
                        Some(Tok::Ident(src)) => {
                            self.pos += 1;
                            items.push(LabelFmt::Rename { dst, src });
                        }
                        Some(Tok::Str(source)) => {
                            self.pos += 1;
                            let template = Template::parse(&source)
                                .map_err(|e| self.error_at(tpos, format!("invalid label_format template: {e}")))?;
                            items.push(LabelFmt::Template { dst, value: Formatted { source, template } });
                        }
                        _ => return Err(self.unexpected("a label name or a quoted template")),
                    }
                    if !self.eat_sym(",") {
                        break;
                    }
                }
                let mut seen = std::collections::HashSet::new();
                for item in &items {
                    let dst = match item {
                        LabelFmt::Rename { dst, .. } | LabelFmt::Template { dst, .. } => dst,
                    };
                    if !seen.insert(dst.clone()) {
                        return Err(self.error_at(pos, format!("multiple label name '{dst}' not allowed in a single format operation")));
                    }
                }
                Ok(Stage::LabelFormat(items))
            }
            "drop" | "keep" => {
                let mut sels = Vec::new();
                loop {
                    let name = self.ident("a label name")?;
                    let matcher = match self.peek() {
                        Some(Tok::Sym(op @ ("=" | "!=" | "=~" | "!~"))) => {
                            let op = match *op {
                                "=" => MatchOp::Eq,
                                "!=" => MatchOp::Neq,
                                "=~" => MatchOp::Re,
                                _ => MatchOp::Nre,
                            };
                            self.pos += 1;
                            let vpos = self.here();
                            let value = self.string("a quoted label value")?;
                            Some(
                                LabelMatcher::new(name.clone(), op, value)
                                    .map_err(|e| self.error_at(vpos, format!("invalid regular expression: {e}")))?,
                            )
                        }
                        _ => None,
                    };
                    sels.push(LabelSel { name, matcher });
                    if !self.eat_sym(",") {
                        break;
                    }
                }
                Ok(if name == "drop" { Stage::Drop(sels) } else { Stage::Keep(sels) })
            }
            "unwrap" => Err(self.error_at(pos, "unwrap is only allowed in a range aggregation such as sum_over_time(... | unwrap x [5m])".into())),
            other => Err(self.error_at(pos, format!("unknown pipeline stage {other:?}: expected json, logfmt, regexp, pattern, unpack, line_format, label_format, drop, keep, decolorize or a label filter"))),
        }
    }

    // --- label filters: `or` binds looser than `and` and `,` ---

    fn label_filter_or(&mut self) -> PResult<LabelFilter> {
        let mut lhs = self.label_filter_and()?;
        while self.is_ident("or") {
            self.pos += 1;
            let rhs = self.label_filter_and()?;
            lhs = LabelFilter::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_filter_and(&mut self) -> PResult<LabelFilter> {
        let mut lhs = self.label_filter_atom()?;
        loop {
            if self.is_ident("and") || self.is_sym(",") {
                self.pos += 1;
            } else if !(matches!(self.peek(), Some(Tok::Ident(s)) if !is_keyword(s))
                && matches!(self.peek_at(1), Some(Tok::Sym("=" | "!=" | "=~" | "!~" | ">" | ">=" | "<" | "<=" | "=="))))
            {
                break;
            }
            let rhs = self.label_filter_atom()?;
            lhs = LabelFilter::And(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_filter_atom(&mut self) -> PResult<LabelFilter> {
        if self.eat_sym("(") {
            let inner = self.label_filter_or()?;
            self.expect_sym(")")?;
            return Ok(LabelFilter::Paren(Box::new(inner)));
        }
        let name = self.ident("a label name")?;
        let op_pos = self.here();
        let op = match self.peek() {
            Some(Tok::Sym("=" | "==")) => CmpOp::Eq,
            Some(Tok::Sym("!=")) => CmpOp::Neq,
            Some(Tok::Sym("=~")) => CmpOp::Re,
            Some(Tok::Sym("!~")) => CmpOp::Nre,
            Some(Tok::Sym(">")) => CmpOp::Gt,
            Some(Tok::Sym(">=")) => CmpOp::Ge,
            Some(Tok::Sym("<")) => CmpOp::Lt,
            Some(Tok::Sym("<=")) => CmpOp::Le,
            _ => return Err(self.unexpected("a comparison operator")),
        };
        let double_eq = self.is_sym("==");
        self.pos += 1;
        let vpos = self.here();
        let neg = self.eat_sym("-");
        let sign = if neg { -1.0 } else { 1.0 };
        let value = match self.peek().cloned() {
            Some(Tok::Str(s)) if !neg => {
                self.pos += 1;
                if double_eq || matches!(op, CmpOp::Gt | CmpOp::Ge | CmpOp::Lt | CmpOp::Le) {
                    return Err(self.error_at(op_pos, format!("cannot compare label {name:?} with a string using this operator; use =, !=, =~ or !~, or a number")));
                }
                match op {
                    CmpOp::Re | CmpOp::Nre => {
                        let re = Regex::new(&format!("^(?s:{s})$")).map_err(|e| {
                            self.error_at(
                                vpos,
                                format!("invalid regular expression in label filter: error parsing regexp: {e}"),
                            )
                        })?;
                        CmpValue::Regex(s, re)
                    }
                    _ => CmpValue::Str(s),
                }
            }
            Some(Tok::Number(n)) => {
                self.pos += 1;
                CmpValue::Number(sign * n)
            }
            Some(Tok::Unit(text)) => {
                self.pos += 1;
                let shown = if neg { format!("-{text}") } else { text.clone() };
                if let Some(secs) = extract::parse_duration_secs(&text) {
                    CmpValue::Duration(sign * secs, shown)
                } else if let Some(bytes) = extract::parse_bytes(&text) {
                    CmpValue::Bytes(sign * bytes, shown)
                } else {
                    return Err(self.error_at(
                        vpos,
                        format!("invalid value {text:?}: expected a number, a duration or a byte size"),
                    ));
                }
            }
            _ => return Err(self.unexpected("a quoted string, a number, a duration or a byte size")),
        };
        if matches!(op, CmpOp::Re | CmpOp::Nre) && !matches!(value, CmpValue::Regex(..)) {
            return Err(self.error_at(op_pos, "=~ and !~ compare with a quoted regular expression".into()));
        }
        Ok(LabelFilter::Cmp(LabelCmp { name, op, value }))
    }
}

fn is_stage_start(s: &str) -> bool {
    matches!(s, "|" | "|=" | "!=" | "|~" | "!~" | "|>" | "!>")
}

fn is_keyword(s: &str) -> bool {
    matches!(s, "and" | "or" | "unless" | "by" | "without" | "offset" | "bool" | "on" | "ignoring")
}

/// A `|>` pattern as a regex: `<_>` and `<name>` match anything, the rest literally.
fn pattern_filter_regex(pattern: &str) -> Result<Regex, String> {
    let mut re = String::from("(?s)^");
    let mut rest = pattern;
    let mut literal = false;
    while !rest.is_empty() {
        if rest.starts_with('<')
            && let Some(end) = rest.find('>')
            && rest[1..end].chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
            && end > 1
        {
            re.push_str(".*?");
            rest = &rest[end + 1..];
            continue;
        }
        let next = rest[1..].find('<').map_or(rest.len(), |i| i + 1);
        re.push_str(&regex::escape(&rest[..next]));
        literal = true;
        rest = &rest[next..];
    }
    if !literal {
        return Err("a pattern filter needs at least one literal".into());
    }
    re.push('$');
    Regex::new(&re).map_err(|e| e.to_string())
}
