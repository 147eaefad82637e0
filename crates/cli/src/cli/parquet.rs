//! `raven history --format parquet`: the history stream as Parquet files, one per channel,
//! each with its channel's schema from [`raven_arrow`] (zstd). The Python SDK's
//! `to_parquet` writes the same files.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use raven_arrow::{Table, TableBuilder};
use raven_proto::pb;

/// Rows gathered before they go to the writer as one record batch.
const ROWS_PER_BATCH: usize = 65_536;
/// Rows per row group: large enough to compress well, small enough to hold in memory.
const ROWS_PER_GROUP: usize = 262_144;

/// Where each table goes: `out` itself for one table; for several, `out` as a prefix
/// (`day` or `day.parquet` → `day.trades.parquet`, `day.book.parquet`, …).
pub(super) fn paths(out: &Path, tables: &[Table]) -> Vec<PathBuf> {
    if let [_] = tables {
        return vec![out.to_path_buf()];
    }
    let text = out.to_string_lossy();
    let prefix = text.strip_suffix(".parquet").unwrap_or(&text);
    tables
        .iter()
        .map(|t| PathBuf::from(format!("{prefix}.{}.parquet", t.name())))
        .collect()
}

/// An export in progress: one file per table.
pub(super) struct ParquetExport {
    files: Vec<TableFile>,
}

impl ParquetExport {
    /// Creates the files (each table's goes to the path at the same index).
    pub(super) fn create(tables: &[Table], paths: &[PathBuf]) -> anyhow::Result<ParquetExport> {
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
            .build();
        let files = tables
            .iter()
            .zip(paths)
            .map(|(&table, path)| {
                let file = File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                let rows = TableBuilder::new(table);
                let writer = ArrowWriter::try_new(file, rows.schema(), Some(properties.clone()))?;
                Ok(TableFile { rows, writer })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(ParquetExport { files })
    }

    /// Adds an event's rows to its channel's file.
    pub(super) fn push(&mut self, event: &pb::Event) -> anyhow::Result<()> {
        let Some(file) = self
            .files
            .iter_mut()
            .find(|f| f.rows.table().channel() == event.channel)
        else {
            return Ok(());
        };
        file.rows.push(event)?;
        if file.rows.len() >= ROWS_PER_BATCH {
            file.write()?;
        }
        Ok(())
    }

    /// Writes what is gathered and closes the files; the rows written to each.
    pub(super) fn finish(self) -> anyhow::Result<Vec<u64>> {
        self.files
            .into_iter()
            .map(|mut f| {
                f.write()?;
                let written = f.writer.close()?.file_metadata().num_rows();
                Ok(written as u64)
            })
            .collect()
    }
}

struct TableFile {
    rows: TableBuilder,
    writer: ArrowWriter<File>,
}

impl TableFile {
    fn write(&mut self) -> anyhow::Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        self.writer.write(&self.rows.finish())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_goes_to_out_several_use_it_as_a_prefix() {
        assert_eq!(
            paths(Path::new("t.parquet"), &[Table::Trades]),
            vec![PathBuf::from("t.parquet")]
        );
        assert_eq!(
            paths(Path::new("out/day.parquet"), &[Table::Book, Table::Trades]),
            vec![
                PathBuf::from("out/day.book.parquet"),
                PathBuf::from("out/day.trades.parquet")
            ]
        );
        assert_eq!(
            paths(Path::new("day"), &[Table::Bbo, Table::Candles]),
            vec![
                PathBuf::from("day.bbo.parquet"),
                PathBuf::from("day.candles.parquet")
            ]
        );
    }
}
