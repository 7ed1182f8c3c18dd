//! A trades table the server does not own (`[source]`): another pipeline (Spark, pyiceberg)
//! writes it, with its own column names and types, and the server builds bars from it in
//! place. This module maps its rows onto ours.
//!
//! Accepted: any column names; `timestamp` with or without zone (naive is UTC), any unit;
//! decimal, float or integer prices and quantities; integer or string trade ids; side as text
//! in any case (`buy`/`sell`, `b`/`s`) or as a boolean `is_buyer_maker` (the buyer was the
//! maker, so the taker sold); a constant exchange for tables that have none. Rows the mapping
//! cannot read (a NULL key, a non-finite or non-positive price or quantity, an unknown side)
//! are left out and counted, because the server cannot refuse another engine's commit; with
//! `strict` they fail the build instead.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Int32Array, RecordBatch, StringArray,
};
use arrow::buffer::BooleanBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

use super::error::{Error, Result};
use super::normalize::{normalize_skipping, Checked};
use crate::storage::files::{read_data_file_each, without_deleted};
use crate::storage::read::read_files_in;
pub use crate::storage::source::{ColumnMap, SourceConfig};
use crate::storage::warehouse::bucket;
use crate::storage::{Listing, LiveFile, Storage, TableKind, TimeRange};
use futures::stream::{self, StreamExt, TryStreamExt};
use iceberg_rust::table::Table;

/// Maps one batch of source rows (columns by the source's names) onto `market.trades`
/// rows stamped `read_at`; bad rows are left out and reported (refused when `strict`).
pub fn map_batch(
    source: &SourceConfig,
    batch: &RecordBatch,
    row_offset: usize,
    read_at: i64,
    keep_dictionaries: bool,
) -> Result<Checked> {
    let c = &source.columns;
    let n = batch.num_rows();
    let column = |name: &str| -> Result<ArrayRef> {
        batch.column_by_name(name).cloned().ok_or_else(|| {
            Error::Schema(format!(
                "source table {} has no column '{name}'",
                source.table
            ))
        })
    };
    let exchange: ArrayRef = match &source.exchange {
        Some(constant) => Arc::new(StringArray::from(vec![constant.as_str(); n])),
        None => column(&c.exchange)?,
    };
    let mut fields = vec![
        ("exchange", exchange),
        ("symbol", column(&c.symbol)?),
        ("trade_id", column(&c.trade_id)?),
        ("ts", column(&c.ts)?),
        ("price", column(&c.price)?),
        ("quantity", column(&c.quantity)?),
    ];
    if !c.side.is_empty() {
        fields.push(("side", side(&column(&c.side)?)?));
    }
    let schema = Schema::new(
        fields
            .iter()
            .map(|(name, a)| Field::new(*name, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    );
    let input = RecordBatch::try_new(
        Arc::new(schema),
        fields.into_iter().map(|(_, a)| a).collect(),
    )?;
    let checked = normalize_skipping(&input, row_offset, read_at, keep_dictionaries)?;
    if source.strict && checked.bad_count > 0 {
        return Err(Error::BadRows {
            count: checked.bad_count,
            first: checked.first_bad,
        });
    }
    Ok(checked)
}

/// Rows of the source that the mapping left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Skipped {
    pub count: usize,
    /// The first few, as "file: row N: reason".
    pub first: Vec<String>,
}

/// How many skipped rows are named.
const NAMED_SKIPS: usize = 5;

impl Skipped {
    fn add(&mut self, path: &str, checked: &Checked) {
        self.count += checked.bad_count;
        for bad in &checked.first_bad {
            if self.first.len() < NAMED_SKIPS {
                self.first
                    .push(format!("{path}: row {}: {}", bad.row, bad.reason));
            }
        }
    }
}

/// Trades of `files` (live files of the trades table: ours, or the `[source]`) whose time lies
/// in `range`, as rows of `market.trades`. Source rows the mapping cannot read are left out and
/// returned as [`Skipped`] (a `strict` source fails instead).
pub async fn read_trades(
    storage: &Storage,
    files: &[&LiveFile],
    range: TimeRange,
    read_at: i64,
) -> Result<(Vec<RecordBatch>, Skipped)> {
    read_trades_in(storage, files, &[range], read_at, false).await
}

/// As [`read_trades`], keeping the trades in any of `ranges`. Files are read and mapped on
/// several cores at once, each cut to the ranges as it is read, decoding only the mapped
/// columns. With `for_kernel`, a source's `exchange`, `symbol` and `side` come as
/// dictionaries, read so from Parquet: the bar kernel takes them, the table's schema does not.
pub async fn read_trades_in(
    storage: &Storage,
    files: &[&LiveFile],
    ranges: &[TimeRange],
    read_at: i64,
    for_kernel: bool,
) -> Result<(Vec<RecordBatch>, Skipped)> {
    let Some(source) = storage.source() else {
        let rows = read_files_in(storage, TableKind::Trades, files, ranges).await?;
        return Ok((rows, Skipped::default()));
    };
    let table = storage.table(TableKind::Trades).await?;
    let name = storage.identifier(TableKind::Trades).to_string();
    let fields: Fields = table
        .metadata()
        .current_schema(None)
        .map_err(crate::storage::Error::from)?
        .fields()
        .try_into()
        .map_err(crate::storage::Error::from)?;
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    // Source rows go through mapping and checks batch by batch: larger batches make that
    // per-batch work small beside the per-row work (the reader's default is 1,024 rows).
    let batch_rows = for_kernel.then_some(8192);
    let mapped = mapped_columns(source, &schema);
    let mapped: SchemaRef = Arc::new(match for_kernel {
        true => keys_as_dictionaries(source, mapped),
        false => mapped,
    });
    // The source may live in another bucket than our warehouse: the table's own store reaches
    // the bucket of its metadata, with the same credentials.
    let store = table.object_store();
    let location = table.metadata().location.clone();
    for file in files {
        if bucket(file.path()) != bucket(&location) {
            return Err(crate::storage::Error::Unsupported {
                table: name,
                file: file.path().to_string(),
                feature: format!("a data file in another bucket than the table ({location})"),
            }
            .into());
        }
    }
    let ranges: Arc<[TimeRange]> = ranges.into();
    let source = Arc::new(source.clone());
    // Equality deletes compare columns the mapping may not name: such files are read whole.
    let inputs: Vec<(LiveFile, SchemaRef)> = files
        .iter()
        .map(|f| {
            let target = match f.equality.is_empty() {
                true => Arc::clone(&mapped),
                false => Arc::clone(&schema),
            };
            ((*f).clone(), target)
        })
        .collect();
    let task_name = name.clone();
    let read = move |(file, target): (LiveFile, SchemaRef)| {
        let (store, name, source, ranges) = (
            Arc::clone(&store),
            task_name.clone(),
            Arc::clone(&source),
            Arc::clone(&ranges),
        );
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut skipped = Skipped::default();
            let mut offset = 0;
            let size = u64::try_from(file.size()).ok();
            // Every file of a chunked build but those at a chunk's edges (see `read_files_in`).
            let whole = file.inside_one_of(&ranges);
            read_data_file_each(
                &store,
                &name,
                &target,
                file.path(),
                size,
                batch_rows,
                |batch| {
                    let rows_in_file = batch.num_rows();
                    let batch = match &file.deleted {
                        Some(deleted) => without_deleted(batch, offset, deleted)?,
                        None => batch,
                    };
                    let batch = crate::storage::equality::without_equal(batch, &file.equality)?;
                    let checked = map_batch(&source, &batch, offset, read_at, for_kernel)
                        .map_err(|e| e.in_file(std::path::Path::new(file.path())))?;
                    offset += rows_in_file;
                    skipped.add(file.path(), &checked);
                    let rows = match whole {
                        true => checked.rows,
                        false => in_ranges(checked.rows, &ranges)?,
                    };
                    if rows.num_rows() > 0 {
                        out.push(rows);
                    }
                    Ok::<_, Error>(())
                },
            )
            .await?;
            Ok::<_, Error>((out, skipped))
        })
    };
    let per_file: Vec<(Vec<RecordBatch>, Skipped)> = stream::iter(inputs)
        .map(read)
        .buffered(crate::storage::read::READ_CONCURRENCY)
        .map(|joined| {
            joined.map_err(|e| Error::Schema(format!("a source file read panicked: {e}")))?
        })
        .try_collect()
        .await?;
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for (rows, s) in per_file {
        out.extend(rows);
        skipped.count += s.count;
        for first in s.first {
            if skipped.first.len() < NAMED_SKIPS {
                skipped.first.push(first);
            }
        }
    }
    if skipped.count > 0 {
        tracing::warn!(source = %name, skipped = skipped.count, first = ?skipped.first, "source rows the mapping cannot read were skipped");
    }
    Ok((out, skipped))
}

/// The source's columns the mapping reads (`schema` cut to them, field ids kept).
fn mapped_columns(source: &SourceConfig, schema: &SchemaRef) -> Schema {
    let c = &source.columns;
    let mut names = vec![&c.symbol, &c.trade_id, &c.ts, &c.price, &c.quantity];
    if source.exchange.is_none() {
        names.push(&c.exchange);
    }
    if !c.side.is_empty() {
        names.push(&c.side);
    }
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| names.iter().any(|n| *n == f.name()))
        .cloned()
        .collect();
    Schema::new(fields)
}

/// `mapped` with the series key columns (exchange, symbol) asked for as dictionaries: Parquet
/// stores them so, and the kernel finds a row's series from its dictionary keys instead of
/// hashing its strings.
fn keys_as_dictionaries(source: &SourceConfig, mapped: Schema) -> Schema {
    let c = &source.columns;
    let fields: Vec<Field> = mapped
        .fields()
        .iter()
        .map(|f| {
            let key =
                *f.name() == c.symbol || (source.exchange.is_none() && *f.name() == c.exchange);
            match f.data_type() {
                DataType::Utf8 if key => f.as_ref().clone().with_data_type(DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(DataType::Utf8),
                )),
                _ => f.as_ref().clone(),
            }
        })
        .collect();
    Schema::new_with_metadata(fields, mapped.metadata().clone())
}

/// Trades of the current snapshot of the trades table (ours or the source) in `range`.
pub async fn read_trades_range(
    storage: &Storage,
    range: TimeRange,
    read_at: i64,
) -> Result<(Vec<RecordBatch>, Skipped)> {
    let table = storage.table(TableKind::Trades).await?;
    read_trades_at(storage, &table, None, range, read_at).await
}

/// Trades of snapshot `snapshot` (current when `None`) of `table`, the trades table, in `range`.
pub async fn read_trades_at(
    storage: &Storage,
    table: &Table,
    snapshot: Option<i64>,
    range: TimeRange,
    read_at: i64,
) -> Result<(Vec<RecordBatch>, Skipped)> {
    let layout = storage.layout(TableKind::Trades, table)?;
    let listing = Listing::read_laid_out(table, TableKind::Trades, layout, snapshot, range).await?;
    let files: Vec<&LiveFile> = listing.files.iter().collect();
    read_trades(storage, &files, range, read_at).await
}

fn in_ranges(rows: RecordBatch, ranges: &[TimeRange]) -> Result<RecordBatch> {
    let ts = rows
        .column(3)
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    Ok(crate::storage::read::keep_in(&rows, ts, ranges)?)
}

/// A side column as `buy` / `sell` / NULL text; unknown text is kept, for the checks to name.
fn side(array: &ArrayRef) -> Result<ArrayRef> {
    if array.data_type() == &DataType::Boolean {
        // is_buyer_maker: the resting order was the buy, so the aggressor sold.
        // A dictionary of the two sides: no string per row.
        let maker = array.as_boolean();
        // From the bits, not row by row through options (2 % of a first attach's CPU);
        // a null row's key is in range and masked.
        let keys = Int32Array::new(bits_as_keys(maker.values()).into(), maker.nulls().cloned());
        let sides =
            DictionaryArray::try_new(keys, Arc::new(StringArray::from(vec!["buy", "sell"])))?;
        return Ok(Arc::new(sides));
    }
    let text = cast(array, &DataType::Utf8)?;
    let sides: StringArray = text
        .as_string::<i32>()
        .iter()
        .map(|v| {
            v.map(|v| match v.trim().to_ascii_lowercase().as_str() {
                "b" | "buy" => "buy".to_string(),
                "s" | "sell" => "sell".to_string(),
                _ => v.to_string(),
            })
        })
        .collect();
    Ok(Arc::new(sides))
}

/// Each bit as 0 or 1, 64 at a time (bit by bit it was 1.3 % of a first attach's CPU).
fn bits_as_keys(bits: &BooleanBuffer) -> Vec<i32> {
    let chunks = bits.inner().bit_chunks(bits.offset(), bits.len());
    let mut keys = Vec::with_capacity(bits.len());
    for word in chunks.iter() {
        keys.extend((0..64).map(|i| ((word >> i) & 1) as i32));
    }
    let rest = chunks.remainder_bits();
    keys.extend((0..chunks.remainder_len()).map(|i| ((rest >> i) & 1) as i32));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        BooleanArray, Decimal128Array, Float64Array, Int64Array, TimestampNanosecondArray,
    };

    fn source() -> SourceConfig {
        SourceConfig {
            namespace: None,
            table: "gold_crypto_trades".into(),
            exchange: Some("binance".into()),
            strict: false,
            columns: ColumnMap {
                ts: "trade_time".into(),
                price: "px".into(),
                quantity: "qty".into(),
                trade_id: "id".into(),
                exchange: String::new(),
                symbol: "pair".into(),
                side: "is_buyer_maker".into(),
            },
        }
    }

    fn batch() -> RecordBatch {
        let px = Decimal128Array::from(vec![Some(10_050_000_000), Some(0), None, Some(1)])
            .with_precision_and_scale(18, 8)
            .unwrap();
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "trade_time",
                Arc::new(TimestampNanosecondArray::from(vec![
                    1_700_000_000_000_000_001,
                    1_700_000_001_000_000_000,
                    1_700_000_002_000_000_000,
                    1_700_000_003_000_000_000,
                ])),
            ),
            ("px", Arc::new(px)),
            (
                "qty",
                Arc::new(Float64Array::from(vec![0.5, 1.0, 1.0, 2.0])),
            ),
            ("id", Arc::new(Int64Array::from(vec![1, 2, 3, 4]))),
            ("pair", Arc::new(StringArray::from(vec!["BTCUSDT"; 4]))),
            (
                "is_buyer_maker",
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    Some(false),
                    None,
                    None,
                ])),
            ),
        ];
        let schema = Schema::new(
            columns
                .iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(Arc::new(schema), columns.into_iter().map(|c| c.1).collect()).unwrap()
    }

    #[test]
    fn other_names_and_types_map_onto_ours_and_bad_rows_are_counted() {
        let checked = map_batch(&source(), &batch(), 100, 7, false).unwrap();
        // Row 1 has price 0, row 2 no price: skipped and named.
        assert_eq!(checked.bad_count, 2);
        let rows: Vec<usize> = checked.first_bad.iter().map(|b| b.row).collect();
        assert_eq!(rows, [101, 102]);
        let out = checked.rows;
        assert_eq!(out.num_rows(), 2);
        assert_eq!(out.column(0).as_string::<i32>().value(0), "binance");
        assert_eq!(out.column(2).as_string::<i32>().value(1), "4");
        let ts = out
            .column(3)
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_700_000_000_000_000);
        let price = out
            .column(4)
            .as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(price.value(0), 100.5);
        let side = out.column(6).as_string::<i32>();
        assert_eq!(side.value(0), "sell", "a buyer-maker trade was a sell");
        assert!(side.is_null(1));

        let strict = SourceConfig {
            strict: true,
            ..source()
        };
        assert!(matches!(
            map_batch(&strict, &batch(), 0, 7, false),
            Err(Error::BadRows { count: 2, .. })
        ));
    }

    #[test]
    fn text_sides_in_any_case_and_letters() {
        let sides: ArrayRef = Arc::new(StringArray::from(vec![
            Some("BUY"),
            Some(" s "),
            Some("b"),
            Some("Sell"),
            None,
        ]));
        let out = side(&sides).unwrap();
        let out = out.as_string::<i32>();
        let got: Vec<Option<&str>> = out.iter().collect();
        assert_eq!(
            got,
            [Some("buy"), Some("sell"), Some("buy"), Some("sell"), None]
        );
    }

    #[test]
    fn bits_become_keys_at_any_offset_and_length() {
        let bools: Vec<bool> = (0..200).map(|i| i % 3 == 0 || i % 7 == 0).collect();
        let all = BooleanBuffer::from(bools.clone());
        for (offset, len) in [(0, 200), (0, 64), (5, 64), (13, 150), (70, 0), (63, 1)] {
            let keys = bits_as_keys(&all.slice(offset, len));
            let expected: Vec<i32> = bools[offset..offset + len]
                .iter()
                .map(|b| *b as i32)
                .collect();
            assert_eq!(keys, expected, "offset {offset}, length {len}");
        }
    }
}
