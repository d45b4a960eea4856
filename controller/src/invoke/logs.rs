//! `GetLogs`: a function's log lines, fetched from every live worker.

use std::time::Duration;

use nubo_proto::v1 as pb;

use crate::error::ApiError;
use crate::invoke::{with_secret, Invoker};
use crate::registry::validate;

impl Invoker {
    /// Log lines of a function from every live worker, merged by time.
    pub async fn logs(&self, req: pb::GetLogsRequest) -> Result<pb::GetLogsResponse, ApiError> {
        validate::function_name(&req.function_name)?;
        self.node
            .with_registry(|r| r.function(&req.function_name).map(|_| ()))?;
        let limit = if req.limit == 0 {
            1000
        } else {
            req.limit.min(10_000)
        };
        let calls = self.workers.live_clients().into_iter().map(|(_, c)| {
            let r = with_secret(
                pb::GetLogsRequest {
                    limit,
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
            .collect();
        lines.sort_by(|a, b| {
            (a.timestamp_ms, &a.worker_id, a.seq).cmp(&(b.timestamp_ms, &b.worker_id, b.seq))
        });
        let skip = lines.len().saturating_sub(limit as usize);
        Ok(pb::GetLogsResponse {
            lines: lines.split_off(skip),
        })
    }
}
