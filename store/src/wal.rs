//! The write-ahead log: numbered segment files of CRC-framed records, written by one thread that groups
//! concurrent appends into one write and one `fdatasync` (group commit).
//!
//! Frame: `u32le payload length | u32le crc32(seq ‖ payload) | u64le seq | payload`. A segment is named
//! after the sequence number of its first record (`<seq:020>.wal`) and is never appended to after a
//! restart, so every segment but the newest is immutable.
//!
//! The durability contract: an append's future resolves `Ok` only after its frame is written and synced,
//! and after its `on_durable` callback ran, in sequence order. The engine uses the callback to put the
//! batch into the head, so the head always holds a prefix of the log and a flush can name the exact
//! sequence number up to which the log is persisted elsewhere.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics::StoreMetrics;

const FRAME_HEADER: usize = 16;

/// Called on the WAL thread once a record is durable, with its sequence number.
pub(crate) type OnDurable = Box<dyn FnOnce(u64) + Send>;
/// Called on the WAL thread at a rotation, with the last sequence number written before it.
pub(crate) type OnRotate = Box<dyn FnOnce(u64) + Send>;

enum Msg {
    Append { payload: Vec<u8>, on_durable: OnDurable, reply: oneshot::Sender<Result<u64>> },
    Rotate { on_rotate: OnRotate, reply: oneshot::Sender<Result<u64>> },
}

/// The handle to the WAL thread.
pub(crate) struct Wal {
    tx: parking_lot::Mutex<Option<mpsc::Sender<Msg>>>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
}

/// A record read back at startup.
pub(crate) struct Replayed {
    pub(crate) seq: u64,
    pub(crate) payload: Vec<u8>,
}

impl Wal {
    /// Reads every record after `checkpoint` from `dir`, repairing a torn tail, then starts the writer on
    /// a fresh segment.
    pub(crate) fn open(
        dir: &Path,
        checkpoint: u64,
        segment_bytes: u64,
        metrics: Arc<StoreMetrics>,
        mut replay: impl FnMut(Replayed) -> Result<()>,
    ) -> Result<Wal> {
        fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        let mut last_seq = checkpoint;
        let segments = list_segments(dir)?;
        let n_segments = segments.len();
        for (i, (_, path)) in segments.into_iter().enumerate() {
            let is_last = i + 1 == n_segments;
            read_segment(&path, is_last, |seq, payload| {
                last_seq = last_seq.max(seq);
                if seq > checkpoint { replay(Replayed { seq, payload }) } else { Ok(()) }
            })?;
        }
        let next_seq = last_seq + 1;
        let segment = Segment::create(dir, next_seq)?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer { dir: dir.to_path_buf(), segment, next_seq, segment_bytes, metrics, failed: None };
        let thread = std::thread::Builder::new()
            .name("lumen-wal".to_string())
            .spawn(move || writer.run(rx))
            .map_err(Error::io("spawn wal thread for", dir))?;
        Ok(Wal {
            tx: parking_lot::Mutex::new(Some(tx)),
            thread: parking_lot::Mutex::new(Some(thread)),
            dir: dir.to_path_buf(),
        })
    }

    /// Appends a record and resolves once it is durable and `on_durable` has run.
    ///
    /// # Cancel safety
    /// Dropping the future does not withdraw the record: it may still be written and applied.
    pub(crate) async fn append(&self, payload: Vec<u8>, on_durable: OnDurable) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Append { payload, on_durable, reply })?;
        rx.await.map_err(|_| Error::WalClosed { reason: "the wal thread stopped".to_string() })?
    }

    /// Starts a new segment; `on_rotate` runs on the WAL thread between the last record of the old
    /// segment and the first of the new one. Resolves with that last sequence number.
    pub(crate) async fn rotate(&self, on_rotate: OnRotate) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Rotate { on_rotate, reply })?;
        rx.await.map_err(|_| Error::WalClosed { reason: "the wal thread stopped".to_string() })?
    }

    fn send(&self, msg: Msg) -> Result<()> {
        let tx = self.tx.lock();
        let tx = tx.as_ref().ok_or_else(|| Error::WalClosed { reason: "the store is shutting down".to_string() })?;
        tx.send(msg).map_err(|_| Error::WalClosed { reason: "the wal thread stopped".to_string() })
    }

    /// Deletes the segments whose records are all at or below `checkpoint`.
    pub(crate) fn truncate(&self, checkpoint: u64) -> Result<usize> {
        let segments = list_segments(&self.dir)?;
        let mut removed = 0;
        for pair in segments.windows(2) {
            let (_, path) = &pair[0];
            let (next_first, _) = pair[1];
            if next_first.saturating_sub(1) <= checkpoint {
                fs::remove_file(path).map_err(Error::io("remove", path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Stops the writer after the records already sent; later appends fail.
    pub(crate) fn close(&self) {
        self.tx.lock().take();
        if let Some(thread) = self.thread.lock().take() {
            // The last handle to a store can be dropped by a callback running on the WAL thread itself
            // (a flush whose caller went away); that thread ends on its own once the channel is closed.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io("read", dir))? {
        let entry = entry.map_err(Error::io("read", dir))?;
        let name = entry.file_name();
        let Some(seq) = name.to_str().and_then(|n| n.strip_suffix(".wal")).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Reads a segment's frames. A torn or corrupt tail of the newest segment is what `kill -9` during a write
/// leaves: it was never acknowledged, so it is cut off. Damage inside an older segment is data loss and
/// is reported as an error.
fn read_segment(path: &Path, is_last: bool, mut f: impl FnMut(u64, Vec<u8>) -> Result<()>) -> Result<()> {
    let mut data = Vec::new();
    File::open(path).and_then(|mut file| file.read_to_end(&mut data)).map_err(Error::io("read", path))?;
    let mut pos = 0;
    while pos < data.len() {
        let bad = |reason: &str| reason.to_string();
        let frame = (|| {
            let header = data.get(pos..pos + FRAME_HEADER).ok_or_else(|| bad("truncated frame header"))?;
            let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
            let crc = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default());
            let seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
            let payload =
                data.get(pos + FRAME_HEADER..pos + FRAME_HEADER + len).ok_or_else(|| bad("truncated frame payload"))?;
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&header[8..16]);
            hasher.update(payload);
            if hasher.finalize() != crc {
                return Err(bad("checksum mismatch"));
            }
            Ok((seq, payload.to_vec(), FRAME_HEADER + len))
        })();
        match frame {
            Ok((seq, payload, size)) => {
                f(seq, payload)?;
                pos += size;
            }
            Err(reason) if is_last => {
                tracing::warn!(segment = %path.display(), offset = pos, %reason, "cutting torn tail of wal segment");
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|file| {
                        file.set_len(pos as u64)?;
                        file.sync_all()
                    })
                    .map_err(Error::io("truncate", path))?;
                return Ok(());
            }
            Err(reason) => {
                return Err(Error::Corrupt {
                    what: "wal segment",
                    path: path.to_path_buf(),
                    reason: format!("{reason} at offset {pos}"),
                });
            }
        }
    }
    Ok(())
}

struct Segment {
    file: File,
    path: PathBuf,
    bytes: u64,
}

impl Segment {
    fn create(dir: &Path, first_seq: u64) -> Result<Segment> {
        let path = dir.join(format!("{first_seq:020}.wal"));
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(Error::io("create", &path))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        // The new name must be durable before anything in it is acknowledged.
        File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("sync", dir))?;
        Ok(Segment { file, path, bytes })
    }
}

struct Writer {
    dir: PathBuf,
    segment: Segment,
    next_seq: u64,
    segment_bytes: u64,
    metrics: Arc<StoreMetrics>,
    /// After an I/O error the log refuses all writes: later records could not be ordered after a
    /// frame whose state on disk is unknown.
    failed: Option<String>,
}

struct Pending {
    seq: u64,
    on_durable: OnDurable,
    reply: oneshot::Sender<Result<u64>>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut group: Vec<Pending> = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut msgs = vec![first];
            while msgs.len() < 4096 {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            for msg in msgs {
                match msg {
                    Msg::Append { payload, on_durable, reply } => {
                        if let Some(reason) = &self.failed {
                            let _ = reply.send(Err(Error::WalClosed { reason: reason.clone() }));
                            continue;
                        }
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        frame(&mut buf, seq, &payload);
                        group.push(Pending { seq, on_durable, reply });
                    }
                    Msg::Rotate { on_rotate, reply } => {
                        self.commit(&mut buf, &mut group);
                        let res = match &self.failed {
                            Some(reason) => Err(Error::WalClosed { reason: reason.clone() }),
                            None => self.rotate().map(|()| {
                                let last = self.next_seq - 1;
                                on_rotate(last);
                                last
                            }),
                        };
                        let _ = reply.send(res);
                    }
                }
            }
            self.commit(&mut buf, &mut group);
            if self.failed.is_none()
                && self.segment.bytes >= self.segment_bytes
                && let Err(error) = self.rotate()
            {
                self.fail(error.to_string());
            }
        }
    }

    /// Writes and syncs the group, then applies and acknowledges it in order.
    fn commit(&mut self, buf: &mut Vec<u8>, group: &mut Vec<Pending>) {
        if group.is_empty() {
            return;
        }
        let started = Instant::now();
        let res = self.segment.file.write_all(buf).and_then(|()| self.segment.file.sync_data());
        self.metrics.wal_fsyncs.inc();
        self.metrics.wal_fsync_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.wal_bytes.inc_by(buf.len() as u64);
        self.metrics.wal_records.inc_by(group.len() as u64);
        self.segment.bytes += buf.len() as u64;
        buf.clear();
        match res {
            Ok(()) => {
                for p in group.drain(..) {
                    (p.on_durable)(p.seq);
                    let _ = p.reply.send(Ok(p.seq));
                }
            }
            Err(source) => {
                let reason = format!("write {}: {source}", self.segment.path.display());
                tracing::error!(%reason, records = group.len(), "wal write failed; refusing further writes");
                self.fail(reason.clone());
                for p in group.drain(..) {
                    let _ = p.reply.send(Err(Error::WalClosed { reason: reason.clone() }));
                }
            }
        }
    }

    fn rotate(&mut self) -> Result<()> {
        self.segment = Segment::create(&self.dir, self.next_seq)?;
        Ok(())
    }

    fn fail(&mut self, reason: String) {
        self.failed = Some(reason);
    }
}

fn frame(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&hasher.finalize().to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn metrics() -> Arc<StoreMetrics> {
        StoreMetrics::register(&mut prometheus_client::registry::Registry::default())
    }

    #[tokio::test]
    async fn appends_replay_after_reopen_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 0, 1 << 20, metrics(), |_| Ok(())).unwrap();
        let applied = Arc::new(Mutex::new(Vec::new()));
        for i in 0..5u8 {
            let applied = applied.clone();
            let seq = wal.append(vec![i; 10], Box::new(move |seq| applied.lock().unwrap().push(seq))).await.unwrap();
            assert_eq!(seq, u64::from(i) + 1);
        }
        assert_eq!(*applied.lock().unwrap(), vec![1, 2, 3, 4, 5]);
        wal.close();
        drop(wal);

        // A torn frame at the end of the newest segment: half a header.
        let (_, newest) = list_segments(dir.path()).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&newest).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();

        let mut seen = Vec::new();
        let wal = Wal::open(dir.path(), 2, 1 << 20, metrics(), |r| {
            seen.push((r.seq, r.payload[0]));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(3, 2), (4, 3), (5, 4)]);
        assert_eq!(wal.append(vec![9], Box::new(|_| {})).await.unwrap(), 6);
        // Every segment but the newest is wholly below 6 and goes.
        assert_eq!(wal.truncate(6).unwrap(), 1);
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }
}
