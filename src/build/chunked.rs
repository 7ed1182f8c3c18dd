//! Running planned builds from trades chunk by chunk (see `chunks`): one read of each chunk's
//! trades feeds every timeframe planned (1m and 5m), the next chunk is read while this one is
//! computed and committed, and each timeframe commits each chunk with the watermark it has
//! reached, so memory stays within the budget and a kill loses at most the chunk in flight.

use arrow::array::RecordBatch;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::chunks::{self, Chunk, FileSpan};
use super::incremental::{finish, select, Plan, Selected};
use super::{coalesce, progress, BuildReport, BuildSettings, Result};
use crate::bars::{compute_bars, compute_bars_each};
use crate::storage::{Listing, LiveFile, TableKind, TableWriter, TimeRange};
use crate::timeframe::Timeframe;
use crate::trades::read_trades_in;

/// Bytes a trade takes while its chunk is held: the decoded columns (text keys and ids
/// included), the kernel's series-ordered copy and the reader's buffers (measured with
/// `benches/attach.py`).
pub const BYTES_PER_TRADE: u64 = 160;

/// What the budget keeps aside for everything but the trades: the Parquet reader's fetched
/// row groups, listings, the bars of a chunk being diffed and written.
pub const RESERVE_BYTES: u64 = 32 << 20;

/// The smallest budget at which a chunk commits while the next one is computed: the overlap
/// holds a chunk's bars and the stored files its commit reads beside the next chunk's
/// ordering, which a small budget has no room for (tests/attach.rs, 64 MB, peaked 94 MB with
/// it against a bound of 92). With the overlap a kill can lose two chunks (the one
/// committing, the one computed), without it one.
pub const OVERLAP_MIN_BYTES: u64 = 256 << 20;

/// Runs `plans` over the trades of `listing`'s files.
pub(super) async fn run(
    writer: &TableWriter,
    listing: &Listing,
    plans: &mut [Plan],
    now_us: i64,
    settings: BuildSettings,
    job: &'static str,
) -> Result<()> {
    let Some(align) = plans.iter().map(|p| p.tf.micros()).max() else {
        return Ok(());
    };
    let union = coalesce(plans.iter().flat_map(|p| p.ranges.iter().copied()));
    // A first build starts where the trades do, when every file says where that is.
    let earliest = listing
        .files
        .iter()
        .map(|f| f.time_bounds().map(|b| b.0))
        .collect::<Option<Vec<i64>>>()
        .and_then(|los| los.into_iter().min());
    let scope: Vec<(i64, i64)> = union
        .iter()
        .copied()
        .filter_map(|(s, e)| {
            let s = match (s, earliest) {
                (i64::MIN, Some(lo)) => s.max(lo.div_euclid(align) * align),
                _ => s,
            };
            (s < e).then_some((s, e))
        })
        .collect();
    let spans: Vec<FileSpan> = listing
        .files
        .iter()
        .filter(|f| overlaps(f, &scope))
        .map(|f| FileSpan {
            bounds: f.time_bounds(),
            rows: f.record_count().max(0) as u64,
        })
        .collect();
    // Two chunks are held at once: one computed and committed, the next being read.
    let for_trades = settings
        .memory_bytes
        .saturating_sub(RESERVE_BYTES)
        .max(RESERVE_BYTES / 4);
    let budget_rows = (for_trades / BYTES_PER_TRADE / 2).max(1);
    let mut chunks = chunks::plan(&scope, &spans, budget_rows, align);
    // Planning starts where the trades do, but the first chunk still covers what lies
    // before: stored bars there whose trades are gone (a replaced table) must go.
    if let (Some((i64::MIN, _)), Some(first)) = (union.first(), chunks.first_mut()) {
        first.ranges[0].0 = i64::MIN;
    }
    let last_of: Vec<Option<usize>> = plans
        .iter()
        .map(|p| {
            chunks
                .iter()
                .rposition(|c| !intersect(&p.ranges, &c.ranges).is_empty())
        })
        .collect();
    let running = (chunks.len() > 1).then(|| {
        let total = chunks.iter().map(|c| c.estimated_rows).sum();
        tracing::info!(
            chunks = chunks.len(),
            trades = total,
            budget_mb = settings.memory_bytes >> 20,
            "building in chunks"
        );
        progress::start(job, plans[0].tf, chunks.len(), total)
    });

    let storage = writer.storage().clone();
    // Where each plan's stored bars end when the build starts (`None`: none stored). Chunks
    // go in time order and only this build writes its windows, so a chunk starting past it
    // has nothing stored in range and its commit skips loading and listing the table to
    // read it back (on a lake, 60-180 ms of each 1m commit beside a kernel, issue 24). A
    // single chunk (the steady state) lists in its commit as before: `i64::MAX` never skips.
    let mut stored_end = Vec::with_capacity(plans.len());
    for plan in plans.iter() {
        if chunks.len() < 2 {
            stored_end.push(Some(i64::MAX));
            continue;
        }
        let kind = TableKind::Bars(plan.tf);
        let table = storage.table(kind).await?;
        let listing = Listing::read(&table, kind, None, TimeRange::ALL).await?;
        stored_end.push(
            listing
                .files
                .iter()
                .map(|f| f.time_bounds().map_or(i64::MAX, |b| b.1))
                .max(),
        );
    }
    let read = |chunk: &Chunk| {
        let files: Vec<LiveFile> = listing
            .files
            .iter()
            .filter(|f| overlaps(f, &chunk.ranges))
            .cloned()
            .collect();
        let ranges: Vec<TimeRange> = chunk
            .ranges
            .iter()
            .map(|(s, e)| TimeRange::new(Some(*s), Some(*e)))
            .collect();
        let storage = storage.clone();
        let span = tracing::debug_span!("build.read", files = files.len());
        AbortOnDropHandle::new(tokio::spawn(
            async move {
                let files: Vec<&LiveFile> = files.iter().collect();
                read_trades_in(&storage, &files, &ranges, now_us, true).await
            }
            .instrument(span),
        ))
    };
    let mut next = chunks.first().map(read);
    // The chunk whose bars are computed and not yet committed: it commits while the next one
    // is computed (committing is I/O, computing is CPU).
    let mut pending: Option<Pending> = None;
    let overlap = settings.overlaps();
    for (i, chunk) in chunks.iter().enumerate() {
        let Some(reading) = next.take() else { break };
        let waited = std::time::Instant::now();
        let (trades, skipped) = reading
            .await
            .map_err(|e| crate::bars::Error::Input(format!("a trades read panicked: {e}")))??;
        // Time spent waiting here is the read not keeping up with building.
        tracing::debug!(
            chunk = i + 1,
            read_wait_ms = waited.elapsed().as_millis() as u64,
            "chunk read"
        );
        next = chunks.get(i + 1).map(read);
        let ranges: Vec<Vec<(i64, i64)>> = plans
            .iter()
            .map(|p| intersect(&p.ranges, &chunk.ranges))
            .collect();
        let mut selected = Vec::with_capacity(plans.len());
        for (plan, ranges) in plans.iter_mut().zip(&ranges) {
            if ranges.is_empty() {
                selected.push(None);
                continue;
            }
            plan.report.skipped_rows += skipped.count;
            let s = select(plan, &trades, &chunk.ranges)?;
            plan.report.trades_read += match &s {
                Selected::All => trades.iter().map(|b| b.num_rows()).sum::<usize>(),
                Selected::Rows(rows) => rows.iter().map(|b| b.num_rows()).sum::<usize>(),
            };
            selected.push(Some(s));
        }
        let rows = trades.iter().map(|b| b.num_rows() as u64).sum();
        let tfs: Vec<Timeframe> = plans.iter().map(|p| p.tf).collect();
        let computing = compute(tfs, trades, selected, now_us);
        if !overlap {
            // Computed, then committed at once: a kill loses at most this chunk.
            let done = Pending {
                chunk: i,
                rows,
                bars: computing.await?,
                ranges,
            };
            let committed =
                commit(writer, plans, &last_of, &stored_end, Some(done), now_us).await?;
            apply(plans, committed, running.as_ref());
            continue;
        }
        let committing = commit(writer, plans, &last_of, &stored_end, pending.take(), now_us);
        let (computed, committed) = futures::join!(computing, committing);
        apply(plans, committed?, running.as_ref());
        pending = Some(Pending {
            chunk: i,
            rows,
            bars: computed?,
            ranges,
        });
    }
    let committed = commit(writer, plans, &last_of, &stored_end, pending.take(), now_us).await?;
    apply(plans, committed, running.as_ref());
    // A plan no chunk reached (its windows hold no trades at all) still deletes what it
    // stored there and moves its watermark.
    for (plan, last) in plans.iter_mut().zip(&last_of) {
        if last.is_none() {
            let ranges = plan.ranges.clone();
            let empty = compute_bars(&[], plan.tf, now_us)?;
            let report = finish(writer, plan, &empty, &ranges, true, false, now_us).await?;
            plan.report.add_chunk(&report);
        }
    }
    Ok(())
}

/// A chunk's bars, computed and waiting to be committed.
struct Pending {
    chunk: usize,
    /// Trades the chunk held.
    rows: u64,
    /// Per plan: the chunk's bars, `None` where the plan has no window in the chunk.
    bars: Vec<Option<RecordBatch>>,
    /// Per plan: its windows in the chunk.
    ranges: Vec<Vec<(i64, i64)>>,
}

/// Bars of one chunk per plan, on the blocking pool. Plans that take every trade share one
/// ordering of them (1m and 5m of a first build).
async fn compute(
    tfs: Vec<Timeframe>,
    trades: Vec<RecordBatch>,
    selected: Vec<Option<Selected>>,
    now_us: i64,
) -> Result<Vec<Option<RecordBatch>>> {
    let started = std::time::Instant::now();
    let span = tracing::debug_span!(
        "build.kernel",
        trades = trades.iter().map(|b| b.num_rows()).sum::<usize>()
    );
    let bars = tokio::task::spawn_blocking(move || -> Result<Vec<Option<RecordBatch>>> {
        let _entered = span.enter();
        let whole: Vec<usize> = (0..tfs.len())
            .filter(|p| matches!(selected[*p], Some(Selected::All)))
            .collect();
        let lengths: Vec<i64> = whole.iter().map(|p| tfs[*p].micros()).collect();
        let mut shared = compute_bars_each(&trades, &lengths, now_us)?.into_iter();
        drop(trades);
        let mut out = Vec::with_capacity(tfs.len());
        for (tf, s) in tfs.iter().zip(selected) {
            out.push(match s {
                None => None,
                Some(Selected::All) => shared.next(),
                Some(Selected::Rows(rows)) => Some(compute_bars(&rows, *tf, now_us)?),
            });
        }
        Ok(out)
    })
    .await
    .map_err(|e| crate::bars::Error::Input(format!("bar kernel panicked: {e}")))??;
    tracing::debug!(
        kernel_ms = started.elapsed().as_millis() as u64,
        "chunk computed"
    );
    Ok(bars)
}

/// Commits `pending` for each plan, one table after another; what each plan's commit did.
/// Not at once: with the 5m commit free to land before or beside the 1m one, a replica
/// following the builder dropped cached series the commits did not change (tests/cluster.rs
/// failed 2 runs in 12; 0 in 12 in order). Why is not yet understood.
async fn commit(
    writer: &TableWriter,
    plans: &[Plan],
    last_of: &[Option<usize>],
    stored_end: &[Option<i64>],
    pending: Option<Pending>,
    now_us: i64,
) -> Result<Option<(u64, Vec<BuildReport>)>> {
    let Some(p) = pending else { return Ok(None) };
    let mut reports = Vec::with_capacity(plans.len());
    for (((plan, bars), (ranges, last)), stored_end) in plans
        .iter()
        .zip(&p.bars)
        .zip(p.ranges.iter().zip(last_of))
        .zip(stored_end)
    {
        let nothing_stored = stored_end.is_none_or(|end| ranges.iter().all(|r| r.0 > end));
        reports.push(match bars {
            Some(bars) => {
                let last = *last == Some(p.chunk);
                finish(writer, plan, bars, ranges, last, nothing_stored, now_us).await?
            }
            None => BuildReport::default(),
        });
    }
    tracing::debug!(chunk = p.chunk + 1, "chunk committed");
    Ok(Some((p.rows, reports)))
}

fn apply(
    plans: &mut [Plan],
    committed: Option<(u64, Vec<BuildReport>)>,
    running: Option<&progress::Running>,
) {
    let Some((rows, reports)) = committed else {
        return;
    };
    for (plan, report) in plans.iter_mut().zip(&reports) {
        plan.report.add_chunk(report);
    }
    if let Some(running) = running {
        running.chunk_done(rows);
    }
}

fn overlaps(file: &LiveFile, ranges: &[(i64, i64)]) -> bool {
    ranges
        .iter()
        .any(|(s, e)| file.may_overlap(TableKind::Trades, &TimeRange::new(Some(*s), Some(*e))))
}

/// The parts of sorted, disjoint `a` inside sorted, disjoint `b`.
fn intersect(a: &[(i64, i64)], b: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let (s, e) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersections() {
        assert_eq!(
            intersect(&[(0, 10), (20, 30)], &[(5, 25), (28, 40)]),
            vec![(5, 10), (20, 25), (28, 30)]
        );
        assert!(intersect(&[(0, 5)], &[(5, 9)]).is_empty());
        assert_eq!(intersect(&[(i64::MIN, 9)], &[(3, 20)]), vec![(3, 9)]);
    }
}
