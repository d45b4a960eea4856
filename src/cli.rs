//! Client subcommands of `nubo`: argument definitions, the calls they make,
//! and how results and errors are shown.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context};
use futures::Stream;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use nubo_proto::v1 as pb;
use serde_json::{json, Value};
use tonic::{Code, Status};

use crate::client::{Client, GlobalArgs, OutputFormat, CONNECT_ERROR_PREFIX};
use crate::zipdir;

/// Size of each code message in a streamed upload.
const CHUNK_SIZE: usize = 1 << 20;
/// Packages above this get a progress bar when stderr is a terminal.
const PROGRESS_THRESHOLD: usize = 4 << 20;

// ---------------------------------------------------------------------------
// Arguments

#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Create, inspect, change and delete functions.
    #[command(subcommand)]
    Function(FunctionCommand),
    /// Publish and list immutable versions of a function.
    #[command(subcommand)]
    Version(VersionCommand),
    /// Manage aliases: named pointers to versions, with weighted routing.
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Inspect and change the group of controllers.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Invoke a function and print its result on stdout.
    Invoke(InvokeArgs),
    /// Show a function's log lines (START / END / REPORT and its output).
    Logs(LogsArgs),
    /// Dead-letter queues of asynchronous invocations.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The asynchronous invocation queue.
    #[command(subcommand)]
    Async(AsyncCommand),
}

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
}

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

#[derive(Debug, clap::Subcommand)]
pub enum AsyncCommand {
    /// Queue depth, oldest event age and dead letters of a function.
    Status { function: String },
}

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

/// Splits FUNCTION[:QUALIFIER].
pub fn split_target(t: &str) -> (String, String) {
    match t.split_once(':') {
        Some((f, q)) => (f.to_string(), q.to_string()),
        None => (t.to_string(), String::new()),
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum FunctionCommand {
    /// Create a function from a directory or a .zip file.
    Create(CreateArgs),
    /// Show a function's configuration ($LATEST, a version or an alias).
    Get(GetArgs),
    /// List functions.
    List(ListArgs),
    /// Replace the code of $LATEST.
    UpdateCode(UpdateCodeArgs),
    /// Change the configuration of $LATEST.
    UpdateConfig(UpdateConfigArgs),
    /// Delete a function with all its versions and aliases, or one version.
    Delete(DeleteArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Network {
    /// Outbound network access.
    Egress,
    /// No network inside the sandbox.
    #[value(name = "none")]
    NoNetwork,
}

/// Configuration flags shared by `function create` and `function update-config`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigFlags {
    /// Memory in MB.
    #[arg(long, value_name = "MB")]
    pub memory: Option<u32>,
    /// Timeout in seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u32>,
    /// Environment variable; repeat for more. Replaces the whole environment.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env_item)]
    pub env: Vec<(String, String)>,
    /// Free-form description.
    #[arg(long)]
    pub description: Option<String>,
    /// Size of /tmp in MB.
    #[arg(long, value_name = "MB")]
    pub ephemeral_storage: Option<u32>,
    /// Concurrency reserved for (and limiting) this function.
    #[arg(long, value_name = "N")]
    pub reserved_concurrency: Option<u32>,
    /// Sandboxes kept warm (provisioned concurrency) for $LATEST and for
    /// versions an alias points to.
    #[arg(long, value_name = "N")]
    pub min_warm: Option<u32>,
    /// Retries of failed asynchronous invocations (0-2).
    #[arg(long, value_name = "N")]
    pub max_retry_attempts: Option<u32>,
    /// Maximum age of an asynchronous event, in seconds (60-21600).
    #[arg(long, value_name = "SECONDS")]
    pub max_event_age: Option<u32>,
    /// Function that receives events which exhausted their retries.
    #[arg(long, value_name = "FUNCTION")]
    pub dead_letter_target: Option<String>,
    /// Function that receives the result of each successful async event.
    #[arg(long, value_name = "FUNCTION")]
    pub on_success_target: Option<String>,
    /// Network access of the sandbox.
    #[arg(long, value_enum)]
    pub network: Option<Network>,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub name: String,
    /// Runtime, e.g. python3.12 or provided.al2023.
    #[arg(long)]
    pub runtime: String,
    /// Handler, e.g. app.handler.
    #[arg(long)]
    pub handler: String,
    /// A directory (zipped for you) or a .zip file.
    #[arg(long, value_name = "PATH")]
    pub code: PathBuf,
    #[command(flatten)]
    pub config: ConfigFlags,
    /// Publish version 1 right after creating.
    #[arg(long)]
    pub publish: bool,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Function name, optionally with `:QUALIFIER` (version or alias).
    #[arg(value_name = "NAME[:QUALIFIER]", value_parser = parse_qualified)]
    pub name: Qualified,
    /// $LATEST, a version number or an alias.
    #[arg(long)]
    pub qualifier: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Return at most this many (one page) instead of everything.
    #[arg(long, value_name = "N")]
    pub max_items: Option<u32>,
    /// Start after this marker (from a previous page's next_marker).
    #[arg(long)]
    pub marker: Option<String>,
    /// Answer from the contacted controller's state, possibly slightly stale.
    #[arg(long)]
    pub stale_ok: bool,
}

#[derive(Debug, clap::Args)]
pub struct UpdateCodeArgs {
    pub name: String,
    /// A directory (zipped for you) or a .zip file.
    #[arg(long, value_name = "PATH")]
    pub code: PathBuf,
    /// Publish a version right after the update.
    #[arg(long)]
    pub publish: bool,
    /// Only update if $LATEST still has this revision id.
    #[arg(long)]
    pub revision_id: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct UpdateConfigArgs {
    pub name: String,
    #[arg(long)]
    pub runtime: Option<String>,
    #[arg(long)]
    pub handler: Option<String>,
    #[command(flatten)]
    pub config: ConfigFlags,
    /// Remove all environment variables.
    #[arg(long, conflicts_with = "env")]
    pub clear_env: bool,
    /// Remove the reserved concurrency.
    #[arg(long, conflicts_with = "reserved_concurrency")]
    pub clear_reserved_concurrency: bool,
    /// Only update if $LATEST still has this revision id.
    #[arg(long)]
    pub revision_id: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Function name; `NAME:VERSION` deletes only that version.
    #[arg(value_name = "NAME[:VERSION]", value_parser = parse_qualified)]
    pub name: Qualified,
}

#[derive(Debug, clap::Subcommand)]
pub enum VersionCommand {
    /// Publish $LATEST as a new immutable version.
    Publish {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Only publish if $LATEST still has this revision id.
        #[arg(long)]
        revision_id: Option<String>,
        /// Only publish if $LATEST still has this code sha256.
        #[arg(long)]
        code_sha256: Option<String>,
    },
    /// List the versions of a function.
    List {
        name: String,
        #[arg(long)]
        stale_ok: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum AliasCommand {
    /// Create an alias pointing at a version.
    Create {
        function: String,
        alias: String,
        /// Version the alias points at.
        #[arg(long = "version", value_name = "VERSION")]
        function_version: String,
        /// Send a share of invocations to another version; repeatable.
        #[arg(long, value_name = "VERSION=WEIGHT", value_parser = parse_routing_item)]
        routing: Vec<(String, f64)>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Show an alias.
    Get { function: String, alias: String },
    /// Change an alias.
    Update {
        function: String,
        alias: String,
        #[arg(long = "version", value_name = "VERSION")]
        function_version: Option<String>,
        /// Replace the routing with these weights; repeatable.
        #[arg(long, value_name = "VERSION=WEIGHT", value_parser = parse_routing_item)]
        routing: Vec<(String, f64)>,
        /// Send all invocations to the alias's version.
        #[arg(long, conflicts_with = "routing")]
        clear_routing: bool,
        #[arg(long)]
        description: Option<String>,
        /// Only update if the alias still has this revision id.
        #[arg(long)]
        revision_id: Option<String>,
    },
    /// Delete an alias.
    Delete { function: String, alias: String },
    /// List the aliases of a function.
    List {
        function: String,
        /// Only aliases that route to this version.
        #[arg(long = "version", value_name = "VERSION")]
        function_version: Option<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Show the leader, log indexes and the members.
    Status,
    /// Add a controller as a learner (it replicates but does not vote).
    Add {
        id: u64,
        /// The new controller's Raft address.
        address: String,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a controller from the group.
    Remove { id: u64 },
    /// Print the worker credential for NUBO_WORKER_SECRET, computed from the
    /// cluster secret (no server call): workers hold it instead of the
    /// cluster secret, so a worker host cannot take part in Raft.
    WorkerSecret {
        /// The controllers' cluster secret.
        #[arg(long, env = "NUBO_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// Everything, including cluster and token management.
    Admin,
    /// Manage functions, versions and aliases.
    Deploy,
    /// Invoke functions only.
    Invoke,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Deploy => "deploy",
            Scope::Invoke => "invoke",
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and cannot be shown again.
    Create {
        #[arg(long, value_enum)]
        scope: Scope,
        /// A label to recognise the token by.
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (without their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

/// `NAME[:QUALIFIER]` from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qualified {
    pub name: String,
    pub qualifier: Option<String>,
}

pub fn parse_qualified(s: &str) -> Result<Qualified, String> {
    let (name, qualifier) = match s.split_once(':') {
        Some((n, q)) => (n, Some(q)),
        None => (s, None),
    };
    if name.is_empty() {
        return Err(format!("{s:?}: the function name is empty"));
    }
    match qualifier {
        Some("") => Err(format!(
            "{s:?}: nothing after ':' (expected NAME:QUALIFIER)"
        )),
        Some(q) if q.contains(':') => Err(format!("{s:?}: more than one ':'")),
        q => Ok(Qualified {
            name: name.to_string(),
            qualifier: q.map(str::to_string),
        }),
    }
}

/// One `--env KEY=VALUE` item. The value may contain `=`.
pub fn parse_env_item(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, _)) if k.trim().is_empty() => {
            Err(format!("invalid --env item {s:?}: the key is empty"))
        }
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
        None => Err(format!("invalid --env item {s:?}: expected KEY=VALUE")),
    }
}

/// One `--routing VERSION=WEIGHT` item; the weight is a share in [0, 1).
pub fn parse_routing_item(s: &str) -> Result<(String, f64), String> {
    let Some((v, w)) = s.split_once('=') else {
        return Err(format!(
            "invalid --routing item {s:?}: expected VERSION=WEIGHT"
        ));
    };
    let v = v.trim();
    if v.is_empty() {
        return Err(format!(
            "invalid --routing item {s:?}: the version is empty"
        ));
    }
    let weight: f64 = w
        .trim()
        .parse()
        .map_err(|_| format!("invalid --routing item {s:?}: the weight {w:?} is not a number"))?;
    if !(0.0..1.0).contains(&weight) {
        return Err(format!(
            "invalid --routing item {s:?}: the weight must be at least 0 and below 1"
        ));
    }
    Ok((v.to_string(), weight))
}

/// Collects `--env` items, refusing a key given twice (a silent "last wins"
/// would hide typos in long command lines).
pub fn env_map(items: &[(String, String)]) -> anyhow::Result<HashMap<String, String>> {
    let mut m = HashMap::new();
    for (k, v) in items {
        if m.insert(k.clone(), v.clone()).is_some() {
            bail!("--env key {k:?} is given more than once");
        }
    }
    Ok(m)
}

pub fn routing_map(items: &[(String, f64)]) -> anyhow::Result<HashMap<String, f64>> {
    let mut m = HashMap::new();
    for (v, w) in items {
        if m.insert(v.clone(), *w).is_some() {
            bail!("--routing version {v:?} is given more than once");
        }
    }
    let total: f64 = m.values().sum();
    if total >= 1.0 {
        bail!("--routing weights add up to {total}; they must stay below 1");
    }
    Ok(m)
}

impl ConfigFlags {
    fn is_empty(&self) -> bool {
        self.memory.is_none()
            && self.timeout.is_none()
            && self.env.is_empty()
            && self.description.is_none()
            && self.ephemeral_storage.is_none()
            && self.reserved_concurrency.is_none()
            && self.min_warm.is_none()
            && self.max_retry_attempts.is_none()
            && self.max_event_age.is_none()
            && self.dead_letter_target.is_none()
            && self.on_success_target.is_none()
            && self.network.is_none()
    }

    fn to_proto(&self, runtime: String, handler: String) -> anyhow::Result<pb::FunctionConfig> {
        let async_config = if self.max_retry_attempts.is_some()
            || self.max_event_age.is_some()
            || self.dead_letter_target.is_some()
            || self.on_success_target.is_some()
        {
            Some(pb::AsyncConfig {
                maximum_retry_attempts: self.max_retry_attempts,
                maximum_event_age_seconds: self.max_event_age,
                dead_letter_target: self.dead_letter_target.clone().unwrap_or_default(),
                on_success_target: self.on_success_target.clone().unwrap_or_default(),
            })
        } else {
            None
        };
        let egress = self.network.map(|n| n == Network::Egress);
        Ok(pb::FunctionConfig {
            runtime,
            handler,
            memory_mb: self.memory,
            timeout_seconds: self.timeout,
            // Like Lambda, --env replaces the whole environment.
            replace_environment: !self.env.is_empty(),
            environment: env_map(&self.env)?,
            description: self.description.clone(),
            ephemeral_storage_mb: self.ephemeral_storage,
            reserved_concurrency: self.reserved_concurrency,
            clear_reserved_concurrency: false,
            async_config,
            egress: egress.unwrap_or(false),
            set_egress: egress,
            min_warm: self.min_warm,
        })
    }
}

// ---------------------------------------------------------------------------
// Running commands

/// What the error report needs to know to give a useful hint.
#[derive(Debug)]
struct ErrorContext {
    endpoints: String,
    token_sent: bool,
    config_dir: PathBuf,
}

static ERROR_CONTEXT: OnceLock<ErrorContext> = OnceLock::new();

pub async fn run_client(g: &GlobalArgs, cmd: ClientCommand) -> anyhow::Result<()> {
    if let ClientCommand::Cluster(ClusterCommand::WorkerSecret { cluster_secret }) = &cmd {
        return print_worker_secret(cluster_secret);
    }
    let client = Client::from_args(g)?;
    let _ = ERROR_CONTEXT.set(ErrorContext {
        endpoints: client.endpoints().join(","),
        token_sent: client.has_token(),
        config_dir: g.config_dir(),
    });
    let out = Out { format: g.output };
    match cmd {
        ClientCommand::Function(c) => function_cmd(&client, &out, c).await,
        ClientCommand::Version(c) => version_cmd(&client, &out, c).await,
        ClientCommand::Alias(c) => alias_cmd(&client, &out, c).await,
        ClientCommand::Cluster(c) => cluster_cmd(&client, &out, c).await,
        ClientCommand::Token(c) => token_cmd(&client, &out, c).await,
        ClientCommand::Invoke(a) => invoke_cmd(&client, &out, a).await,
        ClientCommand::Logs(a) => logs_cmd(&client, &out, a).await,
        ClientCommand::Dlq(c) => dlq_cmd(&client, &out, c).await,
        ClientCommand::Async(AsyncCommand::Status { function }) => {
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
    }
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

async fn dlq_cmd(client: &Client, out: &Out, cmd: DlqCommand) -> anyhow::Result<()> {
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

async fn invoke_cmd(client: &Client, out: &Out, a: InvokeArgs) -> anyhow::Result<()> {
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
    };
    let r = client
        .call(|c| {
            let req = req.clone();
            async move { c.invocations().invoke(req).await }
        })
        .await?
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

async fn logs_cmd(client: &Client, out: &Out, a: LogsArgs) -> anyhow::Result<()> {
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
        let r = client
            .call(|c| {
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

/// `2026-11-22T04:30:00.123Z`
fn rfc3339_ms(ms: u64) -> String {
    nubo_controller::clock::rfc3339(ms)
}

async fn function_cmd(client: &Client, out: &Out, cmd: FunctionCommand) -> anyhow::Result<()> {
    match cmd {
        FunctionCommand::Create(a) => {
            let config = a.config.to_proto(a.runtime, a.handler)?;
            let code = Arc::new(load_code(&a.code)?);
            let header = pb::CreateFunctionHeader {
                function_name: a.name,
                config: Some(config),
                publish: a.publish,
                code_size: code.len() as u64,
            };
            let progress = upload_progress(code.len());
            let res = client
                .call(|c| {
                    let stream = chunk_stream(
                        chunk_msg(pb::create_function_chunk::Part::Header(header.clone())),
                        code.clone(),
                        progress.clone(),
                        |b| chunk_msg(pb::create_function_chunk::Part::Code(b)),
                    );
                    async move { c.functions().create_function(stream).await }
                })
                .await;
            finish_progress(progress);
            out.config(&res?.into_inner());
        }
        FunctionCommand::Get(a) => {
            let qualifier = match (a.name.qualifier, a.qualifier) {
                (Some(x), Some(y)) if x != y => {
                    bail!("two qualifiers given: {x:?} (after ':') and {y:?} (--qualifier)")
                }
                (x, y) => x.or(y).unwrap_or_default(),
            };
            let req = pb::GetFunctionRequest {
                function_name: a.name.name,
                qualifier,
            };
            let resp = client
                .call(|c| {
                    let req = req.clone();
                    async move { c.functions().get_function(req).await }
                })
                .await?
                .into_inner();
            let conf = resp.configuration.unwrap_or_default();
            if out.json() {
                out.print_json(&json!({
                    "configuration": config_json(&conf),
                    "alias": resp.alias.as_ref().map(alias_json),
                }));
            } else {
                let mut pairs = config_pairs(&conf);
                if let Some(al) = &resp.alias {
                    pairs.push(("alias".into(), al.name.clone()));
                    pairs.push(("alias_version".into(), al.function_version.clone()));
                    pairs.push(("alias_routing".into(), routing_text(al)));
                }
                out.print(&render_kv(&pairs));
            }
        }
        FunctionCommand::List(a) => {
            let mut marker = a.marker.clone().unwrap_or_default();
            let mut functions = Vec::new();
            let next_marker = loop {
                let req = pb::ListFunctionsRequest {
                    max_items: a.max_items.unwrap_or(0),
                    marker: marker.clone(),
                    stale_ok: a.stale_ok,
                };
                let resp = client
                    .call(|c| {
                        let req = req.clone();
                        async move { c.functions().list_functions(req).await }
                    })
                    .await?
                    .into_inner();
                functions.extend(resp.functions);
                // The `!= marker` check stops a server that repeats itself.
                if a.max_items.is_some()
                    || resp.next_marker.is_empty()
                    || resp.next_marker == marker
                {
                    break resp.next_marker;
                }
                marker = resp.next_marker;
            };
            if out.json() {
                let mut v =
                    json!({ "functions": functions.iter().map(config_json).collect::<Vec<_>>() });
                if !next_marker.is_empty() {
                    v["next_marker"] = json!(next_marker);
                }
                out.print_json(&v);
            } else {
                let rows: Vec<Vec<String>> = functions
                    .iter()
                    .map(|f| {
                        vec![
                            f.function_name.clone(),
                            f.runtime.clone(),
                            format!("{}MB", f.memory_mb),
                            format!("{}s", f.timeout_seconds),
                            human_bytes(f.code_size),
                            f.last_modified.clone(),
                        ]
                    })
                    .collect();
                out.print(&render_table(
                    &[
                        "NAME",
                        "RUNTIME",
                        "MEMORY",
                        "TIMEOUT",
                        "CODE_SIZE",
                        "LAST_MODIFIED",
                    ],
                    &rows,
                ));
                if !next_marker.is_empty() {
                    eprintln!("more functions follow: pass --marker {next_marker}");
                }
            }
        }
        FunctionCommand::UpdateCode(a) => {
            let code = Arc::new(load_code(&a.code)?);
            let header = pb::UpdateFunctionCodeHeader {
                function_name: a.name,
                publish: a.publish,
                revision_id: a.revision_id.unwrap_or_default(),
                code_size: code.len() as u64,
            };
            let progress = upload_progress(code.len());
            let res = client
                .call(|c| {
                    let stream = chunk_stream(
                        code_msg(pb::update_function_code_chunk::Part::Header(header.clone())),
                        code.clone(),
                        progress.clone(),
                        |b| code_msg(pb::update_function_code_chunk::Part::Code(b)),
                    );
                    async move { c.functions().update_function_code(stream).await }
                })
                .await;
            finish_progress(progress);
            out.config(&res?.into_inner());
        }
        FunctionCommand::UpdateConfig(a) => {
            if a.runtime.is_none()
                && a.handler.is_none()
                && a.config.is_empty()
                && !a.clear_env
                && !a.clear_reserved_concurrency
            {
                bail!("nothing to change: give at least one setting (see `nubo function update-config --help`)");
            }
            let mut config = a
                .config
                .to_proto(a.runtime.unwrap_or_default(), a.handler.unwrap_or_default())?;
            if a.clear_env {
                config.replace_environment = true;
                config.environment.clear();
            }
            config.clear_reserved_concurrency = a.clear_reserved_concurrency;
            let req = pb::UpdateFunctionConfigurationRequest {
                function_name: a.name,
                config: Some(config),
                revision_id: a.revision_id.unwrap_or_default(),
            };
            let conf = client
                .call(|c| {
                    let req = req.clone();
                    async move { c.functions().update_function_configuration(req).await }
                })
                .await?
                .into_inner();
            out.config(&conf);
        }
        FunctionCommand::Delete(a) => {
            let req = pb::DeleteFunctionRequest {
                function_name: a.name.name.clone(),
                qualifier: a.name.qualifier.clone().unwrap_or_default(),
            };
            client
                .call(|c| {
                    let req = req.clone();
                    async move { c.functions().delete_function(req).await }
                })
                .await?;
            out.done(&match &a.name.qualifier {
                Some(q) => format!("deleted version {q} of function {}", a.name.name),
                None => format!("deleted function {}", a.name.name),
            });
        }
    }
    Ok(())
}

async fn version_cmd(client: &Client, out: &Out, cmd: VersionCommand) -> anyhow::Result<()> {
    match cmd {
        VersionCommand::Publish {
            name,
            description,
            revision_id,
            code_sha256,
        } => {
            let req = pb::PublishVersionRequest {
                function_name: name,
                description: description.unwrap_or_default(),
                code_sha256: code_sha256.unwrap_or_default(),
                revision_id: revision_id.unwrap_or_default(),
            };
            let conf = client
                .call(|c| {
                    let req = req.clone();
                    async move { c.functions().publish_version(req).await }
                })
                .await?
                .into_inner();
            out.config(&conf);
        }
        VersionCommand::List { name, stale_ok } => {
            let mut marker = String::new();
            let mut versions = Vec::new();
            loop {
                let req = pb::ListVersionsRequest {
                    function_name: name.clone(),
                    max_items: 0,
                    marker: marker.clone(),
                    stale_ok,
                };
                let resp = client
                    .call(|c| {
                        let req = req.clone();
                        async move { c.functions().list_versions_by_function(req).await }
                    })
                    .await?
                    .into_inner();
                versions.extend(resp.versions);
                if resp.next_marker.is_empty() || resp.next_marker == marker {
                    break;
                }
                marker = resp.next_marker;
            }
            if out.json() {
                out.print_json(
                    &json!({ "versions": versions.iter().map(config_json).collect::<Vec<_>>() }),
                );
            } else {
                let rows: Vec<Vec<String>> = versions
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.clone(),
                            v.runtime.clone(),
                            format!("{}MB", v.memory_mb),
                            short_sha(&v.code_sha256),
                            human_bytes(v.code_size),
                            v.last_modified.clone(),
                            v.description.clone(),
                        ]
                    })
                    .collect();
                out.print(&render_table(
                    &[
                        "VERSION",
                        "RUNTIME",
                        "MEMORY",
                        "CODE_SHA256",
                        "CODE_SIZE",
                        "LAST_MODIFIED",
                        "DESCRIPTION",
                    ],
                    &rows,
                ));
            }
        }
    }
    Ok(())
}

async fn alias_cmd(client: &Client, out: &Out, cmd: AliasCommand) -> anyhow::Result<()> {
    match cmd {
        AliasCommand::Create {
            function,
            alias,
            function_version,
            routing,
            description,
        } => {
            let req = pb::CreateAliasRequest {
                function_name: function,
                name: alias,
                function_version,
                additional_version_weights: routing_map(&routing)?,
                description: description.unwrap_or_default(),
            };
            let al = client
                .call(|c| {
                    let req = req.clone();
                    async move { c.functions().create_alias(req).await }
                })
                .await?
                .into_inner();
            out.alias(&al);
        }
        AliasCommand::Get { function, alias } => {
            let req = pb::GetAliasRequest {
                function_name: function,
                name: alias,
            };
            let al = client
                .call(|c| {
                    let req = req.clone();
                    async move { c.functions().get_alias(req).await }
                })
                .await?
                .into_inner();
            out.alias(&al);
        }
        AliasCommand::Update {
            function,
            alias,
            function_version,
            routing,
            clear_routing,
            description,
            revision_id,
        } => {
            if function_version.is_none()
                && routing.is_empty()
                && !clear_routing
                && description.is_none()
            {
                bail!("nothing to change: give --version, --routing, --clear-routing or --description");
            }
            let req = pb::UpdateAliasRequest {
                function_name: function,
                name: alias,
                function_version: function_version.unwrap_or_default(),
                update_routing: clear_routing || !routing.is_empty(),
                additional_version_weights: routing_map(&routing)?,
                description,
                revision_id: revision_id.unwrap_or_default(),
            };
            let al = client
                .call(|c| {
                    let req = req.clone();
                    async move { c.functions().update_alias(req).await }
                })
                .await?
                .into_inner();
            out.alias(&al);
        }
        AliasCommand::Delete { function, alias } => {
            let req = pb::DeleteAliasRequest {
                function_name: function.clone(),
                name: alias.clone(),
            };
            client
                .call(|c| {
                    let req = req.clone();
                    async move { c.functions().delete_alias(req).await }
                })
                .await?;
            out.done(&format!("deleted alias {alias} of function {function}"));
        }
        AliasCommand::List {
            function,
            function_version,
        } => {
            let req = pb::ListAliasesRequest {
                function_name: function,
                function_version: function_version.unwrap_or_default(),
                stale_ok: false,
            };
            let resp = client
                .call(|c| {
                    let req = req.clone();
                    async move { c.functions().list_aliases(req).await }
                })
                .await?
                .into_inner();
            if out.json() {
                out.print_json(
                    &json!({ "aliases": resp.aliases.iter().map(alias_json).collect::<Vec<_>>() }),
                );
            } else {
                let rows: Vec<Vec<String>> = resp
                    .aliases
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            a.function_version.clone(),
                            routing_text(a),
                            a.description.clone(),
                        ]
                    })
                    .collect();
                out.print(&render_table(
                    &["NAME", "VERSION", "ROUTING", "DESCRIPTION"],
                    &rows,
                ));
            }
        }
    }
    Ok(())
}

fn print_worker_secret(cluster_secret: &str) -> anyhow::Result<()> {
    println!("{}", nubo_proto::worker_secret(cluster_secret));
    Ok(())
}

async fn cluster_cmd(client: &Client, out: &Out, cmd: ClusterCommand) -> anyhow::Result<()> {
    let status = match cmd {
        ClusterCommand::Status => client
            .call(|c| async move { c.cluster().status(pb::ClusterStatusRequest {}).await })
            .await?
            .into_inner(),
        ClusterCommand::Add { id, address } => {
            let req = pb::AddLearnerRequest {
                node_id: id,
                address,
            };
            client
                .call(|c| {
                    let req = req.clone();
                    async move { c.cluster().add_learner(req).await }
                })
                .await?
                .into_inner()
        }
        ClusterCommand::Promote { id } => client
            .call(|c| async move {
                c.cluster()
                    .promote_voter(pb::PromoteVoterRequest { node_id: id })
                    .await
            })
            .await?
            .into_inner(),
        // Answered before a client is made (run_client).
        ClusterCommand::WorkerSecret { cluster_secret } => {
            return print_worker_secret(&cluster_secret)
        }
        ClusterCommand::Remove { id } => client
            .call(|c| async move {
                c.cluster()
                    .remove_node(pb::RemoveNodeRequest { node_id: id })
                    .await
            })
            .await?
            .into_inner(),
    };
    if out.json() {
        out.print_json(&cluster_json(&status));
    } else {
        out.print(&render_cluster(&status));
    }
    Ok(())
}

async fn token_cmd(client: &Client, out: &Out, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { scope, name } => {
            let req = pb::CreateTokenRequest {
                scope: scope.as_str().to_string(),
                name: name.unwrap_or_default(),
            };
            let t = client
                .call(|c| {
                    let req = req.clone();
                    async move { c.tokens().create_token(req).await }
                })
                .await?
                .into_inner();
            if out.json() {
                out.print_json(&json!({ "token": t.token, "id": t.id, "scope": t.scope }));
            } else {
                out.print(&render_kv(&[
                    ("id".into(), t.id),
                    ("scope".into(), t.scope),
                    ("token".into(), t.token),
                ]));
                eprintln!("Store the token now: only its hash is kept, it cannot be shown again.");
            }
        }
        TokenCommand::List => {
            let resp = client
                .call(|c| async move { c.tokens().list_tokens(pb::ListTokensRequest {}).await })
                .await?
                .into_inner();
            if out.json() {
                let tokens: Vec<Value> = resp
                    .tokens
                    .iter()
                    .map(|t| {
                        json!({
                            "id": t.id, "name": t.name, "scope": t.scope, "created_at": t.created_at,
                        })
                    })
                    .collect();
                out.print_json(&json!({ "tokens": tokens }));
            } else {
                let rows: Vec<Vec<String>> = resp
                    .tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.scope.clone(),
                            t.created_at.clone(),
                        ]
                    })
                    .collect();
                out.print(&render_table(&["ID", "NAME", "SCOPE", "CREATED_AT"], &rows));
            }
        }
        TokenCommand::Revoke { id } => {
            let req = pb::RevokeTokenRequest { id: id.clone() };
            client
                .call(|c| {
                    let req = req.clone();
                    async move { c.tokens().revoke_token(req).await }
                })
                .await?;
            out.done(&format!("revoked token {id}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Code packages and uploads

/// Reads `--code`: a directory is zipped in memory, a .zip file is sent as is.
pub fn load_code(path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path).with_context(|| format!("--code {}", path.display()))?;
    if meta.is_dir() {
        let bytes = zipdir::zip_dir(path)
            .with_context(|| format!("packaging directory {}", path.display()))?;
        return Ok(bytes);
    }
    let is_zip_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
    if !is_zip_name {
        bail!(
            "--code {}: expected a directory or a .zip file",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // Local file header, or the end record of an empty archive.
    if !(bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")) {
        bail!("--code {}: not a zip archive", path.display());
    }
    Ok(bytes)
}

fn chunk_msg(part: pb::create_function_chunk::Part) -> pb::CreateFunctionChunk {
    pb::CreateFunctionChunk { part: Some(part) }
}

fn code_msg(part: pb::update_function_code_chunk::Part) -> pb::UpdateFunctionCodeChunk {
    pb::UpdateFunctionCodeChunk { part: Some(part) }
}

/// The upload stream: `head`, then the package in 1 MiB pieces. Built anew
/// for each attempt from the bytes kept in memory, so a failover can resend.
fn chunk_stream<M: Send + 'static>(
    head: M,
    code: Arc<Vec<u8>>,
    progress: Option<ProgressBar>,
    wrap: fn(Vec<u8>) -> M,
) -> impl Stream<Item = M> + Send + 'static {
    if let Some(p) = &progress {
        p.set_position(0);
    }
    let pieces = code.len().div_ceil(CHUNK_SIZE);
    let chunks = (0..pieces).map(move |i| {
        let lo = i * CHUNK_SIZE;
        let hi = (lo + CHUNK_SIZE).min(code.len());
        // A piece is pulled once the previous ones went to the transport.
        if let Some(p) = &progress {
            p.set_position(lo as u64);
        }
        wrap(code[lo..hi].to_vec())
    });
    futures::stream::iter(std::iter::once(head).chain(chunks))
}

fn upload_progress(size: usize) -> Option<ProgressBar> {
    let forced = match std::env::var("NUBO_PROGRESS").as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    };
    let tty = std::io::stderr().is_terminal();
    let show = forced.unwrap_or(tty && size > PROGRESS_THRESHOLD);
    if !show {
        return None;
    }
    let target = if tty {
        ProgressDrawTarget::stderr()
    } else {
        // Not a terminal (forced): one plain line per second, no escapes.
        ProgressDrawTarget::term_like_with_hz(Box::new(LineTerm::default()), 1)
    };
    let pb = ProgressBar::with_draw_target(Some(size as u64), target);
    let style = ProgressStyle::with_template(
        "uploading [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    Some(pb)
}

fn finish_progress(progress: Option<ProgressBar>) {
    if let Some(p) = progress {
        if std::io::stderr().is_terminal() {
            p.finish_and_clear();
        } else {
            p.finish();
        }
    }
}

/// A progress-bar "terminal" for logs: a redraw becomes one plain line, at
/// most one a second (indicatif's own limiter lets bursts through); the last
/// state is printed when the bar goes away.
#[derive(Debug, Default)]
struct LineTerm {
    state: Mutex<LineState>,
}

#[derive(Debug, Default)]
struct LineState {
    buf: String,
    pending: Option<String>,
    last_print: Option<std::time::Instant>,
}

impl LineTerm {
    fn emit(line: &str) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
        let _ = err.flush();
    }
}

impl Drop for LineTerm {
    fn drop(&mut self) {
        if let Some(line) = self.state.lock().expect("lock poisoned").pending.take() {
            LineTerm::emit(&line);
        }
    }
}

impl TermLike for LineTerm {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        let mut st = self.state.lock().expect("lock poisoned");
        st.buf.push_str(s);
        st.buf.push('\n');
        Ok(())
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.state.lock().expect("lock poisoned").buf.push_str(s);
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        let mut st = self.state.lock().expect("lock poisoned");
        let text = std::mem::take(&mut st.buf);
        let Some(line) = text
            .split(['\n', '\r'])
            .map(str::trim_end)
            .rfind(|l| !l.trim().is_empty())
        else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        if st
            .last_print
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1))
        {
            st.pending = Some(line.to_string());
        } else {
            st.pending = None;
            st.last_print = Some(now);
            LineTerm::emit(line);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Output

struct Out {
    format: OutputFormat,
}

impl Out {
    fn json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    fn print(&self, s: &str) {
        // Ignore write errors: `nubo function list | head` must not panic.
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(s.as_bytes());
        let _ = o.flush();
    }

    fn print_json(&self, v: &Value) {
        let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
        s.push('\n');
        self.print(&s);
    }

    fn config(&self, c: &pb::FunctionConfiguration) {
        if self.json() {
            self.print_json(&config_json(c));
        } else {
            self.print(&render_kv(&config_pairs(c)));
        }
    }

    fn alias(&self, a: &pb::Alias) {
        if self.json() {
            self.print_json(&alias_json(a));
        } else {
            self.print(&render_kv(&[
                ("function_name".into(), a.function_name.clone()),
                ("name".into(), a.name.clone()),
                ("function_version".into(), a.function_version.clone()),
                ("routing".into(), routing_text(a)),
                ("description".into(), a.description.clone()),
                ("revision_id".into(), a.revision_id.clone()),
            ]));
        }
    }

    /// Confirms a call whose response is empty.
    fn done(&self, message: &str) {
        if self.json() {
            self.print_json(&json!({}));
        } else {
            self.print(&format!("{message}\n"));
        }
    }
}

fn sorted<V: Clone>(m: &HashMap<String, V>) -> BTreeMap<String, V> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub fn config_json(c: &pb::FunctionConfiguration) -> Value {
    json!({
        "function_name": c.function_name,
        "version": c.version,
        "runtime": c.runtime,
        "handler": c.handler,
        "memory_mb": c.memory_mb,
        "timeout_seconds": c.timeout_seconds,
        "environment": sorted(&c.environment),
        "description": c.description,
        "ephemeral_storage_mb": c.ephemeral_storage_mb,
        "reserved_concurrency": c.reserved_concurrency,
        "maximum_retry_attempts": c.maximum_retry_attempts,
        "maximum_event_age_seconds": c.maximum_event_age_seconds,
        "dead_letter_target": c.dead_letter_target,
        "on_success_target": c.on_success_target,
        "code_sha256": c.code_sha256,
        "code_size": c.code_size,
        "revision_id": c.revision_id,
        "last_modified": c.last_modified,
        "egress": c.egress,
        "min_warm": c.min_warm,
    })
}

pub fn alias_json(a: &pb::Alias) -> Value {
    json!({
        "function_name": a.function_name,
        "name": a.name,
        "function_version": a.function_version,
        "additional_version_weights": sorted(&a.additional_version_weights),
        "description": a.description,
        "revision_id": a.revision_id,
    })
}

pub fn cluster_json(s: &pb::ClusterStatusResponse) -> Value {
    let nodes: Vec<Value> = s
        .nodes
        .iter()
        .map(|n| {
            json!({
                "id": n.id,
                "address": n.address,
                "role": n.role,
                "is_leader": n.is_leader,
                "health": n.health,
                "matched_index": n.matched_index,
            })
        })
        .collect();
    json!({
        "node_id": s.node_id,
        "leader_id": s.leader_id,
        "leader_address": s.leader_address,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "last_applied_index": s.last_applied_index,
        "commit_index": s.commit_index,
        "nodes": nodes,
        "state": s.state,
        "workers": s.workers.iter().map(|w| json!({
            "id": w.id,
            "zone": w.zone,
            "address": w.address,
            "memory_mb": w.memory_mb,
            "used_memory_mb": w.used_memory_mb,
            "max_sandboxes": w.max_sandboxes,
            "sandboxes": w.sandboxes,
            "warm_idle": w.warm_idle,
            "busy": w.busy,
            "health": w.health,
            "last_heartbeat_ms_ago": w.last_heartbeat_ms_ago,
        })).collect::<Vec<_>>(),
    })
}

fn config_pairs(c: &pb::FunctionConfiguration) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = vec![
        ("function_name".into(), c.function_name.clone()),
        ("version".into(), c.version.clone()),
        ("runtime".into(), c.runtime.clone()),
        ("handler".into(), c.handler.clone()),
        ("memory".into(), format!("{} MB", c.memory_mb)),
        ("timeout".into(), format!("{} s", c.timeout_seconds)),
        (
            "ephemeral_storage".into(),
            format!("{} MB", c.ephemeral_storage_mb),
        ),
        (
            "reserved_concurrency".into(),
            c.reserved_concurrency
                .map_or_else(|| "unreserved".to_string(), |n| n.to_string()),
        ),
        (
            "network".into(),
            if c.egress { "egress" } else { "none" }.into(),
        ),
        ("min_warm".into(), c.min_warm.to_string()),
        ("description".into(), c.description.clone()),
    ];
    let env = sorted(&c.environment);
    if env.is_empty() {
        p.push(("environment".into(), String::new()));
    }
    for (i, (k, v)) in env.iter().enumerate() {
        let key = if i == 0 { "environment" } else { "" };
        p.push((key.into(), format!("{k}={v}")));
    }
    p.extend([
        (
            "max_retry_attempts".into(),
            c.maximum_retry_attempts.to_string(),
        ),
        (
            "max_event_age".into(),
            format!("{} s", c.maximum_event_age_seconds),
        ),
        ("dead_letter_target".into(), c.dead_letter_target.clone()),
        ("on_success_target".into(), c.on_success_target.clone()),
        ("code_sha256".into(), c.code_sha256.clone()),
        (
            "code_size".into(),
            format!("{} ({} bytes)", human_bytes(c.code_size), c.code_size),
        ),
        ("revision_id".into(), c.revision_id.clone()),
        ("last_modified".into(), c.last_modified.clone()),
    ]);
    p
}

fn routing_text(a: &pb::Alias) -> String {
    sorted(&a.additional_version_weights)
        .iter()
        .map(|(v, w)| format!("{v}={w}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn render_cluster(s: &pb::ClusterStatusResponse) -> String {
    let leader = if s.leader_id == 0 {
        "none".to_string()
    } else if s.leader_address.is_empty() {
        s.leader_id.to_string()
    } else {
        format!("{} ({})", s.leader_id, s.leader_address)
    };
    let mut text = render_kv(&[
        ("answered_by".into(), s.node_id.to_string()),
        ("state".into(), s.state.clone()),
        ("leader".into(), leader),
        ("term".into(), s.term.to_string()),
        ("last_log_index".into(), s.last_log_index.to_string()),
        ("commit_index".into(), s.commit_index.to_string()),
        (
            "last_applied_index".into(),
            s.last_applied_index.to_string(),
        ),
    ]);
    text.push('\n');
    let workers_table = if s.workers.is_empty() {
        "no workers registered with this controller (start one: `nubo worker --zone Z --controllers ...`)\n".to_string()
    } else {
        let rows: Vec<Vec<String>> = s
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.id.clone(),
                    w.zone.clone(),
                    w.address.clone(),
                    format!("{}/{} MB", w.used_memory_mb, w.memory_mb),
                    format!("{}/{}", w.sandboxes, w.max_sandboxes),
                    w.warm_idle.to_string(),
                    w.busy.to_string(),
                    w.health.clone(),
                    format!("{} ms ago", w.last_heartbeat_ms_ago),
                ]
            })
            .collect();
        render_table(
            &[
                "WORKER",
                "ZONE",
                "ADDRESS",
                "MEMORY",
                "SANDBOXES",
                "WARM",
                "BUSY",
                "HEALTH",
                "HEARD",
            ],
            &rows,
        )
    };
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.address.clone(),
                n.role.clone(),
                if n.is_leader { "yes" } else { "no" }.into(),
                n.health.clone(),
                n.matched_index.to_string(),
            ]
        })
        .collect();
    text.push_str(&render_table(
        &["ID", "ADDRESS", "ROLE", "LEADER", "HEALTH", "MATCHED"],
        &rows,
    ));
    text.push('\n');
    text.push_str(&workers_table);
    text
}

fn short_sha(s: &str) -> String {
    s.chars().take(12).collect()
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// One line per cell value: control characters (a newline in a description)
/// would break the columns.
fn cell(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// Aligned columns separated by two spaces; empty cells show `-` so that
/// `awk '{print $2}'` keeps working.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            (0..headers.len())
                .map(|i| cell(r.get(i).map_or("", |s| s)))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(c);
            let pad = widths[i].saturating_sub(c.chars().count());
            l.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for r in &rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// `key: value` lines with the values aligned; an empty key continues the
/// previous one (one environment variable per line).
pub fn render_kv(pairs: &[(String, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let key = if k.is_empty() {
            String::new()
        } else {
            format!("{k}:")
        };
        let v: String = v
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let line = format!("{key:<width$} {v}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// Errors

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
            if refused {
                eprintln!("hint: {}", refused_hint());
            }
        }
    }
    1
}

fn endpoints_text() -> String {
    ERROR_CONTEXT
        .get()
        .map(|c| c.endpoints.clone())
        .unwrap_or_else(|| crate::client::DEFAULT_ENDPOINT.to_string())
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
                .unwrap_or_else(crate::client::default_config_dir)
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
        Code::Unavailable if s.message().starts_with(CONNECT_ERROR_PREFIX) => Some(format!(
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
    use futures::StreamExt;

    #[test]
    fn env_items() {
        assert_eq!(
            parse_env_item("A=b=c").unwrap(),
            ("A".to_string(), "b=c".to_string())
        );
        assert_eq!(parse_env_item("A=").unwrap().1, "");
        let e = parse_env_item("NOEQUALS").unwrap_err();
        assert!(e.contains("\"NOEQUALS\""), "{e}");
        let e = parse_env_item("=v").unwrap_err();
        assert!(e.contains("\"=v\"") && e.contains("key is empty"), "{e}");
        let dup = env_map(&[("A".into(), "1".into()), ("A".into(), "2".into())]).unwrap_err();
        assert!(dup.to_string().contains("\"A\""), "{dup}");
    }

    #[test]
    fn routing_items() {
        assert_eq!(parse_routing_item("2=0.1").unwrap(), ("2".to_string(), 0.1));
        for bad in ["2", "=0.1", "2=abc", "2=1", "2=-0.1", "2=1.5"] {
            let e = parse_routing_item(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        let e = routing_map(&[("2".into(), 0.6), ("3".into(), 0.5)]).unwrap_err();
        assert!(e.to_string().contains("below 1"), "{e}");
    }

    #[test]
    fn qualified_names() {
        assert_eq!(
            parse_qualified("fn").unwrap(),
            Qualified {
                name: "fn".into(),
                qualifier: None
            }
        );
        let q = parse_qualified("fn:prod").unwrap();
        assert_eq!(
            (q.name.as_str(), q.qualifier.as_deref()),
            ("fn", Some("prod"))
        );
        assert_eq!(
            parse_qualified("fn:$LATEST").unwrap().qualifier.as_deref(),
            Some("$LATEST")
        );
        for bad in ["", ":1", "fn:", "a:b:c"] {
            let e = parse_qualified(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn table_is_aligned() {
        let t = render_table(
            &["NAME", "RUNTIME", "DESC"],
            &[
                vec!["a".into(), "python3.12".into(), "".into()],
                vec!["longer-name".into(), "node".into(), "x\ny".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME         RUNTIME     DESC\n\
             a            python3.12  -\n\
             longer-name  node        x y\n"
        );
    }

    #[test]
    fn key_values_are_aligned() {
        let t = render_kv(&[
            ("a".into(), "1".into()),
            ("longer".into(), "2".into()),
            ("".into(), "3".into()),
            ("e".into(), "".into()),
        ]);
        assert_eq!(t, "a:      1\nlonger: 2\n        3\ne:\n");
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
    }

    #[tokio::test]
    async fn upload_stream_is_header_then_mib_chunks() {
        let code = Arc::new(vec![7u8; CHUNK_SIZE * 2 + 5]);
        let msgs: Vec<pb::CreateFunctionChunk> = chunk_stream(
            chunk_msg(pb::create_function_chunk::Part::Header(Default::default())),
            code,
            None,
            |b| chunk_msg(pb::create_function_chunk::Part::Code(b)),
        )
        .collect()
        .await;
        use pb::create_function_chunk::Part;
        assert!(matches!(msgs[0].part, Some(Part::Header(_))));
        let sizes: Vec<usize> = msgs[1..]
            .iter()
            .map(|m| match &m.part {
                Some(Part::Code(b)) => b.len(),
                _ => panic!("expected code"),
            })
            .collect();
        assert_eq!(sizes, [CHUNK_SIZE, CHUNK_SIZE, 5]);
    }

    #[test]
    fn status_errors_are_named() {
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        let e = anyhow::Error::new(Status::unavailable(
            "cannot connect to x: Connection refused",
        ));
        assert_eq!(report_error(&e), 1);
    }

    #[test]
    fn code_path_must_be_dir_or_zip() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("app.py");
        std::fs::write(&f, "x").unwrap();
        assert!(load_code(&f).unwrap_err().to_string().contains(".zip"));
        let z = tmp.path().join("bad.zip");
        std::fs::write(&z, "not a zip").unwrap();
        assert!(load_code(&z).unwrap_err().to_string().contains("not a zip"));
        std::fs::write(tmp.path().join("app.py"), "x").unwrap();
        let bytes = load_code(tmp.path()).unwrap();
        assert!(bytes.starts_with(b"PK"));
    }

    #[test]
    fn cli_parses() {
        use clap::Parser;
        let cli = crate::Cli::try_parse_from([
            "nubo",
            "-o",
            "json",
            "function",
            "create",
            "f",
            "--runtime",
            "python3.12",
            "--handler",
            "app.h",
            "--code",
            ".",
            "--env",
            "A=1",
            "--env",
            "B=2",
            "--network",
            "none",
        ])
        .unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        let crate::Command::Client(ClientCommand::Function(FunctionCommand::Create(a))) =
            cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(a.config.env.len(), 2);
        assert_eq!(a.config.network, Some(Network::NoNetwork));
        let err =
            crate::Cli::try_parse_from(["nubo", "function", "update-config", "f", "--env", "oops"])
                .unwrap_err()
                .to_string();
        assert!(err.contains("\"oops\""), "{err}");
        assert!(crate::Cli::try_parse_from([
            "nubo",
            "alias",
            "update",
            "f",
            "a",
            "--routing",
            "2=0.1",
            "--clear-routing"
        ])
        .is_err());
    }
}
