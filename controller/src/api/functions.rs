//! `nubo.v1.Functions`: functions, code, versions and aliases.

use std::collections::BTreeMap;
use std::pin::Pin;

use nubo_proto::v1 as pb;
use nubo_proto::Reason;
use tonic::{Request, Response, Status, Streaming};

use crate::api::convert::*;
use crate::api::CODE_CHUNK;
use crate::api::{request_id, Api};
use crate::clock::now_ms;
use crate::error::{ApiError, RegistryError};
use crate::registry::codezip;
use crate::registry::model::{Command, ConfigPatch, FunctionConfig, Outcome};
use crate::registry::validate;

/// How long a delete's reply waits for the workers to drop the function's
/// logs: well under the client's 1 s attempt deadline; the drop goes on
/// after it.
const DROP_LOGS_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

type CodeStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::CodeChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::functions_server::Functions for Api {
    async fn create_function(
        &self,
        request: Request<Streaming<pb::CreateFunctionChunk>>,
    ) -> Result<Response<pb::FunctionConfiguration>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Functions/CreateFunction");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let limits = self.node.config.limits();
            let (h, code) = self
                .receive_code(request.into_inner(), |h: &pb::CreateFunctionHeader| {
                    validate::function_name(&h.function_name)?;
                    let patch = patch_from(&h.config.clone().unwrap_or_default());
                    let full = patch.apply_to(&FunctionConfig::defaults(String::new(), 0));
                    validate::full_config(&full, &limits)?;
                    if h.code_size > limits.max_zipped_bytes {
                        return Err(RegistryError::invalid(format!(
                            "code package of {} bytes is over the {} MB zipped limit",
                            h.code_size,
                            limits.max_zipped_bytes / (1024 * 1024)
                        ))
                        .into());
                    }
                    // Before a byte is received: a full disk stops the store.
                    self.node.ensure_code_room(h.code_size)?;
                    if self
                        .node
                        .with_registry(|r| r.functions.contains_key(&h.function_name))
                    {
                        return Err(RegistryError::exists(format!(
                            "function {} already exists",
                            h.function_name
                        ))
                        .with_reason(Reason::FunctionExists)
                        .into());
                    }
                    Ok(())
                })
                .await?;
            let patch = patch_from(&h.config.clone().unwrap_or_default());
            let base = FunctionConfig::defaults(String::new(), 0);
            let full = patch.apply_to(&base);
            let info = codezip::inspect(&code, &full.runtime, &full.handler, &limits)?;
            let mut config = full;
            config.code_sha256 = info.sha256.clone();
            config.code_size = info.size;
            let name = h.function_name.clone();
            let publish = h.publish;
            let now = now_ms();
            let out = self
                .write_with_code(
                    &rid,
                    |c| Command::CreateFunction {
                        name: name.clone(),
                        config: config.clone(),
                        code_stored: c,
                        publish,
                        now_ms: now,
                    },
                    &info.sha256,
                    code,
                )
                .await?;
            outcome_config(out)
        })
        .await
    }

    async fn get_function(
        &self,
        request: Request<pb::GetFunctionRequest>,
    ) -> Result<Response<pb::GetFunctionResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Functions/GetFunction");
        self.run(call, async {
            let r = request.into_inner();
            validate::function_name(&r.function_name)?;
            self.read(false).await?;
            let (view, alias) = self
                .node
                .with_registry(|reg| reg.get(&r.function_name, &r.qualifier))?;
            Ok(pb::GetFunctionResponse {
                configuration: Some(config_to_pb(&view)),
                alias: alias.map(|a| alias_to_pb(&r.function_name, &a)),
            })
        })
        .await
    }

    async fn list_functions(
        &self,
        request: Request<pb::ListFunctionsRequest>,
    ) -> Result<Response<pb::ListFunctionsResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Functions/ListFunctions");
        self.run(call, async {
            let r = request.into_inner();
            let max = match r.max_items {
                0 => 50,
                n if n > 10_000 => {
                    return Err(RegistryError::invalid(format!(
                        "max_items {n} is out of range: must be 1-10000"
                    ))
                    .into())
                }
                n => n as usize,
            };
            self.read(r.stale_ok).await?;
            let (items, next) = self
                .node
                .with_registry(|reg| reg.list_functions(&r.marker, max));
            Ok(pb::ListFunctionsResponse {
                functions: items.iter().map(config_to_pb).collect(),
                next_marker: next,
            })
        })
        .await
    }

    async fn update_function_code(
        &self,
        request: Request<Streaming<pb::UpdateFunctionCodeChunk>>,
    ) -> Result<Response<pb::FunctionConfiguration>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Functions/UpdateFunctionCode");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let limits = self.node.config.limits();
            let (h, code) = self
                .receive_code(request.into_inner(), |h: &pb::UpdateFunctionCodeHeader| {
                    validate::function_name(&h.function_name)?;
                    self.node
                        .with_registry(|r| r.function(&h.function_name).map(|_| ()))?;
                    self.node.ensure_code_room(h.code_size)?;
                    Ok(())
                })
                .await?;
            let (runtime, handler) = self.node.with_registry(|r| {
                r.function(&h.function_name)
                    .map(|f| (f.latest.runtime.clone(), f.latest.handler.clone()))
            })?;
            let info = codezip::inspect(&code, &runtime, &handler, &limits)?;
            let now = now_ms();
            let out = self
                .write_with_code(
                    &rid,
                    |c| Command::UpdateFunctionCode {
                        name: h.function_name.clone(),
                        code_sha256: info.sha256.clone(),
                        code_size: info.size,
                        code_stored: c,
                        expected_revision: non_empty(&h.revision_id),
                        publish: h.publish,
                        now_ms: now,
                    },
                    &info.sha256,
                    code,
                )
                .await?;
            outcome_config(out)
        })
        .await
    }

    async fn update_function_configuration(
        &self,
        request: Request<pb::UpdateFunctionConfigurationRequest>,
    ) -> Result<Response<pb::FunctionConfiguration>, Status> {
        let call = self.authorize(
            request.metadata(),
            "/nubo.v1.Functions/UpdateFunctionConfiguration",
        );
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let r = request.into_inner();
            validate::function_name(&r.function_name)?;
            let patch = patch_from(&r.config.unwrap_or_default());
            validate::config_patch(&patch, &self.node.config.limits())?;
            if patch == ConfigPatch::default() {
                return Err(RegistryError::invalid("the update sets no field")
                    .with_reason(Reason::NothingToUpdate)
                    .into());
            }
            let out = self
                .write(
                    &rid,
                    Command::UpdateFunctionConfiguration {
                        name: r.function_name,
                        patch,
                        expected_revision: non_empty(&r.revision_id),
                        now_ms: now_ms(),
                    },
                )
                .await?;
            outcome_config(out)
        })
        .await
    }

    async fn delete_function(
        &self,
        request: Request<pb::DeleteFunctionRequest>,
    ) -> Result<Response<pb::DeleteFunctionResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Functions/DeleteFunction");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let r = request.into_inner();
            validate::function_name(&r.function_name)?;
            let cmd = if r.qualifier.is_empty() {
                Command::DeleteFunction {
                    name: r.function_name,
                }
            } else {
                match validate::parse_qualifier(&r.qualifier)? {
                    validate::Qualifier::Version(n) => Command::DeleteVersion {
                        name: r.function_name,
                        version: n,
                    },
                    _ => {
                        return Err(RegistryError::invalid(format!(
                            "cannot delete qualifier {}: give a version number, or no qualifier to delete the whole function (an alias is deleted with DeleteAlias)",
                            r.qualifier
                        ))
                        .into())
                    }
                }
            };
            let deleted = match &cmd {
                Command::DeleteFunction { name } => Some(name.clone()),
                _ => None,
            };
            let out = self.write(&rid, cmd).await?;
            let triggers_deleted = match (&deleted, out) {
                (Some(_), Outcome::Count(n)) => n as u32,
                _ => 0,
            };
            if let Some(name) = deleted {
                // Committed: the function's logs go with it (best effort;
                // reads also hide lines older than a new namesake). In its
                // own task, waited for briefly: a worker slow to answer
                // must not hold the reply past the client's attempt
                // deadline (it would retry a committed delete), and a
                // caller that goes away must not cut the drop short.
                let invoker = self.invoker.clone();
                let drop = tokio::spawn(async move { invoker.drop_logs(&name).await });
                let _ = tokio::time::timeout(DROP_LOGS_WAIT, drop).await;
            }
            Ok(pb::DeleteFunctionResponse { triggers_deleted })
        })
        .await
    }

    type GetCodeStream = CodeStream;

    async fn get_code(
        &self,
        request: Request<pb::GetCodeRequest>,
    ) -> Result<Response<Self::GetCodeStream>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Functions/GetCode");
        self.run(call, async {
            let sha = request.into_inner().code_sha256;
            let data = self
                .node
                .sm
                .blob(&sha)
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .ok_or_else(|| {
                    RegistryError::not_found(format!("no code package with sha256 {sha}"))
                })?;
            let chunks: Vec<Result<pb::CodeChunk, Status>> = data
                .chunks(CODE_CHUNK)
                .map(|c| Ok(pb::CodeChunk { data: c.to_vec() }))
                .collect();
            Ok(Box::pin(tokio_stream::iter(chunks)) as CodeStream)
        })
        .await
    }

    async fn publish_version(
        &self,
        request: Request<pb::PublishVersionRequest>,
    ) -> Result<Response<pb::FunctionConfiguration>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Functions/PublishVersion");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let r = request.into_inner();
            validate::function_name(&r.function_name)?;
            validate::description(&r.description)?;
            let out = self
                .write(
                    &rid,
                    Command::PublishVersion {
                        name: r.function_name,
                        description: r.description,
                        expected_code_sha256: non_empty(&r.code_sha256),
                        expected_revision: non_empty(&r.revision_id),
                        now_ms: now_ms(),
                    },
                )
                .await?;
            outcome_config(out)
        })
        .await
    }

    async fn list_versions_by_function(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let call = self.authorize(
            request.metadata(),
            "/nubo.v1.Functions/ListVersionsByFunction",
        );
        self.run(call, async {
            let r = request.into_inner();
            validate::function_name(&r.function_name)?;
            self.read(r.stale_ok).await?;
            let all = self
                .node
                .with_registry(|reg| reg.list_versions(&r.function_name))?;
            let max = if r.max_items == 0 {
                usize::MAX
            } else {
                r.max_items as usize
            };
            let start = if r.marker.is_empty() {
                0
            } else {
                all.iter()
                    .position(|v| v.version == r.marker)
                    .map(|i| i + 1)
                    .ok_or_else(|| {
                        RegistryError::invalid(format!(
                            "marker {} is not a version of {}",
                            r.marker, r.function_name
                        ))
                    })?
            };
            let page: Vec<_> = all.iter().skip(start).take(max).collect();
            let next = if start + page.len() < all.len() {
                page.last().map(|v| v.version.clone()).unwrap_or_default()
            } else {
                String::new()
            };
            Ok(pb::ListVersionsResponse {
                versions: page.into_iter().map(config_to_pb).collect(),
                next_marker: next,
            })
        })
        .await
    }

    async fn create_alias(
        &self,
        request: Request<pb::CreateAliasRequest>,
    ) -> Result<Response<pb::Alias>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Functions/CreateAlias");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let r = request.into_inner();
            validate::function_name(&r.function_name)?;
            validate::alias_name(&r.name)?;
            validate::version_number(&r.function_version)?;
            validate::description(&r.description)?;
            let routing: BTreeMap<String, f64> = r.additional_version_weights.into_iter().collect();
            validate::routing_weights(&r.function_version, &routing)?;
            let f = r.function_name.clone();
            let out = self
                .write(
                    &rid,
                    Command::CreateAlias {
                        function: r.function_name,
                        alias: r.name,
                        function_version: r.function_version,
                        routing,
                        description: r.description,
                    },
                )
                .await?;
            outcome_alias(&f, out)
        })
        .await
    }

    async fn get_alias(
        &self,
        request: Request<pb::GetAliasRequest>,
    ) -> Result<Response<pb::Alias>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Functions/GetAlias");
        self.run(call, async {
            let r = request.into_inner();
            validate::function_name(&r.function_name)?;
            validate::alias_name(&r.name)?;
            self.read(false).await?;
            let a = self
                .node
                .with_registry(|reg| reg.alias(&r.function_name, &r.name))?;
            Ok(alias_to_pb(&r.function_name, &a))
        })
        .await
    }

    async fn update_alias(
        &self,
        request: Request<pb::UpdateAliasRequest>,
    ) -> Result<Response<pb::Alias>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Functions/UpdateAlias");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let r = request.into_inner();
            validate::function_name(&r.function_name)?;
            validate::alias_name(&r.name)?;
            if !r.function_version.is_empty() {
                validate::version_number(&r.function_version)?;
            }
            if let Some(d) = &r.description {
                validate::description(d)?;
            }
            let routing: Option<BTreeMap<String, f64>> = (r.update_routing
                || !r.additional_version_weights.is_empty())
            .then(|| r.additional_version_weights.into_iter().collect());
            if let Some(w) = &routing {
                // The primary may change in the same call; the state machine
                // re-checks against the final primary.
                let primary = if r.function_version.is_empty() {
                    ""
                } else {
                    r.function_version.as_str()
                };
                validate::routing_weights(primary, w)?;
            }
            let f = r.function_name.clone();
            let out = self
                .write(
                    &rid,
                    Command::UpdateAlias {
                        function: r.function_name,
                        alias: r.name,
                        function_version: non_empty(&r.function_version),
                        routing,
                        description: r.description,
                        expected_revision: non_empty(&r.revision_id),
                    },
                )
                .await?;
            outcome_alias(&f, out)
        })
        .await
    }

    async fn delete_alias(
        &self,
        request: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Functions/DeleteAlias");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let r = request.into_inner();
            validate::function_name(&r.function_name)?;
            validate::alias_name(&r.name)?;
            self.write(
                &rid,
                Command::DeleteAlias {
                    function: r.function_name,
                    alias: r.name,
                },
            )
            .await?;
            Ok(pb::DeleteAliasResponse {})
        })
        .await
    }

    async fn list_aliases(
        &self,
        request: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Functions/ListAliases");
        self.run(call, async {
            let r = request.into_inner();
            validate::function_name(&r.function_name)?;
            self.read(r.stale_ok).await?;
            let list = self
                .node
                .with_registry(|reg| reg.list_aliases(&r.function_name, &r.function_version))?;
            Ok(pb::ListAliasesResponse {
                aliases: list
                    .iter()
                    .map(|a| alias_to_pb(&r.function_name, a))
                    .collect(),
            })
        })
        .await
    }
}
