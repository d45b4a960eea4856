//! The gRPC layer: one file per service. Each handler authorizes through
//! the one METHOD -> access table (`scope.rs`), converts prost messages
//! (`convert.rs`), and turns the request into a write or a read on the
//! node, an invocation, or an event. `status::to_status` is the one place
//! errors become `tonic::Status`.

mod blob_internal;
mod cluster;
mod convert;
mod functions;
mod invocations;
mod raft_internal;
pub mod scope;
pub mod status;
pub mod tokens;
mod triggers;
mod worker_control;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use nubo_proto::v1 as pb;
use nubo_proto::Reason;
use tonic::metadata::MetadataMap;
use tonic::{Response, Status, Streaming};

use crate::error::{ApiError, RegistryError};
use crate::events::dispatcher::Dispatcher;
use crate::invoke::{Invoker, Prepared};
use crate::raft::node::ControllerNode;
use crate::registry::model::{Command, Outcome};

pub use status::to_status;
pub use tokens::{hash_token, new_token_id, new_token_secret};

const CODE_CHUNK: usize = 1024 * 1024;

pub(crate) fn request_id(md: &MetadataMap) -> Result<Option<String>, ApiError> {
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

/// The API services of one controller.
#[derive(Clone)]
pub struct Api {
    pub node: Arc<ControllerNode>,
    pub invoker: Arc<Invoker>,
    pub dispatcher: Arc<Dispatcher>,
}

/// Controller-to-controller and worker-to-controller services,
/// authenticated by the cluster secret or the worker credential.
#[derive(Clone)]
pub struct Internal {
    pub node: Arc<ControllerNode>,
    pub invoker: Arc<Invoker>,
    pub dispatcher: Arc<Dispatcher>,
}

/// Validates, resolves and runs one invocation: a DryRun answers, an
/// Event goes to the async queue, a RequestResponse call runs now. The
/// client's request id (`x-nubo-request-id`) makes a retried Event call
/// enqueue once.
pub(crate) async fn invoke(
    invoker: &Invoker,
    dispatcher: &Dispatcher,
    req: pb::InvokeRequest,
    forwarded: bool,
    client_rid: Option<String>,
) -> Result<pb::InvokeResponse, ApiError> {
    match invoker.prepare(&req)? {
        Prepared::DryRun(resp) => Ok(resp),
        Prepared::Event { view, qualifier } => {
            dispatcher
                .enqueue_event(&req, &view, &qualifier, client_rid)
                .await
        }
        Prepared::Sync(view) => invoker.call(req, view, forwarded).await,
    }
}

impl Api {
    /// Runs a handler body, recording metrics and converting errors.
    /// The body runs only when `call` (from `authorize`) allowed it.
    async fn run<T>(
        &self,
        call: scope::Call,
        fut: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let method = call.name;
        let res = match call.denied {
            Some(e) => Err(e),
            None => fut.await,
        }
        .map_err(to_status);
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
                    // Tests slow an upload down to interrupt it mid-stream.
                    crate::failpoint::hit("upload-chunk").await;
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
                Err(e) if e.reason() == Some(Reason::CodeNotStored) => {}
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
