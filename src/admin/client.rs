//! `ohlcv-server admin`: the admin service from the command line. With `--user` it first runs
//! the Flight handshake and sends the bearer token it gets on every call.

use anyhow::Context;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::HandshakeRequest;
use base64::Engine;
use clap::Subcommand;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

use super::proto;
use super::proto::admin_service_client::AdminServiceClient;
use crate::build::progress::Progress;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Scheduler state, jobs (last and next run) and table snapshots.
    Status,
    /// Run builds now (all timeframes unless --timeframe is given).
    Build {
        #[arg(long = "timeframe")]
        timeframes: Vec<String>,
    },
    /// Rebuild a range from the source, printing each finished step.
    Backfill {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long = "timeframe")]
        timeframes: Vec<String>,
    },
    /// Check the bar invariants.
    Validate {
        #[arg(long = "timeframe")]
        timeframes: Vec<String>,
        #[arg(long, default_value = "")]
        from: String,
        #[arg(long, default_value = "")]
        to: String,
    },
    /// Apply retention policies.
    Retention {
        #[arg(long)]
        dry_run: bool,
    },
    /// Merge the files of closed partitions (the bar tables unless --table is given).
    Compact {
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Bar cache statistics.
    CacheStats,
    /// Drop cache entries (all unless narrowed).
    CacheInvalidate {
        #[arg(long, default_value = "")]
        timeframe: String,
        #[arg(long, default_value = "")]
        exchange: String,
        #[arg(long, default_value = "")]
        symbol: String,
    },
    /// Stop scheduled runs.
    Pause,
    /// Resume scheduled runs.
    Resume,
    /// Revoke bearer tokens: of `--user`, or of everyone.
    RevokeTokens {
        #[arg(long, default_value = "")]
        user: String,
    },
}

/// Adds the bearer token (if any) to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

pub type Client = AdminServiceClient<InterceptedService<Channel, Bearer>>;

/// Connects, authenticating when a user is given.
pub async fn connect(
    server: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> anyhow::Result<Client> {
    let channel = Channel::from_shared(server.to_string())
        .with_context(|| format!("{server} is not a URL"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let bearer = match user {
        None => None,
        Some(user) => {
            let password = password.context("--user needs a password (--password)")?;
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let mut request =
                tonic::Request::new(futures::stream::iter([HandshakeRequest::default()]));
            request
                .metadata_mut()
                .insert("authorization", format!("Basic {basic}").parse()?);
            let response = FlightServiceClient::new(channel.clone())
                .handshake(request)
                .await
                .context("handshake")?;
            let token = response
                .metadata()
                .get("authorization")
                .context("the server returned no token")?
                .clone();
            Some(token)
        }
    };
    Ok(AdminServiceClient::with_interceptor(
        channel,
        Bearer(bearer),
    ))
}

fn when(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(
        || us.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

fn run_line(run: &proto::JobRun) -> String {
    let r = run.report.clone().unwrap_or_default();
    format!(
        "{} {} attempt {} at {}: {} rows read, {} new, {} revised ({} late), {} files added, {} removed{}",
        r.timeframe,
        run.status,
        run.attempt,
        when(run.started_at_us),
        r.source_rows_read,
        r.new_bars,
        r.revised_bars,
        r.late_revisions,
        r.files_added,
        r.files_removed,
        run.error.as_ref().map_or(String::new(), |e| format!("; error: {e}"))
    )
}

/// Runs one admin command and prints its result.
/// Prints validation results, the violating samples under each failed check; an error (exit
/// status 1) when any check failed.
pub fn print_checks(results: &[proto::CheckResult]) -> anyhow::Result<()> {
    let mut violations = 0;
    for c in results {
        println!(
            "{:>3} {:<18} {}: {} violations in {} rows",
            c.timeframe, c.check, c.status, c.violations, c.rows_checked
        );
        for sample in &c.samples {
            println!("      {sample}");
        }
        violations += c.violations;
    }
    if violations > 0 {
        anyhow::bail!("validation found {violations} violations");
    }
    Ok(())
}

/// Runs `command`; `show` draws a running backfill's chunk progress (and clears it with
/// `None`).
pub async fn run(
    mut client: Client,
    command: AdminCommand,
    show: &mut dyn FnMut(Option<&Progress>),
) -> anyhow::Result<()> {
    match command {
        AdminCommand::Status => {
            let s = client
                .get_status(proto::GetStatusRequest {})
                .await?
                .into_inner();
            println!(
                "ohlcv-server {} at {}; schedules {}",
                s.version,
                when(s.now_us),
                if s.paused { "PAUSED" } else { "running" }
            );
            for j in &s.jobs {
                println!(
                    "  {} {:>3} every {:>5}s  next {}  success 24h {}  last: {}",
                    j.job,
                    j.timeframe,
                    j.every_us / 1_000_000,
                    j.next_run_us.map_or("-".to_string(), when),
                    j.success_rate_24h
                        .map_or("-".to_string(), |r| format!("{:.0}%", r * 100.0)),
                    j.last_run.as_ref().map_or("never".to_string(), run_line)
                );
            }
            for t in &s.tables {
                println!(
                    "  table {:<9} snapshot {:<20} {} files, {} rows",
                    t.table,
                    t.snapshot_id.map_or("-".to_string(), |s| s.to_string()),
                    t.data_files,
                    t.rows
                );
            }
        }
        AdminCommand::Build { timeframes } => {
            let r = client
                .trigger_build(proto::TriggerBuildRequest { timeframes })
                .await?
                .into_inner();
            for run in &r.runs {
                println!("{}", run_line(run));
            }
        }
        AdminCommand::Backfill {
            from,
            to,
            timeframes,
        } => {
            let mut stream = client
                .backfill(proto::BackfillRequest {
                    timeframes,
                    from,
                    to,
                })
                .await?
                .into_inner();
            while let Some(progress) = stream.message().await? {
                let Some(run) = progress.run.as_ref() else {
                    show(running(&progress).as_ref());
                    continue;
                };
                show(None);
                println!("[{}/{}] {}", progress.step, progress.steps, run_line(run));
            }
        }
        AdminCommand::Validate {
            timeframes,
            from,
            to,
        } => {
            let r = client
                .validate(proto::ValidateRequest {
                    timeframes,
                    from,
                    to,
                })
                .await?
                .into_inner();
            print_checks(&r.results)?;
        }
        AdminCommand::Retention { dry_run } => {
            let r = client
                .apply_retention(proto::ApplyRetentionRequest { dry_run })
                .await?
                .into_inner();
            for a in &r.actions {
                println!(
                    "{}: {} partitions before {}",
                    a.table,
                    a.partitions_dropped.len(),
                    when(a.cutoff_us)
                );
            }
        }
        AdminCommand::Compact { tables } => {
            let r = client
                .compact(proto::CompactRequest { tables })
                .await?
                .into_inner();
            for t in &r.tables {
                println!(
                    "{}: {} partitions compacted, {} files -> {}",
                    t.table, t.partitions_compacted, t.files_removed, t.files_added
                );
            }
        }
        AdminCommand::CacheStats => {
            let s = client
                .get_cache_stats(proto::GetCacheStatsRequest {})
                .await?
                .into_inner();
            println!(
                "entries {}  bytes {} of {}  hits {}  misses {}  hit ratio {:.3}  \
                 table reads {}  evictions {}  live trades {}  answers kept/computed {}/{}",
                s.entries,
                s.bytes,
                s.capacity_bytes,
                s.hits,
                s.misses,
                s.hit_ratio,
                s.table_reads,
                s.evictions,
                s.live_trades,
                s.answer_hits,
                s.answer_misses
            );
        }
        AdminCommand::CacheInvalidate {
            timeframe,
            exchange,
            symbol,
        } => {
            let r = client
                .invalidate_cache(proto::InvalidateCacheRequest {
                    timeframe,
                    exchange,
                    symbol,
                })
                .await?
                .into_inner();
            println!("{} entries removed", r.entries_removed);
        }
        AdminCommand::Pause => {
            client
                .pause_schedules(proto::PauseSchedulesRequest {})
                .await?;
            println!("schedules paused");
        }
        AdminCommand::Resume => {
            client
                .resume_schedules(proto::ResumeSchedulesRequest {})
                .await?;
            println!("schedules resumed");
        }
        AdminCommand::RevokeTokens { user } => {
            let r = client
                .revoke_tokens(proto::RevokeTokensRequest { user })
                .await?
                .into_inner();
            println!("{} tokens revoked", r.revoked);
        }
    }
    Ok(())
}

/// The position a backfill message carries while its step runs, on this side's clock.
fn running(m: &proto::BackfillProgress) -> Option<Progress> {
    let now_us = chrono::Utc::now().timestamp_micros();
    Some(Progress {
        job: "backfill",
        timeframe: m.timeframe.parse().ok()?,
        chunks_done: m.chunks_done as usize,
        chunks_total: m.chunks_total as usize,
        trades_done: m.trades_done,
        trades_total: m.trades_total,
        started_us: now_us - m.elapsed_us,
        now_us,
    })
}
