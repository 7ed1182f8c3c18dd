//! gRPC health, and the scheduler's liveness behind it: a scheduler that ends before shutdown
//! (a job that panicked) leaves the server unable to build, so health and readiness must say
//! so instead of the server answering with bars that silently stop moving.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Runs `scheduler` to its end. Ending before `cancel` fires (a panic or an early return)
/// clears `alive` (which `/readyz` reads) and turns gRPC health NOT_SERVING, both for the
/// Flight service and for the whole server (the empty service name).
pub async fn watch_scheduler(
    scheduler: impl Future<Output = ()> + Send + 'static,
    health: HealthReporter,
    alive: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    // Spawned so that a panic ends this task's join handle, not the watcher.
    let ended = tokio::spawn(scheduler).await;
    if cancel.is_cancelled() {
        return;
    }
    alive.store(false, Ordering::Relaxed);
    tracing::error!(
        ?ended,
        "the scheduler stopped: no more builds; health is NOT_SERVING"
    );
    health.set_not_serving::<FlightService>().await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
}

/// The service gRPC health reports Flight SQL under (`arrow.flight.protocol.FlightService`).
pub type FlightService = FlightServiceServer<crate::flight::OhlcvFlightSql>;
