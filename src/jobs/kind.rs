//! What a job is: its kind (with the timeframes and scope it covers), what a caller gets
//! back from it, and how an attempt ended.

use std::fmt;

use crate::quality::{self, Scope};
use crate::storage::{TableKind, TimeRange};
use crate::timeframe::Timeframe;

/// A unit of work the scheduler runs, one at a time (the single writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Build everything pending of a timeframe.
    Build(Timeframe),
    /// Rebuild a range of a timeframe from its source.
    Backfill(Timeframe, TimeRange),
    /// Merge the files of the table's closed partitions.
    Compact(TableKind),
    /// Drop partitions past each table's retention.
    Retention,
    /// Check the bar invariants of every timeframe over what changed since the last run.
    Validate,
    /// Check the bar invariants of some timeframes over a scope (an admin or offline request).
    ValidateScoped(Timeframes, Scope),
    /// What retention would drop, changing nothing (a dry run).
    RetentionPlan,
}

/// A set of timeframes, small enough to keep a job kind `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeframes(u8);

impl Timeframes {
    pub fn of(tfs: &[Timeframe]) -> Timeframes {
        Timeframes(tfs.iter().fold(0, |bits, tf| bits | 1 << Self::bit(*tf)))
    }

    /// Finest first.
    pub fn to_vec(self) -> Vec<Timeframe> {
        Timeframe::ALL
            .into_iter()
            .filter(|tf| self.0 & 1 << Self::bit(*tf) != 0)
            .collect()
    }

    fn bit(tf: Timeframe) -> u32 {
        Timeframe::ALL.iter().position(|t| *t == tf).unwrap_or(0) as u32
    }
}

/// What a job found beside its report, for whoever asked for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Detail {
    #[default]
    None,
    Checks(Vec<quality::CheckResult>),
    Retention(Vec<crate::build::retention::RetentionAction>),
}

/// The name a job's runs are recorded, counted and shown under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobName {
    Build,
    Backfill,
    Compact,
    Retention,
    Validate,
    RetentionPlan,
}

impl JobName {
    /// The name the history, `system.job_runs` and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            JobName::Build => "build",
            JobName::Backfill => "backfill",
            JobName::Compact => "compact",
            JobName::Retention => "retention",
            JobName::Validate => "validate",
            JobName::RetentionPlan => "retention_plan",
        }
    }

    /// The job a history row names; `None` for a name this version does not know (a newer
    /// server on the same lake).
    pub fn parse(name: &str) -> Option<JobName> {
        [
            JobName::Build,
            JobName::Backfill,
            JobName::Compact,
            JobName::Retention,
            JobName::Validate,
            JobName::RetentionPlan,
        ]
        .into_iter()
        .find(|n| n.as_str() == name)
    }
}

impl fmt::Display for JobName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JobKind {
    pub fn name(&self) -> JobName {
        match self {
            JobKind::Build(_) => JobName::Build,
            JobKind::Backfill(..) => JobName::Backfill,
            JobKind::Compact(_) => JobName::Compact,
            JobKind::Retention => JobName::Retention,
            JobKind::Validate | JobKind::ValidateScoped(..) => JobName::Validate,
            JobKind::RetentionPlan => JobName::RetentionPlan,
        }
    }

    /// Every `(job name, timeframe label)` a run is counted under in the metrics.
    pub fn metric_labels() -> Vec<(&'static str, String)> {
        let tfs = || Timeframe::ALL.into_iter().map(|tf| tf.to_string());
        let mut labels: Vec<(&'static str, String)> = Vec::new();
        labels.extend(tfs().map(|tf| ("build", tf)));
        labels.extend(tfs().map(|tf| ("backfill", tf)));
        labels.extend(tfs().map(|tf| ("compact", tf)));
        for name in ["compact", "retention", "retention_plan", "validate"] {
            labels.push((name, String::new()));
        }
        labels
    }

    pub fn timeframe(&self) -> Option<Timeframe> {
        match self {
            JobKind::Build(tf) | JobKind::Backfill(tf, _) => Some(*tf),
            JobKind::Compact(TableKind::Bars(tf)) => Some(*tf),
            JobKind::Compact(TableKind::Trades)
            | JobKind::Retention
            | JobKind::RetentionPlan
            | JobKind::Validate
            | JobKind::ValidateScoped(..) => None,
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobKind::Build(tf) => write!(f, "build {tf}"),
            JobKind::Backfill(tf, r) => write!(f, "backfill {tf} {:?}..{:?}", r.start, r.end),
            JobKind::Compact(kind) => write!(f, "compact {}", kind.name()),
            JobKind::Retention => f.write_str("retention"),
            JobKind::RetentionPlan => f.write_str("retention plan (dry run)"),
            JobKind::Validate => f.write_str("validate"),
            JobKind::ValidateScoped(tfs, scope) => {
                write!(f, "validate {:?} {scope:?}", tfs.to_vec())
            }
        }
    }
}

/// How one attempt of a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Succeeded,
    Failed,
    /// No result within the job timeout: the attempt was dropped before or without its commit.
    TimedOut,
    /// The server shut down past the grace the job had to finish.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::Cancelled,
    ];

    /// The name the history, `system.job_runs` and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The outcome a history row names (an unknown name, from a newer version, reads as failed).
    pub fn parse(name: &str) -> Outcome {
        match name {
            "succeeded" => Outcome::Succeeded,
            "timed_out" => Outcome::TimedOut,
            "cancelled" => Outcome::Cancelled,
            _ => Outcome::Failed,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Creates every series of the job metrics at zero (Prometheus practice: `increase()` cannot
/// see the first failures of a series that appears already counting them, and dashboards and
/// rules can be checked before the first event).
pub fn preset_metrics() {
    let m = crate::metrics::metrics();
    for (job, tf) in JobKind::metric_labels() {
        for outcome in Outcome::ALL {
            m.job_runs.with_label_values(&[job, &tf, outcome.as_str()]);
        }
        m.job_duration.with_label_values(&[job, &tf]);
        if job == "build" {
            for counter in [
                &m.trades_read,
                &m.bars_written,
                &m.late_revisions,
                &m.bars_deleted,
                &m.skipped_rows,
            ] {
                counter.with_label_values(&[&tf]);
            }
        }
    }
    for kind in TableKind::all() {
        m.retention_partitions
            .with_label_values(&[kind.name().as_str()]);
    }
}
