//! Turning trade batches of any reasonable shape into rows of `market.trades`, or refusing them.
//!
//! Accepted input: `exchange, symbol, trade_id, ts, price, quantity` and optional `side`;
//! `trade_id` as a string or an integer; `ts` as a timestamp of any unit, with or without a
//! time zone (naive means UTC), or as an ISO-8601 string. A batch with any bad row is refused
//! whole, naming the first bad rows, so a file is either loaded entirely or not at all.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, DictionaryArray, Float64Array,
    RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Decimal128Type, Int32Type, Schema, TimeUnit};

use super::error::{BadRow, Error, Result};
use crate::storage::TableKind;

/// How many bad rows an error names.
const REPORTED_BAD_ROWS: usize = 5;

/// Plausibility limits for trades coming in (`[ingest]`): a row outside them is refused like
/// any other bad row, naming it. They keep a typo or a hostile client from writing a trade in
/// year 9999, a price of 5e-324 or a 10 MB exchange name into the lake.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// How far before the time of ingest a trade may be.
    pub max_past_days: u32,
    /// How far after the time of ingest a trade may be (clock skew of the sender).
    pub max_future_secs: u32,
    pub min_price: f64,
    pub max_price: f64,
    pub min_quantity: f64,
    pub max_quantity: f64,
    /// Longest `exchange`, `symbol` and `trade_id`, in bytes.
    pub max_key_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_past_days: 20 * 365,
            max_future_secs: 3600,
            min_price: 1e-12,
            max_price: 1e12,
            min_quantity: 1e-12,
            max_quantity: 1e15,
            max_key_bytes: 128,
        }
    }
}

/// Normalises one input batch with no plausibility limits (trades that are already in a
/// table, test fixtures). See [`normalize_with`].
pub fn normalize(batch: &RecordBatch, row_offset: usize, ingested_at: i64) -> Result<RecordBatch> {
    normalize_with(batch, row_offset, ingested_at, None)
}

/// Normalises one input batch. `row_offset` numbers rows across the batches of one file;
/// `ingested_at` (UTC microseconds) stamps every row and is the "now" of `limits`.
pub fn normalize_with(
    batch: &RecordBatch,
    row_offset: usize,
    ingested_at: i64,
    limits: Option<&Limits>,
) -> Result<RecordBatch> {
    let checked = check(batch, row_offset, ingested_at, limits, false)?;
    if checked.bad_count > 0 {
        return Err(Error::BadRows {
            count: checked.bad_count,
            first: checked.first_bad,
        });
    }
    Ok(checked.rows)
}

/// Rows of one batch that passed the checks, and the ones that did not.
#[derive(Debug)]
pub struct Checked {
    /// Good rows, in the table's schema (all rows when none was bad).
    pub rows: RecordBatch,
    pub bad_count: usize,
    /// The first few bad rows, with their reasons.
    pub first_bad: Vec<BadRow>,
}

/// As [`normalize`], but bad rows are left out and reported instead of refusing the batch:
/// for tables other engines write, whose commits the server cannot refuse. With
/// `keep_dictionaries`, `exchange`, `symbol` and `side` that arrive as `Int32` dictionaries of
/// strings stay dictionaries (the builder reads them so from Parquet): such rows are for
/// computing bars only, not for the table's schema.
pub fn normalize_skipping(
    batch: &RecordBatch,
    row_offset: usize,
    ingested_at: i64,
    keep_dictionaries: bool,
) -> Result<Checked> {
    check(batch, row_offset, ingested_at, None, keep_dictionaries)
}

/// Whether every value is a positive finite number, in one pass the compiler vectorises
/// (an early exit kept it to one value at a time); the rare batch with a bad value is then
/// looked at row by row.
pub fn all_positive_finite(values: &[f64]) -> bool {
    values
        .iter()
        .fold(true, |ok, v| ok & (v.is_finite() & (*v > 0.0)))
}

fn check(
    batch: &RecordBatch,
    row_offset: usize,
    ingested_at: i64,
    limits: Option<&Limits>,
    keep_dictionaries: bool,
) -> Result<Checked> {
    let exchange = key_column(batch, "exchange", keep_dictionaries)?;
    let symbol = key_column(batch, "symbol", keep_dictionaries)?;
    let trade_id = KeyText::Plain(string_column(batch, "trade_id", true)?);
    let ts = timestamp_column(batch)?;
    let price = float_column(batch, "price")?;
    let quantity = float_column(batch, "quantity")?;
    let side = match batch.column_by_name("side") {
        Some(_) => Some(key_column(batch, "side", keep_dictionaries)?.map_text(lowercase_trimmed)?),
        None => None,
    };
    // Rows are looked at one by one only when some column could hold a bad one.
    let positive = |a: &Float64Array| a.null_count() == 0 && all_positive_finite(a.values());
    let clean = limits.is_none()
        && [&exchange, &symbol, &trade_id]
            .iter()
            .all(|k| k.none_missing())
        && ts.null_count() == 0
        && positive(&price)
        && positive(&quantity)
        && side.as_ref().is_none_or(|s| s.only(&["buy", "sell"]));

    let mut bad = Vec::new();
    let mut bad_count = 0;
    let mut bad_rows = Vec::new();
    for row in (0..batch.num_rows()).filter(|_| !clean) {
        let mut reasons = Vec::new();
        for (name, array) in [
            ("exchange", &exchange),
            ("symbol", &symbol),
            ("trade_id", &trade_id),
        ] {
            if array.missing(row) {
                reasons.push(format!("{name} is NULL or empty"));
            }
        }
        if ts.is_null(row) {
            reasons.push("ts is NULL or not a valid timestamp".to_string());
        }
        if price.is_null(row) {
            reasons.push("price is NULL".to_string());
        } else if !price.value(row).is_finite() || price.value(row) <= 0.0 {
            reasons.push(format!(
                "price {} is not a positive finite number",
                price.value(row)
            ));
        }
        if quantity.is_null(row) {
            reasons.push("quantity is NULL".to_string());
        } else if !quantity.value(row).is_finite() || quantity.value(row) <= 0.0 {
            reasons.push(format!(
                "quantity {} is not a positive finite number",
                quantity.value(row)
            ));
        }
        if let Some(limits) = limits {
            implausible(
                limits,
                ingested_at,
                [&exchange, &symbol, &trade_id],
                &ts,
                &price,
                &quantity,
                row,
                &mut reasons,
            );
        }
        if let Some(side) = &side {
            if !side.is_null(row) && !matches!(side.value(row), "buy" | "sell") {
                reasons.push(format!(
                    "side '{}' is not 'buy', 'sell' or NULL",
                    side.value(row)
                ));
            }
        }
        if !reasons.is_empty() {
            bad_rows.push(row);
            bad_count += 1;
            if bad.len() < REPORTED_BAD_ROWS {
                bad.push(BadRow {
                    row: row_offset + row,
                    reason: reasons.join(", "),
                });
            }
        }
    }
    let n = batch.num_rows();
    let side: ArrayRef = match side {
        Some(side) => side.into_array(),
        None => Arc::new(StringArray::new_null(n)),
    };
    let ingested = TimestampMicrosecondArray::from(vec![ingested_at; n]).with_timezone("UTC");
    let columns: Vec<ArrayRef> = vec![
        exchange.into_array(),
        symbol.into_array(),
        trade_id.into_array(),
        Arc::new(ts),
        Arc::new(price),
        Arc::new(quantity),
        side,
        Arc::new(ingested),
    ];
    // Bad rows go before the batch is built: they may hold NULLs the schema forbids.
    let columns = if bad_count > 0 {
        let mut good = vec![true; n];
        for row in bad_rows {
            good[row] = false;
        }
        let keep = BooleanArray::from(good);
        columns
            .iter()
            .map(|c| arrow::compute::filter(c, &keep))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        columns
    };
    let schema = TableKind::Trades.arrow_schema()?;
    let schema = match columns
        .iter()
        .any(|c| matches!(c.data_type(), DataType::Dictionary(..)))
    {
        false => schema,
        true => Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .zip(&columns)
                .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
                .collect::<Vec<_>>(),
        )),
    };
    let rows = RecordBatch::try_new(schema, columns)?;
    Ok(Checked {
        rows,
        bad_count,
        first_bad: bad,
    })
}

/// Sides trimmed and lower-cased. Feeds almost always send them so already: then the array is
/// kept as it is, instead of a new string per row.
fn lowercase_trimmed(side: StringArray) -> StringArray {
    let canonical =
        |v: &str| v.trim().len() == v.len() && !v.bytes().any(|b| b.is_ascii_uppercase());
    if side.iter().flatten().all(canonical) {
        return side;
    }
    side.iter()
        .map(|v| v.map(|v| v.trim().to_ascii_lowercase()))
        .collect()
}

/// Why a row that is valid in form lies outside `limits`, appended to `reasons`.
#[allow(clippy::too_many_arguments)]
fn implausible(
    limits: &Limits,
    now: i64,
    keys: [&KeyText; 3],
    ts: &TimestampMicrosecondArray,
    price: &Float64Array,
    quantity: &Float64Array,
    row: usize,
    reasons: &mut Vec<String>,
) {
    for (name, array) in ["exchange", "symbol", "trade_id"].into_iter().zip(keys) {
        if !array.missing(row) && array.value(row).len() > limits.max_key_bytes {
            reasons.push(format!(
                "{name} is {} bytes long, more than the {} allowed",
                array.value(row).len(),
                limits.max_key_bytes
            ));
        }
    }
    if ts.is_valid(row) {
        let t = ts.value(row);
        let earliest = now.saturating_sub(limits.max_past_days as i64 * 86_400_000_000);
        let latest = now.saturating_add(limits.max_future_secs as i64 * 1_000_000);
        if t < earliest || t > latest {
            let at = |us: i64| {
                chrono::DateTime::from_timestamp_micros(us)
                    .map_or_else(|| us.to_string(), |d| d.to_rfc3339())
            };
            reasons.push(format!(
                "ts {} is outside [{}, {}] (ingest.max_past_days, ingest.max_future_secs)",
                at(t),
                at(earliest),
                at(latest)
            ));
        }
    }
    for (name, array, lo, hi) in [
        ("price", price, limits.min_price, limits.max_price),
        (
            "quantity",
            quantity,
            limits.min_quantity,
            limits.max_quantity,
        ),
    ] {
        // Non-finite and non-positive values are reported by the form checks.
        if array.is_valid(row) && array.value(row).is_finite() && array.value(row) > 0.0 {
            let v = array.value(row);
            if v < lo || v > hi {
                reasons.push(format!(
                    "{name} {v:e} is outside [{lo:e}, {hi:e}] (ingest.min_{name}, ingest.max_{name})"
                ));
            }
        }
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        let found: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        Error::Schema(format!(
            "missing column '{name}' (found: {})",
            found.join(", ")
        ))
    })
}

/// A key column: plain text, or a dictionary of text kept as it arrived, whose values are
/// checked once each instead of once per row.
enum KeyText {
    Plain(StringArray),
    Dict {
        array: DictionaryArray<Int32Type>,
        values: StringArray,
        /// Per dictionary value: NULL or empty.
        missing: Vec<bool>,
    },
}

impl KeyText {
    fn is_null(&self, row: usize) -> bool {
        match self {
            KeyText::Plain(a) => a.is_null(row),
            KeyText::Dict { array, .. } => array.is_null(row),
        }
    }

    fn missing(&self, row: usize) -> bool {
        match self {
            KeyText::Plain(a) => a.is_null(row) || a.value(row).is_empty(),
            KeyText::Dict { array, missing, .. } => {
                array.is_null(row) || missing[array.keys().value(row) as usize]
            }
        }
    }

    /// The value of a row that is not missing.
    fn value(&self, row: usize) -> &str {
        match self {
            KeyText::Plain(a) => a.value(row),
            KeyText::Dict { array, values, .. } => values.value(array.keys().value(row) as usize),
        }
    }

    /// No row is NULL or empty (checked per dictionary value, not per row).
    fn none_missing(&self) -> bool {
        match self {
            KeyText::Plain(a) => a.null_count() == 0 && a.offsets().windows(2).all(|w| w[1] > w[0]),
            KeyText::Dict { array, missing, .. } => {
                array.null_count() == 0 && !missing.iter().any(|m| *m)
            }
        }
    }

    /// Every value that is not NULL is one of `allowed`.
    fn only(&self, allowed: &[&str]) -> bool {
        let values = match self {
            KeyText::Plain(a) => a,
            KeyText::Dict { values, .. } => values,
        };
        values.iter().flatten().all(|v| allowed.contains(&v))
    }

    /// The text rewritten by `f`: a dictionary's values only, once each.
    fn map_text(self, f: impl Fn(StringArray) -> StringArray) -> Result<KeyText> {
        Ok(match self {
            KeyText::Plain(a) => KeyText::Plain(f(a)),
            KeyText::Dict { array, values, .. } => {
                let values = f(values);
                let missing = (0..values.len())
                    .map(|v| values.is_null(v) || values.value(v).is_empty())
                    .collect();
                let array =
                    DictionaryArray::try_new(array.keys().clone(), Arc::new(values.clone()))?;
                KeyText::Dict {
                    array,
                    values,
                    missing,
                }
            }
        })
    }

    fn into_array(self) -> ArrayRef {
        match self {
            KeyText::Plain(a) => Arc::new(a),
            KeyText::Dict { array, .. } => Arc::new(array),
        }
    }
}

/// `name` as text: an `Int32` dictionary of strings is kept as one when `keep_dictionary`.
fn key_column(batch: &RecordBatch, name: &str, keep_dictionary: bool) -> Result<KeyText> {
    let dictionary = column(batch, name)?
        .as_any()
        .downcast_ref::<DictionaryArray<Int32Type>>()
        .filter(|_| keep_dictionary);
    if let Some(array) = dictionary {
        if let Some(values) = array.values().as_any().downcast_ref::<StringArray>() {
            let missing = (0..values.len())
                .map(|v| values.is_null(v) || values.value(v).is_empty())
                .collect();
            return Ok(KeyText::Dict {
                array: array.clone(),
                values: values.clone(),
                missing,
            });
        }
    }
    Ok(KeyText::Plain(string_column(batch, name, false)?))
}

fn string_column(batch: &RecordBatch, name: &str, integers_allowed: bool) -> Result<StringArray> {
    let array = column(batch, name)?;
    let ok = match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, value) => {
            matches!(
                **value,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
        }
        t => integers_allowed && t.is_integer(),
    };
    if !ok {
        let expected = if integers_allowed {
            "a string or an integer"
        } else {
            "a string"
        };
        return Err(Error::Schema(format!(
            "column '{name}' is {}, expected {expected}",
            array.data_type()
        )));
    }
    let cast = cast(array, &DataType::Utf8)?;
    Ok(cast
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8")
        .clone())
}

fn float_column(batch: &RecordBatch, name: &str) -> Result<Float64Array> {
    let array = column(batch, name)?;
    if !array.data_type().is_numeric() {
        return Err(Error::Schema(format!(
            "column '{name}' is {}, expected a number",
            array.data_type()
        )));
    }
    if let DataType::Decimal128(_, scale) = array.data_type() {
        return Ok(decimal_as_f64(
            array.as_primitive::<Decimal128Type>(),
            *scale,
        ));
    }
    let cast = cast(array, &DataType::Float64)?;
    Ok(cast
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("cast to Float64")
        .clone())
}

/// Decimals as floats exactly as arrow's cast makes them: the unscaled integer as a float
/// over ten to the scale.
fn decimal_as_f64(array: &Decimal128Array, scale: i8) -> Float64Array {
    let divisor = 10_f64.powi(scale as i32);
    array.unary(|x| i128_to_f64(x) / divisor)
}

/// `v as f64` (round to nearest, ties to even) without the compiler's software routine for
/// 128-bit integers (`__floattidf`, 2 % of a first attach's CPU: the compiler calls it for
/// every value even behind an `i64` range check, the two arms being equal). Values that fit
/// in `i64` convert in hardware; larger ones keep their top 64 bits, with every lower bit
/// folded into the last one so that rounding still sees them, and scale by a power of two.
#[inline]
pub(crate) fn i128_to_f64(v: i128) -> f64 {
    let low = v as i64;
    if low as i128 == v {
        return low as f64;
    }
    let magnitude = v.unsigned_abs();
    // At least 2^63 here, so the top 64 bits hold bit 63 and the shift is at most 64.
    let zeros = magnitude.leading_zeros();
    let shifted = magnitude << zeros;
    let top = (shifted >> 64) as u64 | ((shifted as u64 != 0) as u64);
    let scaled = top as f64 * f64::from_bits(((1023 + 64 - zeros) as u64) << 52);
    if v < 0 {
        -scaled
    } else {
        scaled
    }
}

/// `ts` as UTC microseconds. Values that cannot be represented become NULL (and are reported
/// as bad rows) rather than failing the whole cast.
fn timestamp_column(batch: &RecordBatch) -> Result<TimestampMicrosecondArray> {
    let array = column(batch, "ts")?;
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let micros = match array.data_type() {
        // A zone only labels the instant; the stored value is already UTC.
        DataType::Timestamp(_, Some(_)) => cast(array, &utc)?,
        // Naive timestamps are taken as UTC: convert the unit, then label.
        DataType::Timestamp(_, None) => {
            cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let options = arrow::compute::CastOptions {
                safe: true,
                ..Default::default()
            };
            arrow::compute::cast_with_options(array, &utc, &options)?
        }
        other => {
            return Err(Error::Schema(format!(
                "column 'ts' is {other}, expected a timestamp or an ISO-8601 string"
            )))
        }
    };
    Ok(micros
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("cast to microsecond timestamps")
        .clone()
        .with_timezone("UTC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampNanosecondArray};
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn positive_finite_values_pass_and_any_other_fails() {
        assert!(all_positive_finite(&[]));
        assert!(all_positive_finite(&[
            1.0,
            f64::MIN_POSITIVE / 2.0,
            f64::MAX
        ]));
        for bad in [0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut values = vec![1.0; 37];
            values[29] = bad;
            assert!(!all_positive_finite(&values), "{bad}");
        }
    }

    #[test]
    fn decimals_become_the_floats_arrows_cast_makes() {
        let mut values: Vec<Option<i128>> = vec![
            None,
            Some(0),
            Some(1),
            Some(-1),
            Some(i64::MAX as i128),
            Some(i64::MIN as i128),
            Some(i64::MAX as i128 + 1),
            Some(i64::MIN as i128 - 1),
            Some(99_999_999_999_999_999_999_999_999_999_999_999),
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            values.push(Some((state >> (state % 40)) as i128));
            values.push(Some(-((state as i128) << (state % 50))));
        }
        for v in values.iter().flatten().copied().chain([
            i128::MIN,
            i128::MAX,
            (1i128 << 64) + (1 << 11), // a tie at 2^64: rounds to even (down)
            (1i128 << 64) + (1 << 11) + 1, // just past the tie: up
            (1i128 << 64) + (3 << 11), // a tie rounding up to even
            -((1i128 << 100) + (1 << 47)), // a tie, negative
            -((1i128 << 100) + (1 << 47) + 1),
            (1i128 << 63),
            -(1i128 << 63),
            -(1i128 << 63) - 1,
        ]) {
            assert_eq!(i128_to_f64(v).to_bits(), (v as f64).to_bits(), "{v}");
        }
        for scale in [0i8, 2, 8, 18, -3] {
            let decimals = Decimal128Array::from(values.clone())
                .with_precision_and_scale(38, scale)
                .unwrap();
            let ours = decimal_as_f64(&decimals, scale);
            let arrows = cast(&decimals, &DataType::Float64).unwrap();
            let arrows = arrows.as_primitive::<arrow::datatypes::Float64Type>();
            assert_eq!(ours.nulls(), arrows.nulls());
            for (a, b) in ours.values().iter().zip(arrows.values()) {
                assert_eq!(a.to_bits(), b.to_bits(), "scale {scale}");
            }
        }
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, a)| a).collect(),
        )
        .unwrap()
    }

    fn strings(v: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    #[test]
    fn implausible_rows_are_refused_by_row() {
        let now = 1_700_000_000_000_000;
        let day = 86_400_000_000i64;
        let long = "x".repeat(200);
        let b = batch(vec![
            (
                "exchange",
                strings(&[
                    Some("k"),
                    Some("k"),
                    Some(long.as_str()),
                    Some("k"),
                    Some("k"),
                ]),
            ),
            ("symbol", strings(&[Some("s"); 5])),
            (
                "trade_id",
                strings(&[Some("1"), Some("2"), Some("3"), Some("4"), Some("5")]),
            ),
            (
                "ts",
                Arc::new(
                    TimestampMicrosecondArray::from(vec![
                        now - day,
                        now + 400 * day,
                        now,
                        now,
                        now,
                    ])
                    .with_timezone("UTC"),
                ),
            ),
            (
                "price",
                Arc::new(Float64Array::from(vec![1.0, 1.0, 1.0, 5e-324, 1e308])),
            ),
            ("quantity", Arc::new(Float64Array::from(vec![1.0; 5]))),
        ]);
        assert!(
            normalize(&b, 0, now).is_ok(),
            "no limits without normalize_with"
        );
        let Error::BadRows { count, first } =
            normalize_with(&b, 10, now, Some(&Limits::default())).unwrap_err()
        else {
            panic!("bad rows expected");
        };
        assert_eq!(count, 4);
        let rows: Vec<usize> = first.iter().map(|r| r.row).collect();
        assert_eq!(rows, [11, 12, 13, 14]);
        assert!(first[0].reason.contains("ts "), "{}", first[0].reason);
        assert!(first[1].reason.contains("200 bytes"), "{}", first[1].reason);
        assert!(
            first[2].reason.contains("price 5e-324"),
            "{}",
            first[2].reason
        );
        assert!(
            first[3].reason.contains("price 1e308"),
            "{}",
            first[3].reason
        );
    }

    fn dictionary(values: &[&str], keys: &[Option<i32>]) -> ArrayRef {
        Arc::new(
            DictionaryArray::try_new(
                arrow::array::Int32Array::from(keys.to_vec()),
                Arc::new(StringArray::from(values.to_vec())),
            )
            .unwrap(),
        )
    }

    #[test]
    fn dictionary_keys_are_kept_for_the_kernel_and_still_checked_row_by_row() {
        let input = |exchange: ArrayRef, side: ArrayRef| {
            batch(vec![
                ("exchange", exchange),
                (
                    "symbol",
                    dictionary(&["BTC-USD"], &[Some(0), Some(0), Some(0)]),
                ),
                ("trade_id", strings(&[Some("1"), Some("2"), Some("3")])),
                (
                    "ts",
                    Arc::new(TimestampMicrosecondArray::from(vec![1, 2, 3])) as ArrayRef,
                ),
                ("price", Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0]))),
                (
                    "quantity",
                    Arc::new(Float64Array::from(vec![1.0, 1.0, 1.0])),
                ),
                ("side", side),
            ])
        };
        let good = input(
            dictionary(&["kraken", "binance"], &[Some(1), Some(0), Some(1)]),
            dictionary(&["BUY", " sell"], &[Some(0), None, Some(1)]),
        );
        let kept = normalize_skipping(&good, 0, 9, true).unwrap();
        assert_eq!(kept.bad_count, 0);
        for (name, data_type) in [("exchange", 0), ("symbol", 1), ("side", 6)] {
            assert!(
                matches!(
                    kept.rows.column(data_type).data_type(),
                    DataType::Dictionary(..)
                ),
                "{name}"
            );
        }
        let side = cast(kept.rows.column(6), &DataType::Utf8).unwrap();
        assert_eq!(
            side.as_any().downcast_ref::<StringArray>().unwrap(),
            &StringArray::from(vec![Some("buy"), None, Some("sell")])
        );
        // Without keeping them, the rows are in the table's own schema.
        let plain = normalize_skipping(&good, 0, 9, false).unwrap();
        assert_eq!(
            plain.rows.schema(),
            TableKind::Trades.arrow_schema().unwrap()
        );
        assert_eq!(plain.rows.num_rows(), 3);

        // A bad value in a dictionary is found at the rows that use it, and only there.
        let bad = input(
            dictionary(&["kraken", ""], &[Some(0), Some(1), None]),
            dictionary(&["buy", "hold"], &[Some(0), Some(0), Some(1)]),
        );
        let checked = normalize_skipping(&bad, 10, 9, true).unwrap();
        assert_eq!(checked.bad_count, 2);
        assert_eq!(checked.rows.num_rows(), 1);
        let rows: Vec<usize> = checked.first_bad.iter().map(|b| b.row).collect();
        assert_eq!(rows, vec![11, 12]);
        assert!(checked.first_bad[1]
            .reason
            .contains("exchange is NULL or empty"));
        assert!(checked.first_bad[1].reason.contains("side 'hold'"));
    }

    #[test]
    fn sides_are_trimmed_and_lowercased_and_kept_when_they_already_are() {
        let mixed = StringArray::from(vec![Some("buy"), None, Some(" Sell ")]);
        assert_eq!(
            lowercase_trimmed(mixed),
            StringArray::from(vec![Some("buy"), None, Some("sell")])
        );
        let canonical = StringArray::from(vec![Some("buy"), None, Some("sell")]);
        let values = canonical.values().as_ptr();
        assert_eq!(lowercase_trimmed(canonical).values().as_ptr(), values);
    }

    #[test]
    fn integer_ids_and_zoned_nanoseconds_are_accepted() {
        let ts = TimestampNanosecondArray::from(vec![1_700_000_000_123_456_789])
            .with_timezone("America/New_York");
        let b = batch(vec![
            ("exchange", strings(&[Some("kraken")])),
            ("symbol", strings(&[Some("BTC-USD")])),
            ("trade_id", Arc::new(Int64Array::from(vec![42]))),
            ("ts", Arc::new(ts)),
            ("price", Arc::new(Float64Array::from(vec![100.5]))),
            ("quantity", Arc::new(Int64Array::from(vec![2]))),
            ("side", strings(&[Some("BUY")])),
        ]);
        let out = normalize(&b, 0, 7).unwrap();
        let ids = out
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(ids.value(0), "42");
        let ts = out
            .column(3)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.value(0), 1_700_000_000_123_456);
        let side = out
            .column(6)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(side.value(0), "buy");
    }

    #[test]
    fn naive_strings_are_utc() {
        let b = batch(vec![
            ("exchange", strings(&[Some("x")])),
            ("symbol", strings(&[Some("s")])),
            ("trade_id", strings(&[Some("1")])),
            ("ts", strings(&[Some("2024-01-01T00:00:01")])),
            ("price", Arc::new(Float64Array::from(vec![1.0]))),
            ("quantity", Arc::new(Float64Array::from(vec![1.0]))),
        ]);
        let out = normalize(&b, 0, 0).unwrap();
        let ts = out
            .column(3)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.value(0), 1_704_067_201_000_000);
        assert!(out.column(6).is_null(0), "missing side is NULL");
    }

    #[test]
    fn bad_rows_are_named_with_their_file_row_numbers() {
        let b = batch(vec![
            (
                "exchange",
                strings(&[Some("x"), None, Some("x"), Some("x")]),
            ),
            ("symbol", strings(&[Some("s"); 4])),
            (
                "trade_id",
                strings(&[Some("1"), Some("2"), Some("3"), Some("4")]),
            ),
            (
                "ts",
                Arc::new(TimestampMicrosecondArray::from(vec![1, 2, 3, 4])),
            ),
            (
                "price",
                Arc::new(Float64Array::from(vec![1.0, 1.0, f64::NAN, 1.0])),
            ),
            (
                "quantity",
                Arc::new(Float64Array::from(vec![1.0, 1.0, 1.0, -1.0])),
            ),
        ]);
        let err = normalize(&b, 100, 0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("3 bad rows"), "{msg}");
        assert!(msg.contains("row 101: exchange is NULL"), "{msg}");
        assert!(msg.contains("row 102: price NaN"), "{msg}");
        assert!(msg.contains("row 103: quantity -1"), "{msg}");
    }

    #[test]
    fn wrong_types_and_missing_columns_are_schema_errors() {
        let b = batch(vec![("exchange", strings(&[Some("x")]))]);
        assert!(normalize(&b, 0, 0)
            .unwrap_err()
            .to_string()
            .contains("missing column 'symbol'"));
    }
}
