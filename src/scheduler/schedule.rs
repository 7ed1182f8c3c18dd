//! When jobs are due: fixed intervals with offsets, so jobs of different timeframes are
//! staggered instead of all firing on the minute.

use crate::jobs::JobKind;
use crate::timeframe::Timeframe;

/// A job due every `every_us`, at `offset_us` past each multiple of it (UTC epoch aligned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub job: JobKind,
    pub every_us: i64,
    pub offset_us: i64,
}

impl Schedule {
    /// The first due time strictly after `t`.
    pub fn next_after(&self, t: i64) -> i64 {
        let base = (t - self.offset_us).div_euclid(self.every_us) * self.every_us + self.offset_us;
        base + self.every_us
    }

    /// The first due time at or after `t`.
    pub fn next_at_or_after(&self, t: i64) -> i64 {
        self.next_after(t - 1)
    }
}

const SEC: i64 = 1_000_000;

/// The default staggered schedules (ARCHITECTURE.md): 1m and 5m every minute, 30m every
/// 5 minutes, 1h every 10 minutes, 1d every hour, each a few seconds after the previous so
/// that a rollup sees the 1m bars committed just before it.
pub fn default_schedules() -> Vec<Schedule> {
    vec![
        Schedule {
            job: JobKind::Build(Timeframe::M1),
            every_us: 60 * SEC,
            offset_us: 5 * SEC,
        },
        Schedule {
            job: JobKind::Build(Timeframe::M5),
            every_us: 60 * SEC,
            offset_us: 15 * SEC,
        },
        Schedule {
            job: JobKind::Build(Timeframe::M30),
            every_us: 300 * SEC,
            offset_us: 25 * SEC,
        },
        Schedule {
            job: JobKind::Build(Timeframe::H1),
            every_us: 600 * SEC,
            offset_us: 35 * SEC,
        },
        Schedule {
            job: JobKind::Build(Timeframe::D1),
            every_us: 3600 * SEC,
            offset_us: 45 * SEC,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_offset_multiples() {
        let s = Schedule {
            job: JobKind::Build(Timeframe::M1),
            every_us: 60,
            offset_us: 5,
        };
        assert_eq!(s.next_after(0), 5);
        assert_eq!(s.next_after(5), 65);
        assert_eq!(s.next_at_or_after(5), 5);
        assert_eq!(s.next_at_or_after(6), 65);
        assert_eq!(s.next_after(-100), -55);
    }
}
