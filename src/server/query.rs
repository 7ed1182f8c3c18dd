//! The query engine behind Flight SQL: DataFusion over catalog `ohlcv`, schemas `market` (each
//! table pinned to its current snapshot when a statement is planned) and `system`. Read only.

use std::sync::Arc;

use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

use super::error::Result;
use super::system::SystemSchema;
use crate::quality::Reports;
use crate::scheduler::{History, SchedulerHandle};
use crate::storage::{MarketSchema, Storage};

/// Cheap handle; every statement gets a fresh session (plans are not shared between clients),
/// all sessions share one runtime and so one memory pool.
#[derive(Clone)]
pub struct QueryEngine {
    storage: Storage,
    scheduler: SchedulerHandle,
    history: History,
    reports: Reports,
    runtime: Arc<RuntimeEnv>,
}

impl QueryEngine {
    /// `memory_limit` bounds what all running queries hold together (sorts, aggregations,
    /// joins); a query past it fails with `ResourceExhausted`.
    pub fn new(
        storage: Storage,
        scheduler: SchedulerHandle,
        history: History,
        reports: Reports,
        memory_limit: usize,
    ) -> Result<QueryEngine> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(memory_limit, 1.0)
            .build_arc()?;
        Ok(QueryEngine {
            storage,
            scheduler,
            history,
            reports,
            runtime,
        })
    }

    pub fn catalog_name(&self) -> &str {
        self.storage.catalog_name()
    }

    pub fn namespace(&self) -> &str {
        self.storage.namespace()
    }

    /// A session with our catalog as the default, so `select * from ohlcv_1m` works.
    pub fn session(&self) -> Result<SessionContext> {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(self.catalog_name(), self.namespace())
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config_rt(config, Arc::clone(&self.runtime));
        let catalog = MemoryCatalogProvider::new();
        catalog.register_schema(
            self.namespace(),
            Arc::new(MarketSchema::new(self.storage.clone())),
        )?;
        catalog.register_schema(
            "system",
            Arc::new(SystemSchema::new(
                self.history.clone(),
                self.reports.clone(),
                self.scheduler.clone(),
            )),
        )?;
        ctx.register_catalog(self.catalog_name(), Arc::new(catalog));
        Ok(ctx)
    }

    /// Plans `sql`; statements that would change anything are refused.
    pub async fn plan(&self, sql: &str) -> Result<DataFrame> {
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        Ok(self.session()?.sql_with_options(sql, options).await?)
    }
}
