//! The tables ohlcv-server owns: their Iceberg schemas, partitioning and sort orders.
//!
//! Field ids are fixed here forever: other engines (and our own older files) resolve columns by
//! id, so a column may be added with a new id but an id is never reused.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{Fields, Schema as ArrowSchema, SchemaRef};
use iceberg_rust::spec::partition::{PartitionField, PartitionSpec, Transform};
use iceberg_rust::spec::schema::Schema;
use iceberg_rust::spec::sort::{NullOrder, SortDirection, SortField, SortOrder, SortOrderBuilder};
use iceberg_rust::spec::types::{PrimitiveType, StructField, Type};

use super::error::{Error, Result};
use crate::timeframe::Timeframe;

/// One of the tables in the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    Trades,
    Bars(Timeframe),
}

/// Column layout shared by every bar table, in field-id order (ids start at 1).
const BAR_COLUMNS: &[(&str, PrimitiveType, bool)] = &[
    ("exchange", PrimitiveType::String, true),
    ("symbol", PrimitiveType::String, true),
    ("window_start", PrimitiveType::Timestamptz, true),
    ("window_end", PrimitiveType::Timestamptz, true),
    ("open", PrimitiveType::Double, false),
    ("high", PrimitiveType::Double, false),
    ("low", PrimitiveType::Double, false),
    ("close", PrimitiveType::Double, false),
    ("volume", PrimitiveType::Double, false),
    ("quote_volume", PrimitiveType::Double, false),
    ("vwap", PrimitiveType::Double, false),
    ("trade_count", PrimitiveType::Long, false),
    ("buy_volume", PrimitiveType::Double, false),
    ("first_trade_ts", PrimitiveType::Timestamptz, false),
    ("last_trade_ts", PrimitiveType::Timestamptz, false),
    ("revision", PrimitiveType::Int, false),
    ("built_at", PrimitiveType::Timestamptz, false),
];

const TRADE_COLUMNS: &[(&str, PrimitiveType, bool)] = &[
    ("exchange", PrimitiveType::String, true),
    ("symbol", PrimitiveType::String, true),
    ("trade_id", PrimitiveType::String, true),
    ("ts", PrimitiveType::Timestamptz, true),
    ("price", PrimitiveType::Double, true),
    ("quantity", PrimitiveType::Double, true),
    ("side", PrimitiveType::String, false),
    ("ingested_at", PrimitiveType::Timestamptz, true),
];

/// First partition field id, as the Iceberg spec recommends.
const PARTITION_FIELD_ID: i32 = 1000;

impl TableKind {
    /// Every table, trades first.
    pub fn all() -> impl Iterator<Item = TableKind> {
        std::iter::once(TableKind::Trades).chain(Timeframe::ALL.into_iter().map(TableKind::Bars))
    }

    pub fn name(self) -> String {
        match self {
            TableKind::Trades => "trades".to_string(),
            TableKind::Bars(tf) => tf.table_name(),
        }
    }

    fn columns(self) -> &'static [(&'static str, PrimitiveType, bool)] {
        match self {
            TableKind::Trades => TRADE_COLUMNS,
            TableKind::Bars(_) => BAR_COLUMNS,
        }
    }

    /// The timestamp column the table is partitioned and range-pruned on.
    pub fn time_column(self) -> &'static str {
        match self {
            TableKind::Trades => "ts",
            TableKind::Bars(_) => "window_start",
        }
    }

    /// Columns that identify a row: the upsert key of bar tables, the dedupe key of trades.
    pub fn key_columns(self) -> [&'static str; 3] {
        match self {
            TableKind::Trades => ["exchange", "symbol", "trade_id"],
            TableKind::Bars(_) => ["exchange", "symbol", "window_start"],
        }
    }

    /// Columns of few distinct values, written with a dictionary. Every other column is
    /// written plain: a column of prices, volumes or timestamps fills its dictionary page to
    /// the 1 MB limit before falling back, and that page is read and decompressed whole for
    /// any page of its chunk, so one series' few pages would cost a megabyte per column.
    pub fn dictionary_columns(self) -> &'static [&'static str] {
        match self {
            TableKind::Trades => &["exchange", "symbol", "side"],
            TableKind::Bars(_) => &["exchange", "symbol"],
        }
    }

    /// Order of rows inside every data file we write.
    pub fn sort_columns(self) -> &'static [&'static str] {
        match self {
            TableKind::Trades => &["exchange", "symbol", "ts", "trade_id"],
            TableKind::Bars(_) => &["exchange", "symbol", "window_start"],
        }
    }

    /// Day partitions everywhere except 1d bars, which would make one file per day forever.
    pub fn partition_transform(self) -> Transform {
        match self {
            TableKind::Bars(Timeframe::D1) => Transform::Month,
            _ => Transform::Day,
        }
    }

    pub fn partition_field_name(self) -> String {
        let suffix = match self.partition_transform() {
            Transform::Month => "month",
            _ => "day",
        };
        format!("{}_{suffix}", self.time_column())
    }

    /// Iceberg field id of one of the table's columns.
    pub fn field_id(self, column: &str) -> i32 {
        let idx = self
            .columns()
            .iter()
            .position(|(name, _, _)| *name == column)
            .expect("column names used here are the table's own");
        idx as i32 + 1
    }

    pub fn iceberg_schema(self) -> Result<Schema> {
        let mut builder = Schema::builder();
        for (idx, (name, ty, required)) in self.columns().iter().enumerate() {
            builder.with_struct_field(StructField {
                id: idx as i32 + 1,
                name: (*name).to_string(),
                required: *required,
                field_type: Type::Primitive(ty.clone()),
                doc: None,
            });
        }
        let ids: Vec<i32> = self
            .key_columns()
            .iter()
            .map(|c| self.field_id(c))
            .collect();
        builder.with_identifier_field_ids(ids);
        Ok(builder.build()?)
    }

    pub fn partition_spec(self) -> Result<PartitionSpec> {
        Ok(PartitionSpec::builder()
            .with_partition_field(PartitionField::new(
                self.field_id(self.time_column()),
                PARTITION_FIELD_ID,
                &self.partition_field_name(),
                self.partition_transform(),
            ))
            .build()?)
    }

    pub fn sort_order(self) -> Result<SortOrder> {
        let mut builder = SortOrderBuilder::default();
        builder.with_order_id(1);
        for column in self.sort_columns() {
            builder.with_sort_field(SortField {
                source_id: self.field_id(column),
                transform: Transform::Identity,
                direction: SortDirection::Ascending,
                null_order: NullOrder::First,
            });
        }
        builder
            .build()
            .map_err(|e| Error::Catalog(format!("sort order for {}: {e}", self.name())))
    }

    /// The Arrow schema every batch written to this table must carry (field ids included).
    pub fn arrow_schema(self) -> Result<SchemaRef> {
        // Converted once per table: the query path asks for it on every request.
        static SCHEMAS: [OnceLock<SchemaRef>; 1 + Timeframe::ALL.len()] =
            [const { OnceLock::new() }; 1 + Timeframe::ALL.len()];
        let slot = match self {
            TableKind::Trades => 0,
            TableKind::Bars(tf) => 1 + Timeframe::ALL.iter().position(|t| *t == tf).unwrap_or(0),
        };
        if let Some(schema) = SCHEMAS[slot].get() {
            return Ok(Arc::clone(schema));
        }
        let fields: Fields = self.iceberg_schema()?.fields().try_into()?;
        Ok(Arc::clone(
            SCHEMAS[slot].get_or_init(|| Arc::new(ArrowSchema::new(fields))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_has_a_valid_schema_and_spec() {
        for kind in TableKind::all() {
            let schema = kind.iceberg_schema().unwrap();
            assert!(schema.fields().get(1).is_some(), "{}", kind.name());
            kind.partition_spec().unwrap();
            kind.sort_order().unwrap();
            let arrow = kind.arrow_schema().unwrap();
            assert_eq!(arrow.fields().len(), kind.columns().len());
        }
    }

    #[test]
    fn daily_bars_partition_by_month() {
        assert_eq!(
            TableKind::Bars(Timeframe::D1).partition_field_name(),
            "window_start_month"
        );
        assert_eq!(TableKind::Trades.partition_field_name(), "ts_day");
    }
}
