//! Key metadata for Flight SQL: the bar tables' primary key `(exchange, symbol, window_start)`
//! and the trades key `(exchange, symbol, trade_id)`; there are no foreign keys.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray, UInt8Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::storage::TableKind;

/// Result schema of `CommandGetPrimaryKeys` (Flight SQL spec).
pub fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// Result schema of `CommandGetExportedKeys` / `CommandGetImportedKeys` (Flight SQL spec).
pub fn foreign_keys_schema() -> SchemaRef {
    let s = |n: &str, nullable| Field::new(n, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        s("pk_catalog_name", true),
        s("pk_db_schema_name", true),
        s("pk_table_name", false),
        s("pk_column_name", false),
        s("fk_catalog_name", true),
        s("fk_db_schema_name", true),
        s("fk_table_name", false),
        s("fk_column_name", false),
        Field::new("key_sequence", DataType::Int32, false),
        s("fk_key_name", true),
        s("pk_key_name", true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

/// The primary key rows of `table` (none for unknown tables or other catalogs/schemas).
pub fn primary_keys(
    catalog: &str,
    schema: &str,
    wanted_catalog: Option<&str>,
    wanted_schema: Option<&str>,
    table: &str,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let matches =
        wanted_catalog.is_none_or(|c| c == catalog) && wanted_schema.is_none_or(|s| s == schema);
    let columns: Vec<&str> = TableKind::all()
        .find(|k| matches && k.name() == table)
        .map(|k| k.key_columns().to_vec())
        .unwrap_or_default();
    let n = columns.len();
    let repeat = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v; n])) };
    RecordBatch::try_new(
        primary_keys_schema(),
        vec![
            repeat(catalog),
            repeat(schema),
            repeat(table),
            Arc::new(StringArray::from(columns)),
            repeat(&format!("{table}_pkey")),
            Arc::new(Int32Array::from_iter_values(1..=n as i32)),
        ],
    )
}

/// No foreign keys exist.
pub fn no_foreign_keys() -> Result<RecordBatch, arrow::error::ArrowError> {
    let schema = foreign_keys_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Int32 => Arc::new(Int32Array::from(Vec::<i32>::new())) as ArrayRef,
            DataType::UInt8 => Arc::new(UInt8Array::from(Vec::<u8>::new())) as ArrayRef,
            _ => Arc::new(StringArray::from(Vec::<&str>::new())) as ArrayRef,
        })
        .collect();
    RecordBatch::try_new(schema, columns)
}
