//! The query engine behind Flight SQL: DataFusion over catalog `ohlcv`, schemas `market` (each
//! table pinned to the snapshot the cache's view holds when it is scanned, bar tables routed
//! through the cache) and `system`, plus the `candles(...)` table function. Read only.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionState;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion::sql::parser::Statement;

use super::error::{Error, Result};
use super::system::SystemSchema;
use crate::candles::shape::Shape;
use crate::candles::Reads;
use crate::jobs::{History, SchedulerHandle};
use crate::quality::Reports;
use crate::storage::Storage;

/// A statement ready to run.
pub enum Query {
    /// A candle read, answered from the cache without a plan (see `candles::shape`).
    Candles(Arc<Shape>),
    /// A subscription (`select * from live_candles(...)`): its result stays open.
    Live(Arc<crate::push::LiveStatement>),
    Plan(Box<DataFrame>),
}

impl Query {
    pub fn schema(&self) -> SchemaRef {
        match self {
            Query::Candles(shape) => Arc::clone(&shape.schema),
            Query::Live(live) => Arc::clone(&live.schema),
            Query::Plan(df) => Arc::new(df.schema().as_arrow().clone()),
        }
    }
}

/// Cheap handle. The session (catalog, functions, configuration) is built once; each statement
/// plans on its own copy of it (plans are not shared between clients), and all share one
/// runtime and so one memory pool. Building a session registers every built-in function,
/// which took longer than planning a candle query.
#[derive(Clone)]
pub struct QueryEngine {
    storage: Storage,
    reads: Reads,
    base: Arc<SessionState>,
    timeout: Option<std::time::Duration>,
}

/// What every statement is held to.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// What all running queries may hold together: sorts, aggregations, joins, and values
    /// that one function builds (`bounded`); a query past it fails with `ResourceExhausted`.
    pub memory_bytes: usize,
    /// Longest a statement may run (zero: no limit).
    pub timeout: std::time::Duration,
}

impl QueryEngine {
    pub fn new(
        storage: Storage,
        scheduler: SchedulerHandle,
        history: History,
        reports: Reports,
        reads: Reads,
        members: crate::ops::cluster::Members,
        limits: QueryLimits,
    ) -> Result<QueryEngine> {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limits.memory_bytes, 1.0)
            .build_arc()?;
        let pool = Arc::clone(&runtime.memory_pool);
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(storage.catalog_name(), storage.namespace())
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let catalog = MemoryCatalogProvider::new();
        catalog.register_schema(storage.namespace(), Arc::new(reads.tables(storage.clone())))?;
        catalog.register_schema(
            "system",
            Arc::new(SystemSchema::new(
                storage.clone(),
                history,
                reports,
                scheduler,
                reads.cache().clone(),
                members,
            )),
        )?;
        ctx.register_catalog(storage.catalog_name(), Arc::new(catalog));
        ctx.register_udtf("candles", Arc::new(reads.function()));
        ctx.register_udtf("bars_as_of", Arc::new(reads.bars_as_of(storage.clone())));
        ctx.register_udtf("live_candles", Arc::new(crate::push::LiveFunction));
        super::bounded::register(&ctx, &pool);
        let state = datafusion::execution::session_state::SessionStateBuilder::new_from_existing(
            ctx.state(),
        )
        .with_physical_optimizer_rule(Arc::new(super::deadline::YieldAfterJoins))
        .build();
        Ok(QueryEngine {
            storage,
            reads,
            base: Arc::new(state),
            timeout: Some(limits.timeout).filter(|t| !t.is_zero()),
        })
    }

    pub fn catalog_name(&self) -> &str {
        self.storage.catalog_name()
    }

    pub fn namespace(&self) -> &str {
        self.storage.namespace()
    }

    /// The candle read room this engine's statements read through.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// `[server] query_timeout_secs`, when set.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        self.timeout
    }

    /// Parses `sql` the way the session would.
    fn parse(&self, sql: &str) -> Result<Statement> {
        let dialect = self.base.config().options().sql_parser.dialect;
        Ok(self.base.sql_to_statement(sql, &dialect)?)
    }

    /// Plans `sql` for a prepared statement, parameters unbound; also returns its placeholders
    /// (with those inside table-function arguments, which DataFusion's plan does not show).
    pub async fn prepare(&self, sql: &str) -> Result<(DataFrame, BTreeSet<String>)> {
        let mut statement = self.parse(sql)?;
        let mut placeholders = BTreeSet::new();
        if let Statement::Statement(s) = &mut statement {
            placeholders = super::sql::placeholders(s);
            super::sql::rewrite(s, None)?;
        }
        Ok((self.plan_statement(statement).await?, placeholders))
    }

    /// `sql` with `params` bound, ready to run: candle reads directly, anything else planned. A statement with placeholders needs its parameters.
    pub async fn query(&self, sql: &str, params: Option<&[ScalarValue]>) -> Result<Query> {
        let mut statement = self.parse(sql)?;
        if let Statement::Statement(s) = &mut statement {
            if params.is_none() {
                let wanted = super::sql::placeholders(s).len();
                if wanted > 0 {
                    return Err(Error::InvalidRequest(format!(
                        "the statement has {wanted} parameter(s) and none are bound"
                    )));
                }
            }
            super::sql::rewrite(s, params)?;
            let shape = crate::candles::shape::recognise(
                s,
                &self.base,
                self.catalog_name(),
                self.namespace(),
            );
            if let Some(shape) = shape {
                // Arguments a candle read refuses are refused here, before any DoGet.
                shape.resolve(self.reads.cache().config().max_windows)?;
                return Ok(Query::Candles(Arc::new(shape)));
            }
        }
        let df = self.plan_statement(statement).await?;
        match crate::push::LiveStatement::find(df.logical_plan()) {
            Some(Ok(live)) => Ok(Query::Live(Arc::new(live))),
            Some(Err(message)) => Err(Error::InvalidRequest(message)),
            None => Ok(Query::Plan(Box::new(df))),
        }
    }

    /// Statements that would change anything are refused.
    async fn plan_statement(&self, statement: Statement) -> Result<DataFrame> {
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let state = SessionState::clone(&self.base);
        let plan = state.statement_to_plan(statement).await?;
        // Only queries pass: DDL, DML and other statements are refused here.
        options.verify_plan(&plan).map_err(Error::from)?;
        Ok(DataFrame::new(state, plan))
    }
}
