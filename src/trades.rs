//! Trade input: normalising and validating batches, loading files, synthetic trades.

pub mod error;
pub mod generate;
pub mod load;
pub mod normalize;

pub use error::{Error, Result};
pub use generate::{write_trades_file, GeneratorConfig};
pub use load::{load_files, read_file};
pub use normalize::{normalize, normalize_with, Limits};
