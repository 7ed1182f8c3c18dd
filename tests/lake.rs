//! The lake as it is in production: a real S3 store and Iceberg REST catalog (SeaweedFS, SigV4)
//! where another pipeline (pyiceberg) owns the trades table. pyiceberg creates it with other
//! names, types and an hourly partition spec, appends in several commits, deletes, overwrites
//! (corrections), compacts, evolves it and expires its snapshots; our builder keeps the five
//! tables, which live in the same catalog and bucket, equal to a reference computed from the
//! rows pyiceberg wrote, and pyiceberg and DuckDB read them back. The writer lease in the
//! bucket refuses a second writer, naming the holder. A source in another bucket than our
//! warehouse is read from its own bucket.

mod common;

use common::lake::*;
use common::seaweed::Seaweed;
use common::*;
use ohlcv_server::config::Config;
use ohlcv_server::storage::{Error, TableKind, WriterLock};
use ohlcv_server::timeframe::Timeframe;
use serde_json::json;

const NOW: i64 = T0 + 3 * DAY;

async fn deployment(weed: &Seaweed, dir: &std::path::Path, price_column: &str) -> Deployment {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        source: Some(source(price_column)),
        ..Config::default()
    };
    config.catalog.namespace = "ohlcv".to_string();
    weed.configure(&mut config);
    let writer = writer_for(&config).await;
    Deployment {
        dir: tempfile::tempdir().unwrap(),
        config,
        writer,
    }
}

/// What pyiceberg and DuckDB read of our tables through the REST catalog, against what we
/// wrote.
async fn assert_pyiceberg_reads_ours(lake: &Lake, d: &Deployment) {
    for tf in Timeframe::ALL {
        let ours = d.bars(tf).await.len();
        let table = format!("ohlcv.ohlcv_{tf}");
        assert_eq!(lake.count(&table), ours, "pyiceberg reads {table}");
        assert_eq!(lake.duckdb_count(&table), ours, "DuckDB reads {table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bars_from_a_foreign_table_on_s3_behind_a_rest_catalog() {
    if !python_ok() {
        eprintln!("skipping: pyiceberg is not installed");
        return;
    }
    let Some(weed) = Seaweed::start() else {
        eprintln!("skipping: SeaweedFS (weed) is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake {
        dir: dir.path().to_path_buf(),
        env: weed.python_env(),
    };
    lake.run("create", None);
    let d = deployment(&weed, dir.path(), "px").await;

    // A second writer on the same lake is refused with the lease holder named.
    let err = WriterLock::acquire_for(&d.config, "build")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{err}"
    );

    let mut all = lake_trades(1, "BTCUSDT", T0, 90, 800);
    lake.run("append", Some(rows_json(&all, "px")));
    let eth = lake_trades(5000, "ETHUSDT", T0 + DAY / 3, 60, 500);
    lake.run("append", Some(rows_json(&eth, "px")));
    all.extend(eth);
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "S3: after two appends")
        .await;
    assert_pyiceberg_reads_ours(&lake, &d).await;

    // Their deletes (a rewrite of the files holding the rows) revise our bars.
    let doomed: Vec<i64> = all
        .iter()
        .filter(|t| t.id.ends_with('7'))
        .map(|t| t.id.parse().unwrap())
        .collect();
    lake.run("delete", Some(json!({ "id": doomed })));
    all.retain(|t| !doomed.contains(&t.id.parse().unwrap()));
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "S3: after their delete")
        .await;

    // Their corrections: one overwrite snapshot replaces some trades with new prices and sizes.
    let mut corrected: Vec<_> = all
        .iter()
        .filter(|t| t.id.ends_with('1'))
        .take(60)
        .cloned()
        .collect();
    for t in &mut corrected {
        t.price = (t.price * 1.01 * 100.0).round() / 100.0;
        t.qty += 0.5;
    }
    lake.run("overwrite", Some(rows_json(&corrected, "px")));
    for t in &mut all {
        if let Some(c) = corrected.iter().find(|c| c.id == t.id) {
            *t = c.clone();
        }
    }
    let reports = d.build_all(NOW).await;
    assert!(reports[0].revised > 0, "{:?}", reports[0]);
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "S3: after their overwrite")
        .await;

    // Their compaction (a `replace` snapshot: the same rows in new files) changes no bar.
    lake.run("compact", None);
    for report in d.build_all(NOW).await {
        assert_eq!(report.trades_read, 0, "{report:?}");
        assert_eq!(report.bars_written, 0, "{report:?}");
    }
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "S3: after their compaction")
        .await;

    // They stop partitioning (DuckDB deletes only from unpartitioned tables) and append more:
    // one table, two specs.
    lake.run("unpartition", None);
    let sol = lake_trades(30_000, "SOLUSDT", T0 + DAY / 4, 75, 400);
    lake.run("append", Some(rows_json(&sol, "px")));
    all.extend(sol);
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "S3: after an unpartitioned append")
        .await;

    // DuckDB's row-level deletes (position delete files, merge-on-read): the trades are gone
    // from our bars, and windows left without trades lose their bar.
    let doomed: Vec<i64> = all
        .iter()
        .filter(|t| t.id.ends_with('3') || (t.ts - T0).div_euclid(MIN) == 45)
        .map(|t| t.id.parse().unwrap())
        .collect();
    lake.run("duckdb-delete", Some(json!({ "id": doomed })));
    all.retain(|t| !doomed.contains(&t.id.parse().unwrap()));
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "S3: after DuckDB's row-level delete")
        .await;
    let rows: usize = ohlcv_server::trades::read_trades_range(
        d.storage(),
        ohlcv_server::storage::TimeRange::ALL,
        NOW,
    )
    .await
    .unwrap()
    .0
    .iter()
    .map(|b| b.num_rows())
    .sum();
    assert_eq!(rows, all.len(), "trades read with the deletes applied");

    // Schema and spec evolution: old files are read by field id.
    lake.run("evolve", None);
    drop(d);
    let d = deployment(&weed, dir.path(), "price_usd").await;
    let later = lake_trades(20_000, "BTCUSDT", T0 + DAY + 7 * 60 * MIN, 45, 300);
    lake.run("append", Some(rows_json(&later, "price_usd")));
    all.extend(later);
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "S3: after their evolution")
        .await;
    assert_pyiceberg_reads_ours(&lake, &d).await;

    // They append, then expire every older snapshot, the one our builder consumed among
    // them: what changed cannot be listed, so every persisted window is compared.
    let after = lake_trades(40_000, "ETHUSDT", T0 + DAY + 9 * 60 * MIN, 50, 200);
    lake.run("append", Some(rows_json(&after, "price_usd")));
    lake.run("expire", None);
    all.extend(after);
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "S3: after their snapshot expiry")
        .await;

    // Their table stays theirs; ours did not create a trades table of its own.
    let err = d
        .writer
        .append(TableKind::Trades, &[], Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotOwned { .. }), "{err}");
    let ns = iceberg_rust::spec::namespace::Namespace::try_new(&["ohlcv".to_string()]).unwrap();
    let tables = d.storage().catalog().list_tabulars(&ns).await.unwrap();
    assert!(!tables.iter().any(|t| t.name() == "trades"), "{tables:?}");

    // The lease goes with the writer: the next one takes it at once.
    let config = d.config.clone();
    drop(d);
    let next = WriterLock::acquire_for(&config, "build").await;
    assert!(next.is_ok(), "{:?}", next.err());
}

/// The trades live in another bucket than our warehouse, behind a SQL catalog (as when a
/// raw-data bucket and an analytics bucket share one catalog): their data files are read
/// from their own bucket, with the same credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bars_from_a_source_in_another_bucket_than_the_warehouse() {
    if !python_ok() {
        eprintln!("skipping: pyiceberg is not installed");
        return;
    }
    let Some(weed) = Seaweed::start() else {
        eprintln!("skipping: SeaweedFS (weed) is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake {
        dir: dir.path().to_path_buf(),
        env: weed.sql_python_env("s3://raw-trades/lake"),
    };
    lake.run("create", None);
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        source: Some(source("px")),
        ..Config::default()
    };
    config.catalog.namespace = "ohlcv".to_string();
    config.catalog.warehouse = Some("s3://ohlcv-state/bars".to_string());
    weed.configure_s3(&mut config);
    let writer = writer_for(&config).await;
    let d = Deployment {
        dir: tempfile::tempdir().unwrap(),
        config,
        writer,
    };

    let mut all = lake_trades(1, "BTCUSDT", T0, 90, 600);
    lake.run("append", Some(rows_json(&all, "px")));
    let eth = lake_trades(5000, "ETHUSDT", T0 + DAY / 3, 60, 400);
    lake.run("append", Some(rows_json(&eth, "px")));
    all.extend(eth);
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "another bucket: after two appends")
        .await;

    let doomed: Vec<i64> = all
        .iter()
        .filter(|t| t.id.ends_with('4'))
        .map(|t| t.id.parse().unwrap())
        .collect();
    lake.run("delete", Some(json!({ "id": doomed })));
    all.retain(|t| !doomed.contains(&t.id.parse().unwrap()));
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "another bucket: after their delete")
        .await;

    // Our tables are in the warehouse's bucket, where pyiceberg reads them.
    for tf in Timeframe::ALL {
        let table = d.storage().table(TableKind::Bars(tf)).await.unwrap();
        assert!(
            table
                .metadata()
                .location
                .starts_with("s3://ohlcv-state/bars/"),
            "{}",
            table.metadata().location
        );
        let ours = d.bars(tf).await.len();
        assert_eq!(
            lake.count(&format!("ohlcv.ohlcv_{tf}")),
            ours,
            "pyiceberg reads {tf}"
        );
    }
}

/// On a REST catalog the servers share no database: their heartbeats go to the object store
/// beside the writer lease, and each server's `system.cluster` lists both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_on_a_rest_lake_lists_every_other() {
    let Some(weed) = Seaweed::start() else {
        return;
    };
    let config = |dir: &std::path::Path| {
        let mut c = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        c.catalog.namespace = "cluster".to_string();
        weed.configure(&mut c);
        c
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config_a = config(dir_a.path());
    let a = Deployment {
        writer: writer_for(&config_a).await,
        config: config_a,
        dir: dir_a,
    };
    let config_b = config(dir_b.path());
    let lock = WriterLock::acquire_or_standby(&config_b, "serve b")
        .await
        .unwrap();
    let b = Deployment {
        writer: ohlcv_server::storage::TableWriter::new(
            ohlcv_server::storage::Storage::open(&config_b)
                .await
                .unwrap(),
            lock,
        ),
        config: config_b,
        dir: dir_b,
    };
    let opts = common::server::options;
    let servers = [
        common::server::Server::start_with(&a, opts()).await,
        common::server::Server::start_with(&b, opts()).await,
    ];
    let roles = "select role from system.cluster where alive order by role";
    for server in &servers {
        let mut client =
            arrow_flight::sql::client::FlightSqlServiceClient::new(server.channel().await);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let listed = common::server::strings(&mut client, roles).await;
            if listed == ["builder", "replica"] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} lists {listed:?}",
                server.addr
            );
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }
    for server in servers {
        server.shutdown_and_wait().await;
    }
}
