//! The bar kernel: trades to bars of one timeframe, exactly as ARCHITECTURE.md defines them.
//!
//! - windows are half-open and epoch aligned: `window = ts.div_euclid(tf)`;
//! - trades are deduplicated on `(exchange, symbol, trade_id)` among the trades given; when
//!   copies disagree, the copy smallest by `(ts, price, quantity, side)` is kept, so the result
//!   never depends on the order in which the copies were delivered. (Builds recompute whole
//!   windows, so re-delivered copies, which carry the same timestamp, are always seen
//!   together.)
//! - open/close are the trades first/last by `(ts, trade_id)` (trade ids compare as text);
//! - sums are accumulated in 128-bit fixed point (2^-64 resolution) and rounded once, so they
//!   do not depend on row order either: recomputing a window over the same trades in any file
//!   order gives bit-identical bars, which is what makes rebuilds idempotent.
//!
//! Work is split across cores twice: batches are decoded in parallel, then rows are grouped by
//! `(exchange, symbol)` with a counting sort and each core aggregates whole series, so no
//! state is shared while aggregating.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Float64Type, TimeUnit, TimestampMicrosecondType};

use super::columns::{column, FxHashMap, FxHashSet, Strings, TradeIds, TEXT_ID};
use super::error::{Error, Result};
use crate::storage::TableKind;
use crate::timeframe::Timeframe;

/// Fixed-point scale of the sums: exact for every double with magnitude up to 2^63.
const SCALE: f64 = 18_446_744_073_709_551_616.0; // 2^64

#[inline]
pub(crate) fn fix(x: f64) -> i128 {
    (x * SCALE) as i128
}

#[inline]
pub(crate) fn unfix(v: i128) -> f64 {
    v as f64 / SCALE
}

/// Computes the bars of `tf` for every window that holds at least one of `batches`' trades.
/// `built_at` (UTC microseconds) stamps every bar; revisions start at 0.
pub fn compute_bars(batches: &[RecordBatch], tf: Timeframe, built_at: i64) -> Result<RecordBatch> {
    compute_bars_us(batches, tf.micros(), built_at)
}

/// As [`compute_bars`], for any window length in microseconds.
pub fn compute_bars_us(batches: &[RecordBatch], tf_us: i64, built_at: i64) -> Result<RecordBatch> {
    if tf_us <= 0 {
        return Err(Error::Input(format!(
            "window length {tf_us}us is not positive"
        )));
    }
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    let trades = Trades::decode(&batches)?;
    let bars = trades.aggregate(tf_us);
    trades.to_batch(&bars, tf_us, built_at)
}

/// Threads worth using for `rows` trades: small inputs (live bars of one series) stay on one.
/// `work` on each part, one scoped thread per part; a single part runs on the calling thread
/// (a candle query's live bars are a few hundred trades: a thread per query cost more than
/// the bars).
fn on_threads<I: Send, T: Send>(parts: Vec<I>, work: impl Fn(I) -> T + Sync) -> Vec<T> {
    if parts.len() <= 1 {
        return parts.into_iter().map(work).collect();
    }
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || work(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("kernel thread"))
            .collect()
    })
}

fn threads(rows: usize) -> usize {
    if rows < 1 << 16 {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Trade columns permuted so that each series' rows are contiguous (in file order within the
/// series): aggregation then reads memory sequentially instead of chasing row indices.
struct Trades<'a> {
    ids: Vec<TradeIds<'a>>,
    /// First global row of each batch.
    offsets: Vec<usize>,
    /// `(exchange, symbol)` of each series id, sorted.
    series_keys: Vec<(String, String)>,
    /// Where each series' rows start in the permuted columns (one extra entry at the end).
    starts: Vec<usize>,
    ts: Vec<i64>,
    price: Vec<f64>,
    qty: Vec<f64>,
    id: Vec<u64>,
    buy: Vec<bool>,
    /// Original global row of each permuted position (to read text ids back).
    row: Vec<u32>,
}

/// One batch's decoded columns, with series ids local to the batch.
struct Decoded<'a> {
    ids: TradeIds<'a>,
    pairs: Vec<(String, String)>,
    local: Vec<u32>,
    id: Vec<u64>,
    buy: Vec<bool>,
}

fn decode_batch<'a>(batch: &'a RecordBatch, offset: usize) -> Result<Decoded<'a>> {
    let exchange = Strings::new(column(batch, "exchange")?, "exchange")?;
    let symbol = Strings::new(column(batch, "symbol")?, "symbol")?;
    let ids = TradeIds::new(column(batch, "trade_id")?)?;
    let ts = column(batch, "ts")?;
    let price = column(batch, "price")?;
    let qty = column(batch, "quantity")?;
    for (name, nulls) in [
        ("exchange", exchange.null_count()),
        ("symbol", symbol.null_count()),
        ("ts", ts.null_count()),
        ("price", price.null_count()),
        ("quantity", qty.null_count()),
    ] {
        if nulls > 0 {
            return Err(Error::Input(format!(
                "column '{name}' has NULLs near row {offset}"
            )));
        }
    }
    let n = batch.num_rows();
    if let Some(row) = (0..n).find(|&r| ids.is_null(r)) {
        return Err(Error::Input(format!(
            "trade_id is NULL at row {}",
            offset + row
        )));
    }
    for (name, values) in [
        ("price", price.as_primitive::<Float64Type>().values()),
        ("quantity", qty.as_primitive::<Float64Type>().values()),
    ] {
        if let Some(row) = values.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::Input(format!(
                "{name} {} at row {} is not a positive finite number",
                values[row],
                offset + row
            )));
        }
    }

    let mut pairs = Vec::new();
    let mut local = Vec::with_capacity(n);
    match (&exchange, &symbol) {
        (
            Strings::Dict {
                keys: ek,
                values: ev,
                ..
            },
            Strings::Dict {
                keys: sk,
                values: sv,
                ..
            },
        ) => {
            let mut map: FxHashMap<(usize, usize), u32> = FxHashMap::default();
            for (e, s) in ek.iter().zip(sk) {
                let next = map.len() as u32;
                let id = *map.entry((*e, *s)).or_insert_with(|| {
                    pairs.push((ev.value(*e).to_string(), sv.value(*s).to_string()));
                    next
                });
                local.push(id);
            }
        }
        _ => {
            let mut map: FxHashMap<(&str, &str), u32> = FxHashMap::default();
            for row in 0..n {
                let key = (exchange.value(row), symbol.value(row));
                let next = map.len() as u32;
                let id = *map.entry(key).or_insert_with(|| {
                    pairs.push((key.0.to_string(), key.1.to_string()));
                    next
                });
                local.push(id);
            }
        }
    }
    let id = (0..n).map(|r| ids.number(r)).collect();
    let buy = match batch.column_by_name("side") {
        None => vec![false; n],
        Some(side) => {
            let side = Strings::new(side.as_ref(), "side")?;
            (0..n)
                .map(|r| !side.is_null(r) && side.value(r).eq_ignore_ascii_case("buy"))
                .collect()
        }
    };
    Ok(Decoded {
        ids,
        pairs,
        local,
        id,
        buy,
    })
}

fn micros(batch: &RecordBatch) -> Result<&[i64]> {
    let ts = column(batch, "ts")?;
    match ts.data_type() {
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Ok(ts.as_primitive::<TimestampMicrosecondType>().values())
        }
        other => Err(Error::Input(format!(
            "column 'ts' is {other}, expected microsecond timestamps"
        ))),
    }
}

fn floats<'b>(batch: &'b RecordBatch, name: &str) -> Result<&'b [f64]> {
    let array = column(batch, name)?;
    match array.data_type() {
        DataType::Float64 => Ok(array.as_primitive::<Float64Type>().values()),
        other => Err(Error::Input(format!(
            "column '{name}' is {other}, expected Float64"
        ))),
    }
}

impl<'a> Trades<'a> {
    fn decode(batches: &[&'a RecordBatch]) -> Result<Trades<'a>> {
        let mut offsets = Vec::with_capacity(batches.len());
        let mut total = 0;
        for b in batches {
            offsets.push(total);
            total += b.num_rows();
        }
        for b in batches {
            micros(b)?;
            floats(b, "price")?;
            floats(b, "quantity")?;
        }
        let chunk = batches.len().div_ceil(threads(total)).max(1);
        let parts: Vec<_> = batches.chunks(chunk).zip(offsets.chunks(chunk)).collect();
        let decoded: Vec<Decoded<'a>> = on_threads(parts, |(bs, offs)| {
            bs.iter()
                .zip(offs)
                .map(|(b, o)| decode_batch(b, *o))
                .collect::<Result<Vec<_>>>()
        })
        .into_iter()
        .collect::<Result<Vec<Vec<_>>>>()?
        .into_iter()
        .flatten()
        .collect();

        // Global series ids, numbered in (exchange, symbol) order so output comes out sorted.
        let mut keys: Vec<(String, String)> = decoded
            .iter()
            .flat_map(|d| d.pairs.iter().cloned())
            .collect::<FxHashSet<_>>()
            .into_iter()
            .collect();
        keys.sort_unstable();
        let index: FxHashMap<&(String, String), u32> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k, i as u32))
            .collect();

        let remaps: Vec<Vec<u32>> = decoded
            .iter()
            .map(|d| d.pairs.iter().map(|p| index[p]).collect())
            .collect();
        drop(index);
        // Counting sort by series: count, prefix-sum, then scatter every column once.
        let mut starts = vec![0usize; keys.len() + 1];
        for (d, remap) in decoded.iter().zip(&remaps) {
            for l in &d.local {
                starts[remap[*l as usize] as usize + 1] += 1;
            }
        }
        for i in 0..keys.len() {
            starts[i + 1] += starts[i];
        }
        let mut next = starts.clone();
        let mut ts = vec![0i64; total];
        let mut price = vec![0f64; total];
        let mut qty = vec![0f64; total];
        let mut id = vec![0u64; total];
        let mut buy = vec![false; total];
        let mut row = vec![0u32; total];
        let mut ids = Vec::with_capacity(decoded.len());
        for ((b, d), (remap, offset)) in
            batches.iter().zip(decoded).zip(remaps.iter().zip(&offsets))
        {
            let (bts, bprice, bqty) = (micros(b)?, floats(b, "price")?, floats(b, "quantity")?);
            for (r, l) in d.local.iter().enumerate() {
                let slot = &mut next[remap[*l as usize] as usize];
                let p = *slot;
                *slot += 1;
                ts[p] = bts[r];
                price[p] = bprice[r];
                qty[p] = bqty[r];
                id[p] = d.id[r];
                buy[p] = d.buy[r];
                row[p] = (offset + r) as u32;
            }
            ids.push(d.ids);
        }
        Ok(Trades {
            ids,
            offsets,
            series_keys: keys,
            starts,
            ts,
            price,
            qty,
            id,
            buy,
            row,
        })
    }

    /// The trade id of global row `row` as text.
    fn id_text(&self, row: u32) -> Cow<'a, str> {
        let row = row as usize;
        let batch = self.offsets.partition_point(|&o| o <= row) - 1;
        self.ids[batch].text(row - self.offsets[batch])
    }

    /// Orders two positions by trade id as the table stores it (text).
    fn id_cmp(&self, a: usize, b: usize) -> Ordering {
        let (x, y) = (self.id[a], self.id[b]);
        if x != TEXT_ID && y != TEXT_ID {
            let mut bx = itoa_buf();
            let mut by = itoa_buf();
            return decimal(x, &mut bx).cmp(decimal(y, &mut by));
        }
        self.id_text(self.row[a]).cmp(&self.id_text(self.row[b]))
    }

    fn aggregate(&self, tf_us: i64) -> Vec<Bar> {
        let starts = &self.starts;
        let n_series = self.series_keys.len();
        // Contiguous series ranges of about equal row counts, one per core.
        let per_thread = self.ts.len().div_ceil(threads(self.ts.len())).max(1);
        let mut ranges = Vec::new();
        let mut from = 0;
        for s in 0..n_series {
            if starts[s + 1] - starts[from] >= per_thread || s + 1 == n_series {
                ranges.push(from..s + 1);
                from = s + 1;
            }
        }
        on_threads(ranges, |range| {
            let mut out = Vec::new();
            for s in range {
                self.aggregate_series(s as u32, starts[s]..starts[s + 1], tf_us, &mut out);
            }
            out
        })
        .into_iter()
        .flatten()
        .collect()
    }

    fn aggregate_series(
        &self,
        series: u32,
        rows: std::ops::Range<usize>,
        tf_us: i64,
        out: &mut Vec<Bar>,
    ) {
        let keep = self.dedupe(rows.clone());
        let kept = |p: usize| keep.as_ref().is_none_or(|k| k[p - rows.start]);
        let (mut wmin, mut wmax) = (i64::MAX, i64::MIN);
        for p in rows.clone() {
            if kept(p) {
                let w = self.ts[p].div_euclid(tf_us);
                wmin = wmin.min(w);
                wmax = wmax.max(w);
            }
        }
        if wmin > wmax {
            return;
        }
        let span = (wmax - wmin) as u128 + 1;
        if span <= (4 * rows.len() + 1024) as u128 {
            let mut accs: Vec<Option<Acc>> = vec![None; span as usize];
            for p in rows.clone() {
                if kept(p) {
                    let w = self.ts[p].div_euclid(tf_us);
                    self.add(&mut accs[(w - wmin) as usize], p);
                }
            }
            for (offset, acc) in accs.into_iter().enumerate() {
                if let Some(acc) = acc {
                    out.push(acc.finish(series, wmin + offset as i64));
                }
            }
        } else {
            let mut accs: FxHashMap<i64, Option<Acc>> = FxHashMap::default();
            for p in rows.clone() {
                if kept(p) {
                    let w = self.ts[p].div_euclid(tf_us);
                    self.add(accs.entry(w).or_default(), p);
                }
            }
            let mut windows: Vec<_> = accs.into_iter().collect();
            windows.sort_unstable_by_key(|(w, _)| *w);
            out.extend(
                windows
                    .into_iter()
                    .filter_map(|(w, acc)| acc.map(|a| a.finish(series, w))),
            );
        }
    }

    #[inline]
    fn add(&self, slot: &mut Option<Acc>, p: usize) {
        let (ts, price, qty) = (self.ts[p], self.price[p], self.qty[p]);
        let quote = fix(price * qty);
        let vol = fix(qty);
        let buy = if self.buy[p] { vol } else { 0 };
        match slot {
            None => {
                *slot = Some(Acc {
                    open_pos: p,
                    open_ts: ts,
                    open: price,
                    close_pos: p,
                    close_ts: ts,
                    close: price,
                    high: price,
                    low: price,
                    volume: vol,
                    quote,
                    buy,
                    count: 1,
                })
            }
            Some(acc) => {
                if ts < acc.open_ts
                    || (ts == acc.open_ts && self.id_cmp(p, acc.open_pos) == Ordering::Less)
                {
                    (acc.open_pos, acc.open_ts, acc.open) = (p, ts, price);
                }
                if ts > acc.close_ts
                    || (ts == acc.close_ts && self.id_cmp(p, acc.close_pos) == Ordering::Greater)
                {
                    (acc.close_pos, acc.close_ts, acc.close) = (p, ts, price);
                }
                acc.high = acc.high.max(price);
                acc.low = acc.low.min(price);
                acc.volume += vol;
                acc.quote += quote;
                acc.buy += buy;
                acc.count += 1;
            }
        }
    }

    /// Which positions of a series survive deduplication (`None`: all of them), indexed from
    /// `rows.start`.
    fn dedupe(&self, rows: std::ops::Range<usize>) -> Option<Vec<bool>> {
        let mut dup_numbers: FxHashSet<u64> = FxHashSet::default();
        let mut dup_texts: FxHashSet<Cow<'a, str>> = FxHashSet::default();
        let ids = &self.id[rows.clone()];
        let (mut lo, mut hi, mut numeric) = (u64::MAX, 0u64, 0usize);
        for &id in ids {
            if id != TEXT_ID {
                lo = lo.min(id);
                hi = hi.max(id);
                numeric += 1;
            }
        }
        if numeric > 0 {
            let span = hi - lo + 1;
            if span <= 64 * numeric as u64 + 65_536 {
                let mut bits = vec![0u64; span.div_ceil(64) as usize];
                for &id in ids {
                    if id != TEXT_ID {
                        let bit = id - lo;
                        let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
                        if bits[word] & mask != 0 {
                            dup_numbers.insert(id);
                        }
                        bits[word] |= mask;
                    }
                }
            } else {
                let mut seen: FxHashSet<u64> = FxHashSet::default();
                seen.reserve(numeric);
                for &id in ids {
                    if id != TEXT_ID && !seen.insert(id) {
                        dup_numbers.insert(id);
                    }
                }
            }
        }
        if numeric < ids.len() {
            let mut seen: FxHashSet<Cow<'a, str>> = FxHashSet::default();
            for p in rows.clone() {
                if self.id[p] == TEXT_ID {
                    let text = self.id_text(self.row[p]);
                    if seen.contains(&text) {
                        dup_texts.insert(text);
                    } else {
                        seen.insert(text);
                    }
                }
            }
        }
        if dup_numbers.is_empty() && dup_texts.is_empty() {
            return None;
        }
        // Among the copies of each duplicated id, keep the smallest by content.
        let key = |p: usize| -> Option<Cow<'a, str>> {
            let id = self.id[p];
            if id != TEXT_ID {
                dup_numbers
                    .contains(&id)
                    .then(|| Cow::Owned(id.to_string()))
            } else {
                let text = self.id_text(self.row[p]);
                dup_texts.contains(&text).then_some(text)
            }
        };
        let mut best: FxHashMap<Cow<'a, str>, usize> = FxHashMap::default();
        for p in rows.clone() {
            if let Some(k) = key(p) {
                let better = match best.get(&k) {
                    None => true,
                    Some(&q) => self.content_cmp(p, q) == Ordering::Less,
                };
                if better {
                    best.insert(k, p);
                }
            }
        }
        let mut keep = vec![true; rows.len()];
        for p in rows.clone() {
            if let Some(k) = key(p) {
                keep[p - rows.start] = best[&k] == p;
            }
        }
        Some(keep)
    }

    fn content_cmp(&self, a: usize, b: usize) -> Ordering {
        self.ts[a]
            .cmp(&self.ts[b])
            .then(self.price[a].total_cmp(&self.price[b]))
            .then(self.qty[a].total_cmp(&self.qty[b]))
            .then(self.buy[a].cmp(&self.buy[b]))
    }

    fn to_batch(&self, bars: &[Bar], tf_us: i64, built_at: i64) -> Result<RecordBatch> {
        let n = bars.len();
        let key = |b: &Bar| &self.series_keys[b.series as usize];
        let ts = |v: Vec<i64>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
        };
        let f = |g: fn(&Bar) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from_iter_values(bars.iter().map(g)))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                bars.iter().map(|b| &key(b).0),
            )),
            Arc::new(StringArray::from_iter_values(
                bars.iter().map(|b| &key(b).1),
            )),
            ts(bars.iter().map(|b| b.window * tf_us).collect()),
            ts(bars.iter().map(|b| (b.window + 1) * tf_us).collect()),
            f(|b| b.open),
            f(|b| b.high),
            f(|b| b.low),
            f(|b| b.close),
            f(|b| b.volume),
            f(|b| b.quote_volume),
            f(|b| b.quote_volume / b.volume),
            Arc::new(Int64Array::from_iter_values(bars.iter().map(|b| b.count))),
            f(|b| b.buy_volume),
            ts(bars.iter().map(|b| b.first_ts).collect()),
            ts(bars.iter().map(|b| b.last_ts).collect()),
            Arc::new(Int32Array::from(vec![0; n])),
            ts(vec![built_at; n]),
        ];
        Ok(RecordBatch::try_new(
            TableKind::Bars(Timeframe::M1).arrow_schema()?,
            columns,
        )?)
    }
}

fn itoa_buf() -> [u8; 20] {
    [0u8; 20]
}

fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

#[derive(Clone, Copy)]
struct Acc {
    open_pos: usize,
    open_ts: i64,
    open: f64,
    close_pos: usize,
    close_ts: i64,
    close: f64,
    high: f64,
    low: f64,
    volume: i128,
    quote: i128,
    buy: i128,
    count: i64,
}

impl Acc {
    fn finish(self, series: u32, window: i64) -> Bar {
        Bar {
            series,
            window,
            open: self.open,
            high: self.high,
            low: self.low,
            close: self.close,
            volume: unfix(self.volume),
            quote_volume: unfix(self.quote),
            buy_volume: unfix(self.buy),
            count: self.count,
            first_ts: self.open_ts,
            last_ts: self.close_ts,
        }
    }
}

/// One finished bar before it becomes Arrow columns.
struct Bar {
    series: u32,
    window: i64,
    open: f64,
    high: f64,
    low: f64,
    close: f64,
    volume: f64,
    quote_volume: f64,
    buy_volume: f64,
    count: i64,
    first_ts: i64,
    last_ts: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    type T<'a> = (&'a str, &'a str, &'a str, i64, f64, f64, Option<&'a str>);

    fn trades(rows: &[T]) -> RecordBatch {
        RecordBatch::try_new(
            crate::trades::generate::trade_input_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.3))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.4))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.5))),
                Arc::new(rows.iter().map(|r| r.6).collect::<StringArray>()),
            ],
        )
        .unwrap()
    }

    fn col<'b>(b: &'b RecordBatch, name: &str) -> &'b Float64Array {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
    }

    const M: i64 = 60_000_000;

    #[test]
    fn one_window_exact_semantics() {
        let b = trades(&[
            ("x", "BTC", "5", 10, 100.0, 1.0, Some("buy")),
            ("x", "BTC", "3", 10, 90.0, 2.0, Some("sell")), // same ts, smaller id text: open
            ("x", "BTC", "7", M - 1, 110.0, 1.0, None),     // last instant of the window: close
            ("x", "BTC", "8", M, 500.0, 1.0, None),         // window_end belongs to the next window
        ]);
        let out = compute_bars(&[b], Timeframe::M1, 0).unwrap();
        assert_eq!(out.num_rows(), 2);
        assert_eq!(col(&out, "open").value(0), 90.0);
        assert_eq!(col(&out, "close").value(0), 110.0);
        assert_eq!(col(&out, "high").value(0), 110.0);
        assert_eq!(col(&out, "low").value(0), 90.0);
        assert_eq!(col(&out, "volume").value(0), 4.0);
        assert_eq!(col(&out, "quote_volume").value(0), 390.0);
        assert_eq!(col(&out, "vwap").value(0), 97.5);
        assert_eq!(col(&out, "buy_volume").value(0), 1.0);
        let count = out
            .column_by_name("trade_count")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(count.value(0), 3);
        assert_eq!(col(&out, "open").value(1), 500.0);
    }

    #[test]
    fn trade_ids_tie_break_as_text_and_duplicates_count_once() {
        let b = trades(&[
            ("x", "S", "9", 5, 1.0, 1.0, None),
            ("x", "S", "10", 5, 2.0, 1.0, None), // "10" < "9" as text: open
            ("x", "S", "10", 5, 2.0, 1.0, None), // duplicate
            ("y", "S", "10", 5, 3.0, 1.0, None), // same id on another exchange is not a duplicate
        ]);
        let out = compute_bars(&[b], Timeframe::M1, 0).unwrap();
        assert_eq!(out.num_rows(), 2);
        assert_eq!(col(&out, "open").value(0), 2.0);
        assert_eq!(col(&out, "close").value(0), 1.0);
        assert_eq!(col(&out, "volume").value(0), 2.0);
        assert_eq!(col(&out, "volume").value(1), 1.0);
    }

    #[test]
    fn result_does_not_depend_on_row_order_or_batching() {
        let rows: Vec<(String, i64, f64, f64)> = (0..500)
            .map(|i| {
                (
                    format!("{}", i % 97 * 1000 + i),
                    (i * 7919 % 300) * 1_000_000,
                    0.1 + (i % 13) as f64 * 0.37,
                    0.001 * (1 + i % 17) as f64,
                )
            })
            .collect();
        let as_t = |v: &[(String, i64, f64, f64)]| -> Vec<RecordBatch> {
            v.chunks(37)
                .map(|c| {
                    let t: Vec<T> = c
                        .iter()
                        .map(|r| ("x", "S", r.0.as_str(), r.1, r.2, r.3, Some("buy")))
                        .collect();
                    trades(&t)
                })
                .collect()
        };
        let a = compute_bars(&as_t(&rows), Timeframe::M1, 0).unwrap();
        let mut reversed = rows.clone();
        reversed.reverse();
        reversed.extend(rows[..50].iter().cloned()); // and some duplicates
        let b = compute_bars(&as_t(&reversed), Timeframe::M1, 0).unwrap();
        assert_eq!(a, b);
    }
}
