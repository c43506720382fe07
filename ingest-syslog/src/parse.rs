//! One syslog message, from the bytes of one frame (a datagram, or a TCP frame without its framing) to a
//! [`Message`].
//!
//! Two formats, told apart by what follows the PRI:
//! - **RFC 5424**: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]`, `-` for a
//!   missing value, structured data `[id name="value" ...]` with `\"`, `\\` and `\]` escaped, an optional
//!   UTF-8 BOM before MSG (and one extra space, which rsyslog's templates leave there). Read strictly: a
//!   message that says it is RFC 5424 (`1 ` after the PRI) and breaks the grammar is an error, so the
//!   caller keeps it raw with the reason.
//! - **RFC 3164** ("BSD", everything else): `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG`, read the way
//!   real senders write it: the PRI may be missing (then facility `user`, severity `notice`, as RFC 3164
//!   says a relay assumes), the hostname may be missing (local `logger`), the timestamp may be ISO 8601 /
//!   RFC 3339 (rsyslog's `RSYSLOG_ForwardFormat`), carry a year or fractions of a second, or be missing
//!   (then the receipt time). A BSD timestamp has no zone: it is read at a configured UTC offset, and its
//!   year is the receipt's, or the one before when that would put it more than two days ahead (a message
//!   of Dec 31 received on Jan 1), or the one after when that puts it within two days ahead.
//!
//! A frame with neither a PRI nor a timestamp is not taken for syslog ([`ParseError::NotSyslog`]).
//! Nothing here panics on any input: every index is checked (the unit tests and the integration tests'
//! garbage cases hold it to that).

use std::borrow::Cow;

use store::time::{NANOS_PER_DAY, NANOS_PER_SEC, days_from_civil};

/// Longest HOSTNAME, APP-NAME / TAG, PROCID and MSGID taken (RFC 5424 allows 255 for the hostname and less
/// for the others; longer ones here keep labels bounded).
pub const MAX_HEADER_FIELD: usize = 255;
/// Longest SD-ID and PARAM-NAME taken (RFC 5424: 32).
pub const MAX_SD_NAME: usize = 64;

/// A parsed message. Text that was not valid UTF-8 has been replaced (U+FFFD) and `invalid_utf8` says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub format: Format,
    /// 0 (kern) to 23 (local7).
    pub facility: u8,
    /// 0 (emerg) to 7 (debug).
    pub severity: u8,
    /// The message's own time in ns since the epoch, when it had one that could be read.
    pub time_ns: Option<i64>,
    pub hostname: Option<String>,
    /// APP-NAME (RFC 5424) or the TAG without its `[PID]` (RFC 3164).
    pub app_name: Option<String>,
    /// PROCID (RFC 5424) or the PID of `TAG[PID]` (RFC 3164).
    pub procid: Option<String>,
    pub msgid: Option<String>,
    /// Structured data as (`sd.<SD-ID>.<PARAM-NAME>`, value), in order; a name given twice has its
    /// values joined with `, `.
    pub structured: Vec<(String, String)>,
    /// MSG, without a leading BOM.
    pub msg: String,
    pub invalid_utf8: bool,
}

/// Which grammar a message was read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Rfc5424,
    Rfc3164,
}

/// Why a frame is not a syslog message. The caller keeps the frame as a raw line with this as its
/// `syslog_parse_error` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid PRI {text:?}: expected <0> to <191>")]
    InvalidPri { text: String },
    #[error("not syslog: no <PRI> and no timestamp")]
    NotSyslog,
    #[error("RFC 5424 message cut short at its {field}")]
    Truncated { field: &'static str },
    #[error("RFC 5424 {field} is empty (two spaces in a row)")]
    Empty { field: &'static str },
    #[error("{field} of {bytes} bytes is longer than the limit of {limit} bytes")]
    TooLong { field: &'static str, bytes: usize, limit: usize },
    #[error("invalid timestamp {text:?}")]
    InvalidTimestamp { text: String },
    #[error("invalid structured data at byte {at}: {reason}")]
    StructuredData { at: usize, reason: &'static str },
    #[error("octet-counted frame cut short: the connection closed after {got} of {expected} bytes")]
    TruncatedFrame { got: usize, expected: usize },
}

/// What a reader needs besides the bytes.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// When the frame arrived (ns since the epoch): the year of BSD timestamps is inferred from it.
    pub received_ns: i64,
    /// The UTC offset BSD timestamps (and ISO ones without a zone) are read at, in seconds.
    pub bsd_offset_secs: i64,
}

/// Parses one frame.
///
/// # Errors
/// A frame that is neither grammar; see [`ParseError`].
pub fn parse(frame: &[u8], cx: Context) -> Result<Message, ParseError> {
    let frame = trim_end(frame);
    let (pri, rest) = if frame.first() == Some(&b'<') {
        let (pri, rest) = pri(frame)?;
        (Some(pri), rest)
    } else {
        (None, frame)
    };
    match (pri, rest) {
        (Some(pri), [b'1', b' ', rest @ ..]) => rfc5424(pri, rest, frame.len() - rest.len()),
        _ => rfc3164(pri, rest, cx),
    }
}

/// The frame without its trailing newlines, carriage returns and NULs (UDP senders add them).
pub fn trim_end(mut b: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r' | b'\0'] = b {
        b = rest;
    }
    b
}

fn pri(frame: &[u8]) -> Result<(u8, &[u8]), ParseError> {
    let bad = || ParseError::InvalidPri { text: lossy(&frame[..frame.len().min(6)]).into_owned() };
    let digits = frame[1..].iter().take_while(|b| b.is_ascii_digit()).count();
    if !(1..=3).contains(&digits) || frame.get(1 + digits) != Some(&b'>') {
        return Err(bad());
    }
    let value = frame[1..1 + digits].iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if value > 191 {
        return Err(bad());
    }
    Ok((value as u8, &frame[2 + digits..]))
}

fn lossy(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// Text of a header field or value: lossy UTF-8, noting when bytes had to be replaced.
fn text(b: &[u8], invalid: &mut bool) -> String {
    match String::from_utf8_lossy(b) {
        Cow::Borrowed(s) => s.to_string(),
        Cow::Owned(s) => {
            *invalid = true;
            s
        }
    }
}

/// MSG: a leading UTF-8 BOM dropped, the rest lossy.
fn msg_text(b: &[u8], invalid: &mut bool) -> String {
    text(b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b), invalid)
}

// --- RFC 5424 ------------------------------------------------------------------------------------

/// A cursor over the header; `base` is its offset in the frame, for error positions.
struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
    base: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// The next space-terminated header field (the space consumed); None for `-`.
    fn field(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, ParseError> {
        let rest = &self.b[self.i..];
        let Some(len) = memchr::memchr(b' ', rest) else {
            return Err(ParseError::Truncated { field });
        };
        if len == 0 {
            return Err(ParseError::Empty { field });
        }
        if len > MAX_HEADER_FIELD {
            return Err(ParseError::TooLong { field, bytes: len, limit: MAX_HEADER_FIELD });
        }
        self.i += len + 1;
        Ok((rest[..len] != *b"-").then_some(&rest[..len]))
    }

    fn sd_error(&self, reason: &'static str) -> ParseError {
        ParseError::StructuredData { at: self.base + self.i, reason }
    }

    /// An SD-NAME: up to `=`, space, `]` or `"`.
    fn sd_name(&mut self) -> Result<&'a [u8], ParseError> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if matches!(c, b'=' | b' ' | b']' | b'"') || !(33..=126).contains(&c) {
                break;
            }
            self.i += 1;
        }
        let name = &self.b[start..self.i];
        if name.is_empty() {
            return Err(self.sd_error("expected a name"));
        }
        if name.len() > MAX_SD_NAME {
            return Err(self.sd_error("name longer than 64 bytes"));
        }
        Ok(name)
    }
}

fn rfc5424(pri: u8, rest: &[u8], base: usize) -> Result<Message, ParseError> {
    let mut c = Cursor { b: rest, i: 0, base };
    let mut invalid = false;
    let time_ns = match c.field("timestamp")? {
        None => None,
        Some(t) => Some(
            std::str::from_utf8(t)
                .ok()
                .and_then(|s| (s.len() >= 20).then(|| store::time::parse_rfc3339_ns(s)).flatten())
                .ok_or_else(|| ParseError::InvalidTimestamp { text: lossy(t).into_owned() })?,
        ),
    };
    let hostname = c.field("hostname")?.map(|b| text(b, &mut invalid));
    let app_name = c.field("app-name")?.map(|b| text(b, &mut invalid));
    let procid = c.field("procid")?.map(|b| text(b, &mut invalid));
    // MSGID is the last space-terminated field; a message may end right after the structured data.
    let msgid = c.field("msgid")?.map(|b| text(b, &mut invalid));
    let mut structured: Vec<(String, String)> = Vec::new();
    match c.peek() {
        None => return Err(ParseError::Truncated { field: "structured data" }),
        Some(b'-') => c.i += 1,
        Some(b'[') => {
            while c.peek() == Some(b'[') {
                c.i += 1;
                let id = c.sd_name()?;
                loop {
                    match c.peek() {
                        Some(b']') => {
                            c.i += 1;
                            break;
                        }
                        Some(b' ') => c.i += 1,
                        None => return Err(c.sd_error("element not closed with ]")),
                        Some(_) => return Err(c.sd_error("expected a space or ] after a name or value")),
                    }
                    if c.peek() == Some(b']') {
                        continue;
                    }
                    let name = c.sd_name()?;
                    if c.peek() != Some(b'=') {
                        return Err(c.sd_error("expected = after a parameter name"));
                    }
                    c.i += 1;
                    if c.peek() != Some(b'"') {
                        return Err(c.sd_error("expected \" to open a parameter value"));
                    }
                    c.i += 1;
                    let value = sd_value(&mut c)?;
                    let key = format!("sd.{}.{}", lossy(id), lossy(name));
                    let value = text(&value, &mut invalid);
                    match structured.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => {
                            v.push_str(", ");
                            v.push_str(&value);
                        }
                        None => structured.push((key, value)),
                    }
                }
            }
        }
        Some(_) => return Err(c.sd_error("expected - or [")),
    }
    let msg = match c.peek() {
        None => String::new(),
        // One more space is dropped: rsyslog's RFC 5424 templates forward a message it parsed as RFC 3164
        // with the space after its `TAG:` still in front (`... - - -  text`).
        Some(b' ') => {
            let msg = &c.b[c.i + 1..];
            msg_text(msg.strip_prefix(b" ").unwrap_or(msg), &mut invalid)
        }
        Some(_) => return Err(c.sd_error("expected a space between the structured data and the message")),
    };
    Ok(Message {
        format: Format::Rfc5424,
        facility: pri >> 3,
        severity: pri & 7,
        time_ns,
        hostname,
        app_name,
        procid,
        msgid,
        structured,
        msg,
        invalid_utf8: invalid,
    })
}

/// A PARAM-VALUE after its opening quote, unescaped, with the closing quote consumed. RFC 5424: `\"`,
/// `\\` and `\]` are escapes; a backslash before anything else is a backslash.
fn sd_value(c: &mut Cursor<'_>) -> Result<Vec<u8>, ParseError> {
    let mut out = Vec::new();
    loop {
        match c.peek() {
            None => return Err(c.sd_error("parameter value not closed with \"")),
            Some(b'"') => {
                c.i += 1;
                return Ok(out);
            }
            Some(b'\\') => {
                c.i += 1;
                match c.peek() {
                    Some(e @ (b'"' | b'\\' | b']')) => {
                        out.push(e);
                        c.i += 1;
                    }
                    _ => out.push(b'\\'),
                }
            }
            Some(b) => {
                out.push(b);
                c.i += 1;
            }
        }
    }
}

// --- RFC 3164 ------------------------------------------------------------------------------------

fn rfc3164(pri: Option<u8>, rest: &[u8], cx: Context) -> Result<Message, ParseError> {
    let (time, mut rest) = match bsd_timestamp(rest, cx)? {
        Some((time, rest)) => (Some(time), rest),
        None => (None, rest),
    };
    if pri.is_none() && time.is_none() {
        return Err(ParseError::NotSyslog);
    }
    let mut invalid = false;
    // After a timestamp comes the hostname, unless the next word is already the tag (a local sender's
    // `<13>Oct 11 22:14:15 su: ...`). Without a timestamp there is no hostname either (RFC 3164 4.3.3).
    let mut hostname = None;
    if time.is_some() && tag(rest).is_none() {
        let len = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        let word = &rest[..len];
        if !word.is_empty() && word.len() <= MAX_HEADER_FIELD && word.iter().all(|&b| is_hostname_byte(b)) {
            hostname = Some(text(word, &mut invalid));
            rest = rest.get(len + 1..).unwrap_or_default();
        }
    }
    let (app_name, procid) = match tag(rest) {
        Some(Tag { name, pid, rest: after }) => {
            rest = after.strip_prefix(b" ").unwrap_or(after);
            (Some(text(name, &mut invalid)), pid.map(|p| text(p, &mut invalid)))
        }
        None => (None, None),
    };
    let pri = pri.unwrap_or(13);
    Ok(Message {
        format: Format::Rfc3164,
        facility: pri >> 3,
        severity: pri & 7,
        time_ns: time.flatten(),
        hostname,
        app_name,
        procid,
        msgid: None,
        structured: Vec::new(),
        msg: msg_text(rest, &mut invalid),
        invalid_utf8: invalid,
    })
}

/// Letters, digits and the punctuation of host names and IPv4/IPv6 addresses.
fn is_hostname_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'%')
}

struct Tag<'a> {
    name: &'a [u8],
    pid: Option<&'a [u8]>,
    /// What follows the tag's colon (or `]`).
    rest: &'a [u8],
}

/// `TAG:`, `TAG[PID]:` or `TAG[PID]` followed by a space or the end.
fn tag(b: &[u8]) -> Option<Tag<'_>> {
    let end = b.iter().take(MAX_HEADER_FIELD + 1).position(|&c| matches!(c, b' ' | b':' | b'['))?;
    let name = &b[..end];
    if name.is_empty() {
        return None;
    }
    let ends_word = |i: usize| matches!(b.get(i), None | Some(b' '));
    match b[end] {
        b':' if ends_word(end + 1) => Some(Tag { name, pid: None, rest: &b[end + 1..] }),
        b'[' => {
            let close = end + 1 + b[end + 1..].iter().take(MAX_HEADER_FIELD + 1).position(|&c| c == b']')?;
            let pid = &b[end + 1..close];
            let mut next = close + 1;
            if b.get(next) == Some(&b':') {
                next += 1;
            }
            ends_word(next).then(|| Tag { name, pid: (!pid.is_empty()).then_some(pid), rest: &b[next..] })
        }
        _ => None,
    }
}

const MONTHS: [&[u8; 3]; 12] =
    [b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"];

fn num(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

/// A BSD or ISO timestamp at the start of `b`, and what follows it (its space consumed). The time is None
/// when the date does not exist (Feb 29 of a year that has none). Ok(None): no timestamp there.
///
/// # Errors
/// Something that starts like an ISO timestamp (`dddd-`) but is not one.
#[allow(clippy::type_complexity)]
fn bsd_timestamp(b: &[u8], cx: Context) -> Result<Option<(Option<i64>, &[u8])>, ParseError> {
    // ISO 8601 / RFC 3339, as rsyslog's forwarding templates write: 2024-05-01T10:00:00.123456+02:00
    if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' {
        let len = memchr::memchr(b' ', b).unwrap_or(b.len());
        let token = &b[..len];
        let bad = || ParseError::InvalidTimestamp { text: lossy(&token[..token.len().min(64)]).into_owned() };
        let s = std::str::from_utf8(token).map_err(|_| bad())?;
        let ns = store::time::parse_rfc3339_ns(s).ok_or_else(bad)?;
        // Without a zone, the ISO time is local time of the sender, as a BSD one.
        let zoned = s.len() > 19 && s[19..].bytes().any(|c| matches!(c, b'Z' | b'z' | b'+' | b'-'));
        let ns = if zoned { ns } else { ns.saturating_sub(cx.bsd_offset_secs * NANOS_PER_SEC) };
        return Ok(Some((Some(ns), b.get(len + 1..).unwrap_or_default())));
    }
    // Mmm dd hh:mm:ss, the day space-padded or not, optionally with a year before the time and fractions.
    if b.len() < 4 || b[3] != b' ' {
        return Ok(None);
    }
    let Some(month) = MONTHS.iter().position(|m| b[..3].eq_ignore_ascii_case(&m[..])) else {
        return Ok(None);
    };
    let mut i = 4;
    if b.get(i) == Some(&b' ') {
        i += 1;
    }
    let words: Vec<&[u8]> = b[i..].splitn(4, |&c| c == b' ').collect();
    let Some(day) = words.first().and_then(|w| num(w)).filter(|d| (1..=31).contains(d)) else {
        return Ok(None);
    };
    let (year, clock, used) = match words.get(1) {
        Some(w) if w.len() == 4 && num(w).is_some() => (num(w), words.get(2), 3),
        _ => (None, words.get(1), 2),
    };
    let Some(&clock) = clock else { return Ok(None) };
    let (hms, frac) = match memchr::memchr(b'.', clock) {
        Some(dot) => (&clock[..dot], Some(&clock[dot + 1..])),
        None => (clock, None),
    };
    if hms.len() != 8 || hms[2] != b':' || hms[5] != b':' {
        return Ok(None);
    }
    let (Some(h), Some(m), Some(s)) = (num(&hms[..2]), num(&hms[3..5]), num(&hms[6..])) else {
        return Ok(None);
    };
    if h > 23 || m > 59 || s > 60 {
        return Ok(None);
    }
    let mut frac_ns = 0i64;
    if let Some(frac) = frac {
        if frac.is_empty() || frac.len() > 9 || !frac.iter().all(u8::is_ascii_digit) {
            return Ok(None);
        }
        frac_ns = i64::from(num(frac).unwrap_or(0)) * 10i64.pow(9 - frac.len() as u32);
    }
    let consumed: usize = words[..used].iter().map(|w| w.len() + 1).sum();
    let rest = b.get(i + consumed..).unwrap_or_default();
    let secs_of_day = i64::from(h * 3600 + m * 60 + s);
    let month = month as u32 + 1;
    let at = |year: i64| -> Option<i64> {
        (day <= days_in_month(year, month)).then(|| {
            (days_from_civil(year, month, day) * 86_400 + secs_of_day - cx.bsd_offset_secs) * NANOS_PER_SEC + frac_ns
        })
    };
    let time = match year {
        Some(y) => at(i64::from(y)),
        None => {
            let now = cx.received_ns;
            let this_year =
                store::time::civil_from_days((now + cx.bsd_offset_secs * NANOS_PER_SEC).div_euclid(NANOS_PER_DAY)).0;
            let ahead = now.saturating_add(2 * NANOS_PER_DAY);
            match (at(this_year), at(this_year + 1)) {
                (_, Some(next)) if next <= ahead => Some(next),
                (Some(t), _) if t > ahead => at(this_year - 1),
                (t, _) => t,
            }
        }
    };
    Ok(Some((time, rest)))
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// --- names ---------------------------------------------------------------------------------------

/// The facility's name as rsyslog and syslog.h spell it (12 to 15 have no name in syslog.h; these are
/// rsyslog's).
pub fn facility_name(facility: u8) -> &'static str {
    const NAMES: [&str; 24] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp", "ntp",
        "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
    ];
    NAMES.get(usize::from(facility)).copied().unwrap_or("unknown")
}

/// The severity's RFC 5424 keyword (the `severity` field).
pub fn severity_name(severity: u8) -> &'static str {
    const NAMES: [&str; 8] = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];
    NAMES.get(usize::from(severity)).copied().unwrap_or("unknown")
}

/// The `level` label of a severity, in the spellings LogQL's `detected_level` normalizes to: emerg,
/// alert, crit → critical; err → error; warning → warn; notice, info → info; debug → debug.
pub fn level(severity: u8) -> &'static str {
    match severity {
        0..=2 => "critical",
        3 => "error",
        4 => "warn",
        5 | 6 => "info",
        _ => "debug",
    }
}

#[cfg(test)]
mod tests;
