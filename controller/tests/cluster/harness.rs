//! In-process controller clusters for tests: real nodes (RocksDB stores,
//! tonic Raft RPCs on loopback) behind a shared fault-injecting network.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nubo_controller::config::ControllerConfig;
use nubo_controller::error::ApiError;
use nubo_controller::raft::network::Faults;
use nubo_controller::raft::node::ControllerNode;
use nubo_controller::registry::model::{Command, FunctionConfig, Outcome};
use nubo_controller::server::{self, Running};
use nubo_proto::v1 as pb;
use nubo_test_support::poll_async;
use nubo_worker::core::Worker;
use nubo_worker::sandbox::fake::FakeFactory;

pub const SECRET: &str = "test-cluster-secret-0123456789";

/// Picks free loopback ports (bind :0, read, release).
pub use nubo_test_support::free_ports;

/// How often the waits below look at the nodes' Raft metrics.
const POLL: Duration = Duration::from_millis(20);

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub faults: Arc<Faults>,
    pub members: BTreeMap<u64, String>,
    pub nodes: BTreeMap<u64, Option<Running>>,
    pub snapshot_logs: u64,
    pub fsync: bool,
    /// Nodes started with `join` (not in the initial members).
    pub joiners: BTreeMap<u64, String>,
    /// (term, leader) pairs seen by any node, for the one-leader-per-term check.
    pub leaders_seen: Arc<std::sync::Mutex<BTreeMap<u64, std::collections::BTreeSet<u64>>>>,
}

impl TestCluster {
    pub fn config(&self, id: u64) -> ControllerConfig {
        let joiner = self.joiners.get(&id);
        let addr = joiner.unwrap_or_else(|| &self.members[&id]).clone();
        let mut c = ControllerConfig {
            id,
            listen: addr.clone(),
            advertise: addr,
            peers: if joiner.is_some() {
                BTreeMap::new()
            } else {
                self.members.clone()
            },
            join: joiner.is_some(),
            data_dir: self.data_dir(id),
            cluster_secret: SECRET.into(),
            // Off for speed unless a test asks (`start_fsync`).
            fsync: self.fsync,
            heartbeat_ms: 50,
            election_timeout_ms: 250,
            snapshot_logs: self.snapshot_logs,
            request_timeout_ms: 6_000,
            blob_sync_ms: 200,
            blob_gc_grace_secs: 1,
            ..Default::default()
        };
        c.validate().unwrap();
        c
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// Starts `n` nodes (ids 1..=n) and waits for a leader.
    pub async fn start(n: u64) -> TestCluster {
        Self::start_with(n, 10_000).await
    }

    /// Like `start`, with fsync on every log append.
    pub async fn start_fsync(n: u64) -> TestCluster {
        Self::start_opts(n, 10_000, true).await
    }

    pub async fn start_with(n: u64, snapshot_logs: u64) -> TestCluster {
        Self::start_opts(n, snapshot_logs, false).await
    }

    pub async fn start_opts(n: u64, snapshot_logs: u64, fsync: bool) -> TestCluster {
        let ports = free_ports(n as usize);
        let members: BTreeMap<u64, String> = (1..=n)
            .map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1])))
            .collect();
        let mut c = TestCluster {
            dir: tempfile::tempdir().unwrap(),
            faults: Faults::new(),
            members,
            nodes: BTreeMap::new(),
            snapshot_logs,
            fsync,
            joiners: BTreeMap::new(),
            leaders_seen: Default::default(),
        };
        for id in 1..=n {
            c.restart(id).await;
        }
        c.wait_leader(Duration::from_secs(10)).await;
        c
    }

    /// Starts (or restarts from its data dir) node `id`.
    pub async fn restart(&mut self, id: u64) {
        // A node killed a moment ago may still hold its port or its
        // RocksDB lock while its last tasks wind down: retry briefly.
        let mut tries = 0;
        let running = loop {
            match server::start(self.config(id), self.faults.clone()).await {
                Ok(r) => break r,
                Err(e) if tries < 100 => {
                    eprintln!("restart of node {id} failed ({e}); retrying");
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("restarting node {id}: {e}"),
            }
        };
        // Record every (term, leader) this node ever reports.
        let mut rx = running.node.raft.metrics();
        let seen = self.leaders_seen.clone();
        tokio::spawn(async move {
            loop {
                {
                    let m = rx.borrow().clone();
                    if let Some(l) = m.current_leader {
                        seen.lock()
                            .unwrap()
                            .entry(m.current_term)
                            .or_default()
                            .insert(l);
                    }
                }
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
        self.nodes.insert(id, Some(running));
    }

    /// Starts node `id` empty, waiting to be added; returns its address.
    pub async fn add_joiner(&mut self, id: u64) -> String {
        let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
        self.joiners.insert(id, addr.clone());
        self.restart(id).await;
        addr
    }

    /// Stops node `id` (like a crash: nothing more is sent; its disk stays).
    pub async fn kill(&mut self, id: u64) {
        if let Some(Some(r)) = self.nodes.insert(id, None) {
            r.shutdown().await;
        }
    }

    pub fn node(&self, id: u64) -> Arc<ControllerNode> {
        self.nodes[&id]
            .as_ref()
            .expect("node is running")
            .node
            .clone()
    }

    /// Node `id`'s sync-invoke state (its view of the workers).
    pub fn invoker(&self, id: u64) -> Arc<nubo_controller::invoke::Invoker> {
        self.nodes[&id]
            .as_ref()
            .expect("node is running")
            .invoker
            .clone()
    }

    pub fn is_up(&self, id: u64) -> bool {
        matches!(self.nodes.get(&id), Some(Some(_)))
    }

    pub fn up_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, r)| r.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn all_ids(&self) -> Vec<u64> {
        self.members
            .keys()
            .chain(self.joiners.keys())
            .copied()
            .collect()
    }

    /// Waits until some running node is leader as seen by itself.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        poll_async("a leader", timeout, POLL, || {
            self.up_ids().into_iter().find(|&id| {
                let m = self.node(id).raft.metrics().borrow().clone();
                m.current_leader == Some(id) && m.state == openraft::ServerState::Leader
            })
        })
        .await
    }

    /// Waits until a leader other than `not` is elected among `among`.
    pub async fn wait_new_leader(&self, not: u64, among: &[u64], timeout: Duration) -> u64 {
        let what = format!("a new leader (not {not}) among {among:?}");
        poll_async(&what, timeout, POLL, || {
            among.iter().copied().find(|&id| {
                self.is_up(id) && {
                    let m = self.node(id).raft.metrics().borrow().clone();
                    m.current_leader == Some(id) && id != not
                }
            })
        })
        .await
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) {
        for id in self.up_ids() {
            self.node(id)
                .raft
                .wait(Some(timeout))
                .applied_index_at_least(Some(index), "test")
                .await
                .unwrap_or_else(|e| panic!("node {id} did not apply {index}: {e}"));
        }
    }

    /// Asserts that no term had two different leaders.
    pub fn assert_one_leader_per_term(&self) {
        for (term, leaders) in self.leaders_seen.lock().unwrap().iter() {
            assert!(
                leaders.len() <= 1,
                "term {term} had leaders {leaders:?}: two leaders in one term"
            );
        }
    }

    pub async fn shutdown(mut self) {
        for id in self.all_ids() {
            self.kill(id).await;
        }
    }
}

/// A tiny valid python code package.
pub fn code(tag: &str) -> (String, Vec<u8>) {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let o: zip::write::SimpleFileOptions = Default::default();
        z.start_file("app.py", o).unwrap();
        writeln!(z, "def handler(event, context):\n    return {tag:?}").unwrap();
        z.finish().unwrap();
    }
    let data = buf.into_inner();
    use sha2::Digest;
    (hex::encode(sha2::Sha256::digest(&data)), data)
}

pub fn create_cmd(name: &str, memory: u32) -> Command {
    let (sha, data) = code(name);
    let _ = data;
    let mut config = FunctionConfig::defaults(sha.clone(), data.len() as u64);
    config.runtime = "python3.11".into();
    config.handler = "app.handler".into();
    config.memory_mb = memory;
    Command::CreateFunction {
        name: name.into(),
        config,
        // Callers that need the bytes on the nodes use `create_with_code`.
        code_stored: true,
        publish: false,
        now_ms: 1,
    }
}

/// Creates a function the way the API does: the code package is stored on
/// a majority first, then the command commits.
pub async fn create_with_code(
    node: &ControllerNode,
    name: &str,
    memory: u32,
) -> Result<Outcome, ApiError> {
    let (sha, data) = code(name);
    node.store_code(&sha, data).await?;
    node.write(create_cmd(name, memory)).await
}

// In-process workers for the cluster tests: nubo_worker's `Worker` over
// the fake sandbox (`FakeFactory::programmable`), served on loopback by
// `nubo_worker::server::serve` and registered with the controllers by its
// own heartbeats, as `nubo worker` does. Controllers are driven through
// their gRPC API with an admin token, the way a user's call goes.

/// The admin token of a `Fleet`'s cluster.
pub const FLEET_ADMIN: &str = "nubo_fleet_admin_token";

/// Starts `n` controllers like `TestCluster::start`, each with `tweak`
/// applied to its configuration (short async waits, a smaller dispatcher).
/// A later `TestCluster::restart` would start a node without the tweak.
pub async fn start_tweaked(n: u64, tweak: &dyn Fn(&mut ControllerConfig)) -> TestCluster {
    let ports = free_ports(n as usize);
    let members: BTreeMap<u64, String> = (1..=n)
        .map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1])))
        .collect();
    let mut c = TestCluster {
        dir: tempfile::tempdir().unwrap(),
        faults: Faults::new(),
        members,
        nodes: BTreeMap::new(),
        snapshot_logs: 10_000,
        fsync: false,
        joiners: BTreeMap::new(),
        leaders_seen: Default::default(),
    };
    for id in 1..=n {
        let mut cfg = c.config(id);
        tweak(&mut cfg);
        cfg.validate().unwrap();
        let running = server::start(cfg, c.faults.clone())
            .await
            .unwrap_or_else(|e| panic!("starting node {id}: {e}"));
        c.nodes.insert(id, Some(running));
    }
    c.wait_leader(Duration::from_secs(10)).await;
    c
}

/// A worker in this process whose sandboxes are fakes.
pub struct FakeWorker {
    pub id: String,
    pub zone: String,
    pub addr: std::net::SocketAddr,
    /// Shares its counters and run record with the worker's sandboxes.
    pub fake: FakeFactory,
    pub worker: Arc<Worker<FakeFactory>>,
    /// Where its function logs persist (kept across `start_in`).
    pub logs_dir: Arc<tempfile::TempDir>,
    running: Option<nubo_worker::server::Running>,
}

/// The fake workers' default capacity: room for every test's sandboxes.
fn default_pool() -> nubo_worker::pool::PoolConfig {
    nubo_worker::pool::PoolConfig {
        memory_mb: 8192,
        max_sandboxes: 64,
        keep_alive: Duration::from_secs(600),
    }
}

impl FakeWorker {
    /// Serves a fake worker on a free loopback port, heartbeating to
    /// `controllers` with the worker credential of `SECRET`.
    pub async fn start(id: &str, zone: &str, controllers: Vec<String>) -> FakeWorker {
        FakeWorker::start_with(id, zone, controllers, default_pool()).await
    }

    /// Like `start`, with the pool's capacity given.
    pub async fn start_with(
        id: &str,
        zone: &str,
        controllers: Vec<String>,
        pool: nubo_worker::pool::PoolConfig,
    ) -> FakeWorker {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        FakeWorker::start_opts(id, zone, controllers, pool, dir).await
    }

    /// Like `start`, its function logs in `logs_dir` (a restarted worker
    /// reloads what its predecessor wrote there).
    pub async fn start_in(
        id: &str,
        zone: &str,
        controllers: Vec<String>,
        logs_dir: Arc<tempfile::TempDir>,
    ) -> FakeWorker {
        FakeWorker::start_opts(id, zone, controllers, default_pool(), logs_dir).await
    }

    async fn start_opts(
        id: &str,
        zone: &str,
        controllers: Vec<String>,
        pool: nubo_worker::pool::PoolConfig,
        logs_dir: Arc<tempfile::TempDir>,
    ) -> FakeWorker {
        let fake = FakeFactory::programmable();
        let pool = nubo_worker::pool::Pool::new(fake.clone(), pool);
        let mut worker = Worker::new(pool);
        worker.logs = Arc::new(
            nubo_worker::logs::LogStore::open(
                logs_dir.path(),
                nubo_worker::core::LOG_LINES,
                nubo_worker::core::LOG_BYTES,
            )
            .unwrap(),
        );
        let worker = Arc::new(worker);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ident = nubo_worker::server::WorkerIdentity {
            id: id.into(),
            zone: zone.into(),
            advertise: addr.to_string(),
            controllers,
            worker_secret: nubo_proto::worker_secret(SECRET),
            heartbeat: Duration::from_millis(100),
        };
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let running =
            nubo_worker::server::serve(worker.clone(), ident, listener, None, incarnation)
                .await
                .unwrap_or_else(|e| panic!("serving worker {id}: {e}"));
        FakeWorker {
            id: id.into(),
            zone: zone.into(),
            addr,
            fake,
            worker,
            logs_dir,
            running: Some(running),
        }
    }

    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }

    /// Stops the worker (gracefully: calls in flight finish): its port
    /// closes and its heartbeats stop, so to the controllers it is gone as
    /// a dead one is; they notice by themselves.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// The worker's own gRPC API, called with the worker credential (as a
    /// controller calls it).
    pub fn client(&self) -> pb::worker_api_client::WorkerApiClient<tonic::transport::Channel> {
        let ch = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_lazy();
        pb::worker_api_client::WorkerApiClient::new(ch)
    }
}

/// The `CreateFunction` messages for a python function `name` (runtime
/// and handler set over `config`) with `code` in one piece.
pub fn create_messages(
    name: &str,
    config: pb::FunctionConfig,
    code: &[u8],
) -> Vec<pb::CreateFunctionChunk> {
    let header = pb::CreateFunctionHeader {
        function_name: name.into(),
        config: Some(pb::FunctionConfig {
            runtime: "python3.11".into(),
            handler: "app.handler".into(),
            ..config
        }),
        ..Default::default()
    };
    nubo_proto::create_function_messages(header, code, usize::MAX)
}

/// Starts one controller over real gRPC on a free loopback port (`cfg`'s
/// `listen` is replaced), with its bootstrap admin token in place, and
/// connects to it.
pub async fn serve_one(mut cfg: ControllerConfig) -> (Running, tonic::transport::Channel) {
    let port = free_ports(1)[0];
    cfg.listen = format!("127.0.0.1:{port}");
    cfg.validate().unwrap();
    let running = server::start(cfg, Faults::new()).await.unwrap();
    server::ensure_admin_token(&running.node).await.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (running, channel)
}

/// Adds `authorization: Bearer <token>` to a request.
pub fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Controllers plus fake workers, driven through the controllers' API.
pub struct Fleet {
    pub cluster: TestCluster,
    pub workers: Vec<FakeWorker>,
}

impl Fleet {
    /// `controllers` nodes (with `tweak` on their configuration) and one
    /// fake worker per zone (ids `w-<zone>`), registered and live on every
    /// controller.
    pub async fn start(
        controllers: u64,
        zones: &[&str],
        tweak: &dyn Fn(&mut ControllerConfig),
    ) -> Fleet {
        let cluster = start_tweaked(controllers, &|c: &mut ControllerConfig| {
            c.bootstrap_token = Some(FLEET_ADMIN.into());
            tweak(c);
        })
        .await;
        server::ensure_admin_token(&cluster.node(1)).await.unwrap();
        let addrs: Vec<String> = cluster.members.values().cloned().collect();
        let mut workers = Vec::new();
        for z in zones {
            workers.push(FakeWorker::start(&format!("w-{z}"), z, addrs.clone()).await);
        }
        let fleet = Fleet { cluster, workers };
        fleet.wait_workers_live(Duration::from_secs(10)).await;
        fleet
    }

    /// Waits until every running controller sees every running worker live.
    pub async fn wait_workers_live(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let want: Vec<&str> = self
                .workers
                .iter()
                .filter(|w| w.is_up())
                .map(|w| w.id.as_str())
                .collect();
            let all = self.cluster.up_ids().into_iter().all(|id| {
                let live: Vec<String> = self
                    .cluster
                    .invoker(id)
                    .workers
                    .live_clients()
                    .into_iter()
                    .map(|(w, _)| w)
                    .collect();
                want.iter().all(|w| live.iter().any(|l| l == w))
            });
            if all {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "workers {want:?} not live on every controller within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn channel(&self, node: u64) -> tonic::transport::Channel {
        let addr = self
            .cluster
            .members
            .get(&node)
            .unwrap_or_else(|| panic!("no controller {node}"));
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    }

    pub fn functions(
        &self,
        node: u64,
    ) -> pb::functions_client::FunctionsClient<tonic::transport::Channel> {
        pb::functions_client::FunctionsClient::new(self.channel(node))
    }

    pub fn invocations(
        &self,
        node: u64,
    ) -> pb::invocations_client::InvocationsClient<tonic::transport::Channel> {
        pb::invocations_client::InvocationsClient::new(self.channel(node))
    }

    pub fn cluster_api(
        &self,
        node: u64,
    ) -> pb::cluster_client::ClusterClient<tonic::transport::Channel> {
        pb::cluster_client::ClusterClient::new(self.channel(node))
    }

    /// Creates a function through node `node`'s API (a small python
    /// package; the fake sandboxes do not read it).
    pub async fn create_function(&self, node: u64, name: &str, config: pb::FunctionConfig) {
        let (_, data) = code(name);
        let msgs = create_messages(name, config, &data);
        self.functions(node)
            .create_function(bearer(tokio_stream::iter(msgs), FLEET_ADMIN))
            .await
            .unwrap_or_else(|s| panic!("creating {name}: {s:?}"));
        // Every controller places calls on its own registry: wait until
        // each has applied the create.
        self.wait_all_applied().await;
    }

    /// Waits until every running controller has applied what the leader
    /// has applied now.
    async fn wait_all_applied(&self) {
        let index = self
            .cluster
            .node(self.cluster.wait_leader(Duration::from_secs(10)).await)
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        self.cluster
            .wait_applied(index, Duration::from_secs(10))
            .await;
    }

    /// Changes a function's configuration through node `node`'s API and
    /// waits until every running controller applied it.
    pub async fn update_config(&self, node: u64, name: &str, config: pb::FunctionConfig) {
        self.functions(node)
            .update_function_configuration(bearer(
                pb::UpdateFunctionConfigurationRequest {
                    function_name: name.into(),
                    config: Some(config),
                    revision_id: String::new(),
                },
                FLEET_ADMIN,
            ))
            .await
            .unwrap_or_else(|s| panic!("updating {name}: {s:?}"));
        self.wait_all_applied().await;
    }

    /// Invokes `function` through node `node`'s API.
    pub async fn invoke(
        &self,
        node: u64,
        function: &str,
        payload: &str,
        kind: pb::InvocationType,
    ) -> Result<pb::InvokeResponse, tonic::Status> {
        self.invocations(node)
            .invoke(bearer(
                pb::InvokeRequest {
                    function_name: function.into(),
                    qualifier: String::new(),
                    payload: payload.as_bytes().to_vec(),
                    invocation_type: kind as i32,
                    log_type: 0,
                    idempotency_key: String::new(),
                    ordering_key: String::new(),
                },
                FLEET_ADMIN,
            ))
            .await
            .map(|r| r.into_inner())
    }

    pub async fn dead_letters(&self, node: u64, function: &str) -> Vec<pb::DeadLetterRecord> {
        self.invocations(node)
            .list_dead_letters(bearer(
                pb::DeadLettersRequest {
                    function_name: function.into(),
                    stale_ok: false,
                },
                FLEET_ADMIN,
            ))
            .await
            .unwrap_or_else(|s| panic!("dead letters of {function}: {s:?}"))
            .into_inner()
            .records
    }

    pub async fn async_status(&self, node: u64, function: &str) -> pb::AsyncStatusResponse {
        self.invocations(node)
            .async_status(bearer(
                pb::DeadLettersRequest {
                    function_name: function.into(),
                    stale_ok: false,
                },
                FLEET_ADMIN,
            ))
            .await
            .unwrap_or_else(|s| panic!("async status of {function}: {s:?}"))
            .into_inner()
    }

    /// Workers as node `node` reports them (`nubo cluster status`).
    pub async fn worker_status(&self, node: u64) -> Vec<pb::WorkerStatus> {
        self.cluster_api(node)
            .status(bearer(pb::ClusterStatusRequest::default(), FLEET_ADMIN))
            .await
            .unwrap_or_else(|s| panic!("cluster status: {s:?}"))
            .into_inner()
            .workers
    }

    /// How many times `request_id` ran on each worker (in `workers` order).
    pub fn runs_of(&self, request_id: &str) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.fake.runs_of(request_id))
            .collect()
    }

    /// Stops every worker, then every controller.
    pub async fn shutdown(mut self) {
        for w in &mut self.workers {
            w.stop().await;
        }
        self.cluster.shutdown().await;
    }
}
