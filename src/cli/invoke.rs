//! `nubo invoke`: one synchronous, asynchronous or dry-run invocation.

use std::path::PathBuf;

use anyhow::Context;
use nubo_client::Client;
use nubo_proto::v1 as pb;
use serde_json::{json, Value};

use super::render::Out;
use super::split_target;

#[derive(Debug, clap::Args)]
pub struct InvokeArgs {
    /// FUNCTION or FUNCTION:QUALIFIER ($LATEST, a version or an alias).
    pub target: String,
    /// The event, a JSON document.
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the event from a file (`-` for stdin).
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
    /// Print the last 4 KB of the invocation's log on stderr.
    #[arg(long)]
    pub log_tail: bool,
    /// Only check that the function and qualifier exist and may be invoked.
    #[arg(long, conflicts_with = "async")]
    pub dry_run: bool,
    /// Asynchronous (Event) invocation: returns once the event is durable
    /// on a quorum of controllers; prints its request id.
    #[arg(long = "async")]
    pub r#async: bool,
    /// With --async: an event with the same key for this function within
    /// the controllers' window (default one hour) is not enqueued again.
    #[arg(long, requires = "async")]
    pub idempotency_key: Option<String>,
    /// With --async: events of this function with the same key run one at
    /// a time, in submission order (a failing one holds the later ones
    /// through its retries). At most 256 bytes.
    #[arg(long, requires = "async")]
    pub ordering_key: Option<String>,
}

pub(super) async fn run(client: &Client, out: &Out, a: InvokeArgs) -> anyhow::Result<()> {
    let (function_name, qualifier) = split_target(&a.target);
    let payload = match (&a.payload, &a.payload_file) {
        (Some(p), _) => p.clone().into_bytes(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                .context("reading the payload from stdin")?;
            v
        }
        (None, Some(f)) => {
            std::fs::read(f).with_context(|| format!("reading the payload file {}", f.display()))?
        }
        (None, None) => b"{}".to_vec(),
    };
    let req = pb::InvokeRequest {
        function_name,
        qualifier,
        payload,
        invocation_type: if a.dry_run {
            pb::InvocationType::DryRun as i32
        } else if a.r#async {
            pb::InvocationType::Event as i32
        } else {
            pb::InvocationType::RequestResponse as i32
        },
        log_type: if a.log_tail {
            pb::LogType::LogTail as i32
        } else {
            pb::LogType::LogNone as i32
        },
        idempotency_key: a.idempotency_key.clone().unwrap_or_default(),
        ordering_key: a.ordering_key.clone().unwrap_or_default(),
    };
    let invoke = |c: nubo_client::Conn| {
        let req = req.clone();
        async move { c.invocations().invoke(req).await }
    };
    // A synchronous call runs as long as the function does (up to its
    // timeout); an Event or a dry run is answered at once.
    let r = if a.r#async || a.dry_run {
        client.call(invoke).await
    } else {
        client.call_long(invoke).await
    }?
    .into_inner();
    if !r.log_result.is_empty() {
        eprint!("{}", r.log_result);
    }
    if a.r#async {
        let function = split_target(&a.target).0;
        if out.json() {
            out.print_json(&json!({"status_code": r.status_code, "request_id": r.request_id, "duplicate": r.duplicate}));
        } else {
            // The id alone on stdout, for scripts; the explanation on stderr.
            println!("{}", r.request_id);
            if r.duplicate {
                eprintln!(
                    "duplicate: idempotency key {} was already used for {function} within the window; nothing enqueued, the id above is the first event's",
                    a.idempotency_key.as_deref().unwrap_or_default()
                );
            } else {
                eprintln!("accepted (durable): `nubo logs {function}` shows its runs, `nubo dlq list {function}` its failures");
            }
        }
        return Ok(());
    }
    if a.dry_run {
        if out.json() {
            out.print_json(
                &json!({"status_code": r.status_code, "executed_version": r.executed_version}),
            );
        } else {
            eprintln!(
                "dry run: {} can be invoked (version {})",
                a.target, r.executed_version
            );
        }
        return Ok(());
    }
    if out.json() {
        let payload: Value = serde_json::from_slice(&r.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.payload).into_owned()));
        out.print_json(&json!({
            "status_code": r.status_code,
            "executed_version": r.executed_version,
            "function_error": r.function_error,
            "request_id": r.request_id,
            "payload": payload,
        }));
    } else {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&r.payload)?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
    }
    if !r.function_error.is_empty() {
        anyhow::bail!(
            "the function returned an error ({}, request {}); its log: `nubo logs {}`",
            r.function_error,
            r.request_id,
            split_target(&a.target).0
        );
    }
    Ok(())
}
