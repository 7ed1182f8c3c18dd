//! What storage needs to know to open the catalog and take the writer lock: the `[catalog]`
//! section (owned here), `[s3]`, `[source]` and the data dir. The server's configuration
//! composes these; nothing in storage reads the whole configuration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{RestConfig, S3Config, SourceConfig, Warehouse};

/// `[catalog]`: where our tables are registered and where their files go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// SQL catalog URL (`sqlite://…` or `postgres://…`); unset means SQLite under the data dir.
    pub url: Option<String>,
    /// Catalog name other engines must use to find our tables.
    pub name: String,
    pub namespace: String,
    /// Where our tables' files go: a directory or `s3://bucket/prefix` (see `[s3]`); unset
    /// means `<data_dir>/warehouse`.
    pub warehouse: Option<String>,
    /// `[catalog.rest]`: an Iceberg REST catalog instead of the SQL catalog at `url`.
    pub rest: Option<RestConfig>,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            url: None,
            name: "ohlcv".to_string(),
            namespace: "market".to_string(),
            warehouse: None,
            rest: None,
        }
    }
}

/// Everything [`super::Storage::open`] and [`super::WriterLock`] read.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// Absolute, so catalog URLs and table locations never depend on the cwd later.
    pub data_dir: PathBuf,
    pub catalog: CatalogConfig,
    pub s3: S3Config,
    pub source: Option<SourceConfig>,
}

impl StorageConfig {
    pub fn new(data_dir: &Path, catalog: CatalogConfig) -> StorageConfig {
        StorageConfig {
            data_dir: std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()),
            catalog,
            s3: S3Config::default(),
            source: None,
        }
    }

    /// The catalog database's URL; a PostgreSQL one asks the server for TCP keepalives on
    /// every session (see [`with_keepalives`]).
    pub fn catalog_url(&self) -> String {
        match &self.catalog.url {
            Some(url) if url.starts_with("postgres") => with_keepalives(url),
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("catalog.db").display()
            ),
        }
    }

    /// Where our tables' files go.
    pub fn warehouse(&self) -> super::Result<Warehouse> {
        match &self.catalog.warehouse {
            Some(location) => Warehouse::parse(location, &self.s3),
            None => Ok(Warehouse::Local(self.data_dir.join("warehouse"))),
        }
    }

    /// The catalog is shared with other servers (PostgreSQL or REST), not a file of ours.
    pub fn shared(&self) -> bool {
        self.catalog.rest.is_some() || self.catalog_url().starts_with("postgres")
    }
}

impl From<&StorageConfig> for StorageConfig {
    fn from(config: &StorageConfig) -> StorageConfig {
        config.clone()
    }
}

/// Seconds of silence before PostgreSQL probes a session's client, between probes, and probes
/// unanswered before it ends the session.
const KEEPALIVE: (u32, u32, u32) = (10, 5, 3);

/// `url` with PostgreSQL's server-side TCP keepalives set for the session (unless the URL sets
/// them). Without them a session whose client vanished behind a network partition or a
/// restart lives on, holding its advisory writer lock, until the kernel's default keepalive
/// (about two hours) ends it; with them, within `idle + interval * count` (25 s).
pub fn with_keepalives(url: &str) -> String {
    if url.contains("tcp_keepalives") {
        return url.to_string();
    }
    let (idle, interval, count) = KEEPALIVE;
    let separator = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{separator}options[tcp_keepalives_idle]={idle}\
         &options[tcp_keepalives_interval]={interval}&options[tcp_keepalives_count]={count}"
    )
}
