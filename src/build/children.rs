//! The 1m bars a rollup reads, read once for rollups run together.
//!
//! 30m, 1h and 1d each roll up the same days of 1m bars. Run together (a first attach, a
//! `build` of every timeframe) each read every day for itself: on the 50 M-trade lake of
//! `benches/attach.py`, three reads of 1.08 M bars were 70 % of the rollups' time, the serial
//! tail of a first attach. Here the first rollup to ask for a day starts its read and the
//! others await the same read.

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use futures::future::{BoxFuture, FutureExt, Shared};

use super::Result;
use crate::storage::read::read_files;
use crate::storage::{LiveFile, Storage, TableKind, TimeRange};

type Read = Shared<BoxFuture<'static, Option<Arc<Vec<RecordBatch>>>>>;

/// Reads of 1m days shared by `users` rollups.
pub struct SharedChildren {
    users: usize,
    held: Mutex<Vec<Held>>,
}

/// A read some of the users have not taken yet.
struct Held {
    window: TimeRange,
    files: Vec<String>,
    read: Read,
    taken: usize,
}

impl SharedChildren {
    /// For `users` rollups run together; with one, nothing is shared or held.
    pub fn new(users: usize) -> SharedChildren {
        SharedChildren {
            users,
            held: Mutex::new(Vec::new()),
        }
    }

    /// The rows of `files` (of 1m table `kind`) in `window`. A read is dropped once every
    /// user took it. Rollups that stop asking for the same days (different watermarks) would
    /// leave reads behind: at most `users` are kept, the oldest dropped first, so this never
    /// holds more days than the rollups reading alone would (a user that finds its read gone
    /// reads again).
    pub(super) async fn read(
        &self,
        storage: &Storage,
        kind: TableKind,
        files: &[&LiveFile],
        window: TimeRange,
    ) -> Result<Arc<Vec<RecordBatch>>> {
        // Days without children (a month partition of 1d before the 1m history starts) are
        // not shared: held, they would push out reads the others still want.
        if self.users < 2 || files.is_empty() {
            return Ok(Arc::new(read_files(storage, kind, files, window).await?));
        }
        let paths: Vec<String> = files.iter().map(|f| f.path().to_string()).collect();
        let read = {
            let mut held = self.held.lock().expect("shared children lock");
            match held
                .iter()
                .position(|h| h.window == window && h.files == paths)
            {
                Some(i) => {
                    held[i].taken += 1;
                    let read = held[i].read.clone();
                    if held[i].taken >= self.users {
                        held.remove(i);
                    }
                    read
                }
                None => {
                    let storage = storage.clone();
                    let owned: Vec<LiveFile> = files.iter().map(|f| (*f).clone()).collect();
                    let read: Read = async move {
                        let files: Vec<&LiveFile> = owned.iter().collect();
                        // A failed read is not shared: each user reads again and gets its
                        // own error.
                        read_files(&storage, kind, &files, window)
                            .await
                            .ok()
                            .map(Arc::new)
                    }
                    .boxed()
                    .shared();
                    if held.len() >= self.users {
                        held.remove(0);
                    }
                    held.push(Held {
                        window,
                        files: paths,
                        read: read.clone(),
                        taken: 1,
                    });
                    read
                }
            }
        };
        match read.await {
            Some(rows) => Ok(rows),
            None => Ok(Arc::new(read_files(storage, kind, files, window).await?)),
        }
    }
}
