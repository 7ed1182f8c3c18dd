//! Trades for builder tests, and a straightforward reference computation of bars.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};

#[derive(Debug, Clone, PartialEq)]
pub struct Trade {
    pub exchange: String,
    pub symbol: String,
    pub id: String,
    pub ts: i64,
    pub price: f64,
    pub qty: f64,
    pub buy: bool,
}

pub fn trade(exchange: &str, symbol: &str, id: &str, ts: i64, price: f64, qty: f64) -> Trade {
    Trade {
        exchange: exchange.into(),
        symbol: symbol.into(),
        id: id.into(),
        ts,
        price,
        qty,
        buy: id.len().is_multiple_of(2),
    }
}

/// Trades in the ingest input shape.
/// Appends `trades` to market.trades in one commit, validated like `load`.
pub async fn load(d: &super::Deployment, trades: &[Trade]) {
    let batch = ohlcv_server::trades::normalize(&trade_batch(trades), 0, super::T0).unwrap();
    d.writer
        .append(
            ohlcv_server::storage::TableKind::Trades,
            &[batch],
            HashMap::new(),
        )
        .await
        .unwrap();
}

pub fn trade_batch(trades: &[Trade]) -> RecordBatch {
    RecordBatch::try_new(
        ohlcv_server::trades::generate::trade_input_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                trades.iter().map(|t| t.exchange.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                trades.iter().map(|t| t.symbol.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                trades.iter().map(|t| t.id.as_str()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(trades.iter().map(|t| t.ts))
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter_values(
                trades.iter().map(|t| t.price),
            )),
            Arc::new(Float64Array::from_iter_values(trades.iter().map(|t| t.qty))),
            Arc::new(
                trades
                    .iter()
                    .map(|t| Some(if t.buy { "buy" } else { "sell" }))
                    .collect::<StringArray>(),
            ),
        ],
    )
    .unwrap()
}

/// A bar as the tests compare it.
#[derive(Debug, Clone, PartialEq)]
pub struct RefBar {
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
    pub quote: f64,
    pub buy: f64,
    pub count: i64,
    pub first: i64,
    pub last: i64,
    pub revision: i32,
}

pub type Key = (String, String, i64);

/// Bars of windows of `tf_us` from `trades`, computed the obvious way.
pub fn reference(trades: &[Trade], tf_us: i64) -> BTreeMap<Key, RefBar> {
    // Dedupe: per (exchange, symbol, id) keep the smallest copy by content.
    let mut unique: HashMap<(String, String, String), Trade> = HashMap::new();
    for t in trades {
        let k = (t.exchange.clone(), t.symbol.clone(), t.id.clone());
        let better = match unique.get(&k) {
            None => true,
            Some(o) => (t.ts, t.price, t.qty, t.buy) < (o.ts, o.price, o.qty, o.buy),
        };
        if better {
            unique.insert(k, t.clone());
        }
    }
    let mut by_window: BTreeMap<Key, Vec<Trade>> = BTreeMap::new();
    for t in unique.into_values() {
        by_window
            .entry((
                t.exchange.clone(),
                t.symbol.clone(),
                t.ts.div_euclid(tf_us) * tf_us,
            ))
            .or_default()
            .push(t);
    }
    by_window
        .into_iter()
        .map(|(k, mut ts)| {
            ts.sort_by(|a, b| (a.ts, &a.id).cmp(&(b.ts, &b.id)));
            let bar = RefBar {
                open: ts[0].price,
                close: ts[ts.len() - 1].price,
                high: ts.iter().map(|t| t.price).fold(f64::MIN, f64::max),
                low: ts.iter().map(|t| t.price).fold(f64::MAX, f64::min),
                volume: ts.iter().map(|t| t.qty).sum(),
                quote: ts.iter().map(|t| t.price * t.qty).sum(),
                buy: ts.iter().filter(|t| t.buy).map(|t| t.qty).sum(),
                count: ts.len() as i64,
                first: ts[0].ts,
                last: ts[ts.len() - 1].ts,
                revision: 0,
            };
            (k, bar)
        })
        .collect()
}

/// The bars of a table batch set, keyed like the reference.
pub fn table_bars(batches: &[RecordBatch]) -> BTreeMap<Key, RefBar> {
    let mut out = BTreeMap::new();
    for b in batches {
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let t = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
        };
        let f = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone()
        };
        let (ex, sym, ws, first, last) = (
            s("exchange"),
            s("symbol"),
            t("window_start"),
            t("first_trade_ts"),
            t("last_trade_ts"),
        );
        let (o, h, l, c, v, q, bv) = (
            f("open"),
            f("high"),
            f("low"),
            f("close"),
            f("volume"),
            f("quote_volume"),
            f("buy_volume"),
        );
        let n = b
            .column_by_name("trade_count")
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        let rev = b
            .column_by_name("revision")
            .unwrap()
            .as_primitive::<Int32Type>()
            .clone();
        for r in 0..b.num_rows() {
            out.insert(
                (
                    ex.value(r).to_string(),
                    sym.value(r).to_string(),
                    ws.value(r),
                ),
                RefBar {
                    open: o.value(r),
                    high: h.value(r),
                    low: l.value(r),
                    close: c.value(r),
                    volume: v.value(r),
                    quote: q.value(r),
                    buy: bv.value(r),
                    count: n.value(r),
                    first: first.value(r),
                    last: last.value(r),
                    revision: rev.value(r),
                },
            );
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

/// Compares everything exactly except the sums, which may differ by summation rounding.
pub fn assert_bars_match(what: &str, got: &BTreeMap<Key, RefBar>, want: &BTreeMap<Key, RefBar>) {
    let gk: Vec<_> = got.keys().collect();
    let wk: Vec<_> = want.keys().collect();
    assert_eq!(gk, wk, "{what}: keys differ");
    for (k, w) in want {
        let g = &got[k];
        let exact = (g.open, g.high, g.low, g.close, g.count, g.first, g.last)
            == (w.open, w.high, w.low, w.close, w.count, w.first, w.last);
        assert!(
            exact && close(g.volume, w.volume) && close(g.quote, w.quote) && close(g.buy, w.buy),
            "{what}: bar {k:?} is {g:?}, expected {w:?}"
        );
    }
}
