//! `bars_as_of(table, moment)`: a bar table as it stood at a past moment, for stock SQL
//! (`select * from bars_as_of('ohlcv_1m', '2026-11-30T12:00:00Z') where exchange = ...`).
//! The moment is a timestamp (the last snapshot committed by then) or a snapshot id from
//! `system.snapshots`. It reads the table at that snapshot, as DataFusion reads any of our
//! tables (pruned files, filters pushed to the Parquet pages).

use std::any::Any;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionImpl};
use datafusion::common::ScalarValue;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;

use super::function::{constant, placeholder_in, simplifier, string, timestamp};
use crate::storage::{history, SnapshotTable, Storage, TableKind};

const USAGE: &str = "bars_as_of('ohlcv_<timeframe>', <timestamp or snapshot id>)";

/// The table function, registered as `bars_as_of`.
pub struct BarsAsOf {
    storage: Storage,
}

impl BarsAsOf {
    pub fn new(storage: Storage) -> BarsAsOf {
        BarsAsOf { storage }
    }
}

/// Which snapshot a call names.
#[derive(Debug, Clone, Copy)]
enum Moment {
    At(i64),
    Snapshot(i64),
}

impl TableFunctionImpl for BarsAsOf {
    fn call(&self, args: &[Expr]) -> DfResult<Arc<dyn TableProvider>> {
        let [table, moment] = args else {
            return Err(DataFusionError::Plan(format!(
                "bars_as_of takes 2 arguments, got {}: {USAGE}",
                args.len()
            )));
        };
        let simplifier = simplifier();
        let name = string(&constant(&simplifier, 0, table)?).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "bars_as_of's first argument names a table: {USAGE}"
            ))
        })?;
        let name = name.rsplit('.').next().unwrap_or_default().to_string();
        let kind = TableKind::all()
            .find(|k| matches!(k, TableKind::Bars(_)) && k.name() == name)
            .ok_or_else(|| {
                DataFusionError::Plan(format!("bars_as_of: '{name}' is not a bar table: {USAGE}"))
            })?;
        // A prepared statement is planned before its parameters are bound.
        let moment = match placeholder_in(moment) {
            Some(id) => Err(format!("bars_as_of's moment is the unbound parameter {id}")),
            None => Ok(match constant(&simplifier, 1, moment)? {
                ScalarValue::Int64(Some(id)) => Moment::Snapshot(id),
                ScalarValue::Int32(Some(id)) => Moment::Snapshot(id.into()),
                other => Moment::At(timestamp(&other, "moment")?),
            }),
        };
        Ok(Arc::new(AsOfTable {
            storage: self.storage.clone(),
            kind,
            schema: kind
                .arrow_schema()
                .map_err(|e| DataFusionError::External(Box::new(e)))?,
            moment,
        }))
    }
}

struct AsOfTable {
    storage: Storage,
    kind: TableKind,
    schema: SchemaRef,
    moment: Result<Moment, String>,
}

impl std::fmt::Debug for BarsAsOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BarsAsOf")
    }
}

impl std::fmt::Debug for AsOfTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AsOfTable({}, {:?})", self.kind.name(), self.moment)
    }
}

#[async_trait]
impl TableProvider for AsOfTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let moment = self.moment.clone().map_err(DataFusionError::Plan)?;
        let external = |e: crate::storage::Error| DataFusionError::External(Box::new(e));
        let name = self.kind.name();
        let table = self.storage.table(self.kind).await.map_err(external)?;
        let snapshot = match moment {
            Moment::At(t) => history::snapshot_at(table.metadata(), &name, t).map_err(external)?,
            Moment::Snapshot(id) if history::in_history(table.metadata(), id) => Some(id),
            Moment::Snapshot(id) => {
                return Err(DataFusionError::Plan(format!(
                    "snapshot {id} is not in {name}'s history (system.snapshots lists the \
                     snapshots it holds)"
                )))
            }
        };
        let Some(snapshot) = snapshot else {
            // Before the table's first snapshot: it held no bars.
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        };
        SnapshotTable::load(&self.storage, self.kind, Some(snapshot))
            .await
            .map_err(external)?
            .scan(state, projection, filters, limit)
            .await
    }
}
