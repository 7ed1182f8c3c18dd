//! Bars from a trades table the server does not own (`[source]`): pyiceberg creates
//! `lake.gold_crypto_trades` with other names and types (naive `trade_time`, decimal `px`,
//! integer `id`, boolean `is_buyer_maker`, no exchange column) partitioned by hour, appends in
//! several commits (one row has a zero price), deletes trades, renames a column, adds one and
//! moves to daily partitions. After each step the five tables equal a reference computed from
//! the rows pyiceberg wrote; the source is never written, compacted or expired.

mod common;

use std::process::Command;

use common::trades::{trade, Trade};
use common::*;
use ohlcv_server::build::{self, BuildSettings};
use ohlcv_server::config::Config;
use ohlcv_server::storage::{ColumnMap, Error, SourceConfig, TableKind, TimeRange};
use ohlcv_server::timeframe::Timeframe;
use serde_json::{json, Value};

const NOW: i64 = T0 + 3 * DAY;

fn python_ok() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import pyiceberg, pyiceberg_core"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI must install tests/python/requirements.txt");
    }
    ok
}

fn lake(dir: &std::path::Path, op: &str, rows: Option<Value>) {
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/lake_writer.py"
    ))
    .arg(dir)
    .arg(op);
    if let Some(rows) = rows {
        let path = dir.join(format!("rows-{}.json", uuid::Uuid::new_v4()));
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
}

fn source(price_column: &str) -> SourceConfig {
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
fn lake_trades(first_id: i64, symbol: &str, from: i64, step_s: i64, n: i64) -> Vec<Trade> {
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

fn rows_json(trades: &[Trade], price_column: &str) -> Value {
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

async fn deployment(dir: &tempfile::TempDir, price_column: &str) -> Deployment {
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        source: Some(source(price_column)),
        ..Config::default()
    };
    let writer = writer_for(&config).await;
    Deployment {
        dir: tempfile::tempdir().unwrap(),
        config,
        writer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bars_from_another_pipelines_table_follow_its_appends_deletes_and_evolution() {
    if !python_ok() {
        eprintln!("skipping: pyiceberg is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Our tables first (the catalog database is created by the server), then theirs.
    drop(deployment(&dir, "px").await);
    lake(dir.path(), "create", None);
    let d = deployment(&dir, "px").await;

    let mut all = lake_trades(1, "BTCUSDT", T0, 90, 1000);
    lake(dir.path(), "append", Some(rows_json(&all, "px")));
    let eth = lake_trades(5000, "ETHUSDT", T0 + DAY / 3, 60, 700);
    // One row the mapping cannot read: a zero price.
    let mut bad = lake_trades(9000, "ETHUSDT", T0 + DAY / 2, 60, 1);
    bad[0].price = 0.0;
    lake(
        dir.path(),
        "append",
        Some(rows_json(&[eth.clone(), bad].concat(), "px")),
    );
    all.extend(eth);
    let reports = d.build_all(NOW).await;
    assert_eq!(reports[0].skipped_rows, 1, "{:?}", reports[0]);
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "after two appends")
        .await;

    // Their deletes revise our bars.
    let doomed: Vec<i64> = all
        .iter()
        .filter(|t| t.id.ends_with('3') || (t.ts - T0).div_euclid(MIN) == 30)
        .map(|t| t.id.parse().unwrap())
        .collect();
    lake(dir.path(), "delete", Some(json!({ "id": doomed })));
    all.retain(|t| !doomed.contains(&t.id.parse().unwrap()));
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "after their delete")
        .await;

    // They rename px, add a column and partition by day; old files are read by field id.
    lake(dir.path(), "evolve", None);
    drop(d);
    let d = deployment(&dir, "price_usd").await;
    let later = lake_trades(20_000, "BTCUSDT", T0 + DAY + 7 * 60 * MIN, 45, 400);
    lake(dir.path(), "append", Some(rows_json(&later, "price_usd")));
    all.extend(later);
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(
        &all,
        &Timeframe::ALL,
        "after their schema and spec evolution",
    )
    .await;

    // Their table is theirs: no write, compaction or retention of ours touches it.
    let err = d
        .writer
        .append(TableKind::Trades, &[], Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotOwned { .. }), "{err}");
    let report = build::compact_closed(&d.writer, TableKind::Trades, NOW, BuildSettings::default())
        .await
        .unwrap();
    assert_eq!(report.files_added, 0);
    assert!(
        !dir.path().join("warehouse/market/trades").exists(),
        "no market.trades of our own was created"
    );

    // They drop the table and create it again: the builds stop instead of deleting bars.
    lake(dir.path(), "replace", None);
    drop(d);
    let d = deployment(&dir, "px").await;
    let fresh = lake_trades(50_000, "BTCUSDT", T0 + DAY, 120, 300);
    lake(dir.path(), "append", Some(rows_json(&fresh, "px")));
    let err = build::build(&d.writer, Timeframe::M1, NOW, BuildSettings::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("was replaced"), "{err}");
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "after their table was replaced")
        .await;

    // A backfill is the operator accepting the new table: everything is rebuilt from it.
    for tf in [Timeframe::M1, Timeframe::M5] {
        build::backfill(&d.writer, tf, TimeRange::new(Some(T0), Some(NOW)), NOW)
            .await
            .unwrap();
    }
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(
        &fresh,
        &Timeframe::ALL,
        "after the backfill accepted the new table",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_source_fails_the_builds_by_name_and_the_server_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let d = deployment(&dir, "px").await;
    let err = build::build(&d.writer, Timeframe::M1, NOW, BuildSettings::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lake.gold_crypto_trades"), "{err}");
    let server = common::server::Server::start_with(&d, common::server::options()).await;
    let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(server.channel().await);
    let info = client
        .execute("select count(*) from ohlcv_1m".to_string(), None)
        .await
        .expect("the bar tables are served without their source");
    assert_eq!(info.endpoint.len(), 1);
    server.shutdown_and_wait().await;
}
