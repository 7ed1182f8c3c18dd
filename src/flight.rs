//! The Flight SQL service: statements, prepared statements, metadata and ingest over Arrow
//! Flight, typed for each client, limited in time and memory; and the one mapping of errors
//! to gRPC status codes.
//!
//! | module | owns |
//! |---|---|
//! | `service` | the `FlightSqlService`: statements, prepared statements, metadata, ingest |
//! | `query` | statements to run: DataFusion plans over our catalog (read only, one shared memory pool) or candle reads the read room answers |
//! | `bounded` | functions that build one large value, checked against the query memory pool first |
//! | `deadline` | how statements stop: the time limit (`[server] query_timeout_secs` or the client's deadline), joins that yield so a gone client stops them |
//! | `sql` | statement rewrites before planning: bound parameters, named arguments |
//! | `sql_info` | the `GetSqlInfo` answers: every key of the specification, as BI drivers read them |
//! | `checked` | commands and tickets decoded before the Flight SQL dispatch (malformed: `InvalidArgument`) |
//! | `prepared` | stateless prepared-statement handles and bound parameters |
//! | `profile` | result typing per client: exact, or the types Grafana's converters read (`x-ohlcv-results`) |
//! | `ingest` | bulk ingest into `market.trades` |
//! | `keys` | primary/foreign key metadata |
//! | `system` | the `system` schema (`job_runs`, `jobs`, `validation_results`, `retention_runs`, `cluster`, ...) |
//! | `snapshots` | `system.snapshots`: each bar table's snapshots, when and from what they were built |
//! | `types` | XDBC type info |
//! | `error` | the one mapping of errors to gRPC status codes |

pub mod bounded;
pub mod checked;
pub mod deadline;
pub mod error;
pub mod ingest;
pub mod keys;
pub mod prepared;
pub mod profile;
pub mod query;
pub mod service;
pub mod snapshots;
pub mod sql;
pub mod sql_info;
pub mod system;
pub mod types;

pub use error::{Error, Result};
pub use query::{QueryEngine, QueryLimits};
pub use service::OhlcvFlightSql;
