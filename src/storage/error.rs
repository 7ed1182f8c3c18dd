//! Errors of the storage layer (catalog, Iceberg metadata, Parquet files, the writer lock).

use std::path::PathBuf;

/// Everything that can go wrong below the bar engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg_rust::error::Error),

    #[error("iceberg metadata: {0}")]
    Spec(#[from] iceberg_rust::spec::error::Error),

    #[error("catalog: {0}")]
    Catalog(String),

    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),

    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("avro: {0}")]
    Avro(#[from] apache_avro::Error),

    #[error("catalog database: {0}")]
    Sql(#[from] sqlx::Error),

    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("table {0} does not exist")]
    TableNotFound(String),

    /// This server is a read replica: another one holds the writer lock and does every write.
    #[error("this server is a read replica; writes go to the builder, {builder}")]
    ReadReplica { builder: String },

    /// Another process holds the single-writer lock; `holder` says who.
    #[error("another writer holds the lock on {resource}: {holder}")]
    Locked { resource: String, holder: String },

    /// The catalog accepted our commit but the table does not show it: another writer won.
    #[error(
        "commit to {table} was lost: the table's current snapshot is {found:?}, not {expected}"
    )]
    LostCommit {
        table: String,
        expected: i64,
        found: Option<i64>,
    },

    /// A table's metadata or data that could not be decoded: refused, never skipped.
    #[error("{table}: cannot read {file}: {reason}")]
    Unreadable {
        table: String,
        file: String,
        reason: String,
    },

    /// A valid Iceberg feature this server does not handle yet: refused, never skipped.
    #[error("{table}: {file} uses {feature}, which ohlcv-server cannot read")]
    Unsupported {
        table: String,
        file: String,
        feature: String,
    },

    /// The catalog update was sent and the table, read back, does not hold it.
    #[error("commit to {table} did not apply: {reason}")]
    CommitFailed { table: String, reason: String },

    /// The catalog update was sent and the table could not be read back to tell whether it
    /// applied: its files are kept, and the next run reads the table's real state.
    #[error("outcome of the commit to {table} is unknown: {reason}")]
    CommitUnknown { table: String, reason: String },

    /// A change to a table another pipeline owns (`[source]`).
    #[error("{table} belongs to another pipeline ([source]): ohlcv-server never writes, compacts or expires it")]
    NotOwned { table: String },

    /// A point-in-time read asked for a moment whose snapshot has been expired.
    #[error(
        "as_of {} is older than the history {table} keeps: {} (snapshots older than \
         [retention] history_days are expired)",
        crate::timeframe::format_us(*at_us),
        oldest_us.map_or("it holds no snapshot".to_string(), |o| format!(
            "its oldest snapshot still held was committed at {}",
            crate::timeframe::format_us(o)
        ))
    )]
    HistoryExpired {
        table: String,
        at_us: i64,
        oldest_us: Option<i64>,
    },

    #[error("invalid rows for {table}: {reason}")]
    InvalidData { table: String, reason: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
