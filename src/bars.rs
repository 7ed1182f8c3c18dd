//! The bar engine: pure kernels that turn trades into bars and bars into higher bars.
//!
//! | module | owns |
//! |---|---|
//! | `kernel` | trades → bars of one timeframe (dedupe, exact OHLC, order-independent sums) |
//! | `order` | trades moved into series order, in two passes over parts of the input |
//! | `parallel` | scoped threads over parts, series ranges balanced by rows |
//! | `rollup` | bars → bars of a multiple timeframe |
//! | `running` | one series' bars kept up to date trade by trade (live bars) |
//! | `columns` | typed access to input columns, the Fx hash |
//! | `file` | bars of a trade Parquet file, read in parallel parts (the `compute` command) |

pub mod columns;
pub mod error;
pub mod file;
pub mod kernel;
mod order;
mod parallel;
pub mod rollup;
pub mod running;

pub use error::{Error, Result};
pub use kernel::{compute_bars, compute_bars_each, compute_bars_us};
pub use rollup::{rollup, rollup_by};
pub use running::RunningBars;
