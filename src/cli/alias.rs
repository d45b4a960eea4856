//! `nubo alias`: named pointers to versions, with weighted routing.

use anyhow::bail;
use nubo_client::Client;
use nubo_proto::v1 as pb;
use serde_json::json;

use super::render::{alias_json, render_table, routing_text, Out};
use super::{parse_routing_item, routing_map};

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

pub(super) async fn run(client: &Client, out: &Out, cmd: AliasCommand) -> anyhow::Result<()> {
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
