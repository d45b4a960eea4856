//! One controller: the Raft node, its store, and the two things every API
//! call needs from it — a durable write (forwarded to the leader when this
//! node is not it) and a linearizable read (read index, also on followers).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use crate::config::ControllerConfig;
use crate::error::{ApiError, RegistryError};
use crate::metrics::Metrics;
use crate::registry::model::{Command, Outcome};
use crate::raft::network::{Faults, Method, Network, Peers};
use crate::registry::state::Registry;
use crate::raft::store::{open_db, Durability, LogStore, StateMachineStore};
use crate::raft::types::{NodeId, Raft};

/// Requests a follower hands to the leader.
// Short-lived messages: boxing the big variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRequest {
    Write(Command),
    AddLearner {
        id: NodeId,
        addr: String,
    },
    Promote {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
    /// A read only the leader can answer: the async attempts its
    /// dispatcher is running for a function.
    AsyncInFlight {
        function: String,
    },
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardReply {
    Applied(Result<Outcome, RegistryError>),
    /// The receiver is not the leader (any more); maybe it knows who is.
    NotLeader(Option<(NodeId, String)>),
    Unavailable(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ReadIndexReply {
    Index(u64),
    NotLeader(Option<(NodeId, String)>),
    Unavailable(String),
}

pub struct ControllerNode {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub sm: StateMachineStore,
    pub peers: Peers,
    pub config: ControllerConfig,
    pub metrics: Arc<Metrics>,
    /// Workers as seen by this controller (heartbeats; not replicated).
    pub workers: Arc<crate::invoke::placement::WorkerRegistry>,
    pub invoke_state: Arc<crate::invoke::InvokeState>,
    /// Wakes the async dispatcher (an event was accepted or finished).
    pub dispatch_wake: tokio::sync::Notify,
    /// What workers present, and what this node presents to workers
    /// (derived from the cluster secret, see `nubo_proto::worker_secret`).
    pub worker_secret: String,
    /// Attempts this node's dispatcher is running: request id -> function.
    pub async_in_flight: std::sync::Mutex<std::collections::HashMap<String, String>>,
    db: Arc<rocksdb::DB>,
    batcher: tokio::sync::mpsc::UnboundedSender<Queued>,
}

impl ControllerNode {
    /// Opens the store under `config.data_dir` and starts the Raft node.
    /// Does not initialize the cluster; see `bootstrap`.
    pub async fn start(
        config: ControllerConfig,
        faults: Arc<Faults>,
    ) -> Result<Arc<Self>, ApiError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            ApiError::Internal(format!(
                "creating data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let db = open_db(&config.data_dir.join("raft"))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let durability = Durability { sync: config.fsync };
        let log = LogStore::new(db.clone(), durability);
        let sm = StateMachineStore::new(db.clone(), durability)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let raft_config = openraft::Config {
            cluster_name: "nubo".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms,
            election_timeout_max: config.election_timeout_ms * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
            max_in_snapshot_log_to_keep: 1000,
            // Snapshot chunks are JSON-encoded byte arrays: keep them small
            // and give each the time a loaded follower needs.
            snapshot_max_chunk_size: 1024 * 1024,
            install_snapshot_timeout: 10_000,
            purge_batch_size: 256,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ApiError::Internal(format!("raft config: {e}")))?;
        let peers = Peers::new(config.id, &config.cluster_secret, faults);
        let network = Network {
            peers: peers.clone(),
        };
        let raft = Raft::new(config.id, Arc::new(raft_config), network, log, sm.clone())
            .await
            .map_err(|e| ApiError::Internal(format!("starting raft: {e}")))?;
        let (batcher, queued) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run_batcher(raft.clone(), queued));
        Ok(Arc::new(ControllerNode {
            batcher,
            id: config.id,
            addr: config.advertise.clone(),
            raft,
            sm,
            peers,
            metrics: Arc::new(Metrics::default()),
            workers: Arc::new(crate::invoke::placement::WorkerRegistry::new(
                Duration::from_millis(config.worker_heartbeat_ms),
                Duration::from_millis(config.worker_dead_after_ms),
            )),
            invoke_state: Default::default(),
            dispatch_wake: tokio::sync::Notify::new(),
            worker_secret: nubo_proto::worker_secret(&config.cluster_secret),
            async_in_flight: Default::default(),
            config,
            db,
        }))
    }

    /// Initializes a new cluster with `members` if this node has never been
    /// part of one. Idempotent across restarts.
    pub async fn bootstrap(&self, members: &BTreeMap<NodeId, String>) -> Result<(), ApiError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, a)| (*id, BasicNode { addr: a.clone() }))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ApiError::Internal(format!("initializing the cluster: {e}"))),
        }
    }

    /// A read-only handle on the registry.
    pub fn registry(&self) -> std::sync::RwLockReadGuard<'_, crate::raft::store::SmState> {
        self.sm.state.read().expect("state lock")
    }

    pub fn with_registry<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        f(&self.registry().registry)
    }

    fn leader_hint(&self) -> Option<(NodeId, String)> {
        // Borrowed, not cloned: this runs on every write and read.
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())?;
        Some((leader, addr))
    }

    pub fn leader_addr(&self) -> Option<String> {
        self.leader_hint().map(|(_, a)| a)
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// Commits a command and returns its result. On a follower the command
    /// is forwarded to the leader. Retries while there is no leader, up to
    /// the request timeout; then UNAVAILABLE.
    pub async fn write(&self, cmd: Command) -> Result<Outcome, ApiError> {
        self.write_with_id(cmd, None).await
    }

    /// Like `write`, under a request id: the id makes retries (ours after a
    /// lost forward reply, or the client's after a lost API reply) apply
    /// the command once. Without a client id a fresh one is made, which
    /// still covers this node's own retries.
    pub async fn write_with_id(
        &self,
        cmd: Command,
        id: Option<String>,
    ) -> Result<Outcome, ApiError> {
        let id = id.unwrap_or_else(|| {
            use rand::RngCore;
            let mut b = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut b);
            hex::encode(b)
        });
        let cmd = Command::Idempotent {
            id,
            cmd: Box::new(cmd),
        };
        let r = self.submit(ForwardRequest::Write(cmd)).await?;
        Ok(r?)
    }

    /// Runs a request on the leader, forwarding when needed.
    pub async fn submit(
        &self,
        req: ForwardRequest,
    ) -> Result<Result<Outcome, RegistryError>, ApiError> {
        let start = Instant::now();
        let deadline = self.deadline();
        let mut last_err = String::from("no leader elected yet");
        loop {
            if self.raft.metrics().borrow().running_state.is_err() {
                return Err(ApiError::unavailable(
                    "this controller is shutting down: use another one",
                    None,
                ));
            }
            if start.elapsed() > deadline {
                return Err(ApiError::unavailable(
                    format!(
                        "no quorum: the write was not acknowledged within {deadline:?} ({last_err}); a majority of controllers must be up and connected, check `nubo cluster status`. If the write reached a leader it may still apply once a quorum returns: read before retrying"
                    ),
                    self.leader_addr(),
                ));
            }
            // Is it us?
            let reply = match self.leader_hint() {
                Some((leader, _)) if leader == self.id => {
                    // A leader cut off from its quorum never completes the
                    // write by itself: bound it.
                    let remaining = deadline.saturating_sub(start.elapsed());
                    match tokio::time::timeout(remaining, self.apply_on_leader(req.clone())).await {
                        Ok(r) => r,
                        Err(_) => ForwardReply::Unavailable(
                            "the leader could not reach a quorum in time".into(),
                        ),
                    }
                }
                Some((leader, addr)) => {
                    let remaining = deadline
                        .saturating_sub(start.elapsed())
                        .max(Duration::from_millis(50));
                    match self
                        .peers
                        .call::<ForwardRequest, ForwardReply>(
                            leader,
                            &addr,
                            Method::Forward,
                            &req,
                            remaining,
                        )
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => ForwardReply::Unavailable(e),
                    }
                }
                None => ForwardReply::NotLeader(None),
            };
            match reply {
                ForwardReply::Applied(r) => return Ok(r),
                ForwardReply::NotLeader(_) => {
                    last_err = "leader changed".into();
                }
                ForwardReply::Unavailable(e) => {
                    last_err = e;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Executes a request on this node as leader.
    pub async fn apply_on_leader(&self, req: ForwardRequest) -> ForwardReply {
        let res = match req {
            ForwardRequest::AsyncInFlight { function } => {
                if !self.is_leader() {
                    return ForwardReply::NotLeader(None);
                }
                let n = self
                    .async_in_flight
                    .lock()
                    .expect("lock poisoned")
                    .values()
                    .filter(|f| **f == function)
                    .count();
                return ForwardReply::Applied(Ok(Outcome::Count(n as u64)));
            }
            ForwardRequest::Write(cmd) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if self.batcher.send((cmd, tx)).is_err() {
                    return ForwardReply::Unavailable("this controller is shutting down".into());
                }
                return rx.await.unwrap_or_else(|_| {
                    ForwardReply::Unavailable("this controller is shutting down".into())
                });
            }
            ForwardRequest::AddLearner { id, addr } => self
                .raft
                .add_learner(id, BasicNode { addr }, true)
                .await
                .map(|_| Ok(Outcome::Done)),
            ForwardRequest::Promote { id } => self
                .raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map(|_| Ok(Outcome::Done)),
            ForwardRequest::Remove { id } => {
                let m = self.raft.metrics().borrow().membership_config.clone();
                let is_voter = m.membership().voter_ids().any(|v| v == id);
                let r = if is_voter {
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                } else {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                };
                r.map(|_| Ok(Outcome::Done))
            }
        };
        reply_from(res)
    }
}

type WriteResult =
    Result<Result<Outcome, RegistryError>, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>;

fn reply_from(res: WriteResult) -> ForwardReply {
    {
        match res {
            Ok(r) => ForwardReply::Applied(r),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                ForwardReply::NotLeader(f.leader_id.zip(f.leader_node.map(|n| n.addr)))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                ForwardReply::Applied(Err(RegistryError::FailedPrecondition(format!(
                    "membership change refused: {e}"
                ))))
            }
            Err(RaftError::Fatal(e)) => ForwardReply::Unavailable(format!("raft stopped: {e}")),
        }
    }
}

/// Takes the writes queued on the leader and proposes them as one entry
/// (`Command::Batch`), with up to `IN_FLIGHT` entries committing at once:
/// concurrent writes share an append and an fsync instead of queueing one
/// by one behind openraft's core, and a new batch gathers (and starts
/// replicating) while the previous ones wait for their quorum.
async fn run_batcher(raft: Raft, mut rx: tokio::sync::mpsc::UnboundedReceiver<Queued>) {
    const MAX_BATCH: usize = 256;
    const IN_FLIGHT: usize = 1;
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Waiting for a slot lets more writes join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit_batch(&raft, batch).await;
            drop(slot);
        });
    }
}

/// Commits one batch of queued writes and answers each.
async fn commit_batch(raft: &Raft, mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        let (cmd, tx) = batch.pop().expect("one");
        let r = raft.client_write(cmd).await.map(|r| r.data);
        // Committed on a quorum, not yet acknowledged to anyone.
        crate::failpoint::hit("after-commit").await;
        let _ = tx.send(reply_from(r));
        return;
    }
    let (cmds, txs): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
    let r = raft
        .client_write(Command::Batch(cmds))
        .await
        .map(|r| r.data);
    crate::failpoint::hit("after-commit").await;
    match r {
        Ok(Ok(Outcome::Batch(results))) if results.len() == txs.len() => {
            for (tx, res) in txs.into_iter().zip(results) {
                let _ = tx.send(ForwardReply::Applied(res));
            }
        }
        Ok(other) => {
            for tx in txs {
                let _ = tx.send(ForwardReply::Unavailable(format!(
                    "unexpected batch result {other:?}"
                )));
            }
        }
        Err(e) => {
            let reply = reply_from(Err(e));
            for tx in txs {
                let _ = tx.send(match &reply {
                    ForwardReply::NotLeader(l) => ForwardReply::NotLeader(l.clone()),
                    ForwardReply::Unavailable(m) => ForwardReply::Unavailable(m.clone()),
                    ForwardReply::Applied(r) => ForwardReply::Applied(r.clone()),
                });
            }
        }
    }
}

type Queued = (Command, tokio::sync::oneshot::Sender<ForwardReply>);

impl ControllerNode {
    /// Waits until this node's state reflects every write committed before
    /// the call began (read index; on a follower via the leader).
    pub async fn linearizable_read(&self) -> Result<(), ApiError> {
        let start = Instant::now();
        let deadline = self.deadline();
        let mut last_err = String::from("no leader elected yet");
        loop {
            if self.raft.metrics().borrow().running_state.is_err() {
                return Err(ApiError::unavailable(
                    "this controller is shutting down: use another one",
                    None,
                ));
            }
            if start.elapsed() > deadline {
                return Err(ApiError::unavailable(
                    format!("cannot confirm a current read within {deadline:?} ({last_err}); retry, or pass --stale-ok to list from this node's copy"),
                    self.leader_addr(),
                ));
            }
            let reply = match self.leader_hint() {
                Some((leader, _)) if leader == self.id => {
                    let remaining = deadline.saturating_sub(start.elapsed());
                    match tokio::time::timeout(remaining, self.read_index_local()).await {
                        Ok(r) => r,
                        Err(_) => ReadIndexReply::Unavailable(
                            "the leader could not confirm its leadership with a quorum in time"
                                .into(),
                        ),
                    }
                }
                Some((leader, addr)) => {
                    let remaining = deadline
                        .saturating_sub(start.elapsed())
                        .max(Duration::from_millis(50));
                    match self
                        .peers
                        .call::<(), ReadIndexReply>(
                            leader,
                            &addr,
                            Method::ReadIndex,
                            &(),
                            remaining,
                        )
                        .await
                    {
                        Ok(r) => r,
                        Err(e) => ReadIndexReply::Unavailable(e),
                    }
                }
                None => ReadIndexReply::NotLeader(None),
            };
            match reply {
                ReadIndexReply::Index(idx) => {
                    let remaining = deadline.saturating_sub(start.elapsed());
                    return self
                        .raft
                        .wait(Some(remaining))
                        .applied_index_at_least(Some(idx), "read index")
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            ApiError::unavailable(
                                format!("this node did not catch up to the read index {idx}: {e}"),
                                self.leader_addr(),
                            )
                        });
                }
                ReadIndexReply::NotLeader(_) => last_err = "leader changed".into(),
                ReadIndexReply::Unavailable(e) => last_err = e,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The leader's side of a read index request.
    pub async fn read_index_local(&self) -> ReadIndexReply {
        match self.raft.ensure_linearizable().await {
            Ok(log_id) => ReadIndexReply::Index(log_id.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                ReadIndexReply::NotLeader(f.leader_id.zip(f.leader_node.map(|n| n.addr)))
            }
            Err(RaftError::APIError(e)) => ReadIndexReply::Unavailable(e.to_string()),
            Err(RaftError::Fatal(e)) => ReadIndexReply::Unavailable(format!("raft stopped: {e}")),
        }
    }

    /// Every other member (voters and learners) with its address, and the
    /// ids of the voters.
    fn blob_targets(&self) -> (Vec<(NodeId, String)>, BTreeSet<NodeId>) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let others = membership
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        (others, membership.voter_ids().collect())
    }

    /// Stores a code package on this node and pushes it to every peer,
    /// returning once a majority of voters hold it durably. Only then may
    /// a command referencing it be committed: any majority that commits it
    /// overlaps one that has the bytes. Slower peers finish in the
    /// background; a node that missed it fetches it later.
    pub async fn store_code(&self, sha256: &str, data: Vec<u8>) -> Result<(), ApiError> {
        self.sm
            .put_blob(sha256, &data)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        // Right after a restart the membership is still being loaded from
        // the log; a majority cannot be counted before it is known.
        let start = Instant::now();
        let (others, voters) = loop {
            let (others, voters) = self.blob_targets();
            if !voters.is_empty() {
                break (others, voters);
            }
            if start.elapsed() > self.deadline() {
                return Err(ApiError::unavailable(
                    "this controller does not know the cluster membership yet: it is starting or has not joined; retry, or use another controller",
                    self.leader_addr(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let needed = voters.len() / 2 + 1;
        let mut acks = usize::from(voters.contains(&self.id));
        let timeout = Duration::from_millis(self.config.request_timeout_ms.max(30_000));
        // The pushes run on their own; dropping `rx` early (a majority is
        // reached) leaves the rest to finish in the background.
        let mut rx = self.spawn_pushes(others, sha256, data, timeout);
        let mut errors = Vec::new();
        while acks < needed {
            match rx.recv().await {
                Some((id, Ok(()))) if voters.contains(&id) => acks += 1,
                Some((_, Ok(()))) => {}
                Some((_, Err(e))) => errors.push(e),
                None => {
                    return Err(ApiError::unavailable(
                        format!(
                            "the code package reached {acks} of the {needed} controllers a majority needs ({}); check `nubo cluster status`",
                            errors.join("; ")
                        ),
                        self.leader_addr(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Pushes a blob to each of `targets` concurrently; each outcome is
    /// reported on the returned channel as it arrives.
    fn spawn_pushes(
        &self,
        targets: Vec<(NodeId, String)>,
        sha256: &str,
        data: Vec<u8>,
        timeout: Duration,
    ) -> tokio::sync::mpsc::Receiver<(NodeId, Result<(), String>)> {
        let (tx, rx) = tokio::sync::mpsc::channel(targets.len().max(1));
        let data = Arc::new(data);
        for (id, addr) in targets {
            let (peers, sha, data, tx) = (
                self.peers.clone(),
                sha256.to_string(),
                data.clone(),
                tx.clone(),
            );
            tokio::spawn(async move {
                let r = peers
                    .push_blob(id, &addr, &sha, (*data).clone(), timeout)
                    .await;
                let _ = tx.send((id, r)).await;
            });
        }
        rx
    }

    /// Fetches a referenced blob this node lacks from any peer that has it,
    /// verifies its sha256 and stores it.
    pub async fn fetch_code(&self, sha256: &str) -> Result<Vec<u8>, ApiError> {
        use sha2::Digest;
        let (others, _) = self.blob_targets();
        let mut errors = Vec::new();
        for (id, addr) in others {
            match self
                .peers
                .fetch_blob(id, &addr, sha256, Duration::from_secs(60))
                .await
            {
                Ok(data) if hex::encode(sha2::Sha256::digest(&data)) == sha256 => {
                    self.sm
                        .put_blob(sha256, &data)
                        .map_err(|e| ApiError::Internal(e.to_string()))?;
                    return Ok(data);
                }
                Ok(_) => errors.push(format!("node {id} sent bytes with a different sha256")),
                Err(e) => errors.push(e),
            }
        }
        Err(ApiError::unavailable(
            format!(
                "code package {sha256} is not on this controller and no peer could send it ({})",
                errors.join("; ")
            ),
            self.leader_addr(),
        ))
    }

    /// One pass of blob upkeep: fetch referenced blobs this node lacks
    /// (missed pushes, snapshot installs), and delete blobs no one has
    /// referenced for `grace` (failed uploads, deleted functions).
    /// `unreferenced` remembers since when each blob has been unreferenced.
    pub async fn blob_maintenance(
        &self,
        unreferenced: &mut std::collections::HashMap<String, Instant>,
        grace: Duration,
    ) {
        let referenced: BTreeSet<String> =
            self.with_registry(|r| r.blobs.keys().cloned().collect());
        let local: BTreeSet<String> = match self.sm.local_blobs() {
            Ok(l) => l.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing blobs");
                return;
            }
        };
        for sha in referenced.difference(&local) {
            if let Err(e) = self.fetch_code(sha).await {
                tracing::warn!(%sha, error = %e, "fetching a missing code package");
            }
        }
        unreferenced.retain(|sha, _| local.contains(sha) && !referenced.contains(sha));
        for sha in local.difference(&referenced) {
            let since = *unreferenced.entry(sha.clone()).or_insert_with(Instant::now);
            if since.elapsed() >= grace {
                if let Err(e) = self.sm.delete_blob(sha) {
                    tracing::warn!(%sha, error = %e, "deleting an unreferenced blob");
                }
                unreferenced.remove(sha);
            }
        }
    }

    /// Stops Raft and flushes the store.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "flushing rocksdb");
        }
    }
}
