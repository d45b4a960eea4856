//! `GetLogs`: a function's log lines, fetched from every live worker, and
//! `DropLogs` to those workers when a function is deleted. A deleted
//! function's lines never show under a new function of the same name:
//! reads keep only lines from the current function's creation on (a
//! worker that missed the drop, or was down, still holds the old ones).

use std::time::Duration;

use nubo_proto::v1 as pb;

use crate::error::ApiError;
use crate::invoke::placement::WorkerConn;
use crate::invoke::{with_secret, Invoker};
use crate::registry::validate;

impl Invoker {
    /// Log lines of a function from every live worker, merged by time.
    pub async fn logs(&self, req: pb::GetLogsRequest) -> Result<pb::GetLogsResponse, ApiError> {
        validate::function_name(&req.function_name)?;
        let created_ms = self
            .node
            .with_registry(|r| r.function(&req.function_name).map(|f| f.created_ms))?;
        let limit = if req.limit == 0 {
            1000
        } else {
            req.limit.min(10_000)
        };
        let calls = self.workers.live_clients().into_iter().map(|(_, c)| {
            let r = with_secret(
                pb::GetLogsRequest {
                    limit,
                    start_time_ms: req.start_time_ms.max(created_ms),
                    ..req.clone()
                },
                &self.worker_secret,
                Duration::from_secs(5),
            );
            async move { c.logs(r).await }
        });
        let mut lines: Vec<pb::LogLine> = futures::future::join_all(calls)
            .await
            .into_iter()
            .filter_map(|r| r.ok())
            .flat_map(|r| r.lines)
            // Also here: a worker is not trusted to have filtered.
            .filter(|l| l.timestamp_ms >= created_ms)
            .collect();
        lines.sort_by(|a, b| {
            (a.timestamp_ms, &a.worker_id, a.seq).cmp(&(b.timestamp_ms, &b.worker_id, b.seq))
        });
        let skip = lines.len().saturating_sub(limit as usize);
        Ok(pb::GetLogsResponse {
            lines: lines.split_off(skip),
        })
    }

    /// Tells every live worker to forget `function`'s logs (memory and
    /// disk), after its deletion committed. Best effort, bounded: a worker
    /// that does not answer in 2 s keeps them, hidden by [`Invoker::logs`].
    pub async fn drop_logs(&self, function: &str) {
        let calls = self.workers.live_clients().into_iter().map(|(id, c)| {
            let r = with_secret(
                pb::DropLogsRequest {
                    function_name: function.to_string(),
                },
                &self.worker_secret,
                Duration::from_secs(2),
            );
            async move {
                let r = match c {
                    WorkerConn::Remote(mut c) => c.drop_logs(r).await.map(|_| ()),
                    WorkerConn::Local(w) => w.drop_logs(r).await.map(|_| ()),
                };
                if let Err(e) = r {
                    tracing::warn!(worker = %id, function, "dropping a deleted function's logs: {}", e.message());
                }
            }
        });
        let _ =
            tokio::time::timeout(Duration::from_secs(3), futures::future::join_all(calls)).await;
    }
}
