//! What a build has consumed, stored as table properties of the table it builds, in the same
//! commit as the bars: data and watermark can never disagree, and a restarted builder reads its
//! position from the table itself.

use std::collections::HashMap;

/// Trades snapshot consumed by an incremental (1m/5m) build.
pub const TRADES_SNAPSHOT: &str = "ohlcv.trades-snapshot";
/// Sequence number of that snapshot: files with a higher data sequence number are new.
pub const TRADES_SEQUENCE: &str = "ohlcv.trades-sequence";
/// Table uuid of the trades table consumed: a table dropped and created again under the same
/// name has another, and building from it would silently delete bars.
pub const TRADES_TABLE_UUID: &str = "ohlcv.trades-table-uuid";
/// First window start not yet persisted (UTC microseconds): windows before it are final.
pub const CUTOFF: &str = "ohlcv.cutoff";
/// 1m snapshot consumed by a batch (30m/1h/1d) build, and its sequence number.
pub const SOURCE_SNAPSHOT: &str = "ohlcv.source-snapshot";
pub const SOURCE_SEQUENCE: &str = "ohlcv.source-sequence";
/// Earliest time still held after retention (UTC microseconds); set by retention.
pub const RETAINED_FROM: &str = "ohlcv.retained-from";

/// A build's position in its source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermark {
    pub snapshot: Option<i64>,
    /// Data sequence number of `snapshot` (0 before the first build).
    pub sequence: i64,
    pub cutoff: Option<i64>,
}

impl Watermark {
    pub fn read(
        props: &HashMap<String, String>,
        snapshot_key: &str,
        sequence_key: &str,
    ) -> Watermark {
        let num = |k: &str| props.get(k).and_then(|v| v.parse::<i64>().ok());
        Watermark {
            snapshot: num(snapshot_key),
            sequence: num(sequence_key).unwrap_or(0),
            cutoff: num(CUTOFF),
        }
    }

    pub fn to_props(self, snapshot_key: &str, sequence_key: &str) -> HashMap<String, String> {
        let mut props = HashMap::new();
        if let Some(s) = self.snapshot {
            props.insert(snapshot_key.to_string(), s.to_string());
        }
        props.insert(sequence_key.to_string(), self.sequence.to_string());
        if let Some(c) = self.cutoff {
            props.insert(CUTOFF.to_string(), c.to_string());
        }
        props
    }
}

/// Reads a numeric property.
pub fn prop_i64(props: &HashMap<String, String>, key: &str) -> Option<i64> {
    props.get(key).and_then(|v| v.parse().ok())
}
