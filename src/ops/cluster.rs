//! The servers on one lake, as `system.cluster` shows them: each server writes a heartbeat
//! (its address, its role, how far behind the tables its cache may be) into the state
//! database every second, so on a shared catalog database every server lists every other; on
//! a REST catalog, which has no database to share, into the object store beside the writer
//! lease.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sqlx::{AnyPool, Row};
use tokio_util::sync::CancellationToken;

use crate::candles::cache::BarCache;
use crate::clock::Clock;
use crate::storage::{Error, Result, Storage, TableWriter};

/// A server unheard of for this long is listed as not alive.
pub const ALIVE_US: i64 = 10_000_000;

/// One server's last heartbeat.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// Where the heartbeats of one lake's servers go.
#[derive(Clone)]
enum Beats {
    /// A table in the state database, per catalog (a database may hold several): on a SQL
    /// catalog that database is the one every server shares.
    Table { pool: AnyPool, catalog: String },
    /// One object per server beside the writer lease: a REST-catalog lake's servers share
    /// no database, only the object store.
    Store {
        store: Arc<dyn ObjectStore>,
        dir: ObjectPath,
    },
}

/// Handle on the servers' heartbeats.
#[derive(Clone)]
pub struct Members {
    beats: Beats,
}

/// Heartbeats older than this are not listed; in the object store they are deleted.
const LISTED_US: i64 = 3_600_000_000;

impl Members {
    pub async fn open(storage: &Storage) -> Result<Members> {
        if let Some((store, dir)) = storage.members_location() {
            return Ok(Members {
                beats: Beats::Store { store, dir },
            });
        }
        let pool = storage.pool();
        crate::storage::state::create_tables(
            &pool,
            &["create table if not exists ohlcv_cluster_members (
                catalog varchar(256) not null,
                server_id varchar(64) primary key,
                address varchar(256) not null,
                role varchar(16) not null,
                lag_ms bigint not null,
                heartbeat_at bigint not null,
                started_at bigint not null)"],
        )
        .await?;
        Ok(Members {
            beats: Beats::Table {
                pool,
                catalog: storage.catalog_name().to_string(),
            },
        })
    }

    /// How often a server beats: an object store write costs more than a row update.
    fn every(&self) -> Duration {
        match self.beats {
            Beats::Table { .. } => Duration::from_secs(1),
            Beats::Store { .. } => Duration::from_secs(3),
        }
    }

    pub async fn beat(&self, m: &Member) -> Result<()> {
        let (pool, catalog) = match &self.beats {
            Beats::Table { pool, catalog } => (pool, catalog),
            Beats::Store { store, dir } => {
                let body = serde_json::to_vec(m).map_err(|e| Error::Catalog(e.to_string()))?;
                store
                    .put(
                        &dir.clone().join(format!("{}.json", m.server_id)),
                        body.into(),
                    )
                    .await?;
                return Ok(());
            }
        };
        sqlx::query(
            "insert into ohlcv_cluster_members (catalog, server_id, address, role, lag_ms, \
             heartbeat_at, started_at) values ($1, $2, $3, $4, $5, $6, $7) on conflict \
             (server_id) do update set address = excluded.address, role = excluded.role, \
             lag_ms = excluded.lag_ms, heartbeat_at = excluded.heartbeat_at",
        )
        .bind(catalog)
        .bind(&m.server_id)
        .bind(&m.address)
        .bind(&m.role)
        .bind(m.lag_ms)
        .bind(m.heartbeat_at)
        .bind(m.started_at)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Removes a server's heartbeat: it stopped cleanly, so it is not "gone" but left.
    pub async fn leave(&self, server_id: &str) -> Result<()> {
        match &self.beats {
            Beats::Table { pool, catalog } => {
                sqlx::query(
                    "delete from ohlcv_cluster_members where catalog = $1 and server_id = $2",
                )
                .bind(catalog)
                .bind(server_id)
                .execute(pool)
                .await?;
            }
            Beats::Store { store, dir } => {
                store
                    .delete(&dir.clone().join(format!("{server_id}.json")))
                    .await?;
            }
        }
        Ok(())
    }

    /// Every server heard of in the last hour, newest heartbeat first, without builders that
    /// a newer live builder replaced (see [`without_superseded`]).
    pub async fn list(&self, now_us: i64) -> Result<Vec<Member>> {
        Ok(without_superseded(self.list_all(now_us).await?, now_us))
    }

    async fn list_all(&self, now_us: i64) -> Result<Vec<Member>> {
        let (pool, catalog) = match &self.beats {
            Beats::Table { pool, catalog } => (pool, catalog),
            Beats::Store { store, dir } => return list_store(store, dir, now_us).await,
        };
        let rows = sqlx::query(
            "select server_id, address, role, lag_ms, heartbeat_at, started_at \
             from ohlcv_cluster_members where catalog = $1 and heartbeat_at >= $2 \
             order by heartbeat_at desc",
        )
        .bind(catalog)
        .bind(now_us - LISTED_US)
        .fetch_all(pool)
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

/// `members` without the builders that stopped beating before a live builder started: a
/// previous process of the same lake (a restart, a crash the new builder recovered from) is
/// history, not a server that is down. A builder gone with no live successor stays listed.
fn without_superseded(members: Vec<Member>, now_us: i64) -> Vec<Member> {
    let alive = |m: &Member| now_us - m.heartbeat_at <= ALIVE_US;
    let newest_live_builder = members
        .iter()
        .filter(|m| m.role == "builder" && alive(m))
        .map(|m| m.started_at)
        .max();
    members
        .into_iter()
        .filter(|m| {
            alive(m)
                || m.role != "builder"
                || newest_live_builder.is_none_or(|started| m.heartbeat_at > started)
        })
        .collect()
}

/// The heartbeat objects under `dir`; those older than [`LISTED_US`] are deleted on the way.
async fn list_store(
    store: &Arc<dyn ObjectStore>,
    dir: &ObjectPath,
    now_us: i64,
) -> Result<Vec<Member>> {
    let objects: Vec<_> = store.list(Some(dir)).try_collect().await?;
    let read = futures::stream::iter(objects)
        .map(|object| async move {
            let bytes = store.get(&object.location).await?.bytes().await?;
            Ok::<_, object_store::Error>((object.location, bytes))
        })
        .buffer_unordered(8);
    let read: Vec<_> = read.collect().await;
    let mut members = Vec::new();
    for item in read {
        // A server that stopped may have been cleaned up between the listing and the read.
        let Ok((location, bytes)) = item else {
            continue;
        };
        let Ok(member) = serde_json::from_slice::<Member>(&bytes) else {
            continue;
        };
        if member.heartbeat_at < now_us - LISTED_US {
            let _ = store.delete(&location).await;
            continue;
        }
        members.push(member);
    }
    members.sort_by_key(|m| std::cmp::Reverse(m.heartbeat_at));
    Ok(members)
}

/// Writes this server's heartbeat (every second, or three on an object store) until
/// cancelled.
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
    let mut tick = tokio::time::interval(members.every());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                if let Err(e) = members.leave(&me.server_id).await {
                    tracing::warn!(error = %e, "removing this server's heartbeat failed");
                }
                return;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, role: &str, started_at: i64, heartbeat_at: i64) -> Member {
        Member {
            server_id: id.into(),
            address: format!("{id}:1"),
            role: role.into(),
            lag_ms: 0,
            heartbeat_at,
            started_at,
        }
    }

    #[test]
    fn a_builder_replaced_by_a_live_one_is_not_listed_as_gone() {
        let now = 100 * ALIVE_US;
        let old = member("old", "builder", 0, 50 * ALIVE_US);
        let new = member("new", "builder", 60 * ALIVE_US, now);
        let replica = member("replica", "replica", 0, 10 * ALIVE_US);
        let ids = |m: Vec<Member>| m.into_iter().map(|m| m.server_id).collect::<Vec<_>>();
        assert_eq!(
            ids(without_superseded(
                vec![new.clone(), old.clone(), replica.clone()],
                now
            )),
            ["new", "replica"]
        );
        // With no live builder, the one that stopped is what the page must show.
        assert_eq!(ids(without_superseded(vec![old.clone()], now)), ["old"]);
        // A builder still beating after the live one started is not history.
        let overlapping = member("overlap", "builder", 0, 70 * ALIVE_US);
        assert_eq!(
            ids(without_superseded(vec![new, overlapping], now)),
            ["new", "overlap"]
        );
    }
}
