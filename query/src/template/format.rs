//! Go's `fmt` verbs, float printing, and Go's time and duration formats.

use std::fmt::Write as _;

use crate::promql::civil_from_days;
use crate::template::Value;

/// Prints a value as an action does (Go's `fmt.Fprint` of the final value): a missing value is
/// `<no value>`.
pub(super) fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Nil => out.push_str("<no value>"),
        other => write_plain(out, other),
    }
}

/// Go's `%v`: maps as `map[k:v k:v]` in key order, lists as `[a b]`, nil as `<nil>`.
pub(super) fn write_plain(out: &mut String, v: &Value) {
    match v {
        Value::Str(s) => out.push_str(s),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => out.push_str(&fmt_float_v(*f)),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Time(ns) => out.push_str(&time_string(*ns)),
        Value::Duration(ns) => out.push_str(&duration_string(*ns)),
        Value::Nil => out.push_str("<nil>"),
        Value::Map(m) => {
            out.push_str("map[");
            for (k, (key, val)) in m.iter().enumerate() {
                if k > 0 {
                    out.push(' ');
                }
                out.push_str(key);
                out.push(':');
                write_plain(out, val);
            }
            out.push(']');
        }
        Value::List(l) => {
            out.push('[');
            for (k, val) in l.iter().enumerate() {
                if k > 0 {
                    out.push(' ');
                }
                write_plain(out, val);
            }
            out.push(']');
        }
    }
}

/// The value as a string argument: strings as they are, anything else as an action prints it.
pub(super) fn to_str(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        _ => {
            let mut s = String::new();
            write_value(&mut s, v);
            s
        }
    }
}

/// The Go type a value stands for, as Go's error messages and `%!v(type=...)` name it.
pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Str(_) => "string",
        Value::Int(_) => "int",
        Value::Float(_) => "float64",
        Value::Bool(_) => "bool",
        Value::Time(_) => "time.Time",
        Value::Duration(_) => "time.Duration",
        Value::Nil => "<nil>",
        Value::Map(_) => "map[string]interface {}",
        Value::List(_) => "[]interface {}",
    }
}

#[derive(Default, Clone, Copy)]
pub(super) struct Spec {
    pub(super) minus: bool,
    pub(super) plus: bool,
    pub(super) sharp: bool,
    pub(super) space: bool,
    pub(super) zero: bool,
    pub(super) width: Option<usize>,
    pub(super) prec: Option<usize>,
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
pub(super) fn fmt_float(f: f64, verb: char, spec: &Spec) -> String {
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
pub(super) fn fmt_float_v(f: f64) -> String {
    fmt_float(f, 'v', &Spec::default())
}

pub(super) fn go_sprintf(fmt: &str, args: &[Value]) -> String {
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
                write_plain(&mut out, a);
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
            write_plain(out, arg);
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
        Value::Duration(d) => match verb {
            's' | 'v' => pad(out, &duration_string(*d), spec, false),
            'q' => pad(out, &go_quote(&duration_string(*d)), spec, false),
            'd' | 'x' | 'X' | 'o' | 'O' | 'b' => pad(out, &fmt_int(*d, verb, spec), spec, true),
            _ => bad(out),
        },
        Value::Nil => match verb {
            'v' => pad(out, "<nil>", spec, false),
            _ => bad(out),
        },
        // Go applies the verb to every key and element.
        Value::Map(m) => {
            out.push_str("map[");
            for (k, (key, val)) in m.iter().enumerate() {
                if k > 0 {
                    out.push(' ');
                }
                fmt_arg(out, &Value::Str(key.clone()), verb, spec);
                out.push(':');
                fmt_arg(out, val, verb, spec);
            }
            out.push(']');
        }
        Value::List(l) => {
            out.push('[');
            for (k, val) in l.iter().enumerate() {
                if k > 0 {
                    out.push(' ');
                }
                fmt_arg(out, val, verb, spec);
            }
            out.push(']');
        }
    }
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

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
pub(super) fn time_string(ns: i64) -> String {
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
pub(super) fn go_format_time(layout: &str, ns: i64) -> String {
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

/// Go's `time.Duration.String()`: `1h2m3.5s`, `2m0s`, `1.5ms`, `500µs`, `0s`.
pub(super) fn duration_string(d: i64) -> String {
    if d == 0 {
        return "0s".to_string();
    }
    let mut u = d.unsigned_abs();
    let sign = if d < 0 { "-" } else { "" };
    if u < 1_000_000_000 {
        let (prec, unit) = match u {
            0..1_000 => (0, "ns"),
            1_000..1_000_000 => (3, "\u{b5}s"),
            _ => (6, "ms"),
        };
        let (int, frac) = split_frac(u, prec);
        return format!("{sign}{int}{frac}{unit}");
    }
    let (secs, frac) = split_frac(u, 9);
    u = secs;
    let mut out = format!("{}{frac}s", u % 60);
    u /= 60;
    if u > 0 {
        out = format!("{}m{out}", u % 60);
        u /= 60;
        if u > 0 {
            out = format!("{u}h{out}");
        }
    }
    format!("{sign}{out}")
}

/// Splits `v` into `v / 10^prec` and the fraction `.ddd` of the last `prec` digits, trailing zeros
/// trimmed (empty when zero).
fn split_frac(v: u64, prec: u32) -> (u64, String) {
    let p = 10u64.pow(prec);
    let frac = v % p;
    if frac == 0 {
        return (v / p, String::new());
    }
    let digits = format!("{frac:0width$}", width = prec as usize);
    (v / p, format!(".{}", digits.trim_end_matches('0')))
}
