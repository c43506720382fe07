//! Re-encodes the `message` and `time` columns of the given parts with several Parquet settings and
//! prints bytes per row and encode time, to choose the store's defaults on real data.
//! Usage: `cargo run --release -p benches --bin encode_experiment -- <file.parquet>...`

use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterVersion};

fn main() {
    let mut batches: Vec<RecordBatch> = Vec::new();
    for path in std::env::args().skip(1) {
        let file = std::fs::File::open(&path).unwrap();
        let b = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let mask = parquet::arrow::ProjectionMask::columns(b.parquet_schema(), ["time", "message"]);
        for batch in b.with_projection(mask).with_batch_size(65536).build().unwrap() {
            batches.push(batch.unwrap());
        }
    }
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let schema = batches[0].schema();
    for (enc, level, page_mb) in [
        (Encoding::DELTA_BYTE_ARRAY, 3, 1),
        (Encoding::PLAIN, 3, 1),
        (Encoding::PLAIN, 3, 4),
        (Encoding::PLAIN, 6, 4),
        (Encoding::PLAIN, 9, 4),
        (Encoding::PLAIN, 9, 8),
        (Encoding::DELTA_BYTE_ARRAY, 9, 4),
        (Encoding::PLAIN, 15, 8),
    ] {
        let props = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_2_0)
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(level).unwrap()))
            .set_dictionary_enabled(false)
            .set_column_encoding("message".into(), enc)
            .set_column_encoding("time".into(), Encoding::DELTA_BINARY_PACKED)
            .set_data_page_size_limit(page_mb << 20)
            .set_data_page_row_count_limit(usize::MAX)
            .build();
        let started = Instant::now();
        let mut w = ArrowWriter::try_new(Vec::new(), Arc::new((*schema).clone()), Some(props)).unwrap();
        for b in &batches {
            w.write(b).unwrap();
            w.flush().unwrap();
        }
        let out = w.into_inner().unwrap();
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "{enc:?} zstd {level} pages {page_mb} MiB: {:.2} B/row (time+message), encode {:.2} µs/row",
            out.len() as f64 / rows as f64,
            secs / rows as f64 * 1e6
        );
    }
}
