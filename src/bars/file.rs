//! Bars of a trades Parquet file as fast as the disk and both cores allow: row groups are split
//! into one contiguous part per core, string keys are read as dictionaries (no per-row string
//! copies), and only the columns the kernel needs are decoded. The file is read twice (see
//! `order`): first its two key columns, to count each part's rows per series, then everything,
//! each batch moved into series order and dropped, so the decoded file is never held whole.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;

use super::error::{Error, Result};
use super::order::{order, Parts};

const COLUMNS: [&str; 7] = [
    "exchange", "symbol", "trade_id", "ts", "price", "quantity", "side",
];

/// Bars of `tf_us` of the trades in `path`, stamped `built_at`, and how many trades were read.
pub fn compute_file(path: &Path, tf_us: i64, built_at: i64) -> Result<(RecordBatch, usize)> {
    super::kernel::positive_window(tf_us)?;
    let file = TradeFile::open(path)?;
    let ordered = order(&file)?;
    let trades = ordered.ts.len();
    Ok((super::kernel::bars_of(&ordered, tf_us, built_at)?, trades))
}

/// A trades file split into contiguous runs of row groups, one per core.
struct TradeFile {
    path: PathBuf,
    metadata: ArrowReaderMetadata,
    all: ProjectionMask,
    keys: ProjectionMask,
    parts: Vec<Vec<usize>>,
}

impl TradeFile {
    fn open(path: &Path) -> Result<TradeFile> {
        let failed = |e: &dyn std::fmt::Display| Error::Input(format!("{}: {e}", path.display()));
        let file = File::open(path).map_err(|e| failed(&e))?;
        let probe = ArrowReaderMetadata::load(&file, Default::default()).map_err(|e| failed(&e))?;
        let file_schema = probe.schema().clone();
        for required in &COLUMNS[..6] {
            if file_schema.field_with_name(required).is_err() {
                return Err(failed(&format!("missing column '{required}'")));
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
        let metadata = ArrowReaderMetadata::try_new(Arc::clone(probe.metadata()), options)
            .map_err(|e| failed(&e))?;
        let descr = metadata.metadata().file_metadata().schema_descr();
        let all = ProjectionMask::columns(
            descr,
            COLUMNS
                .iter()
                .copied()
                .filter(|c| file_schema.field_with_name(c).is_ok()),
        );
        let keys = ProjectionMask::columns(descr, ["exchange", "symbol"]);
        // Contiguous runs of about equal rows, so input positions follow the file's order.
        let groups = metadata.metadata().row_groups();
        let total: i64 = groups.iter().map(|g| g.num_rows()).sum();
        let cores = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(groups.len().max(1)) as i64;
        let mut parts: Vec<Vec<usize>> = vec![Vec::new()];
        let mut rows = 0;
        for (g, group) in groups.iter().enumerate() {
            let part = parts.len() as i64;
            if rows >= total * part / cores && !parts[parts.len() - 1].is_empty() {
                parts.push(Vec::new());
            }
            parts.last_mut().expect("a part").push(g);
            rows += group.num_rows();
        }
        Ok(TradeFile {
            path: path.to_path_buf(),
            metadata,
            all,
            keys,
            parts,
        })
    }
}

impl Parts for TradeFile {
    fn parts(&self) -> usize {
        self.parts.len()
    }

    fn read(
        &self,
        part: usize,
        keys_only: bool,
        each: &mut dyn FnMut(&RecordBatch) -> Result<()>,
    ) -> Result<()> {
        let failed =
            |e: &dyn std::fmt::Display| Error::Input(format!("{}: {e}", self.path.display()));
        let file = File::open(&self.path).map_err(|e| failed(&e))?;
        let mask = if keys_only { &self.keys } else { &self.all };
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.metadata.clone())
                .with_row_groups(self.parts[part].clone())
                .with_projection(mask.clone())
                .with_batch_size(65_536)
                .build()
                .map_err(|e| failed(&e))?;
        for batch in reader {
            let batch = batch.map_err(|e| failed(&e))?;
            each(&if keys_only { batch } else { conform(batch)? })?;
        }
        Ok(())
    }
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
