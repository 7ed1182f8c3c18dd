//! The server's write and control surface through real clients: prepared statements with
//! parameters, ingest, auth and roles, TLS, health, the memory limit, and 32 clients querying
//! while builds commit.

mod common;

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandStatementIngest, TableDefinitionOptions, TableExistsOption};
use common::server::{deployment_with_bars, options, users, Server};
use common::trades::{trade, trade_batch, Trade};
use common::*;
use futures::TryStreamExt;
use ohlcv_server::admin::proto::admin_service_client::AdminServiceClient;
use ohlcv_server::admin::proto::{GetStatusRequest, TriggerBuildRequest};
use ohlcv_server::auth::Auth;
use ohlcv_server::clock::ManualClock;
use ohlcv_server::storage::TableKind;
use tonic::transport::Channel;
use tonic::Code;

async fn fetch_all(
    client: &mut FlightSqlServiceClient<Channel>,
    info: arrow_flight::FlightInfo,
) -> Result<Vec<RecordBatch>, FlightError> {
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("ticket");
        let stream = client.do_get(ticket).await?;
        out.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(out)
}

async fn query(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<RecordBatch> {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    fetch_all(client, info).await.unwrap()
}

fn scalar_i64(batches: &[RecordBatch], col: usize) -> i64 {
    batches[0].column(col).as_primitive::<Int64Type>().value(0)
}

/// The gRPC status inside a client error, however the client wrapped it.
fn status_of(e: FlightError) -> tonic::Status {
    fn external(inner: Box<dyn std::error::Error + Send + Sync>) -> tonic::Status {
        match inner.downcast::<tonic::Status>() {
            Ok(s) => *s,
            Err(other) => match other.downcast::<FlightError>() {
                Ok(f) => status_of(*f),
                Err(other) => match other.downcast::<arrow::error::ArrowError>() {
                    Ok(a) => status_of(FlightError::Arrow(*a)),
                    Err(other) => panic!("not a status: {other}"),
                },
            },
        }
    }
    match e {
        FlightError::Tonic(s) => *s,
        FlightError::ExternalError(inner) => external(inner),
        FlightError::Arrow(arrow::error::ArrowError::ExternalError(inner)) => external(inner),
        other => panic!("not a status: {other}"),
    }
}

fn ingest_command(table: &str) -> CommandStatementIngest {
    CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: 0,
            if_exists: TableExistsOption::Append as i32,
        }),
        table: table.to_string(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    }
}

async fn ingest(
    client: &mut FlightSqlServiceClient<Channel>,
    table: &str,
    batch: RecordBatch,
) -> Result<i64, tonic::Status> {
    client
        .execute_ingest(ingest_command(table), futures::stream::iter([Ok(batch)]))
        .await
        .map_err(status_of)
}

/// Parquet files under `dir`, recursively.
fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(parquet_files(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Two trades in each minute of the T0 hour with ids starting at `first`.
fn round_of_trades(first: usize) -> Vec<Trade> {
    (0..120)
        .map(|i| {
            trade(
                "kraken",
                "BTC-USD",
                &(first + i).to_string(),
                T0 + (i as i64 / 2) * MIN + 7_000_000 + (i as i64 % 2) * 20_000_000,
                90.0 + i as f64,
                0.5,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_bind_parameters() {
    let d = deployment_with_bars().await;
    let server = Server::start(&d).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let mut stmt = client
        .prepare(
            "select count(*) as n from ohlcv_1m where symbol = $1 and trade_count >= $2".into(),
            None,
        )
        .await
        .unwrap();
    let params = stmt.parameter_schema().unwrap().clone();
    assert_eq!(params.fields().len(), 2);
    assert_eq!(params.field(0).data_type(), &DataType::Utf8);
    assert_eq!(stmt.dataset_schema().unwrap().field(0).name(), "n");
    let bind = |symbol: &str, min: i64| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("$1", DataType::Utf8, true),
                Field::new("$2", DataType::Int64, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec![symbol])),
                Arc::new(arrow::array::Int64Array::from(vec![min])),
            ],
        )
        .unwrap()
    };
    for (symbol, min, expected) in [("BTC-USD", 1, 60), ("BTC-USD", 3, 0), ("ETH-USD", 1, 0)] {
        stmt.set_parameters(bind(symbol, min)).unwrap();
        let info = stmt.execute().await.unwrap();
        let rows = fetch_all(&mut client, info).await.unwrap();
        assert_eq!(scalar_i64(&rows, 0), expected, "{symbol} >= {min}");
    }
    stmt.close().await.unwrap();
    // Without parameters where they are needed: a clear client error.
    let mut unbound = client
        .prepare("select * from ohlcv_1m where symbol = $1".into(), None)
        .await
        .unwrap();
    let err = unbound.execute().await.unwrap_err();
    assert_eq!(status_of(err).code(), Code::InvalidArgument);
    server.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_validates_like_load_and_the_next_build_sees_it() {
    let d = deployment_with_bars().await;
    let server = Server::start(&d).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let trades_before = d.snapshot(TableKind::Trades).await;

    // A bad row: the whole request is refused, naming it, and nothing is written.
    let mut bad = round_of_trades(1000);
    bad[37].price = -1.0;
    let err = ingest(&mut client, "trades", trade_batch(&bad))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("row 37"), "{}", err.message());
    assert_eq!(d.snapshot(TableKind::Trades).await, trades_before);

    let err = ingest(&mut client, "ohlcv_1m", trade_batch(&round_of_trades(1000)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let err = ingest(&mut client, "nope", trade_batch(&round_of_trades(1000)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    let mut create = ingest_command("trades");
    create.table_definition_options.as_mut().unwrap().if_exists = TableExistsOption::Fail as i32;
    let err = client
        .execute_ingest(
            create,
            futures::stream::iter([Ok(trade_batch(&round_of_trades(1000)))]),
        )
        .await
        .map_err(status_of)
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    assert_eq!(d.snapshot(TableKind::Trades).await, trades_before);
    // The schema named as the catalog: the refusal says which name was wrong.
    let mut misplaced = ingest_command("trades");
    misplaced.catalog = Some("market".into());
    let err = client
        .execute_ingest(
            misplaced,
            futures::stream::iter([Ok(trade_batch(&round_of_trades(1000)))]),
        )
        .await
        .map_err(status_of)
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert!(
        err.message().contains("catalog 'market' does not exist"),
        "{}",
        err.message()
    );
    assert_eq!(d.snapshot(TableKind::Trades).await, trades_before);

    // An upload larger than one staging chunk (250,000 rows: its first 300,000 rows are
    // being written as files when the bad row arrives in its last batch): refused, nothing
    // committed, no file left.
    let files_before = parquet_files(d.dir.path());
    let batches: Vec<RecordBatch> = (0..4)
        .map(|b| {
            let mut trades: Vec<Trade> = (0..100_000)
                .map(|i| {
                    let n = b * 100_000 + i;
                    trade(
                        "kraken",
                        "SOL-USD",
                        &format!("big{n}"),
                        T0 + n as i64 * 10_000,
                        20.0,
                        1.0,
                    )
                })
                .collect();
            if b == 3 {
                trades[99_999].qty = f64::NAN;
            }
            trade_batch(&trades)
        })
        .collect();
    let err = client
        .execute_ingest(
            ingest_command("trades"),
            futures::stream::iter(batches.into_iter().map(Ok)),
        )
        .await
        .map_err(status_of)
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("row 399999"), "{}", err.message());
    assert_eq!(d.snapshot(TableKind::Trades).await, trades_before);
    assert_eq!(
        parquet_files(d.dir.path()),
        files_before,
        "staged files discarded"
    );

    let added = ingest(&mut client, "trades", trade_batch(&round_of_trades(1000)))
        .await
        .unwrap();
    assert_eq!(added, 120);
    let mut admin = AdminServiceClient::new(server.channel().await);
    admin
        .trigger_build(TriggerBuildRequest {
            timeframes: vec!["1m".into(), "1h".into()],
        })
        .await
        .unwrap();
    let rows = query(
        &mut client,
        "select sum(trade_count) from ohlcv_1m union all select sum(trade_count) from ohlcv_1h",
    )
    .await;
    let sums: Vec<i64> = rows
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(
        sums,
        vec![240, 240],
        "1m and 1h bars include the ingested trades"
    );
    server.shutdown_and_wait().await;
}

/// The admin client of `ohlcv-server admin`, logged in as `user`.
async fn admin_as(server: &Server, user: &str) -> ohlcv_server::admin::client::Client {
    ohlcv_server::admin::client::connect(
        &format!("http://{}", server.addr),
        Some(user),
        Some(&format!("{user}-pw")),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_guard_every_call() {
    let d = deployment_with_bars().await;
    let clock = Arc::new(ManualClock::at(T0 + 3 * DAY));
    let mut opts = options();
    opts.auth = Arc::new(Auth::new(users(), 600, clock.clone()).unwrap());
    opts.clock = clock.clone();
    let server = Server::start_with(&d, opts).await;

    // No token: Unauthenticated, for Flight SQL and admin alike.
    let mut anonymous = FlightSqlServiceClient::new(server.channel().await);
    let err = anonymous
        .execute("select 1".into(), None)
        .await
        .unwrap_err();
    assert_eq!(status_of(err).code(), Code::Unauthenticated);
    let err = AdminServiceClient::new(server.channel().await)
        .get_status(GetStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = anonymous.handshake("rita", "wrong").await.unwrap_err();
    assert!(err.to_string().contains("wrong password"), "{err}");

    // Health probes need no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "arrow.flight.protocol.FlightService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // A reader queries, but may neither ingest nor administer.
    let mut reader = FlightSqlServiceClient::new(server.channel().await);
    let token = reader.handshake("rita", "rita-pw").await.unwrap();
    assert!(!token.is_empty(), "the token is also the handshake payload");
    assert_eq!(
        scalar_i64(
            &query(&mut reader, "select count(*) from ohlcv_1m").await,
            0
        ),
        60
    );
    let err = ingest(&mut reader, "trades", trade_batch(&round_of_trades(5000)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let err = admin_as(&server, "rita")
        .await
        .get_status(GetStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());

    // A writer ingests; an admin administers.
    let mut writer = FlightSqlServiceClient::new(server.channel().await);
    writer.handshake("will", "will-pw").await.unwrap();
    assert_eq!(
        ingest(&mut writer, "trades", trade_batch(&round_of_trades(5000)))
            .await
            .unwrap(),
        120
    );
    let status = admin_as(&server, "ada")
        .await
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let trades = status.tables.iter().find(|t| t.table == "trades").unwrap();
    assert_eq!(trades.rows, 240);

    // An admin revokes a user's tokens: that user must log in again; others are untouched.
    let revoked = admin_as(&server, "ada")
        .await
        .revoke_tokens(ohlcv_server::admin::proto::RevokeTokensRequest {
            user: "will".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 1);
    let err = writer.execute("select 1".into(), None).await.unwrap_err();
    assert_eq!(status_of(err).code(), Code::Unauthenticated);
    query(&mut reader, "select 1").await;
    let mut writer = FlightSqlServiceClient::new(server.channel().await);
    writer.handshake("will", "will-pw").await.unwrap();
    query(&mut writer, "select 1").await;

    // Tokens expire.
    clock.advance(601 * 1_000_000);
    let err = reader.execute("select 1".into(), None).await.unwrap_err();
    let status = status_of(err);
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
    server.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_a_certificate_is_configured() {
    let d = deployment_with_bars().await;
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A CA, and a server certificate for localhost signed by it.
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.path().join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let pem = std::fs::read(&cert).unwrap();
    let mut opts = options();
    opts.tls = Some((pem.clone(), std::fs::read(&key).unwrap()));
    let server = Server::start_with(&d, opts).await;

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    assert_eq!(
        scalar_i64(
            &query(&mut client, "select count(*) from ohlcv_5m").await,
            0
        ),
        12
    );

    let plain = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let err = FlightSqlServiceClient::new(plain)
            .execute("select 1".into(), None)
            .await;
        assert!(err.is_err(), "plaintext is refused on a TLS port");
    }
    server.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_the_memory_limit_fails_alone() {
    let d = deployment_with_bars().await;
    let mut opts = options();
    opts.memory_limit_bytes = 1 << 20;
    let server = Server::start_with(&d, opts).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let big = "select count(*) from generate_series(1, 2000000) a(x) \
               join generate_series(1, 2000000) b(y) on x = y";
    let info = client.execute(big.into(), None).await.unwrap();
    let err = fetch_all(&mut client, info).await.unwrap_err();
    let status = status_of(err);
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    // The server is fine afterwards.
    assert_eq!(
        scalar_i64(
            &query(&mut client, "select count(*) from ohlcv_1m").await,
            0
        ),
        60
    );
    server.shutdown_and_wait().await;
}

/// 32 clients query while trades are ingested and bars rebuilt; every answer must be one
/// committed state: each ingest adds 120 trades in one commit, and each 1m build revises the
/// same 60 bars in one commit, so a half-applied commit would show as a trade count that is not
/// a multiple of 120 or as a bar count other than 60.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_see_only_whole_commits() {
    let d = deployment_with_bars().await;
    let server = Arc::new(Server::start(&d).await);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (server, done) = (Arc::clone(&server), Arc::clone(&done));
        clients.push(tokio::spawn(async move {
            let mut client = FlightSqlServiceClient::new(server.channel().await);
            let mut seen = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let rows = query(
                    &mut client,
                    "select (select count(*) from trades) as trades, count(*) as bars, \
                     count(distinct window_start) as windows, sum(trade_count) as traded \
                     from ohlcv_1m",
                )
                .await;
                let b = &rows[0];
                let v = |i: usize| b.column(i).as_primitive::<Int64Type>().value(0);
                let (trades, bars, distinct, traded) = (v(0), v(1), v(2), v(3));
                assert_eq!(trades % 120, 0, "trades half-appended: {trades}");
                assert_eq!((bars, distinct), (60, 60), "bars half-replaced");
                assert_eq!(traded % 120, 0, "bars from a partial build: {traded}");
                seen.push(traded);
                if finished {
                    return seen;
                }
            }
        }));
    }
    let mut writer = FlightSqlServiceClient::new(server.channel().await);
    let mut admin = AdminServiceClient::new(server.channel().await);
    for round in 1..=6 {
        ingest(
            &mut writer,
            "trades",
            trade_batch(&round_of_trades(round * 1000)),
        )
        .await
        .unwrap();
        admin
            .trigger_build(TriggerBuildRequest {
                timeframes: vec!["1m".into()],
            })
            .await
            .unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut queries = 0;
    for c in clients {
        let seen = c.await.unwrap();
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "a client went back in time: {seen:?}"
        );
        assert_eq!(
            *seen.last().unwrap(),
            120 * 7,
            "the last answer shows every round"
        );
        queries += seen.len();
    }
    assert!(queries >= 32 * 2);
    match Arc::try_unwrap(server) {
        Ok(server) => server.shutdown_and_wait().await,
        Err(_) => panic!("clients still hold the server"),
    }
}

/// A client that stops reading and drops its stream cancels the query: its memory comes back.
/// The query holds most of the pool (a hash join's build side, which cannot spill) while it
/// streams, so the same query can only run again once the first one has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_cancels_its_query() {
    let d = deployment_with_bars().await;
    let mut opts = options();
    opts.memory_limit_bytes = 32 << 20;
    let server = Server::start_with(&d, opts).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let join = "select x, y from generate_series(1, 1000000) a(x) \
                join generate_series(1, 3000000) b(y) on x = y";
    let info = client.execute(join.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = client.do_get(ticket.clone()).await.unwrap();
    let first = stream.try_next().await.unwrap().expect("a first batch");
    assert!(first.num_rows() > 0);
    // While the first query is alive, a second copy does not fit.
    let mut other = FlightSqlServiceClient::new(server.channel().await);
    let second = match other.do_get(ticket.clone()).await {
        Ok(s) => s.try_collect::<Vec<_>>().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert_eq!(
        status_of(second.unwrap_err()).code(),
        Code::ResourceExhausted,
        "the pool is sized for one copy"
    );
    drop(stream);
    // Once the server sees the cancellation the memory is free again.
    let started = std::time::Instant::now();
    loop {
        let mut again = other.do_get(ticket.clone()).await.unwrap();
        match again.try_next().await {
            Ok(Some(_)) => break,
            Ok(None) => panic!("the join has rows"),
            Err(e) => {
                assert_eq!(status_of(e).code(), Code::ResourceExhausted);
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(10),
                    "the dropped query still holds its memory"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    server.shutdown_and_wait().await;
}

/// One user's wrong passwords make that user wait from that address, and no one else: another
/// user behind the same address (a NAT, a proxy) logs in at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_out_no_other_user_behind_the_same_address() {
    let d = deployment_with_bars().await;
    let server = Server::start_with(&d, common::server::options_with_users()).await;
    for _ in 0..3 {
        let mut client = FlightSqlServiceClient::new(server.channel().await);
        let err = client.handshake("rita", "wrong").await.unwrap_err();
        assert!(err.to_string().contains("wrong password"), "{err}");
    }
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let err = client.handshake("rita", "rita-pw").await.unwrap_err();
    assert!(err.to_string().contains("too many failed logins"), "{err}");
    let mut other = FlightSqlServiceClient::new(server.channel().await);
    other.handshake("will", "will-pw").await.unwrap();
    server.shutdown_and_wait().await;
}
