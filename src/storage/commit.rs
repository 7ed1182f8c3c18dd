//! Our snapshot committer: one atomic Iceberg commit that adds files, removes files and sets
//! table properties together.
//!
//! iceberg-rust 0.10's `overwrite()` panics once the files it replaces sit in several manifests,
//! and its `replace()` drops the parent snapshot. This module writes the manifests and the
//! manifest list itself from the public spec types and hands the catalog a `CommitTable` that
//! asserts the parent snapshot:
//! - manifests holding none of the removed files are carried over unchanged;
//! - a manifest holding removed files is rewritten: its other files as `Existing` (original
//!   snapshot id and sequence number kept), the removed ones as `Deleted`;
//! - added files go into one new manifest whose entries inherit the new sequence number;
//! - once more than `MAX_MANIFESTS` manifests would be carried, they are merged into one, so
//!   the cost of reading a snapshot stays bounded however many commits a table has seen.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use apache_avro::{Schema as AvroSchema, Writer as AvroWriter};
use iceberg_rust::catalog::commit::{CommitTable, TableRequirement, TableUpdate};
use iceberg_rust::spec::manifest::{
    partition_value_schema, Content as FileContent, DataFile, ManifestEntry, Status,
};
use iceberg_rust::spec::manifest_list::{
    manifest_list_schema_v2, Content, FieldSummary, ManifestListEntry,
};
use iceberg_rust::spec::schema::SchemaV2;
use iceberg_rust::spec::snapshot::{
    generate_snapshot_id, Operation, SnapshotBuilder, SnapshotReference, SnapshotRetention, Summary,
};
use iceberg_rust::spec::table_metadata::{FormatVersion, TableMetadata};
use iceberg_rust::spec::values::Value;
use iceberg_rust::table::Table;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::time::timeout;

use super::catalog::Storage;
use super::error::{Error, Result};
use super::files::discard;
use super::schema::TableKind;
use super::snapshot::{Listing, LiveFile};
use crate::backoff::Backoff;

/// Most manifests a snapshot carries before they are merged into one.
const MAX_MANIFESTS: usize = 32;

/// Longest a single catalog call may take; past it the call's outcome is unknown.
pub const CATALOG_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a commit whose outcome is unknown keeps reading the table back before it gives
/// up and reports the outcome as unknown (its files are then kept).
const RESOLVE_FOR: Duration = Duration::from_secs(120);

/// What one commit changes. Files to remove are named by path and must be live.
#[derive(Debug, Default)]
pub struct Change {
    pub add: Vec<DataFile>,
    pub remove: HashSet<String>,
    /// Table properties set in the same commit (the builder's watermark lives here).
    pub properties: HashMap<String, String>,
    /// Extra snapshot summary fields.
    pub summary: HashMap<String, String>,
    /// Rows are rearranged but not changed (compaction): recorded as a `replace` snapshot.
    pub rewrite_only: bool,
}

/// What a commit did, for job records and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The new snapshot, or `None` when the change touched no data.
    pub snapshot_id: Option<i64>,
    pub files_added: usize,
    pub files_removed: usize,
    pub rows_added: i64,
    pub rows_removed: i64,
    /// Row-level delete files dropped because no live data file needs them any more.
    pub delete_files_removed: usize,
}

/// How a commit can end, as `ohlcv_commits_total` counts it.
pub const COMMIT_OUTCOMES: [&str; 5] = ["landed", "failed", "unknown", "lost", "refused"];

/// Creates every (table, outcome) series of the commit counter at zero.
pub fn preset_metrics() {
    for kind in TableKind::all() {
        for outcome in COMMIT_OUTCOMES {
            crate::metrics::metrics()
                .commits
                .with_label_values(&[kind.name().as_str(), outcome]);
        }
    }
}

/// Commits `change` on top of `listing`, which must be the current snapshot of `table`.
///
/// The data files of `change` are deleted again only when the commit failed before the
/// catalog update was sent. Once it was sent, the update may have applied even if no reply
/// came back, so the outcome is decided by reading the table again (see [`resolve`]); files
/// of a commit that did not land are left to the orphan sweep, never deleted here.
#[tracing::instrument(name = "storage.commit", level = "debug", skip_all, fields(
    table = %kind.name(), files_added = change.add.len(), files_removed = change.remove.len()
))]
pub async fn commit(
    storage: &Storage,
    kind: TableKind,
    table: &Table,
    listing: &Listing,
    change: Change,
) -> Result<CommitOutcome> {
    let added = change.add.clone();
    match prepare(storage, kind, table, listing, change).await {
        Ok(Prepared::Done(outcome)) => Ok(outcome),
        Ok(Prepared::Send(update, outcome)) => send(storage, kind, update, outcome).await,
        Err(e) => {
            discard(&storage.store(), &added).await;
            Err(e)
        }
    }
}

/// A commit ready for the catalog, or one that needed no catalog update.
enum Prepared {
    Done(CommitOutcome),
    Send(CommitTable, CommitOutcome),
}

/// Writes the manifests and the manifest list of `change`: everything before the catalog
/// update, none of which any reader can see yet.
async fn prepare(
    storage: &Storage,
    kind: TableKind,
    table: &Table,
    listing: &Listing,
    change: Change,
) -> Result<Prepared> {
    let metadata = table.metadata();
    let identifier = storage.identifier(kind);
    let parent = metadata.current_snapshot(None)?.map(|s| *s.snapshot_id());
    if parent != listing.snapshot_id {
        return Err(Error::Catalog(format!(
            "listing of {} is for snapshot {:?}, table is at {parent:?}",
            kind.name(),
            listing.snapshot_id
        )));
    }
    let requirements: Vec<TableRequirement> = parent
        .map(|snapshot_id| TableRequirement::AssertRefSnapshotId {
            r#ref: "main".to_string(),
            snapshot_id,
        })
        .into_iter()
        .collect();

    if change.add.is_empty() && change.remove.is_empty() {
        if change.properties.is_empty() {
            return Ok(Prepared::Done(CommitOutcome::default()));
        }
        let commit = CommitTable {
            identifier,
            requirements,
            updates: vec![TableUpdate::SetProperties {
                updates: change.properties,
            }],
        };
        return Ok(Prepared::Send(commit, CommitOutcome::default()));
    }

    let live: HashSet<&str> = listing.files.iter().map(LiveFile::path).collect();
    if let Some(missing) = change.remove.iter().find(|p| !live.contains(p.as_str())) {
        return Err(Error::Catalog(format!(
            "cannot remove {missing} from {}: it is not a live file",
            kind.name()
        )));
    }

    let snapshot_id = loop {
        let id = generate_snapshot_id();
        if !metadata.snapshots.contains_key(&id) {
            break id;
        }
    };
    let sequence_number = metadata.last_sequence_number + 1;
    let mut writer = ManifestSet::new(storage.store(), metadata, snapshot_id, sequence_number)?;

    let by_manifest = listing.by_manifest();
    let unneeded = unneeded_deletes(listing, &change.remove);
    let mut carried: Vec<&ManifestListEntry> = Vec::new();
    let mut merge_pool: Vec<ManifestEntry> = Vec::new();
    let mut dropped: Vec<&ManifestEntry> = Vec::new();
    for manifest in &listing.manifests {
        let files = by_manifest
            .get(manifest.manifest_path.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if manifest.content != Content::Data {
            let deletes: Vec<&ManifestEntry> = listing
                .deletes
                .iter()
                .filter(|(m, _)| *m == manifest.manifest_path)
                .map(|(_, e)| e)
                .collect();
            let drops = deletes
                .iter()
                .any(|e| unneeded.contains(e.data_file().file_path().as_str()));
            if listing.complete && deletes.is_empty() {
                // Only entries of delete files dropped earlier: nothing live to carry.
                continue;
            }
            if !drops || manifest.partition_spec_id != metadata.default_spec_id {
                // A manifest of an older spec is carried whole: its entries' partition tuples
                // only fit a manifest of that spec.
                carried.push(manifest);
                continue;
            }
            let entries = deletes
                .into_iter()
                .map(|e| {
                    let removed = unneeded.contains(e.data_file().file_path().as_str());
                    if removed {
                        dropped.push(e);
                    }
                    carry_manifest_entry(e, removed, snapshot_id)
                })
                .collect();
            writer.write_content(entries, Content::Deletes).await?;
            continue;
        }
        if files.is_empty() {
            // Only deleted entries left: nothing live to carry.
            continue;
        }
        if files.iter().any(|f| change.remove.contains(f.path())) {
            let entries = files
                .iter()
                .map(|f| carry_entry(f, change.remove.contains(f.path()), snapshot_id))
                .collect();
            writer.write(entries).await?;
        } else {
            carried.push(manifest);
            merge_pool.extend(files.iter().map(|f| carry_entry(f, false, snapshot_id)));
        }
    }
    if carried.len() > MAX_MANIFESTS {
        carried.retain(|m| m.content != Content::Data);
        writer.write(merge_pool).await?;
    }
    let outcome = CommitOutcome {
        snapshot_id: Some(snapshot_id),
        files_added: change.add.len(),
        files_removed: change.remove.len(),
        rows_added: change.add.iter().map(|f| *f.record_count()).sum(),
        rows_removed: listing
            .files
            .iter()
            .filter(|f| change.remove.contains(f.path()))
            .map(LiveFile::record_count)
            .sum(),
        delete_files_removed: dropped.len(),
    };
    if !change.add.is_empty() {
        let entries = change
            .add
            .iter()
            .cloned()
            .map(|file| {
                ManifestEntry::builder()
                    .with_format_version(FormatVersion::V2)
                    .with_status(Status::Added)
                    .with_snapshot_id(snapshot_id)
                    .with_data_file(file)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        writer.write(entries).await?;
    }
    let mut list: Vec<ManifestListEntry> = carried.into_iter().cloned().collect();
    list.extend(writer.written);
    let list_location = format!(
        "{}/metadata/snap-{snapshot_id}-1-{}.avro",
        metadata.location,
        uuid::Uuid::new_v4()
    );
    write_manifest_list(
        &storage.store(),
        &list_location,
        &list,
        snapshot_id,
        parent,
        sequence_number,
    )
    .await?;

    let operation = match (change.add.is_empty(), change.remove.is_empty()) {
        (_, true) => Operation::Append,
        (true, false) => Operation::Delete,
        (false, false) if change.rewrite_only => Operation::Replace,
        (false, false) => Operation::Overwrite,
    };
    let mut summary = summary_fields(listing, &change, &outcome, &dropped);
    // The position a build reached, set as table properties in this commit, is recorded with
    // the snapshot too: the properties hold only the latest, and `system.snapshots` (what a
    // point-in-time read saw) needs each snapshot's.
    summary.extend(
        change
            .properties
            .iter()
            .filter(|(k, _)| k.starts_with("ohlcv."))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    summary.extend(change.summary);
    let mut builder = SnapshotBuilder::default();
    builder
        .with_snapshot_id(snapshot_id)
        .with_sequence_number(sequence_number)
        .with_manifest_list(list_location)
        .with_summary(Summary {
            operation,
            other: summary,
        })
        .with_schema_id(*table.current_schema(None)?.schema_id());
    if let Some(parent) = parent {
        builder.with_parent_snapshot_id(parent);
    }
    let mut updates = vec![
        TableUpdate::AddSnapshot {
            snapshot: builder.build()?,
        },
        TableUpdate::SetSnapshotRef {
            ref_name: "main".to_string(),
            snapshot_reference: SnapshotReference {
                snapshot_id,
                retention: SnapshotRetention::default(),
            },
        },
    ];
    if !change.properties.is_empty() {
        updates.push(TableUpdate::SetProperties {
            updates: change.properties,
        });
    }
    let update = CommitTable {
        identifier,
        requirements,
        updates,
    };
    Ok(Prepared::Send(update, outcome))
}

/// Sends the catalog update and decides whether it landed.
async fn send(
    storage: &Storage,
    kind: TableKind,
    update: CommitTable,
    outcome: CommitOutcome,
) -> Result<CommitOutcome> {
    // A commit of properties alone adds no snapshot: it shows as a new metadata file.
    let metadata_before = match outcome.snapshot_id {
        None => storage.metadata_location(kind).await.ok(),
        Some(_) => None,
    };
    let reply = timeout(CATALOG_TIMEOUT, storage.catalog().update_table(update)).await;
    let failure = match reply {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "no reply from the catalog within {}s",
            CATALOG_TIMEOUT.as_secs()
        )),
    };
    if let Some(reason) = &failure {
        tracing::warn!(table = %kind.name(), %reason, "catalog update failed; reading the table to learn whether it applied");
    }
    let landed = resolve(
        storage,
        kind,
        outcome.snapshot_id,
        metadata_before.as_deref(),
    )
    .await;
    let counted = |outcome: &str| {
        crate::metrics::metrics()
            .commits
            .with_label_values(&[kind.name().as_str(), outcome])
            .inc();
    };
    match (&landed, &failure) {
        (Ok(true), _) => counted("landed"),
        (Ok(false), None) => counted("lost"),
        (Ok(false), Some(_)) => counted("failed"),
        (Err(_), _) => counted("unknown"),
    }
    match (landed, failure) {
        (Ok(true), _) => Ok(outcome),
        // The SQL catalog reports success even when another writer moved the table first.
        (Ok(false), None) => Err(Error::LostCommit {
            table: kind.name(),
            expected: outcome.snapshot_id.unwrap_or_default(),
            found: storage.table(kind).await?.metadata().current_snapshot_id,
        }),
        (Ok(false), Some(reason)) => Err(Error::CommitFailed {
            table: kind.name(),
            reason,
        }),
        (Err(e), reason) => Err(Error::CommitUnknown {
            table: kind.name(),
            reason: format!(
                "{}; the table could not be read back: {e}",
                reason.unwrap_or_else(|| "the catalog accepted the update".to_string())
            ),
        }),
    }
}

/// Between the catalog reads of [`resolve`].
const RESOLVE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

/// Whether the commit that created `snapshot_id` (or, for a commit of properties alone, that
/// moved the metadata away from `metadata_before`) is in the table now. Re-reads the catalog,
/// with growing pauses, until it answers or [`RESOLVE_FOR`] has passed.
async fn resolve(
    storage: &Storage,
    kind: TableKind,
    snapshot_id: Option<i64>,
    metadata_before: Option<&str>,
) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + RESOLVE_FOR;
    let mut retry = 0;
    loop {
        // One catalog read: the table for a data commit, the metadata location for a commit
        // of properties alone.
        let read = timeout(CATALOG_TIMEOUT, async {
            Ok::<_, Error>(match snapshot_id {
                Some(id) => storage
                    .table(kind)
                    .await?
                    .metadata()
                    .snapshots
                    .contains_key(&id),
                None => {
                    let location = storage.metadata_location(kind).await?;
                    metadata_before.is_none_or(|before| before != location)
                }
            })
        })
        .await;
        retry += 1;
        let pause = RESOLVE_BACKOFF.delay(retry);
        match read {
            Ok(Ok(landed)) => return Ok(landed),
            Ok(Err(e)) if tokio::time::Instant::now() + pause >= deadline => return Err(e),
            Err(_) if tokio::time::Instant::now() + pause >= deadline => {
                return Err(Error::Catalog("the catalog did not answer".to_string()))
            }
            Ok(Err(e)) => {
                tracing::warn!(table = %kind.name(), error = %e, "catalog unreachable while resolving a commit; retrying")
            }
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
    }
}

fn carry_entry(file: &LiveFile, removed: bool, snapshot_id: i64) -> ManifestEntry {
    carry_manifest_entry(&file.entry, removed, snapshot_id)
}

fn carry_manifest_entry(entry: &ManifestEntry, removed: bool, snapshot_id: i64) -> ManifestEntry {
    let mut entry = entry.clone();
    if removed {
        *entry.status_mut() = Status::Deleted;
        *entry.snapshot_id_mut() = Some(snapshot_id);
    } else {
        *entry.status_mut() = Status::Existing;
    }
    entry
}

/// Live delete files that no data file left live by a commit removing `remove` needs: the
/// position deletes of removed files only, and equality deletes whose scope holds no live file
/// any more (a compaction's new files carry a newer sequence number, out of every older
/// delete's reach). None when the listing is incomplete, since an unlisted file may need them.
fn unneeded_deletes<'a>(listing: &'a Listing, remove: &HashSet<String>) -> HashSet<&'a str> {
    if !listing.complete || listing.deletes.is_empty() {
        return HashSet::new();
    }
    let mut needed: HashSet<&str> = HashSet::new();
    for file in listing.files.iter().filter(|f| !remove.contains(f.path())) {
        needed.extend(file.position_deletes.iter().map(|p| &**p));
        needed.extend(file.equality.iter().map(|e| e.path.as_str()));
    }
    listing
        .deletes
        .iter()
        .map(|(_, e)| e.data_file().file_path().as_str())
        .filter(|p| !needed.contains(p))
        .collect()
}

/// Files of `content` among `entries`, and the rows they hold.
fn count<'a>(
    entries: impl Iterator<Item = &'a ManifestEntry>,
    content: FileContent,
) -> (usize, i64) {
    entries
        .filter(|e| *e.data_file().content() == content)
        .fold((0, 0), |(n, rows), e| {
            (n + 1, rows + *e.data_file().record_count())
        })
}

fn summary_fields(
    listing: &Listing,
    change: &Change,
    outcome: &CommitOutcome,
    dropped: &[&ManifestEntry],
) -> HashMap<String, String> {
    let live = || listing.deletes.iter().map(|(_, e)| e);
    let dropped_pos = count(dropped.iter().copied(), FileContent::PositionDeletes);
    let dropped_eq = count(dropped.iter().copied(), FileContent::EqualityDeletes);
    let live_pos = count(live(), FileContent::PositionDeletes);
    let live_eq = count(live(), FileContent::EqualityDeletes);
    let added_size: i64 = change.add.iter().map(|f| *f.file_size_in_bytes()).sum();
    let removed_size: i64 = listing
        .files
        .iter()
        .filter(|f| change.remove.contains(f.path()))
        .map(LiveFile::size)
        .sum();
    let total_size: i64 = listing.files.iter().map(LiveFile::size).sum();
    let total_files = listing.files.len() + outcome.files_added - outcome.files_removed;
    let total_records = listing.total_records() + outcome.rows_added - outcome.rows_removed;
    let partitions: HashSet<String> = change
        .add
        .iter()
        .map(|f| format!("{:?}", f.partition()))
        .collect();
    [
        ("added-data-files", outcome.files_added.to_string()),
        ("deleted-data-files", outcome.files_removed.to_string()),
        ("added-records", outcome.rows_added.to_string()),
        ("deleted-records", outcome.rows_removed.to_string()),
        ("added-files-size", added_size.to_string()),
        ("removed-files-size", removed_size.to_string()),
        ("changed-partition-count", partitions.len().to_string()),
        ("total-records", total_records.to_string()),
        ("total-data-files", total_files.to_string()),
        (
            "total-files-size",
            (total_size + added_size - removed_size).to_string(),
        ),
        (
            "removed-delete-files",
            (dropped_pos.0 + dropped_eq.0).to_string(),
        ),
        ("removed-position-delete-files", dropped_pos.0.to_string()),
        ("removed-equality-delete-files", dropped_eq.0.to_string()),
        ("removed-position-deletes", dropped_pos.1.to_string()),
        ("removed-equality-deletes", dropped_eq.1.to_string()),
        (
            "total-delete-files",
            (live_pos.0 + live_eq.0 - dropped_pos.0 - dropped_eq.0).to_string(),
        ),
        (
            "total-position-deletes",
            (live_pos.1 - dropped_pos.1).to_string(),
        ),
        (
            "total-equality-deletes",
            (live_eq.1 - dropped_eq.1).to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Writes the manifests of one commit and collects their manifest-list entries.
struct ManifestSet<'a> {
    store: Arc<dyn ObjectStore>,
    metadata: &'a TableMetadata,
    schema: AvroSchema,
    snapshot_id: i64,
    sequence_number: i64,
    commit_uuid: String,
    written: Vec<ManifestListEntry>,
}

impl<'a> ManifestSet<'a> {
    fn new(
        store: Arc<dyn ObjectStore>,
        metadata: &'a TableMetadata,
        snapshot_id: i64,
        sequence_number: i64,
    ) -> Result<Self> {
        let partition_fields = metadata.current_partition_fields(None)?;
        let schema = ManifestEntry::schema(
            &partition_value_schema(&partition_fields)?,
            &FormatVersion::V2,
        )?;
        Ok(ManifestSet {
            store,
            metadata,
            schema,
            snapshot_id,
            sequence_number,
            commit_uuid: uuid::Uuid::new_v4().to_string(),
            written: Vec::new(),
        })
    }

    async fn write(&mut self, entries: Vec<ManifestEntry>) -> Result<()> {
        self.write_content(entries, Content::Data).await
    }

    async fn write_content(&mut self, entries: Vec<ManifestEntry>, content: Content) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let metadata = self.metadata;
        let spec = metadata.default_partition_spec()?;
        let location = format!(
            "{}/metadata/{}-m{}.avro",
            metadata.location,
            self.commit_uuid,
            self.written.len()
        );
        let mut writer = AvroWriter::new(&self.schema, Vec::new());
        let schema_json =
            serde_json::to_string(&SchemaV2::from(metadata.current_schema(None)?.clone()))
                .map_err(|e| Error::Catalog(e.to_string()))?;
        let spec_json =
            serde_json::to_string(spec.fields()).map_err(|e| Error::Catalog(e.to_string()))?;
        writer.add_user_metadata("format-version".to_string(), "2")?;
        writer.add_user_metadata("schema".to_string(), schema_json)?;
        writer.add_user_metadata(
            "schema-id".to_string(),
            metadata.current_schema(None)?.schema_id().to_string(),
        )?;
        writer.add_user_metadata("partition-spec".to_string(), spec_json)?;
        writer.add_user_metadata(
            "partition-spec-id".to_string(),
            metadata.default_spec_id.to_string(),
        )?;
        let content_name = match content {
            Content::Data => "data",
            Content::Deletes => "deletes",
        };
        writer.add_user_metadata("content".to_string(), content_name)?;

        let field_name = spec.fields().first().map(|f| f.name().to_string());
        let mut entry = ManifestListEntry {
            format_version: FormatVersion::V2,
            manifest_path: location.clone(),
            manifest_length: 0,
            partition_spec_id: metadata.default_spec_id,
            content,
            sequence_number: self.sequence_number,
            min_sequence_number: self.sequence_number,
            added_snapshot_id: self.snapshot_id,
            added_files_count: Some(0),
            existing_files_count: Some(0),
            deleted_files_count: Some(0),
            added_rows_count: Some(0),
            existing_rows_count: Some(0),
            deleted_rows_count: Some(0),
            partitions: None,
            key_metadata: None,
        };
        let mut bounds: Option<(i32, i32)> = None;
        for manifest_entry in entries {
            let rows = *manifest_entry.data_file().record_count();
            let (files, row_count) = match manifest_entry.status() {
                Status::Added => (&mut entry.added_files_count, &mut entry.added_rows_count),
                Status::Existing => (
                    &mut entry.existing_files_count,
                    &mut entry.existing_rows_count,
                ),
                Status::Deleted => (
                    &mut entry.deleted_files_count,
                    &mut entry.deleted_rows_count,
                ),
            };
            *files = Some(files.unwrap_or(0) + 1);
            *row_count = Some(row_count.unwrap_or(0) + rows);
            if let Some(seq) = manifest_entry.sequence_number() {
                entry.min_sequence_number = entry.min_sequence_number.min(*seq);
            }
            if let Some(Some(Value::Int(v))) = field_name
                .as_deref()
                .and_then(|name| manifest_entry.data_file().partition().get(name))
            {
                bounds = Some(match bounds {
                    None => (*v, *v),
                    Some((lo, hi)) => (lo.min(*v), hi.max(*v)),
                });
            }
            writer.append_ser(manifest_entry)?;
        }
        entry.partitions = field_name.map(|_| {
            vec![FieldSummary {
                contains_null: false,
                contains_nan: None,
                lower_bound: bounds.map(|b| Value::Int(b.0)),
                upper_bound: bounds.map(|b| Value::Int(b.1)),
            }]
        });
        let bytes = writer.into_inner()?;
        entry.manifest_length = bytes.len() as i64;
        self.store
            .put(&super::warehouse::key(&location), bytes.into())
            .await?;
        self.written.push(entry);
        Ok(())
    }
}

async fn write_manifest_list(
    store: &Arc<dyn ObjectStore>,
    location: &str,
    entries: &[ManifestListEntry],
    snapshot_id: i64,
    parent: Option<i64>,
    sequence_number: i64,
) -> Result<()> {
    let mut writer = AvroWriter::new(manifest_list_schema_v2(), Vec::new());
    writer.add_user_metadata("format-version".to_string(), "2")?;
    writer.add_user_metadata("snapshot-id".to_string(), snapshot_id.to_string())?;
    writer.add_user_metadata(
        "parent-snapshot-id".to_string(),
        parent.map_or("null".to_string(), |p| p.to_string()),
    )?;
    writer.add_user_metadata("sequence-number".to_string(), sequence_number.to_string())?;
    for entry in entries {
        writer.append_ser(entry.clone())?;
    }
    let bytes = writer.into_inner()?;
    store
        .put(&super::warehouse::key(location), bytes.into())
        .await?;
    Ok(())
}
