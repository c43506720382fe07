//! InfluxDB line protocol, for `/write` (v1) and `/api/v2/write`.
//!
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`
//!
//! Each numeric field of a line becomes one sample:
//! * metric name `<measurement>_<field>`, where every character outside `[a-zA-Z0-9_:]` becomes `_` and a name
//!   starting with a digit gets a leading `_` (so `cpu.load,host=a 1m=0.5` gives `cpu_load_1m`);
//! * labels: the tags, names sanitized the same way but without `:` (`[a-zA-Z0-9_]`), values unescaped and kept
//!   as they are; two tag keys that sanitize to the same name (or to `__name__`) make the line invalid;
//! * values: floats as written, integers (`12i`) and unsigned integers (`12u`) converted to f64 (exact up to
//!   2^53), booleans (`t`, `T`, `true`, `True`, `TRUE`, `f`, ...) as 1 or 0; string fields (`"..."`) are skipped
//!   and counted in [`InfluxStats::string_fields`];
//! * timestamp converted from the request's precision to milliseconds, rounding toward negative infinity;
//!   a line without one gets the caller's default.
//!
//! Escapes: `\,` and `\ ` in measurements; `\,`, `\=` and `\ ` in tag keys, tag values and field keys; `\"` and
//! `\\` in string field values. A backslash before any other character is kept literally. Lines starting with
//! `#` are comments. A bad line is skipped whole and reported; the other lines are still visited.

use super::{ErrorSink, LineError, Piece, clip, recycle};

/// Timestamp precision of a write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Nanoseconds (the default).
    #[default]
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
    /// Minutes (v1 `precision=m`).
    M,
    /// Hours (v1 `precision=h`).
    H,
}

impl Precision {
    /// Parses a `precision` query parameter: v2 `ns`, `us`, `ms`, `s` and v1 `n`, `u`, `ms`, `s`, `m`, `h`
    /// (also `µ`/`µs`); an empty string means nanoseconds. `None` for anything else (answer 400).
    pub fn parse(s: &str) -> Option<Precision> {
        Some(match s {
            "" | "n" | "ns" => Precision::Ns,
            "u" | "us" | "µ" | "µs" => Precision::Us,
            "ms" => Precision::Ms,
            "s" => Precision::S,
            "m" => Precision::M,
            "h" => Precision::H,
            _ => return None,
        })
    }

    /// Converts a timestamp in this precision to milliseconds (floor); `None` on overflow.
    pub fn to_ms(self, t: i64) -> Option<i64> {
        match self {
            Precision::Ns => Some(t.div_euclid(1_000_000)),
            Precision::Us => Some(t.div_euclid(1_000)),
            Precision::Ms => Some(t),
            Precision::S => t.checked_mul(1_000),
            Precision::M => t.checked_mul(60_000),
            Precision::H => t.checked_mul(3_600_000),
        }
    }
}

/// What a line-protocol body contained, besides the samples the visitor saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InfluxStats {
    /// Non-blank, non-comment lines.
    pub lines: usize,
    /// Samples handed to the visitor (one per numeric or boolean field of a good line).
    pub samples: usize,
    /// String fields skipped.
    pub string_fields: usize,
    /// Number of bad lines (all of them).
    pub error_lines: usize,
    /// The first [`super::MAX_LINE_ERRORS`] bad lines; none of their fields were visited.
    pub errors: Vec<LineError>,
}

/// Buffers reused across lines, so a line costs no allocation once they have grown.
struct Bufs<'b> {
    tags: Vec<(Piece<'b>, Piece<'b>)>,
    /// Metric name (in `scratch`) and value of each numeric field.
    fields: Vec<(Piece<'b>, f64)>,
    /// Unescaped and sanitized strings of the current line, addressed by [`Piece::Scratch`].
    scratch: String,
    /// Sanitized `<measurement>_`.
    prefix: String,
    /// Unescaping space for keys.
    tmp: String,
    /// Raw field keys seen on the line.
    keys: Vec<&'b str>,
}

/// Parses an InfluxDB line-protocol body.
///
/// `visit(labels, t_ms, value)` is called for every numeric or boolean field of every good line, in body order;
/// `labels` include `__name__`, are sorted by name, and have non-empty values. Bad lines are reported in
/// [`InfluxStats::errors`] with their 1-based line numbers.
pub fn parse_influx<F>(body: &str, precision: Precision, default_t_ms: i64, mut visit: F) -> InfluxStats
where
    F: FnMut(&[(&str, &str)], i64, f64),
{
    let mut stats = InfluxStats::default();
    let mut sink = ErrorSink::default();
    let mut bufs = Bufs {
        tags: Vec::with_capacity(16),
        fields: Vec::with_capacity(8),
        scratch: String::new(),
        prefix: String::new(),
        tmp: String::new(),
        keys: Vec::with_capacity(8),
    };
    let mut spare: Vec<(&str, &str)> = Vec::with_capacity(16);
    let bytes = body.as_bytes();
    let mut start = 0;
    let mut lineno = 0;
    while start < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
        let raw = &body[start..end];
        start = end + 1;
        lineno += 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim_start_matches([' ', '\t']);
        if line.trim_end().is_empty() || line.starts_with('#') {
            continue;
        }
        stats.lines += 1;
        let t_ms = match parse_line(line, precision, &mut bufs, &mut stats.string_fields) {
            Ok(t) => t.unwrap_or(default_t_ms),
            Err(msg) => {
                sink.push(lineno, msg);
                continue;
            }
        };
        let Bufs { tags, fields, scratch, .. } = &bufs;
        let mut labels = recycle(std::mem::take(&mut spare));
        // Tag keys are checked once: sanitizing may have mapped two of them (or one to `__name__`) to one name.
        labels.push(("__name__", ""));
        labels.extend(tags.iter().map(|(k, _)| (k.get(scratch), "")));
        labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
        if let Some(w) = labels.windows(2).find(|w| w[0].0 == w[1].0) {
            sink.push(lineno, format!("two tag keys map to the label name {:?}", clip(w[0].0, 64)));
        } else {
            for &(name, value) in fields {
                labels.clear();
                labels.push(("__name__", name.get(scratch)));
                labels.extend(tags.iter().map(|(k, v)| (k.get(scratch), v.get(scratch))));
                labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
                visit(&labels, t_ms, value);
                stats.samples += 1;
            }
        }
        spare = recycle(labels);
    }
    stats.error_lines = sink.count;
    stats.errors = sink.errors;
    stats
}

/// Scans from `i` to the first unescaped byte in `stops`; returns (end, whether an escape was seen).
fn scan(b: &[u8], mut i: usize, stops: &[u8], escapable: &[u8]) -> (usize, bool) {
    let mut escaped = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && i + 1 < b.len() && escapable.contains(&b[i + 1]) {
            escaped = true;
            i += 2;
        } else if stops.contains(&c) {
            break;
        } else {
            i += 1;
        }
    }
    (i, escaped)
}

fn unescape_into(s: &str, escapable: &[u8], out: &mut String) {
    let b = s.as_bytes();
    let mut from = 0;
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'\\' && escapable.contains(&b[i + 1]) {
            out.push_str(&s[from..i]);
            from = i + 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    out.push_str(&s[from..]);
}

/// Appends `s` with every character outside `[a-zA-Z0-9_]` (plus `:` if `colon`) replaced by `_`.
fn push_sanitized(out: &mut String, s: &str, colon: bool) {
    for c in s.chars() {
        out.push(if c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':') { c } else { '_' });
    }
}

const KEY_ESC: &[u8] = b", =";
const MEASUREMENT_ESC: &[u8] = b", ";

/// A tag key or tag value, unescaped (into `scratch` only if needed).
fn text_piece<'b>(line: &'b str, s: usize, e: usize, escaped: bool, scratch: &mut String) -> Piece<'b> {
    if !escaped {
        return Piece::Body(&line[s..e]);
    }
    let from = scratch.len();
    unescape_into(&line[s..e], KEY_ESC, scratch);
    Piece::Scratch(from, scratch.len())
}

/// A label name from a tag key: sanitized, in `scratch` unless it is already valid.
fn label_piece<'b>(
    line: &'b str,
    s: usize,
    e: usize,
    escaped: bool,
    scratch: &mut String,
    tmp: &mut String,
) -> Piece<'b> {
    let raw = &line[s..e];
    if !escaped && super::remote::is_valid_label_name(raw) {
        return Piece::Body(raw);
    }
    let key = if escaped {
        tmp.clear();
        unescape_into(raw, KEY_ESC, tmp);
        tmp.as_str()
    } else {
        raw
    };
    let from = scratch.len();
    if key.starts_with(|c: char| c.is_ascii_digit()) {
        scratch.push('_');
    }
    push_sanitized(scratch, key, false);
    Piece::Scratch(from, scratch.len())
}

fn parse_line<'b>(
    line: &'b str,
    precision: Precision,
    bufs: &mut Bufs<'b>,
    string_fields: &mut usize,
) -> Result<Option<i64>, String> {
    let Bufs { tags, fields, scratch, prefix, tmp, keys } = bufs;
    tags.clear();
    fields.clear();
    scratch.clear();
    prefix.clear();
    keys.clear();
    let b = line.as_bytes();
    // Measurement.
    let (m_end, m_escaped) = scan(b, 0, b", ", MEASUREMENT_ESC);
    if m_end == 0 {
        return Err("the line has no measurement name".into());
    }
    let measurement = if m_escaped {
        tmp.clear();
        unescape_into(&line[..m_end], MEASUREMENT_ESC, tmp);
        tmp.as_str()
    } else {
        &line[..m_end]
    };
    if measurement.starts_with(|c: char| c.is_ascii_digit()) {
        prefix.push('_');
    }
    push_sanitized(prefix, measurement, true);
    prefix.push('_');
    let mut i = m_end;
    // Tags.
    while i < b.len() && b[i] == b',' {
        let (k_end, k_esc) = scan(b, i + 1, b",= ", KEY_ESC);
        if k_end == i + 1 {
            return Err(format!("empty tag key at column {}", i + 2));
        }
        if b.get(k_end) != Some(&b'=') {
            return Err(format!("tag key {:?} has no '=value'", clip(&line[i + 1..k_end], 64)));
        }
        let (v_end, v_esc) = scan(b, k_end + 1, b", ", KEY_ESC);
        if v_end == k_end + 1 {
            return Err(format!("tag {:?} has an empty value", clip(&line[i + 1..k_end], 64)));
        }
        let key = label_piece(line, i + 1, k_end, k_esc, scratch, tmp);
        let value = text_piece(line, k_end + 1, v_end, v_esc, scratch);
        tags.push((key, value));
        i = v_end;
    }
    if i >= b.len() || b[i] != b' ' {
        return Err("the line has no fields: expected a space and field=value after the measurement and tags".into());
    }
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    // Fields.
    loop {
        let (k_end, k_esc) = scan(b, i, b",= ", KEY_ESC);
        let raw_key = &line[i..k_end];
        if raw_key.is_empty() {
            return Err(format!("empty field key at column {}", i + 1));
        }
        if b.get(k_end) != Some(&b'=') {
            return Err(format!("field {:?} has no '=value'", clip(raw_key, 64)));
        }
        if keys.contains(&raw_key) {
            return Err(format!("field {:?} appears more than once", clip(raw_key, 64)));
        }
        keys.push(raw_key);
        let vs = k_end + 1;
        let (v_end, value) = if b.get(vs) == Some(&b'"') {
            let mut j = vs + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            if j >= b.len() {
                return Err(format!("string field {:?} has no closing quote", clip(raw_key, 64)));
            }
            (j + 1, None)
        } else {
            let mut j = vs;
            while j < b.len() && b[j] != b',' && b[j] != b' ' {
                j += 1;
            }
            let tok = &line[vs..j];
            let v = field_value(tok).ok_or_else(|| {
                if tok.is_empty() {
                    format!("field {:?} has an empty value", clip(raw_key, 64))
                } else {
                    format!(
                        "field {:?} has an invalid value {:?} (expected a float, 12i, 12u, true/false, or a quoted string)",
                        clip(raw_key, 64),
                        clip(tok, 64)
                    )
                }
            })?;
            (j, Some(v))
        };
        match value {
            None => *string_fields += 1,
            Some(v) => {
                let from = scratch.len();
                scratch.push_str(prefix);
                if k_esc {
                    tmp.clear();
                    unescape_into(raw_key, KEY_ESC, tmp);
                    push_sanitized(scratch, tmp, true);
                } else {
                    push_sanitized(scratch, raw_key, true);
                }
                fields.push((Piece::Scratch(from, scratch.len()), v));
            }
        }
        i = v_end;
        match b.get(i) {
            Some(b',') => i += 1,
            _ => break,
        }
    }
    // Timestamp.
    let rest = line[i..].trim_matches([' ', '\t']);
    if !rest.is_empty() && i < b.len() && b[i] != b' ' {
        return Err(format!("unexpected {:?} after the fields", clip(&line[i..], 64)));
    }
    if rest.is_empty() {
        return Ok(None);
    }
    let t: i64 = rest.parse().map_err(|_| format!("timestamp {:?} is not an integer", clip(rest, 64)))?;
    precision
        .to_ms(t)
        .map(Some)
        .ok_or_else(|| format!("timestamp {t} in precision {precision:?} is out of range when converted to ms"))
}

/// Value of a non-string field, or `None` if invalid.
fn field_value(tok: &str) -> Option<f64> {
    match tok {
        "t" | "T" | "true" | "True" | "TRUE" => return Some(1.0),
        "f" | "F" | "false" | "False" | "FALSE" => return Some(0.0),
        _ => {}
    }
    if let Some(int) = tok.strip_suffix('i') {
        return int.parse::<i64>().ok().map(|v| v as f64);
    }
    if let Some(uint) = tok.strip_suffix('u') {
        return uint.parse::<u64>().ok().map(|v| v as f64);
    }
    // Floats: digits, sign, point and exponent only (no inf/nan, which line protocol does not allow).
    if tok.bytes().all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-')) {
        tok.parse::<f64>().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row = (Vec<(String, String)>, i64, f64);

    fn parse(body: &str, precision: Precision) -> (Vec<Row>, InfluxStats) {
        let mut rows = Vec::new();
        let stats = parse_influx(body, precision, 42, |labels, t, v| {
            rows.push((labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(), t, v));
        });
        (rows, stats)
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn basic_line_with_all_field_types() {
        let body = "cpu,host=server01,region=us-west usage=0.64,count=12i,big=18446744073709551615u,up=t,down=FALSE,\
                    msg=\"hello, \\\"world\\\" =x\" 1700000000123456789\n";
        let (rows, stats) = parse(body, Precision::Ns);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        assert_eq!((stats.lines, stats.samples, stats.string_fields), (1, 5, 1));
        let names: Vec<&str> = rows.iter().map(|r| r.0[0].1.as_str()).collect();
        assert_eq!(names, vec!["cpu_usage", "cpu_count", "cpu_big", "cpu_up", "cpu_down"]);
        assert_eq!(rows[0].0, labels(&[("__name__", "cpu_usage"), ("host", "server01"), ("region", "us-west")]));
        assert_eq!(rows.iter().map(|r| r.2).collect::<Vec<_>>(), vec![0.64, 12.0, 18446744073709551615.0, 1.0, 0.0]);
        assert!(rows.iter().all(|r| r.1 == 1_700_000_000_123));
    }

    #[test]
    fn escapes_and_sanitizing() {
        let body = "my\\ meas\\,ure.ment,tag\\ key=va\\,l\\ ue\\=x,1st=a,b-c=d fi\\=eld=1,2nd=2 5\n";
        let (rows, stats) = parse(body, Precision::S);
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        assert_eq!(
            rows[0].0,
            labels(&[("_1st", "a"), ("__name__", "my_meas_ure_ment_fi_eld"), ("b_c", "d"), ("tag_key", "va,l ue=x")])
        );
        assert_eq!(rows[1].0[1].1, "my_meas_ure_ment_2nd");
        assert_eq!(rows[0].1, 5000);
        // A measurement starting with a digit; a backslash before an ordinary character is literal.
        let (rows, _) = parse("9lives,t=a\\b v=1\n", Precision::Ns);
        assert_eq!(rows[0].0, labels(&[("__name__", "_9lives_v"), ("t", "a\\b")]));
    }

    #[test]
    fn precisions_and_default_timestamp() {
        for (p, t, want) in [
            (Precision::Ns, "1500000", 1),
            (Precision::Ns, "-1", -1),
            (Precision::Us, "2500", 2),
            (Precision::Ms, "7", 7),
            (Precision::S, "3", 3000),
            (Precision::M, "2", 120_000),
            (Precision::H, "1", 3_600_000),
        ] {
            let (rows, stats) = parse(&format!("m v=1 {t}"), p);
            assert!(stats.errors.is_empty(), "{:?}", stats.errors);
            assert_eq!(rows[0].1, want, "{p:?} {t}");
        }
        let (rows, _) = parse("m v=1\nm v=2   \r\n", Precision::Ns);
        assert_eq!(rows.iter().map(|r| r.1).collect::<Vec<_>>(), vec![42, 42]);
        assert_eq!(Precision::parse("u"), Some(Precision::Us));
        assert_eq!(Precision::parse("n"), Some(Precision::Ns));
        assert_eq!(Precision::parse("h"), Some(Precision::H));
        assert_eq!(Precision::parse("d"), None);
        let (_, stats) = parse("m v=1 9223372036854775807", Precision::H);
        assert!(stats.errors[0].message.contains("out of range"));
    }

    #[test]
    fn bad_lines_are_reported_and_good_ones_kept() {
        let body = "# comment\n\
                    good v=1\n\
                    ,t=a v=1\n\
                    m,t v=1\n\
                    m,t= v=1\n\
                    m\n\
                    m v=\n\
                    m v=abc\n\
                    m v=1,v=2\n\
                    m v=\"open\n\
                    m v=1 12.5\n\
                    m v=1i5\n\
                    m,a.b=1,a_b=2 v=1\n\
                    m v=nan\n\
                    \n\
                    good2,x=y v=2i 3\n";
        let (rows, stats) = parse(body, Precision::Ms);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1], (labels(&[("__name__", "good2_v"), ("x", "y")]), 3, 2.0));
        let lines: Vec<usize> = stats.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        assert_eq!((stats.lines, stats.error_lines), (14, 12));
        let msgs: Vec<String> = stats.errors.iter().map(ToString::to_string).collect();
        assert!(msgs[0].contains("no measurement"), "{}", msgs[0]);
        assert!(msgs[2].contains("empty value"), "{}", msgs[2]);
        assert!(msgs[3].contains("no fields"), "{}", msgs[3]);
        assert!(msgs[5].starts_with("line 8: field \"v\" has an invalid value \"abc\""), "{}", msgs[5]);
        assert!(msgs[6].contains("appears more than once"), "{}", msgs[6]);
        assert!(msgs[7].contains("no closing quote"), "{}", msgs[7]);
        assert!(msgs[8].contains("not an integer"), "{}", msgs[8]);
        assert!(msgs[10].contains("two tag keys map to the label name \"a_b\""), "{}", msgs[10]);
    }

    #[test]
    fn name_label_conflicts_and_unicode_keys() {
        let (rows, stats) = parse("m,__name__=x v=1\nm,région=eu,host=a v=1\r\n", Precision::Ns);
        assert_eq!(stats.errors.len(), 1);
        assert!(stats.errors[0].message.contains("\"__name__\""), "{}", stats.errors[0]);
        assert_eq!(rows[0].0, labels(&[("__name__", "m_v"), ("host", "a"), ("r_gion", "eu")]));
        // A line with only string fields gives no sample and no error.
        let (rows, stats) = parse("m msg=\"hi\"\n", Precision::Ns);
        assert!(rows.is_empty() && stats.errors.is_empty());
        assert_eq!(stats.string_fields, 1);
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut x = 0x0ddc_0ffe_e123_4567u64;
        let alphabet = ['a', ',', '=', ' ', '"', '\\', '1', 'i', 'u', '.', 't', '\n', 'é', '#', '-', 'e'];
        for _ in 0..5000 {
            let s: String = (0..30)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = parse(&s, Precision::Ns);
        }
    }
}
