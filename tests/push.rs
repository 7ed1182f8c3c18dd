//! Live candles pushed to subscribers, through real clients: Flight `DoExchange` (Rust
//! `arrow-flight`) and a Flight SQL statement whose result stays open
//! (`select * from live_candles(...)`). Every ingested trade reaches every subscriber of its
//! series as an updated candle equal to what `candles()` answers then; builds arrive as
//! `final`, late trades as `revised`; a subscriber that stops reading is dropped without
//! delaying the others; limits and bad requests are refused with the right codes.

mod common;

use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{FlightClient, FlightData, FlightDescriptor};
use common::server::{fetch, ingest_trades, options, subscribe as exchange, Server};
use common::trades::{trade, trade_batch, Trade};
use common::{Deployment, DAY, MIN, T0};
use futures::StreamExt;
use serde_json::json;
use tonic::transport::Channel;

/// The test servers' clock.
const NOW: i64 = T0 + 3 * DAY;

/// One pushed candle: series, window start, close, volume, trade count, final, change.
#[derive(Debug, Clone, PartialEq)]
struct Pushed {
    symbol: String,
    window: i64,
    close: f64,
    volume: f64,
    trades: i64,
    is_final: bool,
    change: String,
}

fn pushed(batch: &RecordBatch) -> Vec<Pushed> {
    let col = |name: &str| batch.column_by_name(name).unwrap();
    let symbol = col("symbol").as_string::<i32>();
    let window = col("window_start").as_primitive::<TimestampMicrosecondType>();
    let close = col("close").as_primitive::<Float64Type>();
    let volume = col("volume").as_primitive::<Float64Type>();
    let trades = col("trade_count").as_primitive::<Int64Type>();
    let is_final = col("is_final").as_boolean();
    let change = col("change").as_string::<i32>();
    (0..batch.num_rows())
        .map(|i| Pushed {
            symbol: symbol.value(i).to_string(),
            window: window.value(i),
            close: close.value(i),
            volume: volume.value(i),
            trades: trades.value(i),
            is_final: is_final.value(i),
            change: change.value(i).to_string(),
        })
        .collect()
}

/// A Flight SQL statement whose result stays open.
async fn statement(channel: Channel, sql: &str) -> FlightRecordBatchStream {
    let mut client = FlightSqlServiceClient::new(channel);
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    client.do_get(ticket).await.unwrap()
}

/// The next candles pushed on `stream` (skipping empty batches), or none within `wait`.
async fn next(stream: &mut FlightRecordBatchStream, wait: Duration) -> Vec<Pushed> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Vec::new(),
            Ok(Some(Ok(batch))) if batch.num_rows() > 0 => return pushed(&batch),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
            Ok(None) => panic!("subscription ended"),
        }
    }
}

/// Pushed candles until `done` says the collected ones are complete.
async fn until(
    stream: &mut FlightRecordBatchStream,
    what: &str,
    done: impl Fn(&[Pushed]) -> bool,
) -> Vec<Pushed> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(&got) {
        assert!(Instant::now() < deadline, "{what}: only {got:?}");
        got.extend(next(stream, Duration::from_millis(200)).await);
    }
    got
}

/// What `candles()` answers for the window of `window` now: (close, volume, trades, final).
async fn candle_now(
    client: &mut FlightSqlServiceClient<Channel>,
    symbol: &str,
    timeframe: &str,
    window: i64,
) -> Option<(f64, f64, i64, bool)> {
    candle_in(client, symbol, timeframe, window, "").await
}

/// [`candle_now`] with more options (`, tz => '...'`).
async fn candle_in(
    client: &mut FlightSqlServiceClient<Channel>,
    symbol: &str,
    timeframe: &str,
    window: i64,
    options: &str,
) -> Option<(f64, f64, i64, bool)> {
    let iso = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let sql = format!(
        "select close, volume, trade_count, is_final from candles('kraken', '{symbol}', \
         '{timeframe}', '{}', '{}'{options})",
        iso(window),
        iso(window + 1)
    );
    let batches = fetch(client, &sql).await;
    let b = batches.iter().find(|b| b.num_rows() > 0)?;
    Some((
        b.column(0).as_primitive::<Float64Type>().value(0),
        b.column(1).as_primitive::<Float64Type>().value(0),
        b.column(2).as_primitive::<Int64Type>().value(0),
        b.column(3).as_boolean().value(0),
    ))
}

fn values(p: &Pushed) -> (f64, f64, i64, bool) {
    (p.close, p.volume, p.trades, p.is_final)
}

fn subscription(symbols: &[&str], timeframe: &str) -> serde_json::Value {
    json!({
        "series": symbols.iter().map(|s| json!({"exchange": "kraken", "symbol": s})).collect::<Vec<_>>(),
        "timeframe": timeframe,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trade_reaches_every_subscriber_as_candles_answers_it() {
    let d = Deployment::new().await;
    let server = Server::start_with(&d, options()).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let mut btc = exchange(server.channel().await, subscription(&["BTC-USD"], "1m")).await;
    let mut both = exchange(
        server.channel().await,
        subscription(&["BTC-USD", "ETH-USD"], "1m"),
    )
    .await;
    let mut sql = statement(
        server.channel().await,
        "select * from live_candles('kraken', 'BTC-USD', '1m')",
    )
    .await;
    // Rolled up from 1m: quarter hours, and New York days.
    let mut quarter = exchange(server.channel().await, subscription(&["BTC-USD"], "15m")).await;
    let mut local_day = exchange(
        server.channel().await,
        json!({"series": [{"exchange": "kraken", "symbol": "BTC-USD"}], "timeframe": "1d",
               "tz": "America/New_York"}),
    )
    .await;
    let start = NOW - 20 * MIN;
    let mut sent: Vec<Trade> = Vec::new();
    for i in 0..16 {
        let symbol = if i % 4 == 3 { "ETH-USD" } else { "BTC-USD" };
        let t = trade(
            "kraken",
            symbol,
            &format!("t{i}"),
            start + i * 50_000_000,
            100.0 + i as f64,
            1.0 + (i % 3) as f64,
        );
        ingest_trades(&mut client, trade_batch(std::slice::from_ref(&t)))
            .await
            .unwrap();
        sent.push(t.clone());
        let window = t.ts - t.ts.rem_euclid(MIN);
        let want = candle_now(&mut client, symbol, "1m", window).await.unwrap();
        let subscribers: Vec<(&str, &mut FlightRecordBatchStream)> = if symbol == "BTC-USD" {
            vec![("btc", &mut btc), ("both", &mut both), ("sql", &mut sql)]
        } else {
            vec![("both", &mut both)]
        };
        for (who, stream) in subscribers {
            let got = next(stream, Duration::from_secs(10)).await;
            assert_eq!(got.len(), 1, "{who} after trade {i}: {got:?}");
            assert_eq!(
                (got[0].symbol.as_str(), got[0].window),
                (symbol, window),
                "{who}"
            );
            assert_eq!(got[0].change, "live", "{who}");
            assert_eq!(values(&got[0]), want, "{who}: the candle candles() answers");
        }
        if symbol == "BTC-USD" {
            for (timeframe, zone, stream) in [
                ("15m", "", &mut quarter),
                ("1d", ", tz => 'America/New_York'", &mut local_day),
            ] {
                let got = next(stream, Duration::from_secs(10)).await;
                assert_eq!(got.len(), 1, "{timeframe}: {got:?}");
                assert!(got[0].window <= t.ts && t.ts - got[0].window < DAY);
                let want = candle_in(&mut client, symbol, timeframe, got[0].window, zone).await;
                assert_eq!(Some(values(&got[0])), want, "{timeframe}");
            }
        }
    }
    // A trade out of order, into an earlier live window: only that candle changes.
    let early = trade("kraken", "BTC-USD", "early", start + 65_000_000, 77.0, 0.5);
    ingest_trades(&mut client, trade_batch(std::slice::from_ref(&early)))
        .await
        .unwrap();
    sent.push(early);
    let got = next(&mut btc, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].window, got[0].change.as_str()),
        (start + MIN, "live")
    );
    assert_eq!(
        Some(values(&got[0])),
        candle_now(&mut client, "BTC-USD", "1m", start + MIN).await
    );
    for stream in [&mut both, &mut sql] {
        assert_eq!(next(stream, Duration::from_secs(10)).await.len(), 1);
    }
    // Nothing of another series reached a subscriber of one.
    assert!(next(&mut btc, Duration::from_millis(300)).await.is_empty());
    // Counted (other tests of this binary count too: at least these).
    let metrics = ohlcv_server::metrics::metrics();
    assert!(metrics.subscribers.get() >= 5);
    let counted = metrics
        .subscription_updates
        .with_label_values(&["sent"])
        .get();
    assert!(counted >= 12 * 3 + 4, "{counted}");

    // A build persists the windows: each arrives as final, with the same values.
    d.build_all(NOW).await;
    let btc_windows: std::collections::BTreeSet<i64> = sent
        .iter()
        .filter(|t| t.symbol == "BTC-USD")
        .map(|t| t.ts - t.ts.rem_euclid(MIN))
        .collect();
    for (who, stream) in [("btc", &mut btc), ("sql", &mut sql)] {
        let got = until(stream, who, |got| {
            got.iter().filter(|p| p.change == "final").count() >= btc_windows.len()
        })
        .await;
        for p in &got {
            assert_eq!(p.change, "final", "{who}: {p:?}");
            assert!(p.is_final);
            assert_eq!(
                Some(values(p)),
                candle_now(&mut client, "BTC-USD", "1m", p.window).await
            );
        }
    }

    // A late trade in a persisted window shows at the next build, as a revision.
    let late = trade("kraken", "BTC-USD", "late", start + 10_000_000, 90.0, 5.0);
    ingest_trades(&mut client, trade_batch(std::slice::from_ref(&late)))
        .await
        .unwrap();
    d.build_all(NOW).await;
    let got = until(&mut btc, "revision", |got| {
        got.iter().any(|p| p.change == "revised")
    })
    .await;
    let revised: Vec<_> = got.iter().filter(|p| p.change == "revised").collect();
    assert_eq!(revised.len(), 1, "{got:?}");
    assert_eq!(revised[0].window, start);
    assert_eq!(
        Some(values(revised[0])),
        candle_now(&mut client, "BTC-USD", "1m", start).await
    );

    // A new subscriber starts from the candles as they stand, and only the latest `last`.
    let mut late_comer = exchange(
        server.channel().await,
        json!({"series": [{"exchange": "kraken", "symbol": "BTC-USD"}], "timeframe": "1m",
               "last": 3}),
    )
    .await;
    let first = next(&mut late_comer, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 3, "{first:?}");
    assert!(first.iter().all(|p| p.change == "snapshot" && p.is_final));
    let newest: Vec<i64> = btc_windows.iter().rev().take(3).rev().copied().collect();
    assert_eq!(first.iter().map(|p| p.window).collect::<Vec<_>>(), newest);
    server.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_dropped_and_delays_no_one() {
    let d = Deployment::new().await;
    let mut opts = options();
    let stall = Duration::from_secs(5);
    opts.push.stall_timeout = stall;
    let server = Server::start_with(&d, opts).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let symbols: Vec<String> = (0..150).map(|i| format!("S{i}-USD")).collect();
    let names: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let mut healthy = exchange(server.channel().await, subscription(&names, "1m")).await;
    let mut stalled = exchange(server.channel().await, subscription(&names, "1m")).await;
    // The stalled one reads its first message, then nothing. Rounds go on until the server
    // has dropped it (this binary's only stall), and five more.
    let dropped = || {
        ohlcv_server::metrics::metrics()
            .subscribers_dropped
            .with_label_values(&["stalled"])
            .get()
    };
    let before = dropped();
    let mut slowest = Duration::ZERO;
    let mut after_drop = 0;
    let begun = Instant::now();
    for round in 0..1000 {
        if dropped() > before {
            after_drop += 1;
            if after_drop > 5 {
                break;
            }
        }
        assert!(begun.elapsed() < Duration::from_secs(120), "never dropped");
        let trades: Vec<Trade> = symbols
            .iter()
            .map(|s| {
                trade(
                    "kraken",
                    s,
                    &format!("{s}-{round}"),
                    NOW - 200 * MIN + round * MIN,
                    100.0,
                    1.0,
                )
            })
            .collect();
        ingest_trades(&mut client, trade_batch(&trades))
            .await
            .unwrap();
        let sent = Instant::now();
        let got = until(&mut healthy, "a healthy subscriber", |got| {
            got.len() >= symbols.len()
        })
        .await;
        assert!(got
            .iter()
            .all(|p| p.window == NOW - 200 * MIN + round * MIN));
        slowest = slowest.max(sent.elapsed());
    }
    eprintln!("slowest round to the healthy subscriber: {slowest:?}");
    // Had it waited for the stalled one, it would have waited until that one was dropped.
    assert!(slowest < stall, "the healthy subscriber waited {slowest:?}");
    // The stalled one finds, once it reads again, what was buffered and then why it ended.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        assert!(
            Instant::now() < deadline,
            "the stalled subscriber was never dropped"
        );
        match tokio::time::timeout(Duration::from_secs(5), stalled.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(arrow_flight::error::FlightError::Tonic(status)))) => break *status,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(status.message().contains("read nothing"), "{status}");
    server.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_limited_and_bad_ones_refused() {
    let d = Deployment::new().await;
    let mut opts = options();
    opts.push.max_per_user = 2;
    let server = Server::start_with(&d, opts).await;
    let one = subscription(&["BTC-USD"], "1m");
    let mut first = exchange(server.channel().await, one.clone()).await;
    let _second = statement(
        server.channel().await,
        "select window_start, close, change from live_candles('kraken', 'ETH-USD', '5m')",
    )
    .await;
    assert!(next(&mut first, Duration::from_millis(100))
        .await
        .is_empty());
    let code = |r: Result<FlightRecordBatchStream, arrow_flight::error::FlightError>| match r {
        Err(arrow_flight::error::FlightError::Tonic(s)) => (s.code(), s.message().to_string()),
        other => panic!("{:?}", other.map(|_| "a stream")),
    };
    let mut client = FlightClient::new(server.channel().await);
    let attempt = |command: String| FlightData {
        flight_descriptor: Some(FlightDescriptor::new_cmd(command)),
        ..Default::default()
    };
    let third = client
        .do_exchange(futures::stream::iter([Ok(attempt(one.to_string()))]))
        .await;
    let (c, m) = code(third);
    assert_eq!(c, tonic::Code::ResourceExhausted, "{m}");
    assert!(m.contains("max_subscriptions_per_user"), "{m}");
    // A seat is given back when its client goes.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = client
            .do_exchange(futures::stream::iter([Ok(attempt(one.to_string()))]))
            .await;
        if again.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the seat was never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (bad, want) in [
        ("{not json".to_string(), "subscription is JSON"),
        (subscription(&["BTC-USD"], "7x").to_string(), "timeframe"),
        (subscription(&[], "1m").to_string(), "at least one series"),
    ] {
        let (c, m) = code(
            client
                .do_exchange(futures::stream::iter([Ok(attempt(bad))]))
                .await,
        );
        assert_eq!(c, tonic::Code::InvalidArgument, "{m}");
        assert!(m.contains(want), "{m}");
    }
    let mut sql = FlightSqlServiceClient::new(server.channel().await);
    let err = sql
        .execute(
            "select count(*) from live_candles('kraken', 'BTC-USD', '1m')".to_string(),
            None,
        )
        .await
        .unwrap_err();
    let arrow_flight::error::FlightError::Tonic(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("streams changes"), "{status}");
    server.shutdown_and_wait().await;
}

/// Subscriptions are held to the same users as queries: none without a login, a reader's
/// with its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_need_a_login() {
    let d = Deployment::new().await;
    let server = Server::start_with(&d, common::server::options_with_users()).await;
    let mut anonymous = FlightClient::new(server.channel().await);
    let first = |command: &serde_json::Value| FlightData {
        flight_descriptor: Some(FlightDescriptor::new_cmd(command.to_string())),
        ..Default::default()
    };
    let command = subscription(&["BTC-USD"], "1m");
    let refused = anonymous
        .do_exchange(futures::stream::iter([Ok(first(&command))]))
        .await;
    match refused {
        Err(arrow_flight::error::FlightError::Tonic(s)) => {
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s}")
        }
        other => panic!("{:?}", other.map(|_| "a stream")),
    }
    let mut login = FlightSqlServiceClient::new(server.channel().await);
    let token = login.handshake("rita", "rita-pw").await.unwrap();
    let mut reader = FlightClient::new(server.channel().await);
    reader
        .add_header(
            "authorization",
            &format!("Bearer {}", String::from_utf8(token.to_vec()).unwrap()),
        )
        .unwrap();
    let mut stream = reader
        .do_exchange(futures::stream::iter([Ok(first(&command))]))
        .await
        .unwrap();
    // No candle yet: the first batch is the first change, a trade a writer ingests.
    let mut writer = FlightSqlServiceClient::new(server.channel().await);
    writer.handshake("will", "will-pw").await.unwrap();
    let t = trade("kraken", "BTC-USD", "w1", NOW - 10 * MIN, 10.0, 1.0);
    ingest_trades(&mut writer, trade_batch(&[t])).await.unwrap();
    let got = next(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].change, "live");
    server.shutdown_and_wait().await;
}
