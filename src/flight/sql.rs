//! Rewrites of a parsed statement before DataFusion plans it:
//! - bound parameters become literals (so they reach table function arguments, which are
//!   fixed when the function is planned, before DataFusion would substitute placeholders);
//! - `name => value` arguments of table functions become `'name=value'` strings, the option
//!   form `candles(...)` reads (DataFusion's planner drops named table-function arguments).

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    visit_expressions, visit_expressions_mut, Expr, FunctionArg, FunctionArgExpr, Statement,
    TableFactor, Value, VisitMut, VisitorMut,
};

use super::error::{Error, Result};

/// Placeholders named in `statement`, as `$1`, `$2`, ... (each `?` is the next number).
pub fn placeholders(statement: &Statement) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut next = 0;
    let _ = visit_expressions(statement, |e| {
        if let Expr::Value(v) = e {
            if let Value::Placeholder(p) = &v.value {
                if p == "?" {
                    next += 1;
                    found.insert(format!("${next}"));
                } else {
                    found.insert(p.clone());
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

/// Substitutes `params` (positional: `$1` is the first, each `?` the next) and rewrites named
/// table-function arguments.
pub fn rewrite(statement: &mut Statement, params: Option<&[ScalarValue]>) -> Result<()> {
    if let Some(params) = params {
        let mut next = 0;
        let mut used = vec![false; params.len()];
        let flow = visit_expressions_mut(statement, |e| {
            let Expr::Value(v) = e else {
                return ControlFlow::Continue(());
            };
            let Value::Placeholder(p) = &v.value else {
                return ControlFlow::Continue(());
            };
            let index = match p.strip_prefix('$').map(str::parse::<usize>) {
                Some(Ok(n)) if n >= 1 => n - 1,
                Some(_) => return ControlFlow::Break(format!("unsupported placeholder {p}")),
                None => {
                    next += 1;
                    next - 1
                }
            };
            let Some(value) = params.get(index) else {
                return ControlFlow::Break(format!(
                    "placeholder {p} has no bound value ({} bound)",
                    params.len()
                ));
            };
            used[index] = true;
            match literal(value) {
                Ok(lit) => {
                    *e = lit;
                    ControlFlow::Continue(())
                }
                Err(m) => ControlFlow::Break(m),
            }
        });
        if let ControlFlow::Break(m) = flow {
            return Err(Error::InvalidRequest(m));
        }
        // A value bound to no placeholder is a client bug that would otherwise go unnoticed.
        if let Some(extra) = used.iter().position(|u| !u) {
            return Err(Error::InvalidRequest(format!(
                "{} parameters bound, but the statement has no placeholder for parameter {}",
                params.len(),
                extra + 1
            )));
        }
    }
    let mut named = NamedArgs;
    if let ControlFlow::Break(m) = statement.visit(&mut named) {
        return Err(Error::InvalidRequest(m));
    }
    Ok(())
}

fn string(s: String) -> Expr {
    Expr::Value(Value::SingleQuotedString(s).into())
}

/// A bound value as SQL: numbers and strings as such, timestamps as ISO-8601 strings (which
/// DataFusion coerces where a timestamp is expected).
fn literal(value: &ScalarValue) -> std::result::Result<Expr, String> {
    let number = |s: String| Ok(Expr::Value(Value::Number(s, false).into()));
    let time = |micros: Option<i64>| match micros.and_then(chrono::DateTime::from_timestamp_micros)
    {
        Some(t) => Ok(string(
            t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        )),
        None => Ok(Expr::Value(Value::Null.into())),
    };
    if value.is_null() {
        return Ok(Expr::Value(Value::Null.into()));
    }
    match value {
        ScalarValue::Boolean(Some(b)) => Ok(Expr::Value(Value::Boolean(*b).into())),
        ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::Int64(_)
        | ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::UInt64(_)
        | ScalarValue::Float32(_)
        | ScalarValue::Float64(_) => number(value.to_string()),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Ok(string(s.clone())),
        ScalarValue::TimestampSecond(v, _) => time(v.and_then(|v| v.checked_mul(1_000_000))),
        ScalarValue::TimestampMillisecond(v, _) => time(v.and_then(|v| v.checked_mul(1_000))),
        ScalarValue::TimestampMicrosecond(v, _) => time(*v),
        ScalarValue::TimestampNanosecond(v, _) => time(v.map(|v| v.div_euclid(1_000))),
        ScalarValue::Date32(Some(_)) | ScalarValue::Date64(Some(_)) => {
            Ok(string(value.to_string()))
        }
        other => Err(format!(
            "parameters of type {} are not supported",
            other.data_type()
        )),
    }
}

struct NamedArgs;

impl VisitorMut for NamedArgs {
    type Break = String;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<String> {
        let TableFactor::Table {
            args: Some(args), ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        for arg in args.args.iter_mut() {
            let FunctionArg::Named {
                name, arg: value, ..
            } = arg
            else {
                continue;
            };
            let text = match value {
                FunctionArgExpr::Expr(Expr::Value(v)) => match &v.value {
                    Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                    Value::Number(n, _) => n.clone(),
                    Value::Boolean(b) => b.to_string(),
                    // Bound later (a prepared statement's parameter): `'name=' || $n`, folded
                    // to one string once the value is bound.
                    Value::Placeholder(_) => {
                        let bound = Expr::Value(v.clone());
                        *arg = FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::BinaryOp {
                            left: Box::new(string(format!("{}=", name.value))),
                            op: datafusion::sql::sqlparser::ast::BinaryOperator::StringConcat,
                            right: Box::new(bound),
                        }));
                        continue;
                    }
                    other => {
                        return ControlFlow::Break(format!(
                            "argument {name} must be a constant, got {other}"
                        ))
                    }
                },
                FunctionArgExpr::Expr(Expr::Identifier(id)) => id.value.clone(),
                other => {
                    return ControlFlow::Break(format!(
                        "argument {name} must be a constant, got {other}"
                    ))
                }
            };
            *arg = FunctionArg::Unnamed(FunctionArgExpr::Expr(string(format!(
                "{}={text}",
                name.value
            ))));
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn parse(sql: &str) -> Statement {
        Parser::parse_sql(&GenericDialect {}, sql)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn parameters_and_named_arguments_become_literals() {
        let mut s = parse(
            "select * from candles($1, $2, '15m', $3, $4, fill => 'previous', tz => $5) where close > $1",
        );
        assert_eq!(
            placeholders(&s).into_iter().collect::<Vec<_>>(),
            ["$1", "$2", "$3", "$4", "$5"]
        );
        assert_eq!(placeholders(&parse("select ? + ?")).len(), 2);
        let params = [
            ScalarValue::Utf8(Some("coinbase".into())),
            ScalarValue::Utf8(Some("BTC-USD".into())),
            ScalarValue::TimestampMicrosecond(Some(0), Some("UTC".into())),
            ScalarValue::TimestampMicrosecond(Some(60_000_000), None),
            ScalarValue::Utf8(Some("America/New_York".into())),
        ];
        rewrite(&mut s, Some(&params)).unwrap();
        assert_eq!(
            s.to_string(),
            "SELECT * FROM candles('coinbase', 'BTC-USD', '15m', '1970-01-01T00:00:00Z', \
             '1970-01-01T00:01:00Z', 'fill=previous', 'tz=America/New_York') WHERE close > 'coinbase'"
        );
        let mut missing = parse("select $3");
        assert!(rewrite(&mut missing, Some(&params[..1])).is_err());
        let mut extra = parse("select $1");
        let err = rewrite(&mut extra, Some(&params[..2])).unwrap_err();
        assert!(err.to_string().contains("parameter 2"), "{err}");
    }
}
