//! The `system` schema: the server's own state as tables any client can query. Each table is
//! read when a statement is planned.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int32Builder, Int64Array, ListBuilder,
    RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use async_trait::async_trait;
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::error::{DataFusionError, Result as DfResult};

use crate::candles::cache::{BarCache, CacheStats};
use crate::jobs::{History, JobRun, JobState, SchedulerHandle};
use crate::quality::{CheckResult, Reports, RetentionRun};
use crate::storage::Storage;

/// Rows of a history-like system table a query can see (the newest).
const HISTORY_LIMIT: i64 = 100_000;

pub const TABLES: [&str; 7] = [
    "job_runs",
    "jobs",
    "validation_results",
    "retention_runs",
    "cache_stats",
    "cluster",
    "snapshots",
];

/// Every system table with its schema.
pub fn tables() -> Vec<(&'static str, SchemaRef)> {
    vec![
        ("job_runs", job_runs_schema()),
        ("jobs", jobs_schema()),
        ("validation_results", validation_results_schema()),
        ("retention_runs", retention_runs_schema()),
        ("cache_stats", cache_stats_schema()),
        ("cluster", cluster_schema()),
        ("snapshots", super::snapshots::schema()),
    ]
}

/// Schema of `system.cluster`: one row per server heard of in the last hour.
pub fn cluster_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("server_id", DataType::Utf8, false),
        Field::new("address", DataType::Utf8, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("alive", DataType::Boolean, false),
        Field::new("snapshot_lag_ms", DataType::Int64, false),
        Field::new("last_heartbeat", ts_type(), false),
        Field::new("started_at", ts_type(), false),
    ]))
}

fn cluster_batch(
    members: &[crate::ops::cluster::Member],
    now_us: i64,
) -> Result<RecordBatch, ArrowError> {
    let ts = |values: Vec<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
    };
    RecordBatch::try_new(
        cluster_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                members.iter().map(|m| m.server_id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                members.iter().map(|m| m.address.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                members.iter().map(|m| m.role.as_str()),
            )),
            Arc::new(arrow::array::BooleanArray::from_iter(members.iter().map(
                |m| Some(now_us - m.heartbeat_at <= crate::ops::cluster::ALIVE_US),
            ))),
            Arc::new(arrow::array::Int64Array::from_iter_values(
                members.iter().map(|m| m.lag_ms),
            )),
            ts(members.iter().map(|m| m.heartbeat_at).collect()),
            ts(members.iter().map(|m| m.started_at).collect()),
        ],
    )
}

/// Schema of `system.cache_stats`: one row, the hot cache now.
pub fn cache_stats_schema() -> SchemaRef {
    let n = |name: &str| Field::new(name, DataType::Int64, false);
    Arc::new(Schema::new(vec![
        Field::new("enabled", DataType::Boolean, false),
        n("entries"),
        n("bytes"),
        n("capacity_bytes"),
        n("hits"),
        n("misses"),
        Field::new("hit_ratio", DataType::Float64, false),
        n("table_reads"),
        n("evictions"),
        n("live_trades"),
        n("answer_hits"),
        n("answer_misses"),
    ]))
}

fn cache_stats_batch(s: &CacheStats) -> Result<RecordBatch, ArrowError> {
    let n = |v: u64| -> ArrayRef { Arc::new(Int64Array::from(vec![v as i64])) };
    RecordBatch::try_new(
        cache_stats_schema(),
        vec![
            Arc::new(BooleanArray::from(vec![s.enabled])),
            n(s.entries),
            n(s.bytes),
            n(s.capacity_bytes),
            n(s.hits),
            n(s.misses),
            Arc::new(Float64Array::from(vec![s.hit_ratio()])),
            n(s.table_reads),
            n(s.evictions),
            n(s.live_trades),
            n(s.answer_hits),
            n(s.answer_misses),
        ],
    )
}

/// Schema of `system.validation_results`: one row per check per timeframe per run.
pub fn validation_results_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("run_at", ts_type(), false),
        Field::new("timeframe", DataType::Utf8, false),
        Field::new("check", DataType::Utf8, false),
        Field::new("range_start", ts_type(), true),
        Field::new("range_end", ts_type(), true),
        Field::new("status", DataType::Utf8, false),
        Field::new("violations", DataType::Int64, false),
        Field::new("rows_checked", DataType::Int64, false),
        Field::new(
            "samples",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            false,
        ),
    ]))
}

fn validation_results_batch(rows: &[CheckResult]) -> Result<RecordBatch, ArrowError> {
    let s = |f: fn(&CheckResult) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let t = |f: fn(&CheckResult) -> Option<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from_iter(rows.iter().map(f)).with_timezone("UTC"))
    };
    let n = |f: fn(&CheckResult) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| f(r) as i64),
        ))
    };
    let mut samples = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for v in &r.samples {
            samples.values().append_value(v.to_string());
        }
        samples.append(true);
    }
    RecordBatch::try_new(
        validation_results_schema(),
        vec![
            s(|r| &r.run_id),
            t(|r| Some(r.run_at)),
            s(|r| &r.timeframe),
            s(|r| &r.check),
            t(|r| r.range_start),
            t(|r| r.range_end),
            s(|r| r.status.as_str()),
            n(|r| r.violations),
            n(|r| r.rows_checked),
            Arc::new(samples.finish()),
        ],
    )
}

/// Schema of `system.retention_runs`: one row per table per retention run (dry runs too).
pub fn retention_runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("run_at", ts_type(), false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("dry_run", DataType::Boolean, false),
        Field::new("cutoff", ts_type(), true),
        Field::new(
            "partitions_dropped",
            DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true))),
            false,
        ),
        Field::new("rows_dropped", DataType::Int64, false),
        Field::new("files_dropped", DataType::Int64, false),
        Field::new("snapshot_id", DataType::Int64, true),
        Field::new("snapshots_expired", DataType::Int64, false),
        Field::new("files_deleted", DataType::Int64, false),
    ]))
}

fn retention_runs_batch(rows: &[RetentionRun]) -> Result<RecordBatch, ArrowError> {
    let n = |f: fn(&RetentionRun) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
    };
    let mut partitions = ListBuilder::new(Int32Builder::new());
    for r in rows {
        partitions.values().append_slice(&r.action.partitions);
        partitions.append(true);
    }
    RecordBatch::try_new(
        retention_runs_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.run_id),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.run_at))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.action.table),
            )),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.dry_run)),
            )),
            // i64::MIN means "keeps everything": no cutoff.
            Arc::new(
                TimestampMicrosecondArray::from_iter(
                    rows.iter()
                        .map(|r| (r.action.cutoff_us != i64::MIN).then_some(r.action.cutoff_us)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(partitions.finish()),
            n(|r| r.action.rows as i64),
            n(|r| r.action.files_dropped as i64),
            Arc::new(Int64Array::from_iter(
                rows.iter().map(|r| r.action.snapshot_id),
            )),
            n(|r| r.action.snapshots_expired as i64),
            n(|r| r.action.files_deleted as i64),
        ],
    )
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
        // What the last run changed in files, e.g. what retention's sweep removed.
        Field::new("last_files", DataType::Utf8, true),
        Field::new("success_rate_24h", DataType::Float64, true),
        // A running chunked build (first attach, catch-up) of this schedule's job.
        Field::new("chunks_done", DataType::Int64, true),
        Field::new("chunks_total", DataType::Int64, true),
        Field::new("trades_per_sec", DataType::Float64, true),
        Field::new("eta_secs", DataType::Float64, true),
    ]))
}

fn jobs_batch(jobs: &[JobState], paused: bool) -> Result<RecordBatch, ArrowError> {
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
    let running = crate::build::progress::current();
    let progress: Vec<Option<&crate::build::progress::Progress>> = jobs
        .iter()
        .map(|j| {
            running.as_ref().filter(|p| {
                p.job == j.schedule.job.name().as_str()
                    && j.schedule.job.timeframe() == Some(p.timeframe)
            })
        })
        .collect();
    let int = |f: fn(&crate::build::progress::Progress) -> usize| -> ArrayRef {
        Arc::new(Int64Array::from(
            progress
                .iter()
                .map(|p| p.map(|p| f(p) as i64))
                .collect::<Vec<_>>(),
        ))
    };
    RecordBatch::try_new(
        jobs_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                jobs.iter().map(|j| j.schedule.job.name().as_str()),
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
            last(|r| Some(r.status.to_string())),
            last(|r| r.error.clone()),
            last(|r| Some(files_summary(&r.report))),
            Arc::new(
                jobs.iter()
                    .map(|j| j.success_rate_24h)
                    .collect::<Float64Array>(),
            ),
            int(|p| p.chunks_done),
            int(|p| p.chunks_total),
            Arc::new(
                progress
                    .iter()
                    .map(|p| p.map(|p| p.trades_per_sec()))
                    .collect::<Float64Array>(),
            ),
            Arc::new(
                progress
                    .iter()
                    .map(|p| p.and_then(|p| p.eta_secs()))
                    .collect::<Float64Array>(),
            ),
        ],
    )
}

/// A run's file changes in words: data files added and removed, delete files no data file
/// needed any more, unreferenced files the orphan sweep removed.
fn files_summary(r: &crate::build::BuildReport) -> String {
    format!(
        "{} added, {} removed, {} delete files dropped, {} orphan files deleted",
        r.files_added, r.files_removed, r.delete_files_removed, r.orphans_deleted
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
        Field::new("deleted_bars", DataType::Int64, false),
        Field::new("skipped_rows", DataType::Int64, false),
        Field::new("files_added", DataType::Int64, false),
        Field::new("files_removed", DataType::Int64, false),
        Field::new("delete_files_removed", DataType::Int64, false),
        Field::new("orphan_files_deleted", DataType::Int64, false),
        Field::new("snapshot_before", DataType::Int64, true),
        Field::new("snapshot_after", DataType::Int64, true),
        Field::new("source_snapshot", DataType::Int64, true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

fn job_runs_batch(runs: &[JobRun]) -> Result<RecordBatch, ArrowError> {
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
            s(|r| Some(r.job.as_str())),
            s(|r| r.timeframe.as_deref()),
            Arc::new(Int32Array::from_iter_values(runs.iter().map(|r| r.attempt))),
            t(|r| r.started_at),
            t(|r| r.finished_at),
            s(|r| Some(r.status.as_str())),
            n(|r| r.report.trades_read),
            n(|r| r.report.bars_written),
            n(|r| r.report.new),
            n(|r| r.report.revised),
            n(|r| r.report.late_revisions),
            n(|r| r.report.deleted),
            n(|r| r.report.skipped_rows),
            n(|r| r.report.files_added),
            n(|r| r.report.files_removed),
            n(|r| r.report.delete_files_removed),
            n(|r| r.report.orphans_deleted),
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
    storage: Storage,
    history: History,
    reports: Reports,
    scheduler: SchedulerHandle,
    cache: BarCache,
    members: crate::ops::cluster::Members,
}

impl std::fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemSchema")
    }
}

impl SystemSchema {
    pub fn new(
        storage: Storage,
        history: History,
        reports: Reports,
        scheduler: SchedulerHandle,
        cache: BarCache,
        members: crate::ops::cluster::Members,
    ) -> SystemSchema {
        SystemSchema {
            storage,
            history,
            reports,
            scheduler,
            cache,
            members,
        }
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
                let runs = history.recent(HISTORY_LIMIT).await.map_err(external)?;
                (job_runs_schema(), job_runs_batch(&runs)?)
            }
            "validation_results" => {
                let rows = self.reports.checks(HISTORY_LIMIT).await.map_err(external)?;
                (
                    validation_results_schema(),
                    validation_results_batch(&rows)?,
                )
            }
            "retention_runs" => {
                let rows = self
                    .reports
                    .retention_runs(HISTORY_LIMIT)
                    .await
                    .map_err(external)?;
                (retention_runs_schema(), retention_runs_batch(&rows)?)
            }
            "cache_stats" => (
                cache_stats_schema(),
                cache_stats_batch(&self.cache.stats())?,
            ),
            "cluster" => {
                let now = self.scheduler.now_us();
                let members = self.members.list(now).await.map_err(external)?;
                (cluster_schema(), cluster_batch(&members, now)?)
            }
            "jobs" => {
                let jobs = self.scheduler.jobs(history).await.map_err(external)?;
                (
                    jobs_schema(),
                    jobs_batch(&jobs, self.scheduler.is_paused())?,
                )
            }
            "snapshots" => (
                super::snapshots::schema(),
                super::snapshots::batch(&self.storage)
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?,
            ),
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
