//! Prometheus metrics: API request counts and latency by method and code,
//! and the Raft gauges, rendered as text at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Where an async event got to, counted in `nubo_async_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncStage {
    /// Accepted (durable) on this node.
    Enqueued,
    /// A retried submission that was already accepted (same key or id).
    Deduplicated,
    /// Refused: the queue is at its byte bound.
    RefusedQueueFull,
    /// An attempt ran (whatever its outcome).
    Dispatched,
    Succeeded,
    /// A function error or timeout, retried.
    Retried,
    /// Throttled (reserved concurrency, or every worker full), retried.
    Throttled,
    /// A system error (no worker, the worker died), retried.
    RetriedSystemError,
    /// Past its maximum age: dead-lettered without another attempt.
    Expired,
    /// Out of retries: dead-lettered.
    DeadLettered,
    /// A destination record (on-success or on-failure) was enqueued.
    SentToDestination,
    /// A destination record stopped at the recursion bound (a loop of
    /// destinations): kept in its target's dead-letter queue, not run.
    RecursionStopped,
    /// A destination record whose target no longer exists: dropped.
    DestinationFailed,
}

impl AsyncStage {
    pub const ALL: &'static [AsyncStage] = &[
        AsyncStage::Enqueued,
        AsyncStage::Deduplicated,
        AsyncStage::RefusedQueueFull,
        AsyncStage::Dispatched,
        AsyncStage::Succeeded,
        AsyncStage::Retried,
        AsyncStage::Throttled,
        AsyncStage::RetriedSystemError,
        AsyncStage::Expired,
        AsyncStage::DeadLettered,
        AsyncStage::SentToDestination,
        AsyncStage::RecursionStopped,
        AsyncStage::DestinationFailed,
    ];

    /// The `stage` label.
    pub fn as_str(self) -> &'static str {
        match self {
            AsyncStage::Enqueued => "enqueued",
            AsyncStage::Deduplicated => "deduplicated",
            AsyncStage::RefusedQueueFull => "refused_queue_full",
            AsyncStage::Dispatched => "dispatched",
            AsyncStage::Succeeded => "succeeded",
            AsyncStage::Retried => "retried",
            AsyncStage::Throttled => "throttled",
            AsyncStage::RetriedSystemError => "retried_system_error",
            AsyncStage::Expired => "expired",
            AsyncStage::DeadLettered => "dead_lettered",
            AsyncStage::SentToDestination => "sent_to_destination",
            AsyncStage::RecursionStopped => "recursion_stopped",
            AsyncStage::DestinationFailed => "destination_failed",
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// Async events by stage (`AsyncStage::as_str`).
    async_events: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn observe(&self, method: &str, code: &str, elapsed: Duration) {
        *self
            .requests
            .lock()
            .expect("lock")
            .entry((method.to_string(), code.to_string()))
            .or_insert(0) += 1;
        let secs = elapsed.as_secs_f64();
        let mut lat = self.latency.lock().expect("lock");
        let h = lat.entry(method.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    pub fn async_event(&self, stage: AsyncStage) {
        *self
            .async_events
            .lock()
            .expect("lock")
            .entry(stage.as_str())
            .or_insert(0) += 1;
    }

    /// Renders the API metrics plus the given Raft metrics.
    /// How many async events reached `stage` on this node.
    pub fn async_count(&self, stage: AsyncStage) -> u64 {
        self.async_events
            .lock()
            .expect("lock")
            .get(stage.as_str())
            .copied()
            .unwrap_or(0)
    }

    pub fn render(&self, raft: &openraft::RaftMetrics<u64, openraft::BasicNode>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP nubo_raft_term Current Raft term.\n# TYPE nubo_raft_term gauge\nnubo_raft_term {}", raft.current_term);
        let _ = writeln!(out, "# HELP nubo_raft_leader Id of the leader this node knows, 0 if none.\n# TYPE nubo_raft_leader gauge\nnubo_raft_leader {}", raft.current_leader.unwrap_or(0));
        let running = raft.running_state.is_ok();
        let _ = writeln!(out, "# HELP nubo_raft_running 1 while this node's Raft core runs; 0 once it stopped (shutdown, or a fatal storage error: the process then exits).\n# TYPE nubo_raft_running gauge\nnubo_raft_running {}", u8::from(running));
        let _ = writeln!(out, "# HELP nubo_raft_is_leader 1 if this node is the leader (and its Raft core runs).\n# TYPE nubo_raft_is_leader gauge\nnubo_raft_is_leader {}", u8::from(running && raft.current_leader == Some(raft.id)));
        let _ = writeln!(out, "# HELP nubo_raft_last_log_index Last log index.\n# TYPE nubo_raft_last_log_index gauge\nnubo_raft_last_log_index {}", raft.last_log_index.unwrap_or(0));
        let _ = writeln!(out, "# HELP nubo_raft_applied_index Last applied index.\n# TYPE nubo_raft_applied_index gauge\nnubo_raft_applied_index {}", raft.last_applied.map(|l| l.index).unwrap_or(0));
        let commit = raft
            .replication
            .as_ref()
            .and_then(|r| {
                let mut m: Vec<u64> = r
                    .values()
                    .map(|v| v.map(|l| l.index).unwrap_or(0))
                    .collect();
                m.sort_unstable();
                m.get(m.len().saturating_sub(1) / 2).copied()
            })
            .unwrap_or(raft.last_applied.map(|l| l.index).unwrap_or(0));
        let _ = writeln!(out, "# HELP nubo_raft_commit_index Commit index (leader: replication majority; follower: applied).\n# TYPE nubo_raft_commit_index gauge\nnubo_raft_commit_index {commit}");
        let _ = writeln!(out, "# HELP nubo_async_events_total Async events by stage (counted where it happened: accepting node, or the leader's dispatcher).\n# TYPE nubo_async_events_total counter");
        for (stage, n) in self.async_events.lock().expect("lock").iter() {
            let _ = writeln!(out, "nubo_async_events_total{{stage=\"{stage}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP nubo_api_requests_total API requests by method and status code.\n# TYPE nubo_api_requests_total counter");
        for ((m, c), n) in self.requests.lock().expect("lock").iter() {
            let _ = writeln!(
                out,
                "nubo_api_requests_total{{method=\"{m}\",code=\"{c}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP nubo_api_request_duration_seconds API latency by method.\n# TYPE nubo_api_request_duration_seconds histogram");
        for (m, h) in self.latency.lock().expect("lock").iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "nubo_api_request_duration_seconds_bucket{{method=\"{m}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "nubo_api_request_duration_seconds_bucket{{method=\"{m}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "nubo_api_request_duration_seconds_sum{{method=\"{m}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "nubo_api_request_duration_seconds_count{{method=\"{m}\"}} {}",
                h.count
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ARCHITECTURE.md lists the async stages `/metrics` counts; the list
    /// there and the code name the same stages, in the same order.
    #[test]
    fn the_documented_async_stages_are_the_codes() {
        let doc = include_str!("../../ARCHITECTURE.md").replace('\n', " ");
        let start = doc
            .find("counts events by stage (")
            .expect("ARCHITECTURE.md lists the async stages")
            + "counts events by stage (".len();
        let list = &doc[start..start + doc[start..].find(')').expect("a closing parenthesis")];
        let documented: Vec<&str> = list
            .split(',')
            .map(|s| s.trim().trim_matches('`'))
            .collect();
        let code: Vec<&str> = AsyncStage::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(documented, code);
    }
}
