//! Batch builds of the 30m, 1h and 1d tables: whole partitions rebuilt by rolling up the 1m
//! table, and replaced in one commit.
//!
//! A run finds the 1m partitions (days) whose files were added or removed since the 1m
//! snapshot it last consumed (see `changes`), maps them to its own partitions (days, or months
//! for 1d), rolls up the 1m bars of each, and replaces the partitions whose content changed. Only parent windows whose 1m
//! children are all final (before the 1m cutoff) are persisted; stored bars older than what the
//! 1m table still retains are carried over untouched, never recomputed from a partial source;
//! complete, retained parents whose children are all gone are deleted.

use std::collections::{BTreeSet, HashSet};

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampMicrosecondType;

use super::changes::{since, SourceChanges};
use super::children::SharedChildren;
use super::diff::{bar_keys, diff};
use super::state::{prop_i64, Watermark, RETAINED_FROM, SOURCE_SEQUENCE, SOURCE_SNAPSHOT};
use super::{BuildReport, Result};
use crate::bars::rollup;
use crate::storage::files::{partition_range, partition_value};
use crate::storage::read::read_files;
use crate::storage::{Layout, Listing, LiveFile, TableKind, TableWriter, TimeRange};
use crate::timeframe::{Timeframe, DAY_US};

const SOURCE: TableKind = TableKind::Bars(Timeframe::M1);

/// Which partitions to rebuild: those changed since the watermark, or all that overlap a range.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Changed,
    Range(TimeRange),
}

/// Rebuilds the changed partitions of `tf` (30m, 1h or 1d) from the 1m table, a day of 1m
/// bars at a time, committing the partitions done whenever what they hold reaches a
/// sixteenth of `settings.memory_bytes` (only the last commit moves the watermark: a rerun after a
/// kill recomputes the partitions and rewrites none that are already right).
pub async fn build_rollup(
    writer: &TableWriter,
    tf: Timeframe,
    now_us: i64,
    scope: Scope,
    settings: super::BuildSettings,
) -> Result<BuildReport> {
    build_rollup_with(writer, tf, now_us, scope, settings, &SharedChildren::new(1)).await
}

/// As [`build_rollup`], with the 1m reads shared by the rollups run together with it.
pub async fn build_rollup_with(
    writer: &TableWriter,
    tf: Timeframe,
    now_us: i64,
    scope: Scope,
    settings: super::BuildSettings,
    shared: &SharedChildren,
) -> Result<BuildReport> {
    let storage = writer.storage();
    let kind = TableKind::Bars(tf);
    let table = storage.table(kind).await?;
    let wm = Watermark::read(
        &table.metadata().properties,
        SOURCE_SNAPSHOT,
        SOURCE_SEQUENCE,
    );
    let mut report = BuildReport::new(tf, table.metadata().current_snapshot_id);

    let source = storage.table(SOURCE).await?;
    let source_props = &source.metadata().properties;
    let Some(source_cutoff) = prop_i64(source_props, super::state::CUTOFF) else {
        return Ok(report); // the 1m table has not persisted anything yet
    };
    let retained_from = prop_i64(source_props, RETAINED_FROM).unwrap_or(i64::MIN);
    let Some(snapshot) = source
        .metadata()
        .current_snapshot(None)
        .map_err(crate::storage::Error::from)?
    else {
        return Ok(report);
    };
    // The watermark's cutoff is the 1m cutoff this table was built against: parents that end
    // between it and the current one have become complete, even with no new 1m files.
    let next = Watermark {
        snapshot: Some(*snapshot.snapshot_id()),
        sequence: *snapshot.sequence_number(),
        cutoff: Some(source_cutoff),
    };
    report.source_snapshot = next.snapshot;
    if matches!(scope, Scope::Changed) && next == wm {
        return Ok(report);
    }

    let listing = Listing::read(&source, SOURCE, None, TimeRange::ALL).await?;
    let day = SOURCE.partition_transform();
    let target = kind.partition_transform();
    let mut partitions: BTreeSet<i32> = BTreeSet::new();
    if let (Scope::Changed, Some(prev)) = (scope, wm.cutoff) {
        if prev < source_cutoff {
            let first = partition_value(&target, prev.saturating_sub(tf.micros()));
            let last = partition_value(&target, source_cutoff - 1);
            partitions.extend(first..=last);
        }
    }
    // The 1m files added or removed since the consumed snapshot name the changed days.
    let changed: Vec<LiveFile> = match (scope, wm.snapshot) {
        (Scope::Range(range), _) => listing
            .files
            .iter()
            .filter(|f| f.may_overlap(SOURCE, &range))
            .cloned()
            .collect(),
        (Scope::Changed, Some(consumed)) if Some(consumed) != next.snapshot => {
            match since(&source, SOURCE, Layout::Ours, consumed).await? {
                SourceChanges::Known(c) => c.added.into_iter().chain(c.removed).collect(),
                SourceChanges::Unknown(reason) => {
                    tracing::warn!(timeframe = %tf, %reason, "rebuilding every partition");
                    listing.files.clone()
                }
            }
        }
        (Scope::Changed, Some(_)) => Vec::new(),
        (Scope::Changed, None) => listing.files.clone(),
    };
    for f in &changed {
        let first_last = match (f.partition(SOURCE), f.time_bounds()) {
            (Some(p), _) => Some((p, p)),
            (None, Some((lo, hi))) => Some((partition_value(&day, lo), partition_value(&day, hi))),
            (None, None) => None,
        };
        let Some((first, last)) = first_last else {
            // Neither a partition nor statistics: the file could hold any day.
            tracing::warn!(file = %f.path(), "a changed 1m file has no partition or bounds; rebuilding every partition");
            for g in &listing.files {
                if let Some(p) = g.partition(SOURCE) {
                    partitions.insert(partition_value(&target, partition_range(&day, p).0));
                }
            }
            continue;
        };
        for p in first..=last {
            partitions.insert(partition_value(&target, partition_range(&day, p).0));
        }
    }

    let mut replace: Vec<i32> = Vec::new();
    let mut rows: Vec<RecordBatch> = Vec::new();
    // Where the time goes, for the debug log (reading children, rolling up, reading and
    // diffing the stored parents, committing).
    let (mut read_ms, mut rollup_ms, mut stored_ms, mut commit_ms) = (0u128, 0u128, 0u128, 0u128);
    let started = std::time::Instant::now();
    // Bytes of changed partitions not yet committed, and bars already committed.
    let (mut held, mut committed) = (0u64, 0usize);
    for p in partitions {
        let (start, end) = partition_range(&target, p);
        // A day of children at a time: every timeframe rolled up here divides a day, so no
        // parent spans two of them.
        let mut parents = Vec::new();
        let mut day = start;
        while day < end.min(source_cutoff) {
            let next = (day.div_euclid(DAY_US) + 1) * DAY_US;
            let window = TimeRange::new(Some(day), Some(next.min(end).min(source_cutoff)));
            day = next;
            let children: Vec<&LiveFile> = listing
                .files
                .iter()
                .filter(|f| f.may_overlap(SOURCE, &window))
                .collect();
            let t = std::time::Instant::now();
            let lower = shared.read(storage, SOURCE, &children, window).await?;
            read_ms += t.elapsed().as_millis();
            let t = std::time::Instant::now();
            report.trades_read += lower.iter().map(|b| b.num_rows()).sum::<usize>();
            // On the blocking pool: a day of children is tens of milliseconds of CPU, which
            // would hold a runtime worker (serving, other jobs), and rollups run together get
            // a core each.
            let rolled =
                tokio::task::spawn_blocking(move || rollup(&lower, tf.micros(), 0, now_us))
                    .await
                    .map_err(|e| crate::bars::Error::Input(format!("rollup panicked: {e}")))??;
            // Persist only parents whose children are all final and all still retained.
            let keep = parents_to_keep(&rolled, tf, source_cutoff, retained_from);
            parents.push(filter_record_batch(&rolled, &keep)?);
            rollup_ms += t.elapsed().as_millis();
        }
        let t = std::time::Instant::now();
        let rolled = arrow::compute::concat_batches(&kind.arrow_schema()?, &parents)?;
        drop(parents);

        let table_listing =
            Listing::read(&table, kind, None, TimeRange::new(Some(start), Some(end))).await?;
        let own: Vec<&LiveFile> = table_listing
            .files
            .iter()
            .filter(|f| f.partition(kind) == Some(p))
            .collect();
        let existing = read_files(storage, kind, &own, TimeRange::ALL).await?;
        // Complete, retained parents the rollup no longer produces have no children left.
        let produced: HashSet<(&str, &str, i64)> = bar_keys(&rolled).collect();
        let orphaned = |k: &(&str, &str, i64)| {
            k.2 + tf.micros() <= source_cutoff && k.2 >= retained_from && !produced.contains(k)
        };
        let gone: usize = existing
            .iter()
            .map(|b| bar_keys(b).filter(|k| orphaned(k)).count())
            .sum();
        let existing = if gone > 0 {
            existing
                .iter()
                .map(|b| {
                    let keep: BooleanArray = bar_keys(b).map(|k| Some(!orphaned(&k))).collect();
                    filter_record_batch(b, &keep)
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            existing
        };
        let d = diff(&rolled, &existing, now_us, None, true)?;
        if d.changed() > 0 || gone > 0 {
            report.absorb(&d);
            report.deleted += gone;
            replace.push(p);
            held += d.rows.get_array_memory_size() as u64;
            rows.push(d.rows);
        } else {
            report.unchanged += d.unchanged;
        }
        stored_ms += t.elapsed().as_millis();
        if held > settings.memory_bytes / 16 {
            let t = std::time::Instant::now();
            let written = report.new + report.revised + report.deleted - committed;
            let outcome = writer
                .replace_partitions(kind, &replace, &rows, Default::default())
                .await?;
            report.commit(&outcome, written);
            committed += written;
            (replace, rows, held) = (Vec::new(), Vec::new(), 0);
            commit_ms += t.elapsed().as_millis();
        }
    }

    let props = match scope {
        Scope::Changed => next.to_props(SOURCE_SNAPSHOT, SOURCE_SEQUENCE),
        Scope::Range(_) => Default::default(),
    };
    let t = std::time::Instant::now();
    if !replace.is_empty() {
        let outcome = writer
            .replace_partitions(kind, &replace, &rows, props)
            .await?;
        let written = report.new + report.revised + report.deleted - committed;
        report.commit(&outcome, written);
    } else if !props.is_empty() {
        writer.set_properties(kind, props).await?;
    }
    commit_ms += t.elapsed().as_millis();
    tracing::debug!(
        timeframe = %tf,
        total_ms = started.elapsed().as_millis() as u64,
        read_ms = read_ms as u64,
        rollup_ms = rollup_ms as u64,
        stored_ms = stored_ms as u64,
        commit_ms = commit_ms as u64,
        children = report.trades_read,
        "rolled up"
    );
    Ok(report)
}

fn parents_to_keep(
    rolled: &RecordBatch,
    tf: Timeframe,
    cutoff: i64,
    retained_from: i64,
) -> BooleanArray {
    let starts = rolled
        .column_by_name("window_start")
        .expect("bar column")
        .as_primitive::<TimestampMicrosecondType>();
    starts
        .values()
        .iter()
        .map(|s| Some(*s + tf.micros() <= cutoff && *s >= retained_from))
        .collect()
}
