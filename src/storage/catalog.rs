//! The Iceberg catalog (SQLite embedded, PostgreSQL by URL, or a REST catalog) and the
//! `Storage` handle that every other layer uses to reach our tables.

use std::sync::Arc;

use iceberg_rust::catalog::tabular::Tabular;
use iceberg_rust::catalog::Catalog;
use iceberg_rust::spec::identifier::Identifier;
use iceberg_rust::spec::namespace::Namespace;
use iceberg_rust::table::Table;
use iceberg_sql_catalog::SqlCatalog;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use sqlx::AnyPool;

use super::error::{Error, Result};
use super::rest::Rest;
use super::schema::TableKind;
use super::settings::StorageConfig;
use super::snapshot::Layout;
use super::source::SourceConfig;
use super::warehouse::Warehouse;

/// Longest a table load may take (a catalog read plus the metadata file): a hung catalog
/// fails the job or query instead of holding it.
const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the crate's `Catalog` does not tell: where a table's current metadata file is.
enum Backend {
    /// Our own connection to the catalog database.
    Sql(AnyPool),
    Rest(Box<Rest>),
}

/// Cheap, cloneable handle on the catalog and the warehouse.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Arc<dyn Catalog>,
    backend: Backend,
    /// Where the server keeps its own state (job history, validation reports): the catalog
    /// database of a SQL catalog, else a SQLite file in the data dir.
    state: AnyPool,
    store: Arc<dyn ObjectStore>,
    catalog_name: String,
    namespace: String,
    warehouse: Warehouse,
    /// The trades table of another pipeline, when the server builds from one.
    source: Option<SourceConfig>,
    /// The catalog database, when it is PostgreSQL (commits are announced there).
    postgres_url: Option<String>,
    /// Listings per snapshot and Parquet footers, which never change (`metacache`).
    meta: super::metacache::MetaCache,
    /// Where the servers of a REST-catalog lake leave their heartbeats: beside the writer
    /// lease, since they share no database.
    members: Option<(Arc<dyn ObjectStore>, ObjectPath)>,
}

impl Storage {
    /// Connects to the catalog and creates the namespace and every table that is missing.
    pub async fn open(config: impl Into<StorageConfig>) -> Result<Storage> {
        let config = &config.into();
        let warehouse = config.warehouse()?;
        warehouse.prepare()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
        sqlx::any::install_default_drivers();
        // Servers starting together on one PostgreSQL database create the catalog's tables,
        // the namespace and ours one at a time (see `state`).
        let (catalog, backend, state, setup): (Arc<dyn Catalog>, _, _, _) = match &config
            .catalog
            .rest
        {
            Some(rest) => {
                let rest = Rest::connect(rest, &config.s3).await?;
                let catalog = Arc::new(rest.catalog(warehouse.iceberg_store()));
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    config.data_dir.join("state.db").display()
                );
                (
                    catalog,
                    Backend::Rest(Box::new(rest)),
                    connect(&url).await?,
                    None,
                )
            }
            None => {
                let url = config.catalog_url();
                let setup = super::state::SetupLock::take(&url).await?;
                let catalog =
                    SqlCatalog::new(&url, &config.catalog.name, warehouse.iceberg_store())
                        .await
                        .map_err(|e| Error::Catalog(format!("cannot open catalog {url}: {e}")))?;
                let pool = connect(&url).await?;
                (
                    Arc::new(catalog),
                    Backend::Sql(pool.clone()),
                    pool,
                    Some(setup),
                )
            }
        };
        let members = match (&config.catalog.rest, warehouse.lease_location()) {
            (Some(_), Some(lease)) => {
                let dir = format!("{}/members", lease.rsplit_once('/').map_or("", |(d, _)| d));
                let at = Warehouse::parse(&dir, &config.s3)?;
                Some((at.store()?, at.path(&dir)?))
            }
            _ => None,
        };
        let storage = Storage {
            inner: Arc::new(Inner {
                catalog,
                backend,
                state,
                store: warehouse.store()?,
                catalog_name: config.catalog.name.clone(),
                namespace: config.catalog.namespace.clone(),
                warehouse,
                source: config.source.clone(),
                postgres_url: Some(config.catalog_url())
                    .filter(|url| config.catalog.rest.is_none() && url.starts_with("postgres")),
                meta: Default::default(),
                members,
            }),
        };
        storage.ensure_tables().await?;
        drop(setup);
        Ok(storage)
    }

    pub fn catalog(&self) -> Arc<dyn Catalog> {
        Arc::clone(&self.inner.catalog)
    }

    /// Connection pool on the database of the server's own state (job history, reports).
    pub fn pool(&self) -> AnyPool {
        self.inner.state.clone()
    }

    /// Every live file of one of our tables at `snapshot` (every manifest read once per
    /// snapshot; prune by range with `LiveFile::may_overlap`).
    pub async fn listing_at(
        &self,
        kind: TableKind,
        snapshot: i64,
    ) -> Result<Arc<super::snapshot::Listing>> {
        let read = async {
            let table = self.table(kind).await?;
            super::snapshot::Listing::read(
                &table,
                kind,
                Some(snapshot),
                super::snapshot::TimeRange::ALL,
            )
            .await
        };
        self.inner.meta.listing(kind, snapshot, read).await
    }

    /// The footer and page index of the data file at `path`, read once.
    pub async fn footer(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &str,
    ) -> Result<parquet::arrow::arrow_reader::ArrowReaderMetadata> {
        self.inner.meta.footer(store, path).await
    }

    /// The catalog database's URL when the catalog is PostgreSQL.
    pub fn postgres_url(&self) -> Option<&str> {
        self.inner.postgres_url.as_deref()
    }

    pub fn catalog_name(&self) -> &str {
        &self.inner.catalog_name
    }

    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// Object store holding every table file; [`Self::path`] names a file in it.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.inner.store)
    }

    /// The key in [`Self::store`] of a file that table metadata names by `location`.
    pub fn path(&self, location: &str) -> Result<ObjectPath> {
        self.inner.warehouse.path(location)
    }

    /// Whether the catalog is a REST catalog, which owns the metadata files it writes.
    /// The object store directory of the servers' heartbeats on a REST-catalog lake; `None`
    /// when they go in the state database (shared on a SQL catalog).
    pub fn members_location(&self) -> Option<(Arc<dyn ObjectStore>, ObjectPath)> {
        self.inner.members.clone()
    }

    pub fn is_rest(&self) -> bool {
        matches!(self.inner.backend, Backend::Rest(_))
    }

    pub fn identifier(&self, kind: TableKind) -> Identifier {
        match (kind, &self.inner.source) {
            (TableKind::Trades, Some(source)) => Identifier::new(
                &[source
                    .namespace
                    .clone()
                    .unwrap_or_else(|| self.inner.namespace.clone())],
                &source.table,
            ),
            _ => Identifier::new(std::slice::from_ref(&self.inner.namespace), &kind.name()),
        }
    }

    /// The trades table of another pipeline, when configured.
    pub fn source(&self) -> Option<&SourceConfig> {
        self.inner.source.as_ref()
    }

    /// How `table` (the table of `kind`) is pruned: the source's time column is found by
    /// name in its current schema.
    pub fn layout(&self, kind: TableKind, table: &Table) -> Result<Layout> {
        let Some(source) = self.source().filter(|_| kind == TableKind::Trades) else {
            return Ok(Layout::Ours);
        };
        let schema = table.metadata().current_schema(None)?;
        let field = schema
            .get_name(&source.columns.ts)
            .ok_or_else(|| Error::Unsupported {
                table: self.identifier(kind).to_string(),
                file: table.metadata().location.clone(),
                feature: format!("no column '{}' (source.columns.ts)", source.columns.ts),
            })?;
        Ok(Layout::Source {
            time_field: field.id,
        })
    }

    /// Whether the server owns `kind` (and so may write, compact and expire it).
    pub fn owns(&self, kind: TableKind) -> bool {
        !(kind == TableKind::Trades && self.inner.source.is_some())
    }

    pub fn table_location(&self, kind: TableKind) -> String {
        self.inner
            .warehouse
            .table_location(&self.inner.namespace, &kind.name())
    }

    /// Loads the table's current metadata from the catalog (never a cached copy).
    pub async fn table(&self, kind: TableKind) -> Result<Table> {
        let identifier = self.identifier(kind);
        let load = self.inner.catalog.clone().load_tabular(&identifier);
        let loaded = tokio::time::timeout(LOAD_TIMEOUT, load)
            .await
            .map_err(|_| {
                Error::Catalog(format!(
                    "no answer loading {} within {}s",
                    self.identifier(kind),
                    LOAD_TIMEOUT.as_secs()
                ))
            })?;
        match loaded {
            Ok(Tabular::Table(table)) => Ok(table),
            Ok(_) => Err(Error::Catalog(format!(
                "{} is not a table",
                self.identifier(kind)
            ))),
            Err(
                iceberg_rust::error::Error::NotFound(_)
                | iceberg_rust::error::Error::CatalogNotFound,
            ) => Err(self.why_not_loaded(kind).await),
            Err(e) => Err(e.into()),
        }
    }

    /// Why a load found no table. The SQL catalog crate answers "not found" for every failure
    /// of its database (a connection refused while PostgreSQL shuts down, too), so the
    /// catalog database is asked again through our own connection before the table is said
    /// not to exist.
    async fn why_not_loaded(&self, kind: TableKind) -> Error {
        let identifier = self.identifier(kind);
        match &self.inner.backend {
            Backend::Rest(_) => Error::TableNotFound(identifier.to_string()),
            Backend::Sql(_) => match self.metadata_location(kind).await {
                Err(e @ Error::TableNotFound(_)) => e,
                Err(e) => Error::Catalog(format!(
                    "cannot read {identifier} from the catalog database: {e}"
                )),
                Ok(_) => Error::Catalog(format!(
                    "the catalog database failed to answer for {identifier}, which it holds; \
                     retry"
                )),
            },
        }
    }

    /// Path of the metadata JSON the catalog currently points at.
    pub async fn metadata_location(&self, kind: TableKind) -> Result<String> {
        let identifier = self.identifier(kind);
        match &self.inner.backend {
            Backend::Rest(rest) => rest.metadata_location(&identifier).await,
            Backend::Sql(pool) => {
                let row: Option<(String,)> = sqlx::query_as(
                    "select metadata_location from iceberg_tables \
                     where catalog_name = $1 and table_namespace = $2 and table_name = $3",
                )
                .bind(&self.inner.catalog_name)
                .bind(identifier.namespace().to_string())
                .bind(identifier.name())
                .fetch_optional(pool)
                .await?;
                row.map(|(loc,)| loc)
                    .ok_or_else(|| Error::TableNotFound(identifier.to_string()))
            }
        }
    }

    async fn ensure_tables(&self) -> Result<()> {
        let namespace = Namespace::try_new(std::slice::from_ref(&self.inner.namespace))?;
        let existing = self.inner.catalog.list_namespaces(None).await?;
        if !existing.contains(&namespace) {
            self.inner
                .catalog
                .create_namespace(&namespace, None)
                .await
                .map_err(|e| Error::Catalog(format!("create namespace: {e}")))?;
        }
        for kind in TableKind::all().filter(|k| self.owns(*k)) {
            if self
                .inner
                .catalog
                .tabular_exists(&self.identifier(kind))
                .await?
            {
                continue;
            }
            let location = self.table_location(kind);
            Table::builder()
                .with_name(kind.name())
                .with_location(location)
                .with_schema(kind.iceberg_schema()?)
                .with_partition_spec(kind.partition_spec()?)
                .with_sort_order(kind.sort_order()?)
                .with_property((
                    "write.parquet.compression-codec".to_string(),
                    "zstd".to_string(),
                ))
                .build(std::slice::from_ref(&self.inner.namespace), self.catalog())
                .await?;
            tracing::info!(table = %kind.name(), "created table");
        }
        Ok(())
    }
}

async fn connect(url: &str) -> Result<AnyPool> {
    Ok(sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(30))
        .connect(url)
        .await?)
}
