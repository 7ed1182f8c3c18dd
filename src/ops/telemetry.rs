//! What operations tooling plugs into: `GET /metrics` (Prometheus text format), `GET /healthz`
//! (the process answers), `GET /readyz` (the catalog answers and the scheduler runs) and the
//! status page (`status.rs`) on `[telemetry] listen`, and the gRPC layer that counts and times every request, tags it with
//! a request id (returned as `x-request-id`) and traces it in a span.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics::{metrics, raise_to};
use crate::storage::TableKind;
use crate::timeframe::Timeframe;

pub use super::status::Probe;

/// Serves the telemetry endpoint (and the status page) on `listener` until `cancel` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pages: super::status::Pages,
    cancel: CancellationToken,
) {
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(pages.probe.clone())
        .merge(
            axum::Router::new()
                .route(
                    "/",
                    get(|| async { axum::response::Redirect::to("/status") }),
                )
                .route("/status", get(super::status::page))
                .with_state(pages),
        );
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { cancel.cancelled().await })
    .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the telemetry endpoint stopped");
    }
}

/// Binds `[telemetry] listen`; an empty address turns the endpoint off.
pub async fn bind(listen: &str) -> std::io::Result<Option<tokio::net::TcpListener>> {
    if listen.trim().is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = listen.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("[telemetry] listen = {listen:?}: {e}"),
        )
    })?;
    Ok(Some(tokio::net::TcpListener::bind(addr).await?))
}

async fn scrape(State(probe): State<Probe>) -> impl IntoResponse {
    let now_us = probe.clock.now_us();
    let m = metrics();
    // A lag that is not known yet (nothing built, no trade seen) is NaN, not absent: the
    // series exists from the start, and no comparison in a rule is true of it.
    for (tf, watermark) in probe.cache.watermarks() {
        m.build_lag
            .with_label_values(&[tf.as_str()])
            .set(watermark.map_or(f64::NAN, |end| (now_us - end) as f64 / 1e6));
    }
    m.source_lag
        .with_label_values(&[&probe.storage.identifier(TableKind::Trades).to_string()])
        .set(
            probe
                .cache
                .newest_trade()
                .map_or(f64::NAN, |newest| (now_us - newest) as f64 / 1e6),
        );
    let stats = probe.cache.stats();
    m.cache_entries.set(stats.entries as i64);
    m.cache_bytes.set(stats.bytes as i64);
    for (event, total) in
        CACHE_EVENTS
            .into_iter()
            .zip([stats.hits, stats.misses, stats.table_reads, stats.evictions])
    {
        raise_to(&m.cache_events.with_label_values(&[event]), total);
    }
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        m.render(),
    )
}

async fn ready(State(probe): State<Probe>) -> impl IntoResponse {
    if !probe.scheduler_alive.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "scheduler stopped\n".to_string(),
        );
    }
    let kind = TableKind::Bars(Timeframe::M1);
    match tokio::time::timeout(Duration::from_secs(5), probe.storage.table(kind)).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".to_string()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("catalog: {e}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "catalog: no answer within 5s\n".to_string(),
        ),
    }
}

/// Every kind of request the request metrics name (see `kind_of`).
const REQUEST_KINDS: [&str; 6] = [
    "query",
    "metadata",
    "ingest",
    "handshake",
    "admin",
    "health",
];

/// Creates every metric series whose labels are known before the first event, at zero, so a
/// fresh server exports every family the dashboards and alert rules name.
pub fn preset_metrics() {
    let m = metrics();
    for kind in REQUEST_KINDS {
        for code in 0..=16 {
            let code = format!("{:?}", tonic::Code::from_i32(code));
            m.queries.with_label_values(&[kind, &code]);
        }
        m.query_duration.with_label_values(&[kind]);
    }
    for path in ["candle_read", "plan"] {
        m.statements.with_label_values(&[path]);
    }
    for event in CACHE_EVENTS {
        m.cache_events.with_label_values(&[event]);
    }
    // The job series are created by `Scheduler::new`.
    crate::quality::preset_metrics();
    crate::storage::commit::preset_metrics();
}

/// The bar cache events `ohlcv_cache_events_total` counts.
const CACHE_EVENTS: [&str; 4] = ["hit", "miss", "table_read", "eviction"];

/// What kind of request a gRPC path is, for the request metrics.
fn kind_of(path: &str) -> &'static str {
    match path.rsplit('/').next().unwrap_or_default() {
        _ if path.starts_with("/ohlcv.admin.") => "admin",
        _ if path.starts_with("/grpc.health.") => "health",
        "Handshake" => "handshake",
        "DoPut" => "ingest",
        "GetFlightInfo" | "DoGet" | "PollFlightInfo" => "query",
        _ => "metadata",
    }
}

/// Counts, times and traces every gRPC request.
#[derive(Clone, Default)]
pub struct RequestLayer;

impl<S> tower::Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> RequestService<S> {
        RequestService { inner }
    }
}

#[derive(Clone)]
pub struct RequestService<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequestService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let kind = kind_of(&path);
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 64)
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let span = tracing::info_span!(
            "request",
            method = %path,
            request_id = %request_id,
            user = tracing::field::Empty,
            code = tracing::field::Empty
        );
        let started = Instant::now();
        // Called inside the span: the auth layer below records the user in it.
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let mut response = future.await?;
                // Errors answered at once carry their status in the headers; a stream that
                // fails later reports it in its trailers, which this layer does not wait for.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from_i32)
                    .unwrap_or(tonic::Code::Ok);
                let code = format!("{code:?}");
                tracing::Span::current().record("code", code.as_str());
                let m = metrics();
                m.queries.with_label_values(&[kind, &code]).inc();
                m.query_duration
                    .with_label_values(&[kind])
                    .observe(started.elapsed().as_secs_f64());
                if let Ok(value) = http::HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert("x-request-id", value);
                }
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "request answered"
                );
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_path() {
        assert_eq!(
            kind_of("/arrow.flight.protocol.FlightService/DoGet"),
            "query"
        );
        assert_eq!(
            kind_of("/arrow.flight.protocol.FlightService/DoPut"),
            "ingest"
        );
        assert_eq!(
            kind_of("/arrow.flight.protocol.FlightService/Handshake"),
            "handshake"
        );
        assert_eq!(
            kind_of("/arrow.flight.protocol.FlightService/GetSchema"),
            "metadata"
        );
        assert_eq!(kind_of("/ohlcv.admin.v1.AdminService/GetStatus"), "admin");
        assert_eq!(kind_of("/grpc.health.v1.Health/Check"), "health");
    }
}
