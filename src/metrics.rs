//! Prometheus metrics of the process, through the `prometheus` crate: one registry, filled by
//! every layer (jobs, commits, queries, ingest) and rendered by the telemetry endpoint
//! (`ops/telemetry.rs`), which also sets the gauges computed at scrape time (lags, cache).
//!
//! Names follow Prometheus conventions: `ohlcv_` prefix, `_total` counters, `_seconds`
//! durations. Labels have small, closed value sets (job, timeframe, outcome, kind, gRPC code).

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub job_runs: IntCounterVec,
    pub job_duration: HistogramVec,
    pub trades_read: IntCounterVec,
    pub bars_written: IntCounterVec,
    pub late_revisions: IntCounterVec,
    pub bars_deleted: IntCounterVec,
    pub skipped_rows: IntCounterVec,
    pub commits: IntCounterVec,
    pub queries: IntCounterVec,
    pub statements: IntCounterVec,
    pub query_duration: HistogramVec,
    pub ingest_rows: IntCounter,
    pub ingest_bytes: IntCounter,
    pub validation_violations: IntGaugeVec,
    pub retention_partitions: IntCounterVec,
    pub build_lag: GaugeVec,
    pub source_lag: GaugeVec,
    pub cache_entries: IntGauge,
    pub cache_bytes: IntGauge,
    pub cache_events: IntCounterVec,
    pub up_since: IntGauge,
    pub build_chunks_done: IntGauge,
    pub build_chunks_total: IntGauge,
    pub build_trades_per_sec: prometheus::Gauge,
    pub build_eta: prometheus::Gauge,
    pub subscribers: IntGauge,
    pub subscription_updates: IntCounterVec,
    pub subscribers_dropped: IntCounterVec,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    start: f64,
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help)
        .buckets(exponential_buckets(start, 2.0, 20).expect("valid buckets"));
    let h = HistogramVec::new(opts, labels).expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector");
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = prometheus::Gauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let int_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let violations = IntGaugeVec::new(
            Opts::new(
                "ohlcv_validation_violations",
                "Violations found by the last validation of each timeframe and check",
            ),
            &["timeframe", "check"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(violations.clone()))
            .expect("unique metric");
        Metrics {
            job_runs: counter(
                &registry,
                "ohlcv_job_runs_total",
                "Job attempts by job, timeframe and outcome (succeeded, failed, timed_out, cancelled)",
                // Not `job`: Prometheus owns that label (the scrape job).
                &["job_name", "timeframe", "outcome"],
            ),
            job_duration: histogram(
                &registry,
                "ohlcv_job_duration_seconds",
                "Duration of job attempts",
                &["job_name", "timeframe"],
                0.005,
            ),
            trades_read: counter(
                &registry,
                "ohlcv_trades_read_total",
                "Source trades read by builds",
                &["timeframe"],
            ),
            bars_written: counter(
                &registry,
                "ohlcv_bars_written_total",
                "Bars written (new and revised) by builds",
                &["timeframe"],
            ),
            late_revisions: counter(
                &registry,
                "ohlcv_late_revisions_total",
                "Bars revised because trades arrived after the grace period",
                &["timeframe"],
            ),
            bars_deleted: counter(
                &registry,
                "ohlcv_bars_deleted_total",
                "Bars deleted because their window lost every trade",
                &["timeframe"],
            ),
            skipped_rows: counter(
                &registry,
                "ohlcv_source_rows_skipped_total",
                "Source rows the [source] mapping could not read",
                &["timeframe"],
            ),
            commits: counter(
                &registry,
                "ohlcv_commits_total",
                "Catalog commits by table and outcome (landed, failed, unknown, lost, refused)",
                &["table", "outcome"],
            ),
            queries: counter(
                &registry,
                "ohlcv_requests_total",
                "gRPC requests by kind (query, metadata, ingest, handshake, admin, health) and code",
                &["kind", "code"],
            ),
            statements: counter(
                &registry,
                "ohlcv_statements_total",
                "SQL statements by how they were answered: candle_read (from the cache, no plan; \
                 repeats of a statement seen before count too) or plan (DataFusion)",
                &["path"],
            ),
            query_duration: histogram(
                &registry,
                "ohlcv_request_duration_seconds",
                "Time to the response headers of gRPC requests, by kind",
                &["kind"],
                0.0001,
            ),
            ingest_rows: int_counter("ohlcv_ingest_rows_total", "Trades committed by ingest"),
            ingest_bytes: int_counter(
                "ohlcv_ingest_bytes_total",
                "Arrow bytes of trades committed by ingest",
            ),
            validation_violations: violations,
            retention_partitions: counter(
                &registry,
                "ohlcv_retention_partitions_dropped_total",
                "Partitions dropped by retention",
                &["table"],
            ),
            build_lag: gauge_vec(
                "ohlcv_build_lag_seconds",
                "Now minus the end of the newest persisted window (the build watermark)",
                &["timeframe"],
            ),
            source_lag: gauge_vec(
                "ohlcv_source_lag_seconds",
                "Now minus the newest trade seen in the trades table",
                &["table"],
            ),
            cache_entries: int_gauge("ohlcv_cache_entries", "Series held in the bar cache"),
            cache_bytes: int_gauge("ohlcv_cache_bytes", "Bytes held in the bar cache"),
            cache_events: counter(
                &registry,
                "ohlcv_cache_events_total",
                "Bar cache lookups and evictions (hit, miss, table_read, eviction)",
                &["event"],
            ),
            up_since: int_gauge(
                "ohlcv_start_time_seconds",
                "Unix time the server started",
            ),
            build_chunks_done: int_gauge(
                "ohlcv_build_chunks_done",
                "Chunks committed by the running chunked build (first attach, backfill); 0 when none runs",
            ),
            build_chunks_total: int_gauge(
                "ohlcv_build_chunks_total",
                "Chunks the running chunked build planned; 0 when none runs",
            ),
            build_trades_per_sec: gauge(
                "ohlcv_build_trades_per_second",
                "Trades read per second by the running chunked build",
            ),
            build_eta: gauge(
                "ohlcv_build_eta_seconds",
                "Seconds the running chunked build needs to finish at its rate so far",
            ),
            subscribers: int_gauge(
                "ohlcv_subscribers",
                "Live candle subscriptions open (live_candles statements and DoExchange)",
            ),
            subscription_updates: counter(
                &registry,
                "ohlcv_subscription_updates_total",
                "Candle updates to subscribers: sent, or conflated (replaced by a newer state \
                 of the same candle before it was sent)",
                &["outcome"],
            ),
            subscribers_dropped: counter(
                &registry,
                "ohlcv_subscribers_dropped_total",
                "Subscriptions the server ended, by reason (stalled: the client read nothing \
                 for [server] subscriber_timeout_ms)",
                &["reason"],
            ),
            registry,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Raises a counter to `total`, a running total kept elsewhere (cache counters).
pub fn raise_to(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}
