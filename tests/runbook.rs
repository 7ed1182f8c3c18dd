//! `docs/RUNBOOK.md` cannot rot: every command in its `sh` and `sql` blocks is run against a
//! real server (`serve --demo`, data flowing), and its `sh offline` blocks with the server
//! stopped. The only change made to a command is the telemetry port (the runbook's
//! `127.0.0.1:50052`), which the test picks free; `ohlcv-server admin` finds the server through
//! `OHLCVCTL_SERVER`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::Channel;

/// `(info string, command)` of every line of every fenced block.
fn commands(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in markdown.lines() {
        let trimmed = line.trim();
        match (&block, trimmed.strip_prefix("```")) {
            (None, Some(info)) => block = Some(info.trim().to_string()),
            (Some(_), Some(_)) => block = None,
            (Some(info), None) if !trimmed.is_empty() => {
                out.push((info.clone(), trimmed.to_string()))
            }
            _ => {}
        }
    }
    out
}

fn shell(command: &str, dir: &std::path::Path, telemetry: u16, server: &str) {
    let command = command.replace("127.0.0.1:50052", &format!("127.0.0.1:{telemetry}"));
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_ohlcv-server"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .args(["-c", &command])
        .current_dir(dir)
        .env("PATH", path)
        .env("OHLCVCTL_SERVER", server)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "runbook command failed: {command}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn sql(client: &mut FlightSqlServiceClient<Channel>, statement: &str) {
    let info = client
        .execute(statement.trim_end_matches(';').to_string(), None)
        .await
        .unwrap_or_else(|e| panic!("runbook query failed: {statement}\n{e}"));
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
        stream
            .try_collect::<Vec<_>>()
            .await
            .unwrap_or_else(|e| panic!("runbook query failed: {statement}\n{e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runbook_command_runs_against_a_real_server() {
    let runbook =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/RUNBOOK.md")).unwrap();
    let commands = commands(&runbook);
    let count = |info: &str| commands.iter().filter(|(i, _)| i == info).count();
    assert!(
        count("sh") >= 15 && count("sql") >= 8 && count("sh offline") >= 2,
        "{commands:#?}"
    );
    assert!(
        commands
            .iter()
            .all(|(info, _)| ["sh", "sql", "sh offline"].contains(&info.as_str())),
        "a block of another kind would not be run: {commands:#?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let telemetry = common::free_port();
    let (child, addr) = common::server::spawn_demo(dir.path(), Some(telemetry));
    let server = format!("http://{addr}");
    let channel = Channel::from_shared(server.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    // The demo's first builds: the runbook's queries then have rows to look at.
    let started = Instant::now();
    loop {
        let info = client
            .execute("select count(*) from ohlcv_1h".into(), None)
            .await
            .unwrap();
        let stream = client
            .do_get(info.endpoint[0].ticket.clone().unwrap())
            .await
            .unwrap();
        let batches: Vec<_> = stream.try_collect().await.unwrap();
        let n = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(
            batches[0].column(0),
        )
        .value(0);
        if n > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the demo never built"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    for (info, command) in &commands {
        match info.as_str() {
            "sh" => shell(command, dir.path(), telemetry, &server),
            "sql" => sql(&mut client, command).await,
            _ => {}
        }
    }

    common::server::terminate(child);
    for (info, command) in &commands {
        if info == "sh offline" {
            shell(command, dir.path(), telemetry, &server);
        }
    }
}
