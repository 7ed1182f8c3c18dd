//! Trades not yet built into bars, kept in memory per series as they are committed, so live
//! bars (windows past a table's cutoff) are computed without reading Parquet.
//!
//! Holds the trades at or after the floor: the lower of the 1m and 5m cutoffs (what neither
//! incremental table has persisted yet), but never more than the 1m hot horizon back.

use std::collections::HashMap;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;

use super::entry::by_series;
use crate::storage::files::{conform, time_column};
use crate::storage::{Result, TableKind};

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

#[derive(Debug, Default, Clone)]
pub struct LiveTrades {
    series: HashMap<(String, String), Vec<RecordBatch>>,
    added: HashMap<(String, String), Added>,
    floor: i64,
    /// The newest trade time ever handed over (kept when trades are dropped): the source lag.
    newest: Option<i64>,
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
            let batches = self.series.entry(key.clone()).or_default();
            batches.push(rows);
            // A feed commits a few trades of each series at a time: every live read would
            // otherwise walk (and every view clone) hundreds of tiny batches per series.
            if batches.len() > MAX_BATCHES {
                let merged = arrow::compute::concat_batches(&batches[0].schema(), &*batches)?;
                *batches = vec![merged];
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
        for (key, batches) in self.series.iter_mut() {
            let mut kept = Vec::with_capacity(batches.len());
            let mut dropped = false;
            for b in batches.iter() {
                let after = at_or_after(b, floor)?;
                dropped |= after.num_rows() < b.num_rows();
                if after.num_rows() > 0 {
                    kept.push(after);
                }
            }
            if dropped {
                lost.push(key.clone());
                self.added.remove(key);
            }
            *batches = kept;
        }
        self.series.retain(|_, b| !b.is_empty());
        Ok(lost)
    }

    /// Forgets the trades in `ranges` (their partitions were dropped).
    pub fn drop_ranges(&mut self, ranges: &[(i64, i64)]) -> Result<()> {
        for batches in self.series.values_mut() {
            let mut kept = Vec::with_capacity(batches.len());
            for b in batches.iter() {
                let ts = time_column(TableKind::Trades, b)?;
                let keep: BooleanArray = ts
                    .values()
                    .iter()
                    .map(|t| Some(!ranges.iter().any(|(s, e)| s <= t && t < e)))
                    .collect();
                let b = filter_record_batch(b, &keep)?;
                if b.num_rows() > 0 {
                    kept.push(b);
                }
            }
            *batches = kept;
        }
        self.series.retain(|_, b| !b.is_empty());
        Ok(())
    }

    /// The series' trades (shared buffers, no copy of the values).
    pub fn trades(&self, exchange: &str, symbol: &str) -> Vec<RecordBatch> {
        self.series
            .get(&(exchange.to_string(), symbol.to_string()))
            .cloned()
            .unwrap_or_default()
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
            .flat_map(|b| b.iter().map(|b| b.num_rows()))
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
