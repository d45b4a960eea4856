//! Controller configuration: defaults, then a TOML file, then `NUBO_*`
//! environment and flags (the binary maps both onto `Overrides`), validated
//! once by `ControllerConfig::load`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::raft::types::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// This node's Raft id, >= 1.
    pub id: NodeId,
    /// Address the gRPC server (API and Raft) binds.
    pub listen: String,
    /// Address peers and clients use to reach this node (defaults to `listen`).
    pub advertise: String,
    /// Initial members `id -> host:port`, for a new cluster. Empty: a single
    /// node cluster of itself, or (with `join`) a node added later.
    pub peers: BTreeMap<NodeId, String>,
    /// Start without initializing a cluster; wait to be added with
    /// `nubo cluster add`.
    pub join: bool,
    pub data_dir: PathBuf,
    /// Shared by all controllers; authenticates Raft and forwarded calls.
    pub cluster_secret: String,
    /// If set, the first start creates an admin token with this value
    /// instead of a random one.
    pub bootstrap_token: Option<String>,
    /// Prometheus `/metrics` listen address; empty disables it.
    pub metrics_listen: String,
    /// fsync every Raft log append (Raft's guarantees assume it).
    pub fsync: bool,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_logs: u64,
    /// How long a write or a linearizable read may wait for a quorum.
    pub request_timeout_ms: u64,
    /// Disk space (MB) on the data directory that writes other than
    /// deletes leave free: uploads and new entries are refused
    /// (RESOURCE_EXHAUSTED) before RocksDB runs out of space, and the
    /// reserve lets deletes through to free it.
    pub min_free_disk_mb: u64,
    /// How long one forwarded attempt waits for the leader before asking
    /// again (sooner when leadership moves): a paused leader must not hold
    /// a forwarded request for the whole request timeout.
    pub forward_attempt_ms: u64,
    pub max_zipped_bytes: u64,
    pub max_unzipped_bytes: u64,
    /// How often a controller looks for code packages it lacks or no longer needs.
    pub blob_sync_ms: u64,
    /// How long an unreferenced code package stays before it is deleted
    /// (covers uploads whose command is still on its way).
    pub blob_gc_grace_secs: u64,
    /// Largest synchronous invoke payload (Lambda: 6 MB).
    pub max_sync_payload_bytes: u64,
    /// Deepest nesting of arrays and objects in an invoke payload (sync
    /// and async): runtimes parse events recursively, and 3 M nested `[`
    /// crashed Python's. 128 by default (serde_json's own limit), at most
    /// 512 (well inside Python's recursion limit of 1000).
    pub max_payload_depth: u32,
    /// How often workers are asked to heartbeat.
    pub worker_heartbeat_ms: u64,
    /// A worker silent for this long is dead: nothing is placed on it.
    pub worker_dead_after_ms: u64,
    /// Largest asynchronous (Event) payload (Lambda: 256 KB).
    pub max_async_payload_bytes: u64,
    /// Wait before the first retry of a failed async event; the second
    /// waits twice as long (Lambda: 1 minute, then 2).
    pub async_base_wait_ms: u64,
    /// Async events the leader runs at once.
    pub dispatch_concurrency: usize,
    /// How long an async idempotency key keeps deduplicating.
    pub idempotency_window_ms: u64,
    /// Payload bytes of pending async events beyond which new events are
    /// refused (RESOURCE_EXHAUSTED): the queue lives in every controller's
    /// memory.
    pub max_async_queue_bytes: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            id: 1,
            listen: "127.0.0.1:7700".into(),
            advertise: String::new(),
            peers: BTreeMap::new(),
            join: false,
            data_dir: PathBuf::from("/var/lib/nubo"),
            cluster_secret: String::new(),
            bootstrap_token: None,
            metrics_listen: String::new(),
            fsync: true,
            // Failover takes about a lease (2 x election timeout) plus an
            // election timeout; AppendEntries must finish within one
            // heartbeat (openraft's rule).
            heartbeat_ms: 60,
            election_timeout_ms: 200,
            snapshot_logs: 10_000,
            request_timeout_ms: 8_000,
            forward_attempt_ms: 2_000,
            min_free_disk_mb: 256,
            max_sync_payload_bytes: 6 * 1024 * 1024,
            worker_heartbeat_ms: 250,
            worker_dead_after_ms: 1_000,
            max_async_payload_bytes: 256 * 1024,
            max_payload_depth: 128,
            async_base_wait_ms: 60_000,
            idempotency_window_ms: 3_600_000,
            max_async_queue_bytes: 512 << 20,
            dispatch_concurrency: 64,
            max_zipped_bytes: 50 * 1024 * 1024,
            max_unzipped_bytes: 250 * 1024 * 1024,
            blob_sync_ms: 5_000,
            blob_gc_grace_secs: 600,
        }
    }
}

/// Values from the environment and flags; `Some` wins over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub id: Option<NodeId>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub peers: Option<String>,
    pub join: Option<bool>,
    pub data_dir: Option<PathBuf>,
    pub cluster_secret: Option<String>,
    pub bootstrap_token: Option<String>,
    pub metrics_listen: Option<String>,
    pub fsync: Option<bool>,
    pub async_base_wait_ms: Option<u64>,
    pub idempotency_window_ms: Option<u64>,
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').ok_or_else(|| {
            ConfigError::Invalid(format!(
                "peer {part:?} must look like ID=HOST:PORT, e.g. 1=10.0.0.1:7700"
            ))
        })?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("peer id {id:?} is not a number")))?;
        out.insert(id, addr.trim().to_string());
    }
    Ok(out)
}

impl ControllerConfig {
    pub fn load(file: Option<&Path>, o: Overrides) -> Result<Self, ConfigError> {
        let mut c = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: p.display().to_string(),
                    source,
                })?
            }
            None => ControllerConfig::default(),
        };
        if let Some(v) = o.id {
            c.id = v;
        }
        if let Some(v) = o.listen {
            c.listen = v;
        }
        if let Some(v) = o.advertise {
            c.advertise = v;
        }
        if let Some(v) = o.peers {
            c.peers = parse_peers(&v)?;
        }
        if let Some(v) = o.join {
            c.join = v;
        }
        if let Some(v) = o.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = o.cluster_secret {
            c.cluster_secret = v;
        }
        if let Some(v) = o.bootstrap_token {
            c.bootstrap_token = Some(v);
        }
        if let Some(v) = o.metrics_listen {
            c.metrics_listen = v;
        }
        if let Some(v) = o.fsync {
            c.fsync = v;
        }
        if let Some(v) = o.async_base_wait_ms {
            c.async_base_wait_ms = v;
        }
        if let Some(v) = o.idempotency_window_ms {
            c.idempotency_window_ms = v;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the whole configuration once, with messages that say which
    /// setting to fix.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.max_async_queue_bytes < self.max_async_payload_bytes {
            return Err(ConfigError::Invalid(format!(
                "max_async_queue_bytes {} is below max_async_payload_bytes {}: the queue could not hold one event",
                self.max_async_queue_bytes, self.max_async_payload_bytes
            )));
        }
        if !(1024..=self.max_sync_payload_bytes.max(1024)).contains(&self.max_async_payload_bytes) {
            return Err(ConfigError::Invalid(format!(
                "max_async_payload_bytes {} is out of range: use 1024 up to max_sync_payload_bytes ({})",
                self.max_async_payload_bytes, self.max_sync_payload_bytes
            )));
        }
        if !(1..=512).contains(&self.max_payload_depth) {
            return Err(ConfigError::Invalid(format!(
                "max_payload_depth {} is out of range: use 1 to 512",
                self.max_payload_depth
            )));
        }
        if !(1_000..=7 * 86_400_000).contains(&self.idempotency_window_ms) {
            return Err(ConfigError::Invalid(format!(
                "idempotency window {} ms is out of range: use 1000 ms to 7 days (--idempotency-window-ms)",
                self.idempotency_window_ms
            )));
        }
        if self.id == 0 {
            return Err(ConfigError::Invalid("id must be >= 1 (--id)".into()));
        }
        self.listen.parse::<SocketAddr>().map_err(|e| {
            ConfigError::Invalid(format!(
                "listen address {:?} is not HOST:PORT with an IP host: {e}",
                self.listen
            ))
        })?;
        if self.advertise.is_empty() {
            self.advertise = self.listen.clone();
        }
        if !self.metrics_listen.is_empty() {
            self.metrics_listen.parse::<SocketAddr>().map_err(|e| {
                ConfigError::Invalid(format!(
                    "metrics_listen {:?} is not HOST:PORT: {e}",
                    self.metrics_listen
                ))
            })?;
        }
        if let Some(a) = self.peers.get(&self.id) {
            if *a != self.advertise {
                return Err(ConfigError::Invalid(format!(
                    "peers lists node {} at {a} but this node advertises {}: make them equal",
                    self.id, self.advertise
                )));
            }
        } else if !self.peers.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "peers must include this node (id {}); add {}={}",
                self.id, self.id, self.advertise
            )));
        }
        let multi = self.peers.len() > 1 || self.join;
        if multi && self.cluster_secret.len() < 16 {
            return Err(ConfigError::Invalid(
                "a multi-node cluster needs cluster_secret (NUBO_CLUSTER_SECRET) of at least 16 characters, the same on every controller".into(),
            ));
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms <= self.heartbeat_ms * 2 {
            return Err(ConfigError::Invalid(format!(
                "election_timeout_ms ({}) must exceed twice heartbeat_ms ({})",
                self.election_timeout_ms, self.heartbeat_ms
            )));
        }
        if self.worker_dead_after_ms < 2 * self.worker_heartbeat_ms {
            return Err(ConfigError::Invalid(
                "worker_dead_after_ms must be at least twice worker_heartbeat_ms".into(),
            ));
        }
        if self.forward_attempt_ms < 50 {
            return Err(ConfigError::Invalid(format!(
                "forward_attempt_ms {} is too short: use 50 ms or more",
                self.forward_attempt_ms
            )));
        }
        if self.snapshot_logs < 10 {
            return Err(ConfigError::Invalid("snapshot_logs must be >= 10".into()));
        }
        Ok(())
    }

    pub fn limits(&self) -> crate::registry::validate::Limits {
        crate::registry::validate::Limits {
            max_zipped_bytes: self.max_zipped_bytes,
            max_unzipped_bytes: self.max_unzipped_bytes,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "id = 2\nlisten = \"127.0.0.1:9000\"\nfsync = false\n").unwrap();
        let c = ControllerConfig::load(
            Some(&f),
            Overrides {
                listen: Some("127.0.0.1:9001".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.listen, "127.0.0.1:9001");
        assert_eq!(c.advertise, "127.0.0.1:9001");
        assert!(!c.fsync);
    }

    #[test]
    fn rejects_bad_settings_with_a_message_naming_them() {
        let e = ControllerConfig::load(
            None,
            Overrides {
                peers: Some("1=127.0.0.1:7700,2=127.0.0.1:7701".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("cluster_secret"), "{e}");
        let e = parse_peers("1:127.0.0.1").unwrap_err();
        assert!(e.to_string().contains("ID=HOST:PORT"), "{e}");
        let e = ControllerConfig::load(
            None,
            Overrides {
                id: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("id must be"), "{e}");
        let e = ControllerConfig::load(
            None,
            Overrides {
                idempotency_window_ms: Some(5),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("idempotency window 5 ms"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "max_async_payload_bytes = 10\n").unwrap();
        let e = ControllerConfig::load(Some(&f), Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("max_async_payload_bytes 10"), "{e}");
        std::fs::write(&f, "max_async_queue_bytes = 1000\n").unwrap();
        let e = ControllerConfig::load(Some(&f), Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("max_async_queue_bytes 1000"), "{e}");
        std::fs::write(&f, "max_async_payload_bytes = 1048576\n").unwrap();
        let c = ControllerConfig::load(Some(&f), Overrides::default()).unwrap();
        assert_eq!(c.max_async_payload_bytes, 1 << 20, "configurable");
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "idd = 2\n").unwrap();
        let e = ControllerConfig::load(Some(&f), Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("idd"), "{e}");
    }
}
