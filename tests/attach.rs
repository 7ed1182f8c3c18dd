//! Attaching to a long history: a first build whose trades are far larger than its memory
//! budget goes in chunks, each committed with its watermark, shows its progress, stays within
//! the budget whatever the length of the history, and ends with the bars of one unchunked
//! build. Memory is the peak of the build process's anonymous pages (its heap), sampled from
//! /proc while it runs.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::trades::{table_bars, Key, RefBar};
use ohlcv_server::config::Config;
use ohlcv_server::storage::read::read_range;
use ohlcv_server::storage::{Storage, TableKind, TimeRange};
use ohlcv_server::timeframe::Timeframe;

const BUDGET_MB: u64 = 64;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ohlcv-server"))
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Anonymous memory of a process, in bytes.
fn anonymous(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Anonymous:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb << 10)
}

/// Runs `cmd` to completion; its stderr and the peak of its anonymous memory.
fn peak(cmd: &mut Command) -> (String, u64) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(anonymous(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(child.wait().unwrap().success());
    (std::fs::read_to_string(err.path()).unwrap(), peak)
}

/// The idle footprint of a serving process: its anonymous memory once it answers.
fn idle_server(dir: &Path) -> u64 {
    let port = common::free_port();
    let mut child = bin()
        .args(["--data-dir", dir.to_str().unwrap(), "serve"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("OHLCV_TELEMETRY__LISTEN", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle = anonymous(child.id()).expect("the server runs");
    child.kill().unwrap();
    child.wait().unwrap();
    idle
}

fn generate(path: &Path, trades: u64) {
    ok(bin()
        .args(["generate", "--symbols", "10", "--rate", "5"])
        .args([
            "--trades",
            &trades.to_string(),
            "--output",
            path.to_str().unwrap(),
        ]));
}

fn load(dir: &Path, file: &Path) {
    ok(bin()
        .args(["--data-dir", dir.to_str().unwrap(), "load"])
        .arg(file));
}

fn build(dir: &Path, budget_mb: Option<u64>) -> (String, u64) {
    let mut cmd = bin();
    cmd.args(["--data-dir", dir.to_str().unwrap(), "build"]);
    if let Some(mb) = budget_mb {
        cmd.env("OHLCV_BUILD__MEMORY_MB", mb.to_string());
    }
    peak(&mut cmd)
}

async fn tables(dir: &Path) -> Vec<BTreeMap<Key, RefBar>> {
    let config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    let storage = Storage::open(&config).await.unwrap();
    let mut out = Vec::new();
    for tf in Timeframe::ALL {
        let (_, rows) = read_range(&storage, TableKind::Bars(tf), TimeRange::ALL)
            .await
            .unwrap();
        out.push(table_bars(&rows));
    }
    out
}

async fn snapshots(dir: &Path, tf: Timeframe) -> usize {
    let config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    let storage = Storage::open(&config).await.unwrap();
    let table = storage.table(TableKind::Bars(tf)).await.unwrap();
    table.metadata().snapshots.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_attach_in_chunks_stays_in_its_budget_and_equals_one_build() {
    let work = tempfile::tempdir().unwrap();
    let (short, long) = (
        work.path().join("short.parquet"),
        work.path().join("long.parquet"),
    );
    // 0.6 M trades over about a day and a half, and three times as many over four days.
    generate(&short, 600_000);
    generate(&long, 1_800_000);
    let dir = |name: &str| work.path().join(name);
    load(&dir("one"), &short);
    load(&dir("chunked"), &short);
    load(&dir("apart"), &short);
    load(&dir("long"), &long);
    let idle = idle_server(&dir("idle"));

    let (_, unchunked) = build(&dir("one"), None);
    let (log, chunked) = build(&dir("chunked"), Some(BUDGET_MB));
    let (_, chunked_long) = build(&dir("long"), Some(BUDGET_MB));
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "peak heap: idle server {:.0} MB; short history unchunked {:.0} MB, in chunks {:.0} MB; \
         long history in chunks {:.0} MB",
        mb(idle),
        mb(unchunked),
        mb(chunked),
        mb(chunked_long)
    );

    // It went in chunks, each committed, and said so as it went.
    assert!(snapshots(&dir("chunked"), Timeframe::M1).await >= 4);
    assert!(snapshots(&dir("chunked"), Timeframe::M5).await >= 4);
    assert_eq!(snapshots(&dir("one"), Timeframe::M1).await, 1);
    assert!(
        log.contains("build 1m: chunk 1/"),
        "no progress lines: {log}"
    );
    // The bars of one build.
    assert_eq!(tables(&dir("chunked")).await, tables(&dir("one")).await);
    // Which are those of each timeframe built alone: the rollups run together share their
    // reads of the 1m table (`build/children.rs`), one alone reads for itself.
    for tf in Timeframe::ALL {
        ok(bin()
            .args(["--data-dir", dir("apart").to_str().unwrap(), "build"])
            .args(["--timeframe", &tf.to_string()]));
    }
    assert_eq!(tables(&dir("apart")).await, tables(&dir("one")).await);

    // Within the budget plus the idle server, give or take a quarter of the budget: runs of
    // the long history peaked at 71-89 MB: allocator pages held by fragmentation, the live
    // heap peaks at 29 MB (README, "Point it at your lake"). The unchunked build does not fit
    // the budget (89-93 MB since 1m and 5m share one ordering; 107 MB before).
    let bound = idle + (BUDGET_MB << 20) * 5 / 4;
    assert!(chunked_long <= bound, "{} MB", mb(chunked_long));
    assert!(chunked <= bound, "{} MB", mb(chunked));
    assert!(unchunked > idle + (BUDGET_MB << 20), "{} MB", mb(unchunked));
    assert!(unchunked > chunked * 5 / 4, "{} MB", mb(unchunked));
}
