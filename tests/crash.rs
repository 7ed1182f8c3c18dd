//! Crash safety of the builder: `ohlcv-server build` is SIGKILLed at several points; after a
//! final uninterrupted run the tables equal a clean build of the same trades: nothing lost,
//! nothing doubled, no spurious revision.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use arrow::array::RecordBatch;
use common::trades::{table_bars, Key, RefBar};
use ohlcv_server::config::Config;
use ohlcv_server::storage::read::read_range;
use ohlcv_server::storage::{Storage, TableKind, TimeRange};
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

async fn tables(dir: &Path) -> Vec<(usize, BTreeMap<Key, RefBar>)> {
    let storage = Storage::open(&Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    })
    .await
    .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_builds_leave_tables_equal_to_a_clean_build() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("trades.parquet");
    let file_arg = file.to_str().unwrap();
    let gen = bin()
        .args([
            "generate",
            "--trades",
            "150000",
            "--symbols",
            "8",
            "--rate",
            "1",
            "--output",
            file_arg,
        ])
        .output()
        .unwrap();
    assert!(gen.status.success());

    let clean = work.path().join("clean");
    run(&["load", file_arg], &clean);
    run(&["build"], &clean);

    let crashed = work.path().join("crashed");
    run(&["load", file_arg], &crashed);
    let mut killed = 0;
    for delay_ms in [40, 150, 400, 900, 1800, 3000] {
        let mut child = bin()
            .arg("--data-dir")
            .arg(&crashed)
            .arg("build")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        killed >= 3,
        "the builds finished too fast to be interrupted ({killed} kills)"
    );
    run(&["build"], &crashed);

    let (want, got) = (tables(&clean).await, tables(&crashed).await);
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
