//! The shipped clients against a real server: the Python ADBC/pandas/polars example and the
//! Rust arrow-flight example from clients/, and the `ohlcv-server admin` command line.

mod common;

/// The Rust example, compiled into this test as well so that it runs against the test server.
#[allow(dead_code)]
#[path = "../clients/rust/flight_client.rs"]
mod flight_client;

use std::process::Output;

use common::server::{deployment_with_bars, options_with_users, Server};
use common::trades::{load, trade};
use common::*;
use ohlcv_server::admin::proto::{CompactRequest, TriggerBuildRequest};

fn check(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_examples_run_against_the_server() {
    let d = deployment_with_bars().await;
    let mut options = options_with_users();
    // The examples ingest trades stamped with the real time; the test server's clock stands
    // in 2024, so its plausibility window must reach today.
    options.limits.max_future_secs = 20 * 365 * 86_400;
    let server = Server::start_with(&d, options).await;
    let python_ready = std::process::Command::new("python3")
        .args(["-c", "import adbc_driver_flightsql, pandas, polars"])
        .status()
        .is_ok_and(|s| s.success());
    if python_ready {
        let out = tokio::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/clients/python/adbc_pandas_polars.py"
            ))
            .arg(format!("grpc://{}", server.addr))
            .args(["will", "will-pw"])
            .output()
            .await
            .unwrap();
        let stdout = check(&out);
        assert!(stdout.contains("ingested 120 trades"), "{stdout}");
        assert!(
            stdout.contains("pandas: 30 1m candles of kraken BTC-USD"),
            "{stdout}"
        );
        assert!(
            stdout.contains("polars: 12 5m candles of kraken BTC-USD"),
            "{stdout}"
        );
    } else if std::env::var_os("CI").is_some() {
        panic!("CI must install tests/python/requirements.txt");
    }

    let args = [
        format!("http://{}", server.addr),
        "rita".into(),
        "rita-pw".into(),
    ];
    let stdout = flight_client::run(&args).await.unwrap();
    assert!(
        stdout.contains("latest 1 1h candles of BTC-USD"),
        "{stdout}"
    );
    assert!(stdout.contains("| kraken   | BTC-USD | 1    |"), "{stdout}");
    server.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_backfills_with_progress_and_compacts() {
    let d = deployment_with_bars().await;
    // A day of 100,000 more trades and the smallest build budget (about 26,000 trades a
    // chunk): the backfill runs in chunks.
    let day: Vec<_> = (0..100_000i64)
        .map(|i| {
            common::trades::trade(
                "kraken",
                "ETH-USD",
                &format!("e{i}"),
                T0 + i * 864_000,
                2000.0 + (i % 97) as f64,
                0.1,
            )
        })
        .collect();
    common::trades::load(&d, &day).await;
    let mut opts = options_with_users();
    opts.settings.memory_bytes = 1;
    let server = Server::start_with(&d, opts).await;
    let admin = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ohlcv-server"));
        cmd.args(["admin", "--server", &format!("http://{}", server.addr)])
            .args(["--user", "ada"])
            .env("OHLCVCTL_PASSWORD", "ada-pw")
            .args(args);
        cmd
    };

    let status = check(&admin(&["status"]).output().await.unwrap());
    assert!(status.contains("schedules running"), "{status}");
    assert!(status.contains("table ohlcv_1m"), "{status}");

    let out = admin(&[
        "backfill",
        "--from",
        "2024-01-01",
        "--to",
        "2024-01-02",
        "--timeframe",
        "1m",
        "--timeframe",
        "1h",
    ])
    .output()
    .await
    .unwrap();
    let progress = check(&out);
    let lines: Vec<&str> = progress.lines().collect();
    assert_eq!(lines.len(), 2, "{progress}");
    assert!(lines[0].starts_with("[1/2] 1m succeeded"), "{progress}");
    assert!(lines[1].starts_with("[2/2] 1h succeeded"), "{progress}");
    // Not a terminal: one line per chunk on stderr, the last one all done.
    let chunks = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = chunks
        .lines()
        .filter(|l| l.starts_with("backfill 1m: chunk "))
        .collect();
    assert!(lines.len() >= 3, "{chunks}");
    let last = lines.last().unwrap();
    let (done, total) = last["backfill 1m: chunk ".len()..]
        .split(',')
        .next()
        .unwrap()
        .split_once('/')
        .unwrap();
    assert_eq!(done, total, "{chunks}");

    let bad = admin(&["backfill", "--from", "yesterday", "--to", "2024-01-02"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("InvalidArgument")
            || String::from_utf8_lossy(&bad.stderr).contains("invalid argument"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // A reader is refused, and says so.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ohlcv-server"))
        .args(["admin", "--server", &format!("http://{}", server.addr)])
        .args(["--user", "rita", "--password", "rita-pw", "pause"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs Admin"));

    check(&admin(&["pause"]).output().await.unwrap());
    let status = check(&admin(&["status"]).output().await.unwrap());
    assert!(status.contains("schedules PAUSED"), "{status}");
    check(&admin(&["resume"]).output().await.unwrap());

    // Bars of a second hour land in a second file of the same day partition; compaction merges
    // them without changing a row.
    let later: Vec<_> = (0..60)
        .map(|i| {
            trade(
                "kraken",
                "BTC-USD",
                &format!("h2-{i}"),
                T0 + 3_600_000_000 + i * MIN,
                50.0,
                1.0,
            )
        })
        .collect();
    load(&d, &later).await;
    let mut client = ohlcv_server::admin::client::connect(
        &format!("http://{}", server.addr),
        Some("ada"),
        Some("ada-pw"),
    )
    .await
    .unwrap();
    client
        .trigger_build(TriggerBuildRequest {
            timeframes: vec!["1m".into()],
        })
        .await
        .unwrap();
    let before = d
        .sql("select * from ohlcv.market.ohlcv_1m order by exchange, symbol, window_start")
        .await;
    let compacted = client
        .compact(CompactRequest {
            tables: vec!["ohlcv_1m".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let t = &compacted.tables[0];
    // The chunked backfill above committed a file of the day per chunk, the build one more.
    assert_eq!((t.partitions_compacted, t.files_added), (1, 1));
    assert!(t.files_removed > 2, "{t:?}");
    let after = d
        .sql("select * from ohlcv.market.ohlcv_1m order by exchange, symbol, window_start")
        .await;
    assert_eq!(
        arrow::compute::concat_batches(&before[0].schema(), &before).unwrap(),
        arrow::compute::concat_batches(&after[0].schema(), &after).unwrap()
    );
    let rows: usize = after.iter().map(|b| b.num_rows()).sum();
    // 120 BTC-USD minutes, and every minute of the ETH-USD day.
    assert_eq!(rows, 120 + 1440);
    server.shutdown_and_wait().await;
}

/// The Python live-candle client (clients/python/live_candles.py), through ADBC (a statement
/// whose result stays open, read with `fetch_record_batch()`) and pyarrow.flight DoExchange:
/// both get the candles as they stand, then each ingested trade as a live candle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_live_candle_clients_receive_each_trade() {
    use tokio::io::AsyncBufReadExt;
    let python_ready = std::process::Command::new("python3")
        .args(["-c", "import adbc_driver_flightsql, pyarrow.flight"])
        .status()
        .is_ok_and(|s| s.success());
    if !python_ready {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install tests/python/requirements.txt"
        );
        eprintln!("skipping: adbc_driver_flightsql is not installed");
        return;
    }
    let d = deployment_with_bars().await;
    let mut options = options_with_users();
    // The bars are three days behind the test clock: track that far back (5,000 1m windows).
    options.push.track_windows = 5_000;
    let server = Server::start_with(&d, options).await;
    let mut clients = Vec::new();
    for via in ["adbc", "flight"] {
        let mut child = tokio::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/clients/python/live_candles.py"
            ))
            .arg(format!("grpc://{}", server.addr))
            .args(["kraken", "BTC-USD", "1m", "--via", via, "--last", "3"])
            .args(["--updates", "3", "--user", "rita", "--password", "rita-pw"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut first = Vec::new();
        loop {
            let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{via}: no first message"))
                .unwrap()
                .unwrap_or_else(|| panic!("{via}: ended before its first message"));
            if line == "subscribed" {
                break;
            }
            first.push(line);
        }
        assert_eq!(first.len(), 3, "{via}: {first:?}");
        assert!(
            first
                .iter()
                .all(|l| l.starts_with("snapshot BTC-USD 2024-01-01T00:5")),
            "{via}: {first:?}"
        );
        clients.push((via, child, lines));
    }
    let mut writer = arrow_flight::sql::client::FlightSqlServiceClient::new(server.channel().await);
    writer.handshake("will", "will-pw").await.unwrap();
    let now = T0 + 3 * DAY;
    for i in 0..3 {
        let t = trade(
            "kraken",
            "BTC-USD",
            &format!("live{i}"),
            now - 20 * MIN + i * MIN,
            200.0 + i as f64,
            1.5,
        );
        common::server::ingest_trades(&mut writer, common::trades::trade_batch(&[t]))
            .await
            .unwrap();
    }
    for (via, mut child, mut lines) in clients {
        let mut updates = Vec::new();
        while let Some(line) =
            tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{via}: no updates"))
                .unwrap()
        {
            updates.push(line);
        }
        let status = child.wait().await.unwrap();
        assert!(status.success(), "{via}: {updates:?}");
        assert_eq!(updates.len(), 3, "{via}: {updates:?}");
        for (i, line) in updates.iter().enumerate() {
            let close = 200.0 + i as f64;
            assert!(
                line.starts_with(&format!("live BTC-USD 2024-01-03T23:{}:00", 40 + i))
                    && line.contains(&format!("close={close:?} volume=1.5 trades=1 final=False")),
                "{via}: {line}"
            );
        }
    }
    server.shutdown_and_wait().await;
}
