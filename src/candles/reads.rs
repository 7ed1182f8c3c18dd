//! The candle read room's one interface: the Flight handlers, the `candles(...)` table
//! function and the routed `market.ohlcv_*` tables all read through a [`Reads`], which owns
//! the bar cache and the answer memo and divides the one `[cache] max_mb` between them (7/8
//! bars, 1/8 encoded answers).

use std::future::Future;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow_flight::FlightData;
use datafusion::error::DataFusionError;

use super::answers::{Answers, Encoding, Statement};
use super::cache::{BarCache, CacheConfig, Popular};
use super::shape::Shape;
use super::{CandlesFunction, Error, MarketTables};
use crate::clock::Clock;
use crate::storage::Storage;

/// Cheap handle; clones share the cache and the memo.
#[derive(Clone)]
pub struct Reads {
    cache: BarCache,
    answers: Answers,
}

impl Reads {
    /// Opens the bar cache over `storage`'s tables and the answer memo beside it, within
    /// `config`'s one budget.
    pub async fn open(
        storage: Storage,
        clock: Arc<dyn Clock>,
        config: CacheConfig,
        popular: Option<Popular>,
    ) -> Result<Reads, Error> {
        let answers = Answers::new(&config);
        let cache = BarCache::open(storage, clock, config, popular).await?;
        Ok(Reads { cache, answers })
    }

    /// The bar cache: what the writer's commits are applied to, and what status pages count.
    pub fn cache(&self) -> &BarCache {
        &self.cache
    }

    /// The `candles(...)` table function over this cache.
    pub fn function(&self) -> CandlesFunction {
        CandlesFunction::new(self.cache.clone())
    }

    /// `bars_as_of(table, moment)`: a bar table at a past moment, read at that snapshot.
    pub fn bars_as_of(&self, storage: Storage) -> super::as_of::BarsAsOf {
        super::as_of::BarsAsOf::new(storage)
    }

    /// The `market` schema, its bar tables routed through this cache.
    pub fn tables(&self, storage: Storage) -> MarketTables {
        MarketTables::new(storage, self.cache.clone())
    }

    /// The candle read `statement` was recognised as, if it was seen before.
    pub fn recognised(&self, statement: &Statement) -> Option<Arc<Shape>> {
        self.answers.shape(statement)
    }

    /// Remembers that `statement` is the candle read `shape`, so it is not parsed again.
    pub fn remember(&self, statement: Statement, shape: Arc<Shape>) {
        self.answers.remember_shape(statement, shape);
    }

    /// The Flight messages answering the candle read `shape`: `encode` turns its one batch
    /// into messages typed as `encoding` says. An answer that depends on the tables alone is
    /// kept for the generation of its series it was computed at, and served again until a
    /// commit moves that series on.
    pub async fn answer<E, F, Fut>(
        &self,
        statement: &Statement,
        shape: &Shape,
        encoding: Encoding,
        encode: F,
    ) -> Result<Arc<[FlightData]>, E>
    where
        E: From<Error> + From<DataFusionError>,
        F: FnOnce(RecordBatch) -> Fut,
        Fut: Future<Output = Result<Vec<FlightData>, E>>,
    {
        let cache = &self.cache;
        let read = shape.resolve(cache.config().max_windows)?;
        let (exchange, symbol) = super::serve::series(&read);
        let as_of = match &read {
            super::shape::Read::Candles(request) => request.as_of,
            super::shape::Read::Bars { .. } => None,
        };
        let view = cache.view_at(exchange, symbol, as_of).await?;
        let keep = self.answers.enabled() && shape.keeps(&read);
        if keep {
            let kept = self
                .answers
                .answer(statement, encoding, view.generation, read.windows());
            if let Some(tf) = read.base() {
                cache.note_answer(kept.is_some(), tf, exchange, symbol);
            }
            if let Some(data) = kept {
                return Ok(data);
            }
        }
        let batch = super::serve::answer(cache, &view, shape, &read).await?;
        let data: Arc<[FlightData]> = encode(batch).await?.into();
        if keep {
            self.answers.remember_answer(
                statement.clone(),
                encoding,
                view.generation,
                read.windows(),
                Arc::clone(&data),
            );
        }
        Ok(data)
    }
}
