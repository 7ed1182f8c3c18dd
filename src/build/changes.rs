//! What changed in a source table since the snapshot a build consumed.
//!
//! Sequence numbers alone only tell which files are new. Another engine also deletes and
//! overwrites (corrections), so the snapshots after the consumed one are walked, parent by
//! parent, and each one's own manifest entries give the files it added and the files it
//! removed. Snapshots that only rewrote files (`replace`: compactions, ours or another
//! engine's) change no rows and are skipped. When the consumed snapshot is no longer an
//! ancestor of the current one (expired by another engine, or the table was replaced), the
//! changes cannot be known and the caller must compare everything instead of skipping.

use iceberg_rust::spec::manifest::{Content as FileContent, Status};
use iceberg_rust::spec::snapshot::Operation;
use iceberg_rust::table::Table;

use crate::storage::manifest::read_entries;
use crate::storage::{Error, Layout, LiveFile, Result, TableKind};

/// Files added and removed by the row-changing snapshots after the consumed one.
#[derive(Debug, Default)]
pub struct Changes {
    pub added: Vec<LiveFile>,
    pub removed: Vec<LiveFile>,
}

/// The changes since `consumed`, or why they cannot be known.
#[derive(Debug)]
pub enum SourceChanges {
    Known(Changes),
    Unknown(String),
}

/// Changes of `table` from snapshot `consumed` (exclusive) to its current snapshot.
pub async fn since(
    table: &Table,
    kind: TableKind,
    layout: Layout,
    consumed: i64,
) -> Result<SourceChanges> {
    let (time_field, own_partitions) = layout.of_files(kind);
    let metadata = table.metadata();
    let mut chain = Vec::new();
    let mut at = metadata.current_snapshot_id;
    while at != Some(consumed) {
        let Some(id) = at else {
            return Ok(SourceChanges::Unknown(format!(
                "snapshot {consumed} of {} is not an ancestor of the current snapshot \
                 (the table was replaced or its history rewritten)",
                kind.name()
            )));
        };
        let Some(snapshot) = metadata.snapshots.get(&id) else {
            return Ok(SourceChanges::Unknown(format!(
                "snapshot {id} of {} has expired, so what changed since snapshot {consumed} \
                 is unknown",
                kind.name()
            )));
        };
        chain.push(snapshot);
        at = *snapshot.parent_snapshot_id();
    }
    let mut changes = Changes::default();
    for snapshot in chain.into_iter().rev() {
        if snapshot.summary().operation == Operation::Replace {
            continue;
        }
        let id = *snapshot.snapshot_id();
        let own: Vec<_> = table
            .manifests(None, Some(id))
            .await?
            .into_iter()
            .filter(|m| m.added_snapshot_id == id)
            .collect();
        for (manifest_path, entry) in
            read_entries(&table.object_store(), &kind.name(), metadata, &own).await?
        {
            if *entry.snapshot_id() != Some(id) {
                continue;
            }
            if *entry.data_file().content() != FileContent::Data {
                return Err(Error::Unsupported {
                    table: kind.name(),
                    file: entry.data_file().file_path().clone(),
                    feature: "row-level deletes (a delete file)".to_string(),
                });
            }
            let file = LiveFile {
                manifest_path,
                entry,
                time_field,
                own_partitions,
            };
            match file.entry.status() {
                Status::Added => changes.added.push(file),
                Status::Deleted => changes.removed.push(file),
                Status::Existing => {}
            }
        }
    }
    Ok(SourceChanges::Known(changes))
}
