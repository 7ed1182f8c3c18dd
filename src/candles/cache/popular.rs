//! Which series are queried most, kept in the catalog database so a restarted server warms
//! the cache with them before the first query arrives.

use std::collections::HashMap;

use sqlx::{AnyPool, Row};

use super::error::Result;
use super::Key;
use crate::timeframe::Timeframe;

/// How many series are remembered.
pub const REMEMBERED: usize = 1000;

#[derive(Clone)]
pub struct Popular {
    pool: AnyPool,
}

impl Popular {
    pub async fn open(pool: AnyPool) -> Result<Popular> {
        crate::storage::state::create_tables(
            &pool,
            &["create table if not exists ohlcv_cache_hot_keys (
                timeframe varchar(16) not null,
                exchange varchar(255) not null,
                symbol varchar(255) not null,
                queries bigint not null
            )"],
        )
        .await?;
        Ok(Popular { pool })
    }

    /// The remembered series, most queried first.
    pub async fn load(&self) -> Result<Vec<(Key, u64)>> {
        let rows = sqlx::query(
            "select timeframe, exchange, symbol, queries from ohlcv_cache_hot_keys \
             order by queries desc limit $1",
        )
        .bind(REMEMBERED as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let tf: String = row.try_get(0)?;
            let Ok(tf) = tf.parse::<Timeframe>() else {
                continue;
            };
            out.push((
                Key::new(
                    tf,
                    row.try_get::<String, _>(1)?,
                    row.try_get::<String, _>(2)?,
                ),
                row.try_get::<i64, _>(3)?.max(0) as u64,
            ));
        }
        Ok(out)
    }

    /// Replaces what is remembered by the `REMEMBERED` most queried of `counts`.
    pub async fn save(&self, counts: &HashMap<Key, u64>) -> Result<()> {
        let mut top: Vec<(&Key, &u64)> = counts.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        top.truncate(REMEMBERED);
        let mut tx = self.pool.begin().await?;
        sqlx::query("delete from ohlcv_cache_hot_keys")
            .execute(&mut *tx)
            .await?;
        for (key, queries) in top {
            sqlx::query("insert into ohlcv_cache_hot_keys values ($1, $2, $3, $4)")
                .bind(key.timeframe.as_str())
                .bind(&key.exchange)
                .bind(&key.symbol)
                .bind(*queries as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
