//! How far a running chunked build has got: chunks done of total, trades read, rate and time
//! left. One process runs one build at a time (the single writer), so there is one current
//! progress; `system.jobs`, the status page, Prometheus and the command line's progress bar
//! all read it.

use std::sync::{Mutex, MutexGuard};

use crate::timeframe::Timeframe;

/// A running build's position.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// `build` or `backfill`.
    pub job: &'static str,
    /// The timeframe whose job runs the build (the first one built).
    pub timeframe: Timeframe,
    pub chunks_done: usize,
    pub chunks_total: usize,
    pub trades_done: u64,
    /// Trades the manifests say the chunks hold.
    pub trades_total: u64,
    pub started_us: i64,
    pub now_us: i64,
}

impl Progress {
    /// Trades read per second so far.
    pub fn trades_per_sec(&self) -> f64 {
        let secs = (self.now_us - self.started_us) as f64 / 1e6;
        if secs <= 0.0 {
            return 0.0;
        }
        self.trades_done as f64 / secs
    }

    /// Seconds left at the rate so far; `None` before the first chunk is done.
    pub fn eta_secs(&self) -> Option<f64> {
        if self.chunks_done == 0 || self.trades_done == 0 {
            return None;
        }
        let left = self.trades_total.saturating_sub(self.trades_done) as f64;
        Some(left / self.trades_per_sec().max(1e-9))
    }
}

/// A measured rate, not a schedule: the wall clock, not the injected one.
fn wall_clock_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Progress {
    /// Trades done of the total, rate and time left.
    pub fn summary(&self) -> String {
        let p = self;
        let eta = match p.eta_secs() {
            Some(s) => format!("about {} left", duration(s)),
            None => "estimating".to_string(),
        };
        format!(
            "{} of ~{} trades, {}/s, {eta}",
            count(p.trades_done as f64),
            count(p.trades_total as f64),
            count(p.trades_per_sec())
        )
    }
}

/// One plain line: what a log, a pipe or the status page shows.
impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self;
        write!(
            f,
            "{} {}: chunk {}/{}, {}",
            p.job,
            p.timeframe,
            p.chunks_done,
            p.chunks_total,
            p.summary()
        )
    }
}

fn count(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2} G", n / 1e9),
        n if n >= 1e6 => format!("{:.1} M", n / 1e6),
        n if n >= 1e3 => format!("{:.0} k", n / 1e3),
        n => format!("{n:.0}"),
    }
}

fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

static CURRENT: Mutex<Option<Progress>> = Mutex::new(None);

/// Every published position in order, for a caller that reports each chunk (the admin
/// backfill stream); one that lags more than this many is told so and skips ahead.
static UPDATES: std::sync::LazyLock<tokio::sync::broadcast::Sender<Progress>> =
    std::sync::LazyLock::new(|| tokio::sync::broadcast::channel(64).0);

/// Receives each position published from now on.
pub fn subscribe() -> tokio::sync::broadcast::Receiver<Progress> {
    UPDATES.subscribe()
}

fn current_mut() -> MutexGuard<'static, Option<Progress>> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running build's progress, if a build with more than one chunk runs.
pub fn current() -> Option<Progress> {
    current_mut().clone()
}

/// Marks a chunked build as started; dropping the guard marks it finished.
pub fn start(
    job: &'static str,
    timeframe: Timeframe,
    chunks_total: usize,
    trades_total: u64,
) -> Running {
    let now_us = wall_clock_us();
    let progress = Progress {
        job,
        timeframe,
        chunks_done: 0,
        chunks_total,
        trades_done: 0,
        trades_total,
        started_us: now_us,
        now_us,
    };
    publish(&progress);
    *current_mut() = Some(progress);
    Running
}

/// The running build; see [`start`].
pub struct Running;

impl Running {
    /// One more chunk committed, which held `trades`.
    pub fn chunk_done(&self, trades: u64) {
        let now_us = wall_clock_us();
        let mut guard = current_mut();
        if let Some(p) = guard.as_mut() {
            p.chunks_done += 1;
            p.trades_done += trades;
            p.trades_total = p.trades_total.max(p.trades_done);
            p.now_us = now_us;
            publish(p);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        *current_mut() = None;
        let m = crate::metrics::metrics();
        m.build_chunks_done.set(0);
        m.build_chunks_total.set(0);
        m.build_trades_per_sec.set(0.0);
        m.build_eta.set(0.0);
    }
}

fn publish(p: &Progress) {
    // No receiver is the usual case (no admin backfill watching).
    let _ = UPDATES.send(p.clone());
    let m = crate::metrics::metrics();
    m.build_chunks_done.set(p.chunks_done as i64);
    m.build_chunks_total.set(p.chunks_total as i64);
    m.build_trades_per_sec.set(p.trades_per_sec());
    m.build_eta.set(p.eta_secs().unwrap_or(0.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_time_left() {
        let mut p = Progress {
            job: "build",
            timeframe: Timeframe::M1,
            chunks_done: 0,
            chunks_total: 4,
            trades_done: 0,
            trades_total: 4_000,
            started_us: 0,
            now_us: 0,
        };
        assert_eq!(p.eta_secs(), None);
        p.chunks_done = 1;
        p.trades_done = 1_000;
        p.now_us = 2_000_000;
        assert_eq!(p.trades_per_sec(), 500.0);
        assert_eq!(p.eta_secs(), Some(6.0));
    }
}
