//! The hot candle path against the real server through the Rust Flight SQL client: cached
//! answers equal table scans after every kind of commit, live bars equal what the next build
//! persists, `candles()` rollups equal bars computed from trades, gap fill and New York days.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::TimestampMicrosecondType;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimeUnit};
use arrow_flight::sql::client::FlightSqlServiceClient;
use chrono::TimeZone;
use common::server::{deployment_with_bars, options, Server};
use common::trades::{assert_bars_match, load, reference, table_bars, trade, Key, RefBar, Trade};
use common::{Deployment, DAY, MIN, T0};
use futures::TryStreamExt;
use ohlcv_server::build::{self, BuildSettings};
use ohlcv_server::clock::ManualClock;
use ohlcv_server::server::ServeOptions;
use ohlcv_server::storage::{TableKind, TimeRange};
use ohlcv_server::timeframe::Timeframe;
use tonic::transport::Channel;

const HOUR: i64 = 60 * MIN;

fn iso(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Server options with the given clock and no schedules: the test runs every build itself.
fn quiet(clock: &ManualClock) -> ServeOptions {
    let mut o = options();
    o.clock = Arc::new(clock.clone());
    o.schedules = Vec::new();
    o
}

async fn sql(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<RecordBatch> {
    let info = client
        .execute(sql.to_string(), None)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
        out.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    out
}

async fn build_all(d: &Deployment, now: i64) {
    for tf in Timeframe::ALL {
        build::build(&d.writer, tf, now, BuildSettings::default())
            .await
            .unwrap();
    }
}

/// A candle as the tests compare it, with its flags.
#[derive(Debug, Clone, PartialEq)]
struct Candle {
    bar: RefBar,
    end: i64,
    is_final: bool,
    is_synthetic: bool,
}

fn candles_of(batches: &[RecordBatch]) -> BTreeMap<Key, Candle> {
    let mut out = BTreeMap::new();
    for b in batches {
        let s = |n: &str| b.column_by_name(n).unwrap().as_string::<i32>().clone();
        let t = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
        };
        let f = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone()
        };
        let flag = |n: &str| b.column_by_name(n).unwrap().as_boolean().clone();
        let (ex, sym, ws, we, first, last) = (
            s("exchange"),
            s("symbol"),
            t("window_start"),
            t("window_end"),
            t("first_trade_ts"),
            t("last_trade_ts"),
        );
        let count = b
            .column_by_name("trade_count")
            .unwrap()
            .as_primitive::<Int64Type>()
            .clone();
        let (is_final, synthetic) = (flag("is_final"), flag("is_synthetic"));
        for r in 0..b.num_rows() {
            let bar = RefBar {
                open: f("open").value(r),
                high: f("high").value(r),
                low: f("low").value(r),
                close: f("close").value(r),
                volume: f("volume").value(r),
                quote: f("quote_volume").value(r),
                buy: f("buy_volume").value(r),
                count: count.value(r),
                first: if first.is_null(r) { 0 } else { first.value(r) },
                last: if last.is_null(r) { 0 } else { last.value(r) },
                revision: 0,
            };
            out.insert(
                (ex.value(r).into(), sym.value(r).into(), ws.value(r)),
                Candle {
                    bar,
                    end: we.value(r),
                    is_final: is_final.value(r),
                    is_synthetic: synthetic.value(r),
                },
            );
        }
    }
    out
}

fn bars_only(c: &BTreeMap<Key, Candle>) -> BTreeMap<Key, RefBar> {
    c.iter().map(|(k, c)| (k.clone(), c.bar.clone())).collect()
}

fn without_revision(mut bars: BTreeMap<Key, RefBar>) -> BTreeMap<Key, RefBar> {
    bars.values_mut().for_each(|b| b.revision = 0);
    bars
}

async fn cache_stat(client: &mut FlightSqlServiceClient<Channel>, column: &str) -> i64 {
    let rows = sql(client, &format!("select {column} from system.cache_stats")).await;
    rows[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// Trades of two series every 20 s over `[from, to)`, prices wandering (ids unique per `from`).
fn trades_between(from: i64, to: i64) -> Vec<Trade> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut t = from;
    while t < to {
        for (n, symbol) in ["BTC-USD", "ETH-USD"].iter().enumerate() {
            let price = 100.0 + ((i * 7919 + n * 31) % 997) as f64 / 10.0;
            let id = format!("{from}-{i}-{n}");
            out.push(trade(
                "kraken",
                symbol,
                &id,
                t + n as i64,
                price,
                0.5 + (i % 5) as f64,
            ));
        }
        i += 1;
        t += 20_000_000;
    }
    out
}

/// Runs `select` (which the server answers without a plan) and the same statement with a
/// `true` conjunct the fast path does not recognise (so DataFusion plans it), and asserts the
/// two answers are equal, row for row and column for column. `where` may be empty.
async fn assert_fast_equals_planned(
    client: &mut FlightSqlServiceClient<Channel>,
    select: &str,
    filter: &str,
    tail: &str,
) -> usize {
    let fast = format!("{select} {filter} {tail}");
    let planned = if filter.is_empty() {
        format!("{select} where true {tail}")
    } else {
        format!(
            "{select} {} and true {tail}",
            filter.replacen("where", "where (", 1) + ")"
        )
    };
    // The server runs in this process: its counter shows the fast statement was answered as
    // a candle read (other tests only add to it, so a miss here cannot pass unnoticed alone).
    let reads = || {
        ohlcv_server::metrics::metrics()
            .statements
            .with_label_values(&["candle_read"])
            .get()
    };
    let before = reads();
    let fast_rows = sql(client, &fast).await;
    assert!(
        reads() >= before + 2,
        "{fast}: not answered as a candle read"
    );
    let planned_rows = sql(client, &planned).await;
    let count = |rows: &[RecordBatch]| rows.iter().map(RecordBatch::num_rows).sum::<usize>();
    if count(&planned_rows) == 0 {
        assert_eq!(count(&fast_rows), 0, "{fast}: no rows");
        return 0;
    }
    let concat = |rows: &[RecordBatch]| {
        let schema = rows[0].schema();
        arrow::compute::concat_batches(&schema, rows).unwrap()
    };
    let (a, b) = (concat(&fast_rows), concat(&planned_rows));
    let names = |b: &RecordBatch| -> Vec<String> {
        b.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    };
    assert_eq!(names(&a), names(&b), "{fast}: columns");
    assert_eq!(a.columns(), b.columns(), "{fast}: rows");
    a.num_rows()
}

/// Every fast shape of one series (stock tables and `candles()`, projections, ranges, newest
/// first, limits) equals what DataFusion's plan answers.
async fn assert_shapes_equal_plans(
    client: &mut FlightSqlServiceClient<Channel>,
    symbol: &str,
    from: i64,
    to: i64,
) {
    let series = format!("where exchange = 'kraken' and symbol = '{symbol}'");
    for tf in Timeframe::ALL {
        let table = format!("ohlcv_{tf}");
        let (from, to) = (iso(tf.window_start(from)), iso(to));
        let mut rows = 0;
        for (select, filter, tail) in [
            (
                format!("select * from {table}"),
                series.clone(),
                "order by window_start",
            ),
            (
                format!("select * from market.{table}"),
                series.clone(),
                "order by window_start desc limit 5",
            ),
            (
                format!("select window_start, close as c, volume from {table}"),
                format!("{series} and window_start >= '{from}' and window_start < '{to}'"),
                "order by window_start desc",
            ),
            (
                format!("select * from {table}"),
                format!("{series} and window_start > '{from}' and window_start <= now()"),
                "order by window_start limit 3",
            ),
            (
                format!("select symbol, window_start, high from {table}"),
                format!("{series} and window_start between cast('{from}' as timestamp) and '{to}'"),
                "order by window_start",
            ),
            (
                format!("select * from {table}"),
                format!("{series} and window_start >= now() - interval '100000 days'"),
                "order by window_start desc limit 100000",
            ),
            (
                format!("select * from candles('kraken', '{symbol}', '{tf}', '{from}', '{to}')"),
                String::new(),
                "order by window_start desc limit 4",
            ),
            (
                format!(
                    "select window_start, open, is_final from candles('kraken', '{symbol}', \
                     '{tf}', now() - interval '100000 days', now() + interval '1 day')"
                ),
                String::new(),
                "order by window_start",
            ),
        ] {
            rows += assert_fast_equals_planned(client, &select, &filter, tail).await;
        }
        assert!(rows > 0, "{tf}: the shapes found bars");
    }
}

/// The same series through the cache (stock SQL on the server) and straight from the table.
async fn assert_cache_equals_table(
    d: &Deployment,
    client: &mut FlightSqlServiceClient<Channel>,
    from: i64,
    what: &str,
) {
    for tf in Timeframe::ALL {
        let q = format!(
            "select * from ohlcv_{tf} where exchange = 'kraken' and symbol = 'BTC-USD' \
             and window_start >= '{}' order by window_start",
            iso(tf.window_start(from))
        );
        let served = table_bars(&sql(client, &q).await);
        let direct = table_bars(
            &d.sql(&q.replace("from ohlcv_", "from ohlcv.market.ohlcv_"))
                .await,
        );
        assert!(!direct.is_empty(), "{what} {tf}: the table has bars");
        assert_eq!(served, direct, "{what}: {tf} served equals the table");
    }
    assert_shapes_equal_plans(client, "BTC-USD", from, from + 10 * DAY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_equal_table_scans_after_every_kind_of_build() {
    let d = Deployment::new().await;
    // An hour into a day: the day before is complete, so every table has bars.
    let now = T0 + 3 * DAY + HOUR;
    let clock = ManualClock::at(now);
    let server = Server::start_with(&d, quiet(&clock)).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let from = now - 6 * HOUR;
    let trades = trades_between(from, now - 10 * MIN);
    load(&d, &trades).await;

    // Incremental 1m/5m and batch 30m/1h/1d builds; the first reads load the entries.
    build_all(&d, now).await;
    assert_cache_equals_table(&d, &mut client, from, "first build").await;
    let misses = cache_stat(&mut client, "misses").await;
    assert_cache_equals_table(&d, &mut client, from, "again").await;
    assert_eq!(
        cache_stat(&mut client, "misses").await,
        misses,
        "second reads all hit"
    );
    assert!(cache_stat(&mut client, "hits").await >= 5);

    // A late trade revises persisted bars: the builder's commits move the entries along.
    let late_ts = from + 30 * MIN + 7_000_000;
    load(
        &d,
        &[trade("kraken", "BTC-USD", "late-1", late_ts, 999.0, 3.0)],
    )
    .await;
    build_all(&d, now).await;
    assert_cache_equals_table(&d, &mut client, from, "late revision").await;
    let q = format!(
        "select high, revision from ohlcv_1m where exchange = 'kraken' and symbol = 'BTC-USD' \
         and window_start = '{}'",
        iso(Timeframe::M1.window_start(late_ts))
    );
    let revised = sql(&mut client, &q).await;
    assert_eq!(
        revised[0].column(0).as_primitive::<Float64Type>().value(0),
        999.0
    );
    assert_eq!(
        revised[0]
            .column(1)
            .as_primitive::<arrow::datatypes::Int32Type>()
            .value(0),
        1
    );

    // A backfill rewrites a range from trades (another late trade nobody built yet).
    let late_ts = from + 90 * MIN;
    load(
        &d,
        &[trade("kraken", "BTC-USD", "late-2", late_ts, 1.0, 2.0)],
    )
    .await;
    let range = TimeRange::new(Some(from), Some(now));
    for tf in Timeframe::ALL {
        build::backfill(&d.writer, tf, range, now).await.unwrap();
    }
    assert_cache_equals_table(&d, &mut client, from, "backfill").await;

    // Compaction rewrites files without changing rows; retention commits too.
    for tf in Timeframe::ALL {
        build::compact_closed(
            &d.writer,
            TableKind::Bars(tf),
            now + 2 * DAY,
            BuildSettings::default(),
        )
        .await
        .unwrap();
    }
    assert_cache_equals_table(&d, &mut client, from, "compaction").await;

    // Invalidation through the admin service empties the cache; answers stay the same.
    let mut admin = ohlcv_server::admin::proto::admin_service_client::AdminServiceClient::new(
        server.channel().await,
    );
    let removed = admin
        .invalidate_cache(ohlcv_server::admin::proto::InvalidateCacheRequest {
            timeframe: "1m".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries_removed;
    assert!(removed >= 1);
    let stats = admin
        .get_cache_stats(ohlcv_server::admin::proto::GetCacheStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        stats.hits > 0 && stats.bytes > 0 && stats.hit_ratio > 0.0,
        "{stats:?}"
    );
    assert_cache_equals_table(&d, &mut client, from, "after invalidation").await;
    server.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_bars_equal_what_the_next_build_persists() {
    let d = Deployment::new().await;
    let now = T0 + 3 * DAY + 17 * MIN;
    let clock = ManualClock::at(now);
    let server = Server::start_with(&d, quiet(&clock)).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let from = now - 3 * HOUR;
    load(&d, &trades_between(from, now - 2 * MIN)).await;
    build_all(&d, now).await;
    // Trades after the build: not in any table yet.
    load(&d, &trades_between(now - 2 * MIN + 5_000_000, now)).await;

    let ask = |tf: &str| {
        format!(
            "select * from candles('kraken', 'ETH-USD', '{tf}', '{}', '{}')",
            iso(from),
            iso(now + HOUR)
        )
    };
    let mut before = BTreeMap::new();
    for tf in ["1m", "5m", "30m", "1h", "1d", "15m"] {
        let c = candles_of(&sql(&mut client, &ask(tf)).await);
        assert!(c.values().any(|c| !c.is_final), "{tf}: live bars exist");
        assert!(
            c.values().any(|c| c.is_final) || tf == "1d",
            "{tf}: final bars exist"
        );
        before.insert(tf, c);
    }
    // Every fast shape, live bars included, equals DataFusion's plan.
    assert_shapes_equal_plans(&mut client, "ETH-USD", from, now + HOUR).await;
    // The 1m live bars are exactly the trades' bars.
    let eth: Vec<Trade> = trades_between(from, now - 2 * MIN)
        .into_iter()
        .chain(trades_between(now - 2 * MIN + 5_000_000, now))
        .filter(|t| t.symbol == "ETH-USD")
        .collect();
    assert_bars_match(
        "1m candles",
        &bars_only(&before["1m"]),
        &reference(&eth, MIN),
    );

    // Time passes, builds persist everything: the same bars, now final.
    clock.set(now + 2 * HOUR);
    build_all(&d, now + 2 * HOUR).await;
    for (tf, live) in before {
        let after = candles_of(&sql(&mut client, &ask(tf)).await);
        let tf_parsed = tf.parse::<Timeframe>().ok();
        for (key, c) in &live {
            let a = &after[key];
            if tf_parsed.is_some_and(|t| {
                matches!(
                    t,
                    Timeframe::M1 | Timeframe::M5 | Timeframe::M30 | Timeframe::H1
                )
            }) || tf == "15m"
            {
                assert!(a.is_final, "{tf} {key:?} final after the build");
            }
            assert_eq!(
                a.bar, c.bar,
                "{tf} {key:?}: live bar equals the persisted one"
            );
        }
        if let Some(t) = tf_parsed.filter(|t| *t != Timeframe::D1) {
            let q = format!(
                "select * from ohlcv.market.ohlcv_{t} where symbol = 'ETH-USD' \
                 and window_start >= '{}'",
                iso(from)
            );
            let stored = without_revision(table_bars(&d.sql(&q).await));
            assert_eq!(stored, bars_only(&after), "{tf}: candles equal the table");
        }
    }

    // The same statement again and again, as a chart polls: answered from memory between two
    // commits, never past one. A trade committed between two identical queries (plain SQL
    // and a prepared statement) is in the second answer.
    let later = now + 2 * HOUR;
    let recent = format!(
        "select * from candles('kraken', 'ETH-USD', '1m', '{}', '{}')",
        iso(later - 10 * MIN),
        iso(later + HOUR)
    );
    let mut prepared = client.prepare(recent.clone(), None).await.unwrap();
    let mut run_prepared = async || {
        let info = prepared.execute().await.unwrap();
        let mut rows = Vec::new();
        for endpoint in info.endpoint {
            let stream = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
            rows.extend(stream.try_collect::<Vec<_>>().await.unwrap());
        }
        candles_of(&rows)
    };
    let volume = |c: &BTreeMap<Key, Candle>| c.values().map(|c| c.bar.volume).sum::<f64>();
    let mut plain = FlightSqlServiceClient::new(server.channel().await);
    let first = run_prepared().await;
    let kept = cache_stat(&mut plain, "answer_hits").await;
    assert_eq!(
        run_prepared().await,
        first,
        "nothing committed: the same answer"
    );
    assert_eq!(
        cache_stat(&mut plain, "answer_hits").await,
        kept + 1,
        "the repeat was answered with the kept answer"
    );
    let first_plain = candles_of(&sql(&mut plain, &recent).await);
    assert_eq!(first_plain, first);
    // A commit of other series (a trade of another symbol, and of the same symbol on
    // another exchange) leaves the kept answer valid: it is still used, and still right.
    for (exchange, symbol) in [("kraken", "BTC-USD"), ("binance", "ETH-USD")] {
        load(
            &d,
            &[trade(
                exchange,
                symbol,
                &format!("other-{exchange}"),
                later - 30_000_000,
                99.0,
                2.0,
            )],
        )
        .await;
        let hits = cache_stat(&mut plain, "answer_hits").await;
        assert_eq!(
            run_prepared().await,
            first,
            "a commit of {exchange}/{symbol} does not change this series"
        );
        assert_eq!(
            cache_stat(&mut plain, "answer_hits").await,
            hits + 1,
            "the kept answer survived a commit of {exchange}/{symbol}"
        );
    }
    for round in 1..=3 {
        let t = later - 20_000_000 + round;
        load(
            &d,
            &[trade(
                "kraken",
                "ETH-USD",
                &format!("late-{round}"),
                t,
                150.0,
                1.25,
            )],
        )
        .await;
        let expected = volume(&first) + 1.25 * round as f64;
        let again = candles_of(&sql(&mut plain, &recent).await);
        assert!(
            (volume(&again) - expected).abs() < 1e-9,
            "round {round}: plain SQL sees the trade"
        );
        let again = run_prepared().await;
        assert!(
            (volume(&again) - expected).abs() < 1e-9,
            "round {round}: prepared sees the trade"
        );
        let last = again.values().last().unwrap();
        assert_eq!(
            (last.bar.close, last.is_final),
            (150.0, false),
            "round {round}"
        );
    }
    server.shutdown_and_wait().await;
}

/// Bars of `trades` in windows of `width` starting at `origin`.
fn reference_from(trades: &[Trade], width: i64, origin: i64) -> BTreeMap<Key, RefBar> {
    let shifted: Vec<Trade> = trades
        .iter()
        .map(|t| Trade {
            ts: t.ts - origin,
            ..t.clone()
        })
        .collect();
    reference(&shifted, width)
        .into_iter()
        .map(|((e, s, w), mut b)| {
            b.first += origin;
            b.last += origin;
            ((e, s, w + origin), b)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_gap_fill_and_prepared_candles() {
    let d = Deployment::new().await;
    let clock = ManualClock::at(T0 + 3 * DAY);
    let server = Server::start_with(&d, quiet(&clock)).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    // Three weeks, one trade every 37 minutes (T0 is a Monday).
    let from = T0 - 21 * DAY;
    let trades: Vec<Trade> = (0..(21 * 1440 / 37))
        .map(|i| {
            let price = 50.0 + ((i * 7919) % 1013) as f64 / 10.0;
            trade(
                "kraken",
                "BTC-USD",
                &i.to_string(),
                from + i * 37 * MIN + 11_000_000,
                price,
                1.0 + (i % 3) as f64,
            )
        })
        .collect();
    load(&d, &trades).await;
    build_all(&d, T0 + 3 * DAY).await;

    for (tf, width, origin) in [
        ("15m", 15 * MIN, 0),
        ("4h", 4 * HOUR, 0),
        ("1w", 7 * DAY, 4 * DAY),
    ] {
        let q = format!(
            "select * from candles('kraken', 'BTC-USD', '{tf}', '{}', '{}')",
            iso(from),
            iso(T0)
        );
        let got = candles_of(&sql(&mut client, &q).await);
        assert!(got.values().all(|c| c.is_final && !c.is_synthetic));
        assert!(
            got.iter().all(|((_, _, s), c)| c.end - s == width),
            "{tf} widths"
        );
        assert_bars_match(
            tf,
            &bars_only(&got),
            &reference_from(&trades, width, origin),
        );
    }

    // Gap fill: 1m candles over two hours hold one candle per minute, empty ones flat at the
    // previous close (also before the first trade of the range).
    let (s, e) = (from + 5 * HOUR + 3 * MIN, from + 7 * HOUR);
    let q = format!(
        "select * from candles('kraken', 'BTC-USD', '1m', '{}', '{}', fill => 'previous')",
        iso(s),
        iso(e)
    );
    let filled = candles_of(&sql(&mut client, &q).await);
    assert_eq!(filled.len(), 117);
    let real = reference(&trades, MIN);
    let mut previous = real
        .range(..("kraken".to_string(), "BTC-USD".to_string(), s))
        .next_back()
        .map(|(_, b)| b.close)
        .unwrap();
    for ((_, _, w), c) in &filled {
        match real.get(&("kraken".to_string(), "BTC-USD".to_string(), *w)) {
            Some(b) => {
                assert!(!c.is_synthetic);
                assert_eq!(c.bar.close, b.close);
                previous = b.close;
            }
            None => {
                assert!(c.is_synthetic && c.is_final, "{w}");
                let p = previous;
                assert_eq!(
                    (c.bar.open, c.bar.high, c.bar.low, c.bar.close),
                    (p, p, p, p)
                );
                assert_eq!((c.bar.volume, c.bar.count), (0.0, 0));
            }
        }
    }

    // Prepared statement with parameters, as ADBC and JDBC send it.
    let mut stmt = client
        .prepare("select * from candles($1, $2, $3, $4, $5)".into(), None)
        .await
        .unwrap();
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("$1", DataType::Utf8, true),
            Field::new("$2", DataType::Utf8, true),
            Field::new("$3", DataType::Utf8, true),
            Field::new("$4", ts(), true),
            Field::new("$5", ts(), true),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["kraken"])),
            Arc::new(StringArray::from(vec!["BTC-USD"])),
            Arc::new(StringArray::from(vec!["4h"])),
            Arc::new(TimestampMicrosecondArray::from(vec![from]).with_timezone("UTC")),
            Arc::new(TimestampMicrosecondArray::from(vec![T0]).with_timezone("UTC")),
        ],
    )
    .unwrap();
    stmt.set_parameters(params).unwrap();
    let info = stmt.execute().await.unwrap();
    let mut rows = Vec::new();
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
        rows.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    assert_bars_match(
        "prepared 4h",
        &bars_only(&candles_of(&rows)),
        &reference_from(&trades, 4 * HOUR, 0),
    );

    // The latest N candles before a time (chart libraries' count back): the tail of the
    // whole range, across the series' gaps (one trade every 37 minutes: 50 1m candles span
    // more than a day, found by widening the range), and exactly N windows with gap fill.
    // An end just after a window boundary (`now()` a few ms into a minute) counts back the
    // same: the range widens by windows, not by the end's offset into its window.
    let just_after = chrono::DateTime::from_timestamp_micros(T0 + 3_000)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for ((tf, n), end) in [("1m", 50usize), ("15m", 20), ("4h", 7)]
        .into_iter()
        .flat_map(|c| [(c, iso(T0)), (c, just_after.clone())])
    {
        let whole = candles_of(
            &sql(
                &mut client,
                &format!(
                    "select * from candles('kraken', 'BTC-USD', '{tf}', '{}', '{end}')",
                    iso(from),
                ),
            )
            .await,
        );
        let latest = candles_of(
            &sql(
                &mut client,
                &format!(
                    "select * from candles('kraken', 'BTC-USD', '{tf}', '1970-01-01', '{end}', last => {n})",
                ),
            )
            .await,
        );
        let tail: BTreeMap<Key, Candle> = whole.into_iter().rev().take(n).collect();
        assert_eq!(latest.len(), n, "{tf} before {end}");
        assert_eq!(latest, tail, "{tf}: the latest {n} before {end}");
    }
    let filled = candles_of(
        &sql(
            &mut client,
            &format!(
                "select * from candles('kraken', 'BTC-USD', '1m', '1970-01-01', '{}', fill => 'previous', last => 30)",
                iso(T0)
            ),
        )
        .await,
    );
    assert_eq!(filled.len(), 30);
    assert_eq!(filled.keys().next_back().unwrap().2, T0 - MIN);

    // Bad arguments are the caller's error.
    for bad in [
        "select * from candles('kraken', 'BTC-USD', '1m', '2024-01-01', '2024-01-02', last => 0)",
        "select * from candles('kraken', 'BTC-USD', '7x', '2024-01-01', '2024-01-02')",
        "select * from candles('kraken', 'BTC-USD', '1m', '2024-01-02', '2024-01-01')",
        "select * from candles('kraken', 'BTC-USD', '1m', '2024-01-01', '2024-01-02', tz => 'Mars/Olympus')",
        "select * from candles('kraken', 'BTC-USD', '1m')",
    ] {
        let err = client.execute(bad.to_string(), None).await.unwrap_err();
        let arrow_flight::error::FlightError::Tonic(status) = err else {
            panic!("{bad}: {err}")
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}: {status}");
    }
    server.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_york_days_and_weeks_across_dst() {
    let d = Deployment::new().await;
    let tz: chrono_tz::Tz = "America/New_York".parse().unwrap();
    let utc = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_micros()
    };
    let now = utc("2024-04-01T00:00:00Z");
    let clock = ManualClock::at(now);
    let server = Server::start_with(&d, quiet(&clock)).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    // Every 50 minutes from Monday 2024-03-04 to 2024-03-18 (DST starts 2024-03-10 in New York).
    let (from, to) = (utc("2024-03-04T00:00:00Z"), utc("2024-03-18T12:00:00Z"));
    let trades: Vec<Trade> = (0..(to - from) / (50 * MIN))
        .map(|i| {
            trade(
                "kraken",
                "BTC-USD",
                &i.to_string(),
                from + i * 50 * MIN,
                10.0 + (i % 17) as f64,
                1.0,
            )
        })
        .collect();
    load(&d, &trades).await;
    build_all(&d, now).await;

    let local_day = |t: i64| tz.timestamp_micros(t).unwrap().date_naive();
    let midnight = |date: chrono::NaiveDate| {
        tz.from_local_datetime(&date.and_hms_opt(0, 0, 0).unwrap())
            .earliest()
            .unwrap()
            .timestamp_micros()
    };
    for (tf, start_of) in [
        (
            "1d",
            Box::new(move |t: i64| midnight(local_day(t))) as Box<dyn Fn(i64) -> i64>,
        ),
        (
            "1w",
            Box::new(move |t: i64| {
                use chrono::Datelike;
                let day = local_day(t);
                midnight(day - chrono::Days::new(day.weekday().num_days_from_monday() as u64))
            }),
        ),
    ] {
        // Reference: trades grouped by local day (week), each group's bar computed by shifting
        // it onto one fixed window.
        let mut want: BTreeMap<Key, RefBar> = BTreeMap::new();
        let mut groups: BTreeMap<i64, Vec<Trade>> = BTreeMap::new();
        for t in &trades {
            groups.entry(start_of(t.ts)).or_default().push(t.clone());
        }
        for (start, group) in groups {
            let width = 30 * DAY;
            let bars = reference_from(&group, width, start);
            want.extend(bars);
        }
        let q = format!(
            "select * from candles('kraken', 'BTC-USD', '{tf}', '{}', '{}', tz => 'America/New_York')",
            iso(utc("2024-03-04T05:00:00Z")),
            iso(to)
        );
        let got = candles_of(&sql(&mut client, &q).await);
        want.retain(|(_, _, s), _| *s >= utc("2024-03-04T05:00:00Z") && *s < to);
        assert_bars_match(tf, &bars_only(&got), &want);
        for ((_, _, s), c) in &got {
            assert_eq!(start_of(*s), *s, "{tf} starts at local midnight");
            assert_eq!(start_of(c.end), c.end, "{tf} ends at local midnight");
        }
        if tf == "1d" {
            let dst = got
                .iter()
                .find(|((_, _, s), _)| *s == utc("2024-03-10T05:00:00Z"))
                .expect("the DST day");
            assert_eq!(dst.1.end - utc("2024-03-10T05:00:00Z"), 23 * HOUR);
        }
    }
    server.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_warms_the_series_queried_before() {
    let d = Deployment::new().await;
    let now = T0 + 3 * DAY + HOUR;
    let clock = ManualClock::at(now);
    load(&d, &trades_between(now - 3 * HOUR, now - 10 * MIN)).await;
    build_all(&d, now).await;
    let server = Server::start_with(&d, quiet(&clock)).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let q = format!(
        "select * from candles('kraken', 'BTC-USD', '5m', '{}', '{}')",
        iso(now - 2 * HOUR),
        iso(now)
    );
    let first = candles_of(&sql(&mut client, &q).await);
    assert_eq!(cache_stat(&mut client, "entries").await, 1);
    server.shutdown_and_wait().await;

    // The query counts were saved at shutdown: the new server loads that series by itself.
    let server = Server::start_with(&d, quiet(&clock)).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cache_stat(&mut client, "entries").await < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the cache was not warmed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(candles_of(&sql(&mut client, &q).await), first);
    assert_eq!(
        cache_stat(&mut client, "misses").await,
        0,
        "answered from the warmed entry"
    );
    server.shutdown_and_wait().await;
}

/// The status a statement fails with, whether at planning or while its rows are read.
async fn failure(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> tonic::Status {
    let err = match client.execute(sql.to_string(), None).await {
        Err(e) => e,
        Ok(info) => {
            let ticket = info.endpoint[0].ticket.clone().unwrap();
            match client.do_get(ticket).await {
                Err(e) => e,
                Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err(),
            }
        }
    };
    match err {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => panic!("{sql}: {other}"),
    }
}

/// `candles(..., as_of => t)` answers with the bars as the tables held them at `t`: a late
/// trade's revision is invisible before its commit and visible after; a moment before the
/// first build has no bars, and one older than the snapshots kept is refused, naming the
/// oldest moment still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_reads_the_bars_known_at_that_moment() {
    // Our tables are created without a snapshot: before the first build they held nothing.
    let before_any = chrono::Utc::now().timestamp_micros();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let d = deployment_with_bars().await;
    let clock = ManualClock::at(T0 + 2 * DAY);
    let server = Server::start_with(&d, quiet(&clock)).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let at = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let (start, end) = (iso(T0), iso(T0 + HOUR));
    let ask = |tf: &str, as_of: Option<i64>| match as_of {
        Some(t) => format!(
            "select * from candles('kraken', 'BTC-USD', '{tf}', '{start}', '{end}', as_of => '{}')",
            at(t)
        ),
        None => format!("select * from candles('kraken', 'BTC-USD', '{tf}', '{start}', '{end}')"),
    };
    let first_1m = candles_of(&sql(&mut client, &ask("1m", None)).await);
    let first_1h = candles_of(&sql(&mut client, &ask("1h", None)).await);
    assert_eq!(first_1m.len(), 60);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let t1 = chrono::Utc::now().timestamp_micros();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    // A late trade in the first minute revises its 1m bar and the hour.
    load(
        &d,
        &[trade("kraken", "BTC-USD", "late", T0 + 1_000, 90.0, 2.0)],
    )
    .await;
    build_all(&d, T0 + 2 * DAY).await;
    let revised_1m = candles_of(&sql(&mut client, &ask("1m", None)).await);
    assert_ne!(revised_1m, first_1m, "the late trade revised a bar");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let t2 = chrono::Utc::now().timestamp_micros();

    // As of t1: the bars as first built, for a stored and a rolled-up timeframe alike.
    assert_eq!(
        candles_of(&sql(&mut client, &ask("1m", Some(t1))).await),
        first_1m
    );
    assert_eq!(
        candles_of(&sql(&mut client, &ask("1h", Some(t1))).await),
        first_1h
    );
    // As of t2: the revised ones.
    assert_eq!(
        candles_of(&sql(&mut client, &ask("1m", Some(t2))).await),
        revised_1m
    );
    // Bound as a parameter of a prepared statement.
    let mut prepared = client
        .prepare(
            format!(
                "select * from candles('kraken', 'BTC-USD', '1m', '{start}', '{end}', as_of => $1)"
            ),
            None,
        )
        .await
        .unwrap();
    let param = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, false)])),
        vec![Arc::new(StringArray::from(vec![at(t1)]))],
    )
    .unwrap();
    prepared.set_parameters(param).unwrap();
    let info = prepared.execute().await.unwrap();
    let mut bound = Vec::new();
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
        bound.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    assert_eq!(candles_of(&bound), first_1m);
    // Stock SQL on a bar table as it stood then: by moment, and by the snapshot id that
    // system.snapshots names.
    let volumes = |batches: &[RecordBatch]| -> Vec<(i64, f64)> {
        batches
            .iter()
            .flat_map(|b| {
                let s = b.column(0).as_primitive::<TimestampMicrosecondType>();
                let v = b.column(1).as_primitive::<Float64Type>();
                (0..b.num_rows())
                    .map(|i| (s.value(i), v.value(i)))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let stock = |moment: String| {
        format!(
            "select window_start, volume from bars_as_of('ohlcv_1m', {moment}) \
             where exchange = 'kraken' and symbol = 'BTC-USD' order by window_start"
        )
    };
    let candle_volumes = |c: &BTreeMap<Key, Candle>| -> Vec<(i64, f64)> {
        c.iter().map(|(k, c)| (k.2, c.bar.volume)).collect()
    };
    let then = volumes(&sql(&mut client, &stock(format!("'{}'", at(t1)))).await);
    assert_eq!(then, candle_volumes(&first_1m));
    assert_eq!(then[0].1, 2.0);
    let now_rows = volumes(&sql(&mut client, &stock(format!("'{}'", at(t2)))).await);
    assert_eq!(now_rows, candle_volumes(&revised_1m));
    assert_eq!(now_rows[0].1, 4.0);
    let current = sql(
        &mut client,
        "select snapshot_id from system.snapshots where table_name = 'ohlcv_1m' and is_current",
    )
    .await;
    let current = current[0].column(0).as_primitive::<Int64Type>().value(0);
    assert_eq!(
        volumes(&sql(&mut client, &stock(current.to_string())).await),
        now_rows
    );
    assert!(volumes(&sql(&mut client, &stock(format!("'{}'", at(before_any)))).await).is_empty());
    // Before the first build the table held nothing.
    assert!(candles_of(&sql(&mut client, &ask("1m", Some(before_any))).await).is_empty());

    // Once the snapshots before the revision are expired, t1 is older than what is kept.
    d.writer
        .expire_snapshots(TableKind::Bars(Timeframe::M1), chrono::Utc::now(), 1)
        .await
        .unwrap();
    // The statement is recognised at once; the moment is looked up when it is read.
    let info = client.execute(ask("1m", Some(t1)), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let err = match client.do_get(ticket).await {
        Err(e) => e,
        Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err(),
    };
    let status = match err {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => panic!("{other}"),
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(
        status
            .message()
            .contains("older than the history ohlcv_1m keeps"),
        "{status}"
    );
    let refused = |status: tonic::Status, says: &str| {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert!(status.message().contains(says), "{status}");
    };
    refused(
        failure(&mut client, &stock(format!("'{}'", at(t1)))).await,
        "older than the history ohlcv_1m keeps",
    );
    refused(
        failure(&mut client, &stock("42".to_string())).await,
        "snapshot 42 is not in ohlcv_1m's history",
    );
    // The current snapshot is still there to read as of now.
    assert_eq!(
        candles_of(&sql(&mut client, &ask("1m", Some(t2))).await),
        revised_1m
    );
}
