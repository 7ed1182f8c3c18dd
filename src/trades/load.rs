//! Reading trade files (Parquet or CSV) and appending them to `market.trades`.

use std::fs::File;
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::csv::reader::Format;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::error::{Error, Result};
use super::normalize::{normalize_with, Limits};
use crate::storage::{CommitOutcome, TableKind, TableWriter};

/// Reads a whole trade file as it is on disk (before normalising).
pub fn read_file(path: &Path) -> Result<Vec<RecordBatch>> {
    let err = |message: String| Error::File {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|e| err(e.to_string()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "parquet" | "pq" => ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string())),
        "csv" => {
            let format = Format::default().with_header(true);
            let (schema, _) = format
                .infer_schema(&file, None)
                .map_err(|e| err(format!("cannot infer CSV schema: {e}")))?;
            let file = File::open(path).map_err(|e| err(e.to_string()))?;
            arrow::csv::ReaderBuilder::new(std::sync::Arc::new(schema))
                .with_format(format)
                .build(file)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))
        }
        _ => Err(err(
            "unknown file type: expected .parquet or .csv".to_string()
        )),
    }
}

/// Reads and validates every file first, then appends them all in one commit: a bad row in
/// any file means nothing is written.
pub async fn load_files(
    writer: &TableWriter,
    paths: &[&Path],
    ingested_at: i64,
    limits: &Limits,
) -> Result<CommitOutcome> {
    let mut rows = Vec::new();
    for path in paths {
        let mut offset = 0;
        for batch in read_file(path)? {
            rows.push(
                normalize_with(&batch, offset, ingested_at, Some(limits))
                    .map_err(|e| e.in_file(path))?,
            );
            offset += batch.num_rows();
        }
    }
    Ok(writer
        .append(TableKind::Trades, &rows, Default::default())
        .await?)
}
