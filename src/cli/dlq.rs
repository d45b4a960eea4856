//! `nubo dlq`: dead-letter queues of asynchronous invocations.

use nubo_client::Client;
use nubo_proto::v1 as pb;
use serde_json::{json, Value};

use super::render::{render_table, rfc3339_ms, Out};

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List a function's dead letters.
    List { function: String },
    /// Show one dead letter, with its payload.
    Get {
        function: String,
        request_id: String,
    },
    /// Put dead letters back on the async queue with a fresh attempt count.
    Redrive {
        function: String,
        request_ids: Vec<String>,
        #[arg(long, conflicts_with = "request_ids")]
        all: bool,
    },
    /// Delete a function's dead letters.
    Purge { function: String },
}

fn dead_letter_json(d: &pb::DeadLetterRecord) -> Value {
    json!({
        "request_id": d.request_id,
        "function_name": d.function_name,
        "qualifier": d.qualifier,
        "condition": d.condition,
        "attempts": d.attempts,
        "error_type": d.error_type,
        "error_message": d.error_message,
        "first_attempt": rfc3339_ms(d.first_attempt_ms),
        "last_attempt": rfc3339_ms(d.last_attempt_ms),
        "enqueued": rfc3339_ms(d.enqueued_ms),
        "dead_lettered": rfc3339_ms(d.dead_lettered_ms),
        "payload": serde_json::from_slice::<Value>(&d.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&d.payload).into_owned())),
    })
}

pub(super) async fn run(client: &Client, out: &Out, cmd: DlqCommand) -> anyhow::Result<()> {
    let list = |function: String| {
        let req = pb::DeadLettersRequest {
            function_name: function,
            stale_ok: false,
        };
        async move {
            client
                .call(|c| {
                    let req = req.clone();
                    async move { c.invocations().list_dead_letters(req).await }
                })
                .await
                .map(|r| r.into_inner())
        }
    };
    match cmd {
        DlqCommand::List { function } => {
            let r = list(function).await?;
            if out.json() {
                out.print_json(&json!({
                    "records": r.records.iter().map(dead_letter_json).collect::<Vec<_>>(),
                    "dropped": r.dropped,
                }));
            } else {
                let rows: Vec<Vec<String>> = r
                    .records
                    .iter()
                    .map(|d| {
                        vec![
                            d.request_id.clone(),
                            d.condition.clone(),
                            d.attempts.to_string(),
                            d.error_type.clone(),
                            rfc3339_ms(d.dead_lettered_ms),
                        ]
                    })
                    .collect();
                out.print(&render_table(
                    &[
                        "REQUEST ID",
                        "CONDITION",
                        "ATTEMPTS",
                        "ERROR",
                        "DEAD-LETTERED",
                    ],
                    &rows,
                ));
                if r.dropped > 0 {
                    eprintln!(
                        "warning: {} older dead letters were dropped (the queue is bounded)",
                        r.dropped
                    );
                }
            }
        }
        DlqCommand::Get {
            function,
            request_id,
        } => {
            let r = list(function.clone()).await?;
            let d = r
                .records
                .iter()
                .find(|d| d.request_id == request_id)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no dead letter {request_id} for function {function}: see `nubo dlq list {function}`"
                    )
                })?;
            out.print_json(&dead_letter_json(d));
        }
        DlqCommand::Redrive {
            function,
            request_ids,
            all,
        } => {
            let req = pb::RedriveDeadLettersRequest {
                function_name: function,
                request_ids,
                all,
            };
            let n = client
                .call(|c| {
                    let req = req.clone();
                    async move { c.invocations().redrive_dead_letters(req).await }
                })
                .await?
                .into_inner()
                .count;
            eprintln!("{n} dead letters back on the async queue");
        }
        DlqCommand::Purge { function } => {
            let req = pb::DeadLettersRequest {
                function_name: function,
                stale_ok: false,
            };
            let n = client
                .call(|c| {
                    let req = req.clone();
                    async move { c.invocations().purge_dead_letters(req).await }
                })
                .await?
                .into_inner()
                .count;
            eprintln!("{n} dead letters deleted");
        }
    }
    Ok(())
}
