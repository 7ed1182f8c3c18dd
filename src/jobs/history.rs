//! The record of every job run, kept in the catalog database (SQLite or PostgreSQL) so it
//! survives restarts; it is what `system.job_runs` shows.

use sqlx::{AnyPool, Row};

use crate::build::BuildReport;
use crate::storage::{Error, Result};

/// One attempt of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    pub run_id: String,
    pub job: super::JobName,
    pub timeframe: Option<String>,
    pub attempt: i32,
    pub started_at: i64,
    pub finished_at: i64,
    pub status: crate::jobs::Outcome,
    pub report: BuildReport,
    pub error: Option<String>,
}

impl JobRun {
    /// The record of attempt `attempt` of `job`, which ran from `started_at` to `finished_at`
    /// and ended as `status` says.
    pub fn new(
        job: super::JobKind,
        attempt: u32,
        (started_at, finished_at): (i64, i64),
        status: super::Outcome,
        report: BuildReport,
        error: Option<String>,
    ) -> JobRun {
        JobRun {
            run_id: uuid::Uuid::new_v4().to_string(),
            job: job.name(),
            timeframe: job.timeframe().map(|t| t.to_string()),
            attempt: attempt as i32,
            started_at,
            finished_at,
            status,
            report,
            error,
        }
    }
}

/// Counts a finished attempt in the process's metrics.
pub fn observe(run: &JobRun) {
    let m = crate::metrics::metrics();
    let tf = run.timeframe.as_deref().unwrap_or("");
    m.job_runs
        .with_label_values(&[run.job.as_str(), tf, run.status.as_str()])
        .inc();
    m.job_duration
        .with_label_values(&[run.job.as_str(), tf])
        .observe((run.finished_at - run.started_at).max(0) as f64 / 1e6);
    if matches!(run.job, super::JobName::Build | super::JobName::Backfill) {
        let r = &run.report;
        for (counter, value) in [
            (&m.trades_read, r.trades_read),
            (&m.bars_written, r.bars_written),
            (&m.late_revisions, r.late_revisions),
            (&m.bars_deleted, r.deleted),
            (&m.skipped_rows, r.skipped_rows),
        ] {
            counter.with_label_values(&[tf]).inc_by(value as u64);
        }
    }
}

/// Handle on the run history table.
#[derive(Clone)]
pub struct History {
    pool: AnyPool,
}

impl History {
    /// Opens the history in the catalog database, creating its table if needed.
    pub async fn open(pool: AnyPool) -> Result<History> {
        crate::storage::state::create_tables(
            &pool,
            &["create table if not exists ohlcv_job_runs (
                run_id varchar(64) primary key,
                job varchar(64) not null,
                timeframe varchar(16),
                attempt integer not null,
                started_at bigint not null,
                finished_at bigint not null,
                status varchar(16) not null,
                trades_read bigint not null,
                bars_written bigint not null,
                new_bars bigint not null,
                revised_bars bigint not null,
                late_revisions bigint not null,
                files_added bigint not null,
                files_removed bigint not null,
                snapshot_before bigint,
                snapshot_after bigint,
                source_snapshot bigint,
                error text
            )"],
        )
        .await?;
        // Added after the table existed: older catalogs get the columns here.
        for column in [
            "deleted_bars",
            "skipped_rows",
            "delete_files_removed",
            "orphans_deleted",
        ] {
            let added = sqlx::query(&format!(
                "alter table ohlcv_job_runs add column {column} bigint not null default 0"
            ))
            .execute(&pool)
            .await;
            if let Err(e) = added {
                let text = e.to_string();
                if !text.contains("duplicate column") && !text.contains("already exists") {
                    return Err(e.into());
                }
            }
        }
        Ok(History { pool })
    }

    pub async fn record(&self, run: &JobRun) -> Result<()> {
        let r = &run.report;
        sqlx::query(
            "insert into ohlcv_job_runs (run_id, job, timeframe, attempt, started_at, \
             finished_at, status, trades_read, bars_written, new_bars, revised_bars, \
             late_revisions, files_added, files_removed, snapshot_before, snapshot_after, \
             source_snapshot, error, deleted_bars, skipped_rows, delete_files_removed, \
             orphans_deleted) values \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
             $20, $21, $22)",
        )
        .bind(&run.run_id)
        .bind(run.job.as_str())
        .bind(run.timeframe.clone())
        .bind(run.attempt)
        .bind(run.started_at)
        .bind(run.finished_at)
        .bind(run.status.as_str())
        .bind(r.trades_read as i64)
        .bind(r.bars_written as i64)
        .bind(r.new as i64)
        .bind(r.revised as i64)
        .bind(r.late_revisions as i64)
        .bind(r.files_added as i64)
        .bind(r.files_removed as i64)
        .bind(r.snapshot_before)
        .bind(r.snapshot_after)
        .bind(r.source_snapshot)
        .bind(run.error.clone())
        .bind(r.deleted as i64)
        .bind(r.skipped_rows as i64)
        .bind(r.delete_files_removed as i64)
        .bind(r.orphans_deleted as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest runs first.
    pub async fn recent(&self, limit: i64) -> Result<Vec<JobRun>> {
        let sql = format!("{SELECT} order by started_at desc, attempt desc limit $1");
        let rows = sqlx::query(&sql).bind(limit).fetch_all(&self.pool).await?;
        known(rows.iter().map(decode))
    }

    /// Runs started at or after `t`.
    pub async fn since(&self, t: i64) -> Result<Vec<JobRun>> {
        let sql = format!("{SELECT} where started_at >= $1");
        let rows = sqlx::query(&sql).bind(t).fetch_all(&self.pool).await?;
        known(rows.iter().map(decode))
    }

    /// The latest attempt of a job (of a timeframe).
    pub async fn last(
        &self,
        job: super::JobName,
        timeframe: Option<&str>,
    ) -> Result<Option<JobRun>> {
        let sql = format!(
            "{SELECT} where job = $1 and coalesce(timeframe, '') = $2 \
             order by started_at desc, attempt desc limit 1"
        );
        let row = sqlx::query(&sql)
            .bind(job.as_str())
            .bind(timeframe.unwrap_or(""))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(decode).transpose()?.flatten())
    }
}

const SELECT: &str = "select run_id, job, timeframe, attempt, started_at, finished_at, status, \
    trades_read, bars_written, new_bars, revised_bars, late_revisions, files_added, files_removed, \
    snapshot_before, snapshot_after, source_snapshot, error, deleted_bars, skipped_rows, \
    delete_files_removed, orphans_deleted from ohlcv_job_runs";

/// The runs of jobs this version knows: a newer server on the same lake may record others.
fn known(rows: impl Iterator<Item = Result<Option<JobRun>>>) -> Result<Vec<JobRun>> {
    rows.filter_map(Result::transpose).collect()
}

fn decode(row: &sqlx::any::AnyRow) -> Result<Option<JobRun>> {
    let n = |i: usize| -> Result<usize> { Ok(row.try_get::<i64, _>(i)? as usize) };
    let timeframe = row.try_get::<Option<String>, _>(2)?;
    let Some(job) = super::JobName::parse(&row.try_get::<String, _>(1)?) else {
        return Ok(None);
    };
    Ok(Some(JobRun {
        run_id: row.try_get(0)?,
        job,
        timeframe: timeframe.clone(),
        attempt: row.try_get(3)?,
        started_at: row.try_get(4)?,
        finished_at: row.try_get(5)?,
        status: crate::jobs::Outcome::parse(&row.try_get::<String, _>(6)?),
        report: BuildReport {
            timeframe: timeframe.and_then(|t| t.parse().ok()),
            trades_read: n(7)?,
            bars_written: n(8)?,
            new: n(9)?,
            revised: n(10)?,
            late_revisions: n(11)?,
            deleted: n(18)?,
            skipped_rows: n(19)?,
            files_added: n(12)?,
            files_removed: n(13)?,
            delete_files_removed: n(20)?,
            orphans_deleted: n(21)?,
            unchanged: 0,
            snapshot_before: row.try_get(14)?,
            snapshot_after: row.try_get(15)?,
            source_snapshot: row.try_get(16)?,
        },
        error: row.try_get(17).map_err(Error::from)?,
    }))
}
