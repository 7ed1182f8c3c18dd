//! Faults between the server and a real PostgreSQL catalog, injected by a TCP proxy the test
//! controls (tests/common/proxy.rs): the reply to the catalog update lost (the update applied),
//! the connection reset before the update, and the writer's advisory lock lost to a database
//! restart. After each, every file the tables reference exists, the bars equal a clean
//! computation from the trades, and no second writer ever committed.
//! Needs `TEST_POSTGRES_URL`, and `TEST_POSTGRES_RESTART` (a command that restarts that
//! PostgreSQL) for the restart test; `.ci/run` sets both.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::LazyLock;

use common::proxy::{Fault, Proxy};
use common::trades::{load, trade, Trade};
use common::*;
use object_store::ObjectStoreExt;
use ohlcv_server::build::{self, BuildSettings};
use ohlcv_server::config::{CatalogConfig, Config};
use ohlcv_server::storage::{Error, Listing, TableKind, TimeRange, WriterLock};
use ohlcv_server::timeframe::Timeframe;

const NOW: i64 = T0 + 3 * DAY;

/// The restart test takes the database away from everyone: the tests here run one at a time.
static SERIAL: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

/// A deployment whose catalog connections all pass through a fresh proxy.
async fn behind_proxy(url: &str) -> (Deployment, Proxy) {
    let parsed = url::Url::parse(url).unwrap();
    let upstream: SocketAddr = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    )
    .parse()
    .unwrap();
    let proxy = Proxy::start(upstream).await;
    let mut via = parsed.clone();
    via.set_host(Some("127.0.0.1")).unwrap();
    via.set_port(Some(proxy.addr.port())).unwrap();
    // The proxy recognises statements by their text, which TLS would hide.
    via.query_pairs_mut().append_pair("sslmode", "disable");
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        catalog: CatalogConfig {
            url: Some(via.to_string()),
            name: format!("ohlcv_faults_{}", uuid::Uuid::new_v4().simple()),
            ..CatalogConfig::default()
        },
        ..Config::default()
    };
    let writer = writer_for(&config).await;
    (
        Deployment {
            dir,
            config,
            writer,
        },
        proxy,
    )
}

fn two_days() -> Vec<Trade> {
    (0..1900)
        .map(|i| {
            trade(
                "kraken",
                "BTC-USD",
                &i.to_string(),
                T0 + i * 90_000_000 + 5_000_000,
                100.0 + ((i * 37) % 101) as f64 / 10.0,
                0.5 + (i % 7) as f64,
            )
        })
        .collect()
}

/// Every data file of every table's current snapshot is present in the warehouse, and
/// pyiceberg, through its own PostgreSQL client on the catalog (not the proxy), reads every
/// row of every table.
async fn assert_no_file_missing(d: &Deployment) {
    let store = d.storage().store();
    let direct = std::env::var("TEST_POSTGRES_URL").expect("set by the caller's postgres_url");
    for kind in TableKind::all() {
        let table = d.storage().table(kind).await.unwrap();
        let listing = Listing::read(&table, kind, None, TimeRange::ALL)
            .await
            .unwrap();
        for file in &listing.files {
            store
                .head(&d.storage().path(file.path()).unwrap())
                .await
                .unwrap_or_else(|e| panic!("{}: {} is missing: {e}", kind.name(), file.path()));
        }
        let out = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/foreign_writer.py"
            ))
            .arg(&d.config.data_dir)
            .arg(kind.name())
            .arg("count")
            .env(
                "FOREIGN_CATALOG_URI",
                direct.replacen("postgres://", "postgresql+psycopg2://", 1),
            )
            .env("FOREIGN_CATALOG_NAME", &d.config.catalog.name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pyiceberg cannot read {}: {}",
            kind.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_eq!(
            rows,
            listing.total_records(),
            "pyiceberg reads every row of {}",
            kind.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_reply_is_lost_is_found_applied_and_keeps_its_files() {
    let Some(url) = postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    let _serial = SERIAL.lock().await;
    let (d, proxy) = behind_proxy(&url).await;
    let trades = two_days();
    load(&d, &trades).await;

    proxy.arm(Fault::DropReply("update iceberg_tables".into()));
    let report = build::build(&d.writer, Timeframe::M1, NOW, BuildSettings::default())
        .await
        .expect("the update applied: the build reads the table back and succeeds");
    assert_eq!(
        proxy.fired(),
        1,
        "the reply to the catalog update was swallowed"
    );
    assert!(report.bars_written > 0, "{report:?}");
    assert_eq!(
        d.snapshot(TableKind::Bars(Timeframe::M1)).await,
        report.snapshot_after
    );
    assert_no_file_missing(&d).await;

    d.build_all(NOW).await;
    assert_no_file_missing(&d).await;
    d.assert_bars_equal_trades(&trades, &Timeframe::ALL, "faults")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_cut_off_before_the_update_fails_cleanly_and_the_next_build_repairs() {
    let Some(url) = postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    let _serial = SERIAL.lock().await;
    let (d, proxy) = behind_proxy(&url).await;
    let trades = two_days();
    load(&d, &trades).await;
    let before = d.snapshot(TableKind::Bars(Timeframe::M1)).await;

    proxy.arm(Fault::ResetBefore("update iceberg_tables".into()));
    let err = build::build(&d.writer, Timeframe::M1, NOW, BuildSettings::default())
        .await
        .unwrap_err();
    assert_eq!(proxy.fired(), 1);
    assert!(
        err.to_string().contains("did not apply"),
        "the build learns the update did not land: {err}"
    );
    assert_eq!(d.snapshot(TableKind::Bars(Timeframe::M1)).await, before);
    assert_no_file_missing(&d).await;

    d.build_all(NOW).await;
    assert_no_file_missing(&d).await;
    d.assert_bars_equal_trades(&trades, &Timeframe::ALL, "faults")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_lost_its_lock_to_a_restart_never_commits_beside_another() {
    let Some(url) = postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    let restart = match std::env::var("TEST_POSTGRES_RESTART") {
        Ok(cmd) => cmd,
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI must provide TEST_POSTGRES_RESTART (see .ci/run)")
        }
        Err(_) => {
            eprintln!("skipping: TEST_POSTGRES_RESTART is not set");
            return;
        }
    };
    let _serial = SERIAL.lock().await;
    let (d, _proxy) = behind_proxy(&url).await;
    let trades = two_days();
    load(&d, &trades).await;
    let m1 = TableKind::Bars(Timeframe::M1);

    // The database restarts under the running writer: its advisory lock is gone.
    let status = std::process::Command::new("sh")
        .args(["-c", &restart])
        .status()
        .unwrap();
    assert!(status.success(), "{restart}");

    // A second writer (straight to the database) now gets the lock and commits.
    let direct = Config {
        catalog: CatalogConfig {
            url: Some(url.clone()),
            ..d.config.catalog.clone()
        },
        data_dir: tempfile::tempdir().unwrap().keep(),
        ..d.config.clone()
    };
    let second = connect_retrying(&direct).await;
    let rows = vec![bar("kraken", "BTC-USD", T0, 1.0)];
    second
        .append(m1, &[bar_batch(Timeframe::M1, &rows)], HashMap::new())
        .await
        .unwrap();
    let after_second = d.snapshot(m1).await;

    // The first writer finds out before it commits, and names the new holder.
    let err = build::build(&d.writer, Timeframe::M1, NOW, BuildSettings::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("holds the lock"), "{text}");
    assert!(text.contains("ohlcv-server other pid"), "{text}");
    assert_eq!(d.snapshot(m1).await, after_second, "nothing committed");

    // Once the second writer is gone, the first takes the lock again and carries on.
    drop(second);
    let mut attempts = 0;
    loop {
        match d
            .writer
            .upsert(m1, &[bar_batch(Timeframe::M1, &rows)], HashMap::new())
            .await
        {
            Ok(_) => break,
            Err(Error::Locked { .. }) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_no_file_missing(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_lock_session_goes_silent_writes_again_within_seconds() {
    let Some(url) = postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    let _serial = SERIAL.lock().await;
    let (d, proxy) = behind_proxy(&url).await;
    let trades = two_days();
    let (first, second) = trades.split_at(1000);
    load(&d, first).await;
    build::build(&d.writer, Timeframe::M1, NOW, BuildSettings::default())
        .await
        .unwrap();

    // A partition that resets nothing: the lock's session (its application_name names this
    // writer) stops answering, while PostgreSQL keeps it, and its advisory lock, alive.
    let silent = lock_sessions(&url).await;
    assert!(!silent.is_empty());
    proxy.freeze("ohlcv-server test pid");
    let started = std::time::Instant::now();
    load(&d, second).await;
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(20),
        "writing again took {took:?}"
    );
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&trades, &Timeframe::ALL, "faults")
        .await;
    assert_no_file_missing(&d).await;

    // The silent session was ended, not left holding a lock until its keepalive.
    let alive = lock_sessions(&url).await;
    assert!(
        silent.iter().all(|pid| !alive.contains(pid)),
        "lock sessions before {silent:?}, now {alive:?}"
    );
}

/// A catalog database that cannot be reached is reported as such, never as a missing table
/// (the SQL catalog crate answers "not found" for any failure of its database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_catalog_database_is_not_a_missing_table() {
    let Some(url) = postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    let _serial = SERIAL.lock().await;
    let (d, proxy) = behind_proxy(&url).await;
    load(&d, &two_days()[..100]).await;
    proxy.cut();
    // The proxy closes its connections on its next tick (20 ms), and every new one at once.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let err = match d.storage().table(TableKind::Trades).await {
        Ok(_) => panic!("the table loaded with its catalog database cut off"),
        Err(e) => e,
    };
    proxy.heal();
    assert!(!matches!(err, Error::TableNotFound(_)), "{err}");
    let text = err.to_string();
    assert!(!text.contains("does not exist"), "{text}");
    // Once it answers again, the table is there.
    d.storage().table(TableKind::Trades).await.unwrap();
}

/// Backend pids of this process's sessions named "ohlcv-server test" that hold an advisory lock.
async fn lock_sessions(url: &str) -> Vec<i32> {
    let mut direct = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    let rows: Vec<(i32,)> = sqlx::query_as(
        "select distinct a.pid from pg_stat_activity a join pg_locks l on l.pid = a.pid \
         where l.locktype = 'advisory' and a.application_name like $1",
    )
    .bind(format!("ohlcv-server test pid {} %", std::process::id()))
    .fetch_all(&mut direct)
    .await
    .unwrap();
    rows.into_iter().map(|(pid,)| pid).collect()
}

/// A second writer on `config` (named "other"), retrying while PostgreSQL comes back up.
async fn connect_retrying(config: &Config) -> ohlcv_server::storage::TableWriter {
    for _ in 0..100 {
        if let Ok(lock) = WriterLock::acquire_for(config, "other").await {
            if let Ok(storage) = ohlcv_server::storage::Storage::open(config).await {
                return ohlcv_server::storage::TableWriter::new(storage, lock);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("PostgreSQL did not come back");
}
