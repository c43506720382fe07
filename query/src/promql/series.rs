//! Prometheus' series notation (`metric{a="b"} 0+10x5 _ stale`), as promqltest scripts and promtool's
//! rule unit tests write input series, and an in-memory [`SeriesSource`] to load it into.

use std::collections::BTreeMap;

use super::functions::parse_go_float;
use super::{EvalError, Labels, Matcher, Series, SeriesSource};

const STALE: f64 = f64::from_bits(super::STALE_NAN_BITS);

/// In-memory series: what promqltest scripts and rule unit tests load.
#[derive(Default)]
pub struct MemSource {
    pub series: BTreeMap<Labels, (Vec<i64>, Vec<f64>)>,
}

impl MemSource {
    pub fn add(&mut self, labels: Labels, t: i64, v: f64) {
        let e = self.series.entry(labels).or_default();
        let pos = e.0.partition_point(|&x| x < t);
        if pos < e.0.len() && e.0[pos] == t {
            e.1[pos] = v;
        } else {
            e.0.insert(pos, t);
            e.1.insert(pos, v);
        }
    }
}

impl SeriesSource for MemSource {
    fn select(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<Vec<Series>, EvalError> {
        let mut out = Vec::new();
        for (labels, (t, v)) in &self.series {
            if !matchers.iter().all(|m| m.matches_labels(labels)) {
                continue;
            }
            let lo = t.partition_point(|&x| x < mint);
            let hi = t.partition_point(|&x| x <= maxt);
            out.push(Series { labels: labels.clone(), t: t[lo..hi].to_vec().into(), v: v[lo..hi].to_vec().into() });
        }
        Ok(out)
    }
}

/// One value position of a series description.
#[derive(Debug, Clone, Copy)]
pub enum SeqVal {
    Omit,
    Float(f64),
    Hist,
}

/// Splits values text into tokens, keeping `{{...}}` groups together.
fn tokenize_values(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    for c in s.chars() {
        match c {
            '{' => {
                depth += 1;
                cur.push(c)
            }
            '}' => {
                depth -= 1;
                cur.push(c)
            }
            c if c.is_whitespace() && depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse_num(s: &str) -> Option<f64> {
    if s == "stale" {
        return Some(STALE);
    }
    parse_go_float(s)
}

/// Expands the series value notation.
pub fn parse_values(s: &str) -> Result<Vec<SeqVal>, String> {
    let mut out = Vec::new();
    for tok in tokenize_values(s) {
        if tok.contains("{{") {
            // Native histogram: count the positions it occupies.
            let n = match tok.rfind("}}x") {
                Some(p) => tok[p + 3..].parse::<usize>().map_err(|e| format!("bad histogram repeat {tok}: {e}"))? + 1,
                None => 1,
            };
            out.extend(std::iter::repeat_n(SeqVal::Hist, n));
            continue;
        }
        if tok == "_" {
            out.push(SeqVal::Omit);
            continue;
        }
        if let Some(xp) = tok.rfind('x') {
            let n: usize = tok[xp + 1..].parse().map_err(|e| format!("bad repeat in {tok}: {e}"))?;
            let lhs = &tok[..xp];
            if lhs == "_" {
                out.extend(std::iter::repeat_n(SeqVal::Omit, n));
                continue;
            }
            // Find the sign that separates start and increment.
            let lb = lhs.as_bytes();
            let mut split = None;
            for i in 1..lb.len() {
                if (lb[i] == b'+' || lb[i] == b'-') && !matches!(lb[i - 1], b'e' | b'E') {
                    split = Some(i);
                }
            }
            match split {
                Some(i) => {
                    let mut a = parse_num(&lhs[..i]).ok_or_else(|| format!("bad number in {tok}"))?;
                    let b = parse_num(&lhs[i..]).ok_or_else(|| format!("bad number in {tok}"))?;
                    for _ in 0..=n {
                        out.push(SeqVal::Float(a));
                        a += b;
                    }
                }
                None => {
                    let a = parse_num(lhs).ok_or_else(|| format!("bad number in {tok}"))?;
                    out.extend(std::iter::repeat_n(SeqVal::Float(a), n + 1));
                }
            }
            continue;
        }
        out.push(SeqVal::Float(parse_num(&tok).ok_or_else(|| format!("bad value {tok}"))?));
    }
    Ok(out)
}

/// Parses `name{a="b"}` (or `{__name__="x"}`) at the start of `s`; returns labels and the rest.
pub fn parse_series_labels(s: &str) -> Result<(Labels, &str), String> {
    let s = s.trim_start();
    let name_end = s.find(|c: char| c == '{' || c == '@' || c.is_whitespace()).unwrap_or(s.len());
    let mut labels: Labels = Vec::new();
    if name_end > 0 {
        labels.push(("__name__".to_string(), s[..name_end].to_string()));
    }
    let mut rest = &s[name_end..];
    if rest.starts_with('{') {
        let b = rest.as_bytes();
        let mut i = 1;
        loop {
            while i < b.len() && (b[i] == b' ' || b[i] == b',' || b[i] == b'\t') {
                i += 1;
            }
            if i >= b.len() {
                return Err("unterminated labels".into());
            }
            if b[i] == b'}' {
                i += 1;
                break;
            }
            let (name, ni) = read_name(rest, i)?;
            i = ni;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            if i >= b.len() || b[i] != b'=' {
                return Err(format!("expected = in {s}"));
            }
            i += 1;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            let (val, vi) = read_quoted(rest, i)?;
            i = vi;
            labels.retain(|(n, _)| n != &name);
            labels.push((name, val));
        }
        rest = &rest[i..];
    }
    labels.retain(|(_, v)| !v.is_empty());
    labels.sort();
    Ok((labels, rest))
}

fn read_name(s: &str, i: usize) -> Result<(String, usize), String> {
    let b = s.as_bytes();
    if b[i] == b'"' || b[i] == b'\'' {
        return read_quoted(s, i);
    }
    let mut j = i;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b':') {
        j += 1;
    }
    if j == i {
        return Err(format!("bad label name at {}", &s[i..]));
    }
    Ok((s[i..j].to_string(), j))
}

pub(super) fn read_quoted(s: &str, i: usize) -> Result<(String, usize), String> {
    let b = s.as_bytes();
    let q = b[i];
    if q != b'"' && q != b'\'' && q != b'`' {
        return Err(format!("expected quoted string at {}", &s[i..]));
    }
    let mut out = String::new();
    let mut chars = s[i + 1..].char_indices();
    while let Some((k, c)) = chars.next() {
        if c as u32 == q as u32 {
            return Ok((out, i + 1 + k + 1));
        }
        if c == '\\' && q != b'`' {
            match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, 'r')) => out.push('\r'),
                Some((_, c2)) => out.push(c2),
                None => return Err("bad escape".into()),
            }
        } else {
            out.push(c);
        }
    }
    Err("unterminated string".into())
}
