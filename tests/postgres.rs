//! The same storage code on a PostgreSQL catalog, and the writer lock held in that database.
//! Needs `TEST_POSTGRES_URL` (`.ci/run` starts a local PostgreSQL and sets it).

mod common;

use std::collections::HashMap;

use common::*;
use ohlcv_server::config::{CatalogConfig, Config};
use ohlcv_server::storage::{Error, TableKind, WriterLock};
use ohlcv_server::timeframe::Timeframe;

#[tokio::test]
async fn postgres_catalog_writes_reads_and_locks() {
    let Some(url) = postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        catalog: CatalogConfig {
            url: Some(url),
            // A catalog of its own per run: the database outlives the test.
            name: format!("ohlcv_test_{}", uuid::Uuid::new_v4().simple()),
            ..CatalogConfig::default()
        },
        ..Config::default()
    };
    let writer = writer_for(&config).await;
    let d = Deployment {
        dir,
        config: config.clone(),
        writer,
    };

    let m1 = Timeframe::M1;
    let rows: Vec<Bar> = (0..20)
        .map(|m| bar("kraken", "BTC-USD", T0 + m * MIN, m as f64))
        .collect();
    d.writer
        .append(TableKind::Bars(m1), &[bar_batch(m1, &rows)], HashMap::new())
        .await
        .unwrap();
    let changed = vec![bar("kraken", "BTC-USD", T0 + 3 * MIN, 33.0)];
    d.writer
        .upsert(
            TableKind::Bars(m1),
            &[bar_batch(m1, &changed)],
            HashMap::new(),
        )
        .await
        .unwrap();
    let mut model = rows;
    upsert_model(&mut model, &changed);
    assert_eq!(d.bars(m1).await, model);

    // A second writer, even with another data dir, is refused by the catalog database.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = Config {
        data_dir: elsewhere.path().to_path_buf(),
        ..config.clone()
    };
    let err = WriterLock::acquire_for(&other, "load").await.unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("ohlcv-server test pid {}", std::process::id())),
        "{msg}"
    );

    drop(d);
    WriterLock::acquire_for(&other, "load")
        .await
        .expect("released when the first writer went away");
}

/// Servers that start at the same moment on a database none of them has seen all start: the
/// catalog's tables, the namespace, our tables and the server's state tables are each created
/// once (PostgreSQL's `create table if not exists` alone fails the loser of a race with 23505).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn servers_starting_together_on_a_new_database_all_start() {
    use sqlx::{Connection, Executor};
    let Some(url) = postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    let database = format!("ohlcv_start_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    admin
        .execute(format!("create database {database}").as_str())
        .await
        .unwrap();
    let mut fresh = url::Url::parse(&url).unwrap();
    fresh.set_path(&format!("/{database}"));
    let lake = tempfile::tempdir().unwrap();
    let starts = (0..6).map(|i| {
        let (fresh, lake) = (fresh.to_string(), lake.path().join("warehouse"));
        async move {
            let dir = tempfile::tempdir().unwrap();
            let mut config = Config {
                data_dir: dir.path().to_path_buf(),
                ..Config::default()
            };
            config.catalog.url = Some(fresh);
            config.catalog.warehouse = Some(lake.display().to_string());
            let lock = WriterLock::acquire_or_standby(&config, &format!("serve {i}"))
                .await
                .unwrap();
            let storage = ohlcv_server::storage::Storage::open(&config)
                .await
                .unwrap_or_else(|e| panic!("server {i} did not open its storage: {e}"));
            let d = Deployment {
                writer: ohlcv_server::storage::TableWriter::new(storage, lock),
                config,
                dir,
            };
            let server = common::server::Server::start_with(&d, common::server::options()).await;
            (d, server)
        }
    });
    let started = futures::future::join_all(starts).await;
    let builders = {
        let mut n = 0;
        for (d, _) in &started {
            n += usize::from(d.writer.other_builder().await.is_none());
        }
        n
    };
    assert_eq!(builders, 1, "one builder, the others replicas");
    for (d, server) in started {
        server.shutdown_and_wait().await;
        drop(d);
    }
    admin
        .execute(format!("drop database {database} with (force)").as_str())
        .await
        .unwrap();
}
