//! Python's ADBC Flight SQL driver against the real server: queries, `adbc_get_objects`,
//! `adbc_get_table_schema` (tests/python/adbc_client.py does the client side).

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::trades::{trade, trade_batch};
use common::*;
use ohlcv_server::build::{self, BuildSettings};
use ohlcv_server::server::{self, QueryEngine};
use ohlcv_server::storage::TableKind;
use ohlcv_server::timeframe::Timeframe;

fn python_with_adbc() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import adbc_driver_flightsql"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI must install tests/python/requirements.txt");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_queries_and_metadata() {
    if !python_with_adbc() {
        eprintln!("skipping: adbc-driver-flightsql is not installed");
        return;
    }
    let d = Deployment::new().await;
    let trades: Vec<_> = (0..90)
        .map(|i| {
            trade(
                "okx",
                "BTC-USD",
                &i.to_string(),
                T0 + i * 40_000_000,
                10.0 + i as f64,
                0.5,
            )
        })
        .collect();
    let rows = ohlcv_server::trades::normalize(&trade_batch(&trades), 0, T0).unwrap();
    d.writer
        .append(TableKind::Trades, &[rows], HashMap::new())
        .await
        .unwrap();
    let mut m1_bars = 0;
    for tf in Timeframe::ALL {
        let r = build::build(&d.writer, tf, T0 + 2 * DAY, BuildSettings::default())
            .await
            .unwrap();
        if tf == Timeframe::M1 {
            m1_bars = r.new;
        }
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = QueryEngine::new(d.storage().clone());
    let server = tokio::spawn(server::run(listener, engine, async {
        let _ = stopped.await;
    }));

    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/adbc_client.py"
        ))
        .arg(format!("grpc://{addr}"))
        .arg(m1_bars.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("adbc: {m1_bars} 1m bars")));
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
