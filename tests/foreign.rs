//! Another engine writes to the lake: pyiceberg appends trades to `market.trades` (its own
//! manifests, whose entries inherit snapshot ids and sequence numbers), deletes trades (files
//! rewritten), overwrites some with corrections, deletes more by position delete files (as
//! Spark's merge-on-read writes them), and expires the snapshot the builder last consumed;
//! after each step the five tables equal a reference computed from the trades that remain,
//! including windows that lost every trade (their bars are deleted). pyiceberg appends a bad
//! bar to `ohlcv_1m`, and validation reports it by key.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use arrow_flight::sql::client::FlightSqlServiceClient;
use common::trades::{load, reference, table_bars, trade, Trade};
use common::*;
use ohlcv_server::quality::{self, Reports, Scope};
use ohlcv_server::storage::read::read_range;
use ohlcv_server::storage::{TableKind, TimeRange};
use ohlcv_server::timeframe::Timeframe;
use serde_json::{json, Value};

const NOW: i64 = T0 + 3 * DAY;

/// pyiceberg, or `None` outside CI when it is not installed.
fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .args(["-c", "import pyiceberg"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI must install tests/python/requirements.txt");
    }
    ok.then_some("python3")
}

/// Where pyiceberg finds `d`'s catalog: the SQLite file under the data dir by default, or the
/// PostgreSQL catalog `d` is configured with.
fn catalog_env(d: &Deployment) -> Vec<(&'static str, String)> {
    match &d.config.catalog.url {
        Some(url) if url.starts_with("postgres") => vec![
            (
                "FOREIGN_CATALOG_URI",
                url.replacen("postgres://", "postgresql+psycopg2://", 1),
            ),
            ("FOREIGN_CATALOG_NAME", d.config.catalog.name.clone()),
        ],
        _ => Vec::new(),
    }
}

/// One pyiceberg commit on `market.<table>` (see tests/python/foreign_writer.py).
fn pyiceberg(d: &Deployment, table: &str, op: &str, rows: Value) -> String {
    let path = d
        .dir
        .path()
        .join(format!("rows-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, rows.to_string()).unwrap();
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/foreign_writer.py"
        ))
        .arg(&d.config.data_dir)
        .arg(table)
        .arg(op)
        .arg(&path)
        .envs(catalog_env(d))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyiceberg {op} {table}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Trades pyiceberg reads from `market.trades` (row-level deletes applied).
fn pyiceberg_count(d: &Deployment) -> usize {
    pyiceberg(d, "trades", "count", json!({})).parse().unwrap()
}

/// Trades our SQL engine reads from `market.trades`.
async fn trade_count(d: &Deployment) -> usize {
    use arrow::array::AsArray;
    let batches = d.sql("select count(*) from ohlcv.market.trades").await;
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0) as usize
}

fn trades_json(trades: &[Trade]) -> Value {
    json!({
        "exchange": trades.iter().map(|t| t.exchange.clone()).collect::<Vec<_>>(),
        "symbol": trades.iter().map(|t| t.symbol.clone()).collect::<Vec<_>>(),
        "trade_id": trades.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        "ts": trades.iter().map(|t| t.ts).collect::<Vec<_>>(),
        "price": trades.iter().map(|t| t.price).collect::<Vec<_>>(),
        "quantity": trades.iter().map(|t| t.qty).collect::<Vec<_>>(),
        "side": trades.iter().map(|t| if t.buy { "buy" } else { "sell" }).collect::<Vec<_>>(),
        "ingested_at": trades.iter().map(|_| T0).collect::<Vec<_>>(),
    })
}

/// Trades every `step_s` seconds from `from`, `n` of them, ids prefixed by `tag`.
fn trades(tag: &str, symbol: &str, from: i64, step_s: i64, n: i64) -> Vec<Trade> {
    (0..n)
        .map(|i| {
            trade(
                "kraken",
                symbol,
                &format!("{tag}{i}"),
                from + i * step_s * 1_000_000 + 3_000_000,
                100.0 + ((i * 37) % 101) as f64 / 10.0,
                0.25 + (i % 5) as f64,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_appended_by_pyiceberg_are_built_into_every_timeframe() {
    if python().is_none() {
        eprintln!("skipping: pyiceberg is not installed");
        return;
    }
    foreign_writer_steps(&Deployment::new().await).await;
}

/// The same steps on the PostgreSQL catalog: pyiceberg commits through its own PostgreSQL
/// catalog client while our writer holds the advisory lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_appended_by_pyiceberg_on_the_postgresql_catalog_are_built() {
    let Some(url) = postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    if python().is_none() {
        eprintln!("skipping: pyiceberg is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = ohlcv_server::config::Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    config.catalog.url = Some(url);
    config.catalog.name = format!("ohlcv_foreign_{}", uuid::Uuid::new_v4().simple());
    let writer = writer_for(&config).await;
    foreign_writer_steps(&Deployment {
        dir,
        config,
        writer,
    })
    .await;
}

/// pyiceberg appends, deletes and expires on `market.trades` while our builder follows.
async fn foreign_writer_steps(d: &Deployment) {
    let mut all = trades("a", "BTC-USD", T0, 90, 1900);
    load(d, &all).await;
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "our load")
        .await;

    // Two pyiceberg commits: late trades inside windows already built, and a new symbol.
    let late = trades("late", "BTC-USD", T0 + 7 * 60_000_000, 41, 600);
    pyiceberg(d, "trades", "append", trades_json(&late));
    let new_symbol = trades("e", "ETH-USD", T0 + DAY / 2, 60, 900);
    pyiceberg(d, "trades", "append", trades_json(&new_symbol));
    all.extend(late);
    all.extend(new_symbol);

    let reports = d.build_all(NOW).await;
    assert!(
        reports[0].trades_read >= 1500,
        "1m read the appended trades: {:?}",
        reports[0]
    );
    assert!(reports[0].late_revisions > 0, "{:?}", reports[0]);
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "after pyiceberg appends")
        .await;

    // A rerun over the same input writes nothing.
    let before: Vec<_> =
        futures::future::join_all(Timeframe::ALL.map(|tf| d.snapshot(TableKind::Bars(tf)))).await;
    d.build_all(NOW).await;
    let after: Vec<_> =
        futures::future::join_all(Timeframe::ALL.map(|tf| d.snapshot(TableKind::Bars(tf)))).await;
    assert_eq!(before, after, "a rebuild committed nothing");

    // Corrections: pyiceberg deletes trades, among them every trade of two 1m windows (one in
    // each day) and of one whole hour of ETH-USD, so those bars must go.
    let doomed: Vec<String> = all
        .iter()
        .filter(|t| {
            let minute = (t.ts - T0).div_euclid(MIN);
            let hour = (t.ts - T0).div_euclid(60 * MIN);
            (t.symbol == "BTC-USD" && (minute == 100 || minute == 1500))
                || (t.symbol == "ETH-USD" && hour == 14)
                || t.id.ends_with('7')
        })
        .map(|t| t.id.clone())
        .collect();
    pyiceberg(d, "trades", "delete", json!({ "trade_id": doomed }));
    all.retain(|t| !doomed.contains(&t.id));
    let reports = d.build_all(NOW).await;
    assert!(
        reports[0].deleted >= 2,
        "1m bars of emptied windows deleted: {:?}",
        reports[0]
    );
    assert!(
        reports[3].deleted >= 1,
        "the emptied ETH-USD hour: {:?}",
        reports[3]
    );
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "after pyiceberg deletes")
        .await;

    // Corrections in one overwrite snapshot: some trades replaced with new prices and sizes.
    let mut corrected: Vec<Trade> = all
        .iter()
        .filter(|t| t.symbol == "BTC-USD" && t.id.ends_with('1'))
        .take(50)
        .cloned()
        .collect();
    for t in &mut corrected {
        t.price = (t.price * 1.01 * 100.0).round() / 100.0;
        t.qty += 0.5;
    }
    pyiceberg(d, "trades", "overwrite", trades_json(&corrected));
    for t in &mut all {
        if let Some(c) = corrected.iter().find(|c| c.id == t.id) {
            *t = c.clone();
        }
    }
    let reports = d.build_all(NOW).await;
    assert!(reports[0].revised > 0, "{:?}", reports[0]);
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "after pyiceberg's overwrite")
        .await;

    // Row-level deletes (position delete files, merge-on-read, as Spark writes them): the
    // trades are gone from the bars, SQL and pyiceberg, and a window left empty loses its bar.
    let doomed: Vec<String> = all
        .iter()
        .filter(|t| {
            let minute = (t.ts - T0).div_euclid(MIN);
            (t.symbol == "BTC-USD" && minute == 200) || t.id.ends_with('3')
        })
        .map(|t| t.id.clone())
        .collect();
    pyiceberg(d, "trades", "pos-delete", json!({ "trade_id": doomed }));
    all.retain(|t| !doomed.contains(&t.id));
    let reports = d.build_all(NOW).await;
    assert!(
        reports[0].deleted >= 1,
        "the emptied minute: {:?}",
        reports[0]
    );
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "after position deletes")
        .await;
    assert_eq!(trade_count(d).await, all.len(), "SQL skips deleted rows");
    assert_eq!(pyiceberg_count(d), all.len(), "pyiceberg agrees");

    // A compaction rewrites files (our compaction folds the deletes in): no new trades, no
    // revision.
    let revised_before = revisions(d).await;
    let partitions: Vec<i32> = (0..2).map(|day| ((T0 + day * DAY) / DAY) as i32).collect();
    let deletes_before = trades_listing(d).await.deletes.len();
    assert!(deletes_before > 0, "pyiceberg's position deletes are live");
    let outcome = d
        .writer
        .compact(TableKind::Trades, &partitions)
        .await
        .unwrap();
    // The delete files of the rewritten files are dropped with them; any left is still
    // needed by a live file.
    let after = trades_listing(d).await;
    assert!(outcome.delete_files_removed > 0, "{outcome:?}");
    assert_eq!(
        after.deletes.len(),
        deletes_before - outcome.delete_files_removed
    );
    for (_, delete) in &after.deletes {
        let path = delete.data_file().file_path().as_str();
        assert!(
            after
                .files
                .iter()
                .any(|f| f.position_deletes.iter().any(|p| &**p == path)
                    || f.equality.iter().any(|e| e.path == path)),
            "{path} is live but no live data file needs it"
        );
    }
    let reports = d.build_all(NOW).await;
    assert_eq!(reports[0].bars_written, 0, "{:?}", reports[0]);
    assert_eq!(revisions(d).await, revised_before);
    assert_eq!(trade_count(d).await, all.len(), "after compaction");
    assert_eq!(pyiceberg_count(d), all.len(), "pyiceberg after compaction");

    // Another engine expires the snapshot the builder consumed, then appends: the changes
    // cannot be listed, so every persisted window is compared, and the result is still exact.
    pyiceberg(d, "trades", "expire", json!({}));
    let after_expiry = trades("x", "BTC-USD", T0 + DAY + 3 * 60 * MIN, 30, 50);
    pyiceberg(d, "trades", "append", trades_json(&after_expiry));
    all.extend(after_expiry);
    d.build_all(NOW).await;
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "after the consumed snapshot expired")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_reports_a_bad_bar_appended_by_pyiceberg() {
    if python().is_none() {
        eprintln!("skipping: pyiceberg is not installed");
        return;
    }
    let d = Deployment::new().await;
    let all = trades("a", "BTC-USD", T0, 90, 1900);
    load(&d, &all).await;
    d.build_all(NOW).await;
    let reports = Reports::open(d.storage().pool()).await.unwrap();
    let clean = quality::validate(d.storage(), &reports, &[Timeframe::M1], Scope::Changed, NOW)
        .await
        .unwrap();
    assert!(clean.iter().all(|r| r.passed()), "{clean:?}");

    // high < low, on a key that already has a bar.
    let key = T0 + 30 * MIN;
    pyiceberg(
        &d,
        "ohlcv_1m",
        "append",
        json!({
            "exchange": ["kraken"], "symbol": ["BTC-USD"],
            "window_start": [key], "window_end": [key + MIN],
            "open": [100.0], "high": [99.0], "low": [101.0], "close": [100.0],
            "volume": [1.0], "quote_volume": [100.0], "vwap": [100.0],
            "trade_count": [1], "buy_volume": [0.0],
            "first_trade_ts": [key], "last_trade_ts": [key],
            "revision": [0], "built_at": [NOW],
        }),
    );
    let results = quality::validate(d.storage(), &reports, &[Timeframe::M1], Scope::Changed, NOW)
        .await
        .unwrap();
    let failed: BTreeMap<&str, Vec<(String, i64)>> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| {
            (
                r.check.as_str(),
                r.samples
                    .iter()
                    .map(|s| (s.symbol.clone(), s.window_start))
                    .collect(),
            )
        })
        .collect();
    let want = vec![("BTC-USD".to_string(), key)];
    assert_eq!(failed.get("ohlc_bounds"), Some(&want), "{results:?}");
    assert_eq!(failed.get("unique_aligned"), Some(&want), "{results:?}");
}

/// Sum of the 1m table's revision numbers: any revision moves it.
async fn revisions(d: &Deployment) -> i32 {
    let (_, b) = read_range(d.storage(), TableKind::Bars(Timeframe::M1), TimeRange::ALL)
        .await
        .unwrap();
    table_bars(&b).into_values().map(|b| b.revision).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_another_engine_commits_show_as_live_candles_before_the_next_build() {
    if python().is_none() {
        eprintln!("skipping: pyiceberg is not installed");
        return;
    }
    let d = Deployment::new().await;
    load(&d, &trades("a", "BTC-USD", T0, 90, 1900)).await;
    d.build_all(NOW).await;
    let mut options = common::server::options();
    options.cache.trades_poll_ms = 50;
    let server = common::server::Server::start_with(&d, options).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);

    // Spark (here pyiceberg) commits trades in the last minutes: no build has seen them.
    let recent = trades("spark", "SOL-USD", NOW - 4 * MIN, 7, 20);
    pyiceberg(&d, "trades", "append", trades_json(&recent));
    let sql = format!(
        "select window_start, volume, trade_count, is_final from candles('kraken', 'SOL-USD', \
         '1m', '{}', '{}')",
        iso(NOW - 10 * MIN),
        iso(NOW + MIN)
    );
    let want = reference(&recent, MIN);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let batches = query(&mut client, &sql).await;
        let got: usize = batches.iter().map(|b| b.num_rows()).sum();
        if got == want.len() {
            let volumes: f64 = batches
                .iter()
                .map(|b| {
                    b.column(1)
                        .as_any()
                        .downcast_ref::<arrow::array::Float64Array>()
                        .unwrap()
                        .values()
                        .iter()
                        .sum::<f64>()
                })
                .sum();
            let expected: f64 = recent.iter().map(|t| t.qty).sum();
            assert!((volumes - expected).abs() < 1e-9, "{volumes} vs {expected}");
            let finals = batches.iter().all(|b| {
                b.column(3)
                    .as_any()
                    .downcast_ref::<arrow::array::BooleanArray>()
                    .unwrap()
                    .true_count()
                    == 0
            });
            assert!(finals, "the candles are live, not final");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the committed trades never showed as live candles ({got} of {})",
            want.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.shutdown_and_wait().await;
}

fn iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn query(
    client: &mut FlightSqlServiceClient<tonic::transport::Channel>,
    sql: &str,
) -> Vec<arrow::array::RecordBatch> {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
        out.extend(
            futures::TryStreamExt::try_collect::<Vec<_>>(stream)
                .await
                .unwrap(),
        );
    }
    out
}

/// The current listing of `market.trades`, every file.
async fn trades_listing(d: &Deployment) -> ohlcv_server::storage::Listing {
    let table = d.storage().table(TableKind::Trades).await.unwrap();
    ohlcv_server::storage::Listing::read(
        &table,
        TableKind::Trades,
        None,
        ohlcv_server::storage::TimeRange::ALL,
    )
    .await
    .unwrap()
}

/// One series' bars as `[window_start_us, open, high, low, close, volume]` rows.
type Rows = Vec<(i64, [f64; 5])>;

fn rows_of(batches: &[arrow::array::RecordBatch]) -> Rows {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
    batches
        .iter()
        .flat_map(|b| {
            let start = b.column(0).as_primitive::<TimestampMicrosecondType>();
            let value = |c: usize, i: usize| b.column(c).as_primitive::<Float64Type>().value(i);
            (0..b.num_rows())
                .map(|i| {
                    let v = [1, 2, 3, 4, 5].map(|c| value(c, i));
                    (start.value(i), v)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// pyiceberg's read of one series of `table` at `snapshot_id`.
fn pyiceberg_rows(d: &Deployment, table: &str, snapshot_id: i64) -> Rows {
    let out = pyiceberg(
        d,
        table,
        "read-at",
        json!({ "snapshot_id": snapshot_id, "exchange": "kraken", "symbol": "BTC-USD" }),
    );
    let rows: Vec<(i64, f64, f64, f64, f64, f64)> = serde_json::from_str(&out).unwrap();
    rows.into_iter()
        .map(|(s, o, h, l, c, v)| (s, [o, h, l, c, v]))
        .collect()
}

/// Builds, then records the 1m and 1h snapshots current and a moment inside that state.
async fn settle(d: &Deployment, states: &mut Vec<(i64, i64, i64)>) {
    d.build_all(NOW).await;
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let moment = chrono::Utc::now().timestamp_micros();
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let snapshot = |tf| d.snapshot(TableKind::Bars(tf));
    states.push((
        snapshot(Timeframe::M1).await.unwrap(),
        snapshot(Timeframe::H1).await.unwrap(),
        moment,
    ));
}

/// Point-in-time reads across revisions by other engines: late trades pyiceberg appends and
/// trades it deletes each revise built bars; `candles(..., as_of => t)` and `bars_as_of` at a
/// moment before each revision answer the bars as they were, equal to pyiceberg's read of the
/// snapshot that was current then, in a stored and a rolled-up timeframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_reads_equal_pyiceberg_reads_of_each_snapshot() {
    if python().is_none() {
        eprintln!("skipping: pyiceberg is not installed");
        return;
    }
    let d = Deployment::new().await;
    let server = common::server::Server::start_with(&d, common::server::options()).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let mut all = trades("a", "BTC-USD", T0, 90, 400);
    load(&d, &all).await;
    // After each state: the snapshots then current and a moment inside it.
    let mut states: Vec<(i64, i64, i64)> = Vec::new();
    settle(&d, &mut states).await;
    // Late trades another engine commits revise the first hours' bars.
    let late = trades("late", "BTC-USD", T0 + 7 * MIN, 41, 60);
    pyiceberg(&d, "trades", "append", trades_json(&late));
    all.extend(late);
    settle(&d, &mut states).await;
    // Another engine deletes trades: every trade of minute 3 (its bar goes) and some more.
    let doomed: Vec<String> = all
        .iter()
        .filter(|t| (t.ts - T0).div_euclid(MIN) == 3 || t.id.ends_with('4'))
        .map(|t| t.id.clone())
        .collect();
    pyiceberg(&d, "trades", "delete", json!({ "trade_id": doomed }));
    all.retain(|t| !doomed.contains(&t.id));
    settle(&d, &mut states).await;

    let micros = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let (start, end) = (iso(T0), iso(T0 + DAY));
    let mut seen = Vec::new();
    for (m1_snapshot, h1_snapshot, moment) in &states {
        let at = micros(*moment);
        let candles = |tf: &str| {
            format!(
                "select window_start, open, high, low, close, volume from candles('kraken', \
                 'BTC-USD', '{tf}', '{start}', '{end}', as_of => '{at}')"
            )
        };
        let stock = format!(
            "select window_start, open, high, low, close, volume from bars_as_of('ohlcv_1m', \
             '{at}') where exchange = 'kraken' and symbol = 'BTC-USD' order by window_start"
        );
        let want_1m = pyiceberg_rows(&d, "ohlcv_1m", *m1_snapshot);
        assert!(!want_1m.is_empty());
        assert_eq!(rows_of(&query(&mut client, &candles("1m")).await), want_1m);
        assert_eq!(rows_of(&query(&mut client, &stock).await), want_1m);
        assert_eq!(
            rows_of(&query(&mut client, &candles("1h")).await),
            pyiceberg_rows(&d, "ohlcv_1h", *h1_snapshot)
        );
        seen.push(want_1m);
    }
    assert_ne!(seen[0], seen[1], "the late trades revised bars");
    assert_ne!(seen[1], seen[2], "the delete revised bars");
    assert!(seen[1].iter().any(|(s, _)| *s == T0 + 3 * MIN));
    assert!(
        !seen[2].iter().any(|(s, _)| *s == T0 + 3 * MIN),
        "minute 3 emptied"
    );
    // The last state is the trades that remain.
    let volumes: Vec<(i64, f64)> = reference(&all, MIN)
        .into_iter()
        .map(|(k, b)| (k.2, b.volume))
        .collect();
    let last: Vec<(i64, f64)> = seen[2].iter().map(|(s, v)| (*s, v[4])).collect();
    assert_eq!(last.len(), volumes.len());
    for ((s, v), (ws, wv)) in last.iter().zip(&volumes) {
        assert_eq!(s, ws);
        assert!((v - wv).abs() < 1e-9, "{s}: {v} vs {wv}");
    }
    server.shutdown_and_wait().await;
}

/// Trades another engine deletes reach live subscribers at the next build: a window left
/// without trades as `deleted`, a window that lost some as `revised`, each equal to what
/// `candles()` answers then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_delete_reaches_subscribers_as_revisions() {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
    use futures::StreamExt;
    if python().is_none() {
        eprintln!("skipping: pyiceberg is not installed");
        return;
    }
    let d = Deployment::new().await;
    let all = trades("a", "BTC-USD", NOW - 60 * MIN, 25, 100);
    load(&d, &all).await;
    d.build_all(NOW).await;
    let server = common::server::Server::start_with(&d, common::server::options()).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let mut live = common::server::subscribe(
        server.channel().await,
        json!({"series": [{"exchange": "kraken", "symbol": "BTC-USD"}], "timeframe": "1m",
               "last": 100}),
    )
    .await;
    // (window, change, volume) of each pushed candle.
    let mut next = async || -> Vec<(i64, String, f64)> {
        let batch = tokio::time::timeout(std::time::Duration::from_secs(20), live.next())
            .await
            .expect("a pushed batch")
            .unwrap()
            .unwrap();
        let w = batch.column_by_name("window_start").unwrap();
        let v = batch.column_by_name("volume").unwrap();
        let c = batch.column_by_name("change").unwrap();
        (0..batch.num_rows())
            .map(|i| {
                (
                    w.as_primitive::<TimestampMicrosecondType>().value(i),
                    c.as_string::<i32>().value(i).to_string(),
                    v.as_primitive::<Float64Type>().value(i),
                )
            })
            .collect()
    };
    let first = next().await;
    assert_eq!(first.len(), reference(&all, MIN).len(), "{first:?}");
    assert!(first.iter().all(|(_, c, _)| c == "snapshot"));

    // Every trade of the first minute, and one of a later minute that keeps others.
    let emptied = NOW - 60 * MIN;
    let thinned = all
        .iter()
        .find(|t| {
            let w = t.ts - t.ts.rem_euclid(MIN);
            w > emptied
                && all
                    .iter()
                    .filter(|u| u.ts - u.ts.rem_euclid(MIN) == w)
                    .count()
                    > 1
        })
        .unwrap()
        .clone();
    let doomed: Vec<String> = all
        .iter()
        .filter(|t| t.ts - t.ts.rem_euclid(MIN) == emptied || t.id == thinned.id)
        .map(|t| t.id.clone())
        .collect();
    pyiceberg(&d, "trades", "delete", json!({ "trade_id": doomed }));
    d.build_all(NOW).await;
    let mut pushed = Vec::new();
    while pushed.len() < 2 {
        pushed.extend(next().await);
    }
    pushed.sort_by_key(|p| p.0);
    let thinned_window = thinned.ts - thinned.ts.rem_euclid(MIN);
    assert_eq!(pushed.len(), 2, "{pushed:?}");
    assert_eq!((pushed[0].0, pushed[0].1.as_str()), (emptied, "deleted"));
    assert_eq!(
        (pushed[1].0, pushed[1].1.as_str()),
        (thinned_window, "revised")
    );
    let answer = query(
        &mut client,
        &format!(
            "select window_start, volume from candles('kraken', 'BTC-USD', '1m', '{}', '{}')",
            iso(emptied),
            iso(thinned_window + MIN)
        ),
    )
    .await;
    let answered: Vec<(i64, f64)> = answer
        .iter()
        .flat_map(|b| {
            let w = b.column(0).as_primitive::<TimestampMicrosecondType>();
            let v = b.column(1).as_primitive::<Float64Type>();
            (0..b.num_rows())
                .map(|i| (w.value(i), v.value(i)))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(answered.iter().all(|(w, _)| *w != emptied), "{answered:?}");
    assert!(
        answered.contains(&(thinned_window, pushed[1].2)),
        "{answered:?}"
    );
    server.shutdown_and_wait().await;
}
