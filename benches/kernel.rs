//! Bar kernel benchmark: 1m bars with dedupe from a trades Parquet file (50 symbols,
//! 3 exchanges), ohlcv-server's `compute` path (read + kernel) against DuckDB on the same file
//! in the same run, at 1M, 3M and 10M trades to show the cost is linear.
//!
//! cargo bench --bench kernel   (needs `pip install duckdb`)
//! Trade files are generated once into target/bench-data/.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type};
use ohlcv_server::bars::{compute_bars, file::read_trades};
use ohlcv_server::timeframe::Timeframe;
use ohlcv_server::trades::generate::generate;
use ohlcv_server::trades::{write_trades_file, GeneratorConfig};

fn data_file(trades: usize) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("trades-{trades}.parquet"));
    if !path.exists() {
        let batch = generate(&GeneratorConfig {
            trades,
            symbols: 50,
            exchanges: 3,
            trades_per_second: 500.0,
            ..GeneratorConfig::default()
        })
        .unwrap();
        write_trades_file(&path, &batch).unwrap();
    }
    path
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let runs = 3;
    println!("| trades | ohlcv-server compute | ns/trade | DuckDB 1.4.4 | ratio | bars (both) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in [1_000_000, 3_000_000, 10_000_000] {
        let path = data_file(n);
        let mut times = Vec::new();
        let mut bars = None;
        for _ in 0..runs {
            let t = Instant::now();
            let trades = read_trades(&path).unwrap();
            let out = compute_bars(&trades, Timeframe::M1, 0).unwrap();
            times.push(t.elapsed().as_secs_f64());
            bars = Some(out);
        }
        let ours = median(times);
        let bars = bars.unwrap();

        let out = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/duckdb_bars.py"
            ))
            .arg(&path)
            .arg(runs.to_string())
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "duckdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let duck: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

        // Both engines must agree before their times mean anything.
        let count: i64 = bars
            .column_by_name("trade_count")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .sum();
        assert_eq!(
            bars.num_rows() as u64,
            duck["bars"].as_u64().unwrap(),
            "bar counts differ"
        );
        assert_eq!(
            count,
            duck["trades"].as_i64().unwrap(),
            "deduped trade counts differ"
        );
        for name in ["open", "close", "high", "low"] {
            let ours: f64 = bars
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Float64Type>()
                .values()
                .iter()
                .sum();
            let theirs = duck[name].as_f64().unwrap();
            assert!(
                (ours - theirs).abs() <= 1e-9 * theirs.abs(),
                "{name}: {ours} vs {theirs}"
            );
        }
        let duck_s = duck["seconds"].as_f64().unwrap();
        println!(
            "| {n} | {:.3} s | {:.0} | {:.3} s | {:.1}x | {} |",
            ours,
            ours * 1e9 / n as f64,
            duck_s,
            duck_s / ours,
            bars.num_rows()
        );
    }
}
