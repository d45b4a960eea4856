//! Runs a controller: the Raft node, the gRPC server (API + Raft RPCs on
//! one port), `/metrics`, the first-start admin token, and a clean shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nubo_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{hash_token, new_token_id, new_token_secret, Api, Internal};
use crate::clock::now_ms;
use crate::config::ControllerConfig;
use crate::error::{ApiError, RegistryError};
use crate::events::dispatcher::Dispatcher;
use crate::invoke::Invoker;
use crate::raft::network::{Faults, MAX_MESSAGE};
use crate::raft::node::ControllerNode;
use crate::registry::model::{Command, Scope, Token};
use crate::tasks::Tasks;

/// A started controller.
pub struct Running {
    pub node: Arc<ControllerNode>,
    /// The sync path's state: the workers this controller sees.
    pub invoker: Arc<Invoker>,
    pub dispatcher: Arc<Dispatcher>,
    pub addr: std::net::SocketAddr,
    pub metrics_addr: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    tasks: Tasks,
}

/// Where the first-start admin token was stored, if this start created one.
#[derive(Debug, Clone)]
pub struct BootstrapInfo {
    pub token_file: Option<PathBuf>,
    pub token: Option<String>,
}

impl Running {
    /// Stops accepting calls, lets in-flight ones finish, stops Raft and
    /// flushes the store.
    pub async fn shutdown(self) {
        self.tasks.shutdown(Duration::from_secs(10)).await;
        self.node.shutdown().await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Resolves once the Raft core has quit on a fatal error (openraft
    /// stops it for good when the log or the state machine cannot be
    /// written, e.g. on a full disk), with the reason. The node then
    /// answers nothing that needs consensus, ever: the caller should shut
    /// down and exit non-zero, so that a supervisor restarts it.
    pub async fn raft_failed(&self) -> String {
        let mut m = self.node.raft.metrics();
        loop {
            if let Err(e) = &m.borrow_and_update().running_state {
                return e.to_string();
            }
            if m.changed().await.is_err() {
                return "the Raft core is gone".into();
            }
        }
    }
}

/// Starts a controller from its configuration. `faults` is the injected
/// network of in-process tests (empty in production).
pub async fn start(config: ControllerConfig, faults: Arc<Faults>) -> Result<Running, ApiError> {
    let listener = TcpListener::bind(&config.listen).await.map_err(|e| {
        ApiError::Internal(format!(
            "cannot listen on {}: {e} (is another nubo running? pick another address with --listen)",
            config.listen
        ))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let shutdown = CancellationToken::new();
    let mut tasks = Tasks::new(shutdown.clone());
    let node = ControllerNode::start(config.clone(), faults, &mut tasks).await?;
    let invoker = Arc::new(Invoker::new(node.clone()));
    let dispatcher = Arc::new(Dispatcher::new(node.clone(), invoker.clone()));
    let reads: std::sync::Weak<Dispatcher> = Arc::downgrade(&dispatcher);
    node.serve_leader_reads(reads);

    let api = Api {
        node: node.clone(),
        invoker: invoker.clone(),
        dispatcher: dispatcher.clone(),
    };
    let internal = Internal {
        node: node.clone(),
        invoker: invoker.clone(),
        dispatcher: dispatcher.clone(),
    };
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            pb::functions_server::FunctionsServer::new(api.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(pb::cluster_server::ClusterServer::new(api.clone()))
        .add_service(pb::tokens_server::TokensServer::new(api.clone()))
        .add_service(pb::triggers_server::TriggersServer::new(api.clone()))
        .add_service(
            pb::trigger_control_server::TriggerControlServer::new(internal.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            pb::invocations_server::InvocationsServer::new(api)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            pb::worker_control_server::WorkerControlServer::new(internal.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            pb::raft_internal_server::RaftInternalServer::new(internal.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            pb::blob_internal_server::BlobInternalServer::new(internal)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        );
    let stop = shutdown.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tasks.spawn("grpc-server", async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, stop.cancelled())
            .await
        {
            tracing::error!(error = %e, "grpc server stopped");
        }
    });

    // The async dispatcher (runs on the leader only).
    tasks.spawn("async-dispatcher", dispatcher.clone().run(shutdown.clone()));

    // Provisioned concurrency: the leader keeps min_warm sandboxes.
    {
        let invoker = invoker.clone();
        tasks.every("provisioned-min-warm", Duration::from_secs(1), move || {
            let invoker = invoker.clone();
            async move {
                if invoker.node.is_leader() {
                    invoker.ensure_min_warm().await;
                }
            }
        });
    }

    // Workers silent for ten minutes are forgotten (they re-register).
    {
        let workers = invoker.workers.clone();
        tasks.every("forget-dead-workers", Duration::from_secs(30), move || {
            workers.forget_dead(Duration::from_secs(600));
            async {}
        });
    }

    // Blob upkeep: fetch what this node lacks, collect what no one uses.
    {
        let node = node.clone();
        let stop = shutdown.clone();
        let every = Duration::from_millis(config.blob_sync_ms);
        let grace = Duration::from_secs(config.blob_gc_grace_secs);
        tasks.spawn("blob-maintenance", async move {
            let mut unreferenced = std::collections::HashMap::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                node.blob_maintenance(&mut unreferenced, grace).await;
            }
        });
    }

    let mut metrics_addr = None;
    if !config.metrics_listen.is_empty() {
        let l = TcpListener::bind(&config.metrics_listen)
            .await
            .map_err(|e| {
                ApiError::Internal(format!(
                    "cannot listen for metrics on {}: {e}",
                    config.metrics_listen
                ))
            })?;
        metrics_addr = l.local_addr().ok();
        let d = dispatcher.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let d = d.clone();
                async move {
                    let m = d.node.raft.metrics().borrow().clone();
                    let mut text = d.node.metrics.render(&m);
                    text.push_str(&d.async_gauges());
                    text
                }
            }),
        );
        let stop = shutdown.clone();
        tasks.spawn("metrics-server", async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
    }

    if !config.join {
        let members = if config.peers.is_empty() {
            [(config.id, config.advertise.clone())]
                .into_iter()
                .collect()
        } else {
            config.peers.clone()
        };
        // The lowest id initializes; the others wait for its first message.
        if members.keys().next() == Some(&config.id) {
            node.bootstrap(&members).await?;
        }
    }
    tracing::info!(id = config.id, %addr, "controller started");
    Ok(Running {
        node,
        invoker,
        dispatcher,
        addr,
        metrics_addr,
        shutdown,
        tasks,
    })
}

/// On a cluster's first start, creates the admin token (the configured one,
/// or a random one) and writes it to `<data_dir>/admin.token`. Only the
/// initializing node does this, once.
pub async fn ensure_admin_token(node: &Arc<ControllerNode>) -> Result<BootstrapInfo, ApiError> {
    let c = &node.config;
    let initializer =
        c.join.eq(&false) && (c.peers.is_empty() || c.peers.keys().next() == Some(&c.id));
    let file = c.data_dir.join("admin.token");
    if !initializer {
        return Ok(BootstrapInfo {
            token_file: None,
            token: None,
        });
    }
    if file.exists() {
        return Ok(BootstrapInfo {
            token_file: Some(file.clone()),
            token: std::fs::read_to_string(&file)
                .ok()
                .map(|s| s.trim().to_string()),
        });
    }
    node.linearizable_read().await?;
    let has_admin = node.with_registry(|r| r.tokens.values().any(|t| t.scope == Scope::Admin));
    let secret = c.bootstrap_token.clone().unwrap_or_else(new_token_secret);
    if !has_admin {
        let res = node
            .write(Command::CreateToken {
                token: Token {
                    id: new_token_id(),
                    name: "bootstrap admin".into(),
                    scope: Scope::Admin,
                    hash: hash_token(&secret),
                    created_at_ms: now_ms(),
                },
            })
            .await;
        match res {
            Ok(_) | Err(ApiError::Registry(RegistryError::AlreadyExists(_))) => {}
            Err(e) => return Err(e),
        }
    } else if c.bootstrap_token.is_none() {
        // An admin exists but its secret is not on this disk: nothing to write.
        return Ok(BootstrapInfo {
            token_file: None,
            token: None,
        });
    }
    write_secret_file(&file, &secret)?;
    Ok(BootstrapInfo {
        token_file: Some(file),
        token: Some(secret),
    })
}

/// Writes a secret readable by its owner only.
pub fn write_secret_file(path: &std::path::Path, secret: &str) -> Result<(), ApiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| ApiError::Internal(format!("creating {}: {e}", d.display())))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ApiError::Internal(format!("writing {}: {e}", path.display())))?;
    writeln!(f, "{secret}")
        .map_err(|e| ApiError::Internal(format!("writing {}: {e}", path.display())))
}
