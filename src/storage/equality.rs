//! Equality delete files of a table another engine writes (Flink and Spark upserts in
//! merge-on-read mode write them): each row of such a file deletes every row of the table whose
//! columns `equality_ids` equal it, in the data files it applies to.
//!
//! The spec's rule: an equality delete applies to a data file whose data sequence number is
//! strictly lower than the delete's, in the same partition (spec and values), or in every
//! partition when the delete's spec is unpartitioned. NULLs compare equal. The keys are compared
//! as Arrow row encodings of the table's current column types, so a delete written before a
//! type promotion (int to long) still matches.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use iceberg_rust::spec::manifest::ManifestEntry;
use iceberg_rust::spec::values::Struct;
use object_store::ObjectStore;
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;

use super::error::{Error, Result};

/// Where an equality delete file applies.
#[derive(Debug, Clone)]
pub struct Scope {
    pub sequence: i64,
    /// The delete's spec and partition tuple; `None` when that spec is unpartitioned.
    pub partition: Option<(i32, Struct)>,
}

impl Scope {
    /// Whether a data file (its data sequence number, spec and partition) is in scope.
    pub fn applies_to(&self, sequence: i64, spec: i32, partition: &Struct) -> bool {
        sequence < self.sequence
            && self
                .partition
                .as_ref()
                .is_none_or(|(s, p)| *s == spec && p == partition)
    }
}

/// One equality delete file's keys.
pub struct EqualityDelete {
    pub path: String,
    pub scope: Scope,
    field_ids: Vec<i32>,
    converter: RowConverter,
    keys: HashSet<Box<[u8]>>,
}

impl std::fmt::Debug for EqualityDelete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EqualityDelete")
            .field("path", &self.path)
            .field("field_ids", &self.field_ids)
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn field_id(f: &Field) -> Option<i32> {
    f.metadata().get(PARQUET_FIELD_ID_META_KEY)?.parse().ok()
}

impl EqualityDelete {
    /// Reads the delete file of `entry` against `schema` (the table's current schema as Arrow,
    /// with field ids).
    pub async fn load(
        store: &Arc<dyn ObjectStore>,
        table: &str,
        schema: &SchemaRef,
        entry: &ManifestEntry,
        scope: Scope,
    ) -> Result<EqualityDelete> {
        let file = entry.data_file();
        let path = file.file_path().clone();
        let unsupported = |feature: String| Error::Unsupported {
            table: table.to_string(),
            file: path.clone(),
            feature,
        };
        let field_ids = file
            .equality_ids()
            .clone()
            .filter(|ids| !ids.is_empty())
            .ok_or_else(|| unsupported("an equality delete file without equality_ids".into()))?;
        let mut fields = Vec::with_capacity(field_ids.len());
        for id in &field_ids {
            let field = schema
                .fields()
                .iter()
                .find(|f| field_id(f) == Some(*id))
                .ok_or_else(|| {
                    unsupported(format!(
                        "equality deletes on field {id}, which the table's schema no longer has"
                    ))
                })?;
            // A delete file may lack a column its rows leave NULL.
            fields.push(field.as_ref().clone().with_nullable(true));
        }
        let target: SchemaRef = Arc::new(Schema::new(fields.clone()));
        let converter = RowConverter::new(
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let mut keys = HashSet::new();
        for batch in super::files::read_data_file_as(store, table, &target, &path).await? {
            let rows = converter.convert_columns(batch.columns())?;
            keys.extend(rows.iter().map(|r| Box::<[u8]>::from(r.as_ref())));
        }
        Ok(EqualityDelete {
            path,
            scope,
            field_ids,
            converter,
            keys,
        })
    }

    /// Marks `false` in `keep` the rows of `batch` (the table's current schema) this delete
    /// removes.
    pub fn apply(&self, batch: &RecordBatch, keep: &mut [bool]) -> Result<()> {
        let schema = batch.schema();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.field_ids.len());
        for id in &self.field_ids {
            let i = schema
                .fields()
                .iter()
                .position(|f| field_id(f) == Some(*id))
                .ok_or_else(|| {
                    Error::Catalog(format!(
                        "equality delete {}: field {id} is not in the rows read",
                        self.path
                    ))
                })?;
            columns.push(Arc::clone(batch.column(i)));
        }
        let rows = self.converter.convert_columns(&columns)?;
        for (row, keep) in rows.iter().zip(keep.iter_mut()) {
            if *keep && self.keys.contains(row.as_ref()) {
                *keep = false;
            }
        }
        Ok(())
    }
}

/// `batch` without the rows any of `deletes` removes.
pub fn without_equal(batch: RecordBatch, deletes: &[Arc<EqualityDelete>]) -> Result<RecordBatch> {
    if deletes.is_empty() {
        return Ok(batch);
    }
    let mut keep = vec![true; batch.num_rows()];
    for delete in deletes {
        delete.apply(&batch, &mut keep)?;
    }
    Ok(arrow::compute::filter_record_batch(
        &batch,
        &BooleanArray::from(keep),
    )?)
}
