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

pub const SECRET: &str = "test-cluster-secret-0123456789";

/// Picks free loopback ports (bind :0, read, release).
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

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
        let start = Instant::now();
        loop {
            for id in self.up_ids() {
                let m = self.node(id).raft.metrics().borrow().clone();
                if m.current_leader == Some(id) && m.state == openraft::ServerState::Leader {
                    return id;
                }
            }
            assert!(start.elapsed() < timeout, "no leader within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a leader other than `not` is elected among `among`.
    pub async fn wait_new_leader(&self, not: u64, among: &[u64], timeout: Duration) -> u64 {
        let start = Instant::now();
        loop {
            for &id in among {
                if !self.is_up(id) {
                    continue;
                }
                let m = self.node(id).raft.metrics().borrow().clone();
                if m.current_leader == Some(id) && id != not {
                    return id;
                }
            }
            assert!(
                start.elapsed() < timeout,
                "no new leader within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
