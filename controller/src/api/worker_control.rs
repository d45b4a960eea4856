//! `nubo.v1.WorkerControl`: what workers call (heartbeats, code) and what
//! controllers forward to the leader (invokes under reserved concurrency).

use nubo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::status::to_status;
use crate::api::{Internal, CODE_CHUNK};

type FetchCodeStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::CodeChunk, Status>> + Send>>;

/// The service workers call: heartbeats, code, and forwarded invokes.
#[tonic::async_trait]
impl pb::worker_control_server::WorkerControl for Internal {
    async fn heartbeat(
        &self,
        request: Request<pb::WorkerHeartbeat>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        self.authorize(request.metadata(), "/nubo.v1.WorkerControl/Heartbeat")?;
        self.invoker
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
        self.authorize(request.metadata(), "/nubo.v1.WorkerControl/FetchCode")?;
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
        self.authorize(request.metadata(), "/nubo.v1.WorkerControl/ForwardInvoke")?;
        super::invoke(
            &self.invoker,
            &self.dispatcher,
            request.into_inner(),
            true,
            None,
        )
        .await
        .map(Response::new)
        .map_err(to_status)
    }
}
