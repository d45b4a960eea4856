//! The sync path: resolve the qualifier (alias weights per call) from the
//! local registry, enforce reserved concurrency, place on a worker, relay
//! the result. No Raft write on this path. The `Invoker` owns what this
//! needs (the workers' view, the reservations), so consensus does not.

pub mod concurrency;
pub mod logs;
pub mod placement;
pub mod provisioned;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nubo_proto::v1 as pb;
use nubo_proto::Reason;
use rand::Rng;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

use crate::error::{ApiError, RegistryError};
use crate::invoke::concurrency::{ReservedConcurrency, Slot};
use crate::invoke::placement::{Pick, WorkerRegistry, MAX_WORKER_MESSAGE};
use crate::raft::node::ControllerNode;
use crate::registry::model::{ConfigView, LATEST};
use crate::registry::validate;

/// How many workers one call may try when they turn out full or unreachable
/// before the request was sent.
const PLACEMENT_TRIES: usize = 3;

type ControlClient = pb::worker_control_client::WorkerControlClient<Channel>;

/// Runs invocations on workers: what the sync path (and the async
/// dispatcher's attempts) need, beside the Raft node.
pub struct Invoker {
    pub node: Arc<ControllerNode>,
    /// Workers as seen by this controller (heartbeats; not replicated).
    pub workers: Arc<WorkerRegistry>,
    pub reserved: Arc<ReservedConcurrency>,
    /// What workers present, and what this node presents to workers
    /// (derived from the cluster secret, see `nubo_proto::worker_secret`).
    pub worker_secret: String,
    leader_clients: Mutex<HashMap<String, ControlClient>>,
    /// When each provisioned (function, version) last had its workers'
    /// leases renewed.
    renewed: Mutex<HashMap<(String, String), std::time::Instant>>,
}

/// An invocation validated and resolved, by what it asks for.
pub enum Prepared {
    /// DryRun: the answer itself.
    DryRun(pb::InvokeResponse),
    /// Event: to the async queue (the events layer accepts it).
    Event { view: ConfigView, qualifier: String },
    /// RequestResponse: to run now (`Invoker::call`).
    Sync(ConfigView),
}

/// Balances a placement's in-flight counter however the call ends, also
/// when the caller goes away and this future is dropped mid-call.
struct Placed<'a> {
    workers: &'a WorkerRegistry,
    pick: Option<Pick>,
}

impl Placed<'_> {
    fn finish(mut self, report: Option<&pb::PoolEntry>, failed: bool) {
        if let Some(p) = self.pick.take() {
            self.workers.finish(&p, report, failed);
        }
    }
}

impl Drop for Placed<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pick.take() {
            self.workers.finish(&p, None, false);
        }
    }
}

/// An async event's attempt, as the dispatcher runs it.
pub(crate) struct AsyncAttempt {
    /// Names the attempt for the worker: the same when a new leader
    /// re-dispatches an attempt whose step never committed.
    pub key: String,
    /// The dispatching leader's Raft term (the worker's fence).
    pub term: u64,
    /// The dispatcher already took a reserved-concurrency slot.
    pub slot_held: bool,
    /// The worker that holds this attempt (found when this node became
    /// leader): the attempt goes there to join or reuse it.
    pub pin: Option<String>,
}

pub fn new_request_id() -> String {
    let b: [u8; 16] = rand::thread_rng().gen();
    uuid_form(&b)
}

/// 16 bytes in the 8-4-4-4-12 form Lambda's request ids have.
pub(crate) fn uuid_form(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Picks the version an alias routes this call to.
fn route(primary: &str, weights: &std::collections::BTreeMap<String, f64>) -> String {
    let x: f64 = rand::thread_rng().gen();
    let mut acc = 0.0;
    for (v, w) in weights {
        acc += w;
        if x < acc {
            return v.clone();
        }
    }
    primary.to_string()
}

pub(crate) fn spec_of(v: &ConfigView) -> pb::FunctionSpec {
    let c = &v.config;
    pb::FunctionSpec {
        function_name: v.function_name.clone(),
        version: v.version.clone(),
        runtime: c.runtime.clone(),
        handler: c.handler.clone(),
        memory_mb: c.memory_mb,
        timeout_seconds: c.timeout_seconds,
        environment: c.environment.clone().into_iter().collect(),
        ephemeral_storage_mb: c.ephemeral_storage_mb,
        egress: c.egress,
        code_sha256: c.code_sha256.clone(),
        code_size: c.code_size,
    }
}

pub(crate) fn with_secret<T>(msg: T, secret: &str, timeout: Duration) -> Request<T> {
    let mut r = nubo_proto::with_secret(msg, secret);
    r.set_timeout(timeout);
    r
}

/// Whether a failed call certainly never reached the worker's handler.
fn not_sent(s: &tonic::Status) -> bool {
    s.code() == Code::Unavailable && {
        let m = s.message().to_ascii_lowercase();
        m.contains("connect") || m.contains("refused")
    }
}

/// Checks an invoke payload (empty means `{}`): UTF-8, nested at most
/// `max_depth` arrays and objects deep, and JSON. The depth is found by
/// one byte scan before anything parses it: serde's `IgnoredAny` walks any
/// depth without a limit, and 3 M nested `[` passed the JSON check and then
/// killed the Python runtime's parser (and its sandbox). serde's
/// `IgnoredAny` does not check the UTF-8 inside strings either, hence
/// `from_utf8` first (both are linear and allocate nothing).
pub(crate) fn check_payload(payload: &[u8], max_depth: u32) -> Result<(), RegistryError> {
    if payload.is_empty() {
        return Ok(());
    }
    if let Err(e) = std::str::from_utf8(payload) {
        return Err(RegistryError::invalid(format!(
            "payload is not valid UTF-8 (an invalid byte sequence at byte {} of {}): JSON text must be UTF-8",
            e.valid_up_to(),
            payload.len()
        ))
        .with_reason(Reason::PayloadNotJson));
    }
    if let Some(at) = too_deep(payload, max_depth) {
        return Err(RegistryError::invalid(format!(
            "payload nests arrays and objects more than {max_depth} levels deep (at byte {at} of {}): the limit is {max_depth} (max_payload_depth)",
            payload.len()
        )));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(payload).map_err(|e| {
        RegistryError::invalid(format!("payload is not valid JSON ({e})"))
            .with_reason(Reason::PayloadNotJson)
    })?;
    Ok(())
}

/// The offset of the first `[` or `{` (outside strings) that opens level
/// `max_depth + 1`, if any. Exact for valid JSON; on invalid JSON it may
/// say anything, and the parse after it refuses the payload anyway.
fn too_deep(payload: &[u8], max_depth: u32) -> Option<usize> {
    let mut depth = 0u32;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in payload.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

impl Invoker {
    pub fn new(node: Arc<ControllerNode>) -> Self {
        let c = &node.config;
        Invoker {
            workers: Arc::new(WorkerRegistry::new(
                Duration::from_millis(c.worker_heartbeat_ms),
                Duration::from_millis(c.worker_dead_after_ms),
            )),
            reserved: Default::default(),
            worker_secret: nubo_proto::worker_secret(&c.cluster_secret),
            leader_clients: Default::default(),
            renewed: Default::default(),
            node,
        }
    }

    /// Resolves `function:qualifier` on the local registry (no Raft round
    /// trip); an alias with weights routes each call by them.
    pub(crate) fn resolve_routed(
        &self,
        function: &str,
        qualifier: &str,
    ) -> Result<ConfigView, RegistryError> {
        self.node.with_registry(|r| {
            let (view, alias) = r.get(function, qualifier)?;
            match alias {
                Some(a) if !a.routing.is_empty() => {
                    let v = route(&a.function_version, &a.routing);
                    if v == view.version {
                        Ok(view)
                    } else {
                        Ok(r.get(function, &v)?.0)
                    }
                }
                _ => Ok(view),
            }
        })
    }

    /// Validates and resolves one invocation (the checks every
    /// invocation type shares, in this order).
    pub fn prepare(&self, req: &pb::InvokeRequest) -> Result<Prepared, ApiError> {
        validate::function_name(&req.function_name)?;
        if !req.idempotency_key.is_empty()
            && req.invocation_type != pb::InvocationType::Event as i32
        {
            return Err(RegistryError::invalid(
                "an idempotency key applies to asynchronous invocations only (invocation type Event)",
            )
            .with_reason(Reason::IdempotencyKeyNotEvent)
            .into());
        }
        if !req.ordering_key.is_empty() {
            if req.invocation_type != pb::InvocationType::Event as i32 {
                return Err(RegistryError::invalid(
                    "ordering_key is for asynchronous invocations (--async)",
                )
                .into());
            }
            validate::ordering_key(&req.ordering_key)?;
        }
        let max = self.node.config.max_sync_payload_bytes;
        if req.payload.len() as u64 > max {
            return Err(RegistryError::invalid(format!(
                "payload is {} bytes; the limit for synchronous invocations is {max} bytes (6 MB): pass large data by reference (an S3 key)",
                req.payload.len()
            ))
            .into());
        }
        check_payload(&req.payload, self.node.config.max_payload_depth)?;
        let qualifier = if req.qualifier.is_empty() {
            LATEST.to_string()
        } else {
            req.qualifier.clone()
        };
        // Resolve on the local registry: the newest applied state, no
        // Raft round trip. An alias routes each call by its weights.
        let view = self.resolve_routed(&req.function_name, &qualifier)?;
        let invocation_type = pb::InvocationType::try_from(req.invocation_type)
            .map_err(|_| RegistryError::invalid("unknown invocation type"))?;
        Ok(match invocation_type {
            pb::InvocationType::DryRun => Prepared::DryRun(pb::InvokeResponse {
                status_code: 204,
                executed_version: view.version,
                ..Default::default()
            }),
            pb::InvocationType::Event => Prepared::Event { view, qualifier },
            pb::InvocationType::RequestResponse => Prepared::Sync(view),
        })
    }

    /// Runs a prepared RequestResponse call.
    pub async fn call(
        &self,
        req: pb::InvokeRequest,
        view: ConfigView,
        forwarded: bool,
    ) -> Result<pb::InvokeResponse, ApiError> {
        if view.config.code_sha256.is_empty() {
            return Err(RegistryError::precondition(format!(
                "function {} has no code",
                view.function_name
            ))
            .with_reason(Reason::NoCode)
            .into());
        }

        self.execute(req, view, forwarded, new_request_id(), None)
            .await
    }

    /// Runs a resolved call: reserved concurrency, placement, the worker.
    /// The dispatcher of async events calls it with the event's own id and
    /// its `AsyncAttempt`.
    pub(crate) async fn execute(
        &self,
        req: pb::InvokeRequest,
        view: ConfigView,
        forwarded: bool,
        request_id: String,
        attempt: Option<&AsyncAttempt>,
    ) -> Result<pb::InvokeResponse, ApiError> {
        let mut slot = match view.config.reserved_concurrency {
            // The async dispatcher took the slot when it planned the attempt.
            Some(_) if attempt.is_some_and(|a| a.slot_held) => None,
            Some(limit) => {
                if !forwarded && !self.node.is_leader() {
                    return self.forward_invoke(req).await;
                }
                if let Err(n) = self.reserved.try_take(&view.function_name, limit) {
                    return Err(ApiError::throttled(format!(
                        "throttled: function {} has reserved concurrency {limit} and {n} invocations are running",
                        view.function_name
                    ))
                    .with_reason(Reason::ReservedConcurrency));
                }
                Some(Slot::adopt(&self.reserved, view.function_name.clone()))
            }
            None => None,
        };

        let spec = spec_of(&view);
        // The worker may need: the code fetch, init (10 s), the function's
        // timeout, and killing a timed-out sandbox (5 s).
        let timeout = Duration::from_secs(view.config.timeout_seconds as u64 + 45);
        let mut exclude = Vec::new();
        let mut last_error = String::new();
        let mut saw_full = false;
        let mut pin = attempt.and_then(|a| a.pin.as_deref());
        for _ in 0..PLACEMENT_TRIES {
            let pinned = pin.take().and_then(|id| {
                self.workers
                    .pick_pinned(id, &view.function_name, &view.version)
            });
            let Some(pick) = pinned.or_else(|| {
                self.workers.pick(
                    &view.function_name,
                    &view.version,
                    view.config.memory_mb,
                    &exclude,
                )
            }) else {
                // Full workers are not picked: say so, with the numbers,
                // rather than "no worker" (a throttle, to retry later).
                if let Some(full) = self.workers.full_summary(view.config.memory_mb, &exclude) {
                    last_error = full;
                    saw_full = true;
                }
                break;
            };
            let call = pb::WorkerInvokeRequest {
                function: Some(spec.clone()),
                request_id: request_id.clone(),
                payload: req.payload.clone(),
                log_tail: req.log_type == pb::LogType::LogTail as i32,
                attempt_key: attempt.map(|a| a.key.clone()).unwrap_or_default(),
                dispatch_term: attempt.map(|a| a.term).unwrap_or(0),
            };
            let client = pick.client.clone();
            let (id, zone) = (pick.id.clone(), pick.zone.clone());
            let placed = Placed {
                workers: &self.workers,
                pick: Some(pick),
            };
            if let Some(s) = slot.as_mut() {
                s.sent(timeout);
            }
            let r = client
                .invoke(with_secret(call, &self.worker_secret, timeout))
                .await;
            if let Some(s) = slot.as_mut() {
                s.answered();
            }
            match r {
                Ok(resp) => {
                    placed.finish(resp.pool.as_ref(), false);
                    return Ok(pb::InvokeResponse {
                        status_code: 200,
                        payload: resp.payload,
                        function_error: resp.function_error,
                        executed_version: view.version,
                        log_result: resp.log_result,
                        request_id,
                        duplicate: false,
                    });
                }
                Err(s) if s.code() == Code::ResourceExhausted => {
                    // Full: try another worker.
                    placed.finish(None, false);
                    last_error = format!("worker {id}: {}", s.message());
                    saw_full = true;
                    exclude.push(id);
                }
                Err(s) if s.metadata().get(nubo_proto::headers::NOT_RUN).is_some() => {
                    // The worker could not start a sandbox: nothing ran.
                    placed.finish(None, false);
                    last_error = format!("worker {id}: {}", s.message());
                    exclude.push(id);
                }
                Err(s) if not_sent(&s) => {
                    placed.finish(None, true);
                    last_error = format!("worker {id} is unreachable: {}", s.message());
                    exclude.push(id);
                }
                Err(s) => return Err(self.worker_failed(placed, &id, &zone, s, &request_id)),
            }
        }
        if last_error.is_empty() {
            Err(ApiError::unavailable(
                format!(
                    "no live worker can run {} ({} MB)",
                    view.function_name, view.config.memory_mb
                ),
                None,
            )
            .with_reason(Reason::NoWorker))
        } else if saw_full {
            Err(ApiError::throttled(format!(
                "throttled: worker capacity exhausted for {} ({} MB): {last_error}",
                view.function_name, view.config.memory_mb
            ))
            .with_reason(Reason::CapacityExhausted))
        } else {
            Err(ApiError::unavailable(
                format!("no worker could take the call ({last_error}); retry"),
                None,
            ))
        }
    }

    /// A worker failed after the call was sent: the caller gets a clear,
    /// retryable error, and the worker is avoided until it heartbeats.
    fn worker_failed(
        &self,
        placed: Placed<'_>,
        worker: &str,
        zone: &str,
        s: tonic::Status,
        request_id: &str,
    ) -> ApiError {
        // tonic reports its own client deadline as CANCELLED "Timeout expired".
        let timed_out = s.code() == Code::DeadlineExceeded
            || (s.code() == Code::Cancelled && s.message().contains("Timeout expired"));
        let transport = !timed_out
            && matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
            );
        placed.finish(None, transport);
        if timed_out {
            return ApiError::DeadlineExceeded(format!(
                "worker {worker} did not answer in time for request {request_id} (the function may still be running there)"
            ));
        }
        match s.code() {
            Code::InvalidArgument => ApiError::Internal(format!(
                "worker {worker} rejected the call: {}",
                s.message()
            )),
            _ => ApiError::WorkerFailed(format!(
                "worker {worker} (zone {zone}) failed during request {request_id}: {}; the function may or may not have run; retry (the next call goes to another worker)",
                s.message()
            )),
        }
    }

    async fn forward_invoke(&self, req: pb::InvokeRequest) -> Result<pb::InvokeResponse, ApiError> {
        let Some(addr) = self.node.leader_addr() else {
            return Err(ApiError::unavailable(
                "no leader to count reserved concurrency: retry in a moment",
                None,
            ));
        };
        let client = {
            let mut g = self.leader_clients.lock().expect("lock poisoned");
            match g.get(&addr) {
                Some(c) => c.clone(),
                None => {
                    let ep = Endpoint::from_shared(format!("http://{addr}"))
                        .map_err(|e| ApiError::Internal(e.to_string()))?
                        .tcp_nodelay(true)
                        .connect_timeout(Duration::from_millis(500));
                    let c = pb::worker_control_client::WorkerControlClient::new(ep.connect_lazy())
                        .max_decoding_message_size(MAX_WORKER_MESSAGE)
                        .max_encoding_message_size(MAX_WORKER_MESSAGE);
                    g.insert(addr.clone(), c.clone());
                    c
                }
            }
        };
        let mut client = client;
        let r = client
            .forward_invoke(with_secret(
                req,
                &self.node.config.cluster_secret,
                Duration::from_secs(930),
            ))
            .await
            .map_err(|s| {
                let e = match s.code() {
                    Code::ResourceExhausted => ApiError::throttled(s.message()),
                    Code::NotFound => RegistryError::not_found(s.message()).into(),
                    Code::InvalidArgument => RegistryError::invalid(s.message()).into(),
                    Code::FailedPrecondition => RegistryError::precondition(s.message()).into(),
                    Code::DeadlineExceeded => ApiError::DeadlineExceeded(s.message().to_string()),
                    _ => ApiError::unavailable(
                        format!("forwarding to the leader at {addr}: {}", s.message()),
                        Some(addr.clone()),
                    ),
                };
                // The leader's reason stands for the caller too.
                match Reason::of(&s) {
                    Some(r) => e.with_reason(r),
                    None => e,
                }
            })?;
        Ok(r.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Vec<u8> {
        let mut v = vec![b'['; depth];
        v.extend(std::iter::repeat_n(b']', depth));
        v
    }

    /// 3 M nested `[` are refused by the depth scan, fast, naming the
    /// limit; 64 levels pass and 65 do not; brackets inside strings (also
    /// after escaped quotes) do not count; a 100-deep document passes a
    /// limit of 128.
    #[test]
    fn deep_payloads_are_refused_and_strings_do_not_count() {
        let deep = vec![b'['; 3_000_000];
        let t = std::time::Instant::now();
        let e = check_payload(&deep, 64).unwrap_err();
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            t.elapsed()
        );
        assert!(matches!(e, RegistryError::InvalidArgument(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("more than 64 levels deep (at byte 64 of 3000000)"),
            "{e}"
        );
        check_payload(&nested(64), 64).unwrap();
        check_payload(&nested(65), 64).unwrap_err();
        check_payload(&nested(100), 128).unwrap();
        check_payload(br#"{"a":"[[[[[[[[[[\"[[[[[[[[","b":[1,{"c":[]}]}"#, 4).unwrap();
        assert!(check_payload(br#"{"a":{"b":{"c":{}}}}"#, 3).is_err());
        check_payload(b"", 1).unwrap();
    }

    /// Invalid UTF-8 is refused even inside a string, where serde's
    /// IgnoredAny does not look; valid multi-byte text passes.
    #[test]
    fn invalid_utf8_is_refused() {
        let bad = b"{\"name\":\"\xff\xfe\"}";
        assert!(
            serde_json::from_slice::<serde::de::IgnoredAny>(bad).is_ok(),
            "serde alone lets it through"
        );
        let e = check_payload(bad, 64).unwrap_err();
        assert!(
            e.to_string()
                .contains("not valid UTF-8 (an invalid byte sequence at byte 9"),
            "{e}"
        );
        assert_eq!(e.reason(), Some(Reason::PayloadNotJson));
        check_payload("{\"name\":\"Adélaïde 🌍\"}".as_bytes(), 64).unwrap();
    }

    /// The cost of the checks on a 6 MB payload (the sync limit), printed:
    /// linear, no allocation.
    #[test]
    fn checking_a_6_mb_payload_is_cheap() {
        let mut p = Vec::with_capacity(6 << 20);
        p.extend_from_slice(b"[");
        while p.len() < (6 << 20) - 64 {
            p.extend_from_slice(br#"{"k":"v\"[","n":[1,2,3]},"#);
        }
        p.extend_from_slice(b"0]");
        let t = std::time::Instant::now();
        check_payload(&p, 64).unwrap();
        let all = t.elapsed();
        let t = std::time::Instant::now();
        assert_eq!(too_deep(&p, 64), None);
        let scan = t.elapsed();
        eprintln!("6 MB payload: depth scan {scan:?}, all checks (UTF-8, depth, JSON) {all:?}");
        assert!(all < std::time::Duration::from_secs(5), "{all:?}");
    }
}
