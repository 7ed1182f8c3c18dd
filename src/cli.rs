//! The `ohlcv-server` command line: flags, and what each command does.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::storage::{Storage, TableWriter, WriterLock};
use crate::trades::{self, GeneratorConfig};

#[derive(Debug, Parser)]
#[command(name = "ohlcv-server", version, about = "OHLCV candles from Iceberg trades, served over Arrow Flight SQL")]
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Append Parquet or CSV trade files to market.trades (all files in one commit, or none).
    Load {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
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

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.load_config()?;
    match cli.command {
        Command::Load { files } => {
            let writer = open_writer(&config, "load").await?;
            let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
            let outcome =
                trades::load_files(&writer, &paths, chrono::Utc::now().timestamp_micros())
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

async fn open_writer(config: &Config, purpose: &str) -> anyhow::Result<TableWriter> {
    let lock = WriterLock::acquire(&config.data_dir_abs(), purpose)?;
    let storage = Storage::open(config)
        .await
        .with_context(|| format!("opening the catalog at {}", config.catalog_url()))?;
    Ok(TableWriter::new(storage, lock))
}

/// Parses RFC 3339 (`2024-01-01T00:00:00Z`) or a bare UTC date into microseconds.
pub fn parse_timestamp(text: &str) -> anyhow::Result<i64> {
    if let Ok(ts) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(ts.timestamp_micros());
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .with_context(|| format!("'{text}' is neither RFC 3339 nor YYYY-MM-DD"))?;
    Ok(date
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp_micros())
}
