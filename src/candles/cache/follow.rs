//! Trades that other engines commit (Spark appending to the `[source]`, pyiceberg appending to
//! `market.trades`) never pass through our writer, so its commit notifications cannot move the
//! live buffer for them. The trades table is polled instead: when its current snapshot is not
//! the one the buffer holds, the buffer is read again from the table (only trades at or after
//! the live floor, the last few minutes, so this is cheap), and the next candle query shows
//! those trades as live bars.
//!
//! A read replica (another server holds the writer lock) sees none of the builder's commits
//! either: it polls the bar tables the same way, and a table at a new snapshot takes that
//! snapshot's watermark; its cached series move to the new snapshot unless the files added
//! and removed since change their rows (those reload), so every answer is the tables at one
//! snapshot, at most one poll interval behind. On a PostgreSQL catalog the
//! builder announces each commit (`storage::notify`), and the replica looks at once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;

use super::{entry, index, BarCache, Result};
use crate::build::changes::{self, SourceChanges};
use crate::build::state::{prop_i64, CUTOFF};
use crate::storage::read::read_files;
use crate::storage::{Layout, LiveFile, Storage, TableKind, TableWriter, TimeRange};
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
        // A reload moves every series (`touch_all`): no stamp is asked of it.
        live.add(&trades, 0)?;
        state.live = live;
        state.trades_snapshot = current;
        // Kept candle answers are keyed by generation: none may outlive this.
        state.generations.touch_all();
        Ok(true)
    }
}

impl BarCache {
    /// Moves each bar table's state to its current snapshot when another process committed to
    /// it; returns the timeframes that moved. Cached series whose rows the snapshots in
    /// between did not change are kept (retagged); the others are dropped and reload on
    /// demand. When the change cannot be listed (history expired), every series is dropped.
    pub async fn follow_bars(&self) -> Result<Vec<Timeframe>> {
        let mut moved = Vec::new();
        for tf in Timeframe::ALL {
            let kind = TableKind::Bars(tf);
            let seen = self.read().tables[index(tf)];
            let table = self.inner.storage.table(kind).await?;
            let current = table.metadata().current_snapshot_id;
            if current == seen.snapshot {
                continue;
            }
            let changed = match seen.snapshot {
                Some(before) => {
                    match changed_series(&self.inner.storage, &table, kind, before).await {
                        Ok(changed) => changed,
                        Err(e) => {
                            tracing::warn!(table = %kind.name(), error = %e, "diffing snapshots failed; dropping the timeframe's entries");
                            None
                        }
                    }
                }
                None => None,
            };
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
                    let lost = state.live.raise_floor(floor)?;
                    state.generations.touch(&lost);
                }
                match &changed {
                    Some(series) => state.generations.touch(series),
                    None => state.generations.touch_all(),
                }
            }
            match changed {
                Some(series) => self.move_entries(tf, seen.snapshot, current, &series),
                None => {
                    self.invalidate(Some(tf), None, None);
                }
            }
            moved.push(tf);
        }
        self.inner.synced_at.store(
            self.inner.clock.now_us(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(moved)
    }

    /// Entries of `tf` at `before` move to `after`, except those of `changed` series (and any
    /// not at `before`), which are dropped.
    fn move_entries(
        &self,
        tf: Timeframe,
        before: Option<i64>,
        after: Option<i64>,
        changed: &HashSet<(String, String)>,
    ) {
        for (key, old) in self.entries_of(tf) {
            let series = (key.exchange.clone(), key.symbol.clone());
            if old.snapshot != before || changed.contains(&series) {
                self.inner.entries.invalidate(&*key);
            } else {
                self.inner
                    .entries
                    .insert((*key).clone(), Arc::new(old.retagged(after)));
            }
        }
    }
}

/// The series whose rows the snapshots of `kind` after `before` changed: the rows of the files
/// they added and removed, compared series by series (a builder's upsert rewrites whole files,
/// most of whose series are unchanged). `None` when the changes cannot be listed.
async fn changed_series(
    storage: &Storage,
    table: &iceberg_rust::table::Table,
    kind: TableKind,
    before: i64,
) -> Result<Option<HashSet<(String, String)>>> {
    let changes = match changes::since(table, kind, Layout::Ours, before).await? {
        SourceChanges::Known(changes) => changes,
        SourceChanges::Unknown(_) => return Ok(None),
    };
    let added = rows_by_series(storage, kind, &changes.added).await?;
    let removed = rows_by_series(storage, kind, &changes.removed).await?;
    let mut changed = HashSet::new();
    for series in added.keys().chain(removed.keys()) {
        let same = match (added.get(series), removed.get(series)) {
            (Some(a), Some(r)) => in_window_order(a)? == in_window_order(r)?,
            _ => false,
        };
        if !same {
            changed.insert(series.clone());
        }
    }
    Ok(Some(changed))
}

/// The rows of `files`, by series.
async fn rows_by_series(
    storage: &Storage,
    kind: TableKind,
    files: &[LiveFile],
) -> Result<std::collections::HashMap<(String, String), RecordBatch>> {
    let files: Vec<&LiveFile> = files.iter().collect();
    let batches = read_files(storage, kind, &files, TimeRange::ALL).await?;
    Ok(entry::by_series(&concat_batches(
        &kind.arrow_schema()?,
        &batches,
    )?)?)
}

/// One series' rows sorted by window start (files hold them in any order between them).
fn in_window_order(rows: &RecordBatch) -> Result<RecordBatch> {
    let starts = rows
        .column_by_name("window_start")
        .expect("bar tables have window_start");
    let order = arrow::compute::sort_to_indices(starts, None, None)?;
    Ok(arrow::compute::take_record_batch(rows, &order)?)
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
