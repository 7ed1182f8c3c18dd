//! Stock SQL on `market.ohlcv_*` through the fast path: a scan that names one series
//! (`exchange = ... and symbol = ...`) and a `window_start` range inside the hot horizon is
//! answered from the cache; every other scan reads the table. Both read the snapshot the
//! cache's view pins, so the two paths always agree.

use std::any::Any;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::function::{string, to_datafusion};
use crate::candles::cache::BarCache;
use crate::storage::provider::time_range;
use crate::storage::{MarketSchema, SnapshotTable, Storage, TableKind};
use crate::timeframe::Timeframe;

/// The `market` schema with bar tables routed through the cache.
#[derive(Clone)]
pub struct MarketTables {
    storage: Storage,
    cache: BarCache,
}

impl std::fmt::Debug for MarketTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MarketTables")
    }
}

impl MarketTables {
    pub fn new(storage: Storage, cache: BarCache) -> MarketTables {
        MarketTables { storage, cache }
    }
}

#[async_trait]
impl SchemaProvider for MarketTables {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        TableKind::all().map(TableKind::name).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match TableKind::all().find(|k| k.name() == name) {
            Some(TableKind::Bars(tf)) => Ok(Some(Arc::new(RoutedBars {
                storage: self.storage.clone(),
                cache: self.cache.clone(),
                tf,
                schema: TableKind::Bars(tf)
                    .arrow_schema()
                    .map_err(|e| DataFusionError::External(Box::new(e)))?,
            }))),
            _ => MarketSchema::new(self.storage.clone()).table(name).await,
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        TableKind::all().any(|k| k.name() == name)
    }
}

/// A bar table that decides per scan where its rows come from.
struct RoutedBars {
    storage: Storage,
    cache: BarCache,
    tf: Timeframe,
    schema: SchemaRef,
}

impl std::fmt::Debug for RoutedBars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RoutedBars({})", self.tf)
    }
}

#[async_trait]
impl TableProvider for RoutedBars {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
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
        let (exchange, symbol) = (equals(filters, "exchange"), equals(filters, "symbol"));
        let range = time_range("window_start", filters);
        let view = self.cache.view(
            exchange.as_deref().unwrap_or(""),
            symbol.as_deref().unwrap_or(""),
        );
        let hot = range.start.unwrap_or(i64::MIN) >= self.cache.horizon_start(self.tf);
        if let (Some(exchange), Some(symbol), true, true) =
            (exchange, symbol, hot, self.cache.config().enabled)
        {
            let rows = self
                .cache
                .bars(&view, self.tf, &exchange, &symbol, range)
                .await
                .map_err(to_datafusion)?;
            // Filters were accepted as inexact: DataFusion applies them again above this.
            return Ok(MemorySourceConfig::try_new_exec(
                &[vec![rows]],
                Arc::clone(&self.schema),
                projection.cloned(),
            )?);
        }
        let table = SnapshotTable::load(
            &self.storage,
            TableKind::Bars(self.tf),
            view.table(self.tf).snapshot,
        )
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        table.scan(state, projection, filters, limit).await
    }
}

/// The string `column` must equal for a row to pass every filter, if the filters say.
fn equals(filters: &[Expr], column: &str) -> Option<String> {
    fn walk(expr: &Expr, column: &str) -> Option<String> {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
            return None;
        };
        match op {
            Operator::And => walk(left, column).or_else(|| walk(right, column)),
            Operator::Eq => match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c))
                    if c.name == column =>
                {
                    string(v)
                }
                _ => None,
            },
            _ => None,
        }
    }
    filters.iter().find_map(|f| walk(f, column))
}
