//! The binary as a user runs it: `generate`, `load` of Parquet and CSV, refusals, the lock.

mod common;

use std::process::{Command, Stdio};

use common::*;
use ohlcv_server::storage::{TableKind, WriterLock};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ohlcv-server"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn trade_count(dir: &std::path::Path) -> (i64, Option<i64>) {
    let d = Deployment {
        config: ohlcv_server::config::Config {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        },
        dir: tempfile::tempdir().unwrap(),
        writer: writer_for(&ohlcv_server::config::Config {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        })
        .await,
    };
    let batches = d.sql("select count(*) from ohlcv.market.trades").await;
    let n = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    (n, d.snapshot(TableKind::Trades).await)
}

#[tokio::test]
async fn generate_then_load_parquet_and_csv() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let pq = work.path().join("t.parquet");
    let csv = work.path().join("t.csv");
    run_ok(
        bin()
            .args([
                "generate",
                "--trades",
                "2000",
                "--duplicates",
                "0.01",
                "--output",
            ])
            .arg(&pq),
    );
    run_ok(
        bin()
            .args([
                "generate",
                "--trades",
                "500",
                "--seed",
                "7",
                "--duplicates",
                "0",
                "--output",
            ])
            .arg(&csv),
    );
    let out = run_ok(
        bin()
            .arg("--data-dir")
            .arg(&data)
            .arg("load")
            .arg(&pq)
            .arg(&csv),
    );
    assert!(out.contains("loaded 2520 trades from 2 file(s)"), "{out}");
    let (n, snapshot) = trade_count(&data).await;
    assert_eq!(
        n, 2520,
        "rows are stored as delivered; dedupe is the bar engine's job"
    );
    assert!(snapshot.is_some());
}

#[tokio::test]
async fn a_bad_row_refuses_the_whole_load_naming_the_row() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let good = work.path().join("good.csv");
    let bad = work.path().join("bad.csv");
    std::fs::write(
        &good,
        "exchange,symbol,trade_id,ts,price,quantity,side\n\
         kraken,BTC-USD,1,2024-01-01T00:00:00Z,100.5,0.1,buy\n",
    )
    .unwrap();
    std::fs::write(
        &bad,
        "exchange,symbol,trade_id,ts,price,quantity,side\n\
         kraken,BTC-USD,2,2024-01-01T00:00:01Z,100.5,0.1,sell\n\
         kraken,BTC-USD,3,2024-01-01T00:00:02Z,-4,0.1,buy\n\
         kraken,,4,2024-01-01T00:00:03Z,100,0.1,buy\n",
    )
    .unwrap();
    let out = bin()
        .arg("--data-dir")
        .arg(&data)
        .arg("load")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv"), "{err}");
    assert!(err.contains("2 bad rows"), "{err}");
    assert!(err.contains("row 1: price -4"), "{err}");
    assert!(err.contains("row 2: symbol is NULL"), "{err}");
    let (n, snapshot) = trade_count(&data).await;
    assert_eq!(
        (n, snapshot),
        (0, None),
        "nothing written, not even the good file"
    );
}

#[test]
fn load_refuses_while_another_writer_holds_the_lock() {
    let data = tempfile::tempdir().unwrap();
    let _held = WriterLock::acquire(data.path(), "serve").unwrap();
    let out = bin()
        .arg("--data-dir")
        .arg(data.path())
        .args(["load", "/nonexistent.parquet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another writer holds the lock"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
}

#[test]
fn a_lock_left_by_a_killed_process_is_recovered() {
    let data = tempfile::tempdir().unwrap();
    let lock = data.path().join("writer.lock");
    // A foreign process takes the same flock, records itself, and is then SIGKILLed.
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import fcntl,os,sys,time\n\
             f=open({:?},'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n\
             f.truncate(0); f.write('pid %d (build on test) since now' % os.getpid()); f.flush()\n\
             print('locked', flush=True); time.sleep(600)\n",
            lock.display().to_string()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    let err = WriterLock::acquire(data.path(), "load")
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("pid {}", child.id())), "{err}");
    assert!(err.contains("build on test"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
    let taken = WriterLock::acquire(data.path(), "load").expect("stale lock recovered");
    assert!(std::fs::read_to_string(taken.path().unwrap())
        .unwrap()
        .contains(&format!("pid {}", std::process::id())));
}

#[test]
fn compute_writes_the_bars_of_a_trades_file_at_any_timeframe() {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("t.parquet");
    run_ok(
        bin()
            .args([
                "generate",
                "--trades",
                "5000",
                "--duplicates",
                "0.02",
                "--output",
            ])
            .arg(&input),
    );
    let trades = ohlcv_server::trades::read_file(&input).unwrap();
    // Distinct trades and distinct (exchange, symbol, 15-minute window) in the input.
    let mut ids = std::collections::HashSet::new();
    let mut windows = std::collections::HashSet::new();
    for b in &trades {
        let (ex, sym, id) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_string::<i32>(),
            b.column(2).as_string::<i32>(),
        );
        let ts = b.column(3).as_primitive::<TimestampMicrosecondType>();
        for r in 0..b.num_rows() {
            ids.insert((
                ex.value(r).to_string(),
                sym.value(r).to_string(),
                id.value(r).to_string(),
            ));
            windows.insert((
                ex.value(r).to_string(),
                sym.value(r).to_string(),
                ts.value(r).div_euclid(15 * MIN),
            ));
        }
    }
    let output = work.path().join("bars.parquet");
    let out = run_ok(
        bin()
            .args(["compute", "--timeframe", "15m", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&output),
    );
    assert!(
        out.contains(&format!("{} 15m bars from 5100 trades", windows.len())),
        "{out}"
    );
    let bars = ohlcv_server::trades::read_file(&output).unwrap();
    let counted: i64 = bars
        .iter()
        .map(|b| {
            b.column_by_name("trade_count")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .sum::<i64>()
        })
        .sum();
    assert_eq!(
        counted as usize,
        ids.len(),
        "every distinct trade counted once"
    );
    let bad = bin()
        .args(["compute", "--timeframe", "7x", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown timeframe '7x'"));
}

#[test]
fn serve_refuses_other_interfaces_without_users_and_hash_password_makes_usable_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure"), "{err}");

    let mut child = bin()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    // The hash is accepted in a config file, and a server with users may bind any interface.
    let config = dir.path().join("ohlcv.toml");
    std::fs::write(
        &config,
        format!("[auth.users.ana]\npassword_hash = \"{hash}\"\nrole = \"admin\"\n"),
    )
    .unwrap();
    let cfg = ohlcv_server::config::Config::load(Some(&config), Vec::new()).unwrap();
    let auth = ohlcv_server::auth::Auth::new(
        cfg.auth.users,
        60,
        std::sync::Arc::new(ohlcv_server::clock::SystemClock),
    )
    .unwrap();
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ana:s3cret")
    );
    assert!(auth.login(Some(&basic), None).is_ok());
}

/// A second server on one host whose telemetry port is taken stops at start, naming the
/// setting that moves it, instead of a bare "Address already in use".
#[test]
fn a_telemetry_port_in_use_is_refused_naming_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OHLCV_TELEMETRY__LISTEN", format!("\"127.0.0.1:{port}\""))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the server must not run without its endpoint"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("[telemetry] listen"), "{err}");
    assert!(err.contains("another server on this host"), "{err}");
}
