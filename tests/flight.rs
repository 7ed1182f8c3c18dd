//! Flight SQL against the real server on 127.0.0.1:0, through the Rust Flight SQL client:
//! statements, metadata, and the status codes of bad requests. Then `ohlcv-server serve --demo`
//! as a user starts it: candles appear, SIGTERM shuts it down cleanly.

mod common;

use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::ipc::writer::StreamWriter;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetExportedKeys, CommandGetPrimaryKeys, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandStatementQuery, ProstMessageExt,
};
use arrow_flight::{FlightDescriptor, Ticket};
use common::server::{deployment_with_bars, Server};
use futures::TryStreamExt;
use ohlcv_server::flight::prepared::Handle;
use ohlcv_server::storage::TableKind;
use ohlcv_server::timeframe::Timeframe;
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

async fn query(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<RecordBatch> {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let mut out = Vec::new();
    for endpoint in info.endpoint {
        let stream = client.do_get(endpoint.ticket.unwrap()).await.unwrap();
        out.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    out
}

/// Runs the first endpoint of a metadata FlightInfo.
async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: arrow_flight::FlightInfo,
) -> Vec<RecordBatch> {
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let stream = client.do_get(ticket).await.unwrap();
    stream.try_collect().await.unwrap()
}

fn count(batches: &[RecordBatch]) -> i64 {
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_and_metadata_through_the_flight_sql_client() {
    let d = deployment_with_bars().await;
    let server = Server::start(&d).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);

    assert_eq!(
        count(&query(&mut client, "select count(*) from ohlcv_1m").await),
        60
    );
    let rows = query(
        &mut client,
        "select window_start, open, close from ohlcv.market.ohlcv_5m \
         where symbol = 'BTC-USD' order by window_start",
    )
    .await;
    let n: usize = rows.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 12);
    assert_eq!(
        rows[0]
            .column(1)
            .as_primitive::<arrow::datatypes::Float64Type>()
            .value(0),
        100.0
    );

    let catalogs = client.get_catalogs().await.unwrap();
    let batches = fetch(&mut client, catalogs).await;
    assert_eq!(batches[0].column(0).as_string::<i32>().value(0), "ohlcv");

    let tables = client
        .get_tables(CommandGetTables {
            include_schema: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let batches = fetch(&mut client, tables).await;
    let names: Vec<&str> = batches[0]
        .column(2)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(
        names,
        [
            "ohlcv_1d",
            "ohlcv_1h",
            "ohlcv_1m",
            "ohlcv_30m",
            "ohlcv_5m",
            "trades",
            "cache_stats",
            "cluster",
            "job_runs",
            "jobs",
            "retention_runs",
            "snapshots",
            "validation_results"
        ]
    );
    assert_eq!(batches[0].num_columns(), 5, "table schemas included");

    let keys = client
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: None,
            db_schema: Some("market".into()),
            table: "ohlcv_1m".into(),
        })
        .await
        .unwrap();
    let batches = fetch(&mut client, keys).await;
    let columns: Vec<&str> = batches[0]
        .column(3)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert_eq!(columns, ["exchange", "symbol", "window_start"]);
    let exported = client
        .get_exported_keys(CommandGetExportedKeys {
            catalog: None,
            db_schema: None,
            table: "ohlcv_1m".into(),
        })
        .await
        .unwrap();
    let batches = fetch(&mut client, exported).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);

    let types = client
        .get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    let batches = fetch(&mut client, types).await;
    let names: Vec<&str> = batches[0]
        .column(0)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert!(
        names.contains(&"TIMESTAMP WITH TIME ZONE") && names.contains(&"DOUBLE"),
        "{names:?}"
    );
    server.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_codes_and_change_nothing() {
    let d = deployment_with_bars().await;
    let before = d.snapshot(TableKind::Bars(Timeframe::M1)).await;
    let server = Server::start(&d).await;
    let mut raw = FlightServiceClient::new(server.channel().await);
    let info = |sql: &str| {
        FlightDescriptor::new_cmd(
            CommandStatementQuery {
                query: sql.to_string(),
                transaction_id: None,
            }
            .as_any()
            .encode_to_vec(),
        )
    };
    let code = |r: Result<tonic::Response<arrow_flight::FlightInfo>, tonic::Status>| {
        let s = r.unwrap_err();
        (s.code(), s.message().to_string())
    };
    let (c, m) = code(raw.get_flight_info(info("selec * from ohlcv_1m")).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("selec"), "DataFusion's message: {m}");
    let (c, m) = code(
        raw.get_flight_info(info("select * from no_such_table"))
            .await,
    );
    assert_eq!(c, Code::NotFound, "{m}");
    for write in [
        "drop table ohlcv_1m",
        "insert into ohlcv_1m select * from ohlcv_1m",
        "create table x as select 1",
    ] {
        let (c, m) = code(raw.get_flight_info(info(write)).await);
        assert_eq!(c, Code::InvalidArgument, "{write}: {m}");
    }
    let garbage = raw
        .do_get(Ticket::new(b"\x01\x02not a ticket".to_vec()))
        .await;
    let status = garbage.err().map(|s| s.code());
    assert_eq!(status, Some(Code::InvalidArgument), "malformed ticket");

    // What a statement computes on bad values is the user's error, wherever it surfaces.
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    for (sql, want) in [
        ("select 1/0", Code::InvalidArgument),
        (
            "select count(*) from ohlcv_1m where window_start > 'garbage'",
            Code::InvalidArgument,
        ),
        (
            "select * from candles('kraken', 'BTC-USD', '1m', '0001-01-01T00:00:00Z', now(), \
             fill => 'previous')",
            Code::ResourceExhausted,
        ),
    ] {
        let (c, m) = first_error(&mut client, sql).await;
        assert_eq!(c, want, "{sql}: {m}");
    }
    let (_, m) = first_error(
        &mut client,
        "select * from candles('kraken', 'BTC-USD', '1m', '0001-01-01T00:00:00Z', now(), \
         fill => 'previous')",
    )
    .await;
    assert!(m.contains("limit of 100000 windows"), "{m}");
    assert!(m.contains("max_candle_windows"), "{m}");
    // The range is named in the time format the user writes, not as raw nanoseconds.
    assert!(m.contains("from 0001-01-01T00:00:00Z to 20"), "{m}");

    // A command whose protobuf is malformed, and SQL that is not UTF-8.
    let type_url = "type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery";
    for value in [vec![0x0a, 0xff, 0xff, 0xff], vec![0x0a, 0x02, 0xc3, 0x28]] {
        let any = arrow_flight::sql::Any {
            type_url: type_url.to_string(),
            value: value.into(),
        };
        let descriptor = FlightDescriptor::new_cmd(any.encode_to_vec());
        let (c, m) = code(raw.get_flight_info(descriptor).await);
        assert_eq!(c, Code::InvalidArgument, "{m}");
        assert!(m.contains("malformed command"), "{m}");
    }

    // A forged prepared-statement handle whose parameters have no row.
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
    let mut ipc = Vec::new();
    let mut writer = StreamWriter::try_new(&mut ipc, &schema).unwrap();
    writer
        .write(&RecordBatch::new_empty(schema.clone()))
        .unwrap();
    writer.finish().unwrap();
    drop(writer);
    let forged = Handle {
        sql: "select $1".into(),
        parameters: ipc,
    };
    let cmd = CommandPreparedStatementQuery {
        prepared_statement_handle: forged.to_bytes().into(),
    };
    let (c, m) = code(
        raw.get_flight_info(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec()))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument, "{m}");

    // More values bound than the statement has placeholders.
    let mut prepared = client.prepare("select $1".to_string(), None).await.unwrap();
    let two = RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int64, true),
        ])),
        vec![
            std::sync::Arc::new(Int64Array::from(vec![1])),
            std::sync::Arc::new(Int64Array::from(vec![2])),
        ],
    )
    .unwrap();
    prepared.set_parameters(two).unwrap();
    match prepared.execute().await {
        Err(FlightError::Tonic(s)) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{s}");
            assert!(s.message().contains("parameter 2"), "{s}");
        }
        other => panic!("two values bound to one placeholder: {other:?}"),
    }

    // An upload without a command.
    let empty = raw.do_put(futures::stream::empty()).await;
    let status = match empty {
        Ok(response) => response.into_inner().try_collect::<Vec<_>>().await.err(),
        Err(e) => Some(e),
    };
    assert_eq!(status.map(|s| s.code()), Some(Code::InvalidArgument));

    assert_eq!(d.snapshot(TableKind::Bars(Timeframe::M1)).await, before);
    server.shutdown_and_wait().await;
}

/// The status of the first failure of `sql`: planning (GetFlightInfo) or streaming (DoGet).
async fn first_error(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> (Code, String) {
    let status = |e: FlightError| -> (Code, String) {
        match e {
            FlightError::Tonic(s) => (s.code(), s.message().to_string()),
            other => (Code::Unknown, other.to_string()),
        }
    };
    let info = match client.execute(sql.to_string(), None).await {
        Ok(info) => info,
        Err(e) => return status(e),
    };
    for endpoint in info.endpoint {
        match client.do_get(endpoint.ticket.unwrap()).await {
            Ok(stream) => {
                if let Err(e) = stream.try_collect::<Vec<_>>().await {
                    return status(e);
                }
            }
            Err(e) => return status(e),
        }
    }
    panic!("{sql} succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_shows_candles_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = common::server::spawn_demo(dir.path(), None);
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    let started = Instant::now();
    let mut candles = 0;
    while started.elapsed() < Duration::from_secs(120) {
        candles = count(&query(&mut client, "select count(*) from ohlcv_1m").await);
        let hours = count(&query(&mut client, "select count(*) from ohlcv_1h").await);
        if candles > 0 && hours > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(candles > 1000, "a day of demo candles, got {candles}");
    common::server::terminate(child);
    // JSON logs, one object per line; the builder's lines carry their job span.
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "job succeeded"
                && l["span"]["name"] == "job"
                && l["span"]["timeframe"].is_string()),
        "{log}"
    );
    // Query streams log their row count in the request's span.
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "rows streamed"
                && l["fields"]["rows"].as_u64() == Some(1)
                && l["span"]["method"]
                    .as_str()
                    .is_some_and(|m| m.ends_with("/DoGet"))),
        "{log}"
    );
}

async fn admin_status(
    admin: &mut ohlcv_server::admin::proto::admin_service_client::AdminServiceClient<Channel>,
) -> ohlcv_server::admin::proto::GetStatusResponse {
    admin
        .get_status(ohlcv_server::admin::proto::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_build_shows_in_system_job_runs_and_jobs() {
    use ohlcv_server::admin::proto::admin_service_client::AdminServiceClient;
    use ohlcv_server::admin::proto::{
        PauseSchedulesRequest, ResumeSchedulesRequest, TriggerBuildRequest,
    };
    let d = deployment_with_bars().await;
    let server = Server::start(&d).await;
    let mut admin = AdminServiceClient::new(server.channel().await);
    let built = admin
        .trigger_build(TriggerBuildRequest {
            timeframes: vec!["5m".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(built.runs.len(), 1);
    let run = &built.runs[0];
    assert_eq!(run.status, "succeeded");
    // Everything was built already: the run changes nothing.
    assert_eq!(run.report.as_ref().unwrap().new_bars, 0);

    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let rows = query(
        &mut client,
        "select run_id, job, timeframe, status, new_bars from system.job_runs",
    )
    .await;
    assert_eq!(rows[0].num_rows(), 1);
    assert_eq!(rows[0].column(0).as_string::<i32>().value(0), run.run_id);
    assert_eq!(rows[0].column(2).as_string::<i32>().value(0), "5m");
    assert_eq!(rows[0].column(3).as_string::<i32>().value(0), "succeeded");

    let jobs = query(
        &mut client,
        "select timeframe, last_status, success_rate_24h, next_run, paused \
         from system.jobs order by every_secs, offset_secs",
    )
    .await;
    let jobs = &jobs[0];
    assert_eq!(jobs.num_rows(), 5, "one row per schedule");
    let tf = jobs.column(0).as_string::<i32>();
    let status = jobs.column(1).as_string::<i32>();
    let rate = jobs
        .column(2)
        .as_primitive::<arrow::datatypes::Float64Type>();
    for i in 0..5 {
        if tf.value(i) == "5m" {
            assert_eq!(status.value(i), "succeeded");
            assert_eq!(rate.value(i), 1.0);
        } else {
            assert!(status.is_null(i), "{} never ran", tf.value(i));
            assert!(rate.is_null(i));
        }
    }
    assert!(
        jobs.column(3).is_valid(0),
        "next run is known while running"
    );

    admin
        .pause_schedules(PauseSchedulesRequest {})
        .await
        .unwrap();
    let paused_status = admin_status(&mut admin).await;
    assert!(paused_status.paused);
    assert!(paused_status.jobs.iter().all(|j| j.next_run_us.is_none()));
    let m1 = paused_status
        .tables
        .iter()
        .find(|t| t.table == "ohlcv_1m")
        .unwrap();
    assert_eq!(m1.rows, 60, "an hour of 1m bars");
    let paused = query(&mut client, "select bool_and(paused) from system.jobs").await;
    assert!(paused[0].column(0).as_boolean().value(0));
    admin
        .resume_schedules(ResumeSchedulesRequest {})
        .await
        .unwrap();
    assert!(!admin_status(&mut admin).await.paused);
    server.shutdown_and_wait().await;
}

/// `system.snapshots` lists every snapshot of each bar table with the trades snapshot its
/// build had consumed: a late trade's revision is a second 1m snapshot, built from the
/// trades snapshot that brought the trade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_snapshots_name_what_each_build_consumed() {
    use common::trades::{load, trade};
    use common::{DAY, T0};
    use ohlcv_server::build::{self, BuildSettings};
    let d = deployment_with_bars().await;
    let trades_before = d.storage().table(TableKind::Trades).await.unwrap();
    let consumed_first = trades_before.metadata().current_snapshot_id.unwrap();
    // A late trade in the first window, then the 1m build that revises its bar.
    load(
        &d,
        &[trade("kraken", "BTC-USD", "late", T0 + 1_000, 90.0, 2.0)],
    )
    .await;
    let consumed_late = d
        .storage()
        .table(TableKind::Trades)
        .await
        .unwrap()
        .metadata()
        .current_snapshot_id
        .unwrap();
    let report = build::build(
        &d.writer,
        Timeframe::M1,
        T0 + 2 * DAY,
        BuildSettings::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.revised, 1);
    let bars = d
        .storage()
        .table(TableKind::Bars(Timeframe::M1))
        .await
        .unwrap();
    let mut held: Vec<i64> = bars.metadata().snapshots.keys().copied().collect();
    held.sort();

    let server = Server::start(&d).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let rows = query(
        &mut client,
        "select snapshot_id, trades_snapshot, operation, cutoff, is_current \
         from system.snapshots where table_name = 'ohlcv_1m' order by committed_at, snapshot_id",
    )
    .await;
    let rows = arrow::compute::concat_batches(&rows[0].schema(), &rows).unwrap();
    let n = rows.num_rows();
    let ids = rows.column(0).as_primitive::<Int64Type>();
    let mut listed: Vec<i64> = ids.values().to_vec();
    listed.sort();
    assert_eq!(listed, held, "every snapshot the table holds, no other");
    let consumed = rows.column(1).as_primitive::<Int64Type>();
    let current = rows.column(4).as_boolean();
    assert_eq!(
        ids.value(n - 1),
        bars.metadata().current_snapshot_id.unwrap()
    );
    assert!(current.value(n - 1));
    assert_eq!(current.true_count(), 1);
    // The revision was built from the trades snapshot of the late trade; the first build
    // from the one before it.
    assert_eq!(consumed.value(n - 1), consumed_late);
    assert_eq!(consumed.value(0), consumed_first);
    assert!(rows.column(3).is_valid(n - 1), "the cutoff is recorded");

    // Rollups name the 1m snapshot they were built from.
    let rollups = query(
        &mut client,
        "select count(*) from system.snapshots \
         where table_name = 'ohlcv_1h' and source_snapshot is not null",
    )
    .await;
    assert!(rollups[0].column(0).as_primitive::<Int64Type>().value(0) >= 1);
}
