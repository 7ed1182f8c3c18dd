//! Views of the bar tables as they were at a past moment (`candles(..., as_of => t)`): each
//! table at the last snapshot its current history committed at or before `t`, and no
//! unbuilt trades (live bars are what a server computed then from trades it held; they were
//! never stored, so a past moment's answer is its persisted bars alone).

use super::{index, BarCache, Result, TableState, View};
use crate::storage::{history, TableKind};
use crate::timeframe::Timeframe;

impl BarCache {
    /// Every bar table as it stood at `at_us`. Fails, naming the oldest moment still kept,
    /// when a table's history before that has been expired.
    pub async fn view_as_of(&self, at_us: i64) -> Result<View> {
        let mut tables = [TableState::default(); 5];
        for tf in Timeframe::ALL {
            let kind = TableKind::Bars(tf);
            let table = self.inner.storage.table(kind).await?;
            tables[index(tf)] = TableState {
                snapshot: history::snapshot_at(table.metadata(), &kind.name(), at_us)?,
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
