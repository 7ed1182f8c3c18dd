//! Injected time: jobs ask a `Clock` what time it is, so schedules, grace periods and retention
//! are tested without waiting.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Wall-clock time in UTC microseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_us(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        chrono::Utc::now().timestamp_micros()
    }
}

/// Wall time derived from tokio's clock: under `tokio::time::pause()` it advances exactly as
/// far as the runtime's timers do, so a scheduler sleeping on tokio timers sees consistent time.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start_us: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(start_us: i64) -> TokioClock {
        TokioClock {
            start_us,
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_us(&self) -> i64 {
        self.start_us + self.start.elapsed().as_micros() as i64
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn at(now_us: i64) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(now_us)))
    }

    pub fn set(&self, now_us: i64) {
        self.0.store(now_us, Ordering::SeqCst);
    }

    pub fn advance(&self, us: i64) {
        self.0.fetch_add(us, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}
