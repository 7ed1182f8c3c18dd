//! Retention across a year of bars with an injected clock: exactly the expired partitions go,
//! in every table, what is built from a table is never left without its source, and no file
//! is left that nothing references.

mod common;

use std::collections::HashMap;

use arrow::array::AsArray;
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use common::trades::{load, trade};
use common::*;
use ohlcv_server::build::{self, retention, BuildSettings};
use ohlcv_server::config::RetentionConfig;
use ohlcv_server::storage::TableKind;
use ohlcv_server::timeframe::Timeframe;

async fn count_before(d: &Deployment, table: &str, boundary: i64) -> (i64, i64) {
    let b = d
        .sql(&format!(
            "select count(*), count(*) filter (where arrow_cast(window_start, 'Int64') < {boundary}) \
             from ohlcv.market.{table}"
        ))
        .await;
    let c = |i: usize| b[0].column(i).as_primitive::<Int64Type>().value(0);
    (c(0), c(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_of_bars_keeps_exactly_each_tables_horizon() {
    let d = Deployment::new().await;
    // Snapshot ages and file ages are wall-clock, so the year ends now.
    let wall = chrono::Utc::now().timestamp_micros();
    let start = (wall - 400 * DAY).div_euclid(DAY) * DAY;
    let trades: Vec<_> = (0..400 * 4)
        .map(|i| {
            trade(
                "kraken",
                "BTC-USD",
                &i.to_string(),
                start + i * 6 * 3_600_000_000,
                100.0 + (i % 50) as f64,
                1.0,
            )
        })
        .collect();
    load(&d, &trades).await;
    let now = wall + 2 * DAY;
    for tf in Timeframe::ALL {
        build::build(&d.writer, tf, now, BuildSettings::default())
            .await
            .unwrap();
    }
    let policy = RetentionConfig::default().policy().unwrap();
    let keep_days = [
        (Timeframe::M1, 90),
        (Timeframe::M5, 180),
        (Timeframe::M30, 365),
    ];
    let mut expected = HashMap::new();
    for (tf, days) in keep_days {
        // Day partitions ending at or before the cutoff go: everything before its day.
        let boundary = (now - days * DAY).div_euclid(DAY) * DAY;
        expected.insert(
            tf,
            (boundary, count_before(&d, &tf.table_name(), boundary).await),
        );
    }
    let hour_rows = count_before(&d, "ohlcv_1h", 0).await.0;
    let day_rows = count_before(&d, "ohlcv_1d", 0).await.0;

    let dry = retention::plan(&d.writer, &policy, now).await.unwrap();
    let snapshot_1m = d.snapshot(TableKind::Bars(Timeframe::M1)).await;
    assert_eq!(
        d.snapshot(TableKind::Bars(Timeframe::M1)).await,
        snapshot_1m,
        "a dry run changes nothing"
    );
    let actions = retention::apply(&d.writer, &policy, now).await.unwrap();
    assert_eq!(
        dry.iter()
            .map(|a| (&a.table, &a.partitions))
            .collect::<Vec<_>>(),
        actions
            .iter()
            .map(|a| (&a.table, &a.partitions))
            .collect::<Vec<_>>(),
        "the dry run lists what goes"
    );
    for (tf, (boundary, (total, dropped))) in &expected {
        assert!(*dropped > 0, "{tf}: the year reaches past the horizon");
        let action = actions.iter().find(|a| a.table == tf.table_name()).unwrap();
        assert_eq!(action.rows as i64, *dropped, "{tf}");
        let after = d
            .sql(&format!(
                "select count(*), min(window_start) from ohlcv.market.{}",
                tf.table_name()
            ))
            .await;
        let n = after[0].column(0).as_primitive::<Int64Type>().value(0);
        let first = after[0]
            .column(1)
            .as_primitive::<TimestampMicrosecondType>()
            .value(0);
        assert_eq!(
            n,
            total - dropped,
            "{tf}: exactly the expired partitions are gone"
        );
        assert_eq!(first, *boundary, "{tf}: the first kept day is whole");
        assert!(action.snapshots_expired > 0, "{tf}: old snapshots expired");
        assert!(action.files_deleted > 0, "{tf}: dropped files deleted");
    }
    assert_eq!(
        count_before(&d, "ohlcv_1h", 0).await.0,
        hour_rows,
        "1h keeps 2 years"
    );
    assert_eq!(
        count_before(&d, "ohlcv_1d", 0).await.0,
        day_rows,
        "1d keeps 5 years"
    );
    let trades_left = d.sql("select count(*) from ohlcv.market.trades").await;
    assert_eq!(
        trades_left[0]
            .column(0)
            .as_primitive::<Int64Type>()
            .value(0),
        1600,
        "trades have no retention"
    );

    // Nothing unreachable is left behind.
    let at = chrono::DateTime::from_timestamp_micros(now).unwrap();
    for kind in TableKind::all() {
        let sweep = d
            .writer
            .sweep_orphans(kind, at, chrono::Duration::zero(), true)
            .await
            .unwrap();
        assert!(
            sweep.deleted.is_empty(),
            "{}: {:?}",
            kind.name(),
            sweep.deleted
        );
    }

    // Rollups never rebuild from what retention removed: a rebuild changes nothing.
    for tf in [Timeframe::M30, Timeframe::H1, Timeframe::D1] {
        let report = build::backfill(&d.writer, tf, ohlcv_server::storage::TimeRange::ALL, now)
            .await
            .unwrap();
        assert_eq!((report.new, report.revised), (0, 0), "{tf}: {report:?}");
    }
    // A second run has nothing to drop.
    let again = retention::plan(&d.writer, &policy, now).await.unwrap();
    assert!(again.iter().all(|a| a.partitions.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_minute_bars_wait_for_the_rollups_built_from_them() {
    let d = Deployment::new().await;
    let wall = chrono::Utc::now().timestamp_micros();
    let start = (wall - 200 * DAY).div_euclid(DAY) * DAY;
    let trades: Vec<_> = (0..200)
        .map(|i| {
            trade(
                "kraken",
                "BTC-USD",
                &i.to_string(),
                start + i * DAY,
                100.0,
                1.0,
            )
        })
        .collect();
    load(&d, &trades).await;
    let now = wall + 2 * DAY;
    // Only 1m is built: no rollup has consumed it yet, so none of it may go.
    build::build(&d.writer, Timeframe::M1, now, BuildSettings::default())
        .await
        .unwrap();
    let policy = RetentionConfig::default().policy().unwrap();
    let plan = retention::plan(&d.writer, &policy, now).await.unwrap();
    let m1 = plan.iter().find(|a| a.table == "ohlcv_1m").unwrap();
    assert!(m1.partitions.is_empty(), "{m1:?}");
    for tf in [Timeframe::M30, Timeframe::H1, Timeframe::D1] {
        build::build(&d.writer, tf, now, BuildSettings::default())
            .await
            .unwrap();
    }
    let plan = retention::plan(&d.writer, &policy, now).await.unwrap();
    let m1 = plan.iter().find(|a| a.table == "ohlcv_1m").unwrap();
    let kept_from_day = (now - 90 * DAY).div_euclid(DAY);
    assert_eq!(
        m1.partitions.len() as i64,
        kept_from_day - start / DAY,
        "every day before the 90-day horizon, once the rollups have it: {m1:?}"
    );
}

/// `[retention] history_days` is how far back `as_of` works: the expiry keeps the snapshot
/// that was current at the start of the window (committed before it), so every moment in the
/// window still reads, and a moment before it fails naming the oldest moment held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_keeps_every_snapshot_the_history_window_needs() {
    use ohlcv_server::storage::history::snapshot_at;
    let d = Deployment::new().await;
    let wall = chrono::Utc::now().timestamp_micros();
    let start = (wall - DAY).div_euclid(DAY) * DAY;
    let m1 = TableKind::Bars(Timeframe::M1);
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(30));
    let mut built = Vec::new();
    let mut between = Vec::new();
    for round in 0..3 {
        load(
            &d,
            &[trade(
                "kraken",
                "BTC-USD",
                &format!("r{round}"),
                start + round * 60_000_000,
                100.0,
                1.0,
            )],
        )
        .await;
        build::build(
            &d.writer,
            Timeframe::M1,
            wall + DAY,
            BuildSettings::default(),
        )
        .await
        .unwrap();
        built.push(d.snapshot(m1).await.unwrap());
        pause().await;
        between.push(chrono::Utc::now().timestamp_micros());
        pause().await;
    }
    // The window starts between the second and the third commit; the bars are all kept.
    let config = RetentionConfig {
        days: Default::default(),
        history_days: 1,
        snapshot_keep_hours: 0,
    };
    let now = between[1] + DAY;
    let actions = retention::apply(&d.writer, &config.policy().unwrap(), now)
        .await
        .unwrap();
    let action = actions.iter().find(|a| a.table == "ohlcv_1m").unwrap();
    assert_eq!(action.snapshots_expired, 1, "{action:?}");

    let table = d.storage().table(m1).await.unwrap();
    let metadata = table.metadata();
    let mut kept: Vec<i64> = metadata.snapshots.keys().copied().collect();
    kept.sort_unstable();
    let mut want = built[1..].to_vec();
    want.sort_unstable();
    assert_eq!(
        kept, want,
        "the first snapshot went, the one current at the cutoff stayed"
    );
    assert_eq!(
        snapshot_at(metadata, "ohlcv_1m", between[1]).unwrap(),
        Some(built[1])
    );
    assert_eq!(
        snapshot_at(metadata, "ohlcv_1m", between[2]).unwrap(),
        Some(built[2])
    );
    let oldest = *metadata.snapshots[&built[1]].timestamp_ms() * 1000;
    match snapshot_at(metadata, "ohlcv_1m", between[0]) {
        Err(e @ ohlcv_server::storage::Error::HistoryExpired { .. }) => {
            let text = e.to_string();
            assert!(text.contains("[retention] history_days"), "{text}");
            assert!(
                text.contains(&ohlcv_server::timeframe::format_us(oldest)),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
}
