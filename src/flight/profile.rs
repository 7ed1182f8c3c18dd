//! How results are typed for a client: exactly as stored, or in the Arrow types Grafana reads.
//!
//! Both Grafana converters of Flight SQL results (the `influxdata-flightsql-datasource` plugin
//! and the built-in InfluxDB SQL mode) read every Arrow timestamp as nanoseconds whatever its
//! unit, and turn a column of a type they do not know (decimal, date, dictionary, large or
//! view strings, lists...) into an empty field, which fails the whole frame. Our timestamps are
//! microseconds, exact from year 1 to 9999, and pandas, polars, DuckDB and JDBC read them
//! right; so they stay the default, and a client that sends the gRPC header
//! `x-ohlcv-results: grafana` (a data source's "metadata" setting) gets every column in a type
//! those converters handle: timestamps in nanoseconds, dates as timestamps, decimals as
//! doubles, strings as plain UTF-8, dictionaries decoded, anything else as its text. A
//! timestamp outside the nanosecond range (before 1677-09-21 or after 2262-04-11) fails the
//! statement with a message naming the column: never a wrong date.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringBuilder};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use tonic::metadata::MetadataMap;

use super::error::{Error, Result};

/// The request header that picks a profile.
pub const HEADER: &str = "x-ohlcv-results";

/// The result typing a request asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Types as stored (timestamps in microseconds).
    #[default]
    Exact,
    /// Only the types Grafana's Flight SQL converters read correctly.
    Grafana,
}

impl Profile {
    /// The profile `metadata` asks for; an unknown one is refused rather than ignored, since
    /// it would show wrong dates.
    pub fn of(metadata: &MetadataMap) -> Result<Profile> {
        let Some(value) = metadata.get(HEADER) else {
            return Ok(Profile::Exact);
        };
        match value.to_str().map(|v| v.trim().to_ascii_lowercase()) {
            Ok(v) if v == "exact" => Ok(Profile::Exact),
            Ok(v) if v == "grafana" => Ok(Profile::Grafana),
            _ => Err(Error::InvalidRequest(format!(
                "header {HEADER}: {value:?} is not a result profile (exact, grafana)"
            ))),
        }
    }

    /// The schema results of `schema` are sent with.
    pub fn schema(self, schema: &SchemaRef) -> SchemaRef {
        if self == Profile::Exact || schema.fields().iter().all(|f| grafana_reads(f.data_type())) {
            return Arc::clone(schema);
        }
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| {
                f.as_ref()
                    .clone()
                    .with_data_type(grafana_type(f.data_type()))
            })
            .collect();
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
    }

    /// `batch` in this profile's types (`schema` is [`Profile::schema`] of the batch's).
    pub fn batch(self, batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
        let same = |(a, b): (&Arc<Field>, &Arc<Field>)| a.data_type() == b.data_type();
        if self == Profile::Exact
            || batch
                .schema()
                .fields()
                .iter()
                .zip(schema.fields())
                .all(same)
        {
            return Ok(batch);
        }
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(column, field)| convert(column, field))
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
    }
}

/// Whether Grafana's converters read `t` as it is (a timestamp only in nanoseconds).
fn grafana_reads(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8
            | DataType::Boolean
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float32
            | DataType::Float64
            | DataType::Timestamp(TimeUnit::Nanosecond, _)
    )
}

fn grafana_type(t: &DataType) -> DataType {
    match t {
        t if grafana_reads(t) => t.clone(),
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()),
        DataType::Date32 | DataType::Date64 => DataType::Timestamp(TimeUnit::Nanosecond, None),
        DataType::Float16 => DataType::Float32,
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => DataType::Float64,
        DataType::Dictionary(_, values) => grafana_type(values),
        // Strings of any layout, durations (read as a bare integer of an unnamed unit),
        // intervals, times of day, binaries, nested values: their text.
        _ => DataType::Utf8,
    }
}

fn convert(column: &ArrayRef, field: &Field) -> Result<ArrayRef> {
    let target = field.data_type();
    if column.data_type() == target {
        return Ok(Arc::clone(column));
    }
    let source = match column.data_type() {
        DataType::Dictionary(_, values) => cast_with_options(column, values, &STRICT)?,
        _ => Arc::clone(column),
    };
    match target {
        DataType::Timestamp(TimeUnit::Nanosecond, _) => cast_with_options(&source, target, &STRICT)
            .map_err(|_| {
                Error::OutOfRange(format!(
                    "column '{}' holds a time outside 1677-09-21..2262-04-11, which cannot be \
                     sent in nanoseconds ({HEADER}: grafana); filter it out, or cast the column \
                     to a string",
                    field.name()
                ))
            }),
        DataType::Utf8 if !can_cast_exactly(source.data_type()) => text(&source),
        _ => Ok(cast_with_options(&source, target, &STRICT)?),
    }
}

/// Casting is exact only from other string layouts; every other type is shown as its text.
fn can_cast_exactly(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Each value as Arrow displays it (NULL stays NULL).
fn text(column: &ArrayRef) -> Result<ArrayRef> {
    let options = FormatOptions::default();
    let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
    let mut out = StringBuilder::with_capacity(column.len(), column.len() * 16);
    for i in 0..column.len() {
        if column.is_null(i) {
            out.append_null();
        } else {
            out.append_value(formatter.value(i).to_string());
        }
    }
    Ok(Arc::new(out.finish()))
}

/// Overflow is an error, never a NULL or a wrapped value.
const STRICT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: FormatOptions::new(),
};

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Date32Array, Decimal128Array, DictionaryArray, Int32Array, StringArray,
        TimestampMicrosecondArray, TimestampNanosecondArray,
    };
    use arrow::datatypes::Int32Type;

    fn one(column: ArrayRef) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("c", column.data_type().clone(), true)]);
        RecordBatch::try_new(Arc::new(schema), vec![column]).unwrap()
    }

    fn grafana(batch: RecordBatch) -> Result<RecordBatch> {
        let schema = Profile::Grafana.schema(&batch.schema());
        Profile::Grafana.batch(batch, &schema)
    }

    #[test]
    fn timestamps_become_the_same_instant_in_nanoseconds() {
        let us = 1_796_355_934_813_230i64;
        let batch = one(Arc::new(
            TimestampMicrosecondArray::from(vec![Some(us), None]).with_timezone("UTC"),
        ));
        let out = grafana(batch).unwrap();
        let ns = out
            .column(0)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .unwrap();
        assert_eq!(ns.value(0), us * 1000);
        assert!(ns.is_null(1));
        assert_eq!(
            out.schema().field(0).data_type(),
            &DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
        );
    }

    #[test]
    fn a_time_outside_the_nanosecond_range_is_an_error_naming_the_column() {
        // Year 1600.
        let batch = one(Arc::new(TimestampMicrosecondArray::from(vec![
            -11_676_096_000_000_000i64,
        ])));
        let err = grafana(batch).unwrap_err().to_string();
        assert!(err.contains("column 'c'") && err.contains("1677"), "{err}");
    }

    #[test]
    fn other_types_become_ones_grafana_reads() {
        let dates = grafana(one(Arc::new(Date32Array::from(vec![20_000])))).unwrap();
        assert_eq!(
            dates
                .column(0)
                .as_any()
                .downcast_ref::<TimestampNanosecondArray>()
                .unwrap()
                .value(0),
            20_000 * 86_400_000_000_000
        );
        let decimals = Decimal128Array::from(vec![123_456_789i128])
            .with_precision_and_scale(18, 8)
            .unwrap();
        let out = grafana(one(Arc::new(decimals))).unwrap();
        assert_eq!(out.schema().field(0).data_type(), &DataType::Float64);
        let keys = Int32Array::from(vec![0, 1, 0]);
        let dict = DictionaryArray::<Int32Type>::try_new(
            keys,
            Arc::new(StringArray::from(vec!["kraken", "binance"])),
        )
        .unwrap();
        let out = grafana(one(Arc::new(dict))).unwrap();
        let strings = out
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(strings.value(2), "kraken");
        let times = arrow::array::Time64MicrosecondArray::from(vec![3_600_000_000i64]);
        let out = grafana(one(Arc::new(times))).unwrap();
        let strings = out
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(strings.value(0), "01:00:00");
    }

    #[test]
    fn exact_leaves_everything_as_stored() {
        let batch = one(Arc::new(TimestampMicrosecondArray::from(vec![1i64])));
        let schema = Profile::Exact.schema(&batch.schema());
        assert!(Arc::ptr_eq(&schema, &batch.schema()));
    }
}
