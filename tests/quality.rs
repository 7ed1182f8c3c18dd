//! Validation: clean tables pass every check; tables corrupted on purpose through the storage
//! layer (a bar with high < low, a duplicate key, a misaligned window, a 5m bar that disagrees
//! with its 1m bars, a window with trades but no bar) are reported with exactly those keys.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::TimestampMicrosecondType;
use common::trades::{load, trade};
use common::*;
use ohlcv_server::build::{self, BuildSettings};
use ohlcv_server::quality::{self, CheckResult, Reports, Scope};
use ohlcv_server::storage::files::partition_value;
use ohlcv_server::storage::read::read_range;
use ohlcv_server::storage::{TableKind, TimeRange};
use ohlcv_server::timeframe::Timeframe;

const NOW: i64 = T0 + 3 * DAY;

/// Two days of trades every 90 s for two symbols, built into all five tables.
async fn built() -> Deployment {
    let d = Deployment::new().await;
    let trades: Vec<_> = ["BTC-USD", "ETH-USD"]
        .iter()
        .flat_map(|symbol| {
            (0..1920).map(move |i| {
                trade(
                    "kraken",
                    symbol,
                    &i.to_string(),
                    T0 + i * 90_000_000 + 7_000_000,
                    100.0 + ((i * 37) % 101) as f64 / 10.0,
                    0.5 + (i % 7) as f64,
                )
            })
        })
        .collect();
    load(&d, &trades).await;
    for tf in Timeframe::ALL {
        build::build(&d.writer, tf, NOW, BuildSettings::default())
            .await
            .unwrap();
    }
    d
}

async fn validate(d: &Deployment, scope: Scope) -> Vec<CheckResult> {
    let reports = Reports::open(d.storage().pool()).await.unwrap();
    quality::validate(d.storage(), &reports, &Timeframe::ALL, scope, NOW)
        .await
        .unwrap()
}

/// `(timeframe, check)` → the violating keys `(symbol, window_start)`, for failed checks only.
fn failures(results: &[CheckResult]) -> BTreeMap<(String, String), BTreeSet<(String, i64)>> {
    results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| {
            assert_eq!(r.violations as usize, r.samples.len(), "{r:?}");
            let keys = r
                .samples
                .iter()
                .map(|v| (v.symbol.clone(), v.window_start))
                .collect();
            ((r.timeframe.clone(), r.check.clone()), keys)
        })
        .collect()
}

/// `(timeframe, check, [(symbol, window_start)])`.
type Expected<'a> = (&'a str, &'a str, &'a [(&'a str, i64)]);

fn expect(entries: &[Expected<'_>]) -> BTreeMap<(String, String), BTreeSet<(String, i64)>> {
    entries
        .iter()
        .map(|(tf, check, keys)| {
            (
                (tf.to_string(), check.to_string()),
                keys.iter().map(|(s, t)| (s.to_string(), *t)).collect(),
            )
        })
        .collect()
}

/// The stored row of `tf` at (BTC-USD, `start`), in the table's schema.
async fn stored_bar(d: &Deployment, tf: Timeframe, start: i64) -> RecordBatch {
    let range = TimeRange::new(Some(start), Some(start + 1));
    let (_, batches) = read_range(d.storage(), TableKind::Bars(tf), range)
        .await
        .unwrap();
    let all = concat_batches(&TableKind::Bars(tf).arrow_schema().unwrap(), &batches).unwrap();
    let symbols = all.column_by_name("symbol").unwrap().as_string::<i32>();
    let keep: arrow::array::BooleanArray = (0..all.num_rows())
        .map(|r| Some(symbols.value(r) == "BTC-USD"))
        .collect();
    let bar = filter_record_batch(&all, &keep).unwrap();
    assert_eq!(bar.num_rows(), 1, "one {tf} bar at {start}");
    bar
}

fn with_column(b: &RecordBatch, name: &str, values: ArrayRef) -> RecordBatch {
    let i = b.schema().index_of(name).unwrap();
    let mut columns = b.columns().to_vec();
    columns[i] = values;
    RecordBatch::try_new(b.schema(), columns).unwrap()
}

fn f64_of(b: &RecordBatch, name: &str) -> f64 {
    b.column_by_name(name)
        .unwrap()
        .as_primitive::<arrow::datatypes::Float64Type>()
        .value(0)
}

fn ts(v: i64) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_tables_pass_and_each_corruption_is_reported_with_exactly_its_keys() {
    let d = built().await;
    // Clean: all four checks pass on every timeframe, having read every bar.
    let clean = validate(&d, Scope::Changed).await;
    assert_eq!(clean.len(), 20);
    assert!(failures(&clean).is_empty(), "{clean:#?}");
    for r in &clean {
        assert!(r.rows_checked > 0, "{r:?}");
        assert_eq!(r.range_start, Some(T0), "{r:?}");
    }
    // Trades are 90 s apart, so each has a 1m bar of its own.
    let m1 = clean.iter().find(|r| r.timeframe == "1m").unwrap();
    assert_eq!(m1.rows_checked, 2 * 1920);

    // Nothing changed: the next run only re-reads its rotating sample, and passes.
    let again = validate(&d, Scope::Changed).await;
    assert!(failures(&again).is_empty());

    let hour = 3_600_000_000;
    let day1 = T0 + DAY;

    // 1. 1d: a bar with high < low (in place of the real one).
    let b = stored_bar(&d, Timeframe::D1, T0).await;
    let low = f64_of(&b, "low");
    let bad = with_column(&b, "high", Arc::new(Float64Array::from(vec![low - 1.0])));
    d.writer
        .upsert(TableKind::Bars(Timeframe::D1), &[bad], HashMap::new())
        .await
        .unwrap();

    // 2. 1h: the same key twice (an exact copy appended).
    let b = stored_bar(&d, Timeframe::H1, T0 + 5 * hour).await;
    d.writer
        .append(TableKind::Bars(Timeframe::H1), &[b], HashMap::new())
        .await
        .unwrap();

    // 3. 30m: a window starting 10 minutes off the grid (a new key, nothing under it).
    let b = stored_bar(&d, Timeframe::M30, T0 + 3 * hour).await;
    let off = T0 + 3 * hour + 10 * MIN;
    let moved = with_column(
        &with_column(&b, "window_start", ts(off)),
        "window_end",
        ts(off + 30 * MIN),
    );
    d.writer
        .append(TableKind::Bars(Timeframe::M30), &[moved], HashMap::new())
        .await
        .unwrap();

    // 4. 5m: a bar whose volume disagrees with its 1m bars.
    let at5 = T0 + 10 * hour + 20 * MIN;
    let b = stored_bar(&d, Timeframe::M5, at5).await;
    let doubled = 2.0 * f64_of(&b, "volume");
    let bad = with_column(&b, "volume", Arc::new(Float64Array::from(vec![doubled])));
    d.writer
        .upsert(TableKind::Bars(Timeframe::M5), &[bad], HashMap::new())
        .await
        .unwrap();

    // 5. 1m: a window with trades but no bar (its day rewritten without it). The tables built
    // from 1m have not consumed that rewrite, so their checks of that day are pending.
    let gone = day1 + 20 * hour + 7 * MIN;
    let kind = TableKind::Bars(Timeframe::M1);
    let (_, day_rows) = read_range(
        d.storage(),
        kind,
        TimeRange::new(Some(day1), Some(day1 + DAY)),
    )
    .await
    .unwrap();
    let kept: Vec<RecordBatch> = day_rows
        .iter()
        .map(|b| {
            let s = b.column_by_name("symbol").unwrap().as_string::<i32>();
            let w = b
                .column_by_name("window_start")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            let keep: arrow::array::BooleanArray = (0..b.num_rows())
                .map(|r| Some(!(s.value(r) == "BTC-USD" && w.value(r) == gone)))
                .collect();
            filter_record_batch(b, &keep).unwrap()
        })
        .collect();
    let p = partition_value(&kind.partition_transform(), day1);
    d.writer
        .replace_partitions(kind, &[p], &kept, HashMap::new())
        .await
        .unwrap();

    let found = failures(&validate(&d, Scope::Changed).await);
    let want = expect(&[
        ("1d", "ohlc_bounds", &[("BTC-USD", T0)]),
        // The bar no longer equals the rollup of its 1h bars either.
        ("1d", "rollup_consistency", &[("BTC-USD", T0)]),
        ("1h", "unique_aligned", &[("BTC-USD", T0 + 5 * hour)]),
        // The 1h bar over the misaligned 30m bar disagrees with its (now wrong) rollup.
        ("1h", "rollup_consistency", &[("BTC-USD", T0 + 3 * hour)]),
        ("30m", "unique_aligned", &[("BTC-USD", off)]),
        (
            "30m",
            "rollup_consistency",
            &[
                ("BTC-USD", off),
                // The 30m bar over the corrupted 5m bar disagrees with their rollup.
                ("BTC-USD", T0 + 10 * hour),
            ],
        ),
        (
            "5m",
            "rollup_consistency",
            &[
                ("BTC-USD", at5),
                // The 5m bar over the missing 1m bar no longer equals their rollup.
                ("BTC-USD", gone - 2 * MIN),
            ],
        ),
        ("1m", "rollup_consistency", &[("BTC-USD", gone)]),
    ]);
    assert_eq!(found, want);

    // An explicit range sees only what lies inside it.
    let day0 = failures(&validate(&d, Scope::Range(TimeRange::new(Some(T0), Some(day1)))).await);
    let want = expect(&[
        ("1d", "ohlc_bounds", &[("BTC-USD", T0)]),
        ("1d", "rollup_consistency", &[("BTC-USD", T0)]),
        ("1h", "unique_aligned", &[("BTC-USD", T0 + 5 * hour)]),
        ("1h", "rollup_consistency", &[("BTC-USD", T0 + 3 * hour)]),
        ("30m", "unique_aligned", &[("BTC-USD", off)]),
        (
            "30m",
            "rollup_consistency",
            &[("BTC-USD", off), ("BTC-USD", T0 + 10 * hour)],
        ),
        ("5m", "rollup_consistency", &[("BTC-USD", at5)]),
    ]);
    assert_eq!(day0, want);

    // The results are kept: every run's rows, with samples naming the offending values.
    let reports = Reports::open(d.storage().pool()).await.unwrap();
    let kept = reports.checks(1000).await.unwrap();
    assert_eq!(kept.len(), 4 * 20);
    let bounds = kept
        .iter()
        .find(|r| r.timeframe == "1d" && r.check == "ohlc_bounds" && !r.passed())
        .unwrap();
    assert!(
        bounds.samples[0]
            .detail
            .contains(&format!("low {low} > high {}", low - 1.0)),
        "{bounds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_whose_source_changed_after_the_build_is_pending_not_a_violation() {
    let d = built().await;
    assert!(failures(&validate(&d, Scope::Changed).await).is_empty());
    // A late trade lands in an old 1m window: until the builds catch up, 1m and 5m differ
    // from their (new) source, which is pending, not a violation.
    load(
        &d,
        &[trade(
            "kraken",
            "BTC-USD",
            "late-1",
            T0 + 3_600_000_000 + 30_000_000,
            150.0,
            2.0,
        )],
    )
    .await;
    assert!(failures(&validate(&d, Scope::Changed).await).is_empty());
    // The 1m build alone: 5m (and the rollups) now lag 1m, still pending.
    build::build(&d.writer, Timeframe::M1, NOW, BuildSettings::default())
        .await
        .unwrap();
    assert!(failures(&validate(&d, Scope::Changed).await).is_empty());
    for tf in Timeframe::ALL {
        build::build(&d.writer, tf, NOW, BuildSettings::default())
            .await
            .unwrap();
    }
    let all = validate(&d, Scope::Range(TimeRange::ALL)).await;
    assert!(failures(&all).is_empty(), "{all:#?}");
    let m1 = all
        .iter()
        .find(|r| r.timeframe == "1m" && r.check == "rollup_consistency")
        .unwrap();
    assert_eq!(
        m1.rows_checked,
        2 * 1920,
        "every 1m bar compared once built"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_validate_command_exits_1_on_violations() {
    let d = built().await;
    let b = stored_bar(&d, Timeframe::D1, T0).await;
    let bad = with_column(&b, "volume", Arc::new(Float64Array::from(vec![f64::NAN])));
    d.writer
        .upsert(TableKind::Bars(Timeframe::D1), &[bad], HashMap::new())
        .await
        .unwrap();
    let Deployment {
        dir,
        writer,
        config,
    } = d;
    drop(writer); // releases the writer lock the command takes
    let data_dir = dir.path().to_path_buf();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ohlcv-server"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["validate", "--timeframe", "1h"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["validate"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1d positive_activity"), "{stdout}");
    assert!(
        stdout.contains("kraken/BTC-USD 2024-01-01T00:00:00Z: volume is NaN"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("violations"));
    let out = run(&["retention", "--dry-run"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["build"]);
    assert!(out.status.success(), "{out:?}");
    let out = run(&["compact"]);
    assert!(out.status.success(), "{out:?}");

    // Offline commands are jobs like any other: each run has its row in the run history.
    let storage = ohlcv_server::storage::Storage::open(&config).await.unwrap();
    let history = ohlcv_server::jobs::History::open(storage.pool())
        .await
        .unwrap();
    let runs = history.recent(50).await.unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r.job.as_str()).collect();
    let of = |job: &str| -> Vec<Option<String>> {
        let mut tfs: Vec<_> = runs
            .iter()
            .filter(|r| r.job.as_str() == job)
            .map(|r| r.timeframe.clone())
            .collect();
        tfs.sort();
        tfs
    };
    let mut sorted: Vec<Option<String>> =
        Timeframe::ALL.iter().map(|t| Some(t.to_string())).collect();
    sorted.sort();
    assert_eq!(of("build"), sorted, "{names:?}");
    let mut compacted = sorted.clone();
    compacted.insert(0, None); // the trades table
    assert_eq!(of("compact"), compacted, "{names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "validate").count(),
        2,
        "{names:?}"
    );
    assert!(names.contains(&"retention_plan"), "{names:?}");
    assert!(runs
        .iter()
        .all(|r| r.status == ohlcv_server::jobs::Outcome::Succeeded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_job_validates_the_range_it_rewrote() {
    use ohlcv_server::jobs::{BuilderJobs, JobKind, JobRunner};
    let d = built().await;
    let jobs = BuilderJobs {
        writer: d.writer.clone(),
        settings: BuildSettings::default(),
        retention: ohlcv_server::config::RetentionConfig::default()
            .policy()
            .unwrap(),
        reports: Reports::open(d.storage().pool()).await.unwrap(),
        alerts: ohlcv_server::alerts::Alerts::log_only(),
    };
    let range = TimeRange::new(Some(T0 + DAY), Some(T0 + DAY + 6 * 3_600_000_000));
    jobs.run(JobKind::Backfill(Timeframe::M5, range), NOW)
        .await
        .unwrap();
    let kept = jobs.reports.checks(100).await.unwrap();
    assert_eq!(kept.len(), 4, "one result per check, for 5m only");
    for r in &kept {
        assert_eq!(r.timeframe, "5m");
        assert_eq!((r.range_start, r.range_end), (range.start, range.end));
        assert!(r.passed(), "{r:?}");
        assert_eq!(
            r.rows_checked,
            2 * 6 * 12,
            "every 5m window of those 6 hours has trades"
        );
    }
}
