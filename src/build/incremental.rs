//! Incremental builds of the 1m and 5m tables from the trades table.
//!
//! One run:
//! 1. reads its watermark (trades snapshot, sequence number, cutoff) from the bar table;
//! 2. takes the trades table's current snapshot and the new cutoff
//!    `C = window_start(now - grace)`: windows starting before `C` have closed their grace;
//! 3. finds the trades files added since the watermark (data sequence number above it, added
//!    by an append, not by a compaction) and from them the late keys: `(exchange, symbol,
//!    window)` of windows that had already been persisted;
//! 4. recomputes, from all of their trades, the late windows and every window newly closed,
//!    `[previous cutoff, C)`;
//! 5. diffs against the stored bars and upserts only new or changed bars (`revision + 1`), with
//!    the new watermark in the same commit. No change and no new trades: no commit at all.

use std::collections::BTreeSet;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampMicrosecondType;
use iceberg_rust::spec::snapshot::Operation;

use super::diff::diff;
use super::state::{Watermark, TRADES_SEQUENCE, TRADES_SNAPSHOT};
use super::{coalesce, BuildReport, Result};
use crate::bars::columns::FxHashSet;
use crate::bars::compute_bars;
use crate::storage::read::read_files;
use crate::storage::{Listing, LiveFile, TableKind, TableWriter, TimeRange};
use crate::timeframe::Timeframe;

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
    // Snapshots that only rewrote files: the rows they added are not new trades.
    let compactions: FxHashSet<i64> = trades_table
        .metadata()
        .snapshots
        .values()
        .filter(|s| s.summary().operation == Operation::Replace)
        .map(|s| *s.snapshot_id())
        .collect();
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

    let listing = Listing::read(&trades_table, TableKind::Trades, None, TimeRange::ALL).await?;
    let new_files: Vec<&LiveFile> = listing
        .files
        .iter()
        .filter(|f| {
            f.entry.sequence_number().is_none_or(|s| s > wm.sequence)
                && !f
                    .entry
                    .snapshot_id()
                    .is_some_and(|id| compactions.contains(&id))
        })
        .collect();

    // Late keys: windows already persisted (before the previous cutoff) that got new trades.
    let mut late: FxHashSet<(String, String, i64)> = FxHashSet::default();
    if let Some(prev) = wm.cutoff {
        let before = TimeRange::new(None, Some(prev));
        let candidates: Vec<&LiveFile> = new_files
            .iter()
            .copied()
            .filter(|f| f.may_overlap(TableKind::Trades, &before))
            .collect();
        for batch in read_files(storage, TableKind::Trades, &candidates, before).await? {
            report.trades_read += batch.num_rows();
            let (ex, sym, ts) = trade_keys(&batch);
            for row in 0..batch.num_rows() {
                let w = tf.window_start(ts.value(row));
                late.insert((ex.value(row).to_string(), sym.value(row).to_string(), w));
            }
        }
    }
    let fresh = TimeRange::new(wm.cutoff, Some(cutoff));
    let late_windows: BTreeSet<i64> = late.iter().map(|k| k.2).collect();
    let mut ranges = coalesce(late_windows.iter().map(|w| (*w, w + tf.micros())));
    if fresh.start.is_none_or(|s| s < cutoff) {
        ranges.push((fresh.start.unwrap_or(i64::MIN), cutoff));
    }
    let ranges = coalesce(ranges.into_iter());
    let to_read: Vec<&LiveFile> = listing
        .files
        .iter()
        .filter(|f| {
            ranges
                .iter()
                .any(|(s, e)| f.may_overlap(TableKind::Trades, &TimeRange::new(Some(*s), Some(*e))))
        })
        .collect();
    let mut trades: Vec<RecordBatch> = Vec::new();
    for batch in read_files(storage, TableKind::Trades, &to_read, TimeRange::ALL).await? {
        let (ex, sym, ts) = trade_keys(&batch);
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|row| {
                let t = ts.value(row);
                let in_fresh = fresh.overlaps_closed(t, t) && t < cutoff;
                Some(
                    in_fresh
                        || (!late.is_empty()
                            && late.contains(&(
                                ex.value(row).to_string(),
                                sym.value(row).to_string(),
                                tf.window_start(t),
                            ))),
                )
            })
            .collect();
        let kept = filter_record_batch(&batch, &keep)?;
        if kept.num_rows() > 0 {
            trades.push(kept);
        }
    }
    // Late-key detection above counted the new files it scanned; add the trades aggregated.
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
    let d = diff(&computed, &existing, now_us, wm.cutoff, false)?;
    report.absorb(&d);

    let props = next.to_props(TRADES_SNAPSHOT, TRADES_SEQUENCE);
    if d.changed() > 0 {
        let outcome = writer.upsert(kind, &[d.rows], props).await?;
        report.commit(&outcome);
    } else {
        writer.set_properties(kind, props).await?;
    }
    Ok(report)
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
