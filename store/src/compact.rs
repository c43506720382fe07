//! Compaction: the small parts of a tenant's day are merged into one, so that a day ends as few large
//! parts (better compression, fewer files to open) whatever the flush rhythm was.
//!
//! Every part is sorted by (stream id, time), so a k-way merge over sequential readers produces the
//! output in order while holding only one record batch per input in memory.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::interleave;
use arrow::datatypes::{SchemaRef, TimestampNanosecondType, UInt64Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReader;

use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::head::table_schema;
use crate::manifest::PartMeta;
use crate::metrics::StoreMetrics;
use crate::part::{Part, PartWriter, WriteOptions};
use crate::scan::conform;

/// The most parts one merge reads. Each input holds a batch and Parquet's page buffers while the merge
/// runs, so a day of many small parts (fast ingest flushes a 16 MiB head every fraction of a second) is
/// merged in several jobs of at most this many, and their outputs in the next round, instead of in one
/// merge whose memory grows with the number of parts.
pub(crate) const MAX_MERGE_INPUTS: usize = 16;

/// Groups of parts to merge: per tenant and day, the parts below the size cap, oldest first, in jobs of at
/// most [`MAX_MERGE_INPUTS`] parts, up to the size cap in total.
/// - The current day merges by tiers: the parts of the lowest level (flushed parts are level 0, a merge's
///   output one more than its inputs' highest) that has `compaction_min_parts` of them. A row is so
///   rewritten once per level while its day fills, instead of with every merge into the day's growing
///   part.
/// - A day that is over merges all its parts once it has two; one flushed (level 0) part alone is
///   rewritten, so that every finished day rests at the compaction zstd level.
pub(crate) fn plan(parts: &[Arc<Part>], cfg: &StoreConfig, today: i64) -> Vec<Vec<Arc<Part>>> {
    let cap = cfg.compaction_max_part_size.as_u64();
    let mut groups: BTreeMap<(&str, i64), Vec<&Arc<Part>>> = BTreeMap::new();
    for p in parts.iter().filter(|p| p.meta.disk_bytes() < cap) {
        groups.entry((p.meta.tenant.as_str(), p.meta.day)).or_default().push(p);
    }
    let mut jobs = Vec::new();
    for ((_, day), mut group) in groups {
        if day < today && group.len() == 1 && group[0].meta.level == 0 {
            jobs.push(vec![group[0].clone()]);
            continue;
        }
        if day < today {
            if group.len() < 2 {
                continue;
            }
        } else {
            let mut tiers: BTreeMap<u32, Vec<&Arc<Part>>> = BTreeMap::new();
            for p in group {
                tiers.entry(p.meta.level).or_default().push(p);
            }
            let Some(tier) = tiers.into_values().find(|t| t.len() >= cfg.compaction_min_parts) else {
                continue;
            };
            group = tier;
        }
        group.sort_by_key(|p| p.meta.id);
        let mut job: Vec<Arc<Part>> = Vec::new();
        let mut bytes = 0;
        let mut fields: BTreeSet<&str> = BTreeSet::new();
        for p in group {
            if job.len() == MAX_MERGE_INPUTS {
                jobs.push(std::mem::take(&mut job));
                fields.clear();
            }
            let new_fields = p.meta.fields.iter().filter(|f| !fields.contains(f.as_str())).count();
            if !job.is_empty() && fields.len() + new_fields > cfg.max_field_columns {
                // Merging it would make a part wider than store.max_field_columns: try the next one.
                continue;
            }
            if job.len() >= 2 && bytes + p.meta.disk_bytes() > cap {
                break;
            }
            bytes += p.meta.disk_bytes();
            fields.extend(p.meta.fields.iter().map(String::as_str));
            job.push(p.clone());
        }
        if job.len() >= 2 {
            jobs.push(job);
        }
    }
    jobs
}

struct Cursor {
    /// Index of its input.
    input: usize,
    reader: ParquetRecordBatchReader,
    slot: usize,
    row: usize,
    done: bool,
}

/// Merges `inputs` (one tenant, one day) into a new part described by `meta`. An input that fails to
/// read is marked unreadable (see [`Part::set_unreadable`]), so that the next compaction goes on without it.
pub(crate) fn merge(
    inputs: &[Arc<Part>],
    dir: &Path,
    meta: PartMeta,
    options: WriteOptions,
    rg_rows: usize,
    metrics: &StoreMetrics,
) -> Result<Arc<Part>> {
    merge_filtered(inputs, dir, meta, options, rg_rows, metrics, None)
}

/// A row a rewrite leaves out: (stream id, time, line) → true to drop it.
pub(crate) type DropRow<'a> = &'a dyn Fn(u64, i64, &str) -> bool;

/// [`merge`], leaving out the rows `drop` names (a delete's rewrite). The output may have no rows.
pub(crate) fn merge_filtered(
    inputs: &[Arc<Part>],
    dir: &Path,
    mut meta: PartMeta,
    options: WriteOptions,
    rg_rows: usize,
    metrics: &StoreMetrics,
    drop: Option<DropRow<'_>>,
) -> Result<Arc<Part>> {
    let labels: BTreeSet<String> = inputs.iter().flat_map(|p| p.meta.labels.iter().cloned()).collect();
    let fields: BTreeSet<String> =
        inputs.iter().flat_map(|p| p.meta.fields.iter().cloned()).filter(|f| !labels.contains(f)).collect();
    let shared: BTreeSet<String> = inputs
        .iter()
        .flat_map(|p| p.meta.shared_fields.iter().chain(p.meta.fields.iter()).cloned())
        .filter(|f| labels.contains(f))
        .collect();
    meta.labels = labels.iter().cloned().collect();
    meta.fields = fields.iter().cloned().collect();
    meta.shared_fields = shared.into_iter().collect();
    let schema = table_schema(labels.iter(), fields.iter());
    let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();

    let mut options = options;
    options.small_fields = small_fields_of(inputs, &fields);
    let mut writer = PartWriter::create(dir, meta, schema.clone(), options)?;
    let res = (|| {
        let mut slots: Vec<RecordBatch> = Vec::new();
        let mut cursors: Vec<Cursor> = Vec::new();
        let mut heap = BinaryHeap::new();
        let unreadable = |input: usize, e: Error| {
            inputs[input].set_unreadable(&e, metrics);
            e
        };
        let batch_rows = merge_batch_rows(rg_rows, inputs.len());
        for (input, part) in inputs.iter().enumerate() {
            let Some(mut reader) = part.reader(&columns, None, batch_rows).map_err(|e| unreadable(input, e))? else {
                continue;
            };
            if let Some(batch) = next_batch(&mut reader, &schema).map_err(|e| unreadable(input, e))? {
                let c = cursors.len();
                heap.push(Reverse((key(&batch, 0), c)));
                slots.push(batch);
                cursors.push(Cursor { input, reader, slot: slots.len() - 1, row: 0, done: false });
            }
        }
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(rg_rows);
        while let Some(Reverse((_, c))) = heap.pop() {
            let cur = &mut cursors[c];
            let dropped = drop.is_some_and(|f| {
                let b = &slots[cur.slot];
                let (id, t) = key(b, cur.row);
                let line = b.column_by_name(crate::head::MESSAGE).map_or("", |m| m.as_string::<i32>().value(cur.row));
                f(id, t, line)
            });
            if !dropped {
                picks.push((cur.slot, cur.row));
            }
            cur.row += 1;
            if cur.row == slots[cur.slot].num_rows() {
                match next_batch(&mut cur.reader, &schema).map_err(|e| unreadable(cur.input, e))? {
                    Some(batch) => {
                        slots.push(batch);
                        cur.slot = slots.len() - 1;
                        cur.row = 0;
                        heap.push(Reverse((key(&slots[cur.slot], 0), c)));
                    }
                    None => cur.done = true,
                }
            } else {
                heap.push(Reverse((key(&slots[cur.slot], cur.row), c)));
            }
            if picks.len() == rg_rows {
                emit(&mut writer, &schema, &slots, &picks)?;
                picks.clear();
                // Keep only the batches the cursors still read from.
                let mut kept = Vec::new();
                for cur in cursors.iter_mut().filter(|c| !c.done) {
                    {
                        kept.push(slots[cur.slot].clone());
                        cur.slot = kept.len() - 1;
                    }
                }
                slots = kept;
            }
        }
        if !picks.is_empty() {
            emit(&mut writer, &schema, &slots, &picks)?;
        }
        Ok::<_, Error>(())
    })();
    match res {
        Ok(()) => writer.finish(dir),
        Err(e) => {
            writer.abort();
            Err(e)
        }
    }
}

/// Rows each input of a merge reads at a time. A merge holds every input's current batch plus the
/// batches the row group being gathered comes from, so the inputs together read about one row group at a
/// time (within 1,024 and 8,192 rows each): a merge of many small parts holds little more than one of few.
fn merge_batch_rows(rg_rows: usize, inputs: usize) -> usize {
    (rg_rows / inputs.max(1)).clamp(1024, 8192)
}

/// The `fields` whose values total under [`crate::part::SMALL_FIELD_BYTES`] over all `inputs`, by their
/// footers. An input whose footer cannot be read counts as large for all fields (its read fails later).
fn small_fields_of(inputs: &[Arc<Part>], fields: &BTreeSet<String>) -> std::collections::HashSet<String> {
    let mut sizes: HashMap<&str, u64> = fields.iter().map(|f| (f.as_str(), 0)).collect();
    for part in inputs {
        match part.column_bytes() {
            Ok(bytes) => {
                for (f, total) in sizes.iter_mut() {
                    *total = total.saturating_add(bytes.get(*f).copied().unwrap_or(0));
                }
            }
            Err(_) => return Default::default(),
        }
    }
    crate::part::small_fields(sizes)
}

fn next_batch(reader: &mut ParquetRecordBatchReader, schema: &SchemaRef) -> Result<Option<RecordBatch>> {
    loop {
        match reader.next() {
            None => return Ok(None),
            Some(Err(e)) => return Err(Error::Arrow(e)),
            Some(Ok(b)) if b.num_rows() == 0 => continue,
            Some(Ok(b)) => return Ok(Some(conform(&b, schema, None)?)),
        }
    }
}

fn key(batch: &RecordBatch, row: usize) -> (u64, i64) {
    let ids = batch.column(1).as_primitive::<UInt64Type>();
    let times = batch.column(0).as_primitive::<TimestampNanosecondType>();
    (ids.value(row), times.value(row))
}

fn emit(writer: &mut PartWriter, schema: &SchemaRef, slots: &[RecordBatch], picks: &[(usize, usize)]) -> Result<()> {
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for c in 0..schema.fields().len() {
        let arrays: Vec<&dyn Array> = slots.iter().map(|b| b.column(c).as_ref()).collect();
        cols.push(interleave(&arrays, picks)?);
    }
    writer.write_row_group(&RecordBatch::try_new(schema.clone(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::merge_batch_rows;

    #[test]
    fn a_merge_of_many_inputs_reads_fewer_rows_from_each() {
        // Together the inputs read about one row group, within the bounds.
        assert_eq!(merge_batch_rows(65_536, 2), 8192);
        assert_eq!(merge_batch_rows(65_536, 16), 4096);
        assert_eq!(merge_batch_rows(65_536, 200), 1024);
        assert_eq!(merge_batch_rows(4096, 1), 4096);
        assert_eq!(merge_batch_rows(65_536, 0), 8192);
    }
}
