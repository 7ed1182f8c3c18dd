//! One series in one timeframe, shared by every subscriber of it: its candles are computed
//! once per change (not once per subscriber), compared with the last ones, and what changed is
//! offered to each subscriber's queue. A topic never waits for a subscriber.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::candle::{Candle, Change};
use super::subscriber::Sink;
use super::Result;
use crate::candles::cache::{BarCache, TableState};
use crate::candles::{Fill, Request, Windows};

/// Which candles a topic computes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicKey {
    pub series: Arc<(String, String)>,
    pub timeframe: String,
    pub tz: Option<String>,
}

pub struct Topic {
    pub key: TopicKey,
    windows: Windows,
    /// Windows kept and compared, the latest first; a revision of an older candle is not
    /// pushed (`candles()` answers it).
    track: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    candles: BTreeMap<i64, Candle>,
    tables: Option<[TableState; 5]>,
    generation: Option<u64>,
    sinks: Vec<Arc<Sink>>,
}

impl Topic {
    pub fn new(key: TopicKey, windows: Windows, track: usize) -> Topic {
        Topic {
            key,
            windows,
            track: track.max(1),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first window start tracked at `now`.
    fn track_start(&self, now: i64) -> i64 {
        let mut start = self.windows.window(now).0;
        if let Windows::Fixed { width, .. } = self.windows {
            return start.saturating_sub((self.track as i64 - 1).saturating_mul(width));
        }
        for _ in 1..self.track {
            start = self.windows.window(start - 1).0;
        }
        start
    }

    /// Whether the series changed since the last refresh.
    pub fn stale(&self, cache: &BarCache) -> bool {
        let (exchange, symbol) = &*self.key.series;
        self.state().generation != Some(cache.generation(exchange, symbol))
    }

    /// Computes the series' candles as `cache` holds them now and offers what changed to
    /// every subscriber. When only live bars can have changed (the tables are where they
    /// were), only the windows from the base table's frontier on are computed.
    pub async fn refresh(&self, cache: &BarCache) -> Result<()> {
        let (exchange, symbol) = &*self.key.series;
        // Taken before the view: a change after it is seen again by the next refresh.
        let generation = cache.generation(exchange, symbol);
        let view = cache.view(exchange, symbol);
        let now = cache.now_us();
        let track_start = self.track_start(now);
        // Trades a little ahead of the clock are candles too.
        let end = self.windows.window(now.saturating_add(86_400_000_000)).1;
        let tables = view.tables();
        let (before_tables, before_generation) = {
            let state = self.state();
            (state.tables, state.generation)
        };
        // With the tables where they were, only windows from the base table's frontier on
        // can have changed; and when only new trades changed the series, only those from
        // the earliest of them on.
        let start = match self.windows.base(track_start, end) {
            Ok(base) if before_tables == Some(tables) => {
                let frontier = crate::candles::assemble::frontier(&view, base);
                let added = before_generation
                    .and_then(|g| cache.added_since(exchange, symbol, g))
                    .unwrap_or(i64::MIN);
                let from = frontier.max(added);
                if from == i64::MIN {
                    track_start
                } else {
                    track_start.max(self.windows.window(from).0)
                }
            }
            _ => track_start,
        };
        let request = Request {
            exchange: exchange.clone(),
            symbol: symbol.clone(),
            windows: self.windows,
            start,
            end,
            fill: Fill::None,
            last: None,
            as_of: None,
        };
        let batch = crate::candles::candles_in(cache, &view, &request).await?;
        let fresh = super::candle::rows(&batch)?;

        let mut state = self.state();
        let mut changes: Vec<(i64, Candle, Change)> = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(fresh.len());
        for (window, candle) in fresh {
            seen.insert(window);
            if let Some(change) = Change::between(state.candles.get(&window), &candle) {
                changes.push((window, candle.clone(), change));
                state.candles.insert(window, candle);
            }
        }
        let gone: Vec<i64> = state
            .candles
            .range(start..)
            .map(|(w, _)| *w)
            .filter(|w| !seen.contains(w))
            .collect();
        for window in gone {
            if let Some(candle) = state.candles.remove(&window) {
                changes.push((window, candle, Change::Deleted));
            }
        }
        // Windows that slid out of the tracked range are forgotten.
        state.candles = state.candles.split_off(&track_start);
        state.tables = Some(tables);
        state.generation = Some(generation);
        if !changes.is_empty() {
            for sink in &state.sinks {
                sink.offer(&self.key.series, &changes);
            }
        }
        Ok(())
    }

    /// Adds a subscriber, queueing first the candles it starts from (the latest `last`, or
    /// every one from `since`), at once, so no change falls between them and its updates.
    pub fn attach(&self, sink: Arc<Sink>, last: usize, since: Option<i64>) {
        let mut state = self.state();
        let first: Vec<(i64, Candle)> = match since {
            Some(since) => state
                .candles
                .range(since..)
                .map(|(w, c)| (*w, c.clone()))
                .collect(),
            None => {
                let n = state.candles.len();
                state
                    .candles
                    .iter()
                    .skip(n.saturating_sub(last))
                    .map(|(w, c)| (*w, c.clone()))
                    .collect()
            }
        };
        sink.start(&self.key.series, first);
        state.sinks.push(sink);
    }

    /// Removes a subscriber; true when none is left.
    pub fn detach(&self, sink: &Arc<Sink>) -> bool {
        let mut state = self.state();
        state.sinks.retain(|s| !Arc::ptr_eq(s, sink));
        state.sinks.is_empty()
    }

    pub fn idle(&self) -> bool {
        self.state().sinks.is_empty()
    }
}
