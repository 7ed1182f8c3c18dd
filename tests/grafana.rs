//! Candles as Grafana shows them, on real answers of a real server.
//!
//! Grafana's Flight SQL converters (the `influxdata-flightsql-datasource` plugin 1.1.1,
//! `pkg/flightsql/arrow.go`, and the InfluxDB SQL mode, `pkg/tsdb/influxdb/fsql/arrow.go`) are
//! modelled here as they behave: a timestamp's raw value is read as nanoseconds whatever its
//! unit, a column of a type they have no case for gets no values (and the frame is refused), and
//! the time-series format needs a column named `time`. The provisioned "Candles" dashboard's own
//! queries (deploy/grafana) run with its variables and time-range macros expanded as the plugin
//! expands them, with the data source's metadata header; every answer must pass the model and
//! show the instants an exact client reads. Then every candle shape the same way, a time
//! outside the nanosecond range, and GetSqlInfo's keys for BI drivers.

mod common;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::SqlInfo;
use common::server::{deployment_with_bars, Server};
use common::{DAY, T0};
use futures::TryStreamExt;
use tonic::transport::Channel;
use tonic::Code;

const HOUR: i64 = 3_600_000_000;

/// A value as a Grafana data frame holds it; timestamps as the nanoseconds Grafana reads.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Text(String),
    Number(f64),
    Bool(bool),
    TimeNs(i64),
}

/// One converted column: its name and values.
type Frame = Vec<(String, Vec<Cell>)>;

/// Grafana's converter: the frame it builds from `batches`, or why it refuses them.
fn grafana_frame(batches: &[RecordBatch]) -> Result<Frame, String> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let mut frame: Frame = first
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), Vec::new()))
        .collect();
    for batch in batches {
        for (i, column) in batch.columns().iter().enumerate() {
            let name = batch.schema().field(i).name().clone();
            for row in 0..column.len() {
                let cell = if column.is_null(row) {
                    Cell::Null
                } else {
                    cell(column.as_ref(), row)
                        .ok_or_else(|| format!("column '{name}' of type {}", column.data_type()))?
                };
                frame[i].1.push(cell);
            }
        }
    }
    Ok(frame)
}

/// The converters' cases: strings, integers, floats, booleans, timestamps (read as ns).
fn cell(column: &dyn Array, row: usize) -> Option<Cell> {
    use arrow::datatypes::*;
    Some(match column.data_type() {
        DataType::Utf8 => Cell::Text(column.as_string::<i32>().value(row).to_string()),
        DataType::Boolean => Cell::Bool(column.as_boolean().value(row)),
        DataType::Float64 => Cell::Number(column.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => Cell::Number(column.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Int64 => Cell::Number(column.as_primitive::<Int64Type>().value(row) as f64),
        DataType::Int32 => Cell::Number(column.as_primitive::<Int32Type>().value(row) as f64),
        DataType::Int16 => Cell::Number(column.as_primitive::<Int16Type>().value(row) as f64),
        DataType::Int8 => Cell::Number(column.as_primitive::<Int8Type>().value(row) as f64),
        DataType::UInt64 => Cell::Number(column.as_primitive::<UInt64Type>().value(row) as f64),
        DataType::UInt32 => Cell::Number(column.as_primitive::<UInt32Type>().value(row) as f64),
        DataType::UInt16 => Cell::Number(column.as_primitive::<UInt16Type>().value(row) as f64),
        DataType::UInt8 => Cell::Number(column.as_primitive::<UInt8Type>().value(row) as f64),
        // `v.Value(i).ToTime(arrow.Nanosecond)`: the raw value, whatever the unit.
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            Cell::TimeNs(column.as_primitive::<TimestampNanosecondType>().value(row))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Cell::TimeNs(column.as_primitive::<TimestampMicrosecondType>().value(row))
        }
        _ => return None,
    })
}

/// The frame an exact client reads, in the same cells (timestamps converted to ns exactly).
fn exact_frame(batches: &[RecordBatch]) -> Frame {
    let mut out: Frame = Vec::new();
    for batch in batches {
        for (i, column) in batch.columns().iter().enumerate() {
            if out.len() <= i {
                out.push((batch.schema().field(i).name().clone(), Vec::new()));
            }
            for row in 0..column.len() {
                let c = if column.is_null(row) {
                    Cell::Null
                } else {
                    match column.data_type() {
                        DataType::Timestamp(_, _) => {
                            let us = arrow::compute::cast(
                                &column.slice(row, 1),
                                &DataType::Timestamp(TimeUnit::Microsecond, None),
                            )
                            .unwrap();
                            Cell::TimeNs(
                                us.as_primitive::<TimestampMicrosecondType>().value(0) * 1000,
                            )
                        }
                        _ => cell(column.as_ref(), row).unwrap_or_else(|| {
                            Cell::Text(
                                arrow::util::display::array_value_to_string(column, row).unwrap(),
                            )
                        }),
                    }
                };
                out[i].1.push(c);
            }
        }
    }
    out
}

async fn run(
    client: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<RecordBatch>, tonic::Status> {
    let status = |e: arrow_flight::error::FlightError| match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    };
    let info = client
        .execute(sql.to_string(), None)
        .await
        .map_err(status)?;
    fetch(client, info).await.map_err(status)
}

/// The batches of the first endpoint of `info`.
async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: arrow_flight::FlightInfo,
) -> Result<Vec<RecordBatch>, arrow_flight::error::FlightError> {
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    client.do_get(ticket).await?.try_collect().await
}

/// Runs `sql` as Grafana's data source does and as an exact client does; the frame Grafana
/// builds must pass the converter and hold the same instants and values.
async fn grafana_reads(
    grafana: &mut FlightSqlServiceClient<Channel>,
    exact: &mut FlightSqlServiceClient<Channel>,
    sql: &str,
) -> Frame {
    let shown = run(grafana, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let frame = grafana_frame(&shown).unwrap_or_else(|e| panic!("{sql}: Grafana drops {e}"));
    let read = exact_frame(&run(exact, sql).await.unwrap());
    assert_eq!(frame.len(), read.len(), "{sql}");
    for ((name, shown), (_, read)) in frame.iter().zip(&read) {
        assert_eq!(shown.len(), read.len(), "{sql}: rows of {name}");
        for (s, r) in shown.iter().zip(read) {
            let same = match (s, r) {
                (Cell::Number(a), Cell::Number(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                (Cell::Number(a), Cell::Text(b)) => {
                    b.parse::<f64>().is_ok_and(|b| (a - b).abs() < 1e-6)
                }
                (Cell::TimeNs(a), Cell::Text(b)) => date_ns(b) == Some(*a),
                _ => s == r,
            };
            assert!(
                same,
                "{sql}: column {name}: Grafana shows {s:?}, the answer is {r:?}"
            );
        }
    }
    frame
}

/// Midnight UTC of a `YYYY-MM-DD` date, in ns.
fn date_ns(text: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_nanos_opt()
}

fn column<'a>(frame: &'a Frame, name: &str) -> &'a [Cell] {
    &frame
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no column {name} in {frame:?}"))
        .1
}

/// The plugin's `$__timeFrom` / `$__timeTo`: `cast('<RFC 3339>' as timestamp)`.
fn macro_time(us: i64) -> String {
    let t = chrono::DateTime::from_timestamp_micros(us).unwrap();
    format!(
        "cast('{}' as timestamp)",
        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// A dashboard query with its variables and macros expanded as the plugin expands them.
fn expand(query: &str, timeframe: &str, from: i64, to: i64) -> String {
    query
        .replace("$exchange", "kraken")
        .replace("$symbol", "BTC-USD")
        .replace("$timeframe", timeframe)
        .replace("$__timeFrom", &macro_time(from))
        .replace("$__timeTo", &macro_time(to))
}

async fn clients(server: &Server) -> [FlightSqlServiceClient<Channel>; 2] {
    let mut grafana = FlightSqlServiceClient::new(server.channel().await);
    // What the provisioned data source sends with every call: its `metadata` entries
    // (`- key: value` lines, the file's only list items after `metadata:`).
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/provisioning/datasources/flightsql.yml"
    ))
    .unwrap();
    let entries = source.split_once("metadata:").expect("metadata").1;
    let mut sent = 0;
    for line in entries
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("- "))
    {
        let (k, v) = line[2..].split_once(':').unwrap();
        grafana.set_header(k.trim(), v.trim());
        sent += 1;
    }
    assert!(sent > 0, "the data source sends its metadata");
    let exact = FlightSqlServiceClient::new(server.channel().await);
    [grafana, exact]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_candles_dashboard_shows_the_right_candles_at_the_right_times() {
    let d = deployment_with_bars().await;
    let server = Server::start(&d).await;
    let [mut grafana, mut exact] = clients(&server).await;
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/dashboards/candles.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["title"], "Candles");
    let (from, to) = (T0, T0 + 2 * HOUR);

    // Variables filled by queries: their first column lists the choices.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    for (name, want) in [("exchange", "kraken"), ("symbol", "BTC-USD")] {
        let variable = variables.iter().find(|v| v["name"] == name).unwrap();
        let sql = expand(variable["query"].as_str().unwrap(), "5m", from, to);
        let frame = grafana_reads(&mut grafana, &mut exact, &sql).await;
        assert_eq!(frame[0].1, vec![Cell::Text(want.into())], "{sql}");
    }
    let timeframes: Vec<String> = variables.iter().find(|v| v["name"] == "timeframe").unwrap()
        ["query"]
        .as_str()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();

    let candlestick = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "candlestick")
        .expect("a candlestick panel");
    for timeframe in &timeframes {
        for target in candlestick["targets"].as_array().unwrap() {
            let sql = expand(target["queryText"].as_str().unwrap(), timeframe, from, to);
            let frame = grafana_reads(&mut grafana, &mut exact, &sql).await;
            if target["format"] == "time_series" {
                column(&frame, "time");
            }
            if target["refId"] != "A" {
                continue;
            }
            // The panel's fields, on a time field Grafana places where the candles are.
            let times = column(&frame, "time");
            assert!(!times.is_empty(), "{sql}: no candles");
            for t in times {
                let Cell::TimeNs(ns) = t else {
                    panic!("{sql}: time {t:?}")
                };
                assert!(
                    (from * 1000 - 7 * DAY * 1000..to * 1000).contains(ns),
                    "{sql}: a candle at {ns} ns, outside the dashboard's range"
                );
            }
            for field in ["open", "high", "low", "close", "volume"] {
                assert!(
                    column(&frame, field)
                        .iter()
                        .all(|c| matches!(c, Cell::Number(_))),
                    "{sql}: {field}"
                );
            }
        }
    }
    // 5m over the hour of trades (one every 30 s): 12 candles, the first at T0 exactly.
    let sql = expand(
        candlestick["targets"][0]["queryText"].as_str().unwrap(),
        "5m",
        from,
        to,
    );
    let frame = grafana_reads(&mut grafana, &mut exact, &sql).await;
    let times = column(&frame, "time");
    assert_eq!(times.len(), 12);
    assert_eq!(times[0], Cell::TimeNs(T0 * 1000));

    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let sql = expand(target["queryText"].as_str().unwrap(), "1h", from, to);
            grafana_reads(&mut grafana, &mut exact, &sql).await;
        }
    }
    server.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_candle_shape_passes_grafanas_converter() {
    let d = deployment_with_bars().await;
    let server = Server::start(&d).await;
    let [mut grafana, mut exact] = clients(&server).await;
    let (start, end) = ("'2024-01-01T00:00:00Z'", "'2024-01-01T02:00:00Z'");
    for sql in [
        format!("select * from candles('kraken', 'BTC-USD', '15m', {start}, {end})"),
        "select * from candles('kraken', 'BTC-USD', '1d', '2023-12-25', '2024-01-03', \
             fill => 'previous', tz => 'America/New_York')"
            .to_string(),
        format!("select * from candles('kraken', 'BTC-USD', '5m', '1970-01-01', {end}, last => 5)"),
        format!(
            "select * from ohlcv_1m where exchange = 'kraken' and symbol = 'BTC-USD' \
             and window_start >= {start} and window_start < {end}"
        ),
        "select * from ohlcv_1m where exchange = 'kraken' and symbol = 'BTC-USD' \
         order by window_start desc limit 500"
            .to_string(),
        "select date_trunc('hour', window_start) as time, sum(volume) as volume from ohlcv_1m \
         group by 1 order by 1"
            .to_string(),
        "select * from ohlcv_1d".to_string(),
        "select * from system.jobs".to_string(),
        "select * from system.job_runs".to_string(),
        // Types the converters have no case for: decimals, dates, dictionaries, times.
        "select cast(close as decimal(18, 8)) as price, cast(window_start as date) as day, \
         arrow_cast(symbol, 'Dictionary(Int32, Utf8)') as symbol, \
         arrow_cast(window_start, 'Timestamp(Second, None)') as seconds \
         from ohlcv_1m order by window_start limit 3"
            .to_string(),
    ] {
        grafana_reads(&mut grafana, &mut exact, &sql).await;
    }

    // A prepared statement answers in the same types.
    let mut prepared = grafana
        .prepare(
            "select window_start as time, close from ohlcv_1h".to_string(),
            None,
        )
        .await
        .unwrap();
    let schema = prepared.dataset_schema().unwrap().clone();
    assert_eq!(
        schema.field(0).data_type(),
        &DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
    );
    let info = prepared.execute().await.unwrap();
    let batches = fetch(&mut grafana, info).await.unwrap();
    let frame = grafana_frame(&batches).unwrap();
    assert_eq!(frame[0].1[0], Cell::TimeNs(T0 * 1000));

    // Before 1677 a nanosecond timestamp cannot exist: a clear error, never a wrong date.
    let err = run(
        &mut grafana,
        "select to_timestamp_micros(-11676096000000000) as founded",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert!(
        err.message().contains("column 'founded'"),
        "{}",
        err.message()
    );
    // An exact client reads it.
    run(
        &mut exact,
        "select to_timestamp_micros(-11676096000000000) as founded",
    )
    .await
    .unwrap();

    // A profile the server does not know is refused, not ignored.
    let mut confused = FlightSqlServiceClient::new(server.channel().await);
    confused.set_header("x-ohlcv-results", "excel");
    let err = run(&mut confused, "select 1").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("x-ohlcv-results"),
        "{}",
        err.message()
    );
    server.shutdown_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sql_info_answers_every_key_of_the_specification() {
    let d = deployment_with_bars().await;
    let server = Server::start(&d).await;
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let info = client.get_sql_info(Vec::new()).await.unwrap();
    let batches = fetch(&mut client, info).await.unwrap();
    let answered: std::collections::BTreeSet<u32> = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<arrow::datatypes::UInt32Type>()
                .values()
                .to_vec()
        })
        .collect();
    let missing: Vec<String> = (0..2000)
        .filter_map(|i| SqlInfo::try_from(i).ok())
        .filter(|k| !answered.contains(&(*k as u32)))
        .map(|k| k.as_str_name().to_string())
        .collect();
    assert!(missing.is_empty(), "GetSqlInfo does not answer {missing:?}");
    server.shutdown_and_wait().await;
}
