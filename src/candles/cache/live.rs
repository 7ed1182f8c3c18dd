//! Trades not yet built into bars, kept in memory per series as they are committed, with the
//! live bars (windows past a table's cutoff) they make, kept up to date as trades arrive
//! (`bars::RunningBars`): a read of live bars costs a slice, and a commit costs the trades it
//! brings, not the windows they fall in.
//!
//! Holds the trades at or after the floor: the lower of the 1m and 5m cutoffs (what neither
//! incremental table has persisted yet), but never more than the 1m hot horizon back.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampMicrosecondType;

use super::entry::by_series;
use super::error::Result;
use crate::bars::RunningBars;
use crate::storage::files::{conform, time_column};
use crate::storage::TableKind;
use crate::timeframe::Timeframe;

/// The live bars of one series as of its last change, shared with the views taken since.
#[derive(Debug)]
pub struct LiveBars {
    m1: RecordBatch,
    m5: RecordBatch,
}

impl LiveBars {
    /// The bars of `tf` (1m or 5m) whose windows start in `[start, end)`.
    pub fn in_range(&self, tf: Timeframe, start: i64, end: i64) -> RecordBatch {
        let bars = if tf == Timeframe::M5 {
            &self.m5
        } else {
            &self.m1
        };
        let starts = bars
            .column(2)
            .as_primitive::<TimestampMicrosecondType>()
            .values();
        let from = starts.partition_point(|s| *s < start);
        let to = starts.partition_point(|s| *s < end);
        bars.slice(from, to.saturating_sub(from))
    }
}

/// One series: its trades, and the live bars they make.
struct Series {
    trades: Vec<RecordBatch>,
    running: RunningBars,
    bars: Arc<LiveBars>,
}

impl Series {
    fn new(key: &(String, String)) -> Result<Series> {
        let running = RunningBars::new(&key.0, &key.1, &LENGTHS)?;
        Ok(Series {
            trades: Vec::new(),
            bars: Arc::new(materialize(&running)?),
            running,
        })
    }

    /// Makes the live bars again after `running` changed.
    fn changed(&mut self) -> Result<()> {
        self.bars = Arc::new(materialize(&self.running)?);
        Ok(())
    }
}

/// The window lengths a live series keeps bars of, in `RunningBars`' order: 1m and 5m (the
/// tables built from trades; higher timeframes roll up live 1m bars).
const LENGTHS: [i64; 2] = [60_000_000, 300_000_000];

fn materialize(running: &RunningBars) -> Result<LiveBars> {
    // `built_at` is not part of a candle: live bars carry 0.
    Ok(LiveBars {
        m1: running.bars(0, i64::MIN, i64::MAX, 0)?,
        m5: running.bars(1, i64::MIN, i64::MAX, 0)?,
    })
}

/// Batches a series' live trades are kept in before they are merged into one.
const MAX_BATCHES: usize = 8;

/// Additions remembered per series for [`LiveTrades::added_since`].
const ADDED_LOG: usize = 64;

/// The latest additions to one series' trades: (stamp, earliest trade time added).
#[derive(Debug, Default, Clone)]
struct Added {
    log: std::collections::VecDeque<(u64, i64)>,
    /// Additions stamped at or before this are forgotten.
    forgotten: u64,
}

#[derive(Default)]
pub struct LiveTrades {
    series: HashMap<(String, String), Series>,
    added: HashMap<(String, String), Added>,
    floor: i64,
    /// The newest trade time ever handed over (kept when trades are dropped): the source lag.
    newest: Option<i64>,
}

impl std::fmt::Debug for LiveTrades {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTrades")
            .field("series", &self.series.len())
            .field("rows", &self.rows())
            .field("floor", &self.floor)
            .finish()
    }
}

impl LiveTrades {
    pub fn floor(&self) -> i64 {
        self.floor
    }

    /// The series that have unbuilt trades.
    pub fn series(&self) -> impl Iterator<Item = &(String, String)> {
        self.series.keys()
    }

    /// The newest trade time seen, if any trade was.
    pub fn newest(&self) -> Option<i64> {
        self.newest
    }

    /// No trades, the same floor.
    pub fn emptied(&self) -> LiveTrades {
        LiveTrades {
            series: HashMap::new(),
            added: HashMap::new(),
            floor: self.floor,
            newest: self.newest,
        }
    }

    /// Keeps the trades of `batches` at or after the floor; returns the series that gained
    /// trades.
    /// `stamp` (the generation this addition moves its series to) is remembered with the
    /// earliest trade time it brought each series.
    pub fn add(&mut self, batches: &[RecordBatch], stamp: u64) -> Result<Vec<(String, String)>> {
        let all = conform(TableKind::Trades, batches)?;
        if let Some(max) = arrow::compute::max(time_column(TableKind::Trades, &all)?) {
            self.newest = Some(self.newest.map_or(max, |n| n.max(max)));
        }
        let all = at_or_after(&all, self.floor)?;
        if all.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let mut gained = Vec::new();
        for (key, rows) in by_series(&all)? {
            if let Some(earliest) = arrow::compute::min(time_column(TableKind::Trades, &rows)?) {
                let added = self.added.entry(key.clone()).or_default();
                added.log.push_back((stamp, earliest));
                if added.log.len() > ADDED_LOG {
                    if let Some((old, _)) = added.log.pop_front() {
                        added.forgotten = old;
                    }
                }
            }
            let series = match self.series.entry(key.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(Series::new(&key)?),
            };
            series.trades.push(rows.clone());
            series.running.add(&rows, &series.trades)?;
            series.changed()?;
            // A feed commits a few trades of each series at a time: every view clone and
            // recompute would otherwise walk hundreds of tiny batches per series.
            if series.trades.len() > MAX_BATCHES {
                let merged =
                    arrow::compute::concat_batches(&series.trades[0].schema(), &series.trades)?;
                series.trades = vec![merged];
            }
            gained.push(key);
        }
        Ok(gained)
    }

    /// Raises (never lowers) the floor and forgets the trades below it; returns the series
    /// that lost trades.
    pub fn raise_floor(&mut self, floor: i64) -> Result<Vec<(String, String)>> {
        let mut lost = Vec::new();
        if floor <= self.floor {
            return Ok(lost);
        }
        self.floor = floor;
        for (key, series) in self.series.iter_mut() {
            let mut kept = Vec::with_capacity(series.trades.len());
            let mut dropped = false;
            for b in series.trades.iter() {
                let after = at_or_after(b, floor)?;
                dropped |= after.num_rows() < b.num_rows();
                if after.num_rows() > 0 {
                    kept.push(after);
                }
            }
            series.trades = kept;
            if dropped {
                lost.push(key.clone());
                self.added.remove(key);
                series.running.forget_before(floor, &series.trades)?;
                series.changed()?;
            }
        }
        self.series.retain(|_, s| !s.trades.is_empty());
        Ok(lost)
    }

    /// Forgets the trades in `ranges` (their partitions were dropped).
    pub fn drop_ranges(&mut self, ranges: &[(i64, i64)]) -> Result<()> {
        for series in self.series.values_mut() {
            let mut kept = Vec::with_capacity(series.trades.len());
            let mut dropped = false;
            for b in series.trades.iter() {
                let ts = time_column(TableKind::Trades, b)?;
                let keep: BooleanArray = ts
                    .values()
                    .iter()
                    .map(|t| Some(!ranges.iter().any(|(s, e)| s <= t && t < e)))
                    .collect();
                let after = filter_record_batch(b, &keep)?;
                dropped |= after.num_rows() < b.num_rows();
                if after.num_rows() > 0 {
                    kept.push(after);
                }
            }
            series.trades = kept;
            if dropped {
                series.running.recompute_ranges(ranges, &series.trades)?;
                series.changed()?;
            }
        }
        self.series.retain(|_, s| !s.trades.is_empty());
        Ok(())
    }

    /// The series' live bars (none when it has no unbuilt trade).
    pub fn bars(&self, exchange: &str, symbol: &str) -> Option<Arc<LiveBars>> {
        self.series
            .get(&(exchange.to_string(), symbol.to_string()))
            .map(|s| Arc::clone(&s.bars))
    }

    /// The earliest trade time added to the series by the additions stamped after
    /// `generation`, if all of them are remembered (`None`: not known, or none).
    pub fn added_since(&self, exchange: &str, symbol: &str, generation: u64) -> Option<i64> {
        let added = self
            .added
            .get(&(exchange.to_string(), symbol.to_string()))?;
        if generation < added.forgotten {
            return None;
        }
        added
            .log
            .iter()
            .filter(|(stamp, _)| *stamp > generation)
            .map(|(_, t)| *t)
            .min()
    }

    pub fn rows(&self) -> usize {
        self.series
            .values()
            .flat_map(|s| s.trades.iter().map(|b| b.num_rows()))
            .sum()
    }
}

fn at_or_after(batch: &RecordBatch, floor: i64) -> Result<RecordBatch> {
    let ts = time_column(TableKind::Trades, batch)?;
    if ts.values().iter().all(|t| *t >= floor) {
        return Ok(batch.clone());
    }
    let keep: BooleanArray = ts.values().iter().map(|t| Some(*t >= floor)).collect();
    Ok(filter_record_batch(batch, &keep)?)
}
