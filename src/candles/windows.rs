//! Candle windows of any width: fixed multiples of a minute aligned to the Unix epoch (weeks
//! to Monday 1970-01-05), or calendar days and weeks in a time zone, whose length changes
//! with daylight saving time.

use chrono::{Days, NaiveDate, TimeZone};
use chrono_tz::Tz;

use super::{Error, Result};
use crate::timeframe::{Timeframe, MINUTE_US};

const DAY_US: i64 = 1440 * MINUTE_US;
/// 1970-01-05, the first Monday after the epoch: weeks start on Mondays.
const MONDAY_US: i64 = 4 * DAY_US;

/// How time is cut into candles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Windows {
    /// `[origin + k*width, origin + (k+1)*width)` in UTC.
    Fixed { width: i64, origin: i64 },
    /// Runs of `days` local calendar days (7 and `weeks`: weeks starting on Monday).
    Local { tz: Tz, days: u32, weeks: bool },
}

impl Windows {
    /// Parses a timeframe such as `1m`, `15m`, `4h`, `1d`, `1w` (a minute multiple), in `tz`
    /// for day and week widths when one is given.
    pub fn parse(timeframe: &str, tz: Option<Tz>) -> Result<Windows> {
        let s = timeframe.trim();
        let bad = || {
            Error::Input(format!(
                "timeframe '{s}' is not a positive number of minutes (m), hours (h), days (d) \
                 or weeks (w), such as 15m, 4h or 1w"
            ))
        };
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = s.split_at(split);
        let n: u32 = n.parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(bad());
        }
        let minutes = match unit {
            "m" => 1,
            "h" => 60,
            "d" => 1440,
            "w" => 7 * 1440,
            _ => return Err(bad()),
        };
        if let (Some(tz), "d" | "w") = (tz, unit) {
            if tz != Tz::UTC {
                let weeks = unit == "w";
                return Ok(Windows::Local {
                    tz,
                    days: if weeks { 7 * n } else { n },
                    weeks,
                });
            }
        }
        let width = (n as i64)
            .checked_mul(minutes * MINUTE_US)
            .ok_or_else(bad)?;
        let origin = if unit == "w" { MONDAY_US } else { 0 };
        Ok(Windows::Fixed { width, origin })
    }

    /// The window holding `t`: `[start, end)`.
    pub fn window(&self, t: i64) -> (i64, i64) {
        match *self {
            Windows::Fixed { width, origin } => {
                let start = origin + (t - origin).div_euclid(width) * width;
                (start, start + width)
            }
            Windows::Local { tz, days, weeks } => {
                let date = tz
                    .timestamp_micros(t)
                    .single()
                    .map(|d| d.date_naive())
                    .unwrap_or_default();
                let epoch = if weeks {
                    NaiveDate::from_ymd_opt(1970, 1, 5)
                } else {
                    NaiveDate::from_ymd_opt(1970, 1, 1)
                }
                .expect("valid date");
                let n = (date - epoch).num_days().div_euclid(days as i64) * days as i64;
                let first = add_days(epoch, n);
                let next = add_days(first, days as i64);
                (midnight(tz, first), midnight(tz, next))
            }
        }
    }

    /// An upper bound on the number of windows that start in `[lo, hi)`, without walking them.
    pub fn count_at_most(&self, lo: i64, hi: i64) -> u64 {
        let span = (hi as i128 - lo as i128).max(0);
        let shortest = match *self {
            Windows::Fixed { width, .. } => width as i128,
            // A local day is at least 23 hours (daylight-saving changes move it by one hour).
            Windows::Local { days, .. } => days as i128 * (DAY_US - 60 * MINUTE_US) as i128,
        };
        (span / shortest + 1).min(u64::MAX as i128) as u64
    }

    /// The first window boundary at or after `t`.
    pub fn ceil(&self, t: i64) -> i64 {
        let (start, end) = self.window(t);
        if start == t {
            t
        } else {
            end
        }
    }

    /// Window starts from `lo` (a boundary) up to, not including, `hi`.
    pub fn starts(&self, lo: i64, hi: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        let mut t = lo;
        while t < hi {
            let w = self.window(t);
            out.push(w);
            t = w.1;
        }
        out
    }

    /// The coarsest stored timeframe whose windows tile every window boundary in `[lo, hi)`:
    /// the bars these candles are rolled up from.
    pub fn base(&self, lo: i64, hi: i64) -> Result<Timeframe> {
        let fits = |tf: &Timeframe| match *self {
            Windows::Fixed { width, origin } => {
                width % tf.micros() == 0 && origin % tf.micros() == 0
            }
            Windows::Local { .. } => self
                .starts(lo, hi)
                .iter()
                .all(|(s, e)| s % tf.micros() == 0 && e % tf.micros() == 0),
        };
        Timeframe::ALL
            .into_iter()
            .rev()
            .find(fits)
            .ok_or_else(|| Error::Input("timeframe is not a whole number of minutes".into()))
    }

    /// Whether these windows are exactly those of `tf`.
    pub fn is_stored(&self, tf: Timeframe) -> bool {
        *self
            == Windows::Fixed {
                width: tf.micros(),
                origin: 0,
            }
    }
}

fn add_days(date: NaiveDate, n: i64) -> NaiveDate {
    if n >= 0 {
        date.checked_add_days(Days::new(n as u64))
    } else {
        date.checked_sub_days(Days::new(n.unsigned_abs()))
    }
    .unwrap_or(date)
}

/// Local midnight of `date` in UTC microseconds; where midnight does not exist (a DST jump at
/// midnight), the day starts at the first local time that does.
fn midnight(tz: Tz, date: NaiveDate) -> i64 {
    let mut local = date.and_hms_opt(0, 0, 0).expect("midnight");
    for _ in 0..4 {
        if let Some(t) = tz.from_local_datetime(&local).earliest() {
            return t.timestamp_micros();
        }
        local += chrono::Duration::minutes(30);
    }
    tz.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight"))
        .timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn fixed_widths_and_monday_weeks() {
        let w = Windows::parse("15m", None).unwrap();
        assert_eq!(
            w.window(utc("2024-01-01T00:20:00Z")).0,
            utc("2024-01-01T00:15:00Z")
        );
        assert_eq!(w.base(0, 1).unwrap(), Timeframe::M5);
        assert_eq!(
            Windows::parse("4h", None).unwrap().base(0, 1).unwrap(),
            Timeframe::H1
        );
        let week = Windows::parse("1w", None).unwrap();
        // 2024-01-03 is a Wednesday; its week starts Monday 2024-01-01.
        let (s, e) = week.window(utc("2024-01-03T12:00:00Z"));
        assert_eq!(
            (s, e),
            (utc("2024-01-01T00:00:00Z"), utc("2024-01-08T00:00:00Z"))
        );
        assert_eq!(week.base(0, 1).unwrap(), Timeframe::D1);
        assert!(Windows::parse("1d", None).unwrap().is_stored(Timeframe::D1));
        for bad in ["0m", "5", "m", "3x", "1.5h"] {
            assert!(Windows::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_york_days_follow_dst() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let day = Windows::parse("1d", Some(tz)).unwrap();
        // 2024-03-10: clocks spring forward, the local day has 23 hours.
        let (s, e) = day.window(utc("2024-03-10T12:00:00Z"));
        assert_eq!(s, utc("2024-03-10T05:00:00Z"));
        assert_eq!(e, utc("2024-03-11T04:00:00Z"));
        assert_eq!(day.base(s, e).unwrap(), Timeframe::H1);
        // 2024-11-03: clocks fall back, 25 hours.
        let (s, e) = day.window(utc("2024-11-03T12:00:00Z"));
        assert_eq!(e - s, 25 * 60 * MINUTE_US);
        let week = Windows::parse("1w", Some(tz)).unwrap();
        let (s, e) = week.window(utc("2024-03-12T12:00:00Z"));
        assert_eq!(
            (s, e),
            (utc("2024-03-11T04:00:00Z"), utc("2024-03-18T04:00:00Z"))
        );
        let (s, e) = week.window(utc("2024-03-09T12:00:00Z"));
        assert_eq!(s, utc("2024-03-04T05:00:00Z"));
        assert_eq!(e, utc("2024-03-11T04:00:00Z"));
        let india: Tz = "Asia/Kolkata".parse().unwrap();
        let d = Windows::parse("1d", Some(india)).unwrap();
        let (s, e) = d.window(utc("2024-03-10T12:00:00Z"));
        assert_eq!(d.base(s, e).unwrap(), Timeframe::M30);
    }
}
