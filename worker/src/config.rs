//! The worker's settings and their defaults, defined once: `nubo worker`'s
//! and `nubo up`'s flags (src/roles.rs) take their default values from the
//! constants here.

use std::path::PathBuf;
use std::time::Duration;

/// Zone of a worker that does not name one.
pub const ZONE: &str = "default";
/// Address of the worker API.
pub const LISTEN: &str = "127.0.0.1:7800";
/// Data directory of `nubo worker` (code cache, worker id, function logs).
pub const DATA_DIR: &str = "/var/lib/nubo/worker";
/// Memory for sandboxes (the sum of their limits), MB.
pub const MEMORY_MB: u32 = 8192;
/// Memory for the sandboxes of `nubo up`'s embedded worker, MB: a laptop
/// shares it with everything else.
pub const UP_MEMORY_MB: u32 = 4096;
pub const MAX_SANDBOXES: u32 = 512;
/// Idle sandboxes are destroyed after this long.
pub const KEEP_ALIVE_SECS: u64 = 600;
/// The OCI runtime: `crun` (Debian's) or `runc`.
pub const OCI_RUNTIME: &str = "crun";
/// Heartbeat period until a controller asks for another.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// The sandbox user and group (`nobody`).
pub const SANDBOX_UID: u32 = 65534;
pub const SANDBOX_GID: u32 = 65534;
/// Function output kept per invocation, bytes (the newest; what is dropped
/// is said in the log). The worker's memory must not follow what a
/// function prints.
pub const LOG_BYTES_PER_INVOCATION: usize = 2 * 1024 * 1024;
/// Generic Python sandboxes kept ready per class.
pub const GENERIC_PER_CLASS: usize = 2;
/// A class of prewarmed generic sandboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GenericClass {
    pub memory_mb: u32,
    pub tmp_mb: u32,
    /// With a veth on the egress bridge.
    pub egress: bool,
}

/// Classes of generic sandboxes: Lambda's defaults, without and with
/// egress.
pub const GENERIC_CLASSES: &[GenericClass] = &[
    GenericClass {
        memory_mb: 128,
        tmp_mb: 512,
        egress: false,
    },
    GenericClass {
        memory_mb: 128,
        tmp_mb: 512,
        egress: true,
    },
];

/// New connections one egress sandbox may hold open at once (tracked by
/// the host's conntrack, which all sandboxes share).
pub const EGRESS_MAX_CONNECTIONS: u32 = 256;
/// Bandwidth of one egress sandbox, each direction, Mbit/s; 0: unlimited.
pub const EGRESS_RATE_MBIT: u32 = 200;

/// How sandboxes with `--network egress` reach the outside (see
/// `sandbox::container::egress`).
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// false: egress functions cannot run on this worker.
    pub enabled: bool,
    /// The sandboxes' subnet; None: a free /22 of 10.213.0.0/16.
    pub subnet: Option<crate::cidr::Cidr>,
    /// Ranges sandboxes may reach though refused by default (private
    /// ranges: a database on the LAN).
    pub allow: Vec<crate::cidr::Cidr>,
    /// Ranges refused besides the defaults.
    pub deny: Vec<crate::cidr::Cidr>,
    /// Resolvers for sandboxes; empty: the host's (not loopback ones).
    pub dns: Vec<std::net::Ipv4Addr>,
    pub max_connections: u32,
    pub rate_mbit: u32,
    pub firewall: crate::sandbox::container::egress::Choice,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            enabled: true,
            subnet: None,
            allow: Vec::new(),
            deny: Vec::new(),
            dns: Vec::new(),
            max_connections: EGRESS_MAX_CONNECTIONS,
            rate_mbit: EGRESS_RATE_MBIT,
            firewall: Default::default(),
        }
    }
}

/// Settings of `nubo worker` (and of the worker inside `nubo up`).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Stable id; default: generated once and kept in DATA_DIR/worker.id.
    pub id: Option<String>,
    pub zone: String,
    pub listen: String,
    pub advertise: Option<String>,
    pub controllers: Vec<String>,
    /// The worker credential (`nubo_proto::worker_secret` of the cluster
    /// secret): presented to controllers, required from them.
    pub worker_secret: String,
    /// Memory for sandboxes (sum of their limits), MB.
    pub memory_mb: u32,
    pub max_sandboxes: u32,
    pub keep_alive: Duration,
    pub data_dir: PathBuf,
    /// `crun` (default) or `runc`.
    pub oci_runtime: String,
    pub metrics_listen: Option<String>,
    pub heartbeat: Duration,
    pub uid: u32,
    pub gid: u32,
    /// Generic Python sandboxes kept ready per class, specialised when a
    /// cold call arrives. 0 disables prewarming.
    pub generic_per_class: usize,
    pub generic_classes: Vec<GenericClass>,
    /// Function output kept per invocation, bytes.
    pub log_bytes_per_invocation: usize,
    /// Freeze a sandbox's cgroup while it is idle, so background processes
    /// a handler leaves behind get no CPU between invocations.
    pub freeze_idle: bool,
    pub egress: EgressConfig,
}

impl WorkerConfig {
    /// The defaults above, with what has none: where data goes, the
    /// controllers and the credential.
    pub fn new(data_dir: PathBuf, controllers: Vec<String>, worker_secret: String) -> Self {
        WorkerConfig {
            id: None,
            zone: ZONE.into(),
            listen: LISTEN.into(),
            advertise: None,
            controllers,
            worker_secret,
            memory_mb: MEMORY_MB,
            max_sandboxes: MAX_SANDBOXES,
            keep_alive: Duration::from_secs(KEEP_ALIVE_SECS),
            data_dir,
            oci_runtime: OCI_RUNTIME.into(),
            metrics_listen: None,
            heartbeat: HEARTBEAT,
            uid: SANDBOX_UID,
            gid: SANDBOX_GID,
            generic_per_class: GENERIC_PER_CLASS,
            generic_classes: GENERIC_CLASSES.to_vec(),
            log_bytes_per_invocation: LOG_BYTES_PER_INVOCATION,
            freeze_idle: true,
            egress: EgressConfig::default(),
        }
    }
}
