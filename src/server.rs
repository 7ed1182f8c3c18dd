//! Serving: one tonic server on one port with Flight SQL, the admin service and gRPC health,
//! behind token authentication, plus the telemetry endpoint, the cache's upkeep, the
//! scheduler and the demo feed it runs, started and stopped in order.
//!
//! | module | owns |
//! |---|---|
//! | `health` | gRPC health, NOT_SERVING once the scheduler has died |
//! | `demo` | the synthetic live feed of `serve --demo` |

pub mod demo;
pub mod health;

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
use crate::alerts::Alerts;
use crate::build::retention::RetentionPolicy;
use crate::build::BuildSettings;
use crate::candles::cache::{BarCache, CacheConfig, Popular};
use crate::candles::Reads;
use crate::clock::Clock;
use crate::config::{AlertsConfig, Config};
use crate::jobs::{BuilderJobs, History, RetryPolicy, Schedule, Scheduler};
use crate::quality::Reports;
use crate::storage::{TableKind, TableWriter};

use crate::auth::Auth;
use crate::flight::checked::CheckedCommands;
use crate::flight::{Error, OhlcvFlightSql, QueryEngine, QueryLimits, Result};
use crate::ops::{cluster, status, telemetry};

/// Largest message a client may send (ingest batches, bound parameters).
const MAX_REQUEST_BYTES: usize = 256 << 20;

/// How `serve` runs; [`ServeOptions::from_config`] for the binary, tests adjust fields.
pub struct ServeOptions {
    pub demo: bool,
    pub auth: Arc<Auth>,
    /// PEM certificate chain and key: TLS only when set.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    pub memory_limit_bytes: usize,
    /// `[server] query_timeout_secs`: longest a statement may run (0: no limit).
    pub query_timeout: std::time::Duration,
    pub settings: BuildSettings,
    pub schedules: Vec<Schedule>,
    pub retry: RetryPolicy,
    pub retention: RetentionPolicy,
    pub alerts: AlertsConfig,
    pub cache: CacheConfig,
    /// Plausibility limits of ingested trades.
    pub limits: crate::trades::Limits,
    pub clock: Arc<dyn Clock>,
    /// `[telemetry] listen`: where `/metrics`, `/healthz` and `/readyz` are served; empty
    /// for none.
    pub telemetry_listen: String,
    /// `[cluster] endpoints`: the Flight locations named in query endpoints.
    pub endpoints: Vec<String>,
    /// `[cluster] advertise`: this server's Flight location; empty for its listen address.
    pub advertise: String,
    /// `[server]` limits of live subscriptions.
    pub push: crate::push::PushLimits,
}

/// Why the telemetry endpoint could not be bound, naming the setting that moves it: a second
/// server on one host with default settings meets the first one's port.
fn telemetry_bind_error(listen: &str, e: std::io::Error) -> Error {
    let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
        " (another server on this host?)"
    } else {
        ""
    };
    Error::InvalidRequest(format!(
        "cannot serve telemetry on {listen}: {e}{hint}; set [telemetry] listen \
         (OHLCV_TELEMETRY__LISTEN) to a free address, or to \"\" for no telemetry endpoint"
    ))
}

/// A Flight location a client can dial: `grpc+tcp://host:port` or `grpc+tls://host:port`.
fn check_location(setting: &str, location: &str) -> Result<()> {
    let rest = ["grpc+tcp://", "grpc+tls://", "grpc://"]
        .iter()
        .find_map(|scheme| location.strip_prefix(scheme));
    let authority = rest.map(|r| r.trim_end_matches('/')).unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(Error::InvalidRequest(format!(
            "{setting} '{location}' is not a Flight location: write grpc+tcp://host:port or \
             grpc+tls://host:port"
        ))),
    }
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
        let schedules = crate::jobs::schedule::schedules(&config.quality);
        for endpoint in &config.cluster.endpoints {
            check_location("[cluster] endpoints", endpoint)?;
        }
        if !config.cluster.advertise.is_empty() {
            check_location("[cluster] advertise", &config.cluster.advertise)?;
        }
        Ok(ServeOptions {
            demo: false,
            auth: Arc::new(auth),
            tls,
            memory_limit_bytes: (config.server.query_memory_limit_mb as usize) << 20,
            query_timeout: std::time::Duration::from_secs(config.server.query_timeout_secs),
            settings: config.build.settings(),
            schedules,
            retry: RetryPolicy::default(),
            retention,
            alerts: config.alerts.clone(),
            cache: config
                .cache
                .settings()
                .map_err(|e| Error::InvalidRequest(e.to_string()))?,
            limits: config.ingest,
            clock,
            telemetry_listen: config.telemetry.listen.clone(),
            endpoints: config.cluster.endpoints.clone(),
            advertise: config.cluster.advertise.clone(),
            push: config.server.push_limits(),
        })
    }

    /// The Flight location this server is reached at once it listens on `local`.
    pub fn location(&self, local: std::net::SocketAddr) -> String {
        if !self.advertise.is_empty() {
            return self.advertise.clone();
        }
        let scheme = if self.tls.is_some() {
            "grpc+tls"
        } else {
            "grpc+tcp"
        };
        format!("{scheme}://{local}")
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
    let address = listener
        .local_addr()
        .map(|a| options.location(a))
        .unwrap_or_default();
    let history = History::open(writer.storage().pool()).await?;
    let reports = Reports::open(writer.storage().pool()).await?;
    // The cache must see every commit: it observes the writer before any job can run.
    let reads = Reads::open(
        writer.storage().clone(),
        Arc::clone(&options.clock),
        options.cache.clone(),
        Some(Popular::open(writer.storage().pool()).await?),
    )
    .await?;
    let cache = reads.cache().clone();
    writer.observe(Arc::new(cache.clone()));
    tasks.spawn(keep_warm(cache.clone(), cancel.clone()));
    if options.cache.trades_poll_ms > 0 {
        tasks.spawn(crate::candles::cache::follow::follow(
            cache.clone(),
            std::time::Duration::from_millis(options.cache.trades_poll_ms),
            writer.clone(),
            cancel.clone(),
        ));
    }
    // Alerts stop after the jobs do (see the end of `serve`).
    let alerts_stop = CancellationToken::new();
    let _alerts_stop_on_exit = alerts_stop.clone().drop_guard();
    let (alerts, delivery) = Alerts::start(&options.alerts, alerts_stop.clone());
    if let Some(delivery) = delivery {
        tasks.spawn(delivery);
    }
    telemetry::preset_metrics();
    let jobs = Arc::new(BuilderJobs {
        writer: writer.clone(),
        settings: options.settings,
        retention: options.retention,
        reports: reports.clone(),
        alerts: alerts.clone(),
    });
    let (scheduler, handle) = Scheduler::new(
        Arc::clone(&jobs) as Arc<dyn crate::jobs::JobRunner>,
        Arc::clone(&options.clock),
        options.schedules,
        options.retry,
        Arc::new(history.clone()),
    );
    let scheduler_alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (health, health_service) = tonic_health::server::health_reporter();
    let scheduling = tokio::spawn(health::watch_scheduler(
        scheduler.with_alerts(alerts).run(cancel.clone()),
        health.clone(),
        Arc::clone(&scheduler_alive),
        cancel.clone(),
    ));
    if options.demo && writer.other_builder().await.is_some() {
        tracing::warn!("--demo: this server is a read replica; the builder feeds the demo");
    } else if options.demo && !writer.storage().owns(TableKind::Trades) {
        tracing::warn!("--demo feeds market.trades, but trades come from [source]: no demo feed");
    } else if options.demo {
        tasks.spawn(demo::feed(
            writer.clone(),
            Arc::clone(&options.clock),
            handle.clone(),
            cancel.clone(),
        ));
    }
    let members = cluster::Members::open(writer.storage()).await?;
    if let Some(listener) = telemetry::bind(&options.telemetry_listen)
        .await
        .map_err(|e| telemetry_bind_error(&options.telemetry_listen, e))?
    {
        tracing::info!(addr = ?listener.local_addr().ok(), "metrics on /metrics, health on /healthz and /readyz");
        crate::metrics::metrics()
            .up_since
            .set(options.clock.now_us() / 1_000_000);
        tasks.spawn(telemetry::serve(
            listener,
            status::Pages {
                probe: telemetry::Probe {
                    storage: writer.storage().clone(),
                    cache: cache.clone(),
                    clock: Arc::clone(&options.clock),
                    scheduler_alive,
                },
                auth: Arc::clone(&options.auth),
                scheduler: handle.clone(),
                history: history.clone(),
                reports: reports.clone(),
                members: members.clone(),
            },
            cancel.clone(),
        ));
    }
    tasks.close();

    let beating = tokio::spawn(cluster::heartbeat(
        members.clone(),
        address,
        writer.clone(),
        cache.clone(),
        Arc::clone(&options.clock),
        cancel.clone(),
    ));
    let engine = QueryEngine::new(
        writer.storage().clone(),
        handle.clone(),
        history.clone(),
        reports,
        reads,
        members,
        QueryLimits {
            memory_bytes: options.memory_limit_bytes,
            timeout: options.query_timeout,
        },
    )?;
    let flight = FlightServiceServer::new(CheckedCommands(
        OhlcvFlightSql::new(
            engine,
            writer.clone(),
            Arc::clone(&options.auth),
            Arc::clone(&options.clock),
            options.limits,
            crate::push::Hub::new(cache.clone(), options.push, cancel.clone()),
        )
        .with_locations(options.endpoints.clone()),
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES);
    let admin = AdminServiceServer::new(AdminApi::new(
        jobs,
        handle,
        history,
        cache,
        Arc::clone(&options.auth),
    ));
    health.set_serving::<health::FlightService>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;

    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = &options.tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(TlsIdentity::from_pem(cert, key)))
            .map_err(|e| Error::InvalidRequest(format!("TLS configuration: {e}")))?;
    }
    let stop = cancel.clone();
    let served = builder
        .layer(telemetry::RequestLayer)
        .layer(crate::auth::AuthLayer::new(options.auth))
        .add_service(health_service)
        .add_service(flight)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            // Responses are several small writes: without NODELAY, Nagle holds the later ones
            // for the client's delayed ACK (~40 ms per query).
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                shutdown.await;
                tracing::info!("shutting down: no new requests, finishing open streams");
                health.set_not_serving::<health::FlightService>().await;
                stop.cancel();
            },
        )
        .await;
    // Shutdown order: the queue stops taking jobs and the running one gets its grace; then
    // the alerts it raised are delivered; then everything else stops.
    cancel.cancel();
    let _ = scheduling.await;
    alerts_stop.cancel();
    tasks.wait().await;
    let _ = beating.await;
    served.map_err(|e| Error::Internal(format!("transport: {e}")))
}

/// Warms the cache with the series queried most before, then remembers what is queried now
/// (every few minutes and on shutdown), so the next start warms the right ones.
async fn keep_warm(cache: BarCache, cancel: CancellationToken) {
    match cache.warm().await {
        Ok(n) if n > 0 => tracing::info!(series = n, "cache warmed"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "warming the cache failed"),
    }
    let mut every = tokio::time::interval(std::time::Duration::from_secs(300));
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = cancel.cancelled() => break,
        }
        if let Err(e) = cache.remember().await {
            tracing::warn!(error = %e, "saving the most-queried series failed");
        }
    }
    if let Err(e) = cache.remember().await {
        tracing::warn!(error = %e, "saving the most-queried series failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobKind;

    #[test]
    fn config_schedules_validation_compaction_and_retention() {
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        let jobs = |config: &Config| -> Vec<(JobKind, i64)> {
            ServeOptions::from_config(config, Arc::clone(&clock))
                .unwrap()
                .schedules
                .iter()
                .filter(|s| !matches!(s.job, JobKind::Build(_)))
                .map(|s| (s.job, s.every_us / 60_000_000))
                .collect()
        };
        let defaults = jobs(&Config::default());
        assert!(defaults.contains(&(JobKind::Retention, 1440)));
        assert!(defaults.contains(&(JobKind::Validate, 60)));
        for kind in TableKind::all() {
            assert!(
                defaults.contains(&(JobKind::Compact(kind), 1440)),
                "{kind:?}"
            );
        }
        let mut config = Config::default();
        config.quality.validate_every_mins = 0;
        config.quality.compact_every_mins = 0;
        assert_eq!(jobs(&config), [(JobKind::Retention, 1440)]);
    }

    #[test]
    fn cluster_locations_are_checked_and_advertise_names_this_server() {
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        let local: std::net::SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let mut config = Config::default();
        let options = ServeOptions::from_config(&config, Arc::clone(&clock)).unwrap();
        assert_eq!(options.location(local), "grpc+tcp://0.0.0.0:50051");
        config.cluster.advertise = "grpc+tcp://ohlcv-1.internal:50051".into();
        config.cluster.endpoints = vec!["grpc+tls://[::1]:443".into()];
        let options = ServeOptions::from_config(&config, Arc::clone(&clock)).unwrap();
        assert_eq!(options.location(local), "grpc+tcp://ohlcv-1.internal:50051");
        for bad in [
            "ohlcv-1:50051",
            "grpc+tcp://ohlcv-1",
            "http://a:1",
            "grpc+tcp://:1",
        ] {
            config.cluster.advertise = bad.into();
            let Err(err) = ServeOptions::from_config(&config, Arc::clone(&clock)) else {
                panic!("{bad} was taken");
            };
            assert!(
                err.to_string().contains("[cluster] advertise"),
                "{bad}: {err}"
            );
        }
    }
}
