//! Three server processes on one lake (a PostgreSQL catalog, the warehouse on SeaweedFS's S3):
//! one builds, two serve as read replicas. Trades are ingested continuously into whichever
//! server builds while clients query all three; the builder is killed with SIGKILL mid-ingest;
//! a replica takes the lock over within the documented bound (a few poll intervals) and
//! ingest and builds go on there. Checked: every server's answers only grow (each is the
//! tables at some snapshot, never a mix going back), every cached `candles()` answer is whole
//! batches and shows at least what was built two poll intervals before it was asked, the
//! replicas catch up with the builder,
//! no acknowledged trade is lost or stored twice, and the five tables equal a reference
//! computed from every stored trade (a clean rebuild). Every server answers `as_of` a moment
//! mid-ingest the same, before and after the failover.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use arrow_flight::sql::client::FlightSqlServiceClient;
use common::seaweed::{Seaweed, STATE_BUCKET};
use common::server::{ingest_trades, listening_address};
use common::trades::{trade, trade_batch, Trade};
use common::*;
use futures::TryStreamExt;
use ohlcv_server::admin::proto::admin_service_client::AdminServiceClient;
use ohlcv_server::admin::proto::TriggerBuildRequest;
use ohlcv_server::config::Config;
use ohlcv_server::timeframe::Timeframe;
use tonic::transport::{Channel, Endpoint};

/// How often replicas poll the catalog and try the lock (`[cache] trades_poll_ms`).
const POLL_MS: u64 = 300;

struct Process {
    child: Child,
    addr: String,
}

/// Where server `i` says it serves (`[cluster] advertise`): not its listen address, as behind
/// a load balancer, so that a refusal naming it proves the setting is what is named.
fn advertised(i: usize) -> String {
    format!("grpc+tcp://server-{i}.ohlcv.test:50051")
}

/// `ohlcv-server serve` on the shared lake as server `i`, its data dir (local state only) in
/// `dir`.
fn spawn(i: usize, dir: &Path, config: &Path) -> Process {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ohlcv-server"))
        .args(["--config"])
        .arg(config)
        .args(["--data-dir"])
        .arg(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OHLCV_TELEMETRY__LISTEN", "\"\"")
        .env("OHLCV_CLUSTER__ADVERTISE", advertised(i))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let addr = listening_address(&mut child);
    Process { child, addr }
}

async fn connect(addr: &str) -> Option<FlightSqlServiceClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .ok()?;
    Some(FlightSqlServiceClient::new(channel))
}

async fn admin(addr: &str) -> AdminServiceClient<Channel> {
    AdminServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("{addr} does not answer: {e}"))
}

/// An admin write on the replica at `addr` is refused naming where server `builder` serves.
async fn assert_refused_naming(addr: &str, builder: usize) {
    let refused = admin(addr)
        .await
        .trigger_build(TriggerBuildRequest {
            timeframes: vec!["1m".into()],
        })
        .await
        .expect_err("a replica refuses writes");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(
        refused.message().contains("read replica")
            && refused.message().contains(&advertised(builder)),
        "the refusal does not name {}: {refused}",
        advertised(builder)
    );
}

async fn client(addr: &str) -> FlightSqlServiceClient<Channel> {
    connect(addr)
        .await
        .unwrap_or_else(|| panic!("{addr} does not answer"))
}

async fn sorted_column(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<String> {
    let batches = common::server::fetch(client, sql).await;
    let mut values: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let column =
                arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            column
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    values.sort();
    values
}

async fn number(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Option<i64> {
    let info = client.execute(sql.to_string(), None).await.ok()?;
    let stream = client.do_get(info.endpoint[0].ticket.clone()?).await.ok()?;
    let batches: Vec<_> = stream.try_collect().await.ok()?;
    let column = batches.first()?.column(0).as_primitive::<Int64Type>();
    Some(if column.is_null(0) {
        0
    } else {
        column.value(0)
    })
}

/// Trades of one batch: 40 trades of two series in minute `minute` after T0.
fn batch_of(n: i64) -> Vec<Trade> {
    (0..40)
        .map(|i| {
            let id = n * 40 + i;
            trade(
                "kraken",
                if i % 2 == 0 { "BTC-USD" } else { "ETH-USD" },
                &id.to_string(),
                T0 + n * MIN + i * 1_000_000,
                100.0 + (id % 23) as f64,
                0.5 + (i % 3) as f64,
            )
        })
        .collect()
}

const TRADED: &str = "select sum(trade_count) from ohlcv_1m";

/// The same through `candles()`, which a server answers from its cache at the snapshots it
/// follows (planned SQL reads the catalog's current snapshot on every query): one series,
/// 20 trades per batch.
const TRADED_BTC: &str =
    "select sum(trade_count) from candles('kraken', 'BTC-USD', '1m', '2024-01-01', '2024-01-02')";
const BTC_PER_BATCH: i64 = 20;

/// A live subscription to kraken BTC-USD 1m, read in the background: the latest state of each
/// candle, and how the stream ended.
struct Watched {
    state: std::sync::Arc<std::sync::Mutex<WatchedState>>,
}

#[derive(Default, Clone)]
struct WatchedState {
    /// window start -> (trade count, final)
    candles: std::collections::BTreeMap<i64, (i64, bool)>,
    ended: Option<String>,
}

impl Watched {
    fn start(addr: String) -> Watched {
        Watched::follow(addr, None, WatchedState::default())
    }

    /// Subscribes again from `since` (the window of the last candle seen), on top of what
    /// `before` holds.
    fn resume(addr: String, before: &Watched, since: i64) -> Watched {
        let mut state = before.state.lock().unwrap().clone();
        state.ended = None;
        Watched::follow(addr, Some(since), state)
    }

    fn follow(addr: String, since: Option<i64>, state: WatchedState) -> Watched {
        let state = std::sync::Arc::new(std::sync::Mutex::new(state));
        let shared = std::sync::Arc::clone(&state);
        tokio::spawn(async move {
            let channel = Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut command = serde_json::json!({
                "series": [{"exchange": "kraken", "symbol": "BTC-USD"}],
                "timeframe": "1m",
            });
            if let Some(since) = since {
                command["since"] = chrono::DateTime::from_timestamp_micros(since)
                    .unwrap()
                    .to_rfc3339()
                    .into();
            }
            let mut stream = common::server::subscribe(channel, command).await;
            use futures::StreamExt;
            while let Some(next) = stream.next().await {
                let batch = match next {
                    Ok(batch) => batch,
                    Err(e) => {
                        shared.lock().unwrap().ended = Some(e.to_string());
                        return;
                    }
                };
                let col = |n: &str| batch.column_by_name(n).unwrap().clone();
                let (w, n, f, c) = (
                    col("window_start"),
                    col("trade_count"),
                    col("is_final"),
                    col("change"),
                );
                let mut s = shared.lock().unwrap();
                for i in 0..batch.num_rows() {
                    let window = w
                        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                        .value(i);
                    if c.as_string::<i32>().value(i) == "deleted" {
                        s.candles.remove(&window);
                    } else {
                        let count = n.as_primitive::<Int64Type>().value(i);
                        s.candles.insert(window, (count, f.as_boolean().value(i)));
                    }
                }
            }
            shared.lock().unwrap().ended = Some("the stream ended".into());
        });
        Watched { state }
    }

    fn candles(&self) -> std::collections::BTreeMap<i64, (i64, bool)> {
        self.state.lock().unwrap().candles.clone()
    }

    fn traded(&self) -> i64 {
        self.candles().values().map(|(n, _)| n).sum()
    }

    /// The window of the last candle seen and the error, once the stream has ended.
    fn ended(&self) -> Option<(i64, String)> {
        let s = self.state.lock().unwrap();
        let last = s.candles.keys().next_back().copied()?;
        s.ended.clone().map(|e| (last, e))
    }
}

/// What every live server answers for the BTC trades built as of `at_us`: all the same.
async fn as_of_everywhere(addrs: &[String], servers: &[Option<Process>], at_us: i64) -> i64 {
    let at = chrono::DateTime::from_timestamp_micros(at_us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let sql = format!(
        "select sum(trade_count) from candles('kraken', 'BTC-USD', '1m', '2024-01-01', \
         '2024-01-02', as_of => '{at}')"
    );
    let mut answers = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        if servers[i].is_some() {
            answers.push(number(&mut client(addr).await, &sql).await.unwrap());
        }
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "as_of {at}: {answers:?}"
    );
    answers[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_one_builder_failover_under_ingest() {
    let Some(url) = postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    let Some(seaweed) = Seaweed::start() else {
        eprintln!("skipping: SeaweedFS (weed) is not installed");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    seaweed.configure(&mut config);
    config.catalog.rest = None;
    config.catalog.url = Some(url);
    config.catalog.name = format!("replicas_{}", uuid::Uuid::new_v4().simple());
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    config.catalog.warehouse = Some(format!("s3://{STATE_BUCKET}/{prefix}"));
    config.cache.trades_poll_ms = POLL_MS;
    // The trades are of 2024: subscriptions track that far back.
    config.server.subscription_windows = 2_000_000;
    let config_path = root.path().join("ohlcv.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();

    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers: Vec<Option<Process>> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        servers.push(Some(spawn(i, dir.path(), &config_path)));
        // The first one takes the lock before the others look.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let addrs: Vec<String> = servers.iter().flatten().map(|p| p.addr.clone()).collect();
    // Replicas refuse writes naming where the builder says it serves; system.cluster lists
    // every server by that location.
    for replica in [1, 2] {
        assert_refused_naming(&addrs[replica], 0).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = sorted_column(
            &mut client(&addrs[2]).await,
            "select address || ' ' || role from system.cluster",
        )
        .await;
        let want = [
            format!("{} builder", advertised(0)),
            format!("{} replica", advertised(1)),
            format!("{} replica", advertised(2)),
        ];
        if listed == want {
            break;
        }
        assert!(Instant::now() < deadline, "system.cluster lists {listed:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Live subscriptions on the builder (killed below) and on a replica.
    let watched: Vec<Watched> = [0, 2]
        .iter()
        .map(|&i| Watched::start(addrs[i].clone()))
        .collect();
    let mut acked: Vec<Trade> = Vec::new();
    let mut unacked: Vec<Trade> = Vec::new();
    let mut seen = [0i64; 3];
    let mut builder = 0usize;
    let mut killed_at: Option<Instant> = None;
    let mut failover = None;
    // (when a build's commit had landed, BTC trades built by then): every answer must show
    // at least what was built two poll intervals before it was asked.
    let mut builds: Vec<(Instant, i64)> = Vec::new();
    let btc_acked = |acked: &Vec<Trade>| acked.len() as i64 / 2;
    // A moment mid-ingest, and what every server answers as of it once all have followed.
    let mut moment: Option<i64> = None;
    let mut then: Option<i64> = None;
    for n in 0..60 {
        // Ingest one batch into the builder; replicas refuse with the builder's name.
        let batch = batch_of(n);
        let sent = match connect(&addrs[builder]).await {
            Some(mut on) if n == 25 => {
                // SIGKILL of the builder while a batch is on its way in: its outcome is
                // whatever the reply says (an error if the reply was lost).
                assert!(
                    seen.iter().all(|s| *s > 0),
                    "every server followed the builds: {seen:?}"
                );
                let rows = trade_batch(&batch);
                let sending = tokio::spawn(async move { ingest_trades(&mut on, rows).await });
                tokio::time::sleep(Duration::from_millis(5)).await;
                let mut dead = servers[builder].take().unwrap();
                dead.child.kill().unwrap();
                dead.child.wait().unwrap();
                killed_at = Some(Instant::now());
                sending.await.unwrap().map_err(|e| e.to_string())
            }
            Some(mut on) => {
                let sent = ingest_trades(&mut on, trade_batch(&batch)).await;
                if sent.is_ok() && n % 5 == 4 {
                    admin(&addrs[builder])
                        .await
                        .trigger_build(TriggerBuildRequest {
                            timeframes: vec!["1m".into()],
                        })
                        .await
                        .unwrap();
                    builds.push((Instant::now(), btc_acked(&acked) + BTC_PER_BATCH));
                }
                sent.map_err(|e| e.to_string())
            }
            None => Err("the builder is gone".to_string()),
        };
        match sent {
            Ok(_) => acked.extend(batch),
            Err(e) => {
                assert!(killed_at.is_some(), "ingest refused with no failover: {e}");
                unacked.extend(batch);
            }
        }
        // Every live server answers, and its answers only grow.
        for (i, addr) in addrs.iter().enumerate() {
            if servers[i].is_none() {
                continue;
            }
            let got = number(&mut client(addr).await, TRADED)
                .await
                .unwrap_or_else(|| panic!("server {i} did not answer"));
            assert!(
                got >= seen[i],
                "server {i} went back from {} to {got}",
                seen[i]
            );
            seen[i] = got;

            // Its cached answer is the tables at one snapshot (whole batches) no older than
            // two poll intervals.
            let asked = Instant::now();
            let btc = number(&mut client(addr).await, TRADED_BTC)
                .await
                .unwrap_or_else(|| panic!("server {i} did not answer candles()"));
            let due = asked.checked_sub(Duration::from_millis(2 * POLL_MS));
            let floor = builds
                .iter()
                .filter(|(at, _)| due.is_some_and(|due| *at <= due))
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(0);
            let sent = (acked.len() + unacked.len()) as i64 / 2;
            assert!(
                btc % BTC_PER_BATCH == 0 && btc >= floor && btc <= sent,
                "server {i} answered {btc} BTC trades: not whole batches between what was \
                 built two poll intervals before ({floor}) and what was sent ({sent})"
            );
        }
        if n == 12 {
            moment = Some(chrono::Utc::now().timestamp_micros());
        }
        if n == 20 {
            then = Some(as_of_everywhere(&addrs, &servers, moment.unwrap()).await);
        }
        if let (Some(at), None) = (killed_at, failover) {
            // Who builds now: the replica that accepts a write.
            for (i, addr) in addrs.iter().enumerate() {
                if servers[i].is_none() {
                    continue;
                }
                let accepted = admin(addr)
                    .await
                    .trigger_build(TriggerBuildRequest {
                        timeframes: vec!["1m".into()],
                    })
                    .await;
                if accepted.is_ok() {
                    builder = i;
                    failover = Some(at.elapsed());
                    builds.push((Instant::now(), btc_acked(&acked)));
                    // The other survivor now names the new builder.
                    let other = (0..3).find(|&j| j != i && servers[j].is_some()).unwrap();
                    assert_refused_naming(&addrs[other], i).await;
                    break;
                }
            }
            assert!(
                at.elapsed() < Duration::from_secs(20),
                "no replica took the lock within 20 s"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failover = failover.expect("a replica took over");
    eprintln!(
        "failover to server {builder} in {failover:?}; {} trades acknowledged, {} not",
        acked.len(),
        unacked.len()
    );
    assert!(
        failover < Duration::from_millis(10 * POLL_MS + 5_000),
        "failover took {failover:?}"
    );

    // Everything built on the new builder; both survivors converge on the same answer.
    admin(&addrs[builder])
        .await
        .trigger_build(TriggerBuildRequest {
            timeframes: Timeframe::ALL.iter().map(|t| t.to_string()).collect(),
        })
        .await
        .unwrap();
    let want = number(&mut client(&addrs[builder]).await, TRADED)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_millis(20 * POLL_MS + 10_000);
    for (i, addr) in addrs.iter().enumerate() {
        if servers[i].is_none() {
            continue;
        }
        loop {
            let got = number(&mut client(addr).await, TRADED).await.unwrap();
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "server {i} stuck at {got}, builder at {want}"
            );
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }
    // The replica's subscription went on through the failover: its candles are what
    // candles() answers. The builder's ended with an error; resumed on a survivor from the
    // last candle it saw, it holds the same.
    let want_btc = number(&mut client(&addrs[2]).await, TRADED_BTC)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while watched[1].traded() != want_btc {
        assert!(
            Instant::now() < deadline,
            "the replica's subscription holds {} BTC trades, candles() {want_btc}",
            watched[1].traded()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (last_seen, error) = watched[0]
        .ended()
        .expect("the killed builder's stream ended");
    eprintln!("the builder's subscription ended with: {error}");
    let resumed = Watched::resume(addrs[builder].clone(), &watched[0], last_seen);
    let deadline = Instant::now() + Duration::from_secs(20);
    while resumed.candles() != watched[1].candles() {
        assert!(
            Instant::now() < deadline,
            "the resumed subscription differs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The past reads the same on the survivors, after the failover, and it is the past.
    let then = then.unwrap();
    assert_eq!(
        as_of_everywhere(&addrs, &servers, moment.unwrap()).await,
        then
    );
    let now = number(&mut client(&addrs[builder]).await, TRADED_BTC)
        .await
        .unwrap();
    assert!(then > 0 && then < now, "as of mid-ingest {then}, now {now}");
    for p in servers.iter_mut().flatten() {
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }

    // No acknowledged trade lost, none stored twice; the tables equal a clean rebuild of what
    // is stored (a batch whose reply the kill swallowed may have landed).
    let data = tempfile::tempdir().unwrap();
    let mut check = config.clone();
    check.data_dir = data.path().to_path_buf();
    let d = Deployment {
        writer: writer_for(&check).await,
        config: check,
        dir: data,
    };
    let ids: Vec<String> = d
        .sql("select trade_id from ohlcv.market.trades")
        .await
        .iter()
        .flat_map(|b| {
            let ids = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
            ids.as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let stored: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(stored.len(), ids.len(), "a trade was stored twice");
    for t in &acked {
        assert!(stored.contains(&t.id), "acknowledged trade {} lost", t.id);
    }
    let all: Vec<Trade> = acked
        .into_iter()
        .chain(unacked.into_iter().filter(|t| stored.contains(&t.id)))
        .collect();
    assert_eq!(all.len(), ids.len(), "a stored trade nobody sent");
    d.assert_bars_equal_trades(&all, &Timeframe::ALL, "after failover")
        .await;
    drop(seaweed);
}
