//! The stream catalog: per tenant, stream id → labels, and the label index that turns matchers into the
//! set of streams a query reads. New streams are registered as requests arrive (in memory, at once) and
//! appended to `logs/tenant=<t>/streams.bin` at each flush, before the manifest names parts that use them.
//! The WAL carries each record's stream labels too, so a crash before that append loses nothing.
//!
//! File format: repeated `u32le length | u32le crc32 | u64le id | varint n | n × (str, str)`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::codec::{Reader, put_str, put_varint};
use crate::error::{Error, Result};
use crate::model::{BatchStream, Labels, StreamId, Tenant};
use crate::scan::LabelMatcher;

#[derive(Default)]
pub(crate) struct TenantStreams {
    by_id: HashMap<u64, Arc<Labels>>,
    unpersisted: Vec<u64>,
    label_names: BTreeSet<String>,
}

impl TenantStreams {
    fn insert(&mut self, id: StreamId, labels: &Labels, persisted: bool) {
        if self.by_id.contains_key(&id.0) {
            return;
        }
        for (name, _) in labels.iter() {
            if !self.label_names.contains(name) {
                self.label_names.insert(name.to_string());
            }
        }
        self.by_id.insert(id.0, Arc::new(labels.clone()));
        if !persisted {
            self.unpersisted.push(id.0);
        }
    }

    pub(crate) fn labels(&self, id: u64) -> Option<&Arc<Labels>> {
        self.by_id.get(&id)
    }

    pub(crate) fn label_names(&self) -> &BTreeSet<String> {
        &self.label_names
    }
}

pub(crate) struct Catalog {
    data_dir: PathBuf,
    tenants: RwLock<HashMap<Tenant, Arc<RwLock<TenantStreams>>>>,
}

impl Catalog {
    /// Loads every tenant's stream file under `<data>/logs`.
    pub(crate) fn load(data_dir: &Path) -> Result<Catalog> {
        let catalog = Catalog { data_dir: data_dir.to_path_buf(), tenants: RwLock::default() };
        let logs = data_dir.join("logs");
        let Ok(dir) = fs::read_dir(&logs) else {
            return Ok(catalog);
        };
        for entry in dir {
            let entry = entry.map_err(Error::io("read", &logs))?;
            let name = entry.file_name();
            let Some(tenant) = name.to_str().and_then(|n| n.strip_prefix("tenant=")) else {
                continue;
            };
            let Ok(tenant) = Tenant::new(tenant) else {
                continue;
            };
            let path = entry.path().join("streams.bin");
            if !path.exists() {
                continue;
            }
            let streams = catalog.tenant(&tenant);
            let mut streams = streams.write();
            read_stream_file(&path, false, |id, labels| streams.insert(id, &labels, true))?;
        }
        Ok(catalog)
    }

    /// The tenant's streams, created empty on first use.
    pub(crate) fn tenant(&self, tenant: &Tenant) -> Arc<RwLock<TenantStreams>> {
        if let Some(t) = self.tenants.read().get(tenant) {
            return t.clone();
        }
        self.tenants.write().entry(tenant.clone()).or_default().clone()
    }

    pub(crate) fn get(&self, tenant: &Tenant) -> Option<Arc<RwLock<TenantStreams>>> {
        self.tenants.read().get(tenant).cloned()
    }

    pub(crate) fn tenants(&self) -> Vec<Tenant> {
        let mut t: Vec<Tenant> = self.tenants.read().keys().cloned().collect();
        t.sort();
        t
    }

    /// Registers the streams of a batch that are new.
    pub(crate) fn register(&self, tenant: &Tenant, streams: &[BatchStream]) {
        let t = self.tenant(tenant);
        if streams.iter().all(|s| t.read().by_id.contains_key(&s.id.0)) {
            return;
        }
        let mut t = t.write();
        for s in streams {
            t.insert(s.id, &s.labels, false);
        }
    }

    /// The ids of the tenant's streams that match every matcher; `None` when there are no matchers
    /// (every stream matches).
    pub(crate) fn matching(&self, tenant: &Tenant, matchers: &[LabelMatcher]) -> Option<HashSet<u64>> {
        if matchers.is_empty() {
            return None;
        }
        let Some(t) = self.get(tenant) else {
            return Some(HashSet::new());
        };
        let t = t.read();
        Some(
            t.by_id
                .iter()
                .filter(|(_, labels)| matchers.iter().all(|m| m.matches(labels.get(&m.name).unwrap_or(""))))
                .map(|(&id, _)| id)
                .collect(),
        )
    }

    /// Appends the streams registered since the last call to their tenants' files and syncs them.
    pub(crate) fn persist(&self) -> Result<()> {
        for (tenant, streams) in self.tenants.read().iter() {
            let mut streams = streams.write();
            if streams.unpersisted.is_empty() {
                continue;
            }
            let dir = self.data_dir.join("logs").join(format!("tenant={tenant}"));
            let records = streams.unpersisted.iter().map(|id| (*id, streams.by_id[id].as_ref()));
            append_label_records(&dir.join("streams.bin"), records, false)?;
            streams.unpersisted.clear();
        }
        Ok(())
    }
}

/// Appends `(id, labels)` records to a catalog file (streams or series) and syncs it and its directory.
/// With `compress`, the records of one call go as one zstd-compressed frame (`u32le length | u32le crc32 |
/// zstd(records)`): label sets repeat their names and most values, so a series catalog shrinks about
/// tenfold.
pub(crate) fn append_label_records<'a>(
    path: &Path,
    records: impl Iterator<Item = (u64, &'a Labels)>,
    compress: bool,
) -> Result<()> {
    let mut buf = Vec::new();
    for (id, labels) in records {
        let mut rec = Vec::new();
        rec.extend_from_slice(&id.to_le_bytes());
        put_varint(&mut rec, labels.len() as u64);
        for (n, v) in labels.iter() {
            put_str(&mut rec, n);
            put_str(&mut rec, v);
        }
        frame(&mut buf, &rec);
    }
    if buf.is_empty() {
        return Ok(());
    }
    if compress {
        let packed = zstd::bulk::compress(&buf, 3).map_err(Error::io("compress", path))?;
        buf.clear();
        frame(&mut buf, &packed);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    let mut f = OpenOptions::new().create(true).append(true).open(path).map_err(Error::io("open", path))?;
    f.write_all(&buf).and_then(|()| f.sync_data()).map_err(Error::io("write", path))?;
    crate::manifest::sync_dir(dir)
}

fn frame(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// The CRC-checked frames at the start of `data`, and the length of that valid prefix.
fn frames(data: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap_or_default());
        let Some(payload) = data.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        out.push(payload);
        pos += 8 + len;
    }
    (out, pos)
}

fn parse_record(rec: &[u8]) -> Result<(StreamId, Labels), String> {
    if rec.len() < 8 {
        return Err("record shorter than its id".to_string());
    }
    let mut r = Reader { buf: rec, pos: 8 };
    let id = StreamId(u64::from_le_bytes(rec[0..8].try_into().unwrap_or_default()));
    let n = r.len()?;
    let mut pairs = Vec::with_capacity(n);
    for _ in 0..n {
        pairs.push((r.str()?.to_string(), r.str()?.to_string()));
    }
    Ok((id, Labels::from_pairs(pairs)))
}

/// Reads a catalog file written by [`append_label_records`] with the same `compressed`; a torn tail (a
/// crash during an append) is cut off, as those records are still in the WAL.
pub(crate) fn read_stream_file(path: &Path, compressed: bool, mut f: impl FnMut(StreamId, Labels)) -> Result<()> {
    let mut data = Vec::new();
    File::open(path).and_then(|mut file| file.read_to_end(&mut data)).map_err(Error::io("read", path))?;
    let corrupt = |reason: String| Error::Corrupt { what: "label catalog", path: path.to_path_buf(), reason };
    let (outer, valid) = frames(&data);
    for payload in outer {
        if compressed {
            let raw = zstd::stream::decode_all(payload).map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
            let (records, used) = frames(&raw);
            if used != raw.len() {
                return Err(corrupt(format!("damaged record at offset {used} of a frame")));
            }
            for rec in records {
                let (id, labels) = parse_record(rec).map_err(corrupt)?;
                f(id, labels);
            }
        } else {
            let (id, labels) = parse_record(payload).map_err(corrupt)?;
            f(id, labels);
        }
    }
    if valid < data.len() {
        tracing::warn!(file = %path.display(), offset = valid, "cutting torn tail of a label catalog");
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|file| file.set_len(valid as u64))
            .map_err(Error::io("truncate", path))?;
    }
    Ok(())
}
