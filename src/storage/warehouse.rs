//! Where table files live: a local directory or an S3-compatible bucket, and the one object
//! store that reaches them.
//!
//! Iceberg metadata names files by URL (`s3://bucket/key`, `file:///path`) or by bare absolute
//! path (what we write on a local warehouse). The object store is scoped to one bucket (or the
//! filesystem root): our tables' files are read by their key in it ([`key`], which drops the
//! bucket); a `[source]` in another bucket is read through its table's own store, which the
//! catalog scopes to the bucket of its metadata ([`bucket`]). [`Warehouse::path`], for the
//! lease, also checks the bucket.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iceberg_rust::object_store::ObjectStoreBuilder;
use object_store::aws::AmazonS3Builder;
use object_store::client::{HttpClient, HttpConnector, ReqwestConnector};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// Longest any single object-store request may take (connect, send, receive).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach an S3-compatible store. Unset fields fall back to the usual `AWS_*` variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// `http://host:port` of a non-AWS store (SeaweedFS, MinIO, R2); unset means AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// `bucket.host/key` addressing instead of `host/bucket/key`; most non-AWS stores want
    /// path style (the default).
    pub virtual_hosted_style: bool,
    /// Where the writer lease is kept when no catalog database can hold the writer lock;
    /// unset means `<warehouse>/_ohlcv/writer.lease`. Some stores (S3 table buckets) accept
    /// only table files in the warehouse: point it at an ordinary bucket there.
    pub lease: Option<String>,
    /// How long the lease outlives its holder's last renewal (default 30 s): the longest a
    /// crashed writer keeps others from writing.
    pub lease_secs: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            virtual_hosted_style: false,
            lease: None,
            lease_secs: 30,
        }
    }
}

/// The warehouse: where our tables are created, and the store every table file is read from.
#[derive(Debug, Clone)]
pub enum Warehouse {
    Local(PathBuf),
    S3 {
        bucket: String,
        /// Key prefix under which our namespace directories are created (no slashes around).
        prefix: String,
        config: S3Config,
        clients: SharedClients,
    },
}

/// One HTTP client per distinct set of client options, for every store built from one
/// warehouse, ours and the catalogs' alike. The Iceberg catalogs build a store for each table
/// they load (a chunked build loads its tables at every commit), and each store built its
/// own client: it parsed the system's CA certificates again (3 % of a first attach's CPU, on
/// its main thread) and opened new connections. Scoped to the warehouse, not the process: a
/// client's pooled connections belong to the runtime that opened them.
#[derive(Debug, Clone, Default)]
pub struct SharedClients(Arc<Mutex<HashMap<String, HttpClient>>>);

impl HttpConnector for SharedClients {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        // Same options, same client: the debug form names every option.
        let key = format!("{options:?}");
        let mut clients = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = ReqwestConnector::default().connect(options)?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

impl Warehouse {
    /// `location` is a directory or `s3://bucket[/prefix]`.
    pub fn parse(location: &str, s3: &S3Config) -> Result<Warehouse> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Catalog(format!(
                    "warehouse {location} names no bucket"
                )));
            }
            return Ok(Warehouse::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                config: s3.clone(),
                clients: SharedClients::default(),
            });
        }
        if location.contains("://") && !location.starts_with("file://") {
            return Err(Error::Catalog(format!(
                "warehouse {location}: only local directories and s3:// are supported"
            )));
        }
        let dir = location.strip_prefix("file://").unwrap_or(location);
        Ok(Warehouse::Local(
            std::path::absolute(dir).unwrap_or_else(|_| PathBuf::from(dir)),
        ))
    }

    /// The warehouse as a location string (`/abs/dir` or `s3://bucket/prefix`).
    pub fn location(&self) -> String {
        match self {
            Warehouse::Local(dir) => dir.display().to_string(),
            Warehouse::S3 { bucket, prefix, .. } if prefix.is_empty() => format!("s3://{bucket}"),
            Warehouse::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// Location of `name` in `namespace`.
    pub fn table_location(&self, namespace: &str, name: &str) -> String {
        format!("{}/{namespace}/{name}", self.location())
    }

    /// Creates the directory of a local warehouse.
    pub fn prepare(&self) -> Result<()> {
        if let Warehouse::Local(dir) = self {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        Ok(())
    }

    /// The store every table file is read from and written to.
    pub fn store(&self) -> Result<Arc<dyn ObjectStore>> {
        Ok(match self {
            Warehouse::Local(_) => Arc::new(LocalFileSystem::new()),
            Warehouse::S3 {
                bucket,
                config,
                clients,
                ..
            } => Arc::new(
                s3_builder(config, clients)
                    .with_bucket_name(bucket)
                    .build()?,
            ),
        })
    }

    /// The same store, as the Iceberg crate's catalogs want it (they write metadata files).
    pub fn iceberg_store(&self) -> ObjectStoreBuilder {
        match self {
            Warehouse::Local(_) => ObjectStoreBuilder::filesystem("/"),
            Warehouse::S3 {
                config, clients, ..
            } => ObjectStoreBuilder::S3(Box::new(s3_builder(config, clients))),
        }
    }

    /// The key in [`Self::store`] of a file named by `location` in table metadata.
    pub fn path(&self, location: &str) -> Result<ObjectPath> {
        match self {
            Warehouse::Local(_) => {
                let path = location.strip_prefix("file://").unwrap_or(location);
                if path.contains("://") {
                    return Err(Error::Catalog(format!(
                        "{location} is not on the local warehouse"
                    )));
                }
                Ok(ObjectPath::from(path))
            }
            Warehouse::S3 { bucket, .. } => {
                let rest = location
                    .strip_prefix("s3://")
                    .or_else(|| location.strip_prefix("s3a://"))
                    .ok_or_else(|| {
                        Error::Catalog(format!("{location} is not in the S3 warehouse"))
                    })?;
                let (file_bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if file_bucket != bucket {
                    return Err(Error::Catalog(format!(
                        "{location} is in bucket '{file_bucket}'; this server reads bucket \
                         '{bucket}' only"
                    )));
                }
                Ok(ObjectPath::from(key))
            }
        }
    }

    /// Where the writer lease lives on an S3 warehouse.
    pub fn lease_location(&self) -> Option<String> {
        match self {
            Warehouse::Local(_) => None,
            Warehouse::S3 { config, .. } => Some(
                config
                    .lease
                    .clone()
                    .unwrap_or_else(|| format!("{}/_ohlcv/writer.lease", self.location())),
            ),
        }
    }
}

/// The key of a file that table metadata names by `location` (`s3://bucket/key`,
/// `file:///path` or a bare path) in a store scoped to its bucket, or to `/` for local files.
pub fn key(location: &str) -> ObjectPath {
    ObjectPath::from(iceberg_rust::spec::util::strip_prefix(location))
}

/// The bucket of an `s3://` (or `s3a://`) location; `None` for local files.
pub fn bucket(location: &str) -> Option<&str> {
    let rest = location
        .strip_prefix("s3://")
        .or_else(|| location.strip_prefix("s3a://"))?;
    Some(rest.split_once('/').map_or(rest, |(bucket, _)| bucket))
}

fn s3_builder(config: &S3Config, clients: &SharedClients) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env()
        .with_http_connector(clients.clone())
        .with_client_options(
            ClientOptions::new()
                .with_timeout(STORE_TIMEOUT)
                .with_connect_timeout(Duration::from_secs(10))
                .with_allow_http(true),
        )
        .with_virtual_hosted_style_request(config.virtual_hosted_style);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    builder = builder.with_region(
        config
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_string()),
    );
    if let Some(key) = &config.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &config.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(token) = &config.session_token {
        builder = builder.with_token(token);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_of_one_warehouse_share_a_client_per_set_of_options() {
        let clients = SharedClients::default();
        let options = ClientOptions::new().with_timeout(STORE_TIMEOUT);
        clients.connect(&options).unwrap();
        clients.connect(&options.clone()).unwrap();
        assert_eq!(clients.0.lock().unwrap().len(), 1);
        clients
            .connect(&options.with_timeout(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(clients.0.lock().unwrap().len(), 2);
        // Two stores built from one S3 warehouse connect through the same clients.
        let w = Warehouse::parse("s3://lake/ohlcv", &S3Config::default()).unwrap();
        let Warehouse::S3 { clients, .. } = &w else {
            unreachable!()
        };
        w.store().unwrap();
        w.store().unwrap();
        let built = clients.0.lock().unwrap().len();
        assert!(built >= 1, "{built}");
        w.store().unwrap();
        assert_eq!(clients.0.lock().unwrap().len(), built);
    }

    #[test]
    fn s3_locations_become_keys_of_their_bucket_only() {
        let w = Warehouse::parse("s3://lake/ohlcv/", &S3Config::default()).unwrap();
        assert_eq!(w.location(), "s3://lake/ohlcv");
        assert_eq!(
            w.table_location("market", "ohlcv_1m"),
            "s3://lake/ohlcv/market/ohlcv_1m"
        );
        assert_eq!(
            w.path("s3://lake/ohlcv/market/t/data/a.parquet")
                .unwrap()
                .as_ref(),
            "ohlcv/market/t/data/a.parquet"
        );
        let other = w.path("s3://other/x.parquet").unwrap_err().to_string();
        assert!(other.contains("bucket 'other'"), "{other}");
        assert!(w.path("/tmp/x").is_err());
        assert_eq!(bucket("s3://raw/lake/t/a.parquet"), Some("raw"));
        assert_eq!(bucket("s3a://raw"), Some("raw"));
        assert_eq!(bucket("/tmp/x"), None);
        assert_eq!(
            w.lease_location().unwrap(),
            "s3://lake/ohlcv/_ohlcv/writer.lease"
        );
    }

    #[test]
    fn local_locations_are_paths() {
        let w = Warehouse::parse("/var/lake", &S3Config::default()).unwrap();
        assert_eq!(w.path("file:///var/lake/a").unwrap().as_ref(), "var/lake/a");
        assert_eq!(w.path("/var/lake/a").unwrap().as_ref(), "var/lake/a");
        assert!(w.path("s3://b/a").is_err());
        assert!(Warehouse::parse("gs://b", &S3Config::default()).is_err());
    }
}
