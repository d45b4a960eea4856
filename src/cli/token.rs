//! `nubo token`: API tokens and their scopes.

use nubo_client::Client;
use nubo_proto::v1 as pb;
use serde_json::{json, Value};

use super::render::{render_kv, render_table, Out};

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

pub(super) async fn run(client: &Client, out: &Out, cmd: TokenCommand) -> anyhow::Result<()> {
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
