//! The query engine behind Flight SQL: DataFusion over catalog `ohlcv`, schemas `market` (each
//! table pinned to its current snapshot when a statement is planned) and `system`. Read only.

use std::sync::Arc;

use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::error::Result;
use super::system::SystemSchema;
use crate::storage::{MarketSchema, Storage};

/// Cheap handle; every statement gets a fresh session (plans are not shared between clients).
#[derive(Clone)]
pub struct QueryEngine {
    storage: Storage,
}

impl QueryEngine {
    pub fn new(storage: Storage) -> QueryEngine {
        QueryEngine { storage }
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
        let ctx = SessionContext::new_with_config(config);
        let catalog = MemoryCatalogProvider::new();
        catalog.register_schema(
            self.namespace(),
            Arc::new(MarketSchema::new(self.storage.clone())),
        )?;
        catalog.register_schema("system", Arc::new(SystemSchema::new(self.storage.pool())))?;
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
