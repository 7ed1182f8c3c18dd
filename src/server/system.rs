//! The `system` schema: the server's own state as tables any client can query. Each table is
//! read when a statement is planned.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};

use crate::scheduler::{History, JobRun, JobState, SchedulerHandle};

/// Rows of `system.job_runs` a query can see (the newest).
const JOB_RUNS_LIMIT: i64 = 100_000;

pub const TABLES: [&str; 2] = ["job_runs", "jobs"];

/// Every system table with its schema.
pub fn tables() -> Vec<(&'static str, SchemaRef)> {
    vec![("job_runs", job_runs_schema()), ("jobs", jobs_schema())]
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Schema of `system.jobs`: one row per schedule.
pub fn jobs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("job", DataType::Utf8, false),
        Field::new("timeframe", DataType::Utf8, true),
        Field::new("every_secs", DataType::Int64, false),
        Field::new("offset_secs", DataType::Int64, false),
        Field::new("paused", DataType::Boolean, false),
        Field::new("next_run", ts_type(), true),
        Field::new("last_run", ts_type(), true),
        Field::new("last_status", DataType::Utf8, true),
        Field::new("last_error", DataType::Utf8, true),
        Field::new("success_rate_24h", DataType::Float64, true),
    ]))
}

fn jobs_batch(jobs: &[JobState], paused: bool) -> Result<RecordBatch, arrow::error::ArrowError> {
    let last = |f: fn(&JobRun) -> Option<String>| -> ArrayRef {
        Arc::new(
            jobs.iter()
                .map(|j| j.last_run.as_ref().and_then(f))
                .collect::<StringArray>(),
        )
    };
    let ts = |values: Vec<Option<i64>>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
    };
    RecordBatch::try_new(
        jobs_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                jobs.iter().map(|j| j.schedule.job.name()),
            )),
            Arc::new(
                jobs.iter()
                    .map(|j| j.schedule.job.timeframe().map(|t| t.to_string()))
                    .collect::<StringArray>(),
            ),
            Arc::new(Int64Array::from_iter_values(
                jobs.iter().map(|j| j.schedule.every_us / 1_000_000),
            )),
            Arc::new(Int64Array::from_iter_values(
                jobs.iter().map(|j| j.schedule.offset_us / 1_000_000),
            )),
            Arc::new(BooleanArray::from(vec![paused; jobs.len()])),
            ts(jobs.iter().map(|j| j.next_run_us).collect()),
            ts(jobs
                .iter()
                .map(|j| j.last_run.as_ref().map(|r| r.started_at))
                .collect()),
            last(|r| Some(r.status.clone())),
            last(|r| r.error.clone()),
            Arc::new(
                jobs.iter()
                    .map(|j| j.success_rate_24h)
                    .collect::<Float64Array>(),
            ),
        ],
    )
}

/// Schema of `system.job_runs`.
pub fn job_runs_schema() -> SchemaRef {
    let ts = ts_type;
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("job", DataType::Utf8, false),
        Field::new("timeframe", DataType::Utf8, true),
        Field::new("attempt", DataType::Int32, false),
        Field::new("started_at", ts(), false),
        Field::new("finished_at", ts(), false),
        Field::new("status", DataType::Utf8, false),
        Field::new("source_rows_read", DataType::Int64, false),
        Field::new("bars_written", DataType::Int64, false),
        Field::new("new_bars", DataType::Int64, false),
        Field::new("revised_bars", DataType::Int64, false),
        Field::new("late_revisions", DataType::Int64, false),
        Field::new("files_added", DataType::Int64, false),
        Field::new("files_removed", DataType::Int64, false),
        Field::new("snapshot_before", DataType::Int64, true),
        Field::new("snapshot_after", DataType::Int64, true),
        Field::new("source_snapshot", DataType::Int64, true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

fn job_runs_batch(runs: &[JobRun]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let s = |f: fn(&JobRun) -> Option<&str>| -> ArrayRef {
        Arc::new(runs.iter().map(f).collect::<StringArray>())
    };
    let n = |f: fn(&JobRun) -> usize| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            runs.iter().map(|r| f(r) as i64),
        ))
    };
    let o = |f: fn(&JobRun) -> Option<i64>| -> ArrayRef {
        Arc::new(runs.iter().map(f).collect::<Int64Array>())
    };
    let t = |f: fn(&JobRun) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(runs.iter().map(f)).with_timezone("UTC"),
        )
    };
    RecordBatch::try_new(
        job_runs_schema(),
        vec![
            s(|r| Some(&r.run_id)),
            s(|r| Some(&r.job)),
            s(|r| r.timeframe.as_deref()),
            Arc::new(Int32Array::from_iter_values(runs.iter().map(|r| r.attempt))),
            t(|r| r.started_at),
            t(|r| r.finished_at),
            s(|r| Some(&r.status)),
            n(|r| r.report.trades_read),
            n(|r| r.report.bars_written),
            n(|r| r.report.new),
            n(|r| r.report.revised),
            n(|r| r.report.late_revisions),
            n(|r| r.report.files_added),
            n(|r| r.report.files_removed),
            o(|r| r.report.snapshot_before),
            o(|r| r.report.snapshot_after),
            o(|r| r.report.source_snapshot),
            s(|r| r.error.as_deref()),
        ],
    )
}

/// The `system` schema provider.
#[derive(Clone)]
pub struct SystemSchema {
    history: History,
    scheduler: SchedulerHandle,
}

impl std::fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemSchema")
    }
}

impl SystemSchema {
    pub fn new(history: History, scheduler: SchedulerHandle) -> SystemSchema {
        SystemSchema { history, scheduler }
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let external = |e: crate::storage::Error| DataFusionError::External(Box::new(e));
        let history = &self.history;
        let (schema, batch) = match name {
            "job_runs" => {
                let runs = history.recent(JOB_RUNS_LIMIT).await.map_err(external)?;
                (job_runs_schema(), job_runs_batch(&runs)?)
            }
            "jobs" => {
                let jobs = self.scheduler.jobs(history).await.map_err(external)?;
                (
                    jobs_schema(),
                    jobs_batch(&jobs, self.scheduler.is_paused())?,
                )
            }
            _ => return Ok(None),
        };
        Ok(Some(Arc::new(MemTable::try_new(
            schema,
            vec![vec![batch]],
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
