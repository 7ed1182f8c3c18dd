//! Crash safety: `ohlcv-server build` is SIGKILLed at several points, and then a loop of 24
//! kills across `load`, `build`, `compact` and `retention`; after each interrupted command is
//! recovered (run again uninterrupted, or for `load` only if it did not land) the tables equal
//! those of a second data dir that ran the same commands without interruption, and every file
//! the tables reference is present: nothing lost, nothing doubled, no spurious revision.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use arrow::array::RecordBatch;
use common::trades::{table_bars, Key, RefBar};
use object_store::ObjectStoreExt;
use ohlcv_server::config::Config;
use ohlcv_server::storage::read::read_range;
use ohlcv_server::storage::{Listing, Storage, TableKind, TimeRange};
use ohlcv_server::timeframe::Timeframe;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ohlcv-server"))
}

fn run(args: &[&str], dir: &Path) {
    let out = bin()
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ohlcv-server <args>` once per delay and SIGKILLs it after that delay if it is still
/// running, pausing `after_kill` after each kill; returns how many runs were killed.
async fn kill_builds(args: &[&str], delays_ms: &[u64], after_kill: Duration) -> usize {
    let mut killed = 0;
    for &delay_ms in delays_ms {
        let mut child = bin()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
            tokio::time::sleep(after_kill).await;
        }
        child.wait().unwrap();
    }
    killed
}

fn local(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    }
}

async fn tables(dir: &Path) -> Vec<(usize, BTreeMap<Key, RefBar>)> {
    tables_of(&local(dir)).await
}

async fn tables_of(config: &Config) -> Vec<(usize, BTreeMap<Key, RefBar>)> {
    let storage = Storage::open(config).await.unwrap();
    let mut out = Vec::new();
    for tf in Timeframe::ALL {
        let (_, rows): (_, Vec<RecordBatch>) =
            read_range(&storage, TableKind::Bars(tf), TimeRange::ALL)
                .await
                .unwrap();
        out.push((rows.iter().map(|b| b.num_rows()).sum(), table_bars(&rows)));
    }
    out
}

/// 150,000 generated trades at `rate` a second in `work`, and a data dir that loaded and built
/// them uninterrupted: the file and that dir.
fn clean_build(work: &Path, rate: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let file = work.join("trades.parquet");
    let gen = bin()
        .args([
            "generate",
            "--trades",
            "150000",
            "--symbols",
            "8",
            "--rate",
            rate,
        ])
        .arg("--output")
        .arg(&file)
        .output()
        .unwrap();
    assert!(gen.status.success());
    let clean = work.join("clean");
    run(&["load", file.to_str().unwrap()], &clean);
    run(&["build"], &clean);
    (file, clean)
}

/// Every bar table of `got` holds what `want` holds, each key once, none revised.
async fn assert_same_tables(want: &Path, got: &Path) {
    let (want, got) = (tables(want).await, tables(got).await);
    for (tf, ((wn, w), (gn, g))) in Timeframe::ALL.iter().zip(want.iter().zip(&got)) {
        assert_eq!(gn, wn, "{tf}: row count (doubled or lost rows)");
        assert_eq!(g.len(), *gn, "{tf}: duplicate keys");
        assert_eq!(g, w, "{tf}: content");
        assert!(
            g.values().all(|b| b.revision == 0),
            "{tf}: spurious revisions"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_builds_leave_tables_equal_to_a_clean_build() {
    let work = tempfile::tempdir().unwrap();
    let (file, clean) = clean_build(work.path(), "1");
    let file_arg = file.to_str().unwrap();

    let crashed = work.path().join("crashed");
    run(&["load", file_arg], &crashed);
    let data_dir = ["--data-dir", crashed.to_str().unwrap(), "build"];
    let killed = kill_builds(&data_dir, &[40, 150, 400, 900, 1800, 3000], Duration::ZERO).await;
    assert!(
        killed >= 3,
        "the builds finished too fast to be interrupted ({killed} kills)"
    );
    run(&["build"], &crashed);
    assert_same_tables(&clean, &crashed).await;
}

/// A first attach far larger than its memory budget goes in chunks; SIGKILLed again and again,
/// each run continues from the last chunk committed, and the tables end equal to one
/// uninterrupted, unchunked build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_chunked_first_attach_resumes_and_equals_a_clean_build() {
    killed_chunked_first_attach("false").await;
}

/// The same with each chunk committing while the next one is computed (the default from a
/// 256 MB budget up): a kill may lose two chunks, never the order of the commits or a
/// chunk's watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_overlapped_first_attach_resumes_and_equals_a_clean_build() {
    killed_chunked_first_attach("true").await;
}

async fn killed_chunked_first_attach(overlap: &str) {
    let work = tempfile::tempdir().unwrap();
    let (file, clean) = clean_build(work.path(), "2");
    let file_arg = file.to_str().unwrap();
    let crashed = work.path().join("crashed");
    run(&["load", file_arg], &crashed);
    // 34 MB leaves 2 MB for trades: chunks of about 6,500 of the 150,000.
    let budget = [
        ("OHLCV_BUILD__MEMORY_MB", "34"),
        ("OHLCV_BUILD__OVERLAP_COMMITS", overlap),
    ];
    let args = ["--data-dir", crashed.to_str().unwrap(), "build"];
    let mut cutoffs = Vec::new();
    let mut killed = 0;
    // Each run is killed at a different moment after its first commit (in the next chunk's
    // read, compute or commit), not after a fixed time: how long a debug build takes to
    // reach its first commit depends on what else the machine runs.
    for after_ms in [0, 40, 90, 150, 220, 10, 300, 120] {
        killed += kill_after_a_commit(&args, &budget, &local(&crashed), after_ms).await as usize;
        cutoffs.push(cutoff_1m(&crashed).await);
    }
    assert!(
        killed >= 3,
        "the builds finished too fast to be interrupted ({killed} kills)"
    );
    // Each killed run kept the chunks it committed, and the next one went on from there.
    let reached: Vec<i64> = cutoffs.iter().flatten().copied().collect();
    assert!(
        reached.len() >= 3,
        "too few runs committed a chunk: {cutoffs:?}"
    );
    assert!(reached.windows(2).all(|w| w[0] <= w[1]), "{cutoffs:?}");
    assert!(
        reached.first() < reached.last(),
        "no run continued: {cutoffs:?}"
    );
    let out = bin().args(args).envs(budget).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The builds' cutoff is the time of building (now minus the grace), past every trade.
    assert!(cutoff_1m(&crashed).await >= reached.last().copied());
    intact(&crashed).await;

    assert_same_tables(&clean, &crashed).await;
}

/// Runs `ohlcv-server <args>` and SIGKILLs it `after_ms` after its first commit to the 1m
/// table (seen as its watermark moving); whether it was still running to be killed.
async fn kill_after_a_commit(
    args: &[&str],
    envs: &[(&str, &str)],
    config: &Config,
    after_ms: u64,
) -> bool {
    let before = cutoff_1m_of(config).await;
    let mut child = bin()
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if cutoff_1m_of(config).await != before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no commit in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(after_ms)).await;
    let running = child.try_wait().unwrap().is_none();
    if running {
        child.kill().unwrap(); // SIGKILL
    }
    child.wait().unwrap();
    running
}

/// The 1m table's watermark cutoff: how far its build has got.
async fn cutoff_1m(dir: &Path) -> Option<i64> {
    cutoff_1m_of(&local(dir)).await
}

async fn cutoff_1m_of(config: &Config) -> Option<i64> {
    let storage = Storage::open(config).await.unwrap();
    let table = storage.table(TableKind::Bars(Timeframe::M1)).await.unwrap();
    ohlcv_server::build::state::prop_i64(
        &table.metadata().properties,
        ohlcv_server::build::state::CUTOFF,
    )
}

/// Every data file of every table's current snapshot exists, and the trades table's row count.
async fn intact(dir: &Path) -> i64 {
    intact_of(&local(dir)).await
}

async fn intact_of(config: &Config) -> i64 {
    let storage = Storage::open(config).await.unwrap();
    let store = storage.store();
    let mut trades = 0;
    for kind in TableKind::all() {
        let table = storage.table(kind).await.unwrap();
        let listing = Listing::read(&table, kind, None, TimeRange::ALL)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
        for file in &listing.files {
            store
                .head(&storage.path(file.path()).unwrap())
                .await
                .unwrap_or_else(|e| panic!("{}: {} is missing: {e}", kind.name(), file.path()));
        }
        if kind == TableKind::Trades {
            trades = listing.total_records();
        }
    }
    trades
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_across_load_build_compact_and_retention_leave_clean_tables() {
    let work = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now();
    // Six files of about a day each, from 200 days ago to yesterday: retention has partitions
    // to drop (1m after 90 days, 5m after 180) once the rollups have consumed them.
    let files: Vec<String> = [200, 120, 60, 20, 5, 1]
        .iter()
        .enumerate()
        .map(|(i, days)| {
            let path = work.path().join(format!("t{i}.parquet"));
            let start = (now - chrono::Duration::days(*days))
                .format("%Y-%m-%d")
                .to_string();
            let seed = (i + 1).to_string();
            let out = bin()
                .args([
                    "generate",
                    "--trades",
                    "12000",
                    "--symbols",
                    "3",
                    "--exchanges",
                    "2",
                ])
                .args(["--rate", "0.14", "--seed", &seed, "--start", &start])
                .arg("--output")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            path.to_str().unwrap().to_string()
        })
        .collect();

    let clean = work.path().join("clean");
    let crashed = work.path().join("crashed");
    // Each crashed run is killed at a share of the time the same command took on the clean
    // copy just before (fixed delays let a faster machine finish most commands first).
    let shares = [0.05, 0.2, 0.35, 0.5, 0.7, 0.9];
    let mut step = 0;
    let mut killed = 0;
    for file in &files {
        let commands: [Vec<&str>; 4] = [
            vec!["load", file.as_str()],
            vec!["build"],
            vec!["compact"],
            vec!["retention"],
        ];
        for args in commands {
            let timed = std::time::Instant::now();
            run(&args, &clean);
            let took = timed.elapsed();
            let before = intact(&crashed).await;
            let mut child = bin()
                .arg("--data-dir")
                .arg(&crashed)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            tokio::time::sleep(took.mul_f64(shares[step % shares.len()])).await;
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                killed += 1;
            }
            child.wait().unwrap();
            step += 1;
            let after = intact(&crashed).await;
            // Recover: a load either landed whole or not at all; the rest are idempotent.
            if args[0] != "load" || after == before {
                run(&args, &crashed);
            }
            let (want, got) = (tables(&clean).await, tables(&crashed).await);
            for (tf, ((wn, w), (gn, g))) in Timeframe::ALL.iter().zip(want.iter().zip(&got)) {
                let what = format!("step {step} ({args:?}), {tf}");
                assert_eq!(gn, wn, "{what}: row count (doubled or lost rows)");
                assert_eq!(g, w, "{what}: content");
            }
            assert_eq!(
                intact(&crashed).await,
                intact(&clean).await,
                "step {step}: trades"
            );
        }
    }
    assert_eq!(step, 24);
    eprintln!("{killed} of {step} commands were killed while running");
    assert!(
        killed >= 10,
        "too few commands were still running when killed ({killed})"
    );

    // What the killed commands left behind goes with the orphan sweep of the daily
    // retention, once older than its safety age: afterwards every file under a table is one
    // that a snapshot of it reaches.
    let writer = common::writer_for(&local(&crashed)).await;
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    for kind in TableKind::all() {
        writer
            .sweep_orphans(kind, later, chrono::Duration::hours(1), false)
            .await
            .unwrap();
        let unreached = unreached_files(writer.storage(), kind).await;
        assert!(
            unreached.is_empty(),
            "{}: files no snapshot reaches after the sweep: {unreached:?}",
            kind.name()
        );
    }
}

/// Files under `kind`'s location that neither a snapshot (its manifest list, manifests and
/// data files) nor the current metadata names, found independently of the sweep: by reading
/// every snapshot's listing.
async fn unreached_files(storage: &Storage, kind: TableKind) -> Vec<String> {
    use futures::TryStreamExt;
    let table = storage.table(kind).await.unwrap();
    let mut named = std::collections::HashSet::new();
    named.insert(storage.metadata_location(kind).await.unwrap());
    for snapshot in table.metadata().snapshots.values() {
        named.insert(snapshot.manifest_list().clone());
        let id = *snapshot.snapshot_id();
        let listing = Listing::read(&table, kind, Some(id), TimeRange::ALL)
            .await
            .unwrap();
        named.extend(listing.manifests.iter().map(|m| m.manifest_path.clone()));
        named.extend(listing.files.iter().map(|f| f.path().to_string()));
    }
    let named: std::collections::HashSet<String> = named
        .iter()
        .map(|p| iceberg_rust::spec::util::strip_prefix(p))
        .collect();
    let prefix = ohlcv_server::storage::warehouse::key(&table.metadata().location);
    let listed: Vec<_> = storage
        .store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .unwrap();
    listed
        .into_iter()
        .map(|o| format!("/{}", o.location))
        .filter(|p| !named.contains(p) && !p.ends_with("version-hint.text"))
        .collect()
}

/// `build` SIGKILLed at several points on an S3 warehouse behind a REST catalog (SeaweedFS):
/// the tables then equal a clean build on a local warehouse, and every file they reference is
/// in the bucket. A killed build leaves its lease behind; the next one waits it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_builds_on_s3_leave_tables_equal_to_a_clean_build() {
    let Some(weed) = common::seaweed::Seaweed::start() else {
        eprintln!("skipping: SeaweedFS (weed) is not installed");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("trades.parquet");
    let file_arg = file.to_str().unwrap();
    let gen = bin()
        .args([
            "generate",
            "--trades",
            "60000",
            "--symbols",
            "6",
            "--rate",
            "1",
        ])
        .args(["--output", file_arg])
        .output()
        .unwrap();
    assert!(gen.status.success());
    let clean = work.path().join("clean");
    run(&["load", file_arg], &clean);
    run(&["build"], &clean);

    let mut config = local(&work.path().join("crashed"));
    config.catalog.namespace = "crashed".to_string();
    weed.configure(&mut config);
    config.s3.lease_secs = 3;
    let config_file = work.path().join("s3.toml");
    std::fs::write(&config_file, toml::to_string(&config).unwrap()).unwrap();
    let with_config = |args: &[&str]| {
        let out = bin()
            .arg("--config")
            .arg(&config_file)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    with_config(&["load", file_arg]);
    // A killed build does not release its lease: the next one waits it out. A small budget
    // makes the build commit in chunks, and each run is killed at a chosen moment after one
    // of its commits: fixed delays from the start stopped interrupting once builds got
    // faster (one kill of five in a run of this test), and depended on the machine's load.
    let args = ["--config", config_file.to_str().unwrap(), "build"];
    let budget = [("OHLCV_BUILD__MEMORY_MB", "34")];
    let mut killed = 0;
    for after_ms in [0, 60, 150, 30] {
        if kill_after_a_commit(&args, &budget, &config, after_ms).await {
            killed += 1;
            // The lease outlives the killed holder by `lease_secs`; the next build refuses
            // to start until then.
            tokio::time::sleep(Duration::from_millis(3_200)).await;
        }
    }
    assert!(
        killed >= 2,
        "the builds finished too fast to be interrupted ({killed} kills)"
    );
    with_config(&["build"]);

    intact_of(&config).await;
    let (want, got) = (tables(&clean).await, tables_of(&config).await);
    for (tf, ((wn, w), (gn, g))) in Timeframe::ALL.iter().zip(want.iter().zip(&got)) {
        assert_eq!(gn, wn, "{tf}: row count (doubled or lost rows)");
        assert_eq!(g, w, "{tf}: content");
        assert!(
            g.values().all(|b| b.revision == 0),
            "{tf}: spurious revisions"
        );
    }
}
