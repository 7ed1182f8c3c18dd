//! Serving: one tonic server on one port with Flight SQL, the admin service and gRPC health,
//! behind token authentication, plus the scheduler and the demo feed it runs.
//!
//! | module | owns |
//! |---|---|
//! | `query` | DataFusion sessions over our catalog (read only, one shared memory pool) |
//! | `flight` | the `FlightSqlService`: statements, prepared statements, metadata, ingest |
//! | `prepared` | stateless prepared-statement handles and bound parameters |
//! | `ingest` | bulk ingest into `market.trades` |
//! | `auth` | users, roles, handshake tokens and the layer that checks them |
//! | `keys` | primary/foreign key metadata |
//! | `error` | the one mapping of errors to gRPC status codes |
//! | `system` | the `system` schema (`job_runs`, `jobs`) |
//! | `types` | XDBC type info |
//! | `demo` | the synthetic live feed of `serve --demo` |

pub mod auth;
pub mod demo;
pub mod error;
pub mod flight;
pub mod ingest;
pub mod keys;
pub mod prepared;
pub mod query;
pub mod system;
pub mod types;

use std::future::Future;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity as TlsIdentity, ServerTlsConfig};

use crate::admin::proto::admin_service_server::AdminServiceServer;
use crate::admin::AdminApi;
use crate::build::retention::RetentionPolicy;
use crate::build::BuildSettings;
use crate::clock::Clock;
use crate::config::Config;
use crate::scheduler::{
    default_schedules, BuilderJobs, History, JobKind, RetryPolicy, Schedule, Scheduler,
};
use crate::storage::TableWriter;

pub use auth::{Auth, Identity, Role};
pub use error::{Error, Result};
pub use flight::OhlcvFlightSql;
pub use query::QueryEngine;

/// Largest message a client may send (ingest batches, bound parameters).
const MAX_REQUEST_BYTES: usize = 256 << 20;

/// How `serve` runs; [`ServeOptions::from_config`] for the binary, tests adjust fields.
pub struct ServeOptions {
    pub demo: bool,
    pub auth: Arc<Auth>,
    /// PEM certificate chain and key: TLS only when set.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    pub memory_limit_bytes: usize,
    pub settings: BuildSettings,
    pub schedules: Vec<Schedule>,
    pub retry: RetryPolicy,
    pub retention: RetentionPolicy,
    pub clock: Arc<dyn Clock>,
}

impl ServeOptions {
    pub fn from_config(config: &Config, clock: Arc<dyn Clock>) -> Result<ServeOptions> {
        let auth = Auth::new(
            config.auth.users.clone(),
            config.auth.token_ttl_secs,
            Arc::clone(&clock),
        )
        .map_err(Error::InvalidRequest)?;
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| Error::InvalidRequest(format!("reading {}: {e}", p.display())))
        };
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => {
                return Err(Error::InvalidRequest(
                    "TLS needs both server.tls_cert and server.tls_key".into(),
                ))
            }
        };
        let retention = config
            .retention
            .policy()
            .map_err(|e| Error::InvalidRequest(e.to_string()))?;
        let mut schedules = default_schedules();
        schedules.push(Schedule {
            job: JobKind::Retention,
            every_us: 86_400_000_000,
            offset_us: 1_800_000_000,
        });
        Ok(ServeOptions {
            demo: false,
            auth: Arc::new(auth),
            tls,
            memory_limit_bytes: (config.server.query_memory_limit_mb as usize) << 20,
            settings: config.build.settings(),
            schedules,
            retry: RetryPolicy::default(),
            retention,
            clock,
        })
    }
}

/// Serves on `listener` until `shutdown` resolves: stops accepting, lets open streams drain,
/// cancels the running job at its next await point (each job's effect is one atomic commit, so
/// it either landed or not) and waits for the background tasks.
pub async fn serve(
    writer: TableWriter,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let history = History::open(writer.storage().pool()).await?;
    let runner = Arc::new(BuilderJobs {
        writer: writer.clone(),
        settings: options.settings,
        retention: options.retention.clone(),
    });
    let (scheduler, handle) = Scheduler::new(
        runner,
        Arc::clone(&options.clock),
        options.schedules,
        options.retry,
        Arc::new(history.clone()),
    );
    tasks.spawn(scheduler.run(cancel.clone()));
    if options.demo {
        tasks.spawn(demo::feed(
            writer.clone(),
            Arc::clone(&options.clock),
            handle.clone(),
            cancel.clone(),
        ));
    }
    tasks.close();

    let engine = QueryEngine::new(
        writer.storage().clone(),
        handle.clone(),
        history.clone(),
        options.memory_limit_bytes,
    )?;
    let flight = FlightServiceServer::new(OhlcvFlightSql::new(
        engine,
        writer.clone(),
        Arc::clone(&options.auth),
        Arc::clone(&options.clock),
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let admin = AdminServiceServer::new(AdminApi::new(writer, handle, history, options.retention));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<FlightServiceServer<OhlcvFlightSql>>()
        .await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;

    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &options.tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(TlsIdentity::from_pem(cert, key)))
            .map_err(|e| Error::InvalidRequest(format!("TLS configuration: {e}")))?;
    }
    let stop = cancel.clone();
    let served = builder
        .layer(auth::AuthLayer::new(options.auth))
        .add_service(health_service)
        .add_service(flight)
        .add_service(admin)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests, finishing open streams");
            health
                .set_not_serving::<FlightServiceServer<OhlcvFlightSql>>()
                .await;
            stop.cancel();
        })
        .await;
    cancel.cancel();
    tasks.wait().await;
    served.map_err(|e| Error::Internal(format!("transport: {e}")))
}
