//! Alerts reach a webhook on a local HTTP listener: a validation failure found through the
//! admin service of a running server (retried after the webhook first fails), and a job that
//! fails after its retries; a webhook that never answers does not hold up the jobs.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Float64Array, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::Int64Type;
use arrow_flight::sql::client::FlightSqlServiceClient;
use async_trait::async_trait;
use common::server::{deployment_with_bars, options, Server};
use common::*;
use futures::TryStreamExt;
use ohlcv_server::admin::proto::admin_service_client::AdminServiceClient;
use ohlcv_server::admin::proto::ValidateRequest;
use ohlcv_server::alerts::Alerts;
use ohlcv_server::build::BuildReport;
use ohlcv_server::clock::ManualClock;
use ohlcv_server::config::AlertsConfig;
use ohlcv_server::jobs::{JobKind, JobRunner, RetryPolicy, RunLog, Scheduler};
use ohlcv_server::storage::read::read_range;
use ohlcv_server::storage::{TableKind, TimeRange};
use ohlcv_server::timeframe::Timeframe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A webhook on 127.0.0.1: answers the n-th request with `statuses[n]` (200 after the list,
/// or never, with `hang`), and hands over every body it received.
async fn webhook(
    statuses: Vec<u16>,
    hang: bool,
) -> (String, mpsc::UnboundedReceiver<serde_json::Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/ohlcv", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let body = loop {
                let mut chunk = [0u8; 4096];
                let read = socket.read(&mut chunk).await.unwrap();
                assert!(read > 0, "request cut short");
                buf.extend_from_slice(&chunk[..read]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let head = text[..end].to_ascii_lowercase();
                    assert!(head.starts_with("post /hooks/ohlcv "), "{head}");
                    assert!(head.contains("content-type: application/json"), "{head}");
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    if buf.len() >= end + 4 + len {
                        break buf[end + 4..end + 4 + len].to_vec();
                    }
                }
            };
            tx.send(serde_json::from_slice(&body).unwrap()).unwrap();
            if hang {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    drop(socket);
                });
                continue;
            }
            let status = statuses.get(n).copied().unwrap_or(200);
            n += 1;
            let reply =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            socket.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    (url, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<serde_json::Value>) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("webhook called")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_failure_is_posted_to_the_webhook_and_reports_are_system_tables() {
    let d = deployment_with_bars().await;
    // Corrupt the day's bar: NaN volume.
    let kind = TableKind::Bars(Timeframe::D1);
    let (_, rows) = read_range(d.storage(), kind, TimeRange::ALL).await.unwrap();
    let bar = concat_batches(&kind.arrow_schema().unwrap(), &rows).unwrap();
    assert_eq!(bar.num_rows(), 1);
    let mut columns = bar.columns().to_vec();
    columns[bar.schema().index_of("volume").unwrap()] =
        Arc::new(Float64Array::from(vec![f64::NAN]));
    let bad = RecordBatch::try_new(bar.schema(), columns).unwrap();
    d.writer.upsert(kind, &[bad], HashMap::new()).await.unwrap();

    // The webhook fails the first delivery: the alert is retried.
    let (url, mut bodies) = webhook(vec![500], false).await;
    let mut opts = options();
    opts.alerts = AlertsConfig {
        webhook_url: Some(url),
        webhook_retries: 2,
        webhook_timeout_secs: 5,
    };
    let server = Server::start_with(&d, opts).await;
    let mut admin = AdminServiceClient::new(server.channel().await);
    let results = admin
        .validate(ValidateRequest::default())
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 20);
    let failed: Vec<_> = results.iter().filter(|r| r.status == "failed").collect();
    let names: Vec<_> = failed
        .iter()
        .map(|r| format!("{} {}", r.timeframe, r.check))
        .collect();
    assert_eq!(names, ["1d positive_activity", "1d rollup_consistency"]);
    assert_eq!(
        failed[0].samples,
        ["kraken/BTC-USD 2024-01-01T00:00:00Z: volume is NaN"]
    );

    let first = next(&mut bodies).await;
    let retried = next(&mut bodies).await;
    assert_eq!(
        first, retried,
        "the same alert, delivered again after a 500"
    );
    assert_eq!(first["kind"], "validation_failed");
    assert_eq!(
        first["at"], "2024-01-04T00:00:00.000Z",
        "stamped by the server's clock"
    );
    let summary = first["summary"].as_str().unwrap();
    assert!(
        summary.contains("1d positive_activity: 1 violations"),
        "{summary}"
    );
    assert_eq!(first["details"][0]["samples"][0], failed[0].samples[0]);

    // Any Flight SQL client sees the results.
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    let info = client
        .execute(
            "select timeframe, \"check\", violations, samples[1] from system.validation_results \
             where status = 'failed' order by \"check\""
                .to_string(),
            None,
        )
        .await
        .unwrap();
    let stream = client
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
    let b = concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(b.num_rows(), 2);
    assert_eq!(b.column(1).as_string::<i32>().value(0), "positive_activity");
    assert_eq!(b.column(2).as_primitive::<Int64Type>().value(0), 1);
    assert!(b
        .column(3)
        .as_string::<i32>()
        .value(0)
        .ends_with("volume is NaN"));

    // The admin's validation went through the job queue: it has its run row.
    let runs = common::server::strings(
        &mut client,
        "select status from system.job_runs where job = 'validate'",
    )
    .await;
    assert_eq!(runs, ["succeeded"]);
    server.shutdown_and_wait().await;
}

struct Failing;

#[async_trait]
impl JobRunner for Failing {
    async fn run(&self, _job: JobKind, _now_us: i64) -> Result<BuildReport, String> {
        Err("the trades table is unreachable".into())
    }
}

struct NoLog;

#[async_trait]
impl RunLog for NoLog {
    async fn record(&self, _run: &ohlcv_server::jobs::JobRun) -> ohlcv_server::storage::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failing_after_its_retries_alerts_and_a_hanging_webhook_blocks_nothing() {
    // The webhook takes every request and never answers.
    let (url, mut bodies) = webhook(Vec::new(), true).await;
    let cancel = CancellationToken::new();
    let config = AlertsConfig {
        webhook_url: Some(url),
        webhook_retries: 0,
        webhook_timeout_secs: 3600,
    };
    let (alerts, delivery) = Alerts::start(&config, cancel.clone());
    let delivery = tokio::spawn(delivery.unwrap());
    let policy = RetryPolicy {
        max_retries: 2,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        timeout: Duration::from_secs(10),
        ..RetryPolicy::default()
    };
    let (scheduler, handle) = Scheduler::new(
        Arc::new(Failing),
        Arc::new(ManualClock::at(T0)),
        Vec::new(),
        policy,
        Arc::new(NoLog),
    );
    let task = tokio::spawn(scheduler.with_alerts(alerts.clone()).run(cancel.clone()));
    let job = JobKind::Build(Timeframe::M5);
    let run = handle.trigger(job).await.unwrap();
    assert_eq!((run.status.as_str(), run.attempt), ("failed", 3));
    let alert = next(&mut bodies).await;
    assert_eq!(alert["kind"], "job_failed");
    assert_eq!(alert["details"]["job"], "build");
    assert_eq!(alert["details"]["timeframe"], "5m");
    assert_eq!(alert["details"]["attempts"], 3);
    assert_eq!(alert["details"]["error"], "the trades table is unreachable");

    // The webhook still holds the first alert; jobs go on failing and alerting regardless.
    for _ in 0..3 {
        let run = tokio::time::timeout(Duration::from_secs(10), handle.trigger(job))
            .await
            .expect("a job never waits for the webhook")
            .unwrap();
        assert_eq!(run.status, ohlcv_server::jobs::Outcome::Failed);
    }
    let counts = alerts.counts();
    assert_eq!(counts.raised, 4);
    assert_eq!(counts.delivered, 0);
    cancel.cancel();
    task.await.unwrap();
    delivery.await.unwrap();
}

/// Fails after a while: long enough to be running when shutdown begins.
struct SlowFailing;

#[async_trait]
impl JobRunner for SlowFailing {
    async fn run(&self, _job: JobKind, _now_us: i64) -> Result<BuildReport, String> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Err("the catalog went away".into())
    }
}

/// Shutdown in the server's order (stop the queue, let the running job finish in its grace,
/// then stop alert delivery): a job that fails during its grace is not retried, and its
/// alert still reaches the webhook before delivery ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failing_in_its_shutdown_grace_is_alerted_before_delivery_stops() {
    let (url, mut bodies) = webhook(Vec::new(), false).await;
    let config = AlertsConfig {
        webhook_url: Some(url),
        webhook_retries: 3,
        webhook_timeout_secs: 5,
    };
    let alerts_stop = CancellationToken::new();
    let (alerts, delivery) = Alerts::start(&config, alerts_stop.clone());
    let delivery = tokio::spawn(delivery.unwrap());
    let cancel = CancellationToken::new();
    let (scheduler, handle) = Scheduler::new(
        Arc::new(SlowFailing),
        Arc::new(ManualClock::at(T0)),
        Vec::new(),
        RetryPolicy {
            max_retries: 3,
            shutdown_grace: Duration::from_secs(10),
            ..RetryPolicy::default()
        },
        Arc::new(NoLog),
    );
    let task = tokio::spawn(scheduler.with_alerts(alerts.clone()).run(cancel.clone()));
    let job = JobKind::Build(Timeframe::M1);
    let triggered = tokio::spawn(async move { handle.trigger(job).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    cancel.cancel();
    task.await.unwrap();
    let run = triggered
        .await
        .unwrap()
        .expect("the failed attempt is answered");
    assert_eq!((run.status.as_str(), run.attempt), ("failed", 1));
    alerts_stop.cancel();
    delivery.await.unwrap();
    let alert = next(&mut bodies).await;
    assert_eq!(alert["kind"], "job_failed");
    assert!(
        alert["summary"].as_str().unwrap().contains("shutting down"),
        "{alert}"
    );
    assert_eq!(alerts.counts().delivered, 1);
}
