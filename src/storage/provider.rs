//! DataFusion access to our tables: a `TableProvider` over one snapshot's live files, and a
//! `SchemaProvider` that pins each table to its current snapshot when a query plans.
//!
//! Files are pruned by our own partition and time-bound arithmetic (the crate's provider lists
//! every file of a matching manifest and compares `timestamptz` bounds without a time zone);
//! the filters are then handed to the Parquet source as an inexact predicate, so row groups
//! and pages are skipped by their statistics and DataFusion re-checks every row.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::ParquetAccessPlan;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::ExecutionPlan;
use iceberg_rust::spec::util::strip_prefix;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetObjectReader};

use super::catalog::Storage;
use super::error::Result;
use object_store::ObjectStore;

use super::schema::TableKind;
use super::snapshot::{Listing, LiveFile, TimeRange};

/// One table at one snapshot, readable by DataFusion.
#[derive(Debug)]
pub struct SnapshotTable {
    kind: TableKind,
    schema: SchemaRef,
    snapshot_id: Option<i64>,
    files: Vec<LiveFile>,
    store: Arc<dyn ObjectStore>,
}

/// The URL under which each scan registers the warehouse's store with DataFusion: file paths
/// are keys of that store, whether it is the local filesystem or a bucket.
const WAREHOUSE_URL: &str = "ohlcv-warehouse://files/";

impl SnapshotTable {
    /// Pins `kind` at `snapshot_id` (current when `None`).
    pub async fn load(
        storage: &Storage,
        kind: TableKind,
        snapshot_id: Option<i64>,
    ) -> Result<SnapshotTable> {
        let table = storage.table(kind).await?;
        let listing = Listing::read(&table, kind, snapshot_id, TimeRange::ALL).await?;
        Ok(SnapshotTable {
            kind,
            schema: kind.arrow_schema()?,
            snapshot_id: listing.snapshot_id,
            files: listing.files,
            store: storage.store(),
        })
    }

    pub fn snapshot_id(&self) -> Option<i64> {
        self.snapshot_id
    }

    /// Files a scan with `filters` has to open.
    pub fn files_for(&self, filters: &[Expr]) -> Vec<&LiveFile> {
        let range = time_range(self.kind.time_column(), filters);
        self.files
            .iter()
            .filter(|f| f.may_overlap(self.kind, &range))
            .collect()
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = self.files_for(filters);
        if files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let mut source = ParquetSource::new(Arc::clone(&self.schema));
        if let Some(predicate) = conjunction(filters.iter().cloned()) {
            let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
            source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
        }
        let mut plans = HashMap::new();
        for file in &files {
            if let Some(plan) = skip_deleted(&self.store, &self.kind.name(), file).await? {
                plans.insert(file.path(), Arc::new(plan));
            }
        }
        let groups = file_groups(&files, &plans, state.config().target_partitions());
        let url = ObjectStoreUrl::parse(WAREHOUSE_URL)?;
        state
            .runtime_env()
            .register_object_store(url.as_ref(), Arc::clone(&self.store));
        let config = FileScanConfigBuilder::new(url, Arc::new(source))
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// How DataFusion reads a file that position delete files cut rows from: every row group,
/// with the deleted rows skipped (`None`: the file has no deletes). A file with equality
/// deletes is refused by name: SQL cannot apply them yet (builds and candles do).
async fn skip_deleted(
    store: &Arc<dyn ObjectStore>,
    table: &str,
    file: &LiveFile,
) -> DfResult<Option<ParquetAccessPlan>> {
    if !file.equality.is_empty() {
        return Err(DataFusionError::External(Box::new(
            super::error::Error::Unsupported {
                table: table.to_string(),
                file: file.path().to_string(),
                feature: "equality delete files in a SQL query (builds and candles apply them; \
                          compacting the table's partition folds them in)"
                    .to_string(),
            },
        )));
    }
    let Some(deleted) = &file.deleted else {
        return Ok(None);
    };
    let mut reader =
        ParquetObjectReader::new(Arc::clone(store), super::warehouse::key(file.path()))
            .with_file_size(file.size() as u64);
    let metadata = reader.get_metadata(None).await?;
    let mut plan = ParquetAccessPlan::new_all(metadata.num_row_groups());
    let mut start = 0u64;
    for (i, group) in metadata.row_groups().iter().enumerate() {
        let end = start + group.num_rows() as u64;
        let from = deleted.partition_point(|&p| p < start);
        let to = deleted.partition_point(|&p| p < end);
        if from < to {
            let mut selectors = Vec::new();
            let mut at = start;
            for &p in &deleted[from..to] {
                if p > at {
                    selectors.push(RowSelector::select((p - at) as usize));
                }
                selectors.push(RowSelector::skip(1));
                at = p + 1;
            }
            if end > at {
                selectors.push(RowSelector::select((end - at) as usize));
            }
            plan.scan_selection(i, RowSelection::from(selectors));
        }
        start = end;
    }
    Ok(Some(plan))
}

/// Spreads files over `n` groups, largest first onto the lightest group; a file with an
/// access plan in `plans` is read as it says.
fn file_groups(
    files: &[&LiveFile],
    plans: &HashMap<&str, Arc<ParquetAccessPlan>>,
    n: usize,
) -> Vec<FileGroup> {
    let n = n.clamp(1, files.len().max(1));
    let mut sorted: Vec<&&LiveFile> = files.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.size()));
    let mut groups: Vec<(i64, Vec<PartitionedFile>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for file in sorted {
        let lightest = groups
            .iter_mut()
            .min_by_key(|(bytes, _)| *bytes)
            .expect("at least one group");
        lightest.0 += file.size();
        let path = strip_prefix(file.path());
        let path = path.trim_start_matches('/');
        let mut partitioned = PartitionedFile::new(path.to_string(), file.size() as u64);
        if let Some(plan) = plans.get(file.path()) {
            partitioned = partitioned.with_extensions(Arc::clone(plan) as _);
        }
        lightest.1.push(partitioned);
    }
    groups
        .into_iter()
        .filter(|(_, files)| !files.is_empty())
        .map(|(_, files)| FileGroup::new(files))
        .collect()
}

/// The range of `column` that rows passing every filter must lie in (unbounded when the
/// filters say nothing usable about it).
pub fn time_range(column: &str, filters: &[Expr]) -> TimeRange {
    let mut range = TimeRange::ALL;
    for filter in filters {
        narrow(column, filter, &mut range);
    }
    range
}

fn narrow(column: &str, expr: &Expr, range: &mut TimeRange) {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        if let Expr::Between(b) = expr {
            if !b.negated && is_column(&b.expr, column) {
                if let (Some(lo), Some(hi)) = (micros(&b.low), micros(&b.high)) {
                    tighten(range, Some(lo.floor), Some(hi.floor + 1));
                }
            }
        }
        return;
    };
    if *op == Operator::And {
        narrow(column, left, range);
        narrow(column, right, range);
        return;
    }
    let (op, value) = if is_column(left, column) {
        (*op, micros(right))
    } else if is_column(right, column) {
        match op.swap() {
            Some(swapped) => (swapped, micros(left)),
            None => return,
        }
    } else {
        return;
    };
    let Some(v) = value else { return };
    match op {
        Operator::Gt | Operator::GtEq => tighten(range, Some(v.floor), None),
        Operator::Lt => tighten(range, None, Some(v.ceil)),
        Operator::LtEq => tighten(range, None, Some(v.floor + 1)),
        Operator::Eq => tighten(range, Some(v.floor), Some(v.floor + 1)),
        _ => {}
    }
}

fn tighten(range: &mut TimeRange, start: Option<i64>, end: Option<i64>) {
    if let Some(s) = start {
        range.start = Some(range.start.map_or(s, |cur| cur.max(s)));
    }
    if let Some(e) = end {
        range.end = Some(range.end.map_or(e, |cur| cur.min(e)));
    }
}

fn is_column(expr: &Expr, column: &str) -> bool {
    matches!(expr, Expr::Column(c) if c.name == column)
}

/// A timestamp literal in microseconds, rounded both ways (nanosecond literals need not fall
/// on a microsecond).
struct Micros {
    floor: i64,
    ceil: i64,
}

fn micros(expr: &Expr) -> Option<Micros> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    let exact = |v: i64| Some(Micros { floor: v, ceil: v });
    match value {
        ScalarValue::TimestampMicrosecond(Some(v), _) => exact(*v),
        ScalarValue::TimestampMillisecond(Some(v), _) => exact(v.checked_mul(1_000)?),
        ScalarValue::TimestampSecond(Some(v), _) => exact(v.checked_mul(1_000_000)?),
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(Micros {
            floor: v.div_euclid(1_000),
            ceil: v.div_euclid(1_000) + i64::from(v.rem_euclid(1_000) != 0),
        }),
        _ => None,
    }
}

/// The `market` schema: each table resolves to its current snapshot at planning time, so one
/// query sees one committed state of each table it reads.
#[derive(Clone)]
pub struct MarketSchema {
    storage: Storage,
}

impl std::fmt::Debug for MarketSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketSchema")
            .field("namespace", &self.storage.namespace())
            .finish()
    }
}

impl MarketSchema {
    pub fn new(storage: Storage) -> MarketSchema {
        MarketSchema { storage }
    }

    fn kind(name: &str) -> Option<TableKind> {
        TableKind::all().find(|k| k.name() == name)
    }
}

#[async_trait]
impl SchemaProvider for MarketSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        TableKind::all().map(TableKind::name).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(kind) = Self::kind(name) else {
            return Ok(None);
        };
        let table = SnapshotTable::load(&self.storage, kind, None)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        Self::kind(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn ts(v: i64) -> Expr {
        lit(ScalarValue::TimestampMicrosecond(
            Some(v),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn ranges_come_from_comparisons_on_the_time_column() {
        let filters = vec![
            col("window_start").gt_eq(ts(100)),
            col("window_start").lt(ts(200)),
        ];
        assert_eq!(
            time_range("window_start", &filters),
            TimeRange::new(Some(100), Some(200))
        );
        let flipped = vec![ts(150).gt(col("window_start"))];
        assert_eq!(
            time_range("window_start", &flipped),
            TimeRange::new(None, Some(150))
        );
        let other = vec![col("symbol").eq(lit("BTC-USD")), col("ts").lt(ts(5))];
        assert_eq!(time_range("window_start", &other), TimeRange::ALL);
    }

    #[test]
    fn nanosecond_literals_widen_never_narrow() {
        let ns = lit(ScalarValue::TimestampNanosecond(Some(1_500), None));
        assert_eq!(
            time_range("ts", &[col("ts").lt(ns.clone())]),
            TimeRange::new(None, Some(2))
        );
        assert_eq!(
            time_range("ts", &[col("ts").gt_eq(ns)]),
            TimeRange::new(Some(1), None)
        );
    }
}
