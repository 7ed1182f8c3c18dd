//! What changed in a source table since the snapshot a build consumed.
//!
//! Sequence numbers alone only tell which files are new. Another engine also deletes and
//! overwrites (corrections), so the snapshots after the consumed one are walked, parent by
//! parent, and each one's own manifest entries give the files it added and the files it
//! removed. Snapshots that only rewrote files (`replace`: compactions, ours or another
//! engine's) change no rows and are skipped. When the consumed snapshot is no longer an
//! ancestor of the current one (expired by another engine, or the table was replaced), the
//! changes cannot be known and the caller must compare everything instead of skipping.
//!
//! A position delete file added (or dropped) by a snapshot changes rows of the data files it
//! names: those files count as removed, so every window they touch is recomputed from the
//! table as it is now, deletes applied. An equality delete file names no files: every live
//! data file in its scope (older, same partition or every partition; see `storage::equality`)
//! counts as removed.

use iceberg_rust::spec::manifest::{Content as FileContent, Status};
use iceberg_rust::spec::snapshot::Operation;
use iceberg_rust::table::Table;

use crate::storage::files::read_position_deletes;
use crate::storage::manifest::{read_entries, read_manifest_list};
use crate::storage::snapshot::{equality_scope, takes_row_deletes};
use crate::storage::{Error, Layout, Listing, LiveFile, Result, TableKind, TimeRange};

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
    let mut delete_files = Vec::new();
    let mut scopes = Vec::new();
    for snapshot in chain.into_iter().rev() {
        if snapshot.summary().operation == Operation::Replace {
            continue;
        }
        let id = *snapshot.snapshot_id();
        let own: Vec<_> = read_manifest_list(&table.object_store(), &kind.name(), metadata, id)
            .await?
            .into_iter()
            .filter(|m| m.added_snapshot_id == id)
            .collect();
        let specs: std::collections::HashMap<String, i32> = own
            .iter()
            .map(|m| (m.manifest_path.clone(), m.partition_spec_id))
            .collect();
        for (manifest_path, entry) in
            read_entries(&table.object_store(), &kind.name(), metadata, &own).await?
        {
            if *entry.snapshot_id() != Some(id) {
                continue;
            }
            let spec_id = specs.get(&manifest_path).copied().unwrap_or_default();
            let row_deletes = takes_row_deletes(kind, own_partitions);
            match entry.data_file().content() {
                FileContent::Data => {}
                FileContent::PositionDeletes if row_deletes => {
                    if *entry.status() != Status::Existing {
                        delete_files.push(entry.data_file().file_path().clone());
                    }
                    continue;
                }
                FileContent::EqualityDeletes if row_deletes => {
                    if *entry.status() != Status::Existing {
                        scopes.push(equality_scope(metadata, spec_id, &entry));
                    }
                    continue;
                }
                _ => {
                    return Err(Error::Unsupported {
                        table: kind.name(),
                        file: entry.data_file().file_path().clone(),
                        feature: "a delete file in a bar table (only our builder writes them)"
                            .to_string(),
                    })
                }
            }
            let file = LiveFile {
                manifest_path,
                entry,
                time_field,
                own_partitions,
                deleted: None,
                equality: Vec::new(),
                position_deletes: Vec::new(),
                spec_id,
            };
            match file.entry.status() {
                Status::Added => changes.added.push(file),
                Status::Deleted => changes.removed.push(file),
                Status::Existing => {}
            }
        }
    }
    if !delete_files.is_empty() {
        changes
            .removed
            .extend(files_named_by(table, kind, layout, &delete_files).await?);
    }
    if !scopes.is_empty() {
        let listing = Listing::read_laid_out(table, kind, layout, None, TimeRange::ALL).await?;
        changes.removed.extend(
            listing
                .files
                .into_iter()
                .filter(|f| {
                    let seq = f.entry.sequence_number().unwrap_or(0);
                    let partition = f.entry.data_file().partition();
                    scopes
                        .iter()
                        .any(|s| s.applies_to(seq, f.spec_id, partition))
                })
                .map(|mut f| {
                    f.deleted = None;
                    f.equality.clear();
                    f
                }),
        );
    }
    Ok(SourceChanges::Known(changes))
}

/// The live data files the position delete files at `paths` name, read whole (their rows
/// before the deletes).
async fn files_named_by(
    table: &Table,
    kind: TableKind,
    layout: Layout,
    paths: &[String],
) -> Result<Vec<LiveFile>> {
    let store = table.object_store();
    let mut named = std::collections::HashSet::new();
    for path in paths {
        for (data_path, _) in read_position_deletes(&store, &kind.name(), path).await? {
            named.insert(crate::storage::warehouse::key(&data_path).to_string());
        }
    }
    let listing = Listing::read_laid_out(table, kind, layout, None, TimeRange::ALL).await?;
    Ok(listing
        .files
        .into_iter()
        .filter(|f| named.contains(crate::storage::warehouse::key(f.path()).as_ref()))
        .map(|mut f| {
            f.deleted = None;
            f.equality.clear();
            f
        })
        .collect())
}
