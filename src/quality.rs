//! Data quality: the four bar invariants checked per timeframe, with results kept as reports.
//!
//! | module | owns |
//! |---|---|
//! | `checks` | the invariants, pure over bar batches |
//! | `results` | validation and retention reports in the catalog database |
//!
//! By default a run checks what changed since the last run (files of the table or of its
//! source added since then) plus a rotating sample of older partitions, so every partition is
//! eventually re-read without reading the whole table each hour.
//!
//! `rollup_consistency` only compares windows both tables treat as final and have both built
//! from the same source: a window whose source changed after one of the two tables was built is
//! pending (the next build fixes it), not a violation.

pub mod checks;
pub mod results;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampMicrosecondType;

use crate::bars::{compute_bars, rollup, Result};
use crate::build::coalesce;
use crate::build::state::{prop_i64, CUTOFF, RETAINED_FROM, SOURCE_SEQUENCE, TRADES_SEQUENCE};
use crate::storage::files::{partition_range, partition_value};
use crate::storage::read::read_files;
use crate::storage::{Listing, LiveFile, Storage, TableKind, TimeRange};
use crate::timeframe::Timeframe;
use crate::trades::read_trades;

pub use checks::{Found, Violation, CHECKS, MAX_SAMPLES};

/// Creates every (timeframe, check) series of the violations gauge at zero.
pub fn preset_metrics() {
    for tf in crate::timeframe::Timeframe::ALL {
        for check in CHECKS {
            crate::metrics::metrics()
                .validation_violations
                .with_label_values(&[tf.as_str(), check]);
        }
    }
}
pub use results::{CheckResult, CheckStatus, Reports, RetentionRun, Validated};

/// Older partitions re-checked by each run on top of what changed.
const SAMPLE_PARTITIONS: usize = 2;

/// What a validation run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// What changed since the last run, plus a rotating sample of older partitions.
    Changed,
    /// Exactly this range (an explicit request, or after a backfill).
    Range(TimeRange),
}

/// One table's state as a validation sees it.
struct TableState {
    kind: TableKind,
    listing: Listing,
    /// Data sequence number of the listed snapshot.
    sequence: i64,
    props: std::collections::HashMap<String, String>,
}

impl TableState {
    async fn load(storage: &Storage, kind: TableKind) -> Result<Self> {
        let table = storage.table(kind).await?;
        let layout = storage.layout(kind, &table)?;
        let listing = Listing::read_laid_out(&table, kind, layout, None, TimeRange::ALL).await?;
        let metadata = table.metadata();
        let sequence = match listing.snapshot_id {
            Some(id) => metadata
                .snapshots
                .get(&id)
                .map_or(0, |s| *s.sequence_number()),
            None => 0,
        };
        Ok(TableState {
            kind,
            listing,
            sequence,
            props: metadata.properties.clone(),
        })
    }

    fn prop(&self, key: &str) -> Option<i64> {
        prop_i64(&self.props, key)
    }

    /// Closed time bounds of the files added after data sequence number `after`.
    fn changed_since(&self, after: i64) -> Vec<(i64, i64)> {
        self.listing
            .files
            .iter()
            .filter(|f| f.entry.sequence_number().is_none_or(|s| s > after))
            .map(|f| self.bounds(f))
            .collect()
    }

    fn bounds(&self, f: &LiveFile) -> (i64, i64) {
        f.time_bounds().unwrap_or_else(|| {
            let p = f.partition(self.kind).unwrap_or_default();
            let (lo, hi) = partition_range(&self.kind.partition_transform(), p);
            (lo, hi - 1)
        })
    }

    fn files_in(&self, range: TimeRange) -> Vec<&LiveFile> {
        self.listing
            .files
            .iter()
            .filter(|f| f.may_overlap(self.kind, &range))
            .collect()
    }
}

/// Each table's state, read once per run: every timeframe of a run sees the same snapshots,
/// and the manifests of 1m and trades (the sources of several checks) are listed once.
struct Tables<'a> {
    storage: &'a Storage,
    loaded: HashMap<TableKind, Arc<TableState>>,
}

impl Tables<'_> {
    async fn get(&mut self, kind: TableKind) -> Result<Arc<TableState>> {
        if let Some(t) = self.loaded.get(&kind) {
            return Ok(Arc::clone(t));
        }
        let t = Arc::new(TableState::load(self.storage, kind).await?);
        self.loaded.insert(kind, Arc::clone(&t));
        Ok(t)
    }
}

/// Validates `timeframes` over `scope` at `now_us`, records every result and returns them.
pub async fn validate(
    storage: &Storage,
    reports: &Reports,
    timeframes: &[Timeframe],
    scope: Scope,
    now_us: i64,
) -> Result<Vec<CheckResult>> {
    let run_id = uuid::Uuid::new_v4().to_string();
    let mut all = Vec::new();
    let mut tables = Tables {
        storage,
        loaded: HashMap::new(),
    };
    for &tf in timeframes {
        let (results, validated) =
            validate_timeframe(&mut tables, reports, tf, scope, now_us).await?;
        for check in CHECKS {
            let (found, rows, span) = results.get(check);
            let result = CheckResult {
                run_id: run_id.clone(),
                run_at: now_us,
                timeframe: tf.to_string(),
                check: check.to_string(),
                range_start: span.map(|s| s.0),
                range_end: span.map(|s| s.1),
                status: match found.count {
                    0 => CheckStatus::Passed,
                    _ => CheckStatus::Failed,
                },
                violations: found.count,
                rows_checked: rows,
                samples: found.samples.clone(),
            };
            reports.record_check(&result).await?;
            crate::metrics::metrics()
                .validation_violations
                .with_label_values(&[tf.as_str(), check])
                .set(found.count as i64);
            all.push(result);
        }
        if scope == Scope::Changed {
            reports.set_validated(tf.as_str(), validated).await?;
        }
    }
    Ok(all)
}

/// Findings of one timeframe, per check.
#[derive(Default)]
struct Findings {
    found: [Found; 4],
    rows: [u64; 4],
    span: Option<(i64, i64)>,
}

impl Findings {
    fn add(&mut self, check: usize, found: Found, rows: u64) {
        self.found[check].merge(found);
        self.rows[check] += rows;
    }

    fn get(&self, check: &str) -> (&Found, u64, Option<(i64, i64)>) {
        let i = CHECKS
            .iter()
            .position(|c| *c == check)
            .expect("known check");
        (&self.found[i], self.rows[i], self.span)
    }
}

async fn validate_timeframe(
    tables: &mut Tables<'_>,
    reports: &Reports,
    tf: Timeframe,
    scope: Scope,
    now_us: i64,
) -> Result<(Findings, Validated)> {
    let storage = tables.storage;
    let own = tables.get(TableKind::Bars(tf)).await?;
    let source_kind = tf.lower().map_or(TableKind::Trades, TableKind::Bars);
    let source = tables.get(source_kind).await?;
    let previous = reports.validated(tf.as_str()).await?;
    let validated = Validated {
        own_sequence: own.sequence,
        source_sequence: source.sequence,
        runs: previous.map_or(0, |v| v.runs) + 1,
    };

    // Everything either table holds, as closed bounds.
    let extent = own
        .listing
        .files
        .iter()
        .map(|f| own.bounds(f))
        .chain(source.listing.files.iter().map(|f| source.bounds(f)))
        .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
    let Some(extent) = extent else {
        return Ok((Findings::default(), validated));
    };
    let wanted: Vec<(i64, i64)> = match (scope, previous) {
        (Scope::Range(r), _) => vec![(
            r.start.unwrap_or(i64::MIN),
            r.end.unwrap_or(i64::MAX).saturating_sub(1),
        )],
        (Scope::Changed, None) => vec![extent],
        (Scope::Changed, Some(v)) => {
            let mut ranges = own.changed_since(v.own_sequence);
            ranges.extend(source.changed_since(v.source_sequence));
            ranges.extend(sample(&own, v.runs));
            ranges
        }
    };
    // Whole windows of the timeframe, inside what exists.
    let step = tf.micros();
    let ranges = coalesce(wanted.into_iter().filter_map(|(lo, hi)| {
        let (lo, hi) = (lo.max(extent.0), hi.min(extent.1));
        (lo <= hi).then(|| (tf.window_start(lo), tf.window_start(hi) + step))
    }));

    let mut findings = Findings {
        span: ranges.first().zip(ranges.last()).map(|(a, b)| (a.0, b.1)),
        ..Findings::default()
    };
    let comparable = comparable_windows(tables, tf, &own, &source).await?;
    // One partition at a time, so a first run over years of data holds one day (1d: one month)
    // of bars and source rows, not all of them. No window crosses a partition boundary.
    for (lo, hi) in ranges.into_iter().flat_map(|r| by_partition(own.kind, r)) {
        let range = TimeRange::new(Some(lo), Some(hi));
        let bars = read_files(storage, own.kind, &own.files_in(range), range).await?;
        let rows: u64 = bars.iter().map(|b| b.num_rows() as u64).sum();
        findings.add(0, checks::ohlc_bounds(&bars), rows);
        findings.add(1, checks::positive_activity(&bars), rows);
        findings.add(2, checks::unique_aligned(&bars, step), rows);

        let window = TimeRange::new(Some(lo.max(comparable.from)), Some(hi.min(comparable.to)));
        if window.start >= window.end {
            continue;
        }
        let lower = match source.kind {
            TableKind::Trades => {
                read_trades(storage, &source.files_in(window), window, now_us)
                    .await?
                    .0
            }
            kind => read_files(storage, kind, &source.files_in(window), window).await?,
        };
        let expected = match tf.lower() {
            None => {
                let trades = lower;
                tokio::task::spawn_blocking(move || compute_bars(&trades, tf, now_us))
                    .await
                    .map_err(|e| crate::bars::Error::Input(format!("bar kernel panicked: {e}")))??
            }
            Some(_) => rollup(&lower, step, 0, now_us)?,
        };
        let keep = |b: &RecordBatch| comparable.filter(b, step, window);
        let stored: Vec<RecordBatch> = bars.iter().map(keep).collect::<Result<_>>()?;
        let expected = keep(&expected)?;
        let compared: u64 = stored.iter().map(|b| b.num_rows() as u64).sum();
        findings.add(
            3,
            checks::rollup_consistency(&stored, &[expected]),
            compared,
        );
    }
    Ok((findings, validated))
}

/// `[lo, hi)` cut at the partition boundaries of `kind`.
fn by_partition(kind: TableKind, (lo, hi): (i64, i64)) -> Vec<(i64, i64)> {
    let transform = kind.partition_transform();
    let mut out = Vec::new();
    let mut at = lo;
    while at < hi {
        let end = partition_range(&transform, partition_value(&transform, at))
            .1
            .min(hi);
        out.push((at, end));
        at = end;
    }
    out
}

/// `SAMPLE_PARTITIONS` partitions of the table, rotating with each run.
fn sample(own: &TableState, runs: i64) -> Vec<(i64, i64)> {
    let partitions: Vec<i32> = own
        .listing
        .files
        .iter()
        .filter_map(|f| f.partition(own.kind))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if partitions.is_empty() {
        return Vec::new();
    }
    let transform = own.kind.partition_transform();
    (0..SAMPLE_PARTITIONS.min(partitions.len()))
        .map(|i| {
            let at = (runs as usize * SAMPLE_PARTITIONS + i) % partitions.len();
            let (lo, hi) = partition_range(&transform, partitions[at]);
            (lo, hi - 1)
        })
        .collect()
}

/// Which windows of a timeframe can be compared with their source.
struct Comparable {
    /// Windows starting at or after `from` and ending at or before `to`: final in both tables
    /// and still retained by both.
    from: i64,
    to: i64,
    /// Closed time spans whose source changed after one of the two tables was built.
    pending: Vec<(i64, i64)>,
}

impl Comparable {
    /// Rows of `b` whose window lies in `window` and is not pending.
    fn filter(&self, b: &RecordBatch, step: i64, window: TimeRange) -> Result<RecordBatch> {
        let starts = b
            .column_by_name("window_start")
            .expect("bar column")
            .as_primitive::<TimestampMicrosecondType>();
        let keep: BooleanArray = starts
            .values()
            .iter()
            .map(|&s| {
                let inside = window.start.is_none_or(|lo| s >= lo)
                    && window.end.is_none_or(|hi| s + step <= hi);
                let pending = self
                    .pending
                    .iter()
                    .any(|&(lo, hi)| s <= hi && lo < s + step);
                Some(inside && !pending)
            })
            .collect();
        Ok(filter_record_batch(b, &keep)?)
    }
}

async fn comparable_windows(
    tables: &mut Tables<'_>,
    tf: Timeframe,
    own: &TableState,
    source: &TableState,
) -> Result<Comparable> {
    let step = tf.micros();
    let own_cutoff = own.prop(CUTOFF);
    // 1m's source is trades, final up to 1m's own cutoff.
    let source_cutoff = match tf {
        Timeframe::M1 => own_cutoff,
        _ => source.prop(CUTOFF),
    };
    let to = match own_cutoff.zip(source_cutoff) {
        Some((a, b)) => a.min(b).div_euclid(step) * step,
        None => i64::MIN, // one side has never been built
    };
    let retained = own
        .prop(RETAINED_FROM)
        .into_iter()
        .chain(source.prop(RETAINED_FROM))
        .max()
        .unwrap_or(i64::MIN);
    let from = if retained == i64::MIN {
        i64::MIN
    } else {
        tf.window_start(retained - 1) + step
    };

    let pending = match tf {
        // Trades appended after 1m's last build are not in its bars yet.
        Timeframe::M1 => source.changed_since(own.prop(TRADES_SEQUENCE).unwrap_or(0)),
        // Both built from trades on their own schedules.
        Timeframe::M5 => {
            let trades = tables.get(TableKind::Trades).await?;
            let seen = own
                .prop(TRADES_SEQUENCE)
                .unwrap_or(0)
                .min(source.prop(TRADES_SEQUENCE).unwrap_or(0));
            trades.changed_since(seen)
        }
        // Built from 1m; its lower table 5m is built from trades.
        Timeframe::M30 => {
            let one = tables.get(TableKind::Bars(Timeframe::M1)).await?;
            let trades = tables.get(TableKind::Trades).await?;
            let trades_seen = one
                .prop(TRADES_SEQUENCE)
                .unwrap_or(0)
                .min(source.prop(TRADES_SEQUENCE).unwrap_or(0));
            let mut pending = one.changed_since(own.prop(SOURCE_SEQUENCE).unwrap_or(0));
            pending.extend(trades.changed_since(trades_seen));
            pending
        }
        // Both built from 1m.
        Timeframe::H1 | Timeframe::D1 => {
            let one = tables.get(TableKind::Bars(Timeframe::M1)).await?;
            let seen = own
                .prop(SOURCE_SEQUENCE)
                .unwrap_or(0)
                .min(source.prop(SOURCE_SEQUENCE).unwrap_or(0));
            one.changed_since(seen)
        }
    };
    Ok(Comparable { from, to, pending })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cut_at_partition_boundaries() {
        const DAY: i64 = 86_400_000_000;
        let t0 = 1_704_067_200_000_000; // 2024-01-01
        let m1 = TableKind::Bars(Timeframe::M1);
        assert_eq!(
            by_partition(m1, (t0 + 5, t0 + 2 * DAY + 7)),
            [
                (t0 + 5, t0 + DAY),
                (t0 + DAY, t0 + 2 * DAY),
                (t0 + 2 * DAY, t0 + 2 * DAY + 7)
            ]
        );
        // 1d is partitioned by month: January, then the first day of February.
        let d1 = TableKind::Bars(Timeframe::D1);
        assert_eq!(
            by_partition(d1, (t0, t0 + 32 * DAY)),
            [(t0, t0 + 31 * DAY), (t0 + 31 * DAY, t0 + 32 * DAY)]
        );
    }
}
