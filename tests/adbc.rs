//! Python's ADBC Flight SQL driver against the real server: queries, `adbc_get_objects`,
//! `adbc_get_table_schema` (tests/python/adbc_client.py does the client side).

mod common;

use std::process::Command;

use common::server::{deployment_with_bars, Server};

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
    let d = deployment_with_bars().await;
    let m1_bars = 60;
    let server = Server::start(&d).await;
    let addr = server.addr;

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
    server.shutdown_and_wait().await;
}
