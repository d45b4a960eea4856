//! Runs a controller: the Raft node, the gRPC server (API + Raft RPCs on
//! one port), `/metrics`, the first-start admin token, and a clean shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nubo_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{hash_token, new_token_id, new_token_secret, now_ms, Api, Internal};
use crate::config::ControllerConfig;
use crate::error::{ApiError, RegistryError};
use crate::registry::model::{Command, Scope, Token};
use crate::raft::network::{Faults, MAX_MESSAGE};
use crate::raft::node::ControllerNode;

/// A started controller.
pub struct Running {
    pub node: Arc<ControllerNode>,
    pub addr: std::net::SocketAddr,
    pub metrics_addr: Option<std::net::SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.node.shutdown().await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
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
    let node = ControllerNode::start(config.clone(), faults).await?;
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();

    let api = Api::new(node.clone());
    let internal = Internal { node: node.clone() };
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            pb::functions_server::FunctionsServer::new(api.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(pb::cluster_server::ClusterServer::new(api.clone()))
        .add_service(pb::tokens_server::TokensServer::new(api.clone()))
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
    tasks.push(tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, stop.cancelled())
            .await
        {
            tracing::error!(error = %e, "grpc server stopped");
        }
    }));

    // The async dispatcher (runs on the leader only).
    tasks.push(tokio::spawn(node.clone().run_dispatcher(shutdown.clone())));

    // Provisioned concurrency: the leader keeps min_warm sandboxes.
    {
        let node = node.clone();
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                if node.is_leader() {
                    node.ensure_min_warm().await;
                }
            }
        }));
    }

    // Workers silent for ten minutes are forgotten (they re-register).
    {
        let node = node.clone();
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
                node.workers.forget_dead(Duration::from_secs(600));
            }
        }));
    }

    // Blob upkeep: fetch what this node lacks, collect what no one uses.
    {
        let node = node.clone();
        let stop = shutdown.clone();
        let every = Duration::from_millis(config.blob_sync_ms);
        let grace = Duration::from_secs(config.blob_gc_grace_secs);
        tasks.push(tokio::spawn(async move {
            let mut unreferenced = std::collections::HashMap::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                node.blob_maintenance(&mut unreferenced, grace).await;
            }
        }));
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
        let n = node.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let n = n.clone();
                async move {
                    let m = n.raft.metrics().borrow().clone();
                    let mut text = n.metrics.render(&m);
                    text.push_str(&n.async_gauges());
                    text
                }
            }),
        );
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        }));
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
