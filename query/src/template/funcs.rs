//! The functions templates call: the `text/template` builtins, Loki's set and Prometheus' set.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use regex::Regex;

use crate::template::format::{
    Spec, fmt_float, fmt_float_v, go_format_time, go_sprintf, to_str, type_name, write_value,
};
use crate::template::lex::hex_val;
use crate::template::{Dialect, Host, Value};

/// The `text/template` builtins both dialects offer.
const GO_BUILTINS: &[&str] = &[
    "and", "or", "not", "len", "eq", "ne", "lt", "le", "gt", "ge", "printf", "print", "println", "urlquery", "html",
    "js",
];

/// The function names a Loki template may call besides [`GO_BUILTINS`]; anything else is a parse error.
const LOKI_FUNCS: &[&str] = &[
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

/// The function names a Prometheus template may call besides [`GO_BUILTINS`]: the other builtins and the
/// `funcMap` of Prometheus' `template/template.go`, plus `tmpl` (which Prometheus offers to its HTML
/// consoles only).
const PROMETHEUS_FUNCS: &[&str] = &[
    // the other text/template builtins
    "index",
    "slice",
    "call",
    // Prometheus
    "query",
    "first",
    "label",
    "value",
    "strvalue",
    "args",
    "reReplaceAll",
    "safeHtml",
    "match",
    "title",
    "toUpper",
    "toLower",
    "graphLink",
    "tableLink",
    "sortByLabel",
    "stripPort",
    "stripDomain",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "toTime",
    "toDuration",
    "now",
    "pathPrefix",
    "externalURL",
    "parseDuration",
    "urlQueryEscape",
    "tmpl",
];

/// The function called `name` in `dialect`, as a `'static` name.
pub(super) fn lookup(dialect: Dialect, name: &str) -> Option<&'static str> {
    let set = match dialect {
        Dialect::Loki => LOKI_FUNCS,
        Dialect::Prometheus => PROMETHEUS_FUNCS,
    };
    GO_BUILTINS.iter().chain(set).find(|f| **f == name).copied()
}

/// Functions whose first argument is a regular expression, compiled once at parse time when it is
/// a literal.
pub(super) fn is_regex_func(dialect: Dialect, name: &str) -> bool {
    match dialect {
        Dialect::Loki => matches!(name, "regexReplaceAll" | "regexReplaceAllLiteral" | "count"),
        Dialect::Prometheus => matches!(name, "match" | "reReplaceAll"),
    }
}

/// What functions see of the execution.
pub(super) struct Env<'a> {
    /// The log line (`__line__`).
    pub(super) line: &'a str,
    /// The entry time in ns (`__timestamp__`).
    pub(super) ts: i64,
    pub(super) host: Option<&'a dyn Host>,
    pub(super) now_ms: i64,
    pub(super) external_url: &'a str,
    pub(super) path_prefix: &'a str,
}

/// Go's truth: false, 0, a nil, and empty strings, maps and lists are false.
pub(super) fn truthy(v: &Value) -> bool {
    match v {
        Value::Str(s) => !s.is_empty(),
        Value::Int(i) => *i != 0,
        Value::Float(f) => *f != 0.0,
        Value::Bool(b) => *b,
        Value::Time(_) => true,
        Value::Duration(d) => *d != 0,
        Value::Nil => false,
        Value::Map(m) => !m.is_empty(),
        Value::List(l) => !l.is_empty(),
    }
}

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
        Value::Duration(d) => Ok(*d),
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
        Value::Duration(d) => Ok(*d as f64 / 1e9),
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
        Value::Time(t) | Value::Duration(t) => Cmp::I(*t),
        Value::Str(s) => match parse_num(s) {
            Some(Value::Int(i)) => Cmp::I(i),
            Some(Value::Float(f)) => Cmp::F(f),
            _ => Cmp::S(s.clone()),
        },
        Value::Nil => Cmp::S(String::new()),
        Value::Map(_) | Value::List(_) => Cmp::S(to_str(v)),
    }
}

/// Loki's comparison: numerically when both are numbers (or strings that parse as numbers), else
/// as strings.
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

/// Calls a Loki function.
pub(super) fn call_loki(name: &str, args: Vec<Value>, re: Option<&Regex>, env: &Env) -> Result<Value, String> {
    let s = |i: usize| to_str(&args[i]);
    let str_v = Value::Str;
    let v = match name {
        "__line__" => {
            arity(&args, 0)?;
            str_v(env.line.to_string())
        }
        "__timestamp__" => {
            arity(&args, 0)?;
            Value::Time(env.ts)
        }
        "now" => {
            arity(&args, 0)?;
            let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?;
            Value::Time(d.as_nanos() as i64)
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
        "urlencode" => {
            arity(&args, 1)?;
            str_v(query_escape(&s(0)))
        }
        "urldecode" => {
            arity(&args, 1)?;
            str_v(query_unescape(&s(0))?)
        }
        _ => return builtin(name, args, Dialect::Loki),
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
/// The `text/template` builtins; comparisons follow the dialect.
fn builtin(name: &str, args: Vec<Value>, dialect: Dialect) -> Result<Value, String> {
    let s = |i: usize| to_str(&args[i]);
    let str_v = Value::Str;
    let v = match name {
        "not" => {
            arity(&args, 1)?;
            Value::Bool(!truthy(&args[0]))
        }
        "len" => {
            arity(&args, 1)?;
            match &args[0] {
                Value::Str(x) => Value::Int(x.len() as i64),
                Value::Map(m) => Value::Int(m.len() as i64),
                Value::List(l) => Value::Int(l.len() as i64),
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
                let equal = match dialect {
                    Dialect::Loki => compare(&args[0], b, false)? == Ordering::Equal,
                    Dialect::Prometheus => go_eq(&args[0], b)?,
                };
                if equal {
                    eq = true;
                    break;
                }
            }
            Value::Bool(if name == "eq" { eq } else { !eq })
        }
        "lt" | "le" | "gt" | "ge" => {
            arity(&args, 2)?;
            let o = match dialect {
                Dialect::Loki => Some(compare(&args[0], &args[1], true)?),
                Dialect::Prometheus => go_order(&args[0], &args[1])?,
            };
            // An unordered pair (a NaN) is neither less, equal nor greater, as in Go.
            Value::Bool(match (name, o) {
                (_, None) => false,
                ("lt", Some(o)) => o == Ordering::Less,
                ("le", Some(o)) => o != Ordering::Greater,
                ("gt", Some(o)) => o == Ordering::Greater,
                (_, Some(o)) => o != Ordering::Less,
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
        "urlquery" => {
            arity(&args, 1)?;
            str_v(query_escape(&s(0)))
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
        "index" => {
            at_least(&args, 1)?;
            let mut item = args[0].clone();
            for idx in &args[1..] {
                item = index(item, idx)?;
            }
            item
        }
        "slice" => {
            if args.is_empty() || args.len() > 4 {
                return Err(format!("wrong number of args: want 1 to 4 got {}", args.len()));
            }
            slice(&args[0], &args[1..])?
        }
        other => return Err(format!("function {other:?} not implemented")),
    };
    Ok(v)
}

/// Go's `index` of one level: a map key or a list or string position.
fn index(item: Value, idx: &Value) -> Result<Value, String> {
    match (item, idx) {
        (Value::Map(mut m), Value::Str(k)) => Ok(match m.remove(k) {
            Some(v) => v,
            None => map_zero(&m),
        }),
        (Value::Map(_), other) => Err(format!("value has type {}; should be string", type_name(other))),
        (Value::List(l), i) => {
            let n = position(i, l.len())?;
            Ok(l.into_iter().nth(n).unwrap_or(Value::Nil))
        }
        (Value::Str(s), i) => {
            let n = position(i, s.len())?;
            Ok(Value::Int(i64::from(s.as_bytes()[n])))
        }
        (Value::Nil, _) => Err("index of untyped nil".into()),
        (other, _) => Err(format!("can't index item of type {}", type_name(&other))),
    }
}

fn position(i: &Value, len: usize) -> Result<usize, String> {
    let Value::Int(i) = i else {
        return Err(format!("cannot index slice/array with type {}", type_name(i)));
    };
    usize::try_from(*i).ok().filter(|n| *n < len).ok_or_else(|| format!("index out of range: {i}"))
}

/// Go's `slice item [low [high]]` of a string or a list (the three-index form is refused).
fn slice(item: &Value, idx: &[Value]) -> Result<Value, String> {
    let len = match item {
        Value::Str(s) => s.len(),
        Value::List(l) => l.len(),
        other => return Err(format!("can't slice item of type {}", type_name(other))),
    };
    if idx.len() > 2 {
        return Err("cannot 3-index slice a string".into());
    }
    let bound = |k: usize, default: usize| -> Result<usize, String> {
        match idx.get(k) {
            None => Ok(default),
            Some(Value::Int(i)) => {
                usize::try_from(*i).ok().filter(|n| *n <= len).ok_or_else(|| format!("index out of range: {i}"))
            }
            Some(other) => Err(format!("cannot index slice/array with type {}", type_name(other))),
        }
    };
    let (lo, hi) = (bound(0, 0)?, bound(1, len)?);
    if lo > hi {
        return Err(format!("invalid slice index: {lo} > {hi}"));
    }
    Ok(match item {
        Value::Str(s) => Value::Str(s.get(lo..hi).ok_or("slice splits a UTF-8 character")?.to_string()),
        Value::List(l) => Value::List(l[lo..hi].to_vec()),
        _ => Value::Nil,
    })
}

/// The zero value a missing map key reads as: the empty string in a map of strings (Prometheus'
/// label maps, read with `missingkey=zero`), otherwise nil (`<no value>`).
pub(super) fn map_zero(m: &BTreeMap<String, Value>) -> Value {
    if m.values().all(|v| matches!(v, Value::Str(_))) { Value::Str(String::new()) } else { Value::Nil }
}

/// Go's `eq` of two values: nil equals only nil; numbers compare by value, whatever their kind
/// (Go would refuse int against float); other kinds must match.
fn go_eq(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(match (a, b) {
        (Value::Nil, Value::Nil) => true,
        (Value::Nil, _) | (_, Value::Nil) => false,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Time(x), Value::Time(y)) => x == y,
        (Value::Map(_) | Value::List(_), _) | (_, Value::Map(_) | Value::List(_)) => {
            return Err("non-comparable type".into());
        }
        _ => go_order(a, b)? == Some(Ordering::Equal),
    })
}

/// Go's ordering for `lt`, `le`, `gt`, `ge`: strings with strings, numbers with numbers; `None` when
/// a NaN is involved.
fn go_order(a: &Value, b: &Value) -> Result<Option<Ordering>, String> {
    let num = |v: &Value| match v {
        Value::Int(i) | Value::Duration(i) => Some((Some(*i), *i as f64)),
        Value::Float(f) => Some((None, *f)),
        _ => None,
    };
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => Ok(Some(x.cmp(y))),
        _ => match (num(a), num(b)) {
            (Some((Some(x), _)), Some((Some(y), _))) => Ok(Some(x.cmp(&y))),
            (Some((_, x)), Some((_, y))) => Ok(x.partial_cmp(&y)),
            _ if std::mem::discriminant(a) == std::mem::discriminant(b) => Err("invalid type for comparison".into()),
            _ => Err("incompatible types for comparison".into()),
        },
    }
}

/// Calls a Prometheus function (but `tmpl`, which the executor runs).
pub(super) fn call_prometheus(name: &str, args: Vec<Value>, re: Option<&Regex>, env: &Env) -> Result<Value, String> {
    let str_v = Value::Str;
    let v = match name {
        "query" => {
            arity(&args, 1)?;
            let host = env.host.ok_or("no query engine is available to this template")?;
            Value::List(host.query(&str_arg(&args[0])?)?)
        }
        "first" => {
            arity(&args, 1)?;
            match &args[0] {
                Value::List(l) => l.first().cloned().ok_or("first() called on vector with no elements")?,
                other => return Err(wrong_type("template.queryResult", other)),
            }
        }
        "label" => {
            arity(&args, 2)?;
            str_v(sample_label(&args[1], &str_arg(&args[0])?)?)
        }
        "value" => {
            arity(&args, 1)?;
            match &args[0] {
                Value::Map(m) if m.contains_key("Labels") => m.get("Value").cloned().unwrap_or(Value::Nil),
                other => return Err(wrong_type("*template.sample", other)),
            }
        }
        "strvalue" => {
            arity(&args, 1)?;
            str_v(sample_label(&args[0], "__value__")?)
        }
        "args" => Value::Map(args.into_iter().enumerate().map(|(i, a)| (format!("arg{i}"), a)).collect()),
        "reReplaceAll" => {
            arity(&args, 3)?;
            let compiled;
            let re = match re {
                Some(r) => r,
                None => {
                    compiled = Regex::new(&str_arg(&args[0])?).map_err(|e| e.to_string())?;
                    &compiled
                }
            };
            str_v(re.replace_all(&str_arg(&args[2])?, str_arg(&args[1])?.as_str()).into_owned())
        }
        "match" => {
            arity(&args, 2)?;
            let compiled;
            let re = match re {
                Some(r) => r,
                None => {
                    compiled = Regex::new(&str_arg(&args[0])?).map_err(|e| e.to_string())?;
                    &compiled
                }
            };
            Value::Bool(re.is_match(&str_arg(&args[1])?))
        }
        "safeHtml" | "title" | "toUpper" | "toLower" | "stripPort" | "stripDomain" | "urlQueryEscape" | "graphLink"
        | "tableLink" => {
            arity(&args, 1)?;
            let x = str_arg(&args[0])?;
            str_v(match name {
                "safeHtml" => x,
                "title" => go_title(&x),
                "toUpper" => go_upper(&x),
                "toLower" => go_lower(&x),
                "stripPort" => split_host_port(&x).map_or(x.clone(), |(h, _)| h.to_string()),
                "stripDomain" => strip_domain(&x),
                "urlQueryEscape" => query_escape(&x),
                // Prometheus' links are relative to the server root, without the path prefix.
                "graphLink" => format!("/graph?g0.expr={}&g0.tab=0", query_escape(&x)),
                _ => format!("/graph?g0.expr={}&g0.tab=1", query_escape(&x)),
            })
        }
        "sortByLabel" => {
            arity(&args, 2)?;
            let by = str_arg(&args[0])?;
            let Value::List(list) = &args[1] else {
                return Err(wrong_type("template.queryResult", &args[1]));
            };
            let mut keyed = Vec::with_capacity(list.len());
            for s in list {
                keyed.push((sample_label(s, &by)?, s.clone()));
            }
            // A stable sort, as Prometheus' sort.Stable.
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            Value::List(keyed.into_iter().map(|(_, s)| s).collect())
        }
        "humanize" | "humanize1024" | "humanizeDuration" | "humanizePercentage" | "humanizeTimestamp" => {
            arity(&args, 1)?;
            let v = convert_to_float(&args[0])?;
            str_v(match name {
                "humanize" => humanize(v),
                "humanize1024" => humanize_1024(v),
                "humanizeDuration" => humanize_duration(v),
                "humanizePercentage" => format!("{}%", g4(v * 100.0)),
                _ => match float_to_time(v)? {
                    Some(ns) => crate::template::format::time_string(ns),
                    None => g4(v),
                },
            })
        }
        "toTime" => {
            arity(&args, 1)?;
            let v = convert_to_float(&args[0])?;
            Value::Time(float_to_time(v)?.ok_or("value is NaN or Inf")?)
        }
        "toDuration" => {
            arity(&args, 1)?;
            Value::Duration((convert_to_float(&args[0])? * 1e9) as i64)
        }
        "now" => {
            arity(&args, 0)?;
            Value::Float(env.now_ms as f64 / 1000.0)
        }
        "pathPrefix" => {
            arity(&args, 0)?;
            str_v(env.path_prefix.to_string())
        }
        "externalURL" => {
            arity(&args, 0)?;
            str_v(env.external_url.to_string())
        }
        "parseDuration" => {
            arity(&args, 1)?;
            Value::Float(parse_prometheus_duration(&str_arg(&args[0])?)? as f64 / 1e9)
        }
        // Go's `call` needs function values, which templates here never hold.
        "call" => str_v(String::new()),
        _ => return builtin(name, args, Dialect::Prometheus),
    };
    Ok(v)
}

fn wrong_type(want: &str, got: &Value) -> String {
    format!("wrong type for value; expected {want}; got {}", type_name(got))
}

/// A string parameter of a Prometheus function: numbers and booleans print as text; a missing value
/// is an error, as Go refuses to pass it.
fn str_arg(v: &Value) -> Result<String, String> {
    match v {
        Value::Nil => Err("invalid value; expected string".into()),
        Value::Map(_) | Value::List(_) => Err(wrong_type("string", v)),
        other => Ok(to_str(other)),
    }
}

/// The label `name` of a query sample (empty when it has no such label).
fn sample_label(sample: &Value, name: &str) -> Result<String, String> {
    match sample {
        Value::Map(m) => match m.get("Labels") {
            Some(Value::Map(labels)) => Ok(labels.get(name).map(to_str).unwrap_or_default()),
            Some(Value::Nil) | None => Ok(String::new()),
            Some(other) => Err(wrong_type("map[string]string", other)),
        },
        Value::Nil => Err("nil pointer evaluating *template.sample".into()),
        other => Err(wrong_type("*template.sample", other)),
    }
}

/// Prometheus' `ConvertToFloat`: numbers, strings that parse as floats, durations in seconds.
fn convert_to_float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Float(f) => Ok(*f),
        Value::Int(i) => Ok(*i as f64),
        Value::Duration(d) => Ok(*d as f64 / 1e9),
        Value::Str(s) => s.parse::<f64>().map_err(|_| format!("strconv.ParseFloat: parsing {s:?}: invalid syntax")),
        other => Err(format!("can't convert {} to float", type_name(other))),
    }
}

/// Go's `%.4g`.
fn g4(v: f64) -> String {
    fmt_float(v, 'g', &Spec { prec: Some(4), ..Spec::default() })
}

const SMALL_PREFIXES: [&str; 8] = ["m", "u", "n", "p", "f", "a", "z", "y"];

/// Scales `|v| < 1` up by 1000s; returns the value and its SI prefix.
fn scale_small(mut v: f64) -> (f64, &'static str) {
    let mut prefix = "";
    for p in SMALL_PREFIXES {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    (v, prefix)
}

fn humanize(mut v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return g4(v);
    }
    if v.abs() >= 1.0 {
        let mut prefix = "";
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
        return format!("{}{prefix}", g4(v));
    }
    let (v, prefix) = scale_small(v);
    format!("{}{prefix}", g4(v))
}

fn humanize_1024(mut v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return g4(v);
    }
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", g4(v))
}

fn humanize_duration(mut v: f64) -> String {
    if !v.is_finite() {
        return g4(v);
    }
    if v == 0.0 {
        return format!("{}s", g4(v));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        v = v.abs();
        let d = v as i64;
        let (seconds, minutes, hours, days) = (d % 60, d / 60 % 60, d / 3600 % 24, d / 86_400);
        return if days != 0 {
            format!("{sign}{days}d {hours}h {minutes}m {seconds}s")
        } else if hours != 0 {
            format!("{sign}{hours}h {minutes}m {seconds}s")
        } else if minutes != 0 {
            format!("{sign}{minutes}m {seconds}s")
        } else {
            format!("{sign}{}s", g4(v))
        };
    }
    let (v, prefix) = scale_small(v);
    format!("{}{prefix}s", g4(v))
}

/// Prometheus' `floatToTime`: Unix seconds to ns, truncated to the millisecond as `model.Time` is;
/// `None` for NaN and infinities.
fn float_to_time(v: f64) -> Result<Option<i64>, String> {
    if !v.is_finite() {
        return Ok(None);
    }
    let ts = v * 1e9;
    if ts > i64::MAX as f64 || ts < i64::MIN as f64 {
        return Err(format!(
            "{} cannot be represented as a nanoseconds timestamp since it overflows int64",
            fmt_float_v(v)
        ));
    }
    Ok(Some((ts as i64) / 1_000_000 * 1_000_000))
}

/// Prometheus' `model.ParseDurationAllowNegative`: `1y2w3d4h5m6s7ms` (units in that order, each at
/// most once, integers only), `0`, and a leading `-`; the result in ns.
pub fn parse_prometheus_duration(text: &str) -> Result<i64, String> {
    let (neg, s) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let bad = || format!("not a valid duration string: {text:?}");
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err("empty duration string".into());
    }
    const UNITS: [(&str, u64); 7] = [
        ("y", 365 * 86_400_000_000_000),
        ("w", 7 * 86_400_000_000_000),
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
    ];
    let b = s.as_bytes();
    let (mut i, mut total, mut last) = (0, 0u64, 0);
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let n: u64 = s[start..i].parse().map_err(|_| bad())?;
        let ustart = i;
        while i < b.len() && !b[i].is_ascii_digit() {
            i += 1;
        }
        let unit = &s[ustart..i];
        if unit.is_empty() {
            return Err(bad());
        }
        let pos = UNITS
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or_else(|| format!("unknown unit {unit:?} in duration {text:?}"))?;
        if pos < last {
            return Err(bad());
        }
        last = pos + 1;
        let mult = UNITS[pos].1;
        if n > (1u64 << 63) / mult {
            return Err("duration out of range".into());
        }
        total += n * mult;
        if total > i64::MAX as u64 {
            return Err("duration out of range".into());
        }
    }
    let total = total as i64;
    Ok(if neg { -total } else { total })
}

/// Go's `net.SplitHostPort`; `None` where Go returns an error.
fn split_host_port(hostport: &str) -> Option<(&str, &str)> {
    let i = hostport.rfind(':')?;
    let (host, j, k) = if hostport.starts_with('[') {
        let end = hostport.find(']')?;
        if end + 1 != i {
            return None;
        }
        (&hostport[1..end], 1, end + 1)
    } else {
        let host = &hostport[..i];
        if host.contains(':') {
            return None;
        }
        (host, 0, 0)
    };
    if hostport[j..].contains('[') || hostport[k..].contains(']') {
        return None;
    }
    Some((host, &hostport[i + 1..]))
}

/// Prometheus' `stripDomain`: the first label of a host name, keeping any port; IP addresses as
/// they are.
fn strip_domain(hostport: &str) -> String {
    let (host, port) = split_host_port(hostport).unwrap_or((hostport, ""));
    if host.parse::<std::net::IpAddr>().is_ok() {
        return hostport.to_string();
    }
    let first = host.split('.').next().unwrap_or(host);
    if port.is_empty() {
        first.to_string()
    } else if first.contains(':') {
        format!("[{first}]:{port}")
    } else {
        format!("{first}:{port}")
    }
}
