//! Manifest entries read as the Iceberg spec defines them, whoever wrote the manifest.
//!
//! iceberg-rust 0.10's own reader (`Table::datafiles`) drops every entry it cannot decode
//! without a word and panics on a manifest it cannot open, so a file appended by another engine
//! could vanish from a read. Here every failure is an error naming the table and the manifest,
//! and the fields a writer may leave null are inherited exactly as the spec says: an `ADDED`
//! entry without a snapshot id or data sequence number takes its manifest's. An entry of any
//! other status must carry both (in a v2 manifest); one that does not is refused.

use std::io::Cursor;
use std::sync::Arc;

use apache_avro::types::Value as AvroValue;
use apache_avro::Reader as AvroReader;
use futures::stream::{self, StreamExt};
use iceberg_rust::spec::manifest::{ManifestEntry, ManifestEntryV1, ManifestEntryV2, Status};
use iceberg_rust::spec::manifest_list::{ManifestListEntry, ManifestListEntryEnum};
use iceberg_rust::spec::table_metadata::TableMetadata;
use object_store::{ObjectStore, ObjectStoreExt};

use super::error::{Error, Result};

/// Manifests read at once.
const CONCURRENCY: usize = 8;

/// Decoded manifest entries kept at most (all tables of the process together): a manifest
/// never changes once written, and every commit lists its table (the trades table gains a
/// manifest per ingest), so without this each commit read and decoded every manifest again
/// and cost more the more the table held.
const CACHED_ENTRIES: u64 = 200_000;

/// What a manifest decodes to depends on its bytes (its path: manifests are never rewritten
/// in place), the fields it inherits from its manifest-list entry, and the table's schema and
/// the manifest's partition spec, by which the partition tuple is typed.
type Key = (String, i64, i64, i32, i32);

fn decoded() -> &'static moka::sync::Cache<Key, Arc<Vec<ManifestEntry>>> {
    static DECODED: std::sync::OnceLock<moka::sync::Cache<Key, Arc<Vec<ManifestEntry>>>> =
        std::sync::OnceLock::new();
    DECODED.get_or_init(|| {
        moka::sync::Cache::builder()
            .max_capacity(CACHED_ENTRIES)
            .weigher(|_: &Key, entries: &Arc<Vec<ManifestEntry>>| {
                u32::try_from(entries.len()).unwrap_or(u32::MAX).max(1)
            })
            .build()
    })
}

fn key(metadata: &TableMetadata, manifest: &ManifestListEntry) -> Key {
    (
        manifest.manifest_path.clone(),
        manifest.sequence_number,
        manifest.added_snapshot_id,
        manifest.partition_spec_id,
        metadata.current_schema_id,
    )
}

/// Every entry of `manifests` (any status), with inherited fields filled in, paired with the
/// path of the manifest that lists it.
pub async fn read_entries(
    store: &Arc<dyn ObjectStore>,
    table: &str,
    metadata: &TableMetadata,
    manifests: &[ManifestListEntry],
) -> Result<Vec<(String, ManifestEntry)>> {
    let cache = decoded();
    let known: Vec<Option<Arc<Vec<ManifestEntry>>>> = manifests
        .iter()
        .map(|m| cache.get(&key(metadata, m)))
        .collect();
    // Owned futures only: a stream of futures borrowing the caller's data trips rustc's
    // higher-ranked `Send` check in the tasks that await this.
    let paths: Vec<String> = manifests
        .iter()
        .zip(&known)
        .filter(|(_, k)| k.is_none())
        .map(|(m, _)| m.manifest_path.clone())
        .collect();
    let store = Arc::clone(store);
    let mut fetched = stream::iter(paths)
        .map(move |path| {
            let store = Arc::clone(&store);
            async move {
                let got = store.get(&super::warehouse::key(&path)).await;
                match got {
                    Ok(object) => object.bytes().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .buffered(CONCURRENCY)
        .collect::<Vec<Result<prost::bytes::Bytes, String>>>()
        .await
        .into_iter();
    let mut out = Vec::new();
    for (manifest, known) in manifests.iter().zip(known) {
        let entries = match known {
            Some(entries) => entries,
            None => {
                let bytes = fetched
                    .next()
                    .expect("one fetch per manifest not cached")
                    .map_err(|e| unreadable(table, &manifest.manifest_path, e))?;
                let entries = Arc::new(decode(table, metadata, manifest, bytes.to_vec())?);
                cache.insert(key(metadata, manifest), Arc::clone(&entries));
                entries
            }
        };
        out.extend(
            entries
                .iter()
                .map(|entry| (manifest.manifest_path.clone(), entry.clone())),
        );
    }
    Ok(out)
}

/// The manifests of snapshot `snapshot_id`, read from its manifest list.
///
/// iceberg-rust 0.10 (`Table::manifests`) decodes every manifest's partition summary with the
/// types of the table's *default* spec, which fails (or misreads bounds) for manifests written
/// under an earlier spec of another shape (`identity(pair)` bounds read as a `year` int). Here
/// the summaries of manifests written with another spec are dropped: they only prune, and
/// pruning goes by file statistics instead.
pub async fn read_manifest_list(
    store: &Arc<dyn ObjectStore>,
    table: &str,
    metadata: &TableMetadata,
    snapshot_id: i64,
) -> Result<Vec<ManifestListEntry>> {
    let snapshot = metadata.snapshots.get(&snapshot_id).ok_or_else(|| {
        Error::Catalog(format!(
            "snapshot {snapshot_id} is not in the history of {table}"
        ))
    })?;
    let path = snapshot.manifest_list().clone();
    let bytes = store
        .get(&super::warehouse::key(&path))
        .await
        .map_err(|e| unreadable(table, &path, e))?
        .bytes()
        .await
        .map_err(|e| unreadable(table, &path, e))?;
    let reader =
        AvroReader::new(Cursor::new(bytes.to_vec())).map_err(|e| unreadable(table, &path, e))?;
    let mut out = Vec::new();
    for value in reader {
        let mut value = value.map_err(|e| unreadable(table, &path, e))?;
        if let AvroValue::Record(fields) = &mut value {
            let spec = fields.iter().find_map(|(n, v)| match (n.as_str(), v) {
                ("partition_spec_id", AvroValue::Int(id)) => Some(*id),
                _ => None,
            });
            if spec != Some(metadata.default_spec_id) {
                for (name, v) in fields.iter_mut() {
                    if name == "partitions" {
                        *v = AvroValue::Union(0, Box::new(AvroValue::Null));
                    }
                }
            }
        }
        let entry: ManifestListEntryEnum =
            apache_avro::from_value(&value).map_err(|e| unreadable(table, &path, e))?;
        out.push(
            ManifestListEntry::try_from_enum(entry, metadata)
                .map_err(|e| unreadable(table, &path, e))?,
        );
    }
    Ok(out)
}

/// Decodes one manifest file's entries.
fn decode(
    table: &str,
    metadata: &TableMetadata,
    manifest: &ManifestListEntry,
    bytes: Vec<u8>,
) -> Result<Vec<ManifestEntry>> {
    let path = manifest.manifest_path.as_str();
    let reader = AvroReader::new(Cursor::new(bytes)).map_err(|e| unreadable(table, path, e))?;
    let header = |key: &str| {
        reader
            .user_metadata()
            .get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let v1 = header("format-version").as_deref().unwrap_or("1") == "1";
    // The spec the manifest was written with is the table's spec of that id (the copy in the
    // manifest header is informative); the partition tuple is decoded against it.
    let spec = metadata
        .partition_specs
        .get(&manifest.partition_spec_id)
        .ok_or_else(|| Error::Unsupported {
            table: table.to_string(),
            file: path.to_string(),
            feature: format!(
                "partition spec {} which the table metadata does not define",
                manifest.partition_spec_id
            ),
        })?;
    let schema = metadata
        .current_schema(None)
        .map_err(|e| unreadable(table, path, e))?;
    let known_ids: std::collections::HashSet<i32> = schema.iter().map(|f| f.id).collect();
    let mut out = Vec::new();
    for value in reader {
        let mut value = value.map_err(|e| unreadable(table, path, e))?;
        normalize_entry(&mut value, &known_ids);
        let mut entry = if v1 {
            let raw: ManifestEntryV1 =
                apache_avro::from_value(&value).map_err(|e| unreadable(table, path, e))?;
            ManifestEntry::try_from_v1(raw, schema, spec)
        } else {
            let raw: ManifestEntryV2 =
                apache_avro::from_value(&value).map_err(|e| unreadable(table, path, e))?;
            ManifestEntry::try_from_v2(raw, schema, spec)
        }
        .map_err(|e| unreadable(table, path, e))?;
        inherit(&mut entry, manifest, v1).map_err(|reason| unreadable(table, path, reason))?;
        out.push(entry);
    }
    Ok(out)
}

/// Writes an entry the way iceberg-rust's decoder expects it, where writers legitimately
/// differ: every partition field an optional (`["null", T]` union) of a plain Avro type (the
/// spec lets writers declare required fields and logical types; pyiceberg writes a `day` value
/// as a required `date`), the file format in upper case (DuckDB writes `parquet`; Java
/// reads it case-insensitively), and column bounds only for fields of the current schema (a
/// dropped column's bounds, or a delete file's bounds on its own columns, are no error; they
/// prune nothing of ours).
fn normalize_entry(entry: &mut AvroValue, known_ids: &std::collections::HashSet<i32>) {
    let AvroValue::Record(fields) = entry else {
        return;
    };
    let Some((_, AvroValue::Record(file))) = fields.iter_mut().find(|(n, _)| n == "data_file")
    else {
        return;
    };
    if let Some((_, AvroValue::String(format))) = file.iter_mut().find(|(n, _)| n == "file_format")
    {
        format.make_ascii_uppercase();
    }
    for (name, value) in file.iter_mut() {
        if name == "lower_bounds" || name == "upper_bounds" {
            retain_known_bounds(value, known_ids);
        }
    }
    let Some((_, AvroValue::Record(partition))) = file.iter_mut().find(|(n, _)| n == "partition")
    else {
        return;
    };
    for (_, value) in partition.iter_mut() {
        let plain = match std::mem::replace(value, AvroValue::Null) {
            AvroValue::Union(i, inner) => {
                *value = AvroValue::Union(i, Box::new(plain_value(*inner)));
                continue;
            }
            other => plain_value(other),
        };
        *value = match plain {
            AvroValue::Null => AvroValue::Union(0, Box::new(AvroValue::Null)),
            v => AvroValue::Union(1, Box::new(v)),
        };
    }
}

/// Drops the entries of a bounds map (an Avro array of `{key, value}` records, possibly in a
/// union) whose field id is not in `known_ids`.
fn retain_known_bounds(value: &mut AvroValue, known_ids: &std::collections::HashSet<i32>) {
    match value {
        AvroValue::Union(_, inner) => retain_known_bounds(inner, known_ids),
        AvroValue::Array(items) => items.retain(|item| match item {
            AvroValue::Record(kv) => kv.iter().any(|(n, v)| {
                n == "key" && matches!(v, AvroValue::Int(id) if known_ids.contains(id))
            }),
            _ => true,
        }),
        _ => {}
    }
}

/// A logical-typed Avro value as its underlying primitive.
fn plain_value(value: AvroValue) -> AvroValue {
    match value {
        AvroValue::Date(d) | AvroValue::TimeMillis(d) => AvroValue::Int(d),
        AvroValue::TimeMicros(t)
        | AvroValue::TimestampMillis(t)
        | AvroValue::TimestampMicros(t)
        | AvroValue::TimestampNanos(t)
        | AvroValue::LocalTimestampMillis(t)
        | AvroValue::LocalTimestampMicros(t)
        | AvroValue::LocalTimestampNanos(t) => AvroValue::Long(t),
        other => other,
    }
}

/// Fills the fields an entry inherits from its manifest (spec: "Sequence Number Inheritance"
/// and "Snapshot ID Inheritance").
fn inherit(
    entry: &mut ManifestEntry,
    manifest: &ManifestListEntry,
    v1: bool,
) -> std::result::Result<(), String> {
    let added = *entry.status() == Status::Added;
    if entry.snapshot_id().is_none() {
        if !added {
            return Err("an existing or deleted entry has no snapshot id".to_string());
        }
        *entry.snapshot_id_mut() = Some(manifest.added_snapshot_id);
    }
    if entry.sequence_number().is_none() {
        if v1 {
            // v1 tables have no sequence numbers: every file is at 0.
            *entry.sequence_number_mut() = Some(0);
        } else if added {
            *entry.sequence_number_mut() = Some(manifest.sequence_number);
        } else {
            return Err("an existing or deleted entry has no sequence number".to_string());
        }
    }
    Ok(())
}

fn unreadable(table: &str, file: &str, reason: impl std::fmt::Display) -> Error {
    Error::Unreadable {
        table: table.to_string(),
        file: file.to_string(),
        reason: reason.to_string(),
    }
}
