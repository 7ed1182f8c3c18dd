//! Alerts: a job that failed after its retries, or a validation that found violations, is
//! logged at error level, counted, and POSTed as JSON to the configured webhook.
//!
//! Raising never waits: alerts go through a bounded queue to one delivery task that retries
//! with doubling waits. A dead or slow webhook costs queue space, never a job's time; when the
//! queue is full the alert is still logged and counted, and the drop is counted too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// `[alerts]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Where alerts are POSTed as JSON; unset means alerts are only logged and counted.
    pub webhook_url: Option<String>,
    /// Further attempts after a failed delivery, with doubling waits from one second.
    pub webhook_retries: u32,
    pub webhook_timeout_secs: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_url: None,
            webhook_retries: 3,
            webhook_timeout_secs: 5,
        }
    }
}

/// Alerts waiting for delivery at most.
const QUEUE: usize = 256;

/// What the webhook receives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// `job_failed` or `validation_failed`.
    pub kind: String,
    /// When it was raised, RFC 3339 UTC.
    pub at: String,
    /// One line for humans.
    pub summary: String,
    /// The failed run or the failing checks.
    pub details: serde_json::Value,
}

impl Alert {
    pub fn new(kind: &str, at_us: i64, summary: String, details: serde_json::Value) -> Alert {
        let at = chrono::DateTime::from_timestamp_micros(at_us)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        Alert {
            kind: kind.to_string(),
            at,
            summary,
            details,
        }
    }
}

/// Counters of what happened to alerts since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertCounts {
    pub raised: u64,
    pub delivered: u64,
    /// Given up after every retry.
    pub failed: u64,
    /// Not queued because the queue was full.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    raised: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// Where alerts are raised; cheap to clone.
#[derive(Clone, Default)]
pub struct Alerts {
    queue: Option<mpsc::Sender<Alert>>,
    counters: Arc<Counters>,
}

impl Alerts {
    /// Alerts that are only logged and counted.
    pub fn log_only() -> Alerts {
        Alerts::default()
    }

    /// Alerts delivered to `config.webhook_url` (if set) by a task that runs until `cancel`,
    /// then delivers what is still queued (once each, no retries) and ends. Shutdown cancels
    /// it after the jobs stopped, so the alert of a job that fails in its shutdown grace is
    /// still sent.
    pub fn start(
        config: &AlertsConfig,
        cancel: CancellationToken,
    ) -> (Alerts, Option<impl std::future::Future<Output = ()>>) {
        let counters = Arc::new(Counters::default());
        let Some(url) = config.webhook_url.clone() else {
            return (
                Alerts {
                    queue: None,
                    counters,
                },
                None,
            );
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let delivery = Delivery {
            url,
            retries: config.webhook_retries,
            timeout: Duration::from_secs(config.webhook_timeout_secs.max(1)),
            counters: Arc::clone(&counters),
        };
        let alerts = Alerts {
            queue: Some(tx),
            counters,
        };
        (alerts, Some(delivery.run(rx, cancel)))
    }

    pub fn raise(&self, alert: Alert) {
        self.counters.raised.fetch_add(1, Ordering::Relaxed);
        tracing::error!(kind = %alert.kind, details = %alert.details, "alert: {}", alert.summary);
        if let Some(queue) = &self.queue {
            if queue.try_send(alert).is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!("alert queue full: webhook delivery dropped");
            }
        }
    }

    pub fn counts(&self) -> AlertCounts {
        let c = &self.counters;
        AlertCounts {
            raised: c.raised.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Between webhook attempts.
const WEBHOOK_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// How long delivery may go on at shutdown, for what is still queued.
const FLUSH: Duration = Duration::from_secs(5);

struct Delivery {
    url: String,
    retries: u32,
    timeout: Duration,
    counters: Arc<Counters>,
}

impl Delivery {
    async fn run(self, mut rx: mpsc::Receiver<Alert>, cancel: CancellationToken) {
        let client = match reqwest::Client::builder().timeout(self.timeout).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook client; alerts are only logged");
                return;
            }
        };
        loop {
            let alert = tokio::select! {
                _ = cancel.cancelled() => break,
                a = rx.recv() => match a { Some(a) => a, None => return },
            };
            let delivering = self.deliver(&client, &alert, self.retries);
            tokio::pin!(delivering);
            tokio::select! {
                _ = &mut delivering => {}
                _ = cancel.cancelled() => {
                    // Stopping: the delivery under way may still finish, within the flush time.
                    if tokio::time::timeout(FLUSH, &mut delivering).await.is_err() {
                        tracing::error!(kind = %alert.kind, "alert delivery unfinished at shutdown");
                    }
                    break;
                }
            }
        }
        rx.close();
        let flush = async {
            while let Ok(alert) = rx.try_recv() {
                self.deliver(&client, &alert, 0).await;
            }
        };
        if tokio::time::timeout(FLUSH, flush).await.is_err() {
            tracing::error!("alerts still queued at shutdown were not all delivered");
        }
    }

    async fn deliver(&self, client: &reqwest::Client, alert: &Alert, retries: u32) {
        for attempt in 0..=retries {
            let outcome = client.post(&self.url).json(alert).send().await;
            match outcome.map(|r| r.error_for_status()) {
                Ok(Ok(_)) => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(Err(e)) | Err(e) => {
                    tracing::warn!(url = %self.url, attempt, error = %e, "webhook delivery failed");
                }
            }
            if attempt < retries {
                tokio::time::sleep(WEBHOOK_BACKOFF.delay(attempt + 1)).await;
            }
        }
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(url = %self.url, kind = %alert.kind, "webhook gave up after retries");
    }
}
