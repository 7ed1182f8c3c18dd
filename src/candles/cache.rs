//! The hot candle cache: recent bars per `(timeframe, exchange, symbol)` as Arrow batches in a
//! moka cache (bounded by bytes, TinyLFU admission), and the trades not yet built, for live
//! bars.
//!
//! | module | owns |
//! |---|---|
//! | `entry` | one series' bars at one snapshot; applying a commit's rows to it |
//! | `live` | unbuilt trades per series |
//! | `follow` | the unbuilt trades other engines commit, found by polling the trades table |
//! | `stats` | counters, `system.cache_stats`, Prometheus text |
//! | `popular` | the most-queried series, remembered across restarts for warming |
//!
//! Consistency: the cache observes every commit of the server's writer (in commit order, with
//! the rows written) and moves each entry from the commit's parent snapshot to the new one. An
//! entry is used only when its snapshot is the one the query's [`View`] pinned, so a cached
//! answer always equals the table at that snapshot; anything else is read from the table at
//! exactly that snapshot.

mod as_of;
pub mod entry;
pub mod error;
pub mod follow;
pub mod live;
pub mod popular;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use moka::notification::RemovalCause;
use moka::sync::Cache;

use crate::build::state::{prop_i64, CUTOFF};
use crate::clock::Clock;
use crate::storage::files::{conform, partition_range};
use crate::storage::read::read_files;
use crate::storage::series::Series;
use crate::storage::{
    history, CommitObserver, Committed, Content, Listing, LiveFile, Storage, TableKind, TimeRange,
};
use crate::timeframe::{Timeframe, MINUTE_US};

pub use entry::Entry;
pub use error::{Error, Result};
pub use live::{LiveBars, LiveTrades};
pub use popular::Popular;
pub use stats::CacheStats;

const DAY_US: i64 = 1440 * MINUTE_US;
/// At most this many series have their queries counted (for warming).
const COUNTED_SERIES: usize = 100_000;

/// Cache settings (`[cache]` in the config file).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Off: every read goes to the table (live bars still come from memory).
    pub enabled: bool,
    pub max_bytes: u64,
    /// How far back each timeframe is kept hot, in microseconds; `None` keeps everything.
    pub horizons: BTreeMap<Timeframe, Option<i64>>,
    /// How many of the most-queried series are loaded at start.
    pub warm_series: usize,
    /// How often the trades table is checked for other engines' commits (ms; 0: never).
    pub trades_poll_ms: u64,
    /// Most windows one candle request with gap fill or time-zone windows may span: each costs
    /// memory and time before any is answered (100,000 candles are about 15 MB).
    pub max_windows: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_bytes: 512 << 20,
            horizons: BTreeMap::from([
                (Timeframe::M1, Some(2 * DAY_US)),
                (Timeframe::M5, Some(14 * DAY_US)),
                (Timeframe::M30, Some(90 * DAY_US)),
                (Timeframe::H1, Some(90 * DAY_US)),
                (Timeframe::D1, None),
            ]),
            warm_series: 100,
            trades_poll_ms: 1000,
            max_windows: 100_000,
        }
    }
}

impl CacheConfig {
    /// The part of `max_bytes` kept candle answers may hold (`server::answers`).
    pub fn answer_bytes(&self) -> u64 {
        self.max_bytes / 8
    }

    /// The part of `max_bytes` for bars.
    pub fn bar_bytes(&self) -> u64 {
        self.max_bytes - self.answer_bytes()
    }
}

/// One cached series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub timeframe: Timeframe,
    pub exchange: String,
    pub symbol: String,
}

impl Key {
    pub fn new(
        timeframe: Timeframe,
        exchange: impl Into<String>,
        symbol: impl Into<String>,
    ) -> Key {
        Key {
            timeframe,
            exchange: exchange.into(),
            symbol: symbol.into(),
        }
    }
}

/// Where a bar table stands: its snapshot and the first window it has not persisted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableState {
    pub snapshot: Option<i64>,
    pub cutoff: Option<i64>,
}

/// What one query sees: every bar table at one snapshot, and the series' unbuilt trades at
/// that moment. Taken at once, so the pieces agree with each other.
#[derive(Debug, Clone)]
pub struct View {
    tables: [TableState; 5],
    /// The series' live bars (1m and 5m past the tables' cutoffs), none without unbuilt
    /// trades.
    pub live_bars: Option<Arc<LiveBars>>,
    /// The series' generation: changes with every commit the cache observes that may change
    /// this series' bars or unbuilt trades, so two views of one series at one generation give
    /// the same answer (a commit of other series leaves kept answers valid).
    pub generation: u64,
    /// The past moment this view shows the tables at (`candles(..., as_of => t)`): stored
    /// bars only, no live ones.
    pub as_of: Option<i64>,
    /// Each table's snapshot at `as_of`, looked up when a read first needs that table: a
    /// request reads one or two of the five, and each look-up loads the table's metadata.
    past: Arc<[tokio::sync::OnceCell<Option<i64>>; 5]>,
}

impl View {
    pub fn table(&self, tf: Timeframe) -> TableState {
        self.tables[index(tf)]
    }

    /// Where every bar table stands in this view: two views with equal tables differ only
    /// in their live bars.
    pub fn tables(&self) -> [TableState; 5] {
        self.tables
    }
}

fn index(tf: Timeframe) -> usize {
    Timeframe::ALL
        .iter()
        .position(|t| *t == tf)
        .expect("stored")
}

struct State {
    tables: [TableState; 5],
    live: LiveTrades,
    /// The trades snapshot `live` holds; `None` until one was read or committed.
    trades_snapshot: Option<i64>,
    generations: Generations,
}

/// Which generation each series' data is at. Every change the cache observes takes the next
/// number; a change confined to known series (an append, an upsert of bars) stamps those
/// series, any other (partitions replaced, a reload) stamps all of them at once.
struct Generations {
    last: u64,
    /// The last change whose series are not known: every series is at least here.
    all: u64,
    /// Series stamped since `all`.
    series: HashMap<(String, String), u64>,
    /// `last`, for whoever waits for a change (live subscriptions).
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Generations {
    fn default() -> Self {
        Generations {
            last: 0,
            all: 0,
            series: HashMap::new(),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Generations {
    fn of(&self, exchange: &str, symbol: &str) -> u64 {
        let own = self
            .series
            .get(&(exchange.to_string(), symbol.to_string()))
            .copied()
            .unwrap_or(0);
        own.max(self.all)
    }

    fn touch_all(&mut self) {
        self.last += 1;
        self.all = self.last;
        self.series.clear();
        self.changed.send_replace(self.last);
    }

    fn touch<'k>(&mut self, series: impl IntoIterator<Item = &'k (String, String)>) {
        self.last += 1;
        for key in series {
            self.series.insert(key.clone(), self.last);
        }
        self.changed.send_replace(self.last);
    }
}

/// Cheap handle to the cache.
#[derive(Clone)]
pub struct BarCache {
    inner: Arc<Inner>,
}

struct Inner {
    config: CacheConfig,
    storage: Storage,
    clock: Arc<dyn Clock>,
    entries: Cache<Key, Arc<Entry>>,
    state: RwLock<State>,
    counters: Arc<stats::Counters>,
    queried: Mutex<HashMap<Key, u64>>,
    popular: Option<Popular>,
    /// When the bar tables were last found at the snapshots the cache holds (a read
    /// replica's follower); 0 before.
    synced_at: std::sync::atomic::AtomicI64,
}

impl BarCache {
    /// Reads where each table stands and the unbuilt trades. Register the result as the
    /// writer's observer before anything else commits.
    pub async fn open(
        storage: Storage,
        clock: Arc<dyn Clock>,
        config: CacheConfig,
        popular: Option<Popular>,
    ) -> Result<BarCache> {
        let mut tables = [TableState::default(); 5];
        for tf in Timeframe::ALL {
            let table = storage.table(TableKind::Bars(tf)).await?;
            tables[index(tf)] = TableState {
                snapshot: table.metadata().current_snapshot_id,
                cutoff: prop_i64(&table.metadata().properties, CUTOFF),
            };
        }
        let counters = Arc::new(stats::Counters::default());
        let evictions = Arc::clone(&counters);
        let entries = Cache::builder()
            .max_capacity(if config.enabled {
                config.bar_bytes()
            } else {
                0
            })
            .weigher(|_k: &Key, e: &Arc<Entry>| e.bytes().try_into().unwrap_or(u32::MAX))
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    stats::Counters::add(&evictions.evictions);
                }
            })
            .build();
        let cache = BarCache {
            inner: Arc::new(Inner {
                config,
                storage,
                clock,
                entries,
                state: RwLock::new(State {
                    tables,
                    live: LiveTrades::default(),
                    trades_snapshot: None,
                    generations: Generations::default(),
                }),
                counters,
                synced_at: std::sync::atomic::AtomicI64::new(0),
                queried: Mutex::new(HashMap::new()),
                popular,
            }),
        };
        let floor = cache.live_floor(&tables);
        cache.write().live.raise_floor(floor)?;
        // The unbuilt trades, and the snapshot they were read at. A trades table that cannot be
        // read now (a `[source]` dropped by its owner) must not keep the server from serving
        // the bars it has: the poller keeps trying.
        if let Err(e) = cache.follow_trades().await {
            tracing::warn!(error = %e, "the unbuilt trades could not be read; live bars follow once they can");
        }
        Ok(cache)
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    pub fn now_us(&self) -> i64 {
        self.inner.clock.now_us()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The tables and the series' unbuilt trades, as of now.
    pub fn view(&self, exchange: &str, symbol: &str) -> View {
        let state = self.read();
        View {
            tables: state.tables,
            live_bars: state.live.bars(exchange, symbol),
            generation: state.generations.of(exchange, symbol),
            as_of: None,
            past: Arc::default(),
        }
    }

    /// Wakes on every change of any series' generation (a commit observed, trades taken
    /// in): live subscriptions compare their series' generations then.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.read().generations.changed.subscribe()
    }

    /// The series' generation now (see [`View::generation`]).
    pub fn generation(&self, exchange: &str, symbol: &str) -> u64 {
        self.read().generations.of(exchange, symbol)
    }

    /// When only new trades changed the series since `generation` (no commit of another
    /// kind, no trades forgotten), the earliest trade time they brought: the series' candles
    /// before its window are as they were. `None` when that cannot be said.
    pub fn added_since(&self, exchange: &str, symbol: &str, generation: u64) -> Option<i64> {
        let state = self.read();
        if state.generations.all > generation {
            return None;
        }
        state.live.added_since(exchange, symbol, generation)
    }

    /// The snapshot `view` reads `tf` at: the cache's for a current view, else the one the
    /// table's history held at the view's moment.
    pub async fn snapshot_of(&self, view: &View, tf: Timeframe) -> Result<Option<i64>> {
        let Some(at) = view.as_of else {
            return Ok(view.table(tf).snapshot);
        };
        let resolve = || async {
            let kind = TableKind::Bars(tf);
            let table = self.inner.storage.table(kind).await?;
            Ok::<_, Error>(history::snapshot_at(table.metadata(), &kind.name(), at)?)
        };
        view.past[index(tf)].get_or_try_init(resolve).await.copied()
    }

    /// Oldest window start kept hot for `tf` (`i64::MIN`: everything).
    pub fn horizon_start(&self, tf: Timeframe) -> i64 {
        match self.inner.config.horizons.get(&tf).copied().flatten() {
            Some(h) => tf.window_start(self.now_us() - h),
            None => i64::MIN,
        }
    }

    /// The view a read of one series takes: now, or the tables as they were at `as_of`.
    pub async fn view_at(&self, exchange: &str, symbol: &str, as_of: Option<i64>) -> Result<View> {
        match as_of {
            Some(at) => Ok(self.view_as_of(at)),
            None => Ok(self.view(exchange, symbol)),
        }
    }

    /// Unbuilt trades are kept from the lower incremental cutoff, at most one 1m horizon back.
    fn live_floor(&self, tables: &[TableState; 5]) -> i64 {
        let built = [Timeframe::M1, Timeframe::M5]
            .map(|tf| tables[index(tf)].cutoff.unwrap_or(i64::MIN))
            .into_iter()
            .min()
            .unwrap_or(i64::MIN);
        built.max(self.horizon_start(Timeframe::M1))
    }

    /// Stored bars of one series with `window_start` in `range`, exactly as the table holds
    /// them at the view's snapshot: from the cache inside the hot horizon, else the table.
    pub async fn bars(
        &self,
        view: &View,
        tf: Timeframe,
        exchange: &str,
        symbol: &str,
        range: TimeRange,
    ) -> Result<RecordBatch> {
        let snapshot = self.snapshot_of(view, tf).await?;
        let key = Key::new(tf, exchange, symbol);
        self.count(&key);
        let from = self.horizon_start(tf);
        let cold = !self.inner.config.enabled || range.start.unwrap_or(i64::MIN) < from;
        if !cold {
            if let Some(entry) = self.inner.entries.get(&key) {
                if entry.snapshot == snapshot && entry.from <= from {
                    stats::Counters::add(&self.inner.counters.hits);
                    return Ok(entry.slice(range));
                }
            }
        }
        // Outside the hot horizon, or a past snapshot the cache does not hold: the rows in
        // range, read and not kept.
        if cold || view.as_of.is_some() {
            stats::Counters::add(&self.inner.counters.table_reads);
            let rows = self.read_series(&key, snapshot, range, None).await?;
            return Entry::new(snapshot, i64::MIN, &rows)
                .map(|e| e.rows)
                .map_err(Into::into);
        }
        stats::Counters::add(&self.inner.counters.misses);
        let rows = self
            .read_series(&key, snapshot, TimeRange::new(Some(from), None), None)
            .await?;
        let entry = Arc::new(Entry::new(snapshot, from, &rows)?);
        let answer = entry.slice(range);
        self.insert_if_current(key, entry);
        Ok(answer)
    }

    /// The latest `n` stored bars of one series in `range` (ascending), as [`Self::bars`] would
    /// hold them. The hot entry has every bar from the horizon on, so when it has `n` of them
    /// in range they are the latest `n` and the table is not read; else the table is.
    pub async fn latest_bars(
        &self,
        view: &View,
        tf: Timeframe,
        exchange: &str,
        symbol: &str,
        range: TimeRange,
        n: usize,
    ) -> Result<RecordBatch> {
        let from = self.horizon_start(tf);
        let tail = |rows: RecordBatch| {
            rows.slice(rows.num_rows().saturating_sub(n), rows.num_rows().min(n))
        };
        if self.inner.config.enabled && range.start.unwrap_or(i64::MIN) < from {
            let hot = TimeRange::new(Some(from), range.end);
            let rows = self.bars(view, tf, exchange, symbol, hot).await?;
            if rows.num_rows() >= n {
                return Ok(tail(rows));
            }
        }
        // Older than the horizon: the newest files first, until n rows are found.
        let key = Key::new(tf, exchange, symbol);
        stats::Counters::add(&self.inner.counters.table_reads);
        let snapshot = self.snapshot_of(view, tf).await?;
        let rows = self.read_series(&key, snapshot, range, Some(n)).await?;
        Ok(tail(Entry::new(snapshot, i64::MIN, &rows)?.rows))
    }

    /// Caches `entry` unless its table has moved on since it was read (the commit observed in
    /// between would not have reached it).
    fn insert_if_current(&self, key: Key, entry: Arc<Entry>) {
        let state = self.read();
        if state.tables[index(key.timeframe)].snapshot == entry.snapshot {
            self.inner.entries.insert(key, entry);
        }
    }

    /// A candle query about this series whose answer could be kept: `kept` when it was
    /// answered with it. A kept answer looks up no bars, so it is counted as a query of the
    /// series here (for warming).
    pub fn note_answer(&self, kept: bool, tf: Timeframe, exchange: &str, symbol: &str) {
        let counters = &self.inner.counters;
        if kept {
            stats::Counters::add(&counters.answer_hits);
            self.count(&Key::new(tf, exchange, symbol));
        } else {
            stats::Counters::add(&counters.answer_misses);
        }
    }

    fn count(&self, key: &Key) {
        let mut queried = self.inner.queried.lock().unwrap_or_else(|p| p.into_inner());
        let room = queried.len() < COUNTED_SERIES;
        match queried.get_mut(key) {
            Some(n) => *n += 1,
            // Series names come from queries: a bound keeps made-up names from growing this.
            None if room => {
                queried.insert(key.clone(), 1);
            }
            None => {}
        }
    }

    /// One series' rows in `range` at `snapshot`, read from the table (only the pages that
    /// may hold the series), or its latest `n` rows in `range`.
    #[tracing::instrument(name = "cache.cold_load", level = "debug", skip_all, fields(
        timeframe = %key.timeframe, exchange = %key.exchange, symbol = %key.symbol, snapshot
    ))]
    async fn read_series(
        &self,
        key: &Key,
        snapshot: Option<i64>,
        range: TimeRange,
        latest: Option<usize>,
    ) -> Result<Vec<RecordBatch>> {
        let Some(snapshot) = snapshot else {
            return Ok(Vec::new());
        };
        let kind = TableKind::Bars(key.timeframe);
        let listing = self.inner.storage.listing_at(kind, snapshot).await?;
        let files: Vec<&LiveFile> = listing
            .files
            .iter()
            .filter(|f| f.may_overlap(kind, &range))
            .collect();
        let series = Series {
            exchange: &key.exchange,
            symbol: &key.symbol,
            range,
        };
        let storage = &self.inner.storage;
        Ok(match latest {
            Some(n) => {
                crate::storage::series::read_latest(storage, kind, &files, series, n).await?
            }
            None => crate::storage::series::read_series(storage, kind, &files, series).await?,
        })
    }

    /// Every series' rows in `range` at `snapshot`.
    async fn read_all(
        &self,
        tf: Timeframe,
        snapshot: Option<i64>,
        range: TimeRange,
    ) -> Result<HashMap<(String, String), RecordBatch>> {
        if snapshot.is_none() {
            return Ok(HashMap::new());
        }
        let kind = TableKind::Bars(tf);
        let table = self.inner.storage.table(kind).await?;
        let listing = Listing::read(&table, kind, snapshot, range).await?;
        let files: Vec<&LiveFile> = listing.files.iter().collect();
        let rows = read_files(&self.inner.storage, kind, &files, range).await?;
        let all = concat_batches(&kind.arrow_schema()?, &rows)?;
        Ok(entry::by_series(&all)?)
    }

    /// Loads the most-queried series remembered from earlier runs, one table read per
    /// timeframe. Returns how many series were loaded.
    pub async fn warm(&self) -> Result<usize> {
        let (Some(popular), true) = (&self.inner.popular, self.inner.config.enabled) else {
            return Ok(0);
        };
        let remembered = popular.load().await?;
        let mut wanted: BTreeMap<Timeframe, Vec<Key>> = BTreeMap::new();
        {
            let mut queried = self.inner.queried.lock().unwrap_or_else(|p| p.into_inner());
            for (key, n) in remembered.into_iter().take(self.inner.config.warm_series) {
                *queried.entry(key.clone()).or_default() += n;
                wanted.entry(key.timeframe).or_default().push(key);
            }
        }
        let mut loaded = 0;
        for (tf, keys) in wanted {
            let snapshot = self.read().tables[index(tf)].snapshot;
            let from = self.horizon_start(tf);
            let mut all = self
                .read_all(tf, snapshot, TimeRange::new(Some(from), None))
                .await?;
            for key in keys {
                let rows = all.remove(&(key.exchange.clone(), key.symbol.clone()));
                let entry = Entry::new(snapshot, from, &rows.into_iter().collect::<Vec<_>>())?;
                self.insert_if_current(key, Arc::new(entry));
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    /// Stores the query counts, so the next start warms the same series.
    pub async fn remember(&self) -> Result<()> {
        let Some(popular) = &self.inner.popular else {
            return Ok(());
        };
        let counts = self
            .inner
            .queried
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        popular.save(&counts).await
    }

    /// Drops the matching entries (`None` matches all); returns how many.
    /// The cached entries of `tf`, taken out of the map (to be moved or dropped one by one).
    fn entries_of(&self, tf: Timeframe) -> Vec<(Arc<Key>, Arc<Entry>)> {
        self.inner
            .entries
            .iter()
            .filter(|(k, _)| k.timeframe == tf)
            .collect()
    }

    pub fn invalidate(
        &self,
        timeframe: Option<Timeframe>,
        exchange: Option<&str>,
        symbol: Option<&str>,
    ) -> u64 {
        let mut dropped = 0;
        for (key, _) in self.inner.entries.iter() {
            if timeframe.is_none_or(|t| t == key.timeframe)
                && exchange.is_none_or(|e| e == key.exchange)
                && symbol.is_none_or(|s| s == key.symbol)
            {
                self.inner.entries.invalidate(&*key);
                dropped += 1;
            }
        }
        dropped
    }

    /// Each timeframe's build watermark (the first window not persisted), as last committed.
    pub fn watermarks(&self) -> Vec<(Timeframe, Option<i64>)> {
        let state = self.read();
        Timeframe::ALL
            .iter()
            .map(|&tf| (tf, state.tables[index(tf)].cutoff))
            .collect()
    }

    /// Series the cache knows of: with unbuilt trades or cached bars.
    pub fn known_series(&self) -> std::collections::BTreeSet<(String, String)> {
        let mut series: std::collections::BTreeSet<(String, String)> =
            self.read().live.series().cloned().collect();
        for (key, _) in self.inner.entries.iter() {
            series.insert((key.exchange.clone(), key.symbol.clone()));
        }
        series
    }

    /// When a follower last found every bar table at the snapshot the cache holds.
    pub fn synced_at(&self) -> Option<i64> {
        let at = self
            .inner
            .synced_at
            .load(std::sync::atomic::Ordering::Relaxed);
        (at != 0).then_some(at)
    }

    /// The newest trade time the cache has seen committed or read.
    pub fn newest_trade(&self) -> Option<i64> {
        self.read().live.newest()
    }

    pub fn stats(&self) -> CacheStats {
        let entries = &self.inner.entries;
        entries.run_pending_tasks();
        CacheStats::read(
            &self.inner.counters,
            self.inner.config.enabled,
            entries.entry_count(),
            entries.weighted_size(),
            if self.inner.config.enabled {
                self.inner.config.bar_bytes()
            } else {
                0
            },
            self.read().live.rows() as u64,
        )
    }

    fn apply(&self, c: &Committed<'_>) -> Result<()> {
        let mut state = self.write();
        let tf = match c.kind {
            TableKind::Trades => {
                if matches!(c.content, Content::Changed) {
                    // Rows not handed over (an ingest too large to keep): the follower sees a
                    // snapshot it has not loaded and reads the table (and moves every
                    // series' generation then).
                    return Ok(());
                }
                state.trades_snapshot = c.after;
                match c.content {
                    Content::Append(batches) => {
                        let stamp = state.generations.last + 1;
                        let gained = state.live.add(batches, stamp)?;
                        state.generations.touch(&gained);
                    }
                    Content::Replace { partitions, .. } => {
                        state.live.drop_ranges(&ranges(c.kind, partitions))?;
                        state.generations.touch_all();
                    }
                    Content::None | Content::Rewrite => {}
                    Content::Upsert(_) | Content::Changed => state.generations.touch_all(),
                }
                return Ok(());
            }
            TableKind::Bars(tf) => tf,
        };
        let table = &mut state.tables[index(tf)];
        if let Some(cutoff) = prop_i64(c.properties, CUTOFF) {
            table.cutoff = Some(cutoff);
        }
        table.snapshot = c.after;
        if matches!(tf, Timeframe::M1 | Timeframe::M5) {
            let floor = self.live_floor(&state.tables);
            let lost = state.live.raise_floor(floor)?;
            // Normally the series whose trades were just built (in `rows` below); trades
            // that aged past the hot horizon unbuilt change their series' live bars too.
            state.generations.touch(&lost);
        }
        if c.before == c.after {
            return Ok(());
        }
        let (rows, replaced) = match c.content {
            Content::Changed => {
                state.generations.touch_all();
                self.invalidate(Some(tf), None, None);
                return Ok(());
            }
            Content::None | Content::Rewrite => (None, None),
            Content::Append(batches) => (Some(conform(c.kind, batches)?), None),
            Content::Upsert(rows) => (Some(rows.clone()), None),
            Content::Replace { partitions, rows } => {
                (Some(rows.clone()), Some(ranges(c.kind, partitions)))
            }
        };
        let series = match &rows {
            Some(rows) => entry::by_series(rows)?,
            None => HashMap::new(),
        };
        // Replaced partitions may have lost bars of series that have no rows in them; a
        // compaction (no rows) changes no bar. The new cutoff moves windows of the series in
        // `rows` from live to stored bars, equal by construction.
        if replaced.is_some() {
            state.generations.touch_all();
        } else if rows.is_some() {
            state.generations.touch(series.keys());
        }
        let from = self.horizon_start(tf);
        for (key, old) in self.entries_of(tf) {
            if old.snapshot != c.before {
                self.inner.entries.invalidate(&*key);
                continue;
            }
            let mine = series.get(&(key.exchange.clone(), key.symbol.clone()));
            let next = match (&replaced, &rows) {
                (Some(ranges), _) => old.replaced(c.after, ranges, mine)?,
                (None, Some(_)) => old.upserted(c.after, mine)?,
                (None, None) => old.retagged(c.after),
            };
            self.inner
                .entries
                .insert((*key).clone(), Arc::new(next.trimmed(from)?));
        }
        Ok(())
    }
}

fn ranges(kind: TableKind, partitions: &[i32]) -> Vec<(i64, i64)> {
    let transform = kind.partition_transform();
    partitions
        .iter()
        .map(|p| partition_range(&transform, *p))
        .collect()
}

impl CommitObserver for BarCache {
    fn committed(&self, commit: &Committed<'_>) {
        if let Err(e) = self.apply(commit) {
            // Never serve what may be stale: forget the table's entries, they reload on demand.
            tracing::error!(table = %commit.kind.name(), error = %e, "cache refresh failed; dropping its entries");
            // Which series changed is not known either: no kept answer may outlive this.
            self.write().generations.touch_all();
            if let TableKind::Bars(tf) = commit.kind {
                self.invalidate(Some(tf), None, None);
            }
        }
    }
}
