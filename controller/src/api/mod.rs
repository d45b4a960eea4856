//! The gRPC layer: authenticates, converts prost messages to domain types,
//! validates, and turns each request into a write or a read on the node.
//! `to_status` is the one place errors become `tonic::Status`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use nubo_proto::v1 as pb;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::registry::codezip;
use crate::error::{ApiError, RegistryError};
use crate::registry::model::{
    Alias, Command, ConfigPatch, ConfigView, FunctionConfig, Outcome, Scope, Token,
};
use crate::raft::node::{ControllerNode, ForwardRequest, ReadIndexReply};
use crate::registry::validate;

const CODE_CHUNK: usize = 1024 * 1024;

/// Converts an error to a gRPC status. UNAVAILABLE carries the leader's
/// address (when known) in the `x-nubo-leader` metadata and the message.
pub fn to_status(e: ApiError) -> Status {
    match e {
        ApiError::Registry(r) => match r {
            RegistryError::NotFound(m) => Status::not_found(m),
            RegistryError::AlreadyExists(m) => Status::already_exists(m),
            RegistryError::InvalidArgument(m) => Status::invalid_argument(m),
            RegistryError::FailedPrecondition(m) => Status::failed_precondition(m),
        },
        ApiError::Unavailable { message, leader } => match leader {
            Some(addr) => {
                let mut s = Status::unavailable(format!("{message} (leader: http://{addr})"));
                if let Ok(v) = format!("http://{addr}").parse() {
                    s.metadata_mut().insert(nubo_proto::headers::LEADER, v);
                }
                s
            }
            None => Status::unavailable(message),
        },
        ApiError::Unauthenticated(m) => Status::unauthenticated(m),
        ApiError::PermissionDenied(m) => Status::permission_denied(m),
        ApiError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
        ApiError::Throttled(m) => Status::resource_exhausted(m),
        ApiError::WorkerFailed(m) => Status::aborted(m),
        ApiError::Internal(m) => Status::internal(m),
    }
}

fn request_id(md: &MetadataMap) -> Result<Option<String>, ApiError> {
    let Some(v) = md.get(nubo_proto::headers::REQUEST_ID) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("");
    if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(RegistryError::invalid(format!(
            "{} must be 1-128 printable ASCII characters",
            nubo_proto::headers::REQUEST_ID
        ))
        .into());
    }
    // Scoped per method by the caller's id space; prefix to keep ours apart.
    Ok(Some(format!("client:{s}")))
}

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

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 UTC time from unix milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

fn config_to_pb(v: &ConfigView) -> pb::FunctionConfiguration {
    let c = &v.config;
    pb::FunctionConfiguration {
        function_name: v.function_name.clone(),
        version: v.version.clone(),
        runtime: c.runtime.clone(),
        handler: c.handler.clone(),
        memory_mb: c.memory_mb,
        timeout_seconds: c.timeout_seconds,
        environment: c.environment.clone().into_iter().collect(),
        description: c.description.clone(),
        ephemeral_storage_mb: c.ephemeral_storage_mb,
        reserved_concurrency: c.reserved_concurrency,
        maximum_retry_attempts: c.async_config.maximum_retry_attempts,
        maximum_event_age_seconds: c.async_config.maximum_event_age_seconds,
        dead_letter_target: c.async_config.dead_letter_target.clone(),
        on_success_target: c.async_config.on_success_target.clone(),
        code_sha256: c.code_sha256.clone(),
        code_size: c.code_size,
        revision_id: v.revision_id.clone(),
        last_modified: rfc3339(v.last_modified_ms),
        egress: c.egress,
        min_warm: c.min_warm,
    }
}

fn alias_to_pb(function: &str, a: &Alias) -> pb::Alias {
    pb::Alias {
        function_name: function.to_string(),
        name: a.name.clone(),
        function_version: a.function_version.clone(),
        additional_version_weights: a.routing.clone().into_iter().collect(),
        description: a.description.clone(),
        revision_id: a.revision_id.clone(),
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The fields a request sets, as a patch.
fn patch_from(c: &pb::FunctionConfig) -> ConfigPatch {
    let a = c.async_config.clone().unwrap_or_default();
    ConfigPatch {
        runtime: non_empty(&c.runtime),
        handler: non_empty(&c.handler),
        memory_mb: c.memory_mb,
        timeout_seconds: c.timeout_seconds,
        environment: (!c.environment.is_empty() || c.replace_environment)
            .then(|| c.environment.clone().into_iter().collect()),
        description: c.description.clone(),
        ephemeral_storage_mb: c.ephemeral_storage_mb,
        reserved_concurrency: if c.clear_reserved_concurrency {
            Some(None)
        } else {
            c.reserved_concurrency.map(Some)
        },
        maximum_retry_attempts: a.maximum_retry_attempts,
        maximum_event_age_seconds: a.maximum_event_age_seconds,
        dead_letter_target: non_empty(&a.dead_letter_target),
        on_success_target: non_empty(&a.on_success_target),
        egress: c.set_egress.or(c.egress.then_some(true)),
        min_warm: c.min_warm,
    }
}

fn outcome_config(o: Outcome) -> Result<pb::FunctionConfiguration, ApiError> {
    match o {
        Outcome::Config(v) => Ok(config_to_pb(&v)),
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

fn outcome_alias(function: &str, o: Outcome) -> Result<pb::Alias, ApiError> {
    match o {
        Outcome::Alias(a) => Ok(alias_to_pb(function, &a)),
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

/// The API services of one controller.
#[derive(Clone)]
pub struct Api {
    pub node: Arc<ControllerNode>,
}

impl Api {
    pub fn new(node: Arc<ControllerNode>) -> Self {
        Api { node }
    }

    /// Checks the bearer token and its scope.
    fn authorize(&self, md: &MetadataMap, need: Scope, method: &str) -> Result<(), ApiError> {
        let raw = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "missing bearer token: pass --token or set NUBO_TOKEN (`nubo up` stores an admin token in ~/.config/nubo/token)".into(),
                )
            })?;
        let token = raw.strip_prefix("Bearer ").unwrap_or(raw).trim();
        let hash = hash_token(token);
        let scope = self
            .node
            .with_registry(|r| r.token_by_hash(&hash).map(|t| t.scope))
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "unknown or revoked token: check --token / NUBO_TOKEN, or ask an admin for one (`nubo token create`)".into(),
                )
            })?;
        if !scope.allows(need) {
            return Err(ApiError::PermissionDenied(format!(
                "a token of scope `{}` cannot call {method}: it needs `{}` (ask an admin for one: `nubo token create --scope {}`)",
                scope.as_str(),
                need.as_str(),
                need.as_str()
            )));
        }
        Ok(())
    }

    /// Runs a handler body, recording metrics and converting errors.
    async fn run<T>(
        &self,
        method: &'static str,
        fut: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let res = fut.await.map_err(to_status);
        let code = match &res {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.node.metrics.observe(method, &code, start.elapsed());
        res.map(Response::new)
    }

    async fn write(&self, rid: &Option<String>, cmd: Command) -> Result<Outcome, ApiError> {
        self.node.write_with_id(cmd, rid.clone()).await
    }

    async fn read(&self, stale_ok: bool) -> Result<(), ApiError> {
        if stale_ok {
            Ok(())
        } else {
            self.node.linearizable_read().await
        }
    }

    /// Reads an upload stream: returns the header and the zip bytes. The
    /// size limit is enforced while receiving, not after.
    async fn receive_code<C: UploadChunk>(
        &self,
        mut stream: Streaming<C>,
        validate_header: impl Fn(&C::Header) -> Result<(), ApiError>,
    ) -> Result<(C::Header, Vec<u8>), ApiError> {
        let max = self.node.config.max_zipped_bytes;
        let mut header = None;
        let mut code = Vec::new();
        while let Some(msg) = stream.message().await.map_err(|s| {
            ApiError::Registry(RegistryError::invalid(format!(
                "upload stream broke: {}",
                s.message()
            )))
        })? {
            match msg.into_part() {
                UploadPart::Header(h) => {
                    if header.is_some() {
                        return Err(RegistryError::invalid(
                            "upload has two header messages: send the header once, first",
                        )
                        .into());
                    }
                    validate_header(&h)?;
                    header = Some(h);
                }
                UploadPart::Code(bytes) => {
                    if header.is_none() {
                        return Err(RegistryError::invalid(
                            "upload must start with the header message, then code chunks",
                        )
                        .into());
                    }
                    if code.len() as u64 + bytes.len() as u64 > max {
                        return Err(RegistryError::invalid(format!(
                            "code package is larger than the {} MB zipped limit: shrink it (leave out test data) or raise max_zipped_bytes",
                            max / (1024 * 1024)
                        ))
                        .into());
                    }
                    code.extend_from_slice(&bytes);
                }
                UploadPart::Empty => {}
            }
        }
        let header =
            header.ok_or_else(|| RegistryError::invalid("upload had no header message"))?;
        Ok((header, code))
    }

    /// Writes a command that references a code package. When the registry
    /// already references the package, the command goes alone; otherwise
    /// (or when the last reference went meanwhile) the bytes are first
    /// stored on a majority of controllers.
    async fn write_with_code(
        &self,
        rid: &Option<String>,
        make: impl Fn(bool) -> Command,
        sha: &str,
        code: Vec<u8>,
    ) -> Result<Outcome, ApiError> {
        if self.node.with_registry(|r| r.has_blob(sha)) {
            // Each attempt has its own id: the first one's "not stored"
            // outcome must not stand for the second.
            let first = rid.as_ref().map(|r| format!("{r}/ref"));
            match self.node.write_with_id(make(false), first).await {
                Err(ApiError::Registry(RegistryError::FailedPrecondition(m)))
                    if m.contains("upload it again") => {}
                other => return other,
            }
        }
        self.node.store_code(sha, code).await?;
        self.node.write_with_id(make(true), rid.clone()).await
    }
}

pub enum UploadPart<H> {
    Header(H),
    Code(Vec<u8>),
    Empty,
}

/// A message of a streamed code upload: a header or a chunk of the zip.
pub trait UploadChunk: Send + 'static + prost::Message + Default {
    type Header;
    fn into_part(self) -> UploadPart<Self::Header>;
}

impl UploadChunk for pb::CreateFunctionChunk {
    type Header = pb::CreateFunctionHeader;
    fn into_part(self) -> UploadPart<Self::Header> {
        match self.part {
            Some(pb::create_function_chunk::Part::Header(h)) => UploadPart::Header(h),
            Some(pb::create_function_chunk::Part::Code(c)) => UploadPart::Code(c),
            None => UploadPart::Empty,
        }
    }
}

impl UploadChunk for pb::UpdateFunctionCodeChunk {
    type Header = pb::UpdateFunctionCodeHeader;
    fn into_part(self) -> UploadPart<Self::Header> {
        match self.part {
            Some(pb::update_function_code_chunk::Part::Header(h)) => UploadPart::Header(h),
            Some(pb::update_function_code_chunk::Part::Code(c)) => UploadPart::Code(c),
            None => UploadPart::Empty,
        }
    }
}

type CodeStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::CodeChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::functions_server::Functions for Api {
    async fn create_function(
        &self,
        request: Request<Streaming<pb::CreateFunctionChunk>>,
    ) -> Result<Response<pb::FunctionConfiguration>, Status> {
        self.run("CreateFunction", async {
            self.authorize(request.metadata(), Scope::Deploy, "CreateFunction")?;
            let rid = request_id(request.metadata())?;
            let limits = self.node.config.limits();
            let (h, code) = self
                .receive_code(
                    request.into_inner(),
                    |h: &pb::CreateFunctionHeader| {
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
                        if self.node.with_registry(|r| r.functions.contains_key(&h.function_name)) {
                            return Err(RegistryError::AlreadyExists(format!(
                                "function {} already exists: use `nubo function update-code` or `update-config`, or pick another name",
                                h.function_name
                            ))
                            .into());
                        }
                        Ok(())
                    },
                )
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
        self.run("GetFunction", async {
            self.authorize(request.metadata(), Scope::Invoke, "GetFunction")?;
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
        self.run("ListFunctions", async {
            self.authorize(request.metadata(), Scope::Invoke, "ListFunctions")?;
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
        self.run("UpdateFunctionCode", async {
            self.authorize(request.metadata(), Scope::Deploy, "UpdateFunctionCode")?;
            let rid = request_id(request.metadata())?;
            let limits = self.node.config.limits();
            let (h, code) = self
                .receive_code(request.into_inner(), |h: &pb::UpdateFunctionCodeHeader| {
                    validate::function_name(&h.function_name)?;
                    self.node
                        .with_registry(|r| r.function(&h.function_name).map(|_| ()))?;
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
        self.run("UpdateFunctionConfiguration", async {
            self.authorize(request.metadata(), Scope::Deploy, "UpdateFunctionConfiguration")?;
            let rid = request_id(request.metadata())?;
            let r = request.into_inner();
            validate::function_name(&r.function_name)?;
            let patch = patch_from(&r.config.unwrap_or_default());
            validate::config_patch(&patch, &self.node.config.limits())?;
            if patch == ConfigPatch::default() {
                return Err(RegistryError::invalid(
                    "the update sets no field: pass at least one of --memory, --timeout, --env, --handler, ...",
                )
                .into());
            }
            let out = self.write(&rid, Command::UpdateFunctionConfiguration {
                    name: r.function_name,
                    patch,
                    expected_revision: non_empty(&r.revision_id),
                    now_ms: now_ms(),
                })
                .await?;
            outcome_config(out)
        })
        .await
    }

    async fn delete_function(
        &self,
        request: Request<pb::DeleteFunctionRequest>,
    ) -> Result<Response<pb::DeleteFunctionResponse>, Status> {
        self.run("DeleteFunction", async {
            self.authorize(request.metadata(), Scope::Deploy, "DeleteFunction")?;
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
                            "cannot delete qualifier {}: give a version number, or no qualifier to delete the whole function (aliases: `nubo alias delete`)",
                            r.qualifier
                        ))
                        .into())
                    }
                }
            };
            self.write(&rid, cmd).await?;
            Ok(pb::DeleteFunctionResponse {})
        })
        .await
    }

    type GetCodeStream = CodeStream;

    async fn get_code(
        &self,
        request: Request<pb::GetCodeRequest>,
    ) -> Result<Response<Self::GetCodeStream>, Status> {
        self.run("GetCode", async {
            self.authorize(request.metadata(), Scope::Deploy, "GetCode")?;
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
        self.run("PublishVersion", async {
            self.authorize(request.metadata(), Scope::Deploy, "PublishVersion")?;
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
        self.run("ListVersionsByFunction", async {
            self.authorize(request.metadata(), Scope::Invoke, "ListVersionsByFunction")?;
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
        self.run("CreateAlias", async {
            self.authorize(request.metadata(), Scope::Deploy, "CreateAlias")?;
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
        self.run("GetAlias", async {
            self.authorize(request.metadata(), Scope::Invoke, "GetAlias")?;
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
        self.run("UpdateAlias", async {
            self.authorize(request.metadata(), Scope::Deploy, "UpdateAlias")?;
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
        self.run("DeleteAlias", async {
            self.authorize(request.metadata(), Scope::Deploy, "DeleteAlias")?;
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
        self.run("ListAliases", async {
            self.authorize(request.metadata(), Scope::Invoke, "ListAliases")?;
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

impl Api {
    fn status(&self) -> pb::ClusterStatusResponse {
        let m = self.node.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let leader = m.current_leader.unwrap_or(0);
        let last = m.last_log_index.unwrap_or(0);
        let is_leader = leader == self.node.id;
        let nodes = membership
            .nodes()
            .map(|(id, n)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).copied().flatten())
                    .map(|l| l.index);
                let health = if *id == self.node.id {
                    "healthy".to_string()
                } else if is_leader {
                    match self.node.peers.last_ok(*id) {
                        Some(age) if age.as_millis() < 2_000 => {
                            if last.saturating_sub(matched.unwrap_or(0)) > 1_000 {
                                "lagging".into()
                            } else {
                                "healthy".into()
                            }
                        }
                        _ => "unreachable".into(),
                    }
                } else if *id == leader {
                    "healthy (leader)".into()
                } else {
                    "unknown (ask the leader)".into()
                };
                pb::NodeStatus {
                    id: *id,
                    address: n.addr.clone(),
                    role: if voters.contains(id) {
                        "voter".into()
                    } else {
                        "learner".into()
                    },
                    is_leader: *id == leader,
                    health,
                    matched_index: matched.unwrap_or(if *id == self.node.id { last } else { 0 }),
                }
            })
            .collect();
        let leader_address = membership
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
        pb::ClusterStatusResponse {
            node_id: self.node.id,
            leader_id: leader,
            leader_address,
            term: m.current_term,
            last_log_index: last,
            last_applied_index: applied,
            commit_index: applied,
            nodes,
            state: format!("{:?}", m.state),
            workers: self.node.workers.status(),
        }
    }

    async fn membership(&self, req: ForwardRequest) -> Result<pb::ClusterStatusResponse, ApiError> {
        self.node.submit(req).await??;
        Ok(self.status())
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Api {
    async fn status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.run("ClusterStatus", async {
            self.authorize(request.metadata(), Scope::Deploy, "ClusterStatus")?;
            Ok(self.status())
        })
        .await
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.run("AddLearner", async {
            self.authorize(request.metadata(), Scope::Admin, "AddLearner")?;
            let r = request.into_inner();
            if r.node_id == 0 {
                return Err(RegistryError::invalid("node_id must be >= 1").into());
            }
            r.address.parse::<std::net::SocketAddr>().map_err(|e| {
                RegistryError::invalid(format!("address {:?} is not HOST:PORT: {e}", r.address))
            })?;
            self.membership(ForwardRequest::AddLearner {
                id: r.node_id,
                addr: r.address,
            })
            .await
        })
        .await
    }

    async fn promote_voter(
        &self,
        request: Request<pb::PromoteVoterRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.run("PromoteVoter", async {
            self.authorize(request.metadata(), Scope::Admin, "PromoteVoter")?;
            let id = request.into_inner().node_id;
            self.membership(ForwardRequest::Promote { id }).await
        })
        .await
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.run("RemoveNode", async {
            self.authorize(request.metadata(), Scope::Admin, "RemoveNode")?;
            let id = request.into_inner().node_id;
            self.membership(ForwardRequest::Remove { id }).await
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::tokens_server::Tokens for Api {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.run("CreateToken", async {
            self.authorize(request.metadata(), Scope::Admin, "CreateToken")?;
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
        self.run("ListTokens", async {
            self.authorize(request.metadata(), Scope::Admin, "ListTokens")?;
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
        self.run("RevokeToken", async {
            self.authorize(request.metadata(), Scope::Admin, "RevokeToken")?;
            let rid = request_id(request.metadata())?;
            let id = request.into_inner().id;
            self.write(&rid, Command::RevokeToken { id }).await?;
            Ok(pb::RevokeTokenResponse {})
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::blob_internal_server::BlobInternal for Internal {
    async fn push_blob(
        &self,
        request: Request<pb::BlobPayload>,
    ) -> Result<Response<pb::BlobAck>, Status> {
        self.check(request.metadata())?;
        let b = request.into_inner();
        // Content addressing is the integrity check.
        if hash_bytes(&b.data) != b.sha256 {
            return Err(Status::invalid_argument(
                "blob bytes do not match their sha256",
            ));
        }
        self.node
            .sm
            .put_blob(&b.sha256, &b.data)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::BlobAck {}))
    }

    async fn fetch_blob(
        &self,
        request: Request<pb::BlobRequest>,
    ) -> Result<Response<pb::BlobPayload>, Status> {
        self.check(request.metadata())?;
        let sha = request.into_inner().sha256;
        match self.node.sm.blob(&sha) {
            Ok(Some(data)) => Ok(Response::new(pb::BlobPayload { sha256: sha, data })),
            Ok(None) => Err(Status::not_found(format!("no blob {sha} here"))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}

fn hash_bytes(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Controller-to-controller service, authenticated by the cluster secret.
#[derive(Clone)]
pub struct Internal {
    pub node: Arc<ControllerNode>,
}

impl Internal {
    /// Workers' calls (heartbeats, code): the worker credential, or the
    /// cluster secret (a controller forwarding an invoke to the leader).
    fn check_worker(&self, md: &MetadataMap) -> Result<(), Status> {
        let got = nubo_proto::presented_secret(md);
        if nubo_proto::secret_matches(got, &self.node.worker_secret)
            || nubo_proto::secret_matches(got, &self.node.config.cluster_secret)
        {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "wrong worker secret: give the worker NUBO_WORKER_SECRET from `nubo cluster worker-secret` (computed from the controllers' cluster secret)",
            ))
        }
    }

    fn check(&self, md: &MetadataMap) -> Result<(), Status> {
        let got = nubo_proto::presented_secret(md);
        let want = self.node.config.cluster_secret.as_str();
        // Constant-time comparison: the secret guards cluster membership.
        if nubo_proto::secret_matches(got, want) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "wrong cluster secret: every controller must share the same cluster_secret",
            ))
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(p: pb::RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&p.data).map_err(|e| Status::invalid_argument(format!("decoding: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<pb::RaftPayload>, Status> {
    serde_json::to_vec(v)
        .map(|data| Response::new(pb::RaftPayload { data }))
        .map_err(|e| Status::internal(format!("encoding: {e}")))
}

#[tonic::async_trait]
impl pb::raft_internal_server::RaftInternal for Internal {
    async fn append_entries(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(request.metadata())?;
        let req = decode(request.into_inner())?;
        encode(&self.node.raft.append_entries(req).await)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(request.metadata())?;
        let req = decode(request.into_inner())?;
        encode(&self.node.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(request.metadata())?;
        let req = decode(request.into_inner())?;
        encode(&self.node.raft.install_snapshot(req).await)
    }

    async fn forward(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(request.metadata())?;
        let req: ForwardRequest = decode(request.into_inner())?;
        let limit = std::time::Duration::from_millis(self.node.config.request_timeout_ms);
        let reply = match tokio::time::timeout(limit, self.node.apply_on_leader(req)).await {
            Ok(r) => r,
            Err(_) => crate::raft::node::ForwardReply::Unavailable(
                "the leader could not reach a quorum in time".into(),
            ),
        };
        encode(&reply)
    }

    async fn read_index(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.check(request.metadata())?;
        let limit = std::time::Duration::from_millis(self.node.config.request_timeout_ms);
        let reply = match tokio::time::timeout(limit, self.node.read_index_local()).await {
            Ok(r) => r,
            Err(_) => ReadIndexReply::Unavailable(
                "the leader could not confirm its leadership in time".into(),
            ),
        };
        encode(&reply)
    }
}

#[tonic::async_trait]
impl pb::invocations_server::Invocations for Api {
    async fn invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        self.run("Invoke", async {
            self.authorize(request.metadata(), Scope::Invoke, "Invoke")?;
            // Not in a spawned task: measured, that costs a 40 ms stall on
            // ~15% of warm calls. A caller that goes away drops this future;
            // the worker finishes the call on its own and the placement
            // counter is released by a guard (see invoke.rs).
            let rid = request_id(request.metadata())?;
            self.node
                .invoke_with(request.into_inner(), false, rid)
                .await
        })
        .await
    }

    async fn get_logs(
        &self,
        request: Request<pb::GetLogsRequest>,
    ) -> Result<Response<pb::GetLogsResponse>, Status> {
        self.run("GetLogs", async {
            self.authorize(request.metadata(), Scope::Deploy, "GetLogs")?;
            self.node.logs(request.into_inner()).await
        })
        .await
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::DeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        self.run("ListDeadLetters", async {
            self.authorize(request.metadata(), Scope::Deploy, "ListDeadLetters")?;
            self.node.list_dead_letters(request.into_inner()).await
        })
        .await
    }
    async fn redrive_dead_letters(
        &self,
        request: Request<pb::RedriveDeadLettersRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        self.run("RedriveDeadLetters", async {
            self.authorize(request.metadata(), Scope::Deploy, "RedriveDeadLetters")?;
            self.node.redrive_dead_letters(request.into_inner()).await
        })
        .await
    }
    async fn purge_dead_letters(
        &self,
        request: Request<pb::DeadLettersRequest>,
    ) -> Result<Response<pb::CountResponse>, Status> {
        self.run("PurgeDeadLetters", async {
            self.authorize(request.metadata(), Scope::Deploy, "PurgeDeadLetters")?;
            self.node.purge_dead_letters(request.into_inner()).await
        })
        .await
    }
    async fn async_status(
        &self,
        request: Request<pb::DeadLettersRequest>,
    ) -> Result<Response<pb::AsyncStatusResponse>, Status> {
        self.run("AsyncStatus", async {
            self.authorize(request.metadata(), Scope::Deploy, "AsyncStatus")?;
            self.node.async_status(request.into_inner()).await
        })
        .await
    }
}

type FetchCodeStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::CodeChunk, Status>> + Send>>;

/// The service workers call: heartbeats, code, and forwarded invokes.
#[tonic::async_trait]
impl pb::worker_control_server::WorkerControl for Internal {
    async fn heartbeat(
        &self,
        request: Request<pb::WorkerHeartbeat>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        self.check_worker(request.metadata())?;
        self.node
            .workers
            .heartbeat(request.into_inner())
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(pb::HeartbeatReply {
            interval_ms: self.node.config.worker_heartbeat_ms as u32,
            leader_term: self.node.leader_term().unwrap_or(0),
        }))
    }

    type FetchCodeStream = FetchCodeStream;

    async fn fetch_code(
        &self,
        request: Request<pb::FetchCodeRequest>,
    ) -> Result<Response<FetchCodeStream>, Status> {
        self.check_worker(request.metadata())?;
        let sha = request.into_inner().code_sha256;
        let local = self
            .node
            .sm
            .blob(&sha)
            .map_err(|e| Status::internal(e.to_string()))?;
        let data = match local {
            Some(d) => d,
            None if self.node.with_registry(|r| r.has_blob(&sha)) => {
                self.node.fetch_code(&sha).await.map_err(to_status)?
            }
            None => {
                return Err(Status::not_found(format!(
                    "no code package with sha256 {sha}"
                )))
            }
        };
        let chunks: Vec<Result<pb::CodeChunk, Status>> = data
            .chunks(CODE_CHUNK)
            .map(|c| Ok(pb::CodeChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn forward_invoke(
        &self,
        request: Request<pb::InvokeRequest>,
    ) -> Result<Response<pb::InvokeResponse>, Status> {
        self.check_worker(request.metadata())?;
        self.node
            .invoke(request.into_inner(), true)
            .await
            .map(Response::new)
            .map_err(to_status)
    }
}
