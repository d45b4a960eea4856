//! The Lambda Runtime API of one sandbox (`/2018-06-01/runtime/...`), served
//! by the worker on a listener inside the sandbox's network namespace, so an
//! unmodified runtime client reaches it at `AWS_LAMBDA_RUNTIME_API`.
//!
//! One event at a time: the sandbox hands an [`Event`] to the channel, the
//! runtime's long-polling `GET /invocation/next` takes it, and its
//! `/response` or `/error` completes the sandbox's waiting oneshot.

use std::sync::Mutex;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// Lambda's limit on a synchronous response (6 MB).
pub const MAX_RESPONSE: usize = 6 * 1024 * 1024;
/// What the server reads of a body: well above the limit, so an oversized
/// response gets Lambda's error rather than a bare 413.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// One invocation handed to the runtime.
#[derive(Debug, Clone)]
pub struct Event {
    pub request_id: String,
    pub payload: Bytes,
    pub deadline_ms: u64,
    pub function_arn: String,
}

/// What the runtime answered for an event.
#[derive(Debug)]
pub enum Reply {
    Response(Bytes),
    /// `/error`: the error type header (Lambda: `Unhandled` or the error
    /// type) and the JSON body.
    Error {
        error_type: String,
        body: Bytes,
    },
}

/// Where the runtime is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Starting,
    /// A generic (prewarmed) runtime is loaded and waits to be given a
    /// function (it called `/nubo/v1/specialize`).
    Generic,
    /// The first `/next` arrived: init is done.
    Ready(Instant),
    /// `/init/error`.
    InitError {
        error_type: String,
        body: Bytes,
    },
}

/// State shared between the sandbox and the HTTP handlers.
pub struct Channel {
    events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    events_tx: mpsc::Sender<Event>,
    current: Mutex<Option<(String, oneshot::Sender<Reply>)>>,
    phase: watch::Sender<Phase>,
    /// For generic (prewarmed) sandboxes: the environment to adopt, given
    /// once when the sandbox is specialised for a function.
    specialize: tokio::sync::Mutex<Option<oneshot::Receiver<Bytes>>>,
    /// Cancelled when the sandbox goes: long polls end, the server stops.
    pub stop: CancellationToken,
}

impl Channel {
    pub fn new(specialize: Option<oneshot::Receiver<Bytes>>) -> Arc<Channel> {
        let (events_tx, events) = mpsc::channel(1);
        let (phase, _) = watch::channel(Phase::Starting);
        Arc::new(Channel {
            events: tokio::sync::Mutex::new(events),
            events_tx,
            current: Mutex::new(None),
            phase,
            specialize: tokio::sync::Mutex::new(specialize),
            stop: CancellationToken::new(),
        })
    }

    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Hands an event to the runtime; the returned receiver completes with
    /// its reply. Only one event may be outstanding.
    pub fn dispatch(&self, event: Event) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        *self.current.lock().expect("lock poisoned") = Some((event.request_id.clone(), tx));
        // Capacity 1 and one event at a time: never full.
        let _ = self.events_tx.try_send(event);
        rx
    }

    fn complete(&self, request_id: &str, reply: Reply) -> Result<(), StatusCode> {
        let mut cur = self.current.lock().expect("lock poisoned");
        match cur.take() {
            Some((id, tx)) if id == request_id => {
                let _ = tx.send(reply);
                Ok(())
            }
            other => {
                *cur = other;
                Err(StatusCode::BAD_REQUEST)
            }
        }
    }
}

fn error_json(kind: &str, msg: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/json")],
        serde_json::json!({"errorType": kind, "errorMessage": msg}).to_string(),
    )
        .into_response()
}

async fn next(State(ch): State<Arc<Channel>>) -> Response {
    let mut events = ch.events.lock().await;
    ch.phase.send_if_modified(|p| {
        if matches!(*p, Phase::Starting | Phase::Generic) {
            *p = Phase::Ready(Instant::now());
            true
        } else {
            false
        }
    });
    let ev = tokio::select! {
        ev = events.recv() => ev,
        _ = ch.stop.cancelled() => None,
    };
    let Some(ev) = ev else {
        return StatusCode::GONE.into_response();
    };
    let mut h = HeaderMap::new();
    let put = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    put(&mut h, "lambda-runtime-aws-request-id", &ev.request_id);
    put(
        &mut h,
        "lambda-runtime-deadline-ms",
        &ev.deadline_ms.to_string(),
    );
    put(
        &mut h,
        "lambda-runtime-invoked-function-arn",
        &ev.function_arn,
    );
    put(
        &mut h,
        "lambda-runtime-trace-id",
        &format!("Root=1-{}", &ev.request_id),
    );
    put(&mut h, "content-type", "application/json");
    (StatusCode::OK, h, ev.payload).into_response()
}

async fn response(State(ch): State<Arc<Channel>>, Path(id): Path<String>, body: Bytes) -> Response {
    if body.len() > MAX_RESPONSE {
        // Lambda's own wording for this condition.
        let msg = format!(
            "Response payload size ({} bytes) exceeded maximum allowed payload size ({MAX_RESPONSE} bytes).",
            body.len()
        );
        let err =
            serde_json::json!({"errorMessage": msg, "errorType": "Function.ResponseSizeTooLarge"});
        return match ch.complete(
            &id,
            Reply::Error {
                error_type: "Function.ResponseSizeTooLarge".into(),
                body: Bytes::from(err.to_string()),
            },
        ) {
            Ok(()) => error_json("Function.ResponseSizeTooLarge", &msg),
            Err(code) => code.into_response(),
        };
    }
    match ch.complete(&id, Reply::Response(body)) {
        Ok(()) => (StatusCode::ACCEPTED, "{\"status\":\"OK\"}").into_response(),
        Err(_) => error_json(
            "InvalidRequestID",
            &format!("request id {id} is not the invocation in progress"),
        ),
    }
}

async fn error(
    State(ch): State<Arc<Channel>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let error_type = headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Unhandled")
        .to_string();
    // An error document is bounded like a response.
    let body = if body.len() > MAX_RESPONSE {
        Bytes::from(
            serde_json::json!({
                "errorMessage": format!("error document of {} bytes exceeds the {MAX_RESPONSE}-byte limit", body.len()),
                "errorType": "Function.ResponseSizeTooLarge",
            })
            .to_string(),
        )
    } else {
        body
    };
    match ch.complete(&id, Reply::Error { error_type, body }) {
        Ok(()) => (StatusCode::ACCEPTED, "{\"status\":\"OK\"}").into_response(),
        Err(_) => error_json(
            "InvalidRequestID",
            &format!("request id {id} is not the invocation in progress"),
        ),
    }
}

async fn init_error(State(ch): State<Arc<Channel>>, headers: HeaderMap, body: Bytes) -> Response {
    let error_type = headers
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Runtime.Unknown")
        .to_string();
    ch.phase.send_replace(Phase::InitError { error_type, body });
    (StatusCode::ACCEPTED, "{\"status\":\"OK\"}").into_response()
}

/// nubo's extension for prewarmed generic sandboxes: blocks until the
/// sandbox is given a function, then returns `{"env": {...}}`.
async fn specialize(State(ch): State<Arc<Channel>>) -> Response {
    let rx = ch.specialize.lock().await.take();
    let Some(rx) = rx else {
        return StatusCode::NOT_FOUND.into_response();
    };
    ch.phase.send_if_modified(|p| {
        if *p == Phase::Starting {
            *p = Phase::Generic;
            true
        } else {
            false
        }
    });
    tokio::select! {
        r = rx => match r {
            Ok(body) => (StatusCode::OK, body).into_response(),
            Err(_) => StatusCode::GONE.into_response(),
        },
        _ = ch.stop.cancelled() => StatusCode::GONE.into_response(),
    }
}

pub fn router(ch: Arc<Channel>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .route("/nubo/v1/specialize", get(specialize))
        // Over-size responses are answered with Lambda's error, so accept a
        // little more than the limit to be able to say so.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(ch)
}

/// A listener on the host's loopback (sandboxes with egress share the
/// host's network) that accepts only connections made by processes of the
/// sandbox's own cgroup: another sandbox must not read this one's events.
struct OwnerOnly {
    inner: tokio::net::TcpListener,
    port: u16,
    procs: std::path::PathBuf,
}

impl axum::serve::Listener for OwnerOnly {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((s, a)) => {
                    let (port, procs) = (self.port, self.procs.clone());
                    let ok = a.ip().is_loopback()
                        && tokio::task::spawn_blocking(move || {
                            local_peer_in_cgroup(a.port(), port, &procs)
                        })
                        .await
                        .unwrap_or(false);
                    if ok {
                        let _ = s.set_nodelay(true);
                        return (s, a);
                    }
                    tracing::warn!(peer = %a, "Runtime API: refused a connection from outside the sandbox");
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The Runtime API server on `listener`, ending when the channel is
/// stopped; the caller runs it as one of its sandbox's tasks. With `owner`
/// (a cgroup.procs file), only that cgroup's processes may connect.
pub fn serve(
    listener: std::net::TcpListener,
    ch: Arc<Channel>,
    owner: Option<std::path::PathBuf>,
) -> std::io::Result<futures::future::BoxFuture<'static, ()>> {
    use futures::FutureExt;
    let stop = ch.stop.clone();
    use axum::serve::ListenerExt;
    listener.set_nonblocking(true)?;
    let app = router(ch);
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(match owner {
        Some(procs) => {
            let port = listener.local_addr()?.port();
            let l = OwnerOnly {
                inner: listener,
                port,
                procs,
            };
            async move {
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
            }
            .boxed()
        }
        None => {
            let l = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            async move {
                let _ = axum::serve(l, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
            }
            .boxed()
        }
    })
}

/// Whether the local TCP connection from 127.0.0.1:`peer_port` to
/// `server_port` belongs to a process of the cgroup listed in `procs`:
/// the connecting socket's inode (from /proc/net/tcp) is open in one of
/// those processes.
fn local_peer_in_cgroup(peer_port: u16, server_port: u16, procs: &std::path::Path) -> bool {
    let want_local = format!("0100007F:{peer_port:04X}");
    let want_remote = format!("0100007F:{server_port:04X}");
    let Ok(tcp) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inode = tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && f[1] == want_local && f[2] == want_remote).then(|| f[9].to_string())
    });
    let Some(inode) = inode else {
        return false;
    };
    let target = format!("socket:[{inode}]");
    let Ok(pids) = std::fs::read_to_string(procs) else {
        return false;
    };
    for pid in pids.split_whitespace() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path())
                .map(|l| l.as_os_str() == target.as_str())
                .unwrap_or(false)
            {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The egress Runtime API's guard: a loopback connection is matched to
    /// the process holding its socket; processes of other cgroups (here:
    /// a procs file that does not list us) are refused.
    #[test]
    fn local_peer_is_matched_to_its_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_s, peer) = l.accept().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine");
        std::fs::write(&mine, format!("{}\n", std::process::id())).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "1\n").unwrap();
        assert!(local_peer_in_cgroup(peer.port(), port, &mine));
        assert!(!local_peer_in_cgroup(peer.port(), port, &other));
        assert!(!local_peer_in_cgroup(
            peer.port(),
            port,
            &dir.path().join("missing")
        ));
        drop(c);
    }
}
