//! `candles(...)` for DataFusion: the table function turns its (constant) arguments into a
//! [`Request`]; the table it returns computes the candles when the query runs.
//!
//! Arguments: `exchange, symbol, timeframe, start, end`, then options as `'name=value'`
//! strings or `name => value` (rewritten to the former before planning, see
//! `server::sql`): `fill => 'previous'`, `tz => 'America/New_York'`. `start` and `end`
//! are timestamps or ISO-8601 strings (UTC unless they carry an offset).

use std::any::Any;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionImpl};
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::Expr;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_plan::ExecutionPlan;

use super::{candles, schema, Error, Fill, Request, Windows};
use crate::candles::cache::BarCache;
use crate::timeframe::format_us;

/// The registered table function.
#[derive(Clone)]
pub struct CandlesFunction {
    cache: BarCache,
}

impl std::fmt::Debug for CandlesFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CandlesFunction")
    }
}

impl CandlesFunction {
    pub fn new(cache: BarCache) -> CandlesFunction {
        CandlesFunction { cache }
    }
}

/// Errors a user caused are plan errors (`InvalidArgument`); the rest stay ours.
pub fn to_datafusion(e: Error) -> DataFusionError {
    match e {
        Error::Input(m) => DataFusionError::Plan(m),
        Error::Storage(e @ crate::storage::Error::HistoryExpired { .. }) => {
            DataFusionError::Plan(e.to_string())
        }
        other => DataFusionError::External(Box::new(other)),
    }
}

const USAGE: &str = "candles(exchange, symbol, timeframe, start, end [, fill => 'previous'] \
                     [, tz => 'Area/City'] [, last => N] [, as_of => '<timestamp>'])";

impl TableFunctionImpl for CandlesFunction {
    fn call(&self, args: &[Expr]) -> DfResult<Arc<dyn TableProvider>> {
        arity(args)?;
        // A prepared statement is planned before its parameters are bound: its schema is
        // known, the candles are not.
        if let Some((i, id)) = args
            .iter()
            .enumerate()
            .find_map(|(i, a)| placeholder_in(a).map(|id| (i, id)))
        {
            return Ok(Arc::new(CandlesTable {
                cache: self.cache.clone(),
                request: Err(format!(
                    "candles argument {} is the unbound parameter {id}",
                    i + 1
                )),
            }));
        }
        Ok(Arc::new(CandlesTable {
            cache: self.cache.clone(),
            request: Ok(request(args, self.cache.config().max_windows)?),
        }))
    }
}

/// The first parameter `e` names (`as_of => $1` is `'as_of=' || $1`).
pub(crate) fn placeholder_in(e: &Expr) -> Option<String> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut found = None;
    let _ = e.apply(|x| {
        Ok(match x {
            Expr::Placeholder(p) => {
                found = Some(p.id.clone());
                TreeNodeRecursion::Stop
            }
            _ => TreeNodeRecursion::Continue,
        })
    });
    found
}

/// The request `candles(args)` stands for; every argument must fold to a constant. Shared by
/// the table function and the statements the server answers without planning, so both read
/// arguments (and reject them) the same way.
/// The candle request `args` stand for. A request with gap fill or time-zone windows may span at
/// most `max_windows` windows (`[cache] max_candle_windows`).
pub fn request(args: &[Expr], max_windows: u64) -> DfResult<Request> {
    arity(args)?;
    let simplifier = simplifier();
    let values: Vec<ScalarValue> = args
        .iter()
        .enumerate()
        .map(|(i, a)| constant(&simplifier, i, a))
        .collect::<DfResult<_>>()?;
    let text = |i: usize, what: &str| -> DfResult<String> {
        string(&values[i]).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "candles argument {} ({what}) must be a string, got {}",
                i + 1,
                values[i]
            ))
        })
    };
    let (exchange, symbol, timeframe) = (
        text(0, "exchange")?,
        text(1, "symbol")?,
        text(2, "timeframe")?,
    );
    let start = timestamp(&values[3], "start")?;
    let end = timestamp(&values[4], "end")?;
    let (mut fill, mut tz, mut last, mut as_of) = (Fill::None, None, None, None);
    for (i, _) in values.iter().enumerate().skip(5) {
        let option = text(i, "option 'name=value'")?;
        let (name, value) = option.split_once('=').ok_or_else(|| {
            DataFusionError::Plan(format!(
                "candles option '{option}' is not name=value: {USAGE}"
            ))
        })?;
        match (name.trim(), value.trim()) {
            ("fill", "previous") => fill = Fill::Previous,
            ("fill", "none") => fill = Fill::None,
            ("last", n) => {
                let count: u64 = n.parse().ok().filter(|&c| c > 0).ok_or_else(|| {
                    DataFusionError::Plan(format!(
                        "candles option last must be a positive count, got '{n}'"
                    ))
                })?;
                if count > max_windows {
                    return Err(DataFusionError::ResourcesExhausted(format!(
                        "candles: last => {count} exceeds the limit of {max_windows} candles \
                         per request ([cache] max_candle_windows)"
                    )));
                }
                last = Some(count);
            }
            ("as_of", at) => {
                as_of = Some(
                    crate::timeframe::parse_timestamp(at)
                        .map_err(|e| DataFusionError::Plan(format!("candles option as_of: {e}")))?,
                )
            }
            ("tz", zone) => {
                tz =
                    Some(zone.parse::<chrono_tz::Tz>().map_err(|_| {
                        DataFusionError::Plan(format!("unknown time zone '{zone}'"))
                    })?)
            }
            _ => {
                return Err(DataFusionError::Plan(format!(
                    "unknown candles option '{option}': {USAGE}"
                )))
            }
        }
    }
    if start > end {
        return Err(DataFusionError::Plan(format!(
            "candles start {} is after end {}",
            format_us(start),
            format_us(end)
        )));
    }
    let windows = Windows::parse(&timeframe, tz).map_err(to_datafusion)?;
    // Gap fill makes a candle of every window, and time-zone windows are found by walking the
    // calendar: both cost memory and time per window, so their number is bounded before any
    // is made (one request for 1m candles since year 1 would otherwise take gigabytes).
    if (fill == Fill::Previous || matches!(windows, Windows::Local { .. })) && last.is_none() {
        let n = windows.count_at_most(start, end);
        if n > max_windows {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "candles: {n} windows of {timeframe} from {} to {} exceed the limit of \
                 {max_windows} windows per request with fill or tz ([cache] \
                 max_candle_windows); ask for a shorter range or a wider timeframe",
                format_us(start),
                format_us(end)
            )));
        }
    }
    Ok(Request {
        exchange,
        symbol,
        windows,
        start,
        end,
        fill,
        last,
        as_of,
    })
}

/// A simplifier whose `now()` is the time of this call. The context's default configuration
/// is built once: building it took longer than folding a candle query's arguments.
pub(crate) fn simplifier() -> ExprSimplifier {
    static BASE: std::sync::OnceLock<SimplifyContext> = std::sync::OnceLock::new();
    ExprSimplifier::new(
        BASE.get_or_init(SimplifyContext::default)
            .clone()
            .with_query_execution_start_time(Some(chrono::Utc::now())),
    )
}

fn arity(args: &[Expr]) -> DfResult<()> {
    if args.len() < 5 {
        return Err(DataFusionError::Plan(format!(
            "candles takes at least 5 arguments, got {}: {USAGE}",
            args.len()
        )));
    }
    Ok(())
}

/// Folds an argument to a constant (`now() - interval '1 day'`, casts, ...).
pub(crate) fn constant(
    simplifier: &ExprSimplifier,
    i: usize,
    expr: &Expr,
) -> DfResult<ScalarValue> {
    if let Expr::Literal(v, _) = expr {
        return Ok(v.clone());
    }
    match simplifier.simplify(expr.clone())? {
        Expr::Literal(v, _) => Ok(v),
        other => Err(DataFusionError::Plan(format!(
            "candles argument {} must be a constant, got {other}",
            i + 1
        ))),
    }
}

/// A string literal's text (any of Arrow's string types).
pub(crate) fn string(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

/// A timestamp argument in UTC microseconds.
pub(crate) fn timestamp(v: &ScalarValue, what: &str) -> DfResult<i64> {
    let micros = match v {
        ScalarValue::TimestampMicrosecond(Some(t), _) => Some(*t),
        ScalarValue::TimestampNanosecond(Some(t), _) => Some(t.div_euclid(1_000)),
        ScalarValue::TimestampMillisecond(Some(t), _) => t.checked_mul(1_000),
        ScalarValue::TimestampSecond(Some(t), _) => t.checked_mul(1_000_000),
        other => string(other).and_then(|s| parse_time(&s)),
    };
    micros.ok_or_else(|| {
        DataFusionError::Plan(format!(
            "candles {what} must be a timestamp or an ISO-8601 string, got {v}"
        ))
    })
}

/// `2024-01-01T00:00:00Z`, `2024-01-01 00:00:00`, `2024-01-01` (UTC unless an offset is given).
fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
}

/// One planned `candles(...)` call.
#[derive(Clone)]
pub struct CandlesTable {
    cache: BarCache,
    /// The request, or why there is none yet (unbound parameters).
    pub request: Result<Request, String>,
}

impl std::fmt::Debug for CandlesTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandlesTable")
            .field("request", &self.request)
            .finish()
    }
}

#[async_trait]
impl TableProvider for CandlesTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let request = self
            .request
            .as_ref()
            .map_err(|m| DataFusionError::Plan(m.clone()))?;
        let batch = candles(&self.cache, request).await.map_err(to_datafusion)?;
        // The assembled answer (rolled up, gap-filled) counts against the query memory pool
        // like any operator's buffers: past `query_memory_limit_mb` it is refused.
        let reservation = datafusion::execution::memory_pool::MemoryConsumer::new("candles()")
            .register(&state.runtime_env().memory_pool);
        reservation.try_grow(batch.get_array_memory_size())?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            schema(),
            projection.cloned(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_utc_unless_offset() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(parse_time("1970-01-01 00:01:00"), Some(60_000_000));
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000_000));
        assert_eq!(parse_time("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_time("yesterday"), None);
    }
}
