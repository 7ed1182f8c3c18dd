//! Trades into series order: the kernel aggregates each `(exchange, symbol)` from contiguous
//! memory, so its rows are first moved there, in two passes over the input.
//!
//! 1. Count: each part of the input (a run of batches, or of a file's row groups) is read for
//!    its series keys only, giving each part's row count per series.
//! 2. Move: from the counts every (part, series) owns one disjoint range of the output columns;
//!    each part is read again, whole, on its own core and its rows are written into its ranges,
//!    and its batches are dropped as soon as they are moved.
//!
//! So a file is never held decoded whole: the memory touched is the columns in series order
//! (33 bytes a trade) plus the batches in flight. On this VM the first touch of fresh memory is
//! the largest cost of a large input, which is what made the kernel grow faster than its input.
//! Trade ids that are not canonical numbers keep their batch's id column, and their position
//! there, to be compared as text.

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, TimeUnit, TimestampMicrosecondType};

use super::columns::{column, FxHashMap, Strings, TradeIds};
use super::error::{Error, Result};
use super::parallel::on_threads;
use crate::trades::normalize::all_positive_finite;

/// Set on an id that is compared as text; the other bits are the row's input position. Ids from
/// 2^63 up are kept as text too: as decimal text they compare and dedupe the same either way.
pub(super) const TEXT: u64 = 1 << 63;

/// An input read in parts, each on its own core, each twice (the batches must be the same rows
/// in the same order both times).
pub(super) trait Parts: Sync {
    fn parts(&self) -> usize;
    /// Whether each batch's series ids are worth keeping from the count for the move: they
    /// cost 4 bytes a row, which input already in memory can spare and a file read twice
    /// (to hold only the ordered columns) cannot.
    fn keep_series(&self) -> bool {
        false
    }
    /// Calls `each` with the batches of `part` in order; with `keys_only`, only `exchange` and
    /// `symbol` are needed.
    fn read(
        &self,
        part: usize,
        keys_only: bool,
        each: &mut dyn FnMut(&RecordBatch) -> Result<()>,
    ) -> Result<()>;
}

/// Batches already in memory, split into `parts` runs.
pub(super) struct InMemory<'b> {
    pub runs: Vec<&'b [&'b RecordBatch]>,
}

impl Parts for InMemory<'_> {
    fn parts(&self) -> usize {
        self.runs.len()
    }

    fn keep_series(&self) -> bool {
        true
    }

    fn read(
        &self,
        part: usize,
        _keys_only: bool,
        each: &mut dyn FnMut(&RecordBatch) -> Result<()>,
    ) -> Result<()> {
        self.runs[part].iter().try_for_each(|b| each(b))
    }
}

/// `(exchange, symbol)`.
type SeriesKey = (String, String);

/// The trades in series order.
pub(super) struct Ordered {
    /// `(exchange, symbol)` of each series id, sorted.
    pub keys: Vec<SeriesKey>,
    /// Where each series' rows start (one extra entry at the end).
    pub starts: Vec<usize>,
    pub ts: Vec<i64>,
    pub price: Vec<f64>,
    pub qty: Vec<f64>,
    /// The id as a number, or `TEXT` | the row's input position.
    pub id: Vec<u64>,
    pub buy: Vec<bool>,
    /// The id columns of the batches that have text ids, by the input position of their first row.
    pub texts: Vec<(usize, ArrayRef)>,
}

/// One part's rows per series, its series numbered in order of appearance.
#[derive(Default)]
struct Counted {
    keys: Vec<SeriesKey>,
    rows: Vec<usize>,
    /// Each batch's series, when the input keeps them (`Parts::keep_series`).
    series: Vec<Series>,
}

/// A batch's `(exchange, symbol)` pairs in order of appearance and each row's index among
/// them (`series_of`).
type Series = (Vec<SeriesKey>, Vec<u32>);

pub(super) fn order(input: &dyn Parts) -> Result<Ordered> {
    let mut counted: Vec<Counted> =
        on_threads((0..input.parts()).collect(), |part| count(input, part))
            .into_iter()
            .collect::<Result<_>>()?;
    let series: Vec<Vec<Series>> = counted
        .iter_mut()
        .map(|c| std::mem::take(&mut c.series))
        .collect();

    let mut keys: Vec<SeriesKey> = counted
        .iter()
        .flat_map(|c| c.keys.iter().cloned())
        .collect::<super::columns::FxHashSet<_>>()
        .into_iter()
        .collect();
    keys.sort_unstable();
    let index: FxHashMap<SeriesKey, u32> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), i as u32))
        .collect();
    // rows[part][series], over the global series ids.
    let rows: Vec<Vec<usize>> = counted
        .iter()
        .map(|c| {
            let mut rows = vec![0; keys.len()];
            for (k, n) in c.keys.iter().zip(&c.rows) {
                rows[index[k] as usize] = *n;
            }
            rows
        })
        .collect();
    drop(counted);
    let mut starts = vec![0usize; keys.len() + 1];
    for s in 0..keys.len() {
        starts[s + 1] = starts[s] + rows.iter().map(|r| r[s]).sum::<usize>();
    }
    let part_first_row: Vec<usize> = rows
        .iter()
        .scan(0, |first, r| {
            let this = *first;
            *first += r.iter().sum::<usize>();
            Some(this)
        })
        .collect();

    let total = starts[keys.len()];
    let mut ts = vec![0i64; total];
    let mut price = vec![0f64; total];
    let mut qty = vec![0f64; total];
    let mut id = vec![0u64; total];
    let mut buy = vec![false; total];
    let slots: Vec<Slots> = split(&mut ts, &rows)
        .into_iter()
        .zip(split(&mut price, &rows))
        .zip(split(&mut qty, &rows))
        .zip(split(&mut id, &rows))
        .zip(split(&mut buy, &rows))
        .map(|((((ts, price), qty), id), buy)| Slots {
            next: vec![0; ts.len()],
            ts,
            price,
            qty,
            id,
            buy,
        })
        .collect();
    let index = &index;
    let parts: Vec<(usize, (Slots, Vec<Series>))> =
        slots.into_iter().zip(series).enumerate().collect();
    let texts = on_threads(parts, |(part, (mut slots, series))| {
        let mut first = part_first_row[part];
        let mut texts = Vec::new();
        let mut series = series.into_iter();
        input.read(part, false, &mut |batch| {
            if let Some(ids) = slots.fill(batch, first, index, series.next())? {
                texts.push((first, ids));
            }
            first += batch.num_rows();
            Ok(())
        })?;
        slots.check_full()?;
        Ok(texts)
    })
    .into_iter()
    .collect::<Result<Vec<_>>>()?
    .into_iter()
    .flatten()
    .collect();
    Ok(Ordered {
        keys,
        starts,
        ts,
        price,
        qty,
        id,
        buy,
        texts,
    })
}

fn count(input: &dyn Parts, part: usize) -> Result<Counted> {
    let mut counted = Counted::default();
    let mut seen: FxHashMap<SeriesKey, usize> = FxHashMap::default();
    let keep = input.keep_series();
    input.read(part, true, &mut |batch| {
        let (keys, local) = series_of(batch)?;
        let mut rows = vec![0usize; keys.len()];
        for l in &local {
            rows[*l as usize] += 1;
        }
        if keep {
            counted.series.push((keys.clone(), local));
        }
        for (key, n) in keys.into_iter().zip(rows) {
            let i = *seen.entry(key.clone()).or_insert_with(|| {
                counted.keys.push(key);
                counted.rows.push(0);
                counted.rows.len() - 1
            });
            counted.rows[i] += n;
        }
        Ok(())
    })?;
    Ok(counted)
}

/// `v` cut into one piece per (part, series): series-major, so each series' rows are
/// contiguous, its parts in order within it.
fn split<'v, T>(mut v: &'v mut [T], rows: &[Vec<usize>]) -> Vec<Vec<&'v mut [T]>> {
    let mut out: Vec<Vec<&mut [T]>> = rows.iter().map(|_| Vec::new()).collect();
    let series = rows.first().map_or(0, |r| r.len());
    for s in 0..series {
        for (part, r) in rows.iter().enumerate() {
            let (head, tail) = std::mem::take(&mut v).split_at_mut(r[s]);
            out[part].push(head);
            v = tail;
        }
    }
    out
}

/// One part's ranges of the output columns, per global series, and how far each is filled.
struct Slots<'v> {
    ts: Vec<&'v mut [i64]>,
    price: Vec<&'v mut [f64]>,
    qty: Vec<&'v mut [f64]>,
    id: Vec<&'v mut [u64]>,
    buy: Vec<&'v mut [bool]>,
    next: Vec<usize>,
}

impl Slots<'_> {
    /// Moves the rows of `batch` (whose first row is input row `first`) into place; returns its
    /// id column when some ids must be compared as text. `series`: the batch's series as the
    /// count found them, if kept.
    fn fill(
        &mut self,
        batch: &RecordBatch,
        first: usize,
        index: &FxHashMap<SeriesKey, u32>,
        series: Option<Series>,
    ) -> Result<Option<ArrayRef>> {
        let changed = || Error::Input("the input changed while it was read".into());
        if series
            .as_ref()
            .is_some_and(|(_, local)| local.len() != batch.num_rows())
        {
            return Err(changed());
        }
        let d = decode_batch(batch, first, series)?;
        let remap: Vec<usize> = d
            .keys
            .iter()
            .map(|k| index.get(k).map(|s| *s as usize).ok_or_else(changed))
            .collect::<Result<_>>()?;
        let (ts, price, qty) = (
            micros(batch)?,
            floats(batch, "price")?,
            floats(batch, "quantity")?,
        );
        let mut text = false;
        for (r, l) in d.local.iter().enumerate() {
            let s = remap[*l as usize];
            let p = self.next[s];
            if p >= self.ts[s].len() {
                return Err(changed());
            }
            self.next[s] = p + 1;
            self.ts[s][p] = ts[r];
            self.price[s][p] = price[r];
            self.qty[s][p] = qty[r];
            let n = d.ids.number(r);
            self.id[s][p] = if n >= TEXT {
                text = true;
                TEXT | (first + r) as u64
            } else {
                n
            };
            self.buy[s][p] = d.buy[r];
        }
        Ok(text
            .then(|| batch.column_by_name("trade_id").cloned())
            .flatten())
    }

    fn check_full(&self) -> Result<()> {
        if self.next.iter().zip(&self.ts).any(|(n, s)| *n != s.len()) {
            return Err(Error::Input("the input changed while it was read".into()));
        }
        Ok(())
    }
}

/// One batch's decoded columns, with series ids local to the batch.
struct Decoded<'a> {
    ids: TradeIds<'a>,
    keys: Vec<SeriesKey>,
    local: Vec<u32>,
    buy: Vec<bool>,
}

fn decode_batch<'a>(
    batch: &'a RecordBatch,
    offset: usize,
    series: Option<Series>,
) -> Result<Decoded<'a>> {
    let exchange = column(batch, "exchange")?;
    let symbol = column(batch, "symbol")?;
    let ids = TradeIds::new(column(batch, "trade_id")?)?;
    let ts = column(batch, "ts")?;
    let price = column(batch, "price")?;
    let qty = column(batch, "quantity")?;
    for (name, nulls) in [
        ("exchange", exchange.null_count()),
        ("symbol", symbol.null_count()),
        ("ts", ts.null_count()),
        ("price", price.null_count()),
        ("quantity", qty.null_count()),
    ] {
        if nulls > 0 {
            return Err(Error::Input(format!(
                "column '{name}' has NULLs near row {offset}"
            )));
        }
    }
    let n = batch.num_rows();
    if ids.null_count() > 0 {
        let row = (0..n).find(|&r| ids.is_null(r)).unwrap_or(0);
        return Err(Error::Input(format!(
            "trade_id is NULL at row {}",
            offset + row
        )));
    }
    for (name, values) in [
        ("price", floats(batch, "price")?),
        ("quantity", floats(batch, "quantity")?),
    ] {
        if all_positive_finite(values) {
            continue;
        }
        if let Some(row) = values.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::Input(format!(
                "{name} {} at row {} is not a positive finite number",
                values[row],
                offset + row
            )));
        }
    }
    micros(batch)?;
    let (keys, local) = match series {
        Some(series) => series,
        None => series_of(batch)?,
    };
    let buy = match batch.column_by_name("side") {
        None => vec![false; n],
        Some(side) => buy_flags(&Strings::new(side.as_ref(), "side")?),
    };
    Ok(Decoded {
        ids,
        keys,
        local,
        buy,
    })
}

/// The `(exchange, symbol)` pairs of a batch in order of appearance, and each row's index among
/// them.
fn series_of(batch: &RecordBatch) -> Result<(Vec<SeriesKey>, Vec<u32>)> {
    let exchange = Strings::new(column(batch, "exchange")?, "exchange")?;
    let symbol = Strings::new(column(batch, "symbol")?, "symbol")?;
    let n = batch.num_rows();
    let mut keys = Vec::new();
    let mut local = Vec::with_capacity(n);
    match (&exchange, &symbol) {
        (
            Strings::Dict {
                keys: ek,
                values: ev,
                ..
            },
            Strings::Dict {
                keys: sk,
                values: sv,
                ..
            },
        ) => {
            // Both dictionaries are tiny (venues, instruments): a dense table of key pairs
            // replaces a hash lookup per row.
            let width = sv.len().max(1);
            let mut table = vec![u32::MAX; ev.len().max(1) * width];
            for row in 0..n {
                let (e, s) = (ek.get(row), sk.get(row));
                let slot = &mut table[e * width + s];
                if *slot == u32::MAX {
                    *slot = keys.len() as u32;
                    keys.push((ev.value(e).to_string(), sv.value(s).to_string()));
                }
                local.push(*slot);
            }
        }
        _ => {
            let mut map: FxHashMap<(&str, &str), u32> = FxHashMap::default();
            for row in 0..n {
                let key = (exchange.value(row), symbol.value(row));
                let next = map.len() as u32;
                let id = *map.entry(key).or_insert_with(|| {
                    keys.push((key.0.to_string(), key.1.to_string()));
                    next
                });
                local.push(id);
            }
        }
    }
    Ok((keys, local))
}

/// Whether each row's side is "buy" (any case); NULL is not. A dictionary's few values are
/// compared once, not per row.
pub(super) fn buy_flags(side: &Strings) -> Vec<bool> {
    let mut buy: Vec<bool> = match side {
        Strings::Dict { keys, values, .. } => {
            let is_buy: Vec<bool> = (0..values.len())
                .map(|v| values.value(v).eq_ignore_ascii_case("buy"))
                .collect();
            (0..keys.len()).map(|r| is_buy[keys.get(r)]).collect()
        }
        _ => (0..side.len())
            .map(|r| side.value(r).eq_ignore_ascii_case("buy"))
            .collect(),
    };
    if let Some(nulls) = side.nulls().filter(|n| n.null_count() > 0) {
        for (r, b) in buy.iter_mut().enumerate() {
            *b &= nulls.is_valid(r);
        }
    }
    buy
}

pub(super) fn micros(batch: &RecordBatch) -> Result<&[i64]> {
    let ts = column(batch, "ts")?;
    match ts.data_type() {
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            Ok(ts.as_primitive::<TimestampMicrosecondType>().values())
        }
        other => Err(Error::Input(format!(
            "column 'ts' is {other}, expected microsecond timestamps"
        ))),
    }
}

pub(super) fn floats<'b>(batch: &'b RecordBatch, name: &str) -> Result<&'b [f64]> {
    let array = column(batch, name)?;
    match array.data_type() {
        DataType::Float64 => Ok(array.as_primitive::<Float64Type>().values()),
        other => Err(Error::Input(format!(
            "column '{name}' is {other}, expected Float64"
        ))),
    }
}
