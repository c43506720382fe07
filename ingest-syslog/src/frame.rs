//! Syslog over a byte stream (TCP, TLS): RFC 6587's two framings, chosen per frame as rsyslog does.
//!
//! - **Octet counting**: `LEN SP MSG`, where LEN is the decimal byte count of MSG. A frame that starts
//!   with a digit, and whose digits (at most 10) are followed by a space, is one of these.
//! - **Non-transparent framing**: MSG ends at LF (a CR before it is dropped) or NUL. Every other frame.
//!
//! Memory is bounded by `max`: a frame longer than it is reported once as [`Frame::Oversized`] and its
//! bytes are skipped as they arrive (an octet-counted one by its count, a delimited one up to its
//! delimiter), so the buffer never holds more than `max` plus a header plus one read.

use bytes::{Buf, Bytes, BytesMut};

/// Longest octet count read (10 digits: up to 9,999,999,999).
const MAX_COUNT_DIGITS: usize = 10;

/// What the framer hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One message's bytes, without its framing.
    Message(Bytes),
    /// A frame over the limit, dropped; `bytes` is its length when known (octet counting) or what had
    /// arrived of it when it was given up (delimited).
    Oversized { bytes: usize },
    /// The stream ended inside an octet-counted frame: what arrived of it.
    Truncated { data: Bytes, expected: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a frame, or inside one whose end has not arrived.
    Normal,
    /// Dropping the rest of an oversized octet-counted frame: this many bytes.
    SkipBytes(usize),
    /// Dropping the rest of an oversized delimited frame: up to and including the next LF or NUL.
    SkipToDelimiter,
}

/// Cuts a byte stream into frames.
#[derive(Debug)]
pub struct Framer {
    buf: BytesMut,
    state: State,
    max: usize,
}

impl Framer {
    /// A framer for frames of at most `max` bytes.
    pub fn new(max: usize) -> Framer {
        Framer { buf: BytesMut::new(), state: State::Normal, max: max.max(1) }
    }

    /// Bytes held (a frame whose end has not arrived), for tests of the bound.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends what was read.
    pub fn push(&mut self, data: &[u8]) {
        match self.state {
            // Nothing to keep: skip without copying.
            State::SkipBytes(n) if self.buf.is_empty() => {
                let skip = n.min(data.len());
                self.state = if n > skip { State::SkipBytes(n - skip) } else { State::Normal };
                self.buf.extend_from_slice(&data[skip..]);
            }
            State::SkipToDelimiter if self.buf.is_empty() => {
                if let Some(i) = memchr::memchr2(b'\n', b'\0', data) {
                    self.state = State::Normal;
                    self.buf.extend_from_slice(&data[i + 1..]);
                }
            }
            _ => self.buf.extend_from_slice(data),
        }
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match self.state {
                State::SkipBytes(n) => {
                    let skip = n.min(self.buf.len());
                    self.buf.advance(skip);
                    if n > skip {
                        self.state = State::SkipBytes(n - skip);
                        return None;
                    }
                    self.state = State::Normal;
                }
                State::SkipToDelimiter => match memchr::memchr2(b'\n', b'\0', &self.buf) {
                    Some(i) => {
                        self.buf.advance(i + 1);
                        self.state = State::Normal;
                    }
                    None => {
                        self.buf.clear();
                        return None;
                    }
                },
                State::Normal => {
                    let first = *self.buf.first()?;
                    if first.is_ascii_digit() {
                        match self.octet_header() {
                            Header::Incomplete => return None,
                            Header::Count { header, len } => {
                                if len > self.max {
                                    self.buf.advance(header);
                                    self.state = State::SkipBytes(len);
                                    return Some(Frame::Oversized { bytes: len });
                                }
                                if self.buf.len() < header + len {
                                    return None;
                                }
                                self.buf.advance(header);
                                let frame = self.buf.split_to(len).freeze();
                                if frame.is_empty() {
                                    continue;
                                }
                                return Some(Frame::Message(frame));
                            }
                            Header::NotCounted => {}
                        }
                    }
                    match memchr::memchr2(b'\n', b'\0', &self.buf) {
                        Some(i) => {
                            let mut frame = self.buf.split_to(i + 1);
                            frame.truncate(i);
                            if frame.last() == Some(&b'\r') {
                                frame.truncate(i - 1);
                            }
                            if frame.iter().all(u8::is_ascii_whitespace) {
                                continue;
                            }
                            if frame.len() > self.max {
                                return Some(Frame::Oversized { bytes: frame.len() });
                            }
                            return Some(Frame::Message(frame.freeze()));
                        }
                        None if self.buf.len() > self.max => {
                            let bytes = self.buf.len();
                            self.buf.clear();
                            self.state = State::SkipToDelimiter;
                            return Some(Frame::Oversized { bytes });
                        }
                        None => return None,
                    }
                }
            }
        }
    }

    /// At the end of the stream: what is left, as a last frame. A delimited frame needs no delimiter at
    /// the end; an octet-counted one that is cut short comes back as [`Frame::Truncated`].
    pub fn finish(&mut self) -> Option<Frame> {
        if self.state != State::Normal {
            self.buf.clear();
            self.state = State::Normal;
            return None;
        }
        if self.buf.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.buf);
        if let Header::Count { header, len } = header_of(&rest) {
            let data = rest.freeze().slice(header..);
            return (!data.is_empty()).then_some(Frame::Truncated { data, expected: len });
        }
        if rest.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        if rest.len() > self.max {
            return Some(Frame::Oversized { bytes: rest.len() });
        }
        Some(Frame::Message(rest.freeze()))
    }

    fn octet_header(&self) -> Header {
        header_of(&self.buf)
    }
}

enum Header {
    /// Digits so far, and the buffer ends: more must arrive to tell.
    Incomplete,
    /// `LEN SP`: the header's length (digits and space) and LEN.
    Count { header: usize, len: usize },
    /// Not an octet count: a delimited frame that starts with a digit.
    NotCounted,
}

fn header_of(buf: &[u8]) -> Header {
    let digits = buf.iter().take(MAX_COUNT_DIGITS + 1).take_while(|b| b.is_ascii_digit()).count();
    if digits > MAX_COUNT_DIGITS || digits == 0 {
        return Header::NotCounted;
    }
    match buf.get(digits) {
        None => Header::Incomplete,
        Some(b' ') => {
            let len =
                buf[..digits].iter().fold(0usize, |n, d| n.saturating_mul(10).saturating_add(usize::from(d - b'0')));
            Header::Count { header: digits + 1, len }
        }
        Some(_) => Header::NotCounted,
    }
}

#[cfg(test)]
mod tests;
