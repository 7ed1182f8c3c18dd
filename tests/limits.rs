//! Hostile statements against a real server process: a statement runs no longer than
//! `[server] query_timeout_secs` or its client's deadline, a client that goes away stops its
//! statement, and a value built by one function counts against the query memory pool. The
//! server's CPU time and peak RSS are read from `/proc`, so the checks see what the process
//! did, not what the client was told.

mod common;

use std::time::{Duration, Instant};

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::Ticket;
use futures::TryStreamExt;
use tonic::transport::Channel;
use tonic::Code;

/// A server process, killed if the test ends (or fails) before it is stopped.
struct Process(Option<std::process::Child>);

impl Process {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }

    /// SIGTERM, and a clean exit.
    fn terminate(mut self) {
        common::server::terminate(self.0.take().unwrap());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `ohlcv-server serve` on an empty data dir with these limits; (process, its address).
fn spawn(dir: &std::path::Path, timeout_secs: u64, memory_mb: u64) -> (Process, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ohlcv-server"))
        .args(["--data-dir", "data", "serve", "--listen", "127.0.0.1:0"])
        .env("OHLCV_SERVER__QUERY_TIMEOUT_SECS", timeout_secs.to_string())
        .env("OHLCV_SERVER__QUERY_MEMORY_LIMIT_MB", memory_mb.to_string())
        .env("OHLCV_TELEMETRY__LISTEN", "\"\"")
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let addr = common::server::listening_address(&mut child);
    (Process(Some(child)), addr)
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Seconds of CPU the process has used (user + system).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Peak resident memory of the process in MB (`VmHWM`).
fn peak_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

/// Waits a second for a stopped statement's last poll to end, then checks that the process
/// is (nearly) idle over the next second: the plan is no longer running.
async fn assert_goes_idle(pid: u32, what: &str) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_secs(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_secs(pid) - before;
    assert!(
        used < 0.3,
        "{what}: the server still used {used:.2} s of CPU in a second"
    );
}

async fn ticket(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Ticket {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    info.endpoint[0].ticket.clone().unwrap()
}

fn status_of(e: arrow_flight::error::FlightError) -> tonic::Status {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => panic!("not a gRPC status: {other}"),
    }
}

/// The status a statement fails with, whether planning (GetFlightInfo) or its stream says so.
async fn failure(client: &mut FlightSqlServiceClient<Channel>, statement: &str) -> tonic::Status {
    let info = match client.execute(statement.to_string(), None).await {
        Ok(info) => info,
        Err(e) => return status_of(e),
    };
    let t = info.endpoint[0].ticket.clone().unwrap();
    match client.do_get(t).await {
        Ok(stream) => status_of(stream.try_collect::<Vec<_>>().await.unwrap_err()),
        Err(e) => status_of(e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_stop_at_their_time_limit_and_when_their_client_goes() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn(dir.path(), 3, 256);
    let pid = child.id();
    let mut sql = FlightSqlServiceClient::new(channel(&addr).await);
    // Sends nothing until it is done: only the limit can stop it.
    let endless = "select count(*) from generate_series(1, 10000000000) where value % 7 = 3";

    // The server's limit.
    let started = Instant::now();
    let err = failure(&mut sql, endless).await;
    let took = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(
        err.message().contains("query_timeout_secs"),
        "{}",
        err.message()
    );
    assert!(took < Duration::from_secs(6), "stopped after {took:?}");
    assert_goes_idle(pid, "past query_timeout_secs").await;

    // The client's own, shorter deadline (grpc-timeout).
    let t = ticket(&mut sql, endless).await;
    let mut request = tonic::Request::new(t);
    request.set_timeout(Duration::from_secs(1));
    let mut raw = FlightServiceClient::new(channel(&addr).await);
    let started = Instant::now();
    let err = match raw.do_get(request).await {
        Ok(response) => response
            .into_inner()
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_goes_idle(pid, "past the client's deadline").await;

    // A client that goes away in the middle of a cross join of 10^10 rows.
    let cross = "select count(*) from generate_series(1, 100000) a(x), \
                 generate_series(1, 100000) b(y) where x + y > 0";
    let t = ticket(&mut sql, cross).await;
    let mut gone = FlightServiceClient::new(channel(&addr).await);
    let call = tokio::spawn(async move {
        let stream = gone.do_get(t).await?;
        stream.into_inner().try_collect::<Vec<_>>().await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = cpu_secs(pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        cpu_secs(pid) - before > 0.2,
        "the cross join was running before its client went"
    );
    call.abort();
    assert_goes_idle(pid, "after its client went").await;

    // And the server still answers.
    let t = ticket(&mut sql, "select 1").await;
    let batches: Vec<_> = sql.do_get(t).await.unwrap().try_collect().await.unwrap();
    assert_eq!(batches[0].num_rows(), 1);
    child.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_huge_value_fails_its_query_alone_within_the_memory_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn(dir.path(), 60, 256);
    let pid = child.id();
    let mut sql = FlightSqlServiceClient::new(channel(&addr).await);
    let idle = peak_mb(pid);
    for statement in [
        "select repeat('x', 2000000000)",
        "select length(repeat('ab', 1000000000))",
        "select lpad('x', 1500000000)",
        "select array_repeat(1, 500000000)",
        "select cardinality(range(1, 1000000000))",
        "select length(regexp_replace(repeat('x', 100000), '', repeat('y', 10000), 'g'))",
    ] {
        let err = failure(&mut sql, statement).await;
        assert_eq!(
            err.code(),
            Code::ResourceExhausted,
            "{statement}: {}",
            err.message()
        );
        assert!(
            err.message().contains("query_memory_limit_mb"),
            "{statement}: {}",
            err.message()
        );
    }
    let peak = peak_mb(pid);
    assert!(
        peak <= idle + 256,
        "peak RSS {peak} MB: more than the 256 MB pool over the idle {idle} MB"
    );
    // Values that fit are built as before.
    let t = ticket(&mut sql, "select length(repeat('ab', 1000000))").await;
    let batches: Vec<_> = sql.do_get(t).await.unwrap().try_collect().await.unwrap();
    let length = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int32Array>()
        .map(|a| i64::from(a.value(0)))
        .or_else(|| {
            batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap();
    assert_eq!(length, 2_000_000);
    child.terminate();

    // A function that only multiplies its input (hex doubles it) is measured once built and
    // refused past the pool; below it, it answers.
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn(dir.path(), 60, 8);
    let mut sql = FlightSqlServiceClient::new(channel(&addr).await);
    let statement = "select length(encode(repeat('x', 5000000), 'hex'))";
    let err = failure(&mut sql, statement).await;
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message().contains("encode() built"),
        "{}",
        err.message()
    );
    let t = ticket(
        &mut sql,
        "select length(encode(repeat('x', 1000000), 'hex'))",
    )
    .await;
    let batches: Vec<_> = sql.do_get(t).await.unwrap().try_collect().await.unwrap();
    assert_eq!(batches[0].num_rows(), 1);
    child.terminate();
}
