//! Asynchronous invocation: accepting an event (durable once the Raft
//! command commits, then acknowledged), and the dispatcher on the leader
//! that runs due events through the normal placement path and commits
//! what `asyncq::next_step` decides. Delivery is at-least-once: a
//! dispatcher that loses leadership mid-attempt leaves the event queued and
//! the next leader runs it again.

use std::sync::Arc;
use std::time::Duration;

use nubo_proto::v1 as pb;
use nubo_proto::Reason;
use sha2::Digest;

use crate::clock::now_ms;
use crate::error::{ApiError, RegistryError};
use crate::events::destinations::{failure_record, success_record};
use crate::invoke::concurrency::Slot;
use crate::invoke::{new_request_id, AsyncAttempt, Invoker};
use crate::metrics::AsyncStage;
use crate::raft::node::{ControllerNode, LeaderReads};
use crate::registry::asyncq::{
    next_step, stop_recursion, Admit, AsyncEvent, Attempt, Policy, Step, MAX_DESTINATION_DEPTH,
};
use crate::registry::model::{Command, ConfigView, Outcome};

/// The async path's state on one controller. Only the leader dispatches;
/// any node accepts events (`enqueue_event`).
pub struct Dispatcher {
    pub node: Arc<ControllerNode>,
    pub invoker: Arc<Invoker>,
    /// Wakes the dispatcher (an event was accepted or finished).
    pub wake: tokio::sync::Notify,
    /// Attempts this node's dispatcher is running: request id -> function.
    pub in_flight: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl LeaderReads for Dispatcher {
    fn async_in_flight(&self, function: &str) -> u64 {
        self.in_flight
            .lock()
            .expect("lock poisoned")
            .values()
            .filter(|f| *f == function)
            .count() as u64
    }
}

/// An event id derived from the client's request id, so a retried
/// submission names (and, through the idempotent write, is) the same event.
fn event_id(client_rid: &str) -> String {
    let d = sha2::Sha256::digest(client_rid.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    crate::invoke::uuid_form(&b)
}

/// Names one attempt of an event by its replicated state: a new leader
/// re-dispatching an attempt whose step never committed derives the same
/// key (and the worker runs it once); a retry, a throttle backoff or a
/// redrive changes it.
pub(crate) fn attempt_key(ev: &AsyncEvent) -> String {
    format!(
        "{}/{}/{}/{}",
        ev.request_id, ev.enqueued_ms, ev.attempts, ev.system_failures
    )
}

fn error_of(resp: &pb::InvokeResponse) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(&resp.payload).unwrap_or_default();
    let t = v["errorType"]
        .as_str()
        .unwrap_or(&resp.function_error)
        .to_string();
    let m = v["errorMessage"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&resp.payload).into_owned());
    (t, m)
}

impl Dispatcher {
    pub fn new(node: Arc<ControllerNode>, invoker: Arc<Invoker>) -> Self {
        Dispatcher {
            node,
            invoker,
            wake: tokio::sync::Notify::new(),
            in_flight: Default::default(),
        }
    }

    /// Accepts an Event invocation: validated, written to the replicated
    /// queue, acknowledged only after the commit.
    /// Events from trigger instances, in one Raft entry: each is keyed
    /// by its id (a batch re-read after a crash is enqueued once) and
    /// answered per event with whether it was a duplicate, after the
    /// commit. Any event that cannot be taken (unknown function, over the
    /// payload limit, queue full) fails the call: nothing of a refused
    /// call needs to be acknowledged upstream, and a retry of the rest is
    /// deduplicated.
    pub async fn enqueue_batch(&self, events: Vec<pb::SubmitEvent>) -> Result<Vec<bool>, ApiError> {
        let max = self.node.config.max_async_payload_bytes;
        let total: u64 = events.iter().map(|e| e.payload.len() as u64).sum();
        let pending = self.node.with_registry(|r| r.queues.bytes);
        let limit = self.node.config.max_async_queue_bytes;
        if pending + total > limit {
            self.node.metrics.async_event(AsyncStage::RefusedQueueFull);
            return Err(ApiError::throttled(format!(
                "the async queue is full: {} MB of events wait (limit {} MB, max_async_queue_bytes); retry later",
                pending >> 20,
                limit >> 20
            ))
            .with_reason(Reason::AsyncQueueFull));
        }
        let now = now_ms();
        let mut cmds = Vec::with_capacity(events.len());
        for e in events {
            if e.payload.len() as u64 > max {
                return Err(RegistryError::invalid(format!(
                    "event {} is {} bytes, over the {max}-byte limit of asynchronous invocations (max_async_payload_bytes)",
                    e.id,
                    e.payload.len()
                ))
                .into());
            }
            crate::registry::validate::idempotency_key(&e.id)?;
            let qualifier = if e.qualifier.is_empty() {
                crate::registry::model::LATEST.to_string()
            } else {
                e.qualifier.clone()
            };
            self.node
                .with_registry(|r| r.get(&e.function_name, &qualifier).map(|_| ()))?;
            let payload = String::from_utf8(e.payload)
                .map_err(|_| RegistryError::invalid(format!("event {} is not UTF-8 JSON", e.id)))?;
            crate::registry::validate::ordering_key(&e.ordering_key)?;
            let mut ev =
                AsyncEvent::new(new_request_id(), e.function_name, qualifier, payload, now);
            ev.ordering_key = e.ordering_key;
            cmds.push(Command::EnqueueKeyed {
                event: ev,
                key: e.id,
                expires_ms: now + self.node.config.idempotency_window_ms,
            });
        }
        let n = cmds.len();
        let out = self.node.write_with_id(Command::Batch(cmds), None).await?;
        let Outcome::Batch(results) = out else {
            return Err(ApiError::Internal(
                "a batch write without batch results".into(),
            ));
        };
        let mut dup = Vec::with_capacity(n);
        for r in results {
            match r {
                Ok(Outcome::Keyed { duplicate, .. }) => {
                    self.node.metrics.async_event(if duplicate {
                        AsyncStage::Deduplicated
                    } else {
                        AsyncStage::Enqueued
                    });
                    dup.push(duplicate);
                }
                Ok(_) => dup.push(false),
                Err(e) => return Err(e.into()),
            }
        }
        self.wake.notify_one();
        Ok(dup)
    }

    pub async fn enqueue_event(
        &self,
        req: &pb::InvokeRequest,
        view: &ConfigView,
        qualifier: &str,
        client_rid: Option<String>,
    ) -> Result<pb::InvokeResponse, ApiError> {
        let max = self.node.config.max_async_payload_bytes;
        if req.payload.len() as u64 > max {
            return Err(RegistryError::invalid(format!(
                "payload is {} bytes; the limit for asynchronous (Event) invocations is {max} bytes ({} KB, max_async_payload_bytes): pass large data by reference (an S3 key)",
                req.payload.len(),
                max / 1024
            ))
            .into());
        }
        let pending = self.node.with_registry(|r| r.queues.bytes);
        let limit = self.node.config.max_async_queue_bytes;
        if pending + req.payload.len() as u64 > limit {
            self.node.metrics.async_event(AsyncStage::RefusedQueueFull);
            return Err(ApiError::throttled(format!(
                "the async queue is full: {} MB of events wait (limit {} MB, max_async_queue_bytes); retry later",
                pending >> 20,
                limit >> 20
            ))
            .with_reason(Reason::AsyncQueueFull));
        }
        let payload = if req.payload.is_empty() {
            "{}".to_string()
        } else {
            String::from_utf8(req.payload.clone())
                .map_err(|_| RegistryError::invalid("payload is not UTF-8 JSON"))?
        };
        let request_id = client_rid
            .as_deref()
            .map(event_id)
            .unwrap_or_else(new_request_id);
        let now = now_ms();
        let mut ev = AsyncEvent::new(
            request_id.clone(),
            view.function_name.clone(),
            qualifier.to_string(),
            payload,
            now,
        );
        // Validated (and refused for a synchronous call) in `prepare`.
        ev.ordering_key = req.ordering_key.clone();
        let key = req.idempotency_key.as_str();
        let cmd = if key.is_empty() {
            Command::EnqueueEvent(ev)
        } else {
            crate::registry::validate::idempotency_key(key)?;
            Command::EnqueueKeyed {
                event: ev,
                key: key.to_string(),
                expires_ms: now + self.node.config.idempotency_window_ms,
            }
        };
        let out = self
            .node
            .write_with_id(cmd, client_rid.map(|r| format!("event:{r}")))
            .await?;
        let (request_id, duplicate) = match out {
            crate::registry::model::Outcome::Keyed {
                request_id,
                duplicate,
            } => (request_id, duplicate),
            _ => (request_id, false),
        };
        if duplicate {
            self.node.metrics.async_event(AsyncStage::Deduplicated);
        } else {
            self.node.metrics.async_event(AsyncStage::Enqueued);
            self.wake.notify_one();
        }
        Ok(pb::InvokeResponse {
            status_code: 202,
            executed_version: String::new(),
            request_id,
            duplicate,
            ..Default::default()
        })
    }

    /// Runs one attempt of a queued event and commits its next step;
    /// `slot_held` when the dispatcher took a reserved-concurrency slot.
    async fn attempt(&self, ev: AsyncEvent, slot_held: bool, pin: Option<String>) {
        let Some(term) = self.node.leader_term() else {
            // Deposed since the plan: the next leader runs it.
            return;
        };
        let tag = AsyncAttempt {
            key: attempt_key(&ev),
            term,
            slot_held,
            pin,
        };
        // Alias weights hold per attempt, as for direct calls.
        let view = match self.invoker.resolve_routed(&ev.function, &ev.qualifier) {
            Ok(v) => v,
            Err(e) => {
                // The function or qualifier was deleted: the event has no
                // one to run it (Lambda discards it too).
                tracing::warn!(event = %ev.request_id, "async event dropped: {e}");
                self.commit_step(&ev, Step::Done, None).await;
                return;
            }
        };
        let a = &view.config.async_config;
        let policy = Policy {
            maximum_retry_attempts: a.maximum_retry_attempts,
            maximum_event_age_ms: a.maximum_event_age_seconds as u64 * 1000,
            base_wait_ms: self.node.config.async_base_wait_ms,
        };
        let req = pb::InvokeRequest {
            function_name: ev.function.clone(),
            qualifier: ev.qualifier.clone(),
            payload: ev.payload.clone().into_bytes(),
            invocation_type: pb::InvocationType::RequestResponse as i32,
            log_type: pb::LogType::LogNone as i32,
            idempotency_key: String::new(),
            ordering_key: String::new(),
        };
        let mut result = None;
        let outcome = match self
            .invoker
            .execute(req, view.clone(), true, ev.request_id.clone(), Some(&tag))
            .await
        {
            Ok(r) if r.function_error.is_empty() => {
                result = Some(r.payload);
                Attempt::Success
            }
            Ok(r) => {
                let (error_type, message) = error_of(&r);
                Attempt::FunctionError {
                    error_type,
                    message,
                }
            }
            Err(ApiError::Throttled(m)) => Attempt::SystemError {
                error_type: "Throttled".into(),
                message: m.message,
            },
            Err(e) => Attempt::SystemError {
                error_type: "ServiceError".into(),
                message: e.to_string(),
            },
        };
        self.node.metrics.async_event(AsyncStage::Dispatched);
        // A system error's retry is counted apart from a throttle's.
        let retry_stage = match &outcome {
            Attempt::SystemError { error_type, .. } if error_type == "Throttled" => {
                AsyncStage::Throttled
            }
            Attempt::SystemError { .. } => AsyncStage::RetriedSystemError,
            _ => AsyncStage::Retried,
        };
        let step = next_step(ev.clone(), outcome, policy, now_ms());
        self.node.metrics.async_event(match &step {
            Step::Done => AsyncStage::Succeeded,
            Step::Retry(_) => retry_stage,
            Step::DeadLetter(d)
                if d.condition == crate::registry::asyncq::Condition::EventAgeExceeded =>
            {
                AsyncStage::Expired
            }
            Step::DeadLetter(_) => AsyncStage::DeadLettered,
        });
        self.commit_step(&ev, step, Some((&view, result))).await;
    }

    /// Dead-letters an event that waited for room under its function's
    /// reserved concurrency until its maximum age, without attempting it.
    async fn expire(&self, ev: AsyncEvent) {
        let reason = format!(
            "throttled: function {} had no reserved concurrency free until the event's maximum age",
            ev.function
        );
        let d = crate::registry::asyncq::expire_throttled(ev.clone(), &reason, now_ms());
        self.node.metrics.async_event(AsyncStage::Expired);
        let view = self
            .invoker
            .resolve_routed(&ev.function, &ev.qualifier)
            .ok();
        let step = Step::DeadLetter(d);
        self.commit_step(&ev, step, view.as_ref().map(|v| (v, None)))
            .await;
    }

    /// Commits an attempt's step, with the destination record the step
    /// calls for (on-failure for a dead letter, on-success for done) in
    /// the same entry, so both commit or neither.
    async fn commit_step(
        &self,
        ev: &AsyncEvent,
        step: Step,
        ran: Option<(&ConfigView, Option<Vec<u8>>)>,
    ) {
        // Records are held to the async payload limit like any event.
        let limit = self.node.config.max_async_payload_bytes;
        let destination = ran.and_then(|(view, result)| {
            let a = &view.config.async_config;
            match &step {
                Step::DeadLetter(d) if !a.dead_letter_target.is_empty() => {
                    Some(failure_record(d, view, &a.dead_letter_target, limit))
                }
                Step::Done if !a.on_success_target.is_empty() => Some(success_record(
                    ev,
                    view,
                    &a.on_success_target,
                    result.as_deref().unwrap_or(b"null"),
                    limit,
                )),
                _ => None,
            }
        });
        let step_cmd = Command::EventStep {
            request_id: ev.request_id.clone(),
            step,
        };
        let cmd = match destination {
            Some(dest) if dest.depth >= MAX_DESTINATION_DEPTH => {
                // A chain of destinations (A -> B -> A ...) as long as
                // Lambda lets one run: the record is not sent on but kept,
                // unattempted, in its target's dead-letter queue.
                tracing::warn!(
                    event = %ev.request_id,
                    function = %ev.function,
                    target = %dest.function,
                    depth = dest.depth,
                    "recursive loop of destinations stopped: the record goes to the target's dead-letter queue, not to the target"
                );
                self.node.metrics.async_event(AsyncStage::RecursionStopped);
                let stopped = stop_recursion(dest, &ev.function, now_ms());
                Command::Batch(vec![step_cmd, Command::DeadLetter(stopped)])
            }
            Some(dest) => {
                self.node.metrics.async_event(AsyncStage::SentToDestination);
                Command::Batch(vec![step_cmd, Command::EnqueueEvent(dest)])
            }
            None => step_cmd,
        };
        match self.node.write(cmd).await {
            Ok(Outcome::Batch(results)) => {
                if let Some(Err(e)) = results.get(1) {
                    // The target went (deleted since it was set): as on
                    // Lambda, the record is lost; the step committed.
                    self.node.metrics.async_event(AsyncStage::DestinationFailed);
                    tracing::warn!(event = %ev.request_id, function = %ev.function, "destination record not delivered: {e}");
                }
            }
            Ok(_) => {}
            // Not committed: the event stays queued and runs again (here or
            // on the next leader).
            Err(e) => tracing::warn!(event = %ev.request_id, "recording an async attempt: {e}"),
        }
    }

    /// Whether a due event may run now. Its function's reserved
    /// concurrency is checked (and a slot taken) here, so an event whose
    /// function has no room stays queued without an attempt or a write
    /// (past its maximum age the plan expires it).
    fn admit(&self, r: &crate::registry::state::Registry, ev: &AsyncEvent) -> Admit {
        let Ok((view, _)) = r.get(&ev.function, &ev.qualifier) else {
            // Deleted: the attempt drops it.
            return Admit::Run { reserved: false };
        };
        let Some(limit) = view.config.reserved_concurrency else {
            return Admit::Run { reserved: false };
        };
        if self.invoker.reserved.try_take(&ev.function, limit).is_ok() {
            return Admit::Run { reserved: true };
        }
        Admit::Hold {
            maximum_event_age_ms: view.config.async_config.maximum_event_age_seconds as u64 * 1000,
        }
    }

    /// Asks every live worker which due events' attempts it is running or
    /// has a kept result for (key -> worker).
    async fn find_held_attempts(&self) -> std::collections::HashMap<String, String> {
        const CHUNK: usize = 10_000;
        let keys: Vec<String> = self.node.with_registry(|r| {
            r.queues
                .due_now(now_ms(), 100_000)
                .into_iter()
                .map(attempt_key)
                .collect()
        });
        let mut pins = std::collections::HashMap::new();
        if keys.is_empty() {
            return pins;
        }
        let calls = self.invoker.workers.live_clients().into_iter().map(|(id, c)| {
            let keys = keys.clone();
            let secret = self.invoker.worker_secret.clone();
            async move {
                let mut held = Vec::new();
                for chunk in keys.chunks(CHUNK) {
                    let req = pb::FindAttemptsRequest {
                        keys: chunk.to_vec(),
                    };
                    match c
                        .find_attempts(crate::invoke::with_secret(
                            req,
                            &secret,
                            Duration::from_secs(5),
                        ))
                        .await
                    {
                        Ok(r) => held.extend(r.held),
                        Err(s) => {
                            tracing::warn!(worker = %id, "finding a previous leader's attempts: {}", s.message());
                            break;
                        }
                    }
                }
                (id, held)
            }
        });
        for (id, held) in futures::future::join_all(calls).await {
            for k in held {
                pins.insert(k, id.clone());
            }
        }
        if !pins.is_empty() {
            tracing::info!(
                "{} attempts of a previous leader found on workers: sent back there",
                pins.len()
            );
        }
        pins
    }

    /// The dispatcher: on the leader, runs due events (at most
    /// `dispatch_concurrency` at once) until `stop`.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        /// Due events one pass may look at.
        const MAX_SCAN: usize = 10_000;
        let mut recovered_term = 0;
        let mut pins: std::collections::HashMap<String, String> = Default::default();
        let limit = Arc::new(tokio::sync::Semaphore::new(
            self.node.config.dispatch_concurrency.max(1),
        ));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let Some(term) = self.node.leader_term() else {
                continue;
            };
            if term != recovered_term {
                // New leadership: attempts a previous leader sent may still
                // be running (or have results) on workers; send those back
                // there instead of running them again elsewhere.
                pins = self.find_held_attempts().await;
                recovered_term = term;
            }
            let free = limit.available_permits();
            if free == 0 {
                continue;
            }
            let now = now_ms();
            let plan = {
                let busy = self.in_flight.lock().expect("lock poisoned");
                self.node.with_registry(|r| {
                    r.queues.plan(
                        now,
                        free,
                        MAX_SCAN,
                        |id| busy.contains_key(id),
                        |ev| self.admit(r, ev),
                    )
                })
            };
            let jobs = plan
                .run
                .into_iter()
                .map(|(ev, reserved)| (ev, Some(reserved)))
                .chain(plan.expired.into_iter().map(|ev| (ev, None)));
            for (ev, run) in jobs {
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    // Planned within the free permits; only expiries can
                    // overflow, and they come back on a later pass.
                    if run == Some(true) {
                        drop(Slot::adopt(&self.invoker.reserved, ev.function.clone()));
                    }
                    continue;
                };
                self.in_flight
                    .lock()
                    .expect("lock poisoned")
                    .insert(ev.request_id.clone(), ev.function.clone());
                let pin = pins.remove(&attempt_key(&ev));
                let node = self.clone();
                tokio::spawn(async move {
                    let id = ev.request_id.clone();
                    match run {
                        Some(reserved) => {
                            let _slot = reserved
                                .then(|| Slot::adopt(&node.invoker.reserved, ev.function.clone()));
                            node.attempt(ev, reserved, pin).await;
                        }
                        None => node.expire(ev).await,
                    }
                    node.in_flight.lock().expect("lock poisoned").remove(&id);
                    drop(permit);
                    node.wake.notify_one();
                });
            }
        }
    }
}
