//! One systemd journal file, read natively: the header, the entry-array chain that lists the file's
//! entries in order, entry objects and the data objects (`FIELD=value`) they point to.
//!
//! The layout is systemd's (<https://systemd.io/JOURNAL_FILE_FORMAT/>): little-endian, objects 8-byte
//! aligned, every object starting with `type u8, flags u8, reserved [6], size le64`. Supported are the
//! regular layout (64-bit entry items `{offset, hash}` and entry-array items) and the compact layout of
//! systemd 252 (incompatible flag COMPACT: 32-bit items, data payloads 8 bytes later), keyed hashes (the
//! hashes are never needed to read entries in order), and data objects compressed with zstd or LZ4 (an
//! 8-byte little-endian uncompressed size, then one LZ4 block). XZ-compressed data objects (files of
//! old systemd versions that compressed with XZ) are not decoded: such a field counts as unreadable.
//!
//! Every offset and length read from the file is checked against the readable end, the smaller of
//! `header_size + arena_size` and the file's length, before it is used; object sizes are bounded; the
//! entry-array chain must move forward (so a corrupt chain cannot loop); a field is read, or
//! decompressed, up to a caller's limit and marked truncated beyond it. A file being written (ONLINE)
//! may list an entry whose objects are not visible yet: the caller retries it later (see
//! [`Next::Unlinked`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use zstd::stream::raw::{Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

/// The file signature, "LPKSHHRH".
pub const SIGNATURE: &[u8; 8] = b"LPKSHHRH";

const INCOMPATIBLE_XZ: u32 = 1 << 0;
const INCOMPATIBLE_LZ4: u32 = 1 << 1;
const INCOMPATIBLE_KEYED_HASH: u32 = 1 << 2;
const INCOMPATIBLE_ZSTD: u32 = 1 << 3;
const INCOMPATIBLE_COMPACT: u32 = 1 << 4;
const INCOMPATIBLE_KNOWN: u32 =
    INCOMPATIBLE_XZ | INCOMPATIBLE_LZ4 | INCOMPATIBLE_KEYED_HASH | INCOMPATIBLE_ZSTD | INCOMPATIBLE_COMPACT;

const OBJECT_DATA: u8 = 1;
const OBJECT_ENTRY: u8 = 3;
const OBJECT_ENTRY_ARRAY: u8 = 6;

const OBJECT_COMPRESSED_XZ: u8 = 1 << 0;
const OBJECT_COMPRESSED_LZ4: u8 = 1 << 1;
const OBJECT_COMPRESSED_ZSTD: u8 = 1 << 2;

/// The header fields read, up to `tail_entry_monotonic` (systemd's oldest header size).
const HEADER_MIN: u64 = 208;
/// The header as systemd 254 writes it; more is allowed and skipped.
const HEADER_READ: usize = 272;
const OBJECT_HEADER: u64 = 16;
/// Entry objects: the object header, seqnum, realtime, monotonic, boot id, xor hash; then the items.
const ENTRY_FIXED: u64 = 64;
const ENTRY_ARRAY_FIXED: u64 = 24;
const DATA_FIXED_REGULAR: u64 = 64;
const DATA_FIXED_COMPACT: u64 = 72;
/// journald stores at most 1024 fields per entry (`ENTRY_FIELD_COUNT_MAX`); a larger entry is corrupt.
const ENTRY_ITEMS_MAX: u64 = 16 * 1024;
/// An LZ4 block whose stated size is beyond the caller's limit times this is not decompressed at all
/// (LZ4 blocks cannot be decompressed in part).
const LZ4_OVER_LIMIT: u64 = 4;

const BLOCK: u64 = 64 * 1024;
const BLOCKS: usize = 8;

/// The state byte of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Closed cleanly (journald also sets this after each sync; it may be written again).
    Offline,
    /// Open for writing: the tail may be half written.
    Online,
    /// Rotated away: nothing will be added.
    Archived,
    /// A value systemd does not define.
    Unknown(u8),
}

/// The header fields the reader needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub incompatible_flags: u32,
    pub state: State,
    pub file_id: [u8; 16],
    pub machine_id: [u8; 16],
    pub header_size: u64,
    pub arena_size: u64,
    pub tail_object_offset: u64,
    pub n_entries: u64,
    pub entry_array_offset: u64,
    pub head_entry_realtime: u64,
    pub tail_entry_realtime: u64,
}

impl Header {
    /// Parses and checks the header at the start of `b`.
    ///
    /// # Errors
    /// Not a journal file, a header too small or unknown incompatible flags.
    pub fn parse(b: &[u8]) -> Result<Header, FormatError> {
        if b.len() < HEADER_MIN as usize || &b[..8] != SIGNATURE {
            return Err(FormatError::Signature);
        }
        let incompatible_flags = le32(b, 12);
        if incompatible_flags & !INCOMPATIBLE_KNOWN != 0 {
            return Err(FormatError::Unsupported { flags: incompatible_flags & !INCOMPATIBLE_KNOWN });
        }
        let state = match b[16] {
            0 => State::Offline,
            1 => State::Online,
            2 => State::Archived,
            n => State::Unknown(n),
        };
        let header_size = le64(b, 88);
        if header_size < HEADER_MIN || !header_size.is_multiple_of(8) {
            return Err(FormatError::Header { reason: "header_size out of range" });
        }
        let h = Header {
            incompatible_flags,
            state,
            file_id: id128(b, 24),
            machine_id: id128(b, 40),
            header_size,
            arena_size: le64(b, 96),
            tail_object_offset: le64(b, 136),
            n_entries: le64(b, 152),
            entry_array_offset: le64(b, 176),
            head_entry_realtime: le64(b, 184),
            tail_entry_realtime: le64(b, 192),
        };
        if h.header_size.checked_add(h.arena_size).is_none() {
            return Err(FormatError::Header { reason: "arena_size out of range" });
        }
        Ok(h)
    }

    /// Whether items are 32-bit (systemd 252's COMPACT layout).
    pub fn compact(&self) -> bool {
        self.incompatible_flags & INCOMPATIBLE_COMPACT != 0
    }

    /// Where objects may end: `header_size + arena_size`.
    fn arena_end(&self) -> u64 {
        self.header_size.saturating_add(self.arena_size)
    }
}

/// Why a part of a journal file could not be read. [`FormatError::reason`] names the kind for metrics.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a journal file (no LPKSHHRH signature or a header too short)")]
    Signature,
    #[error(
        "the file uses incompatible features this reader does not know (flags {flags:#x}); a newer systemd wrote it"
    )]
    Unsupported { flags: u32 },
    #[error("bad header: {reason}")]
    Header { reason: &'static str },
    #[error("{what} at offset {offset} lies outside the readable file (end {end})")]
    Bounds { what: &'static str, offset: u64, end: u64 },
    #[error("{what} at offset {offset} is not one (type {found}, size {size})")]
    Object { what: &'static str, offset: u64, found: u8, size: u64 },
    #[error("the entry-array chain goes back from offset {from} to {to}")]
    Chain { from: u64, to: u64 },
    #[error("a data object at offset {offset} is compressed with {codec}, which this reader does not decode")]
    Codec { offset: u64, codec: &'static str },
    #[error("a data object at offset {offset} does not decompress: {reason}")]
    Decompress { offset: u64, reason: String },
}

impl FormatError {
    /// A short, bounded name for the `reason` label of the error counter.
    pub fn reason(&self) -> &'static str {
        match self {
            FormatError::Io(_) => "io",
            FormatError::Signature | FormatError::Header { .. } => "header",
            FormatError::Unsupported { .. } => "unsupported",
            FormatError::Bounds { .. } => "bounds",
            FormatError::Object { .. } => "object",
            FormatError::Chain { .. } => "chain",
            FormatError::Codec { .. } => "codec",
            FormatError::Decompress { .. } => "decompress",
        }
    }
}

/// What [`JournalFile::next_offset`] found at the read position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The entry object at this offset is the next one.
    Entry(u64),
    /// Every entry the header counts has been consumed.
    End,
    /// The header counts more entries than the entry-array chain lists yet: a writer is between the
    /// two updates (retry), or the file is corrupt.
    Unlinked,
}

/// One field of an entry: `NAME=value`, possibly cut at the reader's limit.
#[derive(Debug, Default, Clone)]
pub struct Field {
    data: Vec<u8>,
    name_len: usize,
    /// The value was longer than the limit and was cut.
    pub truncated: bool,
}

impl Field {
    pub fn name(&self) -> &[u8] {
        &self.data[..self.name_len]
    }

    pub fn value(&self) -> &[u8] {
        &self.data[(self.name_len + 1).min(self.data.len())..]
    }
}

/// One entry, read by [`JournalFile::read_entry`]. Reused from entry to entry (its buffers stay).
#[derive(Debug, Default)]
pub struct Entry {
    pub seqnum: u64,
    /// Wall clock time, µs since the epoch (`__REALTIME_TIMESTAMP`).
    pub realtime_us: u64,
    pub monotonic_us: u64,
    pub boot_id: [u8; 16],
    fields: Vec<Field>,
    n_fields: usize,
    /// Fields that could not be read (a bad data object, XZ compression), with the first error.
    pub unreadable: u32,
    pub first_error: Option<FormatError>,
}

impl Entry {
    /// The fields in the order the entry lists them.
    pub fn fields(&self) -> &[Field] {
        &self.fields[..self.n_fields]
    }

    /// The first field named `name`.
    pub fn get(&self, name: &[u8]) -> Option<&Field> {
        self.fields().iter().find(|f| f.name() == name)
    }

    /// An entry with these fields (for tests of what is made of entries).
    #[cfg(test)]
    pub fn with_fields(realtime_us: u64, fields: &[(&str, &[u8])]) -> Entry {
        let mut e = Entry { realtime_us, boot_id: [0xab; 16], ..Entry::default() };
        for (name, value) in fields {
            let f = e.next_field();
            f.data.extend_from_slice(name.as_bytes());
            f.data.push(b'=');
            f.data.extend_from_slice(value);
            f.name_len = name.len();
            e.n_fields += 1;
        }
        e
    }

    fn clear(&mut self) {
        self.n_fields = 0;
        self.unreadable = 0;
        self.first_error = None;
    }

    fn next_field(&mut self) -> &mut Field {
        if self.n_fields == self.fields.len() {
            self.fields.push(Field::default());
        }
        let f = &mut self.fields[self.n_fields];
        f.data.clear();
        f.name_len = 0;
        f.truncated = false;
        f
    }
}

/// Where the reader is in the entry-array chain.
#[derive(Debug, Clone, Copy)]
struct ArrayAt {
    offset: u64,
    /// The index (in entry order) of the array's first item.
    first: u64,
    capacity: u64,
}

/// An open journal file and a read position in its entries.
pub struct JournalFile {
    file: File,
    header: Header,
    /// The readable end: the arena's end or the file's length, whichever is smaller.
    end: u64,
    /// Entries consumed, in entry-array order.
    consumed: u64,
    array: Option<ArrayAt>,
    cache: Cache,
    scratch: Vec<u8>,
    zstd: Option<ZstdDecoder<'static>>,
}

impl JournalFile {
    /// Opens `path` and reads its header.
    ///
    /// # Errors
    /// The file cannot be opened or read, or is not a journal file this reader understands.
    pub fn open(path: &Path) -> Result<JournalFile, FormatError> {
        let file = File::open(path)?;
        let (header, end) = read_header(&file)?;
        Ok(JournalFile {
            file,
            header,
            end,
            consumed: 0,
            array: None,
            cache: Cache::default(),
            scratch: Vec::new(),
            zstd: None,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The device and inode of the open file.
    ///
    /// # Errors
    /// `fstat` failed.
    pub fn id(&self) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = self.file.metadata()?;
        Ok((m.dev(), m.ino()))
    }

    /// Reads the header and the file's length again (a writer may have added entries). Cached blocks
    /// are dropped when anything moved.
    ///
    /// # Errors
    /// The header no longer reads, or names another file.
    pub fn refresh(&mut self) -> Result<(), FormatError> {
        let (header, end) = read_header(&self.file)?;
        if header.file_id != self.header.file_id {
            return Err(FormatError::Header { reason: "the file id changed under the open file" });
        }
        if header != self.header || end != self.end {
            self.cache.clear();
            // The array the cursor is in may have gained a successor.
            self.header = header;
            self.end = end;
        }
        Ok(())
    }

    /// Entries consumed so far, in entry-array order (the read position).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Sets the read position to `n` entries consumed.
    pub fn seek(&mut self, n: u64) {
        self.consumed = n;
        if self.array.is_some_and(|a| n < a.first) {
            self.array = None;
        }
    }

    /// Moves the read position past the entry [`JournalFile::next_offset`] returned.
    pub fn advance(&mut self) {
        self.consumed += 1;
    }

    /// Drops the cached blocks (while the file is not being read).
    pub fn release(&mut self) {
        self.cache.clear();
        self.cache.blocks.shrink_to_fit();
        self.scratch = Vec::new();
    }

    /// The offset of the entry at the read position, found through the entry-array chain.
    ///
    /// # Errors
    /// A broken chain: an array that is not one or lies outside the file, or a chain that goes back.
    pub fn next_offset(&mut self) -> Result<Next, FormatError> {
        if self.consumed >= self.header.n_entries {
            return Ok(Next::End);
        }
        let item_size: u64 = if self.header.compact() { 4 } else { 8 };
        let mut at = match self.array {
            Some(a) => a,
            None => {
                let offset = self.header.entry_array_offset;
                if offset == 0 {
                    return Ok(Next::Unlinked);
                }
                self.load_array(offset, 0, item_size)?
            }
        };
        while self.consumed >= at.first + at.capacity {
            let next = self.read_u64(at.offset + OBJECT_HEADER, "entry array")?;
            if next == 0 {
                self.array = Some(at);
                return Ok(Next::Unlinked);
            }
            if next <= at.offset {
                return Err(FormatError::Chain { from: at.offset, to: next });
            }
            at = self.load_array(next, at.first + at.capacity, item_size)?;
        }
        self.array = Some(at);
        let item_at = at.offset + ENTRY_ARRAY_FIXED + (self.consumed - at.first) * item_size;
        let item = if self.header.compact() {
            u64::from(self.read_u32(item_at, "entry array item")?)
        } else {
            self.read_u64(item_at, "entry array item")?
        };
        if item == 0 {
            return Ok(Next::Unlinked);
        }
        Ok(Next::Entry(item))
    }

    /// The realtime (µs) of the entry at `offset`, without its fields.
    ///
    /// # Errors
    /// The entry object is out of bounds or not an entry.
    pub fn entry_realtime(&mut self, offset: u64) -> Result<u64, FormatError> {
        self.entry_object(offset)?;
        self.read_u64(offset + 24, "entry")
    }

    /// Reads the entry at `offset` into `out`, each field's value up to `max_value` bytes (longer values
    /// are cut and marked truncated). A field whose data object cannot be read is counted in
    /// `out.unreadable` and left out.
    ///
    /// # Errors
    /// The entry object itself is out of bounds, not an entry, or has an impossible size.
    pub fn read_entry(&mut self, offset: u64, max_value: usize, out: &mut Entry) -> Result<(), FormatError> {
        out.clear();
        let size = self.entry_object(offset)?;
        let mut fixed = std::mem::take(&mut self.scratch);
        let res = self.read_into(offset, ENTRY_FIXED as usize, &mut fixed, "entry");
        if let Err(e) = res {
            self.scratch = fixed;
            return Err(e);
        }
        out.seqnum = le64(&fixed, 16);
        out.realtime_us = le64(&fixed, 24);
        out.monotonic_us = le64(&fixed, 32);
        out.boot_id = id128(&fixed, 40);
        let item_size: u64 = if self.header.compact() { 4 } else { 16 };
        let n_items = (size - ENTRY_FIXED) / item_size;
        let res = self.read_into(offset + ENTRY_FIXED, (n_items * item_size) as usize, &mut fixed, "entry items");
        if let Err(e) = res {
            self.scratch = fixed;
            return Err(e);
        }
        for i in 0..n_items as usize {
            let data_at = if self.header.compact() { u64::from(le32(&fixed, i * 4)) } else { le64(&fixed, i * 16) };
            if let Err(e) = self.read_data(data_at, max_value, out) {
                out.unreadable += 1;
                out.first_error.get_or_insert(e);
            }
        }
        self.scratch = fixed;
        Ok(())
    }

    /// Checks the entry object at `offset`; returns its size.
    fn entry_object(&mut self, offset: u64) -> Result<u64, FormatError> {
        let (kind, _, size) = self.object_header(offset, "entry")?;
        let item_size: u64 = if self.header.compact() { 4 } else { 16 };
        let items_ok = size >= ENTRY_FIXED && (size - ENTRY_FIXED) / item_size <= ENTRY_ITEMS_MAX;
        if kind != OBJECT_ENTRY || !items_ok {
            return Err(FormatError::Object { what: "entry", offset, found: kind, size });
        }
        Ok(size)
    }

    fn load_array(&mut self, offset: u64, first: u64, item_size: u64) -> Result<ArrayAt, FormatError> {
        let (kind, _, size) = self.object_header(offset, "entry array")?;
        if kind != OBJECT_ENTRY_ARRAY || size < ENTRY_ARRAY_FIXED + item_size {
            return Err(FormatError::Object { what: "entry array", offset, found: kind, size });
        }
        Ok(ArrayAt { offset, first, capacity: (size - ENTRY_ARRAY_FIXED) / item_size })
    }

    /// Reads one data object into the next field of `out`.
    fn read_data(&mut self, offset: u64, max_value: usize, out: &mut Entry) -> Result<(), FormatError> {
        let (kind, flags, size) = self.object_header(offset, "data")?;
        let fixed = if self.header.compact() { DATA_FIXED_COMPACT } else { DATA_FIXED_REGULAR };
        if kind != OBJECT_DATA || size < fixed {
            return Err(FormatError::Object { what: "data", offset, found: kind, size });
        }
        let payload_len = size - fixed;
        // Room for the name, the `=` and the value.
        let limit = max_value.saturating_add(256);
        let compression = flags & (OBJECT_COMPRESSED_XZ | OBJECT_COMPRESSED_LZ4 | OBJECT_COMPRESSED_ZSTD);
        let mut buf = std::mem::take(&mut out.next_field().data);
        let res = match compression {
            0 => {
                let n = payload_len.min(limit as u64) as usize;
                self.read_into(offset + fixed, n, &mut buf, "data").map(|()| payload_len > n as u64)
            }
            OBJECT_COMPRESSED_ZSTD => self.read_zstd(offset, offset + fixed, payload_len, limit, &mut buf),
            OBJECT_COMPRESSED_LZ4 => self.read_lz4(offset, offset + fixed, payload_len, limit, &mut buf),
            OBJECT_COMPRESSED_XZ => Err(FormatError::Codec { offset, codec: "xz" }),
            _ => Err(FormatError::Codec { offset, codec: "several codecs at once" }),
        };
        let field = &mut out.fields[out.n_fields];
        let truncated = match res {
            Ok(t) => t,
            Err(e) => {
                field.data = buf;
                return Err(e);
            }
        };
        let Some(eq) = memchr::memchr(b'=', &buf) else {
            field.data = buf;
            return Err(FormatError::Object { what: "data (FIELD=value)", offset, found: kind, size });
        };
        field.name_len = eq;
        field.truncated = truncated;
        field.data = buf;
        out.n_fields += 1;
        Ok(())
    }

    /// Decompresses a zstd frame up to `limit` bytes; returns whether the output was cut.
    fn read_zstd(
        &mut self,
        offset: u64,
        at: u64,
        len: u64,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, FormatError> {
        let mut input = std::mem::take(&mut self.scratch);
        let res = self.read_into(at, usize::try_from(len).unwrap_or(usize::MAX), &mut input, "data");
        if let Err(e) = res {
            self.scratch = input;
            return Err(e);
        }
        let bad = |reason: String| FormatError::Decompress { offset, reason };
        if self.zstd.is_none() {
            self.zstd = Some(ZstdDecoder::new().map_err(|e| bad(e.to_string()))?);
        }
        let decoder = self.zstd.as_mut().expect("just set");
        let res = (|| {
            decoder.reinit().map_err(|e| bad(e.to_string()))?;
            out.clear();
            // The frame header usually states the size: allocate once, never beyond the limit.
            let hint = zstd::zstd_safe::get_frame_content_size(&input).ok().flatten().unwrap_or(4096);
            out.resize(hint.min(limit as u64 + 1) as usize, 0);
            let mut src = InBuffer::around(&input);
            let mut written = 0usize;
            loop {
                let before = (src.pos(), written);
                let mut dst = OutBuffer::around_pos(out.as_mut_slice(), written);
                let remaining = decoder.run(&mut src, &mut dst).map_err(|e| bad(e.to_string()))?;
                written = dst.pos();
                if written > limit {
                    out.truncate(limit);
                    return Ok(true);
                }
                if remaining == 0 {
                    // The frame is decoded and flushed.
                    out.truncate(written);
                    return Ok(false);
                }
                if written == out.len() {
                    let grow = (out.len() * 2).max(4096).min(limit + 1);
                    out.resize(grow, 0);
                } else if src.pos() == input.len() {
                    return Err(bad("the frame ends early".to_string()));
                } else if (src.pos(), written) == before {
                    return Err(bad("the frame does not progress".to_string()));
                }
            }
        })();
        self.scratch = input;
        res
    }

    /// Decompresses an LZ4 block (`le64 size` + block); returns whether the output was cut.
    fn read_lz4(
        &mut self,
        offset: u64,
        at: u64,
        len: u64,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, FormatError> {
        let bad = |reason: String| FormatError::Decompress { offset, reason };
        if len < 8 {
            return Err(bad("shorter than its size prefix".to_string()));
        }
        let mut input = std::mem::take(&mut self.scratch);
        let res = self.read_into(at, usize::try_from(len).unwrap_or(usize::MAX), &mut input, "data");
        if let Err(e) = res {
            self.scratch = input;
            return Err(e);
        }
        let stated = le64(&input, 0);
        let res = if stated > (limit as u64).saturating_mul(LZ4_OVER_LIMIT) {
            Err(bad(format!("states {stated} bytes, more than this reader decompresses")))
        } else {
            out.clear();
            out.resize(stated as usize, 0);
            match lz4_flex::block::decompress_into(&input[8..], out) {
                Ok(n) if n as u64 == stated => {
                    let cut = n > limit;
                    out.truncate(limit.min(n));
                    Ok(cut)
                }
                Ok(n) => Err(bad(format!("gave {n} bytes, {stated} stated"))),
                Err(e) => Err(bad(e.to_string())),
            }
        };
        self.scratch = input;
        res
    }

    /// Reads and bounds-checks an object header; returns (type, flags, size).
    fn object_header(&mut self, offset: u64, what: &'static str) -> Result<(u8, u8, u64), FormatError> {
        if !offset.is_multiple_of(8) || offset < self.header.header_size {
            return Err(FormatError::Bounds { what, offset, end: self.end });
        }
        let mut b = [0u8; OBJECT_HEADER as usize];
        self.read_exact(offset, &mut b, what)?;
        let size = le64(&b, 8);
        if size < OBJECT_HEADER || offset.checked_add(size).is_none_or(|e| e > self.end) {
            return Err(FormatError::Object { what, offset, found: b[0], size });
        }
        Ok((b[0], b[1], size))
    }

    fn read_u64(&mut self, offset: u64, what: &'static str) -> Result<u64, FormatError> {
        let mut b = [0u8; 8];
        self.read_exact(offset, &mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_u32(&mut self, offset: u64, what: &'static str) -> Result<u32, FormatError> {
        let mut b = [0u8; 4];
        self.read_exact(offset, &mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn check(&self, offset: u64, len: u64, what: &'static str) -> Result<(), FormatError> {
        if offset.checked_add(len).is_none_or(|e| e > self.end) {
            return Err(FormatError::Bounds { what, offset, end: self.end });
        }
        Ok(())
    }

    fn read_exact(&mut self, offset: u64, out: &mut [u8], what: &'static str) -> Result<(), FormatError> {
        self.check(offset, out.len() as u64, what)?;
        self.cache.read(&self.file, self.end, offset, out).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FormatError::Bounds { what, offset, end: self.end },
            _ => FormatError::Io(e),
        })
    }

    fn read_into(&mut self, offset: u64, len: usize, out: &mut Vec<u8>, what: &'static str) -> Result<(), FormatError> {
        self.check(offset, len as u64, what)?;
        out.clear();
        out.resize(len, 0);
        self.read_exact(offset, out, what)
    }
}

/// Reads the header and the readable end of `file`.
fn read_header(file: &File) -> Result<(Header, u64), FormatError> {
    let mut b = [0u8; HEADER_READ];
    let n = read_full(file, 0, &mut b)?;
    let header = Header::parse(&b[..n])?;
    let len = file.metadata()?.len();
    if len < header.header_size {
        return Err(FormatError::Header { reason: "the file is shorter than its header" });
    }
    Ok((header.clone(), header.arena_end().min(len)))
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A few aligned blocks of the file, so that the many small reads of an entry and its data objects
/// (often near each other, or shared with the entries before) cost few system calls.
#[derive(Default)]
struct Cache {
    blocks: Vec<Block>,
    clock: u64,
}

struct Block {
    start: u64,
    data: Vec<u8>,
    used: u64,
}

impl Cache {
    fn clear(&mut self) {
        self.blocks.clear();
    }

    fn read(&mut self, file: &File, end: u64, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let start = offset - offset % BLOCK;
        let len = out.len() as u64;
        if offset + len > start + BLOCK {
            // Spans blocks: read directly.
            let n = read_full(file, offset, out)?;
            if n < out.len() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            return Ok(());
        }
        self.clock += 1;
        let i = match self.blocks.iter().position(|b| b.start == start) {
            Some(i) => i,
            None => {
                let want = BLOCK.min(end.saturating_sub(start)) as usize;
                let i = if self.blocks.len() < BLOCKS {
                    self.blocks.push(Block { start, data: Vec::new(), used: 0 });
                    self.blocks.len() - 1
                } else {
                    let (i, _) = self.blocks.iter().enumerate().min_by_key(|(_, b)| b.used).expect("blocks exist");
                    i
                };
                let b = &mut self.blocks[i];
                b.start = start;
                b.data.resize(want, 0);
                let n = match read_full(file, start, &mut b.data) {
                    Ok(n) => n,
                    Err(e) => {
                        self.blocks.swap_remove(i);
                        return Err(e);
                    }
                };
                b.data.truncate(n);
                i
            }
        };
        let b = &mut self.blocks[i];
        b.used = self.clock;
        let from = (offset - start) as usize;
        match b.data.get(from..from + out.len()) {
            Some(s) => {
                out.copy_from_slice(s);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn id128(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    a
}

/// 32 lowercase hex digits, as journald prints ids (`_BOOT_ID`, `--header`'s File ID).
pub fn hex_id(id: &[u8; 16]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(32);
    for b in id {
        let _ = write!(s, "{b:02x}");
    }
    s
}
