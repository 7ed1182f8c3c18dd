//! Trades that other engines commit (Spark appending to the `[source]`, pyiceberg appending to
//! `market.trades`) never pass through our writer, so its commit notifications cannot move the
//! live buffer for them. The trades table is polled instead: when its current snapshot is not
//! the one the buffer holds, the buffer is read again from the table (only trades at or after
//! the live floor, the last few minutes, so this is cheap), and the next candle query shows
//! those trades as live bars.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{BarCache, Result};
use crate::storage::{TableKind, TimeRange};
use crate::trades::read_trades_at;

impl BarCache {
    /// Reloads the unbuilt trades when the trades table moved past the snapshot they were read
    /// or committed at; `true` when it did.
    pub async fn follow_trades(&self) -> Result<bool> {
        let storage = &self.inner.storage;
        // What the buffer holds is taken before the table is read: read after, a commit of
        // ours landing in between would look like a change and be replaced by the older
        // snapshot read before it.
        let (seen, floor) = {
            let state = self.read();
            (state.trades_snapshot, state.live.floor())
        };
        let table = storage.table(TableKind::Trades).await?;
        let current = table.metadata().current_snapshot_id;
        if current == seen {
            return Ok(false);
        }
        let range = TimeRange::new(Some(floor), None);
        let (trades, _) =
            read_trades_at(storage, &table, current, range, self.inner.clock.now_us()).await?;
        let mut state = self.write();
        if state.trades_snapshot != seen {
            // Our own commit landed meanwhile and moved the buffer: look again next time.
            return Ok(false);
        }
        let mut live = state.live.emptied();
        live.add(&trades)?;
        state.live = live;
        state.trades_snapshot = current;
        // Kept candle answers are keyed by generation: none may outlive this.
        state.generation += 1;
        Ok(true)
    }
}

/// Polls the trades table every `every` until cancelled (see [`BarCache::follow_trades`]).
pub async fn follow(cache: BarCache, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match cache.follow_trades().await {
            Ok(true) => tracing::debug!("live trades reloaded after another engine's commit"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "checking the trades table for new commits failed")
            }
        }
    }
}
