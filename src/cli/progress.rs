//! The command line's view of a running chunked build: a progress bar on a terminal, a line
//! per chunk otherwise (logs, CI).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::build::progress::{self, Progress};

/// Shows the progress of chunked builds until dropped.
pub struct Watch {
    cancel: CancellationToken,
    _task: AbortOnDropHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts showing the progress of this process's chunked builds on stderr.
pub fn watch() -> Watch {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        let mut shown = Shown::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            shown.show(progress::current().as_ref());
        }
        shown.show(None);
    });
    Watch {
        cancel,
        _task: AbortOnDropHandle::new(task),
    }
}

/// What a terminal shows of a build's progress: a bar on a TTY, else one line per chunk.
pub struct Shown {
    tty: bool,
    bar: Option<ProgressBar>,
    last: (usize, usize),
}

impl Shown {
    pub fn new() -> Shown {
        Shown {
            tty: std::io::stderr().is_terminal(),
            bar: None,
            last: (0, 0),
        }
    }

    /// Shows `p`, or clears the bar when no build runs.
    pub fn show(&mut self, p: Option<&Progress>) {
        let Some(p) = p else {
            if let Some(b) = self.bar.take() {
                b.finish_and_clear();
            }
            return;
        };
        if self.tty {
            let b = self.bar.get_or_insert_with(|| new_bar(p));
            b.set_length(p.chunks_total as u64);
            b.set_position(p.chunks_done as u64);
            b.set_message(p.summary());
        } else if (p.chunks_done, p.chunks_total) != self.last {
            self.last = (p.chunks_done, p.chunks_total);
            eprintln!("{p}");
        }
    }
}

impl Default for Shown {
    fn default() -> Self {
        Shown::new()
    }
}

fn new_bar(p: &Progress) -> ProgressBar {
    let bar = ProgressBar::new(p.chunks_total as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} chunks  {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} {}", p.job, p.timeframe));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeframe::Timeframe;

    #[test]
    fn a_plain_line_says_chunks_rate_and_time_left() {
        let p = Progress {
            job: "build",
            timeframe: Timeframe::M1,
            chunks_done: 3,
            chunks_total: 10,
            trades_done: 3_000_000,
            trades_total: 10_000_000,
            started_us: 0,
            now_us: 2_000_000,
        };
        assert_eq!(
            p.to_string(),
            "build 1m: chunk 3/10, 3.0 M of ~10.0 M trades, 1.5 M/s, about 5s left"
        );
    }
}
