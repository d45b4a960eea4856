//! nubo worker: runs functions in container sandboxes. See ARCHITECTURE.md.
//!
//! - [`sandbox`]: the sandbox traits, the Runtime API, and two
//!   implementations: [`sandbox::container`] (OCI containers via crun or
//!   runc, with the host, namespace, spec and seccomp pieces they need) and
//!   [`sandbox::fake`] (in-process, for tests).
//! - [`pool`]: warm reuse, admission, LRU eviction, keep-alive.
//! - [`core`]: one invocation with Lambda's log lines; [`server`]: the gRPC
//!   API, heartbeats, code fetching, metrics.

pub mod attempts;
pub mod code;
pub mod core;
pub mod logs;
pub mod metrics;
pub mod pool;
pub mod sandbox;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use sandbox::container::{self as linux, host};

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
    /// Generic Python sandboxes kept ready per (memory MB, /tmp MB) class,
    /// specialised when a cold call arrives. 0 disables prewarming.
    pub generic_per_class: usize,
    pub generic_classes: Vec<(u32, u32)>,
}

impl WorkerConfig {
    pub fn new(data_dir: PathBuf, controllers: Vec<String>, worker_secret: String) -> Self {
        WorkerConfig {
            id: None,
            zone: "default".into(),
            listen: "127.0.0.1:7800".into(),
            advertise: None,
            controllers,
            worker_secret,
            memory_mb: 8192,
            max_sandboxes: 512,
            keep_alive: Duration::from_secs(600),
            data_dir,
            oci_runtime: "crun".into(),
            metrics_listen: None,
            heartbeat: Duration::from_millis(250),
            uid: 65534,
            gid: 65534,
            generic_per_class: 2,
            generic_classes: vec![(128, 512)],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker preflight: {0}")]
    Preflight(#[from] host::PreflightError),
    #[error("worker setup: {0}")]
    Setup(String),
}

pub type LinuxWorker = core::Worker<Arc<linux::LinuxFactory>>;

/// Starts a worker with container sandboxes.
pub async fn start(cfg: WorkerConfig) -> Result<(server::Running, Arc<LinuxWorker>), WorkerError> {
    let info = host::preflight(&cfg.oci_runtime)?;
    let setup = |what: &str, e: &dyn std::fmt::Display| WorkerError::Setup(format!("{what}: {e}"));
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| setup("creating the data directory", &e))?;
    let id = match &cfg.id {
        Some(id) => id.clone(),
        None => {
            let f = cfg.data_dir.join("worker.id");
            match std::fs::read_to_string(&f) {
                Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
                _ => {
                    let id = format!("w-{:08x}", rand::random::<u32>());
                    std::fs::write(&f, &id).map_err(|e| setup("writing worker.id", &e))?;
                    id
                }
            }
        }
    };
    // Several workers may share a host (tests, `nubo up` next to a worker):
    // the data directory keeps their containers apart.
    let canon = std::fs::canonicalize(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(canon.to_string_lossy().as_bytes());
    let tag = hex::encode(&h.finalize()[..4]);
    let run_dir = PathBuf::from("/run/nubo").join(&tag);
    let source = server::ControllerCode::new(&cfg.controllers, &cfg.worker_secret)
        .map_err(|e| setup("controllers", &e))?;
    let code = Arc::new(
        code::CodeCache::new(cfg.data_dir.join("code"), Arc::new(source))
            .map_err(|e| setup("code cache", &e))?,
    );
    let factory = Arc::new(
        linux::LinuxFactory::new(
            linux::LinuxConfig {
                oci_runtime: info.runtime_path.clone(),
                run_dir,
                uid: cfg.uid,
                gid: cfg.gid,
                cgroup: info.cgroup,
                tag,
                region: "local".into(),
                stage_dir: cfg.data_dir.join("stage"),
                generic_classes: cfg.generic_classes.clone(),
                generic_per_class: cfg.generic_per_class,
            },
            code,
        )
        .map_err(|e| setup("sandbox host", &e))?,
    );
    factory.cleanup_leftovers().await;
    tokio::spawn(factory.clone().fill_generic());
    let pool = pool::Pool::new(
        factory.clone(),
        pool::PoolConfig {
            memory_mb: cfg.memory_mb,
            max_sandboxes: cfg.max_sandboxes,
            keep_alive: cfg.keep_alive,
        },
    );
    let mut worker = core::Worker::new(pool);
    // Function logs survive a restart of the worker.
    let logs_dir = cfg.data_dir.join("logs");
    worker.logs = Arc::new(
        logs::LogStore::open(&logs_dir, core::LOG_LINES, core::LOG_BYTES)
            .map_err(|e| setup("opening the function log directory", &e))?,
    );
    let worker = Arc::new(worker);
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| {
            setup(
                &format!("listening on {} (pick another with --listen)", cfg.listen),
                &e,
            )
        })?;
    let addr = listener.local_addr().map_err(|e| setup("address", &e))?;
    let metrics = match &cfg.metrics_listen {
        Some(m) if !m.is_empty() => Some(
            tokio::net::TcpListener::bind(m)
                .await
                .map_err(|e| setup(&format!("listening for metrics on {m}"), &e))?,
        ),
        _ => None,
    };
    let ident = server::WorkerIdentity {
        id,
        zone: cfg.zone.clone(),
        advertise: cfg.advertise.clone().unwrap_or_else(|| addr.to_string()),
        controllers: cfg.controllers.clone(),
        worker_secret: cfg.worker_secret.clone(),
        heartbeat: cfg.heartbeat,
    };
    let incarnation = logs::now_ms();
    let mut running = server::serve(worker.clone(), ident, listener, metrics, incarnation)
        .await
        .map_err(|e| setup("serving", &e))?;
    running.on_shutdown(Box::new(move || {
        Box::pin(async move {
            factory.drain_generic().await;
            factory.remove_run_dir();
        })
    }));
    Ok((running, worker))
}
