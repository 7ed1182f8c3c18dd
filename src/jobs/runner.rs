//! What runs a job over our tables: the builder, retention, compaction and validation, each
//! reporting what it did.

use async_trait::async_trait;

use super::kind::{Detail, JobKind};
use crate::alerts::{Alert, Alerts};
use crate::build::retention::RetentionPolicy;
use crate::build::{BuildReport, BuildSettings};
use crate::quality::{self, Reports, RetentionRun, Scope};
use crate::storage::{TableWriter, TimeRange};
use crate::timeframe::Timeframe;

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
