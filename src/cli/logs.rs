//! `nubo logs`: a function's log lines, once or following.

use nubo_client::Client;
use nubo_proto::v1 as pb;
use serde_json::json;

use super::render::{rfc3339_ms, Out};

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    pub function: String,
    /// Keep printing new lines as they arrive.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only lines from the last N seconds.
    #[arg(long)]
    pub since: Option<u64>,
    /// At most this many lines (the newest).
    #[arg(long, default_value_t = 200)]
    pub limit: u32,
}

pub(super) async fn run(client: &Client, out: &Out, a: LogsArgs) -> anyhow::Result<()> {
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64
    };
    let mut start = a
        .since
        .map(|s| now_ms().saturating_sub(s * 1000))
        .unwrap_or(0);
    // Lines already printed at the boundary timestamp: (worker, seq).
    let mut seen: std::collections::HashSet<(String, u64)> = Default::default();
    let mut limit = a.limit;
    loop {
        let req = pb::GetLogsRequest {
            function_name: a.function.clone(),
            start_time_ms: start,
            limit,
        };
        // Gathered from every worker: not bounded like a registry call.
        let r = client
            .call_long(|c| {
                let req = req.clone();
                async move { c.invocations().get_logs(req).await }
            })
            .await?
            .into_inner();
        for l in &r.lines {
            if !seen.insert((l.worker_id.clone(), l.seq)) {
                continue;
            }
            if out.json() {
                out.print_json(&json!({
                    "timestamp": rfc3339_ms(l.timestamp_ms),
                    "request_id": l.request_id,
                    "version": l.version,
                    "worker": l.worker_id,
                    "message": l.message,
                }));
            } else {
                println!("{} {}", rfc3339_ms(l.timestamp_ms), l.message);
            }
        }
        if !a.follow {
            return Ok(());
        }
        if let Some(last) = r.lines.last() {
            start = last.timestamp_ms;
            seen.retain(|_| true);
        }
        limit = 10_000;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
