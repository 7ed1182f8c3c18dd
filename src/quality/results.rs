//! Validation and retention reports, kept in the catalog database (SQLite or PostgreSQL) beside
//! the job history so they survive restarts; `system.validation_results` and
//! `system.retention_runs` read them.

use sqlx::{AnyPool, Row};

use super::checks::Violation;
use crate::build::retention::RetentionAction;
use crate::storage::Result;

/// One check of one timeframe in one validation run.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub run_id: String,
    pub run_at: i64,
    pub timeframe: String,
    pub check: String,
    /// The span the checked ranges cover, `[start, end)`; `None` when nothing was checked.
    pub range_start: Option<i64>,
    pub range_end: Option<i64>,
    pub status: CheckStatus,
    pub violations: u64,
    pub rows_checked: u64,
    pub samples: Vec<Violation>,
}

impl CheckResult {
    pub fn passed(&self) -> bool {
        self.status == CheckStatus::Passed
    }
}

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Passed,
    Failed,
}

impl CheckStatus {
    /// The name the results table, `system.validation_results` and the admin API use.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passed => "passed",
            CheckStatus::Failed => "failed",
        }
    }

    /// The status a stored row names (anything but `passed` reads as failed).
    pub fn parse(name: &str) -> CheckStatus {
        match name {
            "passed" => CheckStatus::Passed,
            _ => CheckStatus::Failed,
        }
    }
}

impl std::fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One table in one retention run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRun {
    pub run_id: String,
    pub run_at: i64,
    pub dry_run: bool,
    pub action: RetentionAction,
}

/// How far a timeframe has been validated: the sequence numbers of the table and of its source
/// seen by the last validation, and how many runs there were (to rotate the sample).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Validated {
    pub own_sequence: i64,
    pub source_sequence: i64,
    pub runs: i64,
}

/// Handle on the report tables.
#[derive(Clone)]
pub struct Reports {
    pool: AnyPool,
}

impl Reports {
    /// Opens the reports in the catalog database, creating their tables if needed.
    pub async fn open(pool: AnyPool) -> Result<Reports> {
        crate::storage::state::create_tables(
            &pool,
            &[
                "create table if not exists ohlcv_validation_results (
                run_id varchar(64) not null,
                run_at bigint not null,
                timeframe varchar(16) not null,
                check_name varchar(32) not null,
                range_start bigint,
                range_end bigint,
                status varchar(16) not null,
                violations bigint not null,
                rows_checked bigint not null,
                samples text not null
            )",
                "create table if not exists ohlcv_validation_state (
                timeframe varchar(16) primary key,
                own_sequence bigint not null,
                source_sequence bigint not null,
                runs bigint not null
            )",
                "create table if not exists ohlcv_retention_runs (
                run_id varchar(64) not null,
                run_at bigint not null,
                table_name varchar(64) not null,
                dry_run integer not null,
                cutoff bigint not null,
                partitions text not null,
                rows_dropped bigint not null,
                files_dropped bigint not null,
                snapshot_id bigint,
                snapshots_expired bigint not null,
                files_deleted bigint not null
            )",
            ],
        )
        .await?;
        Ok(Reports { pool })
    }

    pub async fn record_check(&self, r: &CheckResult) -> Result<()> {
        let samples: Vec<serde_json::Value> = r
            .samples
            .iter()
            .map(|v| {
                serde_json::json!({
                    "exchange": v.exchange,
                    "symbol": v.symbol,
                    "window_start": v.window_start,
                    "detail": v.detail,
                })
            })
            .collect();
        sqlx::query(
            "insert into ohlcv_validation_results values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&r.run_id)
        .bind(r.run_at)
        .bind(&r.timeframe)
        .bind(&r.check)
        .bind(r.range_start)
        .bind(r.range_end)
        .bind(r.status.as_str())
        .bind(r.violations as i64)
        .bind(r.rows_checked as i64)
        .bind(serde_json::Value::Array(samples).to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Validation results, newest run first.
    pub async fn checks(&self, limit: i64) -> Result<Vec<CheckResult>> {
        let rows = sqlx::query(
            "select run_id, run_at, timeframe, check_name, range_start, range_end, status, \
             violations, rows_checked, samples from ohlcv_validation_results \
             order by run_at desc, timeframe, check_name limit $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let samples: String = row.try_get(9)?;
                let samples: Vec<serde_json::Value> =
                    serde_json::from_str(&samples).unwrap_or_default();
                Ok(CheckResult {
                    run_id: row.try_get(0)?,
                    run_at: row.try_get(1)?,
                    timeframe: row.try_get(2)?,
                    check: row.try_get(3)?,
                    range_start: row.try_get(4)?,
                    range_end: row.try_get(5)?,
                    status: CheckStatus::parse(&row.try_get::<String, _>(6)?),
                    violations: row.try_get::<i64, _>(7)? as u64,
                    rows_checked: row.try_get::<i64, _>(8)? as u64,
                    samples: samples.iter().map(violation_of).collect(),
                })
            })
            .collect()
    }

    pub async fn validated(&self, timeframe: &str) -> Result<Option<Validated>> {
        let row = sqlx::query(
            "select own_sequence, source_sequence, runs from ohlcv_validation_state \
             where timeframe = $1",
        )
        .bind(timeframe)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Validated {
                own_sequence: r.try_get(0)?,
                source_sequence: r.try_get(1)?,
                runs: r.try_get(2)?,
            })
        })
        .transpose()
    }

    pub async fn set_validated(&self, timeframe: &str, v: Validated) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("delete from ohlcv_validation_state where timeframe = $1")
            .bind(timeframe)
            .execute(&mut *tx)
            .await?;
        sqlx::query("insert into ohlcv_validation_state values ($1, $2, $3, $4)")
            .bind(timeframe)
            .bind(v.own_sequence)
            .bind(v.source_sequence)
            .bind(v.runs)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn record_retention(&self, run: &RetentionRun) -> Result<()> {
        let a = &run.action;
        let partitions = serde_json::to_string(&a.partitions).unwrap_or_default();
        sqlx::query(
            "insert into ohlcv_retention_runs values \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&run.run_id)
        .bind(run.run_at)
        .bind(&a.table)
        .bind(run.dry_run as i32)
        .bind(a.cutoff_us)
        .bind(partitions)
        .bind(a.rows as i64)
        .bind(a.files_dropped as i64)
        .bind(a.snapshot_id)
        .bind(a.snapshots_expired as i64)
        .bind(a.files_deleted as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Retention runs, newest first.
    pub async fn retention_runs(&self, limit: i64) -> Result<Vec<RetentionRun>> {
        let rows = sqlx::query(
            "select run_id, run_at, table_name, dry_run, cutoff, partitions, rows_dropped, \
             files_dropped, snapshot_id, snapshots_expired, files_deleted \
             from ohlcv_retention_runs order by run_at desc, table_name limit $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let partitions: String = row.try_get(5)?;
                Ok(RetentionRun {
                    run_id: row.try_get(0)?,
                    run_at: row.try_get(1)?,
                    dry_run: row.try_get::<i32, _>(3)? != 0,
                    action: RetentionAction {
                        table: row.try_get(2)?,
                        cutoff_us: row.try_get(4)?,
                        partitions: serde_json::from_str(&partitions).unwrap_or_default(),
                        rows: row.try_get::<i64, _>(6)? as u64,
                        files_dropped: row.try_get::<i64, _>(7)? as usize,
                        snapshot_id: row.try_get(8)?,
                        snapshots_expired: row.try_get::<i64, _>(9)? as usize,
                        files_deleted: row.try_get::<i64, _>(10)? as usize,
                    },
                })
            })
            .collect()
    }
}

fn violation_of(v: &serde_json::Value) -> Violation {
    Violation {
        exchange: v["exchange"].as_str().unwrap_or_default().to_string(),
        symbol: v["symbol"].as_str().unwrap_or_default().to_string(),
        window_start: v["window_start"].as_i64().unwrap_or_default(),
        detail: v["detail"].as_str().unwrap_or_default().to_string(),
    }
}
