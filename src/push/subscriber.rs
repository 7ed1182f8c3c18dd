//! One subscriber: a queue of the latest state of each candle it has not been sent yet
//! (conflated: a candle changed twice before it was sent is sent once, as it is now), and a
//! task that sends the queue as one batch whenever the client has taken the last one. The
//! queue holds at most one entry per tracked candle of its series, so a slow reader costs
//! bounded memory; one that takes nothing for `[server] subscriber_timeout_ms` is dropped.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::RecordBatch;
use futures::Stream;
use tokio::sync::{mpsc, Notify};

use super::candle::{self, Candle, Change, Update};
use super::{Error, Result};

type Key = (Arc<(String, String)>, i64);

/// Where topics leave changes for one subscriber.
#[derive(Default)]
pub struct Sink {
    pending: Mutex<BTreeMap<Key, (Candle, Change)>>,
    wake: Notify,
}

impl Sink {
    /// Queues `changes` of `series`, replacing what is queued for the same candle.
    pub fn offer(&self, series: &Arc<(String, String)>, changes: &[(i64, Candle, Change)]) {
        let mut conflated = 0;
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (window, candle, change) in changes {
                let key = (Arc::clone(series), *window);
                let change = match pending.remove(&key) {
                    Some((_, earlier)) => {
                        conflated += 1;
                        earlier.then(*change)
                    }
                    None => *change,
                };
                pending.insert(key, (candle.clone(), change));
            }
        }
        if conflated > 0 {
            crate::metrics::metrics()
                .subscription_updates
                .with_label_values(&["conflated"])
                .inc_by(conflated);
        }
        self.wake.notify_one();
    }

    /// Queues the first message's candles.
    pub fn start(&self, series: &Arc<(String, String)>, candles: Vec<(i64, Candle)>) {
        let changes: Vec<_> = candles
            .into_iter()
            .map(|(w, c)| (w, c, Change::Snapshot))
            .collect();
        self.offer(series, &changes);
    }

    fn take(&self) -> Option<Result<RecordBatch>> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if pending.is_empty() {
            return None;
        }
        let updates: Vec<Update<'_>> = pending
            .iter()
            .map(|((series, window), (candle, change))| Update {
                series,
                window_start: *window,
                candle,
                change: *change,
            })
            .collect();
        Some(candle::batch(&updates))
    }
}

/// Sends `sink`'s queue into `tx` until the client goes, stalls or the server stops. The
/// first batch is the candles as they stand, sent at once; with none, the client has only the
/// stream's schema until the first change (Flight encoders send no empty batch).
pub async fn pump(
    sink: Arc<Sink>,
    tx: mpsc::Sender<Result<RecordBatch>>,
    stall: Duration,
    stop: tokio_util::sync::CancellationToken,
    ended: Arc<Ended>,
) {
    let metrics = crate::metrics::metrics();
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = sink.wake.notified() => {}
                _ = tx.closed() => return,
                _ = stop.cancelled() => {
                    ended.set("the server is shutting down");
                    return;
                }
            }
        }
        // Room first, then the queue: while the client is slow, changes keep conflating in
        // the queue instead of waiting in a batch already taken.
        let permit = match tokio::time::timeout(stall, tx.reserve()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return,
            Err(_) => {
                metrics
                    .subscribers_dropped
                    .with_label_values(&["stalled"])
                    .inc();
                ended.set(&format!(
                    "the subscriber read nothing for {} ms ([server] subscriber_timeout_ms)",
                    stall.as_millis()
                ));
                return;
            }
        };
        first = false;
        let Some(batch) = sink.take() else {
            continue;
        };
        let rows = batch.as_ref().map_or(0, |b| b.num_rows() as u64);
        permit.send(batch);
        metrics
            .subscription_updates
            .with_label_values(&["sent"])
            .inc_by(rows);
    }
}

/// Why the server ended a subscription, told to the client after its last batch.
#[derive(Default)]
pub struct Ended {
    set: AtomicBool,
    why: Mutex<String>,
}

impl Ended {
    fn set(&self, why: &str) {
        *self.why.lock().unwrap_or_else(|p| p.into_inner()) = why.to_string();
        self.set.store(true, Ordering::Release);
    }
}

/// The client's side: the first message (the candles as they stand), then every change,
/// until the client drops it. Ends with an error saying why when the server ended it; resume
/// with `since` at the window of the last candle seen.
pub struct Subscription {
    rx: mpsc::Receiver<Result<RecordBatch>>,
    ended: Arc<Ended>,
    told: bool,
}

impl Subscription {
    pub fn new(rx: mpsc::Receiver<Result<RecordBatch>>, ended: Arc<Ended>) -> Subscription {
        Subscription {
            rx,
            ended,
            told: false,
        }
    }
}

impl Stream for Subscription {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(None) if !self.told && self.ended.set.load(Ordering::Acquire) => {
                self.told = true;
                let why = self
                    .ended
                    .why
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                Poll::Ready(Some(Err(Error::Ended(format!(
                    "subscription ended: {why}; subscribe again with since => the window of \
                     the last candle received"
                )))))
            }
            other => other,
        }
    }
}
