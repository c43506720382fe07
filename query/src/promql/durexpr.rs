//! Duration expressions (experimental in Prometheus): `x[26m+4m]`, `x[1h/2:step()]`, `x offset (1h/2)`,
//! `x offset -step()`.
//!
//! promql-parser has no grammar for them, so a pre-pass rewrites the query text: every bracket part and every
//! non-literal `offset` argument is parsed here. Constant expressions are replaced by a millisecond literal;
//! expressions using `step()` or `range()` (known only at evaluation time) are replaced by a unique placeholder
//! literal that the AST conversion maps back to the expression.

use super::EvalError;

/// First placeholder duration in ms (about 31 years and an unlikely value; promql-parser rejects much larger ones).
pub(super) const PLACEHOLDER_BASE_MS: i64 = 987_654_321_000;

/// A duration expression; values are seconds.
#[derive(Debug, Clone, PartialEq)]
pub enum DurExpr {
    /// A constant number of seconds.
    Num(f64),
    /// `step()`: the query step (0 for instant queries).
    Step,
    /// `range()`: the query range `end - start` (0 for instant queries).
    Range,
    /// Unary minus.
    Neg(Box<DurExpr>),
    /// Binary arithmetic: one of `+ - * / % ^`.
    Bin(u8, Box<DurExpr>, Box<DurExpr>),
    /// `min_of(a, b)` (`true`) or `max_of(a, b)` (`false`).
    MinMax(bool, Box<DurExpr>, Box<DurExpr>),
}

impl DurExpr {
    /// Evaluates to seconds given the query step and range in ms.
    pub fn eval(&self, step_ms: i64, range_ms: i64) -> f64 {
        match self {
            DurExpr::Num(v) => *v,
            DurExpr::Step => step_ms as f64 / 1000.0,
            DurExpr::Range => range_ms as f64 / 1000.0,
            DurExpr::Neg(e) => -e.eval(step_ms, range_ms),
            DurExpr::Bin(op, a, b) => {
                let (x, y) = (a.eval(step_ms, range_ms), b.eval(step_ms, range_ms));
                match op {
                    b'+' => x + y,
                    b'-' => x - y,
                    b'*' => x * y,
                    b'/' => x / y,
                    b'%' => x % y,
                    _ => x.powf(y),
                }
            }
            DurExpr::MinMax(min, a, b) => {
                let (x, y) = (a.eval(step_ms, range_ms), b.eval(step_ms, range_ms));
                if x.is_nan() || y.is_nan() {
                    f64::NAN
                } else if *min {
                    x.min(y)
                } else {
                    x.max(y)
                }
            }
        }
    }

    /// Evaluates to whole milliseconds, rejecting non-finite results.
    pub fn eval_ms(&self, step_ms: i64, range_ms: i64) -> Result<i64, EvalError> {
        let s = self.eval(step_ms, range_ms);
        if !s.is_finite() || s.abs() > 9.2e15 {
            return Err(EvalError::BadData(format!("duration expression out of range: {s}")));
        }
        Ok((s * 1000.0).round() as i64)
    }

    fn is_dynamic(&self) -> bool {
        match self {
            DurExpr::Num(_) => false,
            DurExpr::Step | DurExpr::Range => true,
            DurExpr::Neg(e) => e.is_dynamic(),
            DurExpr::Bin(_, a, b) | DurExpr::MinMax(_, a, b) => a.is_dynamic() || b.is_dynamic(),
        }
    }
}

/// Parses a Prometheus duration literal (`1h30m`, `500ms`) into seconds.
fn duration_literal(s: &str) -> Option<f64> {
    duration_ms(s).map(|ms| ms as f64 / 1000.0)
}

/// Parses an unsigned Prometheus duration (`1h30m`, `500ms`, units ms s m h d w y) into milliseconds;
/// `None` for anything else or on overflow.
pub(super) fn duration_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.is_empty() {
        return None;
    }
    let mut i = 0;
    let mut total = 0i64;
    while i < b.len() {
        let st = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if st == i {
            return None;
        }
        let n: i64 = s[st..i].parse().ok()?;
        let us = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let mult = match &s[us..i] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(mult)?)?;
    }
    Some(total)
}

struct P<'a> {
    s: &'a str,
    i: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s.as_bytes()[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.as_bytes().get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expr(&mut self) -> Option<DurExpr> {
        let mut l = self.term()?;
        while let Some(c @ (b'+' | b'-')) = self.peek() {
            self.i += 1;
            l = DurExpr::Bin(c, Box::new(l), Box::new(self.term()?));
        }
        Some(l)
    }
    fn term(&mut self) -> Option<DurExpr> {
        let mut l = self.unary()?;
        while let Some(c @ (b'*' | b'/' | b'%')) = self.peek() {
            self.i += 1;
            l = DurExpr::Bin(c, Box::new(l), Box::new(self.unary()?));
        }
        Some(l)
    }
    fn unary(&mut self) -> Option<DurExpr> {
        match self.peek() {
            Some(b'-') => {
                self.i += 1;
                Some(DurExpr::Neg(Box::new(self.unary()?)))
            }
            Some(b'+') => {
                self.i += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }
    fn power(&mut self) -> Option<DurExpr> {
        let base = self.primary()?;
        if self.eat(b'^') {
            // Right-associative; binds tighter than unary minus on its left.
            return Some(DurExpr::Bin(b'^', Box::new(base), Box::new(self.unary()?)));
        }
        Some(base)
    }
    fn primary(&mut self) -> Option<DurExpr> {
        let c = self.peek()?;
        if c == b'(' {
            self.i += 1;
            let e = self.expr()?;
            return self.eat(b')').then_some(e);
        }
        let st = self.i;
        let b = self.s.as_bytes();
        while self.i < b.len() && (b[self.i].is_ascii_alphanumeric() || b[self.i] == b'_' || b[self.i] == b'.') {
            self.i += 1;
        }
        let word = &self.s[st..self.i];
        if word.is_empty() {
            return None;
        }
        if word.as_bytes()[0].is_ascii_alphabetic() {
            let lw = word.to_ascii_lowercase();
            if !self.eat(b'(') {
                return None;
            }
            return match lw.as_str() {
                "step" | "range" => {
                    if !self.eat(b')') {
                        return None;
                    }
                    Some(if lw == "step" { DurExpr::Step } else { DurExpr::Range })
                }
                "min_of" | "max_of" => {
                    let a = self.expr()?;
                    if !self.eat(b',') {
                        return None;
                    }
                    let b2 = self.expr()?;
                    if !self.eat(b')') {
                        return None;
                    }
                    Some(DurExpr::MinMax(lw == "min_of", Box::new(a), Box::new(b2)))
                }
                _ => None,
            };
        }
        if let Ok(v) = word.parse::<f64>() {
            return Some(DurExpr::Num(v));
        }
        duration_literal(word).map(DurExpr::Num)
    }
    /// An `offset` argument: optional sign and one primary (binary operators after it belong to the query).
    fn offset_atom(&mut self) -> Option<DurExpr> {
        match self.peek() {
            Some(b'-') => {
                self.i += 1;
                Some(DurExpr::Neg(Box::new(self.primary()?)))
            }
            Some(b'+') => {
                self.i += 1;
                self.primary()
            }
            _ => self.primary(),
        }
    }
}

/// Result of the rewrite: the new query text and the dynamic expressions by placeholder index.
pub(super) struct Rewritten {
    pub query: String,
    pub dynamic: Vec<DurExpr>,
}

/// Formats a positive millisecond count as a duration literal promql-parser accepts (each unit fits `u32`).
fn fmt_ms(ms: i64) -> Result<String, EvalError> {
    let (s, rest) = (ms / 1000, ms % 1000);
    if s > u32::MAX as i64 {
        return Err(EvalError::BadData(format!("duration out of range: {ms}ms")));
    }
    Ok(match (s, rest) {
        (0, r) => format!("{r}ms"),
        (s, 0) => format!("{s}s"),
        (s, r) => format!("{s}s{r}ms"),
    })
}

/// Writes `prefix` and the literal for `e` (or a placeholder when it depends on the query).
fn emit(
    e: DurExpr,
    dynamic: &mut Vec<DurExpr>,
    out: &mut String,
    prefix: &str,
    allow_negative: bool,
) -> Result<(), EvalError> {
    if e.is_dynamic() {
        out.push_str(prefix);
        out.push_str(&fmt_ms(PLACEHOLDER_BASE_MS + dynamic.len() as i64)?);
        dynamic.push(e);
        return Ok(());
    }
    let ms = e.eval_ms(0, 0)?;
    if ms == 0 && allow_negative {
        // A zero offset: drop the modifier (promql-parser rejects zero durations).
        return Ok(());
    }
    out.push_str(prefix);
    if ms <= 0 {
        if !allow_negative {
            return Err(EvalError::BadData(format!("duration must be greater than 0, got {ms}ms")));
        }
        out.push('-');
        out.push_str(&fmt_ms(-ms)?);
    } else {
        out.push_str(&fmt_ms(ms)?);
    }
    Ok(())
}

fn is_plain_literal(s: &str) -> bool {
    let t = s.trim();
    !t.is_empty() && t.bytes().all(|c| c.is_ascii_alphanumeric()) && t.as_bytes()[0].is_ascii_digit()
}

/// Longest duration a literal may give, in seconds (~31,700 years): the parser crate turns larger ones
/// into a `Duration` and panics (found by `fuzz/`).
const MAX_LITERAL_SECS: f64 = 1e12;

/// Refuses a plain duration literal (`5m`, `1h30m`, `300`) longer than [`MAX_LITERAL_SECS`]; anything it
/// cannot read is left to the parser.
fn check_literal(lit: &str) -> Result<(), EvalError> {
    let t = lit.trim().trim_start_matches('-');
    let (mut total, mut i, b) = (0f64, 0, t.as_bytes());
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Ok(());
        }
        let n: f64 = t[start..i].parse().unwrap_or(f64::INFINITY);
        let unit_start = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let secs = match &t[unit_start..i] {
            "" => 1.0,
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            "y" => 31_536_000.0,
            _ => return Ok(()),
        };
        total += n * secs;
    }
    if total > MAX_LITERAL_SECS {
        return Err(EvalError::BadData(format!("duration {} is out of range", lit.trim())));
    }
    Ok(())
}

/// Rewrites duration expressions; `None` if the query needs no rewrite.
pub(super) fn rewrite(q: &str) -> Result<Option<Rewritten>, EvalError> {
    let b = q.as_bytes();
    let mut out = String::with_capacity(q.len());
    let mut dynamic = Vec::new();
    let mut changed = false;
    let mut i = 0;
    let mut last = 0;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        if let Some(qc) = quote {
            if c == b'\\' && qc != b'`' {
                i += 2;
                continue;
            }
            if c == qc {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' | b'\'' | b'`' => {
                quote = Some(c);
                i += 1;
            }
            b'[' => {
                let Some(close) = q[i..].find(']').map(|p| i + p) else {
                    return Ok(None);
                };
                let inner = &q[i + 1..close];
                let parts: Vec<&str> = inner.splitn(2, ':').collect();
                if parts.iter().all(|p| p.trim().is_empty() || is_plain_literal(p)) {
                    for p in &parts {
                        check_literal(p)?;
                    }
                    i = close + 1;
                    continue;
                }
                out.push_str(&q[last..=i]);
                for (k, part) in parts.iter().enumerate() {
                    if k > 0 {
                        out.push(':');
                    }
                    if part.trim().is_empty() {
                        continue;
                    }
                    let mut p = P { s: part, i: 0 };
                    let e = p
                        .expr()
                        .filter(|_| p.peek().is_none())
                        .ok_or_else(|| EvalError::BadData(format!("invalid duration expression: {}", part.trim())))?;
                    emit(e, &mut dynamic, &mut out, "", false)?;
                }
                out.push(']');
                changed = true;
                i = close + 1;
                last = i;
            }
            b'o' | b'O'
                if q.len() >= i + 6
                    && b[i..i + 6].eq_ignore_ascii_case(b"offset")
                    && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
                    && b.get(i + 6).is_some_and(|c| c.is_ascii_whitespace() || *c == b'(' || *c == b'-') =>
            {
                let arg_start = i + 6;
                let mut p = P { s: &q[arg_start..], i: 0 };
                p.ws();
                let atom_start = arg_start + p.i;
                let rest = &q[atom_start..];
                // Leave plain literals (`5m`, `-1h`) to the parser.
                let lit_len = rest
                    .strip_prefix('-')
                    .map(|r| 1 + r.bytes().take_while(|c| c.is_ascii_alphanumeric()).count())
                    .unwrap_or_else(|| rest.bytes().take_while(|c| c.is_ascii_alphanumeric()).count());
                let lit = &rest[..lit_len];
                let lit_ok = is_plain_literal(lit.trim_start_matches('-'))
                    && !lit.trim_start_matches('-').bytes().all(|c| c.is_ascii_digit() || c == b'.');
                if is_plain_literal(lit.trim_start_matches('-')) {
                    check_literal(lit)?;
                }
                if lit_ok && !rest[lit_len..].starts_with('(') {
                    i = atom_start + lit_len;
                    continue;
                }
                let Some(e) = p.offset_atom() else {
                    i = arg_start;
                    continue;
                };
                out.push_str(&q[last..i]);
                emit(e, &mut dynamic, &mut out, "offset ", true)?;
                changed = true;
                i = arg_start + p.i;
                last = i;
            }
            _ => i += 1,
        }
    }
    if !changed {
        return Ok(None);
    }
    out.push_str(&q[last..]);
    Ok(Some(Rewritten { query: out, dynamic }))
}
