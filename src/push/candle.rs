//! One candle as a subscription tracks it, what changed about it, and the batches that carry
//! the changes: `candles()`'s columns and a `change` column.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::TimestampMicrosecondType;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};

use super::Result;

/// What happened to a candle since the subscriber last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// In the first message: the candle as it stands.
    Snapshot,
    /// A live (unbuilt) candle was created or updated by new trades.
    Live,
    /// A build persisted the candle (`is_final` turned true).
    Final,
    /// A persisted candle changed: late trades, or trades deleted or corrected at the source.
    Revised,
    /// The candle is gone (every trade of its window was deleted); the values are its last.
    Deleted,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Snapshot => "snapshot",
            Change::Live => "live",
            Change::Final => "final",
            Change::Revised => "revised",
            Change::Deleted => "deleted",
        }
    }

    /// The change a subscriber sees when `newer` happens before it read `self`: told
    /// against what it last saw, so a live candle finalised and then revised unseen is
    /// `final`, and one it never saw is never `revised`.
    pub fn then(self, newer: Change) -> Change {
        match (self, newer) {
            (Change::Snapshot, Change::Deleted) => Change::Deleted,
            (Change::Snapshot, _) => Change::Snapshot,
            (Change::Live | Change::Final, Change::Revised) => Change::Final,
            (_, newer) => newer,
        }
    }

    /// What turned `before` into `after`; `None` when nothing a client sees changed.
    pub fn between(before: Option<&Candle>, after: &Candle) -> Option<Change> {
        match before {
            Some(b) if b.same(after) => None,
            Some(b) if b.is_final && after.is_final => Some(Change::Revised),
            _ if after.is_final => Some(Change::Final),
            _ => Some(Change::Live),
        }
    }
}

/// A candle's values after its series and window start.
#[derive(Debug, Clone)]
pub struct Candle {
    pub window_end: i64,
    pub values: [f64; 8],
    pub trade_count: i64,
    pub first_trade: Option<i64>,
    pub last_trade: Option<i64>,
    pub is_final: bool,
    pub is_synthetic: bool,
}

/// The float columns of `candles()`, in order: a bar's float measures.
const FLOATS: [&str; 8] = crate::build::diff::MEASURES_F64;

impl Candle {
    /// Equal as a client sees it (bit for bit: a NaN equals itself).
    pub fn same(&self, other: &Candle) -> bool {
        self.window_end == other.window_end
            && self
                .values
                .iter()
                .zip(&other.values)
                .all(|(a, b)| a.to_bits() == b.to_bits())
            && self.trade_count == other.trade_count
            && self.first_trade == other.first_trade
            && self.last_trade == other.last_trade
            && self.is_final == other.is_final
            && self.is_synthetic == other.is_synthetic
    }
}

/// `(window_start, candle)` of every row of a `candles()` batch.
pub fn rows(batch: &RecordBatch) -> Result<Vec<(i64, Candle)>> {
    let ts = |name: &str| -> Result<&TimestampMicrosecondArray> {
        Ok(column(batch, name)?.as_primitive::<TimestampMicrosecondType>())
    };
    let start = ts("window_start")?;
    let end = ts("window_end")?;
    let first = ts("first_trade_ts")?;
    let last = ts("last_trade_ts")?;
    let floats = FLOATS
        .iter()
        .map(|n| Ok(column(batch, n)?.as_primitive::<Float64Type>()))
        .collect::<Result<Vec<_>>>()?;
    let count = column(batch, "trade_count")?.as_primitive::<Int64Type>();
    let is_final = column(batch, "is_final")?.as_boolean();
    let synthetic = column(batch, "is_synthetic")?.as_boolean();
    let opt = |a: &TimestampMicrosecondArray, i: usize| (!a.is_null(i)).then(|| a.value(i));
    Ok((0..batch.num_rows())
        .map(|i| {
            let candle = Candle {
                window_end: end.value(i),
                values: std::array::from_fn(|k| floats[k].value(i)),
                trade_count: count.value(i),
                first_trade: opt(first, i),
                last_trade: opt(last, i),
                is_final: is_final.value(i),
                is_synthetic: synthetic.value(i),
            };
            (start.value(i), candle)
        })
        .collect())
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        arrow::error::ArrowError::SchemaError(format!("candles have no column {name}")).into()
    })
}

/// `candles()`'s columns, then `change`.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        let mut fields: Vec<Field> = crate::candles::schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("change", DataType::Utf8, false));
        Arc::new(Schema::new(fields))
    }))
}

/// One update for a subscriber: which series, which window, its candle and what changed.
pub struct Update<'a> {
    pub series: &'a (String, String),
    pub window_start: i64,
    pub candle: &'a Candle,
    pub change: Change,
}

/// The batch carrying `updates`, in [`schema`]'s columns.
pub fn batch(updates: &[Update<'_>]) -> Result<RecordBatch> {
    let utc = |v: Vec<i64>| TimestampMicrosecondArray::from(v).with_timezone("UTC");
    let utc_opt = |v: Vec<Option<i64>>| TimestampMicrosecondArray::from(v).with_timezone("UTC");
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            updates.iter().map(|u| u.series.0.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            updates.iter().map(|u| u.series.1.as_str()),
        )),
        Arc::new(utc(updates.iter().map(|u| u.window_start).collect())),
        Arc::new(utc(updates.iter().map(|u| u.candle.window_end).collect())),
    ];
    let float = |k: usize| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(
            updates.iter().map(|u| u.candle.values[k]),
        ))
    };
    // open, high, low, close, volume, quote_volume, vwap; trade_count; buy_volume.
    columns.extend((0..7).map(float));
    columns.push(Arc::new(Int64Array::from_iter_values(
        updates.iter().map(|u| u.candle.trade_count),
    )));
    columns.push(float(7));
    columns.push(Arc::new(utc_opt(
        updates.iter().map(|u| u.candle.first_trade).collect(),
    )));
    columns.push(Arc::new(utc_opt(
        updates.iter().map(|u| u.candle.last_trade).collect(),
    )));
    columns.push(Arc::new(BooleanArray::from_iter(
        updates.iter().map(|u| Some(u.candle.is_final)),
    )));
    columns.push(Arc::new(BooleanArray::from_iter(
        updates.iter().map(|u| Some(u.candle.is_synthetic)),
    )));
    columns.push(Arc::new(StringArray::from_iter_values(
        updates.iter().map(|u| u.change.name()),
    )));
    Ok(RecordBatch::try_new(schema(), columns)?)
}
