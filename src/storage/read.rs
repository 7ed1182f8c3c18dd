//! Direct reads of table rows for the engine itself (builds, validation, cache refresh): the
//! live files of one snapshot that can hold a time range, read in full and cut to the range.

use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use futures::stream::{self, StreamExt, TryStreamExt};

use super::catalog::Storage;
use super::error::Result;
use super::files::{read_data_file, time_column};
use super::schema::TableKind;
use super::snapshot::{Listing, LiveFile, TimeRange};

/// How many files are read at once.
const READ_CONCURRENCY: usize = 8;

/// Rows of `files` whose time column lies in `range`, as batches of the table's schema.
pub async fn read_files(
    storage: &Storage,
    kind: TableKind,
    files: &[&LiveFile],
    range: TimeRange,
) -> Result<Vec<RecordBatch>> {
    if !storage.owns(kind) {
        // Another pipeline's columns are not ours: `trades::source` maps them.
        return Err(super::error::Error::Catalog(format!(
            "{} is read through its [source] mapping",
            storage.identifier(kind)
        )));
    }
    let store = storage.store();
    let files: Vec<LiveFile> = files.iter().map(|f| (*f).clone()).collect();
    let batches: Vec<Vec<RecordBatch>> = stream::iter(files)
        .map(|file| {
            let store = Arc::clone(&store);
            async move {
                let batches = read_data_file(&store, kind, file.path()).await?;
                without_row_deletes(&file, batches)
            }
        })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for batch in batches.into_iter().flatten() {
        if range == TimeRange::ALL {
            out.push(batch);
            continue;
        }
        let ts = time_column(kind, &batch)?;
        let keep: BooleanArray = ts
            .values()
            .iter()
            .map(|t| Some(range.overlaps_closed(*t, *t)))
            .collect();
        let kept = filter_record_batch(&batch, &keep)?;
        if kept.num_rows() > 0 {
            out.push(kept);
        }
    }
    Ok(out)
}

/// One file's rows (in file order) without those its row-level deletes remove (see
/// [`super::snapshot`]: only trades tables carry any).
pub fn without_row_deletes(file: &LiveFile, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    if file.deleted.is_none() && file.equality.is_empty() {
        return Ok(batches);
    }
    let mut offset = 0;
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let rows = batch.num_rows();
        let batch = match &file.deleted {
            Some(deleted) => super::files::without_deleted(batch, offset, deleted)?,
            None => batch,
        };
        offset += rows;
        out.push(super::equality::without_equal(batch, &file.equality)?);
    }
    Ok(out)
}

/// Rows of `kind` at its current snapshot inside `range`, and that snapshot's listing.
pub async fn read_range(
    storage: &Storage,
    kind: TableKind,
    range: TimeRange,
) -> Result<(Listing, Vec<RecordBatch>)> {
    let table = storage.table(kind).await?;
    let listing = Listing::read(&table, kind, None, range).await?;
    let files: Vec<&LiveFile> = listing.files.iter().collect();
    let rows = read_files(storage, kind, &files, range).await?;
    Ok((listing, rows))
}
