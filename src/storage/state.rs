//! The server's own state tables (job history, reports, heartbeats, popular series) in the
//! catalog database, or in `state.db` beside a REST catalog.
//!
//! PostgreSQL's `create table if not exists` is not safe against a concurrent create of the
//! same name: the loser fails with 23505 on `pg_type_typname_nsp_index`. Servers that start
//! together on one database (a cluster, parallel tests) therefore set up their tables one at a
//! time, under an advisory lock of their own (not the writer lock: replicas set up too).

use sqlx::{AnyPool, Connection};

/// Advisory-lock key serialising schema set-up.
fn setup_lock_key() -> i64 {
    super::lock::advisory_key(b"ohlcv-server schema setup")
}

/// Runs `statements` (idempotent DDL) in one transaction, serialised across processes on
/// PostgreSQL. A statement that must not abort the others (an `alter table ... add column`
/// that SQLite cannot guard with `if not exists`) belongs after this call, not in it.
pub async fn create_tables(pool: &AnyPool, statements: &[&str]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    if tx.backend_name() == "PostgreSQL" {
        // The lock ends with the transaction; the select keeps the `void` result out of the
        // row (the Any driver cannot decode it).
        sqlx::query("select 1 from (select pg_advisory_xact_lock($1)) as locked")
            .bind(setup_lock_key())
            .execute(&mut *tx)
            .await?;
    }
    for statement in statements {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Holds the set-up lock in a session of its own while the catalog and our tables are created
/// (the Iceberg SQL catalog creates its tables with its own connections); released on drop.
pub struct SetupLock {
    _conn: Option<sqlx::PgConnection>,
}

impl SetupLock {
    /// Takes the lock when `url` is PostgreSQL; a no-op otherwise (SQLite serialises writers).
    pub async fn take(url: &str) -> Result<SetupLock, sqlx::Error> {
        if !url.starts_with("postgres") {
            return Ok(SetupLock { _conn: None });
        }
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::query("select 1 from (select pg_advisory_lock($1)) as locked")
            .bind(setup_lock_key())
            .execute(&mut conn)
            .await?;
        Ok(SetupLock { _conn: Some(conn) })
    }
}
