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
//! Work is split across cores twice: parts of the input are moved into series order in
//! parallel (`order`), then each core aggregates whole series, so no state is shared while
//! aggregating.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};

use super::columns::{FxHashMap, FxHashSet, TradeIds};
use super::error::{Error, Result};
use super::order::{order, InMemory, Ordered, TEXT};
use super::parallel::{balanced, on_threads, threads};
use crate::storage::TableKind;
use crate::timeframe::Timeframe;

/// Fixed-point scale of the sums: exact for every double with magnitude up to 2^63.
const SCALE: f64 = 18_446_744_073_709_551_616.0; // 2^64

/// `(x * 2^64) as i128`, without the compiler's call to `__fixdfti` (3 % of a build's CPU):
/// scaling by a power of two is exact, so shifting the mantissa by the exponent gives the
/// same truncated, saturating value (NaN is 0, as with `as`).
#[inline]
pub(crate) fn fix(x: f64) -> i128 {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    let negative = bits >> 63 == 1;
    if biased == 0x7ff {
        return match (fraction != 0, negative) {
            (true, _) => 0,
            (false, false) => i128::MAX,
            (false, true) => i128::MIN,
        };
    }
    let (mantissa, exponent) = if biased == 0 {
        (fraction, 1)
    } else {
        (fraction | (1u64 << 52), biased)
    };
    // x * 2^64 = mantissa * 2^(exponent - 1075 + 64)
    let shift = exponent - 1011;
    let magnitude = if shift >= 75 {
        // At least 2^127: saturates (-2^127 itself is i128::MIN).
        return if negative { i128::MIN } else { i128::MAX };
    } else if shift >= 0 {
        (mantissa as i128) << shift
    } else if shift > -64 {
        (mantissa >> -shift) as i128
    } else {
        0
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

#[inline]
pub(crate) fn unfix(v: i128) -> f64 {
    crate::trades::normalize::i128_to_f64(v) / SCALE
}

/// Computes the bars of `tf` for every window that holds at least one of `batches`' trades.
/// `built_at` (UTC microseconds) stamps every bar; revisions start at 0.
pub fn compute_bars(batches: &[RecordBatch], tf: Timeframe, built_at: i64) -> Result<RecordBatch> {
    compute_bars_us(batches, tf.micros(), built_at)
}

/// As [`compute_bars`], for any window length in microseconds.
pub fn compute_bars_us(batches: &[RecordBatch], tf_us: i64, built_at: i64) -> Result<RecordBatch> {
    let mut bars = compute_bars_each(batches, &[tf_us], built_at)?;
    Ok(bars.pop().expect("one window length, one result"))
}

/// As [`compute_bars_us`], for several window lengths from one ordering of the trades (the
/// ordering is most of the cost: 1m and 5m of the same trades cost little more than one).
pub fn compute_bars_each(
    batches: &[RecordBatch],
    tfs_us: &[i64],
    built_at: i64,
) -> Result<Vec<RecordBatch>> {
    tfs_us.iter().try_for_each(|tf| positive_window(*tf))?;
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    let total = batches.iter().map(|b| b.num_rows()).sum();
    let chunk = batches.len().div_ceil(threads(total)).max(1);
    let ordered = order(&InMemory {
        runs: batches.chunks(chunk).collect(),
    })?;
    bars_each(&ordered, tfs_us, built_at)
}

/// Refuses a window length that is not positive (every kernel divides by it).
pub(super) fn positive_window(us: i64) -> Result<()> {
    if us <= 0 {
        return Err(Error::Input(format!(
            "window length {us}us is not positive"
        )));
    }
    Ok(())
}

/// Aggregates trades in series order (see `order`) into bars of `tf_us`.
pub(super) fn bars_of(ordered: &Ordered, tf_us: i64, built_at: i64) -> Result<RecordBatch> {
    let mut bars = bars_each(ordered, &[tf_us], built_at)?;
    Ok(bars.pop().expect("one window length, one result"))
}

/// As [`bars_of`], for each of `tfs_us`.
fn bars_each(ordered: &Ordered, tfs_us: &[i64], built_at: i64) -> Result<Vec<RecordBatch>> {
    // A build whose plans all take some rows only asks for no length at all.
    if tfs_us.is_empty() {
        return Ok(Vec::new());
    }
    let texts = &ordered.texts;
    let trades = Trades {
        ids: texts
            .iter()
            .map(|(_, a)| TradeIds::new(a.as_ref()))
            .collect::<Result<_>>()?,
        offsets: texts.iter().map(|(first, _)| *first).collect(),
        o: ordered,
    };
    let bars = trades.aggregate(tfs_us);
    bars.iter()
        .zip(tfs_us)
        .map(|(bars, tf_us)| trades.to_batch(bars, *tf_us, built_at))
        .collect()
}

/// Trades in series order (each series' rows contiguous, so aggregation reads memory
/// sequentially), with the text ids readable.
struct Trades<'a> {
    /// The id columns of the batches with text ids, and the input position of their first row.
    ids: Vec<TradeIds<'a>>,
    offsets: Vec<usize>,
    o: &'a Ordered,
}

impl<'a> Trades<'a> {
    /// The trade id at position `p` as the table stores it (text).
    fn id_text(&self, p: usize) -> Cow<'a, str> {
        let id = self.o.id[p];
        if id & TEXT == 0 {
            return Cow::Owned(id.to_string());
        }
        let row = (id & !TEXT) as usize;
        let batch = self.offsets.partition_point(|&o| o <= row) - 1;
        self.ids[batch].text(row - self.offsets[batch])
    }

    /// Orders two positions by trade id as the table stores it (text).
    fn id_cmp(&self, a: usize, b: usize) -> Ordering {
        let (x, y) = (self.o.id[a], self.o.id[b]);
        if x & TEXT == 0 && y & TEXT == 0 {
            let mut bx = itoa_buf();
            let mut by = itoa_buf();
            return decimal(x, &mut bx).cmp(decimal(y, &mut by));
        }
        self.id_text(a).cmp(&self.id_text(b))
    }

    /// Bars for each of `tfs_us` (in that order), each series on one core.
    fn aggregate(&self, tfs_us: &[i64]) -> Vec<Vec<Bar>> {
        let starts = &self.o.starts;
        let ranges = balanced(starts, threads(self.o.ts.len()));
        let parts = on_threads(ranges, |range| {
            let mut out: Vec<Vec<Bar>> = tfs_us.iter().map(|_| Vec::new()).collect();
            for s in range {
                self.aggregate_series(s as u32, starts[s]..starts[s + 1], tfs_us, &mut out);
            }
            out
        });
        let mut all: Vec<Vec<Bar>> = tfs_us.iter().map(|_| Vec::new()).collect();
        for part in parts {
            for (into, bars) in all.iter_mut().zip(part) {
                into.extend(bars);
            }
        }
        all
    }

    /// One series' bars for each of `tfs_us` into `out`. The series is deduplicated once;
    /// a window length that is a multiple of the first is merged from the first's
    /// aggregates instead of adding every trade again (exact: the sums are fixed-point, and
    /// open and close compare time and id as adding does), any other one from the trades.
    fn aggregate_series(
        &self,
        series: u32,
        rows: std::ops::Range<usize>,
        tfs_us: &[i64],
        out: &mut [Vec<Bar>],
    ) {
        let keep = self.dedupe(rows.clone());
        let base = tfs_us[0];
        let windows = self.windows(rows.clone(), keep.as_deref(), base);
        for (tf_us, out) in tfs_us.iter().zip(out.iter_mut()) {
            if *tf_us == base {
                out.extend(windows.iter().map(|(w, acc)| acc.finish(series, *w)));
            } else if tf_us % base == 0 {
                let ratio = tf_us / base;
                let mut parent: Option<(i64, Acc<usize>)> = None;
                for (w, acc) in &windows {
                    let p = w.div_euclid(ratio);
                    match &mut parent {
                        Some((at, merged)) if *at == p => {
                            merged.merge(acc, |a, b| self.id_cmp(*a, *b))
                        }
                        _ => {
                            if let Some((at, merged)) = parent.take() {
                                out.push(merged.finish(series, at));
                            }
                            parent = Some((p, *acc));
                        }
                    }
                }
                if let Some((at, merged)) = parent {
                    out.push(merged.finish(series, at));
                }
            } else {
                let own = self.windows(rows.clone(), keep.as_deref(), *tf_us);
                out.extend(own.iter().map(|(w, acc)| acc.finish(series, *w)));
            }
        }
    }

    /// The aggregates of one series' kept trades by window index of `tf_us`, in window order.
    fn windows(
        &self,
        rows: std::ops::Range<usize>,
        keep: Option<&[bool]>,
        tf_us: i64,
    ) -> Vec<(i64, Acc<usize>)> {
        let kept = |p: usize| keep.is_none_or(|k| k[p - rows.start]);
        // Window indexes rise with time: the extreme times give the extreme windows.
        let (mut tmin, mut tmax) = (i64::MAX, i64::MIN);
        for p in rows.clone() {
            if kept(p) {
                tmin = tmin.min(self.o.ts[p]);
                tmax = tmax.max(self.o.ts[p]);
            }
        }
        if tmin > tmax {
            return Vec::new();
        }
        let (wmin, wmax) = (tmin.div_euclid(tf_us), tmax.div_euclid(tf_us));
        let mut window = WindowOf::new(tf_us);
        let span = (wmax - wmin) as u128 + 1;
        if span <= (4 * rows.len() + 1024) as u128 {
            let mut accs: Vec<Option<Acc<usize>>> = vec![None; span as usize];
            for p in rows.clone() {
                if kept(p) {
                    let w = window.of(self.o.ts[p]);
                    self.add(&mut accs[(w - wmin) as usize], p);
                }
            }
            accs.into_iter()
                .enumerate()
                .filter_map(|(offset, acc)| acc.map(|a| (wmin + offset as i64, a)))
                .collect()
        } else {
            let mut accs: FxHashMap<i64, Option<Acc<usize>>> = FxHashMap::default();
            for p in rows.clone() {
                if kept(p) {
                    let w = window.of(self.o.ts[p]);
                    self.add(accs.entry(w).or_default(), p);
                }
            }
            let mut windows: Vec<(i64, Acc<usize>)> = accs
                .into_iter()
                .filter_map(|(w, acc)| acc.map(|a| (w, a)))
                .collect();
            windows.sort_unstable_by_key(|(w, _)| *w);
            windows
        }
    }

    #[inline]
    fn add(&self, slot: &mut Option<Acc<usize>>, p: usize) {
        let (ts, price, qty, buy) = (self.o.ts[p], self.o.price[p], self.o.qty[p], self.o.buy[p]);
        match slot {
            None => *slot = Some(Acc::first(p, ts, price, qty, buy)),
            Some(acc) => acc.add(&p, ts, price, qty, buy, |a, b| self.id_cmp(*a, *b)),
        }
    }

    /// Which positions of a series survive deduplication (`None`: all of them), indexed from
    /// `rows.start`.
    fn dedupe(&self, rows: std::ops::Range<usize>) -> Option<Vec<bool>> {
        let numbers = DupNumbers::find(&self.o.id[rows.clone()]);
        let mut dup_texts: FxHashSet<Cow<'a, str>> = FxHashSet::default();
        if numbers.text_rows {
            let mut seen: FxHashSet<Cow<'a, str>> = FxHashSet::default();
            for p in rows.clone() {
                if self.o.id[p] & TEXT != 0 {
                    let text = self.id_text(p);
                    if seen.contains(&text) {
                        dup_texts.insert(text);
                    } else {
                        seen.insert(text);
                    }
                }
            }
        }
        if !numbers.any && dup_texts.is_empty() {
            return None;
        }
        // Among the copies of each duplicated id, keep the smallest by content. Numeric and
        // text ids never collide: text ids are exactly the non-canonical ones.
        let mut best_number: FxHashMap<u64, usize> = FxHashMap::default();
        let mut best_text: FxHashMap<Cow<'a, str>, usize> = FxHashMap::default();
        let better = |best: Option<&usize>, p: usize| {
            best.is_none_or(|&q| self.content_cmp(p, q) == Ordering::Less)
        };
        for p in rows.clone() {
            let id = self.o.id[p];
            if id & TEXT == 0 {
                if numbers.contains(id) && better(best_number.get(&id), p) {
                    best_number.insert(id, p);
                }
            } else if !dup_texts.is_empty() {
                let text = self.id_text(p);
                if dup_texts.contains(&text) && better(best_text.get(&text), p) {
                    best_text.insert(text, p);
                }
            }
        }
        let mut keep = vec![true; rows.len()];
        for p in rows.clone() {
            let id = self.o.id[p];
            if id & TEXT == 0 {
                if numbers.contains(id) {
                    keep[p - rows.start] = best_number[&id] == p;
                }
            } else if !dup_texts.is_empty() {
                let text = self.id_text(p);
                if let Some(&q) = best_text.get(&text) {
                    keep[p - rows.start] = q == p;
                }
            }
        }
        Some(keep)
    }

    fn content_cmp(&self, a: usize, b: usize) -> Ordering {
        self.o.ts[a]
            .cmp(&self.o.ts[b])
            .then(self.o.price[a].total_cmp(&self.o.price[b]))
            .then(self.o.qty[a].total_cmp(&self.o.qty[b]))
            .then(self.o.buy[a].cmp(&self.o.buy[b]))
    }

    fn to_batch(&self, bars: &[Bar], tf_us: i64, built_at: i64) -> Result<RecordBatch> {
        bar_batch(bars, &self.o.keys, tf_us, built_at)
    }
}

/// Bars as the bar tables' rows; `keys` names each bar's series.
pub(super) fn bar_batch(
    bars: &[Bar],
    keys: &[(String, String)],
    tf_us: i64,
    built_at: i64,
) -> Result<RecordBatch> {
    let n = bars.len();
    let key = |b: &Bar| &keys[b.series as usize];
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

/// `ts.div_euclid(tf_us)`, remembering the last window's bounds: a series' trades mostly come
/// in time order, so most rows fall in the window of the row before and cost two comparisons
/// instead of a 64-bit division (the largest part of aggregating).
struct WindowOf {
    tf_us: i64,
    window: i64,
    start: i64,
    end: i64,
}

impl WindowOf {
    fn new(tf_us: i64) -> WindowOf {
        // An empty range: the first row computes its window.
        WindowOf {
            tf_us,
            window: 0,
            start: 0,
            end: 0,
        }
    }

    #[inline]
    fn of(&mut self, ts: i64) -> i64 {
        if ts < self.start || ts >= self.end {
            self.window = ts.div_euclid(self.tf_us);
            // Past either end of the range the bounds saturate: a window's start below
            // `i64::MIN` admits every earlier time there is, and at the top `i64::MAX`
            // itself divides again.
            self.start = self.window.saturating_mul(self.tf_us);
            self.end = self.window.saturating_add(1).saturating_mul(self.tf_us);
        }
        self.window
    }
}

/// The numeric trade ids of one series seen more than once: a bitmap over their span when it
/// is dense (exchange ids usually are), else a hash set; tested once per row.
struct DupNumbers {
    lo: u64,
    bits: Option<Vec<u64>>,
    set: FxHashSet<u64>,
    /// Any numeric id repeats.
    any: bool,
    /// Some ids are text (not canonical numbers).
    text_rows: bool,
}

impl DupNumbers {
    fn find(ids: &[u64]) -> DupNumbers {
        let (mut lo, mut hi, mut numeric) = (u64::MAX, 0u64, 0usize);
        for &id in ids {
            if id & TEXT == 0 {
                lo = lo.min(id);
                hi = hi.max(id);
                numeric += 1;
            }
        }
        let mut found = DupNumbers {
            lo,
            bits: None,
            set: FxHashSet::default(),
            any: false,
            text_rows: numeric < ids.len(),
        };
        if numeric == 0 || distinct_by_runs(ids) {
            return found;
        }
        let span = hi - lo + 1;
        if span <= 64 * numeric as u64 + 65_536 {
            let words = span.div_ceil(64) as usize;
            let (mut seen, mut dup) = (vec![0u64; words], vec![0u64; words]);
            for &id in ids {
                if id & TEXT == 0 {
                    let bit = id - lo;
                    let (word, mask) = ((bit / 64) as usize, 1u64 << (bit % 64));
                    dup[word] |= seen[word] & mask;
                    seen[word] |= mask;
                }
            }
            found.any = dup.iter().any(|w| *w != 0);
            found.bits = Some(dup);
        } else {
            let mut seen: FxHashSet<u64> = FxHashSet::default();
            seen.reserve(numeric);
            for &id in ids {
                if id & TEXT == 0 && !seen.insert(id) {
                    found.set.insert(id);
                }
            }
            found.any = !found.set.is_empty();
        }
        found
    }

    /// Whether numeric `id` (one of the ids given to `find`) repeats.
    #[inline]
    fn contains(&self, id: u64) -> bool {
        match &self.bits {
            Some(bits) => {
                let bit = id - self.lo;
                bits[(bit / 64) as usize] & (1u64 << (bit % 64)) != 0
            }
            None => self.set.contains(&id),
        }
    }
}

/// Whether the numeric ids cannot repeat, found without a set: they rise strictly within
/// runs (an exchange's ids in time order, file after file). When the runs' spans do not
/// overlap one pass decides; when they do (a chunk's files listed out of time order) the ids
/// are sorted, which merges the runs (O(n log runs)), and checked for neighbours that are
/// equal. Input in no such order gives up after a few runs and is left to the set.
fn distinct_by_runs(ids: &[u64]) -> bool {
    let most = ids.len() / 64 + 8;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for &id in ids {
        if id & TEXT != 0 {
            continue;
        }
        match &mut run {
            Some((_, hi)) if id > *hi => *hi = id,
            _ => {
                runs.extend(run.take());
                if runs.len() >= most {
                    return false;
                }
                run = Some((id, id));
            }
        }
    }
    runs.extend(run);
    runs.sort_unstable();
    if runs.windows(2).all(|w| w[0].1 < w[1].0) {
        return true;
    }
    // The stable sort finds the rising runs and merges them.
    let mut numbers: Vec<u64> = ids.iter().copied().filter(|id| id & TEXT == 0).collect();
    numbers.sort();
    numbers.windows(2).all(|w| w[0] < w[1])
}

pub(super) fn itoa_buf() -> [u8; 20] {
    [0u8; 20]
}

pub(super) fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
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

/// One window's aggregate while trades are added; `P` tells the open and close trades apart
/// from later ones at the same time (a position in the kernel, the trade id when running).
#[derive(Clone, Copy)]
pub(super) struct Acc<P> {
    pub open_pos: P,
    pub open_ts: i64,
    pub open: f64,
    pub close_pos: P,
    pub close_ts: i64,
    pub close: f64,
    pub high: f64,
    pub low: f64,
    pub volume: i128,
    pub quote: i128,
    pub buy: i128,
    pub count: i64,
}

impl<P> Acc<P> {
    /// The aggregate of one trade.
    pub fn first(pos: P, ts: i64, price: f64, qty: f64, buy: bool) -> Acc<P>
    where
        P: Clone,
    {
        let vol = fix(qty);
        Acc {
            open_pos: pos.clone(),
            open_ts: ts,
            open: price,
            close_pos: pos,
            close_ts: ts,
            close: price,
            high: price,
            low: price,
            volume: vol,
            quote: fix(price * qty),
            buy: if buy { vol } else { 0 },
            count: 1,
        }
    }

    /// Adds a trade; `cmp(new, old)` orders trades of equal time by trade id.
    #[inline]
    pub fn add(
        &mut self,
        pos: &P,
        ts: i64,
        price: f64,
        qty: f64,
        buy: bool,
        cmp: impl Fn(&P, &P) -> Ordering,
    ) where
        P: Clone,
    {
        if ts < self.open_ts || (ts == self.open_ts && cmp(pos, &self.open_pos) == Ordering::Less) {
            (self.open_pos, self.open_ts, self.open) = (pos.clone(), ts, price);
        }
        if ts > self.close_ts
            || (ts == self.close_ts && cmp(pos, &self.close_pos) == Ordering::Greater)
        {
            (self.close_pos, self.close_ts, self.close) = (pos.clone(), ts, price);
        }
        let vol = fix(qty);
        self.high = self.high.max(price);
        self.low = self.low.min(price);
        self.volume += vol;
        self.quote += fix(price * qty);
        if buy {
            self.buy += vol;
        }
        self.count += 1;
    }

    /// Adds the trades `other` aggregated (of a window inside this one); `cmp` as for `add`.
    pub fn merge(&mut self, other: &Acc<P>, cmp: impl Fn(&P, &P) -> Ordering)
    where
        P: Clone,
    {
        if other.open_ts < self.open_ts
            || (other.open_ts == self.open_ts && cmp(&other.open_pos, &self.open_pos).is_lt())
        {
            (self.open_pos, self.open_ts, self.open) =
                (other.open_pos.clone(), other.open_ts, other.open);
        }
        if other.close_ts > self.close_ts
            || (other.close_ts == self.close_ts && cmp(&other.close_pos, &self.close_pos).is_gt())
        {
            (self.close_pos, self.close_ts, self.close) =
                (other.close_pos.clone(), other.close_ts, other.close);
        }
        self.high = self.high.max(other.high);
        self.low = self.low.min(other.low);
        self.volume += other.volume;
        self.quote += other.quote;
        self.buy += other.buy;
        self.count += other.count;
    }

    pub fn finish(&self, series: u32, window: i64) -> Bar {
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
pub(super) struct Bar {
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
    use arrow::array::AsArray;
    use arrow::datatypes::Float64Type;

    #[test]
    fn fix_equals_the_cast_it_replaces() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            5e-324,
            f64::EPSILON,
            0.1,
            123_456.789,
            2f64.powi(62),
            2f64.powi(63),
            -2f64.powi(63),
            2f64.powi(63) * (1.0 - f64::EPSILON),
            -2f64.powi(63) * (1.0 - f64::EPSILON),
            1e300,
            -1e300,
            f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            2f64.powi(-64),
            2f64.powi(-65),
            -(2f64.powi(-64)) * 1.5,
        ];
        // A spread of magnitudes and mantissas, deterministic.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f64::from_bits(state);
            if x.is_finite() && x.abs() < 1e30 && x.abs() > 1e-30 {
                values.push(x);
            }
            values.push((state >> 11) as f64 / (1u64 << 40) as f64);
        }
        for x in values {
            assert_eq!(fix(x), (x * SCALE) as i128, "{x:e}");
        }
    }

    #[test]
    fn remembered_windows_equal_division_in_any_order() {
        let mut times: Vec<i64> = vec![i64::MIN, i64::MAX, -1, 0, 1, 59_999_999, 60_000_000];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let last = *times.last().unwrap();
            // Mostly small steps forward, sometimes back, sometimes anywhere.
            times.push(match state % 10 {
                0 => state as i64,
                1 => last.saturating_sub((state >> 8) as i64 % 120_000_000),
                _ => last.saturating_add((state >> 8) as i64 % 7_000_000),
            });
        }
        for tf in [1, 7, 60_000_000, 300_000_000, 86_400_000_000] {
            let mut window = WindowOf::new(tf);
            for &t in &times {
                assert_eq!(window.of(t), t.div_euclid(tf), "{t} by {tf}");
            }
        }
    }

    #[test]
    fn ids_rising_in_disjoint_runs_are_distinct_and_anything_else_goes_to_the_set() {
        // Two files of one series, the later one first; text ids are not numbers.
        assert!(distinct_by_runs(&[50, 51, 60, 10, 12, TEXT | 3, 20]));
        assert!(distinct_by_runs(&[]));
        // Runs whose spans overlap may repeat an id, and then do.
        assert!(!distinct_by_runs(&[10, 20, 15, 20, 30]));
        assert!(!distinct_by_runs(&[10, 20, 30, 5, TEXT | 9, 20]));
        // Or interleave without a repeat: hours 0, 1, 4 and 5 of a venue, then 2 and 3.
        assert!(distinct_by_runs(&[
            1, 2, 10, 11, 40, 41, 50, 20, 21, 30, 31
        ]));
        assert!(distinct_by_runs(&[10, 20, 15, 30]));
        assert!(!distinct_by_runs(&[10, 11, 11]));
        assert!(!distinct_by_runs(&[7, 8, 7]));
        // Ids in no order give up on runs; the set still finds exactly the repeats.
        let shuffled: Vec<u64> = (0..1000u64).map(|i| (i * 7919) % 1000).collect();
        assert!(!distinct_by_runs(&shuffled));
        let found = DupNumbers::find(&shuffled);
        assert!(!found.any);
        let mut repeated = shuffled.clone();
        repeated.push(421);
        let found = DupNumbers::find(&repeated);
        assert!(found.any && found.contains(421) && !found.contains(420));
        // Rising runs that overlap: the repeat is found, the rest are not taken for repeats.
        let found = DupNumbers::find(&[1, 5, 9, 2, 5, 8]);
        assert!(found.any && found.contains(5) && !found.contains(9));
    }

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

        // One ordering for several window lengths gives what each alone gives.
        let lengths = [Timeframe::M1, Timeframe::M5, Timeframe::H1].map(|t| t.micros());
        let each = compute_bars_each(&as_t(&reversed), &lengths, 0).unwrap();
        assert_eq!(each[0], b);
        for (one, tf_us) in each.iter().zip(lengths) {
            assert_eq!(one, &compute_bars_us(&as_t(&reversed), tf_us, 0).unwrap());
            assert!(one.num_rows() > 0);
        }
        assert_ne!(each[1].num_rows(), each[0].num_rows());
    }

    #[test]
    fn longer_windows_merged_from_the_first_equal_windows_aggregated_from_trades() {
        // Three series, bursts of trades at one instant, ids in no order (some text, some
        // repeated with other content), windows that are and are not multiples of the first.
        let ids: Vec<String> = (0..3000)
            .map(|i| match i % 11 {
                0 => format!("t-{}", i % 400),
                1 => format!("{}", (i * 37) % 900),
                _ => format!("{}", 10_000 + (i * 7919) % 2999),
            })
            .collect();
        let rows: Vec<T> = (0..3000)
            .map(|i| {
                let symbol = ["A", "B", "C"][i % 3];
                let ts = ((i as i64 * 104_729) % 7_200) / 3 * 1_500_000 - 3_600_000_000;
                let price = 1.0 + ((i * 31) % 97) as f64 * 0.013;
                let qty = 0.01 * (1 + (i * 13) % 29) as f64;
                let side = [Some("buy"), Some("sell"), None][i % 3];
                ("x", symbol, ids[i].as_str(), ts, price, qty, side)
            })
            .collect();
        let input: Vec<RecordBatch> = rows.chunks(413).map(trades).collect();
        assert!(compute_bars_each(&input, &[], 0).unwrap().is_empty());
        let lengths = [
            60_000_000,
            300_000_000,
            90_000_000,
            3_600_000_000,
            7_000_000,
        ];
        let each = compute_bars_each(&input, &lengths, 0).unwrap();
        for (one, tf_us) in each.iter().zip(lengths) {
            assert_eq!(one, &compute_bars_us(&input, tf_us, 0).unwrap(), "{tf_us}");
            assert!(one.num_rows() > 0);
        }
    }

    #[test]
    fn ids_from_two_pow_63_and_text_ids_compare_and_dedupe_as_text() {
        let b = trades(&[
            ("x", "S", "abc", 5, 4.0, 1.0, None), // "abc" sorts last: close
            ("x", "S", "9999999999999999999", 5, 3.0, 1.0, None), // above 2^63: kept as text
            ("x", "S", "9999999999999999999", 5, 3.0, 2.0, None), // its copy, larger: dropped
            ("x", "S", "10", 5, 2.0, 1.0, None),  // "10" sorts first: open
            ("x", "S", "007", 5, 9.0, 1.0, None), // not canonical: text, "007" < "10"
            ("x", "S", "007", 5, 9.0, 1.0, None), // duplicate
        ]);
        let out = compute_bars(&[b], Timeframe::M1, 0).unwrap();
        assert_eq!(out.num_rows(), 1);
        assert_eq!(col(&out, "open").value(0), 9.0);
        assert_eq!(col(&out, "close").value(0), 4.0);
        assert_eq!(col(&out, "volume").value(0), 4.0);
    }

    /// Many series, text and numeric ids, duplicates across batches: the bars do not depend on
    /// how the input is cut into parts (each moved into series order on its own core), nor on
    /// whether it is read from a file in parts of row groups.
    #[test]
    fn parts_of_the_input_and_files_give_the_same_bars() {
        let rows: Vec<Row> = (0..3000i64)
            .map(|i| {
                let id = match i % 5 {
                    0 => format!("t{}", i % 700),
                    1 => format!("{}", (1u64 << 63) + (i % 300) as u64),
                    _ => format!("{}", i % 900),
                };
                (
                    format!("ex{}", i % 3),
                    format!("S{}", i % 7),
                    id,
                    (i * 7919 % 600) * 1_000_000,
                    1.0 + (i % 13) as f64,
                    0.5 + (i % 5) as f64,
                )
            })
            .collect();
        let batches: Vec<RecordBatch> = rows
            .chunks(211)
            .map(|c| {
                let t: Vec<T> = c
                    .iter()
                    .map(|r| {
                        (
                            r.0.as_str(),
                            r.1.as_str(),
                            r.2.as_str(),
                            r.3,
                            r.4,
                            r.5,
                            Some("sell"),
                        )
                    })
                    .collect();
                trades(&t)
            })
            .collect();
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        let in_parts = |n: usize| {
            let runs = refs.chunks(refs.len().div_ceil(n)).collect();
            bars_of(&order(&InMemory { runs }).unwrap(), M, 0).unwrap()
        };
        let one = in_parts(1);
        assert_eq!(naive(&rows), summary(&one));
        assert_eq!(in_parts(3), one);
        assert_eq!(in_parts(batches.len()), one);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trades.parquet");
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(400))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            batches[0].schema(),
            Some(props),
        )
        .unwrap();
        for b in &batches {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        let (from_file, n) = super::super::file::compute_file(&path, M, 0).unwrap();
        assert_eq!(n, rows.len());
        assert_eq!(from_file, one);
    }

    type Row = (String, String, String, i64, f64, f64);
    /// (exchange, symbol, window) -> (open, high, low, close, volume, count)
    type Summary =
        std::collections::BTreeMap<(String, String, i64), (f64, f64, f64, f64, f64, i64)>;

    /// The 1m bars of `rows` (all sells) computed the obvious way.
    fn naive(rows: &[Row]) -> Summary {
        let mut kept: std::collections::BTreeMap<(&str, &str, &str), &Row> = Default::default();
        for r in rows {
            let key = (r.0.as_str(), r.1.as_str(), r.2.as_str());
            let content = |r: &Row| (r.3, r.4.to_bits(), r.5.to_bits());
            if kept.get(&key).is_none_or(|k| content(r) < content(k)) {
                kept.insert(key, r);
            }
        }
        let mut windows: std::collections::BTreeMap<_, Vec<&Row>> = Default::default();
        for r in kept.values() {
            windows
                .entry((r.0.clone(), r.1.clone(), r.3.div_euclid(M)))
                .or_default()
                .push(r);
        }
        windows
            .into_iter()
            .map(|(key, mut trades)| {
                trades.sort_by(|a, b| (a.3, &a.2).cmp(&(b.3, &b.2)));
                let prices = trades.iter().map(|t| t.4);
                let bar = (
                    trades[0].4,
                    prices.clone().fold(f64::MIN, f64::max),
                    prices.fold(f64::MAX, f64::min),
                    trades[trades.len() - 1].4,
                    trades.iter().map(|t| t.5).sum(),
                    trades.len() as i64,
                );
                (key, bar)
            })
            .collect()
    }

    fn summary(bars: &RecordBatch) -> Summary {
        let s = |n: &str| bars.column_by_name(n).unwrap().as_string::<i32>().clone();
        let (ex, sym) = (s("exchange"), s("symbol"));
        let start = bars
            .column_by_name("window_start")
            .unwrap()
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
            .clone();
        let count = bars
            .column_by_name("trade_count")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>()
            .clone();
        (0..bars.num_rows())
            .map(|i| {
                let key = (
                    ex.value(i).to_string(),
                    sym.value(i).to_string(),
                    start.value(i) / M,
                );
                let v = |n: &str| col(bars, n).value(i);
                let bar = (
                    v("open"),
                    v("high"),
                    v("low"),
                    v("close"),
                    v("volume"),
                    count.value(i),
                );
                (key, bar)
            })
            .collect()
    }
}
