//! `nubo.v1.RaftInternal`: Raft RPCs, forwarded writes and read-index
//! requests between controllers (cluster secret).

use nubo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::Internal;
use crate::raft::node::{ForwardRequest, ReadIndexReply};

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
        self.authorize(request.metadata(), "/nubo.v1.RaftInternal/AppendEntries")?;
        let req = decode(request.into_inner())?;
        encode(&self.node.raft.append_entries(req).await)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.authorize(request.metadata(), "/nubo.v1.RaftInternal/Vote")?;
        let req = decode(request.into_inner())?;
        encode(&self.node.raft.vote(req).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.authorize(request.metadata(), "/nubo.v1.RaftInternal/InstallSnapshot")?;
        let req = decode(request.into_inner())?;
        encode(&self.node.raft.install_snapshot(req).await)
    }

    async fn forward(
        &self,
        request: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.authorize(request.metadata(), "/nubo.v1.RaftInternal/Forward")?;
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
        self.authorize(request.metadata(), "/nubo.v1.RaftInternal/ReadIndex")?;
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
