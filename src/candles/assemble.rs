//! Putting candles together: stored bars up to each table's frontier, live bars after it,
//! rolled up to the requested windows, flagged, and gap-filled on request.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use futures::future::BoxFuture;

use super::{schema, Fill, Request, Result, Windows};
use crate::bars::{rollup, rollup_by};
use crate::candles::cache::{BarCache, View};
use crate::storage::{TableKind, TimeRange};
use crate::timeframe::Timeframe;

const DAY_US: i64 = 86_400_000_000;

/// Times the range of a `last` request may double while looking for that many candles
/// before a series' gaps (4096 times the first guess).
const LAST_DOUBLINGS: u32 = 12;

/// The candles `request` asks for, at one consistent view of the tables and trades.
pub async fn candles(cache: &BarCache, request: &Request) -> Result<RecordBatch> {
    let view = cache
        .view_at(&request.exchange, &request.symbol, request.as_of)
        .await?;
    candles_in(cache, &view, request).await
}

/// The candles `request` asks for, as `view` (of the request's series) sees the tables and
/// trades. Without `fill` the answer depends on nothing else; with it, also on the time.
pub async fn candles_in(cache: &BarCache, view: &View, request: &Request) -> Result<RecordBatch> {
    let Some(n) = request.last else {
        return range(cache, view, request).await;
    };
    // The latest `n` candles before `end`: `n` windows back when the series has no gaps (and
    // always with gap fill), else a range doubled until it holds `n` or reaches `start`.
    // Widened by whole windows: `end` may be a few microseconds into its window (`now()`).
    let (window_start, window_end) = request.windows.window(request.end.saturating_sub(1));
    let width = window_end.saturating_sub(window_start).max(1);
    let mut back = (n as i64).saturating_mul(width);
    let mut doublings = 0;
    loop {
        let start = request.end.saturating_sub(back).max(request.start);
        let batch = range(
            cache,
            view,
            &Request {
                start,
                last: None,
                ..request.clone()
            },
        )
        .await?;
        let rows = batch.num_rows();
        // Gap fill and calendar windows cost per window: their `n` windows are the answer.
        let widen = request.fill == Fill::None && matches!(request.windows, Windows::Fixed { .. });
        if rows >= n as usize || start == request.start || doublings == LAST_DOUBLINGS || !widen {
            let keep = rows.min(n as usize);
            return Ok(batch.slice(rows - keep, keep));
        }
        back = back.saturating_mul(2);
        doublings += 1;
    }
}

async fn range(cache: &BarCache, view: &View, request: &Request) -> Result<RecordBatch> {
    let w = &request.windows;
    let (lo, hi) = request.span();
    if lo >= hi {
        return Ok(RecordBatch::new_empty(schema()));
    }
    let base = w.base(lo, hi)?;
    // A past view's gap fill runs up to its moment.
    let now = view
        .as_of
        .map_or(cache.now_us(), |at| at.min(cache.now_us()));
    let series = Series {
        cache,
        view,
        exchange: &request.exchange,
        symbol: &request.symbol,
        now,
    };
    let children = series
        .bars(base, TimeRange::new(Some(lo), Some(hi)))
        .await?;
    let bars = if w.is_stored(base) {
        sorted(&children)?
    } else {
        rollup_by(&children, &|t| w.window(t), now)?
    };
    let frontier = frontier(view, base);
    match request.fill {
        Fill::None => finish(&bars, frontier),
        Fill::Previous => {
            let previous = if bars.num_rows() > 0 && first_start(&bars) == lo {
                None
            } else {
                series.close_before(base, lo).await?
            };
            let windows = w.starts(lo, hi);
            let open = windows.iter().take_while(|(s, _)| *s <= now).count();
            filled(&bars, &windows[..open], previous, request, frontier)
        }
    }
}

/// The first window a table has not persisted (`i64::MIN`: it has persisted nothing). Batch
/// tables record the 1m cutoff they were built against; their windows ending by it are in.
/// Candles computed from `tf` before it change only with a commit to that table.
pub fn frontier(view: &View, tf: Timeframe) -> i64 {
    if view.as_of.is_some() {
        // A past view has no live bars: every window its tables held is the answer.
        return i64::MAX;
    }
    view.table(tf)
        .cutoff
        .map_or(i64::MIN, |c| tf.window_start(c))
}

struct Series<'a> {
    cache: &'a BarCache,
    view: &'a View,
    exchange: &'a str,
    symbol: &'a str,
    now: i64,
}

impl Series<'_> {
    /// Bars of `tf` with `window_start` in `range` (aligned to `tf`): stored ones up to the
    /// table's frontier, live ones after it.
    fn bars(&self, tf: Timeframe, range: TimeRange) -> BoxFuture<'_, Result<Vec<RecordBatch>>> {
        Box::pin(async move {
            let (start, end) = (
                range.start.unwrap_or(i64::MIN),
                range.end.unwrap_or(i64::MAX),
            );
            let f = frontier(self.view, tf);
            let mut out = Vec::new();
            if start < f {
                let stored = TimeRange::new(Some(start), Some(end.min(f)));
                let rows = self
                    .cache
                    .bars(self.view, tf, self.exchange, self.symbol, stored)
                    .await?;
                out.push(rows);
            }
            if end <= f {
                return Ok(out);
            }
            let live = TimeRange::new(Some(start.max(f)), Some(end));
            match tf {
                Timeframe::M1 | Timeframe::M5 => {
                    if let Some(bars) = &self.view.live_bars {
                        let rows = bars.in_range(tf, start.max(f), end);
                        if rows.num_rows() > 0 {
                            out.push(rows);
                        }
                    }
                }
                _ => {
                    let minutes = self.bars(Timeframe::M1, live).await?;
                    if minutes.iter().any(|b| b.num_rows() > 0) {
                        out.push(rollup(&minutes, tf.micros(), 0, self.now)?);
                    }
                }
            }
            Ok(out)
        })
    }

    /// Close of the last bar before `t` (a `base` boundary), looking back up to a year.
    async fn close_before(&self, base: Timeframe, t: i64) -> Result<Option<f64>> {
        let day = Timeframe::D1.window_start(t);
        let today = self.bars(base, TimeRange::new(Some(day), Some(t))).await?;
        if let Some(close) = last_close(&today)? {
            return Ok(Some(close));
        }
        let year = TimeRange::new(Some(day - 365 * DAY_US), Some(day));
        let days = self.bars(Timeframe::D1, year).await?;
        last_close(&days)
    }
}

fn bar_schema() -> Result<arrow::datatypes::SchemaRef> {
    Ok(TableKind::Bars(Timeframe::M1).arrow_schema()?)
}

/// One batch in `window_start` order. Stored bars come sorted and live ones after them, so
/// this is usually the one batch as it is, or a concatenation.
fn sorted(batches: &[RecordBatch]) -> Result<RecordBatch> {
    let all = match batches {
        [one] => one.clone(),
        _ => concat_batches(&bar_schema()?, batches)?,
    };
    if starts(&all).is_sorted() {
        return Ok(all);
    }
    let order = sort_to_indices(all.column(2), None, None)?;
    Ok(take_record_batch(&all, &order)?)
}

fn starts(bars: &RecordBatch) -> &[i64] {
    bars.column(2)
        .as_primitive::<TimestampMicrosecondType>()
        .values()
}

fn first_start(bars: &RecordBatch) -> i64 {
    starts(bars)[0]
}

fn last_close(batches: &[RecordBatch]) -> Result<Option<f64>> {
    let all = concat_batches(&bar_schema()?, batches)?;
    let Some(last) = starts(&all)
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| **s)
        .map(|(i, _)| i)
    else {
        return Ok(None);
    };
    Ok(Some(
        all.column(7).as_primitive::<Float64Type>().value(last),
    ))
}

/// Bars to candles: the bar columns up to `last_trade_ts`, then the two flags.
fn finish(bars: &RecordBatch, frontier: i64) -> Result<RecordBatch> {
    let ends = bars.column(3).as_primitive::<TimestampMicrosecondType>();
    let is_final: BooleanArray = ends.values().iter().map(|e| Some(*e <= frontier)).collect();
    let mut columns: Vec<ArrayRef> = bars.columns()[..15].to_vec();
    columns.push(Arc::new(is_final));
    columns.push(Arc::new(BooleanArray::from(vec![false; bars.num_rows()])));
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// Every window of `windows` gets a candle: its bar, or a flat synthetic one at the previous
/// close (none before the first close known).
fn filled(
    bars: &RecordBatch,
    windows: &[(i64, i64)],
    mut previous: Option<f64>,
    request: &Request,
    frontier: i64,
) -> Result<RecordBatch> {
    let real = finish(bars, frontier)?;
    let f = |i: usize| real.column(i).as_primitive::<Float64Type>().clone();
    let t = |i: usize| {
        real.column(i)
            .as_primitive::<TimestampMicrosecondType>()
            .clone()
    };
    let (open, high, low, close) = (f(4), f(5), f(6), f(7));
    let (volume, quote, vwap, buy) = (f(8), f(9), f(10), f(12));
    let (first, last) = (t(13), t(14));
    let count = real
        .column(11)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .clone();
    let bar_starts = starts(bars);

    let mut out = Columns::default();
    let mut row = 0;
    for &(ws, we) in windows {
        while row < bar_starts.len() && bar_starts[row] < ws {
            row += 1;
        }
        if row < bar_starts.len() && bar_starts[row] == ws {
            out.push(
                (ws, we),
                [
                    open.value(row),
                    high.value(row),
                    low.value(row),
                    close.value(row),
                ],
                [
                    volume.value(row),
                    quote.value(row),
                    vwap.value(row),
                    buy.value(row),
                ],
                count.value(row),
                (Some(first.value(row)), Some(last.value(row))),
                (we <= frontier, false),
            );
            previous = Some(close.value(row));
            row += 1;
        } else if let Some(p) = previous {
            out.push(
                (ws, we),
                [p; 4],
                [0.0, 0.0, p, 0.0],
                0,
                (None, None),
                (we <= frontier, true),
            );
        }
    }
    out.into_batch(&request.exchange, &request.symbol)
}

#[derive(Default)]
struct Columns {
    start: Vec<i64>,
    end: Vec<i64>,
    prices: [Vec<f64>; 4],
    sums: [Vec<f64>; 4],
    count: Vec<i64>,
    first: Vec<Option<i64>>,
    last: Vec<Option<i64>>,
    is_final: Vec<bool>,
    synthetic: Vec<bool>,
}

impl Columns {
    fn push(
        &mut self,
        (start, end): (i64, i64),
        prices: [f64; 4],
        sums: [f64; 4],
        count: i64,
        (first, last): (Option<i64>, Option<i64>),
        (is_final, synthetic): (bool, bool),
    ) {
        self.start.push(start);
        self.end.push(end);
        for (col, v) in self.prices.iter_mut().zip(prices) {
            col.push(v);
        }
        for (col, v) in self.sums.iter_mut().zip(sums) {
            col.push(v);
        }
        self.count.push(count);
        self.first.push(first);
        self.last.push(last);
        self.is_final.push(is_final);
        self.synthetic.push(synthetic);
    }

    fn into_batch(self, exchange: &str, symbol: &str) -> Result<RecordBatch> {
        let n = self.start.len();
        let ts = |v: Vec<Option<i64>>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
        };
        let some = |v: Vec<i64>| v.into_iter().map(Some).collect::<Vec<_>>();
        let [open, high, low, close] = self
            .prices
            .map(|v| Arc::new(Float64Array::from(v)) as ArrayRef);
        let [volume, quote, vwap, buy] = self
            .sums
            .map(|v| Arc::new(Float64Array::from(v)) as ArrayRef);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![exchange; n])),
            Arc::new(StringArray::from(vec![symbol; n])),
            ts(some(self.start)),
            ts(some(self.end)),
            open,
            high,
            low,
            close,
            volume,
            quote,
            vwap,
            Arc::new(Int64Array::from(self.count)),
            buy,
            ts(self.first),
            ts(self.last),
            Arc::new(BooleanArray::from(self.is_final)),
            Arc::new(BooleanArray::from(self.synthetic)),
        ];
        debug_assert!(columns.iter().all(|c| c.len() == n));
        Ok(RecordBatch::try_new(schema(), columns)?)
    }
}
