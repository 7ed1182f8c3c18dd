//! Candle reads, in one room: every way a client asks for bars or candles (the
//! `candles(exchange, symbol, timeframe, start, end [, options])` function, stock SQL on
//! `market.ohlcv_*`, statements answered without planning) goes through [`Reads`], which owns
//! the hot bar cache and the memo of encoded answers and divides one memory budget between
//! them.
//!
//! | module | owns |
//! |---|---|
//! | `reads` | the room's interface: the cache, the answer memo, the function and routed tables over them |
//! | `cache` | the hot bar cache kept equal to the tables by observing every commit, and the unbuilt trades for live bars |
//! | `as_of` | `bars_as_of(table, moment)`: a bar table at a past moment or snapshot, for stock SQL |
//! | `answers` | hot candle statements: their shapes and encoded answers per cache generation |
//! | `windows` | any timeframe (15m, 4h, 1w, ...), time-zone days and weeks |
//! | `assemble` | stored + live bars, rollup, finality, gap fill |
//! | `function` | the DataFusion table function and its arguments |
//! | `routing` | stock SQL on `market.ohlcv_*` answered from the cache |
//! | `shape` | which statements are candle reads (candles(), stock tables; folded constants, projection, order, limit) |
//! | `serve` | a recognised read's answer from the cache's view |
//!
//! Candles of a timeframe are the bars of the coarsest stored timeframe that tiles it, rolled
//! up. Windows a table has persisted come from the cache (inside the hot horizon) or the
//! table; newer ones are live: computed from the unbuilt trades (and, for the batch
//! timeframes, from the 1m bars not yet rolled up), exactly as the next build will persist
//! them, and flagged `is_final = false`.

pub mod answers;
pub mod as_of;
pub mod assemble;
pub mod cache;
pub mod function;
pub mod reads;
pub mod routing;
pub mod serve;
pub mod shape;
pub mod windows;

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

pub use answers::Statement;
pub use assemble::{candles, candles_in};
pub use cache::{Error, Result};
pub use function::CandlesFunction;
pub use reads::Reads;
pub use routing::MarketTables;
pub use windows::Windows;

/// Empty windows: skipped, or flat bars at the previous close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fill {
    #[default]
    None,
    Previous,
}

/// One candle query.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub exchange: String,
    pub symbol: String,
    pub windows: Windows,
    /// Candles whose window starts in `[start, end)`, UTC microseconds.
    pub start: i64,
    pub end: i64,
    pub fill: Fill,
    /// Only the latest this many candles of `[start, end)` (chart libraries' "count back"
    /// from `end`).
    pub last: Option<u64>,
    /// Bars as the tables held them at this moment (UTC microseconds): each table's last
    /// snapshot committed by then, no live bars.
    pub as_of: Option<i64>,
}

impl Request {
    /// The first and last-plus-one window start in `[start, end)`.
    pub fn span(&self) -> (i64, i64) {
        (self.windows.ceil(self.start), self.windows.ceil(self.end))
    }

    /// The stored timeframe these candles are computed from (`None`: no window in range).
    pub fn base(&self) -> Option<crate::timeframe::Timeframe> {
        let (lo, hi) = self.span();
        (lo < hi).then(|| self.windows.base(lo, hi).ok()).flatten()
    }
}

/// The columns `candles()` returns: the bar columns without the storage bookkeeping
/// (`revision`, `built_at`), and two flags.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let f = |name: &str| Field::new(name, DataType::Float64, false);
        Arc::new(Schema::new(vec![
            Field::new("exchange", DataType::Utf8, false),
            Field::new("symbol", DataType::Utf8, false),
            Field::new("window_start", ts(), false),
            Field::new("window_end", ts(), false),
            f("open"),
            f("high"),
            f("low"),
            f("close"),
            f("volume"),
            f("quote_volume"),
            f("vwap"),
            Field::new("trade_count", DataType::Int64, false),
            f("buy_volume"),
            // NULL on synthetic (gap-filled) bars, which have no trades.
            Field::new("first_trade_ts", ts(), true),
            Field::new("last_trade_ts", ts(), true),
            // The window is persisted and will only change by a late revision.
            Field::new("is_final", DataType::Boolean, false),
            Field::new("is_synthetic", DataType::Boolean, false),
        ]))
    }))
}
