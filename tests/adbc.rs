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

/// Runs `tests/python/<script>` with `args` against a server with users over bars of an hour;
/// returns its stdout. `None` when the Python clients are not installed (never in CI).
async fn run_python(
    script: &str,
    args: impl Fn(std::net::SocketAddr) -> Vec<String>,
) -> Option<String> {
    if !python_with_clients() {
        eprintln!("skipping: tests/python/requirements.txt is not installed");
        return None;
    }
    let d = deployment_with_bars().await;
    let server = Server::start_with(&d, options_with_users()).await;
    let out = tokio::process::Command::new("python3")
        .arg(format!(
            "{}/tests/python/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args(server.addr))
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
    Some(String::from_utf8_lossy(&out.stdout).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_queries_prepared_statements_ingest_and_roles() {
    let out = run_python("adbc_client.py", |addr| {
        vec![format!("grpc://{addr}"), "60".into()]
    })
    .await;
    if let Some(out) = out {
        assert!(out.contains("adbc: 60 1m bars"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_flight_and_sqlalchemy() {
    let out = run_python("flight_clients.py", |addr| {
        vec![addr.ip().to_string(), addr.port().to_string(), "60".into()]
    })
    .await;
    if let Some(out) = out {
        assert!(out.contains("flight: 60 1m bars"), "{out}");
    }
}
