//! ohlcv-server: builds OHLCV candles from an Iceberg trades table and serves them.
//!
//! Where things live:
//! - [`timeframe`]: the stored timeframes and window alignment.
//! - [`storage`]: Iceberg catalog, our own commit path, writer lock, maintenance, DataFusion
//!   access.
//! - [`bars`]: the bar and rollup kernels (pure, no I/O) and the fast trades-file reader.
//! - [`build`]: the builder: incremental 1m/5m, rollup 30m/1h/1d, backfill, watermarks.
//! - [`clock`]: injected time.
//! - [`backoff`]: the one wait-between-retries rule every retry loop uses.
//! - [`metrics`]: the process's Prometheus metrics (filled by every layer, served by
//!   `server::telemetry`).
//! - [`cache`]: the hot bar cache (moka) kept equal to the tables by observing every commit,
//!   and the unbuilt trades for live bars.
//! - [`candles`]: the `candles(...)` table function (any timeframe, live bars, gap fill,
//!   time zones) and stock SQL routed through the cache.
//! - [`config`]: TOML + `OHLCV_*` environment configuration: composes the settings type
//!   each layer below owns (`storage::CatalogConfig`, `cache::CacheConfig`,
//!   `alerts::AlertsConfig`, ...); only `server` and `cli` read it.
//! - [`server`]: Flight SQL service, query engine (bare `candles(...)` statements answered
//!   without planning, their answers kept per cache generation), `serve` wiring, demo feed.
//! - [`jobs`]: every job (build, backfill, compaction, retention, validation), the runner
//!   that does them over our tables, and how an attempt ended.
//! - [`scheduler`]: staggered schedules, one job queue, retries, run history.
//! - [`trades`]: trade input: normalising and validating batches, loading files, generating
//!   synthetic trades.
//! - [`quality`]: validation of the bar invariants, and the validation/retention reports.
//! - [`alerts`]: failed jobs and failed validations logged, counted and sent to a webhook.
//! - [`admin`]: the admin gRPC service (generated from `proto/`) and its command-line client.
//! - [`cli`]: the command-line interface that `main.rs` runs.

pub mod admin;
pub mod alerts;
pub mod backoff;
pub mod bars;
pub mod build;
pub mod cache;
pub mod candles;
pub mod cli;
pub mod clock;
pub mod config;
pub mod jobs;
pub mod metrics;
pub mod quality;
pub mod scheduler;
pub mod server;
pub mod storage;
pub mod timeframe;
pub mod trades;
