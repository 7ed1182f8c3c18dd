//! The live data files of a snapshot, with partition and time-range pruning.
//!
//! Pruning happens twice: manifests whose partition summary cannot overlap the range are not
//! read at all, then files whose time-column bounds miss the range are dropped. Both use our
//! own partition arithmetic, so `timestamptz` bounds are compared as plain UTC microseconds.
//!
//! Row-level deletes are applied to the trades, whoever owns the table (another pipeline's
//! `[source]`, or our `market.trades`, which other engines may write to): each live data file
//! carries the positions deleted in it by position delete files (Spark, DuckDB) and the
//! equality delete files (Flink, Spark upserts) that apply to it (`equality`), at the listed
//! snapshot. Delete files in our bar tables (which only our builder writes) are refused by
//! name.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg_rust::spec::manifest::{Content as FileContent, FileFormat, ManifestEntry, Status};
use iceberg_rust::spec::manifest_list::{Content, ManifestListEntry};
use iceberg_rust::spec::table_metadata::TableMetadata;
use iceberg_rust::spec::values::Value;
use iceberg_rust::table::Table;

use super::equality::{EqualityDelete, Scope};
use super::error::{Error, Result};
use super::files::partition_range;
use super::manifest::read_entries;
use super::schema::TableKind;

/// Half-open time range `[start, end)` in UTC microseconds; `None` is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TimeRange {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

impl TimeRange {
    pub const ALL: TimeRange = TimeRange {
        start: None,
        end: None,
    };

    pub fn new(start: Option<i64>, end: Option<i64>) -> TimeRange {
        TimeRange { start, end }
    }

    /// Whether the closed interval `[lo, hi]` can hold a value inside this range.
    pub fn overlaps_closed(&self, lo: i64, hi: i64) -> bool {
        self.start.is_none_or(|s| hi >= s) && self.end.is_none_or(|e| lo < e)
    }

    /// Whether the closed interval `[lo, hi]` lies wholly inside this range.
    pub fn holds(&self, lo: i64, hi: i64) -> bool {
        self.start.is_none_or(|s| lo >= s) && self.end.is_none_or(|e| hi < e)
    }
}

/// A data file that is live in the listed snapshot.
#[derive(Debug, Clone)]
pub struct LiveFile {
    pub manifest_path: String,
    /// The manifest entry with its inherited sequence number filled in.
    pub entry: ManifestEntry,
    /// Field id of the table's time column, whose bounds prune the file.
    pub time_field: i32,
    /// Whether the partition tuple is ours (`<time column>_day` or `_month`) and prunes too;
    /// a table another engine partitions is pruned by column bounds alone.
    pub own_partitions: bool,
    /// Row positions deleted from this file by position delete files, sorted; `None` when
    /// none apply.
    pub deleted: Option<Arc<Vec<u64>>>,
    /// Equality delete files that apply to this file's rows.
    pub equality: Vec<Arc<super::equality::EqualityDelete>>,
    /// Paths of the position delete files that remove rows of this file: a commit that
    /// removes the file leaves them unneeded (see [`Listing::deletes`]).
    pub position_deletes: Vec<Arc<str>>,
    /// The partition spec the file was written with.
    pub spec_id: i32,
}

impl LiveFile {
    pub fn path(&self) -> &str {
        self.entry.data_file().file_path()
    }

    pub fn record_count(&self) -> i64 {
        *self.entry.data_file().record_count()
    }

    pub fn size(&self) -> i64 {
        *self.entry.data_file().file_size_in_bytes()
    }

    /// Partition value (day or month number) of the file.
    pub fn partition(&self, kind: TableKind) -> Option<i32> {
        match self
            .entry
            .data_file()
            .partition()
            .get(&kind.partition_field_name())
        {
            Some(Some(Value::Int(v))) => Some(*v),
            _ => None,
        }
    }

    /// Closed `[min, max]` of the table's time column in this file, from its statistics.
    pub fn time_bounds(&self) -> Option<(i64, i64)> {
        let id = self.time_field;
        let lo = self.entry.data_file().lower_bounds().as_ref()?.get(&id)?;
        let hi = self.entry.data_file().upper_bounds().as_ref()?.get(&id)?;
        match (lo, hi) {
            (Value::TimestampTZ(lo), Value::TimestampTZ(hi))
            | (Value::Timestamp(lo), Value::Timestamp(hi)) => Some((*lo, *hi)),
            _ => None,
        }
    }

    /// Whether the file's statistics put all its rows inside one of `ranges` (false when they
    /// are missing): its rows then need no cut to them.
    pub fn inside_one_of(&self, ranges: &[TimeRange]) -> bool {
        self.time_bounds()
            .is_some_and(|(lo, hi)| ranges.iter().any(|r| r.holds(lo, hi)))
    }

    /// Whether the file may hold rows in `range` (true when statistics are missing).
    pub fn may_overlap(&self, kind: TableKind, range: &TimeRange) -> bool {
        if let Some(p) = self.partition(kind).filter(|_| self.own_partitions) {
            let (lo, hi) = partition_range(&kind.partition_transform(), p);
            if !range.overlaps_closed(lo, hi - 1) {
                return false;
            }
        }
        match self.time_bounds() {
            Some((lo, hi)) => range.overlaps_closed(lo, hi),
            None => true,
        }
    }
}

/// How a table's files are pruned: ours by our partitions and field ids, another pipeline's
/// by the bounds of its time column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Ours,
    Source { time_field: i32 },
}

impl Layout {
    /// The time field and whether partitions prune, for files of this layout.
    pub fn of_files(self, kind: TableKind) -> (i32, bool) {
        match self {
            Layout::Ours => (kind.field_id(kind.time_column()), true),
            Layout::Source { time_field } => (time_field, false),
        }
    }
}

/// Manifests and live files of one snapshot of one table.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub snapshot_id: Option<i64>,
    pub manifests: Vec<ManifestListEntry>,
    pub files: Vec<LiveFile>,
    /// Live row-level delete files, with the manifest that lists each.
    pub deletes: Vec<(String, ManifestEntry)>,
    /// Whether every live file of the snapshot is listed (no time range pruned any): only
    /// then can a commit tell which delete files no live data file needs.
    pub complete: bool,
}

impl Listing {
    /// Lists `snapshot_id` (current when `None`) of one of our tables, reading only manifests
    /// that can hold `range`.
    pub async fn read(
        table: &Table,
        kind: TableKind,
        snapshot_id: Option<i64>,
        range: TimeRange,
    ) -> Result<Listing> {
        let time_field = kind.field_id(kind.time_column());
        // A table of another pipeline has its own columns: pruning it by our field ids would
        // drop files silently.
        let schema = table.metadata().current_schema(None)?;
        if schema
            .get(time_field as usize)
            .is_none_or(|f| f.name != kind.time_column())
        {
            return Err(Error::Unsupported {
                table: kind.name(),
                file: table.metadata().location.clone(),
                feature: format!(
                    "a schema whose field {time_field} is not '{}' (read it as a [source])",
                    kind.time_column()
                ),
            });
        }
        Self::read_with(table, kind, time_field, true, snapshot_id, range).await
    }

    /// Lists a table laid out as `layout` says (see [`crate::storage::Storage::layout`]): a
    /// table another pipeline owns is pruned by the bounds of its time column only.
    pub async fn read_laid_out(
        table: &Table,
        kind: TableKind,
        layout: Layout,
        snapshot_id: Option<i64>,
        range: TimeRange,
    ) -> Result<Listing> {
        match layout {
            Layout::Ours => Self::read(table, kind, snapshot_id, range).await,
            Layout::Source { time_field } => {
                Self::read_with(table, kind, time_field, false, snapshot_id, range).await
            }
        }
    }

    async fn read_with(
        table: &Table,
        kind: TableKind,
        time_field: i32,
        own_partitions: bool,
        snapshot_id: Option<i64>,
        range: TimeRange,
    ) -> Result<Listing> {
        let metadata = table.metadata();
        let snapshot_id = match snapshot_id {
            Some(id) => Some(id),
            None => metadata.current_snapshot(None)?.map(|s| *s.snapshot_id()),
        };
        let Some(id) = snapshot_id else {
            return Ok(Listing::default());
        };
        if !metadata.snapshots.contains_key(&id) {
            return Err(Error::Catalog(format!(
                "snapshot {id} is not in the history of {}",
                kind.name()
            )));
        }
        let manifests =
            super::manifest::read_manifest_list(&table.object_store(), &kind.name(), metadata, id)
                .await?;
        let wanted: Vec<ManifestListEntry> = manifests
            .iter()
            .filter(|m| !own_partitions || manifest_may_overlap(m, kind, &range))
            .cloned()
            .collect();
        let mut files = Vec::new();
        let mut deletes = Vec::new();
        let mut equality = Vec::new();
        let mut live_deletes = Vec::new();
        let store = table.object_store();
        let specs: HashMap<&str, i32> = wanted
            .iter()
            .map(|m| (m.manifest_path.as_str(), m.partition_spec_id))
            .collect();
        for (manifest_path, entry) in read_entries(&store, &kind.name(), metadata, &wanted).await? {
            if *entry.status() == Status::Deleted {
                continue;
            }
            let spec_id = specs
                .get(manifest_path.as_str())
                .copied()
                .unwrap_or_default();
            let row_deletes = takes_row_deletes(kind, own_partitions);
            match entry.data_file().content() {
                FileContent::PositionDeletes if row_deletes => {
                    live_deletes.push((manifest_path, entry.clone()));
                    deletes.push(entry);
                    continue;
                }
                FileContent::EqualityDeletes if row_deletes => {
                    live_deletes.push((manifest_path, entry.clone()));
                    equality.push((spec_id, entry));
                    continue;
                }
                _ => {}
            }
            refuse_unreadable(&kind.name(), &entry)?;
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
            if file.may_overlap(kind, &range) {
                files.push(file);
            }
        }
        if !deletes.is_empty() {
            apply_position_deletes(&store, &kind.name(), &deletes, &mut files).await?;
        }
        if !equality.is_empty() {
            apply_equality_deletes(table, &kind.name(), &equality, &mut files).await?;
        }
        Ok(Listing {
            snapshot_id,
            manifests,
            files,
            deletes: live_deletes,
            complete: range == TimeRange::ALL,
        })
    }

    /// Live files grouped by the manifest that lists them.
    pub fn by_manifest(&self) -> HashMap<&str, Vec<&LiveFile>> {
        let mut map: HashMap<&str, Vec<&LiveFile>> = HashMap::new();
        for file in &self.files {
            map.entry(file.manifest_path.as_str())
                .or_default()
                .push(file);
        }
        map
    }

    pub fn total_records(&self) -> i64 {
        self.files.iter().map(LiveFile::record_count).sum()
    }
}

/// Gives each data file the positions that `deletes` (live position delete files) remove from
/// it: a delete applies to a data file of the same or an older data sequence number.
async fn apply_position_deletes(
    store: &Arc<dyn object_store::ObjectStore>,
    table: &str,
    deletes: &[ManifestEntry],
    files: &mut [LiveFile],
) -> Result<()> {
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, file) in files.iter().enumerate() {
        index.insert(super::warehouse::key(file.path()).to_string(), i);
    }
    let mut positions: Vec<Vec<u64>> = vec![Vec::new(); files.len()];
    for delete in deletes {
        let path = delete.data_file().file_path();
        if *delete.data_file().file_format() != FileFormat::Parquet {
            return Err(Error::Unsupported {
                table: table.to_string(),
                file: path.clone(),
                feature: format!(
                    "position delete file format {:?}",
                    delete.data_file().file_format()
                ),
            });
        }
        let delete_seq = delete.sequence_number().unwrap_or(0);
        let shared: Arc<str> = Arc::from(path.as_str());
        for (data_path, pos) in super::files::read_position_deletes(store, table, path).await? {
            let Some(&i) = index.get(super::warehouse::key(&data_path).as_ref()) else {
                continue; // a file outside the listed range, or no longer live
            };
            if delete_seq >= files[i].entry.sequence_number().unwrap_or(0) {
                positions[i].push(pos);
                if files[i]
                    .position_deletes
                    .last()
                    .is_none_or(|p| *p != shared)
                {
                    files[i].position_deletes.push(Arc::clone(&shared));
                }
            }
        }
    }
    for (file, mut deleted) in files.iter_mut().zip(positions) {
        if !deleted.is_empty() {
            deleted.sort_unstable();
            deleted.dedup();
            file.deleted = Some(Arc::new(deleted));
        }
    }
    Ok(())
}

/// Where the equality delete `entry` (of spec `spec_id`) applies.
pub fn equality_scope(metadata: &TableMetadata, spec_id: i32, entry: &ManifestEntry) -> Scope {
    let unpartitioned = metadata
        .partition_specs
        .get(&spec_id)
        .is_none_or(|s| s.fields().is_empty());
    Scope {
        sequence: entry.sequence_number().unwrap_or(0),
        partition: (!unpartitioned).then(|| (spec_id, entry.data_file().partition().clone())),
    }
}

/// Gives each data file the equality delete files that apply to it.
async fn apply_equality_deletes(
    table: &Table,
    name: &str,
    deletes: &[(i32, ManifestEntry)],
    files: &mut [LiveFile],
) -> Result<()> {
    let metadata = table.metadata();
    let fields: arrow::datatypes::Fields = metadata.current_schema(None)?.fields().try_into()?;
    let schema = Arc::new(arrow::datatypes::Schema::new(fields));
    let store = table.object_store();
    for (spec_id, entry) in deletes {
        let scope = equality_scope(metadata, *spec_id, entry);
        let applies: Vec<usize> = files
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                scope.applies_to(
                    f.entry.sequence_number().unwrap_or(0),
                    f.spec_id,
                    f.entry.data_file().partition(),
                )
            })
            .map(|(i, _)| i)
            .collect();
        if applies.is_empty() {
            continue;
        }
        let delete = Arc::new(EqualityDelete::load(&store, name, &schema, entry, scope).await?);
        for i in applies {
            files[i].equality.push(Arc::clone(&delete));
        }
    }
    Ok(())
}

/// Whether row-level delete files of a table are applied: the trades (ours, which other
/// engines write too, or a `[source]`), never our bar tables, which only our builder writes.
pub fn takes_row_deletes(kind: TableKind, own_partitions: bool) -> bool {
    !own_partitions || kind == TableKind::Trades
}

/// Refuses a live file whose rows this server cannot read correctly: skipping it, or reading
/// a delete file's rows as trades, would be silent wrong data.
fn refuse_unreadable(table: &str, entry: &ManifestEntry) -> Result<()> {
    let file = entry.data_file();
    let feature = match file.content() {
        FileContent::Data => match file.file_format() {
            FileFormat::Parquet => return Ok(()),
            other => format!("data file format {other:?}"),
        },
        FileContent::PositionDeletes => {
            "a position delete file in a bar table (only our builder writes them)".to_string()
        }
        FileContent::EqualityDeletes => {
            "an equality delete file in a bar table (only our builder writes them)".to_string()
        }
    };
    Err(Error::Unsupported {
        table: table.to_string(),
        file: file.file_path().clone(),
        feature,
    })
}

fn manifest_may_overlap(manifest: &ManifestListEntry, kind: TableKind, range: &TimeRange) -> bool {
    if manifest.content != Content::Data || *range == TimeRange::ALL {
        return true;
    }
    let Some(summary) = manifest.partitions.as_ref().and_then(|p| p.first()) else {
        return true;
    };
    match (&summary.lower_bound, &summary.upper_bound) {
        (Some(Value::Int(lo)), Some(Value::Int(hi))) => {
            let transform = kind.partition_transform();
            let start = partition_range(&transform, *lo).0;
            let end = partition_range(&transform, *hi).1;
            range.overlaps_closed(start, end - 1)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_overlap_respects_half_open_end() {
        let r = TimeRange::new(Some(10), Some(20));
        assert!(r.overlaps_closed(19, 30));
        assert!(!r.overlaps_closed(20, 30));
        assert!(r.overlaps_closed(0, 10));
        assert!(!r.overlaps_closed(0, 9));
        assert!(TimeRange::ALL.overlaps_closed(i64::MIN, i64::MIN));
    }
}
