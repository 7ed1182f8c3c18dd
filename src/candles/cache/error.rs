//! Errors of the cache and the candle path.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller asked for something that cannot be answered (bad timeframe, range, option).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
    #[error(transparent)]
    Bars(#[from] crate::bars::Error),
    #[error(transparent)]
    Trades(#[from] crate::trades::Error),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("cache database: {0}")]
    Database(#[from] sqlx::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
