//! What a client subscribes to: series, one timeframe (any `candles()` accepts, time-zone
//! days and weeks included), and what the first message holds.

use serde::Deserialize;

use super::{Error, Result};
use crate::candles::Windows;

/// Series one subscription may name.
pub const MAX_SERIES: usize = 1000;

/// A subscription request.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub series: Vec<(String, String)>,
    pub timeframe: String,
    pub tz: Option<String>,
    /// Candles per series in the first message: the latest this many.
    pub last: usize,
    /// Instead, every candle from this window start on (a resumed subscription passes the
    /// window of the last candle it saw).
    pub since: Option<i64>,
}

/// The DoExchange command: `{"series": [{"exchange": "kraken", "symbol": "BTC-USD"}],
/// "timeframe": "1m", "tz": null, "last": 60, "since": null}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Command {
    series: Vec<Series>,
    timeframe: String,
    tz: Option<String>,
    last: Option<usize>,
    since: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Series {
    exchange: String,
    symbol: String,
}

/// Candles in the first message when the request does not say.
pub const DEFAULT_LAST: usize = 60;

impl Spec {
    /// The DoExchange command (JSON, see [`Command`]).
    pub fn from_json(bytes: &[u8]) -> Result<Spec> {
        let c: Command = serde_json::from_slice(bytes).map_err(|e| {
            Error::Input(format!(
                "a subscription is JSON {{\"series\": [{{\"exchange\": .., \"symbol\": ..}}], \
                 \"timeframe\": \"1m\"[, \"tz\": .., \"last\": N, \"since\": ..]}}: {e}"
            ))
        })?;
        let since = c
            .since
            .map(|s| crate::timeframe::parse_timestamp(&s).map_err(Error::Input))
            .transpose()?;
        Spec {
            series: c
                .series
                .into_iter()
                .map(|s| (s.exchange, s.symbol))
                .collect(),
            timeframe: c.timeframe,
            tz: c.tz,
            last: c.last.unwrap_or(DEFAULT_LAST),
            since,
        }
        .checked()
    }

    /// Refuses what cannot be served before anything is set up.
    pub fn checked(self) -> Result<Spec> {
        if self.series.is_empty() {
            return Err(Error::Input(
                "a subscription names at least one series".into(),
            ));
        }
        if self.series.len() > MAX_SERIES {
            return Err(Error::Input(format!(
                "a subscription names at most {MAX_SERIES} series, got {}",
                self.series.len()
            )));
        }
        if let Some((e, s)) = self
            .series
            .iter()
            .find(|(e, s)| e.trim().is_empty() || s.trim().is_empty())
        {
            return Err(Error::Input(format!(
                "empty exchange or symbol in ('{e}', '{s}')"
            )));
        }
        self.windows()?;
        Ok(self)
    }

    /// How the timeframe cuts time.
    pub fn windows(&self) -> Result<Windows> {
        let tz = self
            .tz
            .as_deref()
            .map(|z| {
                z.parse::<chrono_tz::Tz>()
                    .map_err(|_| Error::Input(format!("unknown time zone '{z}'")))
            })
            .transpose()?;
        Ok(Windows::parse(&self.timeframe, tz)?)
    }
}
