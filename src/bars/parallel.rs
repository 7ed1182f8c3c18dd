//! Splitting the kernel's work across cores: scoped threads over parts, and series ranges of
//! about equal row counts.

/// `work` on each part, one scoped thread per part; a single part runs on the calling thread
/// (a candle query's live bars are a few hundred trades: a thread per query cost more than
/// the bars).
pub(super) fn on_threads<I: Send, T: Send>(parts: Vec<I>, work: impl Fn(I) -> T + Sync) -> Vec<T> {
    if parts.len() <= 1 {
        return parts.into_iter().map(work).collect();
    }
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || work(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("kernel thread"))
            .collect()
    })
}

/// Contiguous ranges of series with about equal row counts, at most `parts` of them
/// (`starts`: where each series' rows start, plus the end).
pub(super) fn balanced(starts: &[usize], parts: usize) -> Vec<std::ops::Range<usize>> {
    let n_series = starts.len() - 1;
    let total = starts[n_series];
    let per_part = total.div_ceil(parts.max(1)).max(1);
    let mut ranges = Vec::new();
    let mut from = 0;
    for s in 0..n_series {
        if starts[s + 1] - starts[from] >= per_part || s + 1 == n_series {
            ranges.push(from..s + 1);
            from = s + 1;
        }
    }
    ranges
}

/// Threads worth using for `rows` trades: small inputs (live bars of one series) stay on one.
pub(super) fn threads(rows: usize) -> usize {
    if rows < 1 << 16 {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
