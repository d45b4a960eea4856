//! A running worker: the `WorkerApi` gRPC service the controllers call, the
//! heartbeat that registers it with every controller, code fetching, the
//! idle reaper and `/metrics`. Each long-lived task is a named task of the
//! worker's [`Tasks`], stopped by its shutdown token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nubo_proto::v1 as pb;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::attempts::Claim;
use crate::code::{CodeSource, FetchFuture};
use crate::core::Worker;
use crate::logs::Line;
use crate::pool::{PoolCounts, PoolError};
use crate::sandbox::{Completion, FunctionSpec, SandboxFactory};
use crate::tasks::Tasks;

/// The largest message on the worker API: a 6 MB payload plus framing.
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    pub id: String,
    pub zone: String,
    /// Address controllers use to reach this worker, HOST:PORT.
    pub advertise: String,
    pub controllers: Vec<String>,
    pub worker_secret: String,
    pub heartbeat: Duration,
}

pub fn spec_from_pb(f: pb::FunctionSpec) -> Result<FunctionSpec, Status> {
    if f.function_name.is_empty() || f.code_sha256.len() != 64 {
        return Err(Status::invalid_argument(
            "function spec needs a name and a 64-hex-digit code_sha256",
        ));
    }
    Ok(FunctionSpec {
        function_name: f.function_name,
        version: f.version,
        runtime: f.runtime,
        handler: f.handler,
        memory_mb: f.memory_mb.max(1),
        timeout_seconds: f.timeout_seconds.max(1),
        environment: f.environment.into_iter().collect(),
        ephemeral_storage_mb: f.ephemeral_storage_mb.max(1),
        egress: f.egress,
        code_sha256: f.code_sha256,
        code_size: f.code_size,
    })
}

fn pool_pb(function: &str, version: &str, c: PoolCounts) -> pb::PoolEntry {
    pb::PoolEntry {
        function_name: function.to_string(),
        version: version.to_string(),
        idle: c.idle,
        busy: c.busy,
    }
}

fn endpoint(addr: &str) -> Result<Endpoint, String> {
    let url = if addr.starts_with("http") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Endpoint::from_shared(url)
        .map(|e| {
            e.connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
        })
        .map_err(|e| format!("bad controller address {addr:?}: {e}"))
}

use nubo_proto::with_secret;

/// Code comes from whichever controller answers first (they all hold every
/// package the registry references, or fetch it from a peer).
pub struct ControllerCode {
    channels: Vec<(String, Channel)>,
    secret: String,
}

impl ControllerCode {
    pub fn new(controllers: &[String], secret: &str) -> Result<ControllerCode, String> {
        let mut channels = Vec::new();
        for c in controllers {
            channels.push((c.clone(), endpoint(c)?.connect_lazy()));
        }
        Ok(ControllerCode {
            channels,
            secret: secret.to_string(),
        })
    }
}

impl CodeSource for ControllerCode {
    fn fetch(&self, sha256: &str) -> FetchFuture {
        let channels = self.channels.clone();
        let secret = self.secret.clone();
        let sha = sha256.to_string();
        Box::pin(async move {
            let mut errors = Vec::new();
            for (addr, ch) in channels {
                let mut c = pb::worker_control_client::WorkerControlClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE);
                let req = with_secret(
                    pb::FetchCodeRequest {
                        code_sha256: sha.clone(),
                    },
                    &secret,
                );
                let r = async {
                    let mut stream = c.fetch_code(req).await?.into_inner();
                    let mut data = Vec::new();
                    while let Some(chunk) = stream.message().await? {
                        data.extend_from_slice(&chunk.data);
                    }
                    Ok::<_, Status>(data)
                }
                .await;
                match r {
                    Ok(d) => return Ok(d),
                    Err(s) => errors.push(format!("{addr}: {}", s.message())),
                }
            }
            Err(errors.join("; "))
        })
    }
}

/// The gRPC face of a worker.
pub struct WorkerService<F: SandboxFactory> {
    pub worker: Arc<Worker<F>>,
    pub secret: String,
    pub worker_id: String,
}

impl<F: SandboxFactory> WorkerService<F> {
    fn check<T>(&self, r: &Request<T>) -> Result<(), Status> {
        let got = nubo_proto::presented_secret(r.metadata());
        if nubo_proto::secret_matches(got, &self.secret) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "wrong worker secret: this worker's NUBO_WORKER_SECRET must be `nubo cluster worker-secret` of the controllers' cluster secret",
            ))
        }
    }
}

/// Marks an error as "the function did not run" (the metadata
/// `nubo_proto::headers::NOT_RUN`), so the controller may place the call
/// elsewhere.
fn not_run(mut s: Status) -> Status {
    s.metadata_mut().insert(
        nubo_proto::headers::NOT_RUN,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    s
}

fn pool_status(e: PoolError) -> Status {
    not_run(match e {
        PoolError::Full { .. } | PoolError::TooBig { .. } | PoolError::ShuttingDown => {
            Status::resource_exhausted(e.to_string())
        }
        PoolError::Create(c) => {
            Status::unavailable(format!("worker could not start a sandbox: {c}"))
        }
    })
}

#[tonic::async_trait]
impl<F: SandboxFactory> pb::worker_api_server::WorkerApi for WorkerService<F> {
    async fn invoke(
        &self,
        request: Request<pb::WorkerInvokeRequest>,
    ) -> Result<Response<pb::WorkerInvokeResponse>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        let attempts = &self.worker.attempts;
        if r.dispatch_term > 0 {
            if let Err(fence) = attempts.admits(r.dispatch_term) {
                return Err(not_run(Status::failed_precondition(format!(
                    "stale dispatch: sent by the leader of Raft term {}, but this worker has seen the leader of term {fence}; not run",
                    r.dispatch_term
                ))));
            }
        }
        let spec = spec_from_pb(r.function.unwrap_or_default())?;
        let claim = if r.attempt_key.is_empty() {
            None
        } else {
            match attempts.claim(&r.attempt_key) {
                Claim::Done(resp) => return Ok(Response::new(resp)),
                Claim::Wait(rx) => {
                    return match crate::attempts::wait(rx).await {
                        Some(resp) => Ok(Response::new(resp)),
                        None => Err(not_run(Status::unavailable(
                            "the same attempt could not start on this worker; not run",
                        ))),
                    };
                }
                Claim::Run(tx) => Some((r.attempt_key.clone(), tx)),
            }
        };
        // Its own task: a caller that goes away (deadline, disconnect) must
        // not drop a leased sandbox half-way; the call finishes, the
        // sandbox goes back to the pool and an attempt's result is kept.
        // A plain spawn: one call, awaited here, bounded by its timeout.
        let w = self.worker.clone();
        let resp = tokio::spawn(async move {
            let out = w
                .invoke(&spec, &r.request_id, r.payload.into(), r.log_tail)
                .await;
            let resp = out.map(|out| {
                let (payload, function_error) = match out.completion {
                    Completion::Ok(b) => (b.to_vec(), String::new()),
                    Completion::FunctionError { kind, body } => (body.to_vec(), kind),
                };
                pb::WorkerInvokeResponse {
                    payload,
                    function_error,
                    log_result: out.log_tail,
                    pool: Some(pool_pb(&spec.function_name, &spec.version, out.pool)),
                    cold_start: out.cold_start,
                }
            });
            if let Some((key, tx)) = claim {
                match &resp {
                    Ok(r) => {
                        let size = r.payload.len() + r.log_result.len() + key.len();
                        w.attempts.finish(&key, tx, r.clone(), size);
                    }
                    Err(_) => w.attempts.abandon(&key, tx),
                }
            }
            resp
        })
        .await
        .map_err(|e| Status::internal(format!("invocation task failed: {e}")))?
        .map_err(pool_status)?;
        Ok(Response::new(resp))
    }

    async fn find_attempts(
        &self,
        request: Request<pb::FindAttemptsRequest>,
    ) -> Result<Response<pb::FindAttemptsResponse>, Status> {
        self.check(&request)?;
        let held = request
            .into_inner()
            .keys
            .into_iter()
            .filter(|k| self.worker.attempts.holds(k))
            .collect();
        Ok(Response::new(pb::FindAttemptsResponse { held }))
    }

    async fn prewarm(
        &self,
        request: Request<pb::PrewarmRequest>,
    ) -> Result<Response<pb::PrewarmResponse>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        let spec = spec_from_pb(r.function.unwrap_or_default())?;
        let w = self.worker.clone();
        let s2 = spec.clone();
        // As for invoke: finishes even if the caller goes; awaited here.
        let created = tokio::spawn(async move { w.pool.prewarm(&s2, r.count).await })
            .await
            .map_err(|e| Status::internal(format!("prewarm task failed: {e}")))?
            .map_err(pool_status)?;
        let c = self.worker.pool.counts(&spec.function_name, &spec.version);
        Ok(Response::new(pb::PrewarmResponse {
            created,
            pool: Some(pool_pb(&spec.function_name, &spec.version, c)),
        }))
    }

    async fn logs(
        &self,
        request: Request<pb::GetLogsRequest>,
    ) -> Result<Response<pb::GetLogsResponse>, Status> {
        self.check(&request)?;
        let r = request.into_inner();
        let limit = if r.limit == 0 {
            1000
        } else {
            r.limit.min(10_000)
        } as usize;
        let lines = self
            .worker
            .logs
            .read(&r.function_name, r.start_time_ms, limit)
            .into_iter()
            .map(|l: Line| pb::LogLine {
                timestamp_ms: l.timestamp_ms,
                request_id: l.request_id,
                message: l.message,
                worker_id: self.worker_id.clone(),
                seq: l.seq,
                version: l.version,
            })
            .collect();
        Ok(Response::new(pb::GetLogsResponse { lines }))
    }

    async fn drop_logs(
        &self,
        request: Request<pb::DropLogsRequest>,
    ) -> Result<Response<pb::DropLogsResponse>, Status> {
        self.check(&request)?;
        let name = request.into_inner().function_name;
        let logs = self.worker.logs.clone();
        // `remove` may wait for room in the disk queue.
        tokio::task::spawn_blocking(move || logs.remove(&name))
            .await
            .map_err(|e| Status::internal(format!("dropping logs failed: {e}")))?;
        Ok(Response::new(pb::DropLogsResponse {}))
    }
}

/// A started worker's background tasks and server.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    tasks: Arc<Tasks>,
    drain: Vec<ShutdownHook>,
}

/// Work done at shutdown after the server stopped (destroying sandboxes).
pub type ShutdownHook = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

impl Running {
    /// Stops taking calls, lets in-flight ones finish (bounded), destroys
    /// every sandbox.
    pub async fn shutdown(self) {
        self.tasks.shutdown(Duration::from_secs(10)).await;
        for d in self.drain {
            d().await;
        }
    }

    /// Adds work to do at shutdown.
    pub fn on_shutdown(&mut self, hook: ShutdownHook) {
        self.drain.push(hook);
    }
}

/// Serves `worker` on `listener` and registers it with the controllers.
pub async fn serve<F: SandboxFactory>(
    worker: Arc<Worker<F>>,
    ident: WorkerIdentity,
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    incarnation: u64,
) -> Result<Running, String> {
    let tasks = Arc::new(Tasks::default());
    serve_with(
        worker,
        ident,
        listener,
        metrics_listener,
        incarnation,
        tasks,
    )
    .await
}

/// [`serve`], its tasks joining `tasks` (where the sandbox factory put
/// its own), all stopped by [`Running::shutdown`].
pub async fn serve_with<F: SandboxFactory>(
    worker: Arc<Worker<F>>,
    ident: WorkerIdentity,
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    incarnation: u64,
    tasks: Arc<Tasks>,
) -> Result<Running, String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let shutdown = tasks.token().clone();

    let svc = WorkerService {
        worker: worker.clone(),
        secret: ident.worker_secret.clone(),
        worker_id: ident.id.clone(),
    };
    let stop = shutdown.clone();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tasks.spawn("worker-api", async move {
        let r = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
                pb::worker_api_server::WorkerApiServer::new(svc)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(incoming, stop.cancelled())
            .await;
        if let Err(e) = r {
            tracing::error!("worker API server: {e}");
        }
    });

    // Heartbeats go to every controller: each routes on its own view.
    for c in &ident.controllers {
        let ch = endpoint(c)?.connect_lazy();
        let w = worker.clone();
        let id = ident.clone();
        let stop = shutdown.clone();
        let controller = c.clone();
        tasks.spawn(format!("heartbeat {c}"), async move {
            let mut client = pb::worker_control_client::WorkerControlClient::new(ch);
            let mut interval = id.heartbeat;
            let mut warned = false;
            loop {
                let snap = w.pool.snapshot();
                let cfg = w.pool.config();
                let hb = pb::WorkerHeartbeat {
                    id: id.id.clone(),
                    zone: id.zone.clone(),
                    address: id.advertise.clone(),
                    memory_mb: cfg.memory_mb,
                    max_sandboxes: cfg.max_sandboxes,
                    used_memory_mb: snap.used_mb,
                    sandboxes: snap.sandboxes,
                    pools: snap
                        .by_version
                        .into_iter()
                        .map(|(f, v, c)| pool_pb(&f, &v, c))
                        .collect(),
                    incarnation,
                };
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    client.heartbeat(with_secret(hb, &id.worker_secret)),
                )
                .await
                {
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        w.attempts.observe_term(r.leader_term);
                        let ms = r.interval_ms;
                        if ms > 0 {
                            interval = Duration::from_millis(ms as u64);
                        }
                        if warned {
                            tracing::info!("controller {controller} reachable again");
                            warned = false;
                        }
                    }
                    Ok(Err(s)) if !warned => {
                        tracing::warn!("heartbeat to controller {controller}: {}", s.message());
                        warned = true;
                    }
                    Err(_) if !warned => {
                        tracing::warn!("heartbeat to controller {controller} timed out");
                        warned = true;
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }

    // Keep-alive reaper.
    let w = worker.clone();
    let stop = shutdown.clone();
    tasks.spawn("keep-alive-reaper", async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => { w.pool.reap_idle(); }
                _ = stop.cancelled() => return,
            }
        }
    });

    let mut metrics_addr = None;
    if let Some(ml) = metrics_listener {
        metrics_addr = ml.local_addr().ok();
        let w = worker.clone();
        let stop = shutdown.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let w = w.clone();
                async move { w.metrics.render(&w.pool.snapshot()) }
            }),
        );
        tasks.spawn("metrics", async move {
            let _ = axum::serve(ml, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
    }

    let w = worker.clone();
    Ok(Running {
        addr,
        metrics_addr,
        tasks,
        drain: vec![Box::new(move || {
            Box::pin(async move {
                w.pool.drain(Duration::from_secs(60)).await;
                // The last invocations' log lines reach the disk.
                let logs = w.logs.clone();
                let _ =
                    tokio::task::spawn_blocking(move || logs.flush(Duration::from_secs(5))).await;
            })
        })],
    })
}
