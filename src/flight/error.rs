//! Errors of the serving layer, and the one place where every error becomes a gRPC status.

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Query(#[from] DataFusionError),

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    #[error(transparent)]
    Storage(#[from] crate::storage::Error),

    /// Bad Arrow data from the client (parameters, ingested batches).
    #[error("invalid Arrow data: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error(transparent)]
    Trades(#[from] crate::trades::Error),

    #[error(transparent)]
    Build(#[from] crate::bars::Error),

    #[error(transparent)]
    Cache(#[from] crate::candles::cache::Error),

    #[error(transparent)]
    Auth(#[from] crate::auth::Error),

    #[error(transparent)]
    Push(#[from] crate::push::Error),

    #[error("{0}")]
    PermissionDenied(String),

    #[error("{0}")]
    NotFound(String),

    #[error("{0}")]
    AlreadyExists(String),

    /// Asked of a part that is not built yet; says which.
    #[error("{0}")]
    Unimplemented(String),

    #[error("{0}")]
    Internal(String),

    /// A value the answer cannot carry in the types the client asked for.
    #[error("{0}")]
    OutOfRange(String),

    #[error("server is shutting down")]
    ShuttingDown,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::auth::Error> for Status {
    fn from(err: crate::auth::Error) -> Status {
        match err {
            crate::auth::Error::Unauthenticated(m) => Status::unauthenticated(m),
            crate::auth::Error::PermissionDenied(m) => Status::permission_denied(m),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        match err {
            Error::Query(e) => datafusion_status(e),
            Error::InvalidRequest(m) => Status::invalid_argument(m),
            Error::Storage(e) => storage_status(e),
            Error::Arrow(e) => Status::invalid_argument(format!("invalid Arrow data: {e}")),
            Error::Trades(e) => trades_status(e),
            Error::Build(e) => build_status(e),
            Error::Cache(e) => cache_status(e),
            Error::Auth(e) => e.into(),
            Error::Push(e) => push_status(e),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::Unimplemented(m) => Status::unimplemented(m),
            Error::Internal(m) => Status::internal(m),
            Error::OutOfRange(m) => Status::out_of_range(m),
            Error::ShuttingDown => Status::unavailable("server is shutting down"),
        }
    }
}

fn trades_status(e: crate::trades::Error) -> Status {
    use crate::trades::Error as T;
    match e {
        T::Storage(s) => storage_status(s),
        other => Status::invalid_argument(other.to_string()),
    }
}

fn build_status(e: crate::bars::Error) -> Status {
    match e {
        crate::bars::Error::Storage(s) => storage_status(s),
        crate::bars::Error::Trades(t) => trades_status(t),
        other => Status::internal(other.to_string()),
    }
}

fn cache_status(e: crate::candles::cache::Error) -> Status {
    use crate::candles::cache::Error as C;
    match e {
        C::Input(m) => Status::invalid_argument(m),
        C::Storage(s) => storage_status(s),
        C::Bars(b) => build_status(b),
        C::Trades(t) => trades_status(t),
        other => Status::internal(other.to_string()),
    }
}

fn push_status(e: crate::push::Error) -> Status {
    use crate::push::Error as P;
    match e {
        P::Input(m) => Status::invalid_argument(m),
        P::Limit(m) => Status::resource_exhausted(m),
        // The client resumes elsewhere or again, from the last candle it saw.
        P::Ended(m) => Status::unavailable(m),
        P::Candles(c) => cache_status(c),
        P::Arrow(a) => Status::internal(a.to_string()),
    }
}

fn storage_status(e: crate::storage::Error) -> Status {
    use crate::storage::Error as S;
    match e {
        S::TableNotFound(t) => Status::not_found(format!("table {t} does not exist")),
        S::InvalidData { .. } | S::HistoryExpired { .. } => Status::invalid_argument(e.to_string()),
        S::Locked { .. } | S::LostCommit { .. } | S::CommitFailed { .. } => {
            Status::aborted(e.to_string())
        }
        // The catalog database did not answer (a connection refused or cut).
        S::CommitUnknown { .. } | S::Sql(_) => Status::unavailable(e.to_string()),
        S::Unsupported { .. } | S::NotOwned { .. } | S::ReadReplica { .. } => {
            Status::failed_precondition(e.to_string())
        }
        other => Status::internal(other.to_string()),
    }
}

/// Classifies a DataFusion error by its root: what the user wrote wrong is `InvalidArgument`
/// (unknown tables `NotFound`), limits are `ResourceExhausted`, the rest is ours.
fn datafusion_status(e: DataFusionError) -> Status {
    let root = e.find_root();
    let message = root.to_string();
    match root {
        DataFusionError::Plan(m) if m.contains("not found") => Status::not_found(message),
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => Status::invalid_argument(message),
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(message),
        // What the statement computes on the user's values: `1/0`, `'garbage'::timestamp`.
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::DivideByZero
            | ArrowError::CastError(_)
            | ArrowError::ParseError(_)
            | ArrowError::ArithmeticOverflow(_)
            | ArrowError::InvalidArgumentError(_) => Status::invalid_argument(message),
            ArrowError::MemoryError(_) => Status::resource_exhausted(message),
            _ => Status::internal(message),
        },
        DataFusionError::External(inner) => match inner.downcast_ref::<crate::storage::Error>() {
            Some(crate::storage::Error::TableNotFound(_)) => Status::not_found(message),
            Some(crate::storage::Error::HistoryExpired { .. }) => Status::invalid_argument(message),
            _ => Status::internal(message),
        },
        _ => Status::internal(message),
    }
}
