//! Waiting between retries: one rule for every loop that retries (the scheduler's job
//! attempts, webhook deliveries, the catalog reads that resolve a commit).

use std::time::Duration;

/// Exponential backoff: `base`, doubling each retry, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max }
    }

    /// The wait before retry number `retry` (1-based): base * 2^(retry-1), capped.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(10));
        assert_eq!(b.delay(1), Duration::from_secs(2));
        assert_eq!(b.delay(2), Duration::from_secs(4));
        assert_eq!(b.delay(3), Duration::from_secs(8));
        assert_eq!(b.delay(4), Duration::from_secs(10));
        assert_eq!(b.delay(40), Duration::from_secs(10));
        assert_eq!(b.delay(0), Duration::from_secs(2));
    }
}
