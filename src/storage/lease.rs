//! The writer lease in an S3 warehouse: where no catalog database can hold a lock (a REST
//! catalog, or SQLite over object storage), the single writer is whoever holds a small object
//! in the warehouse, created with `If-None-Match: *` and renewed with `If-Match: <etag>`.
//!
//! The lease expires `ttl` after its last renewal by the holder's clock; a server that finds
//! it expired takes it over with a conditional write, so a crashed holder blocks writers for
//! at most one `ttl`. The holder renews every `ttl / 3` in the background and once more right
//! before each commit ([`Lease::ensure_held`]), which then has the full `ttl` to land.
//! Conditional writes make taking and renewing atomic; what they cannot do is fence a commit
//! already sent by a holder that stalled past its lease, so `ttl` must exceed the catalog's
//! commit timeout (it does by default).

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// What the lease object says.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    holder: String,
    /// Unique per process, so a restarted holder is a new holder.
    token: String,
    expires_ms: i64,
}

/// A lease held (or last held) by this process.
#[derive(Debug)]
pub struct Lease {
    shared: Arc<Shared>,
    renewer: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    location: String,
    holder: String,
    token: String,
    ttl: Duration,
    /// The version of the lease object we wrote last; `None` once it was found lost.
    version: tokio::sync::Mutex<Option<UpdateVersion>>,
}

impl Lease {
    /// Takes the lease at `location` or fails naming its holder.
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        location: String,
        holder: String,
        ttl: Duration,
    ) -> Result<Lease> {
        let shared = Arc::new(Shared {
            store,
            path,
            location,
            holder,
            token: uuid::Uuid::new_v4().to_string(),
            ttl,
            version: tokio::sync::Mutex::new(None),
        });
        {
            let mut version = shared.version.lock().await;
            *version = Some(shared.take().await?);
        }
        let renewing = Arc::clone(&shared);
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(renewing.ttl / 3).await;
                if let Err(e) = renewing.ensure_held().await {
                    tracing::error!(lease = %renewing.location, error = %e, "writer lease lost; writes stop until it is taken again");
                }
            }
        });
        Ok(Lease { shared, renewer })
    }

    /// Renews the lease (or takes it again if it was lost and is free) right before a commit.
    pub async fn ensure_held(&self) -> Result<()> {
        self.shared.ensure_held().await
    }

    pub fn location(&self) -> &str {
        &self.shared.location
    }
}

impl Drop for Lease {
    /// Marks the lease expired, so the next writer (often the next command of the same
    /// operator) need not wait out the ttl. Best effort: a crash leaves it to expire.
    fn drop(&mut self) {
        self.renewer.abort();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let shared = Arc::clone(&self.shared);
        tokio::task::block_in_place(|| {
            handle.block_on(async move {
                let version = shared.version.lock().await.take();
                if let Some(version) = version {
                    let _ = shared.write_until(PutMode::Update(version), 0).await;
                }
            })
        });
    }
}

impl Shared {
    async fn ensure_held(&self) -> Result<()> {
        let mut version = self.version.lock().await;
        let renewed = match version.take() {
            Some(current) => match self.write(PutMode::Update(current)).await {
                Err(Error::ObjectStore(object_store::Error::Precondition { .. })) => {
                    tracing::error!(lease = %self.location, "the writer lease was taken over");
                    self.take().await
                }
                other => other,
            },
            None => self.take().await,
        };
        *version = Some(renewed?);
        Ok(())
    }

    /// Creates the lease, or takes over an expired one; names the holder of a live one.
    async fn take(&self) -> Result<UpdateVersion> {
        let found = match self.store.get(&self.path).await {
            Err(object_store::Error::NotFound { .. }) => {
                return match self.write(PutMode::Create).await {
                    Err(Error::ObjectStore(object_store::Error::AlreadyExists { .. })) => {
                        Err(self.locked("a writer that took it while we looked; retry"))
                    }
                    other => other,
                };
            }
            found => found?,
        };
        let version = UpdateVersion {
            e_tag: found.meta.e_tag.clone(),
            version: found.meta.version.clone(),
        };
        let bytes = found.bytes().await?;
        let record: Option<Record> = serde_json::from_slice(&bytes).ok();
        if let Some(record) = &record {
            let now = chrono::Utc::now().timestamp_millis();
            if record.token != self.token && record.expires_ms > now {
                let until = chrono::DateTime::from_timestamp_millis(record.expires_ms)
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_default();
                return Err(self.locked(&format!("{} (lease valid until {until})", record.holder)));
            }
            if record.token != self.token {
                tracing::warn!(lease = %self.location, previous = %record.holder, "taking over an expired writer lease");
            }
        }
        match self.write(PutMode::Update(version)).await {
            Err(Error::ObjectStore(object_store::Error::Precondition { .. })) => {
                Err(self.locked("a writer that took it while we looked; retry"))
            }
            other => other,
        }
    }

    async fn write(&self, mode: PutMode) -> Result<UpdateVersion> {
        let expires_ms = chrono::Utc::now().timestamp_millis() + self.ttl.as_millis() as i64;
        self.write_until(mode, expires_ms).await
    }

    async fn write_until(&self, mode: PutMode, expires_ms: i64) -> Result<UpdateVersion> {
        let record = Record {
            holder: self.holder.clone(),
            token: self.token.clone(),
            expires_ms,
        };
        let body = serde_json::to_vec(&record).map_err(|e| Error::Catalog(e.to_string()))?;
        let put = self.store.put_opts(
            &self.path,
            PutPayload::from(body),
            PutOptions {
                mode,
                ..PutOptions::default()
            },
        );
        let written = tokio::time::timeout(self.ttl / 3, put)
            .await
            .map_err(|_| {
                Error::Catalog(format!("no answer renewing the lease {}", self.location))
            })??;
        Ok(UpdateVersion {
            e_tag: written.e_tag,
            version: written.version,
        })
    }

    fn locked(&self, holder: &str) -> Error {
        Error::Locked {
            resource: format!("the writer lease {}", self.location),
            holder: holder.to_string(),
        }
    }
}
