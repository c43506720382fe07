//! The disk buffer: batches waiting for the server's acknowledgement, in `<data_dir>/buffer/`.
//!
//! Every batch the agent cuts (a compressed Loki push or remote-write body) is appended here and fsynced
//! before it is sent, with a sequence number and the file positions its lines reach. The shipper sends the
//! oldest batch, and on the server's acknowledgement the checkpoints take its positions and the batch
//! leaves the buffer. So while the server is down the agent reads on into the buffer, up to its size
//! bound, and then stops reading: the files on the node hold the rest. After a crash, the batches still
//! here are sent again (the duplicates of at-least-once come only from this window) and reading resumes
//! past the positions they reach.
//!
//! Layout: segment files `<first seq, 20 digits>.buf` of frames `[u32 length][u32 crc32][body]`; the body
//! is `seq u64, kind u8, position count u32, positions, payload`. A frame torn by a crash fails its CRC
//! and is cut off with everything after it.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

const SEGMENT_MAX: u64 = 32 * 1024 * 1024;
const FRAME_HEADER: usize = 8;
/// A frame longer than this is corrupt (batches are a few MiB at most).
const FRAME_MAX: usize = 512 * 1024 * 1024;

/// What a batch holds, and so where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Loki push body (protobuf, snappy).
    Logs = 1,
    /// A remote-write body (protobuf, snappy).
    Metrics = 2,
}

/// How far a batch reaches into one file: everything before `offset` is in this batch or an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub fingerprint: u64,
    pub offset: u64,
    pub container_dir: PathBuf,
    pub path: PathBuf,
}

/// A batch in the buffer, without its payload.
#[derive(Debug, Clone)]
pub struct Frame {
    pub seq: u64,
    pub kind: Kind,
    pub positions: Vec<Position>,
    segment: u64,
    payload_at: u64,
    payload_len: usize,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    size: u64,
    last_seq: u64,
}

struct Inner {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    writer: Option<File>,
    pending: VecDeque<Frame>,
    next_seq: u64,
    /// The sequence of the first frame this process appended: frames below it were left by an earlier
    /// run, which may have sent them.
    first_new_seq: u64,
    bytes: u64,
}

/// The buffer; shared by the reader thread (appends), the scrapers (appends) and the shipper (reads, acks).
pub struct DiskBuffer {
    inner: Mutex<Inner>,
    space: Condvar,
    ready: tokio::sync::Notify,
    max_bytes: u64,
    segment_max: u64,
}

/// What [`DiskBuffer::open`] found.
pub struct Recovered {
    /// Frames not yet acknowledged (to send again).
    pub frames: usize,
    /// The furthest position each file's buffered batches reach: reading resumes there.
    pub positions: HashMap<u64, Position>,
    /// Bytes cut from a torn segment tail.
    pub torn_bytes: u64,
}

/// The buffer's files could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("disk buffer {path}: {source}")]
pub struct BufferError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> BufferError + '_ {
    move |source| BufferError { path: path.to_path_buf(), source }
}

impl DiskBuffer {
    /// Opens the buffer in `dir`, dropping frames up to `acked_seq` (already delivered) and cutting a torn
    /// tail.
    ///
    /// # Errors
    /// The directory or a segment cannot be read or written.
    pub fn open(dir: &Path, max_bytes: u64, acked_seq: u64) -> Result<(DiskBuffer, Recovered), BufferError> {
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let mut paths: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(err(dir))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name();
                let seq = name.to_str()?.strip_suffix(".buf")?.parse().ok()?;
                Some((seq, e.path()))
            })
            .collect();
        paths.sort();
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segments: VecDeque::new(),
            writer: None,
            pending: VecDeque::new(),
            next_seq: acked_seq + 1,
            first_new_seq: 0,
            bytes: 0,
        };
        let mut recovered = Recovered { frames: 0, positions: HashMap::new(), torn_bytes: 0 };
        let mut torn = false;
        for (first_seq, path) in paths {
            if torn {
                // Frames after a torn one cannot be trusted to follow in sequence.
                std::fs::remove_file(&path).map_err(err(&path))?;
                continue;
            }
            let mut data = Vec::new();
            File::open(&path).and_then(|mut f| f.read_to_end(&mut data)).map_err(err(&path))?;
            let mut at = 0usize;
            let mut last_seq = first_seq.saturating_sub(1);
            while at < data.len() {
                match parse_frame(&data[at..], first_seq, at as u64) {
                    Some((frame, len)) => {
                        last_seq = frame.seq;
                        inner.next_seq = inner.next_seq.max(frame.seq + 1);
                        if frame.seq > acked_seq {
                            for p in &frame.positions {
                                let e = recovered.positions.entry(p.fingerprint).or_insert_with(|| p.clone());
                                if p.offset >= e.offset {
                                    *e = p.clone();
                                }
                            }
                            inner.pending.push_back(frame);
                        }
                        at += len;
                    }
                    None => {
                        recovered.torn_bytes = (data.len() - at) as u64;
                        tracing::warn!(segment = %path.display(), bytes = recovered.torn_bytes,
                            "cutting a torn frame off the disk buffer");
                        let f = OpenOptions::new().write(true).open(&path).map_err(err(&path))?;
                        f.set_len(at as u64).and_then(|()| f.sync_all()).map_err(err(&path))?;
                        torn = true;
                        break;
                    }
                }
            }
            inner.segments.push_back(Segment { first_seq, path, size: at as u64, last_seq });
            inner.bytes += at as u64;
        }
        recovered.frames = inner.pending.len();
        inner.first_new_seq = inner.next_seq;
        let buffer = DiskBuffer {
            inner: Mutex::new(inner),
            space: Condvar::new(),
            ready: tokio::sync::Notify::new(),
            max_bytes,
            segment_max: SEGMENT_MAX.min((max_bytes / 4).max(64 * 1024)),
        };
        buffer.inner.lock().drop_acked_segments(acked_seq, buffer.segment_max / 8)?;
        Ok((buffer, recovered))
    }

    /// Appends a batch and fsyncs it; returns its sequence number. Appends even past the size bound (the
    /// reader checks [`DiskBuffer::has_space`] before cutting batches, and scrapes are small).
    ///
    /// # Errors
    /// Writing or syncing failed; the batch is not in the buffer.
    pub fn append(&self, kind: Kind, positions: Vec<Position>, payload: &[u8]) -> Result<u64, BufferError> {
        let mut inner = self.inner.lock();
        let seq = inner.next_seq;
        let mut body = Vec::with_capacity(payload.len() + 64 + positions.len() * 64);
        body.extend_from_slice(&seq.to_le_bytes());
        body.push(kind as u8);
        body.extend_from_slice(&(positions.len() as u32).to_le_bytes());
        for p in &positions {
            body.extend_from_slice(&p.fingerprint.to_le_bytes());
            body.extend_from_slice(&p.offset.to_le_bytes());
            put_path(&mut body, &p.container_dir);
            put_path(&mut body, &p.path);
        }
        let payload_in_body = body.len();
        body.extend_from_slice(payload);
        let needs_new = inner.writer.is_none() || inner.segments.back().is_none_or(|s| s.size >= self.segment_max);
        if needs_new {
            let path = inner.dir.join(format!("{seq:020}.buf"));
            let f = OpenOptions::new().create(true).append(true).open(&path).map_err(err(&path))?;
            File::open(&inner.dir).and_then(|d| d.sync_all()).map_err(err(&path))?;
            inner.writer = Some(f);
            inner.segments.push_back(Segment { first_seq: seq, path, size: 0, last_seq: seq });
        }
        let mut frame = Vec::with_capacity(FRAME_HEADER + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        let seg = inner.segments.back().expect("a segment was just ensured");
        let (seg_first, seg_size, seg_path) = (seg.first_seq, seg.size, seg.path.clone());
        let writer = inner.writer.as_mut().expect("a writer was just ensured");
        if let Err(e) = writer.write_all(&frame).and_then(|()| writer.sync_data()) {
            // A partial write is cut off at the next open; this process writes on in a new segment.
            inner.writer = None;
            return Err(err(&seg_path)(e));
        }
        let seg = inner.segments.back_mut().expect("a segment was just ensured");
        seg.size += frame.len() as u64;
        seg.last_seq = seq;
        inner.bytes += frame.len() as u64;
        inner.next_seq = seq + 1;
        inner.pending.push_back(Frame {
            seq,
            kind,
            positions,
            segment: seg_first,
            payload_at: seg_size + (FRAME_HEADER + payload_in_body) as u64,
            payload_len: payload.len(),
        });
        drop(inner);
        self.ready.notify_one();
        Ok(seq)
    }

    /// Whether the buffer is under its size bound.
    pub fn has_space(&self) -> bool {
        self.inner.lock().bytes < self.max_bytes
    }

    /// Waits up to `timeout` for the buffer to be under its size bound; returns whether it is.
    pub fn wait_for_space(&self, timeout: Duration) -> bool {
        let mut inner = self.inner.lock();
        if inner.bytes < self.max_bytes {
            return true;
        }
        self.space.wait_for(&mut inner, timeout);
        inner.bytes < self.max_bytes
    }

    /// Bytes the buffer takes on disk.
    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// Whether frame `seq` was left in the buffer by an earlier run of the agent, which may have sent it
    /// before it stopped.
    pub fn from_earlier_run(&self, seq: u64) -> bool {
        seq < self.inner.lock().first_new_seq
    }

    /// Batches not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.inner.lock().pending.len()
    }

    /// The oldest unacknowledged batch, waiting for one to arrive.
    pub async fn next(&self) -> Frame {
        loop {
            let notified = self.ready.notified();
            if let Some(f) = self.inner.lock().pending.front().cloned() {
                return f;
            }
            notified.await;
        }
    }

    /// Every unacknowledged batch, oldest first.
    #[cfg(test)]
    pub fn pending_frames(&self) -> Vec<Frame> {
        self.inner.lock().pending.iter().cloned().collect()
    }

    /// The oldest unacknowledged batch, if any.
    pub fn front(&self) -> Option<Frame> {
        self.inner.lock().pending.front().cloned()
    }

    /// Reads a batch's payload back from its segment.
    ///
    /// # Errors
    /// The segment cannot be read.
    pub fn payload(&self, frame: &Frame) -> Result<Vec<u8>, BufferError> {
        let path = {
            let inner = self.inner.lock();
            inner.segments.iter().find(|s| s.first_seq == frame.segment).map(|s| s.path.clone())
        };
        let Some(path) = path else {
            return Err(BufferError {
                path: PathBuf::from(format!("segment {}", frame.segment)),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "segment already deleted"),
            });
        };
        let mut buf = vec![0u8; frame.payload_len];
        File::open(&path).and_then(|f| f.read_exact_at(&mut buf, frame.payload_at)).map_err(err(&path))?;
        Ok(buf)
    }

    /// Removes the acknowledged batch `seq` (the oldest) and deletes segments holding only acknowledged
    /// batches. Call after the checkpoints holding its positions are saved.
    ///
    /// # Errors
    /// A segment could not be deleted.
    pub fn ack(&self, seq: u64) -> Result<(), BufferError> {
        let mut inner = self.inner.lock();
        while inner.pending.front().is_some_and(|f| f.seq <= seq) {
            inner.pending.pop_front();
        }
        inner.drop_acked_segments(seq, self.segment_max / 8)?;
        drop(inner);
        self.space.notify_all();
        Ok(())
    }
}

impl Inner {
    fn drop_acked_segments(&mut self, acked_seq: u64, keep_active_below: u64) -> Result<(), BufferError> {
        let oldest_pending = self.pending.front().map_or(u64::MAX, |f| f.seq);
        while let Some(seg) = self.segments.front() {
            let is_active = self.segments.len() == 1 && self.writer.is_some();
            let done = seg.last_seq <= acked_seq && seg.last_seq < oldest_pending;
            if !done || (is_active && seg.size < keep_active_below) {
                // The active segment is kept while small: deleting and recreating a file per batch costs
                // two directory fsyncs.
                break;
            }
            let seg = self.segments.pop_front().expect("front exists");
            if self.segments.is_empty() {
                self.writer = None;
            }
            std::fs::remove_file(&seg.path).map_err(err(&seg.path))?;
            self.bytes -= seg.size;
        }
        Ok(())
    }
}

fn put_path(out: &mut Vec<u8>, p: &Path) {
    let s = p.as_os_str().as_encoded_bytes();
    let len = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&s[..len]);
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

fn take_u64(b: &mut &[u8]) -> Option<u64> {
    take(b, 8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

fn take_path(b: &mut &[u8]) -> Option<PathBuf> {
    let len = u16::from_le_bytes(take(b, 2)?.try_into().expect("2 bytes")) as usize;
    let raw = take(b, len)?;
    Some(PathBuf::from(String::from_utf8_lossy(raw).into_owned()))
}

/// Parses the frame at the start of `data` (at `at` in segment `segment`); `None` if torn or corrupt.
fn parse_frame(data: &[u8], segment: u64, at: u64) -> Option<(Frame, usize)> {
    let mut b = data;
    let len = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?);
    if len > FRAME_MAX {
        return None;
    }
    let body = take(&mut b, len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let mut r = body;
    let seq = take_u64(&mut r)?;
    let kind = match take(&mut r, 1)?[0] {
        1 => Kind::Logs,
        2 => Kind::Metrics,
        _ => return None,
    };
    let n = u32::from_le_bytes(take(&mut r, 4)?.try_into().ok()?) as usize;
    let mut positions = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let fingerprint = take_u64(&mut r)?;
        let offset = take_u64(&mut r)?;
        let container_dir = take_path(&mut r)?;
        let path = take_path(&mut r)?;
        positions.push(Position { fingerprint, offset, container_dir, path });
    }
    let payload_len = r.len();
    let payload_at = at + (FRAME_HEADER + len - payload_len) as u64;
    Some((Frame { seq, kind, positions, segment, payload_at, payload_len }, FRAME_HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(fp: u64, offset: u64) -> Position {
        Position { fingerprint: fp, offset, container_dir: "/d".into(), path: "/d/0.log".into() }
    }

    #[tokio::test]
    async fn frames_come_back_in_order_and_survive_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (buf, rec) = DiskBuffer::open(tmp.path(), 1 << 30, 0).unwrap();
        assert_eq!(rec.frames, 0);
        assert_eq!(buf.append(Kind::Logs, vec![pos(1, 10)], b"one").unwrap(), 1);
        assert_eq!(buf.append(Kind::Metrics, vec![], b"two").unwrap(), 2);
        assert_eq!(buf.append(Kind::Logs, vec![pos(1, 30), pos(2, 5)], b"three").unwrap(), 3);
        let f = buf.next().await;
        assert_eq!((f.seq, f.kind), (1, Kind::Logs));
        assert_eq!(buf.payload(&f).unwrap(), b"one");
        buf.ack(1).unwrap();
        drop(buf);

        // Reopened with seq 1 acknowledged: 2 and 3 are sent again, reading resumes past 3's positions.
        let (buf, rec) = DiskBuffer::open(tmp.path(), 1 << 30, 1).unwrap();
        assert_eq!(rec.frames, 2);
        assert_eq!(rec.positions[&1].offset, 30);
        assert_eq!(rec.positions[&2].offset, 5);
        let f = buf.next().await;
        assert_eq!((f.seq, f.kind), (2, Kind::Metrics));
        assert_eq!(buf.payload(&f).unwrap(), b"two");
        buf.ack(2).unwrap();
        let f = buf.next().await;
        assert_eq!(buf.payload(&f).unwrap(), b"three");
        assert_eq!(f.positions, vec![pos(1, 30), pos(2, 5)]);
        // New frames continue the sequence.
        assert_eq!(buf.append(Kind::Logs, vec![], b"four").unwrap(), 4);
        // Frames the earlier run left may have been sent by it; this run's own have not.
        assert!(buf.from_earlier_run(2) && buf.from_earlier_run(3));
        assert!(!buf.from_earlier_run(4));
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let (buf, _) = DiskBuffer::open(tmp.path(), 1 << 30, 0).unwrap();
        buf.append(Kind::Logs, vec![pos(1, 10)], b"kept").unwrap();
        buf.append(Kind::Logs, vec![pos(1, 20)], b"torn").unwrap();
        drop(buf);
        let seg = tmp.path().join(format!("{:020}.buf", 1));
        let len = std::fs::metadata(&seg).unwrap().len();
        OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 3).unwrap();
        let (buf, rec) = DiskBuffer::open(tmp.path(), 1 << 30, 0).unwrap();
        assert_eq!(rec.frames, 1);
        assert!(rec.torn_bytes > 0);
        assert_eq!(rec.positions[&1].offset, 10);
        let f = buf.front().unwrap();
        assert_eq!(buf.payload(&f).unwrap(), b"kept");
        // The sequence goes on after the last good frame.
        assert_eq!(buf.append(Kind::Logs, vec![], b"next").unwrap(), 2);
    }

    #[test]
    fn the_size_bound_is_reported_and_acks_free_space() {
        let tmp = tempfile::tempdir().unwrap();
        let (buf, _) = DiskBuffer::open(tmp.path(), 64 * 1024, 0).unwrap();
        let big = vec![7u8; 40 * 1024];
        buf.append(Kind::Logs, vec![], &big).unwrap();
        assert!(buf.has_space());
        buf.append(Kind::Logs, vec![], &big).unwrap();
        assert!(!buf.has_space());
        assert!(!buf.wait_for_space(Duration::from_millis(10)));
        buf.ack(2).unwrap();
        assert!(buf.has_space(), "{} bytes left after acking everything", buf.bytes());
        assert_eq!(buf.pending(), 0);
    }
}
