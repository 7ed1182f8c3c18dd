//! Commit announcements on a PostgreSQL catalog (LISTEN/NOTIFY): after each commit of ours the
//! builder announces the table on one channel, and read replicas listening there look at the
//! tables at once instead of at their next poll, so they follow within milliseconds.
//!
//! An announcement is only a hint to look now. Polling stays: notifications sent while a
//! listener reconnects are lost, other engines announce nothing, and REST and SQLite catalogs
//! have no channel at all.

use sqlx::postgres::PgListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::catalog::Storage;
use super::error::Result;
use super::schema::TableKind;

/// The channel every server of every catalog in the database announces on; the payload names
/// the catalog, so servers of other catalogs ignore it.
pub const CHANNEL: &str = "ohlcv_commits";

impl Storage {
    /// Announces a commit to `kind` to the servers listening on this catalog. A failed or slow
    /// announcement only means replicas see the commit at their next poll: it is given a
    /// second at most, and never fails the commit.
    pub(crate) async fn announce(&self, kind: TableKind) {
        if self.postgres_url().is_none() {
            return;
        }
        let payload = format!("{}/{}", self.catalog_name(), kind.name());
        let pool = self.pool();
        let sent = sqlx::query("select pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&payload)
            .execute(&pool);
        match tokio::time::timeout(std::time::Duration::from_secs(1), sent).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, %payload, "announcing a commit failed"),
            Err(_) => tracing::debug!(%payload, "announcing a commit timed out"),
        }
    }

    /// Listens for the commits other servers announce on this catalog; `None` when the
    /// catalog is not PostgreSQL.
    pub async fn listen_commits(&self) -> Result<Option<CommitFeed>> {
        let Some(url) = self.postgres_url() else {
            return Ok(None);
        };
        let mut listener = PgListener::connect(url).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(CommitFeed {
            listener,
            prefix: format!("{}/", self.catalog_name()),
        }))
    }
}

/// Commits announced on one catalog.
pub struct CommitFeed {
    listener: PgListener,
    prefix: String,
}

impl CommitFeed {
    /// Sends the table of every commit announced on this catalog to `tx` until `cancel` fires
    /// or the receiver is gone. Runs as its own task: a `recv` dropped midway (as in a
    /// `select!`) could lose part of a message, so nothing else waits on the listener.
    pub async fn forward(mut self, tx: mpsc::Sender<String>, cancel: CancellationToken) {
        loop {
            let received = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.listener.try_recv() => r,
            };
            match received {
                Ok(Some(notification)) => {
                    let Some(table) = notification.payload().strip_prefix(&self.prefix) else {
                        continue;
                    };
                    // A full queue already holds a look to take: this one adds nothing.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        tx.try_send(table.to_string())
                    {
                        return;
                    }
                }
                // The connection was lost; the next call takes it again. What was announced
                // meanwhile is lost: the poll covers it.
                Ok(None) => tracing::debug!("commit announcements: reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %e, "listening for commit announcements failed");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}
