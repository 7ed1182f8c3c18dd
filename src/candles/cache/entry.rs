//! One cache entry: the bars of one `(timeframe, exchange, symbol)` from `from` on, exactly as
//! the table holds them at one snapshot, sorted by `window_start` so that a range is a
//! zero-copy slice.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, sort_to_indices, take_record_batch};
use arrow::datatypes::TimestampMicrosecondType;

use crate::bars::columns::FxHashSet;
use crate::storage::{Result, TableKind, TimeRange};
use crate::timeframe::Timeframe;

/// Bars of one series at one snapshot.
#[derive(Debug, Clone)]
pub struct Entry {
    pub snapshot: Option<i64>,
    /// Every stored bar with `window_start >= from` is here.
    pub from: i64,
    pub rows: RecordBatch,
}

impl Entry {
    /// `rows` in any order; only those at or after `from` are kept.
    pub fn new(snapshot: Option<i64>, from: i64, rows: &[RecordBatch]) -> Result<Entry> {
        let schema = TableKind::Bars(Timeframe::M1).arrow_schema()?;
        let all = concat_batches(&schema, rows)?;
        let entry = Entry {
            snapshot,
            from,
            rows: sort_by_start(&all)?,
        };
        entry.trimmed(from)
    }

    /// What the cache weighs: the bytes of the Arrow buffers.
    pub fn bytes(&self) -> usize {
        self.rows.get_array_memory_size() + std::mem::size_of::<Entry>()
    }

    fn starts(&self) -> &[i64] {
        starts(&self.rows)
    }

    /// The bars with `window_start` in `range` (a slice of this entry, no copy).
    pub fn slice(&self, range: TimeRange) -> RecordBatch {
        let starts = self.starts();
        let lo = range
            .start
            .map_or(0, |s| starts.partition_point(|t| *t < s));
        let hi = range
            .end
            .map_or(starts.len(), |e| starts.partition_point(|t| *t < e));
        self.rows.slice(lo, hi.saturating_sub(lo))
    }

    /// Drops the bars before `from` (the hot horizon moved on).
    pub fn trimmed(self, from: i64) -> Result<Entry> {
        let from = from.max(self.from);
        let cut = self.starts().partition_point(|t| *t < from);
        Ok(Entry {
            rows: self.rows.slice(cut, self.rows.num_rows() - cut),
            from,
            snapshot: self.snapshot,
        })
    }

    /// The entry after a commit that inserted or replaced `rows` (this series' rows of it).
    pub fn upserted(&self, snapshot: Option<i64>, rows: Option<&RecordBatch>) -> Result<Entry> {
        let Some(rows) = rows else {
            return Ok(self.retagged(snapshot));
        };
        let replaced: FxHashSet<i64> = starts(rows).iter().copied().collect();
        let keep: BooleanArray = self
            .starts()
            .iter()
            .map(|t| Some(!replaced.contains(t)))
            .collect();
        self.merged(snapshot, &keep, rows)
    }

    /// The entry after a commit that replaced every row in `ranges` by `rows`.
    pub fn replaced(
        &self,
        snapshot: Option<i64>,
        ranges: &[(i64, i64)],
        rows: Option<&RecordBatch>,
    ) -> Result<Entry> {
        let keep: BooleanArray = self
            .starts()
            .iter()
            .map(|t| Some(!ranges.iter().any(|(s, e)| s <= t && t < e)))
            .collect();
        match rows {
            Some(rows) => self.merged(snapshot, &keep, rows),
            None => Ok(Entry {
                rows: filter_record_batch(&self.rows, &keep)?,
                ..self.retagged(snapshot)
            }),
        }
    }

    /// Same rows, now known to be those of `snapshot` (compaction, properties).
    pub fn retagged(&self, snapshot: Option<i64>) -> Entry {
        Entry {
            snapshot,
            ..self.clone()
        }
    }

    fn merged(
        &self,
        snapshot: Option<i64>,
        keep: &BooleanArray,
        rows: &RecordBatch,
    ) -> Result<Entry> {
        let kept = filter_record_batch(&self.rows, keep)?;
        let rows = RecordBatch::try_new(self.rows.schema(), rows.columns().to_vec())?;
        let all = concat_batches(&self.rows.schema(), [&kept, &rows])?;
        Entry {
            snapshot,
            from: self.from,
            rows: sort_by_start(&all)?,
        }
        .trimmed(self.from)
    }
}

fn starts(rows: &RecordBatch) -> &[i64] {
    rows.column(2)
        .as_primitive::<TimestampMicrosecondType>()
        .values()
}

fn sort_by_start(rows: &RecordBatch) -> Result<RecordBatch> {
    let s = starts(rows);
    if s.windows(2).all(|w| w[0] <= w[1]) {
        return Ok(rows.clone());
    }
    let order = sort_to_indices(rows.column(2), None, None)?;
    Ok(take_record_batch(rows, &order)?)
}

/// Rows of `batch` (bars or trades: exchange and symbol are its first two columns) grouped by
/// series.
pub fn by_series(batch: &RecordBatch) -> Result<HashMap<(String, String), RecordBatch>> {
    let exchange = batch.column(0).as_string::<i32>();
    let symbol = batch.column(1).as_string::<i32>();
    let mut rows: HashMap<(&str, &str), Vec<u32>> = HashMap::new();
    for i in 0..batch.num_rows() {
        rows.entry((exchange.value(i), symbol.value(i)))
            .or_default()
            .push(i as u32);
    }
    let mut out = HashMap::with_capacity(rows.len());
    for ((ex, sym), idx) in rows {
        let part = if idx.len() == batch.num_rows() {
            batch.clone()
        } else {
            take_record_batch(batch, &UInt32Array::from(idx))?
        };
        out.insert((ex.to_string(), sym.to_string()), part);
    }
    Ok(out)
}

/// Shared, immutable entries: what the cache stores.
pub type SharedEntry = Arc<Entry>;
