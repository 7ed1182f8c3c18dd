//! Table maintenance: expiring old snapshots and sweeping orphan files.
//!
//! iceberg-rust's `expire_snapshots` never deletes files, so the sweep is ours: a file under
//! the table's location is kept when the current metadata file, a live snapshot's manifest
//! list, one of their manifests, or a live entry of those manifests names it. Everything else
//! is deleted once it is older than a safety age, which protects files of a write that has not
//! committed yet and metadata that a concurrent reader may still be opening.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use futures::TryStreamExt;
use iceberg_rust::catalog::commit::{CommitTable, TableRequirement, TableUpdate};
use iceberg_rust::spec::manifest::Status;
use iceberg_rust::spec::manifest_list::ManifestListEntry;
use iceberg_rust::spec::util::strip_prefix;
use object_store::ObjectStoreExt;

use super::error::Result;
use super::manifest::read_entries;
use super::schema::TableKind;
use super::writer::TableWriter;

/// Result of an orphan sweep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Files deleted (or, in a dry run, that would be).
    pub deleted: Vec<String>,
    pub deleted_bytes: u64,
    /// Unreferenced files left because they are younger than the safety age.
    pub too_young: usize,
    /// Files still referenced.
    pub referenced: usize,
}

impl TableWriter {
    /// Removes snapshots older than `older_than` from the table's history, always keeping the
    /// current snapshot, the newest `retain_last`, and the snapshot that was current at
    /// `older_than`: the table stays readable as of every moment since (point-in-time reads).
    /// Returns the expired snapshot ids.
    pub async fn expire_snapshots(
        &self,
        kind: TableKind,
        older_than: DateTime<Utc>,
        retain_last: usize,
    ) -> Result<Vec<i64>> {
        let _turn = self.turn(kind).await?;
        let table = self.storage.table(kind).await?;
        let metadata = table.metadata();
        let Some(current) = metadata.current_snapshot_id else {
            return Ok(Vec::new());
        };
        let mut snapshots: Vec<(i64, i64)> = metadata
            .snapshots
            .values()
            .map(|s| (*s.timestamp_ms(), *s.snapshot_id()))
            .collect();
        snapshots.sort_unstable_by(|a, b| b.cmp(a));
        let cutoff = older_than.timestamp_millis();
        // A walk that meets an expired parent has nothing to anchor: every older snapshot is
        // already gone.
        let anchor = super::history::snapshot_at(metadata, "", cutoff * 1000)
            .ok()
            .flatten();
        let expired: Vec<i64> = snapshots
            .iter()
            .enumerate()
            .filter(|(rank, (ts, id))| {
                *rank >= retain_last.max(1) && *ts < cutoff && *id != current && Some(*id) != anchor
            })
            .map(|(_, (_, id))| *id)
            .collect();
        if expired.is_empty() {
            return Ok(expired);
        }
        self.storage
            .catalog()
            .update_table(CommitTable {
                identifier: self.storage.identifier(kind),
                requirements: vec![TableRequirement::AssertRefSnapshotId {
                    r#ref: "main".to_string(),
                    snapshot_id: current,
                }],
                updates: vec![TableUpdate::RemoveSnapshots {
                    snapshot_ids: expired.clone(),
                }],
            })
            .await?;
        Ok(expired)
    }

    /// Deletes files under the table's location that no live snapshot can reach and that are
    /// older than `min_age` at `now`. With `dry_run`, only reports what would go.
    pub async fn sweep_orphans(
        &self,
        kind: TableKind,
        now: DateTime<Utc>,
        min_age: Duration,
        dry_run: bool,
    ) -> Result<SweepReport> {
        let _turn = self.turn(kind).await?;
        let table = self.storage.table(kind).await?;
        let mut reachable: HashSet<String> = HashSet::new();
        reachable.insert(self.storage.metadata_location(kind).await?);
        let mut manifests: Vec<ManifestListEntry> = Vec::new();
        let mut seen_manifests: HashSet<String> = HashSet::new();
        for snapshot in table.metadata().snapshots.values() {
            reachable.insert(snapshot.manifest_list().clone());
            for manifest in table.manifests(None, Some(*snapshot.snapshot_id())).await? {
                if seen_manifests.insert(manifest.manifest_path.clone()) {
                    manifests.push(manifest);
                }
            }
        }
        reachable.extend(seen_manifests);
        let entries = read_entries(
            &table.object_store(),
            &kind.name(),
            table.metadata(),
            &manifests,
        )
        .await?;
        for (_, entry) in entries {
            if *entry.status() != Status::Deleted {
                reachable.insert(entry.data_file().file_path().clone());
            }
        }
        // Other engines write `file:///...` or `s3://bucket/...` where we write bare paths:
        // compare what the store lists with every reference in the store's own terms.
        let reachable: HashSet<String> = reachable.iter().map(|p| strip_prefix(p)).collect();

        let store = self.storage.store();
        let prefix = super::warehouse::key(&table.metadata().location);
        let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
        let cutoff = now - min_age;
        let mut report = SweepReport::default();
        for object in listed {
            let path = format!("/{}", object.location);
            // The version hint is how path-based readers (DuckDB) find the current metadata; a
            // REST catalog writes the metadata files and may keep older ones in its log.
            if reachable.contains(&path)
                || path.ends_with("/metadata/version-hint.text")
                || (self.storage.is_rest() && path.ends_with(".metadata.json"))
            {
                report.referenced += 1;
                continue;
            }
            if object.last_modified > cutoff {
                report.too_young += 1;
                continue;
            }
            if !dry_run {
                store.delete(&object.location).await?;
            }
            report.deleted_bytes += object.size;
            report.deleted.push(path);
        }
        report.deleted.sort();
        Ok(report)
    }
}
