//! `nubo async`: the asynchronous invocation queue of a function.

use nubo_proto::v1 as pb;
use serde_json::json;

use super::render::{render_kv, Out};
use nubo_client::Client;

#[derive(Debug, clap::Subcommand)]
pub enum AsyncCommand {
    /// Queue depth, oldest event age and dead letters of a function.
    Status { function: String },
}

pub(super) async fn run(client: &Client, out: &Out, cmd: AsyncCommand) -> anyhow::Result<()> {
    let AsyncCommand::Status { function } = cmd;
    let req = pb::DeadLettersRequest {
        function_name: function,
        stale_ok: false,
    };
    let s = client
        .call(|c| {
            let req = req.clone();
            async move { c.invocations().async_status(req).await }
        })
        .await?
        .into_inner();
    let v = json!({
        "queued": s.queued,
        "due_now": s.due_now,
        "oldest_event_age_ms": s.oldest_event_age_ms,
        "dead_letters": s.dead_letters,
        "dead_letters_dropped": s.dead_letters_dropped,
        "in_flight": s.in_flight,
        "running": s.running,
    });
    if out.json() {
        out.print_json(&v);
    } else {
        out.print(&render_kv(&[
            ("queued".into(), s.queued.to_string()),
            ("due_now".into(), s.due_now.to_string()),
            (
                "in_flight".into(),
                s.in_flight
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "unknown (no leader answered)".into()),
            ),
            ("running".into(), s.running.to_string()),
            (
                "oldest_event_age".into(),
                format!("{} ms", s.oldest_event_age_ms),
            ),
            ("dead_letters".into(), s.dead_letters.to_string()),
            (
                "dead_letters_dropped".into(),
                s.dead_letters_dropped.to_string(),
            ),
        ]));
    }
    Ok(())
}
