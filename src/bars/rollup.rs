//! The rollup kernel: bars of a lower timeframe to bars of a higher one.
//!
//! open is the open of the earliest child, close the close of the latest, high/low the
//! extremes, sums add (in the same order-independent fixed point as the trade kernel) and vwap
//! is recomputed. Over exact children this equals computing the higher timeframe from trades;
//! only the sums can differ, by the rounding of each child's sum to a double.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::concat_batches;
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};

use super::columns::FxHashMap;
use super::error::{Error, Result};
use super::kernel::{fix, positive_window, unfix};
use crate::storage::TableKind;
use crate::timeframe::Timeframe;

/// Rolls `bars` (any order, bar-table schema) up to windows of `to_us` microseconds aligned to
/// `origin_us` (0: the Unix epoch). Every child must lie inside one parent window.
pub fn rollup(
    bars: &[RecordBatch],
    to_us: i64,
    origin_us: i64,
    built_at: i64,
) -> Result<RecordBatch> {
    positive_window(to_us)?;
    rollup_by(
        bars,
        &|t| {
            let start = origin_us + (t - origin_us).div_euclid(to_us) * to_us;
            (start, start + to_us)
        },
        built_at,
    )
}

/// As [`rollup`], into the windows `parent_of` names: for a time, the `[start, end)` of the
/// window holding it. Windows may differ in length (local days across a DST change).
pub fn rollup_by(
    bars: &[RecordBatch],
    parent_of: &dyn Fn(i64) -> (i64, i64),
    built_at: i64,
) -> Result<RecordBatch> {
    let schema = TableKind::Bars(Timeframe::M1).arrow_schema()?;
    let all = concat_batches(&schema, bars)?;
    let s = |name: &str| {
        all.column_by_name(name)
            .expect("bar column")
            .as_string::<i32>()
            .clone()
    };
    let t = |name: &str| {
        all.column_by_name(name)
            .expect("bar column")
            .as_primitive::<TimestampMicrosecondType>()
            .clone()
    };
    let f = |name: &str| {
        all.column_by_name(name)
            .expect("bar column")
            .as_primitive::<Float64Type>()
            .clone()
    };
    let (exchange, symbol) = (s("exchange"), s("symbol"));
    let (start, end, first, last) = (
        t("window_start"),
        t("window_end"),
        t("first_trade_ts"),
        t("last_trade_ts"),
    );
    let (open, high, low, close) = (f("open"), f("high"), f("low"), f("close"));
    let (volume, quote, buy) = (f("volume"), f("quote_volume"), f("buy_volume"));
    let count = all
        .column_by_name("trade_count")
        .expect("bar column")
        .as_primitive::<Int64Type>()
        .clone();

    let mut series: FxHashMap<(&str, &str), u32> = FxHashMap::default();
    // Per row: its series and its parent window number.
    let mut sids: Vec<u32> = Vec::with_capacity(all.num_rows());
    let mut parents: Vec<(i64, i64)> = Vec::with_capacity(all.num_rows());
    for row in 0..all.num_rows() {
        let id = series.len() as u32;
        let sid = *series
            .entry((exchange.value(row), symbol.value(row)))
            .or_insert(id);
        let parent = parent_of(start.value(row));
        if parent_of(end.value(row) - 1) != parent {
            return Err(Error::Input(format!(
                "bar {}/{} at {} crosses the boundary of window [{}, {})",
                exchange.value(row),
                symbol.value(row),
                start.value(row),
                parent.0,
                parent.1
            )));
        }
        sids.push(sid);
        parents.push(parent);
    }
    let mut names: Vec<(&str, &str)> = vec![("", ""); series.len()];
    for (k, v) in &series {
        names[*v as usize] = *k;
    }
    let mut order: Vec<usize> = (0..all.num_rows()).collect();
    let sid = |row: usize| sids[row];
    order.sort_unstable_by(|&a, &b| {
        names[sid(a) as usize]
            .cmp(&names[sid(b) as usize])
            .then(parents[a].cmp(&parents[b]))
            .then(start.value(a).cmp(&start.value(b)))
    });

    let mut out = Out::default();
    let mut i = 0;
    while i < order.len() {
        let head = order[i];
        let mut j = i;
        let (mut hi, mut lo) = (f64::MIN, f64::MAX);
        let (mut vol, mut q, mut b, mut n) = (0i128, 0i128, 0i128, 0i64);
        let (mut f_ts, mut l_ts) = (i64::MAX, i64::MIN);
        while j < order.len() && sid(order[j]) == sid(head) && parents[order[j]] == parents[head] {
            let r = order[j];
            hi = hi.max(high.value(r));
            lo = lo.min(low.value(r));
            vol += fix(volume.value(r));
            q += fix(quote.value(r));
            b += fix(buy.value(r));
            n += count.value(r);
            f_ts = f_ts.min(first.value(r));
            l_ts = l_ts.max(last.value(r));
            j += 1;
        }
        let tail = order[j - 1];
        let (window_start, window_end) = parents[head];
        let (v, qv) = (unfix(vol), unfix(q));
        out.exchange.push(exchange.value(head).to_string());
        out.symbol.push(symbol.value(head).to_string());
        out.start.push(window_start);
        out.end.push(window_end);
        out.open.push(open.value(head));
        out.high.push(hi);
        out.low.push(lo);
        out.close.push(close.value(tail));
        out.volume.push(v);
        out.quote.push(qv);
        out.vwap.push(qv / v);
        out.count.push(n);
        out.buy.push(unfix(b));
        out.first.push(f_ts);
        out.last.push(l_ts);
        i = j;
    }
    out.into_batch(schema, built_at)
}

#[derive(Default)]
struct Out {
    exchange: Vec<String>,
    symbol: Vec<String>,
    start: Vec<i64>,
    end: Vec<i64>,
    open: Vec<f64>,
    high: Vec<f64>,
    low: Vec<f64>,
    close: Vec<f64>,
    volume: Vec<f64>,
    quote: Vec<f64>,
    vwap: Vec<f64>,
    count: Vec<i64>,
    buy: Vec<f64>,
    first: Vec<i64>,
    last: Vec<i64>,
}

impl Out {
    fn into_batch(self, schema: arrow::datatypes::SchemaRef, built_at: i64) -> Result<RecordBatch> {
        let n = self.start.len();
        let ts = |v: Vec<i64>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
        };
        let f = |v: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(self.exchange)),
            Arc::new(StringArray::from(self.symbol)),
            ts(self.start),
            ts(self.end),
            f(self.open),
            f(self.high),
            f(self.low),
            f(self.close),
            f(self.volume),
            f(self.quote),
            f(self.vwap),
            Arc::new(Int64Array::from(self.count)),
            f(self.buy),
            ts(self.first),
            ts(self.last),
            Arc::new(Int32Array::from(vec![0; n])),
            ts(vec![built_at; n]),
        ];
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}
