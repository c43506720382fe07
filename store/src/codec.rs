//! The binary encoding of a log batch inside a write-ahead-log record:
//!
//! ```text
//! u8 kind (1; 2 with a producer; 3 with delivery marks) | str tenant | [kind 2: str producer, varint sequence]
//! | [kind 3: marks, see `marks::put_marks`] | varint n_streams | n × (u64le id, varint n_labels, n × (str, str))
//! | varint n_entries | n × (varint stream, varint zigzag(time - previous time), str line,
//!                           varint n_fields, n × (str, str))
//! ```
//! where `str` is a varint length and UTF-8 bytes. Timestamps are delta-coded because entries of a
//! request are usually in time order.

use crate::marks::{DeliveryMark, put_marks, read_marks};
use crate::model::{BatchStream, Labels, LogBatch, LogEntry, Tenant};

const KIND_LOGS_V1: u8 = 1;
/// A batch sent by a producer that numbers its batches (the agent), for exactly-once delivery.
const KIND_LOGS_PRODUCER: u8 = 2;
/// A batch of MQTT messages with the marks of their deliveries, for recognising redeliveries.
const KIND_LOGS_MARKS: u8 = 3;

/// A producer's name and the sequence number of one of its batches.
pub(crate) type ProducerSeq = (String, u64);

/// What a record carries besides its batch.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct RecordMeta {
    pub(crate) producer: Option<ProducerSeq>,
    pub(crate) marks: Vec<DeliveryMark>,
}

/// Encodes a tenant's batch as a WAL payload. A record carries a producer's sequence or marks, not both.
pub(crate) fn encode(
    tenant: &Tenant,
    batch: &LogBatch,
    producer: Option<(&str, u64)>,
    marks: &[DeliveryMark],
) -> Vec<u8> {
    let estimate =
        64 + marks.len() * 24 + batch.entries.iter().map(|e| e.line.len() + 8 + e.fields.len() * 16).sum::<usize>();
    let mut out = Vec::with_capacity(estimate);
    out.push(match (producer.is_some(), marks.is_empty()) {
        (true, _) => KIND_LOGS_PRODUCER,
        (false, false) => KIND_LOGS_MARKS,
        (false, true) => KIND_LOGS_V1,
    });
    put_str(&mut out, tenant.as_str());
    if let Some((name, seq)) = producer {
        put_str(&mut out, name);
        put_varint(&mut out, seq);
    } else if !marks.is_empty() {
        put_marks(&mut out, marks);
    }
    put_varint(&mut out, batch.streams.len() as u64);
    for s in &batch.streams {
        out.extend_from_slice(&s.id.0.to_le_bytes());
        put_varint(&mut out, s.labels.len() as u64);
        for (n, v) in s.labels.iter() {
            put_str(&mut out, n);
            put_str(&mut out, v);
        }
    }
    put_varint(&mut out, batch.entries.len() as u64);
    let mut prev = 0i64;
    for e in &batch.entries {
        put_varint(&mut out, u64::from(e.stream));
        let delta = e.time_ns.wrapping_sub(prev);
        put_varint(&mut out, ((delta << 1) ^ (delta >> 63)) as u64);
        prev = e.time_ns;
        put_str(&mut out, &e.line);
        put_varint(&mut out, e.fields.len() as u64);
        for (n, v) in &e.fields {
            put_str(&mut out, n);
            put_str(&mut out, v);
        }
    }
    out
}

/// Decodes a WAL payload.
///
/// # Errors
/// A description of the first inconsistency; the record's CRC passed, so this means a bug or a payload
/// of a newer version.
pub(crate) fn decode(buf: &[u8]) -> Result<(Tenant, LogBatch, RecordMeta), String> {
    let mut r = Reader { buf, pos: 0 };
    let kind = r.u8()?;
    if !matches!(kind, KIND_LOGS_V1 | KIND_LOGS_PRODUCER | KIND_LOGS_MARKS) {
        return Err(format!("unknown record kind {kind}"));
    }
    let tenant = Tenant::new(r.str()?).map_err(|e| e.to_string())?;
    let mut meta = RecordMeta::default();
    match kind {
        KIND_LOGS_PRODUCER => meta.producer = Some((r.str()?.to_string(), r.varint()?)),
        KIND_LOGS_MARKS => meta.marks = read_marks(&mut r)?,
        _ => {}
    }
    let n_streams = r.len()?;
    let mut streams = Vec::with_capacity(n_streams);
    for _ in 0..n_streams {
        let id = crate::model::StreamId(u64::from_le_bytes(r.take(8)?.try_into().unwrap_or_default()));
        let n = r.len()?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            pairs.push((r.str()?.to_string(), r.str()?.to_string()));
        }
        streams.push(BatchStream { id, labels: Labels::from_pairs(pairs) });
    }
    let n_entries = r.len()?;
    let mut entries = Vec::with_capacity(n_entries);
    let mut prev = 0i64;
    for _ in 0..n_entries {
        let stream = r.varint()? as u32;
        if stream as usize >= streams.len() {
            return Err(format!("entry points at stream {stream} of {}", streams.len()));
        }
        let z = r.varint()?;
        let delta = ((z >> 1) as i64) ^ -((z & 1) as i64);
        let time_ns = prev.wrapping_add(delta);
        prev = time_ns;
        let line = r.str()?.to_string();
        let n = r.len()?;
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            fields.push((r.str()?.to_string(), r.str()?.to_string()));
        }
        entries.push(LogEntry { stream, time_ns, line, fields });
    }
    if r.pos != buf.len() {
        return Err(format!("{} trailing bytes", buf.len() - r.pos));
    }
    Ok((tenant, LogBatch { streams, entries }, meta))
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or("truncated record")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".to_string())
    }

    /// A count, bounded by the bytes left so that a corrupt count cannot allocate without limit.
    pub(crate) fn len(&mut self) -> Result<usize, String> {
        let n = self.varint()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(format!("count {n} exceeds the record"));
        }
        Ok(n as usize)
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, String> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut batch = LogBatch::default();
        let s = batch.stream_index(Labels::from_pairs(vec![("app".into(), "x".into())]));
        batch.entries.push(LogEntry {
            stream: s,
            time_ns: 1_700_000_000_000_000_000,
            line: "a".into(),
            fields: vec![],
        });
        batch.entries.push(LogEntry {
            stream: s,
            time_ns: 1_699_999_999_000_000_000,
            line: "ünïcode".into(),
            fields: vec![("k".into(), "v".into())],
        });
        let tenant = Tenant::new("t1").unwrap();
        let bytes = encode(&tenant, &batch, None, &[]);
        let (t, b, p) = decode(&bytes).unwrap();
        assert_eq!(t, tenant);
        assert_eq!(b, batch);
        assert_eq!(p, RecordMeta::default());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let bytes = encode(&tenant, &batch, Some(("agent-1", 1 << 40)), &[]);
        let (t, b, p) = decode(&bytes).unwrap();
        assert_eq!((t, &b), (tenant.clone(), &batch));
        assert_eq!(p.producer, Some(("agent-1".to_string(), 1 << 40)));
        let marks = vec![DeliveryMark {
            session: "broker:lumen".into(),
            window: 65_536,
            pkid: 9,
            hash: 42,
            needs: crate::SampleTag { epoch: 3, n: 7 },
        }];
        let bytes = encode(&tenant, &batch, None, &marks);
        let (t, b, p) = decode(&bytes).unwrap();
        assert_eq!((t, b), (tenant, batch));
        assert_eq!(p, RecordMeta { producer: None, marks });
    }
}
