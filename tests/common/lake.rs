//! Another team's trades table (`lake.gold_crypto_trades`), written by pyiceberg through
//! `tests/python/lake_writer.py`, and the `[source]` that maps it onto our columns.

use std::process::Command;

use ohlcv_server::storage::{ColumnMap, SourceConfig};
use serde_json::{json, Value};

use super::trades::{trade, Trade};

pub fn python_ok() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pyiceberg, pyiceberg_core"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI must install tests/python/requirements.txt");
    }
    ok
}

/// `tests/python/lake_writer.py` on the SQLite catalog of `dir`, or on a REST catalog when
/// `env` says so (see `seaweed.rs`).
pub struct Lake {
    pub dir: std::path::PathBuf,
    pub env: Vec<(&'static str, String)>,
}

impl Lake {
    pub fn sqlite(dir: &std::path::Path) -> Lake {
        Lake {
            dir: dir.to_path_buf(),
            env: Vec::new(),
        }
    }

    /// Runs `op` with `rows` (as JSON) and returns what the script printed.
    pub fn run(&self, op: &str, rows: Option<Value>) -> String {
        let mut cmd = Command::new("python3");
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/lake_writer.py"
        ))
        .arg(&self.dir)
        .arg(op)
        .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(rows) = rows {
            let path = self.dir.join(format!("rows-{}.json", uuid::Uuid::new_v4()));
            std::fs::write(&path, rows.to_string()).unwrap();
            cmd.arg(path);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "lake_writer {op}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Moves the table to the partition spec `name` (see `SPECS` in lake_writer.py).
    pub fn respec(&self, name: &str) {
        self.count_with_output("respec", name);
    }

    /// Rows pyiceberg reads from `table` (`namespace.name`).
    pub fn count(&self, table: &str) -> usize {
        self.count_with("count", table)
    }

    /// Rows DuckDB's iceberg extension reads from `table` through the REST catalog.
    pub fn duckdb_count(&self, table: &str) -> usize {
        self.count_with("duckdb-count", table)
    }

    fn count_with(&self, op: &str, table: &str) -> usize {
        self.count_with_output(op, table).parse().unwrap()
    }

    fn count_with_output(&self, op: &str, table: &str) -> String {
        let out = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/lake_writer.py"
            ))
            .arg(&self.dir)
            .args([op, table])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

pub fn source(price_column: &str) -> SourceConfig {
    SourceConfig {
        namespace: Some("lake".into()),
        table: "gold_crypto_trades".into(),
        exchange: Some("binance".into()),
        strict: false,
        columns: ColumnMap {
            ts: "trade_time".into(),
            price: price_column.into(),
            quantity: "qty".into(),
            trade_id: "id".into(),
            exchange: String::new(),
            symbol: "pair".into(),
            side: "is_buyer_maker".into(),
        },
    }
}

/// Trades as the lake table holds them; `buy` is `!is_buyer_maker`.
pub fn lake_trades(first_id: i64, symbol: &str, from: i64, step_s: i64, n: i64) -> Vec<Trade> {
    (0..n)
        .map(|i| {
            let mut t = trade(
                "binance",
                symbol,
                &(first_id + i).to_string(),
                from + i * step_s * 1_000_000 + 1_000_000,
                // Exactly representable in decimal(18, 8) and in f64.
                100.0 + ((i * 37) % 101) as f64 / 4.0,
                0.25 + (i % 5) as f64,
            );
            t.buy = i % 3 != 0;
            t
        })
        .collect()
}

pub fn rows_json(trades: &[Trade], price_column: &str) -> Value {
    let mut rows = serde_json::Map::new();
    rows.insert(
        "trade_time".into(),
        json!(trades.iter().map(|t| t.ts).collect::<Vec<_>>()),
    );
    rows.insert(
        price_column.into(),
        json!(trades.iter().map(|t| t.price).collect::<Vec<_>>()),
    );
    rows.insert(
        "qty".into(),
        json!(trades.iter().map(|t| t.qty).collect::<Vec<_>>()),
    );
    rows.insert(
        "id".into(),
        json!(trades
            .iter()
            .map(|t| t.id.parse::<i64>().unwrap())
            .collect::<Vec<_>>()),
    );
    rows.insert(
        "pair".into(),
        json!(trades.iter().map(|t| t.symbol.clone()).collect::<Vec<_>>()),
    );
    rows.insert(
        "is_buyer_maker".into(),
        json!(trades.iter().map(|t| !t.buy).collect::<Vec<_>>()),
    );
    Value::Object(rows)
}
