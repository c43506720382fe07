use arrow::array::{ArrayRef, StringArray, TimestampNanosecondArray, UInt64Array};
use arrow::datatypes::Schema;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::serialized_reader::ReadOptionsBuilder;

use super::*;
use crate::manifest::TimeUnitTag;

fn meta() -> PartMeta {
    PartMeta {
        id: 1,
        tenant: "default".to_string(),
        day: 0,
        min_time: 0,
        max_time: 0,
        rows: 0,
        parquet_bytes: 0,
        index_bytes: 0,
        labels: Vec::new(),
        fields: Vec::new(),
        shared_fields: Vec::new(),
        level: 0,
        time_unit: TimeUnitTag::Ns,
    }
}

fn options() -> WriteOptions {
    WriteOptions { zstd_level: 3, token_filter_bits: 10, index_numbers: false, small_fields: Default::default() }
}

/// Rows of streams 1..=5 in order, with runs of 3000, 20, 20, 5000 and 1 rows: lines of about 60 bytes,
/// so the first and fourth runs pass [`PAGE_RUN_BYTES`] and the small ones in between do not.
fn runs() -> Vec<(u64, usize)> {
    vec![(1, 3000), (2, 20), (3, 20), (4, 5000), (5, 1)]
}

fn batch(schema: &SchemaRef) -> RecordBatch {
    let (mut ids, mut times, mut lines) = (Vec::new(), Vec::new(), Vec::new());
    for (id, n) in runs() {
        for i in 0..n {
            ids.push(id);
            times.push(i as i64 * 1_000);
            lines.push(format!("stream {id} line {i:06} {}", "x".repeat(40)));
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampNanosecondArray::from(times).with_timezone("UTC")),
        Arc::new(UInt64Array::from(ids)),
        Arc::new(StringArray::from(lines)),
    ];
    RecordBatch::try_new(schema.clone(), columns).unwrap()
}

/// The rows of [`batch`] written as a part of two row groups, the second starting inside stream 4's run.
fn two_row_groups(dir: &Path) -> Arc<Part> {
    let schema: SchemaRef = Arc::new(Schema::new(crate::head::base_fields().to_vec()));
    let mut writer = PartWriter::create(dir, meta(), schema.clone(), options()).unwrap();
    let input = batch(&schema);
    writer.write_row_group(&input.slice(0, 5000)).unwrap();
    writer.write_row_group(&input.slice(5000, input.num_rows() - 5000)).unwrap();
    writer.finish(dir).unwrap()
}

#[test]
fn cuts_fall_where_a_large_run_starts_or_ends() {
    let ids = [7, 7, 7, 8, 9, 9, 9, 9, 10];
    // Line lengths: stream 7 has 30 bytes, 8 has 1, 9 has 40, 10 has 1.
    let offsets = [0, 10, 20, 30, 31, 41, 51, 61, 71, 72];
    assert_eq!(run_cuts(&ids, &offsets, 25), vec![3, 4, 8]);
    assert_eq!(run_cuts(&ids, &offsets, 35), vec![4, 8]);
    assert_eq!(run_cuts(&ids, &offsets, 100), Vec::<usize>::new());
    assert_eq!(run_cuts(&[], &[0], 1), Vec::<usize>::new());
}

/// Issue 23: the `message` column of a part with several streams starts a data page where a large
/// stream's run starts and where it ends, and a read of one stream's row range gives exactly its rows.
#[test]
fn message_pages_start_at_large_streams_and_a_stream_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let part = two_row_groups(dir.path());
    assert_eq!(part.meta.rows, 8041);

    // Page starts of the message column, in the part's row numbers.
    let file = File::open(&part.parquet_path).unwrap();
    let options = ReadOptionsBuilder::new().with_page_index().build();
    let reader = SerializedFileReader::new_with_options(file, options).unwrap();
    let metadata = reader.metadata();
    let message = metadata.file_metadata().schema_descr().columns().iter().position(|c| c.name() == MESSAGE).unwrap();
    // Compressed with the part's codec although written run by run.
    for g in metadata.row_groups() {
        let chunk = g.column(message);
        assert!(matches!(chunk.compression(), parquet::basic::Compression::ZSTD(_)));
        assert!(chunk.compressed_size() * 4 < chunk.uncompressed_size(), "{chunk:?}");
    }
    let mut page_starts = Vec::new();
    let mut first_row = 0;
    for (g, index) in metadata.offset_index().unwrap().iter().enumerate() {
        page_starts.extend(index[message].page_locations.iter().map(|p| first_row + p.first_row_index as u64));
        first_row += metadata.row_group(g).num_rows() as u64;
    }
    // Stream 1: rows 0..3000, then 2 and 3 (small) share a page up to stream 4 at 3040; the second
    // row group starts at 5000; stream 4 ends at 8040, where stream 5's single row starts.
    for start in [0, 3000, 3040, 5000, 8040] {
        assert!(page_starts.contains(&start), "no page starts at row {start}: {page_starts:?}");
    }
    assert!(!page_starts.contains(&3020), "small runs share a page: {page_starts:?}");

    // The index and the Parquet reader agree on each stream's rows.
    for (id, n) in runs() {
        let range = part.streams.iter().find(|s| s.id == id).unwrap();
        assert_eq!(range.rows, n as u64);
        let rows = range.first_row..range.first_row + range.rows;
        let reader = part.reader(&[TIME, STREAM_ID, MESSAGE], Some(&[rows]), 1024).unwrap().unwrap();
        let mut got = 0;
        for batch in reader {
            let batch = batch.unwrap();
            let ids = batch.column_by_name(STREAM_ID).unwrap().as_primitive::<UInt64Type>();
            let lines = batch.column_by_name(MESSAGE).unwrap().as_string::<i32>();
            for row in 0..batch.num_rows() {
                assert_eq!(ids.value(row), id);
                assert_eq!(lines.value(row), format!("stream {id} line {got:06} {}", "x".repeat(40)));
                got += 1;
            }
        }
        assert_eq!(got, n);
    }
}

/// Issue 17: the footer of a part with more than `WIDE_PART_COLUMNS` field columns is not kept after a
/// read (each reader reads it again); a narrow part's is. Both read back the same rows.
#[test]
fn a_wide_parts_footer_is_read_per_reader_and_not_kept() {
    use arrow::datatypes::{DataType, Field};
    let dir = tempfile::tempdir().unwrap();
    for (n, wide) in [(8usize, false), (crate::manifest::WIDE_PART_COLUMNS + 1, true)] {
        let names: Vec<String> = (0..n).map(|i| format!("f{i:04}")).collect();
        let mut fields: Vec<Field> = crate::head::base_fields().to_vec();
        fields.extend(names.iter().map(|f| Field::new(f.as_str(), DataType::Utf8, true)));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let mut m = meta();
        m.id = n as u64;
        m.fields = names.clone();
        let base = batch(&Arc::new(Schema::new(crate::head::base_fields().to_vec())));
        let rows = base.num_rows();
        let mut columns: Vec<ArrayRef> = base.columns().to_vec();
        columns.extend(names.iter().map(|f| Arc::new(StringArray::from(vec![Some(f.as_str()); rows])) as ArrayRef));
        let input = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let mut writer = PartWriter::create(dir.path(), m, schema.clone(), options()).unwrap();
        writer.write_row_group(&input).unwrap();
        let part = writer.finish(dir.path()).unwrap();
        assert_eq!(part.meta.is_wide(), wide);
        for _ in 0..2 {
            let last = names.last().unwrap().as_str();
            let reader = part.reader(&[TIME, last], None, 4096).unwrap().unwrap();
            let got: usize = reader.map(|b| b.unwrap().column(1).len()).sum();
            assert_eq!(got, rows);
        }
        assert_eq!(part.metadata.get().is_some(), !wide, "{n} fields");
    }
}

/// Issue 23: each data page of `message` gets a substring filter; the filters rule out the pages of
/// other streams for a stream's words, never a page that holds the substring. An index of the second
/// version (no page filters) still opens, and a damaged page filter is ignored, not trusted.
#[test]
fn page_filters_rule_out_pages_and_older_or_damaged_indexes_still_read() {
    use crate::ngrams::{PageFilters, needle_positions};
    let dir = tempfile::tempdir().unwrap();
    let part = two_row_groups(dir.path());
    let index = part.open_index().unwrap();
    let passing = |needle: &str| -> (Vec<Range<u64>>, u64) {
        let mut rows = Vec::new();
        let mut skipped = 0;
        for (g, rg) in part.row_groups.iter().enumerate() {
            let blob = part.page_filters(&index, g).unwrap().expect("page filters");
            let (r, s) = PageFilters::parse(&blob).unwrap().passing(rg.rows, &[needle_positions(needle.as_bytes())]);
            rows.extend(r.into_iter().map(|r| rg.first_row + r.start..rg.first_row + r.end));
            skipped += s;
        }
        (rows, skipped)
    };
    // Stream 4 (rows 3040..8040) has pages of its own in both row groups; the other streams' pages fail.
    let (rows, skipped) = passing("stream 4 line");
    assert!(skipped >= 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.start >= 3040 && r.end <= 8040), "{rows:?}");
    assert_eq!(rows.iter().map(|r| r.end - r.start).sum::<u64>(), 5000);
    // A line's every substring passes: stream 1's line 2999 and stream 5's only line.
    for (needle, row) in [("1 line 002999 xx", 2999u64), ("stream 5 line 000000", 8040)] {
        assert!(passing(needle).0.iter().any(|r| r.contains(&row)), "{needle}");
    }
    assert_eq!(passing("no such text").0, Vec::<Range<u64>>::new());

    // The same index written as the second version: 48-byte row-group records, no page filters.
    let v3 = fs::read(&part.index_path).unwrap();
    let (n_streams, n_rgs) = (part.streams.len(), part.row_groups.len());
    let mut v2 = b"LUMNIDX2".to_vec();
    v2.extend_from_slice(&v3[8..16 + n_streams * STREAM_REC]);
    for g in 0..n_rgs {
        let rec = &v3[16 + n_streams * STREAM_REC + g * RG_REC..][..RG_REC_V2];
        let offset = u64::from_le_bytes(rec[32..40].try_into().unwrap()) - (n_rgs * (RG_REC - RG_REC_V2)) as u64;
        v2.extend_from_slice(&rec[..32]);
        v2.extend_from_slice(&offset.to_le_bytes());
        v2.extend_from_slice(&rec[40..48]);
    }
    let crc = crc32fast::hash(&v2);
    v2.extend_from_slice(&crc.to_le_bytes());
    let header_v3 = 16 + n_streams * STREAM_REC + n_rgs * RG_REC + 4;
    v2.extend_from_slice(&v3[header_v3..]);
    let mut m = part.meta.clone();
    m.index_bytes = v2.len() as u64;
    let old = dir.path().join("old.idx");
    fs::write(&old, &v2).unwrap();
    let (_, rgs) = read_index(&old, &m, Some(n_rgs)).ok().expect("a second-version index reads");
    assert_eq!(rgs.len(), n_rgs);
    assert!(
        rgs.iter().zip(&part.row_groups).all(
            |(a, b)| a.pages_len == 0 && (a.first_row, a.rows, a.filter_len) == (b.first_row, b.rows, b.filter_len)
        )
    );
    let token = crate::tokens::token_hash("line");
    let f = File::open(&old).unwrap();
    for rg in &rgs {
        let mut buf = vec![0u8; rg.filter_len as usize];
        f.read_exact_at(&mut buf, rg.filter_offset).unwrap();
        assert!(TokenFilter::from_bytes(&buf).unwrap().may_contain(token));
    }

    // A flipped byte inside a page filter: its row group has none (read in full), the others keep theirs.
    let rg0 = part.row_groups[0];
    let mut damaged = v3.clone();
    damaged[(rg0.pages_offset + rg0.pages_len / 2) as usize] ^= 0x40;
    fs::write(&part.index_path, &damaged).unwrap();
    let index = part.open_index().unwrap();
    assert!(part.page_filters(&index, 0).unwrap().is_none());
    assert!(part.page_filters(&index, 1).unwrap().is_some());
}
