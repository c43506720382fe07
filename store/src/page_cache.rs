//! Log parts' pages kept decoded in memory (`store.log_page_cache_max_bytes`, issue 23).
//!
//! Reading a part's rows costs mostly zstd and Parquet's decoding, not the search: a query that names a
//! stream and a word spent 46 % of its time in zstd. Parts never change, so what one read decoded is kept
//! for the next, whatever it searches for. The unit is a *span*: the rows of one page of the `message`
//! column (the bulk of a part, and where its pages start anew at each stream's run), cut at row group
//! starts. Each span is kept per column (part, span, column → array), so reads of different columns
//! share what they have in common.
//!
//! A read that would decode more than half the cache ([`fills`]: a search over all data) does not fill
//! it, so that it cannot push out what smaller, repeated reads keep there; it still takes what is there.
//! Nor does a scan that reads no lines (`LogStore::plan_scan` decides both): times, ids and fields decode
//! fast, and a SQL aggregate over every row's time would only push lines out.
//! Entries are compact copies, never slices of a larger batch, so that their cost is what they hold.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, MutableArrayData, make_array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{FieldRef, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReader;

use crate::error::{Error, Result};
use crate::lru::ByteLru;
use crate::part::Part;
use crate::scan::intersect;

/// One column of one span of one part.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PageKey {
    part: u64,
    rows: Range<u64>,
    column: String,
}

/// See the module docs.
pub(crate) type PageCache = ByteLru<PageKey, (FieldRef, ArrayRef)>;

/// Bytes an entry is counted at beyond its array (key, map slot, field).
const ENTRY_OVERHEAD: usize = 128;

/// At most this many separate pieces of a span are handed on as slices; more are picked out by one filter.
const MAX_SLICES: usize = 4;

/// Whether a scan expected to decode `bytes` fills the cache: at most half of it.
pub(crate) fn fills(cache: &PageCache, bytes: u64) -> bool {
    cache.enabled() && bytes <= cache.max() as u64 / 2
}

/// Reads the rows `ranges` (sorted, disjoint, non-empty) of the columns `wanted` that the part has
/// through the cache, calling `each` with batches of those rows in order
/// (the `time` column in nanoseconds) until it returns false (then false). With `fill`, spans not in the
/// cache are decoded whole and kept; without, only the rows asked for are decoded, and nothing is kept.
pub(crate) fn read(
    part: &Part,
    ranges: &[Range<u64>],
    wanted: &[&str],
    cache: &PageCache,
    fill: bool,
    batch_rows: usize,
    each: &mut impl FnMut(RecordBatch) -> Result<bool>,
) -> Result<bool> {
    let spans = spans_of(&part.span_starts()?, part.meta.rows, ranges);
    // Known once the footer is loaded (`span_starts` loads it, except for wide parts): a wide part's
    // rows are decoded and not kept.
    let Some(present) = part.present_columns(wanted) else {
        return read_through(part, ranges, wanted, batch_rows, each);
    };
    let present = &present[..];
    let hits: Vec<Option<RecordBatch>> = spans.iter().map(|s| lookup(cache, part.meta.id, s, present)).collect();
    let misses: Vec<Range<u64>> =
        spans.iter().zip(&hits).filter(|(_, h)| h.is_none()).map(|(s, _)| s.clone()).collect();
    let to_decode = if fill { misses } else { intersect(ranges, &misses) };
    let mut pull = match to_decode.is_empty() {
        true => None,
        false => part.reader(present, Some(&to_decode), batch_rows)?.map(|reader| Pull { reader, pending: None }),
    };
    for (span, hit) in spans.into_iter().zip(hits) {
        let pieces = intersect(ranges, std::slice::from_ref(&span));
        let whole = match hit {
            Some(batch) => batch,
            None if fill => {
                let got = pull_rows(&mut pull, part, span.end - span.start)?;
                let batch = compact(&got)?;
                keep(cache, part.meta.id, &span, &batch);
                batch
            }
            None => {
                for piece in &pieces {
                    for batch in pull_rows(&mut pull, part, piece.end - piece.start)? {
                        if !each(batch)? {
                            return Ok(false);
                        }
                    }
                }
                continue;
            }
        };
        if !emit(&whole, span.start, &pieces, each)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads without the cache.
fn read_through(
    part: &Part,
    ranges: &[Range<u64>],
    wanted: &[&str],
    batch_rows: usize,
    each: &mut impl FnMut(RecordBatch) -> Result<bool>,
) -> Result<bool> {
    let Some(reader) = part.reader(wanted, Some(ranges), batch_rows)? else {
        return Ok(true);
    };
    for batch in reader {
        if !each(crate::part::time_to_ns(batch.map_err(Error::Arrow)?)?)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The spans (between consecutive `starts`, the last up to `rows`) that overlap `ranges`, in order.
fn spans_of(starts: &[u64], rows: u64, ranges: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in ranges {
        // The span holding r.start: the last start at or before it.
        let mut i = starts.partition_point(|&s| s <= r.start).saturating_sub(1);
        while i < starts.len() && starts[i] < r.end {
            let span = starts[i]..starts.get(i + 1).copied().unwrap_or(rows).max(starts[i]);
            if out.last() != Some(&span) && span.start < span.end {
                out.push(span);
            }
            i += 1;
        }
    }
    out
}

/// The span's batch when every column is kept.
fn lookup(cache: &PageCache, part: u64, span: &Range<u64>, present: &[&str]) -> Option<RecordBatch> {
    let mut fields = Vec::with_capacity(present.len());
    let mut columns = Vec::with_capacity(present.len());
    for &column in present {
        let (field, array) = cache.get(&PageKey { part, rows: span.clone(), column: column.to_string() })?;
        fields.push(field);
        columns.push(array);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).ok()
}

/// Keeps each column of a span's batch.
fn keep(cache: &PageCache, part: u64, span: &Range<u64>, batch: &RecordBatch) {
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        let key = PageKey { part, rows: span.clone(), column: field.name().clone() };
        cache.insert(key, (field.clone(), array.clone()), array.get_array_memory_size() + ENTRY_OVERHEAD);
    }
}

/// Hands on the rows `pieces` (inside the span starting at row `first`) of the span's batch.
fn emit(
    whole: &RecordBatch,
    first: u64,
    pieces: &[Range<u64>],
    each: &mut impl FnMut(RecordBatch) -> Result<bool>,
) -> Result<bool> {
    let local = |r: &Range<u64>| (r.start - first) as usize..(r.end - first) as usize;
    if pieces.len() <= MAX_SLICES {
        for piece in pieces.iter().map(local) {
            if !each(whole.slice(piece.start, piece.len()))? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    let mut mask = vec![false; whole.num_rows()];
    for piece in pieces.iter().map(local) {
        mask[piece].fill(true);
    }
    each(filter_record_batch(whole, &BooleanArray::from(mask))?)
}

/// The next `n` rows of a reader, as batches (slices of the reader's); an error if it has fewer.
struct Pull {
    reader: ParquetRecordBatchReader,
    pending: Option<RecordBatch>,
}

fn pull_rows(pull: &mut Option<Pull>, part: &Part, mut n: u64) -> Result<Vec<RecordBatch>> {
    let short = || Error::Corrupt {
        what: "log part",
        path: part.parquet_path.clone(),
        reason: "it holds fewer rows than its index says".to_string(),
    };
    let pull = pull.as_mut().ok_or_else(short)?;
    let mut out = Vec::new();
    while n > 0 {
        let batch = match pull.pending.take() {
            Some(b) => b,
            None => match pull.reader.next() {
                Some(b) => crate::part::time_to_ns(b.map_err(Error::Arrow)?)?,
                None => return Err(short()),
            },
        };
        let take = (batch.num_rows() as u64).min(n) as usize;
        if take < batch.num_rows() {
            pull.pending = Some(batch.slice(take, batch.num_rows() - take));
        }
        out.push(batch.slice(0, take));
        n -= take as u64;
    }
    Ok(out)
}

/// One batch holding copies of `batches`' rows (all of one schema, at least one), in buffers of its own.
fn compact(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let schema = batches[0].schema();
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let columns = (0..schema.fields().len())
        .map(|c| {
            let data: Vec<_> = batches.iter().map(|b| b.column(c).to_data()).collect();
            let mut out = MutableArrayData::new(data.iter().collect(), false, rows);
            for (i, d) in data.iter().enumerate() {
                out.try_extend(i, 0, d.len())?;
            }
            Ok(make_array(out.freeze()))
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn spans_overlapping_ranges() {
        let starts = [0, 10, 20, 35];
        assert_eq!(spans_of(&starts, 50, &[3..4]), vec![0..10]);
        assert_eq!(spans_of(&starts, 50, &[3..4, 5..12, 40..50]), vec![0..10, 10..20, 35..50]);
        assert_eq!(spans_of(&starts, 50, &[10..35]), vec![10..20, 20..35]);
        assert_eq!(spans_of(&starts, 50, &[19..21]), vec![10..20, 20..35]);
        assert_eq!(spans_of(&[0], 7, &[0..7]), vec![0..7]);
    }

    #[test]
    fn compact_copies_into_buffers_of_its_own() {
        use arrow::array::{Array, StringArray};
        let big = RecordBatch::try_from_iter([(
            "m",
            Arc::new(StringArray::from_iter_values((0..1000).map(|i| format!("line {i}")))) as ArrayRef,
        )])
        .unwrap();
        let got = compact(&[big.slice(10, 5), big.slice(500, 3)]).unwrap();
        let m = got.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let values: Vec<&str> = m.iter().map(Option::unwrap).collect();
        assert_eq!(values, ["line 10", "line 11", "line 12", "line 13", "line 14", "line 500", "line 501", "line 502"]);
        assert!(got.get_array_memory_size() < big.get_array_memory_size() / 10, "not the big batch's buffers");
    }
}
