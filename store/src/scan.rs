//! The scan API: the one way out of the store. A [`ScanRequest`] names a tenant, a time range, label
//! matchers, substrings the line must contain, and the columns wanted; the answer is a stream of Arrow
//! record batches with exactly the requested schema, from the head and from the parts the indexes
//! could not rule out. Rows come in no particular order.
//!
//! Pushdown, from coarse to fine: the manifest drops parts outside the time range; the catalog turns
//! matchers into stream ids and each part's index turns those into row ranges; row groups outside the
//! time range, or whose token filter lacks a word of a searched substring, are skipped; the remaining
//! rows are filtered exactly.
//!
//! A part that fails to read is left out of the answer rather than failing it, and marked unreadable so
//! that later scans skip it too; [`crate::LogStore::skipped_parts`] names it for the query's warnings.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, StringArray, new_null_array};
use arrow::buffer::BooleanBuffer;
use arrow::compute::filter_record_batch;
use arrow::datatypes::{SchemaRef, TimestampNanosecondType, UInt64Type};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use futures::stream::BoxStream;
use parking_lot::RwLock;
use regex::Regex;

use crate::catalog::TenantStreams;
use crate::error::Result;
use crate::head::{MESSAGE, STREAM_ID, TIME, label_column};
use crate::lru::ByteLru;
use crate::metrics::StoreMetrics;
use crate::model::{Labels, Tenant};
use crate::ngrams::{PageFilters, needle_positions};
use crate::page_cache::PageCache;
use crate::part::Part;
use crate::tokens::required_tokens;

/// How a matcher compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Neq,
    Re,
    Nre,
}

impl MatchOp {
    /// The operator as PromQL and LogQL write it: `=`, `!=`, `=~`, `!~`.
    pub fn symbol(self) -> &'static str {
        match self {
            MatchOp::Eq => "=",
            MatchOp::Neq => "!=",
            MatchOp::Re => "=~",
            MatchOp::Nre => "!~",
        }
    }
}

/// A label matcher as in Prometheus and Loki selectors. A missing label matches as the empty string.
#[derive(Debug, Clone)]
pub struct LabelMatcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl LabelMatcher {
    /// Builds a matcher; regular expressions are anchored at both ends, as in PromQL and LogQL.
    ///
    /// # Errors
    /// The regex compiler's message for an invalid pattern.
    pub fn new(name: impl Into<String>, op: MatchOp, value: impl Into<String>) -> Result<LabelMatcher, regex::Error> {
        let value = value.into();
        let regex = match op {
            MatchOp::Re | MatchOp::Nre => Some(Regex::new(&format!("^(?s:{value})$"))?),
            MatchOp::Eq | MatchOp::Neq => None,
        };
        Ok(LabelMatcher { name: name.into(), op, value, regex })
    }

    pub fn matches(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Eq, _) => value == self.value,
            (MatchOp::Neq, _) => value != self.value,
            (MatchOp::Re, Some(re)) => re.is_match(value),
            (MatchOp::Nre, Some(re)) => !re.is_match(value),
            _ => false,
        }
    }
}

/// What to read.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub tenant: Tenant,
    /// Inclusive start, nanoseconds.
    pub start_ns: i64,
    /// Exclusive end, nanoseconds.
    pub end_ns: i64,
    /// Every matcher must match the entry's stream.
    pub matchers: Vec<LabelMatcher>,
    /// Every substring must occur in the line (case-sensitive).
    pub line_contains: Vec<String>,
    /// Columns wanted, by name; `None` for all of the tenant's columns. Unknown names are an error.
    pub columns: Option<Vec<String>>,
    /// Read at most this many rows per stream and part, at the newest or oldest end. Only for requests
    /// without `line_contains`, whose caller keeps the newest (oldest) rows overall: a part holds each
    /// stream's rows in time order, so its last rows of a stream are its newest. Head rows are all read.
    pub stream_limit: Option<StreamLimit>,
    /// Which of the tenant's parts to read (the head is always read).
    pub parts: PartFilter,
    /// Field columns every wanted row has a value in (a SQL filter `field = 'x'`): a part that has no
    /// column of one of these names holds no such row and is not opened. Rows are not filtered by it.
    pub fields_present: Vec<String>,
}

/// Which parts a read takes, by part id. A query node reads only the parts of the bucket's commit that
/// its ingest node still holds (`Only`); the ingest node answers for the rest (`Except` those the query
/// node has), so that together they read each row once (issue 22).
#[derive(Debug, Clone, Default)]
pub enum PartFilter {
    #[default]
    All,
    Only(Arc<HashSet<u64>>),
    Except(Arc<HashSet<u64>>),
}

impl PartFilter {
    pub fn admits(&self, id: u64) -> bool {
        match self {
            PartFilter::All => true,
            PartFilter::Only(set) => set.contains(&id),
            PartFilter::Except(set) => !set.contains(&id),
        }
    }
}

/// See [`ScanRequest::stream_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimit {
    pub rows: u64,
    pub newest: bool,
}

impl ScanRequest {
    /// Everything of a tenant.
    pub fn all(tenant: Tenant) -> ScanRequest {
        ScanRequest {
            tenant,
            start_ns: i64::MIN,
            end_ns: i64::MAX,
            matchers: Vec::new(),
            line_contains: Vec::new(),
            columns: None,
            stream_limit: None,
            parts: PartFilter::All,
            fields_present: Vec::new(),
        }
    }
}

/// A running scan.
pub struct Scan {
    pub schema: SchemaRef,
    pub stream: BoxStream<'static, Result<RecordBatch>>,
}

/// One partition of a planned scan (see [`crate::LogStore::plan_scan`]), run on the caller's thread.
pub struct ScanTask(pub(crate) ScanPlan);

impl ScanTask {
    /// Reads, calling `f` with each non-empty batch (in the plan's output schema) until done or until `f`
    /// returns false. Blocking: run it on a blocking thread. A part that cannot be read is left out, not
    /// an error: afterwards [`crate::LogStore::skipped_parts`] names it, for the caller's warnings.
    ///
    /// # Errors
    /// Arrow errors shaping head data.
    pub fn run(self, f: impl FnMut(RecordBatch) -> bool) -> Result<()> {
        self.0.for_each(f)
    }
}

/// A part, optionally restricted to some of its rows.
pub(crate) type PartSlice = (Arc<Part>, Option<Vec<Range<u64>>>);

/// Everything a scan reads, captured at one instant so that no row is seen twice or missed while a
/// flush moves data from the head to a part.
pub(crate) struct ScanPlan {
    pub(crate) req: ScanRequest,
    pub(crate) output: SchemaRef,
    pub(crate) head: Vec<RecordBatch>,
    /// Parts to read, each optionally restricted to some of its rows (sorted, disjoint ranges), so that
    /// one part can be shared among tasks.
    pub(crate) parts: Vec<PartSlice>,
    pub(crate) streams: Option<HashSet<u64>>,
    pub(crate) catalog: Option<Arc<RwLock<TenantStreams>>>,
    pub(crate) index_numbers: bool,
    pub(crate) metrics: Arc<StoreMetrics>,
    /// Pending delete requests of the tenant: their rows are left out.
    pub(crate) deletes: Arc<Vec<DeleteMask>>,
    /// Answers of earlier reads of parts (`store.scan_cache_max_bytes`).
    pub(crate) cache: Arc<ScanCache>,
    /// Parts' pages kept decoded (`store.log_page_cache_max_bytes`).
    pub(crate) pages: Arc<PageCache>,
    /// Whether this scan's reads keep what they decode there ([`crate::page_cache::fills`]).
    pub(crate) fill_pages: bool,
}

/// Answers of reads of parts, kept for the next scan that asks the same of the same part (issue 23):
/// a dashboard's log panels ask the same at every refresh, and a part never changes. Not used while
/// the tenant has pending deletes (they hide rows until their rewrite replaces the parts).
pub(crate) type ScanCache = ByteLru<ScanKey, Arc<Vec<RecordBatch>>>;

/// What decides a read's answer from one part: the part, the rows read (from the stream index and the
/// filters), the substrings, the time range unless the part lies wholly inside it, and the output
/// columns with their types.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ScanKey {
    part: u64,
    ranges: Vec<Range<u64>>,
    line_contains: Vec<String>,
    time: Option<(i64, i64)>,
    output: Vec<(String, arrow::datatypes::DataType)>,
}

/// Bytes an answer is counted at beyond its batches (key, map slot).
const ANSWER_OVERHEAD: usize = 256;

/// A pending delete as a scan applies it: the streams it covers (`None`: all) and its time range and
/// line filters.
#[derive(Debug, Clone)]
pub(crate) struct DeleteMask {
    pub(crate) streams: Option<HashSet<u64>>,
    pub(crate) active: Arc<crate::delete::Active>,
}

impl DeleteMask {
    /// Whether the row (stream, time, line) is covered; `line` is read only when needed.
    pub(crate) fn covers(&self, id: u64, t: i64, line: impl FnOnce() -> Option<String>) -> bool {
        let a = &self.active;
        if t < a.start_ns || t > a.end_ns || !self.streams.as_ref().is_none_or(|s| s.contains(&id)) {
            return false;
        }
        !a.has_line_filters() || line().is_some_and(|l| a.line_matches(&l))
    }
}

const BATCH_ROWS: usize = 8192;

impl ScanPlan {
    /// Runs the scan on the current (blocking) thread, sending batches until done or until the receiver
    /// is dropped.
    pub(crate) fn run(self, tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>) {
        let result = self.for_each(|batch| tx.blocking_send(Ok(batch)).is_ok());
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    }

    fn for_each(&self, mut f: impl FnMut(RecordBatch) -> bool) -> Result<()> {
        let mut send = |batch: RecordBatch| -> bool { batch.num_rows() == 0 || f(batch) };
        let label_cols: HashMap<String, String> = self
            .catalog
            .as_ref()
            .map(|c| c.read().label_names().iter().map(|n| (label_column(n), n.clone())).collect())
            .unwrap_or_default();
        for batch in &self.head {
            let filtered = self.filter(batch, Known::default())?;
            if filtered.num_rows() == 0 {
                continue;
            }
            // The catalog's lock is held while the labels are copied in, never across `send`: a full
            // channel waits for a consumer on the runtime, whose appends may be waiting for this lock
            // (a writer queued behind this reader blocks them), and that deadlocked the server (issue 23).
            let out = {
                let labels = self.catalog.as_ref().map(|c| c.read());
                conform(&filtered, &self.output, labels.as_deref().map(|l| (l, &label_cols)))?
            };
            if !send(out) {
                return Ok(());
            }
        }

        let needed = self.read_columns();
        let needed: Vec<&str> = needed.iter().map(String::as_str).collect();
        let tokens: Vec<u64> =
            self.req.line_contains.iter().flat_map(|s| required_tokens(s, self.index_numbers)).collect();
        let needles: Vec<Vec<u32>> =
            self.req.line_contains.iter().map(|s| needle_positions(s.as_bytes())).filter(|p| !p.is_empty()).collect();
        let filters = Filters { tokens: &tokens, needles: &needles };
        for (part, restrict) in &self.parts {
            // Another scan may have found it unreadable since this one was planned.
            if part.is_unreadable() {
                continue;
            }
            match self.read_part(part, restrict.as_deref(), &needed, filters, &mut send) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                // An unreadable part is left out, not the whole answer: the caller learns of it through
                // `LogStore::skipped_parts`. Rows it gave before failing were sent already.
                // A part the object store did not deliver fails the answer: it is fine, the read can be retried.
                Err(error) if error.is_remote() => return Err(error),
                Err(error) => part.set_unreadable(&error, &self.metrics),
            }
        }
        Ok(())
    }

    /// Reads one part's matching rows; false when `send` asked to stop.
    fn read_part(
        &self,
        part: &Part,
        restrict: Option<&[Range<u64>]>,
        needed: &[&str],
        filters: Filters<'_>,
        send: &mut impl FnMut(RecordBatch) -> bool,
    ) -> Result<bool> {
        let Some(ranges) = self.part_ranges(part, restrict, filters) else {
            return Ok(true);
        };
        // The ranges come from the part's index of the selected streams (`part_ranges`), and a part
        // wholly inside the time range needs no row checked against it.
        let known = Known {
            in_streams: self.streams.is_some(),
            in_time: part.meta.min_time >= self.req.start_ns && part.meta.max_time < self.req.end_ns,
        };
        let key = (self.cache.enabled() && self.deletes.is_empty()).then(|| ScanKey {
            part: part.meta.id,
            ranges: ranges.clone(),
            line_contains: self.req.line_contains.clone(),
            time: (!known.in_time).then_some((self.req.start_ns, self.req.end_ns)),
            output: self.output.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect(),
        });
        if let Some(answer) = key.as_ref().and_then(|k| self.cache.get(k)) {
            return Ok(answer.iter().all(|b| send(b.clone())));
        }
        // The answer so far, while it is small enough to keep.
        let mut kept = key.as_ref().map(|_| (Vec::new(), ANSWER_OVERHEAD));
        let mut each = |batch: RecordBatch| -> Result<bool> {
            let filtered = self.filter(&batch, known)?;
            if filtered.num_rows() == 0 {
                return Ok(true);
            }
            let out = conform(&filtered, &self.output, None)?;
            if let Some((batches, bytes)) = &mut kept {
                *bytes += out.get_array_memory_size();
                batches.push(out.clone());
                if !self.cache.admits(*bytes) {
                    kept = None;
                }
            }
            Ok(send(out))
        };
        if !crate::page_cache::read(part, &ranges, needed, &self.pages, self.fill_pages, BATCH_ROWS, &mut each)? {
            return Ok(false);
        }
        if let (Some(key), Some((batches, bytes))) = (key, kept) {
            self.cache.insert(key, Arc::new(batches), bytes);
        }
        Ok(true)
    }

    /// Columns to read from parts: the output plus what the filters need.
    fn read_columns(&self) -> Vec<String> {
        read_columns(&self.output, &self.req, &self.deletes)
    }

    /// The part's row ranges that may hold matching rows, or `None` when none can. Filters that cannot
    /// be read rule nothing out: the rows are read and filtered exactly.
    fn part_ranges(
        &self,
        part: &Part,
        restrict: Option<&[Range<u64>]>,
        filters: Filters<'_>,
    ) -> Option<Vec<Range<u64>>> {
        let (start, end) = (self.req.start_ns, self.req.end_ns);
        let overlaps = |min: i64, max: i64| max >= start && min < end;
        // Row groups that survive the time bounds and the token filters, cut to the pages that survive
        // their substring filters.
        let (tokens, needles) = (filters.tokens, filters.needles);
        let index = if tokens.is_empty() && needles.is_empty() { None } else { part.open_index().ok() };
        let mut keep = Vec::with_capacity(part.row_groups.len());
        for (i, rg) in part.row_groups.iter().enumerate() {
            let rows = rg.first_row..rg.first_row + rg.rows;
            // Another slice of the part reads the row groups outside `restrict`: their filters are not read.
            if restrict.is_some_and(|only| !only.iter().any(|r| r.start < rows.end && rows.start < r.end)) {
                continue;
            }
            let mut ok = overlaps(rg.min_time, rg.max_time);
            if ok
                && !tokens.is_empty()
                && let Some(index) = &index
                && let Ok(Some(filter)) = part.token_filter(index, i)
            {
                ok = tokens.iter().all(|&h| filter.may_contain(h));
            }
            if !ok {
                self.metrics.scan_skipped_row_groups.inc();
                continue;
            }
            let pages = match &index {
                Some(index) if !needles.is_empty() => part.page_filters(index, i).ok().flatten(),
                _ => None,
            };
            match pages.as_deref().and_then(PageFilters::parse) {
                Some(pages) => {
                    let (passing, skipped) = pages.passing(rg.rows, needles);
                    self.metrics.scan_skipped_pages.inc_by(skipped);
                    if passing.is_empty() {
                        self.metrics.scan_skipped_row_groups.inc();
                    }
                    keep.extend(passing.into_iter().map(|r| rows.start + r.start..rows.start + r.end));
                }
                None => keep.push(rows),
            }
        }
        if let Some(only) = restrict {
            keep = intersect(&keep, only);
        }
        if keep.is_empty() {
            return None;
        }
        if self.streams.is_none() && self.req.stream_limit.is_none() {
            return Some(keep);
        }
        let streams: Vec<Range<u64>> = part
            .streams
            .iter()
            .filter(|s| self.streams.as_ref().is_none_or(|set| set.contains(&s.id)) && overlaps(s.min_time, s.max_time))
            .map(|s| self.limited(s.first_row..s.first_row + s.rows, s.min_time, s.max_time))
            .collect();
        let out = intersect(&streams, &keep);
        (!out.is_empty()).then_some(out)
    }

    /// A stream's rows in a part, cut to the stream limit when every row is inside the time range (else
    /// the rows inside are not known to be at the end, and all are read).
    fn limited(&self, rows: Range<u64>, min_time: i64, max_time: i64) -> Range<u64> {
        match self.req.stream_limit {
            Some(l)
                if min_time >= self.req.start_ns && max_time < self.req.end_ns && rows.end - rows.start > l.rows =>
            {
                if l.newest { rows.end - l.rows..rows.end } else { rows.start..rows.start + l.rows }
            }
            _ => rows,
        }
    }

    /// Applies the time range, the stream set and the substrings exactly, except what `known` says the
    /// indexes have decided already for every row of the batch.
    fn filter(&self, batch: &RecordBatch, known: Known) -> Result<RecordBatch> {
        let n = batch.num_rows();
        // `None` while every row passes.
        let mut mask: Option<BooleanBuffer> = None;
        let keep = |mask: &mut Option<BooleanBuffer>, m: BooleanBuffer| {
            *mask = Some(match mask.take() {
                Some(a) => &a & &m,
                None => m,
            });
        };
        if !known.in_time
            && let Some(times) = batch.column_by_name(TIME)
        {
            let (start, end) = (self.req.start_ns, self.req.end_ns);
            let times = times.as_primitive::<TimestampNanosecondType>().values();
            keep(&mut mask, BooleanBuffer::collect_bool(n, |i| times[i] >= start && times[i] < end));
        }
        if !known.in_streams
            && let (Some(set), Some(ids)) = (&self.streams, batch.column_by_name(STREAM_ID))
        {
            // Rows come sorted by stream, so the set is asked once per run of one stream, not per row.
            let ids = ids.as_primitive::<UInt64Type>().values();
            let mut last: Option<(u64, bool)> = None;
            keep(
                &mut mask,
                BooleanBuffer::collect_bool(n, |i| match last {
                    Some((id, inside)) if id == ids[i] => inside,
                    _ => {
                        let inside = set.contains(&ids[i]);
                        last = Some((ids[i], inside));
                        inside
                    }
                }),
            );
        }
        if !self.req.line_contains.is_empty()
            && let Some(msgs) = batch.column_by_name(MESSAGE)
        {
            let msgs = msgs.as_string::<i32>();
            let mut needles = self.req.line_contains.iter().filter(|s| !s.is_empty());
            // The first substring is searched for in the column's buffer at once; the others only in the
            // lines still in.
            if let Some(first) = needles.next() {
                keep(&mut mask, rows_containing(msgs, &memchr::memmem::Finder::new(first.as_bytes())));
            }
            let rest: Vec<memchr::memmem::Finder<'_>> =
                needles.map(|s| memchr::memmem::Finder::new(s.as_bytes())).collect();
            if !rest.is_empty()
                && let Some(m) = &mask
            {
                let m = BooleanBuffer::collect_bool(n, |i| {
                    m.value(i) && rest.iter().all(|f| f.find(msgs.value(i).as_bytes()).is_some())
                });
                keep(&mut mask, m);
            }
        }
        if !self.deletes.is_empty()
            && let (Some(times), Some(ids)) = (batch.column_by_name(TIME), batch.column_by_name(STREAM_ID))
        {
            let times = times.as_primitive::<TimestampNanosecondType>();
            let ids = ids.as_primitive::<UInt64Type>();
            let msgs = batch.column_by_name(MESSAGE).map(|m| m.as_string::<i32>());
            let kept = BooleanBuffer::collect_bool(n, |i| {
                if !mask.as_ref().is_none_or(|m| m.value(i)) {
                    return false;
                }
                let (id, t) = (ids.value(i), times.value(i));
                let line = || msgs.map(|m| m.value(i).to_string());
                !self.deletes.iter().any(|d| d.covers(id, t, line))
            });
            keep(&mut mask, kept);
        }
        let Some(mask) = mask else {
            return Ok(batch.clone());
        };
        let mask = BooleanArray::new(mask, None);
        if mask.true_count() == n {
            return Ok(batch.clone());
        }
        Ok(filter_record_batch(batch, &mask)?)
    }
}

/// Columns a scan reads from parts: its output plus what its filters need.
pub(crate) fn read_columns(output: &SchemaRef, req: &ScanRequest, deletes: &[DeleteMask]) -> Vec<String> {
    let mut cols: Vec<String> = output.fields().iter().map(|f| f.name().clone()).collect();
    for c in [TIME, STREAM_ID] {
        if !cols.iter().any(|x| x == c) {
            cols.push(c.to_string());
        }
    }
    let deletes_read_lines = deletes.iter().any(|d| d.active.has_line_filters());
    if (!req.line_contains.is_empty() || deletes_read_lines) && !cols.iter().any(|x| x == MESSAGE) {
        cols.push(MESSAGE.to_string());
    }
    cols
}

/// What a scan's filters look for: the token hashes every matching line holds (for the row groups'
/// token filters) and each substring's trigrams (for the pages' filters).
#[derive(Clone, Copy)]
struct Filters<'a> {
    tokens: &'a [u64],
    needles: &'a [Vec<u32>],
}

/// What the indexes have decided already for every row of a batch, so that [`ScanPlan::filter`] need
/// not check it again row by row.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// Every row is of a selected stream: the rows were read from the part's row ranges of those streams.
    in_streams: bool,
    /// Every row is inside the time range: the part's whole time range is.
    in_time: bool,
}

/// The rows of `lines` that contain the finder's needle (not empty), found by searching the column's
/// value buffer from one line to the next rather than calling the searcher once per line: on lines that
/// rarely match, the search runs over many lines per call. A match that runs over the end of its line
/// does not count, and the search goes on from the next line.
fn rows_containing(lines: &StringArray, finder: &memchr::memmem::Finder<'_>) -> BooleanBuffer {
    let n = lines.len();
    let mut out = BooleanBufferBuilder::new(n);
    out.append_n(n, false);
    if n == 0 {
        return out.finish();
    }
    let offsets = lines.value_offsets();
    let values = lines.value_data();
    let needle = finder.needle().len();
    let end = offsets[n] as usize;
    let (mut pos, mut row) = (offsets[0] as usize, 0usize);
    while pos < end {
        let Some(found) = finder.find(&values[pos..end]) else {
            break;
        };
        let at = pos + found;
        // The line holding `at`: the last one starting at or before it (empty lines skipped).
        row += offsets[row + 1..].partition_point(|&o| o as usize <= at);
        let line_end = offsets[row + 1] as usize;
        if at + needle <= line_end {
            out.set_bit(row, true);
        }
        pos = line_end;
        row += 1;
    }
    out.finish()
}

/// The intersection of two sorted lists of disjoint ranges.
pub(crate) fn intersect(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let s = a[i].start.max(b[j].start);
        let e = a[i].end.min(b[j].end);
        if s < e {
            out.push(s..e);
        }
        if a[i].end < b[j].end { i += 1 } else { j += 1 }
    }
    out
}

/// Shapes a batch to `schema`: columns by name, missing ones as nulls, label columns of head data built
/// from the catalog (`labels` maps a label column to its label name).
pub(crate) fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
    labels: Option<(&TenantStreams, &HashMap<String, String>)>,
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    // Columns by name once: `column_by_name` is a linear search, and a schema of many fields made this
    // quadratic (150,000 fields took a flush 100 s).
    let by_name: HashMap<&str, &ArrayRef> =
        batch.schema_ref().fields().iter().zip(batch.columns()).map(|(f, c)| (f.name().as_str(), c)).collect();
    for field in schema.fields() {
        // A field named like a label of other streams shares the label's column: the label for rows of
        // streams that have it, the field for the others.
        let shared = labels.is_some_and(|(_, cols)| cols.contains_key(field.name()));
        if let Some(col) = by_name.get(field.name().as_str()).copied()
            && !(shared && col.null_count() > 0)
        {
            if col.data_type() == field.data_type() {
                columns.push(col.clone());
            } else {
                columns.push(arrow::compute::cast(col, field.data_type())?);
            }
            continue;
        }
        let own = by_name.get(field.name().as_str()).map(|c| c.as_string::<i32>());
        let from_labels = labels.and_then(|(streams, cols)| {
            let label = cols.get(field.name())?;
            let ids = batch.column_by_name(STREAM_ID)?.as_primitive::<UInt64Type>();
            let mut cache: HashMap<u64, Option<Arc<Labels>>> = HashMap::new();
            let values: StringArray = ids
                .values()
                .iter()
                .enumerate()
                .map(|(row, id)| {
                    if let Some(own) = own.filter(|c| c.is_valid(row)) {
                        return Some(own.value(row).to_string());
                    }
                    let labels = cache.entry(*id).or_insert_with(|| streams.labels(*id).cloned());
                    labels.as_ref().and_then(|l| l.get(label).map(str::to_string))
                })
                .collect();
            Some(Arc::new(values) as ArrayRef)
        });
        columns.push(from_labels.unwrap_or_else(|| new_null_array(field.data_type(), n)));
    }
    let options = RecordBatchOptions::new().with_row_count(Some(n));
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers() {
        let m = LabelMatcher::new("app", MatchOp::Re, "api|web").unwrap();
        assert!(m.matches("api") && !m.matches("api2"));
        let m = LabelMatcher::new("app", MatchOp::Nre, "a.*").unwrap();
        assert!(m.matches("") && !m.matches("abc"));
        assert!(LabelMatcher::new("a", MatchOp::Re, "(").is_err());
    }

    /// The buffer-wide search finds exactly the lines a search per line finds (issue 23): matches that
    /// run over a line's end, empty and null lines, a match in the line after such a run.
    #[test]
    fn substring_search_over_the_buffer() {
        let per_line = |lines: &StringArray, needle: &str| -> Vec<bool> {
            (0..lines.len()).map(|i| lines.value(i).contains(needle)).collect()
        };
        let lines = StringArray::from(vec![
            Some("a"),
            Some("aa"),
            Some("xxerr"),
            Some("or error"),
            None,
            Some(""),
            Some("erro"),
            Some("r"),
            Some("error"),
            Some("no"),
        ]);
        for needle in ["a", "aa", "error", "err", "or", "r", "zz", "oerr"] {
            let found = rows_containing(&lines, &memchr::memmem::Finder::new(needle));
            assert_eq!(found.iter().collect::<Vec<_>>(), per_line(&lines, needle), "{needle}");
        }
        // A sliced array starts its offsets past 0.
        let sliced = lines.slice(3, 6);
        for needle in ["error", "r", "o"] {
            let found = rows_containing(&sliced, &memchr::memmem::Finder::new(needle));
            assert_eq!(found.iter().collect::<Vec<_>>(), per_line(&sliced, needle), "{needle}");
        }
        // Pseudo-random lines over a small alphabet, so that matches across line ends are frequent.
        let mut next = crate::testutil::xorshift(0x2545_f491_4f6c_dd1du64);
        for _ in 0..200 {
            let lines: StringArray = (0..next() % 40)
                .map(|_| {
                    let len = next() % 6;
                    Some((0..len).map(|_| ["a", "b", "ab"][(next() % 3) as usize]).collect::<String>())
                })
                .collect();
            for needle in ["ab", "aba", "bb", "abab", "b"] {
                let found = rows_containing(&lines, &memchr::memmem::Finder::new(needle));
                assert_eq!(found.iter().collect::<Vec<_>>(), per_line(&lines, needle), "{needle}");
            }
        }
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // single ranges are the case under test
    fn range_intersection() {
        assert_eq!(intersect(&[0..10, 20..30], &[5..25]), vec![5..10, 20..25]);
        assert_eq!(intersect(&[0..5], &[5..9]), vec![]);
    }
}
