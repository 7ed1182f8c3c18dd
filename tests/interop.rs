//! Other engines read what we write: after an append, an upsert and a partition replace, the
//! tables read through pyiceberg and DuckDB's iceberg extension equal what DataFusion reads
//! through our provider, row for row (tests/python/read_tables.py does the reading).

mod common;

use std::collections::HashMap;
use std::process::Command;

use arrow::array::{Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use common::*;
use ohlcv_server::storage::TableKind;
use ohlcv_server::timeframe::Timeframe;
use ohlcv_server::trades::{generate::generate, normalize, GeneratorConfig};
use serde_json::{json, Value};

/// Python with pyiceberg and DuckDB, or `None` outside CI when they are not installed.
fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .args(["-c", "import pyiceberg, duckdb, duckdb_ext"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI must install tests/python/requirements.txt");
    }
    ok.then_some("python3")
}

async fn table_json(d: &Deployment, kind: TableKind, columns: &[&str]) -> Value {
    let sql = format!(
        "select {} from ohlcv.market.{}",
        columns.join(", "),
        kind.name()
    );
    let batches: Vec<RecordBatch> = d.sql(&sql).await;
    let mut rows = Vec::new();
    let mut timestamps = Vec::new();
    for b in &batches {
        for r in 0..b.num_rows() {
            let row: Vec<Value> = (0..b.num_columns())
                .map(|c| {
                    let col = b.column(c);
                    if col.is_null(r) {
                        return Value::Null;
                    }
                    if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                        json!(a.value(r))
                    } else if let Some(a) = col.as_any().downcast_ref::<Float64Array>() {
                        json!(a.value(r))
                    } else if let Some(a) = col.as_any().downcast_ref::<TimestampMicrosecondArray>()
                    {
                        json!(a.value(r))
                    } else {
                        panic!("column type {} not compared", col.data_type())
                    }
                })
                .collect();
            rows.push(Value::Array(row));
        }
    }
    for (i, c) in columns.iter().enumerate() {
        if let Some(b) = batches.first() {
            if matches!(
                b.column(i).data_type(),
                arrow::datatypes::DataType::Timestamp(..)
            ) {
                timestamps.push(*c);
            }
        }
    }
    json!({ "columns": columns, "timestamps": timestamps, "rows": rows })
}

async fn check_with_other_engines(d: &Deployment, stage: &str) {
    let Some(python) = python() else {
        eprintln!("skipping {stage}: pyiceberg/duckdb not installed (pip install -r tests/python/requirements.txt)");
        return;
    };
    let bar_cols = [
        "exchange",
        "symbol",
        "window_start",
        "window_end",
        "close",
        "volume",
    ];
    let mut expected = serde_json::Map::new();
    for tf in [Timeframe::M1, Timeframe::H1] {
        expected.insert(
            tf.table_name(),
            table_json(d, TableKind::Bars(tf), &bar_cols).await,
        );
    }
    expected.insert(
        "trades".to_string(),
        table_json(
            d,
            TableKind::Trades,
            &[
                "exchange", "symbol", "trade_id", "ts", "price", "quantity", "side",
            ],
        )
        .await,
    );
    let path = d.dir.path().join(format!("expected-{stage}.json"));
    std::fs::write(&path, Value::Object(expected).to_string()).unwrap();
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/read_tables.py"
        ))
        .arg(d.dir.path())
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "after {stage}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("after {stage}:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test]
async fn pyiceberg_and_duckdb_read_our_tables_row_for_row() {
    let d = Deployment::new().await;
    let m1 = Timeframe::M1;
    let h1 = Timeframe::H1;

    // Append: bars over three days, trades from the generator.
    let rows: Vec<Bar> = (0..3)
        .flat_map(|day| {
            (0..90).map(move |m| bar("kraken", "BTC-USD", T0 + day * DAY + m * MIN, m as f64))
        })
        .collect();
    d.writer
        .append(TableKind::Bars(m1), &[bar_batch(m1, &rows)], HashMap::new())
        .await
        .unwrap();
    let hours: Vec<Bar> = (0..72)
        .map(|h| bar("kraken", "BTC-USD", T0 + h * 60 * MIN, h as f64))
        .collect();
    d.writer
        .append(
            TableKind::Bars(h1),
            &[bar_batch(h1, &hours)],
            HashMap::new(),
        )
        .await
        .unwrap();
    let trades = generate(&GeneratorConfig {
        trades: 3_000,
        ..GeneratorConfig::default()
    })
    .unwrap();
    d.writer
        .append(
            TableKind::Trades,
            &[normalize(&trades, 0, T0).unwrap()],
            HashMap::new(),
        )
        .await
        .unwrap();
    check_with_other_engines(&d, "append").await;

    // Upsert: change bars in two days, add new keys; a second small append first so the
    // upsert spans several manifests.
    d.writer
        .append(
            TableKind::Bars(m1),
            &[bar_batch(m1, &[bar("okx", "ETH-USD", T0 + 5 * MIN, 3.0)])],
            HashMap::new(),
        )
        .await
        .unwrap();
    let changed = vec![
        bar("kraken", "BTC-USD", T0 + 7 * MIN, 777.0),
        bar("kraken", "BTC-USD", T0 + DAY + 8 * MIN, 888.0),
        bar("okx", "ETH-USD", T0 + 5 * MIN, 4.0),
        bar("kraken", "BTC-USD", T0 + 2 * DAY + 1000 * MIN, 1.0),
    ];
    d.writer
        .upsert(
            TableKind::Bars(m1),
            &[bar_batch(m1, &changed)],
            HashMap::new(),
        )
        .await
        .unwrap();
    check_with_other_engines(&d, "upsert").await;

    // Partition replace: day 1 of the hourly table gets new content, day 2 is dropped.
    let day1 = (T0 / DAY + 1) as i32;
    let new_day1: Vec<Bar> = (0..3)
        .map(|h| {
            bar(
                "kraken",
                "BTC-USD",
                T0 + DAY + h * 60 * MIN,
                100.0 + h as f64,
            )
        })
        .collect();
    d.writer
        .replace_partitions(
            TableKind::Bars(h1),
            &[day1],
            &[bar_batch(h1, &new_day1)],
            HashMap::new(),
        )
        .await
        .unwrap();
    d.writer
        .replace_partitions(TableKind::Bars(h1), &[day1 + 1], &[], HashMap::new())
        .await
        .unwrap();
    check_with_other_engines(&d, "replace").await;

    // The client example reads the same tables.
    if let Some(python) = python() {
        let out = Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/clients/python/read_with_pyiceberg.py"
            ))
            .arg(d.dir.path())
            .arg("ohlcv_1h")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("market.ohlcv_1h: 27 rows"), "{stdout}");
    }

    // Retention: the 2024 hourly bars are past their two years and go; the 1m bars stay, as no
    // rollup has been built from them. Old snapshots are expired and their files deleted; the
    // other engines still read what is left.
    let policy = ohlcv_server::config::RetentionConfig::default()
        .policy()
        .unwrap();
    let now = chrono::Utc::now().timestamp_micros() + 2 * DAY;
    let actions = ohlcv_server::build::retention::apply(&d.writer, &policy, now)
        .await
        .unwrap();
    let action = |t: &str| actions.iter().find(|a| a.table == t).unwrap().clone();
    assert_eq!(action("ohlcv_1h").rows, 27);
    assert!(action("ohlcv_1h").files_deleted > 0);
    assert!(action("ohlcv_1m").partitions.is_empty());
    check_with_other_engines(&d, "retention").await;
}
