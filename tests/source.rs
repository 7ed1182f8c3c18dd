//! Bars from a trades table the server does not own (`[source]`): pyiceberg creates
//! `lake.gold_crypto_trades` with other names and types (naive `trade_time`, decimal `px`,
//! integer `id`, boolean `is_buyer_maker`, no exchange column) partitioned by hour, appends in
//! several commits (one row has a zero price), deletes trades, renames a column, adds one and
//! moves to daily partitions. After each step the five tables equal a reference computed from
//! the rows pyiceberg wrote; the source is never written, compacted or expired.

mod common;

use common::lake::*;
use common::trades::Trade;
use common::*;
use ohlcv_server::build::{self, BuildSettings};
use ohlcv_server::config::Config;
use ohlcv_server::storage::{Error, TableKind, TimeRange};
use ohlcv_server::timeframe::Timeframe;
use serde_json::json;

const NOW: i64 = T0 + 3 * DAY;

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
    let lake = Lake::sqlite(dir.path());
    lake.run("create", None);
    let d = deployment(&dir, "px").await;

    let mut all = lake_trades(1, "BTCUSDT", T0, 90, 1000);
    lake.run("append", Some(rows_json(&all, "px")));
    let eth = lake_trades(5000, "ETHUSDT", T0 + DAY / 3, 60, 700);
    // One row the mapping cannot read: a zero price.
    let mut bad = lake_trades(9000, "ETHUSDT", T0 + DAY / 2, 60, 1);
    bad[0].price = 0.0;
    lake.run(
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
    lake.run("delete", Some(json!({ "id": doomed })));
    all.retain(|t| !doomed.contains(&t.id.parse().unwrap()));
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "after their delete")
        .await;

    // Equality deletes (Flink's upserts): by id, each in the trade's hour partition. One names
    // a trade of another hour (a delete applies to its own partition only), and a trade
    // appended afterwards with a deleted id stays (a delete applies to older files only).
    let gone: Vec<Trade> = all
        .iter()
        .filter(|t| t.id.ends_with('7'))
        .cloned()
        .collect();
    let spared = all.iter().find(|t| t.id.ends_with('8')).unwrap().clone();
    let mut ids: Vec<i64> = gone.iter().map(|t| t.id.parse().unwrap()).collect();
    let mut hours: Vec<i64> = gone.iter().map(|t| t.ts.div_euclid(60 * MIN)).collect();
    ids.push(spared.id.parse().unwrap());
    hours.push(spared.ts.div_euclid(60 * MIN) + 1);
    lake.run("eq-delete", Some(json!({ "id": ids, "hour": hours })));
    all.retain(|t| !t.id.ends_with('7'));
    assert!(gone.len() > 10 && !gone.iter().any(|t| t.id == spared.id));
    let mut again = gone[0].clone();
    again.price = 111.0;
    lake.run(
        "append",
        Some(rows_json(std::slice::from_ref(&again), "px")),
    );
    all.push(again);
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "after their equality deletes")
        .await;

    // They rename px, add a column and partition by day; old files are read by field id.
    lake.run("evolve", None);
    drop(d);
    let d = deployment(&dir, "price_usd").await;
    let later = lake_trades(20_000, "BTCUSDT", T0 + DAY + 7 * 60 * MIN, 45, 400);
    lake.run("append", Some(rows_json(&later, "price_usd")));
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
    lake.run("replace", None);
    drop(d);
    let d = deployment(&dir, "px").await;
    let fresh = lake_trades(50_000, "BTCUSDT", T0 + DAY, 120, 300);
    lake.run("append", Some(rows_json(&fresh, "px")));
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

/// A format v1 table whose files carry no column statistics (`write.metadata.metrics.default
/// = none`): no sequence numbers, nothing to prune by, and the bars are still exact through
/// appends and deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_source_table_without_statistics_is_read_whole_and_right() {
    if !python_ok() {
        eprintln!("skipping: pyiceberg is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    drop(deployment(&dir, "px").await);
    let mut lake = Lake::sqlite(dir.path());
    lake.env.push((
        "LAKE_TABLE_PROPERTIES",
        json!({"format-version": "1", "write.metadata.metrics.default": "none"}).to_string(),
    ));
    lake.run("create", None);
    let d = deployment(&dir, "px").await;
    let table = d.storage().table(TableKind::Trades).await.unwrap();
    assert!(
        matches!(
            table.metadata().format_version,
            iceberg_rust::spec::table_metadata::FormatVersion::V1
        ),
        "pyiceberg made a v1 table"
    );

    let mut all = lake_trades(1, "BTCUSDT", T0, 90, 600);
    lake.run("append", Some(rows_json(&all, "px")));
    let more = lake_trades(3000, "BTCUSDT", T0 + 3 * 60 * MIN, 37, 300);
    lake.run("append", Some(rows_json(&more, "px")));
    all.extend(more);
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(
        &all,
        &Timeframe::ALL,
        "v1, no statistics: after two appends",
    )
    .await;

    let doomed: Vec<i64> = all
        .iter()
        .filter(|t| t.id.ends_with('1'))
        .map(|t| t.id.parse().unwrap())
        .collect();
    lake.run("delete", Some(json!({ "id": doomed })));
    all.retain(|t| !doomed.contains(&t.id.parse().unwrap()));
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "v1, no statistics: after a delete")
        .await;
}

/// Partition specs of every transform, one after another in the same table (identity and
/// bucket, truncate and month, year, besides the first hourly one): each commit's files are
/// written with the spec of the moment, and the bars stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_under_every_partition_transform_is_read_whole_and_right() {
    if !python_ok() {
        eprintln!("skipping: pyiceberg is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    drop(deployment(&dir, "px").await);
    let lake = Lake::sqlite(dir.path());
    lake.run("create", None);
    let d = deployment(&dir, "px").await;
    let mut all = lake_trades(1, "BTCUSDT", T0, 90, 300);
    lake.run("append", Some(rows_json(&all, "px")));
    for (i, spec) in ["identity-bucket", "truncate-month", "year"]
        .iter()
        .enumerate()
    {
        lake.respec(spec);
        let more = lake_trades(
            1000 * (i as i64 + 1),
            if i % 2 == 0 { "ETHUSDT" } else { "BTCUSDT" },
            T0 + (i as i64 + 1) * 7 * 60 * MIN,
            53,
            200,
        );
        lake.run("append", Some(rows_json(&more, "px")));
        all.extend(more);
        d.build_all(NOW).await;
        d.assert_bars_equal_trades(&all, &Timeframe::ALL, &format!("after a {spec} spec"))
            .await;
    }
    // A delete rewrites files of every spec.
    let doomed: Vec<i64> = all
        .iter()
        .filter(|t| t.id.ends_with('9'))
        .map(|t| t.id.parse().unwrap())
        .collect();
    lake.run("delete", Some(json!({ "id": doomed })));
    all.retain(|t| !doomed.contains(&t.id.parse().unwrap()));
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "after a delete across specs")
        .await;
}
