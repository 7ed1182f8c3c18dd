//! The `system` schema: the server's own state as tables any client can query. Each table is
//! read when a statement is planned.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};
use sqlx::AnyPool;

use crate::scheduler::{History, JobRun};

/// Rows of `system.job_runs` a query can see (the newest).
const JOB_RUNS_LIMIT: i64 = 100_000;

pub const TABLES: [&str; 1] = ["job_runs"];

/// Schema of `system.job_runs`.
pub fn job_runs_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
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
#[derive(Debug, Clone)]
pub struct SystemSchema {
    pool: AnyPool,
}

impl SystemSchema {
    pub fn new(pool: AnyPool) -> SystemSchema {
        SystemSchema { pool }
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
        if name != "job_runs" {
            return Ok(None);
        }
        let external = |e: crate::storage::Error| DataFusionError::External(Box::new(e));
        let history = History::open(self.pool.clone()).await.map_err(external)?;
        let runs = history.recent(JOB_RUNS_LIMIT).await.map_err(external)?;
        let batch = job_runs_batch(&runs)?;
        Ok(Some(Arc::new(MemTable::try_new(
            job_runs_schema(),
            vec![vec![batch]],
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
