//! `nubo function`: create, inspect, change and delete functions.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use nubo_client::Client;
use nubo_proto::v1 as pb;
use serde_json::json;

use super::render::{
    alias_json, config_json, config_pairs, human_bytes, render_kv, render_table, routing_text, Out,
};
use super::upload::{chunk_msg, code_msg, load_code, upload};
use super::{env_map, parse_env_item, parse_qualified, Qualified};

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

pub(super) async fn run(client: &Client, out: &Out, cmd: FunctionCommand) -> anyhow::Result<()> {
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
            let res = upload(
                client,
                code,
                chunk_msg(pb::create_function_chunk::Part::Header(header)),
                |b| chunk_msg(pb::create_function_chunk::Part::Code(b)),
                |c, stream| async move { c.functions().create_function(stream).await },
            )
            .await?;
            out.config(&res.into_inner());
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
            let res = upload(
                client,
                code,
                code_msg(pb::update_function_code_chunk::Part::Header(header)),
                |b| code_msg(pb::update_function_code_chunk::Part::Code(b)),
                |c, stream| async move { c.functions().update_function_code(stream).await },
            )
            .await?;
            out.config(&res.into_inner());
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
