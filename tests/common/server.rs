//! A running Flight SQL server on 127.0.0.1:0 over a test deployment, and a deployment with
//! bars built, for the server and client tests.

use ohlcv_server::build::{self, BuildSettings};
use std::collections::BTreeMap;
use std::sync::Arc;

use ohlcv_server::auth::Auth;
use ohlcv_server::auth::{hash_password, Role, UserConfig};
use ohlcv_server::clock::ManualClock;
use ohlcv_server::jobs::{default_schedules, RetryPolicy};
use ohlcv_server::server::{self, ServeOptions};
use ohlcv_server::timeframe::Timeframe;
use tonic::transport::Channel;

use super::trades::{load, trade};
use super::{Deployment, DAY, T0};

pub struct Server {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Options of the test servers: no users, the clock stopped at T0 + 3 days (schedules never
/// fire by themselves; admin triggers run at that time).
pub fn options() -> ServeOptions {
    let clock = Arc::new(ManualClock::at(T0 + 3 * DAY));
    ServeOptions {
        demo: false,
        auth: Arc::new(Auth::new(Default::default(), 3600, clock.clone()).unwrap()),
        tls: None,
        memory_limit_bytes: 512 << 20,
        query_timeout: std::time::Duration::from_secs(300),
        settings: BuildSettings::default(),
        schedules: default_schedules(),
        retry: RetryPolicy::default(),
        retention: ohlcv_server::config::RetentionConfig::default()
            .policy()
            .unwrap(),
        alerts: Default::default(),
        // No polling for other engines' trades: the tests that want it turn it on, the others
        // stay deterministic.
        cache: ohlcv_server::candles::cache::CacheConfig {
            trades_poll_ms: 0,
            ..Default::default()
        },
        limits: Default::default(),
        push: Default::default(),
        clock,
        // Off: a test that scrapes turns it on at a port of its own.
        telemetry_listen: String::new(),
        endpoints: Vec::new(),
        advertise: String::new(),
    }
}

/// Users for auth tests: `<name>-pw` is each password.
pub fn users() -> BTreeMap<String, UserConfig> {
    [
        ("rita", Role::Reader),
        // "al:al-pw" is 8 bytes, "ada:ada-pw" 10, "rita:rita-pw" 12: every length modulo 3,
        // so base64 with and without padding is exercised by clients that omit it.
        ("al", Role::Reader),
        ("will", Role::Writer),
        ("ada", Role::Admin),
    ]
    .into_iter()
    .map(|(name, role)| {
        (
            name.to_string(),
            UserConfig {
                password_hash: hash_password(&format!("{name}-pw")).unwrap(),
                role,
            },
        )
    })
    .collect()
}

/// [`options`] with [`users`] and tokens valid for an hour.
pub fn options_with_users() -> ServeOptions {
    let mut opts = options();
    opts.auth = Arc::new(Auth::new(users(), 3600, opts.clock.clone()).unwrap());
    opts
}

impl Server {
    pub async fn start(d: &Deployment) -> Server {
        Server::start_with(d, options()).await
    }

    pub async fn start_with(d: &Deployment, options: ServeOptions) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let writer = d.writer.clone();
        let plaintext = options.tls.is_none();
        let task = tokio::spawn(async move {
            server::serve(writer, listener, options, async {
                let _ = rx.await;
            })
            .await
            .unwrap()
        });
        let server = Server {
            addr,
            stop: Some(tx),
            task,
        };
        if plaintext {
            server.wait_serving().await;
        }
        server
    }

    /// Waits until gRPC health reports Flight SQL serving, as an orchestrator's readiness probe
    /// does: from then on the server observes every commit (writes through the shared writer
    /// before that may be missed by its cache, which a real server never sees: it is the only
    /// one committing through its writer).
    async fn wait_serving(&self) {
        let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
        for _ in 0..600 {
            assert!(
                !self.task.is_finished(),
                "the server stopped while starting"
            );
            let mut health =
                tonic_health::pb::health_client::HealthClient::new(self.channel().await);
            let check = health.check(tonic_health::pb::HealthCheckRequest {
                service: "arrow.flight.protocol.FlightService".into(),
            });
            if let Ok(Ok(reply)) =
                tokio::time::timeout(std::time::Duration::from_millis(500), check).await
            {
                if reply.into_inner().status == serving {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the server did not report serving");
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn shutdown_and_wait(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

/// Two hours of 1 trade / 30 s for kraken BTC-USD, built into all five tables (60 1m bars).
pub async fn deployment_with_bars() -> Deployment {
    let d = Deployment::new().await;
    let trades: Vec<_> = (0..120)
        .map(|i| {
            trade(
                "kraken",
                "BTC-USD",
                &i.to_string(),
                T0 + i * 30_000_000,
                100.0 + i as f64,
                1.0,
            )
        })
        .collect();
    load(&d, &trades).await;
    for tf in Timeframe::ALL {
        build::build(&d.writer, tf, T0 + 2 * DAY, BuildSettings::default())
            .await
            .unwrap();
    }
    d
}

/// `ohlcv-server serve --demo` as a process in `dir` (data dir `dir/data`), its telemetry on
/// `telemetry` (or any free port), its logs in `dir/server.log` as JSON, and the address its
/// Flight SQL listens on.
pub fn spawn_demo(dir: &std::path::Path, telemetry: Option<u16>) -> (std::process::Child, String) {
    let listen = telemetry.map_or("127.0.0.1:0".to_string(), |p| format!("127.0.0.1:{p}"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ohlcv-server"))
        .args([
            "--data-dir",
            "data",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--demo",
        ])
        .env("OHLCV_TELEMETRY__LISTEN", format!("\"{listen}\""))
        .env("OHLCV_TELEMETRY__LOG_FORMAT", "\"json\"")
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let addr = listening_address(&mut child);
    (child, addr)
}

/// The Flight SQL address a `serve` process prints first ("listening on ADDR ...").
pub fn listening_address(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string()
}

/// Stops a server process with SIGTERM and checks that it exits cleanly.
pub fn terminate(mut child: std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
}

/// Appends `batch` to `trades` through Flight SQL bulk ingest (what ADBC's `adbc_ingest` sends).
pub async fn ingest_trades(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<Channel>,
    batch: arrow::array::RecordBatch,
) -> Result<i64, arrow_flight::error::FlightError> {
    use arrow_flight::sql::{CommandStatementIngest, TableDefinitionOptions, TableExistsOption};
    let command = CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: 0,
            if_exists: TableExistsOption::Append as i32,
        }),
        table: "trades".to_string(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    };
    client
        .execute_ingest(command, futures::stream::iter([Ok(batch)]))
        .await
}

/// Every batch of one statement's answer (GetFlightInfo, then DoGet of its one endpoint).
pub async fn fetch(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Vec<arrow::array::RecordBatch> {
    use futures::TryStreamExt;
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let stream = client.do_get(ticket).await.unwrap();
    stream.try_collect().await.unwrap()
}

/// The first column of a statement's answer, as text (NULL as "").
pub async fn strings(
    client: &mut arrow_flight::sql::client::FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Vec<String> {
    use arrow::array::AsArray;
    fetch(client, sql)
        .await
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A live subscription over Flight DoExchange: the first message's descriptor carries the
/// JSON command (see `push::spec`).
pub async fn subscribe(
    channel: Channel,
    command: serde_json::Value,
) -> arrow_flight::decode::FlightRecordBatchStream {
    let mut client = arrow_flight::FlightClient::new(channel);
    let first = arrow_flight::FlightData {
        flight_descriptor: Some(arrow_flight::FlightDescriptor::new_cmd(command.to_string())),
        ..Default::default()
    };
    client
        .do_exchange(futures::stream::iter([Ok(first)]))
        .await
        .unwrap()
}
