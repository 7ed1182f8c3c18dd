//! Metadata that never changes once written, kept between reads: the listing of a table at a
//! snapshot (a snapshot's files are fixed), and the Parquet footer with its page index of a
//! data file (files are immutable). A cold series read then costs the pages it needs, not a
//! catalog round trip, the manifests and a footer per file on every query.

use std::sync::Arc;

use moka::sync::Cache;
use object_store::ObjectStore;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::ParquetObjectReader;

use super::error::Result;
use super::schema::TableKind;
use super::snapshot::Listing;

/// Listings kept: a few snapshots of each table.
const LISTINGS: u64 = 32;
/// Bytes of Parquet footers kept.
const FOOTER_BYTES: u64 = 128 << 20;

/// The caches; one per `Storage`.
pub struct MetaCache {
    listings: Cache<(TableKind, i64), Arc<Listing>>,
    footers: Cache<String, ArrowReaderMetadata>,
}

impl Default for MetaCache {
    fn default() -> Self {
        MetaCache {
            listings: Cache::new(LISTINGS),
            footers: Cache::builder()
                .max_capacity(FOOTER_BYTES)
                .weigher(|path: &String, m: &ArrowReaderMetadata| {
                    (path.len() + m.metadata().memory_size()).min(u32::MAX as usize) as u32
                })
                .build(),
        }
    }
}

impl MetaCache {
    /// The listing of `kind` at `snapshot`, computed by `read` the first time.
    pub async fn listing(
        &self,
        kind: TableKind,
        snapshot: i64,
        read: impl std::future::Future<Output = Result<Listing>>,
    ) -> Result<Arc<Listing>> {
        let key = (kind, snapshot);
        if let Some(listing) = self.listings.get(&key) {
            return Ok(listing);
        }
        let listing = Arc::new(read.await?);
        self.listings.insert(key, Arc::clone(&listing));
        Ok(listing)
    }

    /// The footer and page index of the data file at `path`, read once.
    pub async fn footer(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &str,
    ) -> Result<ArrowReaderMetadata> {
        if let Some(footer) = self.footers.get(path) {
            return Ok(footer);
        }
        let mut reader = ParquetObjectReader::new(Arc::clone(store), super::warehouse::key(path));
        let options = ArrowReaderOptions::new()
            .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Optional);
        let footer = ArrowReaderMetadata::load_async(&mut reader, options).await?;
        self.footers.insert(path.to_string(), footer.clone());
        Ok(footer)
    }
}
