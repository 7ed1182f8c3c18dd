//! Views of the bar tables as they were at a past moment (`candles(..., as_of => t)`): each
//! table at the last snapshot its current history committed at or before `t`, and no
//! unbuilt trades (live bars are what a server computed then from trades it held; they were
//! never stored, so a past moment's answer is its persisted bars alone).

use super::{BarCache, TableState, View};

impl BarCache {
    /// Every bar table as it stood at `at_us`. Each table's snapshot then is looked up when a
    /// read first needs it ([`BarCache::snapshot_of`]), which fails, naming the oldest moment
    /// still kept, when the table's history before that has been expired.
    pub fn view_as_of(&self, at_us: i64) -> View {
        View {
            tables: [TableState::default(); 5],
            live_bars: None,
            generation: 0,
            as_of: Some(at_us),
            past: Default::default(),
        }
    }
}
