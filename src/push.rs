//! Live candles pushed to subscribers: a client subscribes once to series in one timeframe
//! and receives, on one stream, the candles as they stand and then every change, each marked
//! (`live`, `final`, `revised`, `deleted`), over Flight `DoExchange` or as a Flight SQL
//! statement whose result stays open (`select * from live_candles(...)`).
//!
//! The cache says which series changed (its generations move with every trade taken in and
//! every commit observed, on a builder and on a replica alike); one task per topic (series and
//! timeframe) recomputes that series' candles once, diffs them with the last, and queues what
//! changed for each subscriber, conflated per candle. A subscriber's task sends its queue
//! whenever the client has taken the last batch; one that takes nothing for a while is
//! dropped. Nothing here waits for a slow client.
//!
//! | module | owns |
//! |---|---|
//! | `spec` | what a subscription asks for (the DoExchange JSON command) |
//! | `function` | `live_candles(...)` for SQL: its arguments, and the statements that use it |
//! | `candle` | a tracked candle, its change marks, and the batches that carry them |
//! | `topic` | one series in one timeframe: computed once per change, diffed, fanned out |
//! | `subscriber` | one subscriber's conflating queue, its sender task and stream |
//! | `hub` | topics, limits, the follower tasks |

pub mod candle;
pub mod error;
pub mod function;
pub mod hub;
pub mod spec;
pub mod subscriber;
pub mod topic;

pub use error::{Error, Result};
pub use function::{LiveFunction, LiveStatement};
pub use hub::{Hub, PushLimits};
pub use spec::Spec;
pub use subscriber::Subscription;
