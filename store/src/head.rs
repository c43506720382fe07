//! The in-memory head: what the write-ahead log has made durable and no part holds yet, as Arrow record
//! batches per tenant, queryable as soon as the write is acknowledged.
//!
//! A request's batch is converted to Arrow by the request's own task (in parallel), and the WAL thread
//! appends the finished record batch in sequence order. Head batches carry `time`, `_stream_id`,
//! `message` and one column per structured field; label columns are added from the catalog when a scan
//! or flush needs them, so the head holds each label once per stream, not once per row.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, StringBuilder, TimestampNanosecondArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::model::{LogBatch, Tenant};

/// Column of the entry's time, nanoseconds UTC.
pub const TIME: &str = "time";
/// Column of the stream id.
pub const STREAM_ID: &str = "_stream_id";
/// Column of the log line.
pub const MESSAGE: &str = "message";

pub(crate) fn is_reserved(name: &str) -> bool {
    matches!(name, TIME | STREAM_ID | MESSAGE)
}

/// The column that holds a label: its name, unless it collides with a built-in column.
pub fn label_column(name: &str) -> String {
    if is_reserved(name) { format!("{name}_label") } else { name.to_string() }
}

/// The type of the time column.
pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

pub(crate) fn base_fields() -> [Field; 3] {
    [
        Field::new(TIME, time_type(), false),
        Field::new(STREAM_ID, DataType::UInt64, false),
        Field::new(MESSAGE, DataType::Utf8, false),
    ]
}

/// Converts a decoded batch into the head's Arrow form. A field named like a built-in column or like a
/// label of its own stream is stored as `<name>_extracted`, as Loki names such parsed labels.
pub(crate) fn to_record_batch(batch: &LogBatch) -> Result<RecordBatch> {
    let n = batch.entries.len();
    let times =
        TimestampNanosecondArray::from_iter_values(batch.entries.iter().map(|e| e.time_ns)).with_timezone("UTC");
    let ids = UInt64Array::from_iter_values(batch.entries.iter().map(|e| batch.streams[e.stream as usize].id.0));
    let mut messages = StringBuilder::with_capacity(n, batch.entries.iter().map(|e| e.line.len()).sum());
    let mut columns: Vec<(String, Vec<Option<&str>>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (row, e) in batch.entries.iter().enumerate() {
        messages.append_value(&e.line);
        for (name, value) in &e.fields {
            let labels = &batch.streams[e.stream as usize].labels;
            let col = if is_reserved(name) || labels.get(name).is_some() {
                format!("{name}_extracted")
            } else {
                name.clone()
            };
            let i = *index.entry(col.clone()).or_insert_with(|| {
                columns.push((col, vec![None; n]));
                columns.len() - 1
            });
            columns[i].1[row] = Some(value.as_str());
        }
    }
    let mut fields: Vec<Field> = base_fields().into();
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(times), Arc::new(ids), Arc::new(messages.finish())];
    for (name, values) in columns {
        fields.push(Field::new(name, DataType::Utf8, true));
        // Sized exactly: `StringArray::from` reserves 1 KiB of values per column, which a request with
        // thousands of sparse field columns turned into most of its head memory.
        let bytes = values.iter().map(|v| v.map_or(0, str::len)).sum();
        let mut b = StringBuilder::with_capacity(values.len(), bytes);
        for v in values {
            b.append_option(v);
        }
        arrays.push(Arc::new(b.finish()));
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// One tenant's share of a memtable.
#[derive(Default)]
pub(crate) struct TenantMem {
    pub(crate) batches: Vec<RecordBatch>,
    pub(crate) rows: usize,
    pub(crate) min_time: i64,
    pub(crate) max_time: i64,
    /// Field columns seen in the batches.
    pub(crate) fields: BTreeSet<String>,
}

/// A generation of the head: appended to while active, then frozen and flushed.
#[derive(Default)]
pub(crate) struct MemTable {
    pub(crate) tenants: HashMap<Tenant, TenantMem>,
    pub(crate) bytes: usize,
    pub(crate) rows: usize,
    pub(crate) first_write: Option<Instant>,
    /// The highest WAL sequence number applied to this memtable.
    pub(crate) last_seq: u64,
}

impl MemTable {
    pub(crate) fn insert(&mut self, tenant: &Tenant, batch: RecordBatch, seq: u64) {
        let rows = batch.num_rows();
        if rows == 0 {
            self.last_seq = self.last_seq.max(seq);
            return;
        }
        let times = batch.column(0).as_any().downcast_ref::<TimestampNanosecondArray>();
        let (min, max) = times
            .map(|t| (arrow::compute::min(t).unwrap_or(i64::MAX), arrow::compute::max(t).unwrap_or(i64::MIN)))
            .unwrap_or((i64::MAX, i64::MIN));
        self.bytes += batch.get_array_memory_size();
        self.rows += rows;
        self.first_write.get_or_insert_with(Instant::now);
        self.last_seq = self.last_seq.max(seq);
        let t = self.tenants.entry(tenant.clone()).or_insert_with(|| TenantMem {
            min_time: i64::MAX,
            max_time: i64::MIN,
            ..TenantMem::default()
        });
        for f in batch.schema().fields().iter().skip(3) {
            if !t.fields.contains(f.name()) {
                t.fields.insert(f.name().clone());
            }
        }
        t.rows += rows;
        t.min_time = t.min_time.min(min);
        t.max_time = t.max_time.max(max);
        t.batches.push(batch);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

/// The schema of a part or a scan: built-in columns, then labels, then fields, each sorted.
pub(crate) fn table_schema<'a>(
    labels: impl IntoIterator<Item = &'a String>,
    fields: impl IntoIterator<Item = &'a String>,
) -> SchemaRef {
    let labels: BTreeSet<&String> = labels.into_iter().collect();
    let fields: BTreeSet<&String> = fields.into_iter().filter(|f| !labels.contains(f)).collect();
    let mut out: Vec<Field> = base_fields().into();
    out.extend(labels.into_iter().map(|l| Field::new(l.as_str(), DataType::Utf8, true)));
    out.extend(fields.into_iter().map(|f| Field::new(f.as_str(), DataType::Utf8, true)));
    Arc::new(Schema::new(out))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, StringArray};

    use super::*;
    use crate::model::{Labels, LogEntry};

    #[test]
    fn converts_and_renames_colliding_fields() {
        let mut b = LogBatch::default();
        let s = b.stream_index(Labels::from_pairs(vec![("app".into(), "x".into())]));
        b.entries.push(LogEntry {
            stream: s,
            time_ns: 5,
            line: "l1".into(),
            fields: vec![("app".into(), "y".into()), ("message".into(), "m".into()), ("k".into(), "v".into())],
        });
        b.entries.push(LogEntry { stream: s, time_ns: 6, line: "l2".into(), fields: vec![] });
        let rb = to_record_batch(&b).unwrap();
        let schema = rb.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["time", "_stream_id", "message", "app_extracted", "message_extracted", "k"]);
        let k = rb.column(5).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((k.value(0), k.is_null(1)), ("v", true));

        let mut m = MemTable::default();
        m.insert(&Tenant::default_tenant(), rb, 7);
        assert_eq!((m.rows, m.last_seq), (2, 7));
        let t = &m.tenants[&Tenant::default_tenant()];
        assert_eq!((t.min_time, t.max_time), (5, 6));
    }
}
