//! The builder: keeps the five OHLCV tables current from the trades table.
//!
//! | module | owns |
//! |---|---|
//! | `incremental` | 1m and 5m from trades, by dirty window, with a grace period |
//! | `batch` | 30m, 1h and 1d by partition, rolled up from 1m |
//! | `changes` | files a source's snapshots added and removed since a build consumed it |
//! | `compact` | merging the files of closed partitions |
//! | `retention` | dropping partitions past each table's horizon |
//! | `diff` | new / revised / unchanged bars; revisions |
//! | `state` | watermarks kept as table properties |
//!
//! Every build is one commit that carries its watermark, so a crash at any point leaves the
//! last committed state, and a rerun over the same input writes nothing.

pub mod batch;
pub mod changes;
pub mod compact;
pub mod diff;
pub mod incremental;
pub mod retention;
pub mod state;

use std::collections::HashMap;

use crate::storage::{CommitOutcome, TableKind, TableWriter, TimeRange};
use crate::timeframe::Timeframe;

pub use crate::bars::{Error, Result};
pub use batch::{build_rollup, Scope};
pub use compact::compact_closed;
pub use incremental::build_incremental;

/// What one build did; becomes a row of `system.job_runs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildReport {
    pub timeframe: Option<Timeframe>,
    /// Source rows read: trades for 1m/5m, 1m bars for batch timeframes.
    pub trades_read: usize,
    pub bars_written: usize,
    pub new: usize,
    pub revised: usize,
    pub unchanged: usize,
    pub late_revisions: usize,
    /// Bars removed because their window has no trades (or child bars) any more.
    pub deleted: usize,
    /// Rows of a `[source]` the mapping could not read, left out (see `trades::source`).
    pub skipped_rows: usize,
    pub files_added: usize,
    pub files_removed: usize,
    pub snapshot_before: Option<i64>,
    pub snapshot_after: Option<i64>,
    /// Source snapshot consumed (trades for 1m/5m, 1m for the others).
    pub source_snapshot: Option<i64>,
}

impl BuildReport {
    fn new(tf: Timeframe, snapshot: Option<i64>) -> BuildReport {
        BuildReport {
            timeframe: Some(tf),
            snapshot_before: snapshot,
            snapshot_after: snapshot,
            ..BuildReport::default()
        }
    }

    fn absorb(&mut self, d: &diff::Diff) {
        self.new += d.new;
        self.revised += d.revised;
        self.unchanged += d.unchanged;
        self.late_revisions += d.late_revisions;
    }

    fn commit(&mut self, outcome: &CommitOutcome) {
        self.bars_written += self.new + self.revised + self.deleted;
        self.files_added += outcome.files_added;
        self.files_removed += outcome.files_removed;
        if outcome.snapshot_id.is_some() {
            self.snapshot_after = outcome.snapshot_id;
        }
    }
}

/// Builder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildSettings {
    /// How long after a window ends its trades may still arrive before the bar is persisted.
    pub grace_us: i64,
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            grace_us: 5 * crate::timeframe::MINUTE_US,
        }
    }
}

/// Runs the build of one timeframe over everything pending.
pub async fn build(
    writer: &TableWriter,
    tf: Timeframe,
    now_us: i64,
    settings: BuildSettings,
) -> Result<BuildReport> {
    match tf {
        Timeframe::M1 | Timeframe::M5 => {
            build_incremental(writer, tf, now_us, settings.grace_us).await
        }
        _ => build_rollup(writer, tf, now_us, Scope::Changed).await,
    }
}

/// Rebuilds `range` of `tf` from its source regardless of watermarks (late corrections,
/// repairs). Only final windows are written; only changed bars are committed.
pub async fn backfill(
    writer: &TableWriter,
    tf: Timeframe,
    range: TimeRange,
    now_us: i64,
) -> Result<BuildReport> {
    match tf {
        Timeframe::M1 | Timeframe::M5 => backfill_from_trades(writer, tf, range, now_us).await,
        _ => build_rollup(writer, tf, now_us, Scope::Range(range)).await,
    }
}

async fn backfill_from_trades(
    writer: &TableWriter,
    tf: Timeframe,
    range: TimeRange,
    now_us: i64,
) -> Result<BuildReport> {
    let storage = writer.storage();
    let kind = TableKind::Bars(tf);
    let table = storage.table(kind).await?;
    let mut report = BuildReport::new(tf, table.metadata().current_snapshot_id);
    let Some(cutoff) = state::prop_i64(&table.metadata().properties, state::CUTOFF) else {
        return Ok(report); // nothing persisted yet: the next incremental build covers it all
    };
    let start = range.start.map(|s| tf.window_start(s));
    let end = range.end.unwrap_or(cutoff).min(cutoff);
    if start.is_some_and(|s| s >= end) {
        return Ok(report);
    }
    let window = TimeRange::new(start, Some(end));
    let (trades, skipped) = crate::trades::read_trades_range(storage, window, now_us).await?;
    report.trades_read = trades.iter().map(|b| b.num_rows()).sum();
    report.skipped_rows = skipped.count;
    let computed =
        tokio::task::spawn_blocking(move || crate::bars::compute_bars(&trades, tf, now_us))
            .await
            .map_err(|e| Error::Input(format!("bar kernel panicked: {e}")))??;
    let (_, existing) = crate::storage::read::read_range(storage, kind, window).await?;
    let d = diff::diff(&computed, &existing, now_us, Some(cutoff), false)?;
    report.absorb(&d);
    // A backfill is the operator's word that the current trades table is the one to build
    // from, including one that replaced the table the builds consumed.
    let trades = storage.table(TableKind::Trades).await?;
    let props = HashMap::from([(
        state::TRADES_TABLE_UUID.to_string(),
        trades.metadata().table_uuid.to_string(),
    )]);
    if d.changed() > 0 {
        let outcome = writer.upsert(kind, &[d.rows], props).await?;
        report.commit(&outcome);
    } else {
        writer.set_properties(kind, props).await?;
    }
    Ok(report)
}

/// Merges overlapping or touching `[start, end)` ranges.
pub fn coalesce(ranges: impl Iterator<Item = (i64, i64)>) -> Vec<(i64, i64)> {
    let mut v: Vec<(i64, i64)> = ranges.filter(|(s, e)| s < e).collect();
    v.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_coalesce() {
        assert_eq!(
            coalesce([(5, 10), (0, 3), (3, 4), (9, 12), (20, 20)].into_iter()),
            vec![(0, 4), (5, 12)]
        );
    }
}
