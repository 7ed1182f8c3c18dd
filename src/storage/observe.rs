//! Commit notifications: whoever keeps a copy of table contents (the hot cache, the live trades
//! buffer) learns of every commit right after it lands, in commit order, with the rows it
//! wrote, so the copy can follow the table without reading it back.

use arrow::array::RecordBatch;

use super::schema::TableKind;

/// Properties to store in the same commit as the data.
pub type Properties = std::collections::HashMap<String, String>;

/// What a commit did to a table's rows.
#[derive(Debug, Clone, Copy)]
pub enum Content<'a> {
    /// Rows unchanged (a properties-only change, or nothing at all).
    None,
    /// Rows added as new files.
    Append(&'a [RecordBatch]),
    /// Rows inserted or replacing the rows with the same `(exchange, symbol, window_start)`.
    Upsert(&'a RecordBatch),
    /// Every row of `partitions` replaced by `rows` (no rows: the partitions were dropped).
    Replace {
        partitions: &'a [i32],
        rows: &'a RecordBatch,
    },
    /// Files rewritten, rows unchanged (compaction).
    Rewrite,
    /// Rows changed in a way not described here (rows deleted by key): copies of the table
    /// must be dropped and read again.
    Changed,
}

/// One landed commit.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    pub kind: TableKind,
    /// Snapshot the commit was made on, and the one it made (equal when no data changed).
    pub before: Option<i64>,
    pub after: Option<i64>,
    /// Properties set by the commit (the builder's watermark among them).
    pub properties: &'a Properties,
    pub content: Content<'a>,
}

/// Told of every commit of a `TableWriter`, while the writer still holds its commit turn: the
/// next commit waits until this returns, so observers see commits strictly in order.
pub trait CommitObserver: Send + Sync {
    fn committed(&self, commit: &Committed<'_>);
}
