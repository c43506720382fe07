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
//!
//! Replay ([`replay_segments`]) cuts a torn tail of the newest segment, and replays the intact records
//! after damage anywhere else, reporting the records lost there as a gap.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics::StoreMetrics;
use crate::quarantine::Quarantine;

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
    /// The segment it was read from, for messages.
    pub(crate) segment: PathBuf,
}

impl Wal {
    /// Reads every record after `checkpoint` from `dir` (see [`replay_segments`]), then starts the writer
    /// on a fresh segment.
    pub(crate) fn open(
        dir: &Path,
        checkpoint: u64,
        segment_bytes: u64,
        metrics: Arc<StoreMetrics>,
        quarantine: &Quarantine,
        replay: impl FnMut(Replayed) -> Result<()>,
    ) -> Result<Wal> {
        fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        let last_seq = replay_segments(dir, checkpoint, quarantine, replay)?;
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

/// True when the oldest segment in `dir` starts after `checkpoint + 1`: records between the checkpoint
/// and it are gone, which a manifest older than the log (restored from a backup) shows as.
pub(crate) fn starts_after(dir: &Path, checkpoint: u64) -> bool {
    list_segments(dir).ok().and_then(|s| s.first().map(|(first, _)| *first)).is_some_and(|first| first > checkpoint + 1)
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

/// Damaged bytes met by the replay whose cost is not known yet: that is known at the next intact record
/// (or segment start), whose sequence number says how many records the damage held.
struct Damage {
    segment: PathBuf,
    offset: usize,
    bytes: usize,
}

/// Reads the records of every segment in order and calls `replay` with those after `checkpoint`.
/// Returns the highest sequence number read (at least `checkpoint`).
///
/// Damage is told apart by where it lies:
/// - At the end of the newest segment, with no intact record after it: a torn tail, what `kill -9`
///   during a write leaves. Those records were never acknowledged, so the tail is cut off.
/// - Anywhere else: acknowledged records are lost there, but the records after it are intact and are
///   replayed. The replay finds the next intact frame (its checksum holds and its sequence number fits),
///   and the sequence numbers around the damage (and segment names, which are the sequence number of
///   their first record) say how many records were lost. Lost records past the checkpoint are a gap:
///   logged at ERROR, counted in `wal_gaps`/`wal_lost_records`, and the damaged segment copied into the
///   quarantine (it stays in use until a flush truncates it).
pub(crate) fn replay_segments(
    dir: &Path,
    checkpoint: u64,
    quarantine: &Quarantine,
    mut replay: impl FnMut(Replayed) -> Result<()>,
) -> Result<u64> {
    let mut last_seq = 0u64;
    let mut damage: Option<Damage> = None;
    let segments = list_segments(dir)?;
    let n_segments = segments.len();
    for (i, (first_seq, path)) in segments.into_iter().enumerate() {
        let is_last = i + 1 == n_segments;
        // Every record before this segment had a lower number: a missing stretch shows here too.
        let expected = last_seq.max(checkpoint) + 1;
        if first_seq > expected {
            report_gap(quarantine, damage.take(), &path, 0, expected..first_seq, checkpoint);
            last_seq = first_seq - 1;
        }
        let mut data = Vec::new();
        File::open(&path).and_then(|mut file| file.read_to_end(&mut data)).map_err(Error::io("read", &path))?;
        let mut pos = 0;
        while pos < data.len() {
            if let Some((seq, len)) = frame_at(&data, pos, last_seq) {
                let expected = last_seq.max(checkpoint) + 1;
                if seq > expected {
                    report_gap(quarantine, damage.take(), &path, pos, expected..seq, checkpoint);
                } else if let Some(d) = damage.take() {
                    tracing::warn!(
                        segment = %d.segment.display(),
                        offset = d.offset,
                        bytes = d.bytes,
                        "damaged bytes in the write-ahead log held no record that is not in a part"
                    );
                }
                if seq > checkpoint {
                    let payload = data[pos + FRAME_HEADER..pos + FRAME_HEADER + len].to_vec();
                    replay(Replayed { seq, payload, segment: path.clone() })?;
                }
                last_seq = seq;
                pos += FRAME_HEADER + len;
                continue;
            }
            let base = last_seq.max(first_seq.saturating_sub(1));
            match next_frame(&data, pos, base) {
                Some(next) => {
                    damage.get_or_insert(Damage { segment: path.clone(), offset: pos, bytes: 0 }).bytes += next - pos;
                    pos = next;
                }
                None if is_last => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = pos,
                        bytes = data.len() - pos,
                        "cutting torn tail of wal segment (records never acknowledged)"
                    );
                    OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|file| {
                            file.set_len(pos as u64)?;
                            file.sync_all()
                        })
                        .map_err(Error::io("truncate", &path))?;
                    break;
                }
                None => {
                    damage.get_or_insert(Damage { segment: path.clone(), offset: pos, bytes: 0 }).bytes +=
                        data.len() - pos;
                    break;
                }
            }
        }
    }
    if let Some(d) = damage {
        // Damage followed by no record at all: the next segment's name would tell, but there is none.
        tracing::warn!(
            segment = %d.segment.display(),
            offset = d.offset,
            bytes = d.bytes,
            "damaged bytes at the end of an older wal segment, with no later record to tell what they held"
        );
    }
    Ok(last_seq.max(checkpoint))
}

/// The intact frame at `pos` whose sequence number is above `last_seq`: (seq, payload length).
fn frame_at(data: &[u8], pos: usize, last_seq: u64) -> Option<(u64, usize)> {
    let header = data.get(pos..pos + FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let seq = u64::from_le_bytes(header[8..16].try_into().ok()?);
    if seq <= last_seq {
        return None;
    }
    let payload = data.get(pos + FRAME_HEADER..(pos + FRAME_HEADER).checked_add(len)?)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[8..16]);
    hasher.update(payload);
    (hasher.finalize() == crc).then_some((seq, len))
}

/// The offset of the first intact frame after the damaged one at `pos`. Candidates are screened by their
/// sequence number before the checksum is computed: above `base` (the last record before the damage),
/// and at most one more than the records the damaged bytes could have held (each takes 16 bytes or more).
fn next_frame(data: &[u8], pos: usize, base: u64) -> Option<usize> {
    let mut q = pos + 1;
    while q + FRAME_HEADER <= data.len() {
        let seq = u64::from_le_bytes(data[q + 8..q + 16].try_into().unwrap_or_default());
        let most = base + 1 + ((q - pos) / FRAME_HEADER) as u64;
        if seq > base && seq <= most && frame_at(data, q, base).is_some() {
            return Some(q);
        }
        q += 1;
    }
    None
}

/// Reports records `lost` (sequence numbers) at `segment`/`offset`: an ERROR, the gap counters and a copy
/// of the damaged segment in the quarantine when records past the checkpoint are lost; a WARN otherwise.
fn report_gap(
    quarantine: &Quarantine,
    damage: Option<Damage>,
    segment: &Path,
    offset: usize,
    lost: std::ops::Range<u64>,
    checkpoint: u64,
) {
    let (segment, offset, bytes) = match &damage {
        Some(d) => (d.segment.as_path(), d.offset, d.bytes),
        None => (segment, offset, 0),
    };
    let lost_acked = lost.start.max(checkpoint + 1)..lost.end;
    if lost_acked.is_empty() {
        tracing::warn!(
            segment = %segment.display(),
            offset,
            bytes,
            first_seq = lost.start,
            last_seq = lost.end - 1,
            "damaged or missing records in the write-ahead log were already in parts"
        );
        return;
    }
    let n = lost_acked.end - lost_acked.start;
    let metrics = quarantine.metrics();
    metrics.wal_gaps.inc();
    metrics.wal_lost_records.inc_by(n);
    tracing::error!(
        segment = %segment.display(),
        offset,
        damaged_bytes = bytes,
        first_lost_seq = lost_acked.start,
        last_lost_seq = lost_acked.end - 1,
        lost_records = n,
        "acknowledged records of the write-ahead log are lost (damaged or missing); the intact records after them are replayed"
    );
    let kept = if damage.is_some() {
        quarantine.keep_copy(segment, "write-ahead-log segment with damaged records").map(|_| ())
    } else {
        let missing = segment.with_file_name(format!("{:020}.wal", lost_acked.start));
        quarantine
            .note_missing(
                &missing,
                &format!("write-ahead-log records {}..={} are missing", lost_acked.start, lost_acked.end - 1),
            )
            .map(|_| ())
    };
    if let Err(error) = kept {
        tracing::error!(%error, segment = %segment.display(), "cannot keep the damaged wal segment in the quarantine");
    }
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
    /// After an I/O error the log takes no record until [`Writer::recover`] has cut the segment back to
    /// its last synced frame: later records could not be ordered after a frame whose state on disk is
    /// unknown. Every later append tries that first, so the log resumes by itself once the disk can
    /// take writes again (space freed after ENOSPC).
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
                        if let Err(reason) = self.recover() {
                            let _ = reply.send(Err(Error::WalClosed { reason }));
                            continue;
                        }
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        frame(&mut buf, seq, &payload);
                        group.push(Pending { seq, on_durable, reply });
                    }
                    Msg::Rotate { on_rotate, reply } => {
                        self.commit(&mut buf, &mut group);
                        let res = match self.recover() {
                            Err(reason) => Err(Error::WalClosed { reason }),
                            Ok(()) => self.rotate().map(|()| {
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
        let written = buf.len() as u64;
        buf.clear();
        match res {
            Ok(()) => {
                self.metrics.wal_bytes.inc_by(written);
                self.metrics.wal_records.inc_by(group.len() as u64);
                self.segment.bytes += written;
                for p in group.drain(..) {
                    (p.on_durable)(p.seq);
                    let _ = p.reply.send(Ok(p.seq));
                }
            }
            Err(source) => {
                let reason = format!("write {}: {source}", self.segment.path.display());
                tracing::error!(%reason, records = group.len(), "wal write failed; the records are refused and the log recovers before the next one");
                // None of the group was acknowledged: its sequence numbers are given again after the cut.
                if let Some(first) = group.first() {
                    self.next_seq = first.seq;
                }
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

    /// After a failed write: cuts the segment back to its last synced frame (dropping whatever part of
    /// the failed group reached the file) and goes on in a new segment, named after the next sequence
    /// number, so that replay reads one unbroken run. Ok at once when nothing failed; the reason when the
    /// disk still refuses.
    fn recover(&mut self) -> Result<(), String> {
        let Some(reason) = self.failed.clone() else { return Ok(()) };
        let cut = self
            .segment
            .file
            .set_len(self.segment.bytes)
            .and_then(|()| self.segment.file.sync_all())
            .map_err(|e| format!("{reason}; cutting {} back failed too: {e}", self.segment.path.display()));
        cut?;
        self.rotate().map_err(|e| format!("{reason}; starting a new segment failed too: {e}"))?;
        tracing::warn!(segment = %self.segment.path.display(), next_seq = self.next_seq, "wal recovered after a failed write; accepting records again");
        self.failed = None;
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

    /// A data directory with its WAL in `wal/` and the quarantine beside it.
    struct Dirs {
        _tmp: tempfile::TempDir,
        data: PathBuf,
        wal: PathBuf,
        quarantine: Quarantine,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().to_path_buf();
        let quarantine = Quarantine::new(&data, metrics());
        Dirs { wal: data.join("wal"), data, _tmp: tmp, quarantine }
    }

    /// Writes records with payloads `[n; 10]`, starting a new segment before each record in `rotate_before`.
    async fn write(d: &Dirs, payloads: std::ops::Range<u8>, rotate_before: &[u8]) {
        let wal = Wal::open(&d.wal, 0, 1 << 20, metrics(), &d.quarantine, |_| Ok(())).unwrap();
        for i in payloads {
            if rotate_before.contains(&i) {
                wal.rotate(Box::new(|_| {})).await.unwrap();
            }
            wal.append(vec![i; 10], Box::new(|_| {})).await.unwrap();
        }
        wal.close();
    }

    /// Replays with `checkpoint`: the (seq, payload byte) pairs seen.
    fn replay(d: &Dirs, checkpoint: u64) -> (Vec<(u64, u8)>, Wal) {
        let mut seen = Vec::new();
        let wal = Wal::open(&d.wal, checkpoint, 1 << 20, metrics(), &d.quarantine, |r| {
            seen.push((r.seq, r.payload[0]));
            Ok(())
        })
        .unwrap();
        (seen, wal)
    }

    /// Flips a byte of the payload of the `k`th frame (from 0) of a segment; returns the frame's offset.
    fn damage(segment: &Path, k: usize, at: usize) -> usize {
        let mut bytes = fs::read(segment).unwrap();
        let mut pos = 0;
        for _ in 0..k {
            pos += FRAME_HEADER + u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        }
        bytes[pos + at] ^= 0x5a;
        fs::write(segment, bytes).unwrap();
        pos
    }

    fn segments(d: &Dirs) -> Vec<PathBuf> {
        list_segments(&d.wal).unwrap().into_iter().map(|(_, p)| p).collect()
    }

    fn gaps(q: &Quarantine) -> (u64, u64) {
        (q.metrics().wal_gaps.get(), q.metrics().wal_lost_records.get())
    }

    #[tokio::test]
    async fn appends_replay_after_reopen_and_torn_tails_are_cut() {
        let d = dirs();
        let wal = Wal::open(&d.wal, 0, 1 << 20, metrics(), &d.quarantine, |_| Ok(())).unwrap();
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
        let (_, newest) = list_segments(&d.wal).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&newest).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        let len = fs::metadata(&newest).unwrap().len();

        let (seen, wal) = replay(&d, 2);
        assert_eq!(seen, vec![(3, 2), (4, 3), (5, 4)]);
        assert_eq!(fs::metadata(&newest).unwrap().len(), len - 3, "the torn tail is cut");
        assert_eq!(gaps(&d.quarantine), (0, 0), "a torn tail is no gap");
        assert_eq!(wal.append(vec![9], Box::new(|_| {})).await.unwrap(), 6);
        // Every segment but the newest is wholly below 6 and goes.
        assert_eq!(wal.truncate(6).unwrap(), 1);
        assert_eq!(list_segments(&d.wal).unwrap().len(), 1);
    }

    /// Issue 17 §5: a damaged record in the middle of the newest segment was cut off as a torn tail with
    /// every intact record after it.
    #[tokio::test]
    async fn a_damaged_record_in_the_middle_is_a_gap_and_the_records_after_it_are_replayed() {
        let d = dirs();
        write(&d, 1..7, &[]).await;
        let segment = segments(&d)[0].clone();
        let len = fs::metadata(&segment).unwrap().len();
        damage(&segment, 2, FRAME_HEADER + 4); // the payload of record 3

        let (seen, wal) = replay(&d, 0);
        assert_eq!(seen, vec![(1, 1), (2, 2), (4, 4), (5, 5), (6, 6)]);
        assert_eq!(gaps(&d.quarantine), (1, 1));
        assert_eq!(fs::metadata(&segment).unwrap().len(), len, "nothing is cut");
        let copy = d.data.join("quarantine/wal").join(segment.file_name().unwrap());
        assert_eq!(fs::read(&copy).unwrap(), fs::read(&segment).unwrap(), "a copy of the damaged segment is kept");
        assert_eq!(wal.append(vec![7], Box::new(|_| {})).await.unwrap(), 7, "numbering goes on after the last record");
        wal.close();
        drop(wal);

        // Until a flush truncates it, every start reports the gap again, but keeps one copy.
        let (seen, _wal) = replay(&d, 0);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 4, 5, 6, 7]);
        assert_eq!(gaps(&d.quarantine), (2, 2));
        assert_eq!(fs::read_dir(d.data.join("quarantine/wal")).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn a_damaged_length_does_not_hide_the_records_after_it() {
        let d = dirs();
        write(&d, 1..6, &[]).await;
        let segment = segments(&d)[0].clone();
        // The high byte of record 2's length: the frame now claims to run far past the end of the file.
        damage(&segment, 1, 3);
        let (seen, _wal) = replay(&d, 0);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 3, 4, 5]);
        assert_eq!(gaps(&d.quarantine), (1, 1));
    }

    #[tokio::test]
    async fn damage_at_the_end_of_an_older_segment_is_a_gap_told_by_the_next_segment() {
        let d = dirs();
        write(&d, 1..6, &[4]).await; // records 1..=3 | 4, 5
        let older = segments(&d)[0].clone();
        damage(&older, 2, FRAME_HEADER + 1); // record 3, the last of its segment
        let (seen, _wal) = replay(&d, 0);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 4, 5]);
        assert_eq!(gaps(&d.quarantine), (1, 1));
    }

    #[tokio::test]
    async fn damage_at_or_below_the_checkpoint_is_no_gap() {
        let d = dirs();
        write(&d, 1..6, &[]).await;
        damage(&segments(&d)[0], 1, FRAME_HEADER + 1); // record 2, already in a part
        let (seen, _wal) = replay(&d, 3);
        assert_eq!(seen, vec![(4, 4), (5, 5)]);
        assert_eq!(gaps(&d.quarantine), (0, 0));
        assert!(!d.data.join("quarantine").exists());
    }

    #[tokio::test]
    async fn a_missing_segment_is_a_gap() {
        let d = dirs();
        write(&d, 1..7, &[3, 5]).await; // 1, 2 | 3, 4 | 5, 6
        let middle = segments(&d)[1].clone();
        fs::remove_file(&middle).unwrap();
        let (seen, _wal) = replay(&d, 0);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 5, 6]);
        assert_eq!(gaps(&d.quarantine), (1, 2));
        let note =
            d.data.join("quarantine/wal").join(format!("{}.missing", middle.file_name().unwrap().to_string_lossy()));
        assert!(note.exists(), "{}", note.display());
    }

    #[test]
    fn a_log_older_than_the_checkpoint_is_told() {
        let d = dirs();
        fs::create_dir_all(&d.wal).unwrap();
        fs::write(d.wal.join(format!("{:020}.wal", 11)), b"").unwrap();
        assert!(!starts_after(&d.wal, 10));
        assert!(starts_after(&d.wal, 9), "records 10 was truncated, so the checkpoint must have passed it");
    }
}
