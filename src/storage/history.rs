//! Which snapshot a table's current history held at a past moment: the point-in-time reads
//! (`candles(..., as_of => t)`, `bars_as_of(...)`) pin every table with it.

use iceberg_rust::spec::table_metadata::TableMetadata;

use super::error::{Error, Result};

/// The snapshot of the table's current history committed at or before `at_us`, walking the
/// parents of the current snapshot (`None`: the table held nothing yet). A walk that meets a
/// parent no longer kept fails with the oldest moment still held.
pub fn snapshot_at(metadata: &TableMetadata, table: &str, at_us: i64) -> Result<Option<i64>> {
    let at_ms = at_us.div_euclid(1000);
    let mut id = metadata.current_snapshot_id;
    let mut oldest_ms = None;
    while let Some(snapshot) = id.and_then(|i| metadata.snapshots.get(&i)) {
        if *snapshot.timestamp_ms() <= at_ms {
            return Ok(Some(*snapshot.snapshot_id()));
        }
        oldest_ms = Some(*snapshot.timestamp_ms());
        id = *snapshot.parent_snapshot_id();
    }
    match (id, oldest_ms) {
        // The walk reached the table's first snapshot, committed after `at`.
        (None, _) => Ok(None),
        (Some(_), oldest) => Err(Error::HistoryExpired {
            table: table.to_string(),
            at_us,
            oldest_us: oldest.map(|ms| ms * 1000),
        }),
    }
}

/// Whether `snapshot_id` is in the table's current history (a point-in-time read names one
/// by id).
pub fn in_history(metadata: &TableMetadata, snapshot_id: i64) -> bool {
    let mut id = metadata.current_snapshot_id;
    while let Some(snapshot) = id.and_then(|i| metadata.snapshots.get(&i)) {
        if *snapshot.snapshot_id() == snapshot_id {
            return true;
        }
        id = *snapshot.parent_snapshot_id();
    }
    false
}
