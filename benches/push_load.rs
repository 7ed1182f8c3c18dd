//! The live-candle bench: `subscribers` clients over `series` series while trades are ingested
//! at `rate` per second, each client either subscribed (Flight DoExchange, pushed updates) or
//! polling `candles(..., last => 1)` every second; phases of each alternate on one server.
//!
//! Every ingest call carries `rate / 10` trades (ten calls a second, one commit each), every
//! series in every call, each trade priced at the call's sequence number `k`; a candle whose
//! close is `k` has seen call `k` of its series. A call's latency at a client is the time from
//! the return of the ingest call to the arrival of the first update (or poll answer) showing
//! it. Reported per mode: p50/p99 of those latencies, the server's CPU (utime + stime over the
//! measured seconds, from /proc) and its resident memory at the end of the phase. The clients
//! run in this process, on the same cores as the server.
//!
//! The trades' shape: text ids (`k-i`) each at its own microsecond by default; `--numeric-ids`
//! sends canonical numbers, `--burst N` puts N trades of a series at one microsecond, and
//! `--copies P` re-sends P % of the previous call's trades (a feed that re-delivers).
//!
//!     cargo build --release --bin ohlcv-server --bin push-load
//!     target/release/push-load --server target/release/ohlcv-server
//!     target/release/push-load --server target/release/ohlcv-server --numeric-ids --burst 5 --copies 5

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{FlightClient, FlightData, FlightDescriptor};
use futures::{StreamExt, TryStreamExt};
use tonic::transport::{Channel, Endpoint};

struct Args {
    server: String,
    subscribers: usize,
    series: usize,
    rate: usize,
    seconds: u64,
    rounds: usize,
    /// Trades of a series sharing one timestamp (bursts); 1: every trade its own.
    burst: usize,
    /// Ids as canonical numbers instead of text ("k-i").
    numeric_ids: bool,
    /// Percent of each call's trades that are copies of the previous call's (re-delivery).
    copies: usize,
}

fn args() -> Args {
    let mut out = Args {
        server: "target/release/ohlcv-server".into(),
        subscribers: 1000,
        series: 150,
        rate: 10_000,
        seconds: 20,
        rounds: 2,
        burst: 1,
        numeric_ids: false,
        copies: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => out.server = value(),
            "--subscribers" => out.subscribers = value().parse().expect("N"),
            "--series" => out.series = value().parse().expect("N"),
            "--rate" => out.rate = value().parse().expect("N"),
            "--seconds" => out.seconds = value().parse().expect("S"),
            "--rounds" => out.rounds = value().parse().expect("N"),
            "--burst" => out.burst = value().parse::<usize>().expect("N").max(1),
            "--numeric-ids" => out.numeric_ids = true,
            "--copies" => out.copies = value().parse().expect("percent"),
            other => panic!("unknown argument {other}"),
        }
    }
    out
}

fn symbol(i: usize) -> String {
    format!("SYM{i}-USD")
}

/// When each ingest call returned, by sequence number (index 0 unused).
#[derive(Default)]
struct Calls {
    returned: Mutex<Vec<Option<Instant>>>,
}

impl Calls {
    /// Latencies (µs) of the calls after `seen` up to `k` at `now`; a call whose reply is not
    /// in yet was seen before its own return: 0.
    fn covered(&self, seen: usize, k: usize, now: Instant, out: &mut Vec<u64>) {
        let returned = self.returned.lock().unwrap();
        for call in seen + 1..=k {
            let at = returned.get(call).copied().flatten();
            out.push(at.map_or(0, |at| now.saturating_duration_since(at).as_micros() as u64));
        }
    }
}

/// Per client: the latencies it measured inside the measured window.
type Samples = Arc<Mutex<Vec<u64>>>;

fn closes(batch: &RecordBatch) -> Vec<f64> {
    match batch.column_by_name("close") {
        Some(c) => c.as_primitive::<Float64Type>().values().to_vec(),
        None => Vec::new(),
    }
}

/// One client's view of the feed: the last call it has seen, and its latencies.
#[derive(Default)]
struct Seen {
    call: usize,
    latencies: Vec<u64>,
}

impl Seen {
    /// Batches that just arrived: the calls they show for the first time are latencies
    /// (while measuring; the first arrival only says where the client starts).
    fn arrived(&mut self, batches: &[RecordBatch], calls: &Calls, measuring: &AtomicBool) {
        let now = Instant::now();
        let k = batches.iter().flat_map(closes).fold(0.0f64, f64::max) as usize;
        if k > self.call {
            if self.call > 0 && measuring.load(Ordering::Relaxed) {
                calls.covered(self.call, k, now, &mut self.latencies);
            }
            self.call = k;
        }
    }
}

async fn channel(uri: &str) -> Channel {
    Endpoint::from_shared(uri.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A subscribed client: latencies from the pushed closes.
async fn subscriber(
    ch: Channel,
    series: String,
    calls: Arc<Calls>,
    samples: Samples,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let command = serde_json::json!({
        "series": [{"exchange": "bench", "symbol": series}],
        "timeframe": "1m",
        "last": 1,
    });
    let first = FlightData {
        flight_descriptor: Some(FlightDescriptor::new_cmd(command.to_string())),
        ..Default::default()
    };
    let mut stream = FlightClient::new(ch)
        .do_exchange(futures::stream::iter([Ok(first)]))
        .await
        .expect("subscribe");
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
        let Ok(Some(batch)) = next else { continue };
        let batch = batch.expect("pushed batch");
        seen.arrived(&[batch], &calls, &measuring);
    }
    samples.lock().unwrap().extend(seen.latencies);
}

/// A polling client: `candles(..., last => 1)` once a second.
async fn poller(
    ch: Channel,
    series: String,
    calls: Arc<Calls>,
    samples: Samples,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    offset: Duration,
) {
    let mut client = FlightSqlServiceClient::new(ch);
    let sql = format!(
        "select close from candles('bench', '{series}', '1m', now() - interval '1 hour', \
         now() + interval '1 minute', last => 1)"
    );
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let info = client.execute(sql.clone(), None).await.expect("poll");
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let batches: Vec<RecordBatch> = client
            .do_get(ticket)
            .await
            .expect("DoGet")
            .try_collect()
            .await
            .expect("DoGet stream");
        seen.arrived(&batches, &calls, &measuring);
    }
    samples.lock().unwrap().extend(seen.latencies);
}

/// The shape of the feed's trades.
#[derive(Clone, Copy)]
struct Shape {
    burst: usize,
    numeric_ids: bool,
    copies: usize,
}

/// One trade as sent: (symbol index, id, ts, price).
type Row = (usize, String, i64, f64);

/// The ingest feed: `rate / 10` trades every 100 ms, every series in each call.
async fn feed(
    uri: String,
    args_series: usize,
    per_call: usize,
    shape: Shape,
    calls: Arc<Calls>,
    stop: Arc<AtomicBool>,
    first: usize,
) {
    use arrow::array::{Float64Array, StringArray, TimestampMicrosecondArray};
    use arrow_flight::sql::{CommandStatementIngest, TableDefinitionOptions, TableExistsOption};
    let mut client = FlightSqlServiceClient::new(channel(&uri).await);
    let schema = ohlcv_server::trades::generate::trade_input_schema();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut k = first;
    let mut previous: Vec<Row> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        k += 1;
        let now = chrono::Utc::now().timestamp_micros();
        // A series' trades increase in time within the call (in groups of `burst` at one
        // microsecond), so the call's trades close its candle.
        let mut rows: Vec<Row> = (0..per_call)
            .map(|i| {
                let id = if shape.numeric_ids {
                    (k * per_call + i).to_string()
                } else {
                    format!("{k}-{i}")
                };
                let at = now + ((i / args_series) / shape.burst) as i64;
                (i % args_series, id, at, k as f64)
            })
            .collect();
        let resent: Vec<Row> = previous
            .iter()
            .step_by((100 / shape.copies.max(1)).max(1))
            .take(per_call * shape.copies / 100)
            .cloned()
            .collect();
        previous = rows.clone();
        rows.extend(resent);
        let n = rows.len();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values((0..n).map(|_| "bench"))),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| symbol(r.0)),
                )),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(Float64Array::from_iter_values((0..n).map(|_| 0.5))),
                Arc::new(StringArray::from_iter_values((0..n).map(|_| "buy"))),
            ],
        )
        .unwrap();
        let command = CommandStatementIngest {
            table_definition_options: Some(TableDefinitionOptions {
                if_not_exist: 0,
                if_exists: TableExistsOption::Append as i32,
            }),
            table: "trades".to_string(),
            ..Default::default()
        };
        client
            .execute_ingest(command, futures::stream::iter([Ok(batch)]))
            .await
            .expect("ingest");
        let mut returned = calls.returned.lock().unwrap();
        if returned.len() <= k {
            returned.resize(k + 1, None);
        }
        returned[k] = Some(Instant::now());
    }
}

/// (utime + stime seconds, resident KiB) of `pid`.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, rss)
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new(&args.server)
        .args(["--data-dir", dir.path().to_str().unwrap(), "serve"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .env("OHLCV_TELEMETRY__LISTEN", "")
        .env("OHLCV_SERVER__MAX_SUBSCRIPTIONS_PER_USER", "100000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let uri = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(ch) = Endpoint::from_shared(uri.clone()).unwrap().connect().await {
            let mut c = FlightSqlServiceClient::new(ch);
            if c.execute("select 1".into(), None).await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connections: Vec<Channel> = futures::future::join_all((0..20).map(|_| channel(&uri))).await;
    let per_call = args.rate / 10;
    let mut results: Vec<(&str, Vec<u64>, f64, u64)> = Vec::new();
    let mut k = 0usize;
    for round in 0..args.rounds * 2 {
        let mode = if round % 2 == 0 { "push" } else { "poll" };
        let calls = Arc::new(Calls::default());
        let stop = Arc::new(AtomicBool::new(false));
        let measuring = Arc::new(AtomicBool::new(false));
        let samples: Samples = Arc::default();
        let mut clients = Vec::new();
        for i in 0..args.subscribers {
            let ch = connections[i % connections.len()].clone();
            let series = symbol(i % args.series);
            let (calls, samples, measuring, stop) = (
                calls.clone(),
                samples.clone(),
                measuring.clone(),
                stop.clone(),
            );
            clients.push(if mode == "push" {
                tokio::spawn(subscriber(ch, series, calls, samples, measuring, stop))
            } else {
                let offset =
                    Duration::from_micros((i as u64 * 1_000_000) / args.subscribers as u64);
                tokio::spawn(poller(ch, series, calls, samples, measuring, stop, offset))
            });
        }
        // The feed continues the sequence numbers of the last phase.
        let shape = Shape {
            burst: args.burst,
            numeric_ids: args.numeric_ids,
            copies: args.copies,
        };
        let feeding = tokio::spawn(feed(
            uri.clone(),
            args.series,
            per_call,
            shape,
            calls.clone(),
            stop.clone(),
            k,
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
        measuring.store(true, Ordering::Relaxed);
        let (cpu0, _) = usage(server.id());
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let (cpu1, rss) = usage(server.id());
        let wall = t0.elapsed().as_secs_f64();
        measuring.store(false, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        feeding.await.unwrap();
        for c in clients {
            c.await.unwrap();
        }
        k = calls.returned.lock().unwrap().len();
        let mut s = std::mem::take(&mut *samples.lock().unwrap());
        s.sort_unstable();
        eprintln!(
            "round {round} {mode}: {} samples, p50 {:.2} ms, p99 {:.2} ms, cpu {:.2} cores, rss {} MiB",
            s.len(),
            percentile(&s, 0.5),
            percentile(&s, 0.99),
            (cpu1 - cpu0) / wall,
            rss / 1024
        );
        results.push((mode, s, (cpu1 - cpu0) / wall, rss));
        // Subscriptions end when their clients go; let the server settle between phases.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "{} clients over {} series, {} trades/s ingested in 10 calls/s ({} ids, bursts of {}, \
         {} % copies); {} rounds of {} s per mode, interleaved",
        args.subscribers,
        args.series,
        args.rate,
        if args.numeric_ids { "numeric" } else { "text" },
        args.burst,
        args.copies,
        args.rounds,
        args.seconds
    );
    println!();
    println!(
        "| mode | latency p50 | latency p99 | updates measured | server CPU | server RSS (end) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for mode in ["push", "poll"] {
        let mut all: Vec<u64> = Vec::new();
        let (mut cpu, mut rss, mut n) = (0.0, 0, 0);
        for (m, s, c, r) in &results {
            if *m == mode {
                all.extend(s);
                cpu += c;
                rss = rss.max(*r);
                n += 1;
            }
        }
        all.sort_unstable();
        println!(
            "| {mode} | {:.2} ms | {:.2} ms | {} | {:.2} cores | {} MiB |",
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            all.len(),
            cpu / n as f64,
            rss / 1024
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}
