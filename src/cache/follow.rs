//! Trades that other engines commit (Spark appending to the `[source]`, pyiceberg appending to
//! `market.trades`) never pass through our writer, so its commit notifications cannot move the
//! live buffer for them. The trades table is polled instead: when its current snapshot is not
//! the one the buffer holds, the buffer is read again from the table (only trades at or after
//! the live floor, the last few minutes, so this is cheap), and the next candle query shows
//! those trades as live bars.
//!
//! A read replica (another server holds the writer lock) sees none of the builder's commits
//! either: it polls the bar tables the same way, and a table at a new snapshot takes that
//! snapshot's watermark and drops the cached bars of its timeframe, so every answer is the
//! tables at one snapshot, at most one poll interval behind. On a PostgreSQL catalog the
//! builder announces each commit (`storage::notify`), and the replica looks at once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{index, BarCache, Result};
use crate::build::state::{prop_i64, CUTOFF};
use crate::storage::{TableKind, TableWriter, TimeRange};
use crate::timeframe::Timeframe;
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
        state.generations.touch_all();
        Ok(true)
    }
}

impl BarCache {
    /// Moves each bar table's state to its current snapshot when another process committed to
    /// it; returns the timeframes that moved.
    pub async fn follow_bars(&self) -> Result<Vec<Timeframe>> {
        let mut moved = Vec::new();
        for tf in Timeframe::ALL {
            let seen = self.read().tables[index(tf)];
            let table = self.inner.storage.table(TableKind::Bars(tf)).await?;
            let current = table.metadata().current_snapshot_id;
            if current == seen.snapshot {
                continue;
            }
            {
                let mut state = self.write();
                if state.tables[index(tf)] != seen {
                    continue; // our own commit moved it meanwhile
                }
                let slot = &mut state.tables[index(tf)];
                slot.snapshot = current;
                slot.cutoff = prop_i64(&table.metadata().properties, CUTOFF).or(slot.cutoff);
                if matches!(tf, Timeframe::M1 | Timeframe::M5) {
                    let floor = self.live_floor(&state.tables);
                    state.live.raise_floor(floor)?;
                }
                state.generations.touch_all();
            }
            self.invalidate(Some(tf), None, None);
            moved.push(tf);
        }
        self.inner.synced_at.store(
            self.inner.clock.now_us(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(moved)
    }
}

/// Polls the trades table every `every` until cancelled (see [`BarCache::follow_trades`]),
/// and the bar tables too while `writer` is a read replica's. On a PostgreSQL catalog it also
/// looks at once when the builder announces a commit (see `storage::notify`).
pub async fn follow(
    cache: BarCache,
    every: Duration,
    writer: TableWriter,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_replica = writer.other_builder().await.is_some();
    let (tx, mut announced) = tokio::sync::mpsc::channel(16);
    let listening = match writer.storage().listen_commits().await {
        Ok(Some(feed)) => Some(tokio::spawn(feed.forward(tx, cancel.clone()))),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for commit announcements; polling only");
            None
        }
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
            Some(table) = announced.recv() => tracing::debug!(%table, "a commit was announced"),
        }
        follow_once(&cache, &writer, &mut was_replica).await;
    }
    if let Some(listening) = listening {
        let _ = listening.await;
    }
}

async fn follow_once(cache: &BarCache, writer: &TableWriter, was_replica: &mut bool) {
    match cache.follow_trades().await {
        Ok(true) => tracing::debug!("live trades reloaded after another engine's commit"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "checking the trades table for new commits failed")
        }
    }
    // A replica tries to take the lock on every look (failover within one interval of its
    // release); after taking it, one more look catches the old builder's last commits.
    let replica = writer.builder_elsewhere().await.is_some();
    let just_took_over = std::mem::replace(was_replica, replica) && !replica;
    if replica || just_took_over {
        match cache.follow_bars().await {
            Ok(moved) if !moved.is_empty() => {
                tracing::debug!(?moved, "bar tables moved by the builder")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "checking the bar tables failed"),
        }
    }
}
