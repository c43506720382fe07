//! Parquet parts and their index files.
//!
//! A part holds one tenant's rows of one day, sorted by stream id then time, in Parquet with zstd: `time`
//! delta-encoded, `_stream_id` and label columns dictionary-encoded (a sorted column of few values is
//! nearly free), `message` plain, its data pages starting anew where a large stream's run starts or ends
//! (see [`PartWriter`]), so that a read of one stream decompresses no other stream's lines. Next to
//! `<id>.parquet` lies `<id>.idx`:
//!
//! ```text
//! "LUMNIDX3" | u32le n_streams | u32le n_row_groups
//! | n_streams × (u64 id, u64 first_row, u64 rows, i64 min_time, i64 max_time)
//! | n_row_groups × (u64 first_row, u64 rows, i64 min_time, i64 max_time, u64 filter_offset, u64 filter_len,
//!                   u64 pages_offset, u64 pages_len)
//! | u32le crc32 of all the above
//! | n_row_groups × (token filter | u32le crc32 of it | page filters | u32le crc32 of them)
//! ```
//!
//! The token filter of a row group rules it out for a search by whole words ([`crate::tokens`]); its page
//! filters, one per data page of its `message` column, rule out pages for a search by substring
//! ([`crate::ngrams`]). A filter that fails its checksum is not used: its row group is read as if it had
//! none, so a damaged filter costs speed, never a line. `pages_len` is 0 where a row group has no page
//! filters. Files of the earlier versions are still read: `LUMNIDX2` has no page filters (row-group
//! records of 48 bytes, without the last two fields), `LUMNIDX1` neither, and no checksums on its token
//! filters.
//!
//! The header (streams and row groups) is read when the part is opened and kept in memory: it turns label
//! matchers into exact row ranges and time bounds into row-group skips. Filters stay on disk and are read
//! only for full-text searches.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::remote::RemoteState;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{SchemaRef, TimestampNanosecondType, UInt64Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::arrow::arrow_writer::{ArrowRowGroupWriterFactory, compute_leaves};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::column::page::{CompressedPage, Page, PageWriteSpec, PageWriter};
use parquet::column::writer::{ColumnCloseResult, ColumnWriter, get_column_writer};
use parquet::data_type::ByteArray;
use parquet::file::metadata::{KeyValue, PageEncodingStats, PageIndexPolicy};
use parquet::file::page_index::offset_index::OffsetIndexMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesPtr, WriterVersion};
use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

use crate::error::{Error, Result};
use crate::head::{MESSAGE, STREAM_ID, TIME};
use crate::manifest::PartMeta;
use crate::metrics::StoreMetrics;
use crate::ngrams::{PageFilterBuilder, PageFilters};
use crate::quarantine::{Quarantine, SkippedPart};
use crate::tokens::{TokenCollector, TokenFilter};

const MAGIC: &[u8; 8] = b"LUMNIDX3";
/// The second version: no page filters, row-group records without their fields.
const MAGIC_V2: &[u8; 8] = b"LUMNIDX2";
/// The first version: as the second, but its token filters carry no checksum.
const MAGIC_V1: &[u8; 8] = b"LUMNIDX1";
const STREAM_REC: usize = 40;
const RG_REC: usize = 64;
const RG_REC_V2: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamRange {
    pub(crate) id: u64,
    pub(crate) first_row: u64,
    pub(crate) rows: u64,
    pub(crate) min_time: i64,
    pub(crate) max_time: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowGroupIndex {
    pub(crate) first_row: u64,
    pub(crate) rows: u64,
    pub(crate) min_time: i64,
    pub(crate) max_time: i64,
    filter_offset: u64,
    filter_len: u64,
    /// The filter is followed by its crc32 (not in `filter_len`).
    filter_crc: bool,
    /// The page filters ([`crate::ngrams::PageFilters`]), followed by their crc32; `pages_len` 0: none.
    pages_offset: u64,
    pages_len: u64,
}

/// A live part: its manifest entry and index header. When the part leaves the manifest (compaction,
/// retention) it is marked obsolete and its files are deleted once the last scan holding it lets go.
pub(crate) struct Part {
    pub(crate) meta: PartMeta,
    pub(crate) parquet_path: PathBuf,
    index_path: PathBuf,
    pub(crate) streams: Vec<StreamRange>,
    pub(crate) row_groups: Vec<RowGroupIndex>,
    obsolete: AtomicBool,
    /// The Parquet footer and page index, read when the part is opened (or by its first scan) and kept:
    /// parts never change.
    metadata: OnceLock<ArrowReaderMetadata>,
    /// Why a read of this part failed: from then on every read leaves it out (see [`Part::set_unreadable`]).
    unreadable: OnceLock<String>,
    /// A damaged token filter of this part was reported (once per part).
    filter_damage_reported: AtomicBool,
    /// Its standing towards the object store (see [`crate::remote`]).
    pub(crate) remote: RemoteState,
}

/// What opening a part named by the manifest found.
pub(crate) enum Opened {
    Good(Box<Part>),
    /// Its index was missing or damaged and was rebuilt from the Parquet file (`meta.index_bytes` is the
    /// new size).
    Rebuilt(Box<Part>),
    /// The Parquet file does not match its manifest entry or cannot be read.
    Damaged(String),
    /// The Parquet file is missing.
    Missing(String),
}

/// What is wrong with an index file.
enum IndexProblem {
    /// Cannot be read for a reason that is not its content (permissions, I/O): not something to repair.
    Io(Error),
    /// Missing, or its content is wrong.
    Bad(String),
}

impl Part {
    /// Opens a part the manifest names and checks it against its entry: the Parquet file must have the
    /// recorded size and a readable footer with the recorded rows (the footer is kept for the reads),
    /// and the index must match it. A missing or damaged index is rebuilt from the Parquet file, the
    /// damaged one set aside into the quarantine.
    ///
    /// # Errors
    /// I/O errors that say nothing about the content (permissions, a failing disk): the store does not
    /// start rather than set aside files it could not look at.
    pub(crate) fn open(
        data_dir: &Path,
        mut meta: PartMeta,
        options: &WriteOptions,
        quarantine: &Quarantine,
    ) -> Result<Opened> {
        let index_path = meta.index_path(data_dir);
        let parquet_path = meta.parquet_path(data_dir);
        let file = match File::open(&parquet_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return match crate::remote::read_sidecar(&parquet_path) {
                    Ok(Some(sidecar)) => Ok(Part::open_remote(meta, &sidecar, parquet_path, index_path)),
                    Ok(None) => Ok(Opened::Missing("the manifest names it but the file is missing".to_string())),
                    Err(e) => Ok(Opened::Damaged(e.to_string())),
                };
            }
            Err(e) => return Err(Error::Io { op: "open", path: parquet_path, source: e }),
        };
        let in_bucket = crate::remote::sidecar_path(&parquet_path).exists();
        let len = file.metadata().map_err(Error::io("stat", &parquet_path))?.len();
        if len != meta.parquet_bytes {
            return Ok(Opened::Damaged(format!("{len} bytes where the manifest says {}", meta.parquet_bytes)));
        }
        let metadata = match ArrowReaderMetadata::load(&file, reader_options()) {
            Ok(m) => m,
            Err(e) => return Ok(Opened::Damaged(format!("unreadable Parquet footer: {e}"))),
        };
        let rows = metadata.metadata().file_metadata().num_rows();
        if rows != meta.rows as i64 {
            return Ok(Opened::Damaged(format!("{rows} rows where the manifest says {}", meta.rows)));
        }
        let n_row_groups = metadata.metadata().num_row_groups();
        let mut rebuilt = false;
        let (streams, row_groups) = match read_index(&index_path, &meta, Some(n_row_groups)) {
            Ok(index) => index,
            Err(IndexProblem::Io(e)) => return Err(e),
            Err(IndexProblem::Bad(reason)) => {
                if index_path.exists() {
                    quarantine.replace(&index_path, &format!("part index {reason}; rebuilt from its part"))?;
                }
                let built = match build_index(&parquet_path, &file, &metadata, options) {
                    Ok(b) => b,
                    Err(e) => {
                        return Ok(Opened::Damaged(format!(
                            "its index {reason}, and reading it to rebuild the index failed: {e}"
                        )));
                    }
                };
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&index_path)
                    .map_err(Error::io("create", &index_path))?;
                f.write_all(&built.bytes).and_then(|()| f.sync_all()).map_err(Error::io("write", &index_path))?;
                crate::manifest::sync_dir(&data_dir.join(meta.partition_dir()))?;
                meta.index_bytes = built.bytes.len() as u64;
                quarantine.metrics().rebuilt_indexes.inc();
                tracing::warn!(part = %parquet_path.display(), %reason, "rebuilt the index of a part from its Parquet file");
                rebuilt = true;
                (built.streams, built.row_groups)
            }
        };
        let keep = (!meta.is_wide()).then_some(metadata);
        let part = Part::new(meta, (parquet_path, index_path), (streams, row_groups), keep, in_bucket);
        Ok(if rebuilt { Opened::Rebuilt(Box::new(part)) } else { Opened::Good(Box::new(part)) })
    }

    /// Opens a part whose Parquet file lives in the object store only (a sidecar stands in its place):
    /// its index is local and checked; the file itself is checked when a read fetches it.
    fn open_remote(
        meta: PartMeta,
        sidecar: &crate::remote::Sidecar,
        parquet_path: PathBuf,
        index_path: PathBuf,
    ) -> Opened {
        if sidecar.bytes != meta.parquet_bytes {
            return Opened::Missing(format!(
                "its sidecar says {} bytes where the manifest says {}",
                sidecar.bytes, meta.parquet_bytes
            ));
        }
        let (streams, row_groups) = match read_index(&index_path, &meta, sidecar.row_groups) {
            Ok(index) => index,
            Err(IndexProblem::Io(e)) => return Opened::Missing(e.to_string()),
            Err(IndexProblem::Bad(reason)) => {
                // Set aside as missing (there is no local Parquet file to move): the object stays in the
                // bucket until the commits that name it age out.
                return Opened::Missing(format!(
                    "it lives in the object store under {}, and its local index {reason}",
                    meta.parquet_rel().display()
                ));
            }
        };
        Opened::Good(Box::new(Part::new(meta, (parquet_path, index_path), (streams, row_groups), None, true)))
    }

    /// A part from its entry, its files' paths, its index and (when read) its footer.
    fn new(
        meta: PartMeta,
        (parquet_path, index_path): (PathBuf, PathBuf),
        (streams, row_groups): (Vec<StreamRange>, Vec<RowGroupIndex>),
        metadata: Option<ArrowReaderMetadata>,
        in_bucket: bool,
    ) -> Part {
        let remote = RemoteState::new(meta.parquet_rel(), meta.max_time / 1_000_000, in_bucket);
        Part {
            meta,
            parquet_path,
            index_path,
            streams,
            row_groups,
            obsolete: AtomicBool::new(false),
            metadata: metadata.map_or_else(OnceLock::new, OnceLock::from),
            unreadable: OnceLock::new(),
            filter_damage_reported: AtomicBool::new(false),
            remote,
        }
    }

    /// Marks the part unreadable after `error` in a read of it: every later read leaves it out, and
    /// [`crate::LogStore::skipped_parts`] names it. The first time, logs at ERROR and counts it. Until a
    /// restart only: a part may be unreadable for a passing reason, and the checks at the next start
    /// decide whether its files go into the quarantine.
    pub(crate) fn set_unreadable(&self, error: &Error, metrics: &StoreMetrics) {
        if error.is_remote() {
            // Not damage: the object store did not deliver it this time.
            tracing::warn!(%error, "a part could not be fetched from the object store; this read leaves it out");
            return;
        }
        if self.unreadable.set(error.to_string()).is_ok() {
            metrics.unreadable_parts.inc();
            tracing::error!(
                part = %self.parquet_path.display(),
                tenant = %self.meta.tenant,
                rows = self.meta.rows,
                %error,
                "a part cannot be read; reads leave it out and say so until the next start, which checks it again"
            );
        }
    }

    pub(crate) fn is_unreadable(&self) -> bool {
        self.unreadable.get().is_some()
    }

    /// The part as a [`SkippedPart`], if it is unreadable.
    pub(crate) fn skipped(&self) -> Option<SkippedPart> {
        self.unreadable.get().map(|reason| SkippedPart {
            file: self.parquet_path.clone(),
            min_time_ns: self.meta.min_time,
            max_time_ns: self.meta.max_time,
            rows: self.meta.rows,
            reason: reason.clone(),
        })
    }

    /// Opens the index file for [`Part::token_filter`]; one open serves all row groups of a scan.
    pub(crate) fn open_index(&self) -> Result<File> {
        File::open(&self.index_path).map_err(Error::io("open", &self.index_path))
    }

    /// Reads a row group's token filter from the index file opened by [`Part::open_index`].
    pub(crate) fn token_filter(&self, file: &File, rg: usize) -> Result<Option<TokenFilter>> {
        let rg = &self.row_groups[rg];
        let filter = self.read_filter(file, rg, (rg.filter_offset, rg.filter_len), rg.filter_crc, "a token filter")?;
        Ok(filter.and_then(|f| TokenFilter::from_bytes(&f)))
    }

    /// Reads a row group's page filters (the bytes [`crate::ngrams::PageFilters::parse`] reads) from the
    /// index file opened by [`Part::open_index`]; `None` when it has none or they fail their checksum.
    pub(crate) fn page_filters(&self, file: &File, rg: usize) -> Result<Option<Vec<u8>>> {
        let rg = &self.row_groups[rg];
        self.read_filter(file, rg, (rg.pages_offset, rg.pages_len), true, "page filters")
    }

    /// Reads `len` bytes at `offset` of the index file, followed by their crc32 when `crc`; `None` when
    /// `len` is 0 or the bytes fail their checksum: their row group is then read as if it had no such
    /// filter (slower, but no line is skipped on a bad filter).
    fn read_filter(
        &self,
        file: &File,
        rg: &RowGroupIndex,
        (offset, len): (u64, u64),
        crc: bool,
        what: &str,
    ) -> Result<Option<Vec<u8>>> {
        if len == 0 {
            return Ok(None);
        }
        let len = len as usize;
        let mut buf = vec![0u8; len + if crc { 4 } else { 0 }];
        file.read_exact_at(&mut buf, offset).map_err(Error::io("read", &self.index_path))?;
        if crc {
            let sum = u32::from_le_bytes(buf[len..].try_into().unwrap_or_default());
            if crc32fast::hash(&buf[..len]) != sum {
                if !self.filter_damage_reported.swap(true, Ordering::Relaxed) {
                    tracing::warn!(index = %self.index_path.display(), row_group = rg.first_row, filter = what,
                        "a filter of this part fails its checksum; its row groups are read in full until compaction rewrites the part");
                }
                return Ok(None);
            }
            buf.truncate(len);
        }
        Ok(Some(buf))
    }

    /// The first rows (in the part) of its `message` column's data pages, when its footer is in memory
    /// (it is once a read opened the part, except for wide parts); empty otherwise.
    pub(crate) fn message_page_starts(&self) -> Vec<u64> {
        self.metadata.get().map(message_page_starts).unwrap_or_default()
    }

    /// Where the spans of [`crate::page_cache`] start: at each page of the `message` column and each row
    /// group, sorted, from 0. Reads the footer if no read has yet.
    pub(crate) fn span_starts(&self) -> Result<Vec<u64>> {
        let mut out: Vec<u64> = self.row_groups.iter().map(|rg| rg.first_row).collect();
        match self.metadata.get() {
            Some(m) => out.extend(message_page_starts(m)),
            None => {
                let file = self.remote.open_file(&self.parquet_path, self.meta.parquet_bytes)?;
                out.extend(message_page_starts(&self.arrow_metadata(&file)?));
            }
        }
        out.push(0);
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Those of `wanted` this part has, in its file's order (as a reader of them gives them), once a
    /// read has loaded its footer; `None` before (and for wide parts, whose footer is not kept).
    pub(crate) fn present_columns<'a>(&self, wanted: &[&'a str]) -> Option<Vec<&'a str>> {
        let metadata = self.metadata.get()?;
        let fields = metadata.schema().fields();
        Some(fields.iter().filter_map(|f| wanted.iter().find(|w| **w == f.name().as_str()).copied()).collect())
    }

    /// About how many bytes a row of the named columns takes decoded: from the footer's uncompressed
    /// sizes when a read has loaded it (at least 8 bytes a column), else a guess from the file's size.
    pub(crate) fn decoded_row_bytes(&self, columns: &[&str]) -> u64 {
        let rows = self.meta.rows.max(1);
        let Some(metadata) = self.metadata.get() else {
            return self.meta.parquet_bytes.saturating_mul(6) / rows;
        };
        let mut bytes = 0u64;
        for rg in metadata.metadata().row_groups() {
            for c in rg.columns() {
                if c.column_descr().path().parts().first().is_some_and(|n| columns.contains(&n.as_str())) {
                    let n = rg.num_rows().max(0) as u64;
                    bytes += (c.uncompressed_size().max(0) as u64).max(8 * n);
                }
            }
        }
        bytes / rows
    }
}

/// The first rows (in the part) of the pages of the `message` column, from the page index.
fn message_page_starts(metadata: &ArrowReaderMetadata) -> Vec<u64> {
    let metadata = metadata.metadata();
    let column = metadata.file_metadata().schema_descr().columns().iter().position(|c| c.path().parts() == [MESSAGE]);
    let (Some(column), Some(index)) = (column, metadata.offset_index()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut first = 0u64;
    for (g, rg) in metadata.row_groups().iter().enumerate() {
        if let Some(pages) = index.get(g).and_then(|c| c.get(column)) {
            out.extend(page_starts(pages).into_iter().map(|r| first + r));
        }
        first += rg.num_rows().max(0) as u64;
    }
    out
}

impl Part {
    /// The footer and page index, loaded from `file` (this part's Parquet file) by the first caller.
    fn arrow_metadata(&self, file: &File) -> Result<ArrowReaderMetadata> {
        if let Some(m) = self.metadata.get() {
            return Ok(m.clone());
        }
        let m = ArrowReaderMetadata::load(file, reader_options())
            .map_err(|source| Error::Parquet { path: self.parquet_path.clone(), source })?;
        if self.meta.is_wide() {
            // Read again by each reader instead: see [`PartMeta::is_wide`].
            return Ok(m);
        }
        Ok(self.metadata.get_or_init(|| m).clone())
    }

    /// Uncompressed bytes of each top-level column over all row groups, from the footer.
    pub(crate) fn column_bytes(&self) -> Result<HashMap<String, u64>> {
        let file = self.remote.open_file(&self.parquet_path, self.meta.parquet_bytes)?;
        let metadata = self.arrow_metadata(&file)?;
        let mut out: HashMap<String, u64> = HashMap::new();
        for rg in metadata.metadata().row_groups() {
            for c in rg.columns() {
                let name = c.column_descr().path().parts().first().cloned().unwrap_or_default();
                *out.entry(name).or_default() += c.uncompressed_size().max(0) as u64;
            }
        }
        Ok(out)
    }

    /// A reader of the named columns that exist in this part, over the given row ranges (sorted, disjoint)
    /// or every row.
    pub(crate) fn reader(
        &self,
        columns: &[&str],
        ranges: Option<&[Range<u64>]>,
        batch_size: usize,
    ) -> Result<Option<ParquetRecordBatchReader>> {
        let perr = |source| Error::Parquet { path: self.parquet_path.clone(), source };
        let file = self.remote.open_file(&self.parquet_path, self.meta.parquet_bytes)?;
        let metadata = self.arrow_metadata(&file)?;
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata);
        let schema = builder.parquet_schema();
        let roots: Vec<usize> = builder
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| columns.contains(&f.name().as_str()))
            .map(|(i, _)| i)
            .collect();
        let mask = ProjectionMask::roots(schema, roots);
        let mut builder = builder.with_projection(mask).with_batch_size(batch_size);
        if let Some(ranges) = ranges {
            // Keep only the row groups that hold selected rows, and express the selection in the
            // coordinates of those row groups laid end to end.
            let mut groups = Vec::new();
            let mut local: Vec<Range<usize>> = Vec::new();
            let mut offset = 0u64;
            let mut ri = 0;
            for (g, rg) in self.row_groups.iter().enumerate() {
                let (start, end) = (rg.first_row, rg.first_row + rg.rows);
                while ri < ranges.len() && ranges[ri].end <= start {
                    ri += 1;
                }
                let mut any = false;
                let mut j = ri;
                while j < ranges.len() && ranges[j].start < end {
                    let s = ranges[j].start.max(start) - start + offset;
                    let e = ranges[j].end.min(end) - start + offset;
                    local.push(s as usize..e as usize);
                    any = true;
                    j += 1;
                }
                if any {
                    groups.push(g);
                    offset += rg.rows;
                }
            }
            if groups.is_empty() {
                return Ok(None);
            }
            let selection = RowSelection::from_consecutive_ranges(local.into_iter(), offset as usize);
            builder = builder.with_row_groups(groups).with_row_selection(selection);
        }
        builder.build().map(Some).map_err(perr)
    }

    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }
}

/// [`read_index`] for the fuzzers: whether the file passes, as a bool.
pub(crate) fn check_index_file(path: &Path, meta: &PartMeta, n_row_groups: usize) -> bool {
    read_index(path, meta, Some(n_row_groups)).is_ok()
}

/// Reads and checks a part's index file against its manifest entry and its Parquet file.
fn read_index(
    path: &Path,
    meta: &PartMeta,
    n_row_groups: Option<usize>,
) -> std::result::Result<(Vec<StreamRange>, Vec<RowGroupIndex>), IndexProblem> {
    let bad = |reason: String| Err(IndexProblem::Bad(reason));
    let io = |e: std::io::Error| IndexProblem::Io(Error::Io { op: "read", path: path.to_path_buf(), source: e });
    // The header only: the token filters after it are read by the scans that need them.
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return bad("is missing".to_string()),
        Err(e) => return Err(io(e)),
    };
    let file_len = file.metadata().map_err(io)?.len();
    let mut head = [0u8; 16];
    if file_len < 16 {
        return bad("is shorter than its header".to_string());
    }
    file.read_exact_at(&mut head, 0).map_err(io)?;
    let (filter_crc, rg_rec) = match &head[0..8] {
        m if m == MAGIC => (true, RG_REC),
        m if m == MAGIC_V2 => (true, RG_REC_V2),
        m if m == MAGIC_V1 => (false, RG_REC_V2),
        _ => return bad("has a bad magic".to_string()),
    };
    if meta.index_bytes != 0 && file_len != meta.index_bytes {
        return bad(format!("is {file_len} bytes where the manifest says {}", meta.index_bytes));
    }
    let n_streams = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default()) as usize;
    let n_rgs = u32::from_le_bytes(head[12..16].try_into().unwrap_or_default()) as usize;
    let header_len = 16 + n_streams * STREAM_REC + n_rgs * rg_rec;
    if header_len as u64 + 4 > file_len {
        return bad("is shorter than its header".to_string());
    }
    let mut header = vec![0u8; header_len + 4];
    file.read_exact_at(&mut header, 0).map_err(io)?;
    let crc = u32::from_le_bytes(header[header_len..].try_into().unwrap_or_default());
    if crc32fast::hash(&header[..header_len]) != crc {
        return bad("fails its checksum".to_string());
    }
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
    let streams: Vec<StreamRange> = header[16..16 + n_streams * STREAM_REC]
        .chunks_exact(STREAM_REC)
        .map(|c| StreamRange {
            id: u64_at(c, 0),
            first_row: u64_at(c, 1),
            rows: u64_at(c, 2),
            min_time: u64_at(c, 3) as i64,
            max_time: u64_at(c, 4) as i64,
        })
        .collect();
    let row_groups: Vec<RowGroupIndex> = header[16 + n_streams * STREAM_REC..header_len]
        .chunks_exact(rg_rec)
        .map(|c| RowGroupIndex {
            first_row: u64_at(c, 0),
            rows: u64_at(c, 1),
            min_time: u64_at(c, 2) as i64,
            max_time: u64_at(c, 3) as i64,
            filter_offset: u64_at(c, 4),
            filter_len: u64_at(c, 5),
            filter_crc,
            pages_offset: if rg_rec == RG_REC { u64_at(c, 6) } else { 0 },
            pages_len: if rg_rec == RG_REC { u64_at(c, 7) } else { 0 },
        })
        .collect();
    if let Some(n) = n_row_groups
        && row_groups.len() != n
    {
        return bad(format!("has {} row groups where the part has {n}", row_groups.len()));
    }
    let rg_rows: u64 = row_groups.iter().map(|g| g.rows).sum();
    let stream_rows: u64 = streams.iter().map(|s| s.rows).sum();
    if rg_rows != meta.rows || stream_rows != meta.rows {
        return bad(format!("counts {rg_rows} and {stream_rows} rows where the part has {}", meta.rows));
    }
    let crc_len = if filter_crc { 4 } else { 0 };
    if row_groups
        .iter()
        .any(|g| g.filter_len > 0 && g.filter_offset.saturating_add(g.filter_len.saturating_add(crc_len)) > file_len)
    {
        return bad("has a token filter beyond its end".to_string());
    }
    if row_groups
        .iter()
        .any(|g| g.pages_len > 0 && g.pages_offset.saturating_add(g.pages_len.saturating_add(4)) > file_len)
    {
        return bad("has page filters beyond its end".to_string());
    }
    Ok((streams, row_groups))
}

/// An index built from a part's Parquet file.
struct BuiltIndex {
    bytes: Vec<u8>,
    streams: Vec<StreamRange>,
    row_groups: Vec<RowGroupIndex>,
}

/// What of a log part's footer is decoded and kept while the part is live: the offset index (page
/// locations, for reads of row ranges), not the column index or statistics, which no read of a log part
/// uses (its own index prunes row groups). Kept for every column, they made a part of 2,000 field columns
/// hold megabytes for as long as it lives.
fn reader_options() -> ArrowReaderOptions {
    use parquet::file::metadata::ParquetStatisticsPolicy;
    ArrowReaderOptions::new()
        .with_offset_index_policy(PageIndexPolicy::Optional)
        .with_column_index_policy(PageIndexPolicy::Skip)
        .with_column_stats_policy(ParquetStatisticsPolicy::SkipAll)
        .with_size_stats_policy(ParquetStatisticsPolicy::SkipAll)
        .with_encoding_stats_as_mask(true)
}

/// Rebuilds a part's index from its Parquet file: each Parquet row group is one index row group, as
/// [`PartWriter::write_row_group`] wrote them.
fn build_index(path: &Path, file: &File, metadata: &ArrowReaderMetadata, options: &WriteOptions) -> Result<BuiltIndex> {
    let perr = |source| Error::Parquet { path: path.to_path_buf(), source };
    let mut index = IndexBuilder::new(options);
    let message_column =
        metadata.metadata().file_metadata().schema_descr().columns().iter().position(|c| c.path().parts() == [MESSAGE]);
    for g in 0..metadata.metadata().num_row_groups() {
        let file = file.try_clone().map_err(Error::io("reopen", path))?;
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone());
        let roots: Vec<usize> = builder
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| [TIME, STREAM_ID, MESSAGE].contains(&f.name().as_str()))
            .map(|(i, _)| i)
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let rows = metadata.metadata().row_group(g).num_rows().max(1) as usize;
        let reader =
            builder.with_projection(mask).with_row_groups(vec![g]).with_batch_size(rows).build().map_err(perr)?;
        let mut batches = Vec::new();
        for batch in reader {
            batches.push(time_to_ns(batch?)?);
        }
        let Some(first) = batches.first() else {
            continue;
        };
        let batch = arrow::compute::concat_batches(&first.schema(), &batches)?;
        let pages = message_column.and_then(|c| metadata.metadata().offset_index()?.get(g)?.get(c)).map(page_starts);
        index.add_row_group(&batch, pages.as_deref())?;
    }
    let (bytes, streams, row_groups) = index.encode();
    Ok(BuiltIndex { bytes, streams, row_groups })
}

/// Builds a part's index, one row group at a time.
struct IndexBuilder {
    streams: Vec<StreamRange>,
    row_groups: Vec<RowGroupIndex>,
    filters: Vec<u8>,
    tokens: TokenCollector,
    token_filter_bits: u32,
    index_numbers: bool,
    pages: PageFilterBuilder,
}

impl IndexBuilder {
    fn new(options: &WriteOptions) -> IndexBuilder {
        IndexBuilder {
            streams: Vec::new(),
            row_groups: Vec::new(),
            filters: Vec::new(),
            tokens: TokenCollector::default(),
            token_filter_bits: options.token_filter_bits,
            index_numbers: options.index_numbers,
            pages: PageFilterBuilder::default(),
        }
    }

    /// Adds the next row group: `batch` has `time` (nanoseconds), `_stream_id` and `message`, in
    /// (stream id, time) order. `pages` are the first rows (in the row group) of its `message` column's
    /// data pages, when known: each gets a page filter.
    fn add_row_group(&mut self, batch: &RecordBatch, pages: Option<&[u64]>) -> Result<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| {
                Error::Arrow(arrow::error::ArrowError::SchemaError(format!("part has no {name} column")))
            })
        };
        let times = column(TIME)?.as_primitive::<TimestampNanosecondType>();
        let ids = column(STREAM_ID)?.as_primitive::<UInt64Type>();
        let messages = column(MESSAGE)?.as_string::<i32>();
        let first_row = self.row_groups.last().map_or(0, |g| g.first_row + g.rows);
        let (mut rg_min, mut rg_max) = (i64::MAX, i64::MIN);
        for row in 0..rows {
            let (id, t) = (ids.value(row), times.value(row));
            rg_min = rg_min.min(t);
            rg_max = rg_max.max(t);
            match self.streams.last_mut() {
                Some(s) if s.id == id => {
                    s.rows += 1;
                    s.min_time = s.min_time.min(t);
                    s.max_time = s.max_time.max(t);
                }
                _ => self.streams.push(StreamRange {
                    id,
                    first_row: first_row + row as u64,
                    rows: 1,
                    min_time: t,
                    max_time: t,
                }),
            }
        }
        for row in 0..rows {
            if messages.is_valid(row) {
                self.tokens.add_text(messages.value(row), self.index_numbers);
            }
        }
        let filter = self.tokens.build(self.token_filter_bits).to_bytes();
        let filter_offset = self.filters.len() as u64;
        self.filters.extend_from_slice(&filter);
        self.filters.extend_from_slice(&crc32fast::hash(&filter).to_le_bytes());
        let pages_offset = self.filters.len() as u64;
        let pages_len = match pages.filter(|p| p.first() == Some(&0) && p.is_sorted()) {
            Some(firsts) => {
                let blob = self.page_filters(messages, firsts);
                self.filters.extend_from_slice(&blob);
                self.filters.extend_from_slice(&crc32fast::hash(&blob).to_le_bytes());
                blob.len() as u64
            }
            None => 0,
        };
        self.row_groups.push(RowGroupIndex {
            first_row,
            rows: rows as u64,
            min_time: rg_min,
            max_time: rg_max,
            filter_offset,
            filter_len: filter.len() as u64,
            filter_crc: true,
            pages_offset,
            pages_len,
        });
        Ok(())
    }

    /// The page filters of a row group's `message` column whose pages start at rows `firsts`.
    fn page_filters(&mut self, messages: &arrow::array::StringArray, firsts: &[u64]) -> Vec<u8> {
        let rows = messages.len() as u64;
        let mut filters = Vec::new();
        let mut lens = Vec::with_capacity(firsts.len());
        for (i, first) in firsts.iter().enumerate() {
            let end = firsts.get(i + 1).copied().unwrap_or(rows).min(rows);
            for row in (*first).min(end)..end {
                if messages.is_valid(row as usize) {
                    self.pages.add(messages.value(row as usize).as_bytes());
                }
            }
            lens.push(self.pages.finish(&mut filters));
        }
        let mut blob = Vec::with_capacity(4 + firsts.len() * 8 + filters.len());
        PageFilters::encode(firsts, &lens, &filters, &mut blob);
        blob
    }

    /// The index file's bytes, with the ranges it holds.
    fn encode(self) -> (Vec<u8>, Vec<StreamRange>, Vec<RowGroupIndex>) {
        let IndexBuilder { streams, mut row_groups, filters, .. } = self;
        let header_len = 16 + streams.len() * STREAM_REC + row_groups.len() * RG_REC;
        let filters_start = (header_len + 4) as u64;
        for rg in &mut row_groups {
            rg.filter_offset += filters_start;
            rg.pages_offset += filters_start;
        }
        let mut buf = Vec::with_capacity(header_len + 4 + filters.len());
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&(streams.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(row_groups.len() as u32).to_le_bytes());
        for s in &streams {
            for v in [s.id, s.first_row, s.rows, s.min_time as u64, s.max_time as u64] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        for g in &row_groups {
            let fields = [g.first_row, g.rows, g.min_time as u64, g.max_time as u64, g.filter_offset, g.filter_len];
            for v in fields.into_iter().chain([g.pages_offset, g.pages_len]) {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&filters);
        (buf, streams, row_groups)
    }
}

/// Brings a batch read from a part to nanosecond `time`, whatever unit the part stores.
pub(crate) fn time_to_ns(batch: RecordBatch) -> Result<RecordBatch> {
    let Some((i, field)) = batch.schema().column_with_name(TIME).map(|(i, f)| (i, f.clone())) else {
        return Ok(batch);
    };
    let ns = crate::head::time_type();
    if field.data_type() == &ns {
        return Ok(batch);
    }
    let mut columns = batch.columns().to_vec();
    columns[i] = arrow::compute::cast(&columns[i], &ns)?;
    let mut fields: Vec<arrow::datatypes::Field> = batch.schema().fields().iter().map(|f| (**f).clone()).collect();
    fields[i] = arrow::datatypes::Field::new(TIME, ns, false);
    Ok(RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)?)
}

impl Drop for Part {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            let sidecar = crate::remote::sidecar_path(&self.parquet_path);
            for path in [&self.parquet_path, &self.index_path, &sidecar] {
                if let Err(error) = fs::remove_file(path)
                    && !(error.kind() == std::io::ErrorKind::NotFound && path != &self.index_path)
                {
                    tracing::warn!(%error, file = %path.display(), "failed to delete obsolete part file");
                }
            }
        }
    }
}

impl crate::remote::CachedPart for Part {
    fn remote(&self) -> &RemoteState {
        &self.remote
    }

    fn file(&self) -> (&Path, u64) {
        (&self.parquet_path, self.meta.parquet_bytes)
    }

    fn evict(&self) -> Result<bool> {
        if self.obsolete.load(Ordering::Acquire) {
            return Ok(false);
        }
        let row_groups = Some(self.row_groups.len());
        let sidecar = crate::remote::Sidecar { bytes: self.meta.parquet_bytes, row_groups, max_series_id: None };
        self.remote.evict(&self.parquet_path, &sidecar)
    }
}

/// Settings of one part write.
pub(crate) struct WriteOptions {
    pub(crate) zstd_level: i32,
    pub(crate) token_filter_bits: u32,
    pub(crate) index_numbers: bool,
    /// Fields whose values in this part total under [`SMALL_FIELD_BYTES`] (see [`small_fields`]): they are
    /// written without compression.
    pub(crate) small_fields: HashSet<String>,
}

/// Below this many bytes of values in a part, a field column is written uncompressed. zstd would save a
/// few KiB at most there, while every compressed column costs its writer a compression and a
/// decompression context (~100 KiB together, held until the part is finished) and each reader of it a
/// decompression context: a part of 2,000 sparse field columns took ~200 MiB to write.
pub(crate) const SMALL_FIELD_BYTES: u64 = 16 * 1024;

/// Bytes of an array's buffers: an upper bound of its values' size (a slice counts its whole buffers).
pub(crate) fn buffer_bytes(array: &dyn Array) -> u64 {
    let data = array.to_data();
    data.buffers().iter().map(|b| b.len() as u64).sum::<u64>() + data.nulls().map_or(0, |n| n.buffer().len() as u64)
}

/// The fields of `sizes` (field name → bytes of its values, an upper bound) under [`SMALL_FIELD_BYTES`].
pub(crate) fn small_fields<'a>(sizes: impl IntoIterator<Item = (&'a str, u64)>) -> HashSet<String> {
    sizes.into_iter().filter(|(_, b)| *b < SMALL_FIELD_BYTES).map(|(f, _)| f.to_string()).collect()
}

/// Writes a part from record batches that arrive in (stream id, time) order, one row group per call.
///
/// The `message` column starts a new data page where a stream's run of rows starts or ends, when that
/// run holds at least [`PAGE_RUN_BYTES`] of messages (see [`run_cuts`]): a read of one stream's row
/// range then decompresses only pages of that stream, not the pages it shares with its neighbours.
/// Parquet's writer cuts pages only by size, so this column is written run by run with a column writer
/// of its own per run (each closed run ends its last page), the runs' pages laid end to end and their
/// metadata and offset index merged into one column chunk (`write_message_runs`).
pub(crate) struct PartWriter {
    meta: PartMeta,
    writer: SerializedFileWriter<File>,
    /// Column writers for each row group (all columns but `message`).
    columns: ArrowRowGroupWriterFactory,
    row_groups: usize,
    /// The file's properties with `message` uncompressed: its runs' column writers leave compression
    /// to `message_zstd`, one context for the whole part instead of a new one per run.
    message_props: WriterPropertiesPtr,
    message_zstd: MessageCompressor,
    parquet_path: PathBuf,
    index_path: PathBuf,
    /// The schema callers write in (`time` in nanoseconds).
    schema: SchemaRef,
    /// The schema on disk (`time` in the part's unit).
    stored: SchemaRef,
    index: IndexBuilder,
}

impl PartWriter {
    /// Creates the part's files. `meta` gives id, tenant, day, level, labels and fields; the figures are
    /// filled in by [`PartWriter::finish`].
    pub(crate) fn create(
        data_dir: &Path,
        meta: PartMeta,
        schema: SchemaRef,
        options: WriteOptions,
    ) -> Result<PartWriter> {
        let dir = data_dir.join(meta.partition_dir());
        fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        let parquet_path = meta.parquet_path(data_dir);
        let index_path = meta.index_path(data_dir);
        // Never over an existing file: part ids are kept above every part file on disk, and this makes sure.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&parquet_path)
            .map_err(Error::io("create", &parquet_path))?;
        let level = ZstdLevel::try_new(options.zstd_level).unwrap_or_default();
        let labels_json = serde_json::to_string(&meta.labels).unwrap_or_default();
        // The configured level pays off only on the message column; the others are dictionary or delta
        // encoded already and take the cheap level 1.
        let cheap = Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default());
        let mut props = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_2_0)
            .set_compression(cheap)
            .set_column_compression(MESSAGE.into(), Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(usize::MAX))
            .set_data_page_size_limit(1024 * 1024)
            .set_dictionary_enabled(true)
            .set_column_dictionary_enabled(TIME.into(), false)
            .set_column_encoding(TIME.into(), Encoding::DELTA_BINARY_PACKED)
            .set_column_dictionary_enabled(MESSAGE.into(), false)
            // PLAIN beats DELTA_BYTE_ARRAY under zstd on log lines (measured with
            // benches/src/bin/encode_experiment.rs on the benchmark workload).
            .set_column_encoding(MESSAGE.into(), Encoding::PLAIN)
            .set_key_value_metadata(Some(vec![
                KeyValue::new("lumen.format".to_string(), "logs/1".to_string()),
                KeyValue::new("lumen.labels".to_string(), labels_json),
            ]));
        // Fields are free text of unknown shape: give them the configured level too, and PLAIN when their
        // dictionary overflows. The writer's default fallback (DELTA_BYTE_ARRAY) allocates ~31 KiB of
        // encoder per column up front, which made a part of 2000 sparse field columns cost ~60 MiB to write.
        for f in &meta.fields {
            let compression =
                if options.small_fields.contains(f) { Compression::UNCOMPRESSED } else { Compression::ZSTD(level) };
            props = props
                .set_column_compression(f.as_str().into(), compression)
                .set_column_encoding(f.as_str().into(), Encoding::PLAIN);
        }
        // Nothing reads the message column's min/max, and its column index would need merging across the
        // runs it is written in; the offset index (page locations), which reads need, stays.
        let props = props.set_column_statistics_enabled(MESSAGE.into(), EnabledStatistics::None);
        let message_props =
            Arc::new(props.clone().set_column_compression(MESSAGE.into(), Compression::UNCOMPRESSED).build());
        let message_zstd = MessageCompressor {
            zstd: zstd::bulk::Compressor::new(level.compression_level()).map_err(Error::io("zstd", &parquet_path))?,
            compression: Compression::ZSTD(level),
        };
        let props = props.build();
        let mut fields: Vec<arrow::datatypes::Field> = schema.fields().iter().map(|f| (**f).clone()).collect();
        fields[0] = arrow::datatypes::Field::new(
            TIME,
            arrow::datatypes::DataType::Timestamp(meta.time_unit.arrow(), Some("UTC".into())),
            false,
        );
        let stored: SchemaRef = Arc::new(arrow::datatypes::Schema::new(fields));
        let perr = |source| Error::Parquet { path: parquet_path.clone(), source };
        // The Arrow writer puts the Arrow schema into the file's metadata; rows are then written through
        // its lower-level parts.
        let (writer, columns) = ArrowWriter::try_new(file, stored.clone(), Some(props))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(perr)?;
        Ok(PartWriter {
            meta,
            writer,
            columns,
            row_groups: 0,
            message_props,
            message_zstd,
            parquet_path,
            index_path,
            schema,
            stored,
            index: IndexBuilder::new(&options),
        })
    }

    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Writes one row group; `batch` must have the part's schema.
    pub(crate) fn write_row_group(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let perr = |source| Error::Parquet { path: self.parquet_path.clone(), source };
        let mut columns = batch.columns().to_vec();
        columns[0] = arrow::compute::cast(&columns[0], self.stored.field(0).data_type())?;
        let ids = batch
            .column_by_name(STREAM_ID)
            .map(|c| c.as_primitive::<UInt64Type>().values().to_vec())
            .unwrap_or_default();
        let writers = self.columns.create_column_writers(self.row_groups).map_err(perr)?;
        let message_descr = row_group_column_descr(&self.writer, MESSAGE);
        let mut row_group = self.writer.next_row_group().map_err(perr)?;
        // Where the message column's data pages start, for their page filters.
        let mut pages: Option<Vec<u64>> = None;
        // Every column is flat: one leaf, one writer per field, in schema order.
        for ((field, column), mut writer) in self.stored.fields().iter().zip(&columns).zip(writers) {
            if field.name() == MESSAGE
                && let Some(lines) = column.as_string_opt::<i32>()
                && let Some(descr) = message_descr.clone()
                && descr.max_def_level() == 0
                && descr.max_rep_level() == 0
            {
                let (bytes, close) =
                    write_message_runs(descr, &self.message_props, &mut self.message_zstd, lines, &ids, PAGE_RUN_BYTES)
                        .map_err(perr)?;
                pages = close.offset_index.as_ref().map(page_starts);
                row_group.append_column(&bytes, close).map_err(perr)?;
                continue;
            }
            for leaf in compute_leaves(field, column).map_err(perr)? {
                writer.write(&leaf).map_err(perr)?;
            }
            writer.close().and_then(|chunk| chunk.append_to_row_group(&mut row_group)).map_err(perr)?;
        }
        row_group.close().map_err(perr)?;
        self.index.add_row_group(batch, pages.as_deref())?;
        self.row_groups += 1;
        Ok(())
    }

    /// Finishes both files, syncs them, and returns the part's manifest entry.
    pub(crate) fn finish(self, data_dir: &Path) -> Result<Arc<Part>> {
        let PartWriter { mut meta, writer, parquet_path, index_path, index, .. } = self;
        // Writes the footer, then hands back the file.
        let file = writer.into_inner().map_err(|source| Error::Parquet { path: parquet_path.clone(), source })?;
        file.sync_all().map_err(Error::io("sync", &parquet_path))?;
        let parquet_bytes = file.metadata().map_err(Error::io("stat", &parquet_path))?.len();

        let (buf, streams, row_groups) = index.encode();
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&index_path)
            .map_err(Error::io("create", &index_path))?;
        f.write_all(&buf).and_then(|()| f.sync_all()).map_err(Error::io("write", &index_path))?;

        meta.rows = row_groups.iter().map(|g| g.rows).sum();
        meta.min_time = row_groups.iter().map(|g| g.min_time).min().unwrap_or(0);
        meta.max_time = row_groups.iter().map(|g| g.max_time).max().unwrap_or(0);
        meta.parquet_bytes = parquet_bytes;
        meta.index_bytes = buf.len() as u64;
        crate::manifest::sync_dir(&data_dir.join(meta.partition_dir()))?;
        Ok(Arc::new(Part::new(meta, (parquet_path, index_path), (streams, row_groups), None, false)))
    }

    /// Abandons a half-written part, deleting its Parquet file (its index is written only by
    /// [`PartWriter::finish`]).
    pub(crate) fn abort(self) {
        drop(self.writer);
        let _ = fs::remove_file(&self.parquet_path);
    }
}

/// A run of one stream at least this large (bytes of messages) gets data pages of its own in the
/// `message` column. Each cut costs a page (header, an offset index entry, and a shorter zstd frame);
/// a query naming the stream saves decompressing up to a page (1 MiB) of other streams at each end.
pub(crate) const PAGE_RUN_BYTES: usize = 64 * 1024;

/// Where the `message` column of a row group starts a new page: the rows (never 0) where the stream
/// changes and the run before or after the change holds at least `min_bytes` of messages. Small runs of
/// neighbouring streams stay together in shared pages.
pub(crate) fn run_cuts(ids: &[u64], offsets: &[i32], min_bytes: usize) -> Vec<usize> {
    // Runs as (first row, end row).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (row, id) in ids.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if ids[run.0] == *id => run.1 = row + 1,
            _ => runs.push((row, row + 1)),
        }
    }
    let bytes = |run: &(usize, usize)| (offsets[run.1] - offsets[run.0]) as usize;
    runs.windows(2).filter(|w| bytes(&w[0]) >= min_bytes || bytes(&w[1]) >= min_bytes).map(|w| w[1].0).collect()
}

/// The first rows (in their row group) of a column chunk's data pages.
fn page_starts(index: &OffsetIndexMetaData) -> Vec<u64> {
    index.page_locations().iter().map(|p| p.first_row_index.max(0) as u64).collect()
}

/// The descriptor of the named top-level column of the file being written.
fn row_group_column_descr(writer: &SerializedFileWriter<File>, name: &str) -> Option<ColumnDescPtr> {
    writer.schema_descr().columns().iter().find(|c| c.path().parts() == [name]).cloned()
}

/// Writes the `message` column of one row group (`lines`, not null, in the rows' order; `ids` the rows'
/// stream ids) as one column chunk whose data pages start anew at each of [`run_cuts`] (runs of at least
/// `min_run_bytes`): one column writer
/// per stretch between cuts, each closed (which ends its last page) before the next starts on the same
/// buffer. Returns the chunk's bytes, at offset 0, and its merged [`ColumnCloseResult`], for
/// `SerializedRowGroupWriter::append_column`.
fn write_message_runs(
    descr: ColumnDescPtr,
    props: &WriterPropertiesPtr,
    compressor: &mut MessageCompressor,
    lines: &arrow::array::StringArray,
    ids: &[u64],
    min_run_bytes: usize,
) -> parquet::errors::Result<(bytes::Bytes, ColumnCloseResult)> {
    let offsets = lines.value_offsets();
    let mut cuts = if ids.len() == lines.len() { run_cuts(ids, offsets, min_run_bytes) } else { Vec::new() };
    cuts.push(lines.len());
    // The values as slices of one shared buffer: no allocation per line.
    let base = offsets.first().copied().unwrap_or(0) as usize;
    let end = offsets[lines.len()] as usize;
    let data = bytes::Bytes::from_owner(ArrowBytes(lines.values().clone())).slice(base..end);
    let mut sink = TrackedWrite::new(Vec::with_capacity(data.len() / 4));
    let mut closed = Vec::with_capacity(cuts.len());
    let mut start = 0;
    for end in cuts {
        let values: Vec<ByteArray> = (start..end)
            .map(|i| ByteArray::from(data.slice(offsets[i] as usize - base..offsets[i + 1] as usize - base)))
            .collect();
        let page_writer =
            Box::new(CompressingPageWriter { inner: SerializedPageWriter::new(&mut sink), zstd: &mut compressor.zstd });
        let ColumnWriter::ByteArrayColumnWriter(mut writer) =
            get_column_writer(descr.clone(), props.clone(), page_writer)
        else {
            return Err(parquet::errors::ParquetError::General("the message column is not a byte array".to_string()));
        };
        writer.write_batch(&values, None, None)?;
        closed.push(writer.close()?);
        start = end;
    }
    let bytes = bytes::Bytes::from(sink.into_inner()?);
    let mut close = merge_closed_runs(closed);
    // The pages are compressed, though the runs' writers were told not to.
    close.metadata = close.metadata.clone().into_builder().set_compression(compressor.compression).build()?;
    Ok((bytes, close))
}

/// An Arrow buffer as the owner of a [`bytes::Bytes`]: the message values are handed to Parquet's
/// writer without a copy.
struct ArrowBytes(arrow::buffer::Buffer);

impl AsRef<[u8]> for ArrowBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// One column chunk's close result from those of its consecutive runs, written one after another into
/// one buffer (their page offsets are already in that buffer's coordinates).
fn merge_closed_runs(mut runs: Vec<ColumnCloseResult>) -> ColumnCloseResult {
    let first = runs.remove(0);
    if runs.is_empty() {
        return first;
    }
    let sum = |f: &dyn Fn(&ColumnCloseResult) -> i64| f(&first) + runs.iter().map(f).sum::<i64>();
    let num_values = sum(&|r| r.metadata.num_values());
    let compressed = sum(&|r| r.metadata.compressed_size());
    let uncompressed = sum(&|r| r.metadata.uncompressed_size());
    let unencoded = first
        .metadata
        .unencoded_byte_array_data_bytes()
        .map(|b| b + runs.iter().filter_map(|r| r.metadata.unencoded_byte_array_data_bytes()).sum::<i64>());
    let mut encoding_stats: Vec<PageEncodingStats> = Vec::new();
    for stats in std::iter::once(&first).chain(&runs).filter_map(|r| r.metadata.page_encoding_stats()) {
        for s in stats {
            match encoding_stats.iter_mut().find(|e| e.page_type == s.page_type && e.encoding == s.encoding) {
                Some(e) => e.count += s.count,
                None => encoding_stats.push(s.clone()),
            }
        }
    }
    let offset_index = first.offset_index.clone().map(|mut index| {
        let mut rows = first.rows_written as i64;
        for run in &runs {
            if let Some(more) = &run.offset_index {
                index.page_locations.extend(more.page_locations.iter().map(|p| {
                    let mut p = p.clone();
                    p.first_row_index += rows;
                    p
                }));
                if let (Some(all), Some(more)) =
                    (&mut index.unencoded_byte_array_data_bytes, &more.unencoded_byte_array_data_bytes)
                {
                    all.extend_from_slice(more);
                }
            }
            rows += run.rows_written as i64;
        }
        index
    });
    let mut metadata = first
        .metadata
        .clone()
        .into_builder()
        .set_num_values(num_values)
        .set_total_compressed_size(compressed)
        .set_total_uncompressed_size(uncompressed)
        .set_unencoded_byte_array_data_bytes(unencoded)
        .clear_statistics();
    if first.metadata.page_encoding_stats().is_some() {
        metadata = metadata.set_page_encoding_stats(encoding_stats);
    }
    let offset_index: Option<OffsetIndexMetaData> = offset_index;
    ColumnCloseResult {
        bytes_written: first.bytes_written + runs.iter().map(|r| r.bytes_written).sum::<u64>(),
        rows_written: first.rows_written + runs.iter().map(|r| r.rows_written).sum::<u64>(),
        metadata: metadata.build().unwrap_or(first.metadata),
        bloom_filter: None,
        column_index: None,
        offset_index,
    }
}

#[cfg(test)]
mod tests;

/// The zstd context that compresses a part's `message` pages, and the codec recorded for the column.
struct MessageCompressor {
    zstd: zstd::bulk::Compressor<'static>,
    compression: Compression,
}

/// A page writer that compresses the pages of an uncompressed column writer with a context it is lent,
/// then writes them as `inner` does. Parquet's column writer makes a new zstd context for each writer,
/// and at the compaction level a new context costs about as much as compressing a page (its tables are
/// cleared); the runs of [`write_message_runs`] would make one per run.
struct CompressingPageWriter<'a> {
    inner: SerializedPageWriter<'a, Vec<u8>>,
    zstd: &'a mut zstd::bulk::Compressor<'static>,
}

impl PageWriter for CompressingPageWriter<'_> {
    fn write_page(&mut self, page: CompressedPage) -> parquet::errors::Result<PageWriteSpec> {
        let uncompressed = page.uncompressed_size();
        let mut compress = |data: &[u8]| -> parquet::errors::Result<Vec<u8>> {
            self.zstd.compress(data).map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        };
        let page = match page.compressed_page().clone() {
            Page::DataPageV2 {
                buf,
                num_values,
                encoding,
                num_nulls,
                num_rows,
                def_levels_byte_len,
                rep_levels_byte_len,
                is_compressed: false,
                statistics,
            } => {
                // Version 2 pages keep their levels uncompressed, in front of the values.
                let levels = (def_levels_byte_len + rep_levels_byte_len) as usize;
                let mut out = buf[..levels].to_vec();
                out.extend_from_slice(&compress(&buf[levels..])?);
                Page::DataPageV2 {
                    buf: out.into(),
                    num_values,
                    encoding,
                    num_nulls,
                    num_rows,
                    def_levels_byte_len,
                    rep_levels_byte_len,
                    is_compressed: true,
                    statistics,
                }
            }
            Page::DataPage { buf, num_values, encoding, def_level_encoding, rep_level_encoding, statistics } => {
                Page::DataPage {
                    buf: compress(&buf)?.into(),
                    num_values,
                    encoding,
                    def_level_encoding,
                    rep_level_encoding,
                    statistics,
                }
            }
            Page::DictionaryPage { buf, num_values, encoding, is_sorted } => {
                Page::DictionaryPage { buf: compress(&buf)?.into(), num_values, encoding, is_sorted }
            }
            Page::DataPageV2 { .. } => {
                return Err(parquet::errors::ParquetError::General(
                    "a message page arrived compressed already".to_string(),
                ));
            }
        };
        self.inner.write_page(CompressedPage::new(page, uncompressed))
    }

    fn close(&mut self) -> parquet::errors::Result<()> {
        self.inner.close()
    }
}
