//! The single-writer lock: one process at a time may commit to our tables.
//!
//! The SQL catalog cannot detect two writers racing on the same base snapshot (one commit
//! silently vanishes), so writing is serialised here, before the catalog is involved:
//! - embedded (SQLite) catalog: an OS advisory lock (`flock`) on `<data_dir>/writer.lock`. The
//!   kernel drops it when the holder exits or crashes, so a lock file left behind by a killed
//!   process is never an obstacle, only a record of who held it last (its text names the
//!   holder for errors);
//! - PostgreSQL catalog, which writers on several hosts may share: a session advisory lock in
//!   the catalog database, held by a dedicated connection. The server releases it when that
//!   connection ends, however the process died; the holder is named by its `application_name`;
//! - otherwise, on an S3 warehouse (a REST catalog, which has no lock of its own): a lease
//!   object in the warehouse (`lease.rs`).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::error::{Error, Result};

const LOCK_FILE: &str = "writer.lock";

/// Proof that this process is the only writer; released on drop (or when the process dies).
#[derive(Debug)]
pub struct WriterLock {
    held: Held,
}

#[derive(Debug)]
enum Held {
    File {
        file: File,
        path: PathBuf,
    },
    Postgres(PgLock),
    Lease(super::lease::Lease),
    /// A read replica's: the lock another server holds, taken when it becomes free.
    Standby(Box<Standby>),
}

/// Waiting for a lock another process holds (see [`WriterLock::standby`]).
#[derive(Debug)]
struct Standby {
    config: super::StorageConfig,
    purpose: String,
    taken: tokio::sync::Mutex<Option<Box<WriterLock>>>,
    /// Who held the lock when this process last tried to take it.
    holder: std::sync::Mutex<String>,
}

/// A session advisory lock and what it takes to check and take it again.
#[derive(Debug)]
struct PgLock {
    /// The session holding the lock; `None` once it was found dead.
    conn: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
    url: String,
    catalog: String,
    purpose: String,
}

/// Longest a lock check may take before the lock counts as lost.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl WriterLock {
    /// The lock of `config`'s catalog if it is free, else a standby that takes it once its
    /// holder lets go (a read replica becoming the builder): [`Self::ensure_held`] tries.
    pub async fn acquire_or_standby(
        config: impl Into<super::StorageConfig>,
        purpose: &str,
    ) -> Result<WriterLock> {
        let config = config.into();
        match Self::acquire_for(&config, purpose).await {
            Err(Error::Locked { holder, .. }) => Ok(WriterLock {
                held: Held::Standby(Box::new(Standby {
                    config: config.clone(),
                    purpose: purpose.to_string(),
                    taken: tokio::sync::Mutex::new(None),
                    holder: std::sync::Mutex::new(holder),
                })),
            }),
            other => other,
        }
    }

    /// `None` when this process holds the lock; else who does (as last seen).
    pub async fn standby_for(&self) -> Option<String> {
        match &self.held {
            Held::Standby(standby) if standby.taken.lock().await.is_none() => Some(
                standby
                    .holder
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            ),
            _ => None,
        }
    }

    /// Takes the lock that guards `config`'s catalog: in the catalog database when it is
    /// PostgreSQL, else a lease in an S3 warehouse, else a file lock in the data dir.
    pub async fn acquire_for(
        config: impl Into<super::StorageConfig>,
        purpose: &str,
    ) -> Result<WriterLock> {
        let config = &config.into();
        let url = config.catalog_url();
        if config.catalog.rest.is_none() && url.starts_with("postgres") {
            return Self::acquire_in_postgres(&url, &config.catalog.name, purpose).await;
        }
        let warehouse = config.warehouse()?;
        match warehouse.lease_location() {
            Some(location) => {
                let lease_store = super::warehouse::Warehouse::parse(&location, &config.s3)?;
                let lease = super::lease::Lease::acquire(
                    lease_store.store()?,
                    lease_store.path(&location)?,
                    location,
                    holder_name(purpose),
                    std::time::Duration::from_secs(config.s3.lease_secs.max(3)),
                )
                .await?;
                Ok(WriterLock {
                    held: Held::Lease(lease),
                })
            }
            None => Self::acquire(&config.data_dir, purpose),
        }
    }

    async fn acquire_in_postgres(url: &str, catalog: &str, purpose: &str) -> Result<WriterLock> {
        let conn = Self::take_in_postgres(url, catalog, purpose).await?;
        Ok(WriterLock {
            held: Held::Postgres(PgLock {
                conn: tokio::sync::Mutex::new(Some(conn)),
                url: url.to_string(),
                catalog: catalog.to_string(),
                purpose: purpose.to_string(),
            }),
        })
    }

    /// Checks that this process still holds the lock, right before a commit.
    ///
    /// A PostgreSQL advisory lock goes with its session: a restart of the database or a broken
    /// connection releases it without telling us, and another writer may then take it. So the
    /// session is asked whether it still holds the lock; a dead session is replaced and the
    /// lock taken again if it is free, else the commit is refused with the new holder named.
    pub async fn ensure_held(&self) -> Result<()> {
        let lock = match &self.held {
            Held::Postgres(lock) => lock,
            Held::Lease(lease) => return lease.ensure_held().await,
            Held::Standby(standby) => return standby.ensure_held().await,
            // flock is held by our open descriptor until the process exits.
            Held::File { .. } => return Ok(()),
        };
        let mut conn = lock.conn.lock().await;
        if let Some(c) = conn.as_mut() {
            let key = lock_key(&lock.catalog);
            let check = sqlx::query_as::<_, (bool,)>(
                "select exists(select 1 from pg_locks where locktype = 'advisory' and granted \
                 and pid = pg_backend_pid() and classid = $1::bigint::oid \
                 and objid = $2::bigint::oid)",
            )
            .bind((key >> 32) & 0xffff_ffff)
            .bind(key & 0xffff_ffff)
            .fetch_one(c);
            match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                Ok(Ok((true,))) => return Ok(()),
                Ok(Ok((false,))) => tracing::error!("the writer lock's session no longer holds it"),
                Ok(Err(e)) => tracing::error!(error = %e, "the writer lock's session is gone"),
                Err(_) => tracing::error!("the writer lock's session does not answer"),
            }
            *conn = None;
        }
        let taken = tokio::time::timeout(
            CHECK_TIMEOUT,
            Self::take_in_postgres(&lock.url, &lock.catalog, &lock.purpose),
        )
        .await
        .map_err(|_| Error::Catalog("cannot reach PostgreSQL to take the writer lock".into()))??;
        tracing::warn!(catalog = %lock.catalog, "writer lock taken again");
        *conn = Some(taken);
        Ok(())
    }

    /// Opens a session and takes the advisory lock in it, or names who holds it.
    async fn take_in_postgres(
        url: &str,
        catalog: &str,
        purpose: &str,
    ) -> Result<sqlx::PgConnection> {
        use sqlx::ConnectOptions;
        // PostgreSQL keeps 63 bytes of an application name: the purpose (where the holder
        // serves, which a replica's refusal passes on to clients) comes first.
        let name = format!(
            "ohlcv-server {purpose} pid {} on {}",
            std::process::id(),
            hostname()
        );
        if format!("ohlcv-server {purpose}").len() > PG_NAME_BYTES {
            tracing::warn!(%purpose, "PostgreSQL keeps {PG_NAME_BYTES} bytes of the lock holder's name: replicas will name this server cut short");
        }
        let options: sqlx::postgres::PgConnectOptions = url.parse()?;
        let mut conn = options
            .application_name(&truncate_utf8(&name, PG_NAME_BYTES))
            .connect()
            .await?;
        let key = lock_key(catalog);
        let own_name = truncate_utf8(&name, PG_NAME_BYTES);
        let (mut ended_stale, mut looked) = (false, 0);
        loop {
            let (taken,): (bool,) = sqlx::query_as("select pg_try_advisory_lock($1)")
                .bind(key)
                .fetch_one(&mut conn)
                .await?;
            if taken {
                return Ok(conn);
            }
            let holder: Option<HolderRow> = sqlx::query_as(
                "select l.pid, a.application_name, a.client_addr::text, \
                     a.backend_start::text \
                     from pg_locks l join pg_stat_activity a on a.pid = l.pid \
                     where l.locktype = 'advisory' and l.granted \
                       and l.classid = $1::bigint::oid and l.objid = $2::bigint::oid",
            )
            .bind((key >> 32) & 0xffff_ffff)
            .bind(key & 0xffff_ffff)
            .fetch_optional(&mut conn)
            .await?;
            let Some((backend, app, addr, since)) = holder else {
                looked += 1;
                if looked < 3 {
                    continue; // released while we looked: try again
                }
                return Err(Error::Locked {
                    resource: format!("catalog '{catalog}' in the PostgreSQL catalog database"),
                    holder: "a session that released it while we looked; retry".into(),
                });
            };
            let app = app.unwrap_or_default();
            // A session of ours that the network cut off without a reset (or one of a process
            // of this host that is gone) still holds the lock on the database's side: end it
            // rather than wait for its keepalive. Any other holder is a live writer.
            if !ended_stale && is_stale_own_session(&app, &own_name) {
                tracing::warn!(session = backend, holder = %app, "ending a stale catalog session of this server that still holds the writer lock");
                let _: Option<(bool,)> = sqlx::query_as("select pg_terminate_backend($1)")
                    .bind(backend)
                    .fetch_optional(&mut conn)
                    .await?;
                ended_stale = true;
                wait_for_backend_end(&mut conn, backend).await?;
                continue;
            }
            let holder = format!(
                "{} from {} since {}",
                if app.is_empty() { "a session" } else { &app },
                addr.unwrap_or_else(|| "a local socket".to_string()),
                since.unwrap_or_default()
            );
            return Err(Error::Locked {
                resource: format!("catalog '{catalog}' in the PostgreSQL catalog database"),
                holder,
            });
        }
    }

    /// Takes the lock for `purpose` (e.g. "serve", "load") or fails naming the current holder.
    pub fn acquire(data_dir: &Path, purpose: &str) -> Result<WriterLock> {
        std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_holder(&mut file).unwrap_or_default();
                return Err(Error::Locked {
                    resource: path.display().to_string(),
                    holder: if holder.is_empty() {
                        "unknown process (it has not written its name yet)".to_string()
                    } else {
                        holder
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let previous = read_holder(&mut file).unwrap_or_default();
        if !previous.is_empty() {
            tracing::warn!(
                lock = %path.display(),
                previous = %previous,
                "previous writer exited without releasing the lock; taking over"
            );
        }
        let holder = holder_name(purpose);
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(holder.as_bytes()))
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::io(&path, e))?;
        Ok(WriterLock {
            held: Held::File { file, path },
        })
    }

    /// The lock file, for the embedded catalog.
    pub fn path(&self) -> Option<&Path> {
        match &self.held {
            Held::File { path, .. } => Some(path),
            Held::Postgres(_) | Held::Lease(_) | Held::Standby(_) => None,
        }
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        // An empty file tells the next writer the release was clean; the flock itself goes with
        // the descriptor, the advisory lock with the connection.
        if let Held::File { file, .. } = &self.held {
            let _ = file.set_len(0);
            let _ = file.unlock();
        }
    }
}

/// Advisory-lock key of a catalog name.
fn lock_key(catalog: &str) -> i64 {
    advisory_key(format!("ohlcv-server writer {catalog}").as_bytes())
}

/// A PostgreSQL advisory-lock key for `text` (FNV-1a: stable across builds and platforms).
pub(super) fn advisory_key(text: &[u8]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

impl Standby {
    /// Checks the lock once taken; until then tries to take it, failing with its holder.
    async fn ensure_held(&self) -> Result<()> {
        let mut taken = self.taken.lock().await;
        if let Some(lock) = taken.as_ref() {
            return Box::pin(lock.ensure_held()).await;
        }
        match Box::pin(WriterLock::acquire_for(&self.config, &self.purpose)).await {
            Ok(lock) => {
                tracing::warn!(previous = %self.holder.lock().unwrap_or_else(|p| p.into_inner()), "took the writer lock: this server is the builder now");
                *taken = Some(Box::new(lock));
                Ok(())
            }
            Err(Error::Locked { resource, holder }) => {
                *self.holder.lock().unwrap_or_else(|p| p.into_inner()) = holder.clone();
                Err(Error::Locked { resource, holder })
            }
            Err(e) => Err(e),
        }
    }
}

/// The session holding an advisory lock: backend pid, application name, client address, start.
type HolderRow = (i32, Option<String>, Option<String>, Option<String>);

/// What PostgreSQL keeps of an `application_name` (NAMEDATALEN - 1).
const PG_NAME_BYTES: usize = 63;

fn truncate_utf8(text: &str, bytes: usize) -> String {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Who a lock names as its holder.
fn holder_name(purpose: &str) -> String {
    format!(
        "pid {} ({} on {}) since {}",
        std::process::id(),
        purpose,
        hostname(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    )
}

fn read_holder(file: &mut File) -> std::io::Result<String> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_string(&mut text)?;
    Ok(text.trim().to_string())
}

/// Whether a lock holder's `application_name` is this process's own (a session it lost), or
/// names a process of this host that no longer runs (a restart whose old session lives on).
fn is_stale_own_session(holder: &str, own_name: &str) -> bool {
    if holder == own_name {
        return true;
    }
    let Some((_, rest)) = holder.rsplit_once(" pid ") else {
        return false;
    };
    let Some((pid, host)) = rest.split_once(" on ") else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    host == hostname()
        && cfg!(target_os = "linux")
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits (a few seconds at most) until PostgreSQL has ended `backend`, so its locks are free.
async fn wait_for_backend_end(conn: &mut sqlx::PgConnection, backend: i32) -> Result<()> {
    for _ in 0..50 {
        let alive: Option<(i32,)> =
            sqlx::query_as("select pid from pg_stat_activity where pid = $1")
                .bind(backend)
                .fetch_optional(&mut *conn)
                .await?;
        if alive.is_none() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_writer_is_refused_with_the_holder_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = WriterLock::acquire(dir.path(), "serve").unwrap();
        let err = WriterLock::acquire(dir.path(), "load").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("serve"), "{msg}");
        drop(first);
        WriterLock::acquire(dir.path(), "load").expect("released on drop");
    }
}
