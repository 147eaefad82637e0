//! Parquet files read back with the Rust `parquet` reader, for the tests that compare
//! exports. (In `parquet_files/mod.rs` so that cargo does not build it as a test of its
//! own.)

use std::path::Path;

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Every record batch of a Parquet file.
pub fn read(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}
