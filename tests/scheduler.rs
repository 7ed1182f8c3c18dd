//! The scheduler on tokio's paused clock: staggered schedules, one job at a time, retries with
//! backoff, timeouts, pause/resume and manual triggers, without sleeping for real. Then the
//! run history on a real catalog database, surviving a reopen, with real builds.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use ohlcv_server::build::{BuildReport, BuildSettings};
use ohlcv_server::clock::TokioClock;
use ohlcv_server::jobs::{
    default_schedules, BuilderJobs, History, JobKind, JobRun, JobRunner, Outcome, RetryPolicy,
    RunLog, Scheduler,
};
use ohlcv_server::timeframe::Timeframe;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Recorder {
    started: Mutex<Vec<(JobKind, i64)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    /// Attempts that fail, per job, before one succeeds.
    failures: Mutex<HashMap<JobKind, u32>>,
    /// Jobs that hang (to hit the timeout).
    hang: Mutex<Option<JobKind>>,
}

#[async_trait]
impl JobRunner for Recorder {
    async fn run(&self, job: JobKind, now_us: i64) -> Result<BuildReport, String> {
        self.started.lock().unwrap().push((job, now_us));
        let n = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(n, Ordering::SeqCst);
        let hang = *self.hang.lock().unwrap() == Some(job);
        tokio::time::sleep(Duration::from_secs(if hang { 100_000 } else { 2 })).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        let mut failures = self.failures.lock().unwrap();
        match failures.get_mut(&job) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err("injected failure".to_string())
            }
            _ => Ok(BuildReport::default()),
        }
    }
}

#[derive(Default)]
struct MemLog(Mutex<Vec<JobRun>>);

#[async_trait]
impl RunLog for MemLog {
    async fn record(&self, run: &JobRun) -> ohlcv_server::storage::Result<()> {
        self.0.lock().unwrap().push(run.clone());
        Ok(())
    }
}

const SEC: i64 = 1_000_000;

fn start(
    runner: Arc<Recorder>,
    log: Arc<MemLog>,
    policy: RetryPolicy,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<()>,
    ohlcv_server::jobs::SchedulerHandle,
) {
    let clock = Arc::new(TokioClock::starting_at(T0));
    let (scheduler, handle) = Scheduler::new(runner, clock, default_schedules(), policy, log);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(cancel.clone()));
    (cancel, task, handle)
}

#[tokio::test(start_paused = true)]
async fn an_hour_of_staggered_schedules_one_job_at_a_time() {
    let runner = Arc::new(Recorder::default());
    let log = Arc::new(MemLog::default());
    let (cancel, task, _) = start(
        Arc::clone(&runner),
        Arc::clone(&log),
        RetryPolicy::default(),
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    cancel.cancel();
    task.await.unwrap();

    let started = runner.started.lock().unwrap().clone();
    let count = |tf| {
        started
            .iter()
            .filter(|(j, _)| *j == JobKind::Build(tf))
            .count()
    };
    assert_eq!(count(Timeframe::M1), 60);
    assert_eq!(count(Timeframe::M5), 60);
    assert_eq!(count(Timeframe::M30), 12);
    assert_eq!(count(Timeframe::H1), 6);
    assert_eq!(count(Timeframe::D1), 1);
    assert_eq!(
        runner.max_running.load(Ordering::SeqCst),
        1,
        "one job at a time"
    );
    // Staggered: the 1m build at :05 of every minute, 5m at :15, 1d at 00:00:45.
    let first = |tf| {
        started
            .iter()
            .find(|(j, _)| *j == JobKind::Build(tf))
            .unwrap()
            .1
            - T0
    };
    assert_eq!(first(Timeframe::M1), 5 * SEC);
    assert_eq!(first(Timeframe::M5), 15 * SEC);
    assert_eq!(first(Timeframe::D1), 45 * SEC);
    let runs = log.0.lock().unwrap();
    assert_eq!(runs.len(), started.len());
    assert!(runs.iter().all(|r| r.status == Outcome::Succeeded));
}

#[tokio::test(start_paused = true)]
async fn failures_retry_with_backoff_and_timeouts_count_as_failures() {
    let runner = Arc::new(Recorder::default());
    runner
        .failures
        .lock()
        .unwrap()
        .insert(JobKind::Build(Timeframe::M1), 2);
    *runner.hang.lock().unwrap() = Some(JobKind::Build(Timeframe::D1));
    let log = Arc::new(MemLog::default());
    let policy = RetryPolicy {
        max_retries: 2,
        backoff_base: Duration::from_secs(2),
        backoff_max: Duration::from_secs(60),
        timeout: Duration::from_secs(30),
        ..RetryPolicy::default()
    };
    let (cancel, task, _) = start(Arc::clone(&runner), Arc::clone(&log), policy);
    tokio::time::sleep(Duration::from_secs(200)).await;
    cancel.cancel();
    task.await.unwrap();

    let runs = log.0.lock().unwrap().clone();
    let m1: Vec<&JobRun> = runs
        .iter()
        .filter(|r| r.timeframe.as_deref() == Some("1m"))
        .take(3)
        .collect();
    assert_eq!(
        m1.iter()
            .map(|r| (r.attempt, r.status.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "failed"), (2, "failed"), (3, "succeeded")]
    );
    // 2 s of work, then 2 s and 4 s of backoff between attempts.
    assert_eq!(m1[1].started_at - m1[0].started_at, 4 * SEC);
    assert_eq!(m1[2].started_at - m1[1].started_at, 6 * SEC);
    let d1: Vec<&JobRun> = runs
        .iter()
        .filter(|r| r.timeframe.as_deref() == Some("1d"))
        .collect();
    assert_eq!(d1.len(), 3, "first attempt and two retries");
    assert!(d1.iter().all(|r| r.status == Outcome::TimedOut));
}

/// Shutdown lets the running job finish within the grace (its run is recorded as it ended),
/// and drops a job still running past the grace (recorded as cancelled).
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_running_job_within_its_grace() {
    for hang in [false, true] {
        let runner = Arc::new(Recorder::default());
        if hang {
            *runner.hang.lock().unwrap() = Some(JobKind::Build(Timeframe::M1));
        }
        let log = Arc::new(MemLog::default());
        let (cancel, task, _) = start(
            Arc::clone(&runner),
            Arc::clone(&log),
            RetryPolicy::default(),
        );
        while runner.running.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stopping = tokio::time::Instant::now();
        cancel.cancel();
        task.await.unwrap();
        let took = stopping.elapsed();
        let last = log.0.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.job, ohlcv_server::jobs::JobName::Build);
        if hang {
            assert_eq!(last.status, Outcome::Cancelled);
            assert_eq!(took, RetryPolicy::default().shutdown_grace);
        } else {
            assert_eq!(last.status, Outcome::Succeeded);
            assert!(took <= Duration::from_secs(2), "{took:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn paused_schedules_still_take_manual_triggers() {
    let runner = Arc::new(Recorder::default());
    let log = Arc::new(MemLog::default());
    let (cancel, task, handle) = start(
        Arc::clone(&runner),
        Arc::clone(&log),
        RetryPolicy::default(),
    );
    handle.pause();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(runner.started.lock().unwrap().is_empty());
    let run = handle.trigger(JobKind::Build(Timeframe::H1)).await.unwrap();
    assert_eq!(run.status, Outcome::Succeeded);
    assert_eq!(runner.started.lock().unwrap().len(), 1);
    handle.resume();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(runner.started.lock().unwrap().len() > 1);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_builds_are_recorded_and_the_history_survives_a_reopen() {
    let d = Deployment::new().await;
    let trades: Vec<common::trades::Trade> = (0..50)
        .map(|i| {
            common::trades::trade(
                "kraken",
                "BTC-USD",
                &i.to_string(),
                T0 + i * SEC * 10,
                10.0,
                1.0,
            )
        })
        .collect();
    common::trades::load(&d, &trades).await;
    let history = History::open(d.storage().pool()).await.unwrap();
    let runner = builder_jobs(&d).await;
    let clock = Arc::new(ohlcv_server::clock::ManualClock::at(T0 + DAY));
    let (scheduler, handle) = Scheduler::new(
        runner,
        clock,
        default_schedules(),
        RetryPolicy::default(),
        Arc::new(history),
    );
    handle.pause();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(cancel.clone()));
    let run = handle.trigger(JobKind::Build(Timeframe::M1)).await.unwrap();
    assert_eq!(run.status, Outcome::Succeeded, "{:?}", run.error);
    assert_eq!(run.report.new, 9, "50 trades, 10 s apart: 9 minutes");
    cancel.cancel();
    task.await.unwrap();

    let reopened = History::open(d.storage().pool()).await.unwrap();
    let recent = reopened.recent(10).await.unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].run_id, run.run_id);
    assert_eq!(recent[0].report.new, 9);
    assert_eq!(recent[0].report.snapshot_after, run.report.snapshot_after);
    assert!(recent[0].report.snapshot_after.is_some());
}

/// The daily retention job removes files no snapshot references (a commit killed after its
/// files were written) once they are older than the safety age, and its recorded run says how
/// many it removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_run_records_the_orphan_files_it_removed() {
    let d = Deployment::new().await;
    let trades: Vec<common::trades::Trade> = (0..20)
        .map(|i| {
            common::trades::trade(
                "kraken",
                "BTC-USD",
                &i.to_string(),
                T0 + i * 30 * SEC,
                10.0,
                1.0,
            )
        })
        .collect();
    common::trades::load(&d, &trades).await;
    let kind = ohlcv_server::storage::TableKind::Bars(Timeframe::M1);
    ohlcv_server::build::build(&d.writer, Timeframe::M1, T0 + DAY, BuildSettings::default())
        .await
        .unwrap();
    let table = d.storage().table(kind).await.unwrap();
    let stray = format!("{}/data/killed-commit.parquet", table.metadata().location);
    let local = stray.trim_start_matches("file://").to_string();
    std::fs::write(&local, b"written by a commit that never landed").unwrap();

    let history = Arc::new(History::open(d.storage().pool()).await.unwrap());
    let runner = builder_jobs(&d).await;
    // Two hours on: past the sweep's one-hour safety age.
    let later = chrono::Utc::now().timestamp_micros() + 2 * 3_600 * SEC;
    let clock = Arc::new(ohlcv_server::clock::ManualClock::at(later));
    let (scheduler, handle) = Scheduler::new(
        runner,
        clock,
        default_schedules(),
        RetryPolicy::default(),
        Arc::clone(&history) as Arc<dyn RunLog>,
    );
    handle.pause();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(cancel.clone()));
    let run = handle.trigger(JobKind::Retention).await.unwrap();
    cancel.cancel();
    task.await.unwrap();
    assert_eq!(run.status, Outcome::Succeeded, "{:?}", run.error);
    assert!(!std::path::Path::new(&local).exists(), "the orphan is gone");
    assert!(run.report.orphans_deleted >= 1, "{:?}", run.report);
    let recorded = history.recent(1).await.unwrap();
    assert_eq!(recorded[0].run_id, run.run_id);
    assert_eq!(
        recorded[0].report.orphans_deleted,
        run.report.orphans_deleted
    );
}

/// The real jobs over `d`'s tables, with default settings.
async fn builder_jobs(d: &Deployment) -> Arc<BuilderJobs> {
    Arc::new(BuilderJobs {
        writer: d.writer.clone(),
        settings: BuildSettings::default(),
        retention: ohlcv_server::config::RetentionConfig::default()
            .policy()
            .unwrap(),
        reports: ohlcv_server::quality::Reports::open(d.storage().pool())
            .await
            .unwrap(),
        alerts: ohlcv_server::alerts::Alerts::log_only(),
    })
}

/// A job runner whose every job panics.
struct Panicking;

#[async_trait]
impl JobRunner for Panicking {
    async fn run(&self, _job: JobKind, _now_us: i64) -> Result<BuildReport, String> {
        panic!("injected: a job that panics")
    }
}

/// gRPC health of a real health service, over a real connection.
async fn health_of(port: u16, service: &str) -> i32 {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test]
async fn a_scheduler_that_dies_turns_grpc_health_not_serving_and_shutdown_does_not() {
    use ohlcv_server::server::health::{watch_scheduler, FlightService};
    use std::sync::atomic::AtomicBool;
    use tonic::server::NamedService;
    use tonic_health::pb::health_check_response::ServingStatus;

    let (health, service) = tonic_health::server::health_reporter();
    health.set_serving::<FlightService>().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let flight = FlightService::NAME;
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    let scheduler = |runner: Arc<dyn JobRunner>| {
        let clock = Arc::new(TokioClock::starting_at(T0));
        let log = Arc::new(MemLog::default());
        Scheduler::new(runner, clock, Vec::new(), RetryPolicy::default(), log)
    };

    // Shutdown ends the scheduler too: that is not a death.
    let (stopping, _handle) = scheduler(Arc::new(Recorder::default()));
    let alive = Arc::new(AtomicBool::new(true));
    let cancel = CancellationToken::new();
    let watch = tokio::spawn(watch_scheduler(
        stopping.run(cancel.clone()),
        health.clone(),
        Arc::clone(&alive),
        cancel.clone(),
    ));
    cancel.cancel();
    watch.await.unwrap();
    assert!(alive.load(Ordering::Relaxed));
    assert_eq!(health_of(port, flight).await, serving);
    assert_eq!(health_of(port, "").await, serving);

    // A job that panics kills the scheduler: health turns NOT_SERVING.
    let (dying, handle) = scheduler(Arc::new(Panicking));
    let cancel = CancellationToken::new();
    let watch = tokio::spawn(watch_scheduler(
        dying.run(cancel.clone()),
        health.clone(),
        Arc::clone(&alive),
        cancel.clone(),
    ));
    assert!(
        handle.trigger(JobKind::Validate).await.is_none(),
        "a panicked job has no run to report"
    );
    tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the watcher sees the scheduler end")
        .unwrap();
    assert!(!alive.load(Ordering::Relaxed), "readiness reads this flag");
    assert_eq!(health_of(port, flight).await, not_serving);
    assert_eq!(health_of(port, "").await, not_serving);
}
