//! Wiring of a worker with container sandboxes: host preflight, worker
//! id, code cache, the container factory and its generic pool, the sandbox
//! pool, function logs, then the server.

use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::WorkerConfig;
use crate::sandbox::container::{host, LinuxConfig, LinuxFactory};
use crate::tasks::Tasks;
use crate::{code, core, logs, pool, server};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("worker preflight: {0}")]
    Preflight(#[from] host::PreflightError),
    #[error("worker setup: {0}")]
    Setup(String),
}

pub type LinuxWorker = core::Worker<Arc<LinuxFactory>>;

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
    // The worker's long-lived tasks, stopped by its shutdown.
    let tasks = Arc::new(Tasks::default());
    let factory = Arc::new(
        LinuxFactory::new(
            LinuxConfig {
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
                log_bytes: cfg.log_bytes_per_invocation,
                freeze_idle: cfg.freeze_idle,
                egress: cfg.egress.clone(),
                controllers: cfg.controllers.clone(),
            },
            code,
            tasks.clone(),
        )
        .map_err(|e| setup("sandbox host", &e))?,
    );
    factory.cleanup_leftovers().await;
    tasks.spawn("generic-fill", factory.clone().fill_generic());
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
    let mut running =
        server::serve_with(worker.clone(), ident, listener, metrics, incarnation, tasks)
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
