//! The scheduler: staggered schedules feeding one queue, so jobs run one at a time (the single
//! writer), with retries on exponential backoff, a per-job timeout, manual triggers,
//! pause/resume, and a persistent record of every attempt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::alerts::{Alert, Alerts};
use crate::build::BuildReport;
use crate::clock::Clock;

use super::history::{self, History, JobRun};
use super::schedule::Schedule;
use super::{Detail, JobKind, JobRunner, Outcome};

/// Where attempts are recorded: the history table in production.
#[async_trait]
pub trait RunLog: Send + Sync {
    async fn record(&self, run: &JobRun) -> crate::storage::Result<()>;
}

#[async_trait]
impl RunLog for History {
    async fn record(&self, run: &JobRun) -> crate::storage::Result<()> {
        History::record(self, run).await
    }
}

/// Retry and timeout policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first failed attempt.
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
    /// At shutdown, how long a running job may go on to reach its commit before it is
    /// dropped (its effect is one atomic commit: it lands whole or not at all).
    pub shutdown_grace: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            timeout: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// Wait before retry number `retry` (1-based): base * 2^(retry-1), capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        crate::backoff::Backoff::new(self.backoff_base, self.backoff_max).delay(retry)
    }
}

enum Command {
    Trigger(JobKind, oneshot::Sender<(JobRun, Detail)>),
}

/// Control of a running scheduler: manual triggers, pause and resume, and what it runs when.
#[derive(Clone)]
pub struct SchedulerHandle {
    commands: mpsc::Sender<Command>,
    paused: Arc<AtomicBool>,
    schedules: Arc<[Schedule]>,
    clock: Arc<dyn Clock>,
}

/// One schedule's state, as `system.jobs` and the admin status show it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    pub schedule: Schedule,
    /// `None` while paused.
    pub next_run_us: Option<i64>,
    pub last_run: Option<JobRun>,
    /// Succeeded attempts over all attempts in the last 24 hours.
    pub success_rate_24h: Option<f64>,
}

const DAY_US: i64 = 86_400_000_000;

impl SchedulerHandle {
    /// Queues `job` to run next and waits for its final attempt.
    pub async fn trigger(&self, job: JobKind) -> Option<JobRun> {
        self.trigger_detailed(job).await.map(|(run, _)| run)
    }

    /// As [`SchedulerHandle::trigger`], with what the job found (check results, retention
    /// actions) beside its run.
    pub async fn trigger_detailed(&self, job: JobKind) -> Option<(JobRun, Detail)> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Trigger(job, tx)).await.ok()?;
        rx.await.ok()
    }

    /// Stops scheduled runs (manual triggers still run).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn now_us(&self) -> i64 {
        self.clock.now_us()
    }

    /// Every schedule with its next due time, last run and 24-hour success rate.
    pub async fn jobs(&self, history: &History) -> crate::storage::Result<Vec<JobState>> {
        let now = self.clock.now_us();
        let runs = history.since(now - DAY_US).await?;
        let mut states = Vec::with_capacity(self.schedules.len());
        for schedule in self.schedules.iter() {
            let job = schedule.job;
            let tf = job.timeframe().map(|t| t.to_string());
            let mine = |r: &&JobRun| r.job == job.name() && r.timeframe == tf;
            let recent: Vec<&JobRun> = runs.iter().filter(mine).collect();
            let succeeded = recent
                .iter()
                .filter(|r| r.status == Outcome::Succeeded)
                .count();
            let last_run = match recent.iter().max_by_key(|r| (r.started_at, r.attempt)) {
                Some(r) => Some((*r).clone()),
                None => history.last(job.name(), tf.as_deref()).await?,
            };
            states.push(JobState {
                schedule: *schedule,
                next_run_us: (!self.is_paused()).then(|| schedule.next_at_or_after(now)),
                last_run,
                success_rate_24h: (!recent.is_empty())
                    .then(|| succeeded as f64 / recent.len() as f64),
            });
        }
        Ok(states)
    }
}

/// Keeps a finished attempt in the run history and counts it in the metrics.
async fn record(history: &dyn RunLog, run: &JobRun) {
    if let Err(e) = history.record(run).await {
        tracing::error!(job = %run.job, error = %e, "could not record job run");
    }
    history::observe(run);
}

/// Runs `job` once in this process outside the queue (an offline command, while no server
/// holds the writer lock), recorded in `history` like a queued run: every run, whoever asked,
/// has its `system.job_runs` row.
pub async fn run_once(
    runner: &dyn JobRunner,
    history: &dyn RunLog,
    clock: &dyn Clock,
    job: JobKind,
) -> (JobRun, Result<Detail, String>) {
    let started = clock.now_us();
    let result = runner.run_detailed(job, started).await;
    let finished = clock.now_us();
    let run = record_once(
        history,
        job,
        (started, finished),
        result
            .as_ref()
            .map(|(report, _)| report)
            .map_err(String::as_str),
    )
    .await;
    (run, result.map(|(_, detail)| detail))
}

/// Records an attempt of `job` that ran outside the queue, from `at.0` to `at.1`, like a
/// queued attempt.
pub async fn record_once(
    history: &dyn RunLog,
    job: JobKind,
    at: (i64, i64),
    result: Result<&BuildReport, &str>,
) -> JobRun {
    let run = match result {
        Ok(report) => JobRun::new(job, 1, at, Outcome::Succeeded, report.clone(), None),
        Err(e) => JobRun::new(
            job,
            1,
            at,
            Outcome::Failed,
            BuildReport::default(),
            Some(e.to_string()),
        ),
    };
    record(history, &run).await;
    run
}

/// The scheduler; `run` owns it until cancelled.
pub struct Scheduler {
    runner: Arc<dyn JobRunner>,
    clock: Arc<dyn Clock>,
    schedules: Vec<Schedule>,
    policy: RetryPolicy,
    history: Arc<dyn RunLog>,
    commands: mpsc::Receiver<Command>,
    paused: Arc<AtomicBool>,
    alerts: Alerts,
}

impl Scheduler {
    pub fn new(
        runner: Arc<dyn JobRunner>,
        clock: Arc<dyn Clock>,
        schedules: Vec<Schedule>,
        policy: RetryPolicy,
        history: Arc<dyn RunLog>,
    ) -> (Scheduler, SchedulerHandle) {
        crate::jobs::preset_metrics();
        let (tx, rx) = mpsc::channel(64);
        let paused = Arc::new(AtomicBool::new(false));
        let handle = SchedulerHandle {
            commands: tx,
            paused: Arc::clone(&paused),
            schedules: schedules.clone().into(),
            clock: Arc::clone(&clock),
        };
        let scheduler = Scheduler {
            runner,
            clock,
            schedules,
            policy,
            history,
            commands: rx,
            paused,
            alerts: Alerts::log_only(),
        };
        (scheduler, handle)
    }

    /// Raises an alert through `alerts` for every job that fails after its retries.
    pub fn with_alerts(mut self, alerts: Alerts) -> Scheduler {
        self.alerts = alerts;
        self
    }

    /// Runs due jobs until `cancel` fires. A job running at that moment may finish within
    /// `shutdown_grace`; past it, it is dropped at its next await point: every job's effect is
    /// one atomic commit, so it either landed or not.
    pub async fn run(mut self, cancel: CancellationToken) {
        let now = self.clock.now_us();
        let mut due: Vec<i64> = self
            .schedules
            .iter()
            .map(|s| s.next_at_or_after(now))
            .collect();
        // Dropping every handle ends manual triggers, not the schedules.
        let mut commands_open = true;
        loop {
            let now = self.clock.now_us();
            // The earliest due schedule (ties: declaration order, i.e. finer timeframes first).
            let next = (0..due.len()).min_by_key(|&i| (due[i], i));
            if let Some(i) = next.filter(|&i| due[i] <= now) {
                due[i] = self.schedules[i].next_after(now);
                if !self.paused.load(Ordering::SeqCst) {
                    let job = self.schedules[i].job;
                    // A read replica runs no schedule: the builder does (until this server
                    // takes the writer lock over).
                    if let Some(builder) = self.runner.builder_elsewhere().await {
                        tracing::debug!(%job, %builder, "read replica: the builder runs this job");
                        continue;
                    }
                    if self.execute(job, &cancel).await.is_none() {
                        return;
                    }
                }
                continue;
            }
            let wait = next.map_or(Duration::from_secs(3600), |i| {
                Duration::from_micros((due[i] - now).max(0) as u64)
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                command = self.commands.recv(), if commands_open => match command {
                    Some(Command::Trigger(job, reply)) => {
                        match self.execute(job, &cancel).await {
                            Some(run) => { let _ = reply.send(run); }
                            None => return,
                        }
                    }
                    None => commands_open = false,
                },
            }
        }
    }

    /// Runs `job` with retries; returns its last attempt, or `None` if cancelled.
    async fn execute(&self, job: JobKind, cancel: &CancellationToken) -> Option<(JobRun, Detail)> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let started = self.clock.now_us();
            let span = tracing::info_span!(
                "job",
                job = job.name().as_str(),
                timeframe = job.timeframe().map(|t| t.to_string()).unwrap_or_default(),
                attempt,
                status = tracing::field::Empty,
                snapshot_before = tracing::field::Empty,
                snapshot_after = tracing::field::Empty,
                source_snapshot = tracing::field::Empty,
            );
            let run = tracing::Instrument::instrument(
                self.runner.run_detailed(job, started),
                span.clone(),
            );
            let timed = tokio::time::timeout(self.policy.timeout, run);
            tokio::pin!(timed);
            let outcome = tokio::select! {
                r = &mut timed => Some(r),
                _ = cancel.cancelled() => {
                    // Shutdown: the job may still reach its commit within the grace.
                    tracing::info!(parent: &span, grace = ?self.policy.shutdown_grace, "shutting down: letting the running job finish");
                    tokio::time::timeout(self.policy.shutdown_grace, &mut timed).await.ok()
                }
            };
            if let Some(Ok(Ok((report, _)))) = &outcome {
                for (field, value) in [
                    ("snapshot_before", report.snapshot_before),
                    ("snapshot_after", report.snapshot_after),
                    ("source_snapshot", report.source_snapshot),
                ] {
                    if let Some(id) = value {
                        span.record(field, id);
                    }
                }
            }
            let mut detail = Detail::None;
            let (status, report, error) = match outcome {
                None => (
                    Outcome::Cancelled,
                    BuildReport::default(),
                    Some("server shutting down".to_string()),
                ),
                Some(Ok(Ok((report, found)))) => {
                    detail = found;
                    (Outcome::Succeeded, report, None)
                }
                Some(Ok(Err(e))) => (Outcome::Failed, BuildReport::default(), Some(e)),
                Some(Err(_)) => (
                    Outcome::TimedOut,
                    BuildReport::default(),
                    Some(format!("no result after {:?}", self.policy.timeout)),
                ),
            };
            let at = (started, self.clock.now_us());
            let run = JobRun::new(job, attempt, at, status, report, error);
            record(self.history.as_ref(), &run).await;
            span.record("status", run.status.as_str());
            match status {
                Outcome::Succeeded => {
                    tracing::info!(parent: &span, job = %job, attempt, new = run.report.new, revised = run.report.revised, "job succeeded");
                    return Some((run, detail));
                }
                Outcome::Cancelled => return None,
                // Shutting down: no retry comes, so this failure is the last word.
                _ if attempt > self.policy.max_retries || cancel.is_cancelled() => {
                    let when = match cancel.is_cancelled() {
                        true => "; not retried: the server is shutting down",
                        false => "",
                    };
                    self.alerts.raise(Alert::new(
                        "job_failed",
                        run.finished_at,
                        format!("job {job} {status} after {attempt} attempts{when}"),
                        serde_json::json!({
                            "job": run.job.as_str(),
                            "timeframe": run.timeframe,
                            "run_id": run.run_id,
                            "attempts": attempt,
                            "status": run.status.as_str(),
                            "error": run.error,
                        }),
                    ));
                    return Some((run, detail));
                }
                _ => {
                    let wait = self.policy.backoff(attempt);
                    tracing::warn!(parent: &span, job = %job, attempt, error = ?run.error, retry_in = ?wait, "job failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(10),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(1), Duration::from_secs(2));
        assert_eq!(p.backoff(2), Duration::from_secs(4));
        assert_eq!(p.backoff(3), Duration::from_secs(8));
        assert_eq!(p.backoff(4), Duration::from_secs(10));
        assert_eq!(p.backoff(40), Duration::from_secs(10));
    }
}
