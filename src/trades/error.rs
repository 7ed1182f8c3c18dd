//! Errors of trade input: reading files, shaping and validating rows.

use std::fmt;
use std::path::PathBuf;

/// One refused row: its number in the input (0-based) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    pub row: usize,
    pub reason: String,
}

/// The first bad rows, formatted for an error message.
#[derive(Debug)]
pub struct BadRows<'a>(pub &'a [BadRow]);

impl fmt::Display for BadRows<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, bad) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "row {}: {}", bad.row, bad.reason)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input lacks a column or has one of an unusable type.
    #[error("{0}")]
    Schema(String),

    #[error("{count} bad rows, nothing written; first: {}", BadRows(first))]
    BadRows { count: usize, first: Vec<BadRow> },

    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
}

impl Error {
    /// Attaches the file the error came from.
    pub fn in_file(self, path: &std::path::Path) -> Error {
        match self {
            Error::File { .. } => self,
            other => Error::File {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
