//! The subscriptions of one server: topics by series and timeframe, each followed by one task
//! that wakes on the cache's changes; the limits; and the metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::subscriber::{pump, Ended, Sink, Subscription};
use super::topic::{Topic, TopicKey};
use super::{Error, Result, Spec};
use crate::candles::cache::BarCache;

/// What subscriptions are held to (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct PushLimits {
    /// Subscriptions open at once on this server.
    pub max_subscriptions: usize,
    /// Of those, by one user.
    pub max_per_user: usize,
    /// Latest windows each topic tracks: the most a first message holds per series, and
    /// how far back a revision is pushed.
    pub track_windows: usize,
    /// A subscriber that takes nothing for this long is dropped.
    pub stall_timeout: Duration,
}

impl Default for PushLimits {
    fn default() -> Self {
        PushLimits {
            max_subscriptions: 10_000,
            max_per_user: 1_000,
            track_windows: 1_000,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

/// Cheap handle.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    cache: BarCache,
    limits: PushLimits,
    /// Held while a topic is created, joined or left, so none is left while joined.
    topics: tokio::sync::Mutex<HashMap<TopicKey, Arc<Topic>>>,
    users: Mutex<HashMap<String, usize>>,
    open: AtomicUsize,
    stop: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

/// A subscription's place in the limits, given back when its task ends.
struct Seat {
    hub: Hub,
    user: String,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let inner = &self.hub.inner;
        inner.open.fetch_sub(1, Ordering::AcqRel);
        let mut users = inner.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = users.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.user);
            }
        }
        crate::metrics::metrics().subscribers.dec();
    }
}

impl Hub {
    /// Subscriptions over `cache`; `stop` ends them all (server shutdown).
    pub fn new(cache: BarCache, limits: PushLimits, stop: CancellationToken) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                cache,
                limits,
                topics: tokio::sync::Mutex::default(),
                users: Mutex::default(),
                open: AtomicUsize::new(0),
                stop,
                tasks: tokio_util::task::TaskTracker::new(),
            }),
        }
    }

    pub fn limits(&self) -> PushLimits {
        self.inner.limits
    }

    /// Subscriptions open now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    fn seat(&self, user: &str) -> Result<Seat> {
        let limits = self.inner.limits;
        let mut users = self.inner.users.lock().unwrap_or_else(|p| p.into_inner());
        let mine = users.get(user).copied().unwrap_or(0);
        if mine >= limits.max_per_user {
            return Err(Error::Limit(format!(
                "user '{user}' has {mine} subscriptions open, the most one user may \
                 ([server] max_subscriptions_per_user)"
            )));
        }
        let open = self.inner.open.fetch_add(1, Ordering::AcqRel);
        if open >= limits.max_subscriptions {
            self.inner.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Limit(format!(
                "{open} subscriptions are open, the most this server takes ([server] \
                 max_subscriptions)"
            )));
        }
        *users.entry(user.to_string()).or_default() += 1;
        crate::metrics::metrics().subscribers.inc();
        Ok(Seat {
            hub: self.clone(),
            user: user.to_string(),
        })
    }

    /// Subscribes `user` to `spec`: the stream's first batch is the candles as they stand,
    /// then every change.
    pub async fn subscribe(&self, spec: &Spec, user: &str) -> Result<Subscription> {
        let windows = spec.windows()?;
        let limits = self.inner.limits;
        if spec.last > limits.track_windows {
            return Err(Error::Input(format!(
                "last => {} exceeds the {} windows a subscription tracks ([server] \
                 subscription_windows)",
                spec.last, limits.track_windows
            )));
        }
        let seat = self.seat(user)?;
        let sink = Arc::new(Sink::default());
        let mut joined = Vec::with_capacity(spec.series.len());
        for (exchange, symbol) in &spec.series {
            let key = TopicKey {
                series: Arc::new((exchange.clone(), symbol.clone())),
                timeframe: spec.timeframe.clone(),
                tz: spec.tz.clone(),
            };
            let topic = match self.join(key, windows, &sink, spec).await {
                Ok(topic) => topic,
                Err(e) => {
                    self.leave(&joined, &sink).await;
                    return Err(e);
                }
            };
            joined.push(topic);
        }
        let (tx, rx) = mpsc::channel(1);
        let ended = Arc::new(Ended::default());
        let hub = self.clone();
        let stall = limits.stall_timeout;
        let stop = self.inner.stop.clone();
        let done = Arc::clone(&ended);
        self.inner.tasks.spawn(async move {
            pump(Arc::clone(&sink), tx, stall, stop, done).await;
            hub.leave(&joined, &sink).await;
            drop(seat);
        });
        Ok(Subscription::new(rx, ended))
    }

    /// Joins `sink` to the topic of `key`, made (and its follower started) if new.
    async fn join(
        &self,
        key: TopicKey,
        windows: crate::candles::Windows,
        sink: &Arc<Sink>,
        spec: &Spec,
    ) -> Result<Arc<Topic>> {
        let mut topics = self.inner.topics.lock().await;
        let topic = match topics.get(&key) {
            Some(topic) => Arc::clone(topic),
            None => {
                let topic = Arc::new(Topic::new(
                    key.clone(),
                    windows,
                    self.inner.limits.track_windows,
                ));
                topic.refresh(&self.inner.cache).await?;
                topics.insert(key, Arc::clone(&topic));
                self.follow(Arc::clone(&topic));
                topic
            }
        };
        topic.attach(Arc::clone(sink), spec.last, spec.since);
        Ok(topic)
    }

    async fn leave(&self, topics: &[Arc<Topic>], sink: &Arc<Sink>) {
        let mut map = self.inner.topics.lock().await;
        for topic in topics {
            if topic.detach(sink) {
                map.remove(&topic.key);
            }
        }
    }

    /// The topic's follower: refreshes it whenever its series changed in the cache, until
    /// it has no subscriber or the server stops.
    fn follow(&self, topic: Arc<Topic>) {
        let cache = self.inner.cache.clone();
        let mut changes = cache.changes();
        let stop = self.inner.stop.clone();
        self.inner.tasks.spawn(async move {
            loop {
                if topic.idle() {
                    return;
                }
                // A change between the topic's first refresh and this task is caught here:
                // generations are compared, not notifications counted.
                if topic.stale(&cache) {
                    if let Err(e) = topic.refresh(&cache).await {
                        // The next change tries again; the subscribers keep what they have.
                        tracing::warn!(
                            exchange = %topic.key.series.0,
                            symbol = %topic.key.series.1,
                            timeframe = %topic.key.timeframe,
                            error = %e,
                            "live candles not refreshed"
                        );
                    }
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = stop.cancelled() => return,
                }
            }
        });
    }

    /// Waits for every subscription and follower task to end (after `stop`).
    pub async fn stopped(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}
