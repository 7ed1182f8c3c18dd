//! `serve --demo`: a synthetic multi-exchange feed so a new user can query candles at once.
//! On start it backfills the last three days of trades if the table is empty and has every timeframe
//! built right away, then appends a second's worth of trades every second until cancelled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::jobs::{JobKind, SchedulerHandle};
use crate::storage::{TableKind, TableWriter};
use crate::timeframe::Timeframe;
use crate::trades::generate::generate_continuing;
use crate::trades::{normalize, GeneratorConfig};

const SYMBOLS: usize = 6;
const EXCHANGES: usize = 3;
/// Trades per second across the whole demo feed.
const RATE: f64 = 2.0;
const HISTORY_DAYS: i64 = 3;

/// Feeds trades until `cancel` fires. Errors are logged and retried on the next tick: a demo
/// feed must never take the server down.
pub async fn feed(
    writer: TableWriter,
    clock: Arc<dyn Clock>,
    scheduler: SchedulerHandle,
    cancel: CancellationToken,
) {
    let mut next_id: u64 = 1;
    let mut built = false;
    let mut prices: Vec<f64> = Vec::new();
    let mut from = clock.now_us();
    match writer.storage().table(TableKind::Trades).await {
        Ok(t) if t.metadata().current_snapshot_id.is_none() => {
            from -= HISTORY_DAYS * 86_400_000_000;
        }
        Ok(_) => next_id = clock.now_us() as u64, // ids above anything an earlier run used
        Err(e) => tracing::error!(error = %e, "demo feed cannot read the trades table"),
    }
    loop {
        let now = clock.now_us();
        let seconds = (now - from) as f64 / 1e6;
        let n = (seconds * RATE) as usize;
        if n > 0 {
            let cfg = GeneratorConfig {
                trades: n,
                symbols: SYMBOLS,
                exchanges: EXCHANGES,
                seed: next_id,
                start_us: from,
                trades_per_second: RATE,
                out_of_order: 0.01,
                duplicates: 0.002,
                first_id: next_id,
                start_prices: prices.clone(),
            };
            let generated = generate_continuing(&cfg)
                .and_then(|(raw, end)| Ok((normalize(&raw, 0, now)?, end)));
            let appended = match generated {
                Ok((rows, end)) => writer
                    .append(TableKind::Trades, &[rows], HashMap::new())
                    .await
                    .map(|outcome| (outcome, end))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match appended {
                Ok((outcome, end)) => {
                    tracing::debug!(trades = outcome.rows_added, "demo trades appended");
                    prices = end;
                    next_id += n as u64;
                    from = now;
                    if !built {
                        // Candles for the backfilled history now, not at the next schedule.
                        for tf in Timeframe::ALL {
                            scheduler.trigger(JobKind::Build(tf)).await;
                        }
                        built = true;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "demo feed append failed; retrying"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
