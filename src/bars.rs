//! The bar engine: pure kernels that turn trades into bars and bars into higher bars.
//!
//! | module | owns |
//! |---|---|
//! | `kernel` | trades → bars of one timeframe (dedupe, exact OHLC, order-independent sums) |
//! | `rollup` | bars → bars of a multiple timeframe |
//! | `columns` | typed access to input columns, the Fx hash |
//! | `file` | fast parallel reading of trade Parquet files (the `compute` command) |

pub mod columns;
pub mod error;
pub mod file;
pub mod kernel;
pub mod rollup;

pub use error::{Error, Result};
pub use kernel::{compute_bars, compute_bars_us};
pub use rollup::{rollup, rollup_by};
