//! How a statement stops: at its time limit (`[server] query_timeout_secs`, or the client's
//! own deadline, gRPC's `grpc-timeout` header, when that is shorter), or when its client goes.
//!
//! A client that goes away drops its response stream; a statement past its limit ends with
//! `DEADLINE_EXCEEDED` here and drops the plan. Either way the plan's tasks are aborted, but
//! a tokio task stops only when it yields, and an operator that makes its rows from memory
//! (a join: 10^5 x 10^5 pairs counted by an aggregate above it) is always ready, so its task
//! never yields and ran on for tens of seconds after the client had gone. [`YieldAfterJoins`]
//! makes every join's output spend tokio's cooperative budget, so those tasks yield (and can
//! be stopped) every few batches.

use std::sync::Arc;
use std::time::Duration;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::ExecutionPlan;
use futures::{Stream, StreamExt};
use tonic::Status;

/// Operators whose output is made from rows they hold, and can be far larger than their input.
const AMPLIFYING: [&str; 7] = [
    "NestedLoopJoinExec",
    "CrossJoinExec",
    "HashJoinExec",
    "SortMergeJoinExec",
    "SymmetricHashJoinExec",
    "PiecewiseMergeJoinExec",
    "UnnestExec",
];

/// Wraps the output of every join (and unnest) in DataFusion's `CooperativeExec`.
#[derive(Debug, Default)]
pub struct YieldAfterJoins;

impl PhysicalOptimizerRule for YieldAfterJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if AMPLIFYING.contains(&node.name()) {
                let wrapped: Arc<dyn ExecutionPlan> = Arc::new(CooperativeExec::new(node));
                Ok(Transformed::yes(wrapped))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "YieldAfterJoins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The deadline a request names in its `grpc-timeout` header (`<digits><unit>`, unit one of
/// `H M S m u n`), if any and well formed.
pub fn client_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `stream`, ended with `DEADLINE_EXCEEDED` (and dropped) once the shorter of `setting` and
/// `client` has passed since now.
pub fn limit<S, T>(
    stream: S,
    setting: Option<Duration>,
    client: Option<Duration>,
) -> impl Stream<Item = Result<T, Status>> + Send
where
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    let (limit, why) = match (setting, client) {
        (Some(s), Some(c)) if c < s => (Some(c), "the client's deadline"),
        (Some(s), _) => (Some(s), "[server] query_timeout_secs"),
        (None, Some(c)) => (Some(c), "the client's deadline"),
        (None, None) => (None, ""),
    };
    let sleep = limit.map(|l| Box::pin(tokio::time::sleep(l)));
    let state = (Some(Box::pin(stream)), sleep);
    futures::stream::unfold(state, move |(inner, sleep)| async move {
        let mut inner = inner?;
        let Some(mut sleep) = sleep else {
            let item = inner.next().await?;
            return Some((item, (Some(inner), None)));
        };
        tokio::select! {
            item = inner.next() => {
                let item = item?;
                Some((item, (Some(inner), Some(sleep))))
            }
            () = &mut sleep => {
                drop(inner);
                let limit = limit.unwrap_or_default();
                let status = Status::deadline_exceeded(format!(
                    "statement stopped: {why} ({:.1} s) passed",
                    limit.as_secs_f64()
                ));
                Some((Err(status), (None, None)))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let mut m = tonic::metadata::MetadataMap::new();
        for (text, want) in [
            ("2S", Duration::from_secs(2)),
            ("1500m", Duration::from_millis(1500)),
            ("3M", Duration::from_secs(180)),
            ("7u", Duration::from_micros(7)),
        ] {
            m.insert("grpc-timeout", text.parse().unwrap());
            assert_eq!(client_deadline(&m), Some(want), "{text}");
        }
        m.insert("grpc-timeout", "12x".parse().unwrap());
        assert_eq!(client_deadline(&m), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_limit_ends_with_deadline_exceeded() {
        let slow = futures::stream::unfold(0, |n| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok::<_, Status>(n), n + 1))
        });
        let got: Vec<_> = limit(slow, Some(Duration::from_millis(2500)), None)
            .collect()
            .await;
        assert_eq!(got.len(), 3);
        assert!(got[..2].iter().all(|r| r.is_ok()));
        let err = got[2].as_ref().unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(err.message().contains("query_timeout_secs"), "{err}");
        // The client's shorter deadline wins.
        let slow = futures::stream::pending::<Result<(), Status>>();
        let got: Vec<_> = limit(
            slow,
            Some(Duration::from_secs(60)),
            Some(Duration::from_secs(1)),
        )
        .collect()
        .await;
        assert!(got[0]
            .as_ref()
            .unwrap_err()
            .message()
            .contains("client's deadline"));
    }
}
