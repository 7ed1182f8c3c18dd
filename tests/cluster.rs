//! Two servers on one lake (a PostgreSQL catalog, a shared warehouse): the first holds the
//! writer lock and builds; the second serves as a read replica that follows the builder's
//! commits, refuses writes naming the builder, and takes the lock over when the builder stops,
//! then ingests and builds on, with the tables equal to a reference of every trade.

mod common;

use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow_flight::sql::client::FlightSqlServiceClient;
use common::server::{ingest_trades, options, Server};
use common::trades::{trade, trade_batch, Trade};
use common::*;
use futures::TryStreamExt;
use ohlcv_server::admin::proto::admin_service_client::AdminServiceClient;
use ohlcv_server::admin::proto::TriggerBuildRequest;
use ohlcv_server::config::Config;
use ohlcv_server::storage::{Storage, TableWriter, WriterLock};
use ohlcv_server::timeframe::Timeframe;
use tonic::transport::Channel;

fn minute_of_trades(first: i64, minute: i64) -> Vec<Trade> {
    (0..30)
        .map(|i| {
            trade(
                "kraken",
                "BTC-USD",
                &(first + i).to_string(),
                T0 + minute * MIN + i * 2_000_000,
                100.0 + ((first + i) % 17) as f64,
                0.5,
            )
        })
        .collect()
}

async fn count(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> i64 {
    let batches = common::server::fetch(client, sql).await;
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

async fn build_all(server: &Server) {
    AdminServiceClient::new(server.channel().await)
        .trigger_build(TriggerBuildRequest {
            timeframes: Timeframe::ALL.iter().map(|t| t.to_string()).collect(),
        })
        .await
        .unwrap();
}

/// Two deployments on one new catalog in `url`'s database and one shared warehouse: the first
/// holds the writer lock, the second stands by for it (a read replica).
async fn lake_of_two(url: &str) -> (tempfile::TempDir, Deployment, Deployment) {
    let lake = tempfile::tempdir().unwrap();
    let name = format!("ohlcv_cluster_{}", uuid::Uuid::new_v4().simple());
    let config = |dir: &std::path::Path| {
        let mut c = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        c.catalog.url = Some(url.to_string());
        c.catalog.name = name.clone();
        c.catalog.warehouse = Some(lake.path().join("warehouse").display().to_string());
        c
    };
    let dir_a = tempfile::tempdir().unwrap();
    let config_a = config(dir_a.path());
    let a = Deployment {
        writer: writer_for(&config_a).await,
        config: config_a,
        dir: dir_a,
    };
    let dir_b = tempfile::tempdir().unwrap();
    let config_b = config(dir_b.path());
    let lock = WriterLock::acquire_or_standby(&config_b, "serve b")
        .await
        .unwrap();
    let b = Deployment {
        writer: TableWriter::new(Storage::open(&config_b).await.unwrap(), lock),
        config: config_b,
        dir: dir_b,
    };
    (lake, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_postgresql_follows_announced_commits_long_before_its_poll() {
    let Some(url) = postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    let (_lake, a, b) = lake_of_two(&url).await;
    let server_a = Server::start_with(&a, options()).await;
    // The replica polls once at start, then not for a minute: only announcements move it.
    let mut slow = options();
    slow.cache.trades_poll_ms = 60_000;
    let server_b = Server::start_with(&b, slow).await;
    let mut on_a = FlightSqlServiceClient::new(server_a.channel().await);
    let mut on_b = FlightSqlServiceClient::new(server_b.channel().await);
    tokio::time::sleep(Duration::from_millis(500)).await;

    ingest_trades(&mut on_a, trade_batch(&minute_of_trades(0, 0)))
        .await
        .unwrap();
    build_all(&server_a).await;
    // candles() is served from the replica's cache, which only a look at the tables moves
    // (planned SQL reads the catalog's current snapshot on every query).
    let sql = "select sum(trade_count) from candles('kraken', 'BTC-USD', '1m', '2024-01-01', '2024-01-05')";
    let built = count(&mut on_a, sql).await;
    assert_eq!(built, 30);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&mut on_b, sql).await != built {
        assert!(
            Instant::now() < deadline,
            "the replica did not follow the announced build"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Unbuilt trades too (two minutes before the servers' now, inside the grace): the
    // builder's ingest is announced, and the replica's live bars show them.
    ingest_trades(
        &mut on_a,
        trade_batch(&minute_of_trades(100, 3 * 24 * 60 - 2)),
    )
    .await
    .unwrap();
    let expected = count(&mut on_a, sql).await;
    assert_eq!(expected, 60);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&mut on_b, sql).await != expected {
        assert!(
            Instant::now() < deadline,
            "the replica did not follow the announced ingest"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server_b.shutdown_and_wait().await;
    server_a.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_follows_the_builder_refuses_writes_and_takes_over() {
    let Some(url) = postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    let (_lake, a, b) = lake_of_two(&url).await;
    let opts = || {
        let mut o = options();
        o.cache.trades_poll_ms = 200;
        o
    };
    let server_a = Server::start_with(&a, opts()).await;
    let builder = b.writer.other_builder().await.expect("a replica");
    assert!(builder.contains("ohlcv-server test pid"), "{builder}");
    let server_b = Server::start_with(&b, opts()).await;

    let mut on_a = FlightSqlServiceClient::new(server_a.channel().await);
    let mut on_b = FlightSqlServiceClient::new(server_b.channel().await);
    let mut all = minute_of_trades(0, 0);
    ingest_trades(&mut on_a, trade_batch(&all)).await.unwrap();
    build_all(&server_a).await;
    let built = count(&mut on_a, "select count(*) from ohlcv_1m").await;
    assert!(built > 0);

    // The replica sees the builder's commits within a few poll intervals.
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&mut on_b, "select count(*) from ohlcv_1m").await != built {
        assert!(Instant::now() < deadline, "the replica never saw the build");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sql = "select sum(trade_count) from candles('kraken', 'BTC-USD', '1h', '2024-01-01', '2024-01-02')";
    assert_eq!(count(&mut on_b, sql).await, count(&mut on_a, sql).await);

    // Both servers list both, with their roles.
    let roles = "select role from system.cluster where alive order by role";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = common::server::strings(&mut on_b, roles).await;
        if listed == ["builder", "replica"] {
            break;
        }
        assert!(Instant::now() < deadline, "system.cluster lists {listed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // With [cluster] endpoints, queries name both servers, rotated, and a ticket from one
    // is served by the other.
    server_b.shutdown_and_wait().await;
    let mut spreading = opts();
    spreading.endpoints = vec![
        format!("grpc+tcp://{}", server_a.addr),
        "grpc+tcp://replica.example:50051".to_string(),
    ];
    let server_b = Server::start_with(&b, spreading).await;
    let mut on_b = FlightSqlServiceClient::new(server_b.channel().await);
    let first = on_b.execute(sql.to_string(), None).await.unwrap();
    let second = on_b.execute(sql.to_string(), None).await.unwrap();
    let uris = |info: &arrow_flight::FlightInfo| -> Vec<String> {
        info.endpoint[0]
            .location
            .iter()
            .map(|l| l.uri.clone())
            .collect()
    };
    assert_eq!(uris(&first).len(), 2);
    assert_eq!(
        uris(&second),
        uris(&first).into_iter().rev().collect::<Vec<_>>()
    );
    let stream = on_a
        .do_get(first.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    let from_a: Vec<_> = stream.try_collect().await.unwrap();
    assert_eq!(
        from_a[0].column(0).as_primitive::<Int64Type>().value(0),
        count(&mut on_b, sql).await
    );

    // Writes on the replica are refused, naming the builder.
    let err = ingest_trades(&mut on_b, trade_batch(&minute_of_trades(100, 1)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("read replica") && err.contains("ohlcv-server test pid"),
        "{err}"
    );
    let err = AdminServiceClient::new(server_b.channel().await)
        .trigger_build(TriggerBuildRequest {
            timeframes: vec!["1m".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");

    // The builder stops (its lock goes with its catalog session): the replica takes over.
    server_a.shutdown_and_wait().await;
    drop(on_a);
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.writer.other_builder().await.is_some() {
        assert!(Instant::now() < deadline, "the replica never took the lock");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let more = minute_of_trades(200, 2);
    ingest_trades(&mut on_b, trade_batch(&more)).await.unwrap();
    all.extend(more);
    build_all(&server_b).await;
    b.assert_bars_equal_trades(&all, &Timeframe::ALL, "after the failover")
        .await;
    server_b.shutdown_and_wait().await;
}

/// 30 trades of `symbol` on kraken in minute `minute` after T0, ids from `first`.
fn minute_of(symbol: &str, first: i64, minute: i64) -> Vec<Trade> {
    minute_of_trades(first, minute)
        .into_iter()
        .map(|mut t| {
            t.symbol = symbol.to_string();
            t
        })
        .collect()
}

/// `hits` and `misses` of the server's bar cache.
async fn cache_counts(client: &mut FlightSqlServiceClient<Channel>) -> (i64, i64) {
    (
        count(client, "select hits from system.cache_stats").await,
        count(client, "select misses from system.cache_stats").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_cached_series_a_builder_commit_did_not_change() {
    let Some(url) = postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    let (_lake, a, b) = lake_of_two(&url).await;
    let server_a = Server::start_with(&a, options()).await;
    let mut polling = options();
    polling.cache.trades_poll_ms = 200;
    let server_b = Server::start_with(&b, polling).await;
    let mut on_a = FlightSqlServiceClient::new(server_a.channel().await);
    let mut on_b = FlightSqlServiceClient::new(server_b.channel().await);
    // Half an hour before the servers' now: built, and inside the 1m hot horizon.
    let minute = 3 * 24 * 60 - 30;
    let sum = |symbol: &str| {
        format!(
            "select sum(trade_count) from candles('kraken', '{symbol}', '1m', \
             '2024-01-03T12:00:00Z', '2024-01-04T00:00:00Z')"
        )
    };
    let until = |on: &mut FlightSqlServiceClient<Channel>, sql: String, want: i64| {
        let mut on = on.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while count(&mut on, &sql).await != want {
                assert!(Instant::now() < deadline, "never {want}: {sql}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    ingest_trades(&mut on_a, trade_batch(&minute_of("BTC-USD", 0, minute)))
        .await
        .unwrap();
    build_all(&server_a).await;
    until(&mut on_b, sum("BTC-USD"), 30).await;
    let (_, misses) = cache_counts(&mut on_b).await;
    assert_eq!(count(&mut on_b, &sum("BTC-USD")).await, 30);
    assert_eq!(cache_counts(&mut on_b).await.1, misses, "BTC-USD is cached");

    // The builder commits bars of another series (its upsert rewrites the file BTC-USD's bars
    // are in): the replica moves BTC-USD's entry to the new snapshot instead of dropping it.
    ingest_trades(
        &mut on_a,
        trade_batch(&minute_of("ETH-USD", 100, minute + 1)),
    )
    .await
    .unwrap();
    build_all(&server_a).await;
    until(&mut on_b, sum("ETH-USD"), 30).await;
    let (hits, misses) = cache_counts(&mut on_b).await;
    assert_eq!(count(&mut on_b, &sum("BTC-USD")).await, 30);
    let (hits_after, misses_after) = cache_counts(&mut on_b).await;
    assert_eq!(misses_after, misses, "BTC-USD's entry survived the commit");
    assert!(hits_after > hits);

    // A commit that changes BTC-USD's bars drops its entry: the next answer is the new one.
    ingest_trades(
        &mut on_a,
        trade_batch(&minute_of("BTC-USD", 200, minute + 2)),
    )
    .await
    .unwrap();
    build_all(&server_a).await;
    until(&mut on_b, sum("BTC-USD"), 60).await;
    server_b.shutdown_and_wait().await;
    server_a.shutdown_and_wait().await;
}
