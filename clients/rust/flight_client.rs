//! ohlcv-server from Rust with the `arrow-flight` Flight SQL client: a query, and a prepared
//! statement with parameters.
//!
//! cargo run --example flight_client -- [http://127.0.0.1:50051] [USER PASSWORD]

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::FlightInfo;
use futures::TryStreamExt;
use tonic::transport::Channel;

async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    info: FlightInfo,
) -> Result<Vec<RecordBatch>, Box<dyn std::error::Error>> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or("endpoint without ticket")?;
        batches.extend(client.do_get(ticket).await?.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    print!("{}", run(&args).await?);
    Ok(())
}

/// Everything the example does; returns what it prints.
pub async fn run(args: &[String]) -> Result<String, Box<dyn std::error::Error>> {
    let mut out = String::new();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let channel = Channel::from_shared(url)?.connect().await?;
    let mut client = FlightSqlServiceClient::new(channel);
    if let [_, user, password] = args {
        // The token the handshake returns is sent on every later call.
        client.handshake(user, password).await?;
    }

    let info = client
        .execute(
            "select exchange, symbol, count(*) as bars, max(window_start) as latest \
             from ohlcv_1h group by exchange, symbol order by exchange, symbol"
                .into(),
            None,
        )
        .await?;
    let series = fetch(&mut client, info).await?;
    out += &format!("{}\n", pretty_format_batches(&series)?);

    let mut statement = client
        .prepare(
            "select window_start, open, high, low, close, volume from ohlcv_1h \
             where symbol = $1 order by window_start desc limit 5"
                .into(),
            None,
        )
        .await?;
    let symbol = series
        .first()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            arrow::array::AsArray::as_string::<i32>(b.column(1))
                .value(0)
                .to_string()
        })
        .ok_or("no 1h bars yet")?;
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, false)])),
        vec![Arc::new(StringArray::from(vec![symbol.clone()]))],
    )?;
    statement.set_parameters(params)?;
    let info = statement.execute().await?;
    let candles = fetch(&mut client, info).await?;
    let rows: usize = candles.iter().map(|b| b.num_rows()).sum();
    out += &format!("latest {rows} 1h candles of {symbol}:\n");
    out += &format!("{}\n", pretty_format_batches(&candles)?);
    statement.close().await?;
    Ok(out)
}
