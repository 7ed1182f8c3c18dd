//! Storage: our Iceberg tables, and every read and write of them.
//!
//! | module | owns |
//! |---|---|
//! | `catalog` | the SQL catalog, the `Storage` handle, table creation |
//! | `schema` | table schemas, partitioning, sort orders |
//! | `files` | the partitioned Parquet writer and data-file reader |
//! | `manifest` | manifest entries read strictly, with the spec's inheritance rules |
//! | `snapshot` | live files of a snapshot, pruning |
//! | `source` | the trades table of another pipeline (`[source]`): which, and its columns |
//! | `commit` | our atomic commit (manifests, manifest list, catalog update) |
//! | `writer` | `TableWriter`: append, upsert, partition replace, compaction, properties |
//! | `observe` | commit notifications for in-memory copies (cache, live trades) |
//! | `maintenance` | snapshot expiry and the orphan-file sweep |
//! | `lock` | the single-writer lock |
//! | `read` | rows of a time range, for the engine's own reads |
//! | `provider` | DataFusion `TableProvider` / `SchemaProvider` |

pub mod catalog;
pub mod commit;
pub mod error;
pub mod files;
pub mod lock;
pub mod maintenance;
pub mod manifest;
pub mod observe;
pub mod provider;
pub mod read;
pub mod schema;
pub mod snapshot;
pub mod source;
pub mod writer;

pub use catalog::Storage;
pub use commit::CommitOutcome;
pub use error::{Error, Result};
pub use lock::WriterLock;
pub use maintenance::SweepReport;
pub use observe::{CommitObserver, Committed, Content};
pub use provider::{MarketSchema, SnapshotTable};
pub use schema::TableKind;
pub use snapshot::{Layout, Listing, LiveFile, TimeRange};
pub use source::{ColumnMap, SourceConfig};
pub use writer::{Properties, TableWriter};
