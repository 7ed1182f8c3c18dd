//! Serving: the Flight SQL endpoint, and `serve` wiring the scheduler and the demo feed.
//!
//! | module | owns |
//! |---|---|
//! | `query` | DataFusion sessions over our catalog (read only) |
//! | `flight` | the `FlightSqlService`: statements and metadata |
//! | `keys` | primary/foreign key metadata |
//! | `error` | the one mapping of errors to gRPC status codes |
//! | `system` | the `system` schema (`job_runs`) |
//! | `types` | XDBC type info |
//! | `demo` | the synthetic live feed of `serve --demo` |

pub mod demo;
pub mod error;
pub mod flight;
pub mod keys;
pub mod query;
pub mod system;
pub mod types;

use std::future::Future;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub use error::{Error, Result};
pub use flight::OhlcvFlightSql;
pub use query::QueryEngine;

/// Serves Flight SQL on `listener` until `shutdown` resolves, then drains open streams.
pub async fn run(
    listener: TcpListener,
    engine: QueryEngine,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let service = FlightServiceServer::new(OhlcvFlightSql::new(engine));
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}
