//! A subset of Go's `text/template`, as used by Grafana Loki's LogQL
//! `line_format` and `label_format` stages.
//!
//! Supported: text with `{{ ... }}` actions, `{{-`/`-}}` whitespace trimming,
//! `{{/* comments */}}`, `.label` field access, string/raw-string/char/number/bool
//! literals, pipelines, function calls, parenthesized sub-expressions,
//! `if`/`else if`/`else`/`end`, and the Loki function set (Go `strings`,
//! Sprig string, math, regex, encoding and date helpers, `printf`,
//! `__line__`, `__timestamp__`).

use regex::Regex;
use std::fmt::Write as _;

/// A parsed template, ready to be rendered many times.
#[derive(Debug, Clone)]
pub struct Template {
    nodes: Vec<Node>,
    literal: Option<String>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipeline),
    If { branches: Vec<(Pipeline, Vec<Node>)>, otherwise: Vec<Node> },
}

#[derive(Debug, Clone)]
struct Pipeline {
    cmds: Vec<Cmd>,
}

#[derive(Debug, Clone)]
struct Cmd {
    args: Vec<Operand>,
    /// Pre-compiled regex when the pattern argument is a literal.
    regex: Option<Regex>,
}

#[derive(Debug, Clone)]
enum Operand {
    Field(String),
    Func(&'static str),
    Lit(Value),
    Sub(Pipeline),
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A point in time, in nanoseconds since the Unix epoch (UTC).
    Time(i64),
    Nil,
}

/// Every function name the engine knows; anything else is a parse error.
const FUNCS: &[&str] = &[
    // text/template builtins
    "and",
    "or",
    "not",
    "len",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "printf",
    "print",
    "println",
    "urlquery",
    "html",
    "js",
    // Go strings.*
    "ToLower",
    "ToUpper",
    "Title",
    "TrimSpace",
    "Trim",
    "TrimLeft",
    "TrimRight",
    "TrimPrefix",
    "TrimSuffix",
    "Replace",
    // Sprig strings
    "lower",
    "upper",
    "title",
    "trunc",
    "substr",
    "replace",
    "trim",
    "trimAll",
    "trimPrefix",
    "trimSuffix",
    "contains",
    "hasPrefix",
    "hasSuffix",
    "repeat",
    "indent",
    "nindent",
    "default",
    // regex
    "regexReplaceAll",
    "regexReplaceAllLiteral",
    "count",
    // Loki
    "__line__",
    "__timestamp__",
    "alignLeft",
    "alignRight",
    "urlencode",
    "urldecode",
    "b64enc",
    "b64dec",
    "unixEpoch",
    "unixEpochMillis",
    "unixEpochNanos",
    "unixToTime",
    "date",
    "now",
    // math
    "add",
    "sub",
    "mul",
    "div",
    "mod",
    "max",
    "min",
    "addf",
    "subf",
    "mulf",
    "divf",
    "maxf",
    "minf",
    "ceil",
    "floor",
    "round",
    "int",
    "float64",
];

const REGEX_FUNCS: &[&str] = &["regexReplaceAll", "regexReplaceAllLiteral", "count"];

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Field(String),
    Ident(String),
    Lit(Value),
    Pipe,
    LParen,
    RParen,
    Dot,
    Var(String),
    Assign,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    pos: usize,
}

enum Item {
    Text(String),
    Action(Vec<Token>, usize),
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_space_b(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn perr(pos: usize, msg: impl std::fmt::Display) -> String {
    format!("template: at byte offset {pos}: {msg}")
}

fn lex(src: &str) -> Result<Vec<Item>, String> {
    let b = src.as_bytes();
    let mut items = Vec::new();
    let mut pos = 0;
    let mut trim_next = false;
    loop {
        let (text_end, found) = match src[pos..].find("{{") {
            Some(i) => (pos + i, true),
            None => (src.len(), false),
        };
        let mut text = &src[pos..text_end];
        if trim_next {
            text = text.trim_start_matches(is_space);
        }
        let mut start = text_end + 2;
        if found && b.get(start) == Some(&b'-') && b.get(start + 1).is_some_and(|c| is_space_b(*c)) {
            text = text.trim_end_matches(is_space);
            start += 2;
        }
        if !text.is_empty() {
            items.push(Item::Text(text.to_string()));
        }
        if !found {
            break;
        }
        // Comment: {{/* ... */}}
        let mut i = start;
        while i < b.len() && is_space_b(b[i]) && start != text_end + 2 {
            i += 1;
        }
        if src[i..].starts_with("/*") {
            let close = match src[i + 2..].find("*/") {
                Some(c) => i + 2 + c + 2,
                None => return Err(perr(text_end, "unclosed comment")),
            };
            let rest = &src[close..];
            if rest.starts_with("}}") {
                pos = close + 2;
                trim_next = false;
            } else if rest.len() >= 4 && is_space_b(rest.as_bytes()[0]) && rest[1..].starts_with("-}}") {
                pos = close + 4;
                trim_next = true;
            } else {
                return Err(perr(close, "comment ends before closing delimiter"));
            }
            continue;
        }
        let (toks, end, trim_right) = lex_action(src, start, text_end)?;
        items.push(Item::Action(toks, text_end));
        pos = end;
        trim_next = trim_right;
    }
    Ok(items)
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Lexes the inside of one action starting at `start`; returns the tokens,
/// the byte offset after the closing delimiter and whether it trims right.
fn lex_action(src: &str, start: usize, open: usize) -> Result<(Vec<Token>, usize, bool), String> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut i = start;
    loop {
        let mut saw_space = i == start && start >= 1 && is_space_b(b[start - 1]);
        while i < b.len() && is_space_b(b[i]) {
            i += 1;
            saw_space = true;
        }
        if i >= b.len() {
            return Err(perr(open, "unclosed action"));
        }
        let rest = &src[i..];
        if saw_space && rest.starts_with("-}}") {
            return Ok((toks, i + 3, true));
        }
        if rest.starts_with("}}") {
            return Ok((toks, i + 2, false));
        }
        let c = b[i];
        let pos = i;
        let tok = match c {
            b'|' => {
                i += 1;
                Tok::Pipe
            }
            b'(' => {
                i += 1;
                Tok::LParen
            }
            b')' => {
                i += 1;
                Tok::RParen
            }
            b'"' => {
                let (s, end) = lex_quoted(src, i)?;
                i = end;
                Tok::Lit(Value::Str(s))
            }
            b'`' => match src[i + 1..].find('`') {
                Some(e) => {
                    let s = src[i + 1..i + 1 + e].to_string();
                    i = i + 1 + e + 1;
                    Tok::Lit(Value::Str(s))
                }
                None => return Err(perr(i, "unterminated raw quoted string")),
            },
            b'\'' => {
                let (v, end) = lex_char(src, i)?;
                i = end;
                Tok::Lit(Value::Int(v))
            }
            b'.' if b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                let (v, end) = lex_number(src, i)?;
                i = end;
                Tok::Lit(v)
            }
            b'.' => {
                let mut j = i + 1;
                while j < b.len() && is_ident_char(b[j]) {
                    j += 1;
                }
                if j == i + 1 {
                    i = j;
                    Tok::Dot
                } else {
                    if b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(|c| is_ident_start(*c)) {
                        return Err(perr(j, "chained field access is not supported"));
                    }
                    let name = src[i + 1..j].to_string();
                    i = j;
                    Tok::Field(name)
                }
            }
            b'$' => {
                let mut j = i + 1;
                while j < b.len() && is_ident_char(b[j]) {
                    j += 1;
                }
                let name = src[i..j].to_string();
                i = j;
                Tok::Var(name)
            }
            b':' | b'=' => {
                i += if rest.starts_with(":=") { 2 } else { 1 };
                Tok::Assign
            }
            b'0'..=b'9' => {
                let (v, end) = lex_number(src, i)?;
                i = end;
                Tok::Lit(v)
            }
            b'+' | b'-'
                if b.get(i + 1).is_some_and(|d| d.is_ascii_digit())
                    || (b.get(i + 1) == Some(&b'.') && b.get(i + 2).is_some_and(|d| d.is_ascii_digit())) =>
            {
                let (v, end) = lex_number(src, i)?;
                i = end;
                Tok::Lit(v)
            }
            c if is_ident_start(c) => {
                let mut j = i;
                while j < b.len() && is_ident_char(b[j]) {
                    j += 1;
                }
                let word = &src[i..j];
                i = j;
                match word {
                    "true" => Tok::Lit(Value::Bool(true)),
                    "false" => Tok::Lit(Value::Bool(false)),
                    "nil" => Tok::Lit(Value::Nil),
                    _ => Tok::Ident(word.to_string()),
                }
            }
            _ => {
                let ch = rest.chars().next().unwrap_or('?');
                return Err(perr(i, format!("unexpected {ch:?} in command")));
            }
        };
        toks.push(Token { tok, pos });
    }
}

fn hex_val(c: u8) -> Option<u32> {
    (c as char).to_digit(16)
}

/// Decodes one Go escape sequence starting after the backslash at `i`.
/// Pushes the bytes onto `out`; returns the offset after the sequence.
fn lex_escape(src: &str, i: usize, quote: u8, out: &mut Vec<u8>) -> Result<usize, String> {
    let b = src.as_bytes();
    let c = *b.get(i).ok_or_else(|| perr(i, "unterminated quoted string"))?;
    let simple = match c {
        b'a' => Some(7u8),
        b'b' => Some(8),
        b'f' => Some(12),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        b'v' => Some(11),
        b'\\' => Some(b'\\'),
        _ if c == quote => Some(quote),
        _ => None,
    };
    if let Some(s) = simple {
        out.push(s);
        return Ok(i + 1);
    }
    let (n, base) = match c {
        b'x' => (2, 16),
        b'u' => (4, 16),
        b'U' => (8, 16),
        b'0'..=b'7' => (3, 8),
        _ => return Err(perr(i, format!("invalid escape sequence \\{}", c as char))),
    };
    let start = if c.is_ascii_digit() { i } else { i + 1 };
    let mut v: u32 = 0;
    for k in 0..n {
        let d = b
            .get(start + k)
            .and_then(|d| if base == 8 { (*d as char).to_digit(8) } else { hex_val(*d) })
            .ok_or_else(|| perr(start + k, "invalid escape sequence"))?;
        v = v * base + d;
    }
    if c == b'x' || base == 8 {
        if v > 255 {
            return Err(perr(i, "octal escape value > 255"));
        }
        out.push(v as u8);
    } else {
        let ch = char::from_u32(v).ok_or_else(|| perr(i, "escape sequence is invalid Unicode code point"))?;
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    Ok(start + n)
}

fn lex_quoted(src: &str, start: usize) -> Result<(String, usize), String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = start + 1;
    loop {
        match b.get(i) {
            None | Some(b'\n') => return Err(perr(start, "unterminated quoted string")),
            Some(b'"') => break,
            Some(b'\\') => i = lex_escape(src, i + 1, b'"', &mut out)?,
            Some(c) => {
                out.push(*c);
                i += 1;
            }
        }
    }
    Ok((String::from_utf8_lossy(&out).into_owned(), i + 1))
}

fn lex_char(src: &str, start: usize) -> Result<(i64, usize), String> {
    let rest = &src[start + 1..];
    let mut chars = rest.char_indices();
    let (v, next) = match chars.next() {
        Some((_, '\\')) => {
            let mut out = Vec::new();
            let end = lex_escape(src, start + 2, b'\'', &mut out)?;
            let s = String::from_utf8_lossy(&out).into_owned();
            let v = if out.len() == 1 { out[0] as i64 } else { s.chars().next().map_or(0, |c| c as i64) };
            (v, end)
        }
        Some((_, '\'')) | None | Some((_, '\n')) => return Err(perr(start, "malformed character constant")),
        Some((off, c)) => (c as i64, start + 1 + off + c.len_utf8()),
    };
    if src.as_bytes().get(next) != Some(&b'\'') {
        return Err(perr(start, "malformed character constant"));
    }
    Ok((v, next + 1))
}

fn lex_number(src: &str, start: usize) -> Result<(Value, usize), String> {
    let b = src.as_bytes();
    let mut i = start;
    if b[i] == b'+' || b[i] == b'-' {
        i += 1;
    }
    let body_start = i;
    let hex = b.get(i) == Some(&b'0') && matches!(b.get(i + 1), Some(b'x' | b'X'));
    if hex || (b.get(i) == Some(&b'0') && matches!(b.get(i + 1), Some(b'o' | b'O' | b'b' | b'B'))) {
        i += 2;
        while i < b.len() && (b[i].is_ascii_hexdigit() || b[i] == b'_') {
            i += 1;
        }
    } else {
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
                i += 1;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    if i < b.len() && (is_ident_char(b[i]) || b[i] == b'.') {
        let mut j = i;
        while j < b.len() && (is_ident_char(b[j]) || b[j] == b'.') {
            j += 1;
        }
        return Err(perr(start, format!("bad number syntax: {:?}", &src[start..j])));
    }
    let text: String = src[start..i].chars().filter(|c| *c != '_').collect();
    let neg = text.starts_with('-');
    let body: String = src[body_start..i].chars().filter(|c| *c != '_').collect();
    let bad = || perr(start, format!("bad number syntax: {:?}", &src[start..i]));
    let int_part = |digits: &str, radix: u32| -> Result<Value, String> {
        let v = i64::from_str_radix(digits, radix).map_err(|_| bad())?;
        Ok(Value::Int(if neg { -v } else { v }))
    };
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        int_part(h, 16)?
    } else if let Some(o) = body.strip_prefix("0o").or_else(|| body.strip_prefix("0O")) {
        int_part(o, 8)?
    } else if let Some(bn) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
        int_part(bn, 2)?
    } else if body.contains(['.', 'e', 'E']) {
        Value::Float(text.parse::<f64>().map_err(|_| bad())?)
    } else if body.len() > 1 && body.starts_with('0') && body.bytes().all(|c| (b'0'..=b'7').contains(&c)) {
        int_part(&body[1..], 8)?
    } else {
        match text.parse::<i64>() {
            Ok(v) => Value::Int(v),
            Err(_) => Value::Float(text.parse::<f64>().map_err(|_| bad())?),
        }
    };
    Ok((v, i))
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

enum Term {
    Eof,
    End(usize),
    Else(Option<Pipeline>, usize),
}

fn parse_list(items: &[Item], idx: &mut usize, depth: usize) -> Result<(Vec<Node>, Term), String> {
    let mut nodes = Vec::new();
    while *idx < items.len() {
        let item = &items[*idx];
        *idx += 1;
        let (toks, pos) = match item {
            Item::Text(t) => {
                nodes.push(Node::Text(t.clone()));
                continue;
            }
            Item::Action(toks, pos) => (toks, *pos),
        };
        let keyword = match toks.first() {
            None => return Err(perr(pos, "missing value for command")),
            Some(Token { tok: Tok::Ident(w), .. }) => w.as_str(),
            Some(_) => "",
        };
        match keyword {
            "if" => {
                let mut cond = parse_pipeline_all(&toks[1..], pos, "if")?;
                let mut branches = Vec::new();
                let otherwise;
                loop {
                    let (body, term) = parse_list(items, idx, depth + 1)?;
                    match term {
                        Term::End(_) => {
                            branches.push((cond, body));
                            otherwise = Vec::new();
                            break;
                        }
                        Term::Else(Some(next), _) => {
                            branches.push((cond, body));
                            cond = next;
                        }
                        Term::Else(None, _) => {
                            branches.push((cond, body));
                            let (body2, term2) = parse_list(items, idx, depth + 1)?;
                            match term2 {
                                Term::End(_) => {}
                                Term::Else(_, p) => return Err(perr(p, "expected end; found {{else}}")),
                                Term::Eof => return Err(perr(pos, "unexpected EOF: missing {{end}}")),
                            }
                            otherwise = body2;
                            break;
                        }
                        Term::Eof => return Err(perr(pos, "unexpected EOF: missing {{end}}")),
                    }
                }
                nodes.push(Node::If { branches, otherwise });
            }
            "else" => {
                if depth == 0 {
                    return Err(perr(pos, "unexpected {{else}}"));
                }
                if toks.len() == 1 {
                    return Ok((nodes, Term::Else(None, pos)));
                }
                match &toks[1].tok {
                    Tok::Ident(w) if w == "if" => {
                        let p = parse_pipeline_all(&toks[2..], pos, "if")?;
                        return Ok((nodes, Term::Else(Some(p), pos)));
                    }
                    _ => return Err(perr(toks[1].pos, "unexpected token after else")),
                }
            }
            "end" => {
                if depth == 0 {
                    return Err(perr(pos, "unexpected {{end}}"));
                }
                if toks.len() > 1 {
                    return Err(perr(toks[1].pos, "unexpected token in end"));
                }
                return Ok((nodes, Term::End(pos)));
            }
            "range" | "with" | "define" | "template" | "block" | "break" | "continue" => {
                return Err(perr(pos, format!("{{{{{keyword}}}}} is not supported")));
            }
            _ => nodes.push(Node::Action(parse_pipeline_all(toks, pos, "command")?)),
        }
    }
    Ok((nodes, Term::Eof))
}

fn parse_pipeline_all(toks: &[Token], pos: usize, ctx: &str) -> Result<Pipeline, String> {
    if toks.is_empty() {
        return Err(perr(pos, format!("missing value for {ctx}")));
    }
    let mut i = 0;
    let p = parse_pipeline(toks, &mut i, false, pos)?;
    if i < toks.len() {
        return Err(perr(toks[i].pos, "unexpected token"));
    }
    Ok(p)
}

fn parse_pipeline(toks: &[Token], i: &mut usize, in_paren: bool, open: usize) -> Result<Pipeline, String> {
    let mut cmds = Vec::new();
    loop {
        let cmd_pos = toks.get(*i).map_or(open, |t| t.pos);
        let mut args = Vec::new();
        let mut closed = false;
        let mut piped = false;
        while *i < toks.len() {
            let t = &toks[*i];
            *i += 1;
            match &t.tok {
                Tok::Pipe => {
                    piped = true;
                    break;
                }
                Tok::RParen => {
                    if !in_paren {
                        return Err(perr(t.pos, "unexpected right paren"));
                    }
                    closed = true;
                    break;
                }
                Tok::LParen => args.push(Operand::Sub(parse_pipeline(toks, i, true, t.pos)?)),
                Tok::Field(n) => args.push(Operand::Field(n.clone())),
                Tok::Lit(v) => args.push(Operand::Lit(v.clone())),
                Tok::Ident(n) => match FUNCS.iter().find(|f| **f == n.as_str()) {
                    Some(f) => args.push(Operand::Func(f)),
                    None => return Err(perr(t.pos, format!("function {n:?} not defined"))),
                },
                Tok::Dot => return Err(perr(t.pos, "'.' (the whole label map) is not supported")),
                Tok::Var(v) => return Err(perr(t.pos, format!("variables are not supported: {v}"))),
                Tok::Assign => return Err(perr(t.pos, "variable declarations are not supported")),
            }
        }
        if args.is_empty() {
            return Err(perr(cmd_pos, "missing command"));
        }
        let is_func = matches!(args[0], Operand::Func(_));
        if !is_func {
            if args.len() > 1 {
                return Err(perr(cmd_pos, "can't give argument to non-function"));
            }
            if !cmds.is_empty() {
                return Err(perr(cmd_pos, format!("non executable command in pipeline stage {}", cmds.len() + 1)));
            }
            if matches!(args[0], Operand::Lit(Value::Nil)) {
                return Err(perr(cmd_pos, "nil is not a command"));
            }
        }
        let mut regex = None;
        if let (Operand::Func(f), Some(Operand::Lit(Value::Str(pat)))) = (&args[0], args.get(1))
            && REGEX_FUNCS.contains(f)
        {
            regex = Some(Regex::new(pat).map_err(|e| perr(cmd_pos, format!("invalid regex {pat:?}: {e}")))?);
        }
        cmds.push(Cmd { args, regex });
        if piped {
            continue;
        }
        if in_paren && !closed {
            return Err(perr(open, "unclosed left paren"));
        }
        return Ok(Pipeline { cmds });
    }
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

struct Ctx<'a> {
    line: &'a str,
    ts: i64,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Template {
    /// Parses `src`; the error says what is wrong and at which byte offset.
    pub fn parse(src: &str) -> Result<Template, String> {
        let items = lex(src)?;
        let mut idx = 0;
        let (nodes, term) = parse_list(&items, &mut idx, 0)?;
        if let Term::End(p) | Term::Else(_, p) = term {
            return Err(perr(p, "unexpected {{end}}"));
        }
        let literal = if nodes.iter().all(|n| matches!(n, Node::Text(_))) {
            let mut s = String::new();
            for n in &nodes {
                if let Node::Text(t) = n {
                    s.push_str(t);
                }
            }
            Some(s)
        } else {
            None
        };
        Ok(Template { nodes, literal })
    }

    /// Renders the template. `lookup(name)` gives the value of `.name`
    /// (missing labels render as the empty string), `line` is the current log
    /// line (`__line__`) and `ts_ns` the entry time in ns (`__timestamp__`).
    pub fn render(&self, line: &str, ts_ns: i64, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        if let Some(s) = &self.literal {
            return Ok(s.clone());
        }
        let ctx = Ctx { line, ts: ts_ns, lookup };
        let mut out = String::new();
        exec_list(&self.nodes, &ctx, &mut out)?;
        Ok(out)
    }

    /// True when the template has no actions (it renders to constant text).
    pub fn is_literal(&self) -> bool {
        self.literal.is_some()
    }
}

fn exec_list(nodes: &[Node], ctx: &Ctx, out: &mut String) -> Result<(), String> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Action(p) => {
                let v = eval_pipeline(p, ctx)?;
                write_value(out, &v);
            }
            Node::If { branches, otherwise } => {
                let mut done = false;
                for (cond, body) in branches {
                    if truthy(&eval_pipeline(cond, ctx)?) {
                        exec_list(body, ctx, out)?;
                        done = true;
                        break;
                    }
                }
                if !done {
                    exec_list(otherwise, ctx, out)?;
                }
            }
        }
    }
    Ok(())
}

fn eval_pipeline(p: &Pipeline, ctx: &Ctx) -> Result<Value, String> {
    let mut prev: Option<Value> = None;
    for cmd in &p.cmds {
        prev = Some(eval_cmd(cmd, ctx, prev)?);
    }
    Ok(prev.unwrap_or(Value::Nil))
}

fn eval_cmd(cmd: &Cmd, ctx: &Ctx, piped: Option<Value>) -> Result<Value, String> {
    match &cmd.args[0] {
        Operand::Func(name) if *name == "and" || *name == "or" => {
            let n = cmd.args.len() - 1 + usize::from(piped.is_some());
            if n == 0 {
                return Err(format!("wrong number of args for {name}: want at least 1 got 0"));
            }
            let want = *name == "or";
            let mut last = Value::Nil;
            for a in &cmd.args[1..] {
                last = eval_operand(a, ctx)?;
                if truthy(&last) == want {
                    return Ok(last);
                }
            }
            if let Some(p) = piped {
                last = p;
            }
            Ok(last)
        }
        Operand::Func(name) => {
            let mut vals = Vec::with_capacity(cmd.args.len());
            for a in &cmd.args[1..] {
                vals.push(eval_operand(a, ctx)?);
            }
            if let Some(p) = piped {
                vals.push(p);
            }
            call(name, vals, cmd.regex.as_ref(), ctx).map_err(|e| format!("error calling {name}: {e}"))
        }
        other => eval_operand(other, ctx),
    }
}

fn eval_operand(op: &Operand, ctx: &Ctx) -> Result<Value, String> {
    match op {
        Operand::Field(n) => Ok(Value::Str((ctx.lookup)(n).unwrap_or_default())),
        Operand::Func(f) => call(f, Vec::new(), None, ctx).map_err(|e| format!("error calling {f}: {e}")),
        Operand::Lit(v) => Ok(v.clone()),
        Operand::Sub(p) => eval_pipeline(p, ctx),
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Str(s) => !s.is_empty(),
        Value::Int(i) => *i != 0,
        Value::Float(f) => *f != 0.0,
        Value::Bool(b) => *b,
        Value::Time(_) => true,
        Value::Nil => false,
    }
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Str(s) => out.push_str(s),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => out.push_str(&fmt_float_v(*f)),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Time(ns) => out.push_str(&time_string(*ns)),
        Value::Nil => out.push_str("<no value>"),
    }
}

fn to_str(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        _ => {
            let mut s = String::new();
            write_value(&mut s, v);
            s
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Str(_) => "string",
        Value::Int(_) => "int",
        Value::Float(_) => "float64",
        Value::Bool(_) => "bool",
        Value::Time(_) => "time.Time",
        Value::Nil => "<nil>",
    }
}

/// Parses a string as a number the way a template author would expect.
fn parse_num(s: &str) -> Option<Value> {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-')) {
        return None;
    }
    let first = t.as_bytes()[0];
    let starts_ok = first.is_ascii_digit() || (first == b'.' && t.len() > 1);
    if !starts_ok {
        return None;
    }
    if let Ok(i) = s.parse::<i64>() {
        return Some(Value::Int(i));
    }
    s.parse::<f64>().ok().map(Value::Float)
}

fn to_int(v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Float(f) if f.is_finite() => Ok(f.trunc() as i64),
        Value::Str(s) => match parse_num(s) {
            Some(Value::Int(i)) => Ok(i),
            Some(Value::Float(f)) if f.is_finite() => Ok(f.trunc() as i64),
            _ => Err(format!("bad number {s:?}")),
        },
        Value::Bool(b) => Ok(i64::from(*b)),
        other => Err(format!("expected a number; got {}", type_name(other))),
    }
}

fn to_float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Int(i) => Ok(*i as f64),
        Value::Float(f) => Ok(*f),
        Value::Str(s) => match parse_num(s) {
            Some(Value::Int(i)) => Ok(i as f64),
            Some(Value::Float(f)) => Ok(f),
            _ => Err(format!("bad number {s:?}")),
        },
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        other => Err(format!("expected a number; got {}", type_name(other))),
    }
}

fn to_time(v: &Value) -> Result<i64, String> {
    match v {
        Value::Time(t) => Ok(*t),
        Value::Int(s) => Ok(s.saturating_mul(1_000_000_000)),
        Value::Str(s) => match s.parse::<i64>() {
            Ok(s) => Ok(s.saturating_mul(1_000_000_000)),
            Err(_) => Err(format!("expected a time; got string {s:?}")),
        },
        other => Err(format!("expected a time; got {}", type_name(other))),
    }
}

fn arity(args: &[Value], n: usize) -> Result<(), String> {
    if args.len() != n {
        return Err(format!("wrong number of args: want {n} got {}", args.len()));
    }
    Ok(())
}

fn at_least(args: &[Value], n: usize) -> Result<(), String> {
    if args.len() < n {
        return Err(format!("wrong number of args: want at least {n} got {}", args.len()));
    }
    Ok(())
}

/// Largest char boundary `<= i` in `s`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[derive(PartialEq, PartialOrd)]
enum Cmp {
    I(i64),
    F(f64),
    S(String),
    B(bool),
}

fn cmp_key(v: &Value) -> Cmp {
    match v {
        Value::Int(i) => Cmp::I(*i),
        Value::Float(f) => Cmp::F(*f),
        Value::Bool(b) => Cmp::B(*b),
        Value::Time(t) => Cmp::I(*t),
        Value::Str(s) => match parse_num(s) {
            Some(Value::Int(i)) => Cmp::I(i),
            Some(Value::Float(f)) => Cmp::F(f),
            _ => Cmp::S(s.clone()),
        },
        Value::Nil => Cmp::S(String::new()),
    }
}

/// Compares two values: numerically when both are numbers, else as strings.
fn compare(a: &Value, b: &Value, ordered: bool) -> Result<std::cmp::Ordering, String> {
    use std::cmp::Ordering;
    let (ka, kb) = (cmp_key(a), cmp_key(b));
    let ord = match (&ka, &kb) {
        (Cmp::I(x), Cmp::I(y)) => x.cmp(y),
        (Cmp::I(_) | Cmp::F(_), Cmp::I(_) | Cmp::F(_)) => {
            let f = |k: &Cmp| match k {
                Cmp::I(i) => *i as f64,
                Cmp::F(f) => *f,
                _ => 0.0,
            };
            f(&ka).partial_cmp(&f(&kb)).unwrap_or(Ordering::Less)
        }
        (Cmp::B(x), Cmp::B(y)) => {
            if ordered {
                return Err("invalid type for comparison".into());
            }
            x.cmp(y)
        }
        _ => to_str(a).cmp(&to_str(b)),
    };
    Ok(ord)
}

fn call(name: &str, args: Vec<Value>, re: Option<&Regex>, ctx: &Ctx) -> Result<Value, String> {
    use std::cmp::Ordering;
    let s = |i: usize| to_str(&args[i]);
    let str_v = Value::Str;
    let v = match name {
        "__line__" => {
            arity(&args, 0)?;
            str_v(ctx.line.to_string())
        }
        "__timestamp__" => {
            arity(&args, 0)?;
            Value::Time(ctx.ts)
        }
        "now" => {
            arity(&args, 0)?;
            let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?;
            Value::Time(d.as_nanos() as i64)
        }
        "not" => {
            arity(&args, 1)?;
            Value::Bool(!truthy(&args[0]))
        }
        "len" => {
            arity(&args, 1)?;
            match &args[0] {
                Value::Str(x) => Value::Int(x.len() as i64),
                other => return Err(format!("len of type {}", type_name(other))),
            }
        }
        "eq" | "ne" => {
            at_least(&args, 2)?;
            if name == "ne" {
                arity(&args, 2)?;
            }
            let mut eq = false;
            for b in &args[1..] {
                if compare(&args[0], b, false)? == Ordering::Equal {
                    eq = true;
                    break;
                }
            }
            Value::Bool(if name == "eq" { eq } else { !eq })
        }
        "lt" | "le" | "gt" | "ge" => {
            arity(&args, 2)?;
            let o = compare(&args[0], &args[1], true)?;
            Value::Bool(match name {
                "lt" => o == Ordering::Less,
                "le" => o != Ordering::Greater,
                "gt" => o == Ordering::Greater,
                _ => o != Ordering::Less,
            })
        }
        "printf" => {
            at_least(&args, 1)?;
            str_v(go_sprintf(&s(0), &args[1..]))
        }
        "print" | "println" => {
            // Go's fmt.Sprint adds spaces between operands when neither is a string.
            let mut out = String::new();
            for (i, a) in args.iter().enumerate() {
                let sep = name == "println"
                    || (i > 0 && !matches!(a, Value::Str(_)) && !matches!(args[i - 1], Value::Str(_)));
                if i > 0 && sep {
                    out.push(' ');
                }
                write_value(&mut out, a);
            }
            if name == "println" {
                out.push('\n');
            }
            str_v(out)
        }
        "urlquery" | "urlencode" => {
            arity(&args, 1)?;
            str_v(query_escape(&s(0)))
        }
        "urldecode" => {
            arity(&args, 1)?;
            str_v(query_unescape(&s(0))?)
        }
        "html" => {
            arity(&args, 1)?;
            let mut out = String::new();
            for c in s(0).chars() {
                match c {
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '&' => out.push_str("&amp;"),
                    '"' => out.push_str("&#34;"),
                    '\'' => out.push_str("&#39;"),
                    '\0' => out.push('\u{FFFD}'),
                    c => out.push(c),
                }
            }
            str_v(out)
        }
        "js" => {
            arity(&args, 1)?;
            let mut out = String::new();
            for c in s(0).chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\'' => out.push_str("\\'"),
                    '"' => out.push_str("\\\""),
                    '<' => out.push_str("\\u003C"),
                    '>' => out.push_str("\\u003E"),
                    '&' => out.push_str("\\u0026"),
                    '=' => out.push_str("\\u003D"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if (c as u32) < 0x20 => {
                        let _ = write!(out, "\\u{:04X}", c as u32);
                    }
                    c => out.push(c),
                }
            }
            str_v(out)
        }
        "ToLower" | "lower" => {
            arity(&args, 1)?;
            str_v(go_lower(&s(0)))
        }
        "ToUpper" | "upper" => {
            arity(&args, 1)?;
            str_v(go_upper(&s(0)))
        }
        "Title" | "title" => {
            arity(&args, 1)?;
            str_v(go_title(&s(0)))
        }
        "TrimSpace" | "trim" => {
            arity(&args, 1)?;
            str_v(s(0).trim().to_string())
        }
        "Trim" | "TrimLeft" | "TrimRight" | "trimAll" => {
            arity(&args, 2)?;
            let (subject, cutset) = if name == "trimAll" { (s(1), s(0)) } else { (s(0), s(1)) };
            let f = |c: char| cutset.contains(c);
            str_v(match name {
                "TrimLeft" => subject.trim_start_matches(f).to_string(),
                "TrimRight" => subject.trim_end_matches(f).to_string(),
                _ => subject.trim_matches(f).to_string(),
            })
        }
        "TrimPrefix" | "TrimSuffix" | "trimPrefix" | "trimSuffix" => {
            arity(&args, 2)?;
            let (subject, fix) = if name.starts_with('T') { (s(0), s(1)) } else { (s(1), s(0)) };
            let r = if name.ends_with("Prefix") {
                subject.strip_prefix(fix.as_str())
            } else {
                subject.strip_suffix(fix.as_str())
            };
            str_v(r.map(str::to_string).unwrap_or(subject))
        }
        "Replace" => {
            arity(&args, 4)?;
            let n = to_int(&args[3])?;
            let (subject, old, new) = (s(0), s(1), s(2));
            str_v(if n < 0 { subject.replace(&old, &new) } else { subject.replacen(&old, &new, n as usize) })
        }
        "replace" => {
            arity(&args, 3)?;
            str_v(s(2).replace(&s(0), &s(1)))
        }
        "trunc" => {
            arity(&args, 2)?;
            let c = to_int(&args[0])?;
            let x = s(1);
            let len = x.len() as i64;
            str_v(if c < 0 && len + c > 0 {
                x[floor_boundary(&x, (len + c) as usize)..].to_string()
            } else if c >= 0 && len > c {
                x[..floor_boundary(&x, c as usize)].to_string()
            } else {
                x
            })
        }
        "substr" => {
            arity(&args, 3)?;
            let (start, end) = (to_int(&args[0])?, to_int(&args[1])?);
            let x = s(2);
            let len = x.len() as i64;
            let clamp = |i: i64| floor_boundary(&x, i.clamp(0, len) as usize);
            let r = if start < 0 {
                &x[..clamp(end)]
            } else if end < 0 || end > len {
                &x[clamp(start)..]
            } else if start > end {
                return Err(format!("slice bounds out of range [{start}:{end}]"));
            } else {
                &x[clamp(start)..clamp(end)]
            };
            str_v(r.to_string())
        }
        "contains" | "hasPrefix" | "hasSuffix" => {
            arity(&args, 2)?;
            let (needle, hay) = (s(0), s(1));
            Value::Bool(match name {
                "contains" => hay.contains(&needle),
                "hasPrefix" => hay.starts_with(&needle),
                _ => hay.ends_with(&needle),
            })
        }
        "repeat" => {
            arity(&args, 2)?;
            let n = to_int(&args[0])?;
            if n < 0 {
                return Err("negative repeat count".into());
            }
            let x = s(1);
            if (x.len() as u128) * (n as u128) > (1 << 30) {
                return Err("repeat count too large".into());
            }
            str_v(x.repeat(n as usize))
        }
        "indent" | "nindent" => {
            arity(&args, 2)?;
            let n = to_int(&args[0])?.clamp(0, 1 << 16) as usize;
            let pad = " ".repeat(n);
            let body = format!("{pad}{}", s(1).replace('\n', &format!("\n{pad}")));
            str_v(if name == "nindent" { format!("\n{body}") } else { body })
        }
        "default" => {
            if args.is_empty() || args.len() > 2 {
                return Err(format!("wrong number of args: want 1 or 2 got {}", args.len()));
            }
            match args.get(1) {
                Some(given) if truthy(given) => given.clone(),
                _ => args[0].clone(),
            }
        }
        "regexReplaceAll" | "regexReplaceAllLiteral" | "count" => {
            arity(&args, if name == "count" { 2 } else { 3 })?;
            let compiled;
            let re = match re {
                Some(r) => r,
                None => {
                    compiled = Regex::new(&s(0)).map_err(|e| e.to_string())?;
                    &compiled
                }
            };
            let subject = s(1);
            match name {
                "count" => Value::Int(re.find_iter(&subject).count() as i64),
                "regexReplaceAll" => str_v(re.replace_all(&subject, s(2).as_str()).into_owned()),
                _ => str_v(re.replace_all(&subject, regex::NoExpand(&s(2))).into_owned()),
            }
        }
        "alignLeft" | "alignRight" => {
            arity(&args, 2)?;
            let n = to_int(&args[0])?;
            let x = s(1);
            let l = x.chars().count() as i64;
            if n < 0 || n == l {
                str_v(x)
            } else if n > l {
                let pad = " ".repeat((n - l) as usize);
                str_v(if name == "alignLeft" { x + &pad } else { pad + &x })
            } else if name == "alignLeft" {
                str_v(x.chars().take(n as usize).collect())
            } else {
                str_v(x.chars().skip((l - n) as usize).collect())
            }
        }
        "b64enc" => {
            arity(&args, 1)?;
            str_v(b64_encode(s(0).as_bytes()))
        }
        "b64dec" => {
            arity(&args, 1)?;
            str_v(match b64_decode(&s(0)) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) => e,
            })
        }
        "unixEpoch" | "unixEpochMillis" | "unixEpochNanos" => {
            arity(&args, 1)?;
            let t = to_time(&args[0])?;
            let v = match name {
                "unixEpoch" => t.div_euclid(1_000_000_000),
                "unixEpochMillis" => t.div_euclid(1_000_000),
                _ => t,
            };
            str_v(v.to_string())
        }
        "unixToTime" => {
            arity(&args, 1)?;
            let x = s(0);
            let n: i64 = x.parse().map_err(|_| format!("unable to parse epoch {x:?}"))?;
            let digits = x.trim_start_matches('-').len();
            Value::Time(match digits {
                0..=10 => n.saturating_mul(1_000_000_000),
                11..=13 => n.saturating_mul(1_000_000),
                14..=16 => n.saturating_mul(1_000),
                _ => n,
            })
        }
        "date" => {
            arity(&args, 2)?;
            str_v(go_format_time(&s(0), to_time(&args[1])?))
        }
        "int" => {
            arity(&args, 1)?;
            Value::Int(to_int(&args[0])?)
        }
        "float64" => {
            arity(&args, 1)?;
            Value::Float(to_float(&args[0])?)
        }
        "add" | "mul" | "max" | "min" => {
            at_least(&args, if name == "add" { 0 } else { 1 })?;
            let mut acc: Option<i64> = None;
            for a in &args {
                let x = to_int(a)?;
                acc = Some(match (acc, name) {
                    (None, _) => x,
                    (Some(p), "add") => p.wrapping_add(x),
                    (Some(p), "mul") => p.wrapping_mul(x),
                    (Some(p), "max") => p.max(x),
                    (Some(p), _) => p.min(x),
                });
            }
            Value::Int(acc.unwrap_or(0))
        }
        "sub" | "div" | "mod" => {
            arity(&args, 2)?;
            let (a, b) = (to_int(&args[0])?, to_int(&args[1])?);
            if name != "sub" && b == 0 {
                return Err("integer divide by zero".into());
            }
            Value::Int(match name {
                "sub" => a.wrapping_sub(b),
                "div" => a.wrapping_div(b),
                _ => a.wrapping_rem(b),
            })
        }
        "addf" | "subf" | "mulf" | "divf" | "maxf" | "minf" => {
            at_least(&args, if name == "addf" { 0 } else { 1 })?;
            let mut acc: Option<Dec> = None;
            for a in &args {
                let x = to_float(a)?;
                acc = Some(match acc {
                    None => Dec::from_f64(x),
                    Some(p) => match name {
                        "addf" => p.add(&Dec::from_f64(x)),
                        "subf" => p.sub(&Dec::from_f64(x)),
                        "mulf" => p.mul(&Dec::from_f64(x)),
                        "divf" => {
                            if x == 0.0 {
                                return Err("division by zero".into());
                            }
                            p.div(&Dec::from_f64(x))
                        }
                        "maxf" => Dec::Float(p.to_f64().max(x)),
                        _ => Dec::Float(p.to_f64().min(x)),
                    },
                });
            }
            Value::Float(acc.map_or(0.0, |d| d.to_f64()))
        }
        "ceil" | "floor" => {
            arity(&args, 1)?;
            let x = to_float(&args[0])?;
            Value::Float(if name == "ceil" { x.ceil() } else { x.floor() })
        }
        "round" => {
            if args.len() < 2 || args.len() > 3 {
                return Err(format!("wrong number of args: want 2 or 3 got {}", args.len()));
            }
            let x = to_float(&args[0])?;
            let p = to_int(&args[1])?;
            let on = if args.len() == 3 { to_float(&args[2])? } else { 0.5 };
            let pow = 10f64.powi(p as i32);
            let digit = pow * x;
            let frac = digit.fract();
            let r = if frac >= on { digit.ceil() } else { digit.floor() };
            Value::Float(r / pow)
        }
        other => return Err(format!("function {other:?} not implemented")),
    };
    Ok(v)
}

/// Go maps case rune by rune; a rune without a single-rune mapping is kept.
fn upper_char(c: char) -> char {
    let mut it = c.to_uppercase();
    match (it.next(), it.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

fn lower_char(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

/// Go's `strings.ToUpper`.
fn go_upper(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_uppercase();
    }
    s.chars().map(upper_char).collect()
}

/// Go's `strings.ToLower`.
fn go_lower(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    s.chars().map(lower_char).collect()
}

/// Go's deprecated `strings.Title`: upper-cases the first letter of each word.
fn go_title(s: &str) -> String {
    fn is_sep(c: char) -> bool {
        if c.is_ascii() {
            return !(c.is_ascii_alphanumeric() || c == '_');
        }
        if c.is_alphanumeric() {
            return false;
        }
        c.is_whitespace()
    }
    let mut out = String::with_capacity(s.len());
    let mut prev = ' ';
    for c in s.chars() {
        if is_sep(prev) {
            out.push(upper_char(c));
        } else {
            out.push(c);
        }
        prev = c;
    }
    out
}

fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

fn query_unescape(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1).and_then(|c| hex_val(*c));
                let l = b.get(i + 2).and_then(|c| hex_val(*c));
                match (h, l) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => {
                        let end = (i + 3).min(b.len());
                        return Err(format!("invalid URL escape {:?}", String::from_utf8_lossy(&b[i..end])));
                    }
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn b64_decode(s: &str) -> Result<Vec<u8>, String> {
    // Go's StdEncoding ignores '\r' and '\n'.
    let clean: Vec<(usize, u8)> = s.bytes().enumerate().filter(|(_, c)| *c != b'\r' && *c != b'\n').collect();
    let bad = |i: usize| format!("illegal base64 data at input byte {i}");
    if !clean.len().is_multiple_of(4) {
        let i = clean.len() / 4 * 4;
        return Err(bad(clean.get(i).map_or(s.len(), |p| p.0)));
    }
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for (ci, quad) in clean.chunks(4).enumerate() {
        let last = ci == clean.len() / 4 - 1;
        let mut n: u32 = 0;
        let mut pad = 0;
        for (k, (pos, c)) in quad.iter().enumerate() {
            let v = match c {
                b'=' if last && k >= 2 => {
                    pad += 1;
                    0
                }
                _ if pad > 0 => return Err(bad(*pos)),
                _ => match B64.iter().position(|b| b == c) {
                    Some(v) => v as u32,
                    None => return Err(bad(*pos)),
                },
            };
            n = (n << 6) | v;
        }
        if pad == 1 && quad[2].1 == b'=' {
            return Err(bad(quad[2].0));
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Ok(out)
}

/// Small exact decimal used to mimic Sprig's decimal-based float math.
enum Dec {
    Exact(i128, u32),
    Float(f64),
}

impl Dec {
    fn from_f64(f: f64) -> Dec {
        if !f.is_finite() {
            return Dec::Float(f);
        }
        let s = format!("{f}");
        let (neg, s) = match s.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s.as_str()),
        };
        let (ip, fp) = s.split_once('.').unwrap_or((s, ""));
        if fp.len() > 30 || ip.len() > 30 {
            return Dec::Float(if neg { -f.abs() } else { f });
        }
        match format!("{ip}{fp}").parse::<i128>() {
            Ok(m) => Dec::Exact(if neg { -m } else { m }, fp.len() as u32),
            Err(_) => Dec::Float(f),
        }
    }
    fn to_f64(&self) -> f64 {
        match self {
            Dec::Float(f) => *f,
            Dec::Exact(m, sc) => {
                let neg = *m < 0;
                let digits = m.unsigned_abs().to_string();
                let sc = *sc as usize;
                let s = if digits.len() > sc {
                    format!("{}.{}", &digits[..digits.len() - sc], &digits[digits.len() - sc..])
                } else {
                    format!("0.{}{}", "0".repeat(sc - digits.len()), digits)
                };
                let v: f64 = s.parse().unwrap_or(0.0);
                if neg { -v } else { v }
            }
        }
    }
    fn align(&self, o: &Dec) -> Option<(i128, i128, u32)> {
        match (self, o) {
            (Dec::Exact(a, sa), Dec::Exact(b, sb)) => {
                let sc = (*sa).max(*sb);
                let a = a.checked_mul(10i128.checked_pow(sc - sa)?)?;
                let b = b.checked_mul(10i128.checked_pow(sc - sb)?)?;
                Some((a, b, sc))
            }
            _ => None,
        }
    }
    fn add(&self, o: &Dec) -> Dec {
        match self.align(o).and_then(|(a, b, sc)| Some((a.checked_add(b)?, sc))) {
            Some((m, sc)) => Dec::Exact(m, sc),
            None => Dec::Float(self.to_f64() + o.to_f64()),
        }
    }
    fn sub(&self, o: &Dec) -> Dec {
        match self.align(o).and_then(|(a, b, sc)| Some((a.checked_sub(b)?, sc))) {
            Some((m, sc)) => Dec::Exact(m, sc),
            None => Dec::Float(self.to_f64() - o.to_f64()),
        }
    }
    /// Division rounded (half away from zero) to 16 decimal places, like
    /// shopspring/decimal's default `DivisionPrecision`.
    fn div(&self, o: &Dec) -> Dec {
        let exact = || -> Option<Dec> {
            let (Dec::Exact(a, sa), Dec::Exact(b, sb)) = (self, o) else { return None };
            let num = a.checked_mul(10i128.checked_pow(sb + 16)?)?;
            let den = b.checked_mul(10i128.checked_pow(*sa)?)?;
            if den == 0 {
                return None;
            }
            let (mut q, r) = (num / den, num % den);
            if r.checked_abs()?.checked_mul(2)? >= den.checked_abs()? {
                q += if (num < 0) != (den < 0) { -1 } else { 1 };
            }
            Some(Dec::Exact(q, 16))
        };
        exact().unwrap_or_else(|| Dec::Float(self.to_f64() / o.to_f64()))
    }
    fn mul(&self, o: &Dec) -> Dec {
        if let (Dec::Exact(a, sa), Dec::Exact(b, sb)) = (self, o)
            && let Some(m) = a.checked_mul(*b)
            && sa + sb <= 60
        {
            return Dec::Exact(m, sa + sb);
        }
        Dec::Float(self.to_f64() * o.to_f64())
    }
}

// ---------------------------------------------------------------------------
// printf
// ---------------------------------------------------------------------------

#[derive(Default, Clone, Copy)]
struct Spec {
    minus: bool,
    plus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    width: Option<usize>,
    prec: Option<usize>,
}

fn pad(out: &mut String, body: &str, spec: &Spec, numeric: bool) {
    let w = spec.width.unwrap_or(0);
    let n = body.chars().count();
    if n >= w {
        out.push_str(body);
        return;
    }
    let fill = w - n;
    if spec.minus {
        out.push_str(body);
        out.extend(std::iter::repeat_n(' ', fill));
    } else if spec.zero {
        // Zero padding goes after any sign.
        let (sign, rest) = if numeric && (body.starts_with('-') || body.starts_with('+') || body.starts_with(' ')) {
            body.split_at(1)
        } else {
            ("", body)
        };
        out.push_str(sign);
        out.extend(std::iter::repeat_n('0', fill));
        out.push_str(rest);
    } else {
        out.extend(std::iter::repeat_n(' ', fill));
        out.push_str(body);
    }
}

/// Quotes a string as Go's `strconv.Quote` does.
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || c == '\u{FFFD}' => {
                let _ = if (c as u32) < 0x10000 {
                    write!(out, "\\u{:04x}", c as u32)
                } else {
                    write!(out, "\\U{:08x}", c as u32)
                };
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn fmt_int(i: i64, verb: char, spec: &Spec) -> String {
    let (radix, upper) = match verb {
        'x' => (16, false),
        'X' => (16, true),
        'o' | 'O' => (8, false),
        'b' => (2, false),
        _ => (10, false),
    };
    let mag = i.unsigned_abs();
    let mut digits = match radix {
        16 if upper => format!("{mag:X}"),
        16 => format!("{mag:x}"),
        8 => format!("{mag:o}"),
        2 => format!("{mag:b}"),
        _ => mag.to_string(),
    };
    if let Some(p) = spec.prec {
        if p == 0 && i == 0 {
            digits.clear();
        } else if digits.len() < p {
            digits = format!("{}{digits}", "0".repeat(p - digits.len()));
        }
    }
    let prefix = match (verb, spec.sharp) {
        ('x', true) => "0x",
        ('X', true) => "0X",
        ('o', true) if !digits.starts_with('0') => "0",
        ('O', _) => "0o",
        ('b', true) => "0b",
        _ => "",
    };
    let sign = if i < 0 {
        "-"
    } else if spec.plus {
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    };
    format!("{sign}{prefix}{digits}")
}

/// Decimal digits and decimal-point position of a finite, non-negative float;
/// `sig` is the number of significant digits (None: shortest round-trip).
fn float_digits(f: f64, sig: Option<usize>) -> (String, i32) {
    let s = match sig {
        Some(p) => format!("{:.*e}", p.saturating_sub(1), f),
        None => format!("{f:e}"),
    };
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let digits: String = m.chars().filter(|c| *c != '.').collect();
    let exp: i32 = e.parse().unwrap_or(0);
    (digits, exp + 1)
}

fn digits_to_e(digits: &str, dp: i32, prec: usize, upper: bool) -> String {
    let mut d: String = digits.to_string();
    while d.len() < prec + 1 {
        d.push('0');
    }
    let mut out = String::new();
    out.push_str(&d[..1]);
    if prec > 0 {
        out.push('.');
        out.push_str(&d[1..=prec]);
    }
    let exp = if digits.trim_start_matches('0').is_empty() { 0 } else { dp - 1 };
    let _ = write!(out, "{}{}{:02}", if upper { 'E' } else { 'e' }, if exp < 0 { '-' } else { '+' }, exp.abs());
    out
}

fn digits_to_f(digits: &str, dp: i32, prec: usize) -> String {
    let mut out = String::new();
    if dp <= 0 {
        out.push('0');
    } else {
        for k in 0..dp as usize {
            out.push(digits.as_bytes().get(k).map_or('0', |b| *b as char));
        }
    }
    if prec > 0 {
        out.push('.');
        for k in 0..prec as i32 {
            let idx = dp + k;
            out.push(if idx < 0 { '0' } else { digits.as_bytes().get(idx as usize).map_or('0', |b| *b as char) });
        }
    }
    out
}

/// Formats a float with Go's `%e`, `%f`, `%g` (or `%v` when `verb == 'v'`).
fn fmt_float(f: f64, verb: char, spec: &Spec) -> String {
    let sign = if f.is_sign_negative() && !f.is_nan() {
        "-"
    } else if spec.plus {
        "+"
    } else if spec.space {
        " "
    } else {
        ""
    };
    if f.is_nan() {
        return format!(
            "{}NaN",
            if spec.plus {
                "+"
            } else if spec.space {
                " "
            } else {
                ""
            }
        );
    }
    if f.is_infinite() {
        return if f < 0.0 { "-Inf".to_string() } else { "+Inf".to_string() };
    }
    let a = f.abs();
    let body = match verb {
        'e' | 'E' => {
            let p = spec.prec.unwrap_or(6);
            let (d, dp) = float_digits(a, Some(p + 1));
            digits_to_e(&d, dp, p, verb == 'E')
        }
        'f' | 'F' => format!("{:.*}", spec.prec.unwrap_or(6), a),
        _ => {
            // %g / %v
            let upper = verb == 'G';
            let (mut d, dp) = match spec.prec {
                Some(p) => float_digits(a, Some(p.max(1))),
                None => float_digits(a, None),
            };
            while d.len() > 1 && d.ends_with('0') {
                d.pop();
            }
            let nd = d.len() as i32;
            let mut eprec = spec.prec.map_or(6, |p| p.max(1) as i32);
            if spec.prec.is_some() && eprec > nd && nd >= dp {
                eprec = nd;
            }
            if spec.prec.is_none() {
                eprec = 6;
            }
            let exp = if a == 0.0 { 0 } else { dp - 1 };
            if exp < -4 || exp >= eprec {
                digits_to_e(&d, dp, (nd - 1) as usize, upper)
            } else {
                digits_to_f(&d, dp, (nd - dp).max(0) as usize)
            }
        }
    };
    format!("{sign}{body}")
}

/// Go's `%v` for a float64.
fn fmt_float_v(f: f64) -> String {
    fmt_float(f, 'v', &Spec::default())
}

fn go_sprintf(fmt: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut argi = 0;
    let mut chars = fmt.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        while let Some(&(_, f)) = chars.peek() {
            match f {
                '-' => spec.minus = true,
                '+' => spec.plus = true,
                '#' => spec.sharp = true,
                ' ' => spec.space = true,
                '0' => spec.zero = !spec.minus,
                _ => break,
            }
            chars.next();
        }
        let num = |chars: &mut std::iter::Peekable<std::str::CharIndices>| -> Option<usize> {
            let mut n: Option<usize> = None;
            while let Some(&(_, d)) = chars.peek() {
                match d.to_digit(10) {
                    Some(v) => {
                        n = Some(n.unwrap_or(0).saturating_mul(10).saturating_add(v as usize).min(1 << 20));
                        chars.next();
                    }
                    None => break,
                }
            }
            n
        };
        spec.width = num(&mut chars);
        if let Some(&(_, '.')) = chars.peek() {
            chars.next();
            spec.prec = Some(num(&mut chars).unwrap_or(0));
        }
        if spec.minus {
            spec.zero = false;
        }
        let verb = match chars.next() {
            Some((_, v)) => v,
            None => {
                out.push_str("%!(NOVERB)");
                break;
            }
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(argi) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        argi += 1;
        fmt_arg(&mut out, arg, verb, &spec);
    }
    if argi < args.len() {
        out.push_str("%!(EXTRA ");
        for (k, a) in args[argi..].iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            if matches!(a, Value::Nil) {
                out.push_str("<nil>");
            } else {
                let _ = write!(out, "{}=", type_name(a));
                write_value(&mut out, a);
            }
        }
        out.push(')');
    }
    out
}

fn fmt_arg(out: &mut String, arg: &Value, verb: char, spec: &Spec) {
    let bad = |out: &mut String| {
        if matches!(arg, Value::Nil) {
            let _ = write!(out, "%!{verb}(<nil>)");
        } else {
            let _ = write!(out, "%!{verb}({}=", type_name(arg));
            write_value(out, arg);
            out.push(')');
        }
    };
    match arg {
        Value::Str(s) => match verb {
            's' | 'v' => {
                if verb == 'v' && spec.sharp {
                    pad(out, &go_quote(s), spec, false);
                } else {
                    let body: String = match spec.prec {
                        Some(p) => s.chars().take(p).collect(),
                        None => s.clone(),
                    };
                    pad(out, &body, spec, false);
                }
            }
            'q' => pad(out, &go_quote(s), spec, false),
            'x' | 'X' => {
                let bytes = s.as_bytes();
                let bytes = &bytes[..spec.prec.unwrap_or(bytes.len()).min(bytes.len())];
                let mut body = String::new();
                for (k, b) in bytes.iter().enumerate() {
                    if spec.space && k > 0 {
                        body.push(' ');
                    }
                    if spec.sharp && (k == 0 || spec.space) {
                        body.push_str(if verb == 'x' { "0x" } else { "0X" });
                    }
                    let _ = if verb == 'x' { write!(body, "{b:02x}") } else { write!(body, "{b:02X}") };
                }
                pad(out, &body, spec, false);
            }
            _ => bad(out),
        },
        Value::Int(i) => match verb {
            'd' | 'v' | 'x' | 'X' | 'o' | 'O' | 'b' => pad(out, &fmt_int(*i, verb, spec), spec, true),
            'c' => {
                let c = u32::try_from(*i).ok().and_then(char::from_u32).unwrap_or('\u{FFFD}');
                pad(out, &c.to_string(), spec, false);
            }
            'q' => {
                let c = u32::try_from(*i).ok().and_then(char::from_u32).unwrap_or('\u{FFFD}');
                let q = go_quote(&c.to_string());
                let inner = &q[1..q.len() - 1];
                let inner = if inner == "\\\"" {
                    "\""
                } else if inner == "'" {
                    "\\'"
                } else {
                    inner
                };
                pad(out, &format!("'{inner}'"), spec, false);
            }
            'U' => pad(out, &format!("U+{:04X}", i), spec, false),
            'e' | 'E' | 'f' | 'F' | 'g' | 'G' => bad(out),
            _ => bad(out),
        },
        Value::Float(f) => match verb {
            'v' | 'e' | 'E' | 'f' | 'F' | 'g' | 'G' => {
                let numeric = f.is_finite();
                let mut sp = *spec;
                if !numeric {
                    sp.zero = false;
                }
                pad(out, &fmt_float(*f, verb, &sp), &sp, numeric);
            }
            _ => bad(out),
        },
        Value::Bool(b) => match verb {
            't' | 'v' => pad(out, if *b { "true" } else { "false" }, spec, false),
            _ => bad(out),
        },
        Value::Time(t) => match verb {
            's' | 'v' => {
                let s = time_string(*t);
                let body: String = match spec.prec {
                    Some(p) => s.chars().take(p).collect(),
                    None => s,
                };
                pad(out, &body, spec, false);
            }
            'q' => pad(out, &go_quote(&time_string(*t)), spec, false),
            _ => bad(out),
        },
        Value::Nil => match verb {
            'v' => pad(out, "<nil>", spec, false),
            _ => bad(out),
        },
    }
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

/// Civil date (year, month 1-12, day 1-31) for days since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
    nanos: u32,
    weekday: usize,
    yday: u32,
}

fn parts(ns: i64) -> Parts {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(month - 1) as usize] + day + u32::from(leap && month > 2);
    Parts {
        year,
        month,
        day,
        hour: sod / 3600,
        min: sod / 60 % 60,
        sec: sod % 60,
        nanos,
        weekday: (days + 4).rem_euclid(7) as usize,
        yday,
    }
}

/// Go's `time.Time.String()` for a UTC instant.
fn time_string(ns: i64) -> String {
    let p = parts(ns);
    let mut out = format!("{:04}-{:02}-{:02} {:02}:{:02}:{:02}", p.year, p.month, p.day, p.hour, p.min, p.sec);
    if p.nanos != 0 {
        let frac = format!("{:09}", p.nanos);
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push_str(" +0000 UTC");
    out
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];

/// Formats a UTC instant with a Go reference-time layout.
fn go_format_time(layout: &str, ns: i64) -> String {
    let p = parts(ns);
    let b = layout.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    let hour12 = if p.hour.is_multiple_of(12) { 12 } else { p.hour % 12 };
    while i < b.len() {
        let rest = &layout[i..];
        let lower_after = |n: usize| b.get(i + n).is_some_and(u8::is_ascii_lowercase);
        let (text, len): (String, usize) = if rest.starts_with("January") {
            (MONTHS[(p.month - 1) as usize].into(), 7)
        } else if rest.starts_with("Jan") && !lower_after(3) {
            (MONTHS[(p.month - 1) as usize][..3].into(), 3)
        } else if rest.starts_with("Monday") {
            (DAYS[p.weekday].into(), 6)
        } else if rest.starts_with("Mon") && !lower_after(3) {
            (DAYS[p.weekday][..3].into(), 3)
        } else if rest.starts_with("MST") {
            ("UTC".into(), 3)
        } else if rest.starts_with("2006") {
            (format!("{:04}", p.year), 4)
        } else if rest.starts_with("002") {
            (format!("{:03}", p.yday), 3)
        } else if rest.starts_with("__2") {
            (format!("{:>3}", p.yday), 3)
        } else if rest.starts_with("_2") && !rest.starts_with("_2006") {
            (format!("{:>2}", p.day), 2)
        } else if rest.starts_with("01") {
            (format!("{:02}", p.month), 2)
        } else if rest.starts_with("02") {
            (format!("{:02}", p.day), 2)
        } else if rest.starts_with("03") {
            (format!("{hour12:02}"), 2)
        } else if rest.starts_with("04") {
            (format!("{:02}", p.min), 2)
        } else if rest.starts_with("05") {
            (format!("{:02}", p.sec), 2)
        } else if rest.starts_with("06") {
            (format!("{:02}", p.year.rem_euclid(100)), 2)
        } else if rest.starts_with("15") {
            (format!("{:02}", p.hour), 2)
        } else if rest.starts_with('1') {
            (p.month.to_string(), 1)
        } else if rest.starts_with('2') {
            (p.day.to_string(), 1)
        } else if rest.starts_with('3') {
            (hour12.to_string(), 1)
        } else if rest.starts_with('4') {
            (p.min.to_string(), 1)
        } else if rest.starts_with('5') {
            (p.sec.to_string(), 1)
        } else if rest.starts_with("PM") {
            ((if p.hour >= 12 { "PM" } else { "AM" }).into(), 2)
        } else if rest.starts_with("pm") {
            ((if p.hour >= 12 { "pm" } else { "am" }).into(), 2)
        } else if let Some(l) =
            ["Z07:00:00", "Z070000", "Z07:00", "Z0700", "Z07"].iter().find(|t| rest.starts_with(**t))
        {
            ("Z".into(), l.len())
        } else if let Some(l) =
            ["-07:00:00", "-070000", "-07:00", "-0700", "-07"].iter().find(|t| rest.starts_with(**t))
        {
            let z = match l.len() {
                9 => "+00:00:00",
                7 => "+000000",
                6 => "+00:00",
                5 => "+0000",
                _ => "+00",
            };
            (z.into(), l.len())
        } else if (b[i] == b'.' || b[i] == b',') && matches!(b.get(i + 1), Some(b'0' | b'9')) {
            let ch = b[i + 1];
            let mut j = i + 1;
            while j < b.len() && b[j] == ch {
                j += 1;
            }
            if j < b.len() && b[j].is_ascii_digit() {
                (rest[..1].to_string(), 1)
            } else {
                let n = j - i - 1;
                let digits = format!("{:09}", p.nanos);
                let mut frac = digits[..n.min(9)].to_string();
                if ch == b'9' {
                    frac = frac.trim_end_matches('0').to_string();
                    if frac.is_empty() { (String::new(), j - i) } else { (format!("{}{frac}", b[i] as char), j - i) }
                } else {
                    (format!("{}{frac}", b[i] as char), j - i)
                }
            }
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            (c.to_string(), c.len_utf8())
        };
        out.push_str(&text);
        i += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(src: &str) -> String {
        r_at(src, 0)
    }

    fn r_at(src: &str, ts: i64) -> String {
        let t = Template::parse(src).unwrap_or_else(|e| panic!("parse {src:?}: {e}"));
        let lookup = |n: &str| -> Option<String> {
            match n {
                "app" => Some("foo".into()),
                "msg" => Some("  Hello World  ".into()),
                "n" => Some("42".into()),
                "m" => Some("7".into()),
                "f" => Some("3.5".into()),
                "empty" => Some(String::new()),
                "path" => Some("/api/v1/users".into()),
                "status" => Some("500".into()),
                _ => None,
            }
        };
        t.render("the line", ts, &lookup).unwrap_or_else(|e| panic!("render {src:?}: {e}"))
    }

    fn render_err(src: &str) -> String {
        let t = Template::parse(src).unwrap();
        t.render("", 0, &|_| None).unwrap_err()
    }

    #[test]
    fn text_and_fields() {
        assert_eq!(r("plain text"), "plain text");
        assert!(Template::parse("plain").unwrap().is_literal());
        assert!(Template::parse("a {{/* c */}} b").unwrap().is_literal());
        assert!(!Template::parse("{{.app}}").unwrap().is_literal());
        assert_eq!(r("app={{.app}} missing={{.nope}}!"), "app=foo missing=!");
        assert_eq!(r("{{ .app }}"), "foo");
        assert_eq!(r(""), "");
    }

    #[test]
    fn trimming() {
        assert_eq!(r("a  {{- .app -}}  b"), "afoob");
        assert_eq!(r("a \n {{- .app}} b"), "afoo b");
        assert_eq!(r("a {{.app -}} \n\t b"), "a foob");
        assert_eq!(r("x {{- /* comment */ -}} y"), "xy");
        assert_eq!(r("{{3 -}} 4"), "34");
        assert_eq!(r("{{-3}}"), "-3");
    }

    #[test]
    fn literals() {
        assert_eq!(r(r#"{{"a\tb\n\"q\"\x41\u00e9"}}"#), "a\tb\n\"q\"Aé");
        assert_eq!(r("{{`raw\\n`}}"), "raw\\n");
        assert_eq!(r("{{ 42 }} {{ -7 }} {{ 3.5 }} {{ 1e3 }} {{ 0x1F }} {{ 'a' }}"), "42 -7 3.5 1000 31 97");
        assert_eq!(r("{{true}} {{false}}"), "true false");
        assert_eq!(r("{{ 1_000 }}"), "1000");
    }

    #[test]
    fn pipelines_and_calls() {
        assert_eq!(r(r#"{{ .app | ToUpper | printf "%s!" }}"#), "FOO!");
        assert_eq!(r(r#"{{ replace "o" "0" .app }}"#), "f00");
        assert_eq!(r(r#"{{ .app | replace "o" "0" }}"#), "f00");
        assert_eq!(r(r#"{{ printf "%s-%s" (upper .app) (.app | lower) }}"#), "FOO-foo");
        assert_eq!(r(r#"{{ (.app) }}"#), "foo");
        assert_eq!(r("{{ __line__ | upper }}"), "THE LINE");
        assert_eq!(r(r#"{{ printf "%s" __line__ }}"#), "the line");
    }

    #[test]
    fn conditionals() {
        let t = r#"{{if eq .status "500"}}err{{else if eq .status "200"}}ok{{else}}other{{end}}"#;
        assert_eq!(r(t), "err");
        assert_eq!(r(r#"{{if .empty}}y{{else}}n{{end}}"#), "n");
        assert_eq!(r(r#"{{if .nope}}y{{end}}"#), "");
        assert_eq!(r(r#"{{if 0}}y{{else}}n{{end}}"#), "n");
        assert_eq!(r(r#"{{if "0"}}y{{else}}n{{end}}"#), "y");
        assert_eq!(r(r#"{{if false}}y{{else if .app}}a{{end}}"#), "a");
        assert_eq!(r(r#"{{if and .app .n}}both{{end}}"#), "both");
        assert_eq!(r(r#"{{ or .empty .app }}"#), "foo");
        assert_eq!(r(r#"{{ and .app .empty "x" }}"#), "");
        assert_eq!(r(r#"{{ not .empty }} {{ not .app }}"#), "true false");
        assert_eq!(r(r#"{{ len .app }}"#), "3");
        assert_eq!(r(r#"{{if gt .n 5}}big{{end}}"#), "big");
        assert_eq!(r(r#"{{ lt .m .n }} {{ lt "7" "42" }} {{ lt "b" "a" }}"#), "true true false");
        assert_eq!(r(r#"{{ le 3 3 }} {{ ge 2 3 }} {{ ne .app "foo" }} {{ eq .f 3.5 }}"#), "true false false true");
        assert_eq!(r(r#"{{ eq .app "x" "y" "foo" }}"#), "true");
        assert_eq!(r("{{if .app}}\n  {{- .app -}}\n{{end}}"), "foo");
        assert_eq!(r(r#"{{if eq .status "500" "503"}}{{if .app}}A{{else}}B{{end}}{{end}}"#), "A");
    }

    #[test]
    fn go_string_funcs() {
        assert_eq!(
            r(r#"{{ ToLower "ABC" }} {{ ToUpper "abc" }} {{ Title "hello wOrld-x_y" }}"#),
            "abc ABC Hello WOrld-X_y"
        );
        assert_eq!(r(r#"[{{ TrimSpace .msg }}]"#), "[Hello World]");
        assert_eq!(
            r(r#"{{ Trim "xxhixx" "x" }} {{ TrimLeft "xxhixx" "x" }} {{ TrimRight "xxhixx" "x" }}"#),
            "hi hixx xxhi"
        );
        assert_eq!(r(r#"{{ TrimPrefix "prefix-x" "prefix-" }} {{ TrimSuffix "a.log" ".log" }}"#), "x a");
        assert_eq!(r(r#"{{ Replace "aaaa" "a" "b" 2 }} {{ Replace "aaaa" "a" "b" -1 }}"#), "bbaa bbbb");
    }

    #[test]
    fn sprig_string_funcs() {
        assert_eq!(r(r#"{{ lower "AbC" }} {{ upper "abc" }} {{ title "foo bar" }}"#), "abc ABC Foo Bar");
        assert_eq!(
            r(r#"{{ trunc 5 "hello world" }}|{{ trunc -5 "hello world" }}|{{ trunc 50 "hi" }}"#),
            "hello|world|hi"
        );
        assert_eq!(r(r#"{{ substr 0 5 "hello world" }}|{{ substr 6 100 "hello world" }}"#), "hello|world");
        assert_eq!(r(r#"{{ .path | replace "/" "_" }}"#), "_api_v1_users");
        assert_eq!(r(r#"[{{ trim .msg }}] {{ trimAll "$" "$5.00$" }}"#), "[Hello World] 5.00");
        assert_eq!(r(r#"{{ trimPrefix "/api" .path }} {{ trimSuffix "users" .path }}"#), "/v1/users /api/v1/");
        assert_eq!(
            r(r#"{{ contains "v1" .path }} {{ hasPrefix "/api" .path }} {{ hasSuffix "x" .path }}"#),
            "true true false"
        );
        assert_eq!(r(r#"{{ repeat 3 "ab" }}"#), "ababab");
        assert_eq!(r(r#"{{ indent 2 "a\nb" }}|{{ nindent 2 "a" }}"#), "  a\n  b|\n  a");
        assert_eq!(
            r(r#"{{ .nope | default "none" }} {{ .app | default "none" }} {{ default "d" .empty }}"#),
            "none foo d"
        );
        assert_eq!(r(r#"{{ if contains "api" .path }}api{{ end }}"#), "api");
    }

    #[test]
    fn regex_funcs() {
        assert_eq!(r(r#"{{ regexReplaceAll "a(x*)b" "-ab-axxb-" "${1}W" }}"#), "-W-xxW-");
        assert_eq!(r(r#"{{ regexReplaceAll "a(x*)b" "-ab-axxb-" "$1W" }}"#), "---");
        assert_eq!(r(r#"{{ regexReplaceAllLiteral "a(x*)b" "-ab-axxb-" "${1}" }}"#), "-${1}-${1}-");
        assert_eq!(r(r#"{{ regexReplaceAll "[0-9]+" .path "N" }}"#), "/api/vN/users");
        assert_eq!(r(r#"{{ .path | regexReplaceAll "[0-9]+" "N" }}"#), "N");
        assert_eq!(r(r#"{{ count "a" "banana" }}"#), "3");
        assert_eq!(r(r#"{{ __line__ | count "e" }}"#), "2");
        let pat = r#"{{ regexReplaceAll .nope "abc" "x" }}"#;
        assert_eq!(r(pat), "xaxbxcx");
        assert!(Template::parse(r#"{{ regexReplaceAll "(" .app "x" }}"#).is_err());
    }

    #[test]
    fn printf_verbs() {
        assert_eq!(r(r#"{{ printf "%s|%5s|%-5s|%.2s" "ab" "ab" "ab" "abc" }}"#), "ab|   ab|ab   |ab");
        assert_eq!(
            r(r#"{{ printf "%d|%5d|%-5d|%05d|%+d|%x|%X|%o|%b" 42 42 42 -42 42 255 255 8 5 }}"#),
            "42|   42|42   |-0042|+42|ff|FF|10|101"
        );
        assert_eq!(
            r(r#"{{ printf "%f|%.2f|%8.3f|%e|%g|%v" 3.14159 3.14159 3.14159 1234.5678 0.00001 2.5 }}"#),
            "3.141590|3.14|   3.142|1.234568e+03|1e-05|2.5"
        );
        assert_eq!(r(r#"{{ printf "%q|%v|%t|%x|%c|%%" "a\"b" true false "hi" 65 }}"#), r#""a\"b"|true|false|6869|A|%"#);
        assert_eq!(r(r#"{{ printf "%d" "x" }}"#), "%!d(string=x)");
        assert_eq!(r(r#"{{ printf "%s %s" "a" }}"#), "a %!s(MISSING)");
        assert_eq!(r(r#"{{ printf "%s" "a" "b" }}"#), "a%!(EXTRA string=b)");
        assert_eq!(r(r#"{{ printf "%s" 5 }}"#), "%!s(int=5)");
        assert_eq!(r(r#"{{ printf "%v %v %v" 1e6 123456.0 1e21 }}"#), "1e+06 123456 1e+21");
        assert_eq!(r(r#"{{ printf "%.3g|%g|%05s" 1234.0 100.0 "ab" }}"#), "1.23e+03|100|000ab");
        assert_eq!(r(r#"{{ printf "%6.2f|%-8.1f|" -3.14159 2.25 }}"#), " -3.14|2.2     |");
    }

    #[test]
    fn timestamps() {
        let ts = 1_704_164_645_000_000_000; // 2024-01-02 03:04:05 UTC
        assert_eq!(r_at("{{ __timestamp__ }}", ts), "2024-01-02 03:04:05 +0000 UTC");
        assert_eq!(r_at("{{ __timestamp__ }}", ts + 123_000_000), "2024-01-02 03:04:05.123 +0000 UTC");
        assert_eq!(r_at("{{ __timestamp__ | unixEpoch }}", ts), "1704164645");
        assert_eq!(r_at("{{ __timestamp__ | unixEpochMillis }}", ts + 7_000_000), "1704164645007");
        assert_eq!(r_at("{{ __timestamp__ | unixEpochNanos }}", ts + 1), "1704164645000000001");
        assert_eq!(
            r_at(r#"{{ __timestamp__ | date "2006-01-02T15:04:05.000Z07:00" }}"#, ts + 5_000_000),
            "2024-01-02T03:04:05.005Z"
        );
        assert_eq!(
            r_at(r#"{{ date "Mon Jan _2 3:04PM MST 06 .999" __timestamp__ }}"#, ts + 500_000_000),
            "Tue Jan  2 3:04AM UTC 24 .5"
        );
        assert_eq!(r_at(r#"{{ date "January 2, 2006 -07:00 002" __timestamp__ }}"#, 0), "January 1, 1970 +00:00 001");
        assert_eq!(r_at("{{ printf \"%s\" __timestamp__ }}", 0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(r(r#"{{ unixToTime "1704164645" | unixEpochMillis }}"#), "1704164645000");
    }

    #[test]
    fn math() {
        assert_eq!(r("{{ add 1 2 3 }} {{ sub 10 3 }} {{ mul 2 3 4 }} {{ div 7 2 }} {{ mod 7 3 }}"), "6 7 24 3 1");
        assert_eq!(r("{{ add .n .m }} {{ max 1 9 3 }} {{ min 4 2 8 }}"), "49 9 2");
        assert_eq!(r("{{ addf 1.1 2.2 }} {{ subf 5.5 1.25 }} {{ mulf 1.5 2 }} {{ divf 1 4 }}"), "3.3 4.25 3 0.25");
        assert_eq!(r("{{ ceil 1.2 }} {{ floor 1.8 }} {{ round 3.14159 2 }} {{ round 2.5 0 }}"), "2 1 3.14 3");
        assert_eq!(r("{{ .f | addf 1 }}"), "4.5");
        assert!(render_err("{{ div 1 0 }}").contains("divide by zero"));
        assert!(render_err("{{ mod 1 0 }}").contains("divide by zero"));
        assert!(render_err("{{ divf 1 0 }}").contains("division by zero"));
        assert!(render_err(r#"{{ add "abc" 1 }}"#).contains("bad number"));
    }

    #[test]
    fn encoding_and_align() {
        assert_eq!(r(r#"{{ urlencode "a b&c=d/é" }}"#), "a+b%26c%3Dd%2F%C3%A9");
        assert_eq!(r(r#"{{ urldecode "a+b%26c" }}"#), "a b&c");
        assert!(render_err(r#"{{ urldecode "%zz" }}"#).contains("invalid URL escape"));
        assert_eq!(
            r(r#"{{ b64enc "hello" }} {{ b64enc "hi" }} {{ b64enc "abc" }} {{ b64enc "" }}"#),
            "aGVsbG8= aGk= YWJj "
        );
        assert_eq!(
            r(r#"{{ b64dec "aGVsbG8=" }} {{ b64dec "aGk=" }} {{ "hello" | b64enc | b64dec }}"#),
            "hello hi hello"
        );
        assert_eq!(r(r#"{{ b64dec "a" }}"#), "illegal base64 data at input byte 0");
        assert_eq!(
            r(
                r#"[{{ alignLeft 5 "ab" }}][{{ alignRight 5 "ab" }}][{{ alignLeft 2 "abcd" }}][{{ alignRight 2 "abcd" }}]"#
            ),
            "[ab   ][   ab][ab][cd]"
        );
    }

    #[test]
    fn more_cases() {
        assert_eq!(
            r("{{ divf 2 3 }} {{ divf 10 4 }} {{ mulf 0.1 3 }} {{ subf 0.3 0.1 }}"),
            "0.6666666666666667 2.5 0.3 0.2"
        );
        assert_eq!(r("{{ 0755 }} {{ 08 }} {{ 0o17 }} {{ 0b101 }}"), "493 8 15 5");
        assert_eq!(r(r#"{{ upper "straße" }} {{ lower "ÀÉ" }}"#), "STRAßE àé");
        assert_eq!(r(r#"{{ date "Monthly Janx" 0 }}|{{ date "Mon Jan 2" 0 }}"#), "Monthly Janx|Thu Jan 1");
        assert_eq!(r(r#"{{if eq .app "x"}}1{{else if eq .app "y"}}2{{else if eq .app "foo"}}3{{else}}4{{end}}"#), "3");
        assert_eq!(r(r#"{{if .app}}{{if .empty}}a{{else}}b{{end}}{{else}}c{{end}}"#), "b");
        assert_eq!(r(r#"{{ printf "%s" (printf "%s-%s" (upper (lower "A")) "b") }}"#), "A-b");
        assert_eq!(r(r#"{{ printf "%05.1f|%x|%q" 3.14159 -255 'x' }}"#), "003.1|-ff|'x'");
        assert_eq!(r(r#"{{ print "a" 1 2 "b" }}"#), "a1 2b");
        assert_eq!(r(r#"{{ printf "%v|%v" (len .app) (eq 1 1) }}"#), "3|true");
        assert_eq!(r(r#"{{ "}}" }}"#), "}}");
        assert_eq!(r("a }} b"), "a }} b");
        assert_eq!(r(r#"{{ .nope }}|{{ .nope | upper }}"#), "|");
        assert_eq!(r("{{ add }}"), "0");
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "{{ .app",
            "{{ nosuchfunc .app }}",
            "{{ if .app }}x",
            "{{ end }}",
            "{{ else }}",
            r#"{{ "unterminated }}"#,
            "{{ }}",
            "{{ (upper .app }}",
            "{{ upper .app) }}",
            "{{ range .x }}{{ end }}",
            "{{ $x := 1 }}",
            "{{ .app | \"lit\" }}",
            "{{ 12abc }}",
            "{{ /* unclosed }}",
        ] {
            let e = Template::parse(bad).err().unwrap_or_else(|| panic!("{bad:?} should fail"));
            assert!(e.contains("offset"), "{bad:?}: {e}");
        }
        let e = Template::parse("abc {{ nosuch }}").unwrap_err();
        assert!(e.contains("offset 7") && e.contains("nosuch"), "{e}");
    }
}
