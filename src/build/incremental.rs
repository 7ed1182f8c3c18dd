//! Incremental builds of the 1m and 5m tables from the trades table.
//!
//! One run:
//! 1. reads its watermark (trades snapshot, sequence number, cutoff) from the bar table;
//! 2. takes the trades table's current snapshot and the new cutoff
//!    `C = window_start(now - grace)`: windows starting before `C` have closed their grace;
//! 3. finds what changed in the trades table since the watermark's snapshot (the files each
//!    later snapshot added or removed; compactions change nothing) and from the rows of those
//!    files the dirty keys: `(exchange, symbol, window)` of windows already persisted whose
//!    trades changed (late trades, deletes, corrections). When the changes cannot be known
//!    (the consumed snapshot expired), every persisted window is dirty;
//! 4. recomputes, from all of their current trades, the dirty windows and every window newly
//!    closed, `[previous cutoff, C)`;
//! 5. diffs against the stored bars and upserts only new or changed bars (`revision + 1`),
//!    deleting the bars of dirty windows left without trades, with the new watermark in the
//!    same commit. No change and no new trades: no commit at all.
//!
//! Windows before the trades table's retention horizon are never dirty: dropping old trades
//! must not drop the bars built from them.

use std::collections::{BTreeSet, HashMap, HashSet};

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampMicrosecondType;
use iceberg_rust::table::Table;

use super::changes::{since, SourceChanges};
use super::diff::{bar_keys, diff};
use super::state::{
    prop_i64, Watermark, RETAINED_FROM, TRADES_SEQUENCE, TRADES_SNAPSHOT, TRADES_TABLE_UUID,
};
use super::{coalesce, BuildReport, Result};
use crate::bars::columns::{FxHashSet, Strings};
use crate::storage::read::read_files_in;
use crate::storage::{Layout, Listing, LiveFile, Storage, TableKind, TableWriter, TimeRange};
use crate::timeframe::Timeframe;
use crate::trades::read_trades;

type BarKey = (String, String, i64);

/// Persisted windows whose trades changed since the last build.
pub(super) enum Dirty {
    Keys(FxHashSet<BarKey>),
    /// Every window in `[from, before)`: what changed is unknown.
    All {
        from: i64,
        before: i64,
    },
}

impl Dirty {
    fn contains(&self, key: &(&str, &str, i64)) -> bool {
        match self {
            Dirty::Keys(keys) => {
                !keys.is_empty() && keys.contains(&(key.0.to_string(), key.1.to_string(), key.2))
            }
            Dirty::All { from, before } => *from <= key.2 && key.2 < *before,
        }
    }
}

/// What one timeframe's build covers, planned before any trade is read.
pub(super) struct Plan {
    pub tf: Timeframe,
    /// The bar table's watermark before the build.
    wm: Watermark,
    dirty: Dirty,
    fresh: TimeRange,
    /// First window start not built after this build.
    cutoff: i64,
    /// Windows to recompute, coalesced.
    pub ranges: Vec<(i64, i64)>,
    /// Stored bars of windows in scope that are left without trades are deleted.
    deletes: bool,
    /// Chunks before the last one move the watermark to their end (an incremental build);
    /// a backfill keeps it.
    advances: bool,
    /// Properties of the last chunk's commit (the watermark reached and the trades table's
    /// uuid).
    final_props: HashMap<String, String>,
    next: Watermark,
    pub report: BuildReport,
}

impl Plan {
    fn in_scope(&self, ex: &str, sym: &str, window: i64) -> bool {
        (self.fresh.overlaps_closed(window, window) && window < self.cutoff)
            || self.dirty.contains(&(ex, sym, window))
    }

    /// Whether every window from `lo` to `hi` is in scope, whatever its series: then a batch
    /// of trades in them is taken whole, without a look at each row's keys.
    fn covers(&self, lo: i64, hi: i64) -> bool {
        let fresh = self.fresh.overlaps_closed(lo, lo)
            && self.fresh.overlaps_closed(hi, hi)
            && hi < self.cutoff;
        let dirty = matches!(self.dirty, Dirty::All { from, before } if from <= lo && hi < before);
        fresh || dirty
    }

    /// A backfill of `range` (`[start, end)`, ends aligned, before the cutoff): every window
    /// recomputed, nothing deleted, the watermark kept.
    pub(super) fn backfill(tf: Timeframe, range: (i64, i64), cutoff: i64, uuid: String) -> Plan {
        Plan {
            tf,
            wm: Watermark {
                cutoff: Some(cutoff),
                ..Watermark::default()
            },
            dirty: Dirty::All {
                from: range.0,
                before: range.1,
            },
            fresh: TimeRange::new(Some(range.1), Some(range.1)),
            cutoff: range.1,
            ranges: vec![range],
            deletes: false,
            advances: false,
            final_props: HashMap::from([(TRADES_TABLE_UUID.to_string(), uuid)]),
            next: Watermark::default(),
            report: BuildReport::default(),
        }
    }
}

/// A timeframe's build: nothing to do, or the work.
pub(super) enum Planned {
    Done(BuildReport),
    Work(Box<Plan>),
}

/// What `tf` must recompute: its dirty windows and the windows newly closed.
pub(super) async fn plan(
    storage: &Storage,
    trades_table: &Table,
    tf: Timeframe,
    now_us: i64,
    grace_us: i64,
) -> Result<Planned> {
    let kind = TableKind::Bars(tf);
    let bars_table = storage.table(kind).await?;
    let wm = Watermark::read(
        &bars_table.metadata().properties,
        TRADES_SNAPSHOT,
        TRADES_SEQUENCE,
    );
    let mut report = BuildReport::new(tf, bars_table.metadata().current_snapshot_id);

    let Some(snapshot) = trades_table
        .metadata()
        .current_snapshot(None)
        .map_err(crate::storage::Error::from)?
    else {
        return Ok(Planned::Done(report));
    };
    let (trades_snapshot, trades_seq) = (*snapshot.snapshot_id(), *snapshot.sequence_number());
    let uuid = trades_table.metadata().table_uuid.to_string();
    match bars_table.metadata().properties.get(TRADES_TABLE_UUID) {
        Some(seen) if *seen != uuid => {
            return Err(crate::bars::Error::Input(format!(
                "the trades table {} was replaced (table uuid {seen} is now {uuid}); {} is not \
                 built from it, so no bar is lost. A backfill of {tf} (build --timeframe {tf} \
                 --from .. --to ..) accepts the new table and rebuilds from it",
                storage.identifier(TableKind::Trades),
                kind.name()
            )))
        }
        _ => {}
    }
    report.source_snapshot = Some(trades_snapshot);
    let cutoff = tf
        .window_start(now_us - grace_us)
        .max(wm.cutoff.unwrap_or(i64::MIN));
    let next = Watermark {
        snapshot: Some(trades_snapshot),
        sequence: trades_seq,
        cutoff: Some(cutoff),
    };
    if next == wm {
        return Ok(Planned::Done(report));
    }
    let retained_from =
        prop_i64(&trades_table.metadata().properties, RETAINED_FROM).unwrap_or(i64::MIN);
    let layout = storage.layout(TableKind::Trades, trades_table)?;
    let dirty = match (wm.snapshot, wm.cutoff) {
        (Some(consumed), Some(prev)) if consumed != trades_snapshot => {
            let persisted = TimeRange::new(Some(retained_from), Some(prev));
            let changed = Changed {
                table: trades_table,
                layout,
                consumed,
            };
            dirty_windows(storage, changed, tf, persisted, now_us, &mut report).await?
        }
        _ => Dirty::Keys(FxHashSet::default()),
    };

    let fresh = TimeRange::new(wm.cutoff, Some(cutoff));
    let mut ranges = match &dirty {
        Dirty::Keys(keys) => {
            let windows: BTreeSet<i64> = keys.iter().map(|k| k.2).collect();
            coalesce(windows.iter().map(|w| (*w, w + tf.micros())))
        }
        Dirty::All { from, before } => vec![(*from, *before)],
    };
    if fresh.start.is_none_or(|s| s < cutoff) {
        ranges.push((fresh.start.unwrap_or(i64::MIN), cutoff));
    }
    let mut final_props = next.to_props(TRADES_SNAPSHOT, TRADES_SEQUENCE);
    final_props.insert(TRADES_TABLE_UUID.to_string(), uuid);
    Ok(Planned::Work(Box::new(Plan {
        tf,
        wm,
        dirty,
        fresh,
        cutoff,
        ranges: coalesce(ranges.into_iter()),
        deletes: true,
        advances: true,
        final_props,
        next,
        report,
    })))
}

/// The trades of a chunk one plan takes.
pub(super) enum Selected {
    /// Every row: each batch lies in windows the plan covers whatever the series.
    All,
    Rows(Vec<RecordBatch>),
}

/// The rows of `trades` in `plan`'s scope. Looks at each row's keys only in batches that reach
/// windows outside what the plan covers as a whole (dirty windows of an incremental build).
/// `spans` are where the trades lie (a chunk's ranges): when the plan covers all of them, as
/// in every chunk of a first attach but the first, no batch is looked at.
pub(super) fn select(
    plan: &Plan,
    trades: &[RecordBatch],
    spans: &[(i64, i64)],
) -> Result<Selected> {
    let tf = plan.tf;
    // A span open at the start (the first chunk's) has no first window to ask about.
    let covered = spans.iter().all(|(s, e)| {
        *s > i64::MIN && s < e && plan.covers(tf.window_start(*s), tf.window_start(e - 1))
    });
    if covered {
        return Ok(Selected::All);
    }
    let mut kept: Vec<RecordBatch> = Vec::with_capacity(trades.len());
    let mut all = true;
    for batch in trades {
        let ts = batch.column(3).as_primitive::<TimestampMicrosecondType>();
        let whole = match (arrow::compute::min(ts), arrow::compute::max(ts)) {
            (Some(lo), Some(hi)) => plan.covers(tf.window_start(lo), tf.window_start(hi)),
            _ => true,
        };
        let batch = if whole {
            batch.clone()
        } else {
            // Source rows may carry their keys as dictionaries (see `read_trades_in`).
            let ex = Strings::new(batch.column(0).as_ref(), "exchange")?;
            let sym = Strings::new(batch.column(1).as_ref(), "symbol")?;
            let keep: BooleanArray = (0..batch.num_rows())
                .map(|row| {
                    let window = tf.window_start(ts.value(row));
                    Some(plan.in_scope(ex.value(row), sym.value(row), window))
                })
                .collect();
            match keep.true_count() == batch.num_rows() {
                true => batch.clone(),
                false => {
                    all = false;
                    filter_record_batch(batch, &keep)?
                }
            }
        };
        if batch.num_rows() > 0 {
            kept.push(batch);
        }
    }
    Ok(match all {
        true => Selected::All,
        false => Selected::Rows(kept),
    })
}

/// One plan's part of one chunk once its bars are computed: diff the windows of `ranges`
/// against the stored bars and commit, with the watermark the chunk reaches. Reads `plan`
/// only, so it can run while the next chunk is computed; what it did is returned, for
/// [`BuildReport::add_chunk`].
#[tracing::instrument(name = "build.commit", level = "debug", skip_all, fields(timeframe = %plan.tf))]
pub(super) async fn finish(
    writer: &TableWriter,
    plan: &Plan,
    computed: &RecordBatch,
    ranges: &[(i64, i64)],
    last: bool,
    nothing_stored: bool,
    now_us: i64,
) -> Result<BuildReport> {
    let storage = writer.storage();
    let tf = plan.tf;
    let kind = TableKind::Bars(tf);
    let started = std::time::Instant::now();
    let mut report = BuildReport::default();
    let bar_ranges: Vec<TimeRange> = ranges
        .iter()
        .map(|(s, e)| TimeRange::new(Some(*s), Some(*e)))
        .collect();
    // With nothing stored in range (the caller knows: every chunk of a first attach after
    // the first), the table is neither loaded nor listed here; the upsert lists it anyway.
    let mut read_back_files = 0;
    let (existing, listed) = match nothing_stored {
        true => (Vec::new(), started.elapsed()),
        false => {
            let bars_table = storage.table(kind).await?;
            let bar_listing = Listing::read(&bars_table, kind, None, TimeRange::ALL).await?;
            let bar_files: Vec<&LiveFile> = bar_listing
                .files
                .iter()
                .filter(|f| bar_ranges.iter().any(|r| f.may_overlap(kind, r)))
                .collect();
            read_back_files = bar_files.len();
            let listed = started.elapsed();
            let existing = read_files_in(storage, kind, &bar_files, &bar_ranges).await?;
            (existing, listed)
        }
    };
    let read_back = started.elapsed() - listed;
    let gone = match plan.deletes {
        true => bars_left_without_trades(&existing, computed, |e, s, w| plan.in_scope(e, s, w)),
        false => HashSet::new(),
    };
    let d = diff(computed, &existing, now_us, plan.wm.cutoff, false)?;
    report.absorb(&d);
    report.deleted += gone.len();

    // Chunks of dirty windows keep the old watermark, so they commit only bars they changed.
    let end = ranges.last().map_or(i64::MIN, |r| r.1);
    let mut props = HashMap::new();
    if last {
        props = plan.final_props.clone();
    } else if plan.advances && plan.fresh.start.is_none_or(|s| end >= s) {
        // Every window of the plan before `end` is built from the snapshot being consumed.
        let reached = Watermark {
            cutoff: Some(end),
            ..plan.next
        };
        props = reached.to_props(TRADES_SNAPSHOT, TRADES_SEQUENCE);
        props.extend(
            plan.final_props
                .get_key_value(TRADES_TABLE_UUID)
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    let diffed = started.elapsed();
    let written = d.changed() + gone.len();
    if written > 0 {
        let outcome = writer.upsert_removing(kind, &[d.rows], gone, props).await?;
        report.commit(&outcome, written);
    } else if !props.is_empty() {
        writer.set_properties(kind, props).await?;
    }
    tracing::debug!(
        timeframe = %tf,
        listed_ms = listed.as_millis() as u64,
        read_back_files,
        read_back_ms = read_back.as_millis() as u64,
        diff_ms = diffed.as_millis() as u64,
        commit_ms = (started.elapsed() - diffed).as_millis() as u64,
        bars = written,
        "chunk committed"
    );
    Ok(report)
}

/// The trades table and the snapshot a build consumed.
#[derive(Clone, Copy)]
struct Changed<'a> {
    table: &'a Table,
    layout: Layout,
    consumed: i64,
}

/// Dirty keys from the rows of the files added and removed since the consumed snapshot, within
/// `persisted` (windows already written); every persisted window when that is unknown.
async fn dirty_windows(
    storage: &Storage,
    changed: Changed<'_>,
    tf: Timeframe,
    persisted: TimeRange,
    now_us: i64,
    report: &mut BuildReport,
) -> Result<Dirty> {
    let everything = Dirty::All {
        from: persisted.start.unwrap_or(i64::MIN),
        before: persisted.end.unwrap_or(i64::MAX),
    };
    let changes = match since(
        changed.table,
        TableKind::Trades,
        changed.layout,
        changed.consumed,
    )
    .await?
    {
        SourceChanges::Known(changes) => changes,
        SourceChanges::Unknown(reason) => {
            tracing::warn!(timeframe = %tf, %reason, "recomputing every persisted window");
            return Ok(everything);
        }
    };
    let files: Vec<&LiveFile> = changes
        .added
        .iter()
        .chain(&changes.removed)
        .filter(|f| f.may_overlap(TableKind::Trades, &persisted))
        .collect();
    let batches = match read_trades(storage, &files, persisted, now_us).await {
        Ok((batches, _)) => batches,
        // A removed file may already be gone (another engine expired its snapshot and swept).
        Err(crate::trades::Error::Storage(crate::storage::Error::ObjectStore(
            object_store::Error::NotFound { path, .. },
        ))) => {
            tracing::warn!(timeframe = %tf, %path, "a changed trades file is gone; recomputing every persisted window");
            return Ok(everything);
        }
        Err(e) => return Err(e.into()),
    };
    let mut keys = FxHashSet::default();
    for batch in batches {
        report.trades_read += batch.num_rows();
        let (ex, sym, ts) = trade_keys(&batch);
        for row in 0..batch.num_rows() {
            let w = tf.window_start(ts.value(row));
            keys.insert((ex.value(row).to_string(), sym.value(row).to_string(), w));
        }
    }
    Ok(Dirty::Keys(keys))
}

/// Keys of stored bars in scope that the recomputation no longer produces: their window has
/// no trades left.
fn bars_left_without_trades(
    existing: &[RecordBatch],
    computed: &RecordBatch,
    in_scope: impl Fn(&str, &str, i64) -> bool,
) -> HashSet<BarKey> {
    // A first attach's chunks have nothing stored: no set of what they produced.
    if existing.iter().all(|b| b.num_rows() == 0) {
        return HashSet::new();
    }
    let produced: HashSet<(&str, &str, i64)> = bar_keys(computed).collect();
    existing
        .iter()
        .flat_map(bar_keys)
        .filter(|k| in_scope(k.0, k.1, k.2) && !produced.contains(k))
        .map(|(e, s, w)| (e.to_string(), s.to_string(), w))
        .collect()
}

fn trade_keys(
    batch: &RecordBatch,
) -> (
    &arrow::array::StringArray,
    &arrow::array::StringArray,
    &arrow::array::TimestampMicrosecondArray,
) {
    (
        batch.column(0).as_string::<i32>(),
        batch.column(1).as_string::<i32>(),
        batch.column(3).as_primitive::<TimestampMicrosecondType>(),
    )
}
