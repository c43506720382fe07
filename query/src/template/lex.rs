//! The lexer: splits a template into text and actions, and an action into tokens.

use crate::template::Value;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    /// `.a.b`: fields of dot.
    Field(Vec<String>),
    /// `.a.b` right after `)`: fields of a parenthesized pipeline.
    Chain(Vec<String>),
    /// `$x.a.b`; `$` alone is the name `$`.
    Var(String, Vec<String>),
    Ident(String),
    Lit(Value),
    Pipe,
    LParen,
    RParen,
    Dot,
    /// `:=`
    Declare,
    /// `=`
    Assign,
    Comma,
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) pos: usize,
}

pub(super) enum Item {
    Text(String),
    /// The tokens of one action and the offset of its `{{`.
    Action(Vec<Token>, usize),
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_space_b(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

pub(super) fn perr(pos: usize, msg: impl std::fmt::Display) -> String {
    format!("template: at byte offset {pos}: {msg}")
}

pub(super) fn lex(src: &str) -> Result<Vec<Item>, String> {
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
                let (names, end) = lex_fields(src, i)?;
                if names.is_empty() {
                    i += 1;
                    Tok::Dot
                } else {
                    let after_paren = i > 0 && b[i - 1] == b')';
                    i = end;
                    if after_paren { Tok::Chain(names) } else { Tok::Field(names) }
                }
            }
            b'$' => {
                let mut j = i + 1;
                while j < b.len() && is_ident_char(b[j]) {
                    j += 1;
                }
                let name = src[i..j].to_string();
                let (fields, end) = lex_fields(src, j)?;
                i = end;
                Tok::Var(name, fields)
            }
            b',' => {
                i += 1;
                Tok::Comma
            }
            b':' => {
                if !rest.starts_with(":=") {
                    return Err(perr(i, "expected :="));
                }
                i += 2;
                Tok::Declare
            }
            b'=' => {
                i += 1;
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

/// Lexes `.a.b.c` starting at `i` (which may not be a `.`); returns the names and the end offset.
fn lex_fields(src: &str, mut i: usize) -> Result<(Vec<String>, usize), String> {
    let b = src.as_bytes();
    let mut names = Vec::new();
    while b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(|c| is_ident_start(*c)) {
        let mut j = i + 1;
        while j < b.len() && is_ident_char(b[j]) {
            j += 1;
        }
        names.push(src[i + 1..j].to_string());
        i = j;
    }
    if !names.is_empty() && b.get(i) == Some(&b'.') {
        return Err(perr(i, "bad character '.' after a field name"));
    }
    Ok((names, i))
}

pub(super) fn hex_val(c: u8) -> Option<u32> {
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
