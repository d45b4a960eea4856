//! One controller: the Raft node, its store, and the two things every API
//! call needs from it — a durable write (forwarded to the leader when this
//! node is not it) and a linearizable read (read index, also on followers).

use nubo_proto::Reason;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::ControllerConfig;
use crate::error::{ApiError, RegistryError};
use crate::metrics::Metrics;
use crate::raft::network::{Faults, Method, Network, Peers};
use crate::raft::store::{open_db, Durability, LogStore, StateMachineStore};
use crate::raft::types::{NodeId, Raft};
use crate::registry::model::{Command, Outcome};
use crate::registry::state::Registry;
use crate::tasks::Tasks;

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

/// What `leader_or_forward` needs of a leader's reply type.
trait LeaderReply: serde::de::DeserializeOwned {
    /// No node is known to lead.
    fn no_leader() -> Self;
    /// The leader could not be reached or could not answer.
    fn unavailable(why: String) -> Self;
}

impl LeaderReply for ForwardReply {
    fn no_leader() -> Self {
        ForwardReply::NotLeader(None)
    }
    fn unavailable(why: String) -> Self {
        ForwardReply::Unavailable(why)
    }
}

impl LeaderReply for ReadIndexReply {
    fn no_leader() -> Self {
        ReadIndexReply::NotLeader(None)
    }
    fn unavailable(why: String) -> Self {
        ReadIndexReply::Unavailable(why)
    }
}

/// One try at the leader: the answer, or why to try again.
enum Try<T> {
    Done(T),
    Retry(String),
}

/// Reads only the leader can answer, sent as a `ForwardRequest` and
/// served by a layer above consensus (the async dispatcher registers
/// itself with `serve_leader_reads`).
pub trait LeaderReads: Send + Sync {
    /// How many attempts of `function` this node's dispatcher is running.
    fn async_in_flight(&self, function: &str) -> u64;
}

/// Writes waiting for the batcher. Bounded: when it is full, writers wait
/// (backpressure); nothing is dropped.
const BATCH_QUEUE: usize = 4096;

pub struct ControllerNode {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub sm: StateMachineStore,
    pub peers: Peers,
    pub config: ControllerConfig,
    pub metrics: Arc<Metrics>,
    /// Weak: the dispatcher holds the node, and the node must drop (and
    /// release its RocksDB) once the controller is shut down.
    leader_reads: OnceLock<Weak<dyn LeaderReads>>,
    db: Arc<rocksdb::DB>,
    batcher: tokio::sync::mpsc::Sender<Queued>,
}

impl ControllerNode {
    /// Opens the store under `config.data_dir` and starts the Raft node;
    /// its write batcher runs in `tasks`. Does not initialize the cluster;
    /// see `bootstrap`.
    pub async fn start(
        config: ControllerConfig,
        faults: Arc<Faults>,
        tasks: &mut Tasks,
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
        let (batcher, queued) = tokio::sync::mpsc::channel(BATCH_QUEUE);
        let r = raft.clone();
        tasks.spawn_consensus("raft-batcher", move |stop| run_batcher(r, queued, stop));
        Ok(Arc::new(ControllerNode {
            batcher,
            id: config.id,
            addr: config.advertise.clone(),
            raft,
            sm,
            peers,
            metrics: Arc::new(Metrics::default()),
            leader_reads: OnceLock::new(),
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

    /// Registers what answers leader-only reads (once; later calls are
    /// ignored).
    pub fn serve_leader_reads(&self, reads: Weak<dyn LeaderReads>) {
        let _ = self.leader_reads.set(reads);
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

    pub fn is_leader(&self) -> bool {
        self.leader_term().is_some()
    }

    /// The Raft term while this node leads it (never once its core has
    /// stopped: the last metrics it published still name it leader).
    pub fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.current_leader == Some(self.id) && m.running_state.is_ok()).then_some(m.current_term)
    }

    /// Why this node's Raft core no longer runs, if it does not: shut down,
    /// or quit on a fatal error (a failed log or state machine write, such
    /// as a full disk). A stopped core never comes back in this process.
    pub fn stopped(&self) -> Option<String> {
        stopped_why(&self.raft.metrics().borrow())
    }

    pub(crate) fn deadline(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// Disk space writes other than deletes leave free, bytes.
    pub(crate) fn reserve(&self) -> u64 {
        self.config.min_free_disk_mb.saturating_mul(1024 * 1024)
    }

    /// Refuses a code package of `size` bytes this node's disk cannot take
    /// with the reserve kept. RocksDB writes it twice (its log, then its
    /// table) before the log file goes.
    pub fn ensure_code_room(&self, size: u64) -> Result<(), ApiError> {
        crate::raft::disk::ensure_room(
            &self.config.data_dir,
            "the code package",
            size.saturating_mul(2),
            self.reserve(),
        )
    }

    /// How long one forwarded attempt waits for the leader it went to.
    fn forward_attempt(&self) -> Duration {
        Duration::from_millis(self.config.forward_attempt_ms)
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
        if !crate::raft::disk::shrinks(&cmd) {
            // The reserve is for deletes: past it, only they go in.
            crate::raft::disk::ensure_room(&self.config.data_dir, "the write", 0, self.reserve())?;
        }
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
        self.leader_or_forward(
            Instant::now(),
            Method::Forward,
            &req,
            || self.apply_on_leader(req.clone()),
            "the leader could not reach a quorum in time",
            |reply| match reply {
                ForwardReply::Applied(r) => Try::Done(r),
                ForwardReply::NotLeader(_) => Try::Retry("leader changed".into()),
                ForwardReply::Unavailable(e) => Try::Retry(e),
            },
            |deadline, last_err| {
                ApiError::unavailable(
                    format!(
                        "no quorum: the write was not acknowledged within {deadline:?} ({last_err}); a majority of controllers must be up and connected. If the write reached a leader it may still apply once a quorum returns: read before retrying"
                    ),
                    self.leader_addr(),
                )
                .with_reason(Reason::NoQuorum)
            },
        )
        .await
    }

    /// The one road to the leader, for writes and read-index reads alike:
    /// run `local` when this node leads (bounded: a leader cut off from
    /// its quorum never completes by itself), else send `req` to the
    /// leader over `method`, one attempt at a time (each bounded by
    /// `forward_attempt_ms`, and given up as soon as this node sees
    /// another leader or none); retry while there is no leader or it
    /// changed, until the request timeout, then `timed_out(deadline, last
    /// error)`.
    #[allow(clippy::too_many_arguments)]
    async fn leader_or_forward<Req, Rep, T, Fut>(
        &self,
        start: Instant,
        method: Method,
        req: &Req,
        local: impl Fn() -> Fut,
        local_timeout: &'static str,
        settle: impl Fn(Rep) -> Try<T>,
        timed_out: impl Fn(Duration, &str) -> ApiError,
    ) -> Result<T, ApiError>
    where
        Req: Serialize,
        Rep: LeaderReply,
        Fut: std::future::Future<Output = Rep>,
    {
        let deadline = self.deadline();
        let mut last_err = String::from("no leader elected yet");
        loop {
            if let Some(why) = self.stopped() {
                return Err(ApiError::unavailable(
                    format!("this controller cannot serve: {why}; use another one"),
                    None,
                ));
            }
            if start.elapsed() > deadline {
                return Err(timed_out(deadline, &last_err));
            }
            // Is it us?
            let reply = match self.leader_hint() {
                Some((leader, _)) if leader == self.id => {
                    let remaining = deadline.saturating_sub(start.elapsed());
                    match tokio::time::timeout(remaining, local()).await {
                        Ok(r) => r,
                        Err(_) => Rep::unavailable(local_timeout.into()),
                    }
                }
                Some((leader, addr)) => {
                    // One attempt lasts until the leader answers, this
                    // node learns that leadership moved (an election
                    // after the leader went silent: follow the new one at
                    // once), or the attempt deadline passes (then ask
                    // again: the same request, so a write applies once).
                    let attempt = deadline
                        .saturating_sub(start.elapsed())
                        .min(self.forward_attempt())
                        .max(Duration::from_millis(50));
                    let mut metrics = self.raft.metrics();
                    let moved = async move {
                        let _ = metrics.wait_for(|m| m.current_leader != Some(leader)).await;
                    };
                    tokio::select! {
                        r = self.peers.call::<Req, Rep>(leader, &addr, method, req, attempt) => {
                            match r {
                                Ok(r) => r,
                                Err(e) => Rep::unavailable(e),
                            }
                        }
                        _ = moved => Rep::unavailable(format!(
                            "leadership moved away from node {leader} while it had the request"
                        )),
                    }
                }
                None => Rep::no_leader(),
            };
            match settle(reply) {
                Try::Done(t) => return Ok(t),
                Try::Retry(e) => last_err = e,
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
                    .leader_reads
                    .get()
                    .and_then(Weak::upgrade)
                    .map_or(0, |r| r.async_in_flight(&function));
                return ForwardReply::Applied(Ok(Outcome::Count(n)));
            }
            ForwardRequest::Write(cmd) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                // Waits while the batcher's queue is full.
                if self.batcher.send((cmd, tx)).await.is_err() {
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

/// Why the Raft core these metrics come from has stopped, if it has.
pub fn stopped_why(m: &openraft::RaftMetrics<NodeId, BasicNode>) -> Option<String> {
    match &m.running_state {
        Ok(()) => None,
        Err(openraft::error::Fatal::Stopped) => Some("it is shutting down".into()),
        Err(e) => Some(format!("its Raft core stopped on a fatal error ({e}) and the process is exiting to be restarted")),
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
                ForwardReply::Applied(Err(RegistryError::precondition(format!(
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
/// Stops at shutdown; queued writers then get "shutting down".
async fn run_batcher(
    raft: Raft,
    mut rx: tokio::sync::mpsc::Receiver<Queued>,
    stop: CancellationToken,
) {
    const MAX_BATCH: usize = 256;
    const IN_FLIGHT: usize = 1;
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            q = rx.recv() => match q {
                Some(q) => q,
                None => return,
            },
        };
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
        let idx = self
            .leader_or_forward(
                start,
                Method::ReadIndex,
                &(),
                || self.read_index_local(),
                "the leader could not confirm its leadership with a quorum in time",
                |reply| match reply {
                    ReadIndexReply::Index(idx) => Try::Done(idx),
                    ReadIndexReply::NotLeader(_) => Try::Retry("leader changed".into()),
                    ReadIndexReply::Unavailable(e) => Try::Retry(e),
                },
                |deadline, last_err| {
                    ApiError::unavailable(
                        format!("cannot confirm a current read within {deadline:?} ({last_err})"),
                        self.leader_addr(),
                    )
                    .with_reason(Reason::ReadUnconfirmed)
                },
            )
            .await?;
        let remaining = self.deadline().saturating_sub(start.elapsed());
        self.raft
            .wait(Some(remaining))
            .applied_index_at_least(Some(idx), "read index")
            .await
            .map(|_| ())
            .map_err(|e| {
                ApiError::unavailable(
                    format!("this node did not catch up to the read index {idx}: {e}"),
                    self.leader_addr(),
                )
            })
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
