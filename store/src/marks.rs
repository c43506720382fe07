//! Delivery marks: which MQTT deliveries (session, packet identifier, content hash) the store holds, so that
//! a message redelivered after its acknowledgement was lost (a crash between the WAL commit and the PUBACK,
//! a cut connection) is recognised and not stored twice.
//!
//! Marks travel with their batch in the WAL record and are replayed with it; at a flush the whole table is
//! written to `delivery-marks.bin` before the manifest commits the new checkpoint, so marks of truncated
//! records survive too. A session keeps only its last `window` marks: a sender can have at most its
//! in-flight window of messages unacknowledged, so older deliveries can no longer come back.
//!
//! A mark may depend on samples written to the metric store at the same time (`needs`, the tag of that
//! metric record, see `MetricStore::append_tagged`): it only counts once that tag is durable.
//!
//! File layout: `b"LMK1" | u32le crc32 of the rest | varint n_sessions | n × (str session, varint window,
//! varint n_marks, n × (u16le pkid, u64le hash, varint needs epoch, varint needs n))`, marks oldest first.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::codec::{Reader, put_str, put_varint};
use crate::error::{Error, Result};
use crate::metric::SampleTag;

const FILE: &str = "delivery-marks.bin";
const MAGIC: &[u8; 4] = b"LMK1";
/// Sessions remembered at most; the least recently written is forgotten first.
const MAX_SESSIONS: usize = 50_000;
/// The largest window a session may ask for: the whole packet-identifier space.
const MAX_WINDOW: u32 = 65_536;

/// One stored delivery of an MQTT session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryMark {
    /// Names the MQTT session the message came over (its sender's client identity).
    pub session: Arc<str>,
    /// How many of this session's latest marks to keep (its in-flight window, at most 65,536).
    pub window: u32,
    /// The MQTT packet identifier.
    pub pkid: u16,
    /// A hash of the topic and payload, so that a reused packet identifier is not taken for a redelivery.
    pub hash: u64,
    /// The tag of the metric-store batch holding this delivery's samples, written at the same time;
    /// `SampleTag::NONE` when it has none. The mark stands for a stored delivery only once that tag is durable.
    pub needs: SampleTag,
}

#[derive(Default)]
struct Session {
    window: u32,
    /// pkid → (hash, needs, generation of the mark).
    by_pkid: HashMap<u16, (u64, SampleTag, u64)>,
    /// (pkid, generation), oldest first.
    order: VecDeque<(u16, u64)>,
    last_gen: u64,
}

/// The table of marks, by session.
#[derive(Default)]
pub(crate) struct Marks {
    sessions: HashMap<Arc<str>, Session>,
    generation: u64,
    /// The highest epoch of a `needs` ever inserted.
    max_epoch: u64,
}

impl Marks {
    pub(crate) fn insert(&mut self, mark: &DeliveryMark) {
        self.generation += 1;
        self.max_epoch = self.max_epoch.max(mark.needs.epoch);
        let generation = self.generation;
        if !self.sessions.contains_key(&mark.session) && self.sessions.len() >= MAX_SESSIONS {
            self.forget_oldest_session();
        }
        let s = self.sessions.entry(mark.session.clone()).or_default();
        s.window = mark.window.clamp(1, MAX_WINDOW);
        s.last_gen = generation;
        s.by_pkid.insert(mark.pkid, (mark.hash, mark.needs, generation));
        s.order.push_back((mark.pkid, generation));
        while s.order.len() > s.window as usize {
            if let Some((pkid, g)) = s.order.pop_front()
                && s.by_pkid.get(&pkid).is_some_and(|&(_, _, mg)| mg == g)
            {
                s.by_pkid.remove(&pkid);
            }
        }
    }

    fn forget_oldest_session(&mut self) {
        if let Some(oldest) = self.sessions.iter().min_by_key(|(_, s)| s.last_gen).map(|(k, _)| k.clone()) {
            self.sessions.remove(&oldest);
        }
    }

    /// The `needs` of this delivery's mark, if there is one.
    pub(crate) fn get(&self, session: &str, pkid: u16, hash: u64) -> Option<SampleTag> {
        let &(h, needs, _) = self.sessions.get(session)?.by_pkid.get(&pkid)?;
        (h == hash).then_some(needs)
    }

    pub(crate) fn max_epoch(&self) -> u64 {
        self.max_epoch
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.values().map(|s| s.by_pkid.len()).sum()
    }

    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(16 + self.len() * 12);
        put_varint(&mut body, self.sessions.len() as u64);
        let mut sessions: Vec<_> = self.sessions.iter().collect();
        sessions.sort_by_key(|(_, s)| s.last_gen);
        for (name, s) in sessions {
            put_str(&mut body, name);
            put_varint(&mut body, u64::from(s.window));
            let live: Vec<(u16, u64, SampleTag)> = s
                .order
                .iter()
                .filter_map(|&(p, g)| s.by_pkid.get(&p).filter(|&&(_, _, mg)| mg == g).map(|&(h, n, _)| (p, h, n)))
                .collect();
            put_varint(&mut body, live.len() as u64);
            for (p, h, n) in live {
                body.extend_from_slice(&p.to_le_bytes());
                body.extend_from_slice(&h.to_le_bytes());
                put_varint(&mut body, n.epoch);
                put_varint(&mut body, n.n);
            }
        }
        let mut out = Vec::with_capacity(body.len() + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn decode(buf: &[u8]) -> std::result::Result<Marks, String> {
        if buf.len() < 8 || &buf[..4] != MAGIC {
            return Err("not a delivery-marks file (bad magic)".to_string());
        }
        let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap_or_default());
        let body = &buf[8..];
        if crc32fast::hash(body) != crc {
            return Err("checksum mismatch".to_string());
        }
        let mut r = Reader { buf: body, pos: 0 };
        let mut marks = Marks::default();
        for _ in 0..r.len()? {
            let session: Arc<str> = Arc::from(r.str()?);
            let window = u32::try_from(r.varint()?).map_err(|_| "window out of range")?;
            for _ in 0..r.len()? {
                let pkid = u16::from_le_bytes(r.take(2)?.try_into().unwrap_or_default());
                let hash = u64::from_le_bytes(r.take(8)?.try_into().unwrap_or_default());
                let needs = SampleTag { epoch: r.varint()?, n: r.varint()? };
                marks.insert(&DeliveryMark { session: session.clone(), window, pkid, hash, needs });
            }
        }
        if r.pos != body.len() {
            return Err(format!("{} trailing bytes", body.len() - r.pos));
        }
        Ok(marks)
    }

    /// Loads `<dir>/delivery-marks.bin`; an empty table when there is none.
    pub(crate) fn load(dir: &Path) -> Result<Marks> {
        let path = dir.join(FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                Marks::decode(&bytes).map_err(|reason| Error::Corrupt { what: "delivery marks", path, reason })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Marks::default()),
            Err(e) => Err(Error::Io { op: "read", path, source: e }),
        }
    }

    /// Replaces `<dir>/delivery-marks.bin` atomically; nothing is written while there are no marks at all.
    pub(crate) fn store(&self, dir: &Path) -> Result<()> {
        let path = dir.join(FILE);
        if self.sessions.is_empty() && !path.exists() {
            return Ok(());
        }
        let tmp = dir.join(format!("{FILE}.tmp"));
        let mut f = File::create(&tmp).map_err(Error::io("create", &tmp))?;
        f.write_all(&self.encode()).and_then(|()| f.sync_all()).map_err(Error::io("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(Error::io("rename", &tmp))?;
        crate::manifest::sync_dir(dir)
    }
}

/// Encodes marks into a WAL record: `varint n × (str session, varint window, varint pkid, u64le hash,
/// varint needs epoch, varint needs n)`.
pub(crate) fn put_marks(out: &mut Vec<u8>, marks: &[DeliveryMark]) {
    put_varint(out, marks.len() as u64);
    for m in marks {
        put_str(out, &m.session);
        put_varint(out, u64::from(m.window));
        put_varint(out, u64::from(m.pkid));
        out.extend_from_slice(&m.hash.to_le_bytes());
        put_varint(out, m.needs.epoch);
        put_varint(out, m.needs.n);
    }
}

pub(crate) fn read_marks(r: &mut Reader<'_>) -> std::result::Result<Vec<DeliveryMark>, String> {
    let n = r.len()?;
    let mut out = Vec::with_capacity(n.min(65_536));
    let mut last: Option<Arc<str>> = None;
    for _ in 0..n {
        let name = r.str()?;
        let session = match &last {
            Some(s) if &**s == name => s.clone(),
            _ => {
                let s: Arc<str> = Arc::from(name);
                last = Some(s.clone());
                s
            }
        };
        let window = u32::try_from(r.varint()?).map_err(|_| "mark window out of range")?;
        let pkid = u16::try_from(r.varint()?).map_err(|_| "mark packet id out of range")?;
        let hash = u64::from_le_bytes(r.take(8)?.try_into().unwrap_or_default());
        let needs = SampleTag { epoch: r.varint()?, n: r.varint()? };
        out.push(DeliveryMark { session, window, pkid, hash, needs });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(session: &str, window: u32, pkid: u16, hash: u64) -> DeliveryMark {
        DeliveryMark {
            session: Arc::from(session),
            window,
            pkid,
            hash,
            needs: SampleTag { epoch: hash % 5, n: hash % 7 },
        }
    }

    fn has(m: &Marks, session: &str, pkid: u16, hash: u64) -> bool {
        m.get(session, pkid, hash).is_some()
    }

    #[test]
    fn a_session_keeps_its_latest_window_of_marks() {
        let mut m = Marks::default();
        for i in 0..10u16 {
            m.insert(&mark("a", 4, i, u64::from(i) * 7));
        }
        assert!(!has(&m, "a", 5, 35), "older than the window");
        for i in 6..10u16 {
            assert!(has(&m, "a", i, u64::from(i) * 7));
        }
        assert!(!has(&m, "a", 9, 1), "another hash under the same packet id is another message");
        assert!(!has(&m, "b", 9, 63), "sessions are apart");
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn a_reused_packet_id_replaces_the_old_mark_and_survives_its_eviction() {
        let mut m = Marks::default();
        m.insert(&mark("a", 3, 1, 100));
        m.insert(&mark("a", 3, 2, 200));
        m.insert(&mark("a", 3, 1, 101));
        m.insert(&mark("a", 3, 3, 300));
        // The first (1, 100) left the window; the newer (1, 101) must stay.
        assert!(has(&m, "a", 1, 101));
        assert!(!has(&m, "a", 1, 100));
        assert!(has(&m, "a", 2, 200) && has(&m, "a", 3, 300));
    }

    #[test]
    fn the_file_round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Marks::default();
        for i in 0..100u16 {
            m.insert(&mark(if i % 2 == 0 { "even" } else { "odd" }, 20, i, u64::from(i) << 40));
        }
        m.store(dir.path()).unwrap();
        let back = Marks::load(dir.path()).unwrap();
        assert_eq!(back.len(), m.len());
        for i in 60..100u16 {
            let s = if i % 2 == 0 { "even" } else { "odd" };
            assert_eq!(has(&back, s, i, u64::from(i) << 40), has(&m, s, i, u64::from(i) << 40));
        }
        assert!(has(&back, "even", 98, 98u64 << 40));
        let h = 97u64 << 40;
        assert_eq!(back.get("odd", 97, h), Some(SampleTag { epoch: h % 5, n: h % 7 }), "needs survive");
        assert_eq!(back.max_epoch(), m.max_epoch());
        let path = dir.path().join(FILE);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let err = Marks::load(dir.path()).err().expect("damage is refused").to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn wal_encoding_round_trips() {
        let marks = vec![mark("s1", 10, 7, 1), mark("s1", 10, 8, 2), mark("s2", 65_536, 65_535, u64::MAX)];
        let mut buf = Vec::new();
        put_marks(&mut buf, &marks);
        let mut r = Reader { buf: &buf, pos: 0 };
        assert_eq!(read_marks(&mut r).unwrap(), marks);
        assert_eq!(r.pos, buf.len());
    }
}
