//! Raft transport over tonic, with fault injection for tests.
//!
//! Every controller serves `RaftInternal` on its one listen address. The
//! client side sends openraft's messages JSON-encoded in `RaftPayload`,
//! authenticated with the cluster secret. `Faults` sits in front of every
//! outgoing RPC (Raft and forwarded writes alike) so tests can isolate,
//! partition, drop and delay without touching the code under test.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use nubo_proto::v1::raft_internal_client::RaftInternalClient;
use nubo_proto::v1::RaftPayload;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::raft::types::{NodeId, TypeConfig};

pub use nubo_proto::SECRET_HEADER;
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Injected network faults, shared by all nodes of an in-process test
/// cluster. Empty (the default) means a healthy network.
#[derive(Debug, Default)]
pub struct Faults {
    inner: RwLock<FaultState>,
}

#[derive(Debug, Default, Clone)]
struct FaultState {
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Probability in [0,1] that any one message is dropped.
    drop_rate: f64,
    /// Added latency before each message.
    delay: Duration,
    /// Nodes that are stopped (like SIGSTOP): messages to and from them
    /// hang, neither delivered nor failed, until the node resumes.
    paused: BTreeSet<NodeId>,
}

impl Faults {
    pub fn new() -> Arc<Self> {
        Arc::new(Faults::default())
    }

    /// Cuts `node` off from every node in `all`, both ways.
    pub fn isolate(&self, node: NodeId, all: &[NodeId]) {
        let mut s = self.inner.write().expect("lock");
        for &o in all {
            if o != node {
                s.cut.insert((node, o));
                s.cut.insert((o, node));
            }
        }
    }

    /// Splits the nodes into groups that cannot reach each other.
    pub fn partition(&self, groups: &[Vec<NodeId>]) {
        let mut s = self.inner.write().expect("lock");
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for &x in a {
                        for &y in b {
                            s.cut.insert((x, y));
                        }
                    }
                }
            }
        }
    }

    /// Freezes `node` as SIGSTOP would: every message to or from it waits
    /// (its peers' connections stay open and silent) until `resume` or
    /// `heal`. Unlike `isolate`, senders get no error to react to.
    pub fn pause(&self, node: NodeId) {
        self.inner.write().expect("lock").paused.insert(node);
    }

    pub fn resume(&self, node: NodeId) {
        self.inner.write().expect("lock").paused.remove(&node);
    }

    pub fn set_drop_rate(&self, p: f64) {
        self.inner.write().expect("lock").drop_rate = p;
    }

    pub fn set_delay(&self, d: Duration) {
        self.inner.write().expect("lock").delay = d;
    }

    /// Restores a healthy network.
    pub fn heal(&self) {
        *self.inner.write().expect("lock") = FaultState::default();
    }

    /// Waits while `from` or `to` is paused: the message is neither
    /// delivered nor failed until the node resumes.
    pub async fn held(&self, from: NodeId, to: NodeId) {
        while {
            let s = self.inner.read().expect("lock");
            s.paused.contains(&from) || s.paused.contains(&to)
        } {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Decides the fate of one message from `from` to `to`: `Err` if it is
    /// dropped, after waiting out any injected delay.
    pub async fn check(&self, from: NodeId, to: NodeId) -> Result<(), String> {
        // Read what this message needs; no copy of the fault table per message.
        let (delay, cut, drop_rate) = {
            let s = self.inner.read().expect("lock");
            (s.delay, s.cut.contains(&(from, to)), s.drop_rate)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if cut {
            return Err(format!("link {from}->{to} is cut (injected fault)"));
        }
        if drop_rate > 0.0 && rand::random::<f64>() < drop_rate {
            return Err(format!("message {from}->{to} dropped (injected fault)"));
        }
        Ok(())
    }
}

/// Connections to peers, shared by Raft replication and write forwarding.
#[derive(Clone)]
pub struct Peers {
    pub self_id: NodeId,
    secret: Arc<str>,
    pub faults: Arc<Faults>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    last_ok: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Peers {
    pub fn new(self_id: NodeId, secret: &str, faults: Arc<Faults>) -> Self {
        Peers {
            self_id,
            secret: Arc::from(secret),
            faults,
            channels: Arc::new(Mutex::new(HashMap::new())),
            last_ok: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// How long ago an RPC to `node` last succeeded.
    pub fn last_ok(&self, node: NodeId) -> Option<Duration> {
        self.last_ok
            .lock()
            .expect("lock")
            .get(&node)
            .map(|t| t.elapsed())
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().expect("lock");
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address {addr}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5));
        let ch = ep.connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Sends one internal RPC to `to` at `addr`. `Err` is a transport-level
    /// failure (unreachable, dropped, timed out).
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        to: NodeId,
        addr: &str,
        method: Method,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, String> {
        let data = serde_json::to_vec(req).map_err(|e| format!("encoding request: {e}"))?;
        // openraft's TTL suits heartbeats; an entry carrying a code package
        // of many MB needs time to cross the wire and be fsynced.
        let timeout = if data.len() > 1024 * 1024 {
            timeout.max(Duration::from_secs(30))
        } else {
            timeout
        };
        let mut client = RaftInternalClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(timeout);
        request.metadata_mut().insert(
            SECRET_HEADER,
            self.secret
                .parse()
                .map_err(|_| "cluster secret is not valid ASCII".to_string())?,
        );
        self.checked(self.self_id, to, timeout).await?;
        let fut = async {
            match method {
                Method::AppendEntries => client.append_entries(request).await,
                Method::Vote => client.vote(request).await,
                Method::InstallSnapshot => client.install_snapshot(request).await,
                Method::Forward => client.forward(request).await,
                Method::ReadIndex => client.read_index(request).await,
            }
        };
        let resp = tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| format!("rpc to node {to} timed out after {timeout:?}"))?
            .map_err(|s| {
                format!(
                    "rpc to node {to} ({addr}) failed: {}: {}",
                    s.code(),
                    s.message()
                )
            })?;
        // The reply crosses the same faulty network.
        self.checked(to, self.self_id, timeout).await?;
        self.last_ok
            .lock()
            .expect("lock")
            .insert(to, Instant::now());
        serde_json::from_slice(&resp.into_inner().data).map_err(|e| format!("decoding reply: {e}"))
    }
}

impl Peers {
    /// The injected faults' verdict on one message, within `timeout`: a
    /// message held by a paused node costs the sender its deadline, as a
    /// silent peer would.
    async fn checked(&self, from: NodeId, to: NodeId, timeout: Duration) -> Result<(), String> {
        tokio::time::timeout(timeout, self.faults.held(from, to))
            .await
            .map_err(|_| format!("message {from}->{to} held (paused node) past {timeout:?}"))?;
        self.faults.check(from, to).await
    }

    fn blob_client(
        &self,
        addr: &str,
    ) -> Result<nubo_proto::v1::blob_internal_client::BlobInternalClient<Channel>, String> {
        Ok(
            nubo_proto::v1::blob_internal_client::BlobInternalClient::new(self.channel(addr)?)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
    }

    fn secret_request<T>(&self, msg: T, timeout: Duration) -> Result<tonic::Request<T>, String> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(timeout);
        r.metadata_mut().insert(
            SECRET_HEADER,
            self.secret
                .parse()
                .map_err(|_| "cluster secret is not valid ASCII".to_string())?,
        );
        Ok(r)
    }

    /// Stores a code blob on peer `to`; Ok once it is durable there.
    pub async fn push_blob(
        &self,
        to: NodeId,
        addr: &str,
        sha256: &str,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), String> {
        self.checked(self.self_id, to, timeout).await?;
        let req = self.secret_request(
            nubo_proto::v1::BlobPayload {
                sha256: sha256.to_string(),
                data,
            },
            timeout,
        )?;
        tokio::time::timeout(timeout, self.blob_client(addr)?.push_blob(req))
            .await
            .map_err(|_| format!("pushing code to node {to} timed out after {timeout:?}"))?
            .map_err(|s| format!("pushing code to node {to} ({addr}): {}", s.message()))?;
        self.checked(to, self.self_id, timeout).await?;
        Ok(())
    }

    /// Reads a code blob from peer `to`.
    pub async fn fetch_blob(
        &self,
        to: NodeId,
        addr: &str,
        sha256: &str,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        self.checked(self.self_id, to, timeout).await?;
        let req = self.secret_request(
            nubo_proto::v1::BlobRequest {
                sha256: sha256.to_string(),
            },
            timeout,
        )?;
        let resp = tokio::time::timeout(timeout, self.blob_client(addr)?.fetch_blob(req))
            .await
            .map_err(|_| format!("fetching code from node {to} timed out"))?
            .map_err(|s| format!("fetching code from node {to}: {}", s.message()))?;
        self.checked(to, self.self_id, timeout).await?;
        Ok(resp.into_inner().data)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
    ReadIndex,
}

/// openraft's network factory.
#[derive(Clone)]
pub struct Network {
    pub peers: Peers,
}

pub struct Connection {
    peers: Peers,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            peers: self.peers.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

fn unreachable<E: std::error::Error>(msg: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(msg)))
}

impl Connection {
    async fn send<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<Resp, RaftError<NodeId, E>> = self
            .peers
            .call(self.target, &self.addr, method, req, option.hard_ttl())
            .await
            .map_err(unreachable)?;
        reply.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(Method::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(Method::Vote, &rpc, &option).await
    }
}
