//! Errors of the serving layer, and the one place where every error becomes a gRPC status.

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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        match err {
            Error::Query(e) => datafusion_status(e),
            Error::InvalidRequest(m) => Status::invalid_argument(m),
            Error::Storage(e) => storage_status(e),
        }
    }
}

fn storage_status(e: crate::storage::Error) -> Status {
    use crate::storage::Error as S;
    match e {
        S::TableNotFound(t) => Status::not_found(format!("table {t} does not exist")),
        S::InvalidData { .. } => Status::invalid_argument(e.to_string()),
        S::Locked { .. } | S::LostCommit { .. } => Status::aborted(e.to_string()),
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
        DataFusionError::External(inner) => match inner.downcast_ref::<crate::storage::Error>() {
            Some(crate::storage::Error::TableNotFound(_)) => Status::not_found(message),
            _ => Status::internal(message),
        },
        _ => Status::internal(message),
    }
}
