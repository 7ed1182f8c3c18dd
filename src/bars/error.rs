//! Errors of the bar engine (kernels and builds).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Trades or bars that the kernels cannot use (missing columns, NULLs, bad numbers).
    #[error("invalid input: {0}")]
    Input(String),

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error(transparent)]
    Storage(#[from] crate::storage::Error),

    /// Trades of a `[source]` that a strict mapping refused, or that could not be mapped.
    #[error(transparent)]
    Trades(#[from] crate::trades::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
