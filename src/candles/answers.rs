//! Hot candle statements, remembered: what a statement asks for, and its encoded answer per
//! generation of its series.
//!
//! A chart or bot sends the same statement (or prepared handle) again and again, and between
//! two commits that touch its series the answer cannot change. So a statement the server
//! answers directly is analysed once, and its Flight messages are kept for the series'
//! generation in the cache's view they were computed at (`cache::View::generation`): a commit
//! that may change the series moves it on and the old answers are never looked up again (they
//! age out); commits of other series leave it. Only answers that depend on nothing but the
//! view are kept: gap-filled candles also depend on the time.
//!
//! Off with the bar cache (`[cache] enabled = false`), so that setting measures and serves
//! plain table reads.

use std::sync::Arc;
use std::time::Duration;

use arrow_flight::FlightData;
use moka::sync::Cache;
use prost::bytes::Bytes;

use super::cache::CacheConfig;
use super::shape::Shape;

/// How a statement reached us; the bytes are its SQL or its prepared handle (SQL and bound
/// parameters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Statement {
    Sql(Bytes),
    Prepared(Bytes),
}

/// One answer larger than this is not kept: it would push out many hot small ones.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// How an answer was typed for its client (the Flight room's result profiles), so that one
/// statement's answers in two typings are two answers.
pub type Encoding = u8;

/// A statement's Flight messages in one encoding, keyed by the cache generation they were
/// computed at and the windows they cover.
type Encoded = Cache<(Statement, Encoding, u64, (i64, i64)), Arc<[FlightData]>>;

#[derive(Clone)]
pub struct Answers {
    shapes: Option<Cache<Statement, Arc<Shape>>>,
    encoded: Option<Encoded>,
}

impl Answers {
    /// Answers within `config.answer_bytes()`: the part of the one `[cache] max_mb` that
    /// is not for bars.
    pub fn new(config: &CacheConfig) -> Answers {
        if !config.enabled {
            return Answers {
                shapes: None,
                encoded: None,
            };
        }
        let shapes = Cache::builder()
            .max_capacity(10_000)
            .time_to_idle(Duration::from_secs(600))
            .build();
        let encoded = Cache::builder()
            .max_capacity(config.answer_bytes())
            .weigher(
                |_: &(Statement, Encoding, u64, (i64, i64)), data: &Arc<[FlightData]>| {
                    weight(data).try_into().unwrap_or(u32::MAX)
                },
            )
            // A generation lasts until the next commit; this only bounds how long a replaced
            // answer takes memory that a current one could use.
            .time_to_idle(Duration::from_secs(120))
            .build();
        Answers {
            shapes: Some(shapes),
            encoded: Some(encoded),
        }
    }

    /// The candle read a statement was recognised as, if it was seen before.
    pub fn shape(&self, statement: &Statement) -> Option<Arc<Shape>> {
        self.shapes.as_ref()?.get(statement)
    }

    pub fn remember_shape(&self, statement: Statement, shape: Arc<Shape>) {
        if let Some(shapes) = &self.shapes {
            shapes.insert(statement, shape);
        }
    }

    /// Whether answers are kept at all.
    pub fn enabled(&self) -> bool {
        self.encoded.is_some()
    }

    /// The answer computed at `generation` for `windows`, if kept.
    pub fn answer(
        &self,
        statement: &Statement,
        encoding: Encoding,
        generation: u64,
        windows: (i64, i64),
    ) -> Option<Arc<[FlightData]>> {
        self.encoded
            .as_ref()?
            .get(&(statement.clone(), encoding, generation, windows))
    }

    /// Keeps `data` as the answer at `generation` (of a read whose answer depends on the view
    /// alone: `Shape::keeps`).
    pub fn remember_answer(
        &self,
        statement: Statement,
        encoding: Encoding,
        generation: u64,
        windows: (i64, i64),
        data: Arc<[FlightData]>,
    ) {
        let Some(encoded) = &self.encoded else {
            return;
        };
        if weight(&data) <= MAX_ANSWER_BYTES {
            encoded.insert((statement, encoding, generation, windows), data);
        }
    }
}

fn weight(data: &[FlightData]) -> usize {
    data.iter()
        .map(|d| d.data_header.len() + d.data_body.len() + d.app_metadata.len())
        .sum()
}
