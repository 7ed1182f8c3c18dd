//! Jobs: every kind of work that changes or checks the tables (builds, backfills, rollups,
//! compaction, retention, validation), when it runs and what is remembered of it. Admin RPCs,
//! offline commands and the demo feed only trigger jobs: every run goes through the one queue
//! (or, offline, through [`run_once`]) and leaves a `system.job_runs` row.
//!
//! | module | owns |
//! |---|---|
//! | `kind` | job kinds, the timeframes and scope they cover, how an attempt ended |
//! | `runner` | what runs a job over our tables (`BuilderJobs`) |
//! | `schedule` | the staggered schedules, from the settings that move them, and due-time arithmetic |
//! | `queue` | the scheduler: one queue, retries with backoff, timeouts, triggers, pause, the shutdown order |
//! | `history` | the run history table (`system.job_runs`) |

pub mod history;
pub mod kind;
pub mod queue;
pub mod runner;
pub mod schedule;

pub use history::{History, JobRun};
pub use kind::{preset_metrics, Detail, JobKind, JobName, Outcome, Timeframes};
pub use queue::{record_once, run_once, JobState, RetryPolicy, RunLog, Scheduler, SchedulerHandle};
pub use runner::{check_json, BuilderJobs, JobRunner};
pub use schedule::{default_schedules, Schedule, ScheduleSettings};
