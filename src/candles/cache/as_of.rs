//! Views of the bar tables as they were at a past moment (`candles(..., as_of => t)`): each
//! table at the last snapshot its current history committed at or before `t`, and no
//! unbuilt trades (live bars are what a server computed then from trades it held; they were
//! never stored, so a past moment's answer is its persisted bars alone).

use iceberg_rust::spec::table_metadata::TableMetadata;

use super::{index, BarCache, Error, Result, TableState, View};
use crate::storage::TableKind;
use crate::timeframe::{format_us, Timeframe};

impl BarCache {
    /// Every bar table as it stood at `at_us`. Fails, naming the oldest moment still kept,
    /// when a table's history before that has been expired.
    pub async fn view_as_of(&self, at_us: i64) -> Result<View> {
        let mut tables = [TableState::default(); 5];
        for tf in Timeframe::ALL {
            let kind = TableKind::Bars(tf);
            let table = self.inner.storage.table(kind).await?;
            tables[index(tf)] = TableState {
                snapshot: snapshot_at(table.metadata(), &kind.name(), at_us)?,
                cutoff: None,
            };
        }
        Ok(View {
            tables,
            live_trades: Vec::new(),
            live_floor: i64::MAX,
            generation: 0,
            as_of: Some(at_us),
        })
    }
}

/// The snapshot of the table's current history committed at or before `at_us` (`None`: the
/// table held nothing yet).
fn snapshot_at(metadata: &TableMetadata, table: &str, at_us: i64) -> Result<Option<i64>> {
    let at_ms = at_us.div_euclid(1000);
    let mut id = metadata.current_snapshot_id;
    let mut oldest_ms = None;
    while let Some(snapshot) = id.and_then(|i| metadata.snapshots.get(&i)) {
        if *snapshot.timestamp_ms() <= at_ms {
            return Ok(Some(*snapshot.snapshot_id()));
        }
        oldest_ms = Some(*snapshot.timestamp_ms());
        id = *snapshot.parent_snapshot_id();
    }
    match (id, oldest_ms) {
        // The history reached the table's first snapshot, committed after `at`.
        (None, _) => Ok(None),
        // A parent that is no longer kept: expired with the history before it.
        (Some(_), Some(oldest)) => Err(Error::Input(format!(
            "as_of {} is older than the history {table} keeps: its oldest snapshot still \
             held was committed at {} (snapshots older than [retention] snapshot_keep_hours \
             are expired)",
            format_us(at_us),
            format_us(oldest * 1000)
        ))),
        (Some(missing), None) => Err(Error::Input(format!(
            "{table}'s current snapshot {missing} is not in its metadata"
        ))),
    }
}
