//! Prints the compressed and uncompressed bytes of each column over the Parquet files given, to see
//! where the bytes of a store go. Usage: `cargo run -p benches --bin part_stats -- <file.parquet>...`

use std::collections::BTreeMap;

use parquet::file::reader::{FileReader, SerializedFileReader};

fn main() {
    let mut cols: BTreeMap<String, (i64, i64, String)> = BTreeMap::new();
    let mut rows = 0i64;
    for path in std::env::args().skip(1) {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let reader = SerializedFileReader::new(file).unwrap_or_else(|e| panic!("{path}: {e}"));
        let meta = reader.metadata();
        rows += meta.file_metadata().num_rows();
        for rg in meta.row_groups() {
            for c in rg.columns() {
                let e = cols.entry(c.column_path().string()).or_default();
                e.0 += c.compressed_size();
                e.1 += c.uncompressed_size();
                e.2 = format!("{:?}", c.encodings().collect::<Vec<_>>());
            }
        }
    }
    let total: i64 = cols.values().map(|c| c.0).sum();
    eprintln!("{rows} rows, {total} bytes compressed ({:.2} per row)", total as f64 / rows as f64);
    for (name, (comp, uncomp, enc)) in cols {
        eprintln!(
            "{name:>12}: {:>8.2} B/row compressed, {:>8.2} uncompressed, {enc}",
            comp as f64 / rows as f64,
            uncomp as f64 / rows as f64
        );
    }
}
