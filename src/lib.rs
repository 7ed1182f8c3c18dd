//! ohlcv-server: builds OHLCV candles from an Iceberg trades table and serves them.
//!
//! Where things live, bottom layer first. A room uses only the rooms of the layers below it
//! (`tests/layers.rs` checks it with `scripts/modgraph.py`, which also draws the graph):
//! 1. [`timeframe`] (stored timeframes, window alignment), [`clock`] (injected time),
//!    [`backoff`] (the one wait-between-retries rule), [`metrics`] (the Prometheus registry
//!    every layer fills).
//! 2. [`storage`]: Iceberg catalog, our own commit path, writer lock, maintenance, DataFusion
//!    access.
//! 3. [`trades`]: trade input: normalising and validating batches, loading files,
//!    generating synthetic trades.
//! 4. [`bars`]: the bar and rollup kernels (pure, no I/O) and the fast trades-file reader.
//! 5. [`build`]: the builder: 1m/5m from trades in chunks, rollups 30m/1h/1d, backfill,
//!    watermarks, progress.
//! 6. [`quality`]: validation of the bar invariants, the validation/retention reports.
//! 7. [`alerts`]: failed jobs and validations logged, counted and sent to a webhook.
//! 8. [`jobs`]: every job (build, backfill, rollup, compaction, retention, validation), its
//!    schedule, the one queue, retries, the run history and the shutdown order.
//! 9. [`candles`]: the candle read room: the hot bar cache, the answer memo, the shape
//!    recogniser, `candles(...)` and routed stock SQL, behind one [`candles::Reads`].
//! 10. [`push`]: live candles pushed to subscribers (DoExchange, `live_candles(...)`),
//!     conflated per candle, followed from the candle read room's changes.
//! 11. [`config`]: TOML + `OHLCV_*` environment configuration, composed from the settings
//!     each layer below owns.
//! 12. [`auth`]: users, roles, handshake tokens and the layer that checks them.
//! 13. [`ops`]: the operations room: HTTP telemetry and health, the status page, cluster
//!     heartbeats.
//! 14. [`flight`]: the Flight SQL service, its query engine, and the one mapping of errors to
//!     gRPC status codes.
//! 15. [`admin`]: the admin gRPC service (generated from `proto/`) and its command-line client.
//! 16. [`server`]: `serve`: one process wiring all of the above, started and stopped in order.
//! 17. [`cli`]: the command-line interface that `main.rs` runs.

// 1. foundations, which use nothing of ours
pub mod backoff;
pub mod clock;
pub mod metrics;
pub mod timeframe;

// 2. the lake: Iceberg tables, commits, the writer lock
pub mod storage;

// 3. trade input
pub mod trades;

// 4. the pure bar and rollup kernels
pub mod bars;

// 5. building the bar tables
pub mod build;

// 6. checking them
pub mod quality;

// 7. telling people
pub mod alerts;

// 8. the jobs room: every job, its schedule, the queue and the history
pub mod jobs;

// 9. the candle read room: cache, answer memo, candles(), routed tables
pub mod candles;

// 10. the push room: live subscriptions over the candle read room
pub mod push;

// 11. settings, composed from each layer's own section
pub mod config;

// 12. who may do what
pub mod auth;

// 13. the operations room: telemetry, status page, cluster heartbeats
pub mod ops;

// 14. the Flight SQL service and the one error-to-status mapping
pub mod flight;

// 15. the admin service and its client
pub mod admin;

// 16. one process: everything above, started and stopped in order
pub mod server;

// 17. the command line
pub mod cli;
