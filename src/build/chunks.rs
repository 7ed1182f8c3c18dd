//! Splitting a build's scope into chunks that fit the memory budget.
//!
//! A first build or a backfill may cover years of trades; each chunk is read, computed and
//! committed on its own, so memory is bounded by the budget and a kill loses at most the chunk
//! in flight. How many trades a time range holds is estimated from the manifests alone: each
//! data file's record count spread evenly over the `[min, max]` of its time column. Chunk ends
//! fall on day boundaries when a day fits (the bar tables' partitions, so a chunk rewrites no
//! file of the previous one), else on hours, else on `align` (the coarsest timeframe built:
//! a window's trades always land in one chunk).

use crate::timeframe::{DAY_US, HOUR_US};

/// A data file as the planner sees it: closed time bounds and record count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FileSpan {
    /// `None` when the file carries no statistics for its time column.
    pub bounds: Option<(i64, i64)>,
    pub rows: u64,
}

/// Ranges `[start, end)` read, computed and committed together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunk {
    pub ranges: Vec<(i64, i64)>,
    /// Trades the files are expected to hold in `ranges`.
    pub estimated_rows: u64,
}

impl Chunk {
    /// The first start and the last end.
    pub fn span(&self) -> (i64, i64) {
        (
            self.ranges.first().map_or(0, |r| r.0),
            self.ranges.last().map_or(0, |r| r.1),
        )
    }
}

/// Rows per time as a piecewise linear cumulative function of the files' spans.
struct Density {
    /// `(time, rows before time, rows per microsecond from time on)`, by time.
    points: Vec<(i64, f64, f64)>,
    /// Rows of files without bounds, spread over the scope.
    unknown_rate: f64,
    unknown_from: i64,
}

impl Density {
    fn new(files: &[FileSpan], scope: (i64, i64)) -> Density {
        let mut events: Vec<(i64, f64)> = Vec::with_capacity(files.len() * 2);
        let mut unknown = 0u64;
        for f in files {
            match f.bounds {
                Some((lo, hi)) => {
                    let end = hi.saturating_add(1);
                    let rate = f.rows as f64 / (end as f64 - lo as f64).max(1.0);
                    events.push((lo, rate));
                    events.push((end, -rate));
                }
                None => unknown += f.rows,
            }
        }
        events.sort_by_key(|e| e.0);
        let mut points: Vec<(i64, f64, f64)> = Vec::with_capacity(events.len());
        let (mut rows, mut rate, mut at) = (0.0f64, 0.0f64, i64::MIN);
        for (t, delta) in events {
            if at != i64::MIN {
                rows += rate * (t as f64 - at as f64);
            }
            rate = (rate + delta).max(0.0);
            at = t;
            match points.last_mut() {
                Some(last) if last.0 == t => *last = (t, rows, rate),
                _ => points.push((t, rows, rate)),
            }
        }
        let width = (scope.1 as f64 - scope.0 as f64).max(1.0);
        Density {
            points,
            unknown_rate: unknown as f64 / width,
            unknown_from: scope.0,
        }
    }

    /// Estimated rows before `t`.
    fn before(&self, t: i64) -> f64 {
        let known = match self.points.partition_point(|p| p.0 <= t) {
            0 => 0.0,
            i => {
                let (at, rows, rate) = self.points[i - 1];
                rows + rate * (t as f64 - at as f64)
            }
        };
        known + self.unknown_rate * (t as f64 - self.unknown_from as f64).max(0.0)
    }

    fn between(&self, a: i64, b: i64) -> f64 {
        (self.before(b) - self.before(a)).max(0.0)
    }
}

/// The furthest end in `(pos, end]` on one of the grids whose rows from `pos` fit `room`, the
/// coarsest grid that has one winning; `end` itself when everything fits.
fn furthest(d: &Density, pos: i64, end: i64, room: f64, align: i64) -> Option<i64> {
    if d.between(pos, end) <= room {
        return Some(end);
    }
    for grid in [DAY_US, HOUR_US, align] {
        if grid % align != 0 {
            continue;
        }
        let first = (pos.div_euclid(grid) + 1) * grid;
        let last = end.div_euclid(grid) * grid;
        if first > last || d.between(pos, first) > room {
            continue;
        }
        // The largest k with first + k * grid fitting; rows only grow with k.
        let (mut lo, mut hi) = (0i64, (last - first) / grid);
        while lo < hi {
            let mid = lo + (hi - lo + 1) / 2;
            if d.between(pos, first + mid * grid) <= room {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        return Some(first + lo * grid);
    }
    None
}

/// Chunks covering `scope` (sorted, disjoint `[start, end)` ranges with aligned ends) in time
/// order, each expected to hold at most `budget_rows` trades, except a single `align` step
/// that holds more on its own (a window's trades cannot be split).
pub fn plan(scope: &[(i64, i64)], files: &[FileSpan], budget_rows: u64, align: i64) -> Vec<Chunk> {
    let (Some(first), Some(last)) = (scope.first(), scope.last()) else {
        return Vec::new();
    };
    let density = Density::new(files, (first.0, last.1));
    let budget = budget_rows.max(1) as f64;
    let mut chunks = Vec::new();
    let mut current = Chunk::default();
    let mut used = 0.0f64;
    for &(start, end) in scope {
        let mut pos = start;
        while pos < end {
            let to = match furthest(&density, pos, end, budget - used, align) {
                Some(to) => to,
                None if !current.ranges.is_empty() => {
                    chunks.push(std::mem::take(&mut current));
                    used = 0.0;
                    continue;
                }
                // Not one step fits an empty chunk: that step alone.
                None => ((pos.div_euclid(align) + 1) * align).min(end),
            };
            let rows = density.between(pos, to);
            current.ranges.push((pos, to));
            used += rows;
            current.estimated_rows = used.round() as u64;
            pos = to;
            if pos < end || used >= budget {
                chunks.push(std::mem::take(&mut current));
                used = 0.0;
            }
        }
    }
    if !current.ranges.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeframe::MINUTE_US;

    const M5: i64 = 5 * MINUTE_US;

    fn span(lo: i64, hi: i64, rows: u64) -> FileSpan {
        FileSpan {
            bounds: Some((lo, hi - 1)),
            rows,
        }
    }

    /// Every chunk within budget (or one step), ranges cover the scope exactly, in order.
    fn check(scope: &[(i64, i64)], files: &[FileSpan], budget: u64, chunks: &[Chunk]) {
        let ranges: Vec<(i64, i64)> = chunks.iter().flat_map(|c| c.ranges.clone()).collect();
        let mut merged: Vec<(i64, i64)> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(last) if last.1 == r.0 => last.1 = r.1,
                _ => merged.push(r),
            }
        }
        assert_eq!(merged, scope);
        let d = Density::new(files, (scope[0].0, scope.last().unwrap().1));
        for c in chunks {
            let rows: f64 = c.ranges.iter().map(|r| d.between(r.0, r.1)).sum();
            let one_step = c.ranges.len() == 1 && c.ranges[0].1 - c.ranges[0].0 <= M5;
            assert!(
                rows <= budget as f64 + 1e-6 || one_step,
                "{c:?} holds {rows}"
            );
            for r in &c.ranges {
                assert!(r.0 % M5 == 0 && r.1 % M5 == 0, "unaligned {r:?}");
            }
        }
    }

    #[test]
    fn days_of_even_trades_split_on_day_boundaries() {
        // Ten days, one file a day of 1,000 trades; 2,500 fit: two days a chunk.
        let files: Vec<FileSpan> = (0..10)
            .map(|d| span(d * DAY_US, (d + 1) * DAY_US, 1000))
            .collect();
        let scope = [(0, 10 * DAY_US)];
        let chunks = plan(&scope, &files, 2500, M5);
        check(&scope, &files, 2500, &chunks);
        assert_eq!(chunks.len(), 5);
        assert!(chunks.iter().all(|c| c.span().1 % DAY_US == 0));
    }

    #[test]
    fn a_dense_hour_splits_finer_and_one_step_is_never_split() {
        // 100 trades a day, but one hour holds 10,000 and one 5-minute window 5,000.
        let mut files: Vec<FileSpan> = (0..3)
            .map(|d| span(d * DAY_US, (d + 1) * DAY_US, 100))
            .collect();
        files.push(span(DAY_US, DAY_US + HOUR_US, 5_000));
        files.push(span(DAY_US + 2 * HOUR_US, DAY_US + 2 * HOUR_US + M5, 5_000));
        let scope = [(0, 3 * DAY_US)];
        let chunks = plan(&scope, &files, 1_000, M5);
        check(&scope, &files, 1_000, &chunks);
        assert!(chunks.len() > 5, "{chunks:?}");
    }

    #[test]
    fn small_scattered_ranges_share_one_chunk() {
        // The steady state: a few dirty windows and the newly closed minutes, one chunk.
        let files = [span(0, DAY_US, 10_000)];
        let scope = [(M5, 2 * M5), (10 * M5, 11 * M5), (200 * M5, 210 * M5)];
        let chunks = plan(&scope, &files, 1_000_000, M5);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].ranges, scope);
    }

    #[test]
    fn files_without_bounds_count_across_the_scope() {
        let files = [FileSpan {
            bounds: None,
            rows: 4_000,
        }];
        let scope = [(0, 4 * DAY_US)];
        let chunks = plan(&scope, &files, 1_000, M5);
        check(&scope, &files, 1_000, &chunks);
        assert_eq!(chunks.len(), 4);
    }

    #[test]
    fn an_unbounded_start_is_planned_from_where_files_begin() {
        assert!(plan(&[], &[], 10, M5).is_empty());
        let files = [span(0, 2 * DAY_US, 2_000)];
        let scope = [(-DAY_US, 2 * DAY_US)];
        let chunks = plan(&scope, &files, 1_000, M5);
        check(&scope, &files, 1_000, &chunks);
        assert_eq!(chunks.len(), 2);
    }
}
