//! ohlcv-server: builds OHLCV candles from an Iceberg trades table and serves them.
//!
//! Where things live:
//! - [`config`]: TOML + `OHLCV_*` environment configuration.
//! - [`timeframe`]: the stored timeframes and window alignment.
//! - [`storage`]: Iceberg catalog, our own commit path, writer lock, maintenance, DataFusion
//!   access.
//! - [`trades`]: trade input: normalising and validating batches, loading files, generating
//!   synthetic trades.
//! - [`cli`]: the command-line interface that `main.rs` runs.

pub mod cli;
pub mod config;
pub mod storage;
pub mod timeframe;
pub mod trades;
