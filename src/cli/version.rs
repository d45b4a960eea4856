//! `nubo version`: publish and list immutable versions.

use nubo_client::Client;
use nubo_proto::v1 as pb;
use serde_json::json;

use super::render::{config_json, human_bytes, render_table, short_sha, Out};

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

pub(super) async fn run(client: &Client, out: &Out, cmd: VersionCommand) -> anyhow::Result<()> {
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
