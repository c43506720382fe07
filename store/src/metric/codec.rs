//! The metric store's WAL record: one request's samples, plus the labels of the series in it that no
//! durable record carried yet.
//!
//! `[0x00, varint epoch, varint n] | str tenant | varint n_series | n × (varint id, varint n_pairs, pairs) | varint n_samples |
//! n × (u32le id, i64le t_ms, u64le value bits)`. Values travel as bits, so stale markers survive. The optional
//! tag (a zero byte can not start a tenant, which is never empty) numbers a batch of the MQTT pipeline, so
//! that its log record can tell whether these samples are durable (see `MetricStore::append_tagged`).

use std::sync::Arc;

use super::SampleTag;
use crate::codec::{Reader, put_str, put_varint};
use crate::model::{Labels, Tenant};

const SAMPLE_BYTES: usize = 20;

pub(crate) fn encode(
    tenant: &Tenant,
    series: &[(u32, Arc<Labels>)],
    samples: &[(u32, i64, f64)],
    tag: Option<SampleTag>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(26 + series.len() * 64 + samples.len() * SAMPLE_BYTES);
    if let Some(tag) = tag {
        out.push(0);
        put_varint(&mut out, tag.epoch);
        put_varint(&mut out, tag.n);
    }
    put_str(&mut out, tenant.as_str());
    put_varint(&mut out, series.len() as u64);
    for (id, labels) in series {
        put_varint(&mut out, u64::from(*id));
        put_varint(&mut out, labels.len() as u64);
        for (n, v) in labels.iter() {
            put_str(&mut out, n);
            put_str(&mut out, v);
        }
    }
    put_varint(&mut out, samples.len() as u64);
    for &(id, t, v) in samples {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    out
}

/// A decoded record.
pub(crate) struct Record {
    pub(crate) tenant: Tenant,
    pub(crate) series: Vec<(u32, Labels)>,
    pub(crate) samples: Vec<(u32, i64, f64)>,
    pub(crate) tag: Option<SampleTag>,
}

pub(crate) fn decode(buf: &[u8]) -> Result<Record, String> {
    let mut r = Reader { buf, pos: 0 };
    let tag = if buf.first() == Some(&0) {
        r.pos = 1;
        Some(SampleTag { epoch: r.varint()?, n: r.varint()? })
    } else {
        None
    };
    let tenant = Tenant::new(r.str()?).map_err(|e| e.to_string())?;
    let n = r.len()?;
    let mut series = Vec::with_capacity(n);
    for _ in 0..n {
        let id = u32::try_from(r.varint()?).map_err(|_| "series id out of range".to_string())?;
        let pairs = r.len()?;
        let mut labels = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            labels.push((r.str()?.to_string(), r.str()?.to_string()));
        }
        series.push((id, Labels::from_pairs(labels)));
    }
    let n = r.varint()? as usize;
    let bytes = r.take(n.checked_mul(SAMPLE_BYTES).ok_or("sample count overflows")?)?;
    let samples = bytes
        .chunks_exact(SAMPLE_BYTES)
        .map(|c| {
            let id = u32::from_le_bytes(c[0..4].try_into().unwrap_or_default());
            let t = i64::from_le_bytes(c[4..12].try_into().unwrap_or_default());
            let v = f64::from_bits(u64::from_le_bytes(c[12..20].try_into().unwrap_or_default()));
            (id, t, v)
        })
        .collect();
    if r.pos != buf.len() {
        return Err(format!("{} trailing bytes", buf.len() - r.pos));
    }
    Ok(Record { tenant, series, samples, tag })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_value_bits() {
        let tenant = Tenant::new("t").unwrap();
        let labels = Arc::new(Labels::from_pairs(vec![("__name__".into(), "up".into())]));
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let bytes = encode(&tenant, &[(4, labels.clone())], &[(4, 1000, 1.5), (4, 2000, stale)], None);
        let rec = decode(&bytes).unwrap();
        assert_eq!(rec.tenant, tenant);
        assert_eq!(rec.series, vec![(4, (*labels).clone())]);
        assert_eq!(rec.samples[0], (4, 1000, 1.5));
        assert_eq!(rec.samples[1].2.to_bits(), stale.to_bits());
        assert_eq!(rec.tag, None);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let tag = SampleTag { epoch: 1 << 60, n: 3 };
        let tagged = encode(&tenant, &[], &[(4, 3000, 2.0)], Some(tag));
        let rec = decode(&tagged).unwrap();
        assert_eq!((rec.tag, rec.tenant, rec.samples), (Some(tag), tenant, vec![(4, 3000, 2.0)]));
    }
}
