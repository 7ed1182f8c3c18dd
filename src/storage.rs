//! Storage: our Iceberg tables, and every read and write of them.
//!
//! | module | owns |
//! |---|---|
//! | `settings` | `[catalog]` and what opening storage reads (`StorageConfig`) |
//! | `catalog` | the catalog (SQL or REST), the `Storage` handle, table creation |
//! | `rest` | the Iceberg REST catalog client and its authentication |
//! | `warehouse` | where files live (directory or S3 bucket) and the object store |
//! | `schema` | table schemas, partitioning, sort orders |
//! | `files` | the partitioned Parquet writer and data-file reader |
//! | `manifest` | manifest entries read strictly, with the spec's inheritance rules |
//! | `snapshot` | live files of a snapshot, pruning, row-level deletes attached |
//! | `equality` | equality delete files: their keys, where they apply, applying them |
//! | `source` | the trades table of another pipeline (`[source]`): which, and its columns |
//! | `commit` | our atomic commit (manifests, manifest list, catalog update) |
//! | `writer` | `TableWriter`: append, upsert, partition replace, compaction, properties |
//! | `observe` | commit notifications for in-memory copies (cache, live trades) |
//! | `notify` | commits announced to other servers on a PostgreSQL catalog (LISTEN/NOTIFY) |
//! | `maintenance` | snapshot expiry and the orphan-file sweep |
//! | `state` | the server's own state tables, set up one server at a time |
//! | `lock` | the single-writer lock (file lock, PostgreSQL advisory lock, or `lease`) |
//! | `lease` | the writer lease in an S3 warehouse, taken and renewed by conditional writes |
//! | `read` | rows of a time range, for the engine's own reads |
//! | `series` | one series' rows of a bar table, only the pages that may hold it |
//! | `metacache` | listings per snapshot and Parquet footers, read once (they never change) |
//! | `provider` | DataFusion `TableProvider` / `SchemaProvider` |

pub mod catalog;
pub mod commit;
pub mod equality;
pub mod error;
pub mod files;
pub mod history;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod manifest;
pub mod metacache;
pub mod notify;
pub mod observe;
pub mod provider;
pub mod read;
pub mod rest;
pub mod schema;
pub mod series;
pub mod settings;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod warehouse;
pub mod writer;

pub use catalog::Storage;
pub use commit::CommitOutcome;
pub use error::{Error, Result};
pub use lock::WriterLock;
pub use maintenance::SweepReport;
pub use observe::{CommitObserver, Committed, Content};
pub use provider::{MarketSchema, SnapshotTable};
pub use rest::RestConfig;
pub use schema::TableKind;
pub use settings::{CatalogConfig, StorageConfig};
pub use snapshot::{Layout, Listing, LiveFile, TimeRange};
pub use source::{ColumnMap, SourceConfig};
pub use warehouse::{S3Config, Warehouse};
pub use writer::{Properties, TableWriter};
