//! Comparing freshly computed bars with the stored ones: which are new, which changed (and get
//! `revision + 1`), which are unchanged and must not be rewritten, so that rebuilding over the
//! same trades writes nothing.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, RecordBatch, TimestampMicrosecondArray};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};

use crate::bars::columns::FxHashMap;
use crate::bars::Result;
use crate::storage::TableKind;
use crate::timeframe::Timeframe;

/// Columns whose values define a bar (everything but revision and built_at).
pub(crate) const MEASURES_F64: [&str; 8] = [
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "vwap",
    "buy_volume",
];
const MEASURES_TS: [&str; 3] = ["window_end", "first_trade_ts", "last_trade_ts"];

/// Outcome of a diff.
#[derive(Debug)]
pub struct Diff {
    /// Bars to write, with revision and built_at set.
    pub rows: RecordBatch,
    pub new: usize,
    pub revised: usize,
    pub unchanged: usize,
    /// Revised bars of windows that had been persisted before this build (late data).
    pub late_revisions: usize,
}

impl Diff {
    pub fn changed(&self) -> usize {
        self.new + self.revised
    }
}

type Key<'a> = (&'a str, &'a str, i64);

fn key_of(b: &RecordBatch, row: usize) -> Key<'_> {
    (
        b.column(0).as_string::<i32>().value(row),
        b.column(1).as_string::<i32>().value(row),
        b.column(2)
            .as_primitive::<TimestampMicrosecondType>()
            .value(row),
    )
}

/// The keys `(exchange, symbol, window_start)` of a batch of bars, in row order.
pub(crate) fn bar_keys(batch: &RecordBatch) -> impl Iterator<Item = Key<'_>> {
    (0..batch.num_rows()).map(move |row| key_of(batch, row))
}

fn same_bar(a: &RecordBatch, ar: usize, b: &RecordBatch, br: usize) -> bool {
    let f = |batch: &RecordBatch, name: &str, row: usize| {
        let c = batch.column_by_name(name).expect("bar column");
        (c.is_valid(row)).then(|| c.as_primitive::<Float64Type>().value(row).to_bits())
    };
    let t = |batch: &RecordBatch, name: &str, row: usize| {
        let c = batch.column_by_name(name).expect("bar column");
        (c.is_valid(row)).then(|| c.as_primitive::<TimestampMicrosecondType>().value(row))
    };
    let n = |batch: &RecordBatch, row: usize| {
        let c = batch.column_by_name("trade_count").expect("bar column");
        (c.is_valid(row)).then(|| c.as_primitive::<Int64Type>().value(row))
    };
    MEASURES_F64.iter().all(|m| f(a, m, ar) == f(b, m, br))
        && MEASURES_TS.iter().all(|m| t(a, m, ar) == t(b, m, br))
        && n(a, ar) == n(b, br)
}

/// Diffs `computed` against `existing` (stored bars of the same scope, possibly more).
///
/// With `keep_unchanged`, the output also carries the unchanged and the not-recomputed stored
/// bars, as a partition replace needs; otherwise only new and revised bars (an upsert).
/// `late_before`: windows starting before it were persisted earlier; revising them is late.
pub fn diff(
    computed: &RecordBatch,
    existing: &[RecordBatch],
    built_at: i64,
    late_before: Option<i64>,
    keep_unchanged: bool,
) -> Result<Diff> {
    let schema = TableKind::Bars(Timeframe::M1).arrow_schema()?;
    if existing.iter().all(|b| b.num_rows() == 0) {
        // Nothing stored (every chunk of a first attach): all bars are new, as computed.
        return Ok(Diff {
            rows: stamped(&schema, computed.columns().to_vec(), 0, built_at)?,
            new: computed.num_rows(),
            revised: 0,
            unchanged: 0,
            late_revisions: 0,
        });
    }
    let mut stored: FxHashMap<Key<'_>, (usize, usize)> = FxHashMap::default();
    for (bi, b) in existing.iter().enumerate() {
        for row in 0..b.num_rows() {
            stored.insert(key_of(b, row), (bi + 1, row));
        }
    }
    // Source 0 is `computed`, source i+1 is existing[i].
    let mut picks: Vec<(usize, usize)> = Vec::new();
    let mut revision: Vec<i32> = Vec::new();
    let mut stamp: Vec<i64> = Vec::new();
    let (mut new, mut revised, mut unchanged, mut late) = (0, 0, 0, 0);
    // Which stored rows were recomputed (only tracked when the rest must be carried over).
    let stored_rows = if keep_unchanged {
        existing.iter().map(|b| b.num_rows()).sum()
    } else {
        0
    };
    let mut recomputed = vec![false; stored_rows];
    let offsets: Vec<usize> = existing
        .iter()
        .scan(0, |acc, b| {
            let o = *acc;
            *acc += b.num_rows();
            Some(o)
        })
        .collect();
    for row in 0..computed.num_rows() {
        let key = key_of(computed, row);
        match stored.get(&key) {
            None => {
                new += 1;
                picks.push((0, row));
                revision.push(0);
                stamp.push(built_at);
            }
            Some(&(src, srow)) => {
                let old = &existing[src - 1];
                if keep_unchanged {
                    recomputed[offsets[src - 1] + srow] = true;
                }
                if same_bar(computed, row, old, srow) {
                    unchanged += 1;
                    if keep_unchanged {
                        picks.push((src, srow));
                        revision.push(old_revision(old, srow));
                        stamp.push(old_built_at(old, srow));
                    }
                } else {
                    revised += 1;
                    if late_before.is_some_and(|c| key.2 < c) {
                        late += 1;
                    }
                    picks.push((0, row));
                    revision.push(old_revision(old, srow) + 1);
                    stamp.push(built_at);
                }
            }
        }
    }
    if keep_unchanged {
        for (bi, b) in existing.iter().enumerate() {
            for row in 0..b.num_rows() {
                if !recomputed[offsets[bi] + row] {
                    picks.push((bi + 1, row));
                    revision.push(old_revision(b, row));
                    stamp.push(old_built_at(b, row));
                }
            }
        }
    }
    let mut sources: Vec<RecordBatch> = vec![RecordBatch::try_new(
        Arc::clone(&schema),
        computed.columns().to_vec(),
    )?];
    for b in existing {
        sources.push(RecordBatch::try_new(
            Arc::clone(&schema),
            b.columns().to_vec(),
        )?);
    }
    let refs: Vec<&RecordBatch> = sources.iter().collect();
    let picked = interleave_record_batch(&refs, &picks)?;
    let mut columns: Vec<ArrayRef> = picked.columns().to_vec();
    columns[schema.index_of("revision")?] = Arc::new(Int32Array::from(revision));
    columns[schema.index_of("built_at")?] =
        Arc::new(TimestampMicrosecondArray::from(stamp).with_timezone("UTC"));
    Ok(Diff {
        rows: RecordBatch::try_new(schema, columns)?,
        new,
        revised,
        unchanged,
        late_revisions: late,
    })
}

/// `columns` (bar-table order) with every row's revision and built_at set to the same values.
fn stamped(
    schema: &arrow::datatypes::SchemaRef,
    mut columns: Vec<ArrayRef>,
    revision: i32,
    built_at: i64,
) -> Result<RecordBatch> {
    let n = columns.first().map_or(0, |c| c.len());
    columns[schema.index_of("revision")?] = Arc::new(Int32Array::from(vec![revision; n]));
    columns[schema.index_of("built_at")?] =
        Arc::new(TimestampMicrosecondArray::from(vec![built_at; n]).with_timezone("UTC"));
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

fn old_revision(b: &RecordBatch, row: usize) -> i32 {
    let c = b.column_by_name("revision").expect("bar column");
    if c.is_valid(row) {
        c.as_primitive::<Int32Type>().value(row)
    } else {
        0
    }
}

fn old_built_at(b: &RecordBatch, row: usize) -> i64 {
    b.column_by_name("built_at")
        .expect("bar column")
        .as_primitive::<TimestampMicrosecondType>()
        .value(row)
}
