//! Incremental 1m build benchmark: after six hours of history for 200 symbols are built, one
//! more minute of trades arrives (about 10 trades per symbol) and the 1m build runs. Reported:
//! the run's wall time (target: under 300 ms in release), median of 10 consecutive minutes.
//!
//! cargo bench --bench incremental

use std::collections::HashMap;
use std::time::Instant;

use ohlcv_server::build::build_incremental;
use ohlcv_server::config::Config;
use ohlcv_server::storage::{Storage, TableKind, TableWriter, WriterLock};
use ohlcv_server::timeframe::Timeframe;
use ohlcv_server::trades::generate::generate;
use ohlcv_server::trades::{normalize, GeneratorConfig};

const MIN: i64 = 60_000_000;
const T0: i64 = 1_704_067_200_000_000;
const SYMBOLS: usize = 200;
const GRACE: i64 = 5 * MIN;

fn minute_of_trades(start: i64, minutes: i64, seed: u64) -> arrow::array::RecordBatch {
    let per_second = SYMBOLS as f64 * 10.0 / 60.0;
    let raw = generate(&GeneratorConfig {
        trades: (per_second * 60.0 * minutes as f64) as usize,
        symbols: SYMBOLS,
        exchanges: 1,
        seed,
        start_us: start,
        trades_per_second: per_second,
        out_of_order: 0.0,
        duplicates: 0.0,
        first_id: 1,
        start_prices: Vec::new(),
    })
    .unwrap();
    normalize(&raw, 0, start).unwrap()
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let lock = WriterLock::acquire(dir.path(), "bench").unwrap();
    let writer = TableWriter::new(Storage::open(&config).await.unwrap(), lock);

    let history_minutes = 360;
    let history = minute_of_trades(T0, history_minutes, 1);
    let history_rows = history.num_rows();
    writer
        .append(TableKind::Trades, &[history], HashMap::new())
        .await
        .unwrap();
    let mut end = T0 + history_minutes * MIN;
    let t = Instant::now();
    let first = build_incremental(&writer, Timeframe::M1, end + GRACE, GRACE)
        .await
        .unwrap();
    println!(
        "initial build: {} trades -> {} bars in {:.0} ms",
        history_rows,
        first.new,
        t.elapsed().as_secs_f64() * 1e3
    );

    let mut times = Vec::new();
    for i in 0..10 {
        let minute = minute_of_trades(end, 1, 100 + i);
        let n = minute.num_rows();
        writer
            .append(TableKind::Trades, &[minute], HashMap::new())
            .await
            .unwrap();
        end += MIN;
        let t = Instant::now();
        let report = build_incremental(&writer, Timeframe::M1, end + GRACE, GRACE)
            .await
            .unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(report.new > 0 && report.revised == 0, "{report:?}");
        println!(
            "minute {i}: {n} trades -> {} new bars in {ms:.1} ms",
            report.new
        );
        times.push(ms);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "incremental 1m run, {SYMBOLS} symbols, 1 minute of trades: median {:.1} ms, max {:.1} ms",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}
