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
