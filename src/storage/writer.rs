//! `TableWriter`: the only way to change our tables. It holds the single-writer lock and
//! serialises commits inside the process, so every write is one commit on a known parent.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};

use arrow::array::{BooleanArray, RecordBatch, StringArray, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use tokio::sync::Mutex;

use super::catalog::Storage;
use super::commit::{commit, Change, CommitOutcome};
use super::error::{Error, Result};
use super::files::{
    conform, discard, partition_range, partition_value, read_data_file, split_by_partition,
    time_column, write_data_files, write_partition_file,
};
use super::lock::WriterLock;
use super::observe::{CommitObserver, Committed, Content};
use super::schema::TableKind;
use super::snapshot::{Listing, LiveFile, TimeRange};

/// Handle for writing; cheap to clone, all clones share the lock and the commit queue.
#[derive(Clone)]
pub struct TableWriter {
    pub(super) storage: Storage,
    /// Held for the life of the writer; dropped (released) with the last clone, and checked
    /// before every commit.
    lock: Arc<WriterLock>,
    /// One commit at a time within the process: each builds on the snapshot the previous left.
    pub(super) commit_queue: Arc<Mutex<()>>,
    /// Told of every commit (shared by all clones).
    observer: Arc<RwLock<Option<Arc<dyn CommitObserver>>>>,
}

pub use super::observe::Properties;

impl TableWriter {
    pub fn new(storage: Storage, lock: WriterLock) -> TableWriter {
        TableWriter {
            storage,
            lock: Arc::new(lock),
            commit_queue: Arc::new(Mutex::new(())),
            observer: Arc::new(RwLock::new(None)),
        }
    }

    /// `None` when this process is the writer; else who is (a read replica's view), after
    /// trying once to take the lock.
    pub async fn builder_elsewhere(&self) -> Option<String> {
        self.lock.standby_for().await?;
        match self.lock.ensure_held().await {
            Ok(()) => None,
            Err(_) => self.lock.standby_for().await,
        }
    }

    /// Who holds the writer lock when it is not this process (no attempt to take it).
    pub async fn other_builder(&self) -> Option<String> {
        self.lock.standby_for().await
    }

    /// Sets the observer of this writer's commits, replacing any earlier one (a restarted
    /// server in the same process brings a new cache).
    pub fn observe(&self, observer: Arc<dyn CommitObserver>) {
        *self.observer.write().unwrap_or_else(|p| p.into_inner()) = Some(observer);
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The commit turn for a change of `kind`, refused for a table another pipeline owns.
    pub(super) async fn turn(&self, kind: TableKind) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        if !self.storage.owns(kind) {
            return Err(Error::NotOwned {
                table: self.storage.identifier(kind).to_string(),
            });
        }
        Ok(self.commit_queue.lock().await)
    }

    /// Appends rows as new files.
    pub async fn append(
        &self,
        kind: TableKind,
        batches: &[RecordBatch],
        properties: Properties,
    ) -> Result<CommitOutcome> {
        let _turn = self.turn(kind).await?;
        let table = self.storage.table(kind).await?;
        let listing = Listing::read(&table, kind, None, TimeRange::ALL).await?;
        let store = self.storage.store();
        let add = write_data_files(&store, &table, kind, batches).await?;
        let change = Change {
            add,
            properties,
            ..Change::default()
        };
        self.commit_and_notify(kind, &table, &listing, change, Content::Append(batches))
            .await
    }

    /// Starts an append built piece by piece ([`Staged`]), so that memory stays bounded
    /// however many rows arrive.
    pub async fn stage(&self, kind: TableKind) -> Result<Staged> {
        drop(self.turn(kind).await?);
        Ok(Staged {
            kind,
            table: self.storage.table(kind).await?,
            files: Vec::new(),
            rows: 0,
            kept: Some(Vec::new()),
        })
    }

    /// Writes `batches` into files of `staged`; nothing is visible until it is committed.
    pub async fn stage_rows(&self, staged: &mut Staged, batches: &[RecordBatch]) -> Result<()> {
        let files =
            write_data_files(&self.storage.store(), &staged.table, staged.kind, batches).await?;
        staged.files.extend(files);
        staged.rows += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
        match &mut staged.kept {
            Some(kept) if staged.rows <= KEEP_STAGED_ROWS => kept.extend_from_slice(batches),
            _ => staged.kept = None,
        }
        Ok(())
    }

    /// Appends every staged file in one commit.
    pub async fn commit_staged(&self, staged: Staged) -> Result<CommitOutcome> {
        let kind = staged.kind;
        let _turn = self.turn(kind).await?;
        let loaded = async {
            let table = self.storage.table(kind).await?;
            let listing = Listing::read(&table, kind, None, TimeRange::ALL).await?;
            Ok::<_, Error>((table, listing))
        }
        .await;
        let (table, listing) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                discard(&self.storage.store(), &staged.files).await;
                return Err(e);
            }
        };
        let content = match &staged.kept {
            Some(rows) => Content::Append(rows),
            None => Content::Changed,
        };
        let change = Change {
            add: staged.files.clone(),
            ..Change::default()
        };
        self.commit_and_notify(kind, &table, &listing, change, content)
            .await
    }

    /// Deletes the files of an append that will not be committed.
    pub async fn discard_staged(&self, staged: Staged) {
        discard(&self.storage.store(), &staged.files).await;
    }

    /// Inserts or replaces rows by key `(exchange, symbol, window_start)`.
    ///
    /// Only the files that hold one of the given keys are rewritten (copy-on-write): their
    /// other rows and the new rows of the same partition become one new sorted file, and the
    /// old files are removed in the same commit.
    pub async fn upsert(
        &self,
        kind: TableKind,
        batches: &[RecordBatch],
        properties: Properties,
    ) -> Result<CommitOutcome> {
        self.upsert_removing(kind, batches, HashSet::new(), properties)
            .await
    }

    /// As [`TableWriter::upsert`], and in the same commit deletes the rows of the keys in
    /// `remove` (bars whose window lost all its trades).
    pub async fn upsert_removing(
        &self,
        kind: TableKind,
        batches: &[RecordBatch],
        remove: HashSet<BarKey>,
        properties: Properties,
    ) -> Result<CommitOutcome> {
        let TableKind::Bars(_) = kind else {
            return Err(Error::InvalidData {
                table: kind.name(),
                reason: "upsert is defined for bar tables only".to_string(),
            });
        };
        let rows = conform(kind, batches)?;
        let _turn = self.turn(kind).await?;
        let table = self.storage.table(kind).await?;
        let listing = Listing::read(&table, kind, None, TimeRange::ALL).await?;
        let store = self.storage.store();
        let schema = kind.arrow_schema()?;

        let content = if remove.is_empty() {
            Content::Upsert(&rows)
        } else {
            Content::Changed
        };
        let mut work: BTreeMap<i32, (Vec<u32>, HashSet<BarKey>)> = BTreeMap::new();
        for (partition, indices) in split_by_partition(kind, &rows)? {
            work.entry(partition).or_default().0 = indices;
        }
        let transform = kind.partition_transform();
        for key in remove {
            work.entry(partition_value(&transform, key.2))
                .or_default()
                .1
                .insert(key);
        }
        let mut change = Change {
            properties,
            ..Change::default()
        };
        for (partition, (indices, removed)) in work {
            let new_rows = take_record_batch(&rows, &UInt32Array::from(indices))?;
            if repeats_a_key(&new_rows)? {
                discard(&store, &change.add).await;
                return Err(Error::InvalidData {
                    table: kind.name(),
                    reason: "the rows to upsert repeat a key".to_string(),
                });
            }
            let (lo, hi) = key_time_bounds(&new_rows, &removed)?;
            let stored: Vec<&LiveFile> = listing
                .files
                .iter()
                .filter(|f| {
                    f.partition(kind) == Some(partition)
                        && f.may_overlap(kind, &TimeRange::new(Some(lo), Some(hi + 1)))
                })
                .collect();
            // The keys are only needed to find the stored rows replaced, and a first attach
            // has none: its chunks skip a set of every bar's key.
            let keys = match stored.is_empty() {
                true => HashSet::new(),
                false => {
                    let mut keys = bar_keys(&new_rows)?;
                    keys.extend(removed);
                    keys
                }
            };
            let mut merged = vec![new_rows];
            for file in stored {
                let old = read_data_file(&store, kind, file.path()).await?;
                if old.is_empty() {
                    continue;
                }
                let old = concat_batches(&schema, &old)?;
                let keep = not_in_keys(&old, &keys)?;
                if keep.true_count() == old.num_rows() {
                    continue;
                }
                merged.push(filter_record_batch(&old, &keep)?);
                change.remove.insert(file.path().to_string());
            }
            let part = concat_batches(&schema, &merged)?;
            if part.num_rows() == 0 {
                continue; // every row of the rewritten files was deleted
            }
            match write_partition_file(&store, &table, kind, partition, &part).await {
                Ok(file) => change.add.push(file),
                Err(e) => {
                    discard(&store, &change.add).await;
                    return Err(e);
                }
            }
        }
        self.commit_and_notify(kind, &table, &listing, change, content)
            .await
    }

    /// Replaces whole partitions: every live file of `partitions` is removed and `batches`
    /// (whose rows must all fall inside those partitions) become their new content. With no
    /// batches, the partitions are dropped.
    pub async fn replace_partitions(
        &self,
        kind: TableKind,
        partitions: &[i32],
        batches: &[RecordBatch],
        properties: Properties,
    ) -> Result<CommitOutcome> {
        let wanted: HashSet<i32> = partitions.iter().copied().collect();
        let rows = conform(kind, batches)?;
        if let Some(stray) = split_by_partition(kind, &rows)?
            .keys()
            .find(|p| !wanted.contains(p))
        {
            let (start, _) = partition_range(&kind.partition_transform(), *stray);
            return Err(Error::InvalidData {
                table: kind.name(),
                reason: format!(
                    "rows in partition {stray} (starting {}) are outside the partitions being replaced",
                    chrono::DateTime::from_timestamp_micros(start).unwrap_or_default()
                ),
            });
        }
        let _turn = self.turn(kind).await?;
        let table = self.storage.table(kind).await?;
        let listing = Listing::read(&table, kind, None, TimeRange::ALL).await?;
        let remove = listing
            .files
            .iter()
            .filter(|f| f.partition(kind).is_some_and(|p| wanted.contains(&p)))
            .map(|f| f.path().to_string())
            .collect();
        let add = write_data_files(
            &self.storage.store(),
            &table,
            kind,
            std::slice::from_ref(&rows),
        )
        .await?;
        let change = Change {
            add,
            remove,
            properties,
            ..Change::default()
        };
        let content = Content::Replace {
            partitions,
            rows: &rows,
        };
        self.commit_and_notify(kind, &table, &listing, change, content)
            .await
    }

    /// Sets table properties without touching data (no new snapshot).
    pub async fn set_properties(&self, kind: TableKind, properties: Properties) -> Result<()> {
        let _turn = self.turn(kind).await?;
        let table = self.storage.table(kind).await?;
        let listing = Listing::read(&table, kind, None, TimeRange::ALL).await?;
        let change = Change {
            properties,
            ..Change::default()
        };
        self.commit_and_notify(kind, &table, &listing, change, Content::None)
            .await?;
        Ok(())
    }

    /// Rewrites the files of each partition listed in `partitions` into one sorted file
    /// without changing a row (compaction). Rows that row-level deletes of other engines
    /// removed (trades only) are left out, so the new file needs none. Partitions with a single
    /// file and no deletes are left alone.
    pub async fn compact(&self, kind: TableKind, partitions: &[i32]) -> Result<CommitOutcome> {
        let _turn = self.turn(kind).await?;
        let table = self.storage.table(kind).await?;
        let listing = Listing::read(&table, kind, None, TimeRange::ALL).await?;
        let store = self.storage.store();
        let schema = kind.arrow_schema()?;
        let mut by_partition: BTreeMap<i32, Vec<&LiveFile>> = BTreeMap::new();
        for file in &listing.files {
            if let Some(p) = file.partition(kind).filter(|p| partitions.contains(p)) {
                by_partition.entry(p).or_default().push(file);
            }
        }
        let mut change = Change {
            rewrite_only: true,
            ..Change::default()
        };
        let worth_it = |files: &Vec<&LiveFile>| {
            files.len() > 1
                || files
                    .iter()
                    .any(|f| f.deleted.is_some() || !f.equality.is_empty())
        };
        for (partition, files) in by_partition.into_iter().filter(|(_, f)| worth_it(f)) {
            let mut batches = Vec::new();
            for file in &files {
                let rows = read_data_file(&store, kind, file.path()).await?;
                batches.extend(super::read::without_row_deletes(file, rows)?);
            }
            let rows = concat_batches(&schema, &batches)?;
            change
                .add
                .push(write_partition_file(&store, &table, kind, partition, &rows).await?);
            change
                .remove
                .extend(files.iter().map(|f| f.path().to_string()));
        }
        self.commit_and_notify(kind, &table, &listing, change, Content::Rewrite)
            .await
    }

    /// Commits `change` and, once it has landed, tells the observer (still holding the turn).
    async fn commit_and_notify(
        &self,
        kind: TableKind,
        table: &iceberg_rust::table::Table,
        listing: &Listing,
        change: Change,
        content: Content<'_>,
    ) -> Result<CommitOutcome> {
        if let Err(e) = self.lock.ensure_held().await {
            crate::metrics::metrics()
                .commits
                .with_label_values(&[kind.name().as_str(), "refused"])
                .inc();
            discard(&self.storage.store(), &change.add).await;
            return Err(e);
        }
        let properties = change.properties.clone();
        let outcome = commit(&self.storage, kind, table, listing, change).await?;
        if outcome.snapshot_id.is_some() {
            self.storage.announce(kind).await;
        }
        let observer = self
            .observer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(observer) = observer {
            observer.committed(&Committed {
                kind,
                before: listing.snapshot_id,
                after: outcome.snapshot_id.or(listing.snapshot_id),
                properties: &properties,
                content,
            });
        }
        Ok(outcome)
    }
}

/// Rows of a staged append kept for the commit observers (the live trades buffer takes them
/// without reading the table back); past this, observers are told the table changed.
const KEEP_STAGED_ROWS: usize = 500_000;

/// An append in progress: files written, not yet committed.
pub struct Staged {
    kind: TableKind,
    table: iceberg_rust::table::Table,
    files: Vec<iceberg_rust::spec::manifest::DataFile>,
    rows: usize,
    kept: Option<Vec<RecordBatch>>,
}

impl Staged {
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// `(exchange, symbol, window_start)`: the key of a bar.
pub type BarKey = (String, String, i64);

fn bar_keys(batch: &RecordBatch) -> Result<HashSet<BarKey>> {
    let kind = TableKind::Bars(crate::timeframe::Timeframe::M1);
    let exchange = string_column(batch, "exchange")?;
    let symbol = string_column(batch, "symbol")?;
    let ts = time_column(kind, batch)?;
    Ok((0..batch.num_rows())
        .map(|i| {
            (
                exchange.value(i).to_string(),
                symbol.value(i).to_string(),
                ts.value(i),
            )
        })
        .collect())
}

/// Whether two rows share a bar key. Bars come from the kernel in key order, which one pass
/// confirms; only other input is hashed.
fn repeats_a_key(batch: &RecordBatch) -> Result<bool> {
    let kind = TableKind::Bars(crate::timeframe::Timeframe::M1);
    let exchange = string_column(batch, "exchange")?;
    let symbol = string_column(batch, "symbol")?;
    let ts = time_column(kind, batch)?;
    let key = |i: usize| (exchange.value(i), symbol.value(i), ts.value(i));
    if (1..batch.num_rows()).all(|i| key(i - 1) < key(i)) {
        return Ok(false);
    }
    let mut seen = HashSet::with_capacity(batch.num_rows());
    Ok(!(0..batch.num_rows()).all(|i| seen.insert(key(i))))
}

/// The first and last bar time among `batch`'s rows and `removed`.
fn key_time_bounds(batch: &RecordBatch, removed: &HashSet<BarKey>) -> Result<(i64, i64)> {
    let ts = time_column(TableKind::Bars(crate::timeframe::Timeframe::M1), batch)?;
    let times = || {
        ts.values()
            .iter()
            .copied()
            .chain(removed.iter().map(|k| k.2))
    };
    let lo = times().min().unwrap_or(i64::MIN);
    let hi = times().max().unwrap_or(i64::MAX);
    Ok((lo, hi))
}

fn not_in_keys(batch: &RecordBatch, keys: &HashSet<BarKey>) -> Result<BooleanArray> {
    let kind = TableKind::Bars(crate::timeframe::Timeframe::M1);
    let exchange = string_column(batch, "exchange")?;
    let symbol = string_column(batch, "symbol")?;
    let ts = time_column(kind, batch)?;
    let mut probe = (String::new(), String::new(), 0);
    Ok((0..batch.num_rows())
        .map(|i| {
            probe.0.clear();
            probe.0.push_str(exchange.value(i));
            probe.1.clear();
            probe.1.push_str(symbol.value(i));
            probe.2 = ts.value(i);
            Some(!keys.contains(&probe))
        })
        .collect())
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::InvalidData {
            table: "bars".to_string(),
            reason: format!("missing string column {name}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMicrosecondArray;
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    fn keys(rows: &[(&str, &str, i64)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("exchange", DataType::Utf8, false),
            Field::new("symbol", DataType::Utf8, false),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(TimestampMicrosecondArray::from_iter_values(
                    rows.iter().map(|r| r.2),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn repeated_keys_are_found_in_key_order_and_out_of_it() {
        let sorted = [("a", "X", 1), ("a", "X", 2), ("a", "Y", 1), ("b", "X", 0)];
        assert!(!repeats_a_key(&keys(&sorted)).unwrap());
        let shuffled = [("b", "X", 0), ("a", "X", 2), ("a", "Y", 1), ("a", "X", 1)];
        assert!(!repeats_a_key(&keys(&shuffled)).unwrap());
        let sorted_repeat = [("a", "X", 1), ("a", "X", 1), ("b", "X", 0)];
        assert!(repeats_a_key(&keys(&sorted_repeat)).unwrap());
        let shuffled_repeat = [("b", "X", 0), ("a", "X", 1), ("b", "X", 0)];
        assert!(repeats_a_key(&keys(&shuffled_repeat)).unwrap());
        assert!(!repeats_a_key(&keys(&[])).unwrap());
    }

    #[test]
    fn time_bounds_cover_the_rows_and_the_keys_removed() {
        let batch = keys(&[("a", "X", 60), ("a", "Y", 0), ("b", "X", 120)]);
        assert_eq!(key_time_bounds(&batch, &HashSet::new()).unwrap(), (0, 120));
        let removed = HashSet::from([("a".to_string(), "X".to_string(), 600)]);
        assert_eq!(key_time_bounds(&batch, &removed).unwrap(), (0, 600));
        let removed_only = key_time_bounds(&keys(&[]), &removed).unwrap();
        assert_eq!(removed_only, (600, 600));
    }
}
