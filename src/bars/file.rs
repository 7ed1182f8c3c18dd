//! Reading a trades Parquet file as fast as the disk and both cores allow: row groups are split
//! across threads, string keys are read as dictionaries (no per-row string copies), and only
//! the columns the kernel needs are decoded.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::error::{Error, Result};

const COLUMNS: [&str; 7] = [
    "exchange", "symbol", "trade_id", "ts", "price", "quantity", "side",
];

/// Reads the trade columns of `path`, with `ts` in microseconds and prices as doubles.
pub fn read_trades(path: &Path) -> Result<Vec<RecordBatch>> {
    let open = || File::open(path).map_err(|e| Error::Input(format!("{}: {e}", path.display())));
    let probe = ParquetRecordBatchReaderBuilder::try_new(open()?)
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    let file_schema = probe.schema().clone();
    let metadata = probe.metadata().clone();
    for required in &COLUMNS[..6] {
        if file_schema.field_with_name(required).is_err() {
            return Err(Error::Input(format!(
                "{}: missing column '{required}'",
                path.display()
            )));
        }
    }
    // Ask for the key strings as dictionaries: Parquet stores them dictionary-encoded anyway.
    let hinted: Vec<Field> = file_schema
        .fields()
        .iter()
        .map(|f| match (f.name().as_str(), f.data_type()) {
            ("exchange" | "symbol" | "side", DataType::Utf8 | DataType::LargeUtf8) => {
                f.as_ref().clone().with_data_type(DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(DataType::Utf8),
                ))
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    let options = ArrowReaderOptions::new().with_schema(Arc::new(Schema::new(hinted)));
    let mask = ProjectionMask::columns(
        metadata.file_metadata().schema_descr(),
        COLUMNS
            .iter()
            .copied()
            .filter(|c| file_schema.field_with_name(c).is_ok()),
    );
    let groups = metadata.num_row_groups();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(groups.max(1));
    // Balance row groups by row count across threads.
    let mut parts: Vec<(usize, Vec<usize>)> = (0..threads).map(|_| (0, Vec::new())).collect();
    for g in 0..groups {
        let lightest = parts.iter_mut().min_by_key(|p| p.0).expect("a part");
        lightest.0 += metadata.row_group(g).num_rows() as usize;
        lightest.1.push(g);
    }
    let results: Vec<Result<Vec<RecordBatch>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .filter(|p| !p.1.is_empty())
            .map(|(_, row_groups)| {
                let (options, mask) = (options.clone(), mask.clone());
                scope.spawn(move || -> Result<Vec<RecordBatch>> {
                    let reader =
                        ParquetRecordBatchReaderBuilder::try_new_with_options(open()?, options)
                            .and_then(|b| {
                                b.with_row_groups(row_groups)
                                    .with_projection(mask)
                                    .with_batch_size(65_536)
                                    .build()
                            })
                            .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
                    reader
                        .map(|b| b.map_err(Error::from).and_then(conform))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader thread"))
            .collect()
    });
    Ok(results
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect())
}

/// Casts `ts` to microseconds and price/quantity to doubles when the file uses other types.
fn conform(batch: RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let target = match (field.name().as_str(), field.data_type()) {
            ("ts", DataType::Timestamp(TimeUnit::Microsecond, _)) => None,
            ("ts", DataType::Timestamp(_, tz)) => {
                Some(DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))
            }
            ("ts", other) => {
                return Err(Error::Input(format!(
                    "column 'ts' is {other}, expected a timestamp"
                )))
            }
            ("price" | "quantity", DataType::Float64) => None,
            ("price" | "quantity", t) if t.is_numeric() => Some(DataType::Float64),
            ("trade_id", t)
                if t.is_integer() && !matches!(t, DataType::Int64 | DataType::UInt64) =>
            {
                Some(DataType::Int64)
            }
            _ => None,
        };
        match target {
            Some(t) => {
                columns.push(cast(column, &t)?);
                fields.push(field.as_ref().clone().with_data_type(t));
            }
            None => {
                columns.push(Arc::clone(column));
                fields.push(field.as_ref().clone());
            }
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}
