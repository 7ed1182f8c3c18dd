//! Jobs: every kind of work that changes or checks the tables (builds, backfills, compaction,
//! retention, validation), what runs them, and how an attempt ended. The scheduler decides
//! when (its schedules and the admin service's triggers share its one queue); this layer
//! decides what.

use std::fmt;

use async_trait::async_trait;

use crate::alerts::{Alert, Alerts};
use crate::build::retention::RetentionPolicy;
use crate::build::{BuildReport, BuildSettings};
use crate::quality::{self, Reports, RetentionRun, Scope};
use crate::storage::{TableKind, TableWriter, TimeRange};
use crate::timeframe::Timeframe;

/// A unit of work the scheduler runs, one at a time (the single writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Build everything pending of a timeframe.
    Build(Timeframe),
    /// Rebuild a range of a timeframe from its source.
    Backfill(Timeframe, TimeRange),
    /// Merge the files of the table's closed partitions.
    Compact(TableKind),
    /// Drop partitions past each table's retention.
    Retention,
    /// Check the bar invariants of every timeframe over what changed since the last run.
    Validate,
    /// Check the bar invariants of some timeframes over a scope (an admin or offline request).
    ValidateScoped(Timeframes, Scope),
    /// What retention would drop, changing nothing (a dry run).
    RetentionPlan,
}

/// A set of timeframes, small enough to keep a job kind `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeframes(u8);

impl Timeframes {
    pub fn of(tfs: &[Timeframe]) -> Timeframes {
        Timeframes(tfs.iter().fold(0, |bits, tf| bits | 1 << Self::bit(*tf)))
    }

    /// Finest first.
    pub fn to_vec(self) -> Vec<Timeframe> {
        Timeframe::ALL
            .into_iter()
            .filter(|tf| self.0 & 1 << Self::bit(*tf) != 0)
            .collect()
    }

    fn bit(tf: Timeframe) -> u32 {
        Timeframe::ALL.iter().position(|t| *t == tf).unwrap_or(0) as u32
    }
}

/// What a job found beside its report, for whoever asked for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Detail {
    #[default]
    None,
    Checks(Vec<quality::CheckResult>),
    Retention(Vec<crate::build::retention::RetentionAction>),
}

impl JobKind {
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Build(_) => "build",
            JobKind::Backfill(..) => "backfill",
            JobKind::Compact(_) => "compact",
            JobKind::Retention => "retention",
            JobKind::Validate | JobKind::ValidateScoped(..) => "validate",
            JobKind::RetentionPlan => "retention_plan",
        }
    }

    /// Every `(job name, timeframe label)` a run is counted under in the metrics.
    pub fn metric_labels() -> Vec<(&'static str, String)> {
        let tfs = || Timeframe::ALL.into_iter().map(|tf| tf.to_string());
        let mut labels: Vec<(&'static str, String)> = Vec::new();
        labels.extend(tfs().map(|tf| ("build", tf)));
        labels.extend(tfs().map(|tf| ("backfill", tf)));
        labels.extend(tfs().map(|tf| ("compact", tf)));
        for name in ["compact", "retention", "retention_plan", "validate"] {
            labels.push((name, String::new()));
        }
        labels
    }

    pub fn timeframe(&self) -> Option<Timeframe> {
        match self {
            JobKind::Build(tf) | JobKind::Backfill(tf, _) => Some(*tf),
            JobKind::Compact(TableKind::Bars(tf)) => Some(*tf),
            JobKind::Compact(TableKind::Trades)
            | JobKind::Retention
            | JobKind::RetentionPlan
            | JobKind::Validate
            | JobKind::ValidateScoped(..) => None,
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobKind::Build(tf) => write!(f, "build {tf}"),
            JobKind::Backfill(tf, r) => write!(f, "backfill {tf} {:?}..{:?}", r.start, r.end),
            JobKind::Compact(kind) => write!(f, "compact {}", kind.name()),
            JobKind::Retention => f.write_str("retention"),
            JobKind::RetentionPlan => f.write_str("retention plan (dry run)"),
            JobKind::Validate => f.write_str("validate"),
            JobKind::ValidateScoped(tfs, scope) => {
                write!(f, "validate {:?} {scope:?}", tfs.to_vec())
            }
        }
    }
}

/// How one attempt of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Succeeded,
    Failed,
    /// No result within the job timeout: the attempt was dropped before or without its commit.
    TimedOut,
    /// The server shut down past the grace the job had to finish.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::Cancelled,
    ];

    /// The name the history, `system.job_runs` and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The outcome a history row names (an unknown name, from a newer version, reads as failed).
    pub fn parse(name: &str) -> Outcome {
        match name {
            "succeeded" => Outcome::Succeeded,
            "timed_out" => Outcome::TimedOut,
            "cancelled" => Outcome::Cancelled,
            _ => Outcome::Failed,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Creates every series of the job metrics at zero (Prometheus practice: `increase()` cannot
/// see the first failures of a series that appears already counting them, and dashboards and
/// rules can be checked before the first event).
pub fn preset_metrics() {
    let m = crate::metrics::metrics();
    for (job, tf) in JobKind::metric_labels() {
        for outcome in Outcome::ALL {
            m.job_runs.with_label_values(&[job, &tf, outcome.as_str()]);
        }
        m.job_duration.with_label_values(&[job, &tf]);
        if job == "build" {
            for counter in [
                &m.trades_read,
                &m.bars_written,
                &m.late_revisions,
                &m.bars_deleted,
                &m.skipped_rows,
            ] {
                counter.with_label_values(&[&tf]);
            }
        }
    }
    for kind in TableKind::all() {
        m.retention_partitions
            .with_label_values(&[kind.name().as_str()]);
    }
}

/// Runs one job to completion (or error, as text for the history).
#[async_trait]
pub trait JobRunner: Send + Sync {
    async fn run(&self, job: JobKind, now_us: i64) -> Result<BuildReport, String>;

    /// As [`JobRunner::run`], with what the job found for whoever asked (the check results of
    /// a validation, the actions of retention).
    async fn run_detailed(
        &self,
        job: JobKind,
        now_us: i64,
    ) -> Result<(BuildReport, Detail), String> {
        self.run(job, now_us).await.map(|r| (r, Detail::None))
    }

    /// Who runs the jobs when it is not this process (a read replica); `None` here.
    async fn builder_elsewhere(&self) -> Option<String> {
        None
    }
}

/// The production runner: the builder over our tables.
pub struct BuilderJobs {
    pub writer: TableWriter,
    pub settings: BuildSettings,
    pub retention: RetentionPolicy,
    pub reports: Reports,
    pub alerts: Alerts,
}

#[async_trait]
impl JobRunner for BuilderJobs {
    async fn builder_elsewhere(&self) -> Option<String> {
        self.writer.builder_elsewhere().await
    }

    async fn run(&self, job: JobKind, now_us: i64) -> Result<BuildReport, String> {
        self.run_detailed(job, now_us)
            .await
            .map(|(report, _)| report)
    }

    async fn run_detailed(
        &self,
        job: JobKind,
        now_us: i64,
    ) -> Result<(BuildReport, Detail), String> {
        let retention = |actions: &[crate::build::retention::RetentionAction]| BuildReport {
            files_removed: actions.iter().map(|a| a.files_dropped).sum(),
            orphans_deleted: actions.iter().map(|a| a.files_deleted).sum(),
            ..BuildReport::default()
        };
        let plain = |report| (report, Detail::None);
        let result = match job {
            JobKind::ValidateScoped(tfs, scope) => self
                .validate(&tfs.to_vec(), scope, now_us)
                .await
                .map(|checks| (BuildReport::default(), Detail::Checks(checks))),
            JobKind::Validate => self
                .validate(&Timeframe::ALL, Scope::Changed, now_us)
                .await
                .map(|checks| (BuildReport::default(), Detail::Checks(checks))),
            JobKind::Retention | JobKind::RetentionPlan => self
                .retention(job == JobKind::RetentionPlan, now_us)
                .await
                .map(|actions| (retention(&actions), Detail::Retention(actions))),
            JobKind::Build(Timeframe::M1) => {
                crate::build::build_1m_with_5m(&self.writer, now_us, self.settings)
                    .await
                    .map(plain)
            }
            JobKind::Build(tf) => crate::build::build(&self.writer, tf, now_us, self.settings)
                .await
                .map(plain),
            JobKind::Backfill(tf, range) => self.backfill(tf, range, now_us).await.map(plain),
            JobKind::Compact(kind) => {
                crate::build::compact_closed(&self.writer, kind, now_us, self.settings)
                    .await
                    .map(plain)
            }
        };
        result.map_err(|e| e.to_string())
    }
}

impl BuilderJobs {
    /// Rebuilds `range` of `tf`, then checks it at once: a backfill rewrote history.
    async fn backfill(
        &self,
        tf: Timeframe,
        range: TimeRange,
        now_us: i64,
    ) -> crate::build::Result<BuildReport> {
        let report =
            crate::build::backfill_with(&self.writer, tf, range, now_us, self.settings).await?;
        self.validate(&[tf], Scope::Range(range), now_us).await?;
        Ok(report)
    }

    /// Runs validation, and raises an alert when a check fails.
    pub async fn validate(
        &self,
        timeframes: &[Timeframe],
        scope: Scope,
        now_us: i64,
    ) -> crate::build::Result<Vec<quality::CheckResult>> {
        let results = quality::validate(
            self.writer.storage(),
            &self.reports,
            timeframes,
            scope,
            now_us,
        )
        .await?;
        let failed: Vec<&quality::CheckResult> = results.iter().filter(|r| !r.passed()).collect();
        if !failed.is_empty() {
            let summary = failed
                .iter()
                .map(|r| format!("{} {}: {} violations", r.timeframe, r.check, r.violations))
                .collect::<Vec<_>>()
                .join(", ");
            let details = serde_json::Value::Array(failed.iter().map(|r| check_json(r)).collect());
            self.alerts.raise(Alert::new(
                "validation_failed",
                now_us,
                format!("validation failed: {summary}"),
                details,
            ));
        }
        Ok(results)
    }

    /// Applies (or plans, on a dry run) retention and records the run.
    pub async fn retention(
        &self,
        dry_run: bool,
        now_us: i64,
    ) -> crate::build::Result<Vec<crate::build::retention::RetentionAction>> {
        use crate::build::retention;
        let actions = if dry_run {
            retention::plan(&self.writer, &self.retention, now_us).await?
        } else {
            retention::apply(&self.writer, &self.retention, now_us).await?
        };
        let run_id = uuid::Uuid::new_v4().to_string();
        for action in &actions {
            let run = RetentionRun {
                run_id: run_id.clone(),
                run_at: now_us,
                dry_run,
                action: action.clone(),
            };
            self.reports.record_retention(&run).await?;
            if !dry_run {
                crate::metrics::metrics()
                    .retention_partitions
                    .with_label_values(&[action.table.as_str()])
                    .inc_by(action.partitions.len() as u64);
            }
        }
        Ok(actions)
    }
}

/// A check result as the webhook and the admin API show it.
pub fn check_json(r: &quality::CheckResult) -> serde_json::Value {
    serde_json::json!({
        "run_id": r.run_id,
        "timeframe": r.timeframe,
        "check": r.check,
        "status": r.status.as_str(),
        "violations": r.violations,
        "range_start_us": r.range_start,
        "range_end_us": r.range_end,
        "samples": r.samples.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
    })
}
