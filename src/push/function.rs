//! `live_candles(exchange, symbol, timeframe [, last => N] [, tz => 'Area/City']
//! [, since => t])` for Flight SQL clients: `select * from live_candles(...)` (or a list of its
//! columns) is a statement whose result stays open, the candles as they stand and then every
//! change, read batch by batch (ADBC's `fetch_record_batch()`). `symbol` may list several
//! symbols of the exchange, comma-separated. The statement is recognised from its plan and
//! answered by the subscription hub; in any other statement the function is refused.

use std::any::Any;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionImpl};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::{source_as_provider, TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;

use super::spec::{Spec, DEFAULT_LAST};
use crate::candles::function::{constant, placeholder_in, simplifier, string, timestamp};

const USAGE: &str = "live_candles(exchange, symbol[,symbol...], timeframe [, last => N] \
                     [, tz => 'Area/City'] [, since => '<timestamp>']), as \
                     `select * from live_candles(...)` or a list of its columns";

/// The registered table function.
#[derive(Debug, Default)]
pub struct LiveFunction;

impl TableFunctionImpl for LiveFunction {
    fn call(&self, args: &[Expr]) -> DfResult<Arc<dyn TableProvider>> {
        // A prepared statement is planned before its parameters are bound.
        let spec = match args.iter().find_map(placeholder_in) {
            Some(id) => Err(format!("live_candles argument {id} is unbound")),
            None => Ok(spec(args)?),
        };
        Ok(Arc::new(LiveTable { spec }))
    }
}

fn spec(args: &[Expr]) -> DfResult<Spec> {
    if args.len() < 3 {
        return Err(DataFusionError::Plan(format!(
            "live_candles takes at least 3 arguments, got {}: {USAGE}",
            args.len()
        )));
    }
    let simplifier = simplifier();
    let mut texts = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        let v = constant(&simplifier, i, a)?;
        texts.push(string(&v).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "live_candles argument {} must be a string, got {v}",
                i + 1
            ))
        })?);
    }
    let exchange = texts[0].trim().to_string();
    let mut spec = Spec {
        series: texts[1]
            .split(',')
            .map(|s| (exchange.clone(), s.trim().to_string()))
            .collect(),
        timeframe: texts[2].clone(),
        tz: None,
        last: DEFAULT_LAST,
        since: None,
    };
    for option in &texts[3..] {
        let (name, value) = option.split_once('=').ok_or_else(|| {
            DataFusionError::Plan(format!(
                "live_candles option '{option}' is not name=value: {USAGE}"
            ))
        })?;
        match (name.trim(), value.trim()) {
            ("last", n) => {
                spec.last = n.parse().map_err(|_| {
                    DataFusionError::Plan(format!("live_candles option last: '{n}' is not a count"))
                })?
            }
            ("tz", zone) => spec.tz = Some(zone.to_string()),
            ("since", t) => {
                let v = datafusion::scalar::ScalarValue::Utf8(Some(t.to_string()));
                spec.since = Some(timestamp(&v, "since")?);
            }
            _ => {
                return Err(DataFusionError::Plan(format!(
                    "unknown live_candles option '{option}': {USAGE}"
                )))
            }
        }
    }
    spec.checked()
        .map_err(|e| DataFusionError::Plan(e.to_string()))
}

/// What `live_candles(...)` plans as: its schema, and the subscription its arguments ask for.
#[derive(Debug)]
pub struct LiveTable {
    spec: Result<Spec, String>,
}

#[async_trait]
impl TableProvider for LiveTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        super::candle::schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::Plan(format!(
            "live_candles(...) is a stream of changes, not a table: {USAGE}"
        )))
    }
}

/// A statement answered by a subscription: what it subscribes to and which columns it keeps.
#[derive(Debug, Clone)]
pub struct LiveStatement {
    pub spec: Spec,
    /// Indices into [`super::candle::schema`], in the statement's order.
    pub columns: Vec<usize>,
    pub schema: SchemaRef,
}

impl LiveStatement {
    /// The subscription `plan` is, if it uses `live_candles`: `Some(Err)` when it uses it in
    /// any other way than a plain list of its columns.
    pub fn find(plan: &LogicalPlan) -> Option<Result<LiveStatement, String>> {
        let mut live: Option<Arc<dyn TableProvider>> = None;
        let mut other = false;
        let _ = plan.apply(|node| {
            match node {
                LogicalPlan::TableScan(scan) => match source_as_provider(&scan.source) {
                    Ok(p) if p.as_any().is::<LiveTable>() => {
                        other |= !scan.filters.is_empty() || scan.fetch.is_some() || live.is_some();
                        live = Some(p);
                    }
                    _ => other = true,
                },
                LogicalPlan::Projection(p) => {
                    other |= !p.expr.iter().all(|e| matches!(e, Expr::Column(_)));
                }
                LogicalPlan::SubqueryAlias(_) => {}
                _ => other = true,
            }
            Ok(TreeNodeRecursion::Continue)
        });
        let provider = live?;
        let table = provider.as_any().downcast_ref::<LiveTable>()?;
        if other {
            return Some(Err(format!(
                "live_candles(...) streams changes and takes no filter, join, order, limit \
                 or aggregate: {USAGE}"
            )));
        }
        let spec = match &table.spec {
            Ok(spec) => spec.clone(),
            Err(e) => return Some(Err(e.clone())),
        };
        let full = super::candle::schema();
        let columns: Option<Vec<usize>> = plan
            .schema()
            .fields()
            .iter()
            .map(|f| full.index_of(f.name()).ok())
            .collect();
        let columns = columns?;
        let schema = Arc::new(full.project(&columns).ok()?);
        Some(Ok(LiveStatement {
            spec,
            columns,
            schema,
        }))
    }
}
