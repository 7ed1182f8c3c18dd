//! Server side of the admin service. Builds, backfills and compactions go through the
//! scheduler's queue, so they never race the scheduled jobs for the single writer.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::proto;
use super::proto::admin_service_server::AdminService;
use std::sync::Arc;

use crate::auth::{Identity, Role};
use crate::candles::cache::BarCache;
use crate::flight::Error;
use crate::jobs::{BuilderJobs, Detail, History, JobKind, JobRun, SchedulerHandle, Timeframes};
use crate::quality::Scope;
use crate::storage::{Listing, TableKind, TableWriter, TimeRange};
use crate::timeframe::Timeframe;

/// The admin service.
#[derive(Clone)]
pub struct AdminApi {
    jobs: Arc<BuilderJobs>,
    scheduler: SchedulerHandle,
    history: History,
    cache: BarCache,
    auth: Arc<crate::auth::Auth>,
}

impl AdminApi {
    pub fn new(
        jobs: Arc<BuilderJobs>,
        scheduler: SchedulerHandle,
        history: History,
        cache: BarCache,
        auth: Arc<crate::auth::Auth>,
    ) -> AdminApi {
        AdminApi {
            jobs,
            scheduler,
            history,
            cache,
            auth,
        }
    }

    fn writer(&self) -> &TableWriter {
        &self.jobs.writer
    }

    async fn run(&self, job: JobKind) -> Result<JobRun, Error> {
        Ok(self.run_detailed(job).await?.0)
    }

    /// What `job` found, once it succeeded (a failed run is a failed RPC, see [`succeeded`]).
    async fn found(&self, job: JobKind) -> Result<Detail, Error> {
        let (run, detail) = self.run_detailed(job).await?;
        succeeded(run)?;
        Ok(detail)
    }

    /// Queues `job` (behind the one running, if any) and waits for its last attempt.
    async fn run_detailed(&self, job: JobKind) -> Result<(JobRun, Detail), Error> {
        if let Some(builder) = self.writer().builder_elsewhere().await {
            return Err(crate::storage::Error::ReadReplica { builder }.into());
        }
        self.scheduler
            .trigger_detailed(job)
            .await
            .ok_or(Error::ShuttingDown)
    }
}

fn admin<T>(request: &Request<T>) -> Result<(), Status> {
    Ok(Identity::of(request)?.require(Role::Admin, "the admin service")?)
}

/// Parses timeframe names; none means all, finest first (rollups then see fresh 1m bars).
fn timeframes(names: &[String]) -> Result<Vec<Timeframe>, Error> {
    if names.is_empty() {
        return Ok(Timeframe::ALL.to_vec());
    }
    let mut tfs = names
        .iter()
        .map(|n| n.parse::<Timeframe>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidRequest(e.to_string()))?;
    tfs.sort();
    tfs.dedup();
    Ok(tfs)
}

fn time(text: &str, what: &str) -> Result<Option<i64>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    crate::timeframe::parse_timestamp(text)
        .map(Some)
        .map_err(|e| Error::InvalidRequest(format!("{what}: {e}")))
}

fn run_message(run: &JobRun) -> proto::JobRun {
    let r = &run.report;
    proto::JobRun {
        run_id: run.run_id.clone(),
        status: run.status.to_string(),
        attempt: run.attempt,
        started_at_us: run.started_at,
        finished_at_us: run.finished_at,
        report: Some(proto::BuildReport {
            timeframe: run.timeframe.clone().unwrap_or_default(),
            source_rows_read: r.trades_read as u64,
            new_bars: r.new as u64,
            revised_bars: r.revised as u64,
            late_revisions: r.late_revisions as u64,
            unchanged_bars: r.unchanged as u64,
            files_added: r.files_added as u64,
            files_removed: r.files_removed as u64,
            snapshot_after: r.snapshot_after,
        }),
        error: run.error.clone(),
    }
}

/// A failed job is a failed RPC: the caller should not have to read a status field to notice.
fn succeeded(run: JobRun) -> Result<JobRun, Error> {
    if run.status == crate::jobs::Outcome::Succeeded {
        Ok(run)
    } else {
        Err(Error::Internal(format!(
            "{} {} {} after {} attempt(s): {}",
            run.job,
            run.timeframe.as_deref().unwrap_or(""),
            run.status,
            run.attempt,
            run.error.as_deref().unwrap_or("no error recorded")
        )))
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<proto::BackfillProgress, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_status(
        &self,
        request: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::GetStatusResponse>, Status> {
        admin(&request)?;
        let jobs = self
            .scheduler
            .jobs(&self.history)
            .await
            .map_err(Error::from)?;
        let mut tables = Vec::new();
        for kind in TableKind::all() {
            let table = self
                .writer()
                .storage()
                .table(kind)
                .await
                .map_err(Error::from)?;
            let listing = Listing::read(&table, kind, None, TimeRange::ALL)
                .await
                .map_err(Error::from)?;
            tables.push(proto::TableStatus {
                table: kind.name(),
                snapshot_id: table.metadata().current_snapshot_id,
                data_files: listing.files.len() as u64,
                rows: listing.files.iter().map(|f| f.record_count() as u64).sum(),
            });
        }
        Ok(Response::new(proto::GetStatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            paused: self.scheduler.is_paused(),
            now_us: self.scheduler.now_us(),
            jobs: jobs
                .iter()
                .map(|j| proto::JobStatus {
                    job: j.schedule.job.name().to_string(),
                    timeframe: j
                        .schedule
                        .job
                        .timeframe()
                        .map_or(String::new(), |t| t.to_string()),
                    every_us: j.schedule.every_us,
                    next_run_us: j.next_run_us,
                    last_run: j.last_run.as_ref().map(run_message),
                    success_rate_24h: j.success_rate_24h,
                })
                .collect(),
            tables,
        }))
    }

    async fn trigger_build(
        &self,
        request: Request<proto::TriggerBuildRequest>,
    ) -> Result<Response<proto::TriggerBuildResponse>, Status> {
        admin(&request)?;
        let mut runs = Vec::new();
        for tf in timeframes(&request.get_ref().timeframes)? {
            let run = succeeded(self.run(JobKind::Build(tf)).await?)?;
            runs.push(run_message(&run));
        }
        Ok(Response::new(proto::TriggerBuildResponse { runs }))
    }

    type BackfillStream = ProgressStream;

    async fn backfill(
        &self,
        request: Request<proto::BackfillRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        admin(&request)?;
        let req = request.into_inner();
        let range = TimeRange::new(time(&req.from, "from")?, time(&req.to, "to")?);
        if range.start.is_none() || range.end.is_none() {
            return Err(Error::InvalidRequest("backfill needs both from and to".into()).into());
        }
        if range.start >= range.end {
            return Err(Error::InvalidRequest("backfill needs from < to".into()).into());
        }
        let tfs = timeframes(&req.timeframes)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let api = self.clone();
        tokio::spawn(async move {
            let steps = tfs.len() as u32;
            for (i, tf) in tfs.into_iter().enumerate() {
                let step = i as u32 + 1;
                // Each chunk the step commits goes to the client while it runs.
                let mut updates = crate::build::progress::subscribe();
                let job = api.run(JobKind::Backfill(tf, range));
                tokio::pin!(job);
                let ran = loop {
                    tokio::select! {
                        ran = &mut job => break ran,
                        update = updates.recv() => {
                            // Only this backfill's: a scheduled build may be queued ahead of it.
                            if let Some(p) = update.ok().filter(|p| p.job == "backfill") {
                                // A full channel (a slow client) skips a position, never blocks
                                // the build.
                                let _ = tx.try_send(Ok(progress_message(step, steps, &p)));
                            }
                        }
                    }
                };
                let message = ran
                    .and_then(succeeded)
                    .map(|run| proto::BackfillProgress {
                        step,
                        steps,
                        run: Some(run_message(&run)),
                        ..Default::default()
                    })
                    .map_err(Status::from);
                let failed = message.is_err();
                // A client that went away stops the backfill after the running step.
                if tx.send(message).await.is_err() || failed {
                    return;
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn validate(
        &self,
        request: Request<proto::ValidateRequest>,
    ) -> Result<Response<proto::ValidateResponse>, Status> {
        admin(&request)?;
        let req = request.into_inner();
        let tfs = timeframes(&req.timeframes)?;
        let range = TimeRange::new(time(&req.from, "from")?, time(&req.to, "to")?);
        if let (Some(from), Some(to)) = (range.start, range.end) {
            if from >= to {
                return Err(Error::InvalidRequest("validate needs from < to".into()).into());
            }
        }
        let scope = if range == TimeRange::ALL {
            Scope::Changed
        } else {
            Scope::Range(range)
        };
        let job = JobKind::ValidateScoped(Timeframes::of(&tfs), scope);
        let Detail::Checks(results) = self.found(job).await? else {
            return Err(Error::Internal("a validation returned no results".into()).into());
        };
        Ok(Response::new(proto::ValidateResponse {
            results: results.into_iter().map(Into::into).collect(),
        }))
    }

    async fn apply_retention(
        &self,
        request: Request<proto::ApplyRetentionRequest>,
    ) -> Result<Response<proto::ApplyRetentionResponse>, Status> {
        admin(&request)?;
        let job = match request.get_ref().dry_run {
            true => JobKind::RetentionPlan,
            false => JobKind::Retention,
        };
        let Detail::Retention(actions) = self.found(job).await? else {
            return Err(Error::Internal("retention returned no actions".into()).into());
        };
        Ok(Response::new(proto::ApplyRetentionResponse {
            actions: actions
                .into_iter()
                .map(|a| proto::RetentionAction {
                    table: a.table,
                    cutoff_us: a.cutoff_us,
                    partitions_dropped: a.partitions,
                    rows_dropped: a.rows,
                })
                .collect(),
        }))
    }

    async fn compact(
        &self,
        request: Request<proto::CompactRequest>,
    ) -> Result<Response<proto::CompactResponse>, Status> {
        admin(&request)?;
        let kinds: Vec<TableKind> = if request.get_ref().tables.is_empty() {
            Timeframe::ALL.into_iter().map(TableKind::Bars).collect()
        } else {
            request
                .get_ref()
                .tables
                .iter()
                .map(|name| {
                    TableKind::all()
                        .find(|k| k.name() == *name)
                        .ok_or_else(|| Error::NotFound(format!("table {name} does not exist")))
                })
                .collect::<Result<_, _>>()?
        };
        let mut tables = Vec::new();
        for kind in kinds {
            let run = succeeded(self.run(JobKind::Compact(kind)).await?)?;
            let r = &run.report;
            tables.push(proto::CompactedTable {
                table: kind.name(),
                // Each compacted partition becomes exactly one file.
                partitions_compacted: r.files_added as u32,
                files_removed: r.files_removed as u64,
                files_added: r.files_added as u64,
                snapshot_id: r.snapshot_after,
            });
        }
        Ok(Response::new(proto::CompactResponse { tables }))
    }

    async fn get_cache_stats(
        &self,
        request: Request<proto::GetCacheStatsRequest>,
    ) -> Result<Response<proto::GetCacheStatsResponse>, Status> {
        admin(&request)?;
        let s = self.cache.stats();
        Ok(Response::new(proto::GetCacheStatsResponse {
            entries: s.entries,
            bytes: s.bytes,
            hits: s.hits,
            misses: s.misses,
            evictions: s.evictions,
            hit_ratio: s.hit_ratio(),
            table_reads: s.table_reads,
            capacity_bytes: s.capacity_bytes,
            live_trades: s.live_trades,
            answer_hits: s.answer_hits,
            answer_misses: s.answer_misses,
        }))
    }

    async fn invalidate_cache(
        &self,
        request: Request<proto::InvalidateCacheRequest>,
    ) -> Result<Response<proto::InvalidateCacheResponse>, Status> {
        admin(&request)?;
        let r = request.into_inner();
        let timeframe = match r.timeframe.as_str() {
            "" => None,
            name => Some(
                name.parse::<Timeframe>()
                    .map_err(|e| Error::InvalidRequest(e.to_string()))?,
            ),
        };
        let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let (exchange, symbol) = (text(&r.exchange), text(&r.symbol));
        let entries_removed =
            self.cache
                .invalidate(timeframe, exchange.as_deref(), symbol.as_deref());
        Ok(Response::new(proto::InvalidateCacheResponse {
            entries_removed,
        }))
    }

    async fn pause_schedules(
        &self,
        request: Request<proto::PauseSchedulesRequest>,
    ) -> Result<Response<proto::PauseSchedulesResponse>, Status> {
        admin(&request)?;
        self.scheduler.pause();
        tracing::info!("schedules paused by admin");
        Ok(Response::new(proto::PauseSchedulesResponse {}))
    }

    async fn resume_schedules(
        &self,
        request: Request<proto::ResumeSchedulesRequest>,
    ) -> Result<Response<proto::ResumeSchedulesResponse>, Status> {
        admin(&request)?;
        self.scheduler.resume();
        tracing::info!("schedules resumed by admin");
        Ok(Response::new(proto::ResumeSchedulesResponse {}))
    }

    async fn revoke_tokens(
        &self,
        request: Request<proto::RevokeTokensRequest>,
    ) -> Result<Response<proto::RevokeTokensResponse>, Status> {
        admin(&request)?;
        let user = request.into_inner().user;
        let revoked = self
            .auth
            .revoke(Some(user.as_str()).filter(|u| !u.is_empty()));
        tracing::warn!(user = %user, revoked, "bearer tokens revoked by admin");
        Ok(Response::new(proto::RevokeTokensResponse {
            revoked: revoked as u32,
        }))
    }
}

/// A running step's position as the backfill stream sends it.
fn progress_message(
    step: u32,
    steps: u32,
    p: &crate::build::progress::Progress,
) -> proto::BackfillProgress {
    proto::BackfillProgress {
        step,
        steps,
        run: None,
        timeframe: p.timeframe.to_string(),
        chunks_done: p.chunks_done as u64,
        chunks_total: p.chunks_total as u64,
        trades_done: p.trades_done,
        trades_total: p.trades_total,
        elapsed_us: p.now_us - p.started_us,
    }
}
