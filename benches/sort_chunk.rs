//! Sorting one ingest chunk (250,000 trades of 20 series, interleaved as a feed delivers them)
//! into the table's order `(exchange, symbol, ts, trade_id)`: ours (`storage::files::sort_rows`,
//! series ranked once, then an integer sort) against arrow's general `lexsort_to_indices` on
//! the same columns (`storage::files::lexsort_rows`, what it used before), both followed by
//! the same `take`, in one run.
//!
//! cargo bench --bench sort_chunk

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::compute::cast;
use ohlcv_server::storage::files::{lexsort_rows, sort_rows};
use ohlcv_server::storage::TableKind;

const ROWS: i64 = 250_000;

fn chunk() -> RecordBatch {
    let kind = TableKind::Trades;
    let schema = kind.arrow_schema().unwrap();
    let now = 1_790_000_000_000_000i64;
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| -> ArrayRef {
            match f.name().as_str() {
                "exchange" => Arc::new(StringArray::from_iter_values((0..ROWS).map(|i| {
                    if i % 2 == 0 {
                        "binance"
                    } else {
                        "kraken"
                    }
                }))),
                "symbol" => Arc::new(StringArray::from_iter_values(
                    (0..ROWS).map(|i| format!("SYM{}-USD", i % 10)),
                )),
                "trade_id" => Arc::new(StringArray::from_iter_values(
                    (0..ROWS).map(|i| (1_000_000 + i).to_string()),
                )),
                "ts" => Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        (0..ROWS).map(|i| now - 3_600_000_000 + (i * 997) % 3_600_000_000),
                    )
                    .with_timezone("UTC"),
                ),
                "side" => Arc::new(StringArray::from_iter_values((0..ROWS).map(|i| {
                    if i % 3 == 0 {
                        "sell"
                    } else {
                        "buy"
                    }
                }))),
                _ => cast(
                    &Float64Array::from_iter_values((0..ROWS).map(|i| 100.0 + (i % 97) as f64)),
                    f.data_type(),
                )
                .unwrap(),
            }
        })
        .collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

fn median_ms(mut run: impl FnMut() -> RecordBatch) -> (f64, RecordBatch) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..9 {
        let t = Instant::now();
        last = Some(run());
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], last.unwrap())
}

fn main() {
    let kind = TableKind::Trades;
    let rows = chunk();
    let (ours, sorted) = median_ms(|| sort_rows(kind, &rows).unwrap());
    let (arrow, want) = median_ms(|| lexsort_rows(kind, &rows).unwrap());
    assert_eq!(sorted, want, "both sorts give the same rows");
    println!(
        "sort of {ROWS} interleaved trades of 20 series, median of 9: ours {ours:.1} ms, \
         arrow lexsort_to_indices + take {arrow:.1} ms ({:.1}x)",
        arrow / ours
    );
}
