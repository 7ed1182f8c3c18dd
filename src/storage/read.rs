//! Direct reads of table rows for the engine itself (builds, validation, cache refresh): the
//! live files of one snapshot that can hold a time range, read in full and cut to the range.

use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch, TimestampMicrosecondArray};
use arrow::compute::filter_record_batch;
use futures::stream::{self, StreamExt, TryStreamExt};

use super::catalog::Storage;
use super::error::Result;
use super::files::{read_data_file_each, time_column};
use super::schema::TableKind;
use super::snapshot::{Listing, LiveFile, TimeRange};

/// How many files are read at once.
pub const READ_CONCURRENCY: usize = 8;

/// Rows of `files` whose time column lies in `range`, as batches of the table's schema.
pub async fn read_files(
    storage: &Storage,
    kind: TableKind,
    files: &[&LiveFile],
    range: TimeRange,
) -> Result<Vec<RecordBatch>> {
    read_files_in(storage, kind, files, &[range]).await
}

/// Rows of `files` whose time column lies in any of `ranges`, each file cut as it is read.
pub async fn read_files_in(
    storage: &Storage,
    kind: TableKind,
    files: &[&LiveFile],
    ranges: &[TimeRange],
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
    let ranges: Arc<[TimeRange]> = ranges.into();
    let batches: Vec<Vec<RecordBatch>> = stream::iter(files)
        .map(move |file| {
            let store = Arc::clone(&store);
            let ranges = Arc::clone(&ranges);
            async move {
                let mut out = Vec::new();
                let mut offset = 0;
                let target = kind.arrow_schema()?;
                let size = u64::try_from(file.size()).ok();
                read_data_file_each(
                    &store,
                    &kind.name(),
                    &target,
                    file.path(),
                    size,
                    None,
                    |batch| {
                        let rows = batch.num_rows();
                        let batch = without_row_deletes_at(&file, batch, offset)?;
                        offset += rows;
                        let kept = keep_in(&batch, time_column(kind, &batch)?, &ranges)?;
                        if kept.num_rows() > 0 {
                            out.push(kept);
                        }
                        Ok::<_, super::error::Error>(())
                    },
                )
                .await?;
                Ok::<_, super::error::Error>(out)
            }
        })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(batches.into_iter().flatten().collect())
}

/// The rows of `batch` whose time `ts` lies in any of `ranges` (the batch itself when all do).
pub fn keep_in(
    batch: &RecordBatch,
    ts: &TimestampMicrosecondArray,
    ranges: &[TimeRange],
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    if ranges.contains(&TimeRange::ALL) {
        return Ok(batch.clone());
    }
    let keep: BooleanArray = ts
        .values()
        .iter()
        .map(|t| Some(ranges.iter().any(|r| r.overlaps_closed(*t, *t))))
        .collect();
    if keep.true_count() == batch.num_rows() {
        return Ok(batch.clone());
    }
    filter_record_batch(batch, &keep)
}

/// One file's rows (in file order) without those its row-level deletes remove (see
/// [`super::snapshot`]: only trades tables carry any).
pub fn without_row_deletes(file: &LiveFile, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    let mut offset = 0;
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let rows = batch.num_rows();
        out.push(without_row_deletes_at(file, batch, offset)?);
        offset += rows;
    }
    Ok(out)
}

/// One batch of a file, starting at row `offset`, without the rows its deletes remove.
fn without_row_deletes_at(
    file: &LiveFile,
    batch: RecordBatch,
    offset: usize,
) -> Result<RecordBatch> {
    if file.deleted.is_none() && file.equality.is_empty() {
        return Ok(batch);
    }
    let batch = match &file.deleted {
        Some(deleted) => super::files::without_deleted(batch, offset, deleted)?,
        None => batch,
    };
    super::equality::without_equal(batch, &file.equality)
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
