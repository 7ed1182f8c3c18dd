//! Retention: whole partitions past a table's horizon are dropped in one commit, then old
//! snapshots are expired and the files nothing references any more are deleted.
//!
//! A bar is never dropped before what is built from it has consumed it: 1m bars are kept until
//! every rollup (30m, 1h, 1d) has built past them, and trades until 1m and 5m have.

use std::collections::{BTreeMap, HashMap};

use super::state::{prop_i64, CUTOFF, RETAINED_FROM};
use super::Result;
use crate::storage::files::partition_range;
use crate::storage::{Listing, TableKind, TableWriter, TimeRange};
use crate::timeframe::Timeframe;

const DAY_US: i64 = 86_400_000_000;

/// How long each table keeps its data; `None` keeps everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub keep: BTreeMap<String, Option<i64>>,
    /// How far back point-in-time reads work: the expiry that follows a drop keeps every
    /// snapshot some moment of this window needs.
    pub history_us: i64,
}

impl RetentionPolicy {
    /// `days` per table name; a table left out keeps everything.
    pub fn from_days(days: &BTreeMap<String, u32>, history_us: i64) -> RetentionPolicy {
        RetentionPolicy {
            keep: TableKind::all()
                .map(|k| {
                    let keep = days
                        .get(&k.name())
                        .filter(|d| **d > 0)
                        .map(|d| *d as i64 * DAY_US);
                    (k.name(), keep)
                })
                .collect(),
            history_us,
        }
    }
}

/// What retention does (or would do) to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionAction {
    pub table: String,
    /// Partitions ending at or before this are dropped (`i64::MIN`: the table keeps all).
    pub cutoff_us: i64,
    pub partitions: Vec<i32>,
    pub rows: u64,
    pub files_dropped: usize,
    pub snapshot_id: Option<i64>,
    pub snapshots_expired: usize,
    pub files_deleted: usize,
}

/// The tables whose build consumes `kind`, and must have built past what is dropped.
fn consumers(kind: TableKind) -> Vec<TableKind> {
    match kind {
        TableKind::Trades => vec![
            TableKind::Bars(Timeframe::M1),
            TableKind::Bars(Timeframe::M5),
        ],
        TableKind::Bars(Timeframe::M1) => [Timeframe::M30, Timeframe::H1, Timeframe::D1]
            .into_iter()
            .map(TableKind::Bars)
            .collect(),
        TableKind::Bars(_) => Vec::new(),
    }
}

/// What retention would drop at `now_us`.
pub async fn plan(
    writer: &TableWriter,
    policy: &RetentionPolicy,
    now_us: i64,
) -> Result<Vec<RetentionAction>> {
    let storage = writer.storage();
    let mut actions = Vec::new();
    // Another pipeline's trades table is its own to keep or drop.
    for kind in TableKind::all().filter(|k| storage.owns(*k)) {
        // Tables without a horizon are listed too: apply still expires and sweeps them.
        let mut cutoff = match policy.keep.get(&kind.name()) {
            Some(Some(keep)) => now_us - keep,
            _ => i64::MIN,
        };
        for consumer in consumers(kind) {
            let table = storage.table(consumer).await?;
            let built = prop_i64(&table.metadata().properties, CUTOFF).unwrap_or(i64::MIN);
            cutoff = cutoff.min(built);
        }
        let table = storage.table(kind).await?;
        let listing = Listing::read(&table, kind, None, TimeRange::ALL).await?;
        let transform = kind.partition_transform();
        let mut partitions: BTreeMap<i32, (u64, usize)> = BTreeMap::new();
        for file in &listing.files {
            if let Some(p) = file.partition(kind) {
                if partition_range(&transform, p).1 <= cutoff {
                    let entry = partitions.entry(p).or_default();
                    entry.0 += file.record_count() as u64;
                    entry.1 += 1;
                }
            }
        }
        actions.push(RetentionAction {
            table: kind.name(),
            cutoff_us: cutoff,
            partitions: partitions.keys().copied().collect(),
            rows: partitions.values().map(|v| v.0).sum(),
            files_dropped: partitions.values().map(|v| v.1).sum(),
            snapshot_id: table.metadata().current_snapshot_id,
            ..RetentionAction::default()
        });
    }
    Ok(actions)
}

/// Drops what [`plan`] finds (one commit per table, recording how far back the table now
/// reaches), then expires snapshots older than the policy's snapshot horizon and deletes the
/// files no snapshot references.
pub async fn apply(
    writer: &TableWriter,
    policy: &RetentionPolicy,
    now_us: i64,
) -> Result<Vec<RetentionAction>> {
    let mut actions = plan(writer, policy, now_us).await?;
    let now = chrono::DateTime::from_timestamp_micros(now_us).unwrap_or_default();
    for action in &mut actions {
        let kind = TableKind::all()
            .find(|k| k.name() == action.table)
            .expect("planned tables exist");
        if let Some(last) = action.partitions.last() {
            let retained_from = partition_range(&kind.partition_transform(), *last).1;
            let props = HashMap::from([(RETAINED_FROM.to_string(), retained_from.to_string())]);
            let outcome = writer
                .replace_partitions(kind, &action.partitions, &[], props)
                .await?;
            action.snapshot_id = outcome.snapshot_id.or(action.snapshot_id);
        }
        let older_than = now - chrono::Duration::microseconds(policy.history_us);
        action.snapshots_expired = writer.expire_snapshots(kind, older_than, 1).await?.len();
        // Files younger than an hour may belong to a commit in flight.
        let sweep = writer
            .sweep_orphans(kind, now, chrono::Duration::hours(1), false)
            .await?;
        action.files_deleted = sweep.deleted.len();
    }
    Ok(actions)
}
