//! The five stored timeframes and their window arithmetic.
//!
//! Windows are half-open `[start, start + len)` and aligned to the Unix epoch in UTC, so a
//! window start is always a multiple of the timeframe length in microseconds (1d: UTC midnight).

use std::fmt;
use std::str::FromStr;

/// Microseconds in one minute; every stored timeframe is a whole number of minutes.
pub const MINUTE_US: i64 = 60_000_000;
pub const HOUR_US: i64 = 60 * MINUTE_US;
pub const DAY_US: i64 = 24 * HOUR_US;

/// A timeframe that has its own `ohlcv_*` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timeframe {
    M1,
    M5,
    M30,
    H1,
    D1,
}

impl Timeframe {
    /// All stored timeframes, finest first: the order rollups and validation walk.
    pub const ALL: [Timeframe; 5] = [
        Timeframe::M1,
        Timeframe::M5,
        Timeframe::M30,
        Timeframe::H1,
        Timeframe::D1,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Timeframe::M1 => "1m",
            Timeframe::M5 => "5m",
            Timeframe::M30 => "30m",
            Timeframe::H1 => "1h",
            Timeframe::D1 => "1d",
        }
    }

    /// Window length in microseconds.
    pub fn micros(self) -> i64 {
        MINUTE_US
            * match self {
                Timeframe::M1 => 1,
                Timeframe::M5 => 5,
                Timeframe::M30 => 30,
                Timeframe::H1 => 60,
                Timeframe::D1 => 1440,
            }
    }

    /// Name of the Iceberg table holding this timeframe's bars.
    pub fn table_name(self) -> String {
        format!("ohlcv_{}", self.as_str())
    }

    /// Start of the window containing `ts_us`; floors towards negative infinity so that
    /// pre-1970 timestamps align the same way as later ones.
    pub fn window_start(self, ts_us: i64) -> i64 {
        ts_us.div_euclid(self.micros()) * self.micros()
    }

    /// The next finer stored timeframe, whose bars roll up into this one.
    pub fn lower(self) -> Option<Timeframe> {
        match self {
            Timeframe::M1 => None,
            Timeframe::M5 => Some(Timeframe::M1),
            Timeframe::M30 => Some(Timeframe::M5),
            Timeframe::H1 => Some(Timeframe::M30),
            Timeframe::D1 => Some(Timeframe::H1),
        }
    }
}

impl fmt::Display for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a timeframe string that names no stored timeframe.
#[derive(Debug, thiserror::Error)]
#[error("unknown timeframe '{0}': expected one of 1m, 5m, 30m, 1h, 1d")]
pub struct UnknownTimeframe(pub String);

impl FromStr for Timeframe {
    type Err = UnknownTimeframe;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timeframe::ALL
            .into_iter()
            .find(|tf| tf.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownTimeframe(s.to_string()))
    }
}

/// Parses RFC 3339 (`2024-01-01T00:00:00Z`) or a bare UTC date into microseconds; the
/// refusal says which forms are accepted.
pub fn parse_timestamp(text: &str) -> Result<i64, String> {
    if let Ok(ts) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(ts.timestamp_micros());
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| format!("'{text}' is neither RFC 3339 nor YYYY-MM-DD"))?;
    Ok(date
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp_micros())
}

/// Parses a window length such as `1m`, `15m`, `4h` or `1d` into microseconds (units `s`,
/// `m`, `h`, `d`; days are UTC days).
/// A moment in UTC microseconds as RFC 3339 (microseconds shown only when set), for messages.
pub fn format_us(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(
        || format!("{us} us since 1970"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    )
}

pub fn parse_duration_us(s: &str) -> Result<i64, UnknownTimeframe> {
    let s = s.trim();
    let bad = || UnknownTimeframe(s.to_string());
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit_us = match unit {
        "s" => 1_000_000,
        "m" => MINUTE_US,
        "h" => 60 * MINUTE_US,
        "d" => 1440 * MINUTE_US,
        _ => return Err(bad()),
    };
    match n.checked_mul(unit_us) {
        Some(us) if us > 0 => Ok(us),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_half_open_and_epoch_aligned() {
        let tf = Timeframe::M5;
        assert_eq!(tf.window_start(0), 0);
        assert_eq!(tf.window_start(tf.micros() - 1), 0);
        assert_eq!(tf.window_start(tf.micros()), tf.micros());
        assert_eq!(tf.window_start(-1), -tf.micros());
    }

    #[test]
    fn parses_every_name_and_rejects_others() {
        for tf in Timeframe::ALL {
            assert_eq!(tf.as_str().parse::<Timeframe>().unwrap(), tf);
        }
        assert!("15m".parse::<Timeframe>().is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_us("15m").unwrap(), 15 * MINUTE_US);
        assert_eq!(parse_duration_us("4h").unwrap(), 240 * MINUTE_US);
        assert_eq!(parse_duration_us("1d").unwrap(), Timeframe::D1.micros());
        assert!(parse_duration_us("0m").is_err());
        assert!(parse_duration_us("m").is_err());
        assert!(parse_duration_us("5x").is_err());
    }

    #[test]
    fn each_timeframe_divides_the_next() {
        for tf in Timeframe::ALL {
            if let Some(lower) = tf.lower() {
                assert_eq!(tf.micros() % lower.micros(), 0);
            }
        }
    }
}
