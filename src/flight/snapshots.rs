//! `system.snapshots`: every snapshot each bar table still holds, when it was committed and
//! what it was built from, so a backtest can record exactly which bars it read.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use iceberg_rust::spec::snapshot::Operation;

use super::error::Result;
use crate::build::state::{CUTOFF, SOURCE_SNAPSHOT, TRADES_SNAPSHOT};
use crate::storage::{Storage, TableKind};
use crate::timeframe::Timeframe;

pub fn schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("table_name", DataType::Utf8, false),
        Field::new("snapshot_id", DataType::Int64, false),
        Field::new("parent_id", DataType::Int64, true),
        Field::new("committed_at", ts(), false),
        Field::new("operation", DataType::Utf8, false),
        // The trades snapshot a 1m/5m build had consumed when it committed this one (or, for a
        // snapshot no build committed, its parent).
        Field::new("trades_snapshot", DataType::Int64, true),
        // The 1m snapshot a 30m/1h/1d rollup had consumed.
        Field::new("source_snapshot", DataType::Int64, true),
        // Windows starting before it were final (persisted past their grace) in this snapshot.
        Field::new("cutoff", ts(), true),
        Field::new("is_current", DataType::Boolean, false),
    ]))
}

struct Row {
    table: String,
    id: i64,
    parent: Option<i64>,
    at_us: i64,
    operation: &'static str,
    trades: Option<i64>,
    source: Option<i64>,
    cutoff: Option<i64>,
    current: bool,
}

/// The snapshots of every bar table, oldest first within each table.
pub async fn batch(storage: &Storage) -> Result<RecordBatch> {
    let mut rows = Vec::new();
    for tf in Timeframe::ALL {
        let kind = TableKind::Bars(tf);
        let table = storage.table(kind).await?;
        let metadata = table.metadata();
        let mut of_table: Vec<Row> = metadata
            .snapshots
            .values()
            .map(|s| {
                let other = &s.summary().other;
                let number = |key: &str| other.get(key).and_then(|v| v.parse::<i64>().ok());
                Row {
                    table: kind.name(),
                    id: *s.snapshot_id(),
                    parent: *s.parent_snapshot_id(),
                    at_us: s.timestamp_ms() * 1000,
                    operation: match s.summary().operation {
                        Operation::Append => "append",
                        Operation::Replace => "replace",
                        Operation::Overwrite => "overwrite",
                        Operation::Delete => "delete",
                    },
                    trades: number(TRADES_SNAPSHOT),
                    source: number(SOURCE_SNAPSHOT),
                    cutoff: number(CUTOFF),
                    current: metadata.current_snapshot_id == Some(*s.snapshot_id()),
                }
            })
            .collect();
        of_table.sort_by_key(|r| (r.at_us, r.id));
        // A snapshot no build committed (compaction, retention, another engine's) holds what
        // its parent was built from.
        let mut built_from = std::collections::HashMap::new();
        for r in &mut of_table {
            if let Some(&(trades, source, cutoff)) = r.parent.and_then(|p| built_from.get(&p)) {
                r.trades = r.trades.or(trades);
                r.source = r.source.or(source);
                r.cutoff = r.cutoff.or(cutoff);
            }
            built_from.insert(r.id, (r.trades, r.source, r.cutoff));
        }
        rows.extend(of_table);
    }
    let ts = |values: Vec<Option<i64>>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
    };
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.table.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.parent))),
            ts(rows.iter().map(|r| Some(r.at_us)).collect()),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.operation),
            )),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.trades))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.source))),
            ts(rows.iter().map(|r| r.cutoff).collect()),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.current)),
            )),
        ],
    )?)
}
