//! The servers on one lake, as `system.cluster` shows them: each server writes a heartbeat
//! (its address, its role, how far behind the tables its cache may be) into the state
//! database every second, so on a shared catalog database every server lists every other.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyPool, Row};
use tokio_util::sync::CancellationToken;

use crate::cache::BarCache;
use crate::clock::Clock;
use crate::storage::{Result, TableWriter};

/// A server unheard of for this long is listed as not alive.
pub const ALIVE_US: i64 = 10_000_000;
const EVERY: Duration = Duration::from_secs(1);

/// One server's last heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub server_id: String,
    pub address: String,
    /// `builder` or `replica`.
    pub role: String,
    /// For a replica: time since it last found its cache at the tables' current snapshots.
    pub lag_ms: i64,
    pub heartbeat_at: i64,
    pub started_at: i64,
}

/// Handle on the heartbeat table, for the servers of one catalog (one lake: a database may
/// hold several catalogs).
#[derive(Clone)]
pub struct Members {
    pool: AnyPool,
    catalog: String,
}

impl Members {
    pub async fn open(pool: AnyPool, catalog: &str) -> Result<Members> {
        sqlx::query(
            "create table if not exists ohlcv_cluster_members (
                catalog varchar(256) not null,
                server_id varchar(64) primary key,
                address varchar(256) not null,
                role varchar(16) not null,
                lag_ms bigint not null,
                heartbeat_at bigint not null,
                started_at bigint not null)",
        )
        .execute(&pool)
        .await?;
        Ok(Members {
            pool,
            catalog: catalog.to_string(),
        })
    }

    pub async fn beat(&self, m: &Member) -> Result<()> {
        sqlx::query(
            "insert into ohlcv_cluster_members (catalog, server_id, address, role, lag_ms, \
             heartbeat_at, started_at) values ($1, $2, $3, $4, $5, $6, $7) on conflict \
             (server_id) do update set address = excluded.address, role = excluded.role, \
             lag_ms = excluded.lag_ms, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(&self.catalog)
        .bind(&m.server_id)
        .bind(&m.address)
        .bind(&m.role)
        .bind(m.lag_ms)
        .bind(m.heartbeat_at)
        .bind(m.started_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every server heard of in the last hour, newest heartbeat first.
    pub async fn list(&self, now_us: i64) -> Result<Vec<Member>> {
        let rows = sqlx::query(
            "select server_id, address, role, lag_ms, heartbeat_at, started_at \
             from ohlcv_cluster_members where catalog = $1 and heartbeat_at >= $2 \
             order by heartbeat_at desc",
        )
        .bind(&self.catalog)
        .bind(now_us - 3_600_000_000)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Member {
                server_id: r.get(0),
                address: r.get(1),
                role: r.get(2),
                lag_ms: r.get(3),
                heartbeat_at: r.get(4),
                started_at: r.get(5),
            })
            .collect())
    }
}

/// Writes this server's heartbeat every second until cancelled.
pub async fn heartbeat(
    members: Members,
    address: String,
    writer: TableWriter,
    cache: BarCache,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) {
    let mut me = Member {
        server_id: uuid::Uuid::new_v4().simple().to_string(),
        address,
        role: String::new(),
        lag_ms: 0,
        heartbeat_at: 0,
        started_at: clock.now_us(),
    };
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = clock.now_us();
        let replica = writer.other_builder().await.is_some();
        me.role = if replica { "replica" } else { "builder" }.to_string();
        me.lag_ms = match (replica, cache.synced_at()) {
            (false, _) => 0,
            (true, Some(at)) => (now - at).max(0) / 1_000,
            (true, None) => (now - me.started_at).max(0) / 1_000,
        };
        me.heartbeat_at = now;
        if let Err(e) = members.beat(&me).await {
            tracing::warn!(error = %e, "writing the cluster heartbeat failed");
        }
    }
}
