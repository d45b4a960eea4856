//! `nubo.v1.Cluster`: status and membership changes.

use nubo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::Api;
use crate::error::{ApiError, RegistryError};
use crate::raft::node::ForwardRequest;

impl Api {
    fn status(&self) -> pb::ClusterStatusResponse {
        let m = self.node.raft.metrics().borrow().clone();
        let stopped = crate::raft::node::stopped_why(&m);
        let membership = m.membership_config.membership().clone();
        let voters: Vec<u64> = membership.voter_ids().collect();
        // A stopped core's last metrics still name a leader: it knows none.
        let leader = if stopped.is_some() {
            0
        } else {
            m.current_leader.unwrap_or(0)
        };
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
                    match &stopped {
                        Some(why) => format!("stopped: {why}"),
                        None => "healthy".to_string(),
                    }
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
            state: match &stopped {
                Some(why) => format!("Stopped: {why}"),
                None => format!("{:?}", m.state),
            },
            workers: self.invoker.workers.status(),
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
        let call = self.authorize(request.metadata(), "/nubo.v1.Cluster/Status");
        self.run(call, async { Ok(self.status()) }).await
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Cluster/AddLearner");
        self.run(call, async {
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
        let call = self.authorize(request.metadata(), "/nubo.v1.Cluster/PromoteVoter");
        self.run(call, async {
            let id = request.into_inner().node_id;
            self.membership(ForwardRequest::Promote { id }).await
        })
        .await
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Cluster/RemoveNode");
        self.run(call, async {
            let id = request.into_inner().node_id;
            self.membership(ForwardRequest::Remove { id }).await
        })
        .await
    }
}
