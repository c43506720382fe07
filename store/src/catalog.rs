//! The stream catalog: per tenant, stream id → labels, and the label index that turns matchers into the
//! set of streams a query reads. New streams are registered as requests arrive (in memory, at once) and
//! appended to `logs/tenant=<t>/streams.bin` at each flush, before the manifest names parts that use them.
//! The WAL carries each record's stream labels too, so a crash before that append loses nothing.
//!
//! File format: repeated `u32le length | u32le crc32 | u64le id | varint n | n × (str, str)`.
//!
//! Reading a catalog file never changes it on its own (see [`load_label_file`]): damage followed by
//! intact records stops the start; a torn tail (bad bytes with nothing intact after them, what a crash
//! during an append leaves) is cut only once the store has checked that no part uses what it held
//! ([`Catalog::check_parts`]); `<file>.salvage` is the operator's request to go on with what can be read.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::codec::{Reader, put_str, put_varint};
use crate::error::{Error, Result};
use crate::model::{BatchStream, Labels, StreamId, Tenant};
use crate::quarantine::Quarantine;
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
    /// Loads every tenant's stream file under `<data>/logs` (see [`load_label_file`]), with how each was
    /// loaded, for [`Catalog::check_parts`].
    pub(crate) fn load(data_dir: &Path, quarantine: &Quarantine) -> Result<(Catalog, Vec<(Tenant, LabelFile)>)> {
        let catalog = Catalog { data_dir: data_dir.to_path_buf(), tenants: RwLock::default() };
        let files = catalog.load_files(quarantine)?;
        Ok((catalog, files))
    }

    /// Reads every tenant's stream file into the catalog (the streams it already has stay as they are):
    /// at the start, and when a query node follows a directory another process writes.
    pub(crate) fn load_files(&self, quarantine: &Quarantine) -> Result<Vec<(Tenant, LabelFile)>> {
        let mut files = Vec::new();
        let logs = self.data_dir.join("logs");
        let Ok(dir) = fs::read_dir(&logs) else {
            return Ok(files);
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
            let streams = self.tenant(&tenant);
            let mut streams = streams.write();
            let file = load_label_file(&path, false, quarantine, |id, labels| streams.insert(id, &labels, true))?;
            drop(streams);
            files.push((tenant, file));
        }
        Ok(files)
    }

    /// Checks, once the WAL is replayed, that every stream of every part has its labels (the catalog file
    /// is appended before the manifest names parts that use new streams); then cuts torn tails, which held
    /// nothing the parts use.
    ///
    /// # Errors
    /// [`Error::Refused`] naming the file whose loss would hide those streams from every selector.
    pub(crate) fn check_parts(&self, files: &[(Tenant, LabelFile)], parts: &[Arc<crate::part::Part>]) -> Result<()> {
        for (tenant, file) in files {
            // Only a tail that looks torn, or a missing file, can have lost what parts use at this start;
            // a salvage was the operator's choice to go on without it.
            if file.salvaged || file.present && file.torn_tail.is_none() {
                continue;
            }
            let streams = self.tenant(tenant);
            let streams = streams.read();
            let unknown: HashSet<u64> = parts
                .iter()
                .filter(|p| p.meta.tenant == tenant.as_str())
                .flat_map(|p| p.streams.iter().map(|s| s.id))
                .filter(|id| streams.labels(*id).is_none())
                .collect();
            if !unknown.is_empty() {
                return Err(file.lost(format!("{} streams of the tenant's parts have no labels in it", unknown.len())));
            }
            file.cut_torn_tail()?;
        }
        Ok(())
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

    /// How many streams the tenant has, and how many of `streams` it does not have yet.
    pub(crate) fn count_new(&self, tenant: &Tenant, streams: &[BatchStream]) -> (usize, usize) {
        let Some(t) = self.get(tenant) else { return (0, streams.len()) };
        let t = t.read();
        (t.by_id.len(), streams.iter().filter(|s| !t.by_id.contains_key(&s.id.0)).count())
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
    if r.pos != rec.len() {
        return Err(format!("{} trailing bytes", rec.len() - r.pos));
    }
    Ok((id, Labels::from_pairs(pairs)))
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The largest uncompressed record a catalog file holds: one stream's labels.
const MAX_RECORD: usize = 1 << 20;

/// The records of the intact frame at `pos`, and the frame's length.
fn frame_at(data: &[u8], pos: usize, compressed: bool) -> Option<(Vec<(StreamId, Labels)>, usize)> {
    let len = u32::from_le_bytes(data.get(pos..pos + 4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data.get(pos + 4..pos + 8)?.try_into().ok()?);
    let payload = data.get(pos + 8..(pos + 8).checked_add(len)?)?;
    // Cheap screens first: the resync after damage tries every offset.
    if compressed && !payload.starts_with(&ZSTD_MAGIC) || !compressed && !(9..=MAX_RECORD).contains(&len) {
        return None;
    }
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let records = if compressed {
        let raw = zstd::stream::decode_all(payload).ok()?;
        let (inner, used) = frames(&raw);
        if used != raw.len() {
            return None;
        }
        inner.into_iter().map(parse_record).collect::<Result<Vec<_>, _>>().ok()?
    } else {
        vec![parse_record(payload).ok()?]
    };
    Some((records, 8 + len))
}

/// What reading a catalog file found besides its records.
#[derive(Debug, Default)]
pub(crate) struct CatalogScan {
    /// Where a torn tail starts: bad bytes with no intact record after them, what a crash during an
    /// append leaves. Not cut yet (see [`LabelFile`]).
    pub(crate) torn_tail: Option<u64>,
    /// Damaged stretches (offset, bytes) with intact records after them.
    pub(crate) damaged: Vec<(usize, usize)>,
    pub(crate) records: usize,
    pub(crate) len: u64,
}

/// Reads a catalog file written by [`append_label_records`] with the same `compressed`, calling `f` with
/// every intact record, those after a damaged stretch included. Changes nothing on disk.
pub(crate) fn read_label_file(
    path: &Path,
    compressed: bool,
    mut f: impl FnMut(StreamId, Labels),
) -> Result<CatalogScan> {
    let mut data = Vec::new();
    File::open(path).and_then(|mut file| file.read_to_end(&mut data)).map_err(Error::io("read", path))?;
    let mut scan = CatalogScan { len: data.len() as u64, ..CatalogScan::default() };
    let mut pos = 0;
    while pos < data.len() {
        if let Some((records, size)) = frame_at(&data, pos, compressed) {
            for (id, labels) in records {
                scan.records += 1;
                f(id, labels);
            }
            pos += size;
            continue;
        }
        match (pos + 1..data.len()).find(|&q| frame_at(&data, q, compressed).is_some()) {
            Some(next) => {
                scan.damaged.push((pos, next - pos));
                pos = next;
            }
            None => {
                scan.torn_tail = Some(pos as u64);
                break;
            }
        }
    }
    Ok(scan)
}

/// How a tenant's catalog file was loaded, for the checks the store makes once it knows what its parts
/// and its write-ahead log hold.
#[derive(Debug)]
pub(crate) struct LabelFile {
    pub(crate) path: PathBuf,
    /// False when the file does not exist.
    pub(crate) present: bool,
    /// See [`CatalogScan::torn_tail`].
    pub(crate) torn_tail: Option<u64>,
    /// Rebuilt from `<file>.salvage` on the operator's request: labels known lost are accepted.
    pub(crate) salvaged: bool,
}

impl LabelFile {
    /// The error when parts use ids whose labels the file should hold but does not (`detail` says which):
    /// they were in a torn-looking tail, or the file is missing.
    pub(crate) fn lost(&self, detail: String) -> Error {
        let reason = match (self.present, self.torn_tail) {
            (false, _) => format!("missing, but {detail}"),
            (true, Some(at)) => format!("damaged from offset {at} to its end, and {detail}"),
            (true, None) => detail,
        };
        Error::Refused { what: "label catalog", path: self.path.clone(), reason, remedy: salvage_remedy(&self.path) }
    }

    /// Cuts a torn tail, now that nothing the store uses was in it: those records are in the WAL still.
    pub(crate) fn cut_torn_tail(&self) -> Result<()> {
        let Some(at) = self.torn_tail else {
            return Ok(());
        };
        tracing::warn!(file = %self.path.display(), offset = at, "cutting torn tail of a label catalog");
        OpenOptions::new()
            .write(true)
            .open(&self.path)
            .and_then(|file| {
                file.set_len(at)?;
                file.sync_all()
            })
            .map_err(Error::io("truncate", &self.path))
    }
}

fn salvage_name(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.salvage", path.display()))
}

fn salvage_remedy(path: &Path) -> String {
    format!(
        "restore it from a backup of the data directory; or, to start with the records that can still be read \
         (samples and entries of the others stay on disk but cannot be selected by their labels, and their ids are \
         never reused), rename it to {} (for a missing file, create that file empty)",
        salvage_name(path).file_name().unwrap_or_default().to_string_lossy()
    )
}

/// Loads a tenant's catalog file (see [`read_label_file`]), calling `f` with each record.
///
/// - Damage followed by intact records stops the start ([`Error::Refused`], naming the file and what to
///   do); the file is left as it is.
/// - `<file>.salvage` next to it is the operator's request to go on with what can be read: its intact
///   records become a new file, and it is set aside into the quarantine.
/// - A torn tail is noted in the returned [`LabelFile`]: the store cuts it once it has checked that its
///   parts use nothing that was there.
///
/// # Errors
/// [`Error::Refused`] as above, or when both the file and `<file>.salvage` exist; I/O errors.
pub(crate) fn load_label_file(
    path: &Path,
    compressed: bool,
    quarantine: &Quarantine,
    mut f: impl FnMut(StreamId, Labels),
) -> Result<LabelFile> {
    let salvage = salvage_name(path);
    if salvage.exists() {
        if path.exists() {
            return Err(Error::Refused {
                what: "label catalog",
                path: path.to_path_buf(),
                reason: format!("both it and {} exist", salvage.display()),
                remedy: "remove the salvage request, or move the file aside to have the salvage replace it".to_string(),
            });
        }
        let mut records: Vec<(StreamId, Labels)> = Vec::new();
        let scan = read_label_file(&salvage, compressed, |id, labels| records.push((id, labels)))?;
        // The new file exists even when empty: a missing one would stop the next start again.
        let dir = path.parent().unwrap_or(Path::new("."));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|f| f.sync_all())
            .map_err(Error::io("create", path))?;
        append_label_records(path, records.iter().map(|(id, l)| (id.0, l)), compressed)?;
        crate::manifest::sync_dir(dir)?;
        let lost: usize =
            scan.damaged.iter().map(|d| d.1).sum::<usize>() + scan.torn_tail.map_or(0, |at| (scan.len - at) as usize);
        let reason = format!(
            "salvaged on request: {} records kept in a new {}, {lost} damaged bytes lost",
            records.len(),
            path.display()
        );
        quarantine.set_aside(&salvage, &reason)?;
        for (id, labels) in records {
            f(id, labels);
        }
        return Ok(LabelFile { path: path.to_path_buf(), present: true, torn_tail: None, salvaged: true });
    }
    if !path.exists() {
        return Ok(LabelFile { path: path.to_path_buf(), present: false, torn_tail: None, salvaged: false });
    }
    let scan = read_label_file(path, compressed, f)?;
    if let Some(&(offset, bytes)) = scan.damaged.first() {
        let bytes_total: usize = scan.damaged.iter().map(|d| d.1).sum();
        return Err(Error::Refused {
            what: "label catalog",
            path: path.to_path_buf(),
            reason: format!(
                "{bytes_total} damaged bytes ({} stretch(es), the first of {bytes} bytes at offset {offset}) hold \
                 records that cannot be read, and intact records follow them",
                scan.damaged.len()
            ),
            remedy: salvage_remedy(path),
        });
    }
    Ok(LabelFile { path: path.to_path_buf(), present: true, torn_tail: scan.torn_tail, salvaged: false })
}
