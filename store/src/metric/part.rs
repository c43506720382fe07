//! Metric parts: one tenant's samples of one day in Parquet, one run of rows per series in time order,
//! runs ordered by metric name then series id (so one metric's series lie together).
//!
//! | column      | Arrow                     | Parquet encoding                     |
//! |-------------|---------------------------|--------------------------------------|
//! | `series_id` | UInt32                    | DELTA_BINARY_PACKED                  |
//! | `t`         | Timestamp(ms, UTC)        | DELTA_BINARY_PACKED                  |
//! | `m`         | Int64                     | BYTE_STREAM_SPLIT                    |
//! | `scale`     | Int8                      | dictionary (long runs)               |
//!
//! Values are stored as decimals: `value = m / 10^scale`, with one scale per series run chosen so that
//! every value of the run decodes bit for bit (a mantissa below 2^53 and a power of ten up to 10^15 are
//! exact doubles, and IEEE division rounds correctly, so the quotient is the double the decimal text
//! names). Counters become small integers whose bytes repeat, which zstd packs far better than raw
//! doubles. A value that no such decimal reproduces — NaN (stale markers keep their exact bits), ±Inf,
//! −0.0, 17-digit doubles — is stored as its raw bits with `scale = -128`.
//!
//! Within a series run, `t` holds the first timestamp and then the differences between neighbours, so
//! the delta-packed column sees second-order differences (near zero for a steady scrape interval). A
//! counter-like run (mantissas never decreasing) stores `m` the same way, marked by `scale = k + 32`:
//! its differences are small and repeat. Gauges keep absolute mantissas, which BYTE_STREAM_SPLIT packs
//! better than their signed differences. Readers undo both with a prefix sum per run, so a run is always
//! read whole.
//!
//! The per-series row ranges (runs) are not stored: they are derived from the `series_id` and `t`
//! columns the first time a part is read, and kept.

use std::fs::{self, File};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, AsArray, Int8Array, Int64Array, TimestampMillisecondArray, UInt32Array};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{DataType, Field, Int8Type, Int64Type, Schema, SchemaRef, TimeUnit, UInt32Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, PageIndexPolicy};
use parquet::file::properties::{WriterProperties, WriterVersion};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metrics::StoreMetrics;
use crate::quarantine::SkippedPart;

pub(crate) const SERIES_ID: &str = "series_id";
pub(crate) const T: &str = "t";
pub(crate) const M: &str = "m";
pub(crate) const SCALE: &str = "scale";
/// `scale` of a row whose `m` holds the raw bits of the value.
pub(crate) const RAW: i8 = -128;
/// Added to `scale` in a run whose mantissas are stored as differences.
pub(crate) const DELTA: i8 = 32;
const MAX_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
const POW10: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
/// Rows buffered before they go to the Parquet writer.
const WRITE_BATCH: usize = 65_536;

/// What the manifest records of a metric part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct MetricPartMeta {
    pub(crate) id: u64,
    pub(crate) tenant: String,
    /// Day number since the epoch (UTC) of every row.
    pub(crate) day: i64,
    /// Milliseconds.
    pub(crate) min_time: i64,
    pub(crate) max_time: i64,
    pub(crate) rows: u64,
    pub(crate) series: u64,
    pub(crate) bytes: u64,
    /// 0 for a flushed part, one more than its highest input for a compacted one.
    pub(crate) level: u32,
}

impl MetricPartMeta {
    /// `metrics/tenant=<t>/date=<YYYY-MM-DD>`, relative to the data directory.
    pub(crate) fn partition_dir(&self) -> PathBuf {
        PathBuf::from("metrics")
            .join(format!("tenant={}", self.tenant))
            .join(format!("date={}", crate::time::format_day(self.day)))
    }

    pub(crate) fn path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.rel())
    }

    /// The file's path under the data directory.
    pub(crate) fn rel(&self) -> PathBuf {
        self.partition_dir().join(format!("{:016x}.parquet", self.id))
    }
}

/// One series' rows in a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) id: u32,
    pub(crate) first_row: u64,
    pub(crate) rows: u64,
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
}

/// A live metric part. Marked obsolete when it leaves the manifest; its file goes when the last reader
/// lets go.
pub(crate) struct MetricPart {
    pub(crate) meta: MetricPartMeta,
    pub(crate) path: PathBuf,
    runs: OnceLock<Vec<Run>>,
    ids: OnceLock<RoaringBitmap>,
    metadata: OnceLock<ArrowReaderMetadata>,
    obsolete: AtomicBool,
    /// Why a read of this part failed: from then on every read leaves it out.
    unreadable: OnceLock<String>,
    /// Its standing towards the object store (see [`crate::remote`]).
    pub(crate) remote: crate::remote::RemoteState,
}

/// What opening a metric part named by the manifest found.
pub(crate) enum MetricOpened {
    /// With the highest series id it holds.
    Good(Box<MetricPart>, Option<u32>),
    /// The file does not match its manifest entry or cannot be read.
    Damaged(String),
    Missing(String),
}

impl Drop for MetricPart {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            // An evicted part has no local file; a cached one has a sidecar besides.
            let _ = fs::remove_file(crate::remote::sidecar_path(&self.path));
            if let Err(error) = fs::remove_file(&self.path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(%error, file = %self.path.display(), "failed to delete obsolete metric part");
            }
        }
    }
}

impl crate::remote::CachedPart for MetricPart {
    fn remote(&self) -> &crate::remote::RemoteState {
        &self.remote
    }

    fn file(&self) -> (&Path, u64) {
        (&self.path, self.meta.bytes)
    }

    fn evict(&self) -> Result<bool> {
        if self.obsolete.load(Ordering::Acquire) {
            return Ok(false);
        }
        // The highest id, which a start needs, from the runs when they were read (else the footer's
        // statistics, read again at the start, are not there: the catalog alone then vouches).
        let max_series_id = self.runs.get().and_then(|r| r.last().map(|r| r.id)).or_else(|| {
            self.metadata.get().and_then(|m| {
                m.metadata()
                    .row_groups()
                    .iter()
                    .filter_map(|rg| match rg.column(0).statistics() {
                        Some(parquet::file::statistics::Statistics::Int32(s)) => s.max_opt().map(|m| *m as u32),
                        _ => None,
                    })
                    .max()
            })
        });
        let sidecar = crate::remote::Sidecar { bytes: self.meta.bytes, row_groups: None, max_series_id };
        self.remote.evict(&self.path, &sidecar)
    }
}

pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(SERIES_ID, DataType::UInt32, false),
        Field::new(T, DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        Field::new(M, DataType::Int64, false),
        Field::new(SCALE, DataType::Int8, false),
    ]))
}

impl MetricPart {
    pub(crate) fn open(data_dir: &Path, meta: MetricPartMeta) -> MetricPart {
        let path = meta.path(data_dir);
        let remote = crate::remote::RemoteState::new(meta.rel(), meta.max_time, false);
        MetricPart {
            remote,
            meta,
            path,
            runs: OnceLock::new(),
            ids: OnceLock::new(),
            metadata: OnceLock::new(),
            obsolete: AtomicBool::new(false),
            unreadable: OnceLock::new(),
        }
    }

    /// Opens a part the manifest names and checks it against its entry: the recorded size, a readable
    /// footer (kept for the reads) with the recorded rows. Also returns the highest series id it holds
    /// (from the footer's statistics), below which new series ids never go.
    ///
    /// # Errors
    /// I/O errors that say nothing about the content (permissions, a failing disk).
    pub(crate) fn open_checked(data_dir: &Path, meta: MetricPartMeta) -> Result<MetricOpened> {
        let path = meta.path(data_dir);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(match crate::remote::read_sidecar(&path) {
                    // In the object store only: checked when a read fetches it.
                    Ok(Some(sidecar)) if sidecar.bytes == meta.bytes => {
                        let max_id = sidecar.max_series_id;
                        let part = MetricPart::open(data_dir, meta);
                        part.remote.set_in_bucket();
                        MetricOpened::Good(Box::new(part), max_id)
                    }
                    Ok(Some(sidecar)) => MetricOpened::Missing(format!(
                        "it lives in the object store, and its sidecar says {} bytes where the manifest says {}",
                        sidecar.bytes, meta.bytes
                    )),
                    Ok(None) => MetricOpened::Missing("the manifest names it but the file is missing".to_string()),
                    Err(e) => MetricOpened::Missing(e.to_string()),
                });
            }
            Err(e) => return Err(Error::Io { op: "open", path, source: e }),
        };
        let in_bucket = crate::remote::sidecar_path(&path).exists();
        let len = file.metadata().map_err(Error::io("stat", &path))?.len();
        if len != meta.bytes {
            return Ok(MetricOpened::Damaged(format!("{len} bytes where the manifest says {}", meta.bytes)));
        }
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let metadata = match ArrowReaderMetadata::load(&file, options) {
            Ok(m) => m,
            Err(e) => return Ok(MetricOpened::Damaged(format!("unreadable Parquet footer: {e}"))),
        };
        let rows = metadata.metadata().file_metadata().num_rows();
        if rows != meta.rows as i64 {
            return Ok(MetricOpened::Damaged(format!("{rows} rows where the manifest says {}", meta.rows)));
        }
        let mut max_id: Option<u32> = None;
        let mut complete = true;
        for rg in metadata.metadata().row_groups() {
            match rg.column(0).statistics() {
                Some(parquet::file::statistics::Statistics::Int32(s)) if s.max_opt().is_some() => {
                    let m = s.max_opt().copied().unwrap_or_default() as u32;
                    max_id = Some(max_id.map_or(m, |x| x.max(m)));
                }
                _ => complete = false,
            }
        }
        let part = MetricPart::open(data_dir, meta);
        if in_bucket {
            part.remote.set_in_bucket();
        }
        let _ = part.metadata.set(metadata);
        if !complete {
            // No statistics: the ids are read from the column itself.
            match part.ids() {
                Ok(ids) => max_id = ids.max(),
                Err(e) => return Ok(MetricOpened::Damaged(format!("unreadable series ids: {e}"))),
            }
        }
        Ok(MetricOpened::Good(Box::new(part), max_id))
    }

    /// Marks the part unreadable after `error` in a read of it (see `Part::set_unreadable` of the log
    /// store: the same rules).
    pub(crate) fn set_unreadable(&self, error: &Error, metrics: &StoreMetrics) {
        if error.is_remote() {
            // Not damage: the object store did not deliver it this time.
            tracing::warn!(%error, "a metric part could not be fetched from the object store; this read leaves it out");
            return;
        }
        if self.unreadable.set(error.to_string()).is_ok() {
            metrics.unreadable_parts.inc();
            tracing::error!(
                part = %self.path.display(),
                tenant = %self.meta.tenant,
                samples = self.meta.rows,
                %error,
                "a metric part cannot be read; reads leave it out and say so until the next start, which checks it again"
            );
        }
    }

    pub(crate) fn is_unreadable(&self) -> bool {
        self.unreadable.get().is_some()
    }

    /// The part as a [`SkippedPart`], if it is unreadable.
    pub(crate) fn skipped(&self) -> Option<SkippedPart> {
        self.unreadable.get().map(|reason| SkippedPart {
            file: self.path.clone(),
            min_time_ns: self.meta.min_time.saturating_mul(1_000_000),
            max_time_ns: self.meta.max_time.saturating_mul(1_000_000),
            rows: self.meta.rows,
            reason: reason.clone(),
        })
    }

    pub(crate) fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }

    fn perr(&self) -> impl Fn(parquet::errors::ParquetError) -> Error + '_ {
        move |source| Error::Parquet { path: self.path.clone(), source }
    }

    fn builder(&self, columns: &[usize]) -> Result<ParquetRecordBatchReaderBuilder<File>> {
        let file = self.remote.open_file(&self.path, self.meta.bytes)?;
        let metadata = match self.metadata.get() {
            Some(m) => m.clone(),
            None => {
                let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
                let m = ArrowReaderMetadata::load(&file, options).map_err(self.perr())?;
                self.metadata.get_or_init(|| m).clone()
            }
        };
        let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata);
        let mask = ProjectionMask::roots(builder.parquet_schema(), columns.iter().copied());
        Ok(builder.with_projection(mask))
    }

    /// The part's series runs, in id order.
    pub(crate) fn runs(&self) -> Result<&[Run]> {
        if let Some(r) = self.runs.get() {
            return Ok(r);
        }
        let reader = self.builder(&[0, 1])?.with_batch_size(WRITE_BATCH).build().map_err(self.perr())?;
        let mut runs: Vec<Run> = Vec::new();
        let mut row = 0u64;
        for batch in reader {
            let batch = batch?;
            let ids = batch.column(0).as_primitive::<UInt32Type>();
            let ts = batch.column(1).as_primitive::<arrow::datatypes::TimestampMillisecondType>();
            for (&id, &t) in ids.values().iter().zip(ts.values().iter()) {
                match runs.last_mut() {
                    Some(r) if r.id == id => {
                        r.rows += 1;
                        r.max_t += t;
                    }
                    _ => runs.push(Run { id, first_row: row, rows: 1, min_t: t, max_t: t }),
                }
                row += 1;
            }
        }
        Ok(self.runs.get_or_init(|| runs))
    }

    /// The ids of the series in this part.
    pub(crate) fn ids(&self) -> Result<&RoaringBitmap> {
        if let Some(ids) = self.ids.get() {
            return Ok(ids);
        }
        let ids: RoaringBitmap = self.runs()?.iter().map(|r| r.id).collect();
        Ok(self.ids.get_or_init(|| ids))
    }

    /// Reads and decodes the samples of whole runs (in file order), laid end to end.
    pub(crate) fn read_runs(&self, runs: &[Run]) -> Result<(ScalarBuffer<i64>, ScalarBuffer<f64>)> {
        let total: u64 = runs.iter().map(|r| r.rows).sum();
        if total == 0 {
            return Ok((ScalarBuffer::from(Vec::new()), ScalarBuffer::from(Vec::new())));
        }
        // Neighbouring runs read as one range.
        let mut ranges: Vec<Range<usize>> = Vec::new();
        for r in runs {
            let (s, e) = (r.first_row as usize, (r.first_row + r.rows) as usize);
            match ranges.last_mut() {
                Some(last) if last.end == s => last.end = e,
                _ => ranges.push(s..e),
            }
        }
        let (mut t, mut m, sc) = match self.read_columns_by_page(&ranges, total as usize)? {
            Some(columns) => columns,
            None => self.read_columns(&ranges, total as usize)?,
        };
        let mut v: Vec<f64> = Vec::with_capacity(total as usize);
        let mut off = 0usize;
        for r in runs {
            let n = r.rows as usize;
            let (ts, ms, ss) = (&mut t[off..off + n], &mut m[off..off + n], &sc[off..off + n]);
            for i in 1..n {
                ts[i] = ts[i].wrapping_add(ts[i - 1]);
            }
            if ss.first().is_some_and(|&s| s != RAW && s >= DELTA) {
                for i in 1..n {
                    ms[i] = ms[i].wrapping_add(ms[i - 1]);
                }
                v.extend(ms.iter().zip(ss).map(|(&m, &s)| decode_value(m, s - DELTA)));
            } else {
                v.extend(ms.iter().zip(ss).map(|(&m, &s)| decode_value(m, s)));
            }
            off += n;
        }
        Ok((ScalarBuffer::from(t), ScalarBuffer::from(v)))
    }
}

/// The stored `t`, `m` and `scale` of row ranges (ascending, not touching), laid end to end.
type Columns = (Vec<i64>, Vec<i64>, Vec<i8>);

impl MetricPart {
    /// [`MetricPart::read_runs`]' columns through the Arrow reader: the general way, for any layout.
    fn read_columns(&self, ranges: &[Range<usize>], total: usize) -> Result<Columns> {
        let selection = RowSelection::from_consecutive_ranges(ranges.iter().cloned(), self.meta.rows as usize);
        let reader = self
            .builder(&[1, 2, 3])?
            .with_row_selection(selection)
            .with_batch_size(total)
            .build()
            .map_err(self.perr())?;
        let mut t: Vec<i64> = Vec::with_capacity(total);
        let mut m: Vec<i64> = Vec::with_capacity(total);
        let mut sc: Vec<i8> = Vec::with_capacity(total);
        for batch in reader {
            let batch = batch?;
            t.extend_from_slice(batch.column(0).as_primitive::<arrow::datatypes::TimestampMillisecondType>().values());
            m.extend_from_slice(batch.column(1).as_primitive::<Int64Type>().values());
            sc.extend_from_slice(batch.column(2).as_primitive::<Int8Type>().values());
        }
        Ok((t, m, sc))
    }

    /// [`MetricPart::read_columns`] with `t` (PLAIN) and `m` (BYTE_STREAM_SPLIT) decoded straight from
    /// their data pages, found through the page index: only the selected rows of the pages they fall in,
    /// without the Arrow reader's record buffers and its byte-by-byte stream join, which were most of a
    /// PromQL query's decoding after decompression (issue 23). `scale` still goes through the Arrow
    /// reader. `None` (the caller then uses [`MetricPart::read_columns`]) when the file is not laid out
    /// as this writer lays it out: no page index, another encoding, a dictionary or nulls.
    fn read_columns_by_page(&self, ranges: &[Range<usize>], total: usize) -> Result<Option<Columns>> {
        use parquet::column::page::{Page, PageReader};
        use parquet::file::serialized_reader::SerializedPageReader;

        if ranges.windows(2).any(|w| w[0].end > w[1].start) {
            return Ok(None);
        }
        // The scale column, and the footer with its page index (loaded by the first builder).
        let selection = RowSelection::from_consecutive_ranges(ranges.iter().cloned(), self.meta.rows as usize);
        let reader =
            self.builder(&[3])?.with_row_selection(selection).with_batch_size(total).build().map_err(self.perr())?;
        let mut sc: Vec<i8> = Vec::with_capacity(total);
        for batch in reader {
            sc.extend_from_slice(batch?.column(0).as_primitive::<Int8Type>().values());
        }
        let Some(metadata) = self.metadata.get() else {
            return Ok(None);
        };
        let metadata = metadata.metadata().clone();
        let Some(offset_index) = metadata.offset_index() else {
            return Ok(None);
        };
        let file = Arc::new(self.remote.open_file(&self.path, self.meta.bytes)?);
        let mut t: Vec<i64> = Vec::with_capacity(total);
        let mut m: Vec<i64> = Vec::with_capacity(total);
        let mut rg_start = 0usize;
        for (rg_index, rg) in metadata.row_groups().iter().enumerate() {
            let rg_rows = rg.num_rows() as usize;
            let rg_end = rg_start + rg_rows;
            if !ranges.iter().any(|r| r.start < rg_end && r.end > rg_start) {
                rg_start = rg_end;
                continue;
            }
            for (column, out) in [(1usize, &mut t), (2usize, &mut m)] {
                let (Some(chunk), Some(index)) =
                    (rg.columns().get(column), offset_index.get(rg_index).and_then(|c| c.get(column)))
                else {
                    return Ok(None);
                };
                let locations = index.page_locations();
                let want = if column == 1 { Encoding::PLAIN } else { Encoding::BYTE_STREAM_SPLIT };
                if chunk.dictionary_page_offset().is_some() || locations.first().is_none_or(|l| l.first_row_index != 0)
                {
                    return Ok(None);
                }
                let mut pages = SerializedPageReader::new(file.clone(), chunk, rg_rows, Some(locations.clone()))
                    .map_err(self.perr())?;
                let mut next_range = 0usize;
                for (k, loc) in locations.iter().enumerate() {
                    let first = rg_start + loc.first_row_index as usize;
                    let end = locations.get(k + 1).map_or(rg_end, |l| rg_start + l.first_row_index as usize);
                    while next_range < ranges.len() && ranges[next_range].end <= first {
                        next_range += 1;
                    }
                    let wanted = ranges[next_range.min(ranges.len())..].iter().take_while(|r| r.start < end);
                    let wanted: Vec<Range<usize>> = wanted.map(|r| r.start.max(first)..r.end.min(end)).collect();
                    if wanted.is_empty() {
                        pages.skip_next_page().map_err(self.perr())?;
                        continue;
                    }
                    let page = pages.get_next_page().map_err(self.perr())?;
                    let (buf, values, encoding, levels, nulls) = match &page {
                        Some(Page::DataPageV2 {
                            buf,
                            num_values,
                            encoding,
                            num_nulls,
                            def_levels_byte_len,
                            rep_levels_byte_len,
                            ..
                        }) => (
                            buf,
                            *num_values,
                            *encoding,
                            (def_levels_byte_len + rep_levels_byte_len) as usize,
                            *num_nulls,
                        ),
                        Some(Page::DataPage { buf, num_values, encoding, .. }) => (buf, *num_values, *encoding, 0, 0),
                        _ => return Ok(None),
                    };
                    let n = values as usize;
                    let bytes = buf.get(levels..).unwrap_or_default();
                    if encoding != want || nulls != 0 || n != end - first || bytes.len() < n * 8 {
                        return Ok(None);
                    }
                    for r in wanted {
                        let (a, b) = (r.start - first, r.end - first);
                        if column == 1 {
                            let (values, _) = bytes[a * 8..b * 8].as_chunks::<8>();
                            out.extend(values.iter().map(|&c| i64::from_le_bytes(c)));
                        } else {
                            // Byte j of value i is byte i of stream j: OR each stream into place, one
                            // stream at a time (loops the compiler vectorises).
                            let start = out.len();
                            out.resize(start + (b - a), 0);
                            let dst = &mut out[start..];
                            for j in 0..8 {
                                let shift = 8 * j as u32;
                                for (o, &x) in dst.iter_mut().zip(&bytes[j * n + a..j * n + b]) {
                                    *o |= (u64::from(x) << shift) as i64;
                                }
                            }
                        }
                    }
                }
            }
            rg_start = rg_end;
        }
        if t.len() != total || m.len() != total || sc.len() != total {
            return Ok(None);
        }
        Ok(Some((t, m, sc)))
    }
}

/// The value of a stored (m, scale) pair.
#[inline]
pub fn decode_value(m: i64, scale: i8) -> f64 {
    if scale == RAW { f64::from_bits(m as u64) } else { m as f64 / POW10[(scale as usize) & 15] }
}

/// The smallest number of decimal places `k` with which `f = m / 10^k` exactly, `|m| < 2^53`.
#[inline]
fn exact_decimal(f: f64) -> Option<(i64, u8)> {
    if !f.is_finite() || (f == 0.0 && f.is_sign_negative()) {
        return None;
    }
    for (k, p) in POW10.iter().enumerate() {
        let m = (f * p).round();
        if m.abs() >= MAX_EXACT {
            return None;
        }
        if m / p == f {
            return Some((m as i64, k as u8));
        }
    }
    None
}

/// Encodes one series run's values into mantissas and scales (appended to `m` and `s`).
pub fn encode_run(values: &[f64], m: &mut Vec<i64>, s: &mut Vec<i8>) {
    let exact: Vec<Option<(i64, u8)>> = values.iter().map(|&f| exact_decimal(f)).collect();
    let kmax = exact.iter().flatten().map(|e| e.1).max().unwrap_or(0);
    let raw_rows = exact.iter().filter(|e| e.is_none()).count();
    // Mostly non-decimal runs go raw entirely, so the scale column keeps long runs.
    let all_raw = raw_rows * 8 > values.len();
    for (&f, e) in values.iter().zip(&exact) {
        let scaled = match e {
            Some((mi, k)) if !all_raw => {
                let mm = (*mi as f64) * POW10[usize::from(kmax - k)];
                (mm.abs() < MAX_EXACT && mm / POW10[usize::from(kmax)] == f).then_some(mm as i64)
            }
            _ => None,
        };
        match scaled {
            Some(mm) => {
                m.push(mm);
                s.push(kmax as i8);
            }
            None => {
                m.push(f.to_bits() as i64);
                s.push(RAW);
            }
        }
    }
}

/// Writes a part from series runs given in id order.
pub(crate) struct MetricPartWriter {
    meta: MetricPartMeta,
    path: PathBuf,
    writer: ArrowWriter<File>,
    schema: SchemaRef,
    ids: Vec<u32>,
    t: Vec<i64>,
    m: Vec<i64>,
    s: Vec<i8>,
    rows: u64,
    series: u64,
    min_t: i64,
    max_t: i64,
    runs: Vec<Run>,
}

impl MetricPartWriter {
    pub(crate) fn create(data_dir: &Path, meta: MetricPartMeta, zstd_level: i32) -> Result<MetricPartWriter> {
        let dir = data_dir.join(meta.partition_dir());
        fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        let path = meta.path(data_dir);
        // Never over an existing file: part ids are kept above every part file on disk, and this makes sure.
        let file =
            std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(Error::io("create", &path))?;
        let level = ZstdLevel::try_new(zstd_level).unwrap_or_default();
        let props = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_2_0)
            .set_compression(Compression::ZSTD(level))
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(SCALE.into(), true)
            .set_column_encoding(SERIES_ID.into(), Encoding::DELTA_BINARY_PACKED)
            .set_column_encoding(T.into(), Encoding::PLAIN)
            .set_column_encoding(M.into(), Encoding::BYTE_STREAM_SPLIT)
            .set_data_page_row_count_limit(WRITE_BATCH)
            .set_max_row_group_row_count(Some(8 << 20))
            .set_key_value_metadata(Some(vec![KeyValue::new("lumen.format".to_string(), "metrics/1".to_string())]))
            .build();
        let schema = schema();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|source| Error::Parquet { path: path.clone(), source })?;
        Ok(MetricPartWriter {
            meta,
            path,
            writer,
            schema,
            ids: Vec::new(),
            t: Vec::new(),
            m: Vec::new(),
            s: Vec::new(),
            rows: 0,
            series: 0,
            min_t: i64::MAX,
            max_t: i64::MIN,
            runs: Vec::new(),
        })
    }

    /// Appends one series' samples (sorted by time, no duplicates) as the next run.
    pub(crate) fn push_series(&mut self, id: u32, t: &[i64], v: &[f64]) -> Result<()> {
        if t.is_empty() {
            return Ok(());
        }
        self.runs.push(Run { id, first_row: self.rows, rows: t.len() as u64, min_t: t[0], max_t: t[t.len() - 1] });
        self.ids.extend(std::iter::repeat_n(id, t.len()));
        self.t.push(t[0]);
        self.t.extend(t.windows(2).map(|w| w[1].wrapping_sub(w[0])));
        let start = self.m.len();
        encode_run(v, &mut self.m, &mut self.s);
        let (m, s) = (&mut self.m[start..], &mut self.s[start..]);
        // Counter-like runs (no raw rows, mantissas never falling) keep differences.
        let counter = m.len() > 1 && s[0] != RAW && m.windows(2).all(|w| w[1] >= w[0]);
        if counter {
            for i in (1..m.len()).rev() {
                m[i] -= m[i - 1];
            }
            s.iter_mut().for_each(|x| *x += DELTA);
        }
        self.rows += t.len() as u64;
        self.series += 1;
        self.min_t = self.min_t.min(t[0]);
        self.max_t = self.max_t.max(t[t.len() - 1]);
        if self.ids.len() >= WRITE_BATCH {
            self.write_pending()?;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from(std::mem::take(&mut self.ids))),
            Arc::new(TimestampMillisecondArray::from(std::mem::take(&mut self.t)).with_timezone("UTC")),
            Arc::new(Int64Array::from(std::mem::take(&mut self.m))),
            Arc::new(Int8Array::from(std::mem::take(&mut self.s))),
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.writer.write(&batch).map_err(|source| Error::Parquet { path: self.path.clone(), source })
    }

    /// Finishes and syncs the file; the part is not live until the manifest names it.
    pub(crate) fn finish(mut self, data_dir: &Path) -> Result<Arc<MetricPart>> {
        self.write_pending()?;
        let MetricPartWriter { mut meta, path, writer, rows, series, min_t, max_t, runs, .. } = self;
        let file = writer.into_inner().map_err(|source| Error::Parquet { path: path.clone(), source })?;
        file.sync_all().map_err(Error::io("sync", &path))?;
        meta.bytes = file.metadata().map_err(Error::io("stat", &path))?.len();
        meta.rows = rows;
        meta.series = series;
        meta.min_time = min_t;
        meta.max_time = max_t;
        crate::manifest::sync_dir(&data_dir.join(meta.partition_dir()))?;
        let part = MetricPart::open(data_dir, meta);
        let _ = part.runs.set(runs);
        Ok(Arc::new(part))
    }

    /// Abandons a half-written part, deleting its file.
    pub(crate) fn abort(self) {
        drop(self.writer);
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: u64 = 0x7ff0_0000_0000_0002;

    #[test]
    fn values_round_trip_bit_for_bit() {
        let values = [
            0.0,
            -0.0,
            1.0,
            12345.0,
            0.1,
            0.25,
            -3.75,
            1e-9,
            123.456789,
            1e15,
            9.1e18,
            f64::from_bits(STALE),
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            std::f64::consts::PI,
            0.1 + 0.2,
            f64::MIN_POSITIVE,
            f64::MAX,
        ];
        let (mut m, mut s) = (Vec::new(), Vec::new());
        encode_run(&values, &mut m, &mut s);
        for (i, &f) in values.iter().enumerate() {
            assert_eq!(decode_value(m[i], s[i]).to_bits(), f.to_bits(), "value {f:?} (m {}, scale {})", m[i], s[i]);
        }
    }

    #[test]
    fn decimal_runs_share_one_scale_and_counters_are_integers() {
        let (mut m, mut s) = (Vec::new(), Vec::new());
        encode_run(&[1.5, 2.25, 3.0], &mut m, &mut s);
        assert_eq!((m, s), (vec![150, 225, 300], vec![2, 2, 2]));
        let (mut m, mut s) = (Vec::new(), Vec::new());
        encode_run(&[100.0, 160.0, 220.0], &mut m, &mut s);
        assert_eq!((m, s), (vec![100, 160, 220], vec![0, 0, 0]));
    }

    /// The meta of a new part of tenant "t" (the writer fills in the rest).
    fn empty_meta(id: u64) -> MetricPartMeta {
        MetricPartMeta {
            id,
            tenant: "t".into(),
            day: 20_000,
            min_time: 0,
            max_time: 0,
            rows: 0,
            series: 0,
            bytes: 0,
            level: 0,
        }
    }

    /// `t` and `m` decoded straight from their pages (issue 23) equal what the Arrow reader decodes, bit
    /// for bit, for random subsets of the runs of a random part of several pages.
    #[test]
    fn columns_read_by_page_match_the_arrow_reader() {
        let dir = tempfile::tempdir().unwrap();
        let meta = empty_meta(9);
        let mut rng = 23u64;
        let mut next = move || {
            rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut w = MetricPartWriter::create(dir.path(), meta, 3).unwrap();
        for id in 0..90u32 {
            let n = 1 + (next() % 5000) as usize;
            let mut t0 = (next() % 1_000_000) as i64;
            let t: Vec<i64> = (0..n)
                .map(|_| {
                    t0 += 1 + (next() % 30_000) as i64;
                    t0
                })
                .collect();
            let mut acc = 0.0;
            let v: Vec<f64> = (0..n)
                .map(|_| match (id % 3, next() % 40) {
                    (_, 0) => f64::from_bits(STALE),
                    (0, _) => {
                        acc += (next() % 100) as f64;
                        acc
                    }
                    (1, _) => (next() % 100_000) as f64 / 1000.0 - 7.0,
                    _ => f64::from_bits(next() >> 2),
                })
                .collect();
            w.push_series(id, &t, &v).unwrap();
        }
        let part = w.finish(dir.path()).unwrap();
        assert!(part.meta.rows > 3 * WRITE_BATCH as u64, "several pages: {} rows", part.meta.rows);
        let part = MetricPart::open(dir.path(), part.meta.clone());
        let all = part.runs().unwrap().to_vec();
        for case in 0..40 {
            let keep = next() % 8;
            let runs: Vec<Run> = all.iter().filter(|_| case == 0 || next() % 8 >= keep).copied().collect();
            let mut ranges: Vec<Range<usize>> = Vec::new();
            for r in &runs {
                let (s, e) = (r.first_row as usize, (r.first_row + r.rows) as usize);
                match ranges.last_mut() {
                    Some(last) if last.end == s => last.end = e,
                    _ => ranges.push(s..e),
                }
            }
            let total = runs.iter().map(|r| r.rows as usize).sum();
            let by_page = part.read_columns_by_page(&ranges, total).unwrap().expect("this writer's layout");
            assert_eq!(by_page, part.read_columns(&ranges, total).unwrap(), "case {case}");
        }
    }

    #[test]
    fn parts_write_and_read_back_by_row_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let meta = empty_meta(7);
        let mut w = MetricPartWriter::create(dir.path(), meta.clone(), 3).unwrap();
        let n = 70_000i64; // more than one write batch
        let t0: Vec<i64> = (0..n).map(|i| 1_000 + i * 15_000).collect();
        let v0: Vec<f64> = (0..n).map(|i| i as f64 * 0.5).collect();
        w.push_series(3, &t0, &v0).unwrap();
        // A gauge (absolute mantissas) between two counters (differences).
        w.push_series(5, &[1, 2, 3], &[2.5, -1.25, 7.0]).unwrap();
        w.push_series(9, &[5, 6], &[f64::from_bits(STALE), 2.0]).unwrap();
        let part = w.finish(dir.path()).unwrap();
        assert_eq!((part.meta.rows, part.meta.series), (n as u64 + 5, 3));
        // A fresh handle derives the runs from the file.
        let reopened = MetricPart::open(dir.path(), part.meta.clone());
        assert_eq!(reopened.runs().unwrap(), part.runs().unwrap());
        assert_eq!(reopened.ids().unwrap().iter().collect::<Vec<_>>(), vec![3, 5, 9]);
        let runs = reopened.runs().unwrap().to_vec();
        let (t, v) = reopened.read_runs(&runs).unwrap();
        assert_eq!(&t[..n as usize], &t0[..]);
        assert_eq!(&v[..n as usize], &v0[..]);
        assert_eq!(&t[n as usize..], &[1, 2, 3, 5, 6]);
        assert_eq!(&v[n as usize..n as usize + 3], &[2.5, -1.25, 7.0]);
        assert_eq!((v[n as usize + 3].to_bits(), v[n as usize + 4]), (STALE, 2.0));
        let (t, v) = reopened.read_runs(&runs[2..]).unwrap();
        assert_eq!((&t[..], v[1]), (&[5i64, 6][..], 2.0));
    }
}
