//! One series' rows of a bar table, reading only the pages that may hold them.
//!
//! Our data files are sorted by `(exchange, symbol, window_start)` and carry a page index
//! (per-page min/max of every column). A series is a run of rows, so the pages of the
//! `exchange`, `symbol` and `window_start` columns whose bounds admit it give the rows to
//! read; the others are never fetched. A file without a page index (written by another
//! engine) is read whole. The rows read are then filtered exactly.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch, Scalar, StringArray};
use arrow::compute::filter_record_batch;
use arrow::compute::kernels::boolean::and;
use arrow::compute::kernels::cmp::eq;
use arrow::datatypes::TimestampMicrosecondType;
use futures::{stream, StreamExt, TryStreamExt};
use object_store::ObjectStore;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, RowSelection, RowSelector};
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::page_index::column_index::ColumnIndexMetaData;

use super::error::Result;
use super::snapshot::{LiveFile, TimeRange};
use super::{Storage, TableKind};

/// Files read at once.
const READ_CONCURRENCY: usize = 8;

/// Which rows to keep.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub exchange: &'a str,
    pub symbol: &'a str,
    pub range: TimeRange,
}

/// The series' rows of `files` (a bar table's), in no particular order.
pub async fn read_series(
    storage: &Storage,
    kind: TableKind,
    files: &[&LiveFile],
    series: Series<'_>,
) -> Result<Vec<RecordBatch>> {
    let store = storage.store();
    let paths: Vec<String> = files.iter().map(|f| f.path().to_string()).collect();
    let batches: Vec<Vec<RecordBatch>> = stream::iter(paths)
        .map(|path| {
            let store = Arc::clone(&store);
            async move {
                let footer = storage.footer(&store, &path).await?;
                read_file(&store, kind, &path, footer, series).await
            }
        })
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(batches.into_iter().flatten().collect())
}

/// The latest `n` rows of the series before `series.range.end`, reading the newest files
/// first and stopping once `n` are found (a chart's "last 500 bars" of a cold series reads a
/// day or two of files, not years). Ascending order is not promised.
pub async fn read_latest(
    storage: &Storage,
    kind: TableKind,
    files: &[&LiveFile],
    series: Series<'_>,
    n: usize,
) -> Result<Vec<RecordBatch>> {
    let mut newest_first: Vec<&LiveFile> = files.to_vec();
    // Files without statistics sort first: they might hold anything.
    newest_first.sort_by_key(|f| std::cmp::Reverse(f.time_bounds().map_or(i64::MAX, |b| b.1)));
    let mut out = Vec::new();
    let mut found = 0;
    let mut i = 0;
    // One file first (a day of 1m bars holds a chart's 500), then twice as many each round.
    let mut round = 1;
    while i < newest_first.len() {
        // Every file that may hold rows newer than the oldest file of this round is read in
        // it, so a round never leaves a newer row behind a file it did not read.
        let mut end = (i + round).min(newest_first.len());
        round = (round * 2).min(READ_CONCURRENCY * 4);
        let oldest_min = newest_first[i..end]
            .iter()
            .map(|f| f.time_bounds().map_or(i64::MIN, |b| b.0))
            .min()
            .unwrap_or(i64::MIN);
        while end < newest_first.len()
            && newest_first[end]
                .time_bounds()
                .is_none_or(|b| b.1 >= oldest_min)
        {
            end += 1;
        }
        let rows = read_series(storage, kind, &newest_first[i..end], series).await?;
        found += rows.iter().map(RecordBatch::num_rows).sum::<usize>();
        out.extend(rows);
        if found >= n {
            break;
        }
        i = end;
    }
    Ok(out)
}

async fn read_file(
    store: &Arc<dyn ObjectStore>,
    kind: TableKind,
    path: &str,
    footer: ArrowReaderMetadata,
    series: Series<'_>,
) -> Result<Vec<RecordBatch>> {
    let reader = ParquetObjectReader::new(Arc::clone(store), super::warehouse::key(path));
    let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, footer);
    let selection = select(builder.metadata(), &series);
    let builder = match selection {
        Some(selection) => builder.with_row_selection(selection),
        None => builder,
    };
    let batches: Vec<RecordBatch> = builder.build()?.try_collect().await?;
    let target = kind.arrow_schema()?;
    let mut out = Vec::new();
    for batch in &batches {
        let batch = super::files::conform_columns(&kind.name(), &target, path, batch)?;
        let kept = filter_record_batch(&batch, &matches(&batch, &series)?)?;
        if kept.num_rows() > 0 {
            out.push(kept);
        }
    }
    Ok(out)
}

/// Rows of `batch` that belong to the series and range.
fn matches(batch: &RecordBatch, series: &Series<'_>) -> Result<BooleanArray> {
    let equal = |name: &str, value: &str| -> Result<BooleanArray> {
        let column = batch
            .column_by_name(name)
            .expect("bar tables have exchange and symbol");
        Ok(eq(column, &Scalar::new(StringArray::from(vec![value])))?)
    };
    let keys = and(
        &equal("exchange", series.exchange)?,
        &equal("symbol", series.symbol)?,
    )?;
    let starts = batch
        .column_by_name("window_start")
        .expect("bar tables have window_start")
        .as_primitive::<TimestampMicrosecondType>();
    let in_range: BooleanArray = starts
        .values()
        .iter()
        .map(|t| Some(series.range.overlaps_closed(*t, *t)))
        .collect();
    Ok(and(&keys, &in_range)?)
}

/// The rows whose pages may hold the series, or `None` to read everything (no page index,
/// or columns it does not know).
fn select(metadata: &ParquetMetaData, series: &Series<'_>) -> Option<RowSelection> {
    let (columns, offsets) = (metadata.column_index()?, metadata.offset_index()?);
    let schema = metadata.file_metadata().schema_descr();
    let position =
        |name: &str| (0..schema.num_columns()).find(|&i| schema.column(i).name() == name);
    let (exchange, symbol, start) = (
        position("exchange")?,
        position("symbol")?,
        position("window_start")?,
    );
    let mut selectors = Vec::new();
    for (g, group) in metadata.row_groups().iter().enumerate() {
        let rows = usize::try_from(group.num_rows()).ok()?;
        let pages = |column: usize, admits: &dyn Fn(&ColumnIndexMetaData, usize) -> bool| {
            pages(
                columns.get(g)?.get(column)?,
                offsets.get(g)?.get(column)?.page_locations(),
                rows,
                admits,
            )
        };
        let text = |value: &str| {
            let value = value.as_bytes().to_vec();
            move |index: &ColumnIndexMetaData, p: usize| match index {
                ColumnIndexMetaData::BYTE_ARRAY(i) => match (i.min_value(p), i.max_value(p)) {
                    (Some(lo), Some(hi)) => lo <= value.as_slice() && value.as_slice() <= hi,
                    // A page of NULLs holds no series.
                    _ => false,
                },
                _ => true,
            }
        };
        let range = series.range;
        let time = move |index: &ColumnIndexMetaData, p: usize| match index {
            ColumnIndexMetaData::INT64(i) => match (i.min_value(p), i.max_value(p)) {
                (Some(lo), Some(hi)) => range.overlaps_closed(*lo, *hi),
                _ => false,
            },
            _ => true,
        };
        let wanted = intersect(
            &intersect(
                &pages(exchange, &text(series.exchange))?,
                &pages(symbol, &text(series.symbol))?,
            ),
            &pages(start, &time)?,
        );
        let mut at = 0;
        for r in wanted {
            if r.start > at {
                selectors.push(RowSelector::skip(r.start - at));
            }
            selectors.push(RowSelector::select(r.end - r.start));
            at = r.end;
        }
        if rows > at {
            selectors.push(RowSelector::skip(rows - at));
        }
    }
    Some(RowSelection::from(selectors))
}

/// The row ranges of one column chunk's pages that `admits` (merged when adjacent).
fn pages(
    index: &ColumnIndexMetaData,
    locations: &[parquet::file::page_index::offset_index::PageLocation],
    rows: usize,
    admits: &dyn Fn(&ColumnIndexMetaData, usize) -> bool,
) -> Option<Vec<Range<usize>>> {
    if matches!(index, ColumnIndexMetaData::NONE) || locations.is_empty() {
        return None;
    }
    let mut out: Vec<Range<usize>> = Vec::new();
    for (p, location) in locations.iter().enumerate() {
        if !admits(index, p) {
            continue;
        }
        let lo = usize::try_from(location.first_row_index).ok()?;
        let hi = match locations.get(p + 1) {
            Some(next) => usize::try_from(next.first_row_index).ok()?,
            None => rows,
        };
        match out.last_mut() {
            Some(last) if last.end == lo => last.end = hi,
            _ => out.push(lo..hi),
        }
    }
    Some(out)
}

/// Rows in both lists of sorted, disjoint ranges.
fn intersect(a: &[Range<usize>], b: &[Range<usize>]) -> Vec<Range<usize>> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        let lo = a[i].start.max(b[j].start);
        let hi = a[i].end.min(b[j].end);
        if lo < hi {
            out.push(lo..hi);
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_intersect() {
        let r = |a: usize, b: usize| Range { start: a, end: b };
        assert_eq!(
            intersect(&[r(0, 10), r(20, 30)], &[r(5, 25)]),
            [r(5, 10), r(20, 25)]
        );
        assert!(intersect(&[r(0, 10)], &[r(10, 20)]).is_empty());
        assert_eq!(intersect(&[r(0, 100)], &[r(0, 100)]), [r(0, 100)]);
    }
}

#[cfg(test)]
mod pruning {
    use super::*;
    use crate::bars::kernel::compute_bars;
    use crate::timeframe::Timeframe;
    use crate::trades::generate::{generate, GeneratorConfig};
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::ObjectStoreExt;

    /// A day of 1m bars of 30 series in one file, as our writer writes it.
    async fn day_file() -> (Arc<dyn ObjectStore>, RecordBatch, ParquetMetaData) {
        let trades = generate(&GeneratorConfig {
            trades: 200_000,
            trades_per_second: 2.5,
            ..GeneratorConfig::default()
        })
        .unwrap();
        let kind = TableKind::Bars(Timeframe::M1);
        let bars = super::super::files::sort_rows(
            kind,
            &compute_bars(&[trades], Timeframe::M1, 0).unwrap(),
        )
        .unwrap();
        let (bytes, metadata) = super::super::files::encode(kind, &bars).unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        store
            .put(&Path::from("day.parquet"), bytes.into())
            .await
            .unwrap();
        (store, bars, metadata)
    }

    fn page_index() -> parquet::arrow::arrow_reader::ArrowReaderOptions {
        parquet::arrow::arrow_reader::ArrowReaderOptions::new()
            .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Optional)
    }

    #[tokio::test]
    async fn one_series_reads_its_pages_and_exactly_its_rows() {
        let (store, bars, _) = day_file().await;
        let kind = TableKind::Bars(Timeframe::M1);
        let range = TimeRange::new(Some(1_704_067_200_000_000 + 3_600_000_000), None);
        let series = Series {
            exchange: "coinbase",
            symbol: "ETH-USD",
            range,
        };
        let mut reader = ParquetObjectReader::new(Arc::clone(&store), "day.parquet".into());
        let footer = ArrowReaderMetadata::load_async(&mut reader, page_index())
            .await
            .unwrap();
        let got = read_file(&store, kind, "day.parquet", footer, series)
            .await
            .unwrap();
        let got = arrow::compute::concat_batches(&kind.arrow_schema().unwrap(), &got).unwrap();
        let expected = filter_record_batch(&bars, &matches(&bars, &series).unwrap()).unwrap();
        assert!(expected.num_rows() > 100, "the series has bars");
        assert_eq!(got, expected);

        // What the page index lets the reader skip.
        let reader = ParquetObjectReader::new(Arc::clone(&store), "day.parquet".into());
        let builder = ParquetRecordBatchStreamBuilder::new_with_options(reader, page_index())
            .await
            .unwrap();
        let selection = select(builder.metadata(), &series).expect("a page index");
        let selected = selection.row_count();
        assert!(
            // 30 series of ~1,300 rows in pages of 4,096: the series' pages and those at the
            // exchange boundaries, whose symbol bounds span every symbol.
            selected >= expected.num_rows() && selected * 2 < bars.num_rows(),
            "{selected} of {} rows selected for {} rows of the series",
            bars.num_rows(),
            expected.num_rows()
        );
    }
}
