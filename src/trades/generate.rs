//! Synthetic trades that look like a real multi-exchange feed: random-walk prices per symbol
//! with small per-exchange spreads, Poisson arrivals interleaved across exchanges and symbols,
//! bursts of fills sharing one timestamp, and a configurable share of out-of-order and
//! duplicated deliveries, which the bar engine has to survive.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Normal};

use super::error::{Error, Result};

const EXCHANGES: &[&str] = &[
    "binance", "coinbase", "kraken", "bitstamp", "okx", "bybit", "gemini", "bitfinex",
];
const SYMBOLS: &[(&str, f64)] = &[
    ("BTC-USD", 62_000.0),
    ("ETH-USD", 3_100.0),
    ("SOL-USD", 145.0),
    ("XRP-USD", 0.52),
    ("DOGE-USD", 0.12),
    ("ADA-USD", 0.45),
    ("AVAX-USD", 28.0),
    ("LINK-USD", 14.0),
    ("DOT-USD", 6.5),
    ("LTC-USD", 72.0),
];

/// What to generate.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub trades: usize,
    pub symbols: usize,
    pub exchanges: usize,
    pub seed: u64,
    /// Timestamp of the first trade, UTC microseconds.
    pub start_us: i64,
    /// Mean trades per second over all exchanges and symbols.
    pub trades_per_second: f64,
    /// Share of trades delivered later than trades with a later timestamp.
    pub out_of_order: f64,
    /// Share of trades delivered twice.
    pub duplicates: f64,
    /// First trade id of every exchange (a live feed continues where the last batch ended).
    pub first_id: u64,
    /// Fair price of each symbol at the start; empty means typical levels. A live feed passes
    /// the prices the previous batch ended with, so its random walk is continuous.
    pub start_prices: Vec<f64>,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            trades: 10_000,
            symbols: 10,
            exchanges: 3,
            seed: 42,
            start_us: 1_704_067_200_000_000, // 2024-01-01T00:00:00Z
            trades_per_second: 50.0,
            out_of_order: 0.01,
            duplicates: 0.005,
            first_id: 1,
            start_prices: Vec::new(),
        }
    }
}

/// The columns a generated file carries (the ingest input shape, without `ingested_at`).
pub fn trade_input_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("exchange", DataType::Utf8, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("trade_id", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("price", DataType::Float64, false),
        Field::new("quantity", DataType::Float64, false),
        Field::new("side", DataType::Utf8, true),
    ]))
}

#[derive(Clone, Copy)]
struct Trade {
    exchange: u16,
    symbol: u16,
    id: u64,
    ts: i64,
    price: f64,
    quantity: f64,
    side: Option<bool>,
}

fn symbol_name(i: usize) -> String {
    SYMBOLS
        .get(i)
        .map(|(s, _)| s.to_string())
        .unwrap_or_else(|| format!("SYM{i}-USD"))
}

fn exchange_name(i: usize) -> String {
    EXCHANGES
        .get(i)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("exchange{i}"))
}

/// Rounds to a tick size that suits the price level, like a real order book.
fn to_tick(price: f64) -> f64 {
    let tick = 10f64.powi((price.log10().floor() as i32) - 4);
    ((price / tick).round() * tick).max(tick)
}

/// Generates the trades in delivery order.
pub fn generate(cfg: &GeneratorConfig) -> Result<RecordBatch> {
    generate_continuing(cfg).map(|(batch, _)| batch)
}

/// As [`generate`], also returning each symbol's fair price at the end.
pub fn generate_continuing(cfg: &GeneratorConfig) -> Result<(RecordBatch, Vec<f64>)> {
    if cfg.symbols == 0 || cfg.exchanges == 0 || cfg.trades_per_second <= 0.0 {
        return Err(Error::Schema(
            "generate needs at least one symbol, one exchange and a positive rate".to_string(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut fair: Vec<f64> = (0..cfg.symbols)
        .map(|i| {
            cfg.start_prices.get(i).copied().unwrap_or_else(|| {
                SYMBOLS
                    .get(i)
                    .map(|(_, p)| *p)
                    .unwrap_or_else(|| 10f64.powf(rng.gen_range(-1.0..3.0)))
            })
        })
        .collect();
    // 5 % of prints share the previous timestamp (bursts below), so the gaps between the
    // others are drawn at 95 % of the rate to keep the mean rate what was asked for.
    let arrival = Exp::new(cfg.trades_per_second * 0.95).expect("positive rate");
    let noise = Normal::new(0.0, 1.0).expect("unit normal");
    let mut next_id = vec![cfg.first_id; cfg.exchanges];
    let mut ts = cfg.start_us;
    let mut trades: Vec<Trade> = Vec::with_capacity(cfg.trades);
    while trades.len() < cfg.trades {
        // Bursts: a taker order sweeping several makers prints fills at one timestamp.
        let same_ts = !trades.is_empty() && rng.gen_bool(0.05);
        if !same_ts {
            let dt = arrival.sample(&mut rng);
            ts += ((dt * 1e6) as i64).max(1);
        }
        let symbol = rng.gen_range(0..cfg.symbols);
        let exchange = rng.gen_range(0..cfg.exchanges);
        // Random walk with ~60% annualised volatility, scaled to the time since the last print.
        let step = 0.6 / (365.0f64 * 86_400.0).sqrt() / cfg.trades_per_second.sqrt();
        fair[symbol] *= (step * noise.sample(&mut rng)).exp();
        let spread = 1.0 + 0.0002 * noise.sample(&mut rng);
        let price = to_tick(fair[symbol] * spread);
        let notional = (noise.sample(&mut rng) * 1.2 + 6.0).exp();
        let quantity = ((notional / price) * 1e6).round().max(1.0) / 1e6;
        let side = if rng.gen_bool(0.02) {
            None
        } else {
            Some(rng.gen_bool(0.5))
        };
        trades.push(Trade {
            exchange: exchange as u16,
            symbol: symbol as u16,
            id: next_id[exchange],
            ts,
            price,
            quantity,
            side,
        });
        next_id[exchange] += 1;
    }
    let n = trades.len();
    for i in 0..n {
        if rng.gen_bool(cfg.out_of_order.clamp(0.0, 1.0)) {
            let later = (i + rng.gen_range(1..=500)).min(n - 1);
            trades.swap(i, later);
        }
    }
    // Each duplicate is re-delivered at a random later point of the feed. Positions are drawn
    // first and merged in one pass: inserting one by one moved the tail of the vector per
    // duplicate, quadratic (a 10 M-trade file took minutes).
    let duplicates = (n as f64 * cfg.duplicates.clamp(0.0, 1.0)).round() as usize;
    let mut redelivered: Vec<(usize, usize)> = (0..duplicates)
        .map(|_| {
            let src = rng.gen_range(0..n);
            (rng.gen_range(src + 1..=n), src)
        })
        .collect();
    redelivered.sort_by_key(|&(at, _)| at);
    let mut feed = Vec::with_capacity(n + duplicates);
    let mut pending = redelivered.iter().peekable();
    for (i, trade) in trades.iter().enumerate() {
        while let Some(&(_, src)) = pending.next_if(|(at, _)| *at == i) {
            feed.push(trades[src]);
        }
        feed.push(*trade);
    }
    feed.extend(pending.map(|&(_, src)| trades[src]));
    Ok((to_batch(&feed, cfg)?, fair))
}

fn to_batch(trades: &[Trade], cfg: &GeneratorConfig) -> Result<RecordBatch> {
    let exchanges: Vec<String> = (0..cfg.exchanges).map(exchange_name).collect();
    let symbols: Vec<String> = (0..cfg.symbols).map(symbol_name).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            trades.iter().map(|t| &exchanges[t.exchange as usize]),
        )),
        Arc::new(StringArray::from_iter_values(
            trades.iter().map(|t| &symbols[t.symbol as usize]),
        )),
        Arc::new(StringArray::from_iter_values(
            trades.iter().map(|t| t.id.to_string()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(trades.iter().map(|t| t.ts))
                .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter_values(
            trades.iter().map(|t| t.price),
        )),
        Arc::new(Float64Array::from_iter_values(
            trades.iter().map(|t| t.quantity),
        )),
        Arc::new(
            trades
                .iter()
                .map(|t| t.side.map(|buy| if buy { "buy" } else { "sell" }))
                .collect::<StringArray>(),
        ),
    ];
    Ok(RecordBatch::try_new(trade_input_schema(), columns)?)
}

/// Writes trades to `path` as Parquet or CSV, chosen by its extension.
pub fn write_trades_file(path: &Path, batch: &RecordBatch) -> Result<()> {
    let err = |message: String| Error::File {
        path: path.to_path_buf(),
        message,
    };
    let file = File::create(path).map_err(|e| err(e.to_string()))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => {
            let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)
                .map_err(|e| err(e.to_string()))?;
            for start in (0..batch.num_rows()).step_by(1 << 20) {
                let len = (batch.num_rows() - start).min(1 << 20);
                writer
                    .write(&batch.slice(start, len))
                    .map_err(|e| err(e.to_string()))?;
            }
            writer.close().map_err(|e| err(e.to_string()))?;
        }
        Some("csv") => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.6fZ".to_string())
                .build(file);
            writer.write(batch).map_err(|e| err(e.to_string()))?;
        }
        _ => return Err(err("expected a .parquet or .csv output".to_string())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn same_seed_same_trades_and_requested_quirks_appear() {
        let cfg = GeneratorConfig {
            trades: 5_000,
            out_of_order: 0.05,
            duplicates: 0.02,
            ..GeneratorConfig::default()
        };
        let a = generate(&cfg).unwrap();
        let b = generate(&cfg).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.num_rows(), 5_100);

        let ts = a
            .column(3)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        let inversions = ts.values().windows(2).filter(|w| w[1] < w[0]).count();
        assert!(inversions > 50, "out-of-order deliveries: {inversions}");

        let ex = a.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let id = a.column(2).as_any().downcast_ref::<StringArray>().unwrap();
        let unique: HashSet<(&str, &str)> = (0..a.num_rows())
            .map(|i| (ex.value(i), id.value(i)))
            .collect();
        assert_eq!(
            unique.len(),
            5_000,
            "duplicates repeat an existing trade id"
        );

        let price = a.column(4).as_any().downcast_ref::<Float64Array>().unwrap();
        assert!(price.values().iter().all(|p| p.is_finite() && *p > 0.0));
    }

    #[test]
    fn a_continued_feed_starts_where_the_last_batch_ended() {
        let first = GeneratorConfig {
            trades: 2_000,
            symbols: 1,
            exchanges: 1,
            ..GeneratorConfig::default()
        };
        let (_, end) = generate_continuing(&first).unwrap();
        let next = GeneratorConfig {
            seed: 7,
            start_prices: end.clone(),
            ..first
        };
        let (batch, _) = generate_continuing(&next).unwrap();
        let price = batch
            .column(4)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        let jump = (price.value(0) / end[0] - 1.0).abs();
        assert!(
            jump < 0.01,
            "first price {} vs last fair {}",
            price.value(0),
            end[0]
        );
    }
}
