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

/// The Runtime API server on `listener` (in the sandbox's own network
/// namespace, so only the sandbox can connect), ending when the channel is
/// stopped; the caller runs it as one of its sandbox's tasks.
pub fn serve(
    listener: std::net::TcpListener,
    ch: Arc<Channel>,
) -> std::io::Result<futures::future::BoxFuture<'static, ()>> {
    use axum::serve::ListenerExt;
    use futures::FutureExt;
    let stop = ch.stop.clone();
    listener.set_nonblocking(true)?;
    let app = router(ch);
    let listener = tokio::net::TcpListener::from_std(listener)?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    Ok(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    }
    .boxed())
}
