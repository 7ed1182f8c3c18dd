//! Uniform, allocation-free access to the trade columns the kernel reads, whatever Arrow type
//! they arrive as (plain, large or view strings, dictionaries from Parquet, integer ids).

use std::hash::{BuildHasherDefault, Hasher};

use arrow::array::{Array, AsArray, LargeStringArray, RecordBatch, StringArray, StringViewArray};
use arrow::datatypes::{DataType, Int32Type, Int64Type, UInt64Type};

use super::error::{Error, Result};

/// The Fx hash (rustc's): a multiply-rotate per word, fine for short keys we trust.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(tail) ^ rest.len() as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    fn write_u32(&mut self, v: u32) {
        self.add(v as u64);
    }
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;
pub type FxHashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;
pub type FxHashSet<K> = std::collections::HashSet<K, FxBuild>;

/// A string column: values by row, and (for dictionaries) the row's dictionary key, which lets
/// callers map keys instead of hashing every row's text.
pub enum Strings<'a> {
    Plain(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
    Dict {
        keys: DictKeys<'a>,
        values: Box<Strings<'a>>,
        nulls: Option<&'a arrow::buffer::NullBuffer>,
    },
}

/// A dictionary's keys: borrowed when they are `Int32` (what our Parquet reads ask for), so a
/// 10 M-row column costs no copy; other key types are widened once.
pub enum DictKeys<'a> {
    I32(&'a [i32]),
    Other(Vec<usize>),
}

impl DictKeys<'_> {
    #[inline]
    pub fn get(&self, row: usize) -> usize {
        match self {
            DictKeys::I32(k) => k[row] as usize,
            DictKeys::Other(k) => k[row],
        }
    }

    pub fn len(&self) -> usize {
        match self {
            DictKeys::I32(k) => k.len(),
            DictKeys::Other(k) => k.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> Strings<'a> {
    pub fn new(array: &'a dyn Array, name: &str) -> Result<Strings<'a>> {
        Ok(match array.data_type() {
            DataType::Utf8 => Strings::Plain(array.as_string::<i32>()),
            DataType::LargeUtf8 => Strings::Large(array.as_string::<i64>()),
            DataType::Utf8View => Strings::View(array.as_string_view()),
            DataType::Dictionary(_, _) => {
                let dict = array.as_any_dictionary();
                // A dictionary array's valid slots always hold keys in range (its constructor
                // checks them), but null slots may hold any key: with nulls, borrow the keys
                // only when all are in range (as `normalized_keys` guarantees for the copy).
                let len = dict.values().len();
                let keys = match array.as_dictionary_opt::<Int32Type>() {
                    Some(d)
                        if d.keys().null_count() == 0
                            || d.keys().values().iter().all(|&k| (k as u32 as usize) < len) =>
                    {
                        DictKeys::I32(d.keys().values())
                    }
                    _ => DictKeys::Other(dict.normalized_keys()),
                };
                Strings::Dict {
                    keys,
                    values: Box::new(Strings::new(dict.values().as_ref(), name)?),
                    nulls: array.nulls(),
                }
            }
            other => {
                return Err(Error::Input(format!(
                    "column '{name}' is {other}, expected strings"
                )))
            }
        })
    }

    #[inline]
    pub fn value(&self, row: usize) -> &'a str {
        match self {
            Strings::Plain(a) => a.value(row),
            Strings::Large(a) => a.value(row),
            Strings::View(a) => a.value(row),
            Strings::Dict { keys, values, .. } => values.value(keys.get(row)),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Strings::Plain(a) => a.len(),
            Strings::Large(a) => a.len(),
            Strings::View(a) => a.len(),
            Strings::Dict { keys, .. } => keys.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn nulls(&self) -> Option<&'a arrow::buffer::NullBuffer> {
        match self {
            Strings::Plain(a) => Array::nulls(*a),
            Strings::Large(a) => Array::nulls(*a),
            Strings::View(a) => Array::nulls(*a),
            Strings::Dict { nulls, .. } => *nulls,
        }
    }

    pub fn is_null(&self, row: usize) -> bool {
        match self {
            Strings::Plain(a) => a.is_null(row),
            Strings::Large(a) => a.is_null(row),
            Strings::View(a) => a.is_null(row),
            Strings::Dict { nulls, .. } => nulls.is_some_and(|n| n.is_null(row)),
        }
    }

    pub fn null_count(&self) -> usize {
        match self {
            Strings::Plain(a) => a.null_count(),
            Strings::Large(a) => a.null_count(),
            Strings::View(a) => a.null_count(),
            Strings::Dict { nulls, .. } => nulls.map_or(0, |n| n.null_count()),
        }
    }
}

/// Marks a trade id that is not a canonical decimal number (compared and deduplicated by text).
pub const TEXT_ID: u64 = u64::MAX;

/// A trade-id column: ids that are canonical decimals become numbers (cheap to dedupe), the
/// rest are read back as text. Integer columns stand for their decimal text, which is what
/// the trades table stores.
pub enum TradeIds<'a> {
    Text(Strings<'a>),
    Signed(&'a arrow::array::Int64Array),
    Unsigned(&'a arrow::array::UInt64Array),
}

impl<'a> TradeIds<'a> {
    pub fn new(array: &'a dyn Array) -> Result<TradeIds<'a>> {
        Ok(match array.data_type() {
            DataType::Int64 => TradeIds::Signed(array.as_primitive::<Int64Type>()),
            DataType::UInt64 => TradeIds::Unsigned(array.as_primitive::<UInt64Type>()),
            _ => TradeIds::Text(Strings::new(array, "trade_id")?),
        })
    }

    /// Numeric form of the id, or `TEXT_ID`.
    #[inline]
    pub fn number(&self, row: usize) -> u64 {
        match self {
            TradeIds::Text(s) => parse_canonical(s.value(row)),
            TradeIds::Signed(a) => {
                let v = a.value(row);
                if v >= 0 {
                    v as u64
                } else {
                    TEXT_ID
                }
            }
            TradeIds::Unsigned(a) => {
                let v = a.value(row);
                if v == TEXT_ID {
                    TEXT_ID
                } else {
                    v
                }
            }
        }
    }

    /// The id as the trades table stores it.
    pub fn text(&self, row: usize) -> std::borrow::Cow<'a, str> {
        match self {
            TradeIds::Text(s) => std::borrow::Cow::Borrowed(s.value(row)),
            TradeIds::Signed(a) => std::borrow::Cow::Owned(a.value(row).to_string()),
            TradeIds::Unsigned(a) => std::borrow::Cow::Owned(a.value(row).to_string()),
        }
    }

    pub fn null_count(&self) -> usize {
        match self {
            TradeIds::Text(s) => s.null_count(),
            TradeIds::Signed(a) => a.null_count(),
            TradeIds::Unsigned(a) => a.null_count(),
        }
    }

    pub fn is_null(&self, row: usize) -> bool {
        match self {
            TradeIds::Text(s) => s.is_null(row),
            TradeIds::Signed(a) => a.is_null(row),
            TradeIds::Unsigned(a) => a.is_null(row),
        }
    }
}

/// Parses a decimal id without sign or leading zeros (so that equal numbers mean equal text).
#[inline]
pub fn parse_canonical(s: &str) -> u64 {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 19 || (b.len() > 1 && b[0] == b'0') {
        return TEXT_ID;
    }
    let mut v: u64 = 0;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return TEXT_ID;
        }
        v = v * 10 + d as u64;
    }
    v
}

/// Looks a column up by name with a clear error.
pub fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| Error::Input(format!("missing column '{name}'")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_decimals_are_numbers() {
        assert_eq!(parse_canonical("0"), 0);
        assert_eq!(parse_canonical("12345"), 12345);
        assert_eq!(parse_canonical("007"), TEXT_ID);
        assert_eq!(parse_canonical("-1"), TEXT_ID);
        assert_eq!(parse_canonical("1e3"), TEXT_ID);
        assert_eq!(parse_canonical(""), TEXT_ID);
        assert_eq!(parse_canonical("99999999999999999999"), TEXT_ID);
    }
}
