//! Trade input: normalising and validating batches, loading files, synthetic trades, and the
//! mapping of a trades table another pipeline owns (`source`).

pub mod error;
pub mod generate;
pub mod load;
pub mod normalize;
pub mod source;

pub use error::{Error, Result};
pub use generate::{write_trades_file, GeneratorConfig};
pub use load::{load_files, read_file};
pub use normalize::{normalize, normalize_skipping, normalize_with, Checked, Limits};
pub use source::{
    map_batch, read_trades, read_trades_at, read_trades_in, read_trades_range, ColumnMap, Skipped,
    SourceConfig,
};
