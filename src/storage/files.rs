//! Our own partitioned Parquet writer and reader of table data files.
//!
//! The crate's partitioned writer cannot transform `timestamptz` columns into day partitions,
//! so rows are split by partition here, sorted by the table's sort order, and written as one
//! file per partition. The `DataFile` entry (statistics, partition tuple) comes from the
//! written file's Parquet footer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{new_null_array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::array::{Array, AsArray};
use arrow::compute::{
    cast, concat_batches, lexsort_to_indices, take_record_batch, LexicographicalComparator,
    SortColumn,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMicrosecondType};
use chrono::{Datelike, TimeZone, Utc};
use futures::TryStreamExt;
use iceberg_rust::file_format::parquet::parquet_to_datafile;
use iceberg_rust::spec::manifest::DataFile;
use iceberg_rust::spec::partition::Transform;
use iceberg_rust::spec::values::{Struct, Value};
use iceberg_rust::table::Table;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{
    arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions},
    ArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask, PARQUET_FIELD_ID_META_KEY,
};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{ParquetMetaData, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::error::{Error, Result};
use super::schema::TableKind;

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Partition value (Iceberg `day` or `month` transform result) of a timestamp in microseconds.
pub fn partition_value(transform: &Transform, ts_us: i64) -> i32 {
    match transform {
        Transform::Month => {
            let dt = Utc.timestamp_micros(ts_us).single().unwrap_or_default();
            (dt.year() - 1970) * 12 + dt.month0() as i32
        }
        _ => ts_us.div_euclid(MICROS_PER_DAY) as i32,
    }
}

/// Start (inclusive) and end (exclusive) in microseconds of a partition value.
pub fn partition_range(transform: &Transform, value: i32) -> (i64, i64) {
    match transform {
        Transform::Month => {
            let month_start = |m: i32| {
                let (y, m0) = (1970 + m.div_euclid(12), m.rem_euclid(12) as u32);
                Utc.with_ymd_and_hms(y, m0 + 1, 1, 0, 0, 0)
                    .single()
                    .map(|d| d.timestamp_micros())
                    .unwrap_or_default()
            };
            (month_start(value), month_start(value + 1))
        }
        _ => (
            value as i64 * MICROS_PER_DAY,
            (value as i64 + 1) * MICROS_PER_DAY,
        ),
    }
}

/// Checks that `batches` carry exactly the table's schema and concatenates them.
pub fn conform(kind: TableKind, batches: &[RecordBatch]) -> Result<RecordBatch> {
    let schema = kind.arrow_schema()?;
    for batch in batches {
        if batch.schema().fields() != schema.fields() {
            return Err(Error::InvalidData {
                table: kind.name(),
                reason: format!(
                    "batch schema {:?} differs from the table schema {:?}",
                    batch.schema(),
                    schema
                ),
            });
        }
    }
    Ok(concat_batches(&schema, batches)?)
}

/// Row indices of `batch` grouped by partition value.
pub fn split_by_partition(kind: TableKind, batch: &RecordBatch) -> Result<BTreeMap<i32, Vec<u32>>> {
    let ts = time_column(kind, batch)?;
    let transform = kind.partition_transform();
    let mut groups: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
    for (row, value) in ts.iter().enumerate() {
        let value = value.ok_or_else(|| Error::InvalidData {
            table: kind.name(),
            reason: format!("row {row} has a NULL {}", kind.time_column()),
        })?;
        groups
            .entry(partition_value(&transform, value))
            .or_default()
            .push(row as u32);
    }
    Ok(groups)
}

pub fn time_column(kind: TableKind, batch: &RecordBatch) -> Result<&TimestampMicrosecondArray> {
    batch
        .column_by_name(kind.time_column())
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or_else(|| Error::InvalidData {
            table: kind.name(),
            reason: format!("missing microsecond column {}", kind.time_column()),
        })
}

/// Sorts rows by the table's sort order.
pub fn sort_rows(kind: TableKind, batch: &RecordBatch) -> Result<RecordBatch> {
    let columns = sort_columns(kind, batch);
    // Rows usually arrive sorted (the kernels emit key order): checking is O(n), sorting not.
    let cmp = LexicographicalComparator::try_new(&columns)?;
    if (1..batch.num_rows()).all(|i| cmp.compare(i - 1, i) != std::cmp::Ordering::Greater) {
        return Ok(batch.clone());
    }
    let indices = match by_series_and_time(kind, batch, &cmp) {
        Some(indices) => indices,
        None => lexsort_to_indices(&columns, None)?,
    };
    Ok(take_record_batch(batch, &indices)?)
}

/// The same order through arrow's general multi-column sort, which [`sort_rows`] falls back
/// on (and is measured against in `benches/sort_chunk.rs`).
pub fn lexsort_rows(kind: TableKind, batch: &RecordBatch) -> Result<RecordBatch> {
    let indices = lexsort_to_indices(&sort_columns(kind, batch), None)?;
    Ok(take_record_batch(batch, &indices)?)
}

fn sort_columns(kind: TableKind, batch: &RecordBatch) -> Vec<SortColumn> {
    kind.sort_columns()
        .iter()
        .map(|name| SortColumn {
            values: Arc::clone(batch.column_by_name(name).expect("table column")),
            options: None,
        })
        .collect()
}

/// The sort order computed on integers: a batch holds few series, so each row's
/// `(exchange, symbol)` is ranked among the batch's distinct pairs once, and rows are sorted by
/// `(rank, time)`; only rows equal on both are compared on the remaining columns (then by
/// position, so the order is deterministic). Arrow's general lexsort compares the strings
/// through dynamic comparators on every step, which was most of an ingest chunk's sort.
/// `None` for columns that are not non-null strings and microsecond timestamps.
fn by_series_and_time(
    kind: TableKind,
    batch: &RecordBatch,
    cmp: &LexicographicalComparator,
) -> Option<UInt32Array> {
    let [exchange, symbol, time, ..] = kind.sort_columns() else {
        return None;
    };
    let exchange = batch.column_by_name(exchange)?.as_string_opt::<i32>()?;
    let symbol = batch.column_by_name(symbol)?.as_string_opt::<i32>()?;
    let time = batch
        .column_by_name(time)?
        .as_primitive_opt::<TimestampMicrosecondType>()?;
    if exchange.null_count() + symbol.null_count() + time.null_count() > 0 {
        return None;
    }
    let n = batch.num_rows();
    let mut ids: HashMap<(&str, &str), u32> = HashMap::new();
    let local: Vec<u32> = (0..n)
        .map(|i| {
            let next = ids.len() as u32;
            *ids.entry((exchange.value(i), symbol.value(i)))
                .or_insert(next)
        })
        .collect();
    let mut pairs: Vec<((&str, &str), u32)> = ids.into_iter().collect();
    pairs.sort_unstable();
    let mut rank = vec![0u32; pairs.len()];
    for (r, (_, id)) in pairs.iter().enumerate() {
        rank[*id as usize] = r as u32;
    }
    let times = time.values();
    let mut order: Vec<(u32, i64, u32)> = (0..n)
        .map(|i| (rank[local[i] as usize], times[i], i as u32))
        .collect();
    order.sort_unstable_by(|a, b| {
        (a.0, a.1)
            .cmp(&(b.0, b.1))
            .then_with(|| cmp.compare(a.2 as usize, b.2 as usize))
            .then(a.2.cmp(&b.2))
    });
    Some(order.into_iter().map(|(_, _, i)| i).collect())
}

/// Writes `batches` as sorted Parquet files, one per partition, and returns their entries.
/// Nothing is visible in the table until the files are committed.
pub async fn write_data_files(
    store: &Arc<dyn ObjectStore>,
    table: &Table,
    kind: TableKind,
    batches: &[RecordBatch],
) -> Result<Vec<DataFile>> {
    let batch = conform(kind, batches)?;
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let groups = split_by_partition(kind, &batch)?;
    // An ingest chunk or a build usually falls in one partition: no copy of its rows then.
    let parts = if groups.len() == 1 {
        groups
            .into_keys()
            .map(|value| (value, batch.clone()))
            .collect()
    } else {
        groups
            .into_iter()
            .map(|(value, rows)| Ok((value, take_record_batch(&batch, &UInt32Array::from(rows))?)))
            .collect::<Result<Vec<(i32, RecordBatch)>>>()?
    };
    // Sorting and Parquet encoding are CPU-bound: spread partitions over the cores.
    let encoded = tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = parts.len().div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .chunks(chunk)
                .map(|chunk| {
                    scope.spawn(move || {
                        chunk
                            .iter()
                            .map(|(value, rows)| Ok((*value, encode(kind, rows)?)))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("encoder thread"))
                .collect::<Result<Vec<Vec<_>>>>()
        })
    })
    .await
    .map_err(|e| Error::Catalog(format!("parquet encoder panicked: {e}")))??;
    let mut files = Vec::new();
    for (value, (bytes, metadata)) in encoded.into_iter().flatten() {
        files.push(store_file(store, table, kind, value, bytes, &metadata).await?);
    }
    Ok(files)
}

/// Sorts rows by the table's order and encodes them as one Parquet file.
pub(crate) fn encode(kind: TableKind, rows: &RecordBatch) -> Result<(Vec<u8>, ParquetMetaData)> {
    let sorted = sort_rows(kind, rows)?;
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, sorted.schema(), Some(writer_props(kind)?))?;
    writer.write(&sorted)?;
    let metadata = writer.close()?;
    Ok((bytes, metadata))
}

/// Puts an encoded file into the table's partition directory and describes it.
async fn store_file(
    store: &Arc<dyn ObjectStore>,
    table: &Table,
    kind: TableKind,
    partition: i32,
    bytes: Vec<u8>,
    metadata: &ParquetMetaData,
) -> Result<DataFile> {
    let location = format!(
        "{}/data/{}={}/{}.parquet",
        table.metadata().location,
        kind.partition_field_name(),
        partition,
        uuid::Uuid::new_v4()
    );
    let size = bytes.len() as u64;
    store
        .put(&super::warehouse::key(&location), bytes.into())
        .await?;
    let metadata_ref = table.metadata();
    let partition_fields = metadata_ref.current_partition_fields(None)?;
    let schema = table.current_schema(None)?;
    let file = parquet_to_datafile(&location, size, metadata, schema, &partition_fields, None)?;
    with_partition(file, kind, partition)
}

/// Writes one partition's rows (any order) as one sorted file.
pub async fn write_partition_file(
    store: &Arc<dyn ObjectStore>,
    table: &Table,
    kind: TableKind,
    partition: i32,
    rows: &RecordBatch,
) -> Result<DataFile> {
    let rows = rows.clone();
    let (bytes, metadata) = tokio::task::spawn_blocking(move || encode(kind, &rows))
        .await
        .map_err(|e| Error::Catalog(format!("parquet encoder panicked: {e}")))??;
    store_file(store, table, kind, partition, bytes, &metadata).await
}

/// Replaces the partition tuple the crate derived from the file's statistics: its `month`
/// transform counts months from 1 (January 2024 becomes 649, the spec says 648), which would
/// make other engines prune the wrong partitions.
fn with_partition(file: DataFile, kind: TableKind, partition: i32) -> Result<DataFile> {
    let tuple: Struct = [(kind.partition_field_name(), Some(Value::Int(partition)))]
        .into_iter()
        .collect();
    let mut builder = DataFile::builder();
    builder
        .with_content(file.content().clone())
        .with_file_path(file.file_path().clone())
        .with_file_format(file.file_format().clone())
        .with_partition(tuple)
        .with_record_count(*file.record_count())
        .with_file_size_in_bytes(*file.file_size_in_bytes())
        .with_column_sizes(file.column_sizes().clone())
        .with_value_counts(file.value_counts().clone())
        .with_null_value_counts(file.null_value_counts().clone())
        .with_nan_value_counts(file.nan_value_counts().clone())
        .with_lower_bounds(file.lower_bounds().clone())
        .with_upper_bounds(file.upper_bounds().clone());
    Ok(builder.build()?)
}

/// Rows per data page at most.
const PAGE_ROWS: usize = 4096;

fn writer_props(kind: TableKind) -> Result<WriterProperties> {
    let schema = kind.arrow_schema()?;
    let sorting = kind
        .sort_columns()
        .iter()
        .map(|name| SortingColumn {
            column_idx: schema.index_of(name).expect("table column") as i32,
            descending: false,
            nulls_first: true,
        })
        .collect();
    // Bar tables are small and read a few pages at a time, where ZSTD's cost is setting up:
    // parquet creates a compression and a decompression context per column chunk read, which
    // took more time than decoding a cold series' pages. Snappy has no such setup, and every
    // engine reads it. Trades are large and read whole: ZSTD's ratio pays there.
    let compression = match kind {
        TableKind::Trades => Compression::ZSTD(ZstdLevel::default()),
        TableKind::Bars(_) => Compression::SNAPPY,
    };
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_statistics_enabled(EnabledStatistics::Page)
        // Pages of a few thousand rows: a series (1,440 1m bars a day) then spans one or two
        // pages of a file holding hundreds, and a read of it skips the rest (`series`).
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_sorting_columns(Some(sorting))
        .set_dictionary_enabled(false);
    let props = kind
        .dictionary_columns()
        .iter()
        .fold(props, |props, column| {
            props.set_column_dictionary_enabled(ColumnPath::from(*column), true)
        });
    Ok(props.build())
}

/// Reads a whole data file (named as its manifest names it) back as batches of the table's
/// schema.
///
/// Columns are matched by Iceberg field id, so a file written by another engine before a column
/// was renamed or moved still lands in the right column; a column the file lacks (added later)
/// reads as NULL when it is optional and is refused when it is required. Files without field
/// ids (some writers omit them) are matched by name.
pub async fn read_data_file(
    store: &Arc<dyn ObjectStore>,
    kind: TableKind,
    path: &str,
) -> Result<Vec<RecordBatch>> {
    read_data_file_as(store, &kind.name(), &kind.arrow_schema()?, path).await
}

/// As [`read_data_file`], for a table of any schema (`target`: its current schema as Arrow,
/// with field ids), named `table` in errors.
pub async fn read_data_file_as(
    store: &Arc<dyn ObjectStore>,
    table: &str,
    target: &SchemaRef,
    path: &str,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    read_data_file_each(store, table, target, path, None, None, |b| {
        out.push(b);
        Ok::<_, Error>(())
    })
    .await?;
    Ok(out)
}

/// As [`read_data_file_as`], handing each batch to `each` as it is decoded, so a caller that
/// keeps part of a file never holds all of it. `size` (a manifest's `file_size_in_bytes`)
/// lets the footer come in one bounded request.
pub async fn read_data_file_each<E: From<Error>>(
    store: &Arc<dyn ObjectStore>,
    table: &str,
    target: &SchemaRef,
    path: &str,
    size: Option<u64>,
    batch_rows: Option<usize>,
    mut each: impl FnMut(RecordBatch) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut reader = ParquetObjectReader::new(Arc::clone(store), super::warehouse::key(path))
        .with_footer_size_hint(FOOTER_HINT);
    if let Some(size) = size.filter(|s| *s > 0) {
        reader = reader.with_file_size(size);
    }
    let metadata = ArrowReaderMetadata::load_async(&mut reader, Default::default())
        .await
        .map_err(Error::from)?;
    // Text is decoded in the form the target takes (see `text_hint`).
    let metadata = match text_hint(metadata.schema(), target) {
        Some(hinted) => ArrowReaderMetadata::try_new(
            Arc::clone(metadata.metadata()),
            ArrowReaderOptions::new().with_schema(hinted),
        )
        .map_err(Error::from)?,
        None => metadata,
    };
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata);
    if let Some(rows) = batch_rows {
        builder = builder.with_batch_size(rows);
    }
    // Only the target's columns are decoded: a wide foreign table costs what is mapped.
    let mask = projection(builder.schema(), target)
        .map(|roots| ProjectionMask::roots(builder.parquet_schema(), roots));
    let builder = match mask {
        Some(mask) => builder.with_projection(mask),
        None => builder,
    };
    let mut stream = builder.build().map_err(Error::from)?;
    while let Some(batch) = stream.try_next().await.map_err(Error::from)? {
        each(conform_columns(table, target, path, &batch)?)?;
        // Decoding a fetched row group never waits, so without a yield one task decodes it
        // whole on its worker while the I/O beside it (a build's commits, the next fetches,
        // the connections' own tasks) waits behind: it stretched a first attach's commits
        // five-fold. A yield lets the worker poll the driver between batches.
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Bytes fetched from a file's end for its footer: one request instead of two (its length,
/// then its metadata) for the footers of our files and of usual foreign ones.
const FOOTER_HINT: usize = 64 << 10;

/// The file's schema with its text columns asked for in the form `target` takes them: as
/// dictionaries where it wants those, straight from the file's dictionary pages instead of a
/// string per row; as `Utf8` where a writer's schema says `LargeUtf8` (pyiceberg's), instead
/// of decoding wide offsets and copying every string into narrow ones afterwards (about 1 % of a
/// first attach's CPU, issue 24). `None` when nothing changes.
fn text_hint(file: &SchemaRef, target: &SchemaRef) -> Option<SchemaRef> {
    let wanted = |f: &arrow::datatypes::Field| -> Option<&DataType> {
        let id = f.metadata().get(PARQUET_FIELD_ID_META_KEY);
        let t = target.fields().iter().find(|t| {
            match (id, t.metadata().get(PARQUET_FIELD_ID_META_KEY)) {
                (Some(a), Some(b)) => a == b,
                _ => t.name() == f.name(),
            }
        })?;
        Some(t.data_type())
    };
    let mut any = false;
    let fields: Vec<Field> = file
        .fields()
        .iter()
        .map(|f| {
            let hinted = match (f.data_type(), wanted(f)) {
                (DataType::Utf8 | DataType::LargeUtf8, Some(t @ DataType::Dictionary(_, v)))
                    if matches!(v.as_ref(), DataType::Utf8 | DataType::LargeUtf8) =>
                {
                    Some(t.clone())
                }
                (DataType::LargeUtf8, Some(DataType::Utf8)) => Some(DataType::Utf8),
                _ => None,
            };
            match hinted {
                Some(hinted) => {
                    any = true;
                    f.as_ref().clone().with_data_type(hinted)
                }
                None => f.as_ref().clone(),
            }
        })
        .collect();
    any.then(|| Arc::new(Schema::new_with_metadata(fields, file.metadata().clone())))
}

/// The file's top-level columns that `target` takes (by field id, or by name in files without
/// ids); `None` when every column is taken.
fn projection(file: &SchemaRef, target: &SchemaRef) -> Option<Vec<usize>> {
    let field_id = |f: &arrow::datatypes::Field| -> Option<i32> {
        f.metadata().get(PARQUET_FIELD_ID_META_KEY)?.parse().ok()
    };
    let ids: std::collections::HashSet<i32> =
        target.fields().iter().filter_map(|f| field_id(f)).collect();
    let by_id = file.fields().iter().any(|f| field_id(f).is_some());
    let roots: Vec<usize> = file
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| match by_id {
            true => field_id(f).is_some_and(|id| ids.contains(&id)),
            false => target.field_with_name(f.name()).is_ok(),
        })
        .map(|(i, _)| i)
        .collect();
    (roots.len() < file.fields().len()).then_some(roots)
}

/// The `(file_path, pos)` rows of a position delete file.
pub async fn read_position_deletes(
    store: &Arc<dyn ObjectStore>,
    table: &str,
    path: &str,
) -> Result<Vec<(String, u64)>> {
    let reader = ParquetObjectReader::new(Arc::clone(store), super::warehouse::key(path));
    let stream = ParquetRecordBatchStreamBuilder::new(reader)
        .await?
        .build()?;
    let batches: Vec<RecordBatch> = stream.try_collect().await?;
    let mut out = Vec::new();
    for batch in &batches {
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| Error::Unreadable {
                table: table.to_string(),
                file: path.to_string(),
                reason: format!("a position delete file without a '{name}' column"),
            })
        };
        let files = arrow::compute::cast(column("file_path")?, &arrow::datatypes::DataType::Utf8)?;
        let positions = arrow::compute::cast(column("pos")?, &arrow::datatypes::DataType::Int64)?;
        let files = files.as_string::<i32>();
        let positions = positions.as_primitive::<arrow::datatypes::Int64Type>();
        for row in 0..batch.num_rows() {
            if files.is_null(row) || positions.is_null(row) || positions.value(row) < 0 {
                return Err(Error::Unreadable {
                    table: table.to_string(),
                    file: path.to_string(),
                    reason: format!("row {row} has no file_path or a negative pos"),
                });
            }
            out.push((files.value(row).to_string(), positions.value(row) as u64));
        }
    }
    Ok(out)
}

/// Rows of `batch`, whose first row is row `offset` of its file, without those at the
/// `deleted` positions (sorted).
pub fn without_deleted(batch: RecordBatch, offset: usize, deleted: &[u64]) -> Result<RecordBatch> {
    let start = deleted.partition_point(|&p| p < offset as u64);
    let end = deleted.partition_point(|&p| p < (offset + batch.num_rows()) as u64);
    if start == end {
        return Ok(batch);
    }
    let mut keep = vec![true; batch.num_rows()];
    for &p in &deleted[start..end] {
        keep[p as usize - offset] = false;
    }
    let keep = arrow::array::BooleanArray::from(keep);
    Ok(arrow::compute::filter_record_batch(&batch, &keep)?)
}

/// The columns of `batch` (one file's rows) rearranged into the table's schema.
pub(crate) fn conform_columns(
    table: &str,
    target: &SchemaRef,
    path: &str,
    batch: &RecordBatch,
) -> Result<RecordBatch> {
    let source = batch.schema();
    let field_id = |f: &arrow::datatypes::Field| -> Option<i32> {
        f.metadata().get(PARQUET_FIELD_ID_META_KEY)?.parse().ok()
    };
    let by_id: HashMap<i32, usize> = source
        .fields()
        .iter()
        .enumerate()
        .filter_map(|(i, f)| Some((field_id(f)?, i)))
        .collect();
    let mut columns = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let found = if by_id.is_empty() {
            source.index_of(field.name()).ok()
        } else {
            field_id(field).and_then(|id| by_id.get(&id).copied())
        };
        let column = match found {
            Some(i) if batch.column(i).data_type() == field.data_type() => {
                Arc::clone(batch.column(i))
            }
            Some(i) => {
                cast(batch.column(i), field.data_type()).map_err(|e| Error::Unsupported {
                    table: table.to_string(),
                    file: path.to_string(),
                    feature: format!(
                        "column {} as {} (the table has {}): {e}",
                        field.name(),
                        batch.column(i).data_type(),
                        field.data_type()
                    ),
                })?
            }
            None if field.is_nullable() => new_null_array(field.data_type(), batch.num_rows()),
            None => {
                return Err(Error::Unreadable {
                    table: table.to_string(),
                    file: path.to_string(),
                    reason: format!("required column {} is missing", field.name()),
                })
            }
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(Arc::clone(target), columns)?)
}

/// Deletes files that were written but never committed (best effort: the orphan sweep
/// catches whatever this misses).
pub async fn discard(store: &Arc<dyn ObjectStore>, files: &[DataFile]) {
    for file in files {
        let path = super::warehouse::key(file.file_path());
        if let Err(e) = store.delete(&path).await {
            tracing::warn!(file = %file.file_path(), error = %e, "could not delete uncommitted file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_partitions_round_trip() {
        let ts = Utc
            .with_ymd_and_hms(2024, 2, 29, 23, 59, 59)
            .unwrap()
            .timestamp_micros();
        let value = partition_value(&Transform::Month, ts);
        assert_eq!(value, (2024 - 1970) * 12 + 1);
        let (start, end) = partition_range(&Transform::Month, value);
        assert!(start <= ts && ts < end);
        assert_eq!(
            end,
            Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0)
                .unwrap()
                .timestamp_micros()
        );
    }

    #[test]
    fn bar_files_are_snappy_with_dictionaries_only_on_the_series_names() {
        use parquet::basic::Encoding;
        for kind in [
            TableKind::Bars(crate::timeframe::Timeframe::M1),
            TableKind::Trades,
        ] {
            let schema = kind.arrow_schema().unwrap();
            let values = arrow::array::Int64Array::from_iter_values(0..1000);
            let columns = schema
                .fields()
                .iter()
                .map(|f| arrow::compute::cast(&values, f.data_type()).unwrap())
                .collect();
            let rows = RecordBatch::try_new(schema.clone(), columns).unwrap();
            let (_, metadata) = encode(kind, &rows).unwrap();
            for column in metadata.row_group(0).columns() {
                let name = column.column_path().string();
                let dictionary = column.encodings().any(|e| e == Encoding::RLE_DICTIONARY);
                assert_eq!(
                    dictionary,
                    kind.dictionary_columns().contains(&name.as_str()),
                    "{kind:?} {name}"
                );
                let snappy = column.compression() == Compression::SNAPPY;
                assert_eq!(snappy, kind != TableKind::Trades, "{kind:?} {name}");
            }
        }
    }

    #[test]
    fn sorting_by_series_and_time_equals_arrows_lexsort() {
        use arrow::array::{Float64Array, StringArray};
        let kind = TableKind::Trades;
        let n = 5_000u64;
        // Interleaved series (as a feed delivers them), times that collide, ids that break
        // the ties, one exchange name that is a prefix of another.
        let mix = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7;
        let exchanges = ["kraken", "krak", "binance"];
        let schema = kind.arrow_schema().unwrap();
        let columns: Vec<arrow::array::ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> arrow::array::ArrayRef {
                match f.name().as_str() {
                    "exchange" => Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| exchanges[(mix(i) % 3) as usize]),
                    )),
                    "symbol" => Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| format!("S{}", mix(i + 7) % 5)),
                    )),
                    "ts" => Arc::new(
                        TimestampMicrosecondArray::from_iter_values(
                            (0..n).map(|i| (mix(i + 11) % 50) as i64),
                        )
                        .with_timezone("UTC"),
                    ),
                    "trade_id" => Arc::new(StringArray::from_iter_values(
                        (0..n).map(|i| format!("{}", mix(i + 13) % 100_000)),
                    )),
                    _ => cast(
                        &Float64Array::from_iter_values((0..n).map(|i| i as f64)),
                        f.data_type(),
                    )
                    .unwrap(),
                }
            })
            .collect();
        let rows = RecordBatch::try_new(schema, columns).unwrap();
        let sorted = sort_rows(kind, &rows).unwrap();
        let want = lexsort_rows(kind, &rows).unwrap();
        for name in kind.sort_columns() {
            assert_eq!(
                sorted.column_by_name(name).unwrap(),
                want.column_by_name(name).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn day_partitions_floor_negative_times() {
        assert_eq!(partition_value(&Transform::Day, -1), -1);
        assert_eq!(partition_range(&Transform::Day, -1), (-MICROS_PER_DAY, 0));
    }
}
