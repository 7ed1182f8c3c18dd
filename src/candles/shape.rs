//! Which statements are candle reads, and what they ask for.
//!
//! Charts, bots and dashboards send a handful of shapes over and over. Planning one with
//! DataFusion (analyse, optimise, build a physical plan, twice per query: for the schema in
//! GetFlightInfo and again in DoGet) costs more than computing the answer from the cache. A
//! statement of one of these shapes is recognised once and answered by [`super::serve`]:
//!
//! ```sql
//! SELECT <* | columns [AS alias]> FROM candles(<constant arguments>)
//!   [ORDER BY window_start [ASC | DESC]] [LIMIT n]
//! SELECT <* | columns [AS alias]> FROM [[ohlcv.]market.]ohlcv_<tf>
//!   WHERE exchange = <constant> AND symbol = <constant>
//!     [AND window_start { >= | > | <= | < } <constant>] [AND window_start BETWEEN a AND b]
//!   [ORDER BY window_start [ASC | DESC]] [LIMIT n]
//! ```
//!
//! A constant is anything that folds to a literal: `now() - interval '500 minutes'`, casts,
//! `date_trunc(...)`, bound parameters (substituted before this runs). Arguments are folded
//! with DataFusion's own planner and simplifier, and bounds are cast to the column's type with
//! Arrow's cast, so the answer is the one DataFusion's plan would give. Anything else in the
//! statement (another clause, a join, an expression in the projection, OFFSET, NULLS FIRST)
//! shows in its text, and the statement is planned as usual.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionState;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::Expr as DfExpr;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, ExprWithAlias, FunctionArg, FunctionArgExpr, Ident, LimitClause,
    ObjectName, OrderByKind, Query, SelectItem, SetExpr, Statement, TableFactor,
    WildcardAdditionalOptions,
};

use super::{Fill, Request};
use crate::storage::{TableKind, TimeRange};
use crate::timeframe::Timeframe;

/// Where a candle read's rows come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `candles(args)`: any timeframe, live bars, gap fill.
    Function(Vec<DfExpr>),
    /// A stored bar table, one series, an optional `window_start` range.
    Table {
        timeframe: Timeframe,
        exchange: Box<DfExpr>,
        symbol: Box<DfExpr>,
        bounds: Vec<(Bound, DfExpr)>,
    },
}

/// One side of a `window_start` comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    AtLeast,
    Above,
    AtMost,
    Below,
}

/// A recognised candle read, before its constants are folded.
#[derive(Debug, Clone)]
pub struct Shape {
    pub source: Source,
    /// Indices into the source's columns, in output order; `None` is `*`.
    pub projection: Option<Vec<usize>>,
    /// The answer's schema (projected, aliases applied).
    pub schema: SchemaRef,
    /// `ORDER BY window_start DESC`.
    pub descending: bool,
    pub limit: Option<usize>,
}

/// What a shape asks for at one moment: its constants folded.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    Candles(Request),
    Bars {
        timeframe: Timeframe,
        exchange: String,
        symbol: String,
        range: TimeRange,
    },
}

impl Read {
    /// The windows the answer covers, as `[first, last)` window starts: two reads of one shape
    /// with the same windows at one cache generation have the same answer, however their
    /// `now()` moved (`window_start >= now() - interval '1 hour'` asks for the same bars
    /// for a minute).
    pub fn windows(&self) -> (i64, i64) {
        match self {
            Read::Candles(request) => request.span(),
            Read::Bars {
                timeframe, range, ..
            } => {
                let ceil = |t: i64| {
                    let start = timeframe.window_start(t);
                    if start == t {
                        t
                    } else {
                        start.saturating_add(timeframe.micros())
                    }
                };
                (
                    range.start.map_or(i64::MIN, ceil),
                    range.end.map_or(i64::MAX, ceil),
                )
            }
        }
    }

    /// The stored timeframe the answer comes from (`None`: no window in range).
    pub fn base(&self) -> Option<Timeframe> {
        match self {
            Read::Candles(request) => request.base(),
            Read::Bars { timeframe, .. } => Some(*timeframe),
        }
    }
}

impl Shape {
    /// Folds the shape's constants (`now()` is the time of this call).
    pub fn resolve(&self, max_windows: u64) -> DfResult<Read> {
        match &self.source {
            Source::Function(args) => {
                let mut request = super::function::request(args, max_windows)?;
                // The latest n windows in ascending order, then reversed: the same rows.
                if let (true, Some(n)) = (self.descending, self.limit) {
                    let n = n as u64;
                    request.last = Some(request.last.map_or(n, |l| l.min(n)));
                }
                Ok(Read::Candles(request))
            }
            Source::Table {
                timeframe,
                exchange,
                symbol,
                bounds,
            } => {
                let simplifier = super::function::simplifier();
                // Compared as the string column compares them: cast to text.
                let text = |e: &DfExpr| -> DfResult<Option<String>> {
                    let v = fold(&simplifier, e)?.cast_to(&DataType::Utf8)?;
                    Ok(super::function::string(&v))
                };
                let (exchange, symbol) = (text(exchange)?, text(symbol)?);
                // `= NULL` and `>= NULL` hold for no row.
                let nothing = TimeRange::new(Some(i64::MAX), Some(i64::MIN));
                let mut range = if exchange.is_none() || symbol.is_none() {
                    nothing
                } else {
                    TimeRange::ALL
                };
                for (bound, e) in bounds {
                    let v = fold(&simplifier, e)?.cast_to(&window_start_type())?;
                    let ScalarValue::TimestampMicrosecond(Some(t), _) = v else {
                        range = nothing;
                        continue;
                    };
                    let (start, end) = match bound {
                        Bound::AtLeast => (Some(t), None),
                        Bound::Above => (t.checked_add(1), None),
                        Bound::AtMost => (None, t.checked_add(1)),
                        Bound::Below => (None, Some(t)),
                    };
                    range.start = range.start.max(start);
                    if let Some(end) = end {
                        range.end = Some(range.end.map_or(end, |e| e.min(end)));
                    }
                }
                Ok(Read::Bars {
                    timeframe: *timeframe,
                    exchange: exchange.unwrap_or_default(),
                    symbol: symbol.unwrap_or_default(),
                    range,
                })
            }
        }
    }

    /// Whether the answer may be kept for a cache generation and the read's windows: it
    /// depends on nothing else unless it is gap-filled (gap fill runs up to now).
    pub fn keeps(&self, read: &Read) -> bool {
        match read {
            // A past view is read on each request (it is not a cache generation).
            Read::Candles(request) => request.fill == Fill::None && request.as_of.is_none(),
            Read::Bars { .. } => true,
        }
    }
}

/// `window_start`'s type in every bar table.
fn window_start_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn fold(simplifier: &ExprSimplifier, e: &DfExpr) -> DfResult<ScalarValue> {
    match simplifier.simplify(e.clone())? {
        DfExpr::Literal(v, _) => Ok(v),
        other => Err(DataFusionError::Plan(format!("{other} is not a constant"))),
    }
}

/// The candle read `statement` stands for, if it has one of the shapes above. `state` plans
/// the constant expressions (its functions, its dialect); `catalog` and `namespace` name the
/// bar tables.
pub fn recognise(
    statement: &Statement,
    state: &SessionState,
    catalog: &str,
    namespace: &str,
) -> Option<Shape> {
    let Statement::Query(query) = statement else {
        return None;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [from] = select.from.as_slice() else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    let relation = &from.relation;
    let TableFactor::Table {
        name,
        args,
        alias: None,
        ..
    } = relation
    else {
        return None;
    };
    // Typed as DataFusion's planner types table-function arguments; folded per run.
    let coercer = ExprSimplifier::new(
        SimplifyContext::default().with_config_options(Arc::clone(state.config_options())),
    );
    let expr = |e: &Expr| -> Option<DfExpr> {
        let planned = state
            .create_logical_expr_from_sql_expr(
                ExprWithAlias {
                    expr: e.clone(),
                    alias: None,
                },
                &DFSchema::empty(),
            )
            .ok()?;
        // Unbound parameters are the planner's to report.
        let unbound = planned
            .exists(|e| Ok(matches!(e, DfExpr::Placeholder(_))))
            .unwrap_or(true);
        (!unbound).then(|| coercer.coerce(planned, &DFSchema::empty()).ok())?
    };
    let (source, columns) = match args {
        Some(args) => {
            if !names(name, &[], "candles") || select.selection.is_some() {
                return None;
            }
            let values = args
                .args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => expr(e),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            (Source::Function(values), super::schema())
        }
        None => {
            let timeframe = Timeframe::ALL
                .into_iter()
                .find(|tf| names(name, &[catalog, namespace], &TableKind::Bars(*tf).name()))?;
            let mut filters = Filters::default();
            filters.read(select.selection.as_ref()?, &expr)?;
            let source = Source::Table {
                timeframe,
                exchange: Box::new(filters.exchange?),
                symbol: Box::new(filters.symbol?),
                bounds: filters.bounds,
            };
            (source, TableKind::Bars(timeframe).arrow_schema().ok()?)
        }
    };
    let (projection, schema) = projection(&select.projection, &columns)?;
    let descending = match &query.order_by {
        None => false,
        Some(order) => {
            let OrderByKind::Expressions(exprs) = &order.kind else {
                return None;
            };
            let [by] = exprs.as_slice() else {
                return None;
            };
            if !column(&by.expr, "window_start") || by.options.nulls_first.is_some() {
                return None;
            }
            by.options.asc == Some(false)
        }
    };
    let limit = match &query.limit_clause {
        None => None,
        Some(LimitClause::LimitOffset {
            limit: Some(n),
            offset: None,
            limit_by,
        }) if limit_by.is_empty() => Some(count(n)?),
        Some(_) => return None,
    };
    // Whatever else the statement says (DISTINCT, GROUP BY, a CTE, OFFSET, hints...) is left
    // in its text once the parts read above are taken out.
    let mut rest = Query::clone(query);
    rest.order_by = None;
    rest.limit_clause = None;
    if let SetExpr::Select(select) = rest.body.as_mut() {
        select.selection = None;
        select.projection = vec![SelectItem::Wildcard(WildcardAdditionalOptions::default())];
    }
    if rest.to_string() != format!("SELECT * FROM {relation}") {
        return None;
    }
    Some(Shape {
        source,
        projection,
        schema,
        descending,
        limit,
    })
}

/// Whether `name` is `table`, optionally qualified by `qualifiers` (innermost last).
fn names(name: &ObjectName, qualifiers: &[&str], table: &str) -> bool {
    let parts: Vec<&Ident> = name.0.iter().filter_map(|p| p.as_ident()).collect();
    if parts.len() != name.0.len() || parts.is_empty() || parts.len() > qualifiers.len() + 1 {
        return false;
    }
    let wanted = qualifiers[qualifiers.len() + 1 - parts.len()..]
        .iter()
        .copied()
        .chain([table]);
    parts.iter().zip(wanted).all(|(p, w)| ident_is(p, w))
}

/// An identifier naming `name`: unquoted ones are case-insensitive, as DataFusion normalises.
fn ident_is(ident: &Ident, name: &str) -> bool {
    match ident.quote_style {
        None => ident.value.eq_ignore_ascii_case(name),
        Some(_) => ident.value == name,
    }
}

fn column(e: &Expr, name: &str) -> bool {
    matches!(e, Expr::Identifier(i) if ident_is(i, name))
}

/// The column an identifier names in `schema`.
fn column_index(e: &Expr, schema: &Schema) -> Option<usize> {
    let Expr::Identifier(ident) = e else {
        return None;
    };
    schema
        .fields()
        .iter()
        .position(|f| ident_is(ident, f.name()))
}

/// `*` or plain columns (with aliases): their indices and the answer's schema.
fn projection(items: &[SelectItem], schema: &SchemaRef) -> Option<(Option<Vec<usize>>, SchemaRef)> {
    if let [SelectItem::Wildcard(options)] = items {
        return (*options == WildcardAdditionalOptions::default())
            .then(|| (None, Arc::clone(schema)));
    }
    let mut indices = Vec::with_capacity(items.len());
    let mut fields: Vec<Field> = Vec::with_capacity(items.len());
    for item in items {
        let (index, name) = match item {
            SelectItem::UnnamedExpr(e) => {
                let i = column_index(e, schema)?;
                (i, schema.field(i).name().clone())
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                let name = match alias.quote_style {
                    None => alias.value.to_ascii_lowercase(),
                    Some(_) => alias.value.clone(),
                };
                (column_index(expr, schema)?, name)
            }
            _ => return None,
        };
        // DataFusion refuses two outputs of one name; let it say so.
        if fields.iter().any(|f| f.name() == &name) {
            return None;
        }
        indices.push(index);
        fields.push(schema.field(index).clone().with_name(name));
    }
    Some((Some(indices), Arc::new(Schema::new(fields))))
}

/// A `LIMIT` count: a non-negative integer literal.
fn count(e: &Expr) -> Option<usize> {
    let Expr::Value(v) = e else {
        return None;
    };
    match &v.value {
        datafusion::sql::sqlparser::ast::Value::Number(n, _) => n.parse().ok(),
        _ => None,
    }
}

/// The series and time range a `WHERE` clause names: only `AND`s of the comparisons below.
#[derive(Default)]
struct Filters {
    exchange: Option<DfExpr>,
    symbol: Option<DfExpr>,
    bounds: Vec<(Bound, DfExpr)>,
}

impl Filters {
    fn read(&mut self, e: &Expr, expr: &impl Fn(&Expr) -> Option<DfExpr>) -> Option<()> {
        match e {
            Expr::Nested(inner) => self.read(inner, expr),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                self.read(left, expr)?;
                self.read(right, expr)
            }
            Expr::Between {
                expr: c,
                negated: false,
                low,
                high,
            } if column(c, "window_start") => {
                self.bounds.push((Bound::AtLeast, expr(low)?));
                self.bounds.push((Bound::AtMost, expr(high)?));
                Some(())
            }
            Expr::BinaryOp { left, op, right } => {
                // `column op constant`, or `constant op column` read the other way round.
                let (name, op, value) = match (left.as_ref(), right.as_ref()) {
                    (Expr::Identifier(c), v) => (c, op.clone(), v),
                    (v, Expr::Identifier(c)) => (c, flipped(op)?, v),
                    _ => return None,
                };
                let value = expr(value)?;
                let slot = if ident_is(name, "exchange") {
                    &mut self.exchange
                } else if ident_is(name, "symbol") {
                    &mut self.symbol
                } else if ident_is(name, "window_start") {
                    let bound = match op {
                        BinaryOperator::GtEq => Bound::AtLeast,
                        BinaryOperator::Gt => Bound::Above,
                        BinaryOperator::LtEq => Bound::AtMost,
                        BinaryOperator::Lt => Bound::Below,
                        _ => return None,
                    };
                    self.bounds.push((bound, value));
                    return Some(());
                } else {
                    return None;
                };
                // One equality per key column; a second one is left to the planner.
                if op != BinaryOperator::Eq || slot.is_some() {
                    return None;
                }
                *slot = Some(value);
                Some(())
            }
            _ => None,
        }
    }
}

/// `a op b` as `b op' a`.
fn flipped(op: &BinaryOperator) -> Option<BinaryOperator> {
    Some(match op {
        BinaryOperator::Eq => BinaryOperator::Eq,
        BinaryOperator::Gt => BinaryOperator::Lt,
        BinaryOperator::GtEq => BinaryOperator::LtEq,
        BinaryOperator::Lt => BinaryOperator::Gt,
        BinaryOperator::LtEq => BinaryOperator::GtEq,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn shape(sql: &str) -> Option<Shape> {
        let statement = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
        recognise(
            &statement,
            &SessionContext::new().state(),
            "ohlcv",
            "market",
        )
    }

    #[test]
    fn candle_reads_of_every_shape_are_recognised() {
        let call = "candles('coinbase', 'BTC-USD', '1m', '2024-01-01', '2024-01-02')";
        let series = "exchange = 'coinbase' and symbol = 'BTC-USD'";
        for sql in [
            format!("select * from {call}"),
            format!("SELECT * FROM CANDLES{}", &call[7..]),
            format!("select * from {call};"),
            "select * from candles('a', 'b', '1m', '2024-01-01', '2024-01-02', 'fill=previous')"
                .into(),
            format!("select open, close as c from {call}"),
            format!("select * from {call} order by window_start desc limit 500"),
            format!("select * from {call} limit 5"),
            "select * from candles('a', 'b', '1m', now() - interval '1 day', now())".into(),
            "select * from candles('a', 'b', '1m', cast('2024-01-01' as timestamp), \
             date_trunc('day', now()))"
                .into(),
            format!("select * from ohlcv_1m where {series}"),
            format!("select * from market.ohlcv_5m where {series} order by window_start"),
            "select * from ohlcv.market.ohlcv_1d where symbol = 'x' and 'y' = exchange".into(),
            format!(
                "select window_start, close from ohlcv_1h where {series} and window_start >= \
                 now() - interval '500 minutes' and window_start < now() order by \
                 window_start desc limit 500"
            ),
            format!(
                "select * from ohlcv_1m where ({series}) and window_start between \
                 '2024-01-01T00:00:00Z' and '2024-01-02T00:00:00Z'"
            ),
        ] {
            assert!(shape(&sql).is_some(), "{sql}");
        }
    }

    #[test]
    fn anything_else_is_planned() {
        let call = "candles('coinbase', 'BTC-USD', '1m', '2024-01-01', '2024-01-02')";
        let series = "exchange = 'coinbase' and symbol = 'BTC-USD'";
        for sql in [
            format!("select open + 1 from {call}"),
            format!("select * from {call} where close > 1"),
            format!("select * from {call} order by close"),
            format!("select * from {call} order by window_start nulls first"),
            format!("select * from {call} limit 5 offset 2"),
            format!("select * from {call} as c"),
            format!("select distinct * from {call}"),
            format!("select open, open from {call}"),
            format!("select nope from {call}"),
            format!("with x as (select 1) select * from {call}"),
            format!("select * from {call}, ohlcv_1m"),
            format!("select * from {call} union all select * from {call}"),
            "select * from candles('a', 'b', '1m', $1, $2)".into(),
            "select * from \"Candles\"('a', 'b', '1m', '2024-01-01', '2024-01-02')".into(),
            "select * from market.candles('a', 'b', '1m', '2024-01-01', '2024-01-02')".into(),
            "select * from ohlcv_1m".into(),
            "select * from ohlcv_1m where exchange = 'a'".into(),
            format!("select * from ohlcv_1m where {series} or symbol = 'c'"),
            format!("select * from ohlcv_1m where {series} and close > 1"),
            format!("select * from ohlcv_1m where {series} and symbol = 'c'"),
            format!("select * from ohlcv_1m where {series} and window_start <> now()"),
            format!("select * from ohlcv_1m where {series} group by 1"),
            format!("select * from other.ohlcv_1m where {series}"),
            format!("select * from ohlcv_2m where {series}"),
            format!("select * from ohlcv_1m where {series} and symbol = exchange"),
        ] {
            assert!(shape(&sql).is_none(), "{sql}");
        }
    }

    #[test]
    fn bounds_fold_to_the_table_range() {
        let s = shape(
            "select * from ohlcv_1m where exchange = 'a' and symbol = 'b' and window_start > \
             '1970-01-01T00:01:00Z' and window_start <= cast('1970-01-01 00:03:00' as timestamp) \
             and window_start >= '1970-01-01'",
        )
        .unwrap();
        let Read::Bars { range, .. } = s.resolve(1000).unwrap() else {
            panic!("a table read");
        };
        assert_eq!(range, TimeRange::new(Some(60_000_001), Some(180_000_001)));
        // Bounds inside one window ask for the same windows.
        assert_eq!(read_windows(&s), (120_000_000, 240_000_000));
        let none = shape("select * from ohlcv_1m where exchange = null and symbol = 'b'").unwrap();
        let Read::Bars { range, .. } = none.resolve(1000).unwrap() else {
            panic!("a table read");
        };
        assert!(range.start > range.end);
    }

    fn read_windows(s: &Shape) -> (i64, i64) {
        s.resolve(1000).unwrap().windows()
    }

    #[test]
    fn latest_n_candles_become_a_count_back() {
        let s = shape(
            "select * from candles('a', 'b', '1m', '2024-01-01', '2024-01-02') order by \
             window_start desc limit 7",
        )
        .unwrap();
        let Read::Candles(request) = s.resolve(1000).unwrap() else {
            panic!("candles");
        };
        assert_eq!(request.last, Some(7));
        assert_eq!(
            s.schema.fields().len(),
            super::super::schema().fields().len()
        );
    }
}
