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
///
/// One pass groups the children by (series, parent) in a hash map, then only the parents are
/// sorted: sorting the children (by their series' names) cost more than the trade kernel
/// spends per trade, and a first attach rolls up every 1m bar three times.
pub fn rollup_by(
    bars: &[RecordBatch],
    parent_of: &dyn Fn(i64) -> (i64, i64),
    built_at: i64,
) -> Result<RecordBatch> {
    let schema = TableKind::Bars(Timeframe::M1).arrow_schema()?;
    let mut series: FxHashMap<(&str, &str), u32> = FxHashMap::default();
    let mut names: Vec<(&str, &str)> = Vec::new();
    let mut groups: FxHashMap<(u32, i64), usize> = FxHashMap::default();
    let mut parents: Vec<Parent> = Vec::new();
    for batch in bars {
        let c = Children::of(batch);
        let mut last: Option<((&str, &str), u32)> = None;
        let mut window = (i64::MAX, i64::MIN);
        for row in 0..batch.num_rows() {
            let key = (c.exchange.value(row), c.symbol.value(row));
            // Children come grouped by series in practice: hash a key only when it changes.
            let sid = match last {
                Some((k, sid)) if k == key => sid,
                _ => {
                    let next = series.len() as u32;
                    let sid = *series.entry(key).or_insert_with(|| {
                        names.push(key);
                        next
                    });
                    last = Some((key, sid));
                    sid
                }
            };
            let (first, end) = (c.start.value(row), c.end.value(row));
            if !(window.0 <= first && first < window.1) {
                window = parent_of(first);
            }
            if end > window.1 || end <= window.0 {
                return Err(Error::Input(format!(
                    "bar {}/{} at {first} crosses the boundary of window [{}, {})",
                    key.0, key.1, window.0, window.1
                )));
            }
            let at = *groups.entry((sid, window.0)).or_insert_with(|| {
                parents.push(Parent::new(sid, window));
                parents.len() - 1
            });
            parents[at].add(&c, row);
        }
    }
    // Parents in (exchange, symbol, window) order, as the trade kernel writes them.
    let mut rank = vec![0u32; names.len()];
    let mut by_name: Vec<u32> = (0..names.len() as u32).collect();
    by_name.sort_unstable_by_key(|sid| names[*sid as usize]);
    for (r, sid) in by_name.into_iter().enumerate() {
        rank[sid as usize] = r as u32;
    }
    parents.sort_unstable_by_key(|p| (rank[p.sid as usize], p.window.0));

    let mut out = Out::default();
    for p in parents {
        let (exchange, symbol) = names[p.sid as usize];
        let (v, qv) = (unfix(p.volume), unfix(p.quote));
        out.exchange.push(exchange.to_string());
        out.symbol.push(symbol.to_string());
        out.start.push(p.window.0);
        out.end.push(p.window.1);
        out.open.push(p.open.1);
        out.high.push(p.high);
        out.low.push(p.low);
        out.close.push(p.close.1);
        out.volume.push(v);
        out.quote.push(qv);
        out.vwap.push(qv / v);
        out.count.push(p.count);
        out.buy.push(unfix(p.buy));
        out.first.push(p.first_ts);
        out.last.push(p.last_ts);
    }
    out.into_batch(schema, built_at)
}

/// The columns of a batch of child bars.
struct Children<'a> {
    exchange: &'a StringArray,
    symbol: &'a StringArray,
    start: &'a TimestampMicrosecondArray,
    end: &'a TimestampMicrosecondArray,
    first: &'a TimestampMicrosecondArray,
    last: &'a TimestampMicrosecondArray,
    open: &'a Float64Array,
    high: &'a Float64Array,
    low: &'a Float64Array,
    close: &'a Float64Array,
    volume: &'a Float64Array,
    quote: &'a Float64Array,
    buy: &'a Float64Array,
    count: &'a Int64Array,
}

impl<'a> Children<'a> {
    fn of(batch: &'a RecordBatch) -> Children<'a> {
        let col = |name: &str| batch.column_by_name(name).expect("bar column");
        let s = |name: &str| col(name).as_string::<i32>();
        let t = |name: &str| col(name).as_primitive::<TimestampMicrosecondType>();
        let f = |name: &str| col(name).as_primitive::<Float64Type>();
        Children {
            exchange: s("exchange"),
            symbol: s("symbol"),
            start: t("window_start"),
            end: t("window_end"),
            first: t("first_trade_ts"),
            last: t("last_trade_ts"),
            open: f("open"),
            high: f("high"),
            low: f("low"),
            close: f("close"),
            volume: f("volume"),
            quote: f("quote_volume"),
            buy: f("buy_volume"),
            count: col("trade_count").as_primitive::<Int64Type>(),
        }
    }
}

/// One parent window of one series, as its children are added.
struct Parent {
    sid: u32,
    window: (i64, i64),
    /// (window start, open) of the earliest child; (window start, close) of the latest.
    open: (i64, f64),
    close: (i64, f64),
    high: f64,
    low: f64,
    volume: i128,
    quote: i128,
    buy: i128,
    count: i64,
    first_ts: i64,
    last_ts: i64,
}

impl Parent {
    fn new(sid: u32, window: (i64, i64)) -> Parent {
        Parent {
            sid,
            window,
            open: (i64::MAX, 0.0),
            close: (i64::MIN, 0.0),
            high: f64::MIN,
            low: f64::MAX,
            volume: 0,
            quote: 0,
            buy: 0,
            count: 0,
            first_ts: i64::MAX,
            last_ts: i64::MIN,
        }
    }

    fn add(&mut self, c: &Children, row: usize) {
        let start = c.start.value(row);
        if start < self.open.0 {
            self.open = (start, c.open.value(row));
        }
        if start > self.close.0 {
            self.close = (start, c.close.value(row));
        }
        self.high = self.high.max(c.high.value(row));
        self.low = self.low.min(c.low.value(row));
        self.volume += fix(c.volume.value(row));
        self.quote += fix(c.quote.value(row));
        self.buy += fix(c.buy.value(row));
        self.count += c.count.value(row);
        self.first_ts = self.first_ts.min(c.first.value(row));
        self.last_ts = self.last_ts.max(c.last.value(row));
    }
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

#[cfg(test)]
mod tests {
    use arrow::array::UInt32Array;
    use arrow::compute::take_record_batch;

    use super::*;
    use crate::bars::compute_bars;
    use crate::trades::generate::generate;
    use crate::trades::GeneratorConfig;

    fn trades() -> RecordBatch {
        generate(&GeneratorConfig {
            trades: 20_000,
            symbols: 4,
            exchanges: 2,
            trades_per_second: 4.0,
            ..Default::default()
        })
        .unwrap()
    }

    fn column<'a>(b: &'a RecordBatch, name: &str) -> &'a ArrayRef {
        b.column_by_name(name).unwrap()
    }

    #[test]
    fn order_and_batching_of_the_children_do_not_matter() {
        let m1 = compute_bars(&[trades()], Timeframe::M1, 0).unwrap();
        let whole = rollup(std::slice::from_ref(&m1), Timeframe::M30.micros(), 0, 0).unwrap();
        let n = m1.num_rows();
        let reversed = UInt32Array::from_iter_values((0..n as u32).rev());
        let reversed = take_record_batch(&m1, &reversed).unwrap();
        let thirds = [
            reversed.slice(0, n / 3),
            reversed.slice(n / 3, n / 3),
            reversed.slice(2 * (n / 3), n - 2 * (n / 3)),
        ];
        assert_eq!(
            rollup(&thirds, Timeframe::M30.micros(), 0, 0).unwrap(),
            whole
        );
    }

    #[test]
    fn equals_the_trade_kernel_of_the_parent_timeframe() {
        let trades = trades();
        let m1 = compute_bars(std::slice::from_ref(&trades), Timeframe::M1, 0).unwrap();
        for tf in [Timeframe::M5, Timeframe::M30, Timeframe::H1] {
            let rolled = rollup(std::slice::from_ref(&m1), tf.micros(), 0, 0).unwrap();
            let direct = compute_bars(std::slice::from_ref(&trades), tf, 0).unwrap();
            assert_eq!(rolled.num_rows(), direct.num_rows(), "{tf}");
            for name in [
                "exchange",
                "symbol",
                "window_start",
                "window_end",
                "open",
                "high",
                "low",
                "close",
                "trade_count",
                "first_trade_ts",
                "last_trade_ts",
            ] {
                assert_eq!(column(&rolled, name), column(&direct, name), "{tf} {name}");
            }
            for name in ["volume", "quote_volume", "buy_volume", "vwap"] {
                let (a, b) = (column(&rolled, name), column(&direct, name));
                let (a, b) = (
                    a.as_primitive::<Float64Type>(),
                    b.as_primitive::<Float64Type>(),
                );
                for (x, y) in a.values().iter().zip(b.values()) {
                    assert!(
                        (x - y).abs() <= 1e-9 * y.abs().max(1.0),
                        "{tf} {name}: {x} {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_child_across_a_parent_boundary_is_refused() {
        let m1 = compute_bars(&[trades()], Timeframe::M1, 0).unwrap();
        let err = rollup(&[m1], 90_000_000, 0, 0).unwrap_err();
        assert!(err.to_string().contains("crosses the boundary"), "{err}");
    }
}
