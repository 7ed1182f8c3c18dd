//! The single-writer lock: one process at a time may commit to our tables.
//!
//! The SQL catalog cannot detect two writers racing on the same base snapshot (one commit
//! silently vanishes), so writing is serialised here, before the catalog is involved. The lock
//! is an OS advisory lock (`flock`) on `<data_dir>/writer.lock`: the kernel drops it when the
//! holder exits or crashes, so a lock file left behind by a killed process is never an
//! obstacle, only a record of who held it last. The file's text names the holder for errors.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::error::{Error, Result};

const LOCK_FILE: &str = "writer.lock";

/// Proof that this process is the only writer; released on drop (or by the OS on exit).
#[derive(Debug)]
pub struct WriterLock {
    file: File,
    path: PathBuf,
}

impl WriterLock {
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
        let holder = format!(
            "pid {} ({} on {}) since {}",
            std::process::id(),
            purpose,
            hostname(),
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        );
        file.set_len(0).map_err(|e| Error::io(&path, e))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(holder.as_bytes()))
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::io(&path, e))?;
        Ok(WriterLock { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        // An empty file tells the next writer the release was clean; the flock itself goes with
        // the descriptor.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn read_holder(file: &mut File) -> std::io::Result<String> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_string(&mut text)?;
    Ok(text.trim().to_string())
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
        assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        assert!(msg.contains("serve"), "{msg}");
        drop(first);
        WriterLock::acquire(dir.path(), "load").expect("released on drop");
    }
}
