//! The `ohlcv-server` command line: flags, and what each command does.

use std::path::{Path, PathBuf};

mod progress;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::build;
use crate::config::Config;
use crate::jobs::{record_once, run_once, BuilderJobs, Detail, History, JobKind, Timeframes};
use crate::quality::{Reports, Scope};
use crate::storage::{Storage, TableWriter, WriterLock};
use crate::storage::{TableKind, TimeRange};
use crate::timeframe::Timeframe;
use crate::trades::{self, GeneratorConfig};

#[derive(Debug, Parser)]
#[command(
    name = "ohlcv-server",
    version,
    about = "OHLCV candles from Iceberg trades, served over Arrow Flight SQL"
)]
pub struct Cli {
    /// TOML configuration file (overridden by OHLCV_* variables, which flags override).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory of the embedded deployment (catalog.db, warehouse/, writer.lock).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Which timeframes, and optionally which range, a command works on.
#[derive(Debug, clap::Args)]
pub struct ScopeArgs {
    /// 1m, 5m, 30m, 1h, 1d or all.
    #[arg(long, default_value = "all")]
    timeframe: String,
    /// Start of the range (RFC 3339 or YYYY-MM-DD).
    #[arg(long)]
    from: Option<String>,
    /// End of the range (exclusive).
    #[arg(long)]
    to: Option<String>,
}

impl ScopeArgs {
    fn timeframes(&self) -> anyhow::Result<Vec<Timeframe>> {
        Ok(if self.timeframe == "all" {
            Timeframe::ALL.to_vec()
        } else {
            vec![self.timeframe.parse()?]
        })
    }

    /// `--from`/`--to` as a range; neither given is `None`.
    fn range(&self) -> anyhow::Result<Option<TimeRange>> {
        Ok(match (&self.from, &self.to) {
            (None, None) => None,
            (from, to) => Some(TimeRange::new(
                from.as_deref().map(parse_timestamp).transpose()?,
                to.as_deref().map(parse_timestamp).transpose()?,
            )),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Flight SQL and keep the tables built on their schedules.
    Serve {
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: String,
        /// Create the tables if missing and feed synthetic trades (a few days, then live).
        #[arg(long)]
        demo: bool,
        /// Allow listening on a non-loopback address without authentication.
        #[arg(long)]
        insecure: bool,
    },
    /// Append Parquet or CSV trade files to market.trades (all files in one commit, or none).
    Load {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Run the builder once over everything pending, offline (the scheduler's jobs), or with
    /// --from/--to rebuild that range from the source (backfill).
    Build {
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Merge the files of every closed partition into one sorted file per partition, offline
    /// (the scheduler's daily compaction, run now).
    Compact,
    /// Drop partitions past each table's retention (`[retention.days]`), then expire old
    /// snapshots and delete unreferenced files.
    Retention {
        /// List what would be dropped, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check the bar invariants (ohlc_bounds, positive_activity, unique_aligned,
    /// rollup_consistency), print the report, exit 1 on violations. Without --from/--to:
    /// what changed since the last validation plus a rotating sample of older partitions.
    Validate {
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Bars straight from a trades Parquet file, no tables involved.
    Compute {
        #[arg(long, value_name = "FILE.parquet")]
        input: PathBuf,
        /// Window length: 1m, 5m, 30m, 1h, 1d or any other like 15m, 4h.
        #[arg(long)]
        timeframe: String,
        #[arg(long, value_name = "FILE.parquet")]
        output: Option<PathBuf>,
    },
    /// Call the admin service of a running server.
    Admin {
        /// The server, e.g. http://127.0.0.1:50051 (https:// when it has TLS).
        #[arg(
            long,
            env = "OHLCVCTL_SERVER",
            default_value = "http://127.0.0.1:50051"
        )]
        server: String,
        /// User with the admin role, when the server has users configured.
        #[arg(long)]
        user: Option<String>,
        /// Password of --user.
        #[arg(long, env = "OHLCVCTL_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(subcommand)]
        command: crate::admin::client::AdminCommand,
    },
    /// Print the argon2 hash of a password (read from stdin) for `[auth.users.<name>]`.
    HashPassword,
    /// Write synthetic trades to a Parquet or CSV file.
    Generate {
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        #[arg(long)]
        trades: usize,
        #[arg(long, default_value_t = 10)]
        symbols: usize,
        #[arg(long, default_value_t = 3)]
        exchanges: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Timestamp of the first trade (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long, default_value = "2024-01-01")]
        start: String,
        /// Mean trades per second across the whole feed.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Share of trades delivered out of timestamp order.
        #[arg(long, default_value_t = 0.01)]
        out_of_order: f64,
        /// Share of trades delivered twice.
        #[arg(long, default_value_t = 0.005)]
        duplicates: f64,
    },
}

impl Cli {
    /// The configuration with the file, the environment and the flags applied in that order.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }
}

/// Runs one command to completion with `config` (from [`Cli::load_config`], loaded by the
/// caller before the runtime starts; an error is the command's).
pub async fn run(cli: Cli, config: anyhow::Result<Config>) -> anyhow::Result<()> {
    let config = config?;
    match cli.command {
        Command::Serve {
            listen,
            demo,
            insecure,
        } => serve(&config, &listen, demo, insecure).await?,
        Command::Admin {
            server,
            user,
            password,
            command,
        } => {
            let client =
                crate::admin::client::connect(&server, user.as_deref(), password.as_deref())
                    .await?;
            let mut shown = progress::Shown::new();
            crate::admin::client::run(client, command, &mut |p| shown.show(p)).await?;
        }
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "empty password on stdin");
            println!(
                "{}",
                crate::auth::hash_password(password).map_err(anyhow::Error::msg)?
            );
        }
        Command::Load { files } => {
            let writer = open_writer(&config, "load").await?;
            let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
            let outcome = trades::load_files(
                &writer,
                &paths,
                chrono::Utc::now().timestamp_micros(),
                &config.ingest,
            )
            .await?;
            println!(
                "loaded {} trades from {} file(s) into {}.trades (snapshot {})",
                outcome.rows_added,
                files.len(),
                config.catalog.namespace,
                outcome
                    .snapshot_id
                    .map_or("none: no rows".to_string(), |s| s.to_string())
            );
        }
        Command::Build { scope } => {
            let timeframes = scope.timeframes()?;
            let range = scope.range()?;
            let writer = open_writer(&config, "build").await?;
            let history = History::open(writer.storage().pool()).await?;
            let settings = config.build.settings();
            let _watch = progress::watch();
            let mut reports = Vec::new();
            let both = [Timeframe::M1, Timeframe::M5];
            if range.is_none() && both.iter().all(|tf| timeframes.contains(tf)) {
                // One read of the trades feeds 1m and 5m: one run, recorded for each.
                let now = chrono::Utc::now().timestamp_micros();
                let result = build::build_from_trades(&writer, &both, now, settings).await;
                let at = (now, chrono::Utc::now().timestamp_micros());
                for (i, tf) in both.into_iter().enumerate() {
                    let outcome = match &result {
                        Ok(r) => Ok(&r[i]),
                        Err(e) => Err(e.to_string()),
                    };
                    let outcome = outcome.as_ref().map_err(String::as_str).copied();
                    record_once(&history, JobKind::Build(tf), at, outcome).await;
                }
                reports.extend(result?);
            }
            let todo: Vec<Timeframe> = timeframes
                .into_iter()
                .filter(|tf| !reports.iter().any(|r| r.timeframe == Some(*tf)))
                .collect();
            let (from_trades, rollups): (Vec<Timeframe>, Vec<Timeframe>) = todo
                .into_iter()
                .partition(|tf| matches!(tf, Timeframe::M1 | Timeframe::M5));
            let shared = build::SharedChildren::new(rollups.len());
            let one = |tf: Timeframe| {
                let (writer, history, shared) = (&writer, &history, &shared);
                let rollup = !matches!(tf, Timeframe::M1 | Timeframe::M5);
                async move {
                    let job = match range {
                        None => JobKind::Build(tf),
                        Some(range) => JobKind::Backfill(tf, range),
                    };
                    recorded(history, job, |now| async move {
                        match (range, rollup) {
                            (None, false) => build::build(writer, tf, now, settings).await,
                            (Some(range), false) => {
                                build::backfill_with(writer, tf, range, now, settings).await
                            }
                            (range, true) => {
                                let scope =
                                    range.map_or(build::Scope::Changed, build::Scope::Range);
                                build::build_rollup_with(writer, tf, now, scope, settings, shared)
                                    .await
                            }
                        }
                    })
                    .await
                }
            };
            for tf in from_trades {
                reports.push(one(tf).await?);
            }
            // Rollups read only the 1m table, each writes its own: run together (their CPU
            // part is on the blocking pool) they use both cores, where one after another they
            // left one idle for the last part of an attach, and each day of 1m bars is read
            // once for all of them.
            for report in futures::future::join_all(rollups.into_iter().map(one)).await {
                reports.push(report?);
            }
            for report in reports {
                let tf = report.timeframe.map_or(String::new(), |t| t.to_string());
                println!(
                    "{tf}: read {} source rows; {} new, {} revised ({} late), {} unchanged bars; \
                     {} files added, {} removed; snapshot {}",
                    report.trades_read,
                    report.new,
                    report.revised,
                    report.late_revisions,
                    report.unchanged,
                    report.files_added,
                    report.files_removed,
                    report
                        .snapshot_after
                        .map_or("none".to_string(), |s| s.to_string())
                );
            }
        }
        Command::Compact => {
            let writer = open_writer(&config, "compact").await?;
            let history = History::open(writer.storage().pool()).await?;
            let settings = config.build.settings();
            for kind in TableKind::all() {
                let report = recorded(&history, JobKind::Compact(kind), |now| {
                    build::compact_closed(&writer, kind, now, settings)
                })
                .await?;
                println!(
                    "{}: {} files merged into {}",
                    kind.name(),
                    report.files_removed,
                    report.files_added
                );
            }
        }
        Command::Validate { scope } => {
            let timeframes = scope.timeframes()?;
            let scope = match scope.range()? {
                None => Scope::Changed,
                Some(range) => Scope::Range(range),
            };
            let job = JobKind::ValidateScoped(Timeframes::of(&timeframes), scope);
            let Detail::Checks(results) = offline_run(&config, "validate", job).await? else {
                anyhow::bail!("the validation returned no results");
            };
            let results: Vec<_> = results.into_iter().map(Into::into).collect();
            crate::admin::client::print_checks(&results)?;
        }
        Command::Retention { dry_run } => {
            let job = match dry_run {
                true => JobKind::RetentionPlan,
                false => JobKind::Retention,
            };
            let Detail::Retention(actions) = offline_run(&config, "retention", job).await? else {
                anyhow::bail!("retention returned no actions");
            };
            for a in &actions {
                if a.cutoff_us == i64::MIN {
                    println!("{}: no retention, keeps everything", a.table);
                    continue;
                }
                println!(
                    "{}{}: {} partitions ending by {} ({} rows, {} files){}",
                    if dry_run { "would drop " } else { "" },
                    a.table,
                    a.partitions.len(),
                    chrono::DateTime::from_timestamp_micros(a.cutoff_us)
                        .map_or(a.cutoff_us.to_string(), |t| t.to_rfc3339()),
                    a.rows,
                    a.files_dropped,
                    if dry_run {
                        String::new()
                    } else {
                        format!(
                            "; {} snapshots expired, {} unreferenced files deleted",
                            a.snapshots_expired, a.files_deleted
                        )
                    }
                );
            }
        }
        Command::Compute {
            input,
            timeframe,
            output,
        } => {
            let tf_us = crate::timeframe::parse_duration_us(&timeframe)?;
            let started = std::time::Instant::now();
            let (bars, n) = crate::bars::file::compute_file(
                &input,
                tf_us,
                chrono::Utc::now().timestamp_micros(),
            )?;
            let total = started.elapsed();
            if let Some(output) = &output {
                let file = std::fs::File::create(output)
                    .with_context(|| format!("creating {}", output.display()))?;
                let mut writer = parquet::arrow::ArrowWriter::try_new(file, bars.schema(), None)?;
                writer.write(&bars)?;
                writer.close()?;
            }
            println!(
                "{} {timeframe} bars from {n} trades in {:.3}s{}",
                bars.num_rows(),
                total.as_secs_f64(),
                output.map_or(String::new(), |o| format!(", written to {}", o.display()))
            );
        }
        Command::Generate {
            output,
            trades: n,
            symbols,
            exchanges,
            seed,
            start,
            rate,
            out_of_order,
            duplicates,
        } => {
            let cfg = GeneratorConfig {
                trades: n,
                symbols,
                exchanges,
                seed,
                start_us: parse_timestamp(&start)?,
                trades_per_second: rate,
                out_of_order,
                duplicates,
                first_id: 1,
                start_prices: Vec::new(),
            };
            let batch = trades::generate::generate(&cfg)?;
            trades::write_trades_file(&output, &batch)?;
            println!(
                "wrote {} trades ({} unique) to {}",
                batch.num_rows(),
                n,
                output.display()
            );
        }
    }
    Ok(())
}

async fn serve(config: &Config, listen: &str, demo: bool, insecure: bool) -> anyhow::Result<()> {
    use std::sync::Arc;

    use crate::clock::SystemClock;
    use crate::server::{self, ServeOptions};

    let addr: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen} is not an address:port"))?;
    let mut options = ServeOptions::from_config(config, Arc::new(SystemClock))?;
    options.demo = demo;
    if !addr.ip().is_loopback() && !options.auth.enabled() && !insecure {
        anyhow::bail!(
            "refusing to listen on {addr} without authentication: no users are configured \
             ([auth.users.<name>] in the config file), so only loopback is allowed unless you \
             pass --insecure"
        );
    }
    // Bound before the lock is taken, so the lock names the port a client can dial even
    // with `--listen host:0`.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    // On a catalog several hosts share, a second server serves as a read replica of the one
    // holding the writer lock, and takes over when that one stops; on the embedded catalog
    // one server owns the data dir. The lock names where the holder serves, which a
    // replica's refusal of writes passes on.
    let shared = config.storage().shared();
    let purpose = format!("serving {}", options.location(listener.local_addr()?));
    let lock = if shared {
        WriterLock::acquire_or_standby(config, &purpose).await?
    } else {
        WriterLock::acquire_for(config, &purpose).await?
    };
    let storage = Storage::open(config)
        .await
        .with_context(|| format!("opening the catalog at {}", config.catalog_url()))?;
    let writer = TableWriter::new(storage, lock);
    if let Some(builder) = writer.other_builder().await {
        tracing::info!(%builder, "serving as a read replica; taking over when the builder stops");
    }
    println!(
        "listening on {} ({}, {})",
        listener.local_addr()?,
        if options.tls.is_some() {
            "TLS"
        } else {
            "plaintext"
        },
        if options.auth.enabled() {
            "authentication required"
        } else {
            "no authentication"
        }
    );
    server::serve(writer, listener, options, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The server's jobs, run once from the command line (alerts are only logged).
/// Runs `job` here and now under the writer lock, recorded in the run history like a job
/// the server's queue runs.
async fn offline_run(config: &Config, purpose: &str, job: JobKind) -> anyhow::Result<Detail> {
    let writer = open_writer(config, purpose).await?;
    let pool = writer.storage().pool();
    let jobs = BuilderJobs {
        writer,
        settings: config.build.settings(),
        retention: config.retention.policy()?,
        reports: Reports::open(pool.clone()).await?,
        alerts: crate::alerts::Alerts::log_only(),
    };
    let history = History::open(pool).await?;
    let (_, result) = run_once(&jobs, &history, &crate::clock::SystemClock, job).await;
    result.map_err(anyhow::Error::msg)
}

/// Runs `work` (given the time it starts at) as `job` here and now, recorded in the run
/// history like a job the server's queue runs.
async fn recorded<F, Fut>(
    history: &History,
    job: JobKind,
    work: F,
) -> anyhow::Result<build::BuildReport>
where
    F: FnOnce(i64) -> Fut,
    Fut: std::future::Future<Output = build::Result<build::BuildReport>>,
{
    let started = chrono::Utc::now().timestamp_micros();
    let result = work(started).await;
    let at = (started, chrono::Utc::now().timestamp_micros());
    let outcome = result.as_ref().map_err(|e| e.to_string());
    record_once(
        history,
        job,
        at,
        outcome.as_ref().map_err(String::as_str).copied(),
    )
    .await;
    Ok(result?)
}

async fn open_writer(config: &Config, purpose: &str) -> anyhow::Result<TableWriter> {
    let lock = WriterLock::acquire_for(config, purpose).await?;
    let storage = Storage::open(config)
        .await
        .with_context(|| format!("opening the catalog at {}", config.catalog_url()))?;
    Ok(TableWriter::new(storage, lock))
}

/// Parses RFC 3339 (`2024-01-01T00:00:00Z`) or a bare UTC date into microseconds.
pub fn parse_timestamp(text: &str) -> anyhow::Result<i64> {
    crate::timeframe::parse_timestamp(text).map_err(anyhow::Error::msg)
}
