//! A lean Flight SQL load client for the candle bench: `clients` connections, each running
//! `sql` (GetFlightInfo + DoGet, the same two RPCs an ADBC client makes) back to back for
//! `seconds`, all on one client thread so that as much of the machine as possible is left to
//! the server. Prints one JSON line: queries/s, p50/p99 latency, rows of the last answer.
//!
//! Driven by `benches/candles_adbc.py`, which starts the server; by hand:
//!
//!     cargo build --release && target/release/candles-load --uri http://127.0.0.1:50051 \
//!         --sql "select * from candles(...)" --clients 32 --seconds 10

use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use tonic::transport::{Channel, Endpoint};

struct Args {
    uri: String,
    sql: String,
    clients: usize,
    seconds: f64,
}

fn args() -> Args {
    let mut out = Args {
        uri: "http://127.0.0.1:50051".into(),
        sql: "select 1".into(),
        clients: 32,
        seconds: 10.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--uri" => out.uri = value(),
            "--sql" => out.sql = value(),
            "--clients" => out.clients = value().parse().expect("--clients N"),
            "--seconds" => out.seconds = value().parse().expect("--seconds S"),
            other => panic!("unknown argument {other}"),
        }
    }
    out
}

/// One query as a client sees it: the rows it got back.
async fn query(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> usize {
    let info = client
        .execute(sql.to_string(), None)
        .await
        .expect("GetFlightInfo");
    let mut rows = 0;
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("endpoint without ticket");
        let batches: Vec<_> = client
            .do_get(ticket)
            .await
            .expect("DoGet")
            .try_collect()
            .await
            .expect("DoGet stream");
        rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
    }
    rows
}

async fn connect(uri: &str, sql: &str) -> FlightSqlServiceClient<Channel> {
    let channel = Endpoint::from_shared(uri.to_string())
        .expect("uri")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect");
    let mut client = FlightSqlServiceClient::new(channel);
    query(&mut client, sql).await; // connected and warm before timing
    client
}

async fn run(
    mut client: FlightSqlServiceClient<Channel>,
    sql: String,
    until: Instant,
) -> (Vec<Duration>, usize) {
    let mut times = Vec::new();
    let mut rows = 0;
    while Instant::now() < until {
        let t = Instant::now();
        rows = query(&mut client, &sql).await;
        times.push(t.elapsed());
    }
    (times, rows)
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut times, rows, elapsed) = runtime.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..args.clients {
            clients.push(connect(&args.uri, &args.sql).await);
        }
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(args.seconds);
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|c| tokio::spawn(run(c, args.sql.clone(), until)))
            .collect();
        let mut all = Vec::new();
        let mut rows = 0;
        for t in tasks {
            let (times, r) = t.await.expect("client task");
            all.extend(times);
            rows = r;
        }
        (all, rows, start.elapsed())
    });
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "{{\"clients\": {}, \"queries\": {}, \"qps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"rows\": {}}}",
        args.clients,
        times.len(),
        times.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        rows
    );
}
