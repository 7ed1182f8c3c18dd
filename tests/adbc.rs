//! Python clients against the real server with users configured: the ADBC Flight SQL driver
//! (queries, prepared statements with parameters, `adbc_get_objects`, `adbc_get_table_schema`,
//! `adbc_ingest`, roles), plain `pyarrow.flight`, and `flightsql-dbapi` through SQLAlchemy. The
//! client side is in tests/python/.

mod common;

use std::process::Command;

use common::server::{deployment_with_bars, options_with_users, Server};

fn python_with_clients() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import adbc_driver_flightsql, flightsql, sqlalchemy"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI must install tests/python/requirements.txt");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_queries_prepared_statements_ingest_and_roles() {
    if !python_with_clients() {
        eprintln!("skipping: tests/python/requirements.txt is not installed");
        return;
    }
    let d = deployment_with_bars().await;
    let m1_bars = 60;
    let server = Server::start_with(&d, options_with_users()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_flight_and_sqlalchemy() {
    if !python_with_clients() {
        eprintln!("skipping: tests/python/requirements.txt is not installed");
        return;
    }
    let d = deployment_with_bars().await;
    let server = Server::start_with(&d, options_with_users()).await;
    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/flight_clients.py"
        ))
        .arg(server.addr.ip().to_string())
        .arg(server.addr.port().to_string())
        .arg("60")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.shutdown_and_wait().await;
}
