//! The builder end to end on real tables: all five timeframes equal a reference computed from
//! the trades, across split loads, late and duplicate trades; reruns change nothing; late data
//! revises exactly the affected bars.

mod common;

use std::collections::BTreeMap;

use common::trades::*;
use common::*;
use ohlcv_server::bars::rollup;
use ohlcv_server::build::{self, BuildSettings};
use ohlcv_server::storage::read::read_range;
use ohlcv_server::storage::{TableKind, TimeRange};
use ohlcv_server::timeframe::Timeframe;
use proptest::prelude::*;

const GRACE: i64 = 5 * MIN;

async fn build_all(d: &Deployment, now: i64) -> Vec<build::BuildReport> {
    let mut reports = Vec::new();
    for tf in Timeframe::ALL {
        reports.push(
            build::build(
                &d.writer,
                tf,
                now,
                BuildSettings {
                    grace_us: GRACE,
                    ..BuildSettings::default()
                },
            )
            .await
            .unwrap(),
        );
    }
    reports
}

async fn stored(d: &Deployment, tf: Timeframe) -> BTreeMap<Key, RefBar> {
    let (_, rows) = read_range(d.storage(), TableKind::Bars(tf), TimeRange::ALL)
        .await
        .unwrap();
    table_bars(&rows)
}

/// Windows of `tf` that are final at `now`: for 1m/5m, ended a grace ago; above, every 1m
/// child is final.
fn persisted(tf: Timeframe, now: i64) -> impl Fn(&Key) -> bool {
    let m1_cutoff = Timeframe::M1.window_start(now - GRACE);
    let own_cutoff = tf.window_start(now - GRACE);
    move |k: &Key| match tf {
        Timeframe::M1 | Timeframe::M5 => k.2 < own_cutoff,
        _ => k.2 + tf.micros() <= m1_cutoff,
    }
}

async fn assert_tables_match(d: &Deployment, trades: &[Trade], now: i64, what: &str) {
    for tf in Timeframe::ALL {
        let keep = persisted(tf, now);
        let want: BTreeMap<Key, RefBar> = reference(trades, tf.micros())
            .into_iter()
            .filter(|(k, _)| keep(k))
            .collect();
        assert_bars_match(&format!("{what} {tf}"), &stored(d, tf).await, &want);
    }
    // And each stored timeframe is the rollup of the stored 1m table.
    let (_, m1) = read_range(d.storage(), TableKind::Bars(Timeframe::M1), TimeRange::ALL)
        .await
        .unwrap();
    for tf in &Timeframe::ALL[1..] {
        let keep = persisted(*tf, now);
        let rolled = table_bars(&[rollup(&m1, tf.micros(), 0, 0).unwrap()])
            .into_iter()
            .filter(|(k, _)| keep(k))
            .collect();
        let mut got = stored(d, *tf).await;
        got.values_mut().for_each(|b| b.revision = 0);
        assert_bars_match(&format!("{what} rollup(1m) vs {tf}"), &got, &rolled);
    }
}

fn arb_trades() -> impl Strategy<Value = Vec<Trade>> {
    // Few series, timestamps on and around window edges, ties on ts, and re-delivered copies.
    let ts = prop_oneof![
        (0i64..200).prop_map(|m| T0 + m * MIN), // exactly on 1m edges
        (0i64..200, -2i64..=2).prop_map(|(m, d)| T0 + m * MIN + d), // a microsecond around them
        (0i64..(200 * MIN)).prop_map(|t| T0 + t),
        (0i64..3).prop_map(|h| T0 + DAY + h * 60 * MIN), // the next day, on hour edges
    ];
    let one = (0usize..2, 0usize..2, ts, 1u32..50, 1u32..30, any::<bool>());
    (
        prop::collection::vec(one, 1..120),
        prop::collection::vec(any::<prop::sample::Index>(), 0..30),
    )
        .prop_map(|(rows, copies)| {
            // Ids are unique per trade; numeric text of varying length, so that ties on ts are
            // broken by text order ("10" < "9").
            let mut trades: Vec<Trade> = rows
                .into_iter()
                .enumerate()
                .map(|(i, (e, s, ts, p, q, buy))| Trade {
                    exchange: ["kraken", "okx"][e].to_string(),
                    symbol: ["BTC-USD", "ETH-USD"][s].to_string(),
                    id: i.to_string(),
                    ts,
                    price: p as f64 * 0.5,
                    qty: q as f64 * 0.01,
                    buy,
                })
                .collect();
            let originals = trades.len();
            for c in copies {
                trades.push(trades[c.index(originals)].clone());
            }
            trades
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn five_tables_equal_the_reference_across_split_loads(
        trades in arb_trades(),
        splits in prop::collection::vec(0usize..3, 160),
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let d = Deployment::new().await;
            // Out-of-order arrival: each trade goes to one of three loads, built in between with
            // a clock that has moved past part of the data.
            let mut loaded = Vec::new();
            for (step, now) in [(0, T0 + 60 * MIN), (1, T0 + 150 * MIN), (2, T0 + 2 * DAY)] {
                let part: Vec<Trade> = trades
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| splits[*i] == step)
                    .map(|(_, t)| t.clone())
                    .collect();
                if !part.is_empty() {
                    load(&d, &part).await;
                    loaded.extend(part);
                }
                build_all(&d, now).await;
                assert_tables_match(&d, &loaded, now, &format!("after load {step}")).await;
            }
        });
    }
}

async fn snapshots(d: &Deployment) -> Vec<Option<i64>> {
    let mut v = Vec::new();
    for tf in Timeframe::ALL {
        v.push(d.snapshot(TableKind::Bars(tf)).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerunning_or_reloading_changes_nothing() {
    let d = Deployment::new().await;
    let trades: Vec<Trade> = (0..300)
        .map(|i| {
            trade(
                "kraken",
                "BTC-USD",
                &i.to_string(),
                T0 + i * 7 * 1_000_000,
                100.0 + (i % 11) as f64,
                0.5,
            )
        })
        .collect();
    load(&d, &trades).await;
    let now = T0 + 2 * DAY; // every window final, 1d included
    build_all(&d, now).await;
    let before = snapshots(&d).await;
    assert!(before.iter().all(Option::is_some));

    // No new trades: no new snapshot anywhere.
    let reports = build_all(&d, now + MIN).await;
    assert_eq!(snapshots(&d).await, before);
    assert!(
        reports.iter().all(|r| r.new + r.revised == 0),
        "{reports:?}"
    );

    // The same file loaded again: duplicates only, no bar changes.
    load(&d, &trades).await;
    let reports = build_all(&d, now + 2 * MIN).await;
    assert!(
        reports.iter().all(|r| r.new + r.revised == 0),
        "{reports:?}"
    );
    assert_eq!(snapshots(&d).await, before);
    assert_tables_match(&d, &trades, now + 2 * MIN, "after reload").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hours_late_trades_revise_exactly_the_affected_bars_everywhere() {
    let d = Deployment::new().await;
    let mut trades: Vec<Trade> = Vec::new();
    for i in 0..600 {
        let sym = if i % 2 == 0 { "BTC-USD" } else { "ETH-USD" };
        trades.push(trade(
            "okx",
            sym,
            &i.to_string(),
            T0 + i * 30 * 1_000_000,
            50.0 + (i % 7) as f64,
            1.0,
        ));
    }
    load(&d, &trades).await;
    let now = T0 + DAY + 10 * MIN; // the whole day is final, 1d included
    build_all(&d, now).await;
    let before: Vec<_> = {
        let mut v = Vec::new();
        for tf in Timeframe::ALL {
            v.push(stored(&d, tf).await);
        }
        v
    };

    // Three hours later, two trades arrive for 00:10:30 BTC (a new high) and 01:00:00 ETH.
    let late = vec![
        trade(
            "okx",
            "BTC-USD",
            "late-1",
            T0 + 10 * MIN + 30_000_000,
            999.0,
            2.0,
        ),
        trade("okx", "ETH-USD", "late-2", T0 + 60 * MIN, 1.0, 2.0),
    ];
    load(&d, &late).await;
    trades.extend(late.clone());
    let later = now + 3 * 60 * MIN;
    let reports = build_all(&d, later).await;
    assert_tables_match(&d, &trades, later, "after late trades").await;

    for (i, tf) in Timeframe::ALL.into_iter().enumerate() {
        let after = stored(&d, tf).await;
        let affected: Vec<Key> = late
            .iter()
            .map(|t| (t.exchange.clone(), t.symbol.clone(), tf.window_start(t.ts)))
            .collect();
        for (k, bar) in &after {
            let expected_revision = if affected.contains(k) { 1 } else { 0 };
            if before[i].contains_key(k) || affected.contains(k) {
                assert_eq!(bar.revision, expected_revision, "{tf} {k:?}");
            }
        }
        assert_eq!(reports[i].revised, 2, "{tf}: {:?}", reports[i]);
        if matches!(tf, Timeframe::M1 | Timeframe::M5) {
            assert_eq!(reports[i].late_revisions, 2, "{tf}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_inside_the_grace_period_wait_for_it() {
    let d = Deployment::new().await;
    let t = trade("kraken", "BTC-USD", "1", T0 + 30 * 1_000_000, 10.0, 1.0);
    load(&d, std::slice::from_ref(&t)).await;
    // The window ends at T0+1m; with a 5 minute grace it is final from T0+6m.
    build_all(&d, T0 + 6 * MIN - 1).await;
    assert!(stored(&d, Timeframe::M1).await.is_empty());
    build_all(&d, T0 + 6 * MIN).await;
    assert_eq!(stored(&d, Timeframe::M1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_rebuilds_a_range_and_nothing_else() {
    let d = Deployment::new().await;
    let mut trades: Vec<Trade> = (0..240)
        .map(|i| {
            trade(
                "kraken",
                "SOL-USD",
                &i.to_string(),
                T0 + i * 30 * 1_000_000,
                20.0 + (i % 5) as f64,
                1.0,
            )
        })
        .collect();
    load(&d, &trades).await;
    let now = T0 + DAY + 10 * MIN;
    build_all(&d, now).await;
    let before = snapshots(&d).await;

    // Over unchanged trades a backfill writes nothing.
    let range = TimeRange::new(Some(T0), Some(T0 + 60 * MIN));
    for tf in Timeframe::ALL {
        let r = build::backfill(&d.writer, tf, range, now).await.unwrap();
        assert_eq!(r.new + r.revised, 0, "{tf}: {r:?}");
    }
    assert_eq!(snapshots(&d).await, before);

    // Trades slipped in for 00:20 and 01:30; backfilling the first hour repairs only that hour.
    let late = vec![
        trade("kraken", "SOL-USD", "x1", T0 + 20 * MIN + 1, 99.0, 3.0),
        trade("kraken", "SOL-USD", "x2", T0 + 90 * MIN, 1.0, 3.0),
    ];
    load(&d, &late).await;
    let m1 = build::backfill(&d.writer, Timeframe::M1, range, now)
        .await
        .unwrap();
    assert_eq!((m1.new, m1.revised), (0, 1), "{m1:?}");
    let h1 = build::backfill(&d.writer, Timeframe::H1, range, now)
        .await
        .unwrap();
    assert_eq!(h1.revised, 1, "{h1:?}");
    let stored_m1 = stored(&d, Timeframe::M1).await;
    let key = |t: i64| ("kraken".to_string(), "SOL-USD".to_string(), t);
    assert_eq!(stored_m1[&key(T0 + 20 * MIN)].high, 99.0);
    assert_eq!(
        stored_m1[&key(T0 + 90 * MIN)].low,
        20.0,
        "outside the range: untouched"
    );
    trades.push(late[0].clone());
    let want = reference(&trades, Timeframe::M1.micros());
    assert_eq!(
        stored_m1[&key(T0 + 20 * MIN)].count,
        want[&key(T0 + 20 * MIN)].count
    );
}
