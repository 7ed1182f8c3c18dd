//! The operations surface: what people and monitors read of a running server.
//!
//! | module | owns |
//! |---|---|
//! | `telemetry` | `/metrics`, `/healthz`, `/readyz` over HTTP; the gRPC request layer (metrics, ids, spans) |
//! | `status` | the HTML status page (jobs, failures, validation, a candlestick chart) |
//! | `cluster` | heartbeats of the servers on one lake (`system.cluster`, the status page) |
//!
//! The metric registry itself is [`crate::metrics`], below every layer that fills it.

pub mod cluster;
pub mod status;
pub mod telemetry;
