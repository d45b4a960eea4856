//! `nubo.v1.Tokens`: bearer tokens and their scopes.

use rand::RngCore;
use sha2::{Digest, Sha256};

use nubo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{request_id, Api};
use crate::clock::{now_ms, rfc3339};
use crate::error::ApiError;
use crate::error::RegistryError;
use crate::registry::model::{Command, Outcome, Scope, Token};

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token secret: `nubo_` + 64 hex chars.
pub fn new_token_secret() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("nubo_{}", hex::encode(b))
}

pub fn new_token_id() -> String {
    let mut b = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

#[tonic::async_trait]
impl pb::tokens_server::Tokens for Api {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Tokens/CreateToken");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let r = request.into_inner();
            let scope = Scope::parse(&r.scope).ok_or_else(|| {
                RegistryError::invalid(format!(
                    "scope {:?} is not one of admin, deploy, invoke",
                    r.scope
                ))
            })?;
            if r.name.len() > 128 {
                return Err(
                    RegistryError::invalid("token name is longer than 128 characters").into(),
                );
            }
            let make = |id: &str, secret: &str| Command::CreateToken {
                token: Token {
                    id: id.to_string(),
                    name: r.name.clone(),
                    scope,
                    hash: hash_token(secret),
                    created_at_ms: now_ms(),
                },
            };
            let mut secret = new_token_secret();
            let mut id = new_token_id();
            let out = self.write(&rid, make(&id, &secret)).await?;
            if let Outcome::Token(first) = out {
                if first != id {
                    // A retry of a call whose first attempt created token
                    // `first` and whose answer was lost: its secret went
                    // nowhere and cannot be told again (only its hash is
                    // kept). Revoke it and create another, answered here.
                    match self.write(&None, Command::RevokeToken { id: first }).await {
                        Err(ApiError::Registry(RegistryError::NotFound(_))) | Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                    secret = new_token_secret();
                    id = new_token_id();
                    self.write(&None, make(&id, &secret)).await?;
                }
            }
            Ok(pb::CreateTokenResponse {
                token: secret,
                id,
                scope: scope.as_str().into(),
            })
        })
        .await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Tokens/ListTokens");
        self.run(call, async {
            self.read(false).await?;
            let tokens = self.node.with_registry(|r| {
                r.tokens
                    .values()
                    .map(|t| pb::TokenInfo {
                        id: t.id.clone(),
                        name: t.name.clone(),
                        scope: t.scope.as_str().into(),
                        created_at: rfc3339(t.created_at_ms),
                    })
                    .collect()
            });
            Ok(pb::ListTokensResponse { tokens })
        })
        .await
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Tokens/RevokeToken");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let id = request.into_inner().id;
            self.write(&rid, Command::RevokeToken { id }).await?;
            Ok(pb::RevokeTokenResponse {})
        })
        .await
    }
}
