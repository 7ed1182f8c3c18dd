//! Functions that build one large value from small arguments, guarded by the query memory
//! pool.
//!
//! DataFusion counts what operators hold (sorts, joins, aggregations) against the pool, but a
//! scalar function allocates its result unasked: `repeat('x', 2000000000)` took a server with a
//! 1 GB pool to 7.7 GB. Each function here is the built-in one behind a check: before it
//! runs, the bytes its result can take are computed from its arguments (exactly for strings,
//! as an upper bound for lists) and reserved from the pool for the call, so a value past what
//! the pool has left fails its query alone with `ResourcesExhausted`, before any allocation.
//!
//! Every other scalar function can at most multiply its input by a small factor (a split
//! string's offsets, a hex encoding): its result is measured once built and counted against
//! the pool the same way, so no function's value escapes the pool; only these are refused
//! before they allocate. `get_field`, `log` and `power` stay bare: DataFusion's planner
//! recognises them by their type, and their results are fixed-width.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, ExprSchema, Result, ScalarValue};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// How a function's result grows with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: len(text) * n.
    Repeat,
    /// `lpad` / `rpad(text, n [, fill])`: n characters of up to 4 bytes.
    Pad,
    /// `concat(a, b, ...)`: the sum of the lengths.
    Concat,
    /// `concat_ws(sep, a, b, ...)`: the sum, plus a separator between each two.
    ConcatWs,
    /// `replace(text, from, to)`: every occurrence of `from` may become `to`.
    Replace,
    /// `array_repeat(value, n)`: n elements.
    ArrayRepeat,
    /// `range` / `generate_series(start, stop [, step])`, or `(stop)`: |stop - start| / step
    /// elements.
    Range,
    /// `array_resize(list, n [, value])`: n elements.
    ArrayResize,
    /// `regexp_replace(text, pattern, to [, flags])`: an empty match at every position.
    RegexpReplace,
}

/// The guarded functions by DataFusion's name (their aliases come along). `generate_series` is
/// `range` with its end included: the same bound holds.
const GUARDED: [(&str, Growth); 11] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("concat", Growth::Concat),
    ("concat_ws", Growth::ConcatWs),
    ("replace", Growth::Replace),
    ("array_repeat", Growth::ArrayRepeat),
    ("range", Growth::Range),
    ("generate_series", Growth::Range),
    ("array_resize", Growth::ArrayResize),
    ("regexp_replace", Growth::RegexpReplace),
];

/// Functions DataFusion recognises by their implementation's type: wrapping would hide it.
const BARE: [&str; 3] = ["get_field", "log", "power"];

/// Bytes a list element is counted as (a 64-bit value; a string element adds its length).
const ELEMENT_BYTES: i128 = 8;

/// Replaces the session's built-in amplifying functions by guarded ones drawing on `pool`.
pub fn register(ctx: &SessionContext, pool: &Arc<dyn MemoryPool>) {
    let state = ctx.state();
    let functions = state.scalar_functions();
    let guarded: Vec<ScalarUDF> = functions
        .iter()
        .filter(|(name, udf)| !BARE.contains(&name.as_str()) && udf.name() == name.as_str())
        .map(|(name, udf)| {
            let growth = GUARDED
                .iter()
                .find(|(guarded, _)| guarded == name)
                .map(|(_, growth)| *growth);
            ScalarUDF::new_from_impl(Bounded {
                inner: Arc::clone(udf.inner()),
                growth,
                pool: Arc::clone(pool),
            })
        })
        .collect();
    for udf in guarded {
        ctx.register_udf(udf);
    }
}

struct Bounded {
    inner: Arc<dyn ScalarUDFImpl>,
    /// How the result grows with the arguments; `None`: measured once built.
    growth: Option<Growth>,
    pool: Arc<dyn MemoryPool>,
}

impl std::fmt::Debug for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounded")
            .field("inner", &self.inner.name())
            .field("growth", &self.growth)
            .finish()
    }
}

// One guarded function per name in a session: the name and growth identify it.
impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner.name() == other.inner.name() && self.growth == other.growth
    }
}

impl Eq for Bounded {}

impl std::hash::Hash for Bounded {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
        self.growth.hash(state);
    }
}

impl ScalarUDFImpl for Bounded {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[allow(deprecated)]
        self.inner.display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[allow(deprecated)]
        self.inner.is_nullable(args, schema)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let reservation =
            MemoryConsumer::new(format!("{}()", self.inner.name())).register(&self.pool);
        let reserve = |bytes: i128, verb: &str| {
            reservation
                .try_grow(usize::try_from(bytes).unwrap_or(usize::MAX))
                .map_err(|_| {
                    DataFusionError::ResourcesExhausted(format!(
                        "{}() {verb} {} MB, more than the query memory pool has left \
                         ([server] query_memory_limit_mb, {} MB in all)",
                        self.inner.name(),
                        bytes >> 20,
                        pool_mb(&self.pool)
                    ))
                })
        };
        let Some(growth) = self.growth else {
            let result = self.inner.invoke_with_args(args)?;
            let bytes = match &result {
                ColumnarValue::Array(array) => array.get_array_memory_size(),
                ColumnarValue::Scalar(value) => value.size(),
            };
            reserve(bytes as i128, "built")?;
            return Ok(result);
        };
        reserve(growth.bytes(&args.args, args.number_rows)?, "would build")?;
        // Held while the result is built; the rows it makes are then the caller's.
        self.inner.invoke_with_args(args)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

fn pool_mb(pool: &Arc<dyn MemoryPool>) -> String {
    match pool.memory_limit() {
        datafusion::execution::memory_pool::MemoryLimit::Finite(b) => (b >> 20).to_string(),
        _ => "no limit".to_string(),
    }
}

impl Growth {
    /// The bytes a call's result can take, summed over its rows.
    fn bytes(self, args: &[ColumnarValue], rows: usize) -> Result<i128> {
        let arg = |i: usize| args.get(i);
        let lengths = |i: usize| arg(i).map_or(Ok(vec![0; rows]), |a| lengths(a, rows));
        let ints = |i: usize| arg(i).map_or(Ok(vec![0; rows]), |a| integers(a, rows));
        let per_row: Vec<i128> = match self {
            Growth::Repeat => {
                let (text, n) = (lengths(0)?, ints(1)?);
                zip(&text, &n, |l, n| l * n.max(0))
            }
            Growth::Pad => ints(1)?.iter().map(|n| n.max(&0) * 4).collect(),
            Growth::Concat | Growth::ConcatWs => {
                let mut sum = vec![0; rows];
                for i in 0..args.len() {
                    for (s, l) in sum.iter_mut().zip(lengths(i)?) {
                        *s += l;
                    }
                }
                if self == Growth::ConcatWs {
                    let separators = args.len().saturating_sub(2) as i128;
                    for (s, l) in sum.iter_mut().zip(lengths(0)?) {
                        *s += l * (separators - 1).max(0);
                    }
                }
                sum
            }
            Growth::Replace => {
                let (text, from, to) = (lengths(0)?, lengths(1)?, lengths(2)?);
                (0..rows)
                    .map(|r| text[r] + text[r] / from[r].max(1) * to[r])
                    .collect()
            }
            Growth::ArrayRepeat => {
                let (value, n) = (lengths(0)?, ints(1)?);
                zip(&value, &n, |l, n| (l + ELEMENT_BYTES) * n.max(0))
            }
            Growth::ArrayResize => ints(1)?.iter().map(|n| n.max(&0) * ELEMENT_BYTES).collect(),
            Growth::RegexpReplace => {
                let (text, to) = (lengths(0)?, lengths(2)?);
                zip(&text, &to, |l, to| l + (l + 1) * to)
            }
            Growth::Range => {
                let (start, stop, step) = match args.len() {
                    1 => (vec![0; rows], ints(0)?, vec![1; rows]),
                    2 => (ints(0)?, ints(1)?, vec![1; rows]),
                    _ => (ints(0)?, ints(1)?, ints(2)?),
                };
                (0..rows)
                    .map(|r| {
                        let span = (stop[r] - start[r]).abs();
                        (span / step[r].abs().max(1) + 1) * ELEMENT_BYTES
                    })
                    .collect()
            }
        };
        Ok(per_row.iter().fold(0i128, |a, b| a.saturating_add(*b)))
    }
}

fn zip(a: &[i128], b: &[i128], f: impl Fn(i128, i128) -> i128) -> Vec<i128> {
    a.iter().zip(b).map(|(a, b)| f(*a, *b)).collect()
}

/// Byte length of a string or binary argument in each row (0 for NULL and other types).
fn lengths(arg: &ColumnarValue, rows: usize) -> Result<Vec<i128>> {
    match arg {
        ColumnarValue::Scalar(s) => {
            let len = match s {
                ScalarValue::Utf8(Some(v))
                | ScalarValue::LargeUtf8(Some(v))
                | ScalarValue::Utf8View(Some(v)) => v.len(),
                ScalarValue::Binary(Some(v))
                | ScalarValue::LargeBinary(Some(v))
                | ScalarValue::BinaryView(Some(v)) => v.len(),
                _ => 0,
            };
            Ok(vec![len as i128; rows])
        }
        ColumnarValue::Array(array) => {
            let known = matches!(
                array.data_type(),
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Binary
                    | DataType::LargeBinary
                    | DataType::BinaryView
            );
            if !known {
                return Ok(vec![0; array.len()]);
            }
            let lengths = arrow::compute::kernels::length::length(array)?;
            Ok(as_i128(&arrow::compute::cast(&lengths, &DataType::Int64)?))
        }
    }
}

/// An integer argument in each row (0 for NULL and what does not cast).
fn integers(arg: &ColumnarValue, rows: usize) -> Result<Vec<i128>> {
    match arg {
        ColumnarValue::Scalar(s) => {
            let value = match s.cast_to(&DataType::Int64) {
                Ok(ScalarValue::Int64(Some(v))) => i128::from(v),
                _ => 0,
            };
            Ok(vec![value; rows])
        }
        ColumnarValue::Array(array) => {
            let Ok(values) = arrow::compute::cast(array, &DataType::Int64) else {
                return Ok(vec![0; array.len()]);
            };
            Ok(as_i128(&values))
        }
    }
}

/// The values of an Int64 array, NULL as 0.
fn as_i128(values: &arrow::array::ArrayRef) -> Vec<i128> {
    let values = values.as_primitive::<Int64Type>();
    (0..values.len())
        .map(|i| {
            if values.is_null(i) {
                0
            } else {
                i128::from(values.value(i))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())))
    }

    fn int(v: i64) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(v)))
    }

    #[test]
    fn results_are_bounded_from_the_arguments() {
        assert_eq!(
            Growth::Repeat.bytes(&[text("ab"), int(1000)], 3).unwrap(),
            6000
        );
        assert_eq!(Growth::Pad.bytes(&[text("ab"), int(10)], 1).unwrap(), 40);
        assert_eq!(
            Growth::Concat.bytes(&[text("ab"), text("cde")], 2).unwrap(),
            10
        );
        assert_eq!(
            Growth::ConcatWs
                .bytes(&[text(","), text("ab"), text("cd"), text("e")], 1)
                .unwrap(),
            1 + 5 + 1
        );
        assert_eq!(
            Growth::Replace
                .bytes(&[text("aaaa"), text("a"), text("xyz")], 1)
                .unwrap(),
            4 + 4 * 3
        );
        assert_eq!(
            Growth::RegexpReplace
                .bytes(&[text("abc"), text(""), text("xy")], 1)
                .unwrap(),
            3 + 4 * 2
        );
        assert_eq!(
            Growth::Range
                .bytes(&[int(1), int(100), int(10)], 1)
                .unwrap(),
            10 * ELEMENT_BYTES
        );
        // A column: each row's own length.
        let column = ColumnarValue::Array(Arc::new(arrow::array::StringArray::from(vec![
            Some("a"),
            None,
            Some("abc"),
        ])));
        assert_eq!(Growth::Repeat.bytes(&[column, int(2)], 3).unwrap(), 8);
        // Negative counts make nothing.
        assert_eq!(Growth::Repeat.bytes(&[text("ab"), int(-5)], 1).unwrap(), 0);
    }
}
