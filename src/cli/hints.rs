//! Errors for people: one `error:` line with the gRPC code name and the
//! server's message, and a `hint:` line saying what to type next.
//!
//! The controllers say what is wrong (the message) and why, machine-readably
//! (a [`Reason`] in the `x-nubo-reason` metadata); the advice naming `nubo`
//! commands is the CLI's own and lives here, built from the reason and the
//! command the user ran ([`Subject`]). Statuses without a reason get advice
//! from their gRPC code, as before.

use std::path::PathBuf;
use std::sync::OnceLock;

use nubo_client::DEFAULT_ENDPOINT;
use nubo_proto::Reason;
use tonic::{Code, Status};

/// What the command the user ran is about, so advice can name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// The command as typed, without `nubo` and arguments: `alias update`.
    pub command: &'static str,
    pub function: Option<String>,
    pub alias: Option<String>,
    /// A version or alias named after `NAME:` (or by `--qualifier`,
    /// `--version`).
    pub qualifier: Option<String>,
}

impl Subject {
    pub fn new(command: &'static str) -> Subject {
        Subject {
            command,
            ..Subject::default()
        }
    }

    pub fn function(mut self, name: &str) -> Subject {
        self.function = Some(name.to_string());
        self
    }

    pub fn alias(mut self, name: &str) -> Subject {
        self.alias = Some(name.to_string());
        self
    }

    /// An empty qualifier (`$LATEST` by default) is no qualifier.
    pub fn qualifier(mut self, q: Option<&str>) -> Subject {
        self.qualifier = q.filter(|q| !q.is_empty()).map(str::to_string);
        self
    }
}

/// What the error report needs to know to give a useful hint.
#[derive(Debug)]
pub(super) struct ErrorContext {
    pub(super) endpoints: String,
    pub(super) token_sent: bool,
    pub(super) config_dir: PathBuf,
    pub(super) subject: Subject,
}

static ERROR_CONTEXT: OnceLock<ErrorContext> = OnceLock::new();

/// Records what the command is about to do, for [`report_error`]; set once
/// per process, by the command that runs.
pub(super) fn set_context(ctx: ErrorContext) {
    let _ = ERROR_CONTEXT.set(ctx);
}

/// Prints `e` for a person and returns the exit code.
pub fn report_error(e: &anyhow::Error) -> i32 {
    let ctx = ERROR_CONTEXT.get();
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
            if let Some(h) = status_hint(s, ctx) {
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
                eprintln!("hint: {}", refused_hint(ctx));
            } else if no_endpoint {
                eprintln!("hint: pass --endpoint or set NUBO_ENDPOINT");
            }
        }
    }
    1
}

fn endpoints_text(ctx: Option<&ErrorContext>) -> String {
    ctx.map(|c| c.endpoints.clone())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
}

fn refused_hint(ctx: Option<&ErrorContext>) -> String {
    format!(
        "nothing is listening at {}: is the controller running? Start one with `nubo up`, \
         or point --endpoint / NUBO_ENDPOINT at a running controller",
        endpoints_text(ctx)
    )
}

const NO_WORKER_HINT: &str = "no worker could run the call: see the workers in \
     `nubo cluster status`; start one with `nubo worker --zone Z --controllers ...` \
     (`nubo up` runs one unless --no-worker)";

const TOKEN_SCOPE_HINT: &str = "the token's scope does not allow this call: use a token \
     with a wider scope (invoke < deploy < admin), such as the admin token `nubo up` stored, \
     or ask an admin for one (`nubo token create --scope ...`)";

fn token_hint(ctx: Option<&ErrorContext>, refused: bool) -> String {
    if refused {
        "the token was refused (revoked, mistyped, or from another cluster): \
         pass a valid one with --token or NUBO_TOKEN; `nubo up` prints where it \
         stored its admin token"
            .to_string()
    } else {
        let token_file = ctx
            .map(|c| c.config_dir.clone())
            .unwrap_or_else(nubo_client::default_config_dir)
            .join(nubo_client::TOKEN_FILE);
        format!(
            "no token was sent: pass --token or set NUBO_TOKEN; `nubo up` prints where \
             it stored its admin token (the CLI reads {} by default)",
            token_file.display()
        )
    }
}

fn status_hint(s: &Status, ctx: Option<&ErrorContext>) -> Option<String> {
    if let Some(r) = Reason::of(s) {
        return Some(reason_hint(r, s.message(), ctx));
    }
    let msg = s.message().to_ascii_lowercase();
    if msg.contains("connection refused") {
        return Some(refused_hint(ctx));
    }
    match s.code() {
        Code::Unauthenticated => Some(token_hint(ctx, ctx.is_some_and(|c| c.token_sent))),
        Code::PermissionDenied => Some(TOKEN_SCOPE_HINT.to_string()),
        Code::Unavailable if nubo_client::is_connect_error(s) => Some(format!(
            "cannot reach {}: is the controller running (`nubo up`)? Check --endpoint / \
             NUBO_ENDPOINT and the network",
            endpoints_text(ctx)
        )),
        Code::Unavailable if msg.contains("worker") => Some(NO_WORKER_HINT.to_string()),
        Code::Aborted => Some(
            "the call was cut off while running (a worker failed): retry it; make the \
             function idempotent if running twice matters"
                .to_string(),
        ),
        Code::Unavailable => Some(format!(
            "the controller at {} answered but cannot serve this now (no quorum or an election \
             in progress): is a majority of controllers running? See `nubo cluster status`; \
             is the controller running (`nubo up`)? Check --endpoint",
            endpoints_text(ctx)
        )),
        Code::FailedPrecondition if msg.contains("revision") => Some(
            "it changed since you read it: fetch the current revision id (`nubo function get`) \
             and retry"
                .to_string(),
        ),
        _ => None,
    }
}

/// The advice for a status's reason. The match is exhaustive on purpose:
/// a reason added to the proto does not compile here until it has advice.
/// (A reason this CLI does not know, from a newer controller, is not parsed
/// by `Reason::of` and gets the advice of its gRPC code instead.)
fn reason_hint(r: Reason, message: &str, ctx: Option<&ErrorContext>) -> String {
    let subject = ctx.map(|c| &c.subject);
    let command = subject.map_or("", |s| s.command);
    let f = subject
        .and_then(|s| s.function.as_deref())
        .unwrap_or("NAME");
    let alias = subject.and_then(|s| s.alias.as_deref()).unwrap_or("ALIAS");
    match r {
        Reason::FunctionNotFound => {
            format!("create it with `nubo function create {f} ...` or check `nubo function list`")
        }
        Reason::TriggerNotFound => "see `nubo trigger list` for the ids of the triggers".into(),
        Reason::FunctionExists => format!(
            "use `nubo function update-code {f} --code PATH` or \
             `nubo function update-config {f} ...`, or pick another name"
        ),
        // An alias names versions that must exist; elsewhere a version is
        // looked up.
        Reason::VersionNotFound if matches!(command, "alias create" | "alias update") => {
            format!("publish it first (`nubo version publish {f}`)")
        }
        Reason::VersionNotFound => format!("see `nubo version list {f}`"),
        Reason::VersionInUse => {
            // Only the message knows which alias holds the version.
            let holder = word_after(message, "used by alias ").unwrap_or("ALIAS");
            format!(
                "point the alias elsewhere first (`nubo alias update {f} {holder} --version N`)"
            )
        }
        Reason::AliasNotFound if command == "alias update" => {
            format!("create it with `nubo alias create {f} {alias} --version N`")
        }
        Reason::AliasNotFound => format!("see `nubo alias list {f}`"),
        Reason::AliasExists => format!("use `nubo alias update {f} {alias} ...`"),
        Reason::TokenNotFound => "see `nubo token list`".to_string(),
        Reason::AliasNeedsVersion => {
            format!("point it at a published version; publish one with `nubo version publish {f}`")
        }
        Reason::NoCode => format!("upload it with `nubo function update-code {f} --code PATH`"),
        Reason::ReservedConcurrency => format!(
            "retry later or raise it with \
             `nubo function update-config {f} --reserved-concurrency N`"
        ),
        Reason::NoWorker => NO_WORKER_HINT.to_string(),
        Reason::CapacityExhausted => "retry later (with backoff), or add worker capacity: \
             `nubo cluster status` shows each worker's sandboxes and memory in use"
            .to_string(),
        Reason::DestinationNotFound => {
            "create the destination function first (`nubo function create NAME ...`), \
             or pick an existing one from `nubo function list`"
                .to_string()
        }
        Reason::NoQuorum => "a majority of controllers must be up and connected: check \
             `nubo cluster status`"
            .to_string(),
        Reason::CodeNotReplicated => "a majority of controllers must be up to hold the code: \
             check `nubo cluster status`, then retry"
            .to_string(),
        Reason::AsyncQueueFull => format!(
            "retry later, or clear a backlog first (`nubo async status {f}` shows the queue)"
        ),
        Reason::DeadLetterNotFound => format!("see `nubo dlq list {f}`"),
        Reason::RedriveNeedsIds => format!(
            "name the dead letters' request ids, or pass --all (`nubo dlq redrive {f} --all`)"
        ),
        Reason::BadCodePackage => {
            "build it with `zip -r function.zip .` or pass a directory to --code".to_string()
        }
        // The API re-sends the package itself; only a race that keeps
        // losing gets here.
        Reason::CodeNotStored => "retry: the code package is sent again".to_string(),
        Reason::IdempotencyKeyNotEvent => {
            "add --async (an Event invocation), or drop --idempotency-key".to_string()
        }
        Reason::PayloadNotJson => {
            "send a JSON document, e.g. --payload '{\"name\":\"Ada\"}'".to_string()
        }
        Reason::NothingToUpdate => {
            "give at least one setting (see `nubo function update-config --help`)".to_string()
        }
        Reason::TokenMissing => token_hint(ctx, false),
        Reason::TokenUnknown => token_hint(ctx, true),
        Reason::TokenScope => TOKEN_SCOPE_HINT.to_string(),
        Reason::ReadUnconfirmed => {
            let stale_ok = match command {
                "function list" => "`nubo function list --stale-ok`".to_string(),
                "version list" => format!("`nubo version list {f} --stale-ok`"),
                _ => String::new(),
            };
            let stale_ok = if stale_ok.is_empty() {
                stale_ok
            } else {
                format!(", or read the contacted controller's copy: {stale_ok}")
            };
            format!("retry; a majority of controllers must be up (`nubo cluster status`){stale_ok}")
        }
        Reason::DiskFull => "free disk space on the controller's data directory: delete \
             functions or versions you no longer need (`nubo function delete NAME`, \
             `nubo function delete NAME:VERSION`; deletes are still accepted), or give the \
             controller a larger disk"
            .to_string(),
    }
}

/// The word after `prefix` in `text`, without trailing punctuation.
fn word_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let word = rest
        .split(|c: char| c.is_whitespace() || matches!(c, ':' | ',' | ';' | ')'))
        .next()?
        .trim_end_matches('.');
    (!word.is_empty()).then_some(word)
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

    /// Reasons whose advice is about the input, with no command to run.
    const NO_COMMAND: &[&str] = &[
        "bad-code-package",
        "code-not-stored",
        "idempotency-key-not-event",
        "payload-not-json",
    ];

    fn ctx(subject: Subject) -> ErrorContext {
        ErrorContext {
            endpoints: "http://127.0.0.1:7700".into(),
            token_sent: true,
            config_dir: PathBuf::from("/tmp/nubo-config"),
            subject,
        }
    }

    fn with_reason(code: Code, message: &str, reason: &str) -> Status {
        let mut s = Status::new(code, message);
        s.metadata_mut()
            .insert(nubo_proto::headers::REASON, reason.parse().unwrap());
        s
    }

    /// The `nubo ...` commands quoted in backticks in `hint`.
    fn quoted_commands(hint: &str) -> Vec<&str> {
        hint.split('`')
            .skip(1)
            .step_by(2)
            .filter(|q| q.starts_with("nubo "))
            .collect()
    }

    /// Panics unless `line` (`nubo alias update f a --version N`) names a
    /// leaf of the clap definition and only flags that leaf has.
    fn assert_real_command(line: &str) {
        use clap::CommandFactory;
        let root = crate::Cli::command();
        let mut cmd = &root;
        let mut path = vec!["nubo"];
        let mut positional = false;
        for word in line.split_whitespace().skip(1) {
            if let Some(flag) = word.strip_prefix("--") {
                let known =
                    flag == "help" || cmd.get_arguments().any(|a| a.get_long() == Some(flag));
                assert!(known, "`{line}`: {} has no --{flag}", path.join(" "));
            } else if !positional && cmd.find_subcommand(word).is_some() {
                cmd = cmd.find_subcommand(word).unwrap();
                path.push(word);
            } else {
                positional = true;
            }
        }
        assert!(
            cmd.get_subcommands().next().is_none(),
            "`{line}`: {} is not a complete command",
            path.join(" ")
        );
    }

    /// The check above catches what it is meant to catch.
    #[test]
    fn command_check_rejects_typos() {
        for bad in [
            "nubo alias lst f",
            "nubo alias",
            "nubo function update-config f --reserved N",
        ] {
            let caught = std::panic::catch_unwind(|| assert_real_command(bad));
            assert!(caught.is_err(), "`{bad}` passed");
        }
        assert_real_command("nubo function update-config f --reserved-concurrency N");
    }

    /// Every reason gets advice, and every command the advice quotes is a
    /// real `nubo` command with real flags (with and without a subject).
    #[test]
    fn every_reason_has_a_hint_naming_real_commands() {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let subjects = [
            Some(ctx(Subject::new("alias update").function("f").alias("a"))),
            Some(ctx(Subject::new("function list"))),
            Some(ctx(Subject::new("version list").function("f"))),
            None,
        ];
        for name in names {
            for c in &subjects {
                let s = with_reason(Code::FailedPrecondition, "x is used by alias live", name);
                let hint = status_hint(&s, c.as_ref())
                    .unwrap_or_else(|| panic!("no hint for reason {name}"));
                assert!(!hint.trim().is_empty(), "{name}");
                let commands = quoted_commands(&hint);
                if !NO_COMMAND.contains(&name) {
                    assert!(
                        !commands.is_empty(),
                        "{name}: no `nubo ...` command in {hint:?}"
                    );
                }
                for line in commands {
                    assert_real_command(line);
                }
            }
        }
    }

    /// The code-based hints name real commands too.
    #[test]
    fn code_hints_name_real_commands() {
        let c = ctx(Subject::new("invoke").function("f"));
        for s in [
            Status::unauthenticated("x"),
            Status::permission_denied("x"),
            Status::unavailable("cannot connect to http://h:1: refused"),
            Status::unavailable("no live worker can run f (128 MB)"),
            Status::unavailable("no leader"),
            Status::failed_precondition("revision 1 is not the current one"),
        ] {
            let hint = status_hint(&s, Some(&c)).unwrap();
            for line in quoted_commands(&hint) {
                assert_real_command(line);
            }
        }
    }

    #[test]
    fn hints_name_what_the_command_was_about() {
        let h = |reason: Reason, subject: Subject, msg: &str| {
            let s = with_reason(Code::NotFound, msg, reason.as_str());
            status_hint(&s, Some(&ctx(subject))).unwrap()
        };
        let get = Subject::new("function get").function("hello");
        assert!(h(Reason::FunctionNotFound, get.clone(), "").contains("nubo function create hello"));
        // A missing version: an alias wants one published, a lookup lists them.
        let create = Subject::new("alias create").function("f").alias("live");
        assert!(h(Reason::VersionNotFound, create, "").contains("nubo version publish f"));
        let invoke = Subject::new("invoke").function("f").qualifier(Some("7"));
        assert!(h(Reason::VersionNotFound, invoke, "").contains("nubo version list f"));
        // A missing alias: `alias update` suggests creating it, the rest listing.
        let update = Subject::new("alias update").function("f").alias("live");
        assert!(h(Reason::AliasNotFound, update, "").contains("nubo alias create f live"));
        assert!(h(Reason::AliasNotFound, get, "").contains("nubo alias list hello"));
        // Which alias holds a version only the message says.
        let delete = Subject::new("function delete")
            .function("f")
            .qualifier(Some("3"));
        let msg = "version 3 of function f is used by alias prod";
        assert!(
            h(Reason::VersionInUse, delete, msg).contains("nubo alias update f prod --version N")
        );
    }

    /// A reason this CLI does not know gives no reason advice: the code's
    /// advice (if any) stands.
    #[test]
    fn unknown_reasons_fall_back_to_the_code() {
        let c = ctx(Subject::new("function get").function("f"));
        let s = with_reason(Code::NotFound, "function f not found", "no-such-reason");
        assert_eq!(status_hint(&s, Some(&c)), None);
        let s = with_reason(Code::Unauthenticated, "nope", "no-such-reason");
        assert!(status_hint(&s, Some(&c)).unwrap().contains("--token"));
        assert_eq!(Reason::parse("no-such-reason"), None);
    }

    /// What the e2e tests look for on stderr stays in error + hint lines
    /// once the controllers drop the advice from their messages.
    #[test]
    fn worker_and_quorum_advice_survive() {
        let c = ctx(Subject::new("invoke").function("f"));
        let s = with_reason(
            Code::Unavailable,
            "no live worker can run f (128 MB)",
            "no-worker",
        );
        let h = status_hint(&s, Some(&c)).unwrap();
        assert!(
            h.contains("nubo worker --zone Z --controllers ...")
                && h.contains("nubo cluster status")
        );
        let s = with_reason(
            Code::Unavailable,
            "no quorum: ...",
            Reason::NoQuorum.as_str(),
        );
        assert!(status_hint(&s, Some(&c))
            .unwrap()
            .contains("nubo cluster status"));
    }

    #[test]
    fn word_after_stops_at_punctuation() {
        assert_eq!(
            word_after("used by alias prod: x", "used by alias "),
            Some("prod")
        );
        assert_eq!(
            word_after("used by alias prod.", "used by alias "),
            Some("prod")
        );
        assert_eq!(word_after("used by alias ", "used by alias "), None);
        assert_eq!(word_after("nothing", "used by alias "), None);
    }
}
