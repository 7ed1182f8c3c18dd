//! Incremental builds of the 1m and 5m tables from the trades table.
//!
//! One run:
//! 1. reads its watermark (trades snapshot, sequence number, cutoff) from the bar table;
//! 2. takes the trades table's current snapshot and the new cutoff
//!    `C = window_start(now - grace)`: windows starting before `C` have closed their grace;
//! 3. finds what changed in the trades table since the watermark's snapshot (the files each
//!    later snapshot added or removed; compactions change nothing) and from the rows of those
//!    files the dirty keys: `(exchange, symbol, window)` of windows already persisted whose
//!    trades changed (late trades, deletes, corrections). When the changes cannot be known
//!    (the consumed snapshot expired), every persisted window is dirty;
//! 4. recomputes, from all of their current trades, the dirty windows and every window newly
//!    closed, `[previous cutoff, C)`;
//! 5. diffs against the stored bars and upserts only new or changed bars (`revision + 1`),
//!    deleting the bars of dirty windows left without trades, with the new watermark in the
//!    same commit. No change and no new trades: no commit at all.
//!
//! Windows before the trades table's retention horizon are never dirty: dropping old trades
//! must not drop the bars built from them.

use std::collections::{BTreeSet, HashSet};

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampMicrosecondType;
use iceberg_rust::table::Table;

use super::changes::{since, SourceChanges};
use super::diff::{bar_keys, diff};
use super::state::{
    prop_i64, Watermark, RETAINED_FROM, TRADES_SEQUENCE, TRADES_SNAPSHOT, TRADES_TABLE_UUID,
};
use super::{coalesce, BuildReport, Result};
use crate::bars::columns::FxHashSet;
use crate::bars::compute_bars;
use crate::storage::read::read_files;
use crate::storage::{Layout, Listing, LiveFile, Storage, TableKind, TableWriter, TimeRange};
use crate::timeframe::Timeframe;
use crate::trades::read_trades;

type BarKey = (String, String, i64);

/// Persisted windows whose trades changed since the last build.
enum Dirty {
    Keys(FxHashSet<BarKey>),
    /// Every window in `[from, before)`: what changed is unknown.
    All {
        from: i64,
        before: i64,
    },
}

impl Dirty {
    fn contains(&self, key: &(&str, &str, i64)) -> bool {
        match self {
            Dirty::Keys(keys) => {
                !keys.is_empty() && keys.contains(&(key.0.to_string(), key.1.to_string(), key.2))
            }
            Dirty::All { from, before } => *from <= key.2 && key.2 < *before,
        }
    }
}

/// Builds `tf` (1m or 5m) up to `now_us` with `grace_us` for late trades.
pub async fn build_incremental(
    writer: &TableWriter,
    tf: Timeframe,
    now_us: i64,
    grace_us: i64,
) -> Result<BuildReport> {
    let storage = writer.storage();
    let kind = TableKind::Bars(tf);
    let bars_table = storage.table(kind).await?;
    let wm = Watermark::read(
        &bars_table.metadata().properties,
        TRADES_SNAPSHOT,
        TRADES_SEQUENCE,
    );
    let mut report = BuildReport::new(tf, bars_table.metadata().current_snapshot_id);

    let trades_table = storage.table(TableKind::Trades).await?;
    let Some(snapshot) = trades_table
        .metadata()
        .current_snapshot(None)
        .map_err(crate::storage::Error::from)?
    else {
        return Ok(report);
    };
    let (trades_snapshot, trades_seq) = (*snapshot.snapshot_id(), *snapshot.sequence_number());
    let uuid = trades_table.metadata().table_uuid.to_string();
    match bars_table.metadata().properties.get(TRADES_TABLE_UUID) {
        Some(seen) if *seen != uuid => {
            return Err(crate::bars::Error::Input(format!(
                "the trades table {} was replaced (table uuid {seen} is now {uuid}); {} is not \
                 built from it, so no bar is lost. A backfill of {tf} (build --timeframe {tf} \
                 --from .. --to ..) accepts the new table and rebuilds from it",
                storage.identifier(TableKind::Trades),
                kind.name()
            )))
        }
        _ => {}
    }
    report.source_snapshot = Some(trades_snapshot);
    let cutoff = tf
        .window_start(now_us - grace_us)
        .max(wm.cutoff.unwrap_or(i64::MIN));
    let next = Watermark {
        snapshot: Some(trades_snapshot),
        sequence: trades_seq,
        cutoff: Some(cutoff),
    };
    if next == wm {
        return Ok(report);
    }
    let retained_from =
        prop_i64(&trades_table.metadata().properties, RETAINED_FROM).unwrap_or(i64::MIN);
    let layout = storage.layout(TableKind::Trades, &trades_table)?;
    let dirty = match (wm.snapshot, wm.cutoff) {
        (Some(consumed), Some(prev)) if consumed != trades_snapshot => {
            let persisted = TimeRange::new(Some(retained_from), Some(prev));
            let changed = Changed {
                table: &trades_table,
                layout,
                consumed,
            };
            dirty_windows(storage, changed, tf, persisted, now_us, &mut report).await?
        }
        _ => Dirty::Keys(FxHashSet::default()),
    };

    let fresh = TimeRange::new(wm.cutoff, Some(cutoff));
    let mut ranges = match &dirty {
        Dirty::Keys(keys) => {
            let windows: BTreeSet<i64> = keys.iter().map(|k| k.2).collect();
            coalesce(windows.iter().map(|w| (*w, w + tf.micros())))
        }
        Dirty::All { from, before } => vec![(*from, *before)],
    };
    if fresh.start.is_none_or(|s| s < cutoff) {
        ranges.push((fresh.start.unwrap_or(i64::MIN), cutoff));
    }
    let ranges = coalesce(ranges.into_iter());
    let listing = Listing::read_laid_out(
        &trades_table,
        TableKind::Trades,
        layout,
        None,
        TimeRange::ALL,
    )
    .await?;
    let to_read: Vec<&LiveFile> = listing
        .files
        .iter()
        .filter(|f| {
            ranges
                .iter()
                .any(|(s, e)| f.may_overlap(TableKind::Trades, &TimeRange::new(Some(*s), Some(*e))))
        })
        .collect();
    let in_scope = |ex: &str, sym: &str, window: i64| {
        (fresh.overlaps_closed(window, window) && window < cutoff)
            || dirty.contains(&(ex, sym, window))
    };
    let mut trades: Vec<RecordBatch> = Vec::new();
    let (batches, skipped) = read_trades(storage, &to_read, TimeRange::ALL, now_us).await?;
    report.skipped_rows += skipped.count;
    for batch in batches {
        let (ex, sym, ts) = trade_keys(&batch);
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|row| {
                let window = tf.window_start(ts.value(row));
                Some(in_scope(ex.value(row), sym.value(row), window))
            })
            .collect();
        let kept = filter_record_batch(&batch, &keep)?;
        if kept.num_rows() > 0 {
            trades.push(kept);
        }
    }
    // Dirty-key detection above counted the changed files it scanned; add the trades
    // aggregated.
    report.trades_read += trades.iter().map(|b| b.num_rows()).sum::<usize>();

    // The kernel is CPU-bound and parallel on its own threads; keep it off the async workers.
    let computed = tokio::task::spawn_blocking(move || compute_bars(&trades, tf, now_us))
        .await
        .map_err(|e| crate::bars::Error::Input(format!("bar kernel panicked: {e}")))??;
    let bar_ranges: Vec<TimeRange> = ranges
        .iter()
        .map(|(s, e)| TimeRange::new(Some(*s), Some(*e)))
        .collect();
    let bar_listing = Listing::read(&bars_table, kind, None, TimeRange::ALL).await?;
    let bar_files: Vec<&LiveFile> = bar_listing
        .files
        .iter()
        .filter(|f| bar_ranges.iter().any(|r| f.may_overlap(kind, r)))
        .collect();
    let existing = read_files(storage, kind, &bar_files, TimeRange::ALL).await?;
    let gone = bars_left_without_trades(&existing, &computed, in_scope);
    let d = diff(&computed, &existing, now_us, wm.cutoff, false)?;
    report.absorb(&d);
    report.deleted = gone.len();

    let mut props = next.to_props(TRADES_SNAPSHOT, TRADES_SEQUENCE);
    props.insert(TRADES_TABLE_UUID.to_string(), uuid);
    if d.changed() > 0 || !gone.is_empty() {
        let outcome = writer.upsert_removing(kind, &[d.rows], gone, props).await?;
        report.commit(&outcome);
    } else {
        writer.set_properties(kind, props).await?;
    }
    Ok(report)
}

/// The trades table and the snapshot a build consumed.
#[derive(Clone, Copy)]
struct Changed<'a> {
    table: &'a Table,
    layout: Layout,
    consumed: i64,
}

/// Dirty keys from the rows of the files added and removed since the consumed snapshot, within
/// `persisted` (windows already written); every persisted window when that is unknown.
async fn dirty_windows(
    storage: &Storage,
    changed: Changed<'_>,
    tf: Timeframe,
    persisted: TimeRange,
    now_us: i64,
    report: &mut BuildReport,
) -> Result<Dirty> {
    let everything = Dirty::All {
        from: persisted.start.unwrap_or(i64::MIN),
        before: persisted.end.unwrap_or(i64::MAX),
    };
    let changes = match since(
        changed.table,
        TableKind::Trades,
        changed.layout,
        changed.consumed,
    )
    .await?
    {
        SourceChanges::Known(changes) => changes,
        SourceChanges::Unknown(reason) => {
            tracing::warn!(timeframe = %tf, %reason, "recomputing every persisted window");
            return Ok(everything);
        }
    };
    let files: Vec<&LiveFile> = changes
        .added
        .iter()
        .chain(&changes.removed)
        .filter(|f| f.may_overlap(TableKind::Trades, &persisted))
        .collect();
    let batches = match read_trades(storage, &files, persisted, now_us).await {
        Ok((batches, _)) => batches,
        // A removed file may already be gone (another engine expired its snapshot and swept).
        Err(crate::trades::Error::Storage(crate::storage::Error::ObjectStore(
            object_store::Error::NotFound { path, .. },
        ))) => {
            tracing::warn!(timeframe = %tf, %path, "a changed trades file is gone; recomputing every persisted window");
            return Ok(everything);
        }
        Err(e) => return Err(e.into()),
    };
    let mut keys = FxHashSet::default();
    for batch in batches {
        report.trades_read += batch.num_rows();
        let (ex, sym, ts) = trade_keys(&batch);
        for row in 0..batch.num_rows() {
            let w = tf.window_start(ts.value(row));
            keys.insert((ex.value(row).to_string(), sym.value(row).to_string(), w));
        }
    }
    Ok(Dirty::Keys(keys))
}

/// Keys of stored bars in scope that the recomputation no longer produces: their window has
/// no trades left.
fn bars_left_without_trades(
    existing: &[RecordBatch],
    computed: &RecordBatch,
    in_scope: impl Fn(&str, &str, i64) -> bool,
) -> HashSet<BarKey> {
    let produced: HashSet<(&str, &str, i64)> = bar_keys(computed).collect();
    existing
        .iter()
        .flat_map(bar_keys)
        .filter(|k| in_scope(k.0, k.1, k.2) && !produced.contains(k))
        .map(|(e, s, w)| (e.to_string(), s.to_string(), w))
        .collect()
}

fn trade_keys(
    batch: &RecordBatch,
) -> (
    &arrow::array::StringArray,
    &arrow::array::StringArray,
    &arrow::array::TimestampMicrosecondArray,
) {
    (
        batch.column(0).as_string::<i32>(),
        batch.column(1).as_string::<i32>(),
        batch.column(3).as_primitive::<TimestampMicrosecondType>(),
    )
}
