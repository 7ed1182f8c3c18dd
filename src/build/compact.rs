//! Compaction of closed partitions: the incremental builds add a small file per run, so a day of
//! 1m bars is hundreds of files; once nothing appends to a partition any more it is merged into
//! one sorted file, without changing a row.

use std::collections::BTreeMap;

use super::{BuildReport, BuildSettings, Result};
use crate::storage::files::partition_range;
use crate::storage::{Listing, TableKind, TableWriter, TimeRange};

/// Compacts every partition of `kind` with more than one file that ended at least the grace
/// period before `now_us` (later trades can still revise it; that only adds a file again).
pub async fn compact_closed(
    writer: &TableWriter,
    kind: TableKind,
    now_us: i64,
    settings: BuildSettings,
) -> Result<BuildReport> {
    if !writer.storage().owns(kind) {
        // Another pipeline's trades table is its own to compact.
        return Ok(BuildReport::default());
    }
    let table = writer.storage().table(kind).await?;
    let snapshot = table.metadata().current_snapshot_id;
    let listing = Listing::read(&table, kind, None, TimeRange::ALL).await?;
    let mut files: BTreeMap<i32, usize> = BTreeMap::new();
    for file in &listing.files {
        if let Some(p) = file.partition(kind) {
            *files.entry(p).or_default() += 1;
        }
    }
    let transform = kind.partition_transform();
    let closed: Vec<i32> = files
        .into_iter()
        .filter(|&(p, n)| n > 1 && partition_range(&transform, p).1 + settings.grace_us <= now_us)
        .map(|(p, _)| p)
        .collect();
    let mut report = BuildReport {
        timeframe: match kind {
            TableKind::Bars(tf) => Some(tf),
            TableKind::Trades => None,
        },
        snapshot_before: snapshot,
        snapshot_after: snapshot,
        ..BuildReport::default()
    };
    if closed.is_empty() {
        return Ok(report);
    }
    let outcome = writer.compact(kind, &closed).await?;
    report.files_added = outcome.files_added;
    report.files_removed = outcome.files_removed;
    report.delete_files_removed = outcome.delete_files_removed;
    report.snapshot_after = outcome.snapshot_id.or(snapshot);
    Ok(report)
}
