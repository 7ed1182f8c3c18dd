//! When jobs are due: fixed intervals with offsets, so jobs of different timeframes are
//! staggered instead of all firing on the minute.

use serde::{Deserialize, Serialize};

use super::JobKind;
use crate::storage::TableKind;
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
/// `[quality]`: how often the checks and the upkeep of the tables run.
pub struct ScheduleSettings {
    /// Minutes between scheduled validations; 0 turns them off.
    pub validate_every_mins: u64,
    /// Minutes between scheduled compactions of closed partitions; 0 turns them off.
    pub compact_every_mins: u64,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings {
            validate_every_mins: 60,
            compact_every_mins: 24 * 60,
        }
    }
}

const MIN: i64 = 60 * SEC;

/// Every schedule a server runs: the builds, retention once a day, and validation and
/// compaction as `settings` ask.
pub fn schedules(settings: &ScheduleSettings) -> Vec<Schedule> {
    let mut schedules = default_schedules();
    schedules.push(Schedule {
        job: JobKind::Retention,
        every_us: 1440 * MIN,
        offset_us: 30 * MIN,
    });
    // Validation runs after the builds of its hour have settled (the 1d build runs at
    // 45 s past the hour); compaction at quiet minutes, one table after another.
    let validate = settings.validate_every_mins as i64 * MIN;
    if validate > 0 {
        schedules.push(Schedule {
            job: JobKind::Validate,
            every_us: validate,
            offset_us: (2 * MIN).min(validate / 2),
        });
    }
    let compact = settings.compact_every_mins as i64 * MIN;
    if compact > 0 {
        let tables = Timeframe::ALL
            .into_iter()
            .map(TableKind::Bars)
            .chain([TableKind::Trades]);
        for (i, kind) in tables.enumerate() {
            schedules.push(Schedule {
                job: JobKind::Compact(kind),
                every_us: compact,
                offset_us: ((40 + i as i64) * MIN + 50_000_000) % compact,
            });
        }
    }
    schedules
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
