//! Line parsers and value helpers behind LogQL's pipeline stages: `| json`, `| logfmt`,
//! `| pattern`, `| unpack`, `| decolorize`, the duration and byte-size literals of label filters
//! and `unwrap`, and Loki's `detected_level`.
//!
//! Everything here follows Grafana Loki's behaviour, quirks included (each is noted where it is
//! implemented): the JSON parsers reproduce the lenient `jsonparser` scanner Loki uses rather than
//! a strict JSON grammar, the logfmt decoder is Loki's adaptation of go-logfmt, and durations and
//! byte sizes follow Go's `time.ParseDuration` and go-humanize's `ParseBytes`.
//!
//! What the parsers return are the labels a stage sets, before Loki's `_extracted` renaming: the
//! caller renames a label that collides with a stream label.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::{memchr, memchr2, memchr3, memmem};
use regex::Regex;

/// Labels extracted from a line, in order of appearance. Names are sanitized as Loki does
/// (invalid chars -> '_', nested JSON keys joined with '_', a leading digit gets a '_' prefix...).
pub type Extracted = Vec<(String, String)>;

// ---------------------------------------------------------------------------------------------
// Label names and the output buffer
// ---------------------------------------------------------------------------------------------

/// Sanitizes a label name as Loki's parsers do (`sanitizeLabelKey(key, true)`): surrounding
/// whitespace is trimmed, a leading ASCII digit gets a `_` prefix, and every character other than
/// `[a-zA-Z0-9_]` becomes one `_`. A name that is empty after trimming stays empty.
pub fn sanitize_label(name: &str) -> String {
    let key = name.trim();
    let mut out = String::with_capacity(key.len() + 1);
    if key.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        out.push('_');
    }
    push_mapped(&mut out, key);
    out
}

/// Appends `key` with every character outside `[a-zA-Z0-9_]` replaced by `_`.
fn push_mapped(out: &mut String, key: &str) {
    out.extend(key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
}

/// Loki's `appendSanitized`, which builds nested JSON names: the key is trimmed and mapped, and
/// gets a `_` before a leading digit only when it starts the name.
fn append_sanitized(to: &mut String, key: &str) {
    let key = key.trim();
    if key.is_empty() {
        return;
    }
    if to.is_empty() && key.as_bytes()[0].is_ascii_digit() {
        to.push('_');
    }
    push_mapped(to, key);
}

/// Replaces U+FFFD with a space, as Loki does for values ("the rune error replacement is rejected
/// by Prometheus").
fn replace_rune_error(value: Cow<'_, str>) -> String {
    if value.contains('\u{FFFD}') { value.replace('\u{FFFD}', " ") } else { value.into_owned() }
}

/// The labels one call appends. Like Loki's `LabelsBuilder.Set`, setting a name this call already
/// set replaces its value (the last occurrence in the line wins) instead of adding a second pair.
struct Sink<'o> {
    out: &'o mut Extracted,
    start: usize,
}

impl<'o> Sink<'o> {
    fn new(out: &'o mut Extracted) -> Self {
        let start = out.len();
        Sink { out, start }
    }

    fn set(&mut self, name: String, value: String) {
        match self.out[self.start..].iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.out.push((name, value)),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.out[self.start..].iter().any(|(n, _)| n == name)
    }
}

// ---------------------------------------------------------------------------------------------
// logfmt
// ---------------------------------------------------------------------------------------------

/// A logfmt syntax error, with Loki's 1-based byte position.
struct LogfmtError {
    pos: usize,
    msg: &'static str,
}

impl LogfmtError {
    /// Loki's `__error_details__` text, e.g. `logfmt syntax error at pos 8 : unexpected '='`.
    fn message(&self) -> String {
        format!("logfmt syntax error at pos {} : {}", self.pos, self.msg)
    }
}

/// The message of Go's `fmt.Sprintf("unexpected %q", c)` for the two bytes that can trigger it.
fn unexpected_byte(c: u8) -> &'static str {
    if c == b'"' { "unexpected '\"'" } else { "unexpected '='" }
}

/// One key and its (unquoted) value; a key without `=` or with `=` and nothing after has an
/// empty value.
type Pair<'a> = (&'a str, Cow<'a, str>);

/// Loki's logfmt decoder (`pkg/logql/log/logfmt/decode.go`, adapted from go-logfmt). Bytes up to
/// and including the space are separators; a key runs to `=` or a separator; a value is bare (to
/// the next separator) or double-quoted with JSON-like escapes. After an error the decoder skips
/// to the next separator, which is how non-strict parsing carries on.
struct Decoder<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn new(line: &'a str) -> Self {
        Decoder { line, pos: 0 }
    }

    /// The next pair, an error, or `None` at the end of the line.
    fn next_pair(&mut self) -> Option<Result<Pair<'a>, LogfmtError>> {
        let bytes = self.line.as_bytes();
        while self.pos < bytes.len() && bytes[self.pos] <= b' ' {
            self.pos += 1;
        }
        (self.pos < bytes.len()).then(|| self.scan_key())
    }

    fn scan_key(&mut self) -> Result<Pair<'a>, LogfmtError> {
        let bytes = self.line.as_bytes();
        let start = self.pos;
        while self.pos < bytes.len() {
            match bytes[self.pos] {
                b'=' if self.pos == start => return Err(self.skip_value(unexpected_byte(b'='))),
                b'=' => {
                    let key = &self.line[start..self.pos];
                    if key.contains('\u{FFFD}') {
                        return Err(self.skip_value("invalid key"));
                    }
                    return self.scan_value(key);
                }
                b'"' => return Err(self.skip_value(unexpected_byte(b'"'))),
                c if c <= b' ' => break,
                _ => self.pos += 1,
            }
        }
        let key = &self.line[start..self.pos];
        if key.contains('\u{FFFD}') {
            return Err(LogfmtError { pos: self.pos + 1, msg: "invalid key" });
        }
        Ok((key, Cow::Borrowed("")))
    }

    fn scan_value(&mut self, key: &'a str) -> Result<Pair<'a>, LogfmtError> {
        let bytes = self.line.as_bytes();
        self.pos += 1;
        if self.pos >= bytes.len() || bytes[self.pos] <= b' ' {
            return Ok((key, Cow::Borrowed("")));
        }
        if bytes[self.pos] == b'"' {
            return self.scan_quoted(key);
        }
        let start = self.pos;
        while self.pos < bytes.len() {
            match bytes[self.pos] {
                c @ (b'=' | b'"') => return Err(self.skip_value(unexpected_byte(c))),
                c if c <= b' ' => break,
                _ => self.pos += 1,
            }
        }
        Ok((key, Cow::Borrowed(&self.line[start..self.pos])))
    }

    fn scan_quoted(&mut self, key: &'a str) -> Result<Pair<'a>, LogfmtError> {
        let bytes = self.line.as_bytes();
        let open = self.pos;
        let (mut has_escape, mut escaped) = (false, false);
        for (i, &c) in bytes.iter().enumerate().skip(open + 1) {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                (has_escape, escaped) = (true, true);
            } else if c == b'"' {
                self.pos = i + 1;
                let raw = &self.line[open + 1..i];
                if !has_escape {
                    return Ok((key, Cow::Borrowed(raw)));
                }
                return match logfmt_unquote(raw) {
                    Some(value) => Ok((key, Cow::Owned(value))),
                    None => Err(LogfmtError { pos: self.pos + 1, msg: "invalid quoted value" }),
                };
            }
        }
        self.pos = bytes.len();
        Err(LogfmtError { pos: self.pos + 1, msg: "unterminated quoted value" })
    }

    /// Records an error at the current byte and skips to the next separator.
    fn skip_value(&mut self, msg: &'static str) -> LogfmtError {
        let err = LogfmtError { pos: self.pos + 1, msg };
        let bytes = self.line.as_bytes();
        while self.pos < bytes.len() && bytes[self.pos] > b' ' {
            self.pos += 1;
        }
        err
    }
}

/// Decodes the escapes of a quoted logfmt value (Go's JSON string rules plus `\'`); `None` when an
/// escape is invalid, which Loki reports as "invalid quoted value".
fn logfmt_unquote(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let (mut i, mut copied) = (0, 0);
    while let Some(off) = memchr(b'\\', &bytes[i..]) {
        let at = i + off;
        out.push_str(&raw[copied..at]);
        let (c, used) = match *bytes.get(at + 1)? {
            c @ (b'"' | b'\\' | b'/' | b'\'') => (c as char, 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'u' => logfmt_unicode_escape(&bytes[at..])?,
            _ => return None,
        };
        out.push(c);
        i = at + used;
        copied = i;
    }
    out.push_str(&raw[copied..]);
    Some(out)
}

/// `\uXXXX` in a logfmt value: a valid surrogate pair takes 12 bytes, any other surrogate becomes
/// U+FFFD (6 bytes).
fn logfmt_unicode_escape(b: &[u8]) -> Option<(char, usize)> {
    let hi = hex4(b.get(2..6)?)?;
    if !(0xD800..=0xDFFF).contains(&hi) {
        return Some((char::from_u32(hi)?, 6));
    }
    let lo = b.get(6..12).filter(|t| t.starts_with(b"\\u")).and_then(|t| hex4(&t[2..]));
    match lo {
        Some(lo) if hi < 0xDC00 && (0xDC00..=0xDFFF).contains(&lo) => Some((surrogate_pair(hi, lo)?, 12)),
        _ => Some(('\u{FFFD}', 6)),
    }
}

fn surrogate_pair(hi: u32, lo: u32) -> Option<char> {
    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
}

/// Four hexadecimal digits.
fn hex4(digits: &[u8]) -> Option<u32> {
    if digits.len() != 4 {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &d| Some(acc * 16 + char::from(d).to_digit(16)?))
}

/// `| logfmt` with flags `--strict` and `--keep-empty`. Err(message) when strict and the line is malformed
/// (Loki then sets `__error__=LogfmtParserErr`, which the caller does). Without strict, malformed parts
/// are skipped as Loki does.
///
/// Loki's behaviour: keys are sanitized ([`sanitize_label`]) and a key that sanitizes to nothing is
/// dropped; a later duplicate key replaces the earlier value; a key without a value (`a` or `a=`,
/// also `a=""`) is dropped unless `keep_empty`; U+FFFD in a value becomes a space. With `strict`,
/// parsing stops at the first error and the labels extracted before it are kept (appended to
/// `out`); the message is Loki's `__error_details__`, e.g. `logfmt syntax error at pos 8 :
/// unexpected '='`. Without `strict`, errors are never reported.
pub fn logfmt(line: &str, strict: bool, keep_empty: bool, out: &mut Extracted) -> Result<(), String> {
    let mut sink = Sink::new(out);
    let mut decoder = Decoder::new(line);
    while let Some(item) = decoder.next_pair() {
        match item {
            Ok((key, value)) => {
                let name = sanitize_label(key);
                let value = replace_rune_error(value);
                if name.is_empty() || (!keep_empty && value.is_empty()) {
                    continue;
                }
                sink.set(name, value);
            }
            Err(err) if strict => return Err(err.message()),
            Err(_) => {}
        }
    }
    Ok(())
}

/// `| logfmt a, b="c"` with parameters: extract only the given keys (out name, key).
///
/// Loki's behaviour (`LogfmtExpressionParser`): every requested label is set, to `""` when its key
/// is absent or has no value (so `keep_empty` makes no difference here); a line key is compared
/// with the requested keys after sanitizing (`foo-bar=1` answers a request for `foo_bar`), and a
/// line key equal to a requested *label name* fills that label too (Loki's lookup falls back to
/// the name); a value holding U+FFFD becomes `""` (not a space as in `| logfmt`); the last
/// occurrence wins. When two labels request the same key only the first is filled (Loki picks one
/// at random). Strict errors are returned after the labels are filled.
pub fn logfmt_fields(
    line: &str,
    fields: &[(String, String)],
    strict: bool,
    keep_empty: bool,
    out: &mut Extracted,
) -> Result<(), String> {
    let _ = keep_empty;
    let mut sink = Sink::new(out);
    let mut result = Ok(());
    let mut decoder = Decoder::new(line);
    while let Some(item) = decoder.next_pair() {
        match item {
            Ok((key, value)) => {
                let key = sanitize_label(key);
                if key.is_empty() {
                    continue;
                }
                if let Some(name) = logfmt_field_for(fields, &key) {
                    let value = if value.contains('\u{FFFD}') { String::new() } else { value.into_owned() };
                    sink.set(name.to_string(), value);
                }
            }
            Err(err) if strict => {
                result = Err(err.message());
                break;
            }
            Err(_) => {}
        }
    }
    for (name, _) in fields {
        if !sink.has(name) {
            sink.set(name.clone(), String::new());
        }
    }
    result
}

/// The label a (sanitized) line key fills: the first field requesting that key, else a field
/// named like the key.
fn logfmt_field_for<'f>(fields: &'f [(String, String)], key: &str) -> Option<&'f str> {
    fields
        .iter()
        .find(|(_, k)| k == key)
        .or_else(|| fields.iter().find(|(name, _)| name == key))
        .map(|(name, _)| name.as_str())
}

// ---------------------------------------------------------------------------------------------
// The JSON scanner (Loki's `jsonparser`: lenient, validating only what it walks)
// ---------------------------------------------------------------------------------------------

const MALFORMED_JSON: &str = "Malformed JSON error";
const MALFORMED_STRING: &str = "Value is string, but can't find closing '\"' symbol";
const MALFORMED_ARRAY: &str = "Value is array, but can't find closing ']' symbol";
const MALFORMED_OBJECT: &str = "Value looks like object, but can't find closing '}' symbol";
const UNKNOWN_VALUE_TYPE: &str = "Unknown value type";
const BAD_ESCAPE: &str = "Encountered an invalid escape sequence in a string";
/// jsoniter's `ObjectValue` is 6.
const NOT_AN_OBJECT: &str = "expecting json object(6), but it is not";

/// A scanner result; the error is jsonparser's message, which Loki puts in `__error_details__`.
type JResult<T> = Result<T, &'static str>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JType {
    Str,
    Num,
    Obj,
    Arr,
    Bool,
    Null,
}

/// A value found in a JSON text: `start..end` is its text (a string without its quotes), `next`
/// is the offset just after it.
#[derive(Debug, Clone, Copy)]
struct JVal {
    start: usize,
    end: usize,
    next: usize,
    ty: JType,
}

fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// The offset of the first non-whitespace byte at or after `from`.
fn next_token(b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?.iter().position(|&c| !is_json_space(c)).map(|p| from + p)
}

/// The offset just after the closing quote of a string whose content starts at `from`, and
/// whether the string holds a backslash. A quote preceded by an odd run of backslashes is escaped.
fn string_end(b: &[u8], from: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    let mut i = from;
    while let Some(off) = memchr2(b'"', b'\\', &b[i..]) {
        let at = i + off;
        i = at + 1;
        if b[at] == b'\\' {
            escaped = true;
        } else if !escaped || b[from..at].iter().rev().take_while(|&&c| c == b'\\').count() % 2 == 0 {
            return Some((at + 1, escaped));
        }
    }
    None
}

/// The offset just after the bracket closing the block opened at `from`, counting only `open` and
/// `close` outside strings (jsonparser's `blockEnd`: the content is not validated).
fn block_end(b: &[u8], from: usize, open: u8, close: u8) -> Option<usize> {
    let mut level = 0usize;
    let mut i = from;
    while let Some(off) = memchr3(b'"', open, close, &b[i..]) {
        let at = i + off;
        i = at + 1;
        if b[at] == b'"' {
            i = string_end(b, at + 1)?.0;
        } else if b[at] == open {
            level += 1;
        } else {
            level = level.checked_sub(1)?;
            if level == 0 {
                return Some(at + 1);
            }
        }
    }
    None
}

/// The end of a bare token (number, literal): the next whitespace, `,`, `}` or `]`.
fn token_end(b: &[u8], from: usize) -> usize {
    b[from..].iter().position(|&c| is_json_space(c) || matches!(c, b',' | b'}' | b']')).map_or(b.len(), |p| from + p)
}

/// jsonparser's `Get` without a path: the value at `from` (after whitespace). Numbers are not
/// validated (`12abc` is a number), literals must be exactly `true`, `false` or `null`.
fn get_value(b: &[u8], from: usize) -> JResult<JVal> {
    let off = next_token(b, from).ok_or(MALFORMED_JSON)?;
    match b[off] {
        b'"' => {
            let (next, _) = string_end(b, off + 1).ok_or(MALFORMED_STRING)?;
            Ok(JVal { start: off + 1, end: next - 1, next, ty: JType::Str })
        }
        b'[' => {
            let next = block_end(b, off, b'[', b']').ok_or(MALFORMED_ARRAY)?;
            Ok(JVal { start: off, end: next, next, ty: JType::Arr })
        }
        b'{' => {
            let next = block_end(b, off, b'{', b'}').ok_or(MALFORMED_OBJECT)?;
            Ok(JVal { start: off, end: next, next, ty: JType::Obj })
        }
        first => {
            let end = token_end(b, off);
            let ty = bare_token_type(first, &b[off..end])?;
            Ok(JVal { start: off, end, next: end, ty })
        }
    }
}

fn bare_token_type(first: u8, token: &[u8]) -> JResult<JType> {
    match first {
        b't' | b'f' if token == b"true" || token == b"false" => Ok(JType::Bool),
        b'u' | b'n' if token == b"null" => Ok(JType::Null),
        b'0'..=b'9' | b'-' => Ok(JType::Num),
        _ => Err(UNKNOWN_VALUE_TYPE),
    }
}

/// jsonparser's `ObjectEach`: calls `f` with each member's (unescaped) key and value, stopping at
/// the first error. Text after the closing brace is ignored, and so is a trailing comma followed by
/// whitespace (`{"a":1, }`), exactly as jsonparser does.
fn object_each<'d>(data: &'d str, f: &mut dyn FnMut(Cow<'d, str>, JVal) -> JResult<()>) -> JResult<()> {
    let b = data.as_bytes();
    let open = next_token(b, 0).ok_or(MALFORMED_OBJECT)?;
    if b[open] != b'{' {
        return Err(MALFORMED_OBJECT);
    }
    let mut off = next_token(b, open + 1).ok_or(MALFORMED_JSON)?;
    if b[off] == b'}' {
        return Ok(());
    }
    let mut last_comma: Option<usize> = None;
    while off < b.len() {
        match b[off] {
            b'"' => off += 1,
            b'}' if last_comma.is_some_and(|c| c + 1 == off) => return Err(MALFORMED_OBJECT),
            b'}' => return Ok(()),
            _ => return Err(MALFORMED_OBJECT),
        }
        let (key, val) = object_member(data, off)?;
        f(key, val)?;
        off = next_token(b, val.next).ok_or(MALFORMED_ARRAY)?;
        match b[off] {
            b'}' => return Ok(()),
            b',' => last_comma = Some(off),
            _ => return Err(MALFORMED_OBJECT),
        }
        let next = next_token(b, off + 1).ok_or(MALFORMED_ARRAY)?;
        let skipped = next - (off + 1);
        if skipped > 0 {
            last_comma = last_comma.map(|c| c + skipped - 1);
        }
        off = next;
    }
    Err(MALFORMED_OBJECT)
}

/// One member of an object: the key whose content starts at `from`, then `:` and the value.
fn object_member(data: &str, from: usize) -> JResult<(Cow<'_, str>, JVal)> {
    let b = data.as_bytes();
    let (key_end, escaped) = string_end(b, from).ok_or(MALFORMED_JSON)?;
    let raw_key = &data[from..key_end - 1];
    let key = if escaped { json_unescape(raw_key).ok_or(BAD_ESCAPE)? } else { Cow::Borrowed(raw_key) };
    let colon = next_token(b, key_end).ok_or(MALFORMED_JSON)?;
    if b[colon] != b':' {
        return Err(MALFORMED_JSON);
    }
    Ok((key, get_value(b, colon + 1)?))
}

/// jsonparser's `Unescape` of a string's content; `None` on an invalid escape. A lone surrogate
/// becomes U+FFFD.
fn json_unescape(raw: &str) -> Option<Cow<'_, str>> {
    let bytes = raw.as_bytes();
    let Some(first) = memchr(b'\\', bytes) else {
        return Some(Cow::Borrowed(raw));
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(&raw[..first]);
    let mut i = first;
    loop {
        let (c, used) = json_escape(&bytes[i..])?;
        out.push(c);
        i += used;
        match memchr(b'\\', &bytes[i..]) {
            Some(off) => {
                out.push_str(&raw[i..i + off]);
                i += off;
            }
            None => {
                out.push_str(&raw[i..]);
                return Some(Cow::Owned(out));
            }
        }
    }
}

/// The escape at the start of `b` (which starts with a backslash) and its length.
fn json_escape(b: &[u8]) -> Option<(char, usize)> {
    let c = match *b.get(1)? {
        c @ (b'"' | b'\\' | b'/') => c as char,
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => return json_unicode_escape(b),
        _ => return None,
    };
    Some((c, 2))
}

fn json_unicode_escape(b: &[u8]) -> Option<(char, usize)> {
    let hi = hex4(b.get(2..6)?)?;
    if !(0xD800..=0xDFFF).contains(&hi) {
        return Some((char::from_u32(hi)?, 6));
    }
    if hi >= 0xDC00 || b.get(6..8) != Some(b"\\u".as_slice()) {
        return Some(('\u{FFFD}', 6));
    }
    let lo = hex4(b.get(8..12)?)?;
    if !(0xDC00..=0xDFFF).contains(&lo) {
        return Some(('\u{FFFD}', 6));
    }
    Some((surrogate_pair(hi, lo)?, 12))
}

/// Loki's `unescapeJSONString`: the unescaped string, `""` when an escape is invalid, U+FFFD
/// replaced by a space.
fn unescape_value(raw: &str) -> String {
    json_unescape(raw).map_or_else(String::new, replace_rune_error)
}

// ---------------------------------------------------------------------------------------------
// | json
// ---------------------------------------------------------------------------------------------

/// `| json` without parameters: flattens nested objects with '_' (`"a":{"b":1}` -> `a_b="1"`); arrays
/// and nulls are skipped as Loki does; numbers and booleans keep their text. Err on invalid JSON
/// (the caller sets `__error__=JSONParserErr`).
///
/// Loki's behaviour (`JSONParser`): strings are unescaped (an invalid escape gives `""`, U+FFFD
/// becomes a space), numbers keep their text (`1.50`, `1e3`), booleans are `true`/`false`; **null
/// members and arrays set no label at all**. A top-level key is sanitized with
/// [`sanitize_label`]; a nested name is the sanitized parent name, `_` and the sanitized key (a
/// digit gets a `_` only at the start of the whole name, and a whitespace-only key adds nothing,
/// so `{" ": {"a": 1}}` gives `a`). A key that sanitizes to nothing gives a label named `""`, as
/// Loki does. A later duplicate replaces the earlier value. Anything but an object, including an
/// empty line, is an error. On a malformed line the labels found before the error are still
/// appended to `out` (Loki keeps them next to `__error__`); the message is jsonparser's, e.g.
/// `Value looks like object, but can't find closing '}' symbol`. Text after the object is ignored.
pub fn json(line: &str, out: &mut Extracted) -> Result<(), String> {
    let mut sink = Sink::new(out);
    let mut prefix = String::new();
    flatten(line, &mut prefix, &mut sink).map_err(str::to_string)
}

fn flatten(data: &str, prefix: &mut String, sink: &mut Sink<'_>) -> JResult<()> {
    object_each(data, &mut |key, val| flatten_member(data, &key, val, prefix, sink))
}

fn flatten_member(data: &str, key: &str, val: JVal, prefix: &mut String, sink: &mut Sink<'_>) -> JResult<()> {
    let text = &data[val.start..val.end];
    match val.ty {
        JType::Obj => {
            let saved = prefix.len();
            if !prefix.is_empty() {
                prefix.push('_');
            }
            append_sanitized(prefix, key);
            let result = flatten(text, prefix, sink);
            prefix.truncate(saved);
            result
        }
        JType::Str => {
            sink.set(leaf_name(prefix, key), unescape_value(text));
            Ok(())
        }
        JType::Num | JType::Bool => {
            sink.set(leaf_name(prefix, key), text.to_string());
            Ok(())
        }
        JType::Arr | JType::Null => Ok(()),
    }
}

fn leaf_name(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        return sanitize_label(key);
    }
    let mut name = String::with_capacity(prefix.len() + key.len() + 1);
    name.push_str(prefix);
    name.push('_');
    append_sanitized(&mut name, key);
    name
}

// ---------------------------------------------------------------------------------------------
// | json name="path"
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A compiled JSON path expression of `| json name="expr"`: `a.b`, `a[0]`, `a["b c"]`, `["a"].b[2]`.
///
/// The grammar is Loki's `jsonexpr`: identifiers `[a-zA-Z_][a-zA-Z0-9_]*` joined by `.`, and
/// bracketed keys (`["any text"]`, no escapes) or indexes (`[0]`). Errors carry Loki's messages,
/// e.g. `syntax error: unexpected FIELD` for `field with space` (Loki prefixes them with `cannot
/// parse expression [<expr>]: `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    segs: Vec<Seg>,
}

impl JsonPath {
    /// Compiles a path expression.
    pub fn parse(expr: &str) -> Result<JsonPath, String> {
        let mut lexer = PathLexer { chars: expr.chars().peekable(), error: None };
        let mut segs = Vec::new();
        let mut state = PathState::Start;
        loop {
            let token = lexer.next_token();
            state = match (state, token) {
                (PathState::Start | PathState::Values, PathTok::Lsb) => PathState::Bracket,
                (PathState::Start | PathState::Dot, PathTok::Field(f)) => {
                    segs.push(Seg::Key(f));
                    PathState::Values
                }
                (PathState::Bracket, PathTok::Str(s)) => PathState::Close(Seg::Key(s)),
                (PathState::Bracket, PathTok::Index(i)) => PathState::Close(Seg::Index(i)),
                (PathState::Close(seg), PathTok::Rsb) => {
                    segs.push(seg);
                    PathState::Values
                }
                (PathState::Values, PathTok::Dot) => PathState::Dot,
                (PathState::Values, PathTok::End) => {
                    return match lexer.error {
                        Some(err) => Err(err),
                        None => Ok(JsonPath { segs }),
                    };
                }
                (state, token) => return Err(state.syntax_error(&token)),
            }
        }
    }
}

/// The parser states of Loki's `jsonexpr` grammar.
enum PathState {
    Start,
    Values,
    Bracket,
    Close(Seg),
    Dot,
}

impl PathState {
    /// goyacc's verbose message for an unexpected token in this state.
    fn syntax_error(&self, token: &PathTok) -> String {
        let expecting = match self {
            PathState::Start => ", expecting LSB or FIELD",
            PathState::Bracket => ", expecting STRING or INDEX",
            PathState::Close(_) => ", expecting RSB",
            PathState::Dot => ", expecting FIELD",
            PathState::Values => "",
        };
        format!("syntax error: unexpected {}{expecting}", token.name())
    }
}

enum PathTok {
    Dot,
    Lsb,
    Rsb,
    Str(String),
    Field(String),
    Index(usize),
    End,
}

impl PathTok {
    fn name(&self) -> &'static str {
        match self {
            PathTok::Dot => "DOT",
            PathTok::Lsb => "LSB",
            PathTok::Rsb => "RSB",
            PathTok::Str(_) => "STRING",
            PathTok::Field(_) => "FIELD",
            PathTok::Index(_) => "INDEX",
            PathTok::End => "$end",
        }
    }
}

/// Loki's `jsonexpr` scanner. A lexical error ends the input; it is the reported error only when
/// the grammar accepts what came before (`a-b` -> `unexpected char -`).
struct PathLexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    error: Option<String>,
}

impl PathLexer<'_> {
    fn next_token(&mut self) -> PathTok {
        loop {
            let Some(c) = self.chars.next() else {
                return PathTok::End;
            };
            return match c {
                ' ' | '\t' | '\n' => continue,
                '\0' => PathTok::End,
                '0'..='9' => self.index(c),
                '[' => PathTok::Lsb,
                ']' => PathTok::Rsb,
                '.' => PathTok::Dot,
                'a'..='z' | 'A'..='Z' | '_' => PathTok::Field(self.field(c)),
                '"' => PathTok::Str(self.string()),
                other => self.fail(format!("unexpected char {other}")),
            };
        }
    }

    fn fail(&mut self, error: String) -> PathTok {
        self.error = Some(error);
        PathTok::End
    }

    fn field(&mut self, first: char) -> String {
        let mut name = String::from(first);
        while let Some(&c) = self.chars.peek().filter(|c| c.is_ascii_alphanumeric() || **c == '_') {
            name.push(c);
            self.chars.next();
        }
        name
    }

    /// A bracketed key: up to `"` or `]` (both consumed), without escapes.
    fn string(&mut self) -> String {
        self.chars.by_ref().take_while(|&c| c != '"' && c != ']' && c != '\0').collect()
    }

    fn index(&mut self, first: char) -> PathTok {
        let mut digits = String::from(first);
        loop {
            match self.chars.peek().copied() {
                Some('.') => return self.fail("cannot use float as array index".into()),
                Some(' ' | '\t' | '\n' | ']') => break,
                Some(c) if c.is_ascii_digit() => {
                    digits.push(c);
                    self.chars.next();
                }
                other => return self.fail(format!("non-integer value: {}", other.unwrap_or('\0'))),
            }
        }
        match digits.parse() {
            Ok(i) => PathTok::Index(i),
            Err(_) => self.fail(format!("strconv.Atoi: parsing {digits:?}: value out of range")),
        }
    }
}

/// `| json a="x.y", b` (a bare name means the path of that name): extract only the given (out name, path).
/// A path that selects an object or array yields its JSON text, as Loki does.
///
/// Loki's behaviour (`JSONExpressionParser`, jsonparser's `EachKey`): every requested label is set,
/// to `""` when the path is absent, selects `null` or fails; the first occurrence of a path wins;
/// a string is unescaped (U+FFFD becomes a space); an object yields its text verbatim; an array,
/// number or boolean yields its text with JSON escapes decoded (`["a\"b"]` gives `["a"b"]`). Only
/// the selected values are validated, so a line broken after them still works. An empty line sets
/// nothing. A line whose first byte is not `{`, `[` or `"` is an error with an **empty** message
/// (Loki sets no `__error_details__` then); a selected value that is malformed is an error with
/// jsonparser's message, the other labels being set all the same.
pub fn json_fields(line: &str, fields: &[(String, JsonPath)], out: &mut Extracted) -> Result<(), String> {
    let Some(&first) = line.as_bytes().first() else {
        return Ok(());
    };
    if !matches!(first, b'"' | b'{' | b'[') {
        return Err(String::new());
    }
    let mut sink = Sink::new(out);
    let mut error = None;
    for (name, path) in fields {
        match lookup(line, &path.segs) {
            Ok(Some((text, ty))) => sink.set(name.clone(), path_value(text, ty)),
            Ok(None) if sink.has(name) => {}
            Ok(None) => sink.set(name.clone(), String::new()),
            Err(err) => {
                error.get_or_insert(err);
                if !sink.has(name) {
                    sink.set(name.clone(), String::new());
                }
            }
        }
    }
    error.map_or(Ok(()), |err| Err(err.to_string()))
}

fn path_value(text: &str, ty: JType) -> String {
    match ty {
        JType::Null => String::new(),
        JType::Obj => text.to_string(),
        JType::Str | JType::Num | JType::Bool | JType::Arr => unescape_value(text),
    }
}

/// The value `segs` selects in the JSON value `data`. Structural damage outside the selected value
/// ends the search quietly, as `EachKey` does; a malformed selected value is an error.
fn lookup<'a>(data: &'a str, segs: &[Seg]) -> JResult<Option<(&'a str, JType)>> {
    let b = data.as_bytes();
    let Some((seg, rest)) = segs.split_first() else {
        let val = get_value(b, 0)?;
        return Ok(Some((&data[val.start..val.end], val.ty)));
    };
    let Some(start) = next_token(b, 0) else {
        return Ok(None);
    };
    match (seg, b[start]) {
        (Seg::Key(key), b'{') => lookup_member(&data[start..], key, rest),
        (Seg::Index(index), b'[') => lookup_element(&data[start..], *index, rest),
        _ => Ok(None),
    }
}

/// Searches the members of the object `obj` for `key`, in order; later duplicates are searched
/// when the first does not hold the rest of the path.
fn lookup_member<'a>(obj: &'a str, key: &str, rest: &[Seg]) -> JResult<Option<(&'a str, JType)>> {
    let b = obj.as_bytes();
    let mut off = 1;
    loop {
        let Some(colon) = member_colon(b, off) else {
            return Ok(None);
        };
        let matched = member_key_is(obj, off, key);
        if matched && rest.is_empty() {
            return lookup(&obj[colon + 1..], rest);
        }
        let val = get_value(b, colon + 1);
        if matched {
            let sub = val.map_or(&obj[colon + 1..], |v| &obj[v.start..v.next]);
            if let Some(found) = lookup(sub, rest)? {
                return Ok(Some(found));
            }
        }
        let Some(sep) = val.ok().and_then(|v| next_token(b, v.next)) else {
            return Ok(None);
        };
        if b[sep] != b',' {
            return Ok(None);
        }
        off = sep + 1;
    }
}

/// The offset of the `:` after the member key starting (after whitespace) at `from`.
fn member_colon(b: &[u8], from: usize) -> Option<usize> {
    let quote = next_token(b, from).filter(|&q| b[q] == b'"')?;
    let (key_end, _) = string_end(b, quote + 1)?;
    next_token(b, key_end).filter(|&c| b[c] == b':')
}

/// Whether the key of the member starting (after whitespace) at `from` equals `key`.
fn member_key_is(obj: &str, from: usize, key: &str) -> bool {
    let b = obj.as_bytes();
    let Some(quote) = next_token(b, from) else {
        return false;
    };
    let Some((key_end, escaped)) = string_end(b, quote + 1) else {
        return false;
    };
    let raw = &obj[quote + 1..key_end - 1];
    if escaped { json_unescape(raw).is_some_and(|k| k == key) } else { raw == key }
}

/// The element `index` of the array `arr` (jsonparser's `ArrayEach`), then the rest of the path.
fn lookup_element<'a>(arr: &'a str, index: usize, rest: &[Seg]) -> JResult<Option<(&'a str, JType)>> {
    let b = arr.as_bytes();
    let Some(mut off) = next_token(b, 1).filter(|&o| b[o] != b']') else {
        return Ok(None);
    };
    for _ in 0..index {
        let Ok(val) = get_value(b, off) else {
            return Ok(None);
        };
        match next_token(b, val.next) {
            Some(sep) if b[sep] == b',' => off = sep + 1,
            _ => return Ok(None),
        }
    }
    let Ok(val) = get_value(b, off) else {
        return Ok(None);
    };
    if rest.is_empty() {
        return Ok(Some((&arr[val.start..val.end], val.ty)));
    }
    let whole = if val.ty == JType::Str { val.start - 1 } else { val.start };
    lookup(&arr[whole..val.next], rest)
}

// ---------------------------------------------------------------------------------------------
// | unpack
// ---------------------------------------------------------------------------------------------

/// `| unpack`: the line is a JSON object written by Promtail's `pack` stage: every string key becomes a
/// label, and the `_entry` key replaces the line. Returns the new line (or None to keep the line).
///
/// Loki's behaviour (`UnpackParser`): only top-level string members count (numbers, objects...
/// are ignored), names are sanitized and values unescaped (U+FFFD becomes a space; `_entry` is
/// taken as is). **Labels are set only when the object has an `_entry`**: a JSON line without one
/// is left alone with no labels. An empty line is left alone; a line not starting with `{` is the
/// error `expecting json object(6), but it is not`; a malformed object is an error with
/// jsonparser's message and sets no label.
pub fn unpack(line: &str, out: &mut Extracted) -> Result<Option<String>, String> {
    let Some(&first) = line.as_bytes().first() else {
        return Ok(None);
    };
    if first != b'{' {
        return Err(NOT_AN_OBJECT.to_string());
    }
    let mut entry = None;
    let mut labels = Vec::new();
    object_each(line, &mut |key, val| {
        if val.ty != JType::Str {
            return Ok(());
        }
        let raw = &line[val.start..val.end];
        if key == "_entry" {
            entry = Some(json_unescape(raw).ok_or(BAD_ESCAPE)?.into_owned());
        } else {
            labels.push((sanitize_label(&key), unescape_value(raw)));
        }
        Ok(())
    })
    .map_err(str::to_string)?;
    if entry.is_some() {
        let mut sink = Sink::new(out);
        for (name, value) in labels {
            sink.set(name, value);
        }
    }
    Ok(entry)
}

// ---------------------------------------------------------------------------------------------
// | pattern
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Literal(String),
    /// A capture; `_` is the unnamed one.
    Capture(String),
}

const UNNAMED: &str = "_";

/// `| pattern "<ip> - <_> [<ts>] \"<method> <path> ...\""` compiled; Err on an invalid pattern (no
/// capture, two consecutive captures, duplicate names..., with Loki's messages).
///
/// A capture is `<name>` with `name` matching `[a-zA-Z_][a-zA-Z0-9_]*` (`<_>` is unnamed);
/// anything else, `<1x>` or `<a b>` included, is literal text.
#[derive(Debug, Clone)]
pub struct Pattern {
    nodes: Vec<Node>,
    names: Vec<String>,
}

impl Pattern {
    /// Compiles a pattern expression.
    pub fn parse(pattern: &str) -> Result<Pattern, String> {
        if pattern.is_empty() {
            return Err(
                "parse error at line 1, col 1: syntax error: unexpected $end, expecting IDENTIFIER or LITERAL".into()
            );
        }
        let nodes = pattern_nodes(pattern);
        let names: Vec<String> = nodes
            .iter()
            .filter_map(|n| match n {
                Node::Capture(name) if name != UNNAMED => Some(name.clone()),
                _ => None,
            })
            .collect();
        validate_pattern(&nodes, &names)?;
        Ok(Pattern { nodes, names })
    }

    /// Matches and appends the named captures; false when the line does not match.
    ///
    /// The captures appended are exactly those Loki's `| pattern` stage sets, which may be
    /// partial: the expression is anchored at the start when it starts with literal text; each
    /// capture takes the text up to the first occurrence of the following literal; when a literal
    /// is missing, the current capture takes the rest of the line and matching stops (later
    /// captures are not set); trailing text after the last literal is ignored. Loki's stage never
    /// drops a line, so captures are appended whatever this returns.
    ///
    /// The result is Loki's `Matcher.Test`: every literal found in order, no capture empty
    /// (except that the first literal may be preceded by text), and the line consumed exactly
    /// when the expression ends with a literal.
    pub fn matches(&self, line: &str, out: &mut Extracted) -> bool {
        self.capture(line, out);
        self.test(line)
    }

    /// Names of the named captures, in order.
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Loki's `Matcher.Matches`.
    fn capture(&self, line: &str, out: &mut Extracted) {
        let mut nodes = self.nodes.as_slice();
        let mut rest = line;
        if line.is_empty() {
            return;
        }
        if let Some(Node::Literal(lit)) = nodes.first() {
            let Some(tail) = rest.strip_prefix(lit.as_str()) else {
                return;
            };
            rest = tail;
            nodes = &nodes[1..];
        }
        while let Some((Node::Capture(name), tail)) = nodes.split_first() {
            let keep = name != UNNAMED;
            let found = match tail.first() {
                Some(Node::Literal(lit)) => memmem::find(rest.as_bytes(), lit.as_bytes()).map(|i| (i, lit.len())),
                _ => None,
            };
            let Some((at, len)) = found else {
                if keep {
                    out.push((name.clone(), rest.to_string()));
                }
                return;
            };
            if keep {
                out.push((name.clone(), rest[..at].to_string()));
            }
            rest = &rest[at + len..];
            nodes = &tail[1..];
        }
    }

    /// Loki's `Matcher.Test`.
    fn test(&self, line: &str) -> bool {
        if line.is_empty() {
            return false;
        }
        let mut off = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            let Node::Literal(lit) = node else {
                continue;
            };
            match memmem::find(&line.as_bytes()[off..], lit.as_bytes()) {
                None => return false,
                Some(0) if i != 0 => return false,
                Some(at) => off += at + lit.len(),
            }
        }
        let ends_with_capture = matches!(self.nodes.last(), Some(Node::Capture(_)));
        ends_with_capture == (off != line.len())
    }
}

/// Splits a pattern into literal runs and captures.
fn pattern_nodes(pattern: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut literal = String::new();
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        if let Some(len) = capture_len(rest) {
            if !literal.is_empty() {
                nodes.push(Node::Literal(std::mem::take(&mut literal)));
            }
            nodes.push(Node::Capture(rest[1..len - 1].to_string()));
            rest = &rest[len..];
        } else {
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !literal.is_empty() {
        nodes.push(Node::Literal(literal));
    }
    nodes
}

/// The length of the capture `<name>` at the start of `s`, if there is one.
fn capture_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.first() != Some(&b'<') || !b.get(1).is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') {
        return None;
    }
    let name_len = b[1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count();
    (b.get(1 + name_len) == Some(&b'>')).then_some(name_len + 2)
}

/// Loki's checks, in its order, with its messages.
fn validate_pattern(nodes: &[Node], names: &[String]) -> Result<(), String> {
    if names.is_empty() {
        return Err("at least one capture is required".into());
    }
    for pair in nodes.windows(2) {
        if let [Node::Capture(a), Node::Capture(b)] = pair {
            return Err(format!("found consecutive capture '<{a}><{b}>': invalid expression"));
        }
    }
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(format!("duplicate capture name ({name}): invalid expression"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// | decolorize
// ---------------------------------------------------------------------------------------------

/// Loki's ANSI expression (from acarl005/stripansi), with `\d` spelled `[0-9]` because Go's `\d`
/// is ASCII-only.
const ANSI_PATTERN: &str = concat!(
    "[\u{1b}\u{9b}][\\[\\]()#;?]*(?:(?:(?:[a-zA-Z0-9]*(?:;[a-zA-Z0-9]*)*)?\u{7})",
    "|(?:(?:[0-9]{1,4}(?:;[0-9]{0,4})*)?[0-9A-PRZcf-ntqry=><~]))"
);

static ANSI: LazyLock<Regex> = LazyLock::new(|| Regex::new(ANSI_PATTERN).expect("the ANSI expression compiles"));

/// `| decolorize`: strips ANSI escape sequences.
///
/// Loki removes every match of its ANSI expression (CSI sequences such as `ESC[1;31m`, OSC
/// sequences ended by BEL, and the 8-bit CSI U+009B).
pub fn decolorize(line: &str) -> String {
    if memchr(0x1b, line.as_bytes()).is_none() && !line.contains('\u{9b}') {
        return line.to_string();
    }
    ANSI.replace_all(line, "").into_owned()
}

// ---------------------------------------------------------------------------------------------
// Durations and byte sizes
// ---------------------------------------------------------------------------------------------

/// A LogQL duration literal / value: "10s", "1.5ms", "1h30m", "250us", "2µs", "5ns", "-3s" -> seconds as f64
/// (Go's time.ParseDuration grammar, which LogQL's duration label filter and `unwrap duration()` use).
///
/// As in Go: units `ns`, `us`, `µs` (U+00B5), `μs` (U+03BC), `ms`, `s`, `m`, `h` (no `d`), every
/// number needs a unit except a lone `0`, `.5s` and `5.s` are valid, and the value is computed in
/// whole nanoseconds (fractions below 1ns truncate) within ±2^63 ns.
pub fn parse_duration_secs(s: &str) -> Option<f64> {
    parse_go_duration(s).map(|ns| ns as f64 / 1e9)
}

const DURATION_LIMIT: u64 = 1 << 63;

/// Go's `time.ParseDuration`, in nanoseconds.
fn parse_go_duration(s: &str) -> Option<i64> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0u64;
    while !rest.is_empty() {
        let (ns, tail) = duration_component(rest)?;
        total = total.checked_add(ns).filter(|&t| t <= DURATION_LIMIT)?;
        rest = tail;
    }
    if negative { Some((total as i64).wrapping_neg()) } else { i64::try_from(total).ok() }
}

/// One `<number><unit>` of a duration, in nanoseconds, and what follows it.
fn duration_component(s: &str) -> Option<(u64, &str)> {
    if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
        return None;
    }
    let (whole, mut rest) = leading_int(s)?;
    let has_whole = rest.len() != s.len();
    let (mut fraction, mut scale, mut has_fraction) = (0u64, 1f64, false);
    if let Some(tail) = rest.strip_prefix('.') {
        let (f, sc, after) = leading_fraction(tail);
        (fraction, scale, has_fraction) = (f, sc, after.len() != tail.len());
        rest = after;
    }
    if !has_whole && !has_fraction {
        return None;
    }
    let unit_len = rest.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(rest.len());
    let unit = duration_unit(&rest[..unit_len])?;
    if whole > DURATION_LIMIT / unit {
        return None;
    }
    let mut ns = whole * unit;
    if fraction > 0 {
        ns += (fraction as f64 * (unit as f64 / scale)) as u64;
        if ns > DURATION_LIMIT {
            return None;
        }
    }
    Some((ns, &rest[unit_len..]))
}

fn duration_unit(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// Go's `leadingInt`: the leading digits, `None` past 2^63.
fn leading_int(s: &str) -> Option<(u64, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let mut x = 0u64;
    for d in s[..digits].bytes() {
        if x > DURATION_LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(d - b'0');
        if x > DURATION_LIMIT {
            return None;
        }
    }
    Some((x, &s[digits..]))
}

/// Go's `leadingFraction`: the digits after the point and their scale; digits past the precision
/// of an int64 are consumed and ignored.
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (mut x, mut scale, mut overflow) = (0u64, 1f64, false);
    for d in s[..digits].bytes() {
        if overflow {
            continue;
        }
        if x > (DURATION_LIMIT - 1) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(d - b'0');
        if y > DURATION_LIMIT {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[digits..])
}

/// A LogQL bytes literal / value: "10KB", "1.5MiB", "5b", "42" -> bytes as f64 (humanize's ParseBytes:
/// both SI (kB=1000) and IEC (KiB=1024) units, case-insensitive, spaces allowed).
///
/// As in go-humanize: the number is digits, `.` and `,` (commas are dropped: `1,024`), no sign
/// and no leading space; the unit (after optional spaces, case-insensitive) is one of `b`, `k`,
/// `kb`, `ki`, `kib` ... up to `e`/`eb`/`ei`/`eib`, or nothing; the result is truncated to a whole
/// number of bytes (`1.5b` is 1) and must stay below 2^64.
pub fn parse_bytes(s: &str) -> Option<f64> {
    let end = s.bytes().position(|c| !(c.is_ascii_digit() || c == b'.' || c == b',')).unwrap_or(s.len());
    let number = &s[..end];
    let value: f64 = if number.contains(',') { number.replace(',', "").parse().ok()? } else { number.parse().ok()? };
    let multiplier = byte_unit(&s[end..].trim().to_lowercase())?;
    let bytes = value * multiplier as f64;
    (bytes < u64::MAX as f64).then(|| bytes.trunc())
}

fn byte_unit(unit: &str) -> Option<u64> {
    const SI: [&str; 6] = ["k", "m", "g", "t", "p", "e"];
    if unit.is_empty() || unit == "b" {
        return Some(1);
    }
    let prefix = unit.strip_suffix('b').unwrap_or(unit);
    let (prefix, base) = match prefix.strip_suffix('i') {
        Some(p) => (p, 1024u64),
        None => (prefix, 1000u64),
    };
    let power = SI.iter().position(|&p| p == prefix)?;
    Some(base.pow(u32::try_from(power).ok()? + 1))
}

// ---------------------------------------------------------------------------------------------
// detected_level
// ---------------------------------------------------------------------------------------------

/// Loki's default `log_level_fields`, in precedence order (case-sensitive except in logfmt lines).
const LEVEL_FIELDS: [&str; 14] = [
    "level",
    "LEVEL",
    "Level",
    "log.level",
    "severity",
    "SEVERITY",
    "Severity",
    "SeverityText",
    "lvl",
    "LVL",
    "Lvl",
    "severity_text",
    "Severity_Text",
    "SEVERITY_TEXT",
];

const DETECTED_LEVEL: &str = "detected_level";
const OTLP_SEVERITY_NUMBER: &str = "severity_number";
const UNKNOWN_LEVEL: &str = "unknown";
/// Loki's default `log_level_from_json_max_depth`: the top-level object and the objects directly
/// in it are searched.
const JSON_LEVEL_MAX_DEPTH: usize = 2;

/// Loki's `normalizeLogLevel` spellings (matched case-insensitively).
const LEVEL_SPELLINGS: [(&str, &str); 14] = [
    ("trace", "trace"),
    ("trc", "trace"),
    ("debug", "debug"),
    ("dbg", "debug"),
    ("info", "info"),
    ("inf", "info"),
    ("information", "info"),
    ("warn", "warn"),
    ("wrn", "warn"),
    ("warning", "warn"),
    ("error", "error"),
    ("err", "error"),
    ("critical", "critical"),
    ("fatal", "fatal"),
];

/// The words searched for in an unstructured line.
const LEVEL_WORDS: [(&str, &str); 9] = [
    ("trace", "trace"),
    ("debug", "debug"),
    ("fatal", "fatal"),
    ("critical", "critical"),
    ("error", "error"),
    ("err", "error"),
    ("warning", "warn"),
    ("warn", "warn"),
    ("info", "info"),
];

/// Loki's log level detection (its `detected_level`): from the given labels/structured metadata/parsed
/// labels first, normalizing values, then from a numeric OTLP severity, then from a JSON or logfmt
/// `level`-like key in the line, then from keywords in the line as Loki does; otherwise "unknown".
///
/// Loki's rule (distributor `FieldDetector.extractLogLevel`, default limits), with `labels` standing
/// for stream labels and structured metadata together:
/// 1. a `detected_level` already present is normalized;
/// 2. else the first of `level`, `LEVEL`, `Level`, `log.level`, `severity`, `SEVERITY`,
///    `Severity`, `SeverityText`, `lvl`, `LVL`, `Lvl`, `severity_text`, `Severity_Text`,
///    `SEVERITY_TEXT` present is normalized: `trace`/`trc`, `debug`/`dbg`, `info`/`inf`/
///    `information`, `warn`/`wrn`/`warning`, `error`/`err`, `critical`, `fatal`, any case. Loki
///    keeps `fatal` as `fatal` (not `critical`) and knows no `crit`. Loki stores an unrecognised
///    value verbatim (`level="notice"` gives `notice`); a `&'static str` cannot carry that, so
///    this returns `unknown` for it;
/// 3. else an OTLP `severity_number`: 1-4 trace, 5-8 debug, 9-12 info, 13-16 warn, 17-20 error,
///    21-24 fatal, 0 or above 24 unknown, not a number info;
/// 4. else the line: a JSON object (first non-space `{`, last `}`) is searched in document order,
///    two object levels deep, for the first string member named like step 2 (exact case); a line
///    with `=` is read as logfmt and the field earliest in step 2's list wins, keys compared
///    case-insensitively (the scan stops at the first syntax error); a value that normalizes wins;
/// 5. else the line is searched (lowercased) for the earliest of `trace`, `debug`, `fatal`,
///    `critical`, `error`, `err`, `warning`, `warn`, `info` standing as a word: preceded by the
///    start or one of space, tab, newline, `[`, `(`, `{`, `"`, `=`, and followed by the end or one
///    of space, tab, newline, `[`, `]`, `(`, `)`, `{`, `}`, `:`, `,`, `!`, `"`, `=` (Loki 3.7);
/// 6. else `unknown`.
///
/// Empty label values count as absent.
pub fn detect_level(labels: &dyn Fn(&str) -> Option<String>, line: &str) -> &'static str {
    level_from_labels(labels).unwrap_or_else(|| level_from_line(line))
}

/// The level the labels decide, if any of the level labels is present (the first steps of
/// [`detect_level`]); `None` when only the line can tell.
pub fn level_from_labels(labels: &dyn Fn(&str) -> Option<String>) -> Option<&'static str> {
    let present = |name: &str| labels(name).filter(|v| !v.is_empty());
    if let Some(value) = present(DETECTED_LEVEL) {
        return Some(normalize_level(&value).unwrap_or(UNKNOWN_LEVEL));
    }
    if let Some(value) = LEVEL_FIELDS.iter().find_map(|f| present(f)) {
        return Some(normalize_level(&value).unwrap_or(UNKNOWN_LEVEL));
    }
    present(OTLP_SEVERITY_NUMBER).map(|number| otlp_level(&number))
}

fn normalize_level(value: &str) -> Option<&'static str> {
    LEVEL_SPELLINGS.iter().find(|(spelling, _)| value.eq_ignore_ascii_case(spelling)).map(|(_, level)| *level)
}

/// The OTLP severity number bands.
fn otlp_level(number: &str) -> &'static str {
    let Ok(n) = number.parse::<i64>() else {
        return "info";
    };
    match n {
        0 => UNKNOWN_LEVEL,
        ..=4 => "trace",
        5..=8 => "debug",
        9..=12 => "info",
        13..=16 => "warn",
        17..=20 => "error",
        21..=24 => "fatal",
        _ => UNKNOWN_LEVEL,
    }
}

/// The level the line's own words decide (the last steps of [`detect_level`]).
pub fn level_from_line(line: &str) -> &'static str {
    let value = if is_json_object_line(line) {
        json_level(line).map(Cow::Borrowed)
    } else if memchr(b'=', line.as_bytes()).is_some() {
        logfmt_level(line)
    } else {
        return level_from_words(line);
    };
    value.as_deref().and_then(normalize_level).unwrap_or_else(|| level_from_words(line))
}

/// Loki's `isJSON`: the first non-space character is `{` and the last non-space byte is `}` (the
/// end is read byte-wise, each byte taken as a Latin-1 character, as Loki does).
fn is_json_object_line(line: &str) -> bool {
    let first = line.chars().find(|c| !c.is_whitespace());
    let last = line.bytes().rev().find(|&b| !char::from(b).is_whitespace());
    first == Some('{') && last == Some(b'}')
}

/// The raw (still escaped) value of the first level-like string member, depth first.
fn json_level(line: &str) -> Option<&str> {
    let mut found = None;
    let _ = json_level_in(line, 0, &mut found);
    found
}

fn json_level_in<'a>(data: &'a str, depth: usize, found: &mut Option<&'a str>) -> JResult<()> {
    if depth >= JSON_LEVEL_MAX_DEPTH {
        return Ok(());
    }
    object_each(data, &mut |key, val| match val.ty {
        JType::Str if LEVEL_FIELDS.contains(&key.as_ref()) => {
            *found = Some(&data[val.start..val.end]);
            Err("found")
        }
        JType::Obj => json_level_in(&data[val.start..val.next], depth + 1, found),
        _ => Ok(()),
    })
}

/// The value of the level-like logfmt key earliest in [`LEVEL_FIELDS`].
fn logfmt_level(line: &str) -> Option<Cow<'_, str>> {
    let mut best: Option<(usize, Cow<'_, str>)> = None;
    let mut decoder = Decoder::new(line);
    while let Some(Ok((key, value))) = decoder.next_pair() {
        let Some(rank) = LEVEL_FIELDS.iter().position(|f| key.eq_ignore_ascii_case(f)) else {
            continue;
        };
        if rank == 0 {
            return Some(value);
        }
        if best.as_ref().is_none_or(|(b, _)| rank < *b) {
            best = Some((rank, value));
        }
    }
    best.map(|(_, value)| value)
}

fn level_from_words(line: &str) -> &'static str {
    let lowered = lowercase_simple(line);
    let hay = lowered.as_bytes();
    let mut best: Option<(usize, &'static str)> = None;
    for (word, level) in LEVEL_WORDS {
        if let Some(pos) = bounded_find(hay, word.as_bytes())
            && best.is_none_or(|(b, _)| pos < b)
        {
            best = Some((pos, level));
        }
    }
    best.map_or(UNKNOWN_LEVEL, |(_, level)| level)
}

/// Go's `strings.ToLower`: each character to the first character of its lowercase mapping.
fn lowercase_simple(line: &str) -> String {
    if line.is_ascii() {
        return line.to_ascii_lowercase();
    }
    line.chars().map(|c| c.to_lowercase().next().unwrap_or(c)).collect()
}

/// The first occurrence of `word` standing as a word.
fn bounded_find(hay: &[u8], word: &[u8]) -> Option<usize> {
    memmem::find_iter(hay, word).find(|&at| {
        let left = at == 0 || matches!(hay[at - 1], b' ' | b'\t' | b'\n' | b'[' | b'(' | b'{' | b'"' | b'=');
        let right = hay.get(at + word.len()).is_none_or(|&c| {
            matches!(
                c,
                b' ' | b'\t' | b'\n' | b'[' | b']' | b'(' | b')' | b'{' | b'}' | b':' | b',' | b'!' | b'"' | b'='
            )
        });
        left && right
    })
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Extracted {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn sorted(mut e: Extracted) -> Extracted {
        e.sort();
        e
    }

    fn run_logfmt(line: &str, strict: bool, keep_empty: bool) -> (Extracted, Result<(), String>) {
        let mut out = Vec::new();
        let result = logfmt(line, strict, keep_empty, &mut out);
        (out, result)
    }

    fn run_json(line: &str) -> (Extracted, Result<(), String>) {
        let mut out = Vec::new();
        let result = json(line, &mut out);
        (out, result)
    }

    fn run_json_fields(line: &str, fields: &[(&str, &str)]) -> (Extracted, Result<(), String>) {
        let fields: Vec<(String, JsonPath)> =
            fields.iter().map(|(n, p)| (n.to_string(), JsonPath::parse(p).expect("path"))).collect();
        let mut out = Vec::new();
        let result = json_fields(line, &fields, &mut out);
        (out, result)
    }

    // --- sanitize_label -----------------------------------------------------------------------

    #[test]
    fn sanitizes_like_loki() {
        assert_eq!(sanitize_label("cou-nter"), "cou_nter");
        assert_eq!(sanitize_label("1abc"), "_1abc");
        assert_eq!(sanitize_label("  a b  "), "a_b");
        assert_eq!(sanitize_label("foo.bar"), "foo_bar");
        assert_eq!(sanitize_label("é👌"), "__");
        assert_eq!(sanitize_label("   "), "");
        assert_eq!(sanitize_label(""), "");
    }

    // --- logfmt (cases from Loki's TestLogfmtParser_parse) -------------------------------------

    #[test]
    fn logfmt_extracts_pairs() {
        let line = r#"at=info method=GET path=/ host=grafana.net fwd="124.133.124.161" service=8ms status=200"#;
        let (out, result) = run_logfmt(line, false, false);
        assert_eq!(result, Ok(()));
        assert_eq!(
            out,
            pairs(&[
                ("at", "info"),
                ("method", "GET"),
                ("path", "/"),
                ("host", "grafana.net"),
                ("fwd", "124.133.124.161"),
                ("service", "8ms"),
                ("status", "200"),
            ])
        );
    }

    #[test]
    fn logfmt_not_logfmt() {
        // Loki: nothing extracted; strict reports the first '=' of the value.
        assert_eq!(run_logfmt("foobar====wqe=sdad1r", false, false), (vec![], Ok(())));
        let (out, result) = run_logfmt("foobar====wqe=sdad1r", true, false);
        assert!(out.is_empty());
        assert_eq!(result, Err("logfmt syntax error at pos 8 : unexpected '='".into()));
    }

    #[test]
    fn logfmt_values_and_escapes() {
        assert_eq!(run_logfmt(r#"foobar="foo bar""#, false, false).0, pairs(&[("foobar", "foo bar")]));
        assert_eq!(run_logfmt(r#"foobar="foo\nbar\tbaz""#, false, false).0, pairs(&[("foobar", "foo\nbar\tbaz")]));
        assert_eq!(run_logfmt("foobar=\"foo\nbar\tbaz\"", false, false).0, pairs(&[("foobar", "foo\nbar\tbaz")]));
        assert_eq!(run_logfmt(r#"foobar="foo ba\\r baz""#, false, false).0, pairs(&[("foobar", r"foo ba\r baz")]));
        assert_eq!(run_logfmt(r#"a="\u00e9\ud83d\ude00\'""#, false, false).0, pairs(&[("a", "é😀'")]));
        // U+FFFD in a value becomes a space.
        assert_eq!(run_logfmt("buzz=foo bar=\u{FFFD}f", false, false).0, pairs(&[("buzz", "foo"), ("bar", " f")]));
    }

    #[test]
    fn logfmt_duplicates_and_names() {
        assert_eq!(run_logfmt(r#"foobar="foo bar" foobar=10ms"#, false, false).0, pairs(&[("foobar", "10ms")]));
        assert_eq!(
            run_logfmt(r#"foo="foo bar" foo.bar=10ms test-dash=foo"#, false, false).0,
            pairs(&[("foo", "foo bar"), ("foo_bar", "10ms"), ("test_dash", "foo")])
        );
    }

    #[test]
    fn logfmt_keep_empty() {
        assert_eq!(run_logfmt("buzz bar=foo", false, false).0, pairs(&[("bar", "foo")]));
        assert_eq!(run_logfmt("foo bar=buzz", false, true).0, pairs(&[("foo", ""), ("bar", "buzz")]));
        assert_eq!(run_logfmt(r#"a= b="" c"#, false, true).0, pairs(&[("a", ""), ("b", ""), ("c", "")]));
        assert_eq!(run_logfmt(r#"a= b="" c"#, false, false).0, vec![]);
    }

    #[test]
    fn logfmt_errors_strict_and_lenient() {
        let cases: [(&str, Extracted, &str); 4] = [
            (
                r#"foo="foo bar" =notkey bar=10ms"#,
                pairs(&[("foo", "foo bar"), ("bar", "10ms")]),
                "pos 15 : unexpected '='",
            ),
            ("foo=\"foo bar\" b\u{FFFD}r=10ms", pairs(&[("foo", "foo bar")]), "pos 20 : invalid key"),
            (r#"foo="foo bar" bu"zz=10ms"#, pairs(&[("foo", "foo bar")]), "pos 17 : unexpected '\"'"),
            (r#"bar=bu=zz foo="foo bar""#, pairs(&[("foo", "foo bar")]), "pos 7 : unexpected '='"),
        ];
        for (line, lenient, details) in cases {
            assert_eq!(run_logfmt(line, false, false), (lenient, Ok(())), "{line}");
            let (_, result) = run_logfmt(line, true, false);
            assert_eq!(result, Err(format!("logfmt syntax error at {details}")), "{line}");
        }
        // Strict keeps what came before the error (Loki's foo_extracted survives next to __error__).
        assert_eq!(run_logfmt(r#"foo="foo bar" =notkey bar=10ms"#, true, false).0, pairs(&[("foo", "foo bar")]));
        assert_eq!(
            run_logfmt(r#"a=1 b="open"#, true, false),
            (pairs(&[("a", "1")]), Err("logfmt syntax error at pos 12 : unterminated quoted value".into()))
        );
        assert_eq!(
            run_logfmt(r#"a="x\qy" b=2"#, true, false).1,
            Err("logfmt syntax error at pos 9 : invalid quoted value".into())
        );
    }

    #[test]
    fn logfmt_fields_extracts_requested_keys() {
        let line = r#"at=info method=GET path=/ host=grafana.net fwd="124.133.124.161" service=8ms status=200"#;
        let fields = vec![("host".to_string(), "host".to_string()), ("fwd_ip".to_string(), "fwd".to_string())];
        let mut out = Vec::new();
        assert_eq!(logfmt_fields(line, &fields, false, false, &mut out), Ok(()));
        assert_eq!(out, pairs(&[("host", "grafana.net"), ("fwd_ip", "124.133.124.161")]));
    }

    #[test]
    fn logfmt_fields_quirks() {
        let fields = vec![("a".to_string(), "a".to_string()), ("missing".to_string(), "missing".to_string())];
        // Absent keys are set to "", bare keys give "" without --keep-empty, the last value wins.
        let mut out = Vec::new();
        assert_eq!(logfmt_fields("a=1 x a=2", &fields, false, false, &mut out), Ok(()));
        assert_eq!(sorted(out), pairs(&[("a", "2"), ("missing", "")]));
        // Line keys are sanitized before comparison; U+FFFD empties the value.
        let fields = vec![("x".to_string(), "foo_bar".to_string()), ("y".to_string(), "y".to_string())];
        let mut out = Vec::new();
        let _ = logfmt_fields("foo-bar=1 y=a\u{FFFD}", &fields, false, false, &mut out);
        assert_eq!(out, pairs(&[("x", "1"), ("y", "")]));
        // Strict: labels are all set, then the error is reported.
        let mut out = Vec::new();
        let result = logfmt_fields("y=1 =bad x=2", &fields, true, false, &mut out);
        assert_eq!(result, Err("logfmt syntax error at pos 5 : unexpected '='".into()));
        assert_eq!(sorted(out), pairs(&[("x", ""), ("y", "1")]));
    }

    // --- json (cases from Loki's Test_jsonParser_Parse) ----------------------------------------

    #[test]
    fn json_flattens_nested_objects() {
        let (out, result) =
            run_json(r#"{"app":"foo","namespace":"prod","pod":{"uuid":"foo","deployment":{"ref":"foobar"}}}"#);
        assert_eq!(result, Ok(()));
        assert_eq!(
            out,
            pairs(&[("app", "foo"), ("namespace", "prod"), ("pod_uuid", "foo"), ("pod_deployment_ref", "foobar")])
        );
        assert_eq!(
            run_json(r#"{"counter":1, "price": {"_net_":5.56909}}"#).0,
            pairs(&[("counter", "1"), ("price__net_", "5.56909")])
        );
    }

    #[test]
    fn json_whitespace_and_empty_keys() {
        assert_eq!(run_json(r#"{" ": {"foo":"bar"}}"#).0, pairs(&[("foo", "bar")]));
        assert_eq!(run_json(r#"{" ": {" ":"bar"}}"#).0, pairs(&[("", "bar")]));
        assert_eq!(run_json(r#"{"": {"":"bar"}}"#).0, pairs(&[("", "bar")]));
        assert_eq!(run_json(r#"{"cou-nter":1}"#).0, pairs(&[("cou_nter", "1")]));
        // A digit gets '_' only at the start of the whole name.
        assert_eq!(run_json(r#"{"1a":{"2b":true}, "3c": false}"#).0, pairs(&[("_1a_2b", "true"), ("_3c", "false")]));
    }

    #[test]
    fn json_values() {
        assert_eq!(
            run_json(r#"{"counter":1,"foo":"foo\\\"bar", "price": {"_net_":5.56909}}"#).0,
            pairs(&[("counter", "1"), ("foo", r#"foo\"bar"#), ("price__net_", "5.56909")])
        );
        assert_eq!(run_json("{\"foo\":\"\u{FFFD}\"}").0, pairs(&[("foo", " ")]));
        // Arrays and nulls set nothing; numbers keep their text.
        assert_eq!(
            run_json(r#"{"counter":1, "price": {"net_":["10","20"]}, "n": null, "e": 1.50e3}"#).0,
            pairs(&[("counter", "1"), ("e", "1.50e3")])
        );
        // An invalid escape gives an empty value, a later duplicate wins.
        assert_eq!(run_json(r#"{"a":"x\qy","b":1,"b":2}"#).0, pairs(&[("a", ""), ("b", "2")]));
    }

    #[test]
    fn json_errors() {
        let object = "Value looks like object, but can't find closing '}' symbol";
        assert_eq!(run_json("{n}"), (vec![], Err(object.into())));
        assert_eq!(run_json("not json").1, Err(object.into()));
        assert_eq!(run_json("").1, Err(object.into()));
        assert_eq!(run_json(r#"{"a":1,}"#).1, Err(object.into()));
        // Labels before the error are kept.
        assert_eq!(run_json(r#"{"a":1,"b":tru}"#), (pairs(&[("a", "1")]), Err("Unknown value type".into())));
        // jsonparser leniencies: trailing text, a comma before spaced brace.
        assert_eq!(run_json(r#"{"a":1} trailing"#), (pairs(&[("a", "1")]), Ok(())));
        assert_eq!(run_json(r#"{"a":1, }"#), (pairs(&[("a", "1")]), Ok(())));
    }

    // --- JsonPath and json_fields (cases from Loki's TestJSONExpressionParser) -----------------

    const TEST_LINE: &str = r#"{"app":"foo","field with space":"value","field with ÜFT8👌":"value","null_field":null,"bool_field":false,"namespace":"prod","pod":{"uuid":"foo","deployment":{"ref":"foobar", "params": [1,2,3,"string_value"]}}}"#;

    #[test]
    fn json_path_parses_loki_syntax() {
        let key = |s: &str| Seg::Key(s.to_string());
        let parse = |e: &str| JsonPath::parse(e).map(|p| p.segs);
        assert_eq!(parse("app"), Ok(vec![key("app")]));
        assert_eq!(parse(r#"["field with space"]"#), Ok(vec![key("field with space")]));
        assert_eq!(parse("[0]"), Ok(vec![Seg::Index(0)]));
        assert_eq!(parse("pod.uuid"), Ok(vec![key("pod"), key("uuid")]));
        assert_eq!(parse(r#"["pod"]["uuid"]"#), Ok(vec![key("pod"), key("uuid")]));
        assert_eq!(
            parse(r#"pod.deployment.params[0]["param"]"#),
            Ok(vec![key("pod"), key("deployment"), key("params"), Seg::Index(0), key("param")])
        );
        assert_eq!(parse("utf8"), Ok(vec![key("utf8")]));
    }

    #[test]
    fn json_path_errors() {
        let cases = [
            ("field with space", "syntax error: unexpected FIELD"),
            (r#""pod"]"#, "syntax error: unexpected STRING, expecting LSB or FIELD"),
            (r#"["pod""#, "syntax error: unexpected $end, expecting RSB"),
            (r#"["pod""uuid"]"#, "syntax error: unexpected STRING, expecting RSB"),
            ("pod..uuid", "syntax error: unexpected DOT, expecting FIELD"),
            (r#"["key"#, "syntax error: unexpected $end, expecting RSB"),
            ("a-b", "unexpected char -"),
        ];
        for (expr, message) in cases {
            assert_eq!(JsonPath::parse(expr), Err(message.to_string()), "{expr}");
        }
    }

    #[test]
    fn json_fields_selects_values() {
        let cases = [
            ("app", "foo"),
            (r#"["field with space"]"#, "value"),
            (r#"["field with ÜFT8👌"]"#, "value"),
            ("pod.uuid", "foo"),
            (r#"pod["uuid"]"#, "foo"),
            (r#"["pod"].uuid"#, "foo"),
            ("pod.deployment.params[0]", "1"),
            ("pod.deployment.params[3]", "string_value"),
            ("pod.deployment.params", r#"[1,2,3,"string_value"]"#),
            ("pod.deployment", r#"{"ref":"foobar", "params": [1,2,3,"string_value"]}"#),
            (r#"pod[""]"#, ""),
            (r#"pod.deployment.params[""]"#, ""),
            ("pod.nope", ""),
            ("null_field", ""),
            ("bool_field", "false"),
        ];
        for (path, want) in cases {
            assert_eq!(run_json_fields(TEST_LINE, &[("x", path)]), (pairs(&[("x", want)]), Ok(())), "{path}");
        }
    }

    #[test]
    fn json_fields_edge_cases() {
        assert_eq!(run_json_fields("{}", &[("uuid", "pod.uuid")]), (pairs(&[("uuid", "")]), Ok(())));
        assert_eq!(run_json_fields("", &[("uuid", "pod.uuid")]), (vec![], Ok(())));
        assert_eq!(run_json_fields("invalid json", &[("uuid", "a")]), (vec![], Err(String::new())));
        assert_eq!(
            run_json_fields(r#"{"app":"{ \"key\": \"value\", \"key2\":\"value2\"}"}"#, &[("app", "app")]).0,
            pairs(&[("app", r#"{ "key": "value", "key2":"value2"}"#)])
        );
        assert_eq!(
            run_json_fields(r#"{"app":{"name":"great \"loki\""}"#, &[("app", "app")]).0,
            pairs(&[("app", r#"{"name":"great \"loki\""}"#)])
        );
        assert_eq!(
            run_json_fields(r#"{"app":"{\"name\":\"great \\\"loki\\\"\"}"}"#, &[("app", "app")]).0,
            pairs(&[("app", r#"{"name":"great \"loki\""}"#)])
        );
        // First occurrence wins; arrays of objects; top-level arrays; a broken tail is ignored.
        assert_eq!(run_json_fields(r#"{"a":1,"a":2}"#, &[("a", "a")]).0, pairs(&[("a", "1")]));
        assert_eq!(run_json_fields(r#"{"a":[{"b":1},{"b":2}]}"#, &[("b", "a[1].b")]).0, pairs(&[("b", "2")]));
        assert_eq!(run_json_fields(r#"[{"b":"x"}]"#, &[("b", "[0].b")]).0, pairs(&[("b", "x")]));
        assert_eq!(run_json_fields(r#"{"a":"ok", "b": [}"#, &[("a", "a")]), (pairs(&[("a", "ok")]), Ok(())));
        // A malformed selected value is an error; the label is still set.
        assert_eq!(
            run_json_fields(r#"{"a":"open"#, &[("a", "a")]),
            (pairs(&[("a", "")]), Err("Value is string, but can't find closing '\"' symbol".into()))
        );
    }

    // --- unpack --------------------------------------------------------------------------------

    #[test]
    fn unpack_packed_line() {
        let mut out = Vec::new();
        let line = r#"{"container":"myapp","pod":"pod-3223f","_entry":"original log message","n":1}"#;
        assert_eq!(unpack(line, &mut out), Ok(Some("original log message".to_string())));
        assert_eq!(out, pairs(&[("container", "myapp"), ("pod", "pod-3223f")]));
        let mut out = Vec::new();
        assert_eq!(unpack(r#"{"a-b":"x\ty","_entry":"l\"q"}"#, &mut out), Ok(Some("l\"q".to_string())));
        assert_eq!(out, pairs(&[("a_b", "x\ty")]));
    }

    #[test]
    fn unpack_without_entry_or_invalid() {
        let mut out = Vec::new();
        assert_eq!(unpack(r#"{"a":"b"}"#, &mut out), Ok(None));
        assert!(out.is_empty(), "no _entry, no labels");
        assert_eq!(unpack("", &mut out), Ok(None));
        assert_eq!(unpack("plain", &mut out), Err("expecting json object(6), but it is not".into()));
        assert_eq!(
            unpack(r#"{"a":"b","_entry":"x" "#, &mut out),
            Err("Value is array, but can't find closing ']' symbol".into())
        );
        assert!(out.is_empty());
    }

    // --- pattern (fixtures from Loki's pattern_test.go) -----------------------------------------

    fn run_pattern(pattern: &str, line: &str) -> (Vec<String>, bool) {
        let p = Pattern::parse(pattern).expect("pattern");
        let mut out = Vec::new();
        let matched = p.matches(line, &mut out);
        assert_eq!(out.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), p.names()[..out.len()].to_vec());
        (out.into_iter().map(|(_, v)| v).collect(), matched)
    }

    #[test]
    fn pattern_matches_loki_fixtures() {
        let cases: [(&str, &str, &[&str], bool); 14] = [
            ("foo <foo> bar", "foo buzz bar", &["buzz"], true),
            ("foo <foo> bar<fuzz>", "foo buzz bar", &["buzz", ""], false),
            ("<foo>foo <bar> bar", "foo buzz bar", &["", "buzz"], false),
            ("<foo> bar<fuzz>", " bar", &["", ""], false),
            ("<foo>bar<baz>", " bar ", &[" ", " "], true),
            ("<foo> bar<baz>", " bar ", &["", " "], false),
            ("<foo>bar <baz>", " bar ", &[" ", ""], false),
            ("<foo>", " bar ", &[" bar "], true),
            ("<path>?<_>", "/api/plugins/versioncheck?slugIn=snuids", &["/api/plugins/versioncheck"], true),
            ("<path>?<_>", "/api/plugins/status", &["/api/plugins/status"], false),
            (
                r#"<ip> <userid> <user> [<_>] "<method> <path> <_>" <status> <size>"#,
                r#"127.0.0.1 user-identifier frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#,
                &["127.0.0.1", "user-identifier", "frank", "GET", "/apache_pb.gif", "200", "2326"],
                true,
            ),
            (
                "<_> <id> [<level>] ",
                "2021-05-19T07:40:12.215792Z 42761518 [Note] Aborted connection 42761518",
                &["42761518", "Note"],
                false,
            ),
            ("unicode <emoji> character", "unicode 🤷 character", &["🤷"], true),
            ("unicode ▶ <what>", "unicode ▶ character", &["character"], true),
        ];
        for (pattern, line, want, matched) in cases {
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            assert_eq!(run_pattern(pattern, line), (want, matched), "{pattern}");
        }
    }

    #[test]
    fn pattern_anchoring_and_empty_line() {
        assert_eq!(run_pattern("foo <a>", "xfoo bar"), (vec![], true), "Test does not anchor, Matches does");
        assert_eq!(run_pattern("<a> x", ""), (vec![], false));
        let p = Pattern::parse(r#"<ip> - <_> "<method> <path>""#).expect("pattern");
        assert_eq!(p.names(), vec!["ip", "method", "path"]);
    }

    #[test]
    fn pattern_parse_nodes() {
        let lit = |s: &str| Node::Literal(s.to_string());
        let cap = |s: &str| Node::Capture(s.to_string());
        assert_eq!(pattern_nodes("<foo> bar f <f>"), vec![cap("foo"), lit(" bar f "), cap("f")]);
        assert_eq!(pattern_nodes("<foo"), vec![lit("<foo")]);
        assert_eq!(pattern_nodes("<foo ><bar>"), vec![lit("<foo >"), cap("bar")]);
        assert_eq!(pattern_nodes("<>"), vec![lit("<>")]);
        assert_eq!(pattern_nodes("<1_>"), vec![lit("<1_>")]);
        assert_eq!(pattern_nodes("▶"), vec![lit("▶")]);
    }

    #[test]
    fn pattern_errors() {
        let cases = [
            ("", "parse error at line 1, col 1: syntax error: unexpected $end, expecting IDENTIFIER or LITERAL"),
            ("<_>", "at least one capture is required"),
            ("foo <_> bar <_>", "at least one capture is required"),
            ("foo bar buzz", "at least one capture is required"),
            ("<f><f>", "found consecutive capture '<f><f>': invalid expression"),
            ("<f> f<d><b>", "found consecutive capture '<d><b>': invalid expression"),
            ("<f> f<f>", "duplicate capture name (f): invalid expression"),
            ("f<f><_>", "found consecutive capture '<f><_>': invalid expression"),
            ("<f>f<f><_>", "found consecutive capture '<f><_>': invalid expression"),
        ];
        for (pattern, message) in cases {
            assert_eq!(Pattern::parse(pattern).map(|_| ()), Err(message.to_string()), "{pattern}");
        }
        assert!(Pattern::parse("<f> <a>").is_ok());
    }

    // --- decolorize (cases from Loki's TestStripANSI) -----------------------------------------

    #[test]
    fn decolorize_strips_ansi() {
        assert_eq!(decolorize("\x1b[32mhello\x1b[0m"), "hello");
        assert_eq!(decolorize("\x1b[1;31merr\x1b[0m=bad"), "err=bad");
        assert_eq!(decolorize("clean"), "clean");
        assert_eq!(decolorize(""), "");
        assert_eq!(decolorize("\x1b]0;title\x07text"), "text");
        assert_eq!(decolorize("a\u{9b}31mb"), "ab");
    }

    // --- durations and bytes --------------------------------------------------------------------

    #[test]
    fn durations_follow_go() {
        let cases = [
            ("10s", 10.0),
            ("1.5ms", 0.0015),
            ("1h30m", 5400.0),
            ("250us", 0.00025),
            ("2µs", 0.000002),
            ("2μs", 0.000002),
            ("5ns", 0.000000005),
            ("-3s", -3.0),
            ("+3s", 3.0),
            ("0", 0.0),
            ("-0", 0.0),
            (".5s", 0.5),
            ("5.s", 5.0),
            ("1h1m1s1ms", 3661.001),
            ("322.623724ms", 0.322623724),
            ("2562047h", 9_223_369_200.0),
        ];
        for (text, secs) in cases {
            let got = parse_duration_secs(text).unwrap_or(f64::NAN);
            assert!((got - secs).abs() < 1e-12, "{text}: {got}");
        }
        for bad in ["", "5", "1d", "s", ".s", "-", "1.5", "3x", "2562048h", "1e3s"] {
            assert_eq!(parse_duration_secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn bytes_follow_humanize() {
        let cases = [
            ("10KB", 10_000.0),
            ("10kb", 10_000.0),
            ("1.5MiB", 1_572_864.0),
            ("5b", 5.0),
            ("42", 42.0),
            ("1 KiB", 1024.0),
            ("42mib", 44_040_192.0),
            ("42MB", 42_000_000.0),
            ("1.5b", 1.0),
            ("2k", 2000.0),
            ("1Ki", 1024.0),
            ("1,024 B", 1024.0),
            ("1EiB", 1_152_921_504_606_846_976.0),
            (".5KB", 500.0),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_bytes(text), Some(bytes), "{text}");
        }
        for bad in ["", "KB", "-5b", " 5b", "5 XB", "1.2.3b", "20EB"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }

    // --- detected_level (cases from Loki's field_detection_test.go) ----------------------------

    fn level(labels: &[(&str, &str)], line: &str) -> &'static str {
        let labels: Vec<(String, String)> = labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        detect_level(&|name| labels.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()), line)
    }

    #[test]
    fn level_from_labels() {
        assert_eq!(level(&[("level", "debug")], "error here"), "debug");
        assert_eq!(level(&[("severity", "WARNING")], ""), "warn");
        assert_eq!(level(&[("Lvl", "Wrn")], ""), "warn");
        assert_eq!(level(&[("lvl", "err"), ("level", "INFO")], ""), "info", "list order, not label order");
        assert_eq!(level(&[("detected_level", "dbg"), ("level", "error")], ""), "debug");
        assert_eq!(level(&[("SEVERITY_TEXT", "Information")], ""), "info");
        assert_eq!(level(&[("level", "fatal")], ""), "fatal");
        assert_eq!(level(&[("level", "notice")], "error"), "unknown");
        assert_eq!(level(&[("LeVeL", "error")], "nothing"), "unknown");
        assert_eq!(level(&[("level", "")], "level=error"), "error");
    }

    #[test]
    fn level_from_otlp_severity() {
        assert_eq!(level(&[("severity_number", "7")], "error"), "debug");
        assert_eq!(level(&[("severity_number", "foo")], ""), "info");
        assert_eq!(level(&[("severity_number", "0")], "error"), "unknown");
        assert_eq!(level(&[("severity_number", "22")], ""), "fatal");
        assert_eq!(level(&[("severity_number", "25")], ""), "unknown");
    }

    #[test]
    fn level_from_structured_lines() {
        let cases = [
            ("foo", "unknown"),
            ("this is a warning log", "warn"),
            (
                r#"{"foo":"bar","msg":"message with keyword error but it should not get picked up","level":"critical"}"#,
                "critical",
            ),
            (
                r#"{"FOO":"bar","MSG":"message with keyword error but it should not get picked up","LEVEL":"Critical"}"#,
                "critical",
            ),
            (
                r#"{"foo":"bar","msg":"message with keyword warn but it should not get picked up","SEVERITY":"FATAL"}"#,
                "fatal",
            ),
            (
                r#"{"foo":"bar","msg":"message with keyword warn but it should not get picked up","level":"ERR"}"#,
                "error",
            ),
            (r#"{"foo":"bar","msg":"message with keyword INFO get picked up"}"#, "info"),
            (r#"foo=bar msg="message with info and not level should get picked up""#, "info"),
            (r#"foo=bar msg="message with keyword error but it should not get picked up" level=warn"#, "warn"),
            (r#"foo=bar msg="message with keyword error but it should not get picked up" level=Trace"#, "trace"),
            (r#"foo=bar msg="message with keyword but it should not get picked up" level=NA"#, "unknown"),
            (r#"Foo=bar MSG="Message with keyword but it should not get picked up" Severity=critical"#, "critical"),
            (r#"FOO=bar MSG="message with keyword error but it should not get picked up" LEVEL=inFO"#, "info"),
            ("[INFO] unstructured info log line", "info"),
            ("[ERROR] unstructured error log line", "error"),
            ("[WARN] unstructured warn log line", "warn"),
            ("[CRITICAL] unstructured critical log line", "critical"),
            ("[DEBUG] unstructured debug log line", "debug"),
        ];
        for (line, want) in cases {
            assert_eq!(level(&[], line), want, "{line}");
        }
    }

    #[test]
    fn level_line_details() {
        // Two object levels are searched, document order decides.
        assert_eq!(level(&[], r#"{"log":{"level":"warn"}}"#), "warn");
        assert_eq!(level(&[], r#"{"a":{"b":{"level":"information"}}}"#), "unknown");
        assert_eq!(level(&[], r#"{"severity":"critical","level":"error"}"#), "critical");
        // logfmt: list order decides, keys case-insensitive.
        assert_eq!(level(&[], "severity=critical level=error"), "error");
        assert_eq!(level(&[], "SEVERITY=fatal msg=x"), "fatal");
        // Word boundaries (Loki 3.7): the earliest standing word wins.
        assert_eq!(level(&[], "info: debug mode enabled"), "info");
        assert_eq!(level(&[], "misc:error happened"), "unknown");
        assert_eq!(level(&[], "information only"), "unknown");
        assert_eq!(level(&[], "DEBUG: starting"), "debug");
        assert_eq!(level(&[], "İNFO started"), "info");
    }
}
