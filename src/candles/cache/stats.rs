//! Cache counters: what `system.cache_stats`, the admin `GetCacheStats` and the metrics
//! endpoint (`ohlcv_cache_*`) report.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Reads outside the hot horizon, answered from the table without caching.
    pub table_reads: AtomicU64,
    pub evictions: AtomicU64,
    /// Queries answered with an answer kept from an identical earlier one (no bars looked up).
    pub answer_hits: AtomicU64,
    /// Queries whose answer could be kept but was computed.
    pub answer_misses: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of the counters and the cache's size.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheStats {
    pub enabled: bool,
    pub entries: u64,
    pub bytes: u64,
    pub capacity_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub table_reads: u64,
    pub evictions: u64,
    /// Trades held for live bars.
    pub live_trades: u64,
    pub answer_hits: u64,
    pub answer_misses: u64,
}

impl CacheStats {
    pub fn read(
        counters: &Counters,
        enabled: bool,
        entries: u64,
        bytes: u64,
        capacity: u64,
        live: u64,
    ) -> Self {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            enabled,
            entries,
            bytes,
            capacity_bytes: capacity,
            hits: get(&counters.hits),
            misses: get(&counters.misses),
            table_reads: get(&counters.table_reads),
            evictions: get(&counters.evictions),
            live_trades: live,
            answer_hits: get(&counters.answer_hits),
            answer_misses: get(&counters.answer_misses),
        }
    }

    /// Hits over lookups (0 before the first lookup).
    pub fn hit_ratio(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_ratio_counts_lookups() {
        let s = CacheStats {
            hits: 3,
            misses: 1,
            ..CacheStats::default()
        };
        assert_eq!(s.hit_ratio(), 0.75);
        assert_eq!(CacheStats::default().hit_ratio(), 0.0);
    }
}
