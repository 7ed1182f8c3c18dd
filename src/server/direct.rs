//! Statements answered without DataFusion planning.
//!
//! Charts and bots send the same `SELECT * FROM candles(...)` over and over. Planning it
//! (analysing, optimising, building a physical plan, twice per query: once for the schema in
//! GetFlightInfo, once in DoGet) cost the server more than computing the candles from the
//! cache. A statement of exactly that shape with plain string arguments becomes a
//! [`Request`] read by the same argument code as the table function, so both accept and refuse
//! the same arguments; anything else is planned as usual.

use datafusion::logical_expr::{lit, Expr as DfExpr};
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, SetExpr, Statement, TableFactor, Value,
};

/// The arguments of `SELECT * FROM candles(...)` when that is the whole statement and every
/// argument is a string literal (after [`super::sql::rewrite`]: bound parameters and named
/// options are string literals by then).
pub fn candles_args(statement: &Statement) -> Option<Vec<DfExpr>> {
    let Statement::Query(query) = statement else {
        return None;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [from] = select.from.as_slice() else {
        return None;
    };
    let relation = &from.relation;
    let TableFactor::Table {
        name,
        args: Some(args),
        alias: None,
        ..
    } = relation
    else {
        return None;
    };
    let [part] = name.0.as_slice() else {
        return None;
    };
    let ident = part.as_ident()?;
    let named_candles = match ident.quote_style {
        None => ident.value.eq_ignore_ascii_case("candles"),
        Some(_) => ident.value == "candles",
    };
    if !named_candles {
        return None;
    }
    let values = args
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => match &v.value {
                Value::SingleQuotedString(s) => Some(lit(s.as_str())),
                _ => None,
            },
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    // Whatever else the statement says (a projection, WHERE, ORDER BY, LIMIT, joins, CTEs,
    // hints) shows in its text: only the bare shape is answered here.
    (statement.to_string() == format!("SELECT * FROM {relation}")).then_some(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn args(sql: &str) -> Option<usize> {
        let statement = Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0);
        candles_args(&statement).map(|a| a.len())
    }

    #[test]
    fn only_the_bare_candles_statement_is_answered_directly() {
        let call = "candles('coinbase', 'BTC-USD', '1m', '2024-01-01', '2024-01-02')";
        assert_eq!(args(&format!("select * from {call}")), Some(5));
        assert_eq!(
            args(&format!("SELECT * FROM CANDLES{}", &call[7..])),
            Some(5)
        );
        assert_eq!(args(&format!("select * from {call};")), Some(5));
        assert_eq!(
            args("select * from candles('a', 'b', '1m', '2024-01-01', '2024-01-02', 'fill=previous')"),
            Some(6)
        );
        for other in [
            format!("select open from {call}"),
            format!("select * from {call} where close > 1"),
            format!("select * from {call} order by window_start desc"),
            format!("select * from {call} limit 5"),
            format!("select * from {call} as c"),
            format!("select distinct * from {call}"),
            format!("with x as (select 1) select * from {call}"),
            format!("select * from {call}, ohlcv_1m"),
            format!("select * from {call} union all select * from {call}"),
            "select * from candles('a', 'b', '1m', now() - interval '1 day', now())".into(),
            "select * from candles('a', 'b', '1m', $1, $2)".into(),
            "select * from \"Candles\"('a', 'b', '1m', '2024-01-01', '2024-01-02')".into(),
            "select * from market.candles('a', 'b', '1m', '2024-01-01', '2024-01-02')".into(),
            "select * from ohlcv_1m".into(),
        ] {
            assert_eq!(args(&other), None, "{other}");
        }
    }
}
