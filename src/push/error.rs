//! What can go wrong with a subscription.

/// Errors of the push room (mapped to gRPC codes in `flight/error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The subscription asked for something that cannot be served.
    #[error("{0}")]
    Input(String),
    /// A limit of `[server]` refused the subscription.
    #[error("{0}")]
    Limit(String),
    /// The subscription was ended by the server (stalled reader, shutdown); the message says
    /// how to resume.
    #[error("{0}")]
    Ended(String),
    #[error(transparent)]
    Candles(#[from] crate::candles::Error),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
