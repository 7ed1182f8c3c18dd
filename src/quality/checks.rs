//! The four bar invariants as pure functions over bar batches (no I/O), each returning the
//! violating keys with the values that break the rule.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};

use crate::bars::columns::FxHashMap;

/// The invariants, in the order reports list them.
pub const CHECKS: [&str; 4] = [
    "ohlc_bounds",
    "positive_activity",
    "unique_aligned",
    "rollup_consistency",
];

/// How many violating keys a result keeps as samples.
pub const MAX_SAMPLES: usize = 20;

/// Sums and vwap of a rollup may differ from the stored bar by the rounding of each child's
/// sum to a double; everything else must match exactly.
const SUM_TOLERANCE: f64 = 1e-9;

const FLOAT_MEASURES: [&str; 8] = crate::build::diff::MEASURES_F64;
const OTHER_MEASURES: [&str; 4] = [
    "window_end",
    "trade_count",
    "first_trade_ts",
    "last_trade_ts",
];

/// One violating bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub exchange: String,
    pub symbol: String,
    pub window_start: i64,
    /// What is wrong, with the offending values.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let start = chrono::DateTime::from_timestamp_micros(self.window_start)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| self.window_start.to_string());
        write!(
            f,
            "{}/{} {start}: {}",
            self.exchange, self.symbol, self.detail
        )
    }
}

/// Violations of one check: a count and up to [`MAX_SAMPLES`] of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Found {
    pub count: u64,
    pub samples: Vec<Violation>,
}

impl Found {
    fn push(&mut self, v: Violation) {
        self.count += 1;
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(v);
        }
    }

    /// Adds another part's violations (ranges checked one after another).
    pub fn merge(&mut self, other: Found) {
        self.count += other.count;
        let room = MAX_SAMPLES - self.samples.len();
        self.samples.extend(other.samples.into_iter().take(room));
    }
}

/// Column accessors of one bar batch.
struct Bars<'a> {
    b: &'a RecordBatch,
}

impl<'a> Bars<'a> {
    fn f(&self, name: &str) -> &'a arrow::array::Float64Array {
        self.b
            .column_by_name(name)
            .expect("bar column")
            .as_primitive::<Float64Type>()
    }

    fn ts(&self, name: &str) -> &'a arrow::array::TimestampMicrosecondArray {
        self.b
            .column_by_name(name)
            .expect("bar column")
            .as_primitive::<TimestampMicrosecondType>()
    }

    fn count(&self) -> &'a arrow::array::Int64Array {
        self.b
            .column_by_name("trade_count")
            .expect("bar column")
            .as_primitive::<Int64Type>()
    }

    fn violation(&self, row: usize, detail: String) -> Violation {
        let (exchange, symbol, window_start) = self.key(row);
        Violation {
            exchange: exchange.to_string(),
            symbol: symbol.to_string(),
            window_start,
            detail,
        }
    }

    fn key(&self, row: usize) -> (&'a str, &'a str, i64) {
        let s = |name: &str| {
            self.b
                .column_by_name(name)
                .expect("bar column")
                .as_string::<i32>()
                .value(row)
        };
        (
            s("exchange"),
            s("symbol"),
            self.ts("window_start").value(row),
        )
    }
}

/// `ohlc_bounds`: low <= open, close <= high and vwap within [low, high]. Rows with a missing
/// or NaN price are left to `positive_activity`.
pub fn ohlc_bounds(batches: &[RecordBatch]) -> Found {
    let mut found = Found::default();
    for b in batches {
        let bars = Bars { b };
        let (open, high, low, close, vwap) = (
            bars.f("open"),
            bars.f("high"),
            bars.f("low"),
            bars.f("close"),
            bars.f("vwap"),
        );
        for row in 0..b.num_rows() {
            let cols = [open, high, low, close, vwap];
            if cols.iter().any(|c| c.is_null(row) || c.value(row).is_nan()) {
                continue;
            }
            let (o, h, l, c, v) = (
                open.value(row),
                high.value(row),
                low.value(row),
                close.value(row),
                vwap.value(row),
            );
            // vwap is a quotient of two rounded sums: allow it a rounding step past the range.
            let slack = SUM_TOLERANCE * h.abs().max(l.abs());
            let mut broken = Vec::new();
            if l > h {
                broken.push(format!("low {l} > high {h}"));
            }
            for (name, x) in [("open", o), ("close", c)] {
                if x < l || x > h {
                    broken.push(format!("{name} {x} outside [low {l}, high {h}]"));
                }
            }
            if v < l - slack || v > h + slack {
                broken.push(format!("vwap {v} outside [low {l}, high {h}]"));
            }
            if !broken.is_empty() {
                found.push(bars.violation(row, broken.join("; ")));
            }
        }
    }
    found
}

/// `positive_activity`: volume > 0, trade_count >= 1, no NULL or NaN in any measure.
pub fn positive_activity(batches: &[RecordBatch]) -> Found {
    let mut found = Found::default();
    for b in batches {
        let bars = Bars { b };
        let volume = bars.f("volume");
        let count = bars.count();
        for row in 0..b.num_rows() {
            let mut broken = Vec::new();
            for name in FLOAT_MEASURES {
                let c = bars.f(name);
                if c.is_null(row) {
                    broken.push(format!("{name} is NULL"));
                } else if c.value(row).is_nan() {
                    broken.push(format!("{name} is NaN"));
                }
            }
            for name in OTHER_MEASURES {
                if b.column_by_name(name).expect("bar column").is_null(row) {
                    broken.push(format!("{name} is NULL"));
                }
            }
            if volume.is_valid(row) && volume.value(row) <= 0.0 {
                broken.push(format!("volume {} <= 0", volume.value(row)));
            }
            if count.is_valid(row) && count.value(row) < 1 {
                broken.push(format!("trade_count {} < 1", count.value(row)));
            }
            if !broken.is_empty() {
                found.push(bars.violation(row, broken.join("; ")));
            }
        }
    }
    found
}

/// `unique_aligned`: one row per key, window_start a multiple of the timeframe, window_end =
/// window_start + timeframe. A duplicated key is reported once, with its number of rows.
pub fn unique_aligned(batches: &[RecordBatch], tf_us: i64) -> Found {
    let mut found = Found::default();
    let mut seen: FxHashMap<(&str, &str, i64), (usize, usize, u32)> = FxHashMap::default();
    for (bi, b) in batches.iter().enumerate() {
        let bars = Bars { b };
        let (start, end) = (bars.ts("window_start"), bars.ts("window_end"));
        for row in 0..b.num_rows() {
            seen.entry(bars.key(row)).or_insert((bi, row, 0)).2 += 1;
            let s = start.value(row);
            let mut broken = Vec::new();
            if s.rem_euclid(tf_us) != 0 {
                broken.push(format!(
                    "window_start not aligned to {}s (off by {}us)",
                    tf_us / 1_000_000,
                    s.rem_euclid(tf_us)
                ));
            }
            if end.is_null(row) || end.value(row) != s + tf_us {
                let e = (!end.is_null(row)).then(|| end.value(row));
                broken.push(format!(
                    "window_end {e:?} != window_start + {}s",
                    tf_us / 1_000_000
                ));
            }
            if !broken.is_empty() {
                found.push(bars.violation(row, broken.join("; ")));
            }
        }
    }
    let mut dups: Vec<_> = seen.into_values().filter(|v| v.2 > 1).collect();
    dups.sort_unstable();
    for (bi, row, n) in dups {
        let bars = Bars { b: &batches[bi] };
        found.push(bars.violation(row, format!("{n} rows share this key")));
    }
    found
}

/// `rollup_consistency`: `stored` bars against `expected` (the rollup of the lower timeframe,
/// or 1m recomputed from trades), both already cut to the windows that can be compared.
/// A window expected but not stored is a missing bar (completeness); a stored bar with nothing
/// under it, or with different values, is inconsistent.
pub fn rollup_consistency(stored: &[RecordBatch], expected: &[RecordBatch]) -> Found {
    let mut found = Found::default();
    let mut want: BTreeMap<(&str, &str, i64), (&RecordBatch, usize)> = BTreeMap::new();
    for b in expected {
        let bars = Bars { b };
        for row in 0..b.num_rows() {
            want.insert(bars.key(row), (b, row));
        }
    }
    let mut matched: FxHashMap<(&str, &str, i64), ()> = FxHashMap::default();
    for b in stored {
        let bars = Bars { b };
        for row in 0..b.num_rows() {
            let key = bars.key(row);
            match want.get(&key) {
                None => found.push(bars.violation(
                    row,
                    "bar has no trades or lower-timeframe bars under it".into(),
                )),
                Some((eb, erow)) => {
                    matched.insert(key, ());
                    let diffs = differences(&bars, row, &Bars { b: eb }, *erow);
                    if !diffs.is_empty() {
                        found.push(bars.violation(row, diffs.join("; ")));
                    }
                }
            }
        }
    }
    for (key, (b, row)) in want {
        if !matched.contains_key(&key) {
            let bars = Bars { b };
            let n = bars.count().value(row);
            found.push(bars.violation(row, format!("missing bar ({n} trades under it)")));
        }
    }
    found
}

fn differences(a: &Bars<'_>, ar: usize, b: &Bars<'_>, br: usize) -> Vec<String> {
    let mut out = Vec::new();
    for name in FLOAT_MEASURES {
        let (x, y) = (a.f(name), b.f(name));
        let (xv, yv) = (
            x.is_valid(ar).then(|| x.value(ar)),
            y.is_valid(br).then(|| y.value(br)),
        );
        let same = match (xv, yv) {
            (Some(p), Some(q)) if matches!(name, "open" | "high" | "low" | "close") => {
                p.to_bits() == q.to_bits()
            }
            (Some(p), Some(q)) => (p - q).abs() <= SUM_TOLERANCE * p.abs().max(q.abs()),
            (p, q) => p.is_none() && q.is_none(),
        };
        if !same {
            out.push(format!("{name} {} != expected {}", show(xv), show(yv)));
        }
    }
    let count =
        |bars: &Bars<'_>, row: usize| bars.count().is_valid(row).then(|| bars.count().value(row));
    if count(a, ar) != count(b, br) {
        out.push(format!(
            "trade_count {} != expected {}",
            show(count(a, ar)),
            show(count(b, br))
        ));
    }
    for name in ["window_end", "first_trade_ts", "last_trade_ts"] {
        let (x, y) = (a.ts(name), b.ts(name));
        let (xv, yv) = (
            x.is_valid(ar).then(|| x.value(ar)),
            y.is_valid(br).then(|| y.value(br)),
        );
        if xv != yv {
            out.push(format!("{name} {} != expected {}", show(xv), show(yv)));
        }
    }
    out
}

fn show<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "NULL".to_string(), |v| v.to_string())
}
