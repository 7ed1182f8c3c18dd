//! The answer to a recognised candle read (see [`super::shape`]), computed from the cache's
//! view: stored bars from the hot entry (or the series' rows of the table), candles assembled
//! with live bars, then ordered, limited and projected as the statement asked.

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;

use super::shape::{Read, Shape};
use crate::candles::cache::{BarCache, Result, View};

/// The series a read is about (its view is taken for it).
pub fn series(read: &Read) -> (&str, &str) {
    match read {
        Read::Candles(request) => (&request.exchange, &request.symbol),
        Read::Bars {
            exchange, symbol, ..
        } => (exchange, symbol),
    }
}

/// `shape`'s answer to `read` at `view`.
pub async fn answer(
    cache: &BarCache,
    view: &View,
    shape: &Shape,
    read: &Read,
) -> Result<RecordBatch> {
    let ascending = match read {
        // `resolve` turned `ORDER BY window_start DESC LIMIT n` into the latest n candles.
        Read::Candles(request) => super::candles_in(cache, view, request).await?,
        Read::Bars {
            timeframe,
            exchange,
            symbol,
            range,
        } => match (shape.descending, shape.limit) {
            (true, Some(n)) => {
                cache
                    .latest_bars(view, *timeframe, exchange, symbol, *range, n)
                    .await?
            }
            _ => {
                cache
                    .bars(view, *timeframe, exchange, symbol, *range)
                    .await?
            }
        },
    };
    let ordered = if shape.descending {
        reversed(&ascending)?
    } else {
        ascending
    };
    let limited = match shape.limit {
        Some(n) if n < ordered.num_rows() => ordered.slice(0, n),
        _ => ordered,
    };
    let columns = match &shape.projection {
        Some(indices) => indices.iter().map(|&i| limited.column(i).clone()).collect(),
        None => limited.columns().to_vec(),
    };
    Ok(RecordBatch::try_new(shape.schema.clone(), columns)?)
}

fn reversed(batch: &RecordBatch) -> Result<RecordBatch> {
    let n = batch.num_rows() as u32;
    let indices = UInt32Array::from_iter_values((0..n).rev());
    Ok(take_record_batch(batch, &indices)?)
}
