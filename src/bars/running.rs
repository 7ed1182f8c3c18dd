//! Bars of one series kept up to date trade by trade: the live bars a server shows between
//! builds. Adding trades costs what they hold, not what their windows hold, and the bars are
//! bit-identical to the kernel's over each window's trades (the builder's scope: it
//! recomputes whole windows), because they are the same aggregate (`kernel::Acc`) with the
//! same order-independent sums.
//!
//! Each window remembers the ids it counted. A trade whose id its window already holds is a
//! copy, and which copy counts depends on all of them (the smallest by content), so that
//! window is recomputed from the series' trades, which the caller keeps; a feed that
//! re-delivers costs a recompute of the window per copy, as every read did before.

use std::cmp::Ordering;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use arrow::array::RecordBatch;

use super::columns::{column, FxHashMap, FxHashSet, Strings, TradeIds, TEXT_ID};
use super::error::{Error, Result};
use super::kernel::{bar_batch, decimal, itoa_buf, positive_window, Acc, Bar};
use super::order::{buy_flags, floats, micros};

/// A trade id as the kernel compares it: canonical decimals as numbers, the rest as text,
/// ordered as the text the trades table stores.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Id {
    Number(u64),
    Text(Box<str>),
}

impl Id {
    fn cmp_text(&self, other: &Id) -> Ordering {
        let (mut a, mut b) = (itoa_buf(), itoa_buf());
        let left: &[u8] = match self {
            Id::Number(n) => decimal(*n, &mut a),
            Id::Text(t) => t.as_bytes(),
        };
        let right: &[u8] = match other {
            Id::Number(n) => decimal(*n, &mut b),
            Id::Text(t) => t.as_bytes(),
        };
        left.cmp(right)
    }
}

/// One trade, as aggregated.
struct Trade {
    ts: i64,
    price: f64,
    qty: f64,
    buy: bool,
    id: Id,
}

impl Trade {
    fn acc(&self) -> Acc<Id> {
        Acc::first(self.id.clone(), self.ts, self.price, self.qty, self.buy)
    }

    fn add_to(&self, acc: &mut Acc<Id>) {
        acc.add(
            &self.id,
            self.ts,
            self.price,
            self.qty,
            self.buy,
            Id::cmp_text,
        );
    }

    /// The order among copies of one id: the smallest counts (as in the kernel).
    fn content_cmp(&self, other: &Trade) -> Ordering {
        self.ts
            .cmp(&other.ts)
            .then(self.price.total_cmp(&other.price))
            .then(self.qty.total_cmp(&other.qty))
            .then(self.buy.cmp(&other.buy))
    }
}

/// The trades of a batch, column by column, validated as the kernel validates them.
struct Columns<'a> {
    ts: &'a [i64],
    price: &'a [f64],
    qty: &'a [f64],
    buy: Vec<bool>,
    ids: TradeIds<'a>,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch) -> Result<Columns<'a>> {
        let ids = TradeIds::new(column(batch, "trade_id")?)?;
        if ids.null_count() > 0 {
            return Err(Error::Input("trade_id is NULL".into()));
        }
        for name in ["ts", "price", "quantity"] {
            if column(batch, name)?.null_count() > 0 {
                return Err(Error::Input(format!("column '{name}' has NULLs")));
            }
        }
        let buy = match batch.column_by_name("side") {
            None => vec![false; batch.num_rows()],
            Some(side) => buy_flags(&Strings::new(side.as_ref(), "side")?),
        };
        Ok(Columns {
            ts: micros(batch)?,
            price: floats(batch, "price")?,
            qty: floats(batch, "quantity")?,
            buy,
            ids,
        })
    }

    fn trade(&self, row: usize) -> Trade {
        let n = self.ids.number(row);
        Trade {
            ts: self.ts[row],
            price: self.price[row],
            qty: self.qty[row],
            buy: self.buy[row],
            id: if n == TEXT_ID {
                Id::Text(self.ids.text(row).into())
            } else {
                Id::Number(n)
            },
        }
    }
}

/// The distinct ids of the trades in one window of the shortest length.
#[derive(Default)]
struct Ids {
    numbers: FxHashSet<u64>,
    texts: FxHashSet<Box<str>>,
}

impl Ids {
    fn contains(&self, id: &Id) -> bool {
        match id {
            Id::Number(n) => self.numbers.contains(n),
            Id::Text(t) => self.texts.contains(t),
        }
    }

    fn insert(&mut self, id: &Id) {
        match id {
            Id::Number(n) => {
                self.numbers.insert(*n);
            }
            Id::Text(t) => {
                self.texts.insert(t.clone());
            }
        }
    }
}

fn fold(acc: &mut Option<Acc<Id>>, trade: &Trade) {
    match acc {
        None => *acc = Some(trade.acc()),
        Some(acc) => trade.add_to(acc),
    }
}

/// The running bars of one series for one window length.
struct Length {
    us: i64,
    /// Windows of the shortest length in one of this length.
    ratio: i64,
    windows: BTreeMap<i64, Acc<Id>>,
}

/// The running bars of one series for a few window lengths (a live series: 1m and 5m).
pub struct RunningBars {
    key: [(String, String); 1],
    /// Ids by window of the shortest length (`lengths[0]`); a longer window's ids are those
    /// of the short windows in it, so each trade's id is held once.
    ids: BTreeMap<i64, Ids>,
    lengths: Vec<Length>,
}

impl RunningBars {
    /// No bars yet, for `exchange`/`symbol` in windows of each of `lengths_us`, the shortest
    /// first and the others multiples of it.
    pub fn new(exchange: &str, symbol: &str, lengths_us: &[i64]) -> Result<RunningBars> {
        lengths_us.iter().try_for_each(|us| positive_window(*us))?;
        let base = *lengths_us
            .first()
            .ok_or_else(|| Error::Input("no window length".into()))?;
        if let Some(us) = lengths_us.iter().find(|us| **us % base != 0) {
            return Err(Error::Input(format!(
                "window length {us}us is not a multiple of {base}us"
            )));
        }
        Ok(RunningBars {
            key: [(exchange.to_string(), symbol.to_string())],
            ids: BTreeMap::new(),
            lengths: lengths_us
                .iter()
                .map(|&us| Length {
                    us,
                    ratio: us / base,
                    windows: BTreeMap::new(),
                })
                .collect(),
        })
    }

    fn base_us(&self) -> i64 {
        self.lengths[0].us
    }

    /// Adds `batch`, trades of this series that `all` (every trade of the series the caller
    /// keeps, `batch` among them) holds. A window that receives a copy of a trade it counted
    /// is recomputed from `all`.
    pub fn add(&mut self, batch: &RecordBatch, all: &[RecordBatch]) -> Result<()> {
        let columns = Columns::of(batch)?;
        let base = self.base_us();
        let mut copies: Vec<(usize, i64)> = Vec::new();
        for row in 0..batch.num_rows() {
            let trade = columns.trade(row);
            let w0 = trade.ts.div_euclid(base);
            for (k, l) in self.lengths.iter_mut().enumerate() {
                let w = w0.div_euclid(l.ratio);
                let copy = self
                    .ids
                    .range(w * l.ratio..(w + 1) * l.ratio)
                    .any(|(_, ids)| ids.contains(&trade.id));
                if copy {
                    copies.push((k, w));
                } else {
                    match l.windows.entry(w) {
                        Entry::Vacant(e) => {
                            e.insert(trade.acc());
                        }
                        Entry::Occupied(mut e) => trade.add_to(e.get_mut()),
                    }
                }
            }
            self.ids.entry(w0).or_default().insert(&trade.id);
        }
        copies.sort_unstable();
        copies.dedup();
        for (k, w) in copies {
            self.recompute(k, w, all)?;
        }
        Ok(())
    }

    /// Forgets the windows that end by `floor` (the caller dropped the trades before it) and
    /// recomputes those that `floor` cuts from what is left of `all`.
    pub fn forget_before(&mut self, floor: i64, all: &[RecordBatch]) -> Result<()> {
        let base = self.base_us();
        let cut = floor.div_euclid(base);
        self.ids = self.ids.split_off(&cut);
        if floor.rem_euclid(base) != 0 {
            self.recount(cut, all)?;
        }
        for k in 0..self.lengths.len() {
            let l = &mut self.lengths[k];
            let cut = floor.div_euclid(l.us);
            l.windows = l.windows.split_off(&cut);
            if floor.rem_euclid(l.us) != 0 && l.windows.contains_key(&cut) {
                self.recompute(k, cut, all)?;
            }
        }
        Ok(())
    }

    /// Recomputes every window that overlaps one of `ranges` (`[start, end)`) from `all`.
    pub fn recompute_ranges(&mut self, ranges: &[(i64, i64)], all: &[RecordBatch]) -> Result<()> {
        let overlaps = |w: i64, us: i64| {
            let (s, e) = (w * us, (w + 1) * us);
            ranges.iter().any(|(a, b)| *a < e && s < *b)
        };
        let base = self.base_us();
        let hit: Vec<i64> = self
            .ids
            .keys()
            .copied()
            .filter(|w| overlaps(*w, base))
            .collect();
        for w in hit {
            self.recount(w, all)?;
        }
        for k in 0..self.lengths.len() {
            let us = self.lengths[k].us;
            let hit: Vec<i64> = self.lengths[k]
                .windows
                .keys()
                .copied()
                .filter(|w| overlaps(*w, us))
                .collect();
            for w in hit {
                self.recompute(k, w, all)?;
            }
        }
        Ok(())
    }

    /// The trades of `all` with times in `[start, end)`.
    fn trades_in(all: &[RecordBatch], start: i64, end: i64) -> Result<Vec<Trade>> {
        let mut out = Vec::new();
        for batch in all {
            let columns = Columns::of(batch)?;
            for row in 0..batch.num_rows() {
                if (start..end).contains(&columns.ts[row]) {
                    out.push(columns.trade(row));
                }
            }
        }
        Ok(out)
    }

    /// The ids of shortest window `w0` from `all`.
    fn recount(&mut self, w0: i64, all: &[RecordBatch]) -> Result<()> {
        let base = self.base_us();
        let mut ids = Ids::default();
        for trade in Self::trades_in(all, w0 * base, (w0 + 1) * base)? {
            ids.insert(&trade.id);
        }
        if ids.numbers.is_empty() && ids.texts.is_empty() {
            self.ids.remove(&w0);
        } else {
            self.ids.insert(w0, ids);
        }
        Ok(())
    }

    /// Window `w` of `lengths[k]` from the trades of `all` in it: each id's smallest copy.
    fn recompute(&mut self, k: usize, w: i64, all: &[RecordBatch]) -> Result<()> {
        let us = self.lengths[k].us;
        let mut best: FxHashMap<Id, Trade> = FxHashMap::default();
        for trade in Self::trades_in(all, w * us, (w + 1) * us)? {
            match best.get_mut(&trade.id) {
                Some(kept) if trade.content_cmp(kept) != Ordering::Less => {}
                Some(kept) => *kept = trade,
                None => {
                    best.insert(trade.id.clone(), trade);
                }
            }
        }
        let mut acc = None;
        for trade in best.into_values() {
            fold(&mut acc, &trade);
        }
        let windows = &mut self.lengths[k].windows;
        match acc {
            Some(acc) => windows.insert(w, acc),
            None => windows.remove(&w),
        };
        Ok(())
    }

    /// The bars of `lengths[k]` whose windows start in `[start, end)`, as the kernel makes
    /// them (stamped `built_at`).
    pub fn bars(&self, k: usize, start: i64, end: i64, built_at: i64) -> Result<RecordBatch> {
        let l = &self.lengths[k];
        let (from, to) = (start.div_euclid(l.us), end.div_euclid(l.us));
        let from = if from.saturating_mul(l.us) < start {
            from + 1
        } else {
            from
        };
        let bars: Vec<Bar> = if from >= to {
            Vec::new()
        } else {
            l.windows
                .range(from..to)
                .map(|(w, acc)| acc.finish(0, *w))
                .collect()
        };
        bar_batch(&bars, &self.key, l.us, built_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bars::compute_bars_us;
    use arrow::array::{Float64Array, StringArray, TimestampMicrosecondArray};
    use std::sync::Arc;

    fn batch(rows: &[(&str, i64, f64, f64, &str)]) -> RecordBatch {
        let n = rows.len();
        RecordBatch::try_from_iter([
            (
                "exchange",
                Arc::new(StringArray::from(vec!["x"; n])) as arrow::array::ArrayRef,
            ),
            ("symbol", Arc::new(StringArray::from(vec!["S"; n]))),
            (
                "trade_id",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            ),
            (
                "ts",
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                        .with_timezone("UTC"),
                ),
            ),
            (
                "price",
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ),
            (
                "quantity",
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
            ),
            (
                "side",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.4))),
            ),
        ])
        .unwrap()
    }

    /// The kernel over each window's trades, window by window (the builder's scope).
    fn by_window(all: &[RecordBatch], us: i64) -> RecordBatch {
        let merged = arrow::compute::concat_batches(&all[0].schema(), all).unwrap();
        let ts = micros(&merged).unwrap().to_vec();
        let mut windows: Vec<i64> = ts.iter().map(|t| t.div_euclid(us)).collect();
        windows.sort();
        windows.dedup();
        let parts: Vec<RecordBatch> = windows
            .iter()
            .map(|w| {
                let keep: arrow::array::BooleanArray =
                    ts.iter().map(|t| Some(t.div_euclid(us) == *w)).collect();
                let rows = arrow::compute::filter_record_batch(&merged, &keep).unwrap();
                compute_bars_us(&[rows], us, 7).unwrap()
            })
            .collect();
        arrow::compute::concat_batches(&parts[0].schema(), &parts).unwrap()
    }

    /// Feeds `batches` one at a time and checks the bars after each against the kernel.
    fn check(batches: &[RecordBatch], us: i64) {
        let mut running = RunningBars::new("x", "S", &[us, 5 * us]).unwrap();
        for n in 1..=batches.len() {
            running.add(&batches[n - 1], &batches[..n]).unwrap();
            for (length, us) in [(0, us), (1, 5 * us)] {
                let got = running.bars(length, i64::MIN / 2, i64::MAX / 2, 7).unwrap();
                assert_eq!(got, by_window(&batches[..n], us), "after batch {n}, {us}us");
            }
        }
    }

    #[test]
    fn equals_the_kernel_trade_by_trade() {
        // Bursts at one microsecond (ids decide open and close), text and numeric ids that
        // order differently as text ("10" < "9"), sells and buys.
        check(
            &[
                batch(&[("9", 5, 10.0, 1.0, "buy"), ("10", 5, 11.0, 0.5, "sell")]),
                batch(&[("b-1", 5, 9.0, 0.25, "buy"), ("8", 61, 12.5, 0.1, "sell")]),
                batch(&[("100", 0, 8.0, 2.0, "sell"), ("a", 59, 10.1, 0.3, "buy")]),
                batch(&[("101", 299, 7.0, 1.0, "buy"), ("102", 301, 7.5, 1.0, "buy")]),
            ],
            60,
        );
    }

    #[test]
    fn a_copy_recomputes_its_window_and_the_smallest_counts() {
        check(
            &[
                batch(&[("1", 10, 10.0, 1.0, "buy"), ("2", 20, 11.0, 1.0, "sell")]),
                // A copy of 2 that is smaller (lower price), and a larger copy of 1.
                batch(&[("2", 20, 10.5, 1.0, "sell"), ("1", 10, 10.0, 2.0, "buy")]),
                // Two copies of a new id in one batch.
                batch(&[("3", 30, 9.0, 1.0, "buy"), ("3", 30, 9.0, 1.0, "buy")]),
            ],
            60,
        );
    }

    #[test]
    fn forgets_windows_before_the_floor() {
        let batches = [batch(&[
            ("1", 10, 10.0, 1.0, "buy"),
            ("2", 70, 11.0, 1.0, "sell"),
            ("3", 130, 12.0, 1.0, "sell"),
        ])];
        let mut running = RunningBars::new("x", "S", &[60, 300]).unwrap();
        running.add(&batches[0], &batches).unwrap();
        // The caller dropped the trades before 60: what is left is two windows of 60 us and
        // one of 300 us that the floor cuts, recomputed from the rest.
        let keep: arrow::array::BooleanArray = [false, true, true].into_iter().map(Some).collect();
        let left = [arrow::compute::filter_record_batch(&batches[0], &keep).unwrap()];
        running.forget_before(60, &left).unwrap();
        assert_eq!(running.bars(0, 0, 1000, 7).unwrap(), by_window(&left, 60));
        assert_eq!(running.bars(1, 0, 1000, 7).unwrap(), by_window(&left, 300));
        assert_eq!(running.bars(0, 60, 120, 7).unwrap().num_rows(), 1);
    }

    #[test]
    fn equals_the_kernel_on_random_feeds() {
        // Bursts of one microsecond, re-delivered copies (some changed), ids of both kinds,
        // trades late by a window or two, in batches of 1-20.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..20 {
            let mut rows: Vec<(String, i64, f64, f64, &str)> = Vec::new();
            let mut t = 1_000i64;
            for i in 0..300 {
                if next(3) > 0 {
                    t += next(40) as i64;
                }
                let ts = if next(10) == 0 {
                    t - next(200) as i64
                } else {
                    t
                };
                let id = if next(12) == 0 && i > 0 {
                    // A copy of an earlier trade, sometimes with other values.
                    let (id, ts0, p, q, side) = rows[next(i as u64) as usize].clone();
                    if next(2) == 0 {
                        rows.push((id, ts0, p, q, side));
                        continue;
                    }
                    id
                } else if next(4) == 0 {
                    format!("t{}", next(1000))
                } else {
                    (next(5000)).to_string()
                };
                let price = 100.0 + next(50) as f64 / 8.0;
                let qty = (1 + next(16)) as f64 / 4.0;
                rows.push((
                    id,
                    ts,
                    price,
                    qty,
                    if next(2) == 0 { "buy" } else { "sell" },
                ));
            }
            let mut batches = Vec::new();
            let mut at = 0;
            while at < rows.len() {
                let n = (1 + next(20) as usize).min(rows.len() - at);
                let part: Vec<(&str, i64, f64, f64, &str)> = rows[at..at + n]
                    .iter()
                    .map(|(id, ts, p, q, s)| (id.as_str(), *ts, *p, *q, *s))
                    .collect();
                batches.push(batch(&part));
                at += n;
            }
            check(&batches, 60);
        }
    }
}
