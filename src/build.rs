//! The builder: keeps the five OHLCV tables current from the trades table.
//!
//! | module | owns |
//! |---|---|
//! | `incremental` | 1m and 5m from trades, by dirty window, with a grace period |
//! | `chunks` | splitting a long scope into chunks that fit the memory budget |
//! | `chunked` | running 1m/5m builds and backfills chunk by chunk, one read for both |
//! | `progress` | the running chunked build's chunks, rate and time left |
//! | `batch` | 30m, 1h and 1d by partition, rolled up from 1m |
//! | `children` | the 1m days rollups run together read once |
//! | `changes` | files a source's snapshots added and removed since a build consumed it |
//! | `compact` | merging the files of closed partitions |
//! | `retention` | dropping partitions past each table's horizon |
//! | `diff` | new / revised / unchanged bars; revisions |
//! | `state` | watermarks kept as table properties |
//!
//! Every build commits its watermark with its bars, so a crash at any point leaves the last
//! committed state, and a rerun over the same input writes nothing. A build longer than the
//! memory budget (a first attach, a backfill) commits chunk by chunk, each chunk with the
//! watermark it reached: a rerun continues from the last chunk committed.

pub mod batch;
pub mod changes;
pub mod children;
mod chunked;
pub mod chunks;
pub mod compact;
pub mod diff;
pub mod incremental;
pub mod progress;
pub mod retention;
pub mod state;

use crate::storage::{CommitOutcome, Listing, TableKind, TableWriter, TimeRange};
use crate::timeframe::Timeframe;

pub use crate::bars::{Error, Result};
pub use batch::{build_rollup, build_rollup_with, Scope};
pub use children::SharedChildren;
pub use compact::compact_closed;

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
    /// Row-level delete files dropped because no live data file needed them any more
    /// (compaction of the trades).
    pub delete_files_removed: usize,
    /// Files no snapshot referenced, removed by the orphan sweep (retention).
    pub orphans_deleted: usize,
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

    /// What one chunk's [`incremental::finish`] did.
    fn add_chunk(&mut self, chunk: &BuildReport) {
        self.new += chunk.new;
        self.revised += chunk.revised;
        self.unchanged += chunk.unchanged;
        self.late_revisions += chunk.late_revisions;
        self.deleted += chunk.deleted;
        self.bars_written += chunk.bars_written;
        self.files_added += chunk.files_added;
        self.files_removed += chunk.files_removed;
        if chunk.snapshot_after.is_some() {
            self.snapshot_after = chunk.snapshot_after;
        }
    }

    /// A commit that wrote `written` bars (new, revised and deleted).
    fn commit(&mut self, outcome: &CommitOutcome, written: usize) {
        self.bars_written += written;
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
    /// What a build may hold at once (trades of the chunks in flight, the kernel's copy);
    /// longer builds go in chunks.
    pub memory_bytes: u64,
    /// Whether a chunk commits while the next one is computed; `None`: from a budget of
    /// `chunked::OVERLAP_MIN_BYTES` up.
    pub overlap_commits: Option<bool>,
}

impl BuildSettings {
    /// Whether chunks commit while the next is computed (faster; holds two chunks' bars, and
    /// a kill may lose two chunks instead of one).
    pub fn overlaps(&self) -> bool {
        self.overlap_commits
            .unwrap_or(self.memory_bytes >= chunked::OVERLAP_MIN_BYTES)
    }
}

/// The default build budget.
pub const DEFAULT_MEMORY_MB: u64 = 1024;

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            grace_us: 5 * crate::timeframe::MINUTE_US,
            memory_bytes: DEFAULT_MEMORY_MB << 20,
            overlap_commits: None,
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
            let mut reports = build_from_trades(writer, &[tf], now_us, settings).await?;
            Ok(reports.remove(0))
        }
        _ => build_rollup(writer, tf, now_us, Scope::Changed, settings).await,
    }
}

/// The 1m build, with the 5m one taken along when 5m is more than a day behind (a first
/// attach, a catch-up), so that one read of the trades feeds both; the 1m report.
pub async fn build_1m_with_5m(
    writer: &TableWriter,
    now_us: i64,
    settings: BuildSettings,
) -> Result<BuildReport> {
    let tfs: &[Timeframe] = match m5_far_behind(writer, now_us).await? {
        true => &[Timeframe::M1, Timeframe::M5],
        false => &[Timeframe::M1],
    };
    let mut reports = build_from_trades(writer, tfs, now_us, settings).await?;
    Ok(reports.remove(0))
}

/// Whether the 5m table's cutoff is unset or more than a day before now.
async fn m5_far_behind(writer: &TableWriter, now_us: i64) -> Result<bool> {
    let table = writer
        .storage()
        .table(TableKind::Bars(Timeframe::M5))
        .await?;
    let cutoff = state::prop_i64(&table.metadata().properties, state::CUTOFF);
    Ok(cutoff.is_none_or(|c| c < now_us - crate::timeframe::DAY_US))
}

/// Rebuilds `range` of `tf` from its source regardless of watermarks (late corrections,
/// repairs), with the default budget. Only final windows are written; only changed bars are
/// committed.
pub async fn backfill(
    writer: &TableWriter,
    tf: Timeframe,
    range: TimeRange,
    now_us: i64,
) -> Result<BuildReport> {
    backfill_with(writer, tf, range, now_us, BuildSettings::default()).await
}

/// As [`backfill`], within `settings.memory_bytes` (a long range goes in chunks, each
/// committed as it is done).
pub async fn backfill_with(
    writer: &TableWriter,
    tf: Timeframe,
    range: TimeRange,
    now_us: i64,
    settings: BuildSettings,
) -> Result<BuildReport> {
    match tf {
        Timeframe::M1 | Timeframe::M5 => {
            backfill_from_trades(writer, tf, range, now_us, settings).await
        }
        _ => build_rollup(writer, tf, now_us, Scope::Range(range), settings).await,
    }
}

async fn backfill_from_trades(
    writer: &TableWriter,
    tf: Timeframe,
    range: TimeRange,
    now_us: i64,
    settings: BuildSettings,
) -> Result<BuildReport> {
    let storage = writer.storage();
    let kind = TableKind::Bars(tf);
    let table = storage.table(kind).await?;
    let report = BuildReport::new(tf, table.metadata().current_snapshot_id);
    let Some(cutoff) = state::prop_i64(&table.metadata().properties, state::CUTOFF) else {
        return Ok(report); // nothing persisted yet: the next incremental build covers it all
    };
    let start = range.start.map_or(i64::MIN, |s| tf.window_start(s));
    let end = range.end.unwrap_or(cutoff).min(cutoff);
    if start >= end {
        return Ok(report);
    }
    // A backfill is the operator's word that the current trades table is the one to build
    // from, including one that replaced the table the builds consumed.
    let trades = storage.table(TableKind::Trades).await?;
    let uuid = trades.metadata().table_uuid.to_string();
    let mut plans = vec![incremental::Plan::backfill(tf, (start, end), cutoff, uuid)];
    plans[0].report = report;
    let layout = storage.layout(TableKind::Trades, &trades)?;
    let window = TimeRange::new(Some(start), Some(end));
    let listing = Listing::read_laid_out(&trades, TableKind::Trades, layout, None, window).await?;
    chunked::run(writer, &listing, &mut plans, now_us, settings, "backfill").await?;
    Ok(plans.remove(0).report)
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

/// Builds `tf` (1m or 5m) up to `now_us` with `grace_us` for late trades.
pub async fn build_incremental(
    writer: &TableWriter,
    tf: Timeframe,
    now_us: i64,
    grace_us: i64,
) -> Result<BuildReport> {
    let settings = BuildSettings {
        grace_us,
        ..BuildSettings::default()
    };
    let mut reports = build_from_trades(writer, &[tf], now_us, settings).await?;
    Ok(reports.remove(0))
}

/// Builds the timeframes `tfs` (1m, 5m or both) from one read of the trades, in chunks that
/// fit `settings.memory_bytes`, each committed with the watermark that says how far the
/// build has got. One report per timeframe, in the order given.
pub async fn build_from_trades(
    writer: &TableWriter,
    tfs: &[Timeframe],
    now_us: i64,
    settings: BuildSettings,
) -> Result<Vec<BuildReport>> {
    let storage = writer.storage();
    let trades_table = storage.table(TableKind::Trades).await?;
    let mut plans = Vec::new();
    let mut done = Vec::new();
    for &tf in tfs {
        match incremental::plan(storage, &trades_table, tf, now_us, settings.grace_us).await? {
            incremental::Planned::Done(report) => done.push(report),
            incremental::Planned::Work(plan) => plans.push(*plan),
        }
    }
    if !plans.is_empty() {
        let layout = storage.layout(TableKind::Trades, &trades_table)?;
        let listing = Listing::read_laid_out(
            &trades_table,
            TableKind::Trades,
            layout,
            None,
            TimeRange::ALL,
        )
        .await?;
        chunked::run(writer, &listing, &mut plans, now_us, settings, "build").await?;
        done.extend(plans.into_iter().map(|p| p.report));
    }
    Ok(tfs
        .iter()
        .map(|tf| {
            done.iter()
                .find(|r| r.timeframe == Some(*tf))
                .cloned()
                .unwrap_or_default()
        })
        .collect())
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
