//! Direct reads of table rows for the engine itself (builds, validation, cache refresh): the
//! live files of one snapshot that can hold a time range, read in full and cut to the range.

use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch, TimestampMicrosecondArray};
use arrow::buffer::BooleanBuffer;
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
                // A file inside one range (nearly every file of a chunked build or a rollup's
                // day) keeps its rows without a test of each (keep_in was 1.4 % of a first
                // attach's CPU, issue 24).
                let whole = file.inside_one_of(&ranges);
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
                        let kept = match whole {
                            true => batch,
                            false => keep_in(&batch, time_column(kind, &batch)?, &ranges)?,
                        };
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
    let values = ts.values();
    let keep = BooleanArray::new(
        BooleanBuffer::collect_bool(values.len(), |i| {
            ranges.iter().any(|r| r.holds(values[i], values[i]))
        }),
        None,
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(ts: TimestampMicrosecondArray) -> RecordBatch {
        let rows = Int64Array::from_iter_values(0..ts.len() as i64);
        let schema = Schema::new(vec![
            Field::new("ts", ts.data_type().clone(), true),
            Field::new("row", DataType::Int64, false),
        ]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ts), Arc::new(rows)]).unwrap()
    }

    fn kept(ts: Vec<Option<i64>>, ranges: &[(i64, i64)]) -> Vec<i64> {
        let ts = TimestampMicrosecondArray::from(ts);
        let ranges: Vec<TimeRange> = ranges
            .iter()
            .map(|(s, e)| TimeRange::new(Some(*s), Some(*e)))
            .collect();
        let out = keep_in(&batch(ts.clone()), &ts, &ranges).unwrap();
        let rows = out.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        rows.values().to_vec()
    }

    #[test]
    fn rows_are_kept_by_half_open_ranges() {
        let ts = || vec![Some(10), Some(20), Some(30), Some(40)];
        // Inside one range whole, at its start.
        assert_eq!(kept(ts(), &[(10, 41)]), vec![0, 1, 2, 3]);
        // The end is outside.
        assert_eq!(kept(ts(), &[(10, 40)]), vec![0, 1, 2]);
        // The extremes in two ranges, a row between them in neither.
        assert_eq!(kept(ts(), &[(0, 15), (35, 50)]), vec![0, 3]);
        // Covered by two ranges together, by neither alone.
        assert_eq!(kept(ts(), &[(0, 25), (25, 50)]), vec![0, 1, 2, 3]);
        assert!(kept(ts(), &[(50, 60)]).is_empty());
        // The closed span a file's statistics give is inside a range only short of its end.
        let range = TimeRange::new(Some(10), Some(40));
        assert!(range.holds(10, 39) && !range.holds(10, 40) && !range.holds(9, 20));
        assert!(TimeRange::ALL.holds(i64::MIN, i64::MAX));
        // A NULL time is kept only where its slot's value would be.
        assert_eq!(
            kept(vec![Some(10), None, Some(30)], &[(10, 31)]),
            vec![0, 2]
        );
    }
}
