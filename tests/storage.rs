//! Storage layer, end to end on a real SQLite catalog and local warehouse: every write path,
//! many-manifest upserts, crash leftovers, maintenance, pruning and the writer lock.

mod common;

use std::collections::{HashMap, HashSet};

use chrono::{Duration, Utc};
use common::*;
use ohlcv_server::config::Config;
use ohlcv_server::storage::files::write_data_files;
use ohlcv_server::storage::{Error, Listing, SnapshotTable, TableKind, TimeRange};
use ohlcv_server::timeframe::Timeframe;

const M1: Timeframe = Timeframe::M1;
const BARS: TableKind = TableKind::Bars(Timeframe::M1);

async fn live_files(d: &Deployment, kind: TableKind) -> Vec<String> {
    let table = d.storage().table(kind).await.unwrap();
    let mut files: Vec<String> = Listing::read(&table, kind, None, TimeRange::ALL)
        .await
        .unwrap()
        .files
        .iter()
        .map(|f| f.path().to_string())
        .collect();
    files.sort();
    files
}

fn day_bars(day: i64, symbol: &str, minutes: std::ops::Range<i64>, close: f64) -> Vec<Bar> {
    minutes
        .map(|m| bar("kraken", symbol, T0 + day * DAY + m * MIN, close + m as f64))
        .collect()
}

#[tokio::test]
async fn append_writes_one_sorted_file_per_day_and_reads_back() {
    let d = Deployment::new().await;
    let mut rows = day_bars(0, "BTC-USD", 0..30, 100.0);
    rows.extend(day_bars(1, "ETH-USD", 0..30, 10.0));
    rows.extend(day_bars(2, "BTC-USD", 1430..1440, 100.0));
    rows.reverse(); // input order must not matter
    let out = d
        .writer
        .append(BARS, &[bar_batch(M1, &rows)], HashMap::new())
        .await
        .unwrap();
    assert_eq!(out.files_added, 3);
    assert_eq!(out.rows_added, 70);
    assert_eq!(d.bars(M1).await, sorted(rows));
}

#[tokio::test]
async fn upsert_rewrites_only_files_holding_changed_keys() {
    let d = Deployment::new().await;
    let a = day_bars(0, "BTC-USD", 0..10, 100.0);
    let b = day_bars(0, "BTC-USD", 600..610, 200.0);
    let c = day_bars(1, "BTC-USD", 0..10, 300.0);
    for rows in [&a, &b, &c] {
        d.writer
            .append(BARS, &[bar_batch(M1, rows)], HashMap::new())
            .await
            .unwrap();
    }
    let before = live_files(&d, BARS).await;
    let parent = d.snapshot(BARS).await.unwrap();

    let changed = vec![
        bar("kraken", "BTC-USD", T0 + 5 * MIN, 999.0), // in file a
        bar("kraken", "BTC-USD", T0 + 700 * MIN, 555.0), // new key, day 0
        bar("kraken", "SOL-USD", T0 + 3 * DAY, 1.0),   // new key, new day
    ];
    let out = d
        .writer
        .upsert(BARS, &[bar_batch(M1, &changed)], HashMap::new())
        .await
        .unwrap();
    assert_eq!(
        out.files_removed, 1,
        "only the file holding the changed key"
    );
    assert_eq!(
        out.files_added, 2,
        "one rewritten day-0 file, one new day-3 file"
    );

    let after = live_files(&d, BARS).await;
    let kept: HashSet<_> = after.iter().collect();
    assert_eq!(
        before.iter().filter(|f| kept.contains(f)).count(),
        2,
        "files b and c are untouched"
    );

    let mut model = sorted([a, b, c].concat());
    upsert_model(&mut model, &changed);
    assert_eq!(d.bars(M1).await, model);

    let table = d.storage().table(BARS).await.unwrap();
    let snap = table.metadata().current_snapshot(None).unwrap().unwrap();
    assert_eq!(*snap.parent_snapshot_id(), Some(parent), "lineage is kept");
}

#[tokio::test]
async fn upsert_across_many_manifests_and_past_the_merge_threshold() {
    let d = Deployment::new().await;
    let mut model: Vec<Bar> = Vec::new();
    // 30 appends: 30 manifests, each with one small file over two days.
    for i in 0..30 {
        let rows = vec![
            bar("binance", "ETH-USD", T0 + i * MIN, i as f64),
            bar("binance", "ETH-USD", T0 + DAY + i * MIN, i as f64),
        ];
        d.writer
            .append(BARS, &[bar_batch(M1, &rows)], HashMap::new())
            .await
            .unwrap();
        model.extend(rows);
    }
    let table = d.storage().table(BARS).await.unwrap();
    assert_eq!(table.manifests(None, None).await.unwrap().len(), 30);

    // Keys spread over manifests 3, 11, 19 and 27, in both partitions.
    let changed: Vec<Bar> = [3, 11, 19, 27]
        .iter()
        .flat_map(|i| {
            [
                bar("binance", "ETH-USD", T0 + i * MIN, 1000.0 + *i as f64),
                bar("binance", "ETH-USD", T0 + DAY + i * MIN, 2000.0 + *i as f64),
            ]
        })
        .collect();
    let out = d
        .writer
        .upsert(BARS, &[bar_batch(M1, &changed)], HashMap::new())
        .await
        .unwrap();
    assert_eq!(out.files_removed, 8, "4 appends x 2 day files");
    upsert_model(&mut model, &changed);
    assert_eq!(d.bars(M1).await, model);

    // Past the merge threshold the manifest count stays bounded and nothing is lost.
    for i in 30..45 {
        let rows = vec![bar("binance", "ETH-USD", T0 + i * MIN, i as f64)];
        d.writer
            .upsert(BARS, &[bar_batch(M1, &rows)], HashMap::new())
            .await
            .unwrap();
        upsert_model(&mut model, &rows);
    }
    let table = d.storage().table(BARS).await.unwrap();
    assert!(table.manifests(None, None).await.unwrap().len() <= 33);
    assert_eq!(d.bars(M1).await, model);
}

#[tokio::test]
async fn replace_partitions_swaps_whole_days_and_refuses_stray_rows() {
    let d = Deployment::new().await;
    let kind = TableKind::Bars(Timeframe::H1);
    let tf = Timeframe::H1;
    let old: Vec<Bar> = (0..3)
        .flat_map(|day| {
            (0..24).map(move |h| bar("okx", "BTC-USD", T0 + day * DAY + h * 60 * MIN, 1.0))
        })
        .collect();
    d.writer
        .append(kind, &[bar_batch(tf, &old)], HashMap::new())
        .await
        .unwrap();
    let day1 = (T0 / DAY + 1) as i32;
    let new: Vec<Bar> = (0..2)
        .map(|h| bar("okx", "BTC-USD", T0 + DAY + h * 60 * MIN, 7.0))
        .collect();
    d.writer
        .replace_partitions(kind, &[day1], &[bar_batch(tf, &new)], HashMap::new())
        .await
        .unwrap();
    let mut expected: Vec<Bar> = old
        .iter()
        .filter(|b| b.2 < T0 + DAY || b.2 >= T0 + 2 * DAY)
        .cloned()
        .collect();
    expected.extend(new.clone());
    assert_eq!(d.bars(tf).await, sorted(expected.clone()));

    let before = d.snapshot(kind).await;
    let err = d
        .writer
        .replace_partitions(kind, &[day1], &[bar_batch(tf, &old)], HashMap::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidData { .. }), "{err}");
    assert_eq!(d.snapshot(kind).await, before, "nothing written");

    // Dropping a partition is a replace with no rows.
    let out = d
        .writer
        .replace_partitions(kind, &[day1], &[], HashMap::new())
        .await
        .unwrap();
    assert_eq!((out.files_added, out.files_removed), (0, 1));
    expected.retain(|b| b.2 < T0 + DAY || b.2 >= T0 + 2 * DAY);
    assert_eq!(d.bars(tf).await, sorted(expected));
}

#[tokio::test]
async fn properties_commit_atomically_with_data() {
    let d = Deployment::new().await;
    let props = HashMap::from([("ohlcv.trades-snapshot".to_string(), "123".to_string())]);
    let out = d
        .writer
        .append(BARS, &[bar_batch(M1, &day_bars(0, "X", 0..2, 1.0))], props)
        .await
        .unwrap();
    let table = d.storage().table(BARS).await.unwrap();
    assert_eq!(table.metadata().properties["ohlcv.trades-snapshot"], "123");
    assert_eq!(table.metadata().current_snapshot_id, out.snapshot_id);

    // Properties alone make no snapshot.
    d.writer
        .set_properties(
            BARS,
            HashMap::from([("ohlcv.trades-snapshot".to_string(), "124".to_string())]),
        )
        .await
        .unwrap();
    let table = d.storage().table(BARS).await.unwrap();
    assert_eq!(table.metadata().properties["ohlcv.trades-snapshot"], "124");
    assert_eq!(table.metadata().current_snapshot_id, out.snapshot_id);
}

#[tokio::test]
async fn interrupted_write_leaves_table_intact_and_its_files_are_swept() {
    let d = Deployment::new().await;
    let committed = day_bars(0, "BTC-USD", 0..5, 1.0);
    d.writer
        .append(BARS, &[bar_batch(M1, &committed)], HashMap::new())
        .await
        .unwrap();
    let snapshot = d.snapshot(BARS).await;

    // A write that dies after its files are on disk but before the commit.
    let table = d.storage().table(BARS).await.unwrap();
    let stray = write_data_files(
        &d.storage().store(),
        &table,
        BARS,
        &[bar_batch(M1, &day_bars(0, "ETH-USD", 0..5, 2.0))],
    )
    .await
    .unwrap();
    let stray_path = stray[0].file_path().clone();
    assert!(std::path::Path::new(&stray_path).exists());
    assert_eq!(d.snapshot(BARS).await, snapshot);
    assert_eq!(d.bars(M1).await, committed);

    let now = Utc::now();
    let young = d
        .writer
        .sweep_orphans(BARS, now, Duration::hours(1), false)
        .await
        .unwrap();
    assert!(young.deleted.is_empty() && young.too_young >= 1);
    assert!(
        std::path::Path::new(&stray_path).exists(),
        "too young to sweep"
    );

    let later = now + Duration::hours(2);
    let dry = d
        .writer
        .sweep_orphans(BARS, later, Duration::hours(1), true)
        .await
        .unwrap();
    assert!(dry.deleted.contains(&stray_path));
    assert!(
        std::path::Path::new(&stray_path).exists(),
        "dry run deletes nothing"
    );

    let swept = d
        .writer
        .sweep_orphans(BARS, later, Duration::hours(1), false)
        .await
        .unwrap();
    assert!(swept.deleted.contains(&stray_path));
    // Besides the stray file only superseded metadata files go.
    assert!(
        swept
            .deleted
            .iter()
            .all(|p| *p == stray_path || p.ends_with(".metadata.json")),
        "{:#?}",
        swept.deleted
    );
    assert!(!std::path::Path::new(&stray_path).exists());
    assert_eq!(d.bars(M1).await, committed, "committed data untouched");
}

#[tokio::test]
async fn expiry_then_sweep_leaves_exactly_the_reachable_files() {
    let d = Deployment::new().await;
    let mut model = Vec::new();
    for round in 0..5 {
        let rows = day_bars(0, "BTC-USD", 0..10, round as f64);
        d.writer
            .upsert(BARS, &[bar_batch(M1, &rows)], HashMap::new())
            .await
            .unwrap();
        upsert_model(&mut model, &rows);
    }
    let table = d.storage().table(BARS).await.unwrap();
    assert_eq!(table.metadata().snapshots.len(), 5);

    let future = Utc::now() + Duration::hours(1);
    let expired = d.writer.expire_snapshots(BARS, future, 2).await.unwrap();
    assert_eq!(expired.len(), 3);
    let table = d.storage().table(BARS).await.unwrap();
    assert_eq!(table.metadata().snapshots.len(), 2);

    let swept = d
        .writer
        .sweep_orphans(BARS, future, Duration::zero(), false)
        .await
        .unwrap();
    assert!(!swept.deleted.is_empty());
    assert_eq!(d.bars(M1).await, model);

    // What is left on disk is exactly what the sweep considered referenced.
    let location = d.storage().table_location(BARS);
    let on_disk = walk(std::path::Path::new(&location));
    assert_eq!(on_disk.len(), swept.referenced, "{on_disk:#?}");
    // Everything left is readable: time travel to the older kept snapshot works too.
    let older = *table
        .metadata()
        .snapshots
        .keys()
        .find(|id| Some(**id) != table.metadata().current_snapshot_id)
        .unwrap();
    let pinned = SnapshotTable::load(d.storage(), BARS, Some(older))
        .await
        .unwrap();
    assert_eq!(pinned.snapshot_id(), Some(older));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn time_range_queries_equal_a_full_scan_and_prune_files() {
    let d = Deployment::new().await;
    let mut all = Vec::new();
    for day in 0..6 {
        let rows: Vec<Bar> = (0..48)
            .map(|i| bar("kraken", "BTC-USD", T0 + day * DAY + i * 30 * MIN, i as f64))
            .collect();
        d.writer
            .append(BARS, &[bar_batch(M1, &rows)], HashMap::new())
            .await
            .unwrap();
        all.extend(rows);
    }
    let iso = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    };
    let ranges = [
        (T0 + DAY, T0 + 2 * DAY),                           // exactly one day
        (T0 + DAY - MIN, T0 + 2 * DAY + MIN),               // straddling midnights
        (T0 + 3 * DAY + 30 * MIN, T0 + 3 * DAY + 31 * MIN), // one bar
        (T0 - DAY, T0),                                     // before everything
    ];
    for (start, end) in ranges {
        let got = d
            .bars_where(
                M1,
                &format!(
                    "window_start >= TIMESTAMP '{}' and window_start < TIMESTAMP '{}'",
                    iso(start),
                    iso(end)
                ),
            )
            .await;
        let expected: Vec<Bar> = all
            .iter()
            .filter(|b| b.2 >= start && b.2 < end)
            .cloned()
            .collect();
        assert_eq!(got, sorted(expected), "range {start}..{end}");
    }
    // The pruning itself: a one-day range opens one file of six.
    let table = SnapshotTable::load(d.storage(), BARS, None).await.unwrap();
    let filter = datafusion::prelude::col("window_start")
        .gt_eq(datafusion::prelude::lit(
            datafusion::common::ScalarValue::TimestampMicrosecond(
                Some(T0 + DAY),
                Some("UTC".into()),
            ),
        ))
        .and(
            datafusion::prelude::col("window_start").lt(datafusion::prelude::lit(
                datafusion::common::ScalarValue::TimestampMicrosecond(
                    Some(T0 + 2 * DAY),
                    Some("UTC".into()),
                ),
            )),
        );
    assert_eq!(table.files_for(&[filter]).len(), 1);
}

#[tokio::test]
async fn concurrent_writers_never_lose_an_acknowledged_commit() {
    // Two processes' worth of writers on one catalog, each with its own lock dir, as if the
    // lock had been bypassed: the commit check must refuse the loser, never drop a write.
    let shared = tempfile::tempdir().unwrap();
    let config = |lock_dir: &std::path::Path| Config {
        data_dir: lock_dir.to_path_buf(),
        catalog: ohlcv_server::config::CatalogConfig {
            url: Some(format!(
                "sqlite://{}?mode=rwc",
                shared.path().join("catalog.db").display()
            )),
            warehouse: Some(shared.path().join("warehouse").display().to_string()),
            ..Default::default()
        },
        ..Config::default()
    };
    let (la, lb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = writer_for(&config(la.path())).await;
    let b = writer_for(&config(lb.path())).await;
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for round in 0..6i64 {
        let ra = vec![bar("a", "X", T0 + round * MIN, 1.0)];
        let rb = vec![bar("b", "X", T0 + round * MIN, 2.0)];
        let (ba, bb) = ([bar_batch(M1, &ra)], [bar_batch(M1, &rb)]);
        let (x, y) = tokio::join!(
            a.append(BARS, &ba, HashMap::new()),
            b.append(BARS, &bb, HashMap::new()),
        );
        for (result, rows) in [(x, ra), (y, rb)] {
            match result {
                Ok(_) => acknowledged.extend(rows),
                Err(Error::LostCommit { .. }) | Err(Error::Iceberg(_)) => refused += 1,
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
    }
    let reader = Deployment {
        dir: tempfile::tempdir().unwrap(),
        config: config(shared.path()),
        writer: a.clone(),
    };
    // Both writers load the same base each round, so the race really happens.
    assert!(refused > 0, "no round raced; the test proved nothing");
    assert_eq!(reader.bars(M1).await, sorted(acknowledged));
}

#[tokio::test]
async fn tables_are_created_once_with_their_partitioning() {
    let d = Deployment::new().await;
    // Opening again is a no-op: same tables, same uuids.
    let uuid = d.storage().table(BARS).await.unwrap().metadata().table_uuid;
    drop(d.writer.clone());
    let again = ohlcv_server::storage::Storage::open(&d.config)
        .await
        .unwrap();
    assert_eq!(again.table(BARS).await.unwrap().metadata().table_uuid, uuid);
    for kind in TableKind::all() {
        let table = again.table(kind).await.unwrap();
        let spec = table.metadata().default_partition_spec().unwrap();
        assert_eq!(*spec.fields()[0].name(), kind.partition_field_name());
    }
}

#[tokio::test]
async fn month_partitioned_daily_bars_list_and_replace_by_month() {
    let d = Deployment::new().await;
    let tf = Timeframe::D1;
    let kind = TableKind::Bars(tf);
    let rows: Vec<Bar> = (0..40)
        .map(|i| bar("okx", "BTC-USD", T0 + i * DAY, i as f64))
        .collect();
    d.writer
        .append(kind, &[bar_batch(tf, &rows)], HashMap::new())
        .await
        .unwrap();
    let table = d.storage().table(kind).await.unwrap();
    let listing = Listing::read(&table, kind, None, TimeRange::ALL)
        .await
        .unwrap();
    let mut months: Vec<Option<i32>> = listing.files.iter().map(|f| f.partition(kind)).collect();
    months.sort();
    let jan = (2024 - 1970) * 12;
    assert_eq!(
        months,
        vec![Some(jan), Some(jan + 1)],
        "{:?}",
        listing.files[0].entry.data_file().partition()
    );
    let out = d
        .writer
        .replace_partitions(kind, &[jan], &[], HashMap::new())
        .await
        .unwrap();
    assert_eq!(out.files_removed, 1);
    assert_eq!(d.bars(tf).await.len(), 9, "February 1-9 remain");
}
