//! `nubo.v1.Tokens`: bearer tokens and their scopes.

use rand::RngCore;
use sha2::{Digest, Sha256};

use nubo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{request_id, Api};
use crate::clock::{now_ms, rfc3339};
use crate::error::RegistryError;
use crate::registry::model::{Command, Scope, Token};

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
            let secret = new_token_secret();
            let id = new_token_id();
            self.write(
                &rid,
                Command::CreateToken {
                    token: Token {
                        id: id.clone(),
                        name: r.name,
                        scope,
                        hash: hash_token(&secret),
                        created_at_ms: now_ms(),
                    },
                },
            )
            .await?;
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
