//! Errors for people: one `error:` line with the gRPC code name and the
//! server's message, and a `hint:` line saying what to type next.

use std::path::PathBuf;
use std::sync::OnceLock;

use nubo_client::DEFAULT_ENDPOINT;
use tonic::{Code, Status};

/// What the error report needs to know to give a useful hint.
#[derive(Debug)]
pub(super) struct ErrorContext {
    pub(super) endpoints: String,
    pub(super) token_sent: bool,
    pub(super) config_dir: PathBuf,
}

static ERROR_CONTEXT: OnceLock<ErrorContext> = OnceLock::new();

/// Records what the command is about to do, for [`report_error`]; set once
/// per process, by the command that runs.
pub(super) fn set_context(ctx: ErrorContext) {
    let _ = ERROR_CONTEXT.set(ctx);
}

/// Prints `e` for a person and returns the exit code.
pub fn report_error(e: &anyhow::Error) -> i32 {
    let status = e.chain().find_map(|c| c.downcast_ref::<Status>());
    match status {
        Some(s) => {
            let mut line = String::from("error: ");
            for c in e.chain().take_while(|c| !c.is::<Status>()) {
                line.push_str(&format!("{c}: "));
            }
            line.push_str(code_name(s.code()));
            if !s.message().is_empty() {
                line.push_str(": ");
                line.push_str(s.message());
            }
            eprintln!("{line}");
            if let Some(h) = status_hint(s) {
                eprintln!("hint: {h}");
            }
        }
        None => {
            eprintln!("error: {e:#}");
            let refused = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
            });
            let no_endpoint = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<nubo_client::Error>(),
                    Some(nubo_client::Error::NoEndpoint)
                )
            });
            if refused {
                eprintln!("hint: {}", refused_hint());
            } else if no_endpoint {
                eprintln!("hint: pass --endpoint or set NUBO_ENDPOINT");
            }
        }
    }
    1
}

fn endpoints_text() -> String {
    ERROR_CONTEXT
        .get()
        .map(|c| c.endpoints.clone())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

fn refused_hint() -> String {
    format!(
        "nothing is listening at {}: is the controller running? Start one with `nubo up`, \
         or point --endpoint / NUBO_ENDPOINT at a running controller",
        endpoints_text()
    )
}

fn status_hint(s: &Status) -> Option<String> {
    let msg = s.message().to_ascii_lowercase();
    if msg.contains("connection refused") {
        return Some(refused_hint());
    }
    match s.code() {
        Code::Unauthenticated => {
            let ctx = ERROR_CONTEXT.get();
            let token_file = ctx
                .map(|c| c.config_dir.clone())
                .unwrap_or_else(nubo_client::default_config_dir)
                .join("token");
            if ctx.is_some_and(|c| c.token_sent) {
                Some(
                    "the token was refused (revoked, mistyped, or from another cluster): \
                     pass a valid one with --token or NUBO_TOKEN; `nubo up` prints where it \
                     stored its admin token"
                        .to_string(),
                )
            } else {
                Some(format!(
                    "no token was sent: pass --token or set NUBO_TOKEN; `nubo up` prints where \
                     it stored its admin token (the CLI reads {} by default)",
                    token_file.display()
                ))
            }
        }
        Code::PermissionDenied => Some(
            "the token's scope does not allow this call: use a token with a wider scope \
             (invoke < deploy < admin), such as the admin token `nubo up` stored, or ask an \
             admin for one (`nubo token create --scope ...`)"
                .to_string(),
        ),
        Code::Unavailable if nubo_client::is_connect_error(s) => Some(format!(
            "cannot reach {}: is the controller running (`nubo up`)? Check --endpoint / \
             NUBO_ENDPOINT and the network",
            endpoints_text()
        )),
        Code::Unavailable if msg.contains("worker") => Some(
            "no worker could run the call: see the workers in `nubo cluster status`; start one \
             with `nubo worker --zone Z --controllers ...` (`nubo up` runs one unless \
             --no-worker)"
                .to_string(),
        ),
        Code::Aborted => Some(
            "the call was cut off while running (a worker failed): retry it; make the \
             function idempotent if running twice matters"
                .to_string(),
        ),
        Code::Unavailable => Some(format!(
            "the controller at {} answered but cannot serve this now (no quorum or an election \
             in progress): is a majority of controllers running? See `nubo cluster status`; \
             is the controller running (`nubo up`)? Check --endpoint",
            endpoints_text()
        )),
        Code::FailedPrecondition if msg.contains("revision") => Some(
            "it changed since you read it: fetch the current revision id (`nubo function get`) \
             and retry"
                .to_string(),
        ),
        _ => None,
    }
}

/// The gRPC name of a status code, as in the spec (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_are_named() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        let e = anyhow::Error::new(Status::unavailable(
            "cannot connect to x: Connection refused",
        ));
        assert_eq!(report_error(&e), 1);
    }
}
